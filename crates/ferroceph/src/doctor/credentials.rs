//! The secrets file's Ceph users: they authenticate, and may list the pool; then the
//! journal check of that pool.

use super::cluster::unique_monitors;
use super::report::{Check, Verdict};
use super::{journal, looks_like_fsid, DoctorArgs};
use crate::config::ClusterInfo;
use std::collections::BTreeMap;
use std::path::Path;

/// Parses a secrets file: a JSON object of strings, or KEY=VALUE lines (`#` comments).
/// Errors never quote the file's content.
pub(crate) fn parse_secrets(text: &str) -> Result<BTreeMap<String, String>, String> {
    if let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(text) {
        return m
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => Ok((k, s)),
                _ => Err(format!("the value of {k:?} is not a string")),
            })
            .collect();
    }
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {} is neither JSON nor KEY=VALUE", n + 1))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// The (role, user, key) pairs in CSI secrets: userID/userKey, adminID/adminKey.
pub(crate) fn credentials(
    secrets: &BTreeMap<String, String>,
) -> Vec<(&'static str, String, String)> {
    [
        ("user", "userID", "userKey"),
        ("admin", "adminID", "adminKey"),
    ]
    .iter()
    .filter_map(|(role, id, key)| {
        let u = secrets.get(*id)?.trim();
        let k = secrets.get(*key)?.trim();
        (!u.is_empty() && !k.is_empty()).then(|| (*role, u.to_string(), k.to_string()))
    })
    .collect()
}

pub(super) fn credential_checks(
    args: &DoctorArgs,
    path: &Path,
    clusters: &[ClusterInfo],
) -> Vec<Check> {
    let (creds, cluster) = match secrets_and_cluster(args, path, clusters) {
        Ok(found) => found,
        Err(problem) => return vec![problem],
    };
    let mut out = Vec::new();
    let mut first_connected: Option<(String, rados::Cluster)> = None;
    for (role, user, key) in creds {
        let id = format!("ceph.auth.{role}");
        let cfg = rados::ConnectConfig::new(unique_monitors(&cluster.monitors), user.clone(), key)
            .with_timeout(args.timeout);
        match rados::Cluster::connect(&cfg) {
            Ok(conn) => {
                out.push(authenticated(id, &user, &conn, cluster));
                if first_connected.is_none() {
                    first_connected = Some((user, conn));
                }
            }
            Err(e) => out.push(auth_failure(id, &user, &e)),
        }
    }
    match (&args.pool, first_connected) {
        (Some(pool), Some((user, conn))) => {
            let ns = &cluster.rbd.rados_namespace;
            let pc = pool_check(&conn, &user, pool, ns);
            let listed = pc.status == Verdict::Ok;
            out.push(pc);
            if listed {
                out.extend(journal::run(args, &conn, &cluster.cluster_id, pool, ns));
            } else {
                out.push(Check::skip(
                    "journal",
                    "the pool could not be listed: the journal was not checked and nothing was fixed",
                ));
            }
        }
        (Some(pool), None) => out.push(Check::skip(
            "ceph.pool",
            format!("pool {pool:?} not tried: no user authenticated"),
        )),
        (None, _) => out.push(Check::skip(
            "ceph.pool",
            "no --pool given: listing a pool was not tried",
        )),
    }
    out
}

type Credential = (&'static str, String, String);

/// The users of the secrets file and the cluster to try them on, or the problem.
fn secrets_and_cluster<'c>(
    args: &DoctorArgs,
    path: &Path,
    clusters: &'c [ClusterInfo],
) -> Result<(Vec<Credential>, &'c ClusterInfo), Check> {
    let auth_problem = |summary: String, why: &str, fix: &str| {
        Check::problem("ceph.auth", Verdict::Fail, summary, why, fix)
    };
    let from_file = "the credentials to try are in this file";
    let text = std::fs::read_to_string(path).map_err(|e| {
        auth_problem(
            format!("cannot read {}: {e}", path.display()),
            from_file,
            "pass a readable file with userID/userKey (JSON or KEY=VALUE lines)",
        )
    })?;
    let secrets = parse_secrets(&text).map_err(|e| {
        auth_problem(
            format!("{}: {e}", path.display()),
            from_file,
            "write it as {\"userID\": \"...\", \"userKey\": \"...\"} or userID=... / userKey=... lines",
        )
    })?;
    let creds = credentials(&secrets);
    if creds.is_empty() {
        return Err(auth_problem(
            format!(
                "{} has neither userID+userKey nor adminID+adminKey",
                path.display()
            ),
            "these are the keys ceph-csi secrets carry (RBD: userID/userKey; CephFS: adminID/adminKey)",
            "add userID (without client.) and userKey (ceph auth get-key client.<id>)",
        ));
    }
    let cluster = match &args.clusterid {
        Some(id) => clusters.iter().find(|c| &c.cluster_id == id),
        None if clusters.len() == 1 => clusters.first(),
        None => {
            return Err(auth_problem(
                format!(
                    "the map has {} clusters: which one should the secrets be tried on?",
                    clusters.len()
                ),
                "each clusterID has its own users",
                "pass --clusterid <clusterID>",
            ))
        }
    };
    let cluster = cluster.ok_or_else(|| {
        auth_problem(
            format!(
                "clusterID {:?} is not in {}",
                args.clusterid.as_deref().unwrap_or(""),
                args.configpath.display()
            ),
            "StorageClasses and the driver find monitors by clusterID",
            "add it to config.json or pass one of the listed clusterIDs",
        )
    })?;
    Ok((creds, cluster))
}

