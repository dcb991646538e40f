//! RBD node service against the real dev cluster, through the FUSE attachment (this
//! kernel has neither rbd nor nbd): stage, publish, restage elsewhere, never reformat,
//! raw block, read-only, expansion, stats, plugin crash and restart, snapshot restore.

mod common;
use common::node::{
    fs_uuid, pattern, stats, unpublish, unstage, write_synced, CtlClient, NodeClient, Vol,
};
use common::*;
use csi::v1 as pb;
use ferroceph::node::record;
use ferroceph::rbd::attach::fuse::{find_exporters, loops_backed_by};
use pb::volume_capability::access_mode::Mode;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::Code;

fn fs_cap(mode: Mode) -> pb::VolumeCapability {
    mount_cap(mode)
}

async fn create(ctl: &mut CtlClient, s: &mut Scratch, name: &str, size: i64) -> Vol {
    let v = ctl
        .create_volume(create_req(name, size))
        .await
        .expect("CreateVolume")
        .into_inner()
        .volume
        .expect("volume");
    let image = v.volume_context["imageName"].clone();
    s.images.push(image.clone());
    Vol {
        id: v.volume_id,
        ctx: v.volume_context,
        image,
    }
}

async fn delete(ctl: &mut CtlClient, v: &Vol) {
    ctl.delete_volume(del_req(&v.id))
        .await
        .expect("DeleteVolume");
}

fn stage_req(v: &Vol, staging: &Path, cap: pb::VolumeCapability) -> pb::NodeStageVolumeRequest {
    common::stage_req(&v.id, &v.ctx, staging, cap, cluster().rbd_secrets())
}

fn publish_req(
    v: &Vol,
    staging: &Path,
    target: &Path,
    cap: pb::VolumeCapability,
    readonly: bool,
) -> pb::NodePublishVolumeRequest {
    common::publish_req(&v.id, &v.ctx, staging, target, cap, readonly)
}

async fn stage(node: &mut NodeClient, v: &Vol, staging: &Path, cap: pb::VolumeCapability) {
    node.node_stage_volume(stage_req(v, staging, cap))
        .await
        .unwrap_or_else(|e| panic!("NodeStageVolume {}: {e:?}", staging.display()));
}

async fn publish(
    node: &mut NodeClient,
    v: &Vol,
    staging: &Path,
    target: &Path,
    cap: pb::VolumeCapability,
    ro: bool,
) {
    node.node_publish_volume(publish_req(v, staging, target, cap, ro))
        .await
        .unwrap_or_else(|e| panic!("NodePublishVolume {}: {e:?}", target.display()));
}

/// The record of a staged volume, and a check that it carries no key.
fn read_record(staging: &Path) -> record::Record {
    let p = record::paths(staging).record;
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    for k in cluster().all_keys() {
        assert!(!text.contains(&k), "the record holds a key");
    }
    serde_json::from_str(&text).expect("record")
}

/// After unstage: no record, no FUSE export, no loop device, no exporter, no mount.
fn assert_clean(staging: &Path) {
    let p = record::paths(staging);
    assert!(!p.record.exists(), "record left: {}", p.record.display());
    assert!(
        !p.fuse_dir.exists(),
        "FUSE dir left: {}",
        p.fuse_dir.display()
    );
    let file = p.fuse_dir.join(ferroceph::fuse_export::EXPORT_FILE);
    assert!(loops_backed_by(&file).is_empty(), "loop device left");
    assert!(find_exporters(&p.fuse_dir).is_empty(), "exporter left");
    assert!(
        !ferroceph::node::mount::is_mount_point(staging).unwrap_or(false),
        "staging still mounted"
    );
}

fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn df_size(path: &Path) -> u64 {
    let out = Command::new("df")
        .args(["--output=size", "-B1"])
        .arg(path)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df size")
}

fn mount_is_ro(path: &Path) -> bool {
    ferroceph::node::mount::mount_at(path)
        .ok()
        .flatten()
        .expect("mounted")
        .read_only()
}

fn usage(r: &pb::NodeGetVolumeStatsResponse, unit: pb::volume_usage::Unit) -> pb::VolumeUsage {
    *r.usage
        .iter()
        .find(|u| u.unit == unit as i32)
        .expect("usage of that unit")
}

