//! `ferroceph doctor` against the dev cluster: a healthy setup passes, and each broken one
//! (wrong key, missing pool, caps too narrow, unreachable or duplicated monitors) is
//! reported by the check it concerns, with a fix, exit code 1 and no key in the output.

mod common;

use common::doctor::*;

#[test]
fn healthy_cluster_passes() {
    let c = common::cluster();
    let (user, key) = rbd_user();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, sec) = setup(dir.path(), &[c.monitors()], &user, &key);
    // Other tests create and delete volumes in the same pool meanwhile: the journal check
    // looks at an instance and image prefixes of this test only.
    let tag = common::unique("doctorok");
    let (vol_prefix, snap_prefix) = (format!("{tag}-vol-"), format!("{tag}-snap-"));
    let r = doctor(&[
        "--role",
        "controller",
        "--json",
        "--configpath",
        &cfg,
        "--secrets-file",
        &sec,
        "--pool",
        &c.get("FERRO_RBD_POOL"),
        "--instanceid",
        &tag,
        "--volume-name-prefix",
        &vol_prefix,
        "--snapshot-name-prefix",
        &snap_prefix,
    ]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert_eq!(r.check("journal")["status"], "ok", "{}", r.stdout);
    assert_eq!(r.report["ok"], true);
    assert_eq!(r.check("config")["status"], "ok");
    let mons = r.check(&format!("monitors.{}", c.fsid()));
    assert_eq!(mons["status"], "ok", "{mons}");
    assert!(s(&mons["summary"]).contains("msgr1"), "{mons}");
    let auth = r.check("ceph.auth.user");
    assert_eq!(auth["status"], "ok", "{auth}");
    assert!(
        s(&auth["summary"]).contains(&c.fsid()),
        "the fsid is reported: {auth}"
    );
    assert_eq!(r.check("ceph.pool")["status"], "ok");
    // The controller role runs no node checks.
    assert!(r.report["checks"]
        .as_array()
        .is_some_and(|a| a.iter().all(|c| !s(&c["id"]).starts_with("tool."))));
    r.assert_no_keys(&[]);
}

#[test]
fn wrong_key_is_reported_with_the_fix() {
    let c = common::cluster();
    let (user, _) = rbd_user();
    let wrong = foreign_key();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, sec) = setup(dir.path(), &[c.monitors()], &user, &wrong);
    let r = doctor(&[
        "--role",
        "controller",
        "--json",
        "--configpath",
        &cfg,
        "--secrets-file",
        &sec,
        "--timeout",
        "10s",
        "--pool",
        "rbd",
    ]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    let auth = r.check("ceph.auth.user");
    assert_eq!(auth["status"], "fail", "{auth}");
    assert!(s(&auth["why"]).contains("refused"), "{auth}");
    assert!(
        s(&auth["fix"]).contains(&format!("ceph auth get-key client.{user}")),
        "{auth}"
    );
    assert_eq!(r.check("ceph.pool")["status"], "skip");
    r.assert_no_keys(&[&wrong]);

    // The text form carries the same finding and fix.
    let t = doctor(&[
        "--role",
        "controller",
        "--configpath",
        &cfg,
        "--secrets-file",
        &sec,
        "--timeout",
        "10s",
    ]);
    assert_eq!(t.code, 1);
    assert!(
        t.stdout.contains("[FAIL] ceph.auth.user: client."),
        "{}",
        t.stdout
    );
    assert!(t.stdout.contains("       fix: "), "{}", t.stdout);
    t.assert_no_keys(&[&wrong]);
}

#[test]
fn missing_pool_is_reported_with_the_fix() {
    let c = common::cluster();
    let (user, key) = rbd_user();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, sec) = setup(dir.path(), &[c.monitors()], &user, &key);
    let pool = common::unique("no-such-pool");
    let r = doctor(&[
        "--role",
        "controller",
        "--json",
        "--configpath",
        &cfg,
        "--secrets-file",
        &sec,
        "--pool",
        &pool,
    ]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert_eq!(r.check("ceph.auth.user")["status"], "ok");
    let p = r.check("ceph.pool");
    assert_eq!(p["status"], "fail", "{p}");
    assert!(s(&p["summary"]).contains("does not exist"), "{p}");
    assert_eq!(
        s(&p["fix"]),
        format!("ceph osd pool create {pool} && rbd pool init {pool}")
    );
    r.assert_no_keys(&[]);
}

