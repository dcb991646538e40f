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

// ---------------------------------------------------------------------------------------
// Journal consistency and --fix
// ---------------------------------------------------------------------------------------

fn admin() -> rados::Cluster {
    let c = common::cluster();
    rados::Cluster::connect(&rados::ConnectConfig::new(
        [c.monitors()],
        "admin",
        c.get("FERRO_ADMIN_KEY"),
    ))
    .expect("admin connection")
}

/// What the journal test creates, removed (whatever is left of it) when dropped.
struct JournalMess {
    io: rados::IoCtx,
    instance: String,
    images: Vec<String>,
    /// (name, uuid) of journal entries.
    entries: Vec<(String, String)>,
    objects: Vec<String>,
}

impl JournalMess {
    fn journal(&self) -> ferroceph::journal::Journal<'_> {
        ferroceph::journal::Journal::new(&self.io, ferroceph::journal::Kind::Volume, &self.instance)
    }
    fn image(&mut self, name: &str) {
        rados::rbd::create(&self.io, name, &rados::rbd::ImageOptions::new(4 << 20))
            .expect("create image");
        self.images.push(name.to_string());
    }
    fn entry(&mut self, name: &str, uuid: &str, image: &str) {
        let attrs = std::collections::BTreeMap::from([
            ("csi.imagename".to_string(), image.to_string()),
            ("csi.imageid".to_string(), "1234abcd".to_string()),
        ]);
        self.journal()
            .reserve(name, uuid, &attrs)
            .expect("reserve journal entry");
        self.entries.push((name.to_string(), uuid.to_string()));
    }
    /// Clones `parent` into `child` the way ceph-csi does: a snapshot of the parent named
    /// after the child, the clone, then the snapshot removed (with clone v2 it lives on in
    /// the trash namespace as long as the child does).
    fn clone_image(&mut self, parent: &str, child: &str) {
        let p = rados::rbd::Image::open(&self.io, parent).expect("open parent");
        p.snap_create(child).expect("snap create");
        rados::rbd::clone(
            &self.io,
            parent,
            child,
            &self.io,
            child,
            &rados::rbd::CloneOptions::default(),
        )
        .expect("clone");
        p.snap_remove(child).expect("snap remove");
        self.images.push(child.to_string());
    }
    fn image_exists(&self, name: &str) -> bool {
        rados::rbd::list_images(&self.io)
            .expect("list images")
            .iter()
            .any(|i| i == name)
    }
    fn object_exists(&self, name: &str) -> bool {
        match self.io.stat(name) {
            Ok(_) => true,
            Err(e) if e.kind() == rados::ErrorKind::NotFound => false,
            Err(e) => panic!("stat {name}: {e}"),
        }
    }
    fn key_exists(&self, name: &str) -> bool {
        self.journal()
            .list("", 1000)
            .expect("list journal")
            .iter()
            .any(|(n, _)| n == name)
    }
}

impl Drop for JournalMess {
    fn drop(&mut self) {
        // Clones were created after their parents: removed before them.
        for i in self.images.iter().rev() {
            let _ = rados::rbd::remove(&self.io, i);
        }
        for (name, uuid) in &self.entries {
            let _ = self.journal().release(uuid, Some(name));
        }
        for o in &self.objects {
            let _ = self.io.remove_object(o);
        }
        for dir in ["csi.volumes.", "csi.snaps."] {
            let _ = self.io.remove_object(&format!("{dir}{}", self.instance));
        }
    }
}

