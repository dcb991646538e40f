//! Shared helpers of the doctor_*.rs tests: running `ferroceph doctor`, a config and
//! secrets for the dev cluster, and journal entries written by hand.

use serde_json::Value;
use std::path::Path;
use std::process::Command;

pub struct Run {
    pub code: i32,
    pub report: Value,
    pub stdout: String,
    pub stderr: String,
}

pub fn doctor(args: &[&str]) -> Run {
    let out = Command::new(super::bin())
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
    pub fn check(&self, id: &str) -> &Value {
        self.report["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["id"] == id))
            .unwrap_or_else(|| panic!("no check {id} in {}", self.stdout))
    }
    pub fn assert_no_keys(&self, extra: &[&str]) {
        for k in super::cluster()
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
pub fn setup(dir: &Path, monitors: &[String], user: &str, key: &str) -> (String, String) {
    let cfg = dir.join("config.json");
    let map = serde_json::json!([{"clusterID": super::cluster().fsid(), "monitors": monitors}]);
    std::fs::write(&cfg, map.to_string()).expect("write config");
    let sec = dir.join("secrets");
    std::fs::write(&sec, format!("userID={user}\nuserKey={key}\n")).expect("write secrets");
    (cfg.display().to_string(), sec.display().to_string())
}

pub fn rbd_user() -> (String, String) {
    let c = super::cluster();
    (c.get("FERRO_RBD_USER"), c.get("FERRO_RBD_KEY"))
}

pub fn base64(bytes: &[u8]) -> String {
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
pub fn foreign_key() -> String {
    let mut raw = vec![1u8, 0];
    raw.extend_from_slice(&[0u8; 8]);
    raw.extend_from_slice(&[16, 0]);
    raw.extend(uuid::Uuid::new_v4().as_bytes());
    base64(&raw)
}

pub fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

pub fn admin() -> rados::Cluster {
    let c = super::cluster();
    rados::Cluster::connect(&rados::ConnectConfig::new(
        [c.monitors()],
        "admin",
        c.get("FERRO_ADMIN_KEY"),
    ))
    .expect("admin connection")
}

/// What the journal test creates, removed (whatever is left of it) when dropped.
pub struct JournalMess {
    pub io: rados::IoCtx,
    pub instance: String,
    pub images: Vec<String>,
    /// (name, uuid) of journal entries.
    pub entries: Vec<(String, String)>,
    pub objects: Vec<String>,
}

impl JournalMess {
    pub fn journal(&self) -> ferroceph::journal::Journal<'_> {
        ferroceph::journal::Journal::new(&self.io, ferroceph::journal::Kind::Volume, &self.instance)
    }
    pub fn image(&mut self, name: &str) {
        rados::rbd::create(&self.io, name, &rados::rbd::ImageOptions::new(4 << 20))
            .expect("create image");
        self.images.push(name.to_string());
    }
    pub fn entry(&mut self, name: &str, uuid: &str, image: &str) {
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
    pub fn clone_image(&mut self, parent: &str, child: &str) {
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
    pub fn image_exists(&self, name: &str) -> bool {
        rados::rbd::list_images(&self.io)
            .expect("list images")
            .iter()
            .any(|i| i == name)
    }
    pub fn object_exists(&self, name: &str) -> bool {
        match self.io.stat(name) {
            Ok(_) => true,
            Err(e) if e.kind() == rados::ErrorKind::NotFound => false,
            Err(e) => panic!("stat {name}: {e}"),
        }
    }
    pub fn key_exists(&self, name: &str) -> bool {
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

pub fn findings<'a>(r: &'a Run, id: &str, uuid: &str) -> Vec<&'a Value> {
    r.report["checks"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|c| c["id"] == id && s(&c["summary"]).contains(uuid))
                .collect()
        })
        .unwrap_or_default()
}

/// `doctor --role controller --json` on `pool` for instance `tag` (prefixes `<tag>-vol-`,
/// `<tag>-snap-`), plus `extra`.
pub fn journal_doctor(cfg: &str, sec: &str, pool: &str, tag: &str, extra: &[&str]) -> Run {
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

pub fn mess(conn: &rados::Cluster, pool: &str, instance: &str) -> JournalMess {
    JournalMess {
        io: conn.ioctx(pool, "").expect("ioctx"),
        instance: instance.to_string(),
        images: Vec::new(),
        entries: Vec::new(),
        objects: Vec::new(),
    }
}

/// Every check that mentions `needle`.
pub fn mentioning<'a>(r: &'a Run, needle: &str) -> Vec<&'a Value> {
    r.report["checks"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|c| s(&c["summary"]).contains(needle))
                .collect()
        })
        .unwrap_or_default()
}
