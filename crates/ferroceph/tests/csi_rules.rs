//! Rules the community conformance suite (csi-sanity) checks, each with the gRPC code the
//! CSI spec names, so CI holds them without the suite (a Go program built from fetched
//! sources, run by hand).

mod common;
use common::*;
use csi::v1 as pb;
use tonic::Code;

fn secrets() -> std::collections::HashMap<String, String> {
    cluster().rbd_secrets()
}

#[tokio::test]
async fn required_fields_answer_invalid_argument() {
    let d = Driver::rbd();
    let mut ctl = d.controller().await;
    let code = |r: Result<Code, Code>| r.err().unwrap_or(Code::Ok);
    assert_eq!(
        code(
            ctl.delete_volume(pb::DeleteVolumeRequest {
                volume_id: String::new(),
                secrets: secrets()
            })
            .await
            .map(|_| Code::Ok)
            .map_err(|e| e.code())
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            ctl.validate_volume_capabilities(pb::ValidateVolumeCapabilitiesRequest {
                volume_capabilities: vec![rwo()],
                ..Default::default()
            })
            .await
            .map(|_| Code::Ok)
            .map_err(|e| e.code())
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            ctl.validate_volume_capabilities(pb::ValidateVolumeCapabilitiesRequest {
                volume_id: "x".into(),
                ..Default::default()
            })
            .await
            .map(|_| Code::Ok)
            .map_err(|e| e.code())
        ),
        Code::InvalidArgument
    );
    let e = ctl
        .create_snapshot(pb::CreateSnapshotRequest {
            name: String::new(),
            source_volume_id: "x".into(),
            secrets: secrets(),
            parameters: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = ctl
        .create_snapshot(pb::CreateSnapshotRequest {
            name: unique("s"),
            source_volume_id: String::new(),
            secrets: secrets(),
            parameters: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = ctl
        .delete_snapshot(pb::DeleteSnapshotRequest {
            snapshot_id: String::new(),
            secrets: secrets(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = ctl
        .controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: String::new(),
            capacity_range: Some(pb::CapacityRange {
                required_bytes: MIB,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = ctl
        .controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: "x".into(),
            capacity_range: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // ids longer than 128 bytes
    let e = ctl
        .delete_volume(pb::DeleteVolumeRequest {
            volume_id: "x".repeat(129),
            secrets: secrets(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn unadvertised_rpcs_are_unimplemented_and_capabilities_match() {
    let d = Driver::rbd();
    let mut ctl = d.controller().await;
    let caps = ctl
        .controller_get_capabilities(pb::ControllerGetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let has = |t: pb::controller_service_capability::rpc::Type| {
        caps.capabilities.iter().any(|c| matches!(&c.r#type, Some(pb::controller_service_capability::Type::Rpc(r)) if r.r#type == t as i32))
    };
    use pb::controller_service_capability::rpc::Type as T;
    for t in [
        T::CreateDeleteVolume,
        T::CreateDeleteSnapshot,
        T::ListSnapshots,
        T::CloneVolume,
        T::ExpandVolume,
        T::ListVolumes,
        T::GetCapacity,
    ] {
        assert!(has(t), "{t:?} not advertised");
    }
    assert!(!has(T::PublishUnpublishVolume));
    let e = ctl
        .controller_publish_volume(pb::ControllerPublishVolumeRequest {
            volume_id: "x".into(),
            node_id: "n".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
}

#[tokio::test]
async fn snapshot_and_expand_idempotency_rules() {
    let d = Driver::rbd();
    let mut ctl = d.controller().await;
    let a = ctl
        .create_volume(create_req(&unique("pvc-rules-a"), 8 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let b = ctl
        .create_volume(create_req(&unique("pvc-rules-b"), 8 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let name = unique("snap-rules");
    let req = |src: &str| pb::CreateSnapshotRequest {
        name: name.clone(),
        source_volume_id: src.to_string(),
        secrets: secrets(),
        parameters: Default::default(),
    };
    let s = ctl
        .create_snapshot(req(&a.volume_id))
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    // same name, other source → AlreadyExists
    assert_eq!(
        ctl.create_snapshot(req(&b.volume_id))
            .await
            .unwrap_err()
            .code(),
        Code::AlreadyExists
    );
    // ListSnapshots: an unknown id gives an empty list; pagination works
    let fake = format!(
        "{}{}",
        &s.snapshot_id[..s.snapshot_id.len() - 36],
        "00000000-0000-0000-0000-000000000000"
    );
    let l = ctl
        .list_snapshots(pb::ListSnapshotsRequest {
            snapshot_id: fake,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(l.entries.is_empty());
    let l = ctl
        .list_snapshots(pb::ListSnapshotsRequest {
            snapshot_id: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(l.entries.is_empty());
    let l = ctl
        .list_snapshots(pb::ListSnapshotsRequest {
            max_entries: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l.entries.len(), 1);
    // expanding a missing volume → NotFound; expanding twice is idempotent
    let missing = format!(
        "{}{}",
        &a.volume_id[..a.volume_id.len() - 36],
        "00000000-0000-0000-0000-000000000000"
    );
    let e = ctl
        .controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: missing,
            capacity_range: Some(pb::CapacityRange {
                required_bytes: 16 * MIB,
                limit_bytes: 0,
            }),
            secrets: secrets(),
            volume_capability: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    for _ in 0..2 {
        let r = ctl
            .controller_expand_volume(pb::ControllerExpandVolumeRequest {
                volume_id: a.volume_id.clone(),
                capacity_range: Some(pb::CapacityRange {
                    required_bytes: 16 * MIB,
                    limit_bytes: 0,
                }),
                secrets: secrets(),
                volume_capability: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.capacity_bytes, 16 * MIB);
    }
    ctl.delete_snapshot(pb::DeleteSnapshotRequest {
        snapshot_id: s.snapshot_id,
        secrets: secrets(),
    })
    .await
    .unwrap();
    for v in [a, b] {
        ctl.delete_volume(del_req(&v.volume_id)).await.unwrap();
    }
}

/// csi-sanity's "should fail when volume is not found" and "... does not exist on the
/// specified path": a volume_path that cannot hold the volume (relative, or nothing there)
/// answers NotFound, for a real and for an unknown volume id; an empty one is still
/// InvalidArgument.
#[tokio::test]
async fn node_stats_and_expand_of_a_missing_volume_answer_not_found() {
    for kind in ["rbd", "cephfs"] {
        let d = Driver::start(
            &[
                &format!("--type={kind}"),
                "--nodeserver=true",
                "--nodeid=rules",
            ],
            &[],
        );
        let mut node = d.node().await;
        let real = format!(
            "0001-0024-{}-0000000000000001-00000000-0000-0000-0000-000000000001",
            cluster().fsid()
        );
        let missing = d.dir.path().join("no-such-volume");
        for vid in [real.as_str(), "fake-vol-id"] {
            for path in ["some/path", &missing.display().to_string()] {
                let e = node
                    .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
                        volume_id: vid.into(),
                        volume_path: path.into(),
                        staging_target_path: String::new(),
                    })
                    .await
                    .expect_err("stats of a missing volume");
                assert_eq!(e.code(), Code::NotFound, "{kind} stats {vid} {path}: {e:?}");
                if kind == "rbd" {
                    let e = node
                        .node_expand_volume(pb::NodeExpandVolumeRequest {
                            volume_id: vid.into(),
                            volume_path: path.into(),
                            ..Default::default()
                        })
                        .await
                        .expect_err("expansion of a missing volume");
                    assert_eq!(
                        e.code(),
                        Code::NotFound,
                        "{kind} expand {vid} {path}: {e:?}"
                    );
                }
            }
        }
        let e = node
            .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
                volume_id: real.clone(),
                volume_path: String::new(),
                staging_target_path: String::new(),
            })
            .await
            .expect_err("no path");
        assert_eq!(e.code(), Code::InvalidArgument, "{kind}: {e:?}");
    }
}
