//! RBD controller against the real dev cluster: provisioning, idempotency, snapshots,
//! clones, expansion, legacy parameters, ceph-csi take-over, concurrency and crashes.

mod common;
use common::*;
use csi::v1 as pb;
use pb::volume_capability::access_mode::Mode;
use rados::rbd::Image;
use std::time::Duration;
use tonic::Code;

fn admin() -> rados::Cluster {
    let c = cluster();
    rados::Cluster::connect(&rados::ConnectConfig::new(
        [c.monitors()],
        "admin",
        c.get("FERRO_ADMIN_KEY"),
    ))
    .expect("admin connection")
}

fn image_name(v: &pb::Volume) -> String {
    v.volume_context["imageName"].clone()
}

fn write_image(name: &str, data: &[u8]) {
    let c = admin();
    let io = c.ioctx("rbd", "").unwrap();
    let img = Image::open(&io, name).unwrap();
    img.write(0, data).unwrap();
    img.flush().unwrap();
}

fn read_image(name: &str, len: usize) -> Vec<u8> {
    let c = admin();
    let io = c.ioctx("rbd", "").unwrap();
    let img = Image::open_read_only(&io, name).unwrap();
    let mut buf = vec![0u8; len];
    img.read(0, &mut buf).unwrap();
    buf
}

fn journal_has(name: &str) -> bool {
    omap_keys("csi.volumes.default")
        .iter()
        .any(|k| k == &format!("csi.volume.{name}"))
}

fn snap_journal_has(name: &str) -> bool {
    omap_keys("csi.snaps.default")
        .iter()
        .any(|k| k == &format!("csi.snap.{name}"))
}

