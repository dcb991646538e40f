//! Integration tests against the real single-node dev cluster
//! (`scripts/dev-cluster.sh up`).
//!
//! Connection settings come from the process environment when
//! `FERRO_MONITORS` is set, otherwise from `scripts/dev-cluster.sh env`. If
//! neither works the tests FAIL (they are never skipped silently).
//!
//! Every test uses unique object/image/namespace names and cleans up after
//! itself (also when it fails, through drop guards).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rados::rbd::{self, CloneOptions, Image, ImageOptions};
use rados::{Cluster, ClusterPool, ConnectConfig, ErrorKind, IoCtx};

const SETUP_HINT: &str = "the dev cluster is required: run `scripts/dev-cluster.sh up` first \
     (or export FERRO_MONITORS, FERRO_ADMIN_ID, FERRO_ADMIN_KEY, ... yourself)";

/// Unwraps a `rados::Result`, panicking with the error's message.
macro_rules! t {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(err) => panic!("{} failed: {}", stringify!($e), err),
        }
    };
}

/// Asserts that a `rados::Result` failed with `kind`; returns the message.
macro_rules! fails {
    ($e:expr, $kind:expr) => {
        match $e {
            Ok(_) => panic!("{} unexpectedly succeeded", stringify!($e)),
            Err(err) => {
                assert_eq!(err.kind(), $kind, "{}: {}", stringify!($e), err);
                err.to_string()
            }
        }
    };
}

// ---------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .map(PathBuf::from)
        .unwrap_or(manifest)
}

fn parse_env_lines(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

fn load_env() -> Result<HashMap<String, String>, String> {
    if std::env::var_os("FERRO_MONITORS").is_some() {
        return Ok(std::env::vars()
            .filter(|(k, _)| k.starts_with("FERRO_"))
            .collect());
    }
    let script = workspace_root().join("scripts/dev-cluster.sh");
    if !script.exists() {
        return Err(format!(
            "FERRO_MONITORS is not set and {} does not exist",
            script.display()
        ));
    }
    let out = Command::new("bash")
        .arg(&script)
        .arg("env")
        .output()
        .map_err(|e| format!("cannot run {} env: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} env failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let vars = parse_env_lines(&String::from_utf8_lossy(&out.stdout));
    if !vars.contains_key("FERRO_MONITORS") {
        return Err(format!(
            "{} env printed no FERRO_MONITORS",
            script.display()
        ));
    }
    Ok(vars)
}

fn env() -> &'static HashMap<String, String> {
    static ENV: OnceLock<Result<HashMap<String, String>, String>> = OnceLock::new();
    match ENV.get_or_init(load_env) {
        Ok(v) => v,
        Err(e) => panic!("{e}; {SETUP_HINT}"),
    }
}

fn var(name: &str) -> String {
    match env().get(name) {
        Some(v) if !v.is_empty() => v.clone(),
        _ => panic!("{name} is missing from the dev cluster environment; {SETUP_HINT}"),
    }
}

fn monitors() -> Vec<String> {
    var("FERRO_MONITORS")
        .split(',')
        .map(str::to_string)
        .collect()
}

fn admin_cfg() -> ConnectConfig {
    ConnectConfig::new(monitors(), var("FERRO_ADMIN_ID"), var("FERRO_ADMIN_KEY"))
        .with_timeout(Duration::from_secs(10))
}

fn rbd_cfg() -> ConnectConfig {
    ConnectConfig::new(monitors(), var("FERRO_RBD_USER"), var("FERRO_RBD_KEY"))
        .with_timeout(Duration::from_secs(10))
}

fn pool() -> String {
    var("FERRO_RBD_POOL")
}

fn connect(cfg: &ConnectConfig) -> Cluster {
    match Cluster::connect(cfg) {
        Ok(c) => c,
        Err(e) => panic!(
            "connecting as client.{} failed: {e}; {SETUP_HINT}",
            cfg.user_id()
        ),
    }
}

/// One admin connection shared by the tests.
fn admin() -> &'static Cluster {
    static ADMIN: OnceLock<Cluster> = OnceLock::new();
    ADMIN.get_or_init(|| connect(&admin_cfg()))
}

fn admin_ioctx() -> IoCtx {
    t!(admin().ioctx(&pool(), ""))
}

/// A name no other test (or test run) uses.
fn unique(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "ferro-test-{tag}-{}-{:x}-{}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes an object on drop.
struct ObjGuard<'a> {
    io: &'a IoCtx,
    name: String,
}

impl Drop for ObjGuard<'_> {
    fn drop(&mut self) {
        let _ = self.io.remove_object(&self.name);
    }
}

