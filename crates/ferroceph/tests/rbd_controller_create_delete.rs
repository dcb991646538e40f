//! RBD controller against the real dev cluster: CreateVolume and DeleteVolume — argument
//! validation, idempotency under concurrency, in-use images, legacy parameters, ceph-csi
//! take-over and RADOS namespaces.

mod common;
use common::rbd_controller::*;
use common::*;
use csi::v1 as pb;
use pb::volume_capability::access_mode::Mode;
use rados::rbd::Image;
use tonic::Code;

#[tokio::test]
async fn validation_errors_name_what_to_fix() {
    let d = Driver::rbd();
    let mut ctl = d.controller().await;
    let name = unique("pvc-bad");
    create_volume_refusals(&mut ctl, &name).await;

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
    validate_capabilities_and_unknown_ids(&mut ctl, &v).await;
    ctl.delete_volume(del_req(&v.volume_id)).await.unwrap();
}

/// The controller client of these tests.
type Ctl = pb::controller_client::ControllerClient<tonic::transport::Channel>;

/// CreateVolume requests that are wrong in one way each: the error has the right code and
/// names what to fix, and nothing is created.
async fn create_volume_refusals(ctl: &mut Ctl, name: &str) {
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
    let mut r = create_req(name, MIB);
    r.parameters.insert("imageFormat".into(), "1".into());
    check(
        ctl.create_volume(r).await,
        Code::InvalidArgument,
        "imageFormat",
    );
    let mut r = create_req(name, MIB);
    r.parameters.insert("tpyo".into(), "1".into());
    check(ctl.create_volume(r).await, Code::InvalidArgument, "tpyo");
    let mut r = create_req(name, MIB);
    r.secrets.clear();
    check(ctl.create_volume(r).await, Code::InvalidArgument, "userKey");
    let mut r = create_req(name, MIB);
    r.volume_capabilities = vec![mount_cap(Mode::MultiNodeMultiWriter)];
    check(
        ctl.create_volume(r).await,
        Code::InvalidArgument,
        "MULTI_NODE_MULTI_WRITER",
    );
    let mut r = create_req(name, MIB);
    r.volume_capabilities.clear();
    check(
        ctl.create_volume(r).await,
        Code::InvalidArgument,
        "volume_capabilities",
    );
    let mut r = create_req(name, MIB);
    r.capacity_range = Some(pb::CapacityRange {
        required_bytes: 10 * MIB,
        limit_bytes: 5 * MIB,
    });
    check(ctl.create_volume(r).await, Code::OutOfRange, "limit_bytes");
    let mut r = create_req(name, MIB);
    r.parameters.insert("pool".into(), "no-such-pool".into());
    check(
        ctl.create_volume(r).await,
        Code::InvalidArgument,
        "no-such-pool",
    );
    let mut r = create_req(name, MIB);
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
    let mut r = create_req(name, MIB);
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
}

/// ValidateVolumeCapabilities on `v`: supported and unsupported capabilities; on an
/// unknown volume NotFound. Unknown ids: deletes succeed, snapshot and restore say NotFound.
async fn validate_capabilities_and_unknown_ids(ctl: &mut Ctl, v: &pb::Volume) {
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
}

#[tokio::test]
async fn delete_volume_keeps_an_in_use_image() {
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
async fn create_volume_concurrent_calls_of_one_name_make_one_image() {
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
async fn create_volume_with_legacy_in_tree_storage_class() {
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
async fn create_volume_takes_over_a_ceph_csi_volume() {
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

#[tokio::test]
async fn create_volume_in_rados_namespace_from_config_and_reload() {
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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (ok, out) = admin_cli("rbd", &["namespace", "remove", &format!("rbd/{ns}")]);
        if ok {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{out}");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}
