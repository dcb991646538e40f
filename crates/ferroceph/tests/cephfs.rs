//! CephFS driver against the dev cluster's filesystem: provisioning, RWX on two nodes,
//! quotas, expansion, snapshots and clones, static volumes, the missing subvolume group,
//! idempotency, concurrency, crashes between steps, and node plugin restarts.

mod common;
use common::*;
use csi::v1 as pb;
use pb::volume_capability::access_mode::Mode;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::Code;

const FS: &str = "cephfs";
const GROUP: &str = "csi";

// ---------------------------------------------------------------- cluster-side checks

fn admin() -> rados::Cluster {
    let c = cluster();
    rados::Cluster::connect(&rados::ConnectConfig::new(
        [c.monitors()],
        "admin",
        c.get("FERRO_ADMIN_KEY"),
    ))
    .expect("admin connection")
}

fn mgr(mut cmd: Value) -> Result<Value, rados::Error> {
    cmd["vol_name"] = json!(FS);
    cmd["format"] = json!("json");
    let out = admin().mgr_command(&cmd.to_string(), &[])?;
    Ok(serde_json::from_slice(&out.out).unwrap_or(Value::Null))
}

fn sub_info(group: &str, sub: &str) -> Option<Value> {
    mgr(json!({"prefix": "fs subvolume info", "sub_name": sub, "group_name": group})).ok()
}

fn subvolumes(group: &str) -> Vec<String> {
    mgr(json!({"prefix": "fs subvolume ls", "group_name": group}))
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect()
}

fn snapshots(group: &str, sub: &str) -> Vec<String> {
    mgr(json!({"prefix": "fs subvolume snapshot ls", "sub_name": sub, "group_name": group}))
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect()
}

fn groups() -> Vec<String> {
    mgr(json!({"prefix": "fs subvolumegroup ls"}))
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect()
}

/// The journal's omap keys (metadata pool, namespace csi).
fn journal_keys(obj: &str) -> Vec<String> {
    let c = admin();
    let io = c.ioctx("cephfs_metadata", "csi").expect("metadata pool");
    io.omap_list(obj, "", "", 10_000)
        .map(|kv| kv.into_iter().map(|(k, _)| k).collect())
        .unwrap_or_default()
}

fn journal_has(name: &str) -> bool {
    journal_keys("csi.volumes.default").contains(&format!("csi.volume.{name}"))
}