/// The seed journey: provision → stage → publish → write → unpublish → unstage → stage on
/// another node (another node id, another staging path) → publish → byte-identical.
#[tokio::test]
async fn seed_journey_data_survives_restage_on_another_node() {
    let mut s = Scratch::new();
    let d = Driver::rbd();
    let mut ctl = d.controller().await;
    let mut node = d.node().await;
    let v = create(&mut ctl, &mut s, &unique("pvc-seed"), 64 * MIB).await;

    let caps = node
        .node_get_capabilities(pb::NodeGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .capabilities;
    assert_eq!(caps.len(), 5);

    let staging = s.path("node-a/plugins/vol/globalmount");
    let target = s.path("node-a/pods/pod-1/volumes/mount");
    let cap = fs_cap(Mode::SingleNodeWriter);
    stage(&mut node, &v, &staging, cap.clone()).await;
    // idempotent
    stage(&mut node, &v, &staging, cap.clone()).await;
    let rec = read_record(&staging);
    assert_eq!(rec.mounter, "fuse");
    assert_eq!(rec.requested_mounter, "auto");
    assert!(rec.reason.contains("neither"), "{}", rec.reason);
    let fuse = rec.fuse.clone().expect("fuse state");
    // the key is in neither the exporter's command line nor its environment
    for f in ["cmdline", "environ"] {
        let bytes = std::fs::read(format!("/proc/{}/{f}", fuse.pid)).expect("exporter proc");
        let text = String::from_utf8_lossy(&bytes);
        for k in cluster().all_keys() {
            assert!(!text.contains(&k), "key in the exporter's {f}");
        }
    }

    publish(&mut node, &v, &staging, &target, cap.clone(), false).await;
    publish(&mut node, &v, &staging, &target, cap.clone(), false).await;
    let data = pattern(7, 3 << 20);
    write_synced(&target.join("hello.txt"), b"hello ceph\n");
    std::fs::create_dir_all(target.join("sub")).unwrap();
    write_synced(&target.join("sub/blob"), &data);
    unpublish(&mut node, &v, &target).await;
    unpublish(&mut node, &v, &target).await;
    assert!(!target.exists());
    unstage(&mut node, &v, &staging).await;
    unstage(&mut node, &v, &staging).await;
    assert_clean(&staging);

    // "another node": a node plugin with another node id, another staging path
    let d2 = Driver::start(&["--type=rbd", "--nodeserver=true", "--nodeid=node-b"], &[]);
    let mut node_b = d2.node().await;
    let info = node_b
        .node_get_info(pb::NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, "node-b");
    let staging_b = s.path("node-b/plugins/vol/globalmount");
    let target_b = s.path("node-b/pods/pod-2/volumes/mount");
    stage(&mut node_b, &v, &staging_b, cap.clone()).await;
    publish(&mut node_b, &v, &staging_b, &target_b, cap.clone(), false).await;
    assert_eq!(
        std::fs::read(target_b.join("hello.txt")).unwrap(),
        b"hello ceph\n"
    );
    assert_eq!(std::fs::read(target_b.join("sub/blob")).unwrap(), data);
    unpublish(&mut node_b, &v, &target_b).await;
    unstage(&mut node_b, &v, &staging_b).await;
    assert_clean(&staging_b);
    delete(&mut ctl, &v).await;

    for log in [d.log_text(), d2.log_text()] {
        for k in cluster().all_keys() {
            assert!(!log.contains(&k), "a key reached the driver log");
        }
    }
}

/// NodeStageVolume: a single-node read-write volume is never attached on a second node
/// while the first still has it (a rolling update moving a pod before the old node let
/// go): FailedPrecondition naming the other client, nothing left attached; once the first
/// node unstages, the second stages it.
#[tokio::test]
async fn stage_refuses_a_rwo_volume_open_on_another_node() {
    let mut s = Scratch::new();
    let a = Driver::rbd();
    let b = Driver::start(&["--type=rbd", "--nodeserver=true", "--nodeid=node-b"], &[]);
    let mut ctl = a.controller().await;
    let (mut na, mut nb) = (a.node().await, b.node().await);
    let v = create(&mut ctl, &mut s, &unique("pvc-rwo"), 32 * MIB).await;
    let cap = fs_cap(Mode::SingleNodeWriter);
    let (sa, sb) = (s.path("a/globalmount"), s.path("b/globalmount"));
    stage(&mut na, &v, &sa, cap.clone()).await;
    let err = nb
        .node_stage_volume(stage_req(&v, &sb, cap.clone()))
        .await
        .expect_err("a second node must not attach a RWO volume in use");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("another client has it open"),
        "{err:?}"
    );
    assert!(
        err.message().contains("client."),
        "names the client: {err:?}"
    );
    assert!(!ferroceph::node::mount::is_mount_point(&sb).unwrap_or(false));
    assert!(!record::paths(&sb).record.exists(), "no record on node b");
    // readers on other nodes are another matter: not this check's business
    unstage(&mut na, &v, &sa).await;
    stage(&mut nb, &v, &sb, cap.clone()).await;
    unstage(&mut nb, &v, &sb).await;
    assert_clean(&sb);
    delete(&mut ctl, &v).await;
}

