//! Snapshot-backed CephFS volumes (`backingSnapshot: "true"`) and their reference tracker
//! `rt-backingsnapshot-<snapshot id>`, in the layout ceph-csi writes: volumes and trackers
//! made by hand as ceph-csi makes them, and made by ferroceph; a referenced snapshot
//! survives DeleteSnapshot, DeleteVolume drops the reference and removes a deleted
//! snapshot with its last volume; retries and crashes between steps converge.

mod common;
use common::cephfs::*;
use common::*;
use csi::v1 as pb;
use pb::volume_capability::access_mode::Mode;
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::Code;

const VERSION_XATTR: &str = "csi.ceph.com/rt-version";

fn meta() -> rados::IoCtx {
    admin()
        .ioctx("cephfs_metadata", "csi")
        .expect("metadata pool")
}

fn tracker_name(snap_id: &str) -> String {
    format!("rt-backingsnapshot-{snap_id}")
}

/// A reference tracker exactly as ceph-csi v3.12 writes one (format version 1).
fn cephcsi_tracker(snap_id: &str, refs: &[(&str, u8)], count: u32) {
    let pairs: Vec<(&str, &[u8])> = refs
        .iter()
        .map(|(k, t)| (*k, std::slice::from_ref(t)))
        .collect();
    meta()
        .object_write(
            &tracker_name(snap_id),
            &[
                rados::ObjectOp::CreateExclusive,
                rados::ObjectOp::SetXattr(VERSION_XATTR, &1u32.to_be_bytes()),
                rados::ObjectOp::OmapSet(&pairs),
                rados::ObjectOp::WriteFull(&count.to_be_bytes()),
            ],
        )
        .expect("write tracker");
}

/// (count, references) of a tracker, None when it does not exist.
fn tracker(snap_id: &str) -> Option<(u32, BTreeMap<String, u8>)> {
    let io = meta();
    let name = tracker_name(snap_id);
    let (ver, version) = match io.xattr_versioned(&name, VERSION_XATTR, 4) {
        Ok(v) => v,
        Err(e) if e.kind() == rados::ErrorKind::NotFound => return None,
        Err(e) => panic!("tracker xattr: {e}"),
    };
    assert_eq!(ver, 1u32.to_be_bytes(), "tracker format version");
    let (data, _) = io.read_at_version(&name, version, 16, &[]).unwrap();
    let count = u32::from_be_bytes(data.as_slice().try_into().expect("4-byte count"));
    let refs = io
        .omap_list(&name, "", "", 1000)
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            assert_eq!(v.len(), 1, "reference type is one byte");
            (k, v[0])
        })
        .collect();
    Some((count, refs))
}

fn refs(pairs: &[(&str, u8)]) -> BTreeMap<String, u8> {
    pairs.iter().map(|(k, t)| (k.to_string(), *t)).collect()
}

/// A snapshot-backed volume's journal entry as ceph-csi writes it (no subvolume); returns
/// its handle, made from `like` (a handle on the same filesystem).
fn cephcsi_backing_volume(like: &str, name: &str, snap_id: &str) -> (String, String) {
    let uuid = uuid::Uuid::new_v4().to_string();
    let io = meta();
    let sub = format!("csi-vol-{uuid}");
    io.create_with_omap(
        &format!("csi.volume.{uuid}"),
        &[
            ("csi.volname", name.as_bytes()),
            ("csi.imagename", sub.as_bytes()),
            ("csi.volume.owner", b"team"),
            ("csi.volume.backingsnapshotid", snap_id.as_bytes()),
        ],
    )
    .unwrap();
    io.omap_set(
        "csi.volumes.default",
        &[(&format!("csi.volume.{name}"), uuid.as_bytes())],
    )
    .unwrap();
    (format!("{}{uuid}", &like[..like.len() - 36]), sub)
}

fn volume_entry_exists(uuid: &str) -> bool {
    meta().stat(&format!("csi.volume.{uuid}")).is_ok()
}

fn snap_entry_exists(uuid: &str) -> bool {
    meta().stat(&format!("csi.snap.{uuid}")).is_ok()
}

