//! RBD controller against the real dev cluster: ListVolumes and GetCapacity.

mod common;
use common::*;
use csi::v1 as pb;
use tonic::Code;

#[tokio::test]
async fn list_volumes_and_get_capacity() {
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