/// A user that connected: OK, or a warning when the fsid contradicts an fsid-shaped
/// clusterID.
fn authenticated(id: String, user: &str, conn: &rados::Cluster, cluster: &ClusterInfo) -> Check {
    let fsid = conn.fsid().unwrap_or_else(|e| format!("unknown ({e})"));
    if looks_like_fsid(&cluster.cluster_id)
        && fsid.len() == 36
        && !fsid.eq_ignore_ascii_case(&cluster.cluster_id)
    {
        return Check::problem(
            id,
            Verdict::Warn,
            format!(
                "client.{user} authenticated; the cluster's fsid is {fsid}, but its clusterID is {:?}",
                cluster.cluster_id
            ),
            "a clusterID shaped like an fsid but naming another cluster usually means the monitors of a different cluster are listed",
            "compare `ceph fsid` with the clusterID and the monitors in config.json",
        );
    }
    Check::ok(
        id,
        format!(
            "client.{user} authenticated to clusterID {:?} (fsid {fsid})",
            cluster.cluster_id
        ),
    )
}

fn auth_failure(id: String, user: &str, e: &rados::Error) -> Check {
    use rados::ErrorKind as K;
    let (why, fix) = match e.kind() {
        K::PermissionDenied => (
            "the monitors refused the key: it is not client.".to_string() + user + "'s key, or the user does not exist",
            format!(
                "compare the secret's key with `ceph auth get-key client.{user}`; create the user if missing: ceph auth get-or-create client.{user} mon 'profile rbd' osd 'profile rbd pool=<pool>' mgr 'profile rbd pool=<pool>'"
            ),
        ),
        K::TimedOut => (
            "no monitor answered in time".to_string(),
            "check the monitors of this clusterID in config.json and the network path to them (see the monitors check)".to_string(),
        ),
        K::InvalidArgument => (
            "the key or the monitor list is malformed".to_string(),
            format!(
                "put the base64 key exactly as `ceph auth get-key client.{user}` prints it (no client. prefix in the user ID)"
            ),
        ),
        _ => (
            "connecting to the cluster failed".to_string(),
            "check the monitors and the credentials".to_string(),
        ),
    };
    Check::problem(id, Verdict::Fail, format!("client.{user}: {e}"), why, fix)
}

fn pool_check(conn: &rados::Cluster, user: &str, pool: &str, namespace: &str) -> Check {
    use rados::ErrorKind as K;
    let id = "ceph.pool";
    let ns_text = if namespace.is_empty() {
        String::new()
    } else {
        format!(" (RADOS namespace {namespace})")
    };
    if let Err(e) = conn.pool_lookup(pool) {
        return if e.kind() == K::NotFound {
            Check::problem(
                id,
                Verdict::Fail,
                format!("pool {pool:?} does not exist (or client.{user} may not see it)"),
                "CreateVolume in a StorageClass with this pool fails with NotFound",
                format!("ceph osd pool create {pool} && rbd pool init {pool}"),
            )
        } else {
            Check::problem(
                id,
                Verdict::Fail,
                format!("looking up pool {pool:?} failed: {e}"),
                "the driver looks up the pool of every volume",
                "check the monitors and client.".to_string() + user + "'s mon caps",
            )
        };
    }
    let listed = conn
        .ioctx(pool, namespace)
        .and_then(|io| rados::rbd::list_images(&io));
    match listed {
        Ok(images) => Check::ok(
            id,
            format!(
                "client.{user} can list pool {pool:?}{ns_text}: {} image(s)",
                images.len()
            ),
        ),
        Err(e) if e.kind() == K::PermissionDenied => Check::problem(
            id,
            Verdict::Fail,
            format!("client.{user} may not list pool {pool:?}{ns_text}: {e}"),
            "the user's caps are too narrow: provisioning and staging need read/write on the pool",
            format!(
                "ceph auth caps client.{user} mon 'profile rbd' osd 'profile rbd pool={pool}' mgr 'profile rbd pool={pool}'"
            ),
        ),
        Err(e) if e.kind() == K::NotFound && !namespace.is_empty() => Check::problem(
            id,
            Verdict::Fail,
            format!("RADOS namespace {namespace:?} of pool {pool:?} does not exist: {e}"),
            "config.json sets rbd.radosNamespace for this cluster",
            format!("rbd namespace create {pool}/{namespace}"),
        ),
        Err(e) => Check::problem(
            id,
            Verdict::Fail,
            format!("listing pool {pool:?}{ns_text} failed: {e}"),
            "the driver reads and writes this pool for every volume",
            "check the pool with `rbd ls -p ".to_string() + pool + "` as client." + user,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_files() {
        let j = parse_secrets(r#"{"userID": "csi-rbd", "userKey": "AQ=="}"#).unwrap();
        assert_eq!(j["userID"], "csi-rbd");
        let kv = parse_secrets("# c\nadminID = admin\nadminKey=AQB==\n\n").unwrap();
        assert_eq!(kv["adminKey"], "AQB==");
        let err = parse_secrets("userKey AQSECRETSECRET\n").unwrap_err();
        assert!(!err.contains("SECRET"), "{err}");
        assert!(parse_secrets(r#"{"userID": 1}"#).is_err());

        let creds = credentials(&kv);
        assert_eq!(creds.len(), 1);
        assert_eq!(creds[0].0, "admin");
        let both = parse_secrets("userID=u\nuserKey=k\nadminID=a\nadminKey=k2\n").unwrap();
        let roles: Vec<_> = credentials(&both).into_iter().map(|c| c.0).collect();
        assert_eq!(roles, vec!["user", "admin"]);
        assert!(credentials(&parse_secrets("userID=u\n").unwrap()).is_empty());
    }
}
