//! Ceph outages against the SHARED dev cluster: a daemon is stopped while the driver works.
//! These tests stop daemons other tests need, so they are `#[ignore]`d in the normal
//! parallel run; scripts/test.sh runs them alone afterwards:
//! `cargo test -p ferroceph --test outage -- --ignored --test-threads=1`.
//! Every test restores the cluster (`scripts/dev-cluster.sh up`) when it ends, also on panic.

mod common;
use common::*;
use csi::v1 as pb;
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::Code;

type Ctl = pb::controller_client::ControllerClient<Channel>;

const CEPH_TIMEOUT: Duration = Duration::from_secs(3);
const RPC_TIMEOUT: Duration = Duration::from_secs(15);
/// Allowed past a deadline: process scheduling on 2 busy cores, gRPC framing.
const SLACK: Duration = Duration::from_secs(5);

fn dev_cluster(args: &[&str]) {
    let out = Command::new(workspace().join("scripts/dev-cluster.sh"))
        .args(args)
        .output()
        .expect("run scripts/dev-cluster.sh");
    assert!(
        out.status.success(),
        "dev-cluster.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Stops one daemon; brings the whole cluster back when dropped (also on panic).
struct Outage(&'static str);

impl Outage {
    fn start(daemon: &'static str) -> Outage {
        cluster(); // read the env while everything is up
        let o = Outage(daemon);
        dev_cluster(&["stop", daemon]);
        o
    }
    fn end(self) {
        // Drop does the work.
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        let out = Command::new(workspace().join("scripts/dev-cluster.sh"))
            .arg("up")
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "restoring the cluster after stopping {}: {}",
                self.0,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("restoring the cluster after stopping {}: {e}", self.0),
        }
    }
}

fn vol_req(name: &str) -> pb::CreateVolumeRequest {
    let mut r = create_req(name, 8 * MIB);
    // no exclusive-lock: a request abandoned by a timeout must not leave a lock behind
    r.parameters
        .insert("imageFeatures".into(), "layering,deep-flatten".into());
    r
}

fn driver(extra: &[&str]) -> Driver {
    let ct = format!("--cephtimeout={}s", CEPH_TIMEOUT.as_secs());
    let rt = format!("--rpctimeout={}s", RPC_TIMEOUT.as_secs());
    let mut args = vec![
        "--type=rbd",
        "--controllerserver=true",
        "--reapinterval=2s",
        ct.as_str(),
        rt.as_str(),
    ];
    args.extend_from_slice(extra);
    Driver::start(&args, &[])
}

/// An RPC's outcome during an outage: it must come back in time with a code a CO retries
/// and a message that says what it waited for.
fn check_outage_error<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, tonic::Status>,
    took: Duration,
    limit: Duration,
    words: &[&str],
) {
    assert!(
        took <= limit + SLACK,
        "{what} took {took:?}, deadline {limit:?}"
    );
    let e = match r {
        Ok(v) => panic!("{what} succeeded during the outage: {v:?}"),
        Err(e) => e,
    };
    assert!(
        matches!(e.code(), Code::Unavailable | Code::DeadlineExceeded),
        "{what}: {e:?}"
    );
    let m = e.message().to_lowercase();
    assert!(
        m.trim() != "deadline exceeded" && words.iter().any(|w| m.contains(w)),
        "{what}: the message does not say what it waited for: {}",
        e.message()
    );
    eprintln!("{what}: {:?} after {took:?}: {}", e.code(), e.message());
}

/// Retries an RPC (as a CO does) until it succeeds.
async fn until_ok<T, F, Fut>(what: &str, ctl: &Ctl, mut f: F) -> T
where
    F: FnMut(Ctl) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match f(ctl.clone()).await {
            Ok(r) => return r.into_inner(),
            Err(e)
                if matches!(
                    e.code(),
                    Code::Unavailable
                        | Code::DeadlineExceeded
                        | Code::Aborted
                        | Code::FailedPrecondition
                ) && Instant::now() < deadline =>
            {
                eprintln!("{what}: retrying after {:?}: {}", e.code(), e.message());
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => panic!("{what} after the outage: {e:?}"),
        }
    }
}

async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let t = Instant::now();
    let r = f.await;
    (r, t.elapsed())
}

