//! Node data safety (issue 13) through the FUSE attachment and ceph-fuse: an I/O error is
//! not a blank disk, a volume in use is not unstaged, block expansion reaches the device,
//! a slow mount is not torn down.

mod common;
use common::node::{fs_uuid, unpublish, unstage, write_synced, CtlClient, NodeClient, Vol};
use common::*;
use csi::v1 as pb;
use ferroceph::node::record;
use pb::volume_capability::access_mode::Mode;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use tonic::Code;

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

fn fuse_ctx(v: &Vol) -> HashMap<String, String> {
    let mut ctx = v.ctx.clone();
    ctx.insert("mounter".into(), "fuse".into());
    ctx
}

fn stage_req(v: &Vol, staging: &Path, cap: pb::VolumeCapability) -> pb::NodeStageVolumeRequest {
    common::stage_req(&v.id, &fuse_ctx(v), staging, cap, cluster().rbd_secrets())
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
) {
    node.node_publish_volume(common::publish_req(
        &v.id,
        &fuse_ctx(v),
        staging,
        target,
        cap,
        false,
    ))
    .await
    .unwrap_or_else(|e| panic!("NodePublishVolume {}: {e:?}", target.display()));
}

/// NodeUnstageVolume that must be refused because of `user`.
async fn unstage_refused(node: &mut NodeClient, id: &str, staging: &Path, user: &str) {
    let e = node
        .node_unstage_volume(unstage_req(id, staging))
        .await
        .expect_err("NodeUnstageVolume of a volume in use succeeded");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains(user), "{}", e.message());
}

fn device_of(staging: &Path) -> String {
    let p = record::paths(staging).record;
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let rec: record::Record = serde_json::from_str(&text).expect("record");
    rec.device.expect("device")
}

/// Item 2: reads of the image fail (an OSD restarting) while NodeStageVolume probes a
/// volume that holds ext4 with data. blkid then finds "nothing", which must not be taken
/// for a blank disk: the stage fails, nothing is formatted, and the next stage after the
/// outage mounts the same filesystem with the data.
#[tokio::test]
async fn read_errors_during_stage_never_format() {
    let mut s = Scratch::new();
    let fault = s.path("read-fault");
    let fault_env = fault.display().to_string();
    let d = Driver::start(
        &[
            "--type=rbd",
            "--controllerserver=true",
            "--nodeserver=true",
            "--nodeid=test-node",
        ],
        &[(ferroceph::fuse_export::READ_FAULT_ENV, &fault_env)],
    );
    let mut ctl = d.controller().await;
    let mut node = d.node().await;
    let v = create(&mut ctl, &mut s, &unique("pvc-eio"), 64 * MIB).await;
    let cap = mount_cap(Mode::SingleNodeWriter);

    let staging = s.path("a/globalmount");
    stage(&mut node, &v, &staging, cap.clone()).await;
    let uuid = fs_uuid(&device_of(&staging));
    assert!(!uuid.is_empty());
    write_synced(
        &staging.join("precious"),
        b"data that must survive an outage",
    );
    unstage(&mut node, &v, &staging).await;

    // the outage window: every read of the image fails with EIO
    std::fs::write(&fault, b"on").unwrap();
    let staging = s.path("b/globalmount");
    let e = node
        .node_stage_volume(stage_req(&v, &staging, cap.clone()))
        .await
        .expect_err("NodeStageVolume succeeded while every read failed");
    assert!(
        matches!(e.code(), Code::Unavailable | Code::Internal),
        "{e:?}"
    );
    assert!(
        !ferroceph::node::mount::is_mount_point(&staging).unwrap_or(false),
        "a failed stage left a mount"
    );
    std::fs::remove_file(&fault).unwrap();

    // after the window: the same filesystem, the same data
    let staging = s.path("c/globalmount");
    stage(&mut node, &v, &staging, cap.clone()).await;
    assert_eq!(
        fs_uuid(&device_of(&staging)),
        uuid,
        "the volume was formatted during the outage"
    );
    assert_eq!(
        std::fs::read(staging.join("precious")).expect("the data is gone"),
        b"data that must survive an outage"
    );
    unstage(&mut node, &v, &staging).await;
    ctl.delete_volume(del_req(&v.id))
        .await
        .expect("DeleteVolume");
}