fn findings<'a>(r: &'a Run, id: &str, uuid: &str) -> Vec<&'a Value> {
    r.report["checks"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|c| c["id"] == id && s(&c["summary"]).contains(uuid))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn journal_orphans_are_reported_and_fixed() {
    let c = common::cluster();
    let pool = c.get("FERRO_RBD_POOL");
    let (user, key) = rbd_user();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, sec) = setup(dir.path(), &[c.monitors()], &user, &key);
    let conn = admin();
    let tag = common::unique("doctortest");
    let vol_prefix = format!("{tag}-vol-");
    let snap_prefix = format!("{tag}-snap-");
    let mut m = JournalMess {
        io: conn.ioctx(&pool, "").expect("ioctx"),
        instance: tag.clone(),
        images: Vec::new(),
        entries: Vec::new(),
        objects: Vec::new(),
    };
    let uuid = || uuid::Uuid::new_v4().to_string();
    let (healthy, orphan_img, orphan_key, dangling) = (uuid(), uuid(), uuid(), uuid());
    let img = |u: &str| format!("{vol_prefix}{u}");
    // A healthy volume: full journal entry and its image.
    let healthy_name = format!("pvc-{healthy}");
    m.entry(&healthy_name, &healthy, &img(&healthy));
    m.image(&img(&healthy));
    // An orphaned image: no journal at all.
    m.image(&img(&orphan_img));
    // An orphaned journal key: directory key + per-volume object, no image.
    let key_name = format!("pvc-{orphan_key}");
    m.entry(&key_name, &orphan_key, &img(&orphan_key));
    // An image whose per-volume object has no directory key (interrupted delete).
    m.image(&img(&dangling));
    let dangling_obj = format!("csi.volume.{dangling}");
    m.io.create_with_omap(
        &dangling_obj,
        &[
            ("csi.volname", format!("pvc-{dangling}").as_bytes()),
            ("csi.imagename", img(&dangling).as_bytes()),
        ],
    )
    .expect("create per-volume object");
    m.objects.push(dangling_obj.clone());
    // A PV list without the healthy volume.
    let pv_empty = dir.path().join("pv-empty.json");
    std::fs::write(&pv_empty, r#"{"apiVersion": "v1", "items": []}"#).expect("write pv json");
    let pool_id = m.io.pool_id();
    let handle = ferroceph::volid::CsiId::new(&c.fsid(), pool_id, &healthy)
        .expect("handle")
        .to_string();
    let pv_full = dir.path().join("pv-full.json");
    let pvs = serde_json::json!({"items": [{"metadata": {"name": healthy_name},
        "spec": {"csi": {"driver": "rbd.ferroceph.io", "volumeHandle": handle}}}]});
    std::fs::write(&pv_full, pvs.to_string()).expect("write pv json");

    let base: Vec<String> = [
        "--role",
        "controller",
        "--configpath",
        &cfg,
        "--secrets-file",
        &sec,
        "--pool",
        &pool,
        "--instanceid",
        &tag,
        "--volume-name-prefix",
        &vol_prefix,
        "--snapshot-name-prefix",
        &snap_prefix,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let run = |extra: &[&str]| {
        let mut a: Vec<&str> = base.iter().map(String::as_str).collect();
        a.extend_from_slice(extra);
        doctor(&a)
    };

    // 1. Report only: each problem precisely, exit 1, nothing changed.
    let pv_empty_s = pv_empty.display().to_string();
    let r = run(&["--json", "--pv-json", &pv_empty_s]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    let one = |id: &str, u: &str| {
        let f = findings(&r, id, u);
        assert_eq!(f.len(), 1, "{id} for {u}: {}", r.stdout);
        assert_eq!(f[0]["status"], "fail", "{}", f[0]);
        assert!(f[0]["fix"].as_str().is_some_and(|f| !f.is_empty()));
        f[0].clone()
    };
    let f = one("journal.orphan-image", &orphan_img);
    assert!(
        s(&f["summary"]).contains(&format!("{pool}/{}", img(&orphan_img))),
        "{f}"
    );
    assert!(s(&f["fix"]).contains("rbd trash mv"), "{f}");
    let f = one("journal.orphan-key", &orphan_key);
    assert!(
        s(&f["summary"]).contains(&format!("csi.volume.{key_name}")),
        "{f}"
    );
    assert!(
        s(&f["fix"]).contains(&format!(
            "rmomapkey csi.volumes.{tag} csi.volume.{key_name}"
        )),
        "{f}"
    );
    // An image with a per-volume object but no key in this instance's directory may be
    // another instance's volume: reported, never called an orphan.
    assert!(
        findings(&r, "journal.orphan-image", &dangling).is_empty(),
        "{}",
        r.stdout
    );
    let f = findings(&r, "journal.dangling-object", &dangling);
    assert_eq!(f.len(), 1, "{}", r.stdout);
    assert_eq!(f[0]["status"], "warn", "{}", f[0]);
    assert!(
        s(&f[0]["fix"]).contains(&format!("rm {dangling_obj}")),
        "{}",
        f[0]
    );
    let f = one("journal.no-pv", &healthy);
    assert!(s(&f["summary"]).contains(&handle), "{f}");
    // The healthy volume is reported for nothing else.
    let about_healthy: Vec<_> = r.report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| s(&c["summary"]).contains(&healthy))
        .collect();
    assert_eq!(about_healthy.len(), 1, "{}", r.stdout);
    r.assert_no_keys(&[]);
    assert!(m.image_exists(&img(&orphan_img)) && m.image_exists(&img(&dangling)));
    assert!(m.key_exists(&key_name) && m.object_exists(&dangling_obj));

    // 2. --fix: prints the plan first, then removes exactly the orphans.
    let r = run(&["--fix"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    let (plan, report) = r
        .stdout
        .split_once("\n\n")
        .unwrap_or_else(|| panic!("no plan before the report:\n{}", r.stdout));
    assert!(plan.starts_with("--fix will remove:"), "{}", r.stdout);
    let plan_lines: Vec<&str> = plan.lines().skip(1).collect();
    assert_eq!(plan_lines.len(), 2, "{plan}");
    assert!(
        plan_lines
            .iter()
            .any(|l| l.contains(&format!("image {pool}/{}", img(&orphan_img)))),
        "{plan}"
    );
    assert!(
        plan.contains(&format!("journal key csi.volume.{key_name}")),
        "{plan}"
    );
    assert!(!plan.contains(&dangling), "{plan}");
    assert!(!plan.contains(&healthy), "{plan}");
    assert!(report.contains("fixed: removed"), "{}", r.stdout);
    r.assert_no_keys(&[]);
    assert!(!m.image_exists(&img(&orphan_img)));
    assert!(m.image_exists(&img(&dangling)));
    assert!(m.object_exists(&dangling_obj));
    assert!(!m.key_exists(&key_name));
    assert!(!m.object_exists(&format!("csi.volume.{orphan_key}")));
    // The healthy volume is untouched.
    assert!(m.image_exists(&img(&healthy)));
    assert!(m.key_exists(&healthy_name));
    assert!(m.object_exists(&format!("csi.volume.{healthy}")));

    // 3. Clean afterwards (once the dangling object is gone), with a PV list that has the
    // volume.
    m.io.remove_object(&dangling_obj)
        .expect("remove dangling object");
    assert!(rados::rbd::remove(&m.io, &img(&dangling)).is_ok());
    let pv_full_s = pv_full.display().to_string();
    let r = run(&["--json", "--pv-json", &pv_full_s]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    let j = r.check("journal");
    assert_eq!(j["status"], "ok", "{j}");
    assert!(s(&j["summary"]).contains("1 entry with an image"), "{j}");
}

#[test]
fn without_a_pool_listing_nothing_is_checked_or_fixed() {
    let c = common::cluster();
    let (user, key) = rbd_user();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, sec) = setup(dir.path(), &[c.monitors()], &user, &key);
    let r = doctor(&[
        "--role",
        "controller",
        "--json",
        "--fix",
        "--configpath",
        &cfg,
        "--secrets-file",
        &sec,
        "--pool",
        &common::unique("no-such-pool"),
    ]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert_eq!(r.check("journal")["status"], "skip", "{}", r.stdout);
    assert!(!r.stderr.contains("will remove"), "{}", r.stderr);
}

#[test]
fn fix_leaves_an_orphaned_image_in_use() {
    let c = common::cluster();
    let pool = c.get("FERRO_RBD_POOL");
    let (user, key) = rbd_user();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, sec) = setup(dir.path(), &[c.monitors()], &user, &key);
    let conn = admin();
    let tag = common::unique("doctorbusy");
    let vol_prefix = format!("{tag}-vol-");
    let mut m = JournalMess {
        io: conn.ioctx(&pool, "").expect("ioctx"),
        instance: tag.clone(),
        images: Vec::new(),
        entries: Vec::new(),
        objects: Vec::new(),
    };
    let busy = format!("{vol_prefix}{}", uuid::Uuid::new_v4());
    m.image(&busy);
    // Opened read-write: the handle watches the header, as a mapped image's client does.
    let held = rados::rbd::Image::open(&m.io, &busy).expect("open image");
    let r = doctor(&[
        "--role",
        "controller",
        "--configpath",
        &cfg,
        "--secrets-file",
        &sec,
        "--pool",
        &pool,
        "--instanceid",
        &tag,
        "--volume-name-prefix",
        &vol_prefix,
        "--snapshot-name-prefix",
        &format!("{tag}-snap-"),
        "--fix",
    ]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.contains("watcher(s)"), "{}", r.stdout);
    assert!(m.image_exists(&busy), "an image in use was removed");
    drop(held);
}

#[test]
fn a_fresh_incomplete_entry_is_a_create_in_flight() {
    let c = common::cluster();
    let pool = c.get("FERRO_RBD_POOL");
    let (user, key) = rbd_user();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, sec) = setup(dir.path(), &[c.monitors()], &user, &key);
    let conn = admin();
    let tag = common::unique("doctorflight");
    let vol_prefix = format!("{tag}-vol-");
    let mut m = JournalMess {
        io: conn.ioctx(&pool, "").expect("ioctx"),
        instance: tag.clone(),
        images: Vec::new(),
        entries: Vec::new(),
        objects: Vec::new(),
    };
    let u = uuid::Uuid::new_v4().to_string();
    let name = format!("pvc-{u}");
    // Reserved, image not created yet: no csi.imageid.
    let attrs = std::collections::BTreeMap::from([(
        "csi.imagename".to_string(),
        format!("{vol_prefix}{u}"),
    )]);
    m.journal().reserve(&name, &u, &attrs).expect("reserve");
    m.entries.push((name.clone(), u.clone()));
    let r = doctor(&[
        "--role",
        "controller",
        "--json",
        "--fix",
        "--configpath",
        &cfg,
        "--secrets-file",
        &sec,
        "--pool",
        &pool,
        "--instanceid",
        &tag,
        "--volume-name-prefix",
        &vol_prefix,
        "--snapshot-name-prefix",
        &format!("{tag}-snap-"),
    ]);
    assert_eq!(r.code, 0, "warnings only: {}", r.stdout);
    let f = findings(&r, "journal.in-flight", &u);
    assert_eq!(f.len(), 1, "{}", r.stdout);
    assert_eq!(f[0]["status"], "warn");
    assert!(
        m.key_exists(&name),
        "--fix removed an entry that may be in flight"
    );
}

// ---------------------------------------------------------------------------------------
// --fix never removes what another journal references (issue 14 item 6)
// ---------------------------------------------------------------------------------------

/// `doctor --role controller --json` on `pool` for instance `tag` (prefixes `<tag>-vol-`,
/// `<tag>-snap-`), plus `extra`.
fn journal_doctor(cfg: &str, sec: &str, pool: &str, tag: &str, extra: &[&str]) -> Run {
    let (vol_prefix, snap_prefix) = (format!("{tag}-vol-"), format!("{tag}-snap-"));
    let mut a = vec![
        "--role",
        "controller",
        "--json",
        "--configpath",
        cfg,
        "--secrets-file",
        sec,
        "--pool",
        pool,
        "--instanceid",
        tag,
        "--volume-name-prefix",
        &vol_prefix,
        "--snapshot-name-prefix",
        &snap_prefix,
    ];
    a.extend_from_slice(extra);
    doctor(&a)
}

fn mess(conn: &rados::Cluster, pool: &str, instance: &str) -> JournalMess {
    JournalMess {
        io: conn.ioctx(pool, "").expect("ioctx"),
        instance: instance.to_string(),
        images: Vec::new(),
        entries: Vec::new(),
        objects: Vec::new(),
    }
}

/// Every check that mentions `needle`.
fn mentioning<'a>(r: &'a Run, needle: &str) -> Vec<&'a Value> {
    r.report["checks"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|c| s(&c["summary"]).contains(needle))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn fix_keeps_the_volumes_of_another_instance() {
    let c = common::cluster();
    let pool = c.get("FERRO_RBD_POOL");
    let (user, key) = rbd_user();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, sec) = setup(dir.path(), &[c.monitors()], &user, &key);
    let conn = admin();
    let tag = common::unique("doctorinst");
    // Another driver instance (its own --instanceid) with the same name prefixes in the
    // same pool: its volume has a directory key in csi.volumes.<other> only.
    let mut other = mess(&conn, &pool, &format!("{tag}-other"));
    let u = uuid::Uuid::new_v4().to_string();
    let (name, image) = (format!("pvc-{u}"), format!("{tag}-vol-{u}"));
    other.entry(&name, &u, &image);
    other.image(&image);
    let r = journal_doctor(&cfg, &sec, &pool, &tag, &["--fix"]);
    assert!(
        other.image_exists(&image),
        "another instance's volume was removed: {}",
        r.stdout
    );
    assert!(
        other.object_exists(&format!("csi.volume.{u}")),
        "{}",
        r.stdout
    );
    assert!(other.key_exists(&name), "{}", r.stdout);
    for f in mentioning(&r, &u) {
        assert_ne!(f["status"], "fail", "reported as an orphan: {f}");
    }
    assert_eq!(r.code, 0, "{}", r.stdout);
    r.assert_no_keys(&[]);
}

