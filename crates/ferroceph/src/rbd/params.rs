//! StorageClass parameters and secrets for RBD volumes: ceph-csi's names and the legacy
//! in-tree `kubernetes.io/rbd` / `ceph.com/rbd` ones, validated up front so that a typo
//! answers InvalidArgument naming the parameter instead of a half-made volume.

use std::collections::{BTreeMap, HashMap};

pub const DEFAULT_FEATURES: &str = "layering";
pub const DEFAULT_VOL_PREFIX: &str = "csi-vol-";
pub const DEFAULT_SNAP_PREFIX: &str = "csi-snap-";
const MAX_MONITORS_HANDLE: usize = 64;

/// Parameters that name where and how a volume lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RbdParams {
    /// clusterID from the StorageClass, or for the legacy form the monitors joined by ','.
    pub cluster_id: String,
    /// Monitors given directly (legacy form); empty when they come from config.json.
    pub monitors: Vec<String>,
    pub pool: String,
    pub data_pool: Option<String>,
    pub features: Vec<String>,
    pub mounter: Option<String>,
    pub map_options: Option<String>,
    pub unmap_options: Option<String>,
    pub mkfs_options: Option<String>,
    pub fs_type: Option<String>,
    pub vol_prefix: String,
    pub snap_prefix: String,
    pub stripe_unit: Option<u64>,
    pub stripe_count: Option<u64>,
    pub object_size: Option<u64>,
    /// Legacy: the user that provisions (`adminId`) and the one that maps (`userId`).
    pub admin_id: Option<String>,
    pub user_id: Option<String>,
    /// PVC/PV names the external-provisioner passes with --extra-create-metadata.
    pub pvc_name: Option<String>,
    pub pvc_namespace: Option<String>,
    pub pv_name: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ParamError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ParamError> {
    Err(ParamError(msg.into()))
}

const FEATURES: &[&str] = &[
    "layering",
    "exclusive-lock",
    "object-map",
    "fast-diff",
    "deep-flatten",
    "journaling",
];

/// Parameters ceph-csi accepts that we accept with their harmless values only.
const ONLY_DEFAULT: &[(&str, &str)] = &[("encrypted", "false"), ("thickProvision", "false")];

/// Accepted and ignored: consumed by sidecars or meaningless for us.
const IGNORED: &[&str] = &[
    "adminSecretName",
    "adminSecretNamespace",
    "userSecretName",
    "userSecretNamespace",
    "cephLogDir",
    "cephLogStrategy",
    "tryOtherMounters",
    "imageFormat",
    "staticVolume",
    "imageName",
    "journalPool",
    "radosNamespace",
    "mapOptionsApplied",
];

impl RbdParams {
    pub fn parse(params: &HashMap<String, String>) -> Result<Self, ParamError> {
        let get = |k: &str| param(params, k);
        check_known_keys(params)?;
        check_image_format(params)?;
        let (cluster_id, monitors) = cluster_and_monitors(params)?;
        let pool = match get("pool") {
            Some(p) => p,
            None if get("clusterID").is_none() => "rbd".to_string(), // in-tree default
            None => return err("missing parameter pool"),
        };

        let features = parse_features(get("imageFeatures").as_deref().unwrap_or(DEFAULT_FEATURES))?;
        let mounter = parse_mounter(params)?;
        let fs_type = parse_fs_type(params)?;
        let Striping {
            stripe_unit,
            stripe_count,
            object_size,
        } = parse_striping(params)?;
        check_name_prefixes(params)?;
        check_tool_options(params, fs_type.as_deref())?;

        Ok(RbdParams {
            cluster_id,
            monitors,
            pool,
            data_pool: get("dataPool"),
            features,
            mounter,
            map_options: get("mapOptions"),
            unmap_options: get("unmapOptions"),
            mkfs_options: get("mkfsOptions"),
            fs_type,
            vol_prefix: get("volumeNamePrefix").unwrap_or_else(|| DEFAULT_VOL_PREFIX.to_string()),
            snap_prefix: get("snapshotNamePrefix")
                .unwrap_or_else(|| DEFAULT_SNAP_PREFIX.to_string()),
            stripe_unit,
            stripe_count,
            object_size,
            admin_id: get("adminId"),
            user_id: get("userId"),
            pvc_name: get("csi.storage.k8s.io/pvc/name"),
            pvc_namespace: get("csi.storage.k8s.io/pvc/namespace"),
            pv_name: get("csi.storage.k8s.io/pv/name"),
        })
    }