/// A throwaway cephx user, removed when dropped.
struct TempUser {
    name: String,
    key: String,
}

impl TempUser {
    fn new(caps: &[&str]) -> TempUser {
        let name = common::unique("doctor-narrow");
        let entity = format!("client.{name}");
        let mut args = vec!["auth", "get-or-create", entity.as_str()];
        args.extend_from_slice(caps);
        let (ok, out) = common::admin_cli("ceph", &args);
        assert!(ok, "ceph auth get-or-create: {out}");
        let (ok, key) = common::admin_cli("ceph", &["auth", "get-key", &entity]);
        assert!(ok, "ceph auth get-key failed");
        TempUser {
            name,
            key: key.trim().to_string(),
        }
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let _ = common::admin_cli("ceph", &["auth", "del", &format!("client.{}", self.name)]);
    }
}

#[test]
fn caps_too_narrow_are_reported_with_the_fix() {
    let c = common::cluster();
    let narrow = TempUser::new(&["mon", "allow r"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, sec) = setup(dir.path(), &[c.monitors()], &narrow.name, &narrow.key);
    let pool = c.get("FERRO_RBD_POOL");
    let r = doctor(&[
        "--role",
        "controller",
        "--json",
        "--configpath",
        &cfg,
        "--secrets-file",
        &sec,
        "--pool",
        &pool,
        "--timeout",
        "10s",
    ]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert_eq!(
        r.check("ceph.auth.user")["status"],
        "ok",
        "the key itself is right"
    );
    let p = r.check("ceph.pool");
    assert_eq!(p["status"], "fail", "{p}");
    assert!(s(&p["summary"]).contains("may not list"), "{p}");
    assert_eq!(
        s(&p["fix"]),
        format!(
            "ceph auth caps client.{} mon 'profile rbd' osd 'profile rbd pool={pool}' mgr 'profile rbd pool={pool}'",
            narrow.name
        )
    );
    r.assert_no_keys(&[&narrow.key]);
}

#[test]
fn unreachable_and_duplicated_monitors() {
    let c = common::cluster();
    let (user, key) = rbd_user();
    let dir = tempfile::tempdir().expect("tempdir");
    // Nothing listens there: refused at once.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let (cfg, _) = setup(dir.path(), &[format!("127.0.0.1:{closed}")], &user, &key);
    let started = std::time::Instant::now();
    let r = doctor(&[
        "--role",
        "controller",
        "--json",
        "--configpath",
        &cfg,
        "--timeout",
        "3s",
    ]);
    assert!(started.elapsed().as_secs() < 10);
    assert_eq!(r.code, 1);
    let m = r.check(&format!("monitors.{}", c.fsid()));
    assert_eq!(m["status"], "fail", "{m}");
    assert!(s(&m["summary"]).contains("unreachable"), "{m}");
    assert_eq!(r.check("ceph.auth")["status"], "skip");

    // The same monitor twice makes librados abort the process: the doctor says so, and
    // still tries the key with each monitor once instead of crashing itself.
    let twice = [
        c.monitors(),
        format!("[v2:127.0.0.1:3300,v1:{}]", c.monitors()),
    ];
    let (cfg, sec) = setup(dir.path(), &twice, &user, &key);
    let r = doctor(&[
        "--role",
        "controller",
        "--json",
        "--configpath",
        &cfg,
        "--secrets-file",
        &sec,
    ]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    let m = r.check(&format!("monitors.{}", c.fsid()));
    assert_eq!(m["status"], "fail", "{m}");
    assert!(s(&m["summary"]).contains("more than once"), "{m}");
    assert!(s(&m["why"]).contains("aborts"), "{m}");
    assert_eq!(r.check("ceph.auth.user")["status"], "ok");
    r.assert_no_keys(&[]);
}