/// No image, trash entry or journal object of these uuids is left (waits for the reaper).
async fn assert_no_leak(uuids: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, trash) = admin_cli("rbd", &["trash", "ls", "-p", "rbd", "--all", "--long"]);
        let imgs = images();
        let left: Vec<&String> = uuids
            .iter()
            .filter(|u| {
                trash.contains(u.as_str())
                    || imgs.iter().any(|i| i.contains(u.as_str()))
                    || object_exists(&format!("csi.volume.{u}"))
                    || object_exists(&format!("csi.snap.{u}"))
            })
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "leaked: {left:?} (trash: {trash})"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The OSD stops while creates, deletes and snapshots run: each answers within its
/// deadline with Unavailable/DeadlineExceeded naming the OSDs; after the OSD is back the
/// retries succeed, and nothing leaks or stays locked.
#[tokio::test]
#[ignore = "stops the shared cluster's OSD: run alone (scripts/test.sh does)"]
async fn osd_outage_during_controller_traffic() {
    let d = driver(&[]);
    let mut ctl: Ctl = d.controller().await;
    let to_delete = unique("pvc-out-del");
    let to_snap = unique("pvc-out-src");
    let to_create = unique("pvc-out-new");
    let snap_name = unique("snap-out");
    let vdel = ctl
        .create_volume(vol_req(&to_delete))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let vsrc = ctl
        .create_volume(vol_req(&to_snap))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();

    let outage = Outage::start("osd");
    let words = ["osd"];
    let (c1, c2, c3) = (ctl.clone(), ctl.clone(), ctl.clone());
    let create = tokio::spawn({
        let mut c = c1;
        let n = to_create.clone();
        async move { timed(c.create_volume(vol_req(&n))).await }
    });
    let delete = tokio::spawn({
        let mut c = c2;
        let id = vdel.volume_id.clone();
        async move { timed(c.delete_volume(del_req(&id))).await }
    });
    let snap = tokio::spawn({
        let mut c = c3;
        let (n, id) = (snap_name.clone(), vsrc.volume_id.clone());
        async move { timed(c.create_snapshot(snap_req(&n, &id))).await }
    });
    let (r, t) = create.await.unwrap();
    check_outage_error("CreateVolume", r, t, RPC_TIMEOUT, &words);
    let (r, t) = delete.await.unwrap();
    check_outage_error("DeleteVolume", r, t, RPC_TIMEOUT, &words);
    let (r, t) = snap.await.unwrap();
    check_outage_error("CreateSnapshot", r, t, RPC_TIMEOUT, &words);
    // a retry while the OSD is still down: no lock is left from the first attempt, so
    // it waits for the cluster again rather than answering Aborted
    let (r, t) = timed(ctl.create_volume(vol_req(&to_create))).await;
    check_outage_error("CreateVolume (retry)", r, t, RPC_TIMEOUT, &words);

    outage.end();

    let created = until_ok("CreateVolume", &ctl, |mut c| {
        let r = vol_req(&to_create);
        async move { c.create_volume(r).await }
    })
    .await
    .volume
    .unwrap();
    until_ok("DeleteVolume", &ctl, |mut c| {
        let r = del_req(&vdel.volume_id);
        async move { c.delete_volume(r).await }
    })
    .await;
    let s = until_ok("CreateSnapshot", &ctl, |mut c| {
        let r = snap_req(&snap_name, &vsrc.volume_id);
        async move { c.create_snapshot(r).await }
    })
    .await
    .snapshot
    .unwrap();

    // no stuck lock: fresh calls answer at once, with the same results
    let again = ctl
        .create_volume(vol_req(&to_create))
        .await
        .expect("CreateVolume again")
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(again.volume_id, created.volume_id);
    let s2 = ctl
        .create_snapshot(snap_req(&snap_name, &vsrc.volume_id))
        .await
        .expect("CreateSnapshot again")
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(s2.snapshot_id, s.snapshot_id);
    ctl.delete_volume(del_req(&vdel.volume_id))
        .await
        .expect("DeleteVolume again");
    let cu = uuid_of(&created.volume_id);
    assert_eq!(images().iter().filter(|i| i.contains(&cu)).count(), 1);
    let du = uuid_of(&vdel.volume_id);
    assert!(!images().iter().any(|i| i.contains(&du)));

    // clean up, then nothing of this test is left
    until_ok("DeleteSnapshot", &ctl, |mut c| {
        let r = del_snap_req(&s.snapshot_id);
        async move { c.delete_snapshot(r).await }
    })
    .await;
    for id in [&created.volume_id, &vsrc.volume_id] {
        until_ok("DeleteVolume", &ctl, |mut c| {
            let r = del_req(id);
            async move { c.delete_volume(r).await }
        })
        .await;
    }
    assert_no_leak(&[cu, du, uuid_of(&vsrc.volume_id), uuid_of(&s.snapshot_id)]).await;
}