#[tokio::test]
async fn full_lifecycle_with_data() {
    let d = Driver::rbd();
    let mut ctl = d.controller().await;
    let name = unique("pvc-life");
    let mut req = create_req(&name, 64 * MIB);
    req.parameters
        .insert("csi.storage.k8s.io/pvc/name".into(), "data".into());
    req.parameters
        .insert("csi.storage.k8s.io/pvc/namespace".into(), "team-a".into());
    req.parameters
        .insert("csi.storage.k8s.io/pv/name".into(), name.clone());
    let vol = ctl
        .create_volume(req.clone())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(vol.capacity_bytes, 64 * MIB);
    assert!(vol.volume_id.starts_with("0001-0024-"), "{}", vol.volume_id);
    assert!(vol.volume_id.len() <= 128);
    let img = image_name(&vol);
    assert_eq!(img, format!("csi-vol-{}", uuid_of(&vol.volume_id)));
    assert!(image_exists(&img));
    for k in [
        "pool",
        "journalPool",
        "imageName",
        "clusterID",
        "imageFeatures",
    ] {
        assert!(
            vol.volume_context.contains_key(k),
            "volume_context lacks {k}"
        );
    }
    // metadata names the claim; the journal names the owner
    let (ok, meta) = admin_cli(
        "rbd",
        &[
            "image-meta",
            "get",
            &format!("rbd/{img}"),
            "csi.storage.k8s.io/pvc/name",
        ],
    );
    assert!(ok && meta.trim() == "data", "{meta}");
    let (_, owner) = admin_cli(
        "rados",
        &[
            "-p",
            "rbd",
            "getomapval",
            &format!("csi.volume.{}", uuid_of(&vol.volume_id)),
            "csi.volume.owner",
        ],
    );
    assert!(
        owner.contains("team-a") || owner.contains("74 65 61 6d"),
        "{owner}"
    );

    // idempotent; incompatible size → AlreadyExists
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
        required_bytes: 128 * MIB,
        limit_bytes: 0,
    });
    assert_eq!(
        ctl.create_volume(bigger).await.unwrap_err().code(),
        Code::AlreadyExists
    );

    write_image(&img, b"hello ceph");

    // snapshot (idempotent), then change the source: the snapshot keeps the old data
    let sname = unique("snap");
    let snap = ctl
        .create_snapshot(snap_req(&sname, &vol.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert!(snap.ready_to_use);
    assert_eq!(snap.size_bytes, 64 * MIB);
    assert_eq!(snap.source_volume_id, vol.volume_id);
    assert!(snap.creation_time.is_some());
    let snap2 = ctl
        .create_snapshot(snap_req(&sname, &vol.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(snap2.snapshot_id, snap.snapshot_id);
    assert_eq!(snap2.creation_time, snap.creation_time);
    write_image(&img, b"CHANGED!!!");

    // list by id and by source
    let listed = ctl
        .list_snapshots(pb::ListSnapshotsRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 1);
    let listed = ctl
        .list_snapshots(pb::ListSnapshotsRequest {
            source_volume_id: vol.volume_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.entries.len(), 1);
    assert_eq!(
        listed.entries[0].snapshot.as_ref().unwrap().snapshot_id,
        snap.snapshot_id
    );

    // restore into a larger volume
    let rname = unique("pvc-restore");
    let mut rreq = create_req(&rname, 96 * MIB);
    rreq.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Snapshot(
            pb::volume_content_source::SnapshotSource {
                snapshot_id: snap.snapshot_id.clone(),
            },
        )),
    });
    let restored = ctl
        .create_volume(rreq.clone())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(restored.capacity_bytes, 96 * MIB);
    assert!(restored.content_source.is_some());
    assert_eq!(
        ctl.create_volume(rreq.clone())
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap()
            .volume_id,
        restored.volume_id
    );
    // same name, other source → AlreadyExists
    let mut other = create_req(&rname, 96 * MIB);
    other.volume_content_source = None;
    assert_eq!(
        ctl.create_volume(other).await.unwrap_err().code(),
        Code::AlreadyExists
    );
    // smaller than the snapshot → OutOfRange
    let mut small = rreq.clone();
    small.name = unique("pvc-small");
    small.capacity_range = Some(pb::CapacityRange {
        required_bytes: MIB,
        limit_bytes: 0,
    });
    assert_eq!(
        ctl.create_volume(small).await.unwrap_err().code(),
        Code::OutOfRange
    );

    // clone the (changed) source
    let cname = unique("pvc-clone");
    let mut creq = create_req(&cname, 64 * MIB);
    creq.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Volume(
            pb::volume_content_source::VolumeSource {
                volume_id: vol.volume_id.clone(),
            },
        )),
    });
    let cloned = ctl
        .create_volume(creq)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();

    // expand: grow only, node step for filesystems
    let exp = ctl
        .controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            capacity_range: Some(pb::CapacityRange {
                required_bytes: 200 * MIB,
                limit_bytes: 0,
            }),
            secrets: cluster().rbd_secrets(),
            volume_capability: Some(rwo()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exp.capacity_bytes, 200 * MIB);
    assert!(exp.node_expansion_required);
    let exp = ctl
        .controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            capacity_range: Some(pb::CapacityRange {
                required_bytes: 100 * MIB,
                limit_bytes: 0,
            }),
            secrets: cluster().rbd_secrets(),
            volume_capability: Some(block_cap(Mode::SingleNodeWriter)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exp.capacity_bytes, 200 * MIB, "never shrinks");
    // block too: a FUSE attachment's loop device is refreshed by NodeExpandVolume
    assert!(exp.node_expansion_required);

    // delete the source first: snapshot, restore and clone keep their data
    ctl.delete_volume(del_req(&vol.volume_id)).await.unwrap();
    ctl.delete_volume(del_req(&vol.volume_id)).await.unwrap();
    assert!(!image_exists(&img));
    assert!(!journal_has(&name));
    assert_eq!(&read_image(&image_name(&restored), 10), b"hello ceph");
    assert_eq!(&read_image(&image_name(&cloned), 10), b"CHANGED!!!");

    // a restore from the snapshot still works after its source is gone
    let r2 = unique("pvc-restore2");
    let mut r2req = rreq.clone();
    r2req.name = r2.clone();
    let restored2 = ctl
        .create_volume(r2req)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(&read_image(&image_name(&restored2), 10), b"hello ceph");

    ctl.delete_snapshot(del_snap_req(&snap.snapshot_id))
        .await
        .unwrap();
    ctl.delete_snapshot(del_snap_req(&snap.snapshot_id))
        .await
        .unwrap();
    assert!(!snap_journal_has(&sname));
    assert_eq!(&read_image(&image_name(&restored), 10), b"hello ceph");
    for v in [&restored, &cloned, &restored2] {
        ctl.delete_volume(del_req(&v.volume_id)).await.unwrap();
        assert!(!image_exists(&image_name(v)));
    }
    // nothing of this test is left, not even in the trash (the controller removes deleted
    // images from the trash in the background, right after the deletes)
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, trash) = admin_cli("rbd", &["trash", "ls", "-p", "rbd", "--all"]);
        let left = [uuid_of(&vol.volume_id), uuid_of(&snap.snapshot_id)]
            .iter()
            .any(|part| trash.contains(part.as_str()));
        if !left {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "left in trash: {trash}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn validation_errors_name_what_to_fix() {
    let d = Driver::rbd();
    let mut ctl = d.controller().await;
    let name = unique("pvc-bad");
    let check = |r: Result<tonic::Response<pb::CreateVolumeResponse>, tonic::Status>,
                 code: Code,
                 needle: &str| {
        let e = r.unwrap_err();
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(
            e.message().contains(needle),
            "{:?} lacks {needle:?}",
            e.message()
        );
    };
    let mut r = create_req(&name, MIB);
    r.parameters.insert("imageFormat".into(), "1".into());
    check(
        ctl.create_volume(r).await,
        Code::InvalidArgument,
        "imageFormat",
    );
    let mut r = create_req(&name, MIB);
    r.parameters.insert("tpyo".into(), "1".into());
    check(ctl.create_volume(r).await, Code::InvalidArgument, "tpyo");
    let mut r = create_req(&name, MIB);
    r.secrets.clear();
    check(ctl.create_volume(r).await, Code::InvalidArgument, "userKey");
    let mut r = create_req(&name, MIB);
    r.volume_capabilities = vec![mount_cap(Mode::MultiNodeMultiWriter)];
    check(
        ctl.create_volume(r).await,
        Code::InvalidArgument,
        "MULTI_NODE_MULTI_WRITER",
    );
    let mut r = create_req(&name, MIB);
    r.volume_capabilities.clear();
    check(
        ctl.create_volume(r).await,
        Code::InvalidArgument,
        "volume_capabilities",
    );
    let mut r = create_req(&name, MIB);
    r.capacity_range = Some(pb::CapacityRange {
        required_bytes: 10 * MIB,
        limit_bytes: 5 * MIB,
    });
    check(ctl.create_volume(r).await, Code::OutOfRange, "limit_bytes");
    let mut r = create_req(&name, MIB);
    r.parameters.insert("pool".into(), "no-such-pool".into());
    check(
        ctl.create_volume(r).await,
        Code::InvalidArgument,
        "no-such-pool",
    );
    let mut r = create_req(&name, MIB);
    r.parameters
        .insert("clusterID".into(), "unknown-cluster".into());
    check(
        ctl.create_volume(r).await,
        Code::InvalidArgument,
        "unknown-cluster",
    );
    let mut r = create_req("", MIB);
    r.name.clear();
    check(ctl.create_volume(r).await, Code::InvalidArgument, "name");
    let mut r = create_req(&name, MIB);
    r.secrets.insert(
        "userKey".into(),
        "AQBgarbagegarbagegarbagegarbagegarbage==".into(),
    );
    let e = ctl.create_volume(r).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::PermissionDenied | Code::InvalidArgument),
        "{e:?}"
    );
    assert!(!image_exists(&format!("csi-vol-{name}")));

    // block multi-writer is fine; mount multi-writer was refused above
    let mut r = create_req(&name, MIB);
    r.volume_capabilities = vec![block_cap(Mode::MultiNodeMultiWriter)];
    let v = ctl
        .create_volume(r)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    // Validate: supported and unsupported capabilities; unknown volume → NotFound
    let ok = ctl
        .validate_volume_capabilities(pb::ValidateVolumeCapabilitiesRequest {
            volume_id: v.volume_id.clone(),
            volume_capabilities: vec![rwo()],
            secrets: cluster().rbd_secrets(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ok.confirmed.is_some());
    let no = ctl
        .validate_volume_capabilities(pb::ValidateVolumeCapabilitiesRequest {
            volume_id: v.volume_id.clone(),
            volume_capabilities: vec![mount_cap(Mode::MultiNodeMultiWriter)],
            secrets: cluster().rbd_secrets(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(no.confirmed.is_none() && !no.message.is_empty());
    let fake = format!(
        "{}{}",
        &v.volume_id[..v.volume_id.len() - 36],
        "00000000-0000-0000-0000-000000000000"
    );
    let e = ctl
        .validate_volume_capabilities(pb::ValidateVolumeCapabilitiesRequest {
            volume_id: fake.clone(),
            volume_capabilities: vec![rwo()],
            secrets: cluster().rbd_secrets(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // unknown ids: delete succeeds, snapshot/restore say NotFound
    ctl.delete_volume(del_req(&fake)).await.unwrap();
    ctl.delete_volume(del_req("not-a-handle")).await.unwrap();
    let e = ctl
        .create_snapshot(snap_req(&unique("s"), &fake))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let mut r = create_req(&unique("pvc-nosnap"), MIB);
    r.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Snapshot(
            pb::volume_content_source::SnapshotSource {
                snapshot_id: fake.clone(),
            },
        )),
    });
    assert_eq!(
        ctl.create_volume(r).await.unwrap_err().code(),
        Code::NotFound
    );
    ctl.delete_snapshot(del_snap_req(&fake)).await.unwrap();
    ctl.delete_volume(del_req(&v.volume_id)).await.unwrap();
}

#[tokio::test]
async fn in_use_image_is_not_deleted() {
    let d = Driver::rbd();
    let mut ctl = d.controller().await;
    let v = ctl
        .create_volume(create_req(&unique("pvc-busy"), MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let c = admin();
    let io = c.ioctx("rbd", "").unwrap();
    let held = Image::open(&io, &image_name(&v)).unwrap(); // a read-write user, like a mapped node
    let e = ctl.delete_volume(del_req(&v.volume_id)).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("in use"), "{}", e.message());
    drop(held);
    ctl.delete_volume(del_req(&v.volume_id)).await.unwrap();
    assert!(!image_exists(&image_name(&v)));
}

#[tokio::test]
async fn concurrent_creates_of_one_name_make_one_image() {
    let d = Driver::rbd();
    let name = unique("pvc-race");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut ctl = d.controller().await;
        let req = create_req(&name, 16 * MIB);
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
    assert!(ids.len() <= 1, "{ids:?}");
    // retries after the in-flight one converge on the same volume
    let mut ctl = d.controller().await;
    let v = ctl
        .create_volume(create_req(&name, 16 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    if let Some(id) = ids.iter().next() {
        assert_eq!(id, &v.volume_id);
    }
    let ours: Vec<_> = images()
        .into_iter()
        .filter(|i| i == &image_name(&v))
        .collect();
    assert_eq!(ours.len(), 1);
    eprintln!("aborted: {aborted}");
    ctl.delete_volume(del_req(&v.volume_id)).await.unwrap();
}

#[tokio::test]
async fn legacy_in_tree_storage_class() {
    let d = Driver::rbd();
    let mut ctl = d.controller().await;
    let c = cluster();
    let name = unique("pvc-legacy");
    let mut req = create_req(&name, 32 * MIB);
    req.parameters = [
        ("monitors", c.monitors()),
        ("adminId", c.get("FERRO_RBD_USER")),
        ("adminSecretName", "ceph-secret".into()),
        ("adminSecretNamespace", "kube-system".into()),
        ("pool", "rbd".into()),
        ("userId", c.get("FERRO_RBD_USER")),
        ("userSecretName", "ceph-secret-user".into()),
        ("fsType", "ext4".into()),
        ("imageFormat", "2".into()),
        ("imageFeatures", "layering".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    req.secrets = [("key".to_string(), c.get("FERRO_RBD_KEY"))].into();
    let v = ctl
        .create_volume(req)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(v.volume_context["monitors"], c.monitors());
    assert!(
        v.volume_id.contains(&c.monitors()),
        "handle carries the monitors: {}",
        v.volume_id
    );
    assert!(image_exists(&image_name(&v)));
    // delete with the legacy secret; the monitors come from the handle, not config.json
    let del = pb::DeleteVolumeRequest {
        volume_id: v.volume_id.clone(),
        secrets: [("key".to_string(), c.get("FERRO_ADMIN_KEY"))].into(),
    };
    ctl.delete_volume(del).await.unwrap();
    assert!(!image_exists(&image_name(&v)));
}

#[tokio::test]
async fn takes_over_a_ceph_csi_volume() {
    // Write the journal exactly as ceph-csi does, with an image of its naming.
    let c = admin();
    let io = c.ioctx("rbd", "").unwrap();
    let name = unique("pvc-cephcsi");
    let uuid = uuid::Uuid::new_v4().to_string();
    let image = format!("csi-vol-{uuid}");
    let mut opts = rados::rbd::ImageOptions::new(32 * MIB as u64);
    opts.features = rados::rbd::FEATURE_LAYERING;
    rados::rbd::create(&io, &image, &opts).unwrap();
    let id = Image::open(&io, &image).unwrap().id().unwrap();
    io.create_with_omap(
        &format!("csi.volume.{uuid}"),
        &[
            ("csi.volname", name.as_bytes()),
            ("csi.imagename", image.as_bytes()),
            ("csi.imageid", id.as_bytes()),
        ],
    )
    .unwrap();
    io.omap_set(
        "csi.volumes.default",
        &[(format!("csi.volume.{name}").as_str(), uuid.as_bytes())],
    )
    .unwrap();

    let d = Driver::rbd();
    let mut ctl = d.controller().await;
    let v = ctl
        .create_volume(create_req(&name, 32 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(uuid_of(&v.volume_id), uuid);
    assert_eq!(image_name(&v), image);
    assert_eq!(images().iter().filter(|i| i.contains(&uuid)).count(), 1);
    ctl.delete_volume(del_req(&v.volume_id)).await.unwrap();
    assert!(!image_exists(&image));
    assert!(!journal_has(&name));
    assert!(!object_exists(&format!("csi.volume.{uuid}")));
}

/// A create crashes after making the image, and some other client (a stuck or dead driver
/// instance whose watch Ceph keeps) still has that never-handed-out image open: the retry
/// fences that client, remakes the image and leaves exactly one.
#[tokio::test]
async fn unfinished_image_held_open_by_another_client_is_fenced() {
    let name = unique("pvc-fence");
    let mut req = create_req(&name, 8 * MIB);
    req.parameters
        .insert("imageFeatures".into(), "layering".into());
    let mut d = Driver::start(
        &["--type=rbd", "--controllerserver=true"],
        &[("FERROCEPH_TEST_CRASH_AT", "create.image")],
    );
    let mut ctl = d.controller().await;
    assert!(ctl.create_volume(req.clone()).await.is_err());
    assert!(d.wait_exit(Duration::from_secs(10)).is_some());
    // the stuck client: its own connection, holding the unfinished image open read-write
    let holder = admin();
    let holder_id = holder.instance_id();
    let io = holder.ioctx("rbd", "").unwrap();
    let key = format!("csi.volume.{name}");
    let got = io.omap_get("csi.volumes.default", &[key.as_str()]).unwrap();
    let uuid = String::from_utf8(got.get(&key).expect("directory key left").clone()).unwrap();
    let held = Image::open(&io, &format!("csi-vol-{uuid}")).expect("open the unfinished image");
    let holder_addr = held
        .watchers()
        .unwrap()
        .into_iter()
        .find(|w| w.id as u64 == holder_id)
        .expect("the holder watches the image")
        .addr;

    d.envs.clear();
    d.spawn();
    let mut ctl = d.controller().await;
    let v = ctl
        .create_volume(req.clone())
        .await
        .expect("the retry fences the holder and finishes")
        .into_inner()
        .volume
        .unwrap();
    let mine: Vec<String> = images()
        .into_iter()
        .filter(|i| i.contains(&uuid_of(&v.volume_id)))
        .collect();
    assert_eq!(mine.len(), 1, "{mine:?}");
    let log = std::fs::read_to_string(&d.log).unwrap_or_default();
    assert!(
        log.contains(&format!("client={holder_id}")) && log.contains("fenced"),
        "the log names the fenced client: {log}"
    );
    let (_, list) = admin_cli("ceph", &["osd", "blocklist", "ls"]);
    assert!(list.contains(&holder_addr), "{holder_addr} not in {list}");
    let _ = admin_cli("ceph", &["osd", "blocklist", "rm", &holder_addr]);
    drop(held);
    drop(holder);
    ctl.delete_volume(del_req(&v.volume_id))
        .await
        .expect("delete");
}

/// Kills the driver at each step of each flow, restarts it and retries: the retry must
/// finish the work and leave exactly the intended objects.
#[tokio::test]
async fn crash_at_every_step_converges() {
    // Without exclusive-lock: a killed process's lock would stall the retry until the OSD
    // expires its watch (30 s), which is Ceph's behaviour, not ours.
    let create_req = |name: &str, size: i64| {
        let mut r = common::create_req(name, size);
        r.parameters
            .insert("imageFeatures".into(), "layering,deep-flatten".into());
        r
    };
    let mut extra: Vec<String> = Vec::new();
    let mut v: Option<pb::Volume> = None;
    let mut name = String::new();
    for point in [
        "create.claimed",
        "create.image_made",
        "create.image",
        "create.recorded",
    ] {
        name = unique("pvc-crash");
        let mut d = Driver::start(
            &["--type=rbd", "--controllerserver=true"],
            &[("FERROCEPH_TEST_CRASH_AT", point)],
        );
        let mut ctl = d.controller().await;
        assert!(ctl.create_volume(create_req(&name, 8 * MIB)).await.is_err());
        assert!(
            d.wait_exit(Duration::from_secs(10)).is_some(),
            "crash point {point} not reached"
        );
        d.envs.clear();
        d.spawn();
        let mut ctl = d.controller().await;
        let got = ctl
            .create_volume(create_req(&name, 8 * MIB))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        let again = ctl
            .create_volume(create_req(&name, 8 * MIB))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(got.volume_id, again.volume_id, "after {point}");
        assert_eq!(
            images()
                .iter()
                .filter(|i| i.contains(&uuid_of(&got.volume_id)))
                .count(),
            1,
            "after {point}"
        );
        if let Some(prev) = v.replace(got) {
            extra.push(prev.volume_id);
        }
    }
    let v = v.unwrap();

    // snapshot flow
    let mut snap_id = String::new();
    let mut sname = String::new();
    for point in [
        "snapshot.reserved",
        "snapshot.tempsnap",
        "snapshot.cloned",
        "snapshot.recorded",
    ] {
        sname = unique("snap-crash");
        let mut d = Driver::start(
            &["--type=rbd", "--controllerserver=true"],
            &[("FERROCEPH_TEST_CRASH_AT", point)],
        );
        let mut ctl = d.controller().await;
        assert!(ctl
            .create_snapshot(snap_req(&sname, &v.volume_id))
            .await
            .is_err());
        assert!(
            d.wait_exit(Duration::from_secs(10)).is_some(),
            "crash point {point} not reached"
        );
        d.envs.clear();
        d.spawn();
        let mut ctl = d.controller().await;
        let s = ctl
            .create_snapshot(snap_req(&sname, &v.volume_id))
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        let s2 = ctl
            .create_snapshot(snap_req(&sname, &v.volume_id))
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        assert_eq!(s.snapshot_id, s2.snapshot_id);
        if !snap_id.is_empty() {
            ctl.delete_snapshot(del_snap_req(&snap_id)).await.unwrap();
        }
        snap_id = s.snapshot_id;
    }
    // the temporary snapshot on the source is gone (or parked in Ceph's trash namespace)
    let (_, snaps) = admin_cli(
        "rbd",
        &["snap", "ls", "--all", &format!("rbd/{}", image_name(&v))],
    );
    assert!(!snaps.contains(" user "), "{snaps}");
    {
        let d = Driver::rbd();
        let mut ctl = d.controller().await;
        for id in &extra {
            ctl.delete_volume(del_req(id)).await.unwrap();
        }
    }

    // clone flow
    let cname = unique("pvc-crash-clone");
    let mut creq = create_req(&cname, 8 * MIB);
    creq.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Volume(
            pb::volume_content_source::VolumeSource {
                volume_id: v.volume_id.clone(),
            },
        )),
    });
    let mut d = Driver::start(
        &["--type=rbd", "--controllerserver=true"],
        &[("FERROCEPH_TEST_CRASH_AT", "clone.tempsnap")],
    );
    let mut ctl = d.controller().await;
    let _ = ctl.create_volume(creq.clone()).await;
    let _ = d.wait_exit(Duration::from_secs(10));
    d.envs.clear();
    d.spawn();
    let mut ctl = d.controller().await;
    let clone = ctl
        .create_volume(creq)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();

    // delete flows
    for (point, id, is_snap) in [
        ("delete.trashed", clone.volume_id.clone(), false),
        ("delete.released", v.volume_id.clone(), false),
        ("delete.trashed", snap_id.clone(), true),
    ] {
        let mut d = Driver::start(
            &["--type=rbd", "--controllerserver=true"],
            &[("FERROCEPH_TEST_CRASH_AT", point)],
        );
        let mut ctl = d.controller().await;
        // Retry through the lingering watch of the previous killed process until the
        // crash point is reached.
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            let r = if is_snap {
                ctl.delete_snapshot(del_snap_req(&id)).await.map(|_| ())
            } else {
                ctl.delete_volume(del_req(&id)).await.map(|_| ())
            };
            if d.wait_exit(Duration::from_secs(2)).is_some() {
                break;
            }
            match r {
                Err(e)
                    if e.code() == Code::FailedPrecondition
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_secs(2)).await
                }
                other => panic!("crash point {point} not reached: {other:?}"),
            }
        }
        d.envs.clear();
        d.spawn();
        let mut ctl = d.controller().await;
        // The killed process's watch on the image lingers until the OSD expires it (30 s);
        // until then DeleteVolume answers FailedPrecondition and the CO retries, as here.
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            let r = if is_snap {
                ctl.delete_snapshot(del_snap_req(&id)).await.map(|_| ())
            } else {
                ctl.delete_volume(del_req(&id)).await.map(|_| ())
            };
            match r {
                Ok(()) => break,
                Err(e)
                    if e.code() == Code::FailedPrecondition
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_secs(2)).await
                }
                Err(e) => panic!("delete after crash at {point}: {e:?}"),
            }
        }
    }
    // Images a dead client still watched could not leave the trash at once; the reaper
    // removes them once Ceph has expired the watch.
    let d = Driver::start(
        &["--type=rbd", "--controllerserver=true", "--reapinterval=2s"],
        &[],
    );
    let mut ctl = d.controller().await;
    ctl.delete_volume(del_req(&v.volume_id)).await.unwrap();
    let ours = [
        uuid_of(&v.volume_id),
        uuid_of(&clone.volume_id),
        uuid_of(&snap_id),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (_, trash) = admin_cli("rbd", &["trash", "ls", "-p", "rbd", "--all", "--long"]);
        let left: Vec<_> = ours.iter().filter(|u| trash.contains(u.as_str())).collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left:?} left in trash: {trash}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    for u in &ours {
        assert!(
            !images().iter().any(|i| i.contains(u.as_str())),
            "image {u} leaked"
        );
        assert!(
            !object_exists(&format!("csi.volume.{u}")) && !object_exists(&format!("csi.snap.{u}")),
            "journal {u} leaked"
        );
    }
    assert!(!journal_has(&name) && !journal_has(&cname) && !snap_journal_has(&sname));
}

#[tokio::test]
async fn list_volumes_and_capacity() {
    let d = Driver::rbd();
    let mut ctl = d.controller().await;
    let mut made = Vec::new();
    for _ in 0..3 {
        made.push(
            ctl.create_volume(create_req(&unique("pvc-list"), MIB))
                .await
                .unwrap()
                .into_inner()
                .volume
                .unwrap()
                .volume_id,
        );
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let r = ctl
            .list_volumes(pb::ListVolumesRequest {
                max_entries: 2,
                starting_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.entries.len() <= 2);
        seen.extend(r.entries.into_iter().map(|e| e.volume.unwrap().volume_id));
        if r.next_token.is_empty() {
            break;
        }
        token = r.next_token;
    }
    for id in &made {
        assert!(seen.contains(id), "{id} missing from ListVolumes");
    }
    let e = ctl
        .list_volumes(pb::ListVolumesRequest {
            max_entries: 0,
            starting_token: "garbage".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Aborted);
    let cap = ctl
        .get_capacity(pb::GetCapacityRequest {
            parameters: rbd_params(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(cap.available_capacity > 0, "{cap:?}");
    let got = ctl
        .controller_get_volume(pb::ControllerGetVolumeRequest {
            volume_id: made[0].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!got.status.unwrap().volume_condition.unwrap().abnormal);
    for id in made {
        ctl.delete_volume(del_req(&id)).await.unwrap();
    }
}

#[tokio::test]
async fn long_clone_chains_are_flattened_in_the_background() {
    let d = Driver::rbd();
    let mut ctl = d.controller().await;
    let mut chain = vec![ctl
        .create_volume(create_req(&unique("pvc-chain"), 8 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap()];
    for _ in 0..image_soft_depth() {
        let prev = chain.last().unwrap().volume_id.clone();
        let mut r = create_req(&unique("pvc-chain"), 8 * MIB);
        r.volume_content_source = Some(pb::VolumeContentSource {
            r#type: Some(pb::volume_content_source::Type::Volume(
                pb::volume_content_source::VolumeSource { volume_id: prev },
            )),
        });
        chain.push(
            ctl.create_volume(r)
                .await
                .unwrap()
                .into_inner()
                .volume
                .unwrap(),
        );
    }
    // The last clone is SOFT deep: the mgr flattens it, after which it has no parent.
    let last = image_name(chain.last().unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, info) = admin_cli("rbd", &["info", &format!("rbd/{last}"), "--format", "json"]);
        let v: serde_json::Value = serde_json::from_str(&info).unwrap_or_default();
        if v.get("parent").is_none() && v.get("name").is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{last} was not flattened: {info}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for v in chain.iter().rev() {
        ctl.delete_volume(del_req(&v.volume_id)).await.unwrap();
    }
}

fn image_soft_depth() -> usize {
    4
}

#[tokio::test]
async fn rados_namespace_from_config_and_reload() {
    let ns = unique("ferro-ns");
    let (ok, out) = admin_cli("rbd", &["namespace", "create", &format!("rbd/{ns}")]);
    assert!(ok, "{out}");
    let d = Driver::rbd();
    let c = cluster();
    // the cluster map is re-read when it changes: no restart
    let map = serde_json::json!([{"clusterID": c.fsid(), "monitors": [c.monitors()], "rbd": {"radosNamespace": ns}}]);
    std::fs::write(&d.config, map.to_string()).unwrap();
    let mut ctl = d.controller().await;
    let v = ctl
        .create_volume(create_req(&unique("pvc-ns"), 8 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(v.volume_context["radosNamespace"], ns);
    let (_, listed) = admin_cli("rbd", &["ls", &format!("rbd/{ns}")]);
    assert!(listed.contains(&image_name(&v)), "{listed}");
    assert!(
        !image_exists(&image_name(&v)),
        "image must not be in the default namespace"
    );
    ctl.delete_volume(del_req(&v.volume_id)).await.unwrap();
    let (_, listed) = admin_cli("rbd", &["ls", &format!("rbd/{ns}")]);
    assert!(listed.trim().is_empty(), "{listed}");
    // the deleted image leaves the namespace's trash in the background
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out) = admin_cli("rbd", &["namespace", "remove", &format!("rbd/{ns}")]);
        if ok {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{out}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