/// Removes an image (and its snapshots) on drop; declare children after
/// parents so they go first.
struct ImgGuard<'a> {
    io: &'a IoCtx,
    name: String,
}

impl Drop for ImgGuard<'_> {
    fn drop(&mut self) {
        if let Ok(img) = Image::open(self.io, &self.name) {
            if let Ok(snaps) = img.snap_list() {
                for s in snaps {
                    let _ = img.snap_unprotect(&s.name);
                    let _ = img.snap_remove(&s.name);
                }
            }
        }
        let _ = rbd::remove(self.io, &self.name);
    }
}

fn features(list: &str) -> u64 {
    t!(rbd::parse_features(list))
}

/// Changes one character of the secret part of a cephx key, keeping it
/// well-formed.
fn corrupt_key(key: &str) -> String {
    let mut b = key.as_bytes().to_vec();
    // Characters 16..38 of the 40-character key encode the 16-byte secret.
    let i = 30.min(b.len().saturating_sub(3));
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------

#[test]
fn connect_and_fsid() {
    let fsid = t!(admin().fsid());
    assert_eq!(fsid.len(), 36, "{fsid}");
    if let Some(want) = env().get("FERRO_FSID").filter(|f| !f.is_empty()) {
        assert_eq!(&fsid, want);
    }
    assert_eq!(admin().user(), var("FERRO_ADMIN_ID"));
}

#[test]
fn pool_lookup_both_ways() {
    let c = admin();
    let p = pool();
    let id = t!(c.pool_lookup(&p));
    assert!(id >= 0);
    assert_eq!(t!(c.pool_name(id)), p);
    let io = t!(c.ioctx_by_id(id, ""));
    assert_eq!(io.pool_name(), p);
    assert_eq!(io.pool_id(), id);
    assert_eq!(admin_ioctx().pool_id(), id);

    let missing = unique("pool");
    let msg = fails!(c.pool_lookup(&missing), ErrorKind::NotFound);
    assert!(msg.contains(&missing), "{msg}");
    fails!(c.pool_name(987_654), ErrorKind::NotFound);
    let msg = fails!(c.ioctx(&missing, ""), ErrorKind::NotFound);
    assert!(msg.contains(&missing), "{msg}");
    fails!(c.ioctx_by_id(987_654, ""), ErrorKind::NotFound);
}

#[test]
fn mon_and_mgr_commands() {
    let c = admin();
    let out = t!(c.mon_command(r#"{"prefix":"status","format":"json"}"#, b""));
    let v: serde_json::Value = match serde_json::from_slice(&out.out) {
        Ok(v) => v,
        Err(e) => panic!("status output is not JSON ({e}): {}", out.out_str()),
    };
    assert_eq!(v["fsid"].as_str(), Some(t!(c.fsid()).as_str()), "{v}");

    let msg = fails!(
        c.mon_command(r#"{"prefix":"no such command","format":"json"}"#, b""),
        ErrorKind::InvalidArgument
    );
    assert!(msg.contains("mon command \"no such command\""), "{msg}");

    let fs = var("FERRO_FS_NAME");
    let cmd =
        serde_json::json!({"prefix": "fs subvolumegroup ls", "vol_name": fs, "format": "json"});
    let out = t!(c.mgr_command(&cmd.to_string(), b""));
    let v: serde_json::Value = match serde_json::from_slice(&out.out) {
        Ok(v) => v,
        Err(e) => panic!(
            "subvolumegroup ls output is not JSON ({e}): {}",
            out.out_str()
        ),
    };
    assert!(v.is_array(), "{v}");

    let cmd = serde_json::json!({"prefix": "fs subvolumegroup ls", "vol_name": unique("fs"), "format": "json"});
    let err = c.mgr_command(&cmd.to_string(), b"").err();
    let err = err.unwrap_or_else(|| panic!("subvolumegroup ls of a missing volume succeeded"));
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(
        err.detail.is_some(),
        "the status string explains the failure: {err}"
    );
}

#[test]
fn connect_timeout_is_bounded_and_clear() {
    // Nothing listens on port 1; needs no cluster.
    let cfg = ConnectConfig::new(
        ["127.0.0.1:1"],
        "admin",
        "AQBd8wJlAAAAABAAZmVycm9jZXBoLXRlc3Qtaw==",
    )
    .with_timeout(Duration::from_secs(2));
    let start = Instant::now();
    let r = Cluster::connect(&cfg);
    let elapsed = start.elapsed();
    eprintln!("connect to 127.0.0.1:1 with a 2s timeout failed after {elapsed:?}");
    let msg = fails!(r, ErrorKind::TimedOut);
    assert!(
        msg.starts_with("cannot reach monitors 127.0.0.1:1 within 2s: "),
        "{msg}"
    );
    assert!(!msg.contains(&cfg.key), "{msg}");
    assert!(elapsed < Duration::from_secs(12), "took {elapsed:?}");
    assert!(
        elapsed >= Duration::from_millis(1500),
        "took only {elapsed:?}"
    );
}

#[test]
fn wrong_key_is_a_clear_auth_error() {
    let real = var("FERRO_ADMIN_KEY");
    let mut cfg = admin_cfg();
    cfg.key = corrupt_key(&real);
    assert_ne!(cfg.key, real);
    let start = Instant::now();
    let msg = fails!(Cluster::connect(&cfg), ErrorKind::PermissionDenied);
    assert!(start.elapsed() < Duration::from_secs(12));
    let user = var("FERRO_ADMIN_ID");
    assert!(
        msg.contains(&format!("the key for client.{user} was rejected")),
        "{msg}"
    );
    assert!(!msg.contains(&cfg.key) && !msg.contains(&real), "{msg}");

    // Another user's (valid) key.
    let mut cfg = rbd_cfg();
    cfg.key = real.clone();
    let msg = fails!(Cluster::connect(&cfg), ErrorKind::PermissionDenied);
    assert!(
        msg.contains(&format!("client.{}", var("FERRO_RBD_USER"))),
        "{msg}"
    );
    assert!(!msg.contains(&real), "{msg}");

    // Not a key at all: rejected before librados sees (and logs) it.
    cfg.key = "this is not a key".into();
    let msg = fails!(Cluster::connect(&cfg), ErrorKind::InvalidArgument);
    assert!(!msg.contains("this is not a key"), "{msg}");
}

// ---------------------------------------------------------------------------
// Objects and omap
// ---------------------------------------------------------------------------

#[test]
fn exclusive_create_clash() {
    let io = admin_ioctx();
    let g = ObjGuard {
        io: &io,
        name: unique("obj"),
    };
    t!(io.create_object(&g.name, true));
    let msg = fails!(io.create_object(&g.name, true), ErrorKind::AlreadyExists);
    assert!(
        msg.contains(&g.name) && msg.contains(&format!("in pool {}", pool())),
        "{msg}"
    );
    t!(io.create_object(&g.name, false));
    let st = t!(io.stat(&g.name));
    assert_eq!(st.size, 0);
    assert!(st.mtime > UNIX_EPOCH);
    t!(io.remove_object(&g.name));
    fails!(io.remove_object(&g.name), ErrorKind::NotFound);
    fails!(io.stat(&g.name), ErrorKind::NotFound);
}

#[test]
fn omap_round_trip() {
    let io = admin_ioctx();
    let g = ObjGuard {
        io: &io,
        name: unique("omap"),
    };
    let obj = g.name.as_str();
    fails!(io.omap_get(obj, &["x"]), ErrorKind::NotFound);

    let bin: &[u8] = b"\x00\x01binary\xff";
    t!(io.omap_set(
        obj,
        &[
            ("csi.volume.a", b"A"),
            ("csi.volume.b", b"B"),
            ("csi.volume.c", bin),
            ("csi.volume.d", b""),
            ("csi.volume.e", b"E"),
            ("other.key", b"O"),
        ],
    ));

    let got = t!(io.omap_get(obj, &["csi.volume.a", "csi.volume.c", "csi.volume.missing"]));
    let want: BTreeMap<String, Vec<u8>> = [
        ("csi.volume.a".to_string(), b"A".to_vec()),
        ("csi.volume.c".to_string(), bin.to_vec()),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, want);

    let all = t!(io.omap_list(obj, "", "csi.volume.", 100));
    let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "csi.volume.a",
            "csi.volume.b",
            "csi.volume.c",
            "csi.volume.d",
            "csi.volume.e"
        ]
    );
    assert_eq!(all[3].1, b"");
    assert_eq!(t!(io.omap_list(obj, "", "", 100)).len(), 6);

    // Pagination.
    let p1 = t!(io.omap_list(obj, "", "csi.volume.", 2));
    assert_eq!(
        p1.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["csi.volume.a", "csi.volume.b"]
    );
    let p2 = t!(io.omap_list(obj, &p1[1].0, "csi.volume.", 2));
    assert_eq!(
        p2.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["csi.volume.c", "csi.volume.d"]
    );
    let p3 = t!(io.omap_list_page(obj, &p2[1].0, "csi.volume.", 2));
    assert_eq!(p3.entries.len(), 1);
    assert!(!p3.more);
    let page = t!(io.omap_list_page(obj, "", "csi.volume.", 2));
    assert!(page.more);
    assert!(t!(io.omap_list(obj, "", "csi.volume.", 0)).is_empty());

    // Overwrite, remove (absent keys ignored), atomic update.
    t!(io.omap_set(obj, &[("csi.volume.a", b"A2")]));
    t!(io.omap_remove(obj, &["csi.volume.b", "csi.volume.nope"]));
    t!(io.omap_update(obj, &[("csi.volume.f", b"F")], &["csi.volume.e"]));
    let all = t!(io.omap_list(obj, "", "csi.volume.", 100));
    let got: Vec<(&str, &[u8])> = all
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    assert_eq!(
        got,
        [
            ("csi.volume.a", &b"A2"[..]),
            ("csi.volume.c", bin),
            ("csi.volume.d", b""),
            ("csi.volume.f", b"F"),
        ]
    );
}

#[test]
fn omap_set_if_absent_claims_a_key_once() {
    let io = admin_ioctx();
    let g = ObjGuard {
        io: &io,
        name: unique("omap-claim"),
    };
    let obj = g.name.as_str();
    // no object yet: NotFound, and nothing is created
    fails!(io.omap_set_if_absent(obj, "k", b"1"), ErrorKind::NotFound);
    fails!(io.omap_get(obj, &["k"]), ErrorKind::NotFound);
    t!(io.omap_set(obj, &[("other", b"o")]));
    assert!(t!(io.omap_set_if_absent(obj, "k", b"1")));
    assert!(!t!(io.omap_set_if_absent(obj, "k", b"2")));
    let got = t!(io.omap_get(obj, &["k", "other"]));
    assert_eq!(got.get("k").map(Vec::as_slice), Some(b"1".as_slice()));
    assert_eq!(got.get("other").map(Vec::as_slice), Some(b"o".as_slice()));
}

#[test]
fn create_with_omap_in_the_background() {
    let io = admin_ioctx();
    let g = ObjGuard {
        io: &io,
        name: unique("omap-aio"),
    };
    let obj = g.name.as_str();
    let pending = t!(io.start_create_with_omap(obj, &[("k", b"v")]));
    // other calls on the same io context while the write is in flight
    let _ = io.stat("some-other-object");
    t!(pending.wait());
    let got = t!(io.omap_get(obj, &["k"]));
    assert_eq!(got.get("k").map(Vec::as_slice), Some(b"v".as_slice()));
    // exclusive: the second one fails, and a handle dropped unwaited is harmless
    let again = t!(io.start_create_with_omap(obj, &[("k", b"w")]));
    fails!(again.wait(), ErrorKind::AlreadyExists);
    drop(t!(io.start_create_with_omap(obj, &[("k", b"x")])));
    let got = t!(io.omap_get(obj, &["k"]));
    assert_eq!(got.get("k").map(Vec::as_slice), Some(b"v".as_slice()));
}

#[test]
fn create_with_omap_is_atomic() {
    let io = admin_ioctx();
    let g = ObjGuard {
        io: &io,
        name: unique("cwo"),
    };
    t!(io.create_with_omap(&g.name, &[("k1", b"v1"), ("k2", b"v2")]));
    fails!(
        io.create_with_omap(&g.name, &[("k1", b"changed"), ("k3", b"new")]),
        ErrorKind::AlreadyExists
    );
    let all = t!(io.omap_list(&g.name, "", "", 10));
    assert_eq!(
        all,
        vec![
            ("k1".to_string(), b"v1".to_vec()),
            ("k2".to_string(), b"v2".to_vec())
        ]
    );
}

#[test]
fn rados_namespaces_are_isolated() {
    let c = admin();
    let (ns1, ns2) = (unique("ns"), unique("ns"));
    let io1 = t!(c.ioctx(&pool(), &ns1));
    let io2 = t!(c.ioctx(&pool(), &ns2));
    let io0 = admin_ioctx();
    assert_eq!(io1.namespace(), ns1);
    let name = unique("nsobj");
    let g1 = ObjGuard {
        io: &io1,
        name: name.clone(),
    };
    t!(io1.create_with_omap(&g1.name, &[("owner", b"ns1")]));
    fails!(io2.stat(&name), ErrorKind::NotFound);
    fails!(io0.stat(&name), ErrorKind::NotFound);
    let msg = fails!(io2.omap_get(&name, &["owner"]), ErrorKind::NotFound);
    assert!(msg.contains(&format!("namespace {ns2}")), "{msg}");

    let g2 = ObjGuard {
        io: &io2,
        name: name.clone(),
    };
    t!(io2.create_with_omap(&g2.name, &[("owner", b"ns2")]));
    assert_eq!(
        t!(io1.omap_get(&name, &["owner"]))
            .get("owner")
            .map(Vec::as_slice),
        Some(&b"ns1"[..])
    );
    assert_eq!(
        t!(io2.omap_get(&name, &["owner"]))
            .get("owner")
            .map(Vec::as_slice),
        Some(&b"ns2"[..])
    );
}

// ---------------------------------------------------------------------------
// RBD
// ---------------------------------------------------------------------------

const MIB: u64 = 1 << 20;

/// Create/stat/resize/list/metadata/I-O/remove, run as `io`'s user.
fn image_lifecycle(io: &IoCtx) {
    let g = ImgGuard {
        io,
        name: unique("img"),
    };
    let name = g.name.as_str();
    let mut opts = ImageOptions::new(64 * MIB);
    opts.features = features("layering,exclusive-lock,object-map,fast-diff,deep-flatten");
    t!(opts.set_object_size(4 * MIB));
    opts.stripe_unit = Some(MIB);
    opts.stripe_count = Some(4);
    t!(rbd::create(io, name, &opts));
    fails!(rbd::create(io, name, &opts), ErrorKind::AlreadyExists);

    let mut bad = opts.clone();
    bad.features = rbd::FEATURE_LAYERING | rbd::FEATURE_OBJECT_MAP;
    fails!(
        rbd::create(io, &unique("bad"), &bad),
        ErrorKind::InvalidArgument
    );

    let img = t!(Image::open(io, name));
    let info = t!(img.stat());
    assert_eq!(info.size, 64 * MIB);
    assert_eq!(info.order, 22);
    assert_eq!(info.obj_size, 4 * MIB);
    assert_eq!(info.num_objs, 16);
    let id = t!(img.id());
    assert!(!id.is_empty());
    assert_eq!(info.block_name_prefix, format!("rbd_data.{id}"));
    let f = t!(img.features());
    assert_eq!(
        f & opts.features,
        opts.features,
        "{}",
        rbd::features_to_string(f)
    );
    assert_ne!(
        f & rbd::FEATURE_STRIPINGV2,
        0,
        "{}",
        rbd::features_to_string(f)
    );

    t!(img.resize(128 * MIB));
    assert_eq!(t!(img.size()), 128 * MIB);

    let names = t!(rbd::list_images(io));
    assert!(names.iter().any(|n| n == name), "{names:?}");
    let specs = t!(rbd::list_image_specs(io));
    assert!(specs.iter().any(|s| s.name == name && s.id == id));

    assert_eq!(t!(img.metadata_get("ferro.test")), None);
    t!(img.metadata_set("ferro.test", "value-1"));
    let long = "x".repeat(5000);
    t!(img.metadata_set("ferro.long", &long));
    assert_eq!(
        t!(img.metadata_get("ferro.test")).as_deref(),
        Some("value-1")
    );
    assert_eq!(t!(img.metadata_get("ferro.long")), Some(long));
    t!(img.metadata_remove("ferro.test"));
    assert_eq!(t!(img.metadata_get("ferro.test")), None);
    fails!(img.metadata_remove("ferro.test"), ErrorKind::NotFound);

    // Block I/O.
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(t!(img.write(MIB + 123, &data)), data.len());
    t!(img.flush());
    let mut buf = vec![0u8; data.len()];
    assert_eq!(t!(img.read(MIB + 123, &mut buf)), data.len());
    assert_eq!(buf, data);
    t!(img.discard(0, 16 * MIB));
    assert_eq!(t!(img.read(MIB + 123, &mut buf)), data.len());
    assert!(
        buf.iter().all(|&b| b == 0),
        "discarded range reads as zeros"
    );
    let mut tail = vec![0u8; 100];
    assert_eq!(t!(img.read(128 * MIB - 10, &mut tail)), 10);

    let watchers = t!(img.watchers());
    assert!(
        !watchers.is_empty(),
        "an open read-write image watches its header"
    );
    let owners = t!(img.lock_owners());
    assert_eq!(owners.mode, rbd::LockMode::Exclusive);
    assert_eq!(owners.owners.len(), 1, "{owners:?}");

    // Read-only handles cannot write.
    let ro = t!(Image::open_read_only(io, name));
    assert_eq!(t!(ro.size()), 128 * MIB);
    assert!(ro.write(0, b"x").is_err());
    drop(ro);

    fails!(rbd::remove(io, name), ErrorKind::Busy);
    drop(img);
    t!(rbd::remove(io, name));
    fails!(Image::open(io, name), ErrorKind::NotFound);
    assert!(!t!(rbd::list_images(io)).iter().any(|n| n == name));
    fails!(rbd::remove(io, name), ErrorKind::NotFound);
}

/// Snapshot + clone v2 + flatten + trash, run as `io`'s user.
fn snapshot_clone_flatten_trash(io: &IoCtx) {
    let pg = ImgGuard {
        io,
        name: unique("parent"),
    };
    let mut opts = ImageOptions::new(32 * MIB);
    opts.features = features("layering,exclusive-lock,object-map,fast-diff,deep-flatten");
    t!(rbd::create(io, &pg.name, &opts));
    let parent = t!(Image::open(io, &pg.name));
    let pattern = b"ferroceph clone test pattern".repeat(100);
    t!(parent.write(4096, &pattern));
    t!(parent.flush());

    t!(parent.snap_create("s1"));
    fails!(parent.snap_create("s1"), ErrorKind::AlreadyExists);
    let snaps = t!(parent.snap_list());
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].name, "s1");
    assert_eq!(snaps[0].size, 32 * MIB);
    assert!(!t!(parent.snap_is_protected("s1")));
    t!(parent.snap_protect("s1"));
    assert!(t!(parent.snap_is_protected("s1")));
    t!(parent.snap_unprotect("s1"));
    assert!(!t!(parent.snap_is_protected("s1")));
    assert_eq!(t!(parent.parent()), None);

    // Data written after the snapshot must not show in the clone.
    t!(parent.write(4096, b"CHANGED AFTER SNAPSHOT"));
    t!(parent.flush());

    let snap_view = t!(Image::open_snapshot(io, &pg.name, "s1"));
    let mut buf = vec![0u8; pattern.len()];
    t!(snap_view.read(4096, &mut buf));
    assert_eq!(buf, pattern);
    drop(snap_view);

    let cg = ImgGuard {
        io,
        name: unique("clone"),
    };
    // Clone v2: no protection needed.
    t!(rbd::clone(
        io,
        &pg.name,
        "s1",
        io,
        &cg.name,
        &CloneOptions::default()
    ));
    let child = t!(Image::open(io, &cg.name));
    let p = t!(child.parent());
    let p = p.unwrap_or_else(|| panic!("clone has no parent"));
    assert_eq!(p.image_name, pg.name);
    assert_eq!(p.snap_name, "s1");
    assert_eq!(p.pool_name, io.pool_name());
    assert_eq!(p.pool_namespace, io.namespace());
    assert_eq!(p.snap_id, snaps[0].id);
    assert_eq!(t!(child.size()), 32 * MIB);
    let mut buf = vec![0u8; pattern.len()];
    t!(child.read(4096, &mut buf));
    assert_eq!(buf, pattern);
    // The snapshot has a child now: with clone v2, removing it would only
    // move it to the trash namespace; unprotect of an unprotected snap fails.
    fails!(parent.snap_unprotect("s1"), ErrorKind::InvalidArgument);

    t!(child.write(0, b"child data"));
    t!(child.flatten());
    assert_eq!(t!(child.parent()), None);
    t!(child.read(4096, &mut buf));
    assert_eq!(buf, pattern);

    t!(parent.snap_remove("s1"));
    assert!(t!(parent.snap_list()).is_empty());

    // Trash.
    let child_id = t!(child.id());
    drop(child);
    t!(rbd::trash_move(io, &cg.name, 3600));
    assert!(!t!(rbd::list_images(io)).iter().any(|n| *n == cg.name));
    fails!(Image::open(io, &cg.name), ErrorKind::NotFound);
    let msg = fails!(
        rbd::trash_remove(io, &child_id, false),
        ErrorKind::PermissionDenied
    );
    assert!(msg.contains(&child_id), "{msg}");
    t!(rbd::trash_remove(io, &child_id, true));
    fails!(rbd::trash_remove(io, &child_id, true), ErrorKind::NotFound);
    drop(parent);
}