fn backing_req(name: &str, snap: &str, mode: Mode) -> pb::CreateVolumeRequest {
    let mut r = from_snapshot(name, 0, snap);
    r.parameters
        .insert("backingSnapshot".to_string(), "true".to_string());
    r.volume_capabilities = vec![mount_cap(mode)];
    r
}

/// A source volume and a snapshot of it; returns (volume, its subvolume, snapshot).
async fn source_and_snapshot(d: &Driver, tag: &str) -> (pb::Volume, String, pb::Snapshot) {
    let mut ctl = d.controller().await;
    let src = ctl
        .create_volume(fs_create(&unique(&format!("pvc-{tag}")), 8 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let sub = src.volume_context["subvolumeName"].clone();
    let snap = ctl
        .create_snapshot(fs_snap_req(&unique(&format!("snap-{tag}")), &src.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    (src, sub, snap)
}

fn snap_name(snap: &pb::Snapshot) -> String {
    format!("csi-snap-{}", uuid_of(&snap.snapshot_id))
}

#[tokio::test]
async fn cephcsi_backed_snapshot_survives_delete_until_its_last_volume_goes() {
    let d = fs_driver(true, None);
    let mut ctl = d.controller().await;
    let (src, src_sub, snap) = source_and_snapshot(&d, "bk-csi").await;
    let sid = snap.snapshot_id.clone();
    let (b1, r1) = cephcsi_backing_volume(&src.volume_id, &unique("pvc-bk1"), &sid);
    let (b2, r2) = cephcsi_backing_volume(&src.volume_id, &unique("pvc-bk2"), &sid);
    cephcsi_tracker(&sid, &[(&sid, 1), (&r1, 1), (&r2, 1)], 3);

    // DeleteSnapshot succeeds but the snapshot stays: volumes still use it.
    for _ in 0..2 {
        ctl.delete_snapshot(fs_del_snap(&sid)).await.unwrap();
        assert!(
            snapshots(GROUP, &src_sub).contains(&snap_name(&snap)),
            "a snapshot that backs volumes was removed"
        );
        assert_eq!(
            tracker(&sid),
            Some((2, refs(&[(&sid, 2), (&r1, 1), (&r2, 1)])))
        );
    }
    assert!(snap_entry_exists(&uuid_of(&sid)));

    // The first volume drops its reference (twice: idempotent); the snapshot stays.
    for _ in 0..2 {
        ctl.delete_volume(fs_del(&b1)).await.unwrap();
        assert_eq!(tracker(&sid), Some((1, refs(&[(&sid, 2), (&r2, 1)]))));
        assert!(!volume_entry_exists(&uuid_of(&b1)));
        assert!(snapshots(GROUP, &src_sub).contains(&snap_name(&snap)));
    }

    // The last one takes the deleted snapshot with it.
    ctl.delete_volume(fs_del(&b2)).await.unwrap();
    assert_eq!(tracker(&sid), None);
    assert!(!snapshots(GROUP, &src_sub).contains(&snap_name(&snap)));
    assert!(!snap_entry_exists(&uuid_of(&sid)));
    assert!(!volume_entry_exists(&uuid_of(&b2)));
    ctl.delete_volume(fs_del(&b2)).await.unwrap();
    ctl.delete_snapshot(fs_del_snap(&sid)).await.unwrap();
    assert!(
        sub_info(GROUP, &src_sub).is_some(),
        "the source volume is untouched"
    );
    ctl.delete_volume(fs_del(&src.volume_id)).await.unwrap();
}

#[tokio::test]
async fn snapshot_outlives_its_volumes_when_not_deleted() {
    // Volumes come and go; a snapshot the CO did not delete is never removed.
    let d = fs_driver(true, None);
    let mut ctl = d.controller().await;
    let (src, src_sub, snap) = source_and_snapshot(&d, "bk-keep").await;
    let sid = snap.snapshot_id.clone();
    let (b1, r1) = cephcsi_backing_volume(&src.volume_id, &unique("pvc-bk3"), &sid);
    cephcsi_tracker(&sid, &[(&sid, 1), (&r1, 1)], 2);
    ctl.delete_volume(fs_del(&b1)).await.unwrap();
    assert_eq!(tracker(&sid), Some((1, refs(&[(&sid, 1)]))));
    assert!(snapshots(GROUP, &src_sub).contains(&snap_name(&snap)));
    // A volume whose tracker is missing leaves the snapshot alone too.
    let (b2, _) = cephcsi_backing_volume(&src.volume_id, &unique("pvc-bk4"), &sid);
    let _ = meta().remove_object(&tracker_name(&sid));
    ctl.delete_volume(fs_del(&b2)).await.unwrap();
    assert!(!volume_entry_exists(&uuid_of(&b2)));
    assert!(snapshots(GROUP, &src_sub).contains(&snap_name(&snap)));
    // With no tracker the snapshot is deleted at once.
    ctl.delete_snapshot(fs_del_snap(&sid)).await.unwrap();
    assert!(!snapshots(GROUP, &src_sub).contains(&snap_name(&snap)));
    ctl.delete_volume(fs_del(&src.volume_id)).await.unwrap();
}

#[tokio::test]
async fn ferroceph_backed_volume_is_a_journal_entry_and_a_reference() {
    let d = fs_driver(true, None);
    let mut ctl = d.controller().await;
    let (src, src_sub, snap) = source_and_snapshot(&d, "bk-own").await;
    let sid = snap.snapshot_id.clone();
    let name = unique("pvc-bk-own");

    let e = ctl
        .create_volume(backing_req(&name, &sid, Mode::MultiNodeMultiWriter))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let mut no_source = fs_create(&name, 0);
    no_source
        .parameters
        .insert("backingSnapshot".to_string(), "true".to_string());
    no_source.volume_capabilities = vec![mount_cap(Mode::MultiNodeReaderOnly)];
    let e = ctl.create_volume(no_source).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    let v = ctl
        .create_volume(backing_req(&name, &sid, Mode::MultiNodeReaderOnly))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let again = ctl
        .create_volume(backing_req(&name, &sid, Mode::MultiNodeReaderOnly))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(v.volume_id, again.volume_id);
    assert_eq!(v.capacity_bytes, 8 * MIB, "the snapshot's size");
    let vref = format!("csi-vol-{}", uuid_of(&v.volume_id));
    assert_eq!(v.volume_context["subvolumeName"], vref);
    assert_eq!(v.volume_context["backingSnapshot"], "true");
    let path = &v.volume_context["subvolumePath"];
    assert!(
        path.starts_with(&format!("/volumes/{GROUP}/{src_sub}/")) && path.ends_with('/'),
        "{path}"
    );
    assert!(!subvolumes(GROUP).contains(&vref), "no subvolume is made");
    let entry = meta()
        .omap_get(
            &format!("csi.volume.{}", uuid_of(&v.volume_id)),
            &[
                "csi.volume.backingsnapshotid",
                "csi.imagename",
                "csi.volname",
            ],
        )
        .unwrap();
    assert_eq!(entry["csi.volume.backingsnapshotid"], sid.as_bytes());
    assert_eq!(entry["csi.imagename"], vref.as_bytes());
    assert_eq!(entry["csi.volname"], name.as_bytes());
    assert_eq!(tracker(&sid), Some((2, refs(&[(&sid, 1), (&vref, 1)]))));
    let got = ctl
        .controller_get_volume(pb::ControllerGetVolumeRequest {
            volume_id: v.volume_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.volume.unwrap().capacity_bytes, 8 * MIB);
    let cond = got.status.unwrap().volume_condition.unwrap();
    assert!(!cond.abnormal, "{cond:?}");
    assert!(cond.message.contains(&sid), "{cond:?}");

    // Not a plain volume under the same name, and no subvolume to expand or snapshot.
    let e = ctl
        .create_volume(from_snapshot(&name, 0, &sid))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    let e = ctl
        .controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: v.volume_id.clone(),
            capacity_range: Some(pb::CapacityRange {
                required_bytes: 16 * MIB,
                limit_bytes: 0,
            }),
            secrets: fs_secrets(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = ctl
        .create_snapshot(fs_snap_req(&unique("snap-of-bk"), &v.volume_id))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // Deleting the snapshot defers; deleting the volume finishes it.
    ctl.delete_snapshot(fs_del_snap(&sid)).await.unwrap();
    assert!(snapshots(GROUP, &src_sub).contains(&snap_name(&snap)));
    let e = ctl
        .create_volume(backing_req(
            &unique("pvc-bk-late"),
            &sid,
            Mode::MultiNodeReaderOnly,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "a deleted snapshot: {e:?}");
    ctl.delete_volume(fs_del(&v.volume_id)).await.unwrap();
    assert_eq!(tracker(&sid), None);
    assert!(!snapshots(GROUP, &src_sub).contains(&snap_name(&snap)));
    assert!(!journal_has(&name));
    ctl.delete_volume(fs_del(&src.volume_id)).await.unwrap();
}

#[tokio::test]
async fn crashes_between_backing_steps_converge() {
    let d = fs_driver(true, None);
    let (src, src_sub, snap) = source_and_snapshot(&d, "bk-crash").await;
    let sid = snap.snapshot_id.clone();
    let mut made = Vec::new();
    for point in ["cephfs.backing.reserved", "cephfs.backing.referenced"] {
        let name = unique("pvc-bk-crash");
        let mut c = crash_driver(point);
        let mut ctl = c.controller().await;
        assert!(ctl
            .create_volume(backing_req(&name, &sid, Mode::SingleNodeReaderOnly))
            .await
            .is_err());
        assert!(c.wait_exit(Duration::from_secs(20)).is_some(), "{point}");
        c.envs.clear();
        c.spawn();
        let mut ctl = c.controller().await;
        let v = ctl
            .create_volume(backing_req(&name, &sid, Mode::SingleNodeReaderOnly))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        made.push(v);
    }
    let r: Vec<String> = made
        .iter()
        .map(|v| format!("csi-vol-{}", uuid_of(&v.volume_id)))
        .collect();
    assert_eq!(
        tracker(&sid),
        Some((3, refs(&[(&sid, 1), (&r[0], 1), (&r[1], 1)])))
    );
    let mut ctl = d.controller().await;
    ctl.delete_snapshot(fs_del_snap(&sid)).await.unwrap();
    ctl.delete_volume(fs_del(&made[0].volume_id)).await.unwrap();

    // The last volume: crash after the snapshot went and before the tracker did, then
    // after the tracker went and before the journal entry did.
    for point in [
        "cephfs.backing.snapshot-removed",
        "cephfs.backing.unreferenced",
    ] {
        let mut c = crash_driver(point);
        let mut ctl = c.controller().await;
        assert!(ctl.delete_volume(fs_del(&made[1].volume_id)).await.is_err());
        assert!(c.wait_exit(Duration::from_secs(20)).is_some(), "{point}");
    }
    assert!(volume_entry_exists(&uuid_of(&made[1].volume_id)));
    assert!(!snapshots(GROUP, &src_sub).contains(&snap_name(&snap)));
    ctl.delete_volume(fs_del(&made[1].volume_id)).await.unwrap();
    assert_eq!(tracker(&sid), None);
    assert!(!volume_entry_exists(&uuid_of(&made[1].volume_id)));
    assert!(!snap_entry_exists(&uuid_of(&sid)));
    ctl.delete_volume(fs_del(&src.volume_id)).await.unwrap();
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("<{e}>"))
}

#[tokio::test]
async fn node_mounts_the_snapshot_read_only() {
    let d = fs_driver(true, Some("node-bk"));
    let scratch = FsScratch::new("bk");
    let mut ctl = d.controller().await;
    let mut node = d.node().await;
    let src = ctl
        .create_volume(fs_create(&unique("pvc-bk-node"), 8 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let (s0, t0) = (scratch.path("src/globalmount"), scratch.path("src/mount"));
    node.node_stage_volume(fs_stage_req(&src, &s0, Mode::SingleNodeWriter))
        .await
        .unwrap();
    node.node_publish_volume(fs_publish_req(&src, &s0, &t0, Mode::SingleNodeWriter))
        .await
        .unwrap();
    write_file(&t0.join("data.txt"), b"at snapshot time");
    let snap = ctl
        .create_snapshot(fs_snap_req(&unique("snap-bk-node"), &src.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    let sid = snap.snapshot_id.clone();
    write_file(&t0.join("data.txt"), b"changed later");

    // One made by ferroceph, one as ceph-csi leaves it (context: the snapshot's subvolume
    // directory as subvolumePath, backingSnapshot "true").
    let own = ctl
        .create_volume(backing_req(
            &unique("pvc-bk-ro"),
            &sid,
            Mode::MultiNodeReaderOnly,
        ))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let (csi_id, csi_ref) = cephcsi_backing_volume(&src.volume_id, &unique("pvc-bk-csi"), &sid);
    let mut csi = own.clone();
    csi.volume_id = csi_id.clone();
    csi.volume_context
        .insert("subvolumeName".to_string(), csi_ref.clone());
    let own_ref = format!("csi-vol-{}", uuid_of(&own.volume_id));
    cephcsi_tracker_add(&sid, &csi_ref);
    assert_eq!(
        tracker(&sid),
        Some((3, refs(&[(&sid, 1), (&own_ref, 1), (&csi_ref, 1)])))
    );

    for (tag, v) in [("own", &own), ("csi", &csi)] {
        let (s, t) = (
            scratch.path(&format!("{tag}/globalmount")),
            scratch.path(&format!("{tag}/mount")),
        );
        let e = node
            .node_stage_volume(fs_stage_req(v, &s, Mode::MultiNodeMultiWriter))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{tag}: {e:?}");
        node.node_stage_volume(fs_stage_req(v, &s, Mode::MultiNodeReaderOnly))
            .await
            .unwrap();
        let mut p = fs_publish_req(v, &s, &t, Mode::MultiNodeReaderOnly);
        p.readonly = true;
        node.node_publish_volume(p).await.unwrap();
        assert_eq!(read(&s.join("data.txt")), "at snapshot time", "{tag}");
        assert_eq!(read(&t.join("data.txt")), "at snapshot time", "{tag}");
        assert!(
            std::fs::write(s.join("new.txt"), b"x").is_err(),
            "{tag}: the staged snapshot is writable"
        );
        node.node_unpublish_volume(unpublish_req(&v.volume_id, &t))
            .await
            .unwrap();
        node.node_unstage_volume(unstage_req(&v.volume_id, &s))
            .await
            .unwrap();
    }
    node.node_unpublish_volume(unpublish_req(&src.volume_id, &t0))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_req(&src.volume_id, &s0))
        .await
        .unwrap();
    ctl.delete_snapshot(fs_del_snap(&sid)).await.unwrap();
    ctl.delete_volume(fs_del(&own.volume_id)).await.unwrap();
    ctl.delete_volume(fs_del(&csi_id)).await.unwrap();
    assert_eq!(tracker(&sid), None);
    ctl.delete_volume(fs_del(&src.volume_id)).await.unwrap();
}

/// Adds a normal reference the way ceph-csi's Add does to an existing tracker.
fn cephcsi_tracker_add(snap_id: &str, key: &str) {
    let (count, _) = tracker(snap_id).expect("tracker");
    let io = meta();
    let name = tracker_name(snap_id);
    let (_, version) = io.xattr_versioned(&name, VERSION_XATTR, 4).unwrap();
    io.object_write(
        &name,
        &[
            rados::ObjectOp::AssertVersion(version),
            rados::ObjectOp::WriteFull(&(count + 1).to_be_bytes()),
            rados::ObjectOp::OmapSet(&[(key, &[1u8][..])]),
        ],
    )
    .unwrap();
}

#[tokio::test]
async fn a_backed_volume_clones_from_its_snapshot() {
    let d = fs_driver(true, None);
    let mut ctl = d.controller().await;
    let (src, _, snap) = source_and_snapshot(&d, "bk-clone").await;
    let sid = snap.snapshot_id.clone();
    let b = ctl
        .create_volume(backing_req(
            &unique("pvc-bk-src"),
            &sid,
            Mode::MultiNodeReaderOnly,
        ))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    // read-only again (another snapshot-backed volume from a volume): not a snapshot source
    let mut ro = from_volume(&unique("pvc-bk-ro"), 0, &b.volume_id);
    ro.parameters
        .insert("backingSnapshot".to_string(), "true".to_string());
    ro.volume_capabilities = vec![mount_cap(Mode::MultiNodeReaderOnly)];
    let e = ctl.create_volume(ro).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // a writable clone comes from the backing snapshot
    let (c, _) = create_until_ready(&d, from_volume(&unique("pvc-bk-rw"), 0, &b.volume_id)).await;
    let sub = c.volume_context["subvolumeName"].clone();
    assert!(sub_info(GROUP, &sub).is_some());
    assert_eq!(c.capacity_bytes, 8 * MIB);
    ctl.delete_volume(fs_del(&c.volume_id)).await.unwrap();
    ctl.delete_snapshot(fs_del_snap(&sid)).await.unwrap();
    ctl.delete_volume(fs_del(&b.volume_id)).await.unwrap();
    assert_eq!(tracker(&sid), None);
    ctl.delete_volume(fs_del(&src.volume_id)).await.unwrap();
}

/// Two controllers (separate processes, so no shared locks) add and drop references to one
/// tracker at the same time: every update lands (each write asserts the version it read).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_controllers_keep_the_count_exact() {
    let d = fs_driver(true, None);
    let (src, src_sub, snap) = source_and_snapshot(&d, "bk-race").await;
    let sid = snap.snapshot_id.clone();
    let (d1, d2) = (fs_driver(true, None), fs_driver(true, None));
    let (c1, c2) = (d1.controller().await, d2.controller().await);
    let make = |mut ctl: pb::controller_client::ControllerClient<_>, tag: &'static str| {
        let sid = sid.clone();
        async move {
            let mut ids = Vec::new();
            for i in 0..5 {
                let name = unique(&format!("pvc-bk-{tag}{i}"));
                let v = ctl
                    .create_volume(backing_req(&name, &sid, Mode::MultiNodeReaderOnly))
                    .await
                    .unwrap()
                    .into_inner()
                    .volume
                    .unwrap();
                ids.push(v.volume_id);
            }
            (ctl, ids)
        }
    };
    let ((c1, a), (c2, b)) = tokio::join!(make(c1, "a"), make(c2, "b"));
    let (count, held) = tracker(&sid).expect("tracker");
    assert_eq!(count, 11);
    assert_eq!(held.len(), 11);

    let mut ctl = d.controller().await;
    ctl.delete_snapshot(fs_del_snap(&sid)).await.unwrap();
    let drop_all = |mut ctl: pb::controller_client::ControllerClient<_>, ids: Vec<String>| async move {
        for id in ids {
            ctl.delete_volume(fs_del(&id)).await.unwrap();
        }
    };
    tokio::join!(drop_all(c1, a), drop_all(c2, b));
    assert_eq!(tracker(&sid), None);
    assert!(!snapshots(GROUP, &src_sub).contains(&snap_name(&snap)));
    ctl.delete_volume(fs_del(&src.volume_id)).await.unwrap();
}

#[tokio::test]
async fn a_deleted_snapshot_is_not_handed_out_again_by_name() {
    let d = fs_driver(true, None);
    let mut ctl = d.controller().await;
    let src = ctl
        .create_volume(fs_create(&unique("pvc-bk-name"), 8 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let sname = unique("snap-bk-name");
    let snap = ctl
        .create_snapshot(fs_snap_req(&sname, &src.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    let sid = snap.snapshot_id.clone();
    let v = ctl
        .create_volume(backing_req(
            &unique("pvc-bk-n"),
            &sid,
            Mode::MultiNodeReaderOnly,
        ))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    ctl.delete_snapshot(fs_del_snap(&sid)).await.unwrap();
    let e = ctl
        .create_snapshot(fs_snap_req(&sname, &src.volume_id))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    ctl.delete_volume(fs_del(&v.volume_id)).await.unwrap();
    assert_eq!(tracker(&sid), None);
    // once gone, the name makes a new snapshot
    let again = ctl
        .create_snapshot(fs_snap_req(&sname, &src.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_ne!(again.snapshot_id, sid);
    ctl.delete_snapshot(fs_del_snap(&again.snapshot_id))
        .await
        .unwrap();
    ctl.delete_volume(fs_del(&src.volume_id)).await.unwrap();
}