/// Item 5, RBD through FUSE: NodeUnstageVolume of a volume still published (a pod's bind
/// mount, a raw block device bound into a pod) or held open is refused, naming the user,
/// and the volume keeps working; once the users are gone it unstages.
#[tokio::test]
async fn rbd_unstage_refuses_a_volume_in_use() {
    let mut s = Scratch::new();
    let d = Driver::rbd();
    let mut ctl = d.controller().await;
    let mut node = d.node().await;
    let v = create(&mut ctl, &mut s, &unique("pvc-inuse"), 64 * MIB).await;

    let cap = mount_cap(Mode::SingleNodeWriter);
    let staging = s.path("fs/globalmount");
    let target = s.path("pods/p/mount");
    stage(&mut node, &v, &staging, cap.clone()).await;
    publish(&mut node, &v, &staging, &target, cap.clone()).await;
    write_synced(&target.join("a"), b"before");
    unstage_refused(&mut node, &v.id, &staging, &target.display().to_string()).await;
    // the pod's mount still works
    write_synced(&target.join("b"), b"after the refused unstage");
    assert_eq!(std::fs::read(target.join("a")).unwrap(), b"before");
    unpublish(&mut node, &v, &target).await;
    unstage(&mut node, &v, &staging).await;

    let bcap = block_cap(Mode::SingleNodeWriter);
    let staging = s.path("blk/staging");
    let target = s.path("pods/q/dev");
    stage(&mut node, &v, &staging, bcap.clone()).await;
    publish(&mut node, &v, &staging, &target, bcap.clone()).await;
    unstage_refused(&mut node, &v.id, &staging, &target.display().to_string()).await;
    unpublish(&mut node, &v, &target).await;
    let dev = device_of(&staging);
    {
        let _held = std::fs::File::open(&dev).expect("open the device");
        let me = format!("open in process {}", std::process::id());
        unstage_refused(&mut node, &v.id, &staging, &me).await;
    }
    unstage(&mut node, &v, &staging).await;
    ctl.delete_volume(del_req(&v.id))
        .await
        .expect("DeleteVolume");
}