/// The monitor is down when the driver starts: Probe answers anyway, CreateVolume fails
/// within the Ceph timeout saying the monitors could not be reached, and once the monitor
/// is back the retry works.
#[tokio::test]
#[ignore = "stops the shared cluster's monitor: run alone (scripts/test.sh does)"]
async fn monitor_down_when_the_driver_starts() {
    let outage = Outage::start("mon");
    let d = driver(&[]);
    let (r, t) = timed(async {
        d.identity()
            .await
            .probe(pb::ProbeRequest {})
            .await
            .map(|r| r.into_inner())
    })
    .await;
    let probe = r.expect("Probe without a cluster");
    assert!(t < Duration::from_secs(2), "Probe took {t:?}");
    eprintln!("Probe with the monitor down: {probe:?} in {t:?}");

    let name = unique("pvc-out-mon");
    let mut ctl: Ctl = d.controller().await;
    let (r, t) = timed(ctl.create_volume(vol_req(&name))).await;
    check_outage_error("CreateVolume", r, t, CEPH_TIMEOUT, &["monitor quorum"]);

    outage.end();
    let v = until_ok("CreateVolume", &ctl, |mut c| {
        let r = vol_req(&name);
        async move { c.create_volume(r).await }
    })
    .await
    .volume
    .unwrap();
    let again = ctl
        .create_volume(vol_req(&name))
        .await
        .expect("CreateVolume again")
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(again.volume_id, v.volume_id);
    until_ok("DeleteVolume", &ctl, |mut c| {
        let r = del_req(&v.volume_id);
        async move { c.delete_volume(r).await }
    })
    .await;
    assert_no_leak(&[uuid_of(&v.volume_id)]).await;
}

fn fs_req(name: &str) -> pb::CreateVolumeRequest {
    let c = cluster();
    pb::CreateVolumeRequest {
        name: name.to_string(),
        capacity_range: Some(pb::CapacityRange {
            required_bytes: 8 * MIB,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_cap(
            pb::volume_capability::access_mode::Mode::MultiNodeMultiWriter,
        )],
        parameters: std::collections::HashMap::from([
            ("clusterID".to_string(), c.fsid()),
            ("fsName".to_string(), "cephfs".to_string()),
        ]),
        secrets: std::collections::HashMap::from([
            ("adminID".to_string(), c.get("FERRO_CEPHFS_USER")),
            ("adminKey".to_string(), c.get("FERRO_CEPHFS_KEY")),
        ]),
        ..Default::default()
    }
}

/// The MDS stops while a CephFS volume is created: the RPC answers within its deadline
/// naming what it waited for; after the MDS is back the retry creates the volume once.
#[tokio::test]
#[ignore = "stops the shared cluster's MDS: run alone (scripts/test.sh does)"]
async fn mds_outage_during_cephfs_create() {
    let ct = format!("--cephtimeout={}s", CEPH_TIMEOUT.as_secs());
    let rt = format!("--rpctimeout={}s", RPC_TIMEOUT.as_secs());
    let d = Driver::start(&["--type=cephfs", "--controllerserver=true", &ct, &rt], &[]);
    let mut ctl: Ctl = d.controller().await;
    // warm up: the subvolume group exists and the mgr's volumes module answers
    let warm = unique("pvc-out-fs-warm");
    let w = until_ok("CreateVolume (warm-up)", &ctl, |mut c| {
        let r = fs_req(&warm);
        async move { c.create_volume(r).await }
    })
    .await
    .volume
    .unwrap();

    let name = unique("pvc-out-fs");
    let outage = Outage::start("mds");
    let (r, t) = timed(ctl.create_volume(fs_req(&name))).await;
    check_outage_error(
        "CephFS CreateVolume",
        r,
        t,
        RPC_TIMEOUT,
        &["mds", "mgr", "metadata"],
    );
    outage.end();

    let v = until_ok("CephFS CreateVolume", &ctl, |mut c| {
        let r = fs_req(&name);
        async move { c.create_volume(r).await }
    })
    .await
    .volume
    .unwrap();
    let again = ctl
        .create_volume(fs_req(&name))
        .await
        .expect("CreateVolume again")
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(again.volume_id, v.volume_id);
    for id in [v.volume_id, w.volume_id] {
        until_ok("CephFS DeleteVolume", &ctl, |mut c| {
            let r = pb::DeleteVolumeRequest {
                volume_id: id.clone(),
                secrets: fs_req("x").secrets,
            };
            async move { c.delete_volume(r).await }
        })
        .await;
    }
}
