//! What the controller may touch and how it reads objects ceph-csi v3.12 left behind: the
//! trash reaper removes only images this driver trashed, and ceph-csi's journal entries,
//! snapshots, temporary clones and encrypted volumes are read as ceph-csi wrote them. The
//! ceph-csi objects are built here by hand, in ceph-csi's formats (shared/FACTS.md).

mod common;
use common::*;
use csi::v1 as pb;
use rados::rbd::{self, Image};
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

fn pool(c: &rados::Cluster) -> rados::IoCtx {
    c.ioctx(&cluster().get("FERRO_RBD_POOL"), "")
        .expect("open the rbd pool")
}

fn trash_ids(io: &rados::IoCtx) -> Vec<String> {
    rbd::trash_list(io)
        .expect("trash list")
        .into_iter()
        .map(|e| e.id)
        .collect()
}

fn new_image(io: &rados::IoCtx, name: &str, size: i64) -> String {
    let mut opts = rbd::ImageOptions::new(size as u64);
    opts.features = rbd::FEATURE_LAYERING;
    rbd::create(io, name, &opts).expect("create image");
    Image::open_read_only(io, name).unwrap().id().unwrap()
}

/// An administrator's `rbd trash mv` of an image named like ours (deferment 0, so expired
/// at once) is a soft delete the administrator may undo: several reaper passes leave it.
#[tokio::test]
async fn reaper_removes_only_what_the_driver_trashed() {
    let d = Driver::start(
        &["--type=rbd", "--controllerserver=true", "--reapinterval=1s"],
        &[],
    );
    let mut ctl = d.controller().await;
    let c = admin();
    let io = pool(&c);

    // The admin's soft delete.
    let image = format!("csi-vol-{}", uuid::Uuid::new_v4());
    let admin_id = new_image(&io, &image, 4 * MIB);
    rbd::trash_move(&io, &image, 0).expect("trash mv");

    // A volume of ours restored from a snapshot, so the snapshot's image stays in the
    // trash when the snapshot is deleted and goes with its last child.
    let src = ctl
        .create_volume(create_req(&unique("pvc-reap-src"), 8 * MIB))
        .await
        .expect("create source")
        .into_inner()
        .volume
        .unwrap();
    let snap = ctl
        .create_snapshot(snap_req(&unique("snap-reap"), &src.volume_id))
        .await
        .expect("snapshot")
        .into_inner()
        .snapshot
        .unwrap();
    let mut restore = create_req(&unique("pvc-reap-restore"), 8 * MIB);
    restore.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Snapshot(
            pb::volume_content_source::SnapshotSource {
                snapshot_id: snap.snapshot_id.clone(),
            },
        )),
    });
    let restored = ctl
        .create_volume(restore)
        .await
        .expect("restore")
        .into_inner()
        .volume
        .unwrap();
    ctl.delete_snapshot(del_snap_req(&snap.snapshot_id))
        .await
        .expect("delete snapshot");
    ctl.delete_volume(del_req(&src.volume_id))
        .await
        .expect("delete source");

    tokio::time::sleep(Duration::from_secs(5)).await;
    let survived = trash_ids(&io).contains(&admin_id);
    // Our trashed snapshot image goes with its last child.
    ctl.delete_volume(del_req(&restored.volume_id))
        .await
        .expect("delete restored");
    let snap_uuid = uuid_of(&snap.snapshot_id);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let ours_left = loop {
        let left: Vec<_> = rbd::trash_list(&io)
            .expect("trash list")
            .into_iter()
            .filter(|e| e.name.contains(&snap_uuid))
            .collect();
        if left.is_empty() || std::time::Instant::now() > deadline {
            break left;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let _ = rbd::trash_remove(&io, &admin_id, true);
    assert!(
        survived,
        "the reaper removed {image}, which an administrator had moved to the trash"
    );
    assert!(
        ours_left.is_empty(),
        "our snapshot image stays: {ours_left:?}"
    );
    assert!(
        omap_keys("csi.ferroceph.trash.default").is_empty(),
        "trash records left: {:?}",
        omap_keys("csi.ferroceph.trash.default")
    );
}

/// A ceph-csi volume: image `csi-vol-<uuid>` and its journal entry (per-volume object
/// with `keys`, then the directory key), as ceph-csi writes them. Returns the image name.
fn cephcsi_volume(io: &rados::IoCtx, name: &str, uuid: &str, keys: &[(&str, &str)]) -> String {
    let image = format!("csi-vol-{uuid}");
    let mut all: Vec<(&str, &[u8])> = vec![
        ("csi.volname", name.as_bytes()),
        ("csi.imagename", image.as_bytes()),
    ];
    all.extend(keys.iter().map(|(k, v)| (*k, v.as_bytes())));
    io.create_with_omap(&format!("csi.volume.{uuid}"), &all)
        .expect("per-volume object");
    io.omap_set(
        "csi.volumes.default",
        &[(format!("csi.volume.{name}").as_str(), uuid.as_bytes())],
    )
    .expect("directory key");
    image
}

fn volume_id(uuid: &str) -> String {
    let c = admin();
    let pool_id = pool(&c).pool_id();
    let fsid = cluster().fsid();
    format!("0001-{:04x}-{fsid}-{pool_id:016x}-{uuid}", fsid.len())
}

fn read_head(io: &rados::IoCtx, image: &str, len: usize) -> Vec<u8> {
    let img = Image::open_read_only(io, image).expect("open image");
    let mut buf = vec![0u8; len];
    img.read(0, &mut buf).expect("read image");
    buf
}

fn omap_value(io: &rados::IoCtx, obj: &str, key: &str) -> Option<String> {
    io.omap_get(obj, &[key])
        .ok()
        .and_then(|m| m.get(key).map(|v| String::from_utf8_lossy(v).into_owned()))
}

/// A journal entry written by ceph-csi before v3.0 has no `csi.imageid`; the volume may be
/// in use. A CreateVolume retry adopts it (and records the id) instead of remaking it.
#[tokio::test]
async fn volume_entry_without_image_id_is_adopted() {
    let c = admin();
    let io = pool(&c);
    let name = unique("pvc-prev3");
    let uuid = uuid::Uuid::new_v4().to_string();
    let image = cephcsi_volume(&io, &name, &uuid, &[]);
    let id = new_image(&io, &image, 16 * MIB);
    Image::open(&io, &image)
        .unwrap()
        .write(0, b"written under ceph-csi")
        .unwrap();

    let d = Driver::start(&["--type=rbd", "--controllerserver=true"], &[]);
    let mut ctl = d.controller().await;
    let got = ctl.create_volume(create_req(&name, 16 * MIB)).await;
    let id_after = Image::open_read_only(&io, &image)
        .ok()
        .and_then(|i| i.id().ok());
    let data = read_head(&io, &image, 22);
    let recorded = omap_value(&io, &format!("csi.volume.{uuid}"), "csi.imageid");
    let vid = volume_id(&uuid);
    ctl.delete_volume(del_req(&vid)).await.expect("delete");
    let v = got
        .expect("create adopts the entry")
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(uuid_of(&v.volume_id), uuid);
    assert_eq!(
        id_after.as_deref(),
        Some(id.as_str()),
        "the image was remade"
    );
    assert_eq!(&data, b"written under ceph-csi", "the data is gone");
    assert_eq!(
        recorded.as_deref(),
        Some(id.as_str()),
        "csi.imageid not recorded"
    );
}

/// A ceph-csi snapshot (clone image `csi-snap-<uuid>` with a same-named snapshot) whose
/// journal entry lacks `csi.imageid` is adopted by a CreateSnapshot retry, and reports the
/// real size and creation time, in CreateSnapshot and ListSnapshots.
#[tokio::test]
async fn snapshot_entry_without_image_id_is_adopted_with_real_size_and_time() {
    let d = Driver::start(&["--type=rbd", "--controllerserver=true"], &[]);
    let mut ctl = d.controller().await;
    let src = ctl
        .create_volume(create_req(&unique("pvc-snapsrc"), 8 * MIB))
        .await
        .expect("source")
        .into_inner()
        .volume
        .unwrap();
    let src_image = src.volume_context["imageName"].clone();
    let c = admin();
    let io = pool(&c);
    // ceph-csi's snapshot layout: temporary snapshot, clone, snapshot on the clone.
    let name = unique("snap-prev3");
    let suuid = uuid::Uuid::new_v4().to_string();
    let snap_image = format!("csi-snap-{suuid}");
    {
        let s = Image::open(&io, &src_image).unwrap();
        s.snap_create(&snap_image).unwrap();
        let opts = rbd::CloneOptions {
            features: Some(rbd::FEATURE_LAYERING | rbd::FEATURE_DEEP_FLATTEN),
            clone_format: 2,
            ..Default::default()
        };
        rbd::clone(&io, &src_image, &snap_image, &io, &snap_image, &opts).unwrap();
        s.snap_remove(&snap_image).unwrap();
        Image::open(&io, &snap_image)
            .unwrap()
            .snap_create(&snap_image)
            .unwrap();
    }
    let taken = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let snap_id = Image::open_read_only(&io, &snap_image)
        .unwrap()
        .id()
        .unwrap();
    io.create_with_omap(
        &format!("csi.snap.{suuid}"),
        &[
            ("csi.snapname", name.as_bytes()),
            ("csi.imagename", snap_image.as_bytes()),
            ("csi.source", src_image.as_bytes()),
        ],
    )
    .unwrap();
    io.omap_set(
        "csi.snaps.default",
        &[(format!("csi.snap.{name}").as_str(), suuid.as_bytes())],
    )
    .unwrap();

    let got = ctl.create_snapshot(snap_req(&name, &src.volume_id)).await;
    let id_after = Image::open_read_only(&io, &snap_image)
        .ok()
        .and_then(|i| i.id().ok());
    let sid = volume_id(&suuid);
    let listed = ctl
        .list_snapshots(pb::ListSnapshotsRequest {
            snapshot_id: sid.clone(),
            secrets: cluster().rbd_secrets(),
            ..Default::default()
        })
        .await;
    ctl.delete_snapshot(del_snap_req(&sid))
        .await
        .expect("delete snapshot");
    ctl.delete_volume(del_req(&src.volume_id))
        .await
        .expect("delete source");
    let s = got
        .expect("create adopts the snapshot")
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(uuid_of(&s.snapshot_id), suuid);
    assert_eq!(
        id_after.as_deref(),
        Some(snap_id.as_str()),
        "the snapshot image was remade"
    );
    for (what, s) in [
        ("CreateSnapshot", s),
        (
            "ListSnapshots",
            listed
                .expect("list")
                .into_inner()
                .entries
                .into_iter()
                .next()
                .and_then(|e| e.snapshot)
                .expect("listed"),
        ),
    ] {
        assert_eq!(s.size_bytes, 8 * MIB, "{what} size");
        let t = s.creation_time.unwrap_or_default().seconds;
        assert!(
            (t - taken).abs() < 120,
            "{what} creation time {t}, taken at {taken}"
        );
    }
}

/// ceph-csi's encrypted volumes (a KMS in the journal, the encryption state in the image
/// metadata) cannot be snapshotted or cloned until encryption is implemented.
#[tokio::test]
async fn encrypted_cephcsi_volume_is_not_snapshotted_or_cloned() {
    let c = admin();
    let io = pool(&c);
    let name = unique("pvc-luks");
    let uuid = uuid::Uuid::new_v4().to_string();
    let image = cephcsi_volume(
        &io,
        &name,
        &uuid,
        &[("csi.volume.encryptKMS", "vault-test")],
    );
    let id = new_image(&io, &image, 8 * MIB);
    io.omap_set(
        &format!("csi.volume.{uuid}"),
        &[("csi.imageid", id.as_bytes())],
    )
    .unwrap();
    Image::open(&io, &image)
        .unwrap()
        .metadata_set("rbd.csi.ceph.com/encrypted", "encrypted")
        .unwrap();

    let d = Driver::start(&["--type=rbd", "--controllerserver=true"], &[]);
    let mut ctl = d.controller().await;
    let vid = volume_id(&uuid);
    let snap_name = unique("snap-luks");
    let snap = ctl.create_snapshot(snap_req(&snap_name, &vid)).await;
    let mut clone = create_req(&unique("pvc-luks-clone"), 8 * MIB);
    clone.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Volume(
            pb::volume_content_source::VolumeSource {
                volume_id: vid.clone(),
            },
        )),
    });
    let cloned = ctl.create_volume(clone).await;
    // a node must not hand the LUKS container to a pod
    let node_d = Driver::start(
        &["--type=rbd", "--nodeserver=true", "--nodeid=luks-node"],
        &[],
    );
    let mut node = node_d.node().await;
    let ctx: std::collections::HashMap<String, String> = [
        ("clusterID", cluster().fsid()),
        ("pool", "rbd".to_string()),
        ("imageName", image.clone()),
        ("encrypted", "true".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let staging = node_d.dir.path().join("globalmount");
    let staged = node
        .node_stage_volume(stage_req(
            &vid,
            &ctx,
            &staging,
            rwo(),
            cluster().rbd_secrets(),
        ))
        .await;
    if staged.is_ok() {
        let _ = node.node_unstage_volume(unstage_req(&vid, &staging)).await;
    }
    // clean up whatever was made
    if let Ok(s) = &snap {
        let sid = s.get_ref().snapshot.as_ref().unwrap().snapshot_id.clone();
        ctl.delete_snapshot(del_snap_req(&sid)).await.unwrap();
    }
    if let Ok(v) = &cloned {
        let id = v.get_ref().volume.as_ref().unwrap().volume_id.clone();
        ctl.delete_volume(del_req(&id)).await.unwrap();
    }
    ctl.delete_volume(del_req(&vid)).await.expect("delete");
    for (what, r) in [
        ("CreateSnapshot", snap.map(|_| ())),
        ("CreateVolume from it", cloned.map(|_| ())),
        ("NodeStageVolume", staged.map(|_| ())),
    ] {
        let e = r.expect_err(&format!("{what} of an encrypted volume succeeded"));
        assert_eq!(e.code(), Code::FailedPrecondition, "{what}: {e:?}");
        assert!(e.message().contains("encrypt"), "{what}: {}", e.message());
    }
}

/// A volume ceph-csi cloned from a volume sits on a temporary clone `<image>-temp`;
/// DeleteVolume removes it with its child.
#[tokio::test]
async fn cephcsi_clone_takes_its_temp_parent_along() {
    let d = Driver::start(&["--type=rbd", "--controllerserver=true"], &[]);
    let mut ctl = d.controller().await;
    let src = ctl
        .create_volume(create_req(&unique("pvc-tmpsrc"), 8 * MIB))
        .await
        .expect("source")
        .into_inner()
        .volume
        .unwrap();
    let src_image = src.volume_context["imageName"].clone();
    let c = admin();
    let io = pool(&c);
    let name = unique("pvc-cephcsi-clone");
    let uuid = uuid::Uuid::new_v4().to_string();
    let image = format!("csi-vol-{uuid}");
    let temp = format!("{image}-temp");
    let opts = rbd::CloneOptions {
        features: Some(rbd::FEATURE_LAYERING | rbd::FEATURE_DEEP_FLATTEN),
        clone_format: 2,
        ..Default::default()
    };
    {
        let s = Image::open(&io, &src_image).unwrap();
        s.snap_create(&image).unwrap();
        rbd::clone(&io, &src_image, &image, &io, &temp, &opts).unwrap();
        s.snap_remove(&image).unwrap();
        let t = Image::open(&io, &temp).unwrap();
        t.snap_create(&image).unwrap();
        rbd::clone(&io, &temp, &image, &io, &image, &opts).unwrap();
        t.snap_remove(&image).unwrap();
    }
    let id = Image::open_read_only(&io, &image).unwrap().id().unwrap();
    cephcsi_volume(&io, &name, &uuid, &[("csi.imageid", &id)]);

    let deleted = ctl.delete_volume(del_req(&volume_id(&uuid))).await;
    let temp_left = image_exists(&temp);
    // the controller removes deleted images from the trash in the background
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let temp_trashed: Vec<_> = loop {
        let left: Vec<_> = rbd::trash_list(&io)
            .unwrap()
            .into_iter()
            .filter(|e| e.name == temp)
            .collect();
        if left.is_empty() || std::time::Instant::now() > deadline {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // clean up by hand whatever is left
    if temp_left {
        let _ = rbd::remove(&io, &temp);
    }
    for e in &temp_trashed {
        let _ = rbd::trash_remove(&io, &e.id, true);
    }
    ctl.delete_volume(del_req(&src.volume_id))
        .await
        .expect("delete source");
    deleted.expect("delete the clone");
    assert!(!image_exists(&image));
    assert!(!temp_left, "{temp} stays in the pool");
    assert!(temp_trashed.is_empty(), "{temp} stays in the trash");
}

/// A directory key whose uuid points at another name's per-snapshot object (a crash, or a
/// clash): the lookup drops the key but never that other snapshot's object.
#[tokio::test]
async fn dangling_directory_key_never_removes_another_names_entry() {
    let d = Driver::start(&["--type=rbd", "--controllerserver=true"], &[]);
    let mut ctl = d.controller().await;
    let src = ctl
        .create_volume(create_req(&unique("pvc-dangle"), 8 * MIB))
        .await
        .expect("source")
        .into_inner()
        .volume
        .unwrap();
    let other = ctl
        .create_snapshot(snap_req(&unique("snap-other"), &src.volume_id))
        .await
        .expect("snapshot")
        .into_inner()
        .snapshot
        .unwrap();
    let other_uuid = uuid_of(&other.snapshot_id);
    let c = admin();
    let io = pool(&c);
    let name = unique("snap-dangling");
    io.omap_set(
        "csi.snaps.default",
        &[(format!("csi.snap.{name}").as_str(), other_uuid.as_bytes())],
    )
    .unwrap();
    let made = ctl.create_snapshot(snap_req(&name, &src.volume_id)).await;
    let other_kept = object_exists(&format!("csi.snap.{other_uuid}"));
    if let Ok(s) = &made {
        let sid = s.get_ref().snapshot.as_ref().unwrap().snapshot_id.clone();
        ctl.delete_snapshot(del_snap_req(&sid)).await.unwrap();
    }
    ctl.delete_snapshot(del_snap_req(&other.snapshot_id))
        .await
        .expect("delete the other snapshot");
    ctl.delete_volume(del_req(&src.volume_id))
        .await
        .expect("delete source");
    let _ = io.omap_remove("csi.snaps.default", &[format!("csi.snap.{name}").as_str()]);
    let made = made.expect("the dangling name gets a snapshot of its own");
    assert_ne!(
        uuid_of(&made.get_ref().snapshot.as_ref().unwrap().snapshot_id),
        other_uuid
    );
    assert!(
        other_kept,
        "csi.snap.{other_uuid} of another name was removed"
    );
}

/// config.json keys of ceph-csi that ferroceph does not implement are named in the log at
/// start-up as ignored, not silently dropped.
#[tokio::test]
async fn unimplemented_config_keys_are_logged_as_ignored() {
    let mut d = Driver::start(&["--type=rbd", "--controllerserver=true"], &[]);
    d.kill();
    let c = cluster();
    let map = serde_json::json!([{
        "clusterID": c.fsid(),
        "monitors": [c.monitors()],
        "rbd": {"radosNamespace": "", "netNamespaceFilePath": "/var/run/netns/x.net"},
        "readAffinity": {"enabled": true, "crushLocationLabels": ["topology.kubernetes.io/zone"]},
    }]);
    std::fs::write(&d.config, map.to_string()).unwrap();
    d.spawn();
    let _ctl = d.controller().await;
    let log = d.log_text();
    for key in ["rbd.netNamespaceFilePath", "readAffinity"] {
        assert!(
            log.lines()
                .any(|l| l.contains(key) && l.contains("ignored")),
            "{key} not logged as ignored: {log}"
        );
    }
}