/// Item 5, CephFS through ceph-fuse: unstaging a volume a pod still has bind-mounted is
/// refused (stopping ceph-fuse would leave the pod with ENOTCONN).
#[tokio::test]
async fn cephfs_unstage_refuses_a_published_volume() {
    let s = Scratch::new();
    let d = Driver::start(
        &[
            "--type=cephfs",
            "--controllerserver=true",
            "--nodeserver=true",
            "--nodeid=test-node",
        ],
        &[],
    );
    let c = cluster();
    let secrets = HashMap::from([
        ("adminID".to_string(), c.get("FERRO_CEPHFS_USER")),
        ("adminKey".to_string(), c.get("FERRO_CEPHFS_KEY")),
    ]);
    let mut ctl = d.controller().await;
    let mut node = d.node().await;
    let cap = mount_cap(Mode::MultiNodeMultiWriter);
    let v = ctl
        .create_volume(pb::CreateVolumeRequest {
            name: unique("pvc-fs-inuse"),
            capacity_range: Some(pb::CapacityRange {
                required_bytes: 64 * MIB,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![cap.clone()],
            parameters: HashMap::from([
                ("clusterID".to_string(), c.fsid()),
                ("fsName".to_string(), "cephfs".to_string()),
                ("mounter".to_string(), "fuse".to_string()),
            ]),
            secrets: secrets.clone(),
            ..Default::default()
        })
        .await
        .expect("CreateVolume")
        .into_inner()
        .volume
        .expect("volume");
    let staging = s.path("fs/globalmount");
    let target = s.path("pods/p/mount");
    let ctx = v.volume_context.clone();
    node.node_stage_volume(common::stage_req(
        &v.volume_id,
        &ctx,
        &staging,
        cap.clone(),
        secrets.clone(),
    ))
    .await
    .expect("NodeStageVolume");
    node.node_publish_volume(common::publish_req(
        &v.volume_id,
        &ctx,
        &staging,
        &target,
        cap.clone(),
        false,
    ))
    .await
    .expect("NodePublishVolume");
    write_synced(&target.join("a"), b"before");
    unstage_refused(
        &mut node,
        &v.volume_id,
        &staging,
        &target.display().to_string(),
    )
    .await;
    write_synced(&target.join("b"), b"after the refused unstage");
    assert_eq!(std::fs::read(target.join("a")).unwrap(), b"before");
    node.node_unpublish_volume(unpublish_req(&v.volume_id, &target))
        .await
        .expect("NodeUnpublishVolume");
    node.node_unstage_volume(unstage_req(&v.volume_id, &staging))
        .await
        .expect("NodeUnstageVolume");
    ctl.delete_volume(pb::DeleteVolumeRequest {
        volume_id: v.volume_id.clone(),
        secrets,
    })
    .await
    .expect("DeleteVolume");
}

/// Item 9: options a StorageClass hands to node tools are allow-listed. The scenario:
/// `mkfsOptions: "-d <dir>"` would copy node files (service-account tokens) into a
/// tenant's volume when it is formatted; refused with InvalidArgument naming the option,
/// at CreateVolume and at NodeStageVolume (a volume context made before the check).
#[tokio::test]
async fn option_injection_is_refused() {
    let mut s = Scratch::new();
    let d = Driver::rbd();
    let mut ctl = d.controller().await;
    let mut node = d.node().await;
    let secret_dir = s.path("node-secrets");
    std::fs::create_dir_all(&secret_dir).unwrap();
    std::fs::write(secret_dir.join("token"), b"node service-account token").unwrap();

    let v = create(&mut ctl, &mut s, &unique("pvc-inject"), 64 * MIB).await;
    let mut tampered = v.clone();
    tampered.ctx.insert(
        "mkfsOptions".into(),
        format!("-m0 -d {}", secret_dir.display()),
    );
    let staging = s.path("a/globalmount");
    let r = node
        .node_stage_volume(stage_req(
            &tampered,
            &staging,
            mount_cap(Mode::SingleNodeWriter),
        ))
        .await;
    let leaked = staging.join("token").exists();
    let e = r.expect_err("NodeStageVolume formatted with -d");
    assert!(!leaked);
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("\"-d\""), "{}", e.message());
    assert!(!ferroceph::node::mount::is_mount_point(&staging).unwrap_or(false));
    ctl.delete_volume(del_req(&v.id))
        .await
        .expect("DeleteVolume");

    for (k, bad, named) in [
        ("mkfsOptions", "-d /var/lib/kubelet/pods", "\"-d\""),
        ("mkfsOptions", "-E root_owner=0:0", "root_owner"),
        ("mapOptions", "nbd:quiesce-hook=/tmp/evil", "quiesce-hook"),
        ("unmapOptions", "krbd:fsid=00000000", "fsid"),
    ] {
        let mut req = create_req(&unique("pvc-inject"), 64 * MIB);
        req.parameters.insert(k.into(), bad.into());
        let e = ctl
            .create_volume(req)
            .await
            .expect_err("CreateVolume accepted an option injection");
        assert_eq!(e.code(), Code::InvalidArgument, "{k}: {e:?}");
        assert!(e.message().contains(named), "{k}: {}", e.message());
    }

    let fs = Driver::start(&["--type=cephfs", "--controllerserver=true"], &[]);
    let mut fs_ctl = fs.controller().await;
    for (k, bad, named) in [
        (
            "kernelMountOptions",
            "noatime,mds_namespace=other",
            "mds_namespace",
        ),
        ("fuseMountOptions", "fsname=evil", "fsname"),
    ] {
        let e = fs_ctl
            .create_volume(pb::CreateVolumeRequest {
                name: unique("pvc-fs-inject"),
                volume_capabilities: vec![mount_cap(Mode::MultiNodeMultiWriter)],
                parameters: HashMap::from([
                    ("clusterID".to_string(), cluster().fsid()),
                    ("fsName".to_string(), "cephfs".to_string()),
                    (k.to_string(), bad.to_string()),
                ]),
                secrets: HashMap::from([
                    ("adminID".to_string(), cluster().get("FERRO_CEPHFS_USER")),
                    ("adminKey".to_string(), cluster().get("FERRO_CEPHFS_KEY")),
                ]),
                ..Default::default()
            })
            .await
            .expect_err("CreateVolume accepted an option injection");
        assert_eq!(e.code(), Code::InvalidArgument, "{k}: {e:?}");
        assert!(e.message().contains(named), "{k}: {}", e.message());
    }
}

fn device_size(path: &Path) -> u64 {
    use std::io::{Seek, SeekFrom};
    std::fs::File::open(path)
        .and_then(|mut f| f.seek(SeekFrom::End(0)))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Item 8: a raw block volume expanded while a pod uses it. ControllerExpandVolume must
/// ask for node expansion (kubelet calls NodeExpandVolume only then), and
/// NodeExpandVolume must make the pods' devices (FUSE: loop devices, a read-only view
/// too) show the new size.
#[tokio::test]
async fn block_expansion_reaches_the_pods_device() {
    let mut s = Scratch::new();
    let d = Driver::rbd();
    let mut ctl = d.controller().await;
    let mut node = d.node().await;
    let bcap = block_cap(Mode::SingleNodeWriter);
    let mut req = create_req(&unique("pvc-grow-blk"), 32 * MIB);
    req.volume_capabilities = vec![bcap.clone()];
    let vol = ctl
        .create_volume(req)
        .await
        .expect("CreateVolume")
        .into_inner()
        .volume
        .expect("volume");
    let image = vol.volume_context["imageName"].clone();
    s.images.push(image.clone());
    let v = Vol {
        id: vol.volume_id,
        ctx: vol.volume_context,
        image,
    };
    let staging = s.path("blk/staging");
    let target = s.path("pods/p/dev");
    let ro_target = s.path("pods/q/dev");
    stage(&mut node, &v, &staging, bcap.clone()).await;
    publish(&mut node, &v, &staging, &target, bcap.clone()).await;
    node.node_publish_volume(common::publish_req(
        &v.id,
        &fuse_ctx(&v),
        &staging,
        &ro_target,
        bcap.clone(),
        true,
    ))
    .await
    .expect("NodePublishVolume read-only");
    assert_eq!(device_size(&target), 32 << 20);

    let want = 64 * MIB;
    let resp = ctl
        .controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: v.id.clone(),
            capacity_range: Some(pb::CapacityRange {
                required_bytes: want,
                limit_bytes: 0,
            }),
            secrets: cluster().rbd_secrets(),
            volume_capability: Some(bcap.clone()),
        })
        .await
        .expect("ControllerExpandVolume")
        .into_inner();
    assert!(
        resp.node_expansion_required,
        "a block volume needs NodeExpandVolume: its loop device keeps the old size until then"
    );
    let got = node
        .node_expand_volume(pb::NodeExpandVolumeRequest {
            volume_id: v.id.clone(),
            volume_path: target.display().to_string(),
            capacity_range: Some(pb::CapacityRange {
                required_bytes: want,
                limit_bytes: 0,
            }),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(bcap.clone()),
            secrets: HashMap::new(),
        })
        .await
        .expect("NodeExpandVolume")
        .into_inner()
        .capacity_bytes;
    assert!(got >= want, "{got}");
    assert_eq!(device_size(&target), want as u64, "the pod's device");
    assert_eq!(device_size(&ro_target), want as u64, "the read-only view");

    unpublish(&mut node, &v, &ro_target).await;
    unpublish(&mut node, &v, &target).await;
    unstage(&mut node, &v, &staging).await;
    ctl.delete_volume(del_req(&v.id))
        .await
        .expect("DeleteVolume");
}