/// Objects written by hand in another pool, removed when dropped.
struct Objects<'a> {
    io: &'a rados::IoCtx,
    names: Vec<String>,
}

impl Drop for Objects<'_> {
    fn drop(&mut self) {
        for o in &self.names {
            let _ = self.io.remove_object(o);
        }
    }
}

#[test]
fn fix_keeps_volumes_whose_journal_is_in_another_pool() {
    let c = common::cluster();
    let pool = c.get("FERRO_RBD_POOL");
    let (user, key) = rbd_user();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, sec) = setup(dir.path(), &[c.monitors()], &user, &key);
    let conn = admin();
    let tag = common::unique("doctorxpool");
    // ceph-csi with StorageClass journalPool=cephfs_data, pool=rbd: the directory is in the
    // journal pool with the value <image pool id>/<uuid>; the per-volume object, with
    // csi.journalpool, and the image are in the image pool.
    let journal_io = conn.ioctx("cephfs_data", "").expect("journal pool");
    let m = {
        let mut m = mess(&conn, &pool, &tag);
        let u = uuid::Uuid::new_v4().to_string();
        m.image(&format!("{tag}-vol-{u}"));
        (m, u)
    };
    let (mut m, u) = m;
    let (name, image) = (format!("pvc-{u}"), format!("{tag}-vol-{u}"));
    let per_volume = format!("csi.volume.{u}");
    m.io.create_with_omap(
        &per_volume,
        &[
            ("csi.volname", name.as_bytes()),
            ("csi.imagename", image.as_bytes()),
            ("csi.imageid", b"1234abcd"),
            (
                "csi.journalpool",
                format!("{:016x}", journal_io.pool_id()).as_bytes(),
            ),
        ],
    )
    .expect("per-volume object");
    m.objects.push(per_volume.clone());
    let directory = format!("csi.volumes.{tag}");
    let mut journal = Objects {
        io: &journal_io,
        names: Vec::new(),
    };
    journal_io
        .omap_set(
            &directory,
            &[(
                format!("csi.volume.{name}").as_str(),
                format!("{:016x}/{u}", m.io.pool_id()).as_bytes(),
            )],
        )
        .expect("directory key");
    journal.names.push(directory.clone());

    // From the image pool: the image and its object belong to a journal elsewhere.
    let r = journal_doctor(&cfg, &sec, &pool, &tag, &["--fix"]);
    assert!(
        m.image_exists(&image),
        "a volume journaled in another pool was removed: {}",
        r.stdout
    );
    assert!(m.object_exists(&per_volume), "{}", r.stdout);
    for f in mentioning(&r, &u) {
        assert_ne!(f["status"], "fail", "reported as an orphan: {f}");
    }

    // From the journal pool (a user who may read it): the entry's image is in pool rbd, so
    // the entry is healthy and --fix leaves the key.
    let (_, admin_sec) = setup(
        dir.path(),
        &[c.monitors()],
        "admin",
        &c.get("FERRO_ADMIN_KEY"),
    );
    let r = journal_doctor(&cfg, &admin_sec, "cephfs_data", &tag, &["--fix"]);
    let keys = journal_io
        .omap_list(&directory, "", "", 10)
        .expect("read directory");
    assert_eq!(
        keys.len(),
        1,
        "the journal key of a live volume was removed: {}",
        r.stdout
    );
    for f in mentioning(&r, &u) {
        assert_ne!(f["status"], "fail", "reported as an orphan: {f}");
    }
    assert!(m.image_exists(&image));
    let j = r.check("journal");
    assert_eq!(j["status"], "ok", "{}", r.stdout);
    assert!(s(&j["summary"]).contains("1 entry with an image"), "{j}");
    drop(journal);
}

