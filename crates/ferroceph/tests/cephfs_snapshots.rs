//! CephFS snapshots and clones against the dev cluster's filesystem: snapshot, clone from
//! snapshot and volume, deleting a volume that has snapshots, snapshots ceph-csi made, and
//! clones that complete within the call (pending clones: cephfs_pending_clones.rs).

mod common;
use common::cephfs::*;
use common::*;
use csi::v1 as pb;
use pb::volume_capability::access_mode::Mode;
use serde_json::json;
use std::time::{Duration, Instant};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_clones_and_deleting_a_volume_with_snapshots() {
    let t0 = Instant::now();
    let d = fs_driver(true, Some("node-snap"));
    let scratch = FsScratch::new("snap");
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
    node.node_stage_volume(fs_stage_req(&src, &s0, Mode::SingleNodeWriter))
        .await
        .unwrap();
    node.node_publish_volume(fs_publish_req(&src, &s0, &t0p, Mode::SingleNodeWriter))
        .await
        .unwrap();
    write_file(&t0p.join("data.txt"), b"version 1");

    eprintln!("{:?} staged+published source", t0.elapsed());
    // snapshot (idempotent), then change the source
    let sname = unique("snap-fs");
    let snap = ctl
        .create_snapshot(fs_snap_req(&sname, &src.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert!(snap.ready_to_use);
    assert_eq!(snap.size_bytes, 16 * MIB);
    assert_eq!(snap.source_volume_id, src.volume_id);
    let snap2 = ctl
        .create_snapshot(fs_snap_req(&sname, &src.volume_id))
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
        node.node_stage_volume(fs_stage_req(v, &s, Mode::SingleNodeReaderOnly))
            .await
            .unwrap();
        node.node_publish_volume(fs_publish_req(v, &s, &t, Mode::SingleNodeReaderOnly))
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
    ctl.delete_volume(fs_del(&src.volume_id)).await.unwrap();
    assert_eq!(
        sub_info(GROUP, &src_sub).map(|i| i["state"].clone()),
        Some(json!("snapshot-retained"))
    );
    ctl.delete_volume(fs_del(&src.volume_id)).await.unwrap();
    let (late, _) = create_until_ready(
        &d,
        from_snapshot(&unique("pvc-fs-late"), 0, &snap.snapshot_id),
    )
    .await;
    ctl.delete_snapshot(fs_del_snap(&snap.snapshot_id))
        .await
        .unwrap();
    ctl.delete_snapshot(fs_del_snap(&snap.snapshot_id))
        .await
        .unwrap();
    assert!(sub_info(GROUP, &src_sub).is_none());
    assert!(!subvolumes(GROUP).contains(&src_sub));
    for v in [&restored, &cloned, &late] {
        ctl.delete_volume(fs_del(&v.volume_id)).await.unwrap();
    }
    assert_no_secrets(&d);
    eprintln!("snapshot test: {:?}", t0.elapsed());
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

    let created = ctl
        .create_snapshot(fs_snap_req(&name, &src.volume_id))
        .await;
    let listed = ctl
        .list_snapshots(pb::ListSnapshotsRequest {
            snapshot_id: sid.clone(),
            secrets: fs_secrets(),
            ..Default::default()
        })
        .await;
    ctl.delete_snapshot(fs_del_snap(&sid))
        .await
        .expect("delete snapshot");
    ctl.delete_volume(fs_del(&src.volume_id))
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
        .create_snapshot(fs_snap_req(&unique("snap-fs-1"), &src.volume_id))
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
        ctl.delete_volume(fs_del(&v.volume_id))
            .await
            .expect("DeleteVolume");
    }
    ctl.delete_snapshot(fs_del_snap(&snap.snapshot_id))
        .await
        .expect("DeleteSnapshot");
    ctl.delete_volume(fs_del(&src.volume_id))
        .await
        .expect("DeleteVolume");
}