/// Runs `ceph` as admin, stdout only.
fn ceph_json(args: &[&str]) -> Value {
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
fn evict_clients_under(root: &Path) {
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

fn fs_secrets() -> HashMap<String, String> {
    let c = cluster();
    HashMap::from([
        ("adminID".to_string(), c.get("FERRO_CEPHFS_USER")),
        ("adminKey".to_string(), c.get("FERRO_CEPHFS_KEY")),
    ])
}

fn fs_params() -> HashMap<String, String> {
    HashMap::from([
        ("clusterID".to_string(), cluster().fsid()),
        ("fsName".to_string(), FS.to_string()),
    ])
}

fn rwx() -> pb::VolumeCapability {
    mount_cap(Mode::MultiNodeMultiWriter)
}

fn fs_create(name: &str, size: i64) -> pb::CreateVolumeRequest {
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

fn from_snapshot(name: &str, size: i64, snap: &str) -> pb::CreateVolumeRequest {
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

fn from_volume(name: &str, size: i64, vol: &str) -> pb::CreateVolumeRequest {
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

fn del(id: &str) -> pb::DeleteVolumeRequest {
    pb::DeleteVolumeRequest {
        volume_id: id.to_string(),
        secrets: fs_secrets(),
    }
}

fn snap_req(name: &str, source: &str) -> pb::CreateSnapshotRequest {
    pb::CreateSnapshotRequest {
        name: name.to_string(),
        source_volume_id: source.to_string(),
        secrets: fs_secrets(),
        parameters: Default::default(),
    }
}

fn del_snap(id: &str) -> pb::DeleteSnapshotRequest {
    pb::DeleteSnapshotRequest {
        snapshot_id: id.to_string(),
        secrets: fs_secrets(),
    }
}

fn stage_req(v: &pb::Volume, staging: &Path, mode: Mode) -> pb::NodeStageVolumeRequest {
    common::stage_req(
        &v.volume_id,
        &v.volume_context,
        staging,
        mount_cap(mode),
        fs_secrets(),
    )
}

fn publish_req(
    v: &pb::Volume,
    staging: &Path,
    target: &Path,
    mode: Mode,
) -> pb::NodePublishVolumeRequest {
    common::publish_req(
        &v.volume_id,
        &v.volume_context,
        staging,
        target,
        mount_cap(mode),
        false,
    )
}

fn stats_req(v: &pb::Volume, path: &Path) -> pb::NodeGetVolumeStatsRequest {
    pb::NodeGetVolumeStatsRequest {
        volume_id: v.volume_id.clone(),
        volume_path: path.display().to_string(),
        staging_target_path: String::new(),
    }
}

// ---------------------------------------------------------------- drivers and mounts

/// A CephFS driver: controller and/or node with the given node id.
fn fs_driver(controller: bool, node: Option<&str>) -> Driver {
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

fn crash_driver(point: &str) -> Driver {
    Driver::start(
        &["--type=cephfs", "--controllerserver=true"],
        &[("FERROCEPH_TEST_CRASH_AT", point)],
    )
}

/// A scratch directory for staging and target paths. On drop, whatever is still mounted
/// under it is detached, ceph-fuse processes serving it are killed and their sessions
/// evicted, and only then is it removed (never recursing into a live mount).
struct Scratch {
    root: PathBuf,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let root = std::env::temp_dir().join(unique(&format!("ferroceph-fs-{tag}")));
        std::fs::create_dir_all(&root).expect("scratch dir");
        Scratch { root }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

fn mounts_under(root: &Path) -> Vec<PathBuf> {
    ferroceph::node::mount::mounts()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(root))
        .map(|m| m.mount_point)
        .collect()
}

/// ceph-fuse processes whose command line names a path under `root`.
fn fuse_pids_under(root: &Path) -> Vec<i32> {
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

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().starts_with('Z'))
                .unwrap_or(true)
        })
        .unwrap_or(true)
}

impl Drop for Scratch {
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

fn record_of(staging: &Path) -> Value {
    let p = staging.with_file_name(format!(
        "{}.ferroceph-cephfs.json",
        staging.file_name().unwrap().to_string_lossy()
    ));
    let text = std::fs::read_to_string(&p).unwrap_or_default();
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

fn statvfs_total(path: &Path) -> u64 {
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
async fn create_until_ready(d: &Driver, req: pb::CreateVolumeRequest) -> (pb::Volume, Vec<String>) {
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

fn write_file(path: &Path, data: &[u8]) {
    let mut f = std::fs::File::create(path).expect("create file");
    f.write_all(data).expect("write");
    f.sync_all().expect("fsync");
}

fn assert_no_secrets(d: &Driver) {
    let log = d.log_text();
    for k in cluster().all_keys() {
        assert!(!log.contains(&k), "a key leaked into the driver log");
    }
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rwx_on_two_nodes_quota_expansion_and_stats() {
    let t0 = Instant::now();
    let a = fs_driver(true, Some("node-a"));
    let b = fs_driver(false, Some("node-b"));
    let scratch = Scratch::new("rwx");
    let mut ctl = a.controller().await;
    let name = unique("pvc-fs-rwx");
    let mut req = fs_create(&name, 16 * MIB);
    req.parameters
        .insert("csi.storage.k8s.io/pvc/namespace".into(), "team-a".into());
    req.parameters.insert("pool".into(), "cephfs_data".into());
    req.parameters.insert("mounter".into(), "fuse".into());
    let vol = ctl
        .create_volume(req.clone())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(vol.capacity_bytes, 16 * MIB);
    assert!(vol.volume_id.starts_with("0001-0024-"), "{}", vol.volume_id);
    // the location is the filesystem's fscid
    assert!(
        vol.volume_id.contains("-0000000000000001-"),
        "{}",
        vol.volume_id
    );
    let ctx = &vol.volume_context;
    let sub = ctx["subvolumeName"].clone();
    assert_eq!(sub, format!("csi-vol-{}", uuid_of(&vol.volume_id)));
    assert!(ctx["subvolumePath"].starts_with(&format!("/volumes/{GROUP}/{sub}/")));
    assert_eq!(ctx["fsName"], FS);
    assert_eq!(ctx["clusterID"], cluster().fsid());
    assert_eq!(ctx["pool"], "cephfs_data");
    assert_eq!(ctx["mounter"], "fuse");
    assert!(!ctx.keys().any(|k| k.starts_with("csi.storage.k8s.io/")));
    let info = sub_info(GROUP, &sub).expect("subvolume exists");
    assert_eq!(info["bytes_quota"].as_i64(), Some(16 * MIB));
    assert_eq!(info["data_pool"], "cephfs_data");
    assert!(journal_has(&name));
    assert!(
        journal_keys(&format!("csi.volume.{}", uuid_of(&vol.volume_id)))
            .contains(&"csi.volume.owner".to_string())
    );

    // idempotent; an incompatible size is AlreadyExists
    let again = ctl
        .create_volume(req.clone())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(again.volume_id, vol.volume_id);
    assert_eq!(again.volume_context, vol.volume_context);
    let mut bigger = req.clone();
    bigger.capacity_range = Some(pb::CapacityRange {
        required_bytes: 64 * MIB,
        limit_bytes: 0,
    });
    assert_eq!(
        ctl.create_volume(bigger).await.unwrap_err().code(),
        Code::AlreadyExists
    );

    // stage on two nodes at once, publish on both
    let (sa, sb) = (scratch.path("a/globalmount"), scratch.path("b/globalmount"));
    let (ta, tb) = (scratch.path("a/pod/mount"), scratch.path("b/pod/mount"));
    let mut na = a.node().await;
    let mut nb = b.node().await;
    let (ra, rb) = tokio::join!(
        na.node_stage_volume(stage_req(&vol, &sa, Mode::MultiNodeMultiWriter)),
        nb.node_stage_volume(stage_req(&vol, &sb, Mode::MultiNodeMultiWriter))
    );
    ra.unwrap();
    rb.unwrap();
    na.node_stage_volume(stage_req(&vol, &sa, Mode::MultiNodeMultiWriter))
        .await
        .expect("stage is idempotent");
    let rec = record_of(&sa);
    assert_eq!(rec["mounter"], "fuse");
    assert_eq!(rec["volume_id"], vol.volume_id.as_str());
    let pid_a = rec["fuse_pid"].as_i64().expect("ceph-fuse pid recorded") as i32;
    let pid_b = record_of(&sb)["fuse_pid"].as_i64().unwrap() as i32;
    // the key is in no record, argument list or environment, and no key file is left
    for pid in [pid_a, pid_b] {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        for k in cluster().all_keys() {
            for blob in [&cmdline, &environ] {
                assert!(
                    !String::from_utf8_lossy(blob).contains(&k),
                    "key in ceph-fuse's argv/env"
                );
            }
        }
    }
    for k in cluster().all_keys() {
        assert!(!rec.to_string().contains(&k));
    }
    for d in [&a, &b] {
        let keys = d.dir.path().join("keys");
        let left = std::fs::read_dir(&keys).map(|r| r.count()).unwrap_or(0);
        assert_eq!(left, 0, "key files left in {}", keys.display());
    }
    na.node_publish_volume(publish_req(&vol, &sa, &ta, Mode::MultiNodeMultiWriter))
        .await
        .unwrap();
    nb.node_publish_volume(publish_req(&vol, &sb, &tb, Mode::MultiNodeMultiWriter))
        .await
        .unwrap();
    nb.node_publish_volume(publish_req(&vol, &sb, &tb, Mode::MultiNodeMultiWriter))
        .await
        .expect("publish is idempotent");

    // written through one node, read through the other
    write_file(&ta.join("hello.txt"), b"written on node a");
    assert_eq!(
        std::fs::read(tb.join("hello.txt")).unwrap(),
        b"written on node a"
    );
    write_file(&tb.join("reply.txt"), b"and node b answers");
    assert_eq!(
        std::fs::read(ta.join("reply.txt")).unwrap(),
        b"and node b answers"
    );

    // the quota is enforced at the requested size
    let quota_err = {
        let mut f = std::fs::File::create(ta.join("big")).unwrap();
        let chunk = vec![7u8; MIB as usize];
        let mut err = None;
        for _ in 0..64 {
            if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_data()) {
                err = Some(e);
                break;
            }
        }
        err
    };
    let e = quota_err.expect("writing 64 MiB into a 16 MiB volume must fail");
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT), "{e}");
    std::fs::remove_file(ta.join("big")).unwrap();

    // stats: quota-based size, used bytes and inodes, healthy
    let st = na
        .node_get_volume_stats(stats_req(&vol, &ta))
        .await
        .unwrap()
        .into_inner();
    let bytes = st
        .usage
        .iter()
        .find(|u| u.unit == pb::volume_usage::Unit::Bytes as i32)
        .unwrap();
    assert_eq!(bytes.total, 16 * MIB, "{st:?}");
    let inodes = st
        .usage
        .iter()
        .find(|u| u.unit == pb::volume_usage::Unit::Inodes as i32)
        .unwrap();
    assert!(inodes.used >= 2, "{st:?}");
    assert!(!st.volume_condition.unwrap().abnormal);

    // expansion: quota only, visible on both nodes without a remount
    let exp = ctl
        .controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            capacity_range: Some(pb::CapacityRange {
                required_bytes: 32 * MIB,
                limit_bytes: 0,
            }),
            secrets: fs_secrets(),
            volume_capability: Some(rwx()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exp.capacity_bytes, 32 * MIB);
    assert!(!exp.node_expansion_required);
    let deadline = Instant::now() + Duration::from_secs(20);
    while statvfs_total(&tb) != 32 * MIB as u64 || statvfs_total(&ta) != 32 * MIB as u64 {
        assert!(
            Instant::now() < deadline,
            "new size not visible: {}",
            statvfs_total(&tb)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // a smaller "expansion" keeps the size
    let exp = ctl
        .controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            capacity_range: Some(pb::CapacityRange {
                required_bytes: 8 * MIB,
                limit_bytes: 0,
            }),
            secrets: fs_secrets(),
            volume_capability: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exp.capacity_bytes, 32 * MIB);

    // teardown, twice (idempotent); ceph-fuse exits
    for _ in 0..2 {
        na.node_unpublish_volume(unpublish_req(&vol.volume_id, &ta))
            .await
            .unwrap();
        nb.node_unpublish_volume(unpublish_req(&vol.volume_id, &tb))
            .await
            .unwrap();
        na.node_unstage_volume(unstage_req(&vol.volume_id, &sa))
            .await
            .unwrap();
        nb.node_unstage_volume(unstage_req(&vol.volume_id, &sb))
            .await
            .unwrap();
    }
    assert!(mounts_under(&scratch.root).is_empty());
    assert!(fuse_pids_under(&scratch.root).is_empty());
    assert!(!ta.exists(), "target directory removed");
    assert_eq!(record_of(&sa), Value::Null, "record removed");

    ctl.delete_volume(del(&vol.volume_id)).await.unwrap();
    ctl.delete_volume(del(&vol.volume_id)).await.unwrap();
    assert!(sub_info(GROUP, &sub).is_none());
    assert!(!journal_has(&name));
    assert!(journal_keys(&format!("csi.volume.{}", uuid_of(&vol.volume_id))).is_empty());
    assert_no_secrets(&a);
    assert_no_secrets(&b);
    eprintln!("rwx test: {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_clones_and_deleting_a_volume_with_snapshots() {
    let t0 = Instant::now();
    let d = fs_driver(true, Some("node-snap"));
    let scratch = Scratch::new("snap");
    let mut ctl = d.controller().await;
    let mut node = d.node().await;
    let src = ctl
        .create_volume(fs_create(&unique("pvc-fs-src"), 16 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let src_sub = src.volume_context["subvolumeName"].clone();
    let (s0, t0p) = (scratch.path("src/globalmount"), scratch.path("src/mount"));
    node.node_stage_volume(stage_req(&src, &s0, Mode::SingleNodeWriter))
        .await
        .unwrap();
    node.node_publish_volume(publish_req(&src, &s0, &t0p, Mode::SingleNodeWriter))
        .await
        .unwrap();
    write_file(&t0p.join("data.txt"), b"version 1");

    eprintln!("{:?} staged+published source", t0.elapsed());
    // snapshot (idempotent), then change the source
    let sname = unique("snap-fs");
    let snap = ctl
        .create_snapshot(snap_req(&sname, &src.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert!(snap.ready_to_use);
    assert_eq!(snap.size_bytes, 16 * MIB);
    assert_eq!(snap.source_volume_id, src.volume_id);
    let snap2 = ctl
        .create_snapshot(snap_req(&sname, &src.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(snap2.snapshot_id, snap.snapshot_id);
    assert_eq!(snap2.creation_time, snap.creation_time);
    assert_eq!(
        snapshots(GROUP, &src_sub),
        vec![format!("csi-snap-{}", uuid_of(&snap.snapshot_id))]
    );
    write_file(&t0p.join("data.txt"), b"version 2");

    // listing by id and by source
    for req in [
        pb::ListSnapshotsRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        },
        pb::ListSnapshotsRequest {
            source_volume_id: src.volume_id.clone(),
            secrets: fs_secrets(),
            ..Default::default()
        },
    ] {
        let l = ctl.list_snapshots(req).await.unwrap().into_inner();
        assert_eq!(l.entries.len(), 1, "{l:?}");
        assert_eq!(
            l.entries[0].snapshot.as_ref().unwrap().source_volume_id,
            src.volume_id
        );
    }

    eprintln!("{:?} snapshot made", t0.elapsed());
    // a restore smaller than the snapshot is refused before anything is made
    let e = ctl
        .create_volume(from_snapshot(
            &unique("pvc-small"),
            8 * MIB,
            &snap.snapshot_id,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");

    // a clone that fails (cancelled behind our back) is removed and reported, and the
    // next retry starts a new one
    let rname = unique("pvc-fs-restore");
    // a client deadline that leaves no time to wait for the clone: Aborted at once
    let mut quick = tonic::Request::new(from_snapshot(&rname, 16 * MIB, &snap.snapshot_id));
    quick.set_timeout(Duration::from_secs(5));
    let first = ctl.create_volume(quick).await.unwrap_err();
    assert_eq!(first.code(), Code::Aborted, "{first:?}");
    assert!(first.message().contains("clone"), "{}", first.message());
    let clone_sub = first
        .message()
        .split("subvolume ")
        .nth(1)
        .and_then(|s| s.split(':').next())
        .unwrap()
        .to_string();
    mgr(json!({"prefix": "fs clone cancel", "clone_name": clone_sub, "group_name": GROUP}))
        .expect("cancel the clone");
    let failed = ctl
        .create_volume(from_snapshot(&rname, 16 * MIB, &snap.snapshot_id))
        .await
        .unwrap_err();
    assert_eq!(failed.code(), Code::Internal, "{failed:?}");
    assert!(
        failed.message().contains("canceled"),
        "{}",
        failed.message()
    );
    assert!(
        !subvolumes(GROUP).contains(&clone_sub),
        "failed clone removed"
    );
    assert!(!journal_has(&rname));

    eprintln!("{:?} failed clone handled", t0.elapsed());
    // restore from the snapshot and clone the volume, at the same time
    let cname = unique("pvc-fs-clone");
    let ((restored, waits), (cloned, _)) = tokio::join!(
        create_until_ready(&d, from_snapshot(&rname, 24 * MIB, &snap.snapshot_id)),
        create_until_ready(&d, from_volume(&cname, 0, &src.volume_id))
    );
    // a clone still running when the call's wait is over answers Aborted with its state
    // (a small one usually completes within the call)
    assert!(
        waits
            .iter()
            .all(|w| w.contains("clone pending") || w.contains("clone in-progress")),
        "{waits:?}"
    );
    assert_eq!(
        restored.capacity_bytes,
        24 * MIB,
        "restore grows to the request"
    );
    assert_eq!(
        cloned.capacity_bytes,
        16 * MIB,
        "clone inherits the source size"
    );
    eprintln!("{:?} restore+clone ready", t0.elapsed());
    // the temporary snapshot of the volume clone is gone
    assert_eq!(
        snapshots(GROUP, &src_sub),
        vec![format!("csi-snap-{}", uuid_of(&snap.snapshot_id))]
    );
    for (v, want) in [
        (&restored, b"version 1".as_slice()),
        (&cloned, b"version 2".as_slice()),
    ] {
        let tag = uuid_of(&v.volume_id);
        let (s, t) = (
            scratch.path(&format!("{tag}/globalmount")),
            scratch.path(&format!("{tag}/mount")),
        );
        node.node_stage_volume(stage_req(v, &s, Mode::SingleNodeReaderOnly))
            .await
            .unwrap();
        node.node_publish_volume(publish_req(v, &s, &t, Mode::SingleNodeReaderOnly))
            .await
            .unwrap();
        assert_eq!(std::fs::read(t.join("data.txt")).unwrap(), want);
        let e = std::fs::write(t.join("nope"), b"x").unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EROFS),
            "reader modes mount read-only"
        );
        node.node_unpublish_volume(unpublish_req(&v.volume_id, &t))
            .await
            .unwrap();
        node.node_unstage_volume(unstage_req(&v.volume_id, &s))
            .await
            .unwrap();
    }
    node.node_unpublish_volume(unpublish_req(&src.volume_id, &t0p))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_req(&src.volume_id, &s0))
        .await
        .unwrap();

    eprintln!("{:?} contents checked", t0.elapsed());
    // deleting a volume that has a snapshot: the snapshot stays usable, the subvolume
    // disappears with its last snapshot
    ctl.delete_volume(del(&src.volume_id)).await.unwrap();
    assert_eq!(
        sub_info(GROUP, &src_sub).map(|i| i["state"].clone()),
        Some(json!("snapshot-retained"))
    );
    ctl.delete_volume(del(&src.volume_id)).await.unwrap();
    let (late, _) = create_until_ready(
        &d,
        from_snapshot(&unique("pvc-fs-late"), 0, &snap.snapshot_id),
    )
    .await;
    ctl.delete_snapshot(del_snap(&snap.snapshot_id))
        .await
        .unwrap();
    ctl.delete_snapshot(del_snap(&snap.snapshot_id))
        .await
        .unwrap();
    assert!(sub_info(GROUP, &src_sub).is_none());
    assert!(!subvolumes(GROUP).contains(&src_sub));
    for v in [&restored, &cloned, &late] {
        ctl.delete_volume(del(&v.volume_id)).await.unwrap();
    }
    assert_no_secrets(&d);
    eprintln!("snapshot test: {:?}", t0.elapsed());
}

#[tokio::test]
async fn the_missing_subvolume_group_is_created() {
    let d = fs_driver(true, None);
    let group = unique("ftest-group");
    assert!(!groups().contains(&group));
    let c = cluster();
    let map = json!([{"clusterID": c.fsid(), "monitors": [c.monitors()],
                      "cephFS": {"subvolumeGroup": group}}]);
    std::fs::write(&d.config, map.to_string()).unwrap();
    let mut ctl = d.controller().await;
    let v = ctl
        .create_volume(fs_create(&unique("pvc-fs-group"), 0))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert!(groups().contains(&group), "group {group} created");
    assert_eq!(v.capacity_bytes, 0, "no size, no quota");
    let sub = v.volume_context["subvolumeName"].clone();
    assert!(v.volume_context["subvolumePath"].starts_with(&format!("/volumes/{group}/{sub}/")));
    assert_eq!(
        sub_info(&group, &sub).unwrap()["bytes_quota"],
        json!("infinite")
    );
    ctl.delete_volume(del(&v.volume_id)).await.unwrap();
    assert!(sub_info(&group, &sub).is_none());
    mgr(json!({"prefix": "fs subvolumegroup rm", "group_name": group})).unwrap();
}

#[tokio::test]
async fn a_static_volume_mounts_and_is_never_touched() {
    let d = fs_driver(true, Some("node-static"));
    let scratch = Scratch::new("static");
    let sub = unique("static");
    mgr(json!({"prefix": "fs subvolumegroup create", "group_name": GROUP})).unwrap();
    mgr(json!({"prefix": "fs subvolume create", "sub_name": sub, "group_name": GROUP})).unwrap();
    let path = sub_info(GROUP, &sub).unwrap()["path"]
        .as_str()
        .unwrap()
        .to_string();
    let c = cluster();
    let vol = pb::Volume {
        volume_id: format!("static-pv-{sub}"),
        volume_context: HashMap::from([
            ("clusterID".to_string(), c.fsid()),
            ("fsName".to_string(), FS.to_string()),
            ("staticVolume".to_string(), "true".to_string()),
            ("rootPath".to_string(), path.clone()),
        ]),
        ..Default::default()
    };
    let user_secrets = HashMap::from([
        ("userID".to_string(), c.get("FERRO_CEPHFS_USER")),
        ("userKey".to_string(), c.get("FERRO_CEPHFS_KEY")),
    ]);
    let (s, t) = (scratch.path("globalmount"), scratch.path("mount"));
    let mut node = d.node().await;
    let mut req = stage_req(&vol, &s, Mode::MultiNodeMultiWriter);
    req.secrets = user_secrets;
    node.node_stage_volume(req).await.unwrap();
    assert_eq!(record_of(&s)["root_path"], path.as_str());
    node.node_publish_volume(publish_req(&vol, &s, &t, Mode::MultiNodeMultiWriter))
        .await
        .unwrap();
    write_file(&t.join("f"), b"static data");
    assert_eq!(std::fs::read(t.join("f")).unwrap(), b"static data");

    // the controller leaves it alone
    let mut ctl = d.controller().await;
    ctl.delete_volume(del(&vol.volume_id)).await.unwrap();
    assert!(sub_info(GROUP, &sub).is_some());
    let v = ctl
        .validate_volume_capabilities(pb::ValidateVolumeCapabilitiesRequest {
            volume_id: vol.volume_id.clone(),
            volume_context: vol.volume_context.clone(),
            volume_capabilities: vec![rwx()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(v.confirmed.is_some());

    node.node_unpublish_volume(unpublish_req(&vol.volume_id, &t))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_req(&vol.volume_id, &s))
        .await
        .unwrap();
    assert!(mounts_under(&scratch.root).is_empty());
    mgr(json!({"prefix": "fs subvolume rm", "sub_name": sub, "group_name": GROUP})).unwrap();
}

#[tokio::test]
async fn validation_idempotency_and_concurrency() {
    let d = fs_driver(true, Some("node-val"));
    let mut ctl = d.controller().await;
    let code = |r: Result<tonic::Response<pb::CreateVolumeResponse>, tonic::Status>| {
        let e = r.unwrap_err();
        (e.code(), e.message().to_string())
    };

    let mut r = fs_create(&unique("bad"), MIB);
    r.volume_capabilities = vec![block_cap(Mode::SingleNodeWriter)];
    assert_eq!(code(ctl.create_volume(r).await).0, Code::InvalidArgument);
    let mut r = fs_create(&unique("bad"), MIB);
    r.parameters
        .insert("imageFeatures".into(), "layering".into());
    let (c, m) = code(ctl.create_volume(r).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.contains("imageFeatures"), "{m}");
    let mut r = fs_create(&unique("bad"), MIB);
    r.parameters.remove("fsName");
    assert_eq!(code(ctl.create_volume(r).await).0, Code::InvalidArgument);
    let mut r = fs_create(&unique("bad"), MIB);
    r.parameters.insert("fsName".into(), "nofs".into());
    let (c, m) = code(ctl.create_volume(r).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.contains("nofs") && m.contains("cephfs"), "{m}");
    let name = unique("bad-pool");
    let mut r = fs_create(&name, MIB);
    r.parameters.insert("pool".into(), "rbd".into());
    let (c, m) = code(ctl.create_volume(r).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.contains("not a data pool"), "{m}");
    assert!(
        !journal_has(&name),
        "nothing reserved for a refused request"
    );
    let mut r = fs_create(&unique("bad"), MIB);
    r.secrets.clear();
    let (c, m) = code(ctl.create_volume(r).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(m.contains("adminID"), "{m}");

    // concurrent creates of one name: one volume, the others Aborted
    let name = unique("pvc-fs-race");
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let mut ctl = d.controller().await;
        let req = fs_create(&name, 8 * MIB);
        tasks.push(tokio::spawn(async move { ctl.create_volume(req).await }));
    }
    let mut ids = std::collections::BTreeSet::new();
    let mut aborted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => {
                ids.insert(r.into_inner().volume.unwrap().volume_id);
            }
            Err(e) if e.code() == Code::Aborted => aborted += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert!(aborted >= 1, "a concurrent create must be Aborted");
    assert!(ids.len() <= 1, "{ids:?}");
    let v = ctl
        .create_volume(fs_create(&name, 8 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    if let Some(id) = ids.iter().next() {
        assert_eq!(id, &v.volume_id);
    }
    let uuid = uuid_of(&v.volume_id);
    assert_eq!(
        subvolumes(GROUP)
            .iter()
            .filter(|s| s.contains(&uuid))
            .count(),
        1
    );

    // capabilities: exactly what is implemented
    let caps = ctl
        .controller_get_capabilities(pb::ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caps.capabilities.len(), 10);
    let mut node = d.node().await;
    let ncaps = node
        .node_get_capabilities(pb::NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ncaps.capabilities.len(), 4);
    let info = node
        .node_get_info(pb::NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, "node-val");

    // validate, list, capacity, get volume
    let vv = ctl
        .validate_volume_capabilities(pb::ValidateVolumeCapabilitiesRequest {
            volume_id: v.volume_id.clone(),
            volume_capabilities: vec![rwx(), mount_cap(Mode::SingleNodeReaderOnly)],
            secrets: fs_secrets(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(vv.confirmed.is_some(), "{vv:?}");
    let vv = ctl
        .validate_volume_capabilities(pb::ValidateVolumeCapabilitiesRequest {
            volume_id: v.volume_id.clone(),
            volume_capabilities: vec![block_cap(Mode::SingleNodeWriter)],
            secrets: fs_secrets(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(vv.confirmed.is_none() && !vv.message.is_empty());
    let listed = ctl
        .list_volumes(pb::ListVolumesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed
        .entries
        .iter()
        .any(|e| e.volume.as_ref().unwrap().volume_id == v.volume_id));
    let cap = ctl
        .get_capacity(pb::GetCapacityRequest {
            parameters: fs_params(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(cap.available_capacity > 0, "{cap:?}");
    let got = ctl
        .controller_get_volume(pb::ControllerGetVolumeRequest {
            volume_id: v.volume_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.volume.unwrap().capacity_bytes, 8 * MIB);
    assert!(!got.status.unwrap().volume_condition.unwrap().abnormal);

    // node validation
    let scratch = Scratch::new("val");
    let mut req = stage_req(&v, &scratch.path("s"), Mode::SingleNodeWriter);
    req.volume_capability = Some(block_cap(Mode::SingleNodeWriter));
    assert_eq!(
        node.node_stage_volume(req).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut req = stage_req(&v, &scratch.path("s"), Mode::SingleNodeWriter);
    req.staging_target_path = "relative/path".into();
    assert_eq!(
        node.node_stage_volume(req).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let e = node
        .node_publish_volume(publish_req(
            &v,
            &scratch.path("s"),
            &scratch.path("t"),
            Mode::SingleNodeWriter,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "not staged: {e:?}");
    let e = node
        .node_get_volume_stats(stats_req(&v, &scratch.path("nothing")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    ctl.delete_volume(del(&v.volume_id)).await.unwrap();
    assert!(!journal_has(&name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_between_steps_converge() {
    let t0 = Instant::now();
    // create
    let mut made: Vec<pb::Volume> = Vec::new();
    for point in [
        "cephfs.create.reserved",
        "cephfs.create.subvolume",
        "cephfs.create.done",
    ] {
        let name = unique("pvc-fs-crash");
        let mut d = crash_driver(point);
        let mut ctl = d.controller().await;
        assert!(ctl.create_volume(fs_create(&name, 8 * MIB)).await.is_err());
        assert!(
            d.wait_exit(Duration::from_secs(20)).is_some(),
            "crash point {point} not reached"
        );
        d.envs.clear();
        d.spawn();
        let mut ctl = d.controller().await;
        let v = ctl
            .create_volume(fs_create(&name, 8 * MIB))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        let again = ctl
            .create_volume(fs_create(&name, 8 * MIB))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(v.volume_id, again.volume_id, "after {point}");
        assert_eq!(v.capacity_bytes, 8 * MIB);
        assert!(sub_info(GROUP, &v.volume_context["subvolumeName"]).is_some());
        made.push(v);
    }
    let src = made[0].clone();
    let src_sub = src.volume_context["subvolumeName"].clone();

    // snapshot
    let mut snaps = Vec::new();
    for point in ["cephfs.snapshot.reserved", "cephfs.snapshot.created"] {
        let sname = unique("snap-fs-crash");
        let mut d = crash_driver(point);
        let mut ctl = d.controller().await;
        assert!(ctl
            .create_snapshot(snap_req(&sname, &src.volume_id))
            .await
            .is_err());
        assert!(d.wait_exit(Duration::from_secs(20)).is_some(), "{point}");
        d.envs.clear();
        d.spawn();
        let mut ctl = d.controller().await;
        let s = ctl
            .create_snapshot(snap_req(&sname, &src.volume_id))
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        let s2 = ctl
            .create_snapshot(snap_req(&sname, &src.volume_id))
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        assert_eq!(s.snapshot_id, s2.snapshot_id);
        snaps.push(s);
    }
    let mut expected: Vec<String> = snaps
        .iter()
        .map(|s| format!("csi-snap-{}", uuid_of(&s.snapshot_id)))
        .collect();
    expected.sort();
    let mut have = snapshots(GROUP, &src_sub);
    have.sort();
    assert_eq!(have, expected, "one snapshot per request");

    // clone from a volume, killed at each step; the three run side by side
    let points = [
        "cephfs.create.reserved",
        "cephfs.clone.tempsnap",
        "cephfs.clone.started",
    ];
    let mut drivers = Vec::new();
    for point in points {
        let name = unique("pvc-fs-crash-clone");
        let d = crash_driver(point);
        let mut ctl = d.controller().await;
        assert!(ctl
            .create_volume(from_volume(&name, 0, &src.volume_id))
            .await
            .is_err());
        drivers.push((d, name, point));
    }
    for (d, _, point) in drivers.iter_mut() {
        assert!(d.wait_exit(Duration::from_secs(20)).is_some(), "{point}");
        d.envs.clear();
        d.spawn();
    }
    let (r0, r1, r2) = tokio::join!(
        create_until_ready(&drivers[0].0, from_volume(&drivers[0].1, 0, &src.volume_id)),
        create_until_ready(&drivers[1].0, from_volume(&drivers[1].1, 0, &src.volume_id)),
        create_until_ready(&drivers[2].0, from_volume(&drivers[2].1, 0, &src.volume_id)),
    );
    let clones = [r0.0, r1.0, r2.0];
    let subs = subvolumes(GROUP);
    for c in &clones {
        let uuid = uuid_of(&c.volume_id);
        assert_eq!(subs.iter().filter(|s| s.contains(&uuid)).count(), 1);
    }
    let mut have = snapshots(GROUP, &src_sub);
    have.sort();
    assert_eq!(have, expected, "temporary snapshots are all gone");

    // delete, killed after removing the subvolume / snapshot
    let mut d = crash_driver("cephfs.snapshot.removed");
    let mut ctl = d.controller().await;
    assert!(ctl
        .delete_snapshot(del_snap(&snaps[0].snapshot_id))
        .await
        .is_err());
    assert!(d.wait_exit(Duration::from_secs(20)).is_some());
    d.envs.clear();
    d.spawn();
    let mut ctl = d.controller().await;
    ctl.delete_snapshot(del_snap(&snaps[0].snapshot_id))
        .await
        .unwrap();
    ctl.delete_snapshot(del_snap(&snaps[1].snapshot_id))
        .await
        .unwrap();
    assert!(journal_keys("csi.snaps.default")
        .iter()
        .all(|k| !snaps.iter().any(|s| k.contains(&uuid_of(&s.snapshot_id)))));
    let mut d = crash_driver("cephfs.delete.removed");
    let mut ctl = d.controller().await;
    assert!(ctl.delete_volume(del(&clones[0].volume_id)).await.is_err());
    assert!(d.wait_exit(Duration::from_secs(20)).is_some());
    assert!(!journal_keys(&format!("csi.volume.{}", uuid_of(&clones[0].volume_id))).is_empty());
    d.envs.clear();
    d.spawn();
    let mut ctl = d.controller().await;
    for v in clones.iter().chain(made.iter()) {
        ctl.delete_volume(del(&v.volume_id)).await.unwrap();
        assert!(journal_keys(&format!("csi.volume.{}", uuid_of(&v.volume_id))).is_empty());
        assert!(sub_info(GROUP, &v.volume_context["subvolumeName"]).is_none());
    }
    eprintln!("crash test: {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_plugin_restart_keeps_or_heals_a_staged_fuse_volume() {
    let t0 = Instant::now();
    let mut d = fs_driver(true, Some("node-restart"));
    let scratch = Scratch::new("restart");
    let mut ctl = d.controller().await;
    let v = ctl
        .create_volume(fs_create(&unique("pvc-fs-restart"), 16 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let (s, t) = (scratch.path("globalmount"), scratch.path("pod/mount"));
    let mut node = d.node().await;
    node.node_stage_volume(stage_req(&v, &s, Mode::SingleNodeWriter))
        .await
        .unwrap();
    node.node_publish_volume(publish_req(&v, &s, &t, Mode::SingleNodeWriter))
        .await
        .unwrap();
    write_file(&t.join("before"), b"written before the restart");
    let pid = record_of(&s)["fuse_pid"].as_i64().unwrap() as i32;

    // the plugin dies; the mount keeps working
    d.kill();
    assert!(!is_zombie(pid), "ceph-fuse outlives the plugin");
    write_file(&t.join("during"), b"written while the plugin is down");

    // restarted: the healthy mount is re-adopted
    d.spawn();
    let mut node = d.node().await;
    node.node_stage_volume(stage_req(&v, &s, Mode::SingleNodeWriter))
        .await
        .unwrap();
    node.node_publish_volume(publish_req(&v, &s, &t, Mode::SingleNodeWriter))
        .await
        .unwrap();
    assert_eq!(record_of(&s)["fuse_pid"].as_i64(), Some(pid as i64));
    let st = node
        .node_get_volume_stats(stats_req(&v, &t))
        .await
        .unwrap()
        .into_inner();
    assert!(!st.volume_condition.unwrap().abnormal);

    // ceph-fuse dies: the condition says so, NodeStage mounts again, NodePublish re-binds
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !is_zombie(pid) {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    evict_clients_under(&scratch.root);
    let st = node
        .node_get_volume_stats(stats_req(&v, &t))
        .await
        .unwrap()
        .into_inner();
    let cond = st.volume_condition.unwrap();
    assert!(cond.abnormal, "{cond:?}");
    assert!(cond.message.contains("not connected"), "{}", cond.message);
    let e = node
        .node_publish_volume(publish_req(&v, &s, &t, Mode::SingleNodeWriter))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    node.node_stage_volume(stage_req(&v, &s, Mode::SingleNodeWriter))
        .await
        .unwrap();
    let new_pid = record_of(&s)["fuse_pid"].as_i64().unwrap() as i32;
    assert_ne!(new_pid, pid);
    node.node_publish_volume(publish_req(&v, &s, &t, Mode::SingleNodeWriter))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(t.join("during")).unwrap(),
        b"written while the plugin is down"
    );
    let st = node
        .node_get_volume_stats(stats_req(&v, &t))
        .await
        .unwrap()
        .into_inner();
    assert!(!st.volume_condition.unwrap().abnormal);

    // a plugin killed again, then a clean unstage by the new process waits for ceph-fuse
    d.kill();
    d.spawn();
    let mut node = d.node().await;
    node.node_unpublish_volume(unpublish_req(&v.volume_id, &t))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_req(&v.volume_id, &s))
        .await
        .unwrap();
    assert!(mounts_under(&scratch.root).is_empty());
    assert!(is_zombie(new_pid), "ceph-fuse exited");
    let mut ctl = d.controller().await;
    ctl.delete_volume(del(&v.volume_id)).await.unwrap();
    assert_no_secrets(&d);
    eprintln!("restart test: {:?}", t0.elapsed());
}

/// A snapshot ceph-csi made (a subvolume snapshot and a journal entry without our size and
/// time keys) reports the source's size and the snapshot's creation time, not 0 and 1970.
#[tokio::test]
async fn cephcsi_snapshot_reports_real_size_and_time() {
    let d = fs_driver(true, None);
    let mut ctl = d.controller().await;
    let src = ctl
        .create_volume(fs_create(&unique("pvc-fs-csisnap"), 16 * MIB))
        .await
        .expect("source")
        .into_inner()
        .volume
        .unwrap();
    let sub = src.volume_context["subvolumeName"].clone();
    let name = unique("snap-fs-cephcsi");
    let suuid = uuid::Uuid::new_v4().to_string();
    let snap = format!("csi-snap-{suuid}");
    mgr(json!({"prefix": "fs subvolume snapshot create", "sub_name": sub, "group_name": GROUP, "snap_name": snap}))
        .expect("snapshot");
    let taken = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let c = admin();
    let io = c.ioctx("cephfs_metadata", "csi").expect("metadata pool");
    io.create_with_omap(
        &format!("csi.snap.{suuid}"),
        &[
            ("csi.snapname", name.as_bytes()),
            ("csi.imagename", snap.as_bytes()),
            ("csi.source", sub.as_bytes()),
        ],
    )
    .unwrap();
    io.omap_set(
        "csi.snaps.default",
        &[(format!("csi.snap.{name}").as_str(), suuid.as_bytes())],
    )
    .unwrap();
    let fscid = &src.volume_id[src.volume_id.len() - 53..src.volume_id.len() - 37];
    let sid = format!(
        "{}-{fscid}-{suuid}",
        &src.volume_id[..src.volume_id.len() - 54]
    );

    let created = ctl.create_snapshot(snap_req(&name, &src.volume_id)).await;
    let listed = ctl
        .list_snapshots(pb::ListSnapshotsRequest {
            snapshot_id: sid.clone(),
            secrets: fs_secrets(),
            ..Default::default()
        })
        .await;
    ctl.delete_snapshot(del_snap(&sid))
        .await
        .expect("delete snapshot");
    ctl.delete_volume(del(&src.volume_id))
        .await
        .expect("delete source");
    let s = created
        .expect("create finds the snapshot")
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(s.snapshot_id, sid);
    let l = listed
        .expect("list")
        .into_inner()
        .entries
        .into_iter()
        .next()
        .and_then(|e| e.snapshot)
        .expect("listed");
    for (what, s) in [("CreateSnapshot", s), ("ListSnapshots", l)] {
        assert_eq!(s.size_bytes, 16 * MIB, "{what} size");
        let t = s.creation_time.unwrap_or_default().seconds;
        assert!(
            (t - taken).abs() < 120,
            "{what} creation time {t}, taken at {taken}"
        );
    }
}

/// DeleteSnapshot of a snapshot that clones are still being made from answers
/// FailedPrecondition (the spec's code for a snapshot in use) and keeps it. Clones of a
/// small volume finish quickly, so a round counts only when the mgr still reports pending
/// clones right before the delete; up to three rounds.
#[tokio::test]
async fn delete_snapshot_with_pending_clones_is_failed_precondition() {
    let d = fs_driver(true, None);
    let mut ctl = d.controller().await;
    let src = ctl
        .create_volume(fs_create(&unique("pvc-fs-pending"), 16 * MIB))
        .await
        .expect("source")
        .into_inner()
        .volume
        .unwrap();
    let sub = src.volume_context["subvolumeName"].clone();
    let mut outcome = None;
    for _round in 0..3 {
        let snap = ctl
            .create_snapshot(snap_req(&unique("snap-fs-pending"), &src.volume_id))
            .await
            .expect("snapshot")
            .into_inner()
            .snapshot
            .unwrap();
        let snap_name = format!("csi-snap-{}", uuid_of(&snap.snapshot_id));
        // clones queue up behind the mgr's cloner threads
        let clones: Vec<String> = (0..8)
            .map(|i| format!("pending-clone-{i}-{}", uuid_of(&snap.snapshot_id)))
            .collect();
        for c in &clones {
            // a slow mgr may answer late; the cleanup below handles a clone either way
            let _ = mgr(
                json!({"prefix": "fs subvolume snapshot clone", "sub_name": sub,
                "group_name": GROUP, "snap_name": snap_name, "target_sub_name": c,
                "target_group_name": GROUP}),
            );
        }
        let info = mgr(
            json!({"prefix": "fs subvolume snapshot info", "sub_name": sub,
            "snap_name": snap_name, "group_name": GROUP}),
        )
        .unwrap_or(Value::Null);
        let pending = info["has_pending_clones"] == "yes";
        let first = if pending {
            Some(ctl.delete_snapshot(del_snap(&snap.snapshot_id)).await)
        } else {
            None
        };
        let kept = snapshots(GROUP, &sub).contains(&snap_name);
        // clean up: wait for the clones, remove them, then the snapshot
        let deadline = Instant::now() + Duration::from_secs(120);
        for c in &clones {
            loop {
                let st =
                    mgr(json!({"prefix": "fs clone status", "clone_name": c, "group_name": GROUP}))
                        .unwrap_or(Value::Null);
                let state = st["status"]["state"].as_str().unwrap_or("").to_string();
                if state != "pending" && state != "in-progress" || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let _ = mgr(
                json!({"prefix": "fs subvolume rm", "sub_name": c, "group_name": GROUP, "force": true}),
            );
        }
        ctl.delete_snapshot(del_snap(&snap.snapshot_id))
            .await
            .expect("delete snapshot");
        if let Some(first) = first {
            outcome = Some((first, kept));
            break;
        }
    }
    ctl.delete_volume(del(&src.volume_id))
        .await
        .expect("delete source");
    let (first, kept) = outcome.expect("in no round were clones still pending at the delete");
    let e = first.expect_err("the snapshot was deleted while clones were pending");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(kept, "the snapshot is gone");
}

/// csi-sanity's "should create volume from an existing source snapshot / volume": a small
/// clone completes within the CreateVolume call (the driver waits for it within the RPC's
/// deadline) instead of answering Aborted and sending the CO into retry back-off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_clones_complete_in_one_call() {
    let d = fs_driver(true, None);
    let mut ctl = d.controller().await;
    let src = ctl
        .create_volume(fs_create(&unique("pvc-fs-src1"), 16 * MIB))
        .await
        .expect("CreateVolume")
        .into_inner()
        .volume
        .expect("volume");
    let snap = ctl
        .create_snapshot(snap_req(&unique("snap-fs-1"), &src.volume_id))
        .await
        .expect("CreateSnapshot")
        .into_inner()
        .snapshot
        .expect("snapshot");
    let restored = ctl
        .create_volume(from_snapshot(
            &unique("pvc-fs-r1"),
            16 * MIB,
            &snap.snapshot_id,
        ))
        .await
        .expect("a small restore completes in one call")
        .into_inner()
        .volume
        .expect("volume");
    let cloned = ctl
        .create_volume(from_volume(&unique("pvc-fs-c1"), 16 * MIB, &src.volume_id))
        .await
        .expect("a small clone completes in one call")
        .into_inner()
        .volume
        .expect("volume");
    for v in [&restored, &cloned] {
        ctl.delete_volume(del(&v.volume_id))
            .await
            .expect("DeleteVolume");
    }
    ctl.delete_snapshot(del_snap(&snap.snapshot_id))
        .await
        .expect("DeleteSnapshot");
    ctl.delete_volume(del(&src.volume_id))
        .await
        .expect("DeleteVolume");
}