#[test]
fn temp_clones_in_use_are_kept_and_leftovers_removed() {
    let c = common::cluster();
    let pool = c.get("FERRO_RBD_POOL");
    let (user, key) = rbd_user();
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, sec) = setup(dir.path(), &[c.monitors()], &user, &key);
    let conn = admin();
    let tag = common::unique("doctortemp");
    let mut m = mess(&conn, &pool, &tag);
    let vol = |u: &str| format!("{tag}-vol-{u}");
    let uuid = || uuid::Uuid::new_v4().to_string();
    let (source, cloned, leftover, busy, parent) = (uuid(), uuid(), uuid(), uuid(), uuid());
    // A volume cloned from a volume, as ceph-csi lays it out: source -> <vol>-temp -> vol.
    m.entry(&format!("pvc-{source}"), &source, &vol(&source));
    m.image(&vol(&source));
    let temp = format!("{}-temp", vol(&cloned));
    m.clone_image(&vol(&source), &temp);
    m.entry(&format!("pvc-{cloned}"), &cloned, &vol(&cloned));
    m.clone_image(&temp, &vol(&cloned));
    // A -temp image whose volume is gone (a failed clone or delete): a leftover.
    let leftover_temp = format!("{}-temp", vol(&leftover));
    m.image(&leftover_temp);
    // A -temp image without its volume that still has a clone: not removable.
    let busy_temp = format!("{}-temp", vol(&busy));
    m.image(&busy_temp);
    m.clone_image(&busy_temp, &format!("{tag}-child-{busy}"));
    // A volume image no journal references whose clone a journal snapshot references.
    m.image(&vol(&parent));
    let snap_u = uuid();
    let snap_image = format!("{tag}-snap-{snap_u}");
    m.clone_image(&vol(&parent), &snap_image);
    ferroceph::journal::Journal::new(&m.io, ferroceph::journal::Kind::Snapshot, &tag)
        .reserve(
            &format!("snapshot-{snap_u}"),
            &snap_u,
            &std::collections::BTreeMap::from([
                ("csi.imagename".to_string(), snap_image.clone()),
                ("csi.imageid".to_string(), "1234abcd".to_string()),
                ("csi.source".to_string(), vol(&parent)),
            ]),
        )
        .expect("reserve snapshot");
    let snap_dir = format!("csi.snaps.{tag}");
    m.objects.push(format!("csi.snap.{snap_u}"));
    m.objects.push(snap_dir);

    // 1. Report: the leftover temp is an orphan; nothing in use is.
    let r = journal_doctor(&cfg, &sec, &pool, &tag, &[]);
    let f = findings(&r, "journal.orphan-temp", &leftover_temp);
    assert_eq!(
        f.len(),
        1,
        "a leftover -temp image is reported: {}",
        r.stdout
    );
    assert_eq!(f[0]["status"], "fail", "{}", f[0]);
    assert!(mentioning(&r, &temp).is_empty(), "{}", r.stdout);
    for f in mentioning(&r, &busy_temp) {
        assert_ne!(
            f["status"], "fail",
            "a parent with clones is not an orphan: {f}"
        );
    }
    for f in mentioning(&r, &vol(&parent)) {
        assert_ne!(
            f["status"], "fail",
            "a parent with clones is not an orphan: {f}"
        );
    }

    // 2. --fix removes the leftover only.
    let r = journal_doctor(&cfg, &sec, &pool, &tag, &["--fix"]);
    assert!(!m.image_exists(&leftover_temp), "{}", r.stdout);
    for i in [
        &vol(&source),
        &temp,
        &vol(&cloned),
        &busy_temp,
        &vol(&parent),
        &snap_image,
    ] {
        assert!(m.image_exists(i), "{i} was removed: {}", r.stdout);
    }
    let trash = rados::rbd::trash_list(&m.io).expect("trash list");
    assert!(
        trash.iter().all(|t| !t.name.starts_with(&tag)),
        "moved to the trash: {trash:?}"
    );
    r.assert_no_keys(&[]);
}
