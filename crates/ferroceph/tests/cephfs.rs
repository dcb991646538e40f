//! CephFS controller against the dev cluster's filesystem: the missing subvolume group,
//! validation, idempotency and concurrency of CreateVolume, and crashes between steps.
//! Node mounts are in cephfs_node.rs, snapshots and clones in cephfs_snapshots.rs,
//! snapshot-backed volumes in cephfs_backing.rs; helpers in common/cephfs.rs.

mod common;
use common::cephfs::*;
use common::*;
use csi::v1 as pb;
use pb::volume_capability::access_mode::Mode;
use serde_json::json;
use std::time::{Duration, Instant};
use tonic::Code;

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
    ctl.delete_volume(fs_del(&v.volume_id)).await.unwrap();
    assert!(sub_info(&group, &sub).is_none());
    mgr(json!({"prefix": "fs subvolumegroup rm", "group_name": group})).unwrap();
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
    let scratch = FsScratch::new("val");
    let mut req = fs_stage_req(&v, &scratch.path("s"), Mode::SingleNodeWriter);
    req.volume_capability = Some(block_cap(Mode::SingleNodeWriter));
    assert_eq!(
        node.node_stage_volume(req).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let mut req = fs_stage_req(&v, &scratch.path("s"), Mode::SingleNodeWriter);
    req.staging_target_path = "relative/path".into();
    assert_eq!(
        node.node_stage_volume(req).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let e = node
        .node_publish_volume(fs_publish_req(
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

    ctl.delete_volume(fs_del(&v.volume_id)).await.unwrap();
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
            .create_snapshot(fs_snap_req(&sname, &src.volume_id))
            .await
            .is_err());
        assert!(d.wait_exit(Duration::from_secs(20)).is_some(), "{point}");
        d.envs.clear();
        d.spawn();
        let mut ctl = d.controller().await;
        let s = ctl
            .create_snapshot(fs_snap_req(&sname, &src.volume_id))
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        let s2 = ctl
            .create_snapshot(fs_snap_req(&sname, &src.volume_id))
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
        .delete_snapshot(fs_del_snap(&snaps[0].snapshot_id))
        .await
        .is_err());
    assert!(d.wait_exit(Duration::from_secs(20)).is_some());
    d.envs.clear();
    d.spawn();
    let mut ctl = d.controller().await;
    ctl.delete_snapshot(fs_del_snap(&snaps[0].snapshot_id))
        .await
        .unwrap();
    ctl.delete_snapshot(fs_del_snap(&snaps[1].snapshot_id))
        .await
        .unwrap();
    assert!(journal_keys("csi.snaps.default")
        .iter()
        .all(|k| !snaps.iter().any(|s| k.contains(&uuid_of(&s.snapshot_id)))));
    let mut d = crash_driver("cephfs.delete.removed");
    let mut ctl = d.controller().await;
    assert!(ctl
        .delete_volume(fs_del(&clones[0].volume_id))
        .await
        .is_err());
    assert!(d.wait_exit(Duration::from_secs(20)).is_some());
    assert!(!journal_keys(&format!("csi.volume.{}", uuid_of(&clones[0].volume_id))).is_empty());
    d.envs.clear();
    d.spawn();
    let mut ctl = d.controller().await;
    for v in clones.iter().chain(made.iter()) {
        ctl.delete_volume(fs_del(&v.volume_id)).await.unwrap();
        assert!(journal_keys(&format!("csi.volume.{}", uuid_of(&v.volume_id))).is_empty());
        assert!(sub_info(GROUP, &v.volume_context["subvolumeName"]).is_none());
    }
    eprintln!("crash test: {:?}", t0.elapsed());
}
