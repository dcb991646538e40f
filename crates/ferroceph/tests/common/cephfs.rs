//! CephFS test helpers shared by the CephFS test files: admin views of the filesystem
//! (mgr `volumes` commands, the journal), CSI requests for the dev cluster's filesystem,
//! drivers, and a scratch directory that cleans up ceph-fuse mounts.

use super::{cluster, mount_cap, unique, Driver};
use csi::v1 as pb;
use pb::volume_capability::access_mode::Mode;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::Code;

pub const FS: &str = "cephfs";
pub const GROUP: &str = "csi";

// ---------------------------------------------------------------- cluster-side checks

pub fn admin() -> rados::Cluster {
    let c = cluster();
    rados::Cluster::connect(&rados::ConnectConfig::new(
        [c.monitors()],
        "admin",
        c.get("FERRO_ADMIN_KEY"),
    ))
    .expect("admin connection")
}

pub fn mgr(mut cmd: Value) -> Result<Value, rados::Error> {
    cmd["vol_name"] = json!(FS);
    cmd["format"] = json!("json");
    let out = admin().mgr_command(&cmd.to_string(), &[])?;
    Ok(serde_json::from_slice(&out.out).unwrap_or(Value::Null))
}

pub fn sub_info(group: &str, sub: &str) -> Option<Value> {
    mgr(json!({"prefix": "fs subvolume info", "sub_name": sub, "group_name": group})).ok()
}

pub fn subvolumes(group: &str) -> Vec<String> {
    mgr(json!({"prefix": "fs subvolume ls", "group_name": group}))
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect()
}

pub fn snapshots(group: &str, sub: &str) -> Vec<String> {
    mgr(json!({"prefix": "fs subvolume snapshot ls", "sub_name": sub, "group_name": group}))
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect()
}

pub fn groups() -> Vec<String> {
    mgr(json!({"prefix": "fs subvolumegroup ls"}))
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect()
}

/// The journal's omap keys (metadata pool, namespace csi).
pub fn journal_keys(obj: &str) -> Vec<String> {
    let c = admin();
    let io = c.ioctx("cephfs_metadata", "csi").expect("metadata pool");
    io.omap_list(obj, "", "", 10_000)
        .map(|kv| kv.into_iter().map(|(k, _)| k).collect())
        .unwrap_or_default()
}

pub fn journal_has(name: &str) -> bool {
    journal_keys("csi.volumes.default").contains(&format!("csi.volume.{name}"))
}

/// Runs `ceph` as admin, stdout only.
pub fn ceph_json(args: &[&str]) -> Value {
    let out = Command::new("ceph")
        .arg("-c")
        .arg(cluster().get("FERRO_CEPH_CONF"))
        .args(args)
        .args(["--format", "json"])
        .output()
        .expect("run ceph");
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Evicts CephFS client sessions whose mount point lies under `root` (clients killed in
/// tests keep caps until the session times out and would stall other tests).
pub fn evict_clients_under(root: &Path) {
    let prefix = root.display().to_string();
    let list = ceph_json(&["tell", "mds.cephfs:0", "client", "ls"]);
    for c in list.as_array().cloned().unwrap_or_default() {
        let mp = c["client_metadata"]["mount_point"].as_str().unwrap_or("");
        if mp.starts_with(&prefix) {
            if let Some(id) = c["id"].as_i64() {
                let _ = Command::new("ceph")
                    .arg("-c")
                    .arg(cluster().get("FERRO_CEPH_CONF"))
                    .args([
                        "tell",
                        "mds.cephfs:0",
                        "client",
                        "evict",
                        &format!("id={id}"),
                    ])
                    .output();
            }
        }
    }
}

// ---------------------------------------------------------------- requests

pub fn fs_secrets() -> HashMap<String, String> {
    let c = cluster();
    HashMap::from([
        ("adminID".to_string(), c.get("FERRO_CEPHFS_USER")),
        ("adminKey".to_string(), c.get("FERRO_CEPHFS_KEY")),
    ])
}

pub fn fs_params() -> HashMap<String, String> {
    HashMap::from([
        ("clusterID".to_string(), cluster().fsid()),
        ("fsName".to_string(), FS.to_string()),
    ])
}

pub fn rwx() -> pb::VolumeCapability {
    mount_cap(Mode::MultiNodeMultiWriter)
}

pub fn fs_create(name: &str, size: i64) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        name: name.to_string(),
        capacity_range: (size > 0).then_some(pb::CapacityRange {
            required_bytes: size,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![rwx()],
        parameters: fs_params(),
        secrets: fs_secrets(),
        ..Default::default()
    }
}

pub fn from_snapshot(name: &str, size: i64, snap: &str) -> pb::CreateVolumeRequest {
    let mut r = fs_create(name, size);
    r.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Snapshot(
            pb::volume_content_source::SnapshotSource {
                snapshot_id: snap.to_string(),
            },
        )),
    });
    r
}

pub fn from_volume(name: &str, size: i64, vol: &str) -> pb::CreateVolumeRequest {
    let mut r = fs_create(name, size);
    r.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Volume(
            pb::volume_content_source::VolumeSource {
                volume_id: vol.to_string(),
            },
        )),
    });
    r
}

pub fn fs_del(id: &str) -> pb::DeleteVolumeRequest {
    pb::DeleteVolumeRequest {
        volume_id: id.to_string(),
        secrets: fs_secrets(),
    }
}