#[test]
fn image_lifecycle_as_admin() {
    image_lifecycle(&admin_ioctx());
}

#[test]
fn snapshot_clone_flatten_trash_as_admin() {
    snapshot_clone_flatten_trash(&admin_ioctx());
}

#[test]
fn least_privilege_rbd_user() {
    let c = connect(&rbd_cfg());
    assert_eq!(c.user(), var("FERRO_RBD_USER"));
    let io = t!(c.ioctx(&pool(), ""));
    image_lifecycle(&io);
    snapshot_clone_flatten_trash(&io);
    // The CSI journal lives in omap objects of the same pool.
    let g = ObjGuard {
        io: &io,
        name: unique("journal"),
    };
    t!(io.create_with_omap(&g.name, &[("csi.volume.x", b"1")]));
    assert_eq!(t!(io.omap_list(&g.name, "", "csi.", 10)).len(), 1);
}

// ---------------------------------------------------------------------------
// Connection pool
// ---------------------------------------------------------------------------

#[test]
fn cluster_pool_reuses_and_expires() {
    let ttl = Duration::from_millis(1500);
    let pool = ClusterPool::new(ttl);
    let cfg = admin_cfg();

    let a = t!(pool.get(&cfg));
    let b = t!(pool.get(&cfg));
    assert!(Arc::ptr_eq(&a, &b), "same config, same connection");
    assert_eq!(pool.len(), 1);
    let dbg = format!("{pool:?}");
    assert!(!dbg.contains(&cfg.key), "{dbg}");

    // A held connection is never reaped.
    std::thread::sleep(ttl + Duration::from_millis(300));
    assert_eq!(pool.reap(), 0);
    let weak = Arc::downgrade(&a);
    drop((a, b));
    // Released but not idle for the TTL since the last get... which was long
    // ago, so it goes now, and the connection shuts down with it.
    assert_eq!(pool.reap(), 1);
    assert!(pool.is_empty());
    assert!(weak.upgrade().is_none(), "connection was shut down");

    // Concurrent gets on an empty pool open a single connection.
    let pool = Arc::new(ClusterPool::new(ttl));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let pool = Arc::clone(&pool);
            let cfg = cfg.clone();
            std::thread::spawn(move || pool.get(&cfg).map_err(|e| e.to_string()))
        })
        .collect();
    let got: Vec<Arc<Cluster>> = handles
        .into_iter()
        .map(|h| match h.join() {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => panic!("get failed: {e}"),
            Err(_) => panic!("get panicked"),
        })
        .collect();
    assert!(got.iter().all(|c| Arc::ptr_eq(c, &got[0])));
    assert_eq!(pool.len(), 1);
    assert!(!t!(got[0].fsid()).is_empty());
    let weak = Arc::downgrade(&got[0]);
    drop(got);

    // A get for another key drops the expired entry; a wrong key fails and
    // is not cached as a connection.
    std::thread::sleep(ttl + Duration::from_millis(300));
    let rbd = t!(pool.get(&rbd_cfg()));
    assert!(
        weak.upgrade().is_none(),
        "expired admin connection dropped by get"
    );
    assert_eq!(pool.len(), 1);
    let mut wrong = rbd_cfg();
    wrong.key = corrupt_key(&wrong.key);
    fails!(pool.get(&wrong), ErrorKind::PermissionDenied);
    assert_eq!(pool.len(), 1, "a failed connect leaves no entry");
    let again = t!(pool.get(&rbd_cfg()));
    assert!(Arc::ptr_eq(&rbd, &again));
    assert!(pool.remove(&rbd_cfg()));
    let fresh = t!(pool.get(&rbd_cfg()));
    assert!(!Arc::ptr_eq(&rbd, &fresh), "remove forces a reconnect");
}