/// A volume with data is never formatted again, and a device holding anything that is not
/// a filesystem is refused, not formatted.
#[tokio::test]
async fn existing_data_is_never_reformatted() {
    let mut s = Scratch::new();
    let d = Driver::rbd();
    let mut ctl = d.controller().await;
    let mut node = d.node().await;
    let v = create(&mut ctl, &mut s, &unique("pvc-keep"), 64 * MIB).await;
    let cap = fs_cap(Mode::SingleNodeWriter);

    let staging = s.path("a/globalmount");
    stage(&mut node, &v, &staging, cap.clone()).await;
    let dev = read_record(&staging).device.expect("device");
    let uuid = fs_uuid(&dev);
    assert!(!uuid.is_empty());
    let data = pattern(11, 1 << 20);
    write_synced(&staging.join("data"), &data);
    unstage(&mut node, &v, &staging).await;

    for round in 0..2 {
        let staging = s.path(&format!("b{round}/globalmount"));
        stage(&mut node, &v, &staging, cap.clone()).await;
        let dev = read_record(&staging).device.expect("device");
        assert_eq!(fs_uuid(&dev), uuid, "the filesystem was recreated");
        let back = std::fs::read(staging.join("data")).unwrap();
        assert_eq!(checksum(&back), checksum(&data));
        unstage(&mut node, &v, &staging).await;
        assert_clean(&staging);
    }

    // a device with a partition table and no filesystem: refused and left as it is
    let v2 = create(&mut ctl, &mut s, &unique("pvc-part"), 64 * MIB).await;
    let mut mbr = vec![0u8; 512];
    // one Linux partition from sector 2048 on, and the boot signature
    mbr[446 + 4] = 0x83;
    mbr[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
    mbr[446 + 12..446 + 16].copy_from_slice(&100_000u32.to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    // copy the MBR into the volume through a staged raw block device
    let staging = s.path("p/globalmount");
    let bcap = block_cap(Mode::SingleNodeWriter);
    stage(&mut node, &v2, &staging, bcap.clone()).await;
    let dev = read_record(&staging).device.expect("device");
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&dev).unwrap();
        f.write_all(&mbr).unwrap();
        f.sync_all().unwrap();
    }
    unstage(&mut node, &v2, &staging).await;
    let staging = s.path("q/globalmount");
    let e = node
        .node_stage_volume(stage_req(&v2, &staging, cap.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("partition table"), "{}", e.message());
    assert_clean(&staging);
    // still the MBR, nothing formatted
    let staging = s.path("r/globalmount");
    stage(&mut node, &v2, &staging, bcap).await;
    let dev = read_record(&staging).device.expect("device");
    let mut back = vec![0u8; 512];
    std::fs::File::open(&dev)
        .unwrap()
        .read_exact(&mut back)
        .unwrap();
    assert_eq!(back, mbr);
    unstage(&mut node, &v2, &staging).await;
    delete(&mut ctl, &v2).await;
    delete(&mut ctl, &v).await;
}

/// Raw block: write a pattern to the published device, re-attach, read it back.
#[tokio::test]
async fn raw_block_pattern_survives_reattach() {
    let mut s = Scratch::new();
    let d = Driver::rbd();
    let mut ctl = d.controller().await;
    let mut node = d.node().await;
    let mut req = create_req(&unique("pvc-block"), 32 * MIB);
    req.volume_capabilities = vec![block_cap(Mode::SingleNodeWriter)];
    let vol = ctl
        .create_volume(req)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let v = Vol {
        id: vol.volume_id,
        image: vol.volume_context["imageName"].clone(),
        ctx: vol.volume_context,
    };
    s.images.push(v.image.clone());
    let cap = block_cap(Mode::SingleNodeWriter);
    let data = pattern(42, 2 << 20);
    let offset = 5u64 << 20;

    let staging = s.path("staging/pv-block");
    let target = s.path("pods/p1/volumeDevices/pv-block");
    stage(&mut node, &v, &staging, cap.clone()).await;
    assert!(!ferroceph::node::mount::is_mount_point(&staging).unwrap_or(false));
    publish(&mut node, &v, &staging, &target, cap.clone(), false).await;
    publish(&mut node, &v, &staging, &target, cap.clone(), false).await;
    assert!(ferroceph::node::stats::is_block_device(&target));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&target)
            .unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
    }
    let st = stats(&mut node, &v, &target, &staging).await;
    assert_eq!(usage(&st, pb::volume_usage::Unit::Bytes).total, 32 * MIB);
    assert!(!st.volume_condition.unwrap().abnormal);
    unpublish(&mut node, &v, &target).await;
    unstage(&mut node, &v, &staging).await;
    assert_clean(&staging);

    let staging = s.path("staging/pv-block-again");
    let target = s.path("pods/p2/volumeDevices/pv-block");
    stage(&mut node, &v, &staging, cap.clone()).await;
    publish(&mut node, &v, &staging, &target, cap.clone(), true).await;
    let mut back = vec![0u8; data.len()];
    {
        let mut f = std::fs::File::open(&target).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.read_exact(&mut back).unwrap();
    }
    assert!(back == data, "the pattern did not survive");
    // published read-only: writes are refused (by the device: a read-only bind mount
    // alone would not stop them)
    let refused = std::fs::OpenOptions::new()
        .write(true)
        .open(&target)
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(offset))?;
            f.write_all(&[0u8; 4096])?;
            f.sync_all()
        });
    assert!(
        refused.is_err(),
        "a read-only block publish accepted a write"
    );
    unpublish(&mut node, &v, &target).await;
    unstage(&mut node, &v, &staging).await;
    assert_clean(&staging);
    delete(&mut ctl, &v).await;
}