    /// The volume_context NodeStage needs, also without a config.json entry.
    pub fn volume_context(&self) -> BTreeMap<String, String> {
        let mut ctx = BTreeMap::new();
        ctx.insert("clusterID".to_string(), self.cluster_id.clone());
        ctx.insert("pool".to_string(), self.pool.clone());
        ctx.insert("imageFeatures".to_string(), self.features.join(","));
        if !self.monitors.is_empty() {
            ctx.insert("monitors".to_string(), self.monitors.join(","));
        }
        let opt = |ctx: &mut BTreeMap<String, String>, k: &str, v: &Option<String>| {
            if let Some(v) = v {
                ctx.insert(k.to_string(), v.clone());
            }
        };
        opt(&mut ctx, "dataPool", &self.data_pool);
        opt(&mut ctx, "mounter", &self.mounter);
        opt(&mut ctx, "mapOptions", &self.map_options);
        opt(&mut ctx, "unmapOptions", &self.unmap_options);
        opt(&mut ctx, "mkfsOptions", &self.mkfs_options);
        opt(&mut ctx, "userId", &self.user_id);
        opt(&mut ctx, "csi.storage.k8s.io/fstype", &self.fs_type);
        if self.vol_prefix != DEFAULT_VOL_PREFIX {
            ctx.insert("volumeNamePrefix".into(), self.vol_prefix.clone());
        }
        ctx
    }
}

