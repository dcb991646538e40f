//! Controller RPCs that carry no secrets (ListVolumes, ListSnapshots, ControllerGetVolume,
//! GetCapacity) answer after a restart from `--controllersecrets`, not from the memory of an
//! earlier call; ListVolumes reports each volume's condition; pagination tokens survive
//! entries that go between pages.

mod common;

use common::*;
use csi::v1 as pb;
use std::collections::HashMap;

/// An RBD controller with its own journal instance (so its listings hold only this test's
/// volumes) and the provisioner secret mounted as files.
fn controller(secrets_dir: Option<&std::path::Path>) -> (Driver, String) {
    let instance = unique("ctlmem");
    let mut args = vec![
        "--type=rbd".to_string(),
        "--controllerserver=true".to_string(),
        format!("--instanceid={instance}"),
    ];
    if let Some(d) = secrets_dir {
        args.push(format!("--controllersecrets={}", d.display()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (Driver::start(&args, &[]), instance)
}

fn secret_files(dir: &std::path::Path) {
    for (k, v) in cluster().rbd_secrets() {
        std::fs::write(dir.join(k), v).unwrap();
    }
}

async fn list_all(d: &Driver, max: i32) -> Vec<pb::list_volumes_response::Entry> {
    let mut ctl = d.controller().await;
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let r = ctl
            .list_volumes(pb::ListVolumesRequest {
                max_entries: max,
                starting_token: token.clone(),
            })
            .await
            .expect("ListVolumes")
            .into_inner();
        out.extend(r.entries);
        if r.next_token.is_empty() {
            return out;
        }
        token = r.next_token;
    }
}

fn ids(entries: &[pb::list_volumes_response::Entry]) -> Vec<String> {
    entries
        .iter()
        .filter_map(|e| e.volume.as_ref().map(|v| v.volume_id.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn secretless_rpcs_answer_after_a_restart_from_configured_secrets() {
    let dir = tempfile::tempdir().unwrap();
    secret_files(dir.path());
    let (mut d, _) = controller(Some(dir.path()));
    let mut ctl = d.controller().await;
    let mut made = Vec::new();
    for i in 0..3 {
        let v = ctl
            .create_volume(create_req(&unique(&format!("ctlmem-{i}")), 8 * MIB))
            .await
            .expect("CreateVolume")
            .into_inner()
            .volume
            .unwrap();
        made.push(v.volume_id);
    }
    made.sort();
    let snap = ctl
        .create_snapshot(snap_req(&unique("ctlmem-snap"), &made[0]))
        .await
        .expect("CreateSnapshot")
        .into_inner()
        .snapshot
        .unwrap();

    // A restart forgets every secret a call carried.
    d.kill();
    d.spawn();
    let mut ctl = d.controller().await;

    let listed = list_all(&d, 0).await;
    assert_eq!(ids(&listed), made, "ListVolumes after a restart");
    for e in &listed {
        let cond = e
            .status
            .as_ref()
            .and_then(|s| s.volume_condition.as_ref())
            .expect("volume_condition is advertised, so every entry carries one");
        assert!(!cond.abnormal, "{cond:?}");
    }

    let got = ctl
        .controller_get_volume(pb::ControllerGetVolumeRequest {
            volume_id: made[1].clone(),
        })
        .await
        .expect("ControllerGetVolume after a restart")
        .into_inner();
    assert_eq!(got.volume.unwrap().capacity_bytes, 8 * MIB);

    // The external-snapshotter looks up pre-provisioned snapshots by id, without secrets.
    let by_id = ctl
        .list_snapshots(pb::ListSnapshotsRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .expect("ListSnapshots by id")
        .into_inner();
    assert_eq!(by_id.entries.len(), 1);
    let found = by_id.entries[0].snapshot.as_ref().unwrap();
    assert_eq!(found.source_volume_id, made[0]);
    let all = ctl
        .list_snapshots(pb::ListSnapshotsRequest::default())
        .await
        .expect("ListSnapshots")
        .into_inner();
    assert!(all
        .entries
        .iter()
        .any(|e| e.snapshot.as_ref().unwrap().snapshot_id == snap.snapshot_id));

    let pool = cluster().get("FERRO_RBD_POOL");
    let cap = |extra: &[(&str, &str)]| {
        let mut p = HashMap::from([
            ("clusterID".to_string(), cluster().fsid()),
            ("pool".to_string(), pool.clone()),
        ]);
        for (k, v) in extra {
            p.insert(k.to_string(), v.to_string());
        }
        pb::GetCapacityRequest {
            parameters: p,
            ..Default::default()
        }
    };
    let avail = ctl
        .get_capacity(cap(&[]))
        .await
        .expect("GetCapacity after a restart")
        .into_inner()
        .available_capacity;
    assert!(avail > 0, "the pool has free space: {avail}");
    // dataPool is where the data goes, so it is the pool GetCapacity reports on.
    let e = ctl
        .get_capacity(cap(&[("dataPool", "no-such-data-pool")]))
        .await
        .expect_err("a missing dataPool is reported");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("no-such-data-pool"), "{}", e.message());
    let with_data_pool = ctl
        .get_capacity(cap(&[("dataPool", &pool)]))
        .await
        .expect("GetCapacity with dataPool")
        .into_inner()
        .available_capacity;
    assert!(with_data_pool > 0);

    ctl.delete_snapshot(del_snap_req(&snap.snapshot_id))
        .await
        .expect("DeleteSnapshot");
    for id in &made {
        ctl.delete_volume(del_req(id)).await.expect("DeleteVolume");
    }
    assert!(list_all(&d, 0).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_skip_nothing_when_volumes_go_between_pages() {
    let dir = tempfile::tempdir().unwrap();
    secret_files(dir.path());
    let (d, _) = controller(Some(dir.path()));
    let mut ctl = d.controller().await;
    let mut made = Vec::new();
    for i in 0..5 {
        let v = ctl
            .create_volume(create_req(&unique(&format!("ctlpage-{i}")), 4 * MIB))
            .await
            .expect("CreateVolume")
            .into_inner()
            .volume
            .unwrap();
        made.push(v.volume_id);
    }
    made.sort();
    let first = ctl
        .list_volumes(pb::ListVolumesRequest {
            max_entries: 2,
            starting_token: String::new(),
        })
        .await
        .expect("ListVolumes")
        .into_inner();
    assert_eq!(ids(&first.entries), made[..2]);
    assert!(!first.next_token.is_empty());
    // The first page's volumes are deleted before the next page is asked for.
    for id in &made[..2] {
        ctl.delete_volume(del_req(id)).await.expect("DeleteVolume");
    }
    let mut rest = Vec::new();
    let mut token = first.next_token;
    while !token.is_empty() {
        let r = ctl
            .list_volumes(pb::ListVolumesRequest {
                max_entries: 2,
                starting_token: token,
            })
            .await
            .expect("ListVolumes with a token")
            .into_inner();
        rest.extend(ids(&r.entries));
        token = r.next_token;
    }
    assert_eq!(rest, made[2..], "no volume was skipped");

    let bad = ctl
        .list_volumes(pb::ListVolumesRequest {
            max_entries: 2,
            starting_token: "not-a-token".into(),
        })
        .await
        .expect_err("a token that is not ours");
    assert_eq!(bad.code(), tonic::Code::Aborted);

    // An image removed behind the driver's back shows as an abnormal volume.
    let victim = &made[4];
    let image = format!("csi-vol-{}", uuid_of(victim));
    let (ok, out) = admin_cli("rbd", &["rm", &format!("rbd/{image}")]);
    assert!(ok, "rbd rm: {out}");
    let listed = list_all(&d, 0).await;
    let entry = listed
        .iter()
        .find(|e| e.volume.as_ref().unwrap().volume_id == *victim)
        .expect("the volume is still in the journal");
    let cond = entry
        .status
        .as_ref()
        .unwrap()
        .volume_condition
        .as_ref()
        .unwrap();
    assert!(cond.abnormal, "{cond:?}");
    assert!(cond.message.contains(&uuid_of(victim)), "{}", cond.message);

    for id in &made[2..] {
        ctl.delete_volume(del_req(id)).await.expect("DeleteVolume");
    }
    assert!(list_all(&d, 0).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_configured_secrets_a_restarted_controller_says_how_to_fix() {
    let (mut d, _) = controller(None);
    let mut ctl = d.controller().await;
    let v = ctl
        .create_volume(create_req(&unique("ctlmem-nosecrets"), 4 * MIB))
        .await
        .expect("CreateVolume")
        .into_inner()
        .volume
        .unwrap();
    d.kill();
    d.spawn();
    let mut ctl = d.controller().await;
    let e = ctl
        .controller_get_volume(pb::ControllerGetVolumeRequest {
            volume_id: v.volume_id.clone(),
        })
        .await
        .expect_err("no credentials are known after a restart");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("--controllersecrets"),
        "{}",
        e.message()
    );
    ctl.delete_volume(del_req(&v.volume_id))
        .await
        .expect("DeleteVolume");
    // The delete carried secrets: they are known again.
    let listed = list_all(&d, 0).await;
    assert!(ids(&listed).is_empty(), "{listed:?}");
}