/// Read-only publish refuses writes; staging with a reader-only access mode is read-only
/// all the way down (read-only mount, read-only loop device, image opened read-only).
#[tokio::test]
async fn read_only_publish_and_reader_only_staging() {
    let mut s = Scratch::new();
    let d = Driver::rbd();
    let mut ctl = d.controller().await;
    let mut node = d.node().await;
    let v = create(&mut ctl, &mut s, &unique("pvc-ro"), 64 * MIB).await;
    let cap = fs_cap(Mode::SingleNodeWriter);
    let staging = s.path("rw/globalmount");
    let t_ro = s.path("pods/ro/mount");
    let t_rw = s.path("pods/rw/mount");
    stage(&mut node, &v, &staging, cap.clone()).await;
    publish(&mut node, &v, &staging, &t_rw, cap.clone(), false).await;
    publish(&mut node, &v, &staging, &t_ro, cap.clone(), true).await;
    write_synced(&t_rw.join("f"), b"written rw");
    assert!(mount_is_ro(&t_ro));
    assert_eq!(std::fs::read(t_ro.join("f")).unwrap(), b"written rw");
    let e = std::fs::write(t_ro.join("g"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    // the same target read-write now: incompatible
    let e = node
        .node_publish_volume(publish_req(&v, &staging, &t_ro, cap.clone(), false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    unpublish(&mut node, &v, &t_ro).await;
    unpublish(&mut node, &v, &t_rw).await;
    unstage(&mut node, &v, &staging).await;

    // ROX staging
    let rox = fs_cap(Mode::MultiNodeReaderOnly);
    let staging = s.path("rox/globalmount");
    let target = s.path("pods/rox/mount");
    stage(&mut node, &v, &staging, rox.clone()).await;
    let rec = read_record(&staging);
    assert!(rec.read_only);
    let dev = rec.device.clone().expect("device");
    assert!(mount_is_ro(&staging));
    let loop_name = dev.trim_start_matches("/dev/");
    assert_eq!(
        std::fs::read_to_string(format!("/sys/block/{loop_name}/ro"))
            .unwrap()
            .trim(),
        "1"
    );
    publish(&mut node, &v, &staging, &target, rox.clone(), false).await;
    assert!(mount_is_ro(&target));
    assert_eq!(std::fs::read(target.join("f")).unwrap(), b"written rw");
    assert!(std::fs::write(target.join("h"), b"x").is_err());
    assert!(std::fs::write(staging.join("h"), b"x").is_err());
    // staged read-only: a read-write stage of the same path is incompatible
    let e = node
        .node_stage_volume(stage_req(&v, &staging, cap.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    unpublish(&mut node, &v, &target).await;
    unstage(&mut node, &v, &staging).await;
    assert_clean(&staging);

    // a blank volume cannot be staged read-only (nothing to format it)
    let blank = create(&mut ctl, &mut s, &unique("pvc-blank"), 32 * MIB).await;
    let staging = s.path("blank/globalmount");
    let e = node
        .node_stage_volume(stage_req(&blank, &staging, rox))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_clean(&staging);
    delete(&mut ctl, &blank).await;
    delete(&mut ctl, &v).await;
}

fn has_cap_sys_resource() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("CapEff:"))?.to_string();
            u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

async fn expand(
    ctl: &mut CtlClient,
    node: &mut NodeClient,
    v: &Vol,
    staging: &Path,
    target: &Path,
    cap: &pb::VolumeCapability,
    size: i64,
) -> Result<i64, tonic::Status> {
    let resp = ctl
        .controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: v.id.clone(),
            capacity_range: Some(pb::CapacityRange {
                required_bytes: size,
                limit_bytes: 0,
            }),
            secrets: cluster().rbd_secrets(),
            volume_capability: Some(cap.clone()),
        })
        .await
        .expect("ControllerExpandVolume")
        .into_inner();
    assert!(resp.node_expansion_required);
    node.node_expand_volume(pb::NodeExpandVolumeRequest {
        volume_id: v.id.clone(),
        volume_path: target.display().to_string(),
        capacity_range: Some(pb::CapacityRange {
            required_bytes: size,
            limit_bytes: 0,
        }),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(cap.clone()),
        secrets: HashMap::new(),
    })
    .await
    .map(|r| r.into_inner().capacity_bytes)
}

/// Online expansion of a mounted xfs volume: `df` on the target shows the new size.
#[tokio::test]
async fn online_expansion_xfs() {
    let mut s = Scratch::new();
    let d = Driver::rbd();
    let mut ctl = d.controller().await;
    let mut node = d.node().await;
    // mkfs.xfs wants at least 300 MiB
    let v = create(&mut ctl, &mut s, &unique("pvc-grow"), 320 * MIB).await;
    let mut cap = fs_cap(Mode::SingleNodeWriter);
    if let Some(pb::volume_capability::AccessType::Mount(m)) = cap.access_type.as_mut() {
        m.fs_type = "xfs".into();
    }
    let staging = s.path("plugins/vol/globalmount");
    let target = s.path("pods/p/mount");
    stage(&mut node, &v, &staging, cap.clone()).await;
    publish(&mut node, &v, &staging, &target, cap.clone(), false).await;
    let rec = read_record(&staging);
    assert_eq!(rec.fs_type.as_deref(), Some("xfs"));
    assert!(
        ferroceph::node::mount::mount_at(&staging)
            .unwrap()
            .unwrap()
            .options
            .contains("nouuid")
            || ferroceph::node::mount::mount_at(&staging)
                .unwrap()
                .unwrap()
                .super_options
                .contains("nouuid")
    );
    let data = pattern(3, 8 << 20);
    write_synced(&target.join("data"), &data);
    let df0 = df_size(&target);
    let size = expand(&mut ctl, &mut node, &v, &staging, &target, &cap, 480 * MIB)
        .await
        .expect("NodeExpandVolume");
    assert!(size >= 480 * MIB, "{size}");
    let df1 = df_size(&target);
    assert!(
        df1 > df0 + 140 * MIB as u64,
        "df shows {df1} bytes after growing from {df0}"
    );
    // the data is still there, and the new space is usable
    assert_eq!(
        checksum(&std::fs::read(target.join("data")).unwrap()),
        checksum(&data)
    );
    let st = stats(&mut node, &v, &target, &staging).await;
    let total = usage(&st, pb::volume_usage::Unit::Bytes).total;
    assert!(total > 400 * MIB, "{total}");
    unpublish(&mut node, &v, &target).await;
    unstage(&mut node, &v, &staging).await;
    assert_clean(&staging);
    delete(&mut ctl, &v).await;
}

/// Stats follow a known write; ext4 grows online too (where the process may: resize2fs
/// needs CAP_SYS_RESOURCE, which this sandbox withholds; then the answer says so).
#[tokio::test]
async fn stats_and_ext4_expansion() {
    use pb::volume_usage::Unit;
    let mut s = Scratch::new();
    let d = Driver::rbd();
    let mut ctl = d.controller().await;
    let mut node = d.node().await;
    let v = create(&mut ctl, &mut s, &unique("pvc-stats"), 64 * MIB).await;
    let cap = fs_cap(Mode::SingleNodeWriter);
    let staging = s.path("plugins/vol/globalmount");
    let target = s.path("pods/p/mount");
    stage(&mut node, &v, &staging, cap.clone()).await;
    publish(&mut node, &v, &staging, &target, cap.clone(), false).await;

    let before = stats(&mut node, &v, &target, &staging).await;
    let cond = before.volume_condition.clone().unwrap();
    assert!(!cond.abnormal, "{}", cond.message);
    let b0 = usage(&before, Unit::Bytes);
    let i0 = usage(&before, Unit::Inodes);
    assert!(b0.total > 50 * MIB && b0.total <= 64 * MIB, "{b0:?}");
    assert!(b0.available <= b0.total && b0.used >= 0);
    let amount = 8 * MIB as usize;
    write_synced(&target.join("eight-mib"), &pattern(3, amount));
    let after = stats(&mut node, &v, &target, &staging).await;
    let b1 = usage(&after, Unit::Bytes);
    let i1 = usage(&after, Unit::Inodes);
    let grew = b1.used - b0.used;
    assert!(
        grew >= amount as i64 && grew <= amount as i64 + MIB,
        "used grew by {grew}, wrote {amount}"
    );
    assert_eq!(i1.used, i0.used + 1);
    assert_eq!(b1.total, b0.total);
    // the staging path agrees; a missing path is NotFound
    let st = stats(&mut node, &v, &staging, &staging).await;
    assert_eq!(usage(&st, Unit::Bytes).used, b1.used);
    let e = node
        .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
            volume_id: v.id.clone(),
            volume_path: s.path("nope").display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    let df0 = df_size(&target);
    let r = expand(&mut ctl, &mut node, &v, &staging, &target, &cap, 128 * MIB).await;
    let dev = read_record(&staging).device.expect("device");
    let loop_name = dev.trim_start_matches("/dev/");
    let sectors: u64 = std::fs::read_to_string(format!("/sys/block/{loop_name}/size"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(sectors * 512 >= 128 * MIB as u64, "the device did not grow");
    if has_cap_sys_resource() {
        assert!(r.expect("NodeExpandVolume") >= 128 * MIB);
        assert!(df_size(&target) > df0 + 50 * MIB as u64);
    } else {
        let e = r.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("CAP_SYS_RESOURCE"), "{}", e.message());
    }
    unpublish(&mut node, &v, &target).await;
    unstage(&mut node, &v, &staging).await;
    assert_clean(&staging);
    delete(&mut ctl, &v).await;
}

/// kill -9 of the node plugin with a volume staged and published: the FUSE export keeps
/// serving, the restarted plugin re-adopts it, and unstage then cleans everything. Then
/// the exporter itself dies: stats report it, and the next NodeStageVolume re-attaches.
#[tokio::test]
async fn plugin_killed_while_staged_is_readopted() {
    let mut s = Scratch::new();
    let mut d = Driver::rbd();
    let mut ctl = d.controller().await;
    let v = create(&mut ctl, &mut s, &unique("pvc-crash"), 64 * MIB).await;
    let cap = fs_cap(Mode::SingleNodeWriter);
    let staging = s.path("plugins/vol/globalmount");
    let target = s.path("pods/p/mount");
    {
        let mut node = d.node().await;
        stage(&mut node, &v, &staging, cap.clone()).await;
        publish(&mut node, &v, &staging, &target, cap.clone(), false).await;
    }
    write_synced(&target.join("before"), b"written before the crash");
    let rec = read_record(&staging);
    let pid = rec.fuse.as_ref().expect("fuse").pid;

    d.kill(); // SIGKILL
    assert!(alive(pid), "the exporter died with the plugin");
    // the volume keeps working while the plugin is down
    write_synced(&target.join("during"), b"written while the plugin was down");

    d.spawn();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.log_text().contains("re-adopted staged volume") {
        assert!(
            Instant::now() < deadline,
            "no re-adoption: {}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut node = d.node().await;
    let st = stats(&mut node, &v, &target, &staging).await;
    let cond = st.volume_condition.unwrap();
    assert!(!cond.abnormal, "{}", cond.message);
    // kubelet may stage and publish again after a restart: both are no-ops
    stage(&mut node, &v, &staging, cap.clone()).await;
    publish(&mut node, &v, &staging, &target, cap.clone(), false).await;
    assert_eq!(read_record(&staging).fuse.unwrap().pid, pid);
    write_synced(&target.join("after"), b"written after the restart");
    assert_eq!(
        std::fs::read(target.join("before")).unwrap(),
        b"written before the crash"
    );

    // now the exporter dies (kill -9): reported, then healed by NodeStageVolume
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = stats(&mut node, &v, &target, &staging).await;
    let cond = st.volume_condition.unwrap();
    assert!(cond.abnormal, "a dead exporter must be reported");
    assert!(cond.message.contains("exporter"), "{}", cond.message);
    stage(&mut node, &v, &staging, cap.clone()).await;
    let healed = read_record(&staging);
    assert_ne!(healed.fuse.as_ref().unwrap().pid, pid);
    publish(&mut node, &v, &staging, &target, cap.clone(), false).await;
    for (f, want) in [
        ("before", &b"written before the crash"[..]),
        ("during", b"written while the plugin was down"),
        ("after", b"written after the restart"),
    ] {
        assert_eq!(std::fs::read(target.join(f)).unwrap(), want, "{f}");
    }
    let st = stats(&mut node, &v, &target, &staging).await;
    assert!(!st.volume_condition.unwrap().abnormal);

    unpublish(&mut node, &v, &target).await;
    unstage(&mut node, &v, &staging).await;
    assert_clean(&staging);
    assert!(!alive(healed.fuse.unwrap().pid));
    assert!(s.mounts_under().is_empty(), "{:?}", s.mounts_under());
    assert!(s.loops_under().is_empty(), "{:?}", s.loops_under());
    assert!(s.exporters_under().is_empty());
    delete(&mut ctl, &v).await;
}

/// Snapshot → restore: the restored volume holds the data of the moment of the snapshot.
#[tokio::test]
async fn snapshot_restore_has_the_data_of_that_moment() {
    let mut s = Scratch::new();
    let d = Driver::rbd();
    let mut ctl = d.controller().await;
    let mut node = d.node().await;
    let v = create(&mut ctl, &mut s, &unique("pvc-snap"), 64 * MIB).await;
    let cap = fs_cap(Mode::SingleNodeWriter);
    let staging = s.path("a/globalmount");
    let target = s.path("pods/a/mount");
    stage(&mut node, &v, &staging, cap.clone()).await;
    publish(&mut node, &v, &staging, &target, cap.clone(), false).await;
    let v1 = pattern(100, 1 << 20);
    write_synced(&target.join("data"), &v1);
    Command::new("sync")
        .arg("-f")
        .arg(&target)
        .status()
        .expect("sync");

    let snap = ctl
        .create_snapshot(pb::CreateSnapshotRequest {
            name: unique("snap"),
            source_volume_id: v.id.clone(),
            secrets: cluster().rbd_secrets(),
            parameters: HashMap::new(),
        })
        .await
        .expect("CreateSnapshot")
        .into_inner()
        .snapshot
        .unwrap();
    // changes after the snapshot
    write_synced(&target.join("data"), &pattern(200, 1 << 20));
    write_synced(&target.join("later"), b"after the snapshot");

    let mut req = create_req(&unique("pvc-restore"), 64 * MIB);
    req.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Snapshot(
            pb::volume_content_source::SnapshotSource {
                snapshot_id: snap.snapshot_id.clone(),
            },
        )),
    });
    let rv = ctl
        .create_volume(req)
        .await
        .expect("restore")
        .into_inner()
        .volume
        .unwrap();
    let r = Vol {
        id: rv.volume_id,
        image: rv.volume_context["imageName"].clone(),
        ctx: rv.volume_context,
    };
    s.images.push(r.image.clone());
    let staging_r = s.path("r/globalmount");
    let target_r = s.path("pods/r/mount");
    stage(&mut node, &r, &staging_r, cap.clone()).await;
    publish(&mut node, &r, &staging_r, &target_r, cap.clone(), false).await;
    assert_eq!(
        checksum(&std::fs::read(target_r.join("data")).unwrap()),
        checksum(&v1)
    );
    assert!(!target_r.join("later").exists());
    // both are mounted at once, independent
    assert_eq!(
        std::fs::read(target.join("later")).unwrap(),
        b"after the snapshot"
    );

    for (vol, st, t) in [(&r, &staging_r, &target_r), (&v, &staging, &target)] {
        unpublish(&mut node, vol, t).await;
        unstage(&mut node, vol, st).await;
        assert_clean(st);
    }
    delete(&mut ctl, &r).await;
    ctl.delete_snapshot(pb::DeleteSnapshotRequest {
        snapshot_id: snap.snapshot_id,
        secrets: cluster().rbd_secrets(),
    })
    .await
    .expect("DeleteSnapshot");
    delete(&mut ctl, &v).await;
}

/// Requests are checked with the codes the spec names, and a different volume at a
/// staging path is refused.
#[tokio::test]
async fn validation_and_conflicts() {
    let mut s = Scratch::new();
    let d = Driver::rbd();
    let mut ctl = d.controller().await;
    let mut node = d.node().await;
    let v = create(&mut ctl, &mut s, &unique("pvc-val"), 32 * MIB).await;
    let cap = fs_cap(Mode::SingleNodeWriter);
    let staging = s.path("v/globalmount");

    let mut r = stage_req(&v, &staging, cap.clone());
    r.volume_id.clear();
    assert_eq!(
        node.node_stage_volume(r).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut r = stage_req(&v, &staging, cap.clone());
    r.staging_target_path.clear();
    assert_eq!(
        node.node_stage_volume(r).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut r = stage_req(&v, &staging, cap.clone());
    r.volume_capability = None;
    assert_eq!(
        node.node_stage_volume(r).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut r = stage_req(&v, &staging, cap.clone());
    r.secrets.clear();
    let e = node.node_stage_volume(r).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("userKey"), "{}", e.message());
    let mut r = stage_req(&v, &staging, cap.clone());
    r.staging_target_path = "relative/path".into();
    assert_eq!(
        node.node_stage_volume(r).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let r = stage_req(&v, &staging, fs_cap(Mode::MultiNodeMultiWriter));
    assert_eq!(
        node.node_stage_volume(r).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut r = stage_req(&v, &staging, cap.clone());
    r.volume_context.insert("mounter".into(), "iscsi".into());
    assert_eq!(
        node.node_stage_volume(r).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut r = stage_req(&v, &staging, cap.clone());
    r.secrets
        .insert("userKey".into(), "AQBnotavalidkeyatall==".into());
    let e = node.node_stage_volume(r).await.unwrap_err();
    assert_ne!(e.code(), Code::Ok);
    assert_clean(&staging);
    // publish before stage
    let e = node
        .node_publish_volume(publish_req(&v, &staging, &s.path("t"), cap.clone(), false))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // concurrent operations on one volume: one runs, the other is Aborted (or finds the
    // work done)
    let (mut n1, mut n2) = (node.clone(), node.clone());
    let (r1, r2) = tokio::join!(
        n1.node_stage_volume(stage_req(&v, &staging, cap.clone())),
        n2.node_stage_volume(stage_req(&v, &staging, cap.clone())),
    );
    let codes = [
        r1.map(|_| Code::Ok).unwrap_or_else(|e| e.code()),
        r2.map(|_| Code::Ok).unwrap_or_else(|e| e.code()),
    ];
    assert!(codes.contains(&Code::Ok), "{codes:?}");
    assert!(
        codes.iter().all(|c| matches!(c, Code::Ok | Code::Aborted)),
        "{codes:?}"
    );
    stage(&mut node, &v, &staging, cap.clone()).await;
    // another volume at the same staging path
    let other = Vol {
        id: "0001-0024-00000000-0000-0000-0000-000000000000-0000000000000001-00000000-0000-0000-0000-000000000001".into(),
        ..v.clone()
    };
    let e = node
        .node_stage_volume(stage_req(&other, &staging, cap.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let e = node
        .node_unstage_volume(pb::NodeUnstageVolumeRequest {
            volume_id: other.id.clone(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    // unpublishing or unstaging what is not there is fine
    unpublish(&mut node, &v, &s.path("never/published")).await;
    unstage(&mut node, &v, &s.path("never/staged")).await;
    unstage(&mut node, &v, &staging).await;
    assert_clean(&staging);
    delete(&mut ctl, &v).await;
}
