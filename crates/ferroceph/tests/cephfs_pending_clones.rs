//! DeleteSnapshot of a CephFS snapshot that a clone is still being made from. A test binary
//! of its own: it delays every clone of the cluster's mgr (mgr/volumes/snapshot_clone_delay)
//! while it runs, which the other clone tests must not see.

mod common;
use common::cephfs::*;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tonic::Code;

const DELAY: &str = "mgr/volumes/snapshot_clone_delay";

/// Sets the mgr's clone delay; back to the default when dropped, even on a failed assert.
struct CloneDelay;

impl CloneDelay {
    fn set(secs: u32) -> CloneDelay {
        let (ok, out) = admin_cli("ceph", &["config", "set", "mgr", DELAY, &secs.to_string()]);
        assert!(ok, "ceph config set {DELAY}: {out}");
        CloneDelay
    }
}

impl Drop for CloneDelay {
    fn drop(&mut self) {
        // `config rm` would not reach the running volumes module: it keeps the last value
        let _ = admin_cli("ceph", &["config", "set", "mgr", DELAY, "0"]);
    }
}

fn clone_state(clone: &str) -> String {
    mgr(json!({"prefix": "fs clone status", "clone_name": clone, "group_name": GROUP}))
        .unwrap_or(Value::Null)["status"]["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// The spec's code for a snapshot in use is FailedPrecondition, and the snapshot stays.
/// The mgr holds the clone back for 10 s, so it is pending when the driver is asked; once
/// it has finished the same DeleteSnapshot succeeds.
#[tokio::test]
async fn delete_snapshot_with_pending_clones_is_failed_precondition() {
    let d = fs_driver(true, None);
    let mut ctl = d.controller().await;
    let src = ctl
        .create_volume(fs_create(&unique("pvc-fs-pending"), 16 * MIB))
        .await
        .expect("source")
        .into_inner()
        .volume
        .unwrap();
    let sub = src.volume_context["subvolumeName"].clone();
    let snap = ctl
        .create_snapshot(fs_snap_req(&unique("snap-fs-pending"), &src.volume_id))
        .await
        .expect("snapshot")
        .into_inner()
        .snapshot
        .unwrap();
    let snap_name = format!("csi-snap-{}", uuid_of(&snap.snapshot_id));
    let clone = format!("pending-clone-{}", uuid_of(&snap.snapshot_id));

    let delay = CloneDelay::set(10);
    mgr(
        json!({"prefix": "fs subvolume snapshot clone", "sub_name": sub,
        "group_name": GROUP, "snap_name": snap_name, "target_sub_name": clone,
        "target_group_name": GROUP}),
    )
    .expect("start a clone");
    let state = clone_state(&clone);
    assert!(
        state == "pending" || state == "in-progress",
        "the delayed clone is {state:?}"
    );
    let first = ctl.delete_snapshot(fs_del_snap(&snap.snapshot_id)).await;
    let kept = snapshots(GROUP, &sub).contains(&snap_name);
    let still = clone_state(&clone);
    drop(delay);

    // clean up: the clone starts after the delay and finishes; then it and the snapshot go
    // (cancelling would not be quicker: the mgr answers a cancel once the delay is over)
    let deadline = Instant::now() + Duration::from_secs(120);
    while matches!(clone_state(&clone).as_str(), "pending" | "in-progress")
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = mgr(
        json!({"prefix": "fs subvolume rm", "sub_name": clone, "group_name": GROUP, "force": true}),
    );
    ctl.delete_snapshot(fs_del_snap(&snap.snapshot_id))
        .await
        .expect("delete the snapshot once the clone is done");
    ctl.delete_volume(fs_del(&src.volume_id))
        .await
        .expect("delete source");

    assert!(
        still == "pending" || still == "in-progress",
        "the clone finished before the driver was asked ({still:?}): raise the delay"
    );
    let e = first.expect_err("the snapshot was deleted while a clone was pending");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(kept, "the snapshot is gone");
}