pub fn fs_snap_req(name: &str, source: &str) -> pb::CreateSnapshotRequest {
    pb::CreateSnapshotRequest {
        name: name.to_string(),
        source_volume_id: source.to_string(),
        secrets: fs_secrets(),
        parameters: Default::default(),
    }
}

pub fn fs_del_snap(id: &str) -> pb::DeleteSnapshotRequest {
    pb::DeleteSnapshotRequest {
        snapshot_id: id.to_string(),
        secrets: fs_secrets(),
    }
}

pub fn fs_stage_req(v: &pb::Volume, staging: &Path, mode: Mode) -> pb::NodeStageVolumeRequest {
    super::stage_req(
        &v.volume_id,
        &v.volume_context,
        staging,
        mount_cap(mode),
        fs_secrets(),
    )
}

pub fn fs_publish_req(
    v: &pb::Volume,
    staging: &Path,
    target: &Path,
    mode: Mode,
) -> pb::NodePublishVolumeRequest {
    super::publish_req(
        &v.volume_id,
        &v.volume_context,
        staging,
        target,
        mount_cap(mode),
        false,
    )
}

pub fn stats_req(v: &pb::Volume, path: &Path) -> pb::NodeGetVolumeStatsRequest {
    pb::NodeGetVolumeStatsRequest {
        volume_id: v.volume_id.clone(),
        volume_path: path.display().to_string(),
        staging_target_path: String::new(),
    }
}

// ---------------------------------------------------------------- drivers and mounts

/// A CephFS driver: controller and/or node with the given node id.
pub fn fs_driver(controller: bool, node: Option<&str>) -> Driver {
    let mut args = vec!["--type=cephfs".to_string()];
    if controller {
        args.push("--controllerserver=true".into());
    }
    if let Some(n) = node {
        args.push("--nodeserver=true".into());
        args.push(format!("--nodeid={n}"));
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    Driver::start(&a, &[])
}

pub fn crash_driver(point: &str) -> Driver {
    Driver::start(
        &["--type=cephfs", "--controllerserver=true"],
        &[("FERROCEPH_TEST_CRASH_AT", point)],
    )
}

/// A scratch directory for staging and target paths. On drop, whatever is still mounted
/// under it is detached, ceph-fuse processes serving it are killed and their sessions
/// evicted, and only then is it removed (never recursing into a live mount).
pub struct FsScratch {
    pub root: PathBuf,
}

impl FsScratch {
    pub fn new(tag: &str) -> FsScratch {
        let root = std::env::temp_dir().join(unique(&format!("ferroceph-fs-{tag}")));
        std::fs::create_dir_all(&root).expect("scratch dir");
        FsScratch { root }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    ferroceph::node::mount::mounts()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(root))
        .map(|m| m.mount_point)
        .collect()
}

/// ceph-fuse processes whose command line names a path under `root`.
pub fn fuse_pids_under(root: &Path) -> Vec<i32> {
    let want = root.display().to_string();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if text.contains("ceph-fuse") && text.contains(&want) && !is_zombie(pid) {
            pids.push(pid);
        }
    }
    pids
}

pub fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
                .unwrap_or(true)
        })
        .unwrap_or(true)
}

impl Drop for FsScratch {
    fn drop(&mut self) {
        let mut ms = mounts_under(&self.root);
        ms.reverse();
        for m in &ms {
            let _ = Command::new("umount").arg("-l").arg(m).output();
        }
        let pids = fuse_pids_under(&self.root);
        for pid in &pids {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).output();
        }
        if !ms.is_empty() || !pids.is_empty() {
            evict_clients_under(&self.root);
        }
        if mounts_under(&self.root).is_empty() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

pub fn record_of(staging: &Path) -> Value {
    let p = staging.with_file_name(format!(
        "{}.ferroceph-cephfs.json",
        staging.file_name().unwrap().to_string_lossy()
    ));
    let text = std::fs::read_to_string(&p).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

pub fn statvfs_total(path: &Path) -> u64 {
    let out = Command::new("stat")
        .args(["-f", "-c", "%S %b"])
        .arg(path)
        .output()
        .expect("stat -f");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text
        .split_whitespace()
        .map(|x| x.parse::<u64>().unwrap_or(0));
    it.next().unwrap_or(0) * it.next().unwrap_or(0)
}

/// CreateVolume until the clone behind it is ready; returns the volume and the Aborted
/// messages seen while waiting.
pub async fn create_until_ready(
    d: &Driver,
    req: pb::CreateVolumeRequest,
) -> (pb::Volume, Vec<String>) {
    let mut ctl = d.controller().await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut waits = Vec::new();
    loop {
        match ctl.create_volume(req.clone()).await {
            Ok(r) => return (r.into_inner().volume.unwrap(), waits),
            Err(e) if e.code() == Code::Aborted => {
                if std::env::var("FS_TEST_DEBUG").is_ok() {
                    eprintln!("{:?} {}", Instant::now(), e.message());
                }
                waits.push(e.message().to_string())
            }
            Err(e) => panic!("create {}: {e:?}", req.name),
        }
        assert!(
            Instant::now() < deadline,
            "clone for {} not ready: {waits:?}",
            req.name
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub fn write_file(path: &Path, data: &[u8]) {
    let mut f = std::fs::File::create(path).expect("create file");
    f.write_all(data).expect("write");
    f.sync_all().expect("fsync");
}

pub fn assert_no_secrets(d: &Driver) {
    let log = d.log_text();
    for k in cluster().all_keys() {
        assert!(!log.contains(&k), "a key leaked into the driver log");
    }
}

// ---------------------------------------------------------------- tests