/// Item 4: the cluster is slow (OSD peering): `stat` of the exported image does not
/// answer. NodeStageVolume of the staged, published volume must answer Unavailable and
/// leave the exporter, the loop device and the mounts alone (the pod keeps its data), and
/// hung probes (here: many NodeGetVolumeStats) must not take the blocking threads that
/// Ceph calls need (a CreateVolume still completes).
#[tokio::test]
async fn slow_probe_leaves_the_mount_alone() {
    let mut s = Scratch::new();
    let fault = s.path("fault");
    let fault_env = fault.display().to_string();
    let d = Driver::start(
        &[
            "--type=rbd",
            "--controllerserver=true",
            "--nodeserver=true",
            "--nodeid=test-node",
        ],
        &[(ferroceph::fuse_export::READ_FAULT_ENV, &fault_env)],
    );
    let mut ctl = d.controller().await;
    let mut node = d.node().await;
    let v = create(&mut ctl, &mut s, &unique("pvc-slow"), 64 * MIB).await;
    let cap = mount_cap(Mode::SingleNodeWriter);
    let staging = s.path("a/globalmount");
    let target = s.path("pods/p/mount");
    stage(&mut node, &v, &staging, cap.clone()).await;
    publish(&mut node, &v, &staging, &target, cap.clone()).await;
    write_synced(&target.join("f"), b"served through a slow spell");
    let rec_before = std::fs::read_to_string(record::paths(&staging).record).unwrap();
    let rec: record::Record = serde_json::from_str(&rec_before).unwrap();
    let pid = rec.fuse.as_ref().expect("fuse").pid;

    std::fs::write(&fault, b"stall").unwrap();
    // kubelet's volume stats, many at once, each stuck on the stalled image
    let stats: Vec<_> = (0..72)
        .map(|_| {
            let mut n = node.clone();
            let req = pb::NodeGetVolumeStatsRequest {
                volume_id: v.id.clone(),
                volume_path: target.display().to_string(),
                staging_target_path: staging.display().to_string(),
            };
            tokio::spawn(async move { n.node_get_volume_stats(req).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let created = tokio::time::timeout(
        std::time::Duration::from_secs(25),
        ctl.create_volume(create_req(&unique("pvc-slow-other"), 16 * MIB)),
    )
    .await;
    let e = node
        .node_stage_volume(stage_req(&v, &staging, cap.clone()))
        .await
        .expect_err("NodeStageVolume of a volume whose probe hangs");
    std::fs::write(&fault, b"").unwrap();
    std::fs::remove_file(&fault).unwrap();
    for t in stats {
        let _ = t.await;
    }
    let other = created
        .expect("CreateVolume waited for the blocking threads hung probes hold")
        .expect("CreateVolume")
        .into_inner()
        .volume
        .expect("volume");
    s.images.push(other.volume_context["imageName"].clone());
    ctl.delete_volume(del_req(&other.volume_id))
        .await
        .expect("DeleteVolume");

    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(alive(pid), "the FUSE exporter was stopped");
    let rec_after = std::fs::read_to_string(record::paths(&staging).record).unwrap();
    assert_eq!(rec_before, rec_after, "the attachment was replaced");
    assert_eq!(
        std::fs::read(target.join("f")).unwrap(),
        b"served through a slow spell"
    );
    write_synced(&target.join("g"), b"and after it");
    unpublish(&mut node, &v, &target).await;
    unstage(&mut node, &v, &staging).await;
    ctl.delete_volume(del_req(&v.id))
        .await
        .expect("DeleteVolume");
}

/// Item 4, CephFS: ceph-fuse stops answering (SIGSTOP: as slow as an MDS failover, but
/// alive). NodeStageVolume answers Unavailable and neither unmounts nor kills it; once it
/// answers again the pod's mount works as before.
#[tokio::test]
async fn cephfs_slow_mount_is_left_alone() {
    let s = Scratch::new();
    let d = Driver::start(
        &[
            "--type=cephfs",
            "--controllerserver=true",
            "--nodeserver=true",
            "--nodeid=test-node",
        ],
        &[],
    );
    let c = cluster();
    let secrets = HashMap::from([
        ("adminID".to_string(), c.get("FERRO_CEPHFS_USER")),
        ("adminKey".to_string(), c.get("FERRO_CEPHFS_KEY")),
    ]);
    let mut ctl = d.controller().await;
    let mut node = d.node().await;
    let cap = mount_cap(Mode::MultiNodeMultiWriter);
    let v = ctl
        .create_volume(pb::CreateVolumeRequest {
            name: unique("pvc-fs-slow"),
            capacity_range: Some(pb::CapacityRange {
                required_bytes: 64 * MIB,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![cap.clone()],
            parameters: HashMap::from([
                ("clusterID".to_string(), c.fsid()),
                ("fsName".to_string(), "cephfs".to_string()),
                ("mounter".to_string(), "fuse".to_string()),
            ]),
            secrets: secrets.clone(),
            ..Default::default()
        })
        .await
        .expect("CreateVolume")
        .into_inner()
        .volume
        .expect("volume");
    let staging = s.path("fs/globalmount");
    let target = s.path("pods/p/mount");
    let ctx = v.volume_context.clone();
    let stage_req = common::stage_req(&v.volume_id, &ctx, &staging, cap.clone(), secrets.clone());
    node.node_stage_volume(stage_req.clone())
        .await
        .expect("NodeStageVolume");
    node.node_publish_volume(common::publish_req(
        &v.volume_id,
        &ctx,
        &staging,
        &target,
        cap.clone(),
        false,
    ))
    .await
    .expect("NodePublishVolume");
    write_synced(&target.join("a"), b"before");
    let rec = ferroceph::cephfs::mounter::read_record(&staging).expect("stage record");
    let pid = rec.fuse_pid.expect("ceph-fuse pid");

    let signal = |sig: &str| {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status();
    };
    signal("STOP");
    let r = node.node_stage_volume(stage_req).await;
    signal("CONT");
    let e = r.expect_err("NodeStageVolume of a mount that does not answer");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(alive(pid), "ceph-fuse was stopped for being slow");
    assert_eq!(std::fs::read(target.join("a")).unwrap(), b"before");
    write_synced(&target.join("b"), b"after");

    node.node_unpublish_volume(unpublish_req(&v.volume_id, &target))
        .await
        .expect("NodeUnpublishVolume");
    node.node_unstage_volume(unstage_req(&v.volume_id, &staging))
        .await
        .expect("NodeUnstageVolume");
    ctl.delete_volume(pb::DeleteVolumeRequest {
        volume_id: v.volume_id.clone(),
        secrets,
    })
    .await
    .expect("DeleteVolume");
}

/// A NodeStage killed while its mkfs runs (a plugin crash, a kill soak) leaves a blank
/// volume with whatever mkfs had written: no known signature, not zeros. No pod has seen
/// it (the stage never completed), so the retry formats it again instead of refusing it
/// forever as "data of an unknown kind".
#[tokio::test]
async fn interrupted_mkfs_is_formatted_again() {
    let mut s = Scratch::new();
    let mut d = Driver::start(
        &[
            "--type=rbd",
            "--controllerserver=true",
            "--nodeserver=true",
            "--nodeid=node-mkfs",
        ],
        &[("FERROCEPH_TEST_CRASH_AT", "stage.formatting")],
    );
    let mut ctl = d.controller().await;
    let v = create(&mut ctl, &mut s, &unique("pvc-mkfs"), 32 * MIB).await;
    let staging = s.path("a/globalmount");
    let cap = mount_cap(Mode::SingleNodeWriter);
    let mut node = d.node().await;
    let _ = node
        .node_stage_volume(stage_req(&v, &staging, cap.clone()))
        .await;
    assert!(
        d.wait_exit(std::time::Duration::from_secs(30)).is_some(),
        "the driver did not stop at the crash point"
    );
    let rec = record::read(&staging).expect("record").expect("a record");
    assert!(rec.format_started, "the record does not say mkfs started");
    // what a partly run mkfs leaves: some metadata, no complete signature
    let dev = device_of(&staging);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&dev)
        .expect("open the device");
    f.write_all(&[0xA5; 64 << 10]).expect("write");
    f.sync_all().expect("fsync");
    drop(f);

    d.envs.clear();
    d.spawn();
    let mut node = d.node().await;
    stage(&mut node, &v, &staging, cap.clone()).await;
    let m = ferroceph::node::mount::mount_at(&staging)
        .expect("mountinfo")
        .expect("mounted");
    assert_eq!(m.fs_type, "ext4");
    assert!(
        !record::read(&staging)
            .expect("record")
            .expect("a record")
            .format_started
    );
    unstage(&mut node, &v, &staging).await;
    let mut ctl = d.controller().await;
    ctl.delete_volume(del_req(&v.id))
        .await
        .expect("DeleteVolume");
}