/// A parameter's value, trimmed; an empty value counts as absent.
fn param(params: &HashMap<String, String>, k: &str) -> Option<String> {
    params
        .get(k)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Every key is one we parse, one the CO or ceph-csi sets that we ignore, or one only
/// supported at its default value.
fn check_known_keys(params: &HashMap<String, String>) -> Result<(), ParamError> {
    for (k, v) in params {
        let known = matches!(
            k.as_str(),
            "clusterID"
                | "pool"
                | "dataPool"
                | "imageFeatures"
                | "mounter"
                | "mapOptions"
                | "unmapOptions"
                | "mkfsOptions"
                | "volumeNamePrefix"
                | "snapshotNamePrefix"
                | "stripeUnit"
                | "stripeCount"
                | "objectSize"
                | "monitors"
                | "adminId"
                | "userId"
                | "fsType"
        ) || k.starts_with("csi.storage.k8s.io/")
            || IGNORED.contains(&k.as_str());
        if let Some((_, ok)) = ONLY_DEFAULT.iter().find(|(name, _)| name == k) {
            if !v.trim().eq_ignore_ascii_case(ok) {
                return err(format!(
                    "parameter {k}={v:?} is not supported by ferroceph; remove it or set it to {ok:?}"
                ));
            }
            continue;
        }
        if !known {
            return err(format!(
                "unknown parameter {k:?}; see the StorageClass parameters in the README"
            ));
        }
    }
    Ok(())
}

fn check_image_format(params: &HashMap<String, String>) -> Result<(), ParamError> {
    if let Some(f) = param(params, "imageFormat") {
        if f != "2" {
            return err(format!(
                "imageFormat {f:?} is not supported: only format 2 images exist in current Ceph; set imageFormat: \"2\" or remove it"
            ));
        }
    }
    Ok(())
}

/// The cluster ID and the legacy monitors list (empty when the cluster comes from
/// config.json); with a monitors list, the cluster ID is the joined list.
fn cluster_and_monitors(
    params: &HashMap<String, String>,
) -> Result<(String, Vec<String>), ParamError> {
    let get = |k: &str| param(params, k);
    let monitors: Vec<String> = get("monitors")
        .map(|m| {
            m.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let cluster_id = match (get("clusterID"), monitors.is_empty()) {
        (Some(_), false) => {
            return err("parameters clusterID and monitors contradict each other: use clusterID (monitors from config.json) or the legacy monitors list, not both")
        }
        (Some(id), true) => id,
        (None, false) => {
            let joined = monitors.join(",");
            if joined.len() > MAX_MONITORS_HANDLE {
                return err(format!(
                    "the monitors list is {} bytes, too long to be carried in the volume handle (max {MAX_MONITORS_HANDLE}); add the cluster to config.json and use clusterID",
                    joined.len()
                ));
            }
            joined
        }
        (None, true) => return err("missing parameter clusterID (or the legacy monitors list)"),
    };
    Ok((cluster_id, monitors))
}

fn parse_mounter(params: &HashMap<String, String>) -> Result<Option<String>, ParamError> {
    let mounter = param(params, "mounter");
    if let Some(m) = &mounter {
        if !matches!(m.as_str(), "krbd" | "rbd-nbd" | "nbd" | "fuse" | "auto") {
            return err(format!(
                "mounter {m:?} is not known: use krbd, rbd-nbd, fuse or auto"
            ));
        }
    }
    Ok(mounter)
}

/// The filesystem type from `csi.storage.k8s.io/fstype` or the legacy `fsType`.
fn parse_fs_type(params: &HashMap<String, String>) -> Result<Option<String>, ParamError> {
    let get = |k: &str| param(params, k);
    let fs_csi = get("csi.storage.k8s.io/fstype");
    let fs_legacy = get("fsType");
    let fs_type = match (fs_csi, fs_legacy) {
        (Some(a), Some(b)) if a != b => {
            return err(format!(
                "csi.storage.k8s.io/fstype {a:?} and fsType {b:?} contradict each other"
            ))
        }
        (a, b) => a.or(b),
    };
    if let Some(fs) = &fs_type {
        if !matches!(fs.as_str(), "ext4" | "xfs" | "ext3") {
            return err(format!("fsType {fs:?} is not supported: use ext4 or xfs"));
        }
    }
    Ok(fs_type)
}

/// stripeUnit, stripeCount and objectSize, in bytes.
struct Striping {
    stripe_unit: Option<u64>,
    stripe_count: Option<u64>,
    object_size: Option<u64>,
}

/// The striping parameters, each a positive number of bytes, consistent with each other.
fn parse_striping(params: &HashMap<String, String>) -> Result<Striping, ParamError> {
    let get = |k: &str| param(params, k);
    let number = |k: &str| -> Result<Option<u64>, ParamError> {
        match get(k) {
            None => Ok(None),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n > 0 => Ok(Some(n)),
                _ => err(format!(
                    "parameter {k}={v:?} must be a positive number of bytes"
                )),
            },
        }
    };
    let stripe_unit = number("stripeUnit")?;
    let stripe_count = number("stripeCount")?;
    let object_size = number("objectSize")?;
    if let Some(os) = object_size {
        if !os.is_power_of_two() || !(4096..=(32 << 20)).contains(&os) {
            return err(format!(
                "objectSize {os} must be a power of two between 4096 and 33554432"
            ));
        }
    }
    if stripe_unit.is_some() != stripe_count.is_some() {
        return err("stripeUnit and stripeCount must be given together");
    }
    if let (Some(su), Some(os)) = (stripe_unit, object_size) {
        if su > os || os % su != 0 {
            return err(format!("stripeUnit {su} must divide objectSize {os}"));
        }
    }
    Ok(Striping {
        stripe_unit,
        stripe_count,
        object_size,
    })
}

fn check_name_prefixes(params: &HashMap<String, String>) -> Result<(), ParamError> {
    for k in ["volumeNamePrefix", "snapshotNamePrefix"] {
        if let Some(p) = param(params, k) {
            if p.contains('/') || p.contains('@') || p.len() > 64 {
                return err(format!(
                    "{k} {p:?} must not contain '/' or '@' and must be at most 64 bytes"
                ));
            }
        }
    }
    Ok(())
}

/// mkfsOptions suit the filesystem; mapOptions and unmapOptions parse.
fn check_tool_options(
    params: &HashMap<String, String>,
    fs_type: Option<&str>,
) -> Result<(), ParamError> {
    if let Some(mo) = param(params, "mkfsOptions") {
        crate::options::check_mkfs(fs_type.unwrap_or("ext4"), &mo)
            .map_err(|e| ParamError(e.message()))?;
    }
    if let Some(mo) = param(params, "mapOptions") {
        parse_map_options(&mo)?;
    }
    if let Some(mo) = param(params, "unmapOptions") {
        parse_map_options(&mo)?;
    }
    Ok(())
}

/// Parses a comma separated feature list into canonical order, checking dependencies.
pub fn parse_features(list: &str) -> Result<Vec<String>, ParamError> {
    let mut wanted = Vec::new();
    for f in list.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        if !FEATURES.contains(&f) {
            return err(format!(
                "imageFeatures: unknown feature {f:?} (known: {})",
                FEATURES.join(", ")
            ));
        }
        wanted.push(f);
    }
    let has = |f: &str| wanted.contains(&f);
    for (f, needs) in [
        ("object-map", "exclusive-lock"),
        ("fast-diff", "object-map"),
        ("journaling", "exclusive-lock"),
    ] {
        if has(f) && !has(needs) {
            return err(format!(
                "imageFeatures: {f} requires {needs}; add it to imageFeatures"
            ));
        }
    }
    Ok(FEATURES
        .iter()
        .filter(|f| wanted.contains(f))
        .map(|f| f.to_string())
        .collect())
}

/// `mapOptions` / `unmapOptions`: either a plain option list (applies to krbd) or
/// `krbd:opt1,opt2;nbd:opt3` per mounter. Returns (mounter, options) pairs.
pub fn parse_map_options(s: &str) -> Result<Vec<(String, String)>, ParamError> {
    let mut out = Vec::new();
    for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (mounter, opts) = match part.split_once(':') {
            Some((m, o)) if !m.contains(',') && !m.contains('=') => (m.trim(), o.trim()),
            _ => ("krbd", part),
        };
        if !matches!(mounter, "krbd" | "nbd" | "rbd-nbd" | "fuse") {
            return err(format!(
                "mapOptions: unknown mounter {mounter:?} in {part:?} (use krbd: or nbd:)"
            ));
        }
        if opts.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return err(format!("mapOptions: {opts:?} must not contain spaces"));
        }
        let mounter = if mounter == "rbd-nbd" { "nbd" } else { mounter };
        crate::options::check_map(mounter, opts).map_err(|e| ParamError(e.message()))?;
        out.push((mounter.to_string(), opts.to_string()));
    }
    Ok(out)
}

