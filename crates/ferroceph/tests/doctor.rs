//! `ferroceph doctor` against the dev cluster: a healthy setup passes, and each broken one
//! (wrong key, missing pool, caps too narrow, unreachable or duplicated monitors) is
//! reported by the check it concerns, with a fix, exit code 1 and no key in the output.

mod common;

use serde_json::Value;
use std::path::Path;
use std::process::Command;

struct Run {
    code: i32,
    report: Value,
    stdout: String,
    stderr: String,
}

fn doctor(args: &[&str]) -> Run {
    let out = Command::new(common::bin())
        .arg("doctor")
        .args(args)
        .output()
        .expect("run ferroceph doctor");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code().unwrap_or_else(|| {
        panic!(
            "doctor died from a signal ({:?}):\n{stdout}\n{stderr}",
            out.status
        )
    });
    let report = if args.contains(&"--json") {
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}):\n{stdout}\n{stderr}"))
    } else {
        Value::Null
    };
    Run {
        code,
        report,
        stdout,
        stderr,
    }
}

impl Run {
    fn check(&self, id: &str) -> &Value {
        self.report["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["id"] == id))
            .unwrap_or_else(|| panic!("no check {id} in {}", self.stdout))
    }
    fn assert_no_keys(&self, extra: &[&str]) {
        for k in common::cluster()
            .all_keys()
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
        {
            assert!(
                !self.stdout.contains(k) && !self.stderr.contains(k),
                "a key was printed:\n{}\n{}",
                self.stdout,
                self.stderr
            );
        }
    }
}

/// A config.json for the dev cluster (or the given monitors) and a secrets file.
fn setup(dir: &Path, monitors: &[String], user: &str, key: &str) -> (String, String) {
    let cfg = dir.join("config.json");
    let map = serde_json::json!([{"clusterID": common::cluster().fsid(), "monitors": monitors}]);
    std::fs::write(&cfg, map.to_string()).expect("write config");
    let sec = dir.join("secrets");
    std::fs::write(&sec, format!("userID={user}\nuserKey={key}\n")).expect("write secrets");
    (cfg.display().to_string(), sec.display().to_string())
}

fn rbd_user() -> (String, String) {
    let c = common::cluster();
    (c.get("FERRO_RBD_USER"), c.get("FERRO_RBD_KEY"))
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A well-formed cephx key (type 1, 16-byte secret) that no user has.
fn foreign_key() -> String {
    let mut raw = vec![1u8, 0];
    raw.extend_from_slice(&[0u8; 8]);
    raw.extend_from_slice(&[16, 0]);
    raw.extend(uuid::Uuid::new_v4().as_bytes());
    base64(&raw)
}

#[test]
fn healthy_cluster_passes() {
    let c = common::cluster();
    let (user, key) = rbd_user();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, sec) = setup(dir.path(), &[c.monitors()], &user, &key);
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
    ]);
    assert_eq!(r.code, 0, "{}", r.stdout);
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

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
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

#[test]
fn node_checks_run_on_this_machine() {
    let c = common::cluster();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, _) = setup(dir.path(), &[c.monitors()], "x", "y");
    let shm = Path::new("/dev/shm");
    let keys_parent = if shm.is_dir() {
        tempfile::tempdir_in(shm).expect("tempdir in /dev/shm")
    } else {
        tempfile::tempdir().expect("tempdir")
    };
    let keys = keys_parent.path().join("keys");
    let r = doctor(&[
        "--role",
        "node",
        "--json",
        "--configpath",
        &cfg,
        "--keysdir",
        &keys.display().to_string(),
        "--image-features",
        "layering,exclusive-lock",
    ]);
    for id in [
        "kernel.rbd",
        "kernel.rbd.features",
        "kernel.nbd",
        "kernel.ceph",
        "dev.fuse",
        "dev.loop",
        "mounter.rbd",
        "mounter.cephfs",
        "tool.mount",
        "tool.rbd",
        "tool.ceph-fuse",
        "keysdir",
        "config",
    ] {
        let chk = r.check(id);
        assert!(
            matches!(s(&chk["status"]), "ok" | "warn" | "fail" | "skip"),
            "{chk}"
        );
        if matches!(s(&chk["status"]), "warn" | "fail") {
            assert!(!s(&chk["fix"]).is_empty(), "a problem without a fix: {chk}");
        }
    }
    // The dev machine has /dev/fuse and the tools scripts/setup.sh installs.
    assert_eq!(r.check("dev.fuse")["status"], "ok");
    assert_eq!(r.check("tool.mount")["status"], "ok");
    assert_eq!(r.check("tool.ceph-fuse")["status"], "ok");
    if shm.is_dir() {
        let k = r.check("keysdir");
        assert_eq!(k["status"], "ok", "{k}");
        assert!(s(&k["summary"]).contains("memory-backed"), "{k}");
    }
    // A disk-backed keys directory is a warning with the emptyDir fix.
    let on_disk = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let r = doctor(&[
        "--role",
        "node",
        "--json",
        "--configpath",
        &cfg,
        "--keysdir",
        &on_disk.path().display().to_string(),
    ]);
    let k = r.check("keysdir");
    if s(&k["summary"]).contains("tmpfs") {
        return; // the target directory itself is on tmpfs here
    }
    assert_eq!(k["status"], "warn", "{k}");
    assert!(s(&k["fix"]).contains("medium: Memory"), "{k}");
}