/// Moved to [`crate::credentials`]; re-exported so existing paths keep working.
pub use crate::credentials::Credentials;

/// Provisioning credentials: adminID/adminKey, userID/userKey, or the legacy single `key`
/// (user from the `adminId` parameter, in-tree default "admin"). See
/// [`crate::credentials::rbd_provisioning`].
pub fn controller_credentials(
    secrets: &HashMap<String, String>,
    legacy_user: Option<&str>,
) -> Result<Credentials, ParamError> {
    crate::credentials::rbd_provisioning(secrets, legacy_user).map_err(|e| ParamError(e.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn ceph_csi_storage_class() {
        let p = RbdParams::parse(&map(&[
            ("clusterID", "abc"),
            ("pool", "rbd"),
            ("imageFeatures", "deep-flatten,layering,exclusive-lock"),
            ("csi.storage.k8s.io/fstype", "xfs"),
            ("csi.storage.k8s.io/provisioner-secret-name", "s"),
            ("csi.storage.k8s.io/pvc/name", "data"),
            (
                "mapOptions",
                "krbd:lock_on_read,queue_depth=1024;nbd:try-netlink",
            ),
        ]))
        .unwrap();
        assert_eq!(p.cluster_id, "abc");
        assert_eq!(
            p.features,
            vec!["layering", "exclusive-lock", "deep-flatten"]
        );
        assert_eq!(p.fs_type.as_deref(), Some("xfs"));
        assert_eq!(p.pvc_name.as_deref(), Some("data"));
        assert_eq!(p.vol_prefix, "csi-vol-");
        let ctx = p.volume_context();
        assert_eq!(ctx["pool"], "rbd");
        assert!(!ctx.contains_key("monitors"));
    }

    #[test]
    fn legacy_in_tree_storage_class() {
        // kubernetes.io/rbd as in the in-tree docs (seed 002)
        let p = RbdParams::parse(&map(&[
            ("monitors", "10.16.153.105:6789, 10.16.153.106:6789"),
            ("adminId", "kube"),
            ("adminSecretName", "ceph-secret"),
            ("adminSecretNamespace", "kube-system"),
            ("pool", "kube"),
            ("userId", "kube"),
            ("userSecretName", "ceph-secret-user"),
            ("userSecretNamespace", "default"),
            ("fsType", "ext4"),
            ("imageFormat", "2"),
            ("imageFeatures", "layering"),
        ]))
        .unwrap();
        assert_eq!(p.cluster_id, "10.16.153.105:6789,10.16.153.106:6789");
        assert_eq!(p.monitors.len(), 2);
        assert_eq!(p.admin_id.as_deref(), Some("kube"));
        assert_eq!(p.volume_context()["monitors"], p.cluster_id);
    }

    #[test]
    fn rejections_name_the_parameter() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("clusterID", "a"), ("pool", "p"), ("poool", "x")],
                "poool",
            ),
            (
                &[("clusterID", "a"), ("pool", "p"), ("imageFormat", "1")],
                "imageFormat",
            ),
            (
                &[("clusterID", "a"), ("monitors", "m:1"), ("pool", "p")],
                "contradict",
            ),
            (&[("pool", "p")], "clusterID"),
            (&[("clusterID", "a")], "pool"),
            (
                &[
                    ("clusterID", "a"),
                    ("pool", "p"),
                    ("imageFeatures", "layering,turbo"),
                ],
                "turbo",
            ),
            (
                &[
                    ("clusterID", "a"),
                    ("pool", "p"),
                    ("imageFeatures", "layering,fast-diff"),
                ],
                "fast-diff requires object-map",
            ),
            (
                &[("clusterID", "a"), ("pool", "p"), ("encrypted", "true")],
                "encrypted",
            ),
            (
                &[
                    ("clusterID", "a"),
                    ("pool", "p"),
                    ("fsType", "ext4"),
                    ("csi.storage.k8s.io/fstype", "xfs"),
                ],
                "contradict",
            ),
            (
                &[("clusterID", "a"), ("pool", "p"), ("fsType", "btrfs")],
                "btrfs",
            ),
            (
                &[("clusterID", "a"), ("pool", "p"), ("stripeUnit", "65536")],
                "together",
            ),
            (
                &[("clusterID", "a"), ("pool", "p"), ("objectSize", "3000")],
                "power of two",
            ),
            (
                &[("clusterID", "a"), ("pool", "p"), ("mounter", "iscsi")],
                "iscsi",
            ),
            (
                &[
                    ("clusterID", "a"),
                    ("pool", "p"),
                    ("mapOptions", "xnbd:foo"),
                ],
                "xnbd",
            ),
        ];
        for (kv, needle) in cases {
            let e = RbdParams::parse(&map(kv)).unwrap_err().0;
            assert!(e.contains(needle), "{kv:?}: {e}");
        }
        assert!(RbdParams::parse(&map(&[
            ("clusterID", "a"),
            ("pool", "p"),
            ("encrypted", "false")
        ]))
        .is_ok());
    }

    #[test]
    fn map_options() {
        assert_eq!(
            parse_map_options("krbd:noshare,queue_depth=1;nbd:try-netlink").unwrap(),
            vec![
                ("krbd".into(), "noshare,queue_depth=1".into()),
                ("nbd".into(), "try-netlink".into())
            ]
        );
        let e = parse_map_options("nbd:quiesce-hook=/tmp/x").unwrap_err();
        assert!(e.0.contains("quiesce-hook"), "{}", e.0);
        assert_eq!(
            parse_map_options("lock_on_read").unwrap(),
            vec![("krbd".into(), "lock_on_read".into())]
        );
        assert!(parse_map_options("krbd:a b").is_err());
    }

    #[test]
    fn credentials() {
        let c =
            controller_credentials(&map(&[("userID", "csi-rbd"), ("userKey", "K")]), None).unwrap();
        assert_eq!((c.user.as_str(), c.key.as_str()), ("csi-rbd", "K"));
        let c = controller_credentials(&map(&[("key", "K")]), Some("kube")).unwrap();
        assert_eq!(c.user, "kube");
        let c = controller_credentials(
            &map(&[("adminID", "client.admin"), ("adminKey", "K")]),
            None,
        )
        .unwrap();
        assert_eq!(c.user, "admin");
        let e = controller_credentials(&map(&[("userID", "u")]), None)
            .unwrap_err()
            .0;
        assert!(e.contains("userKey") && e.contains("userID"), "{e}");
        assert!(!format!("{c:?}").contains('K'));
    }
}
