//! RBD controller against the real dev cluster: crashes at every step of CreateVolume,
//! CreateSnapshot and the deletes converge, and a leftover image another client holds open
//! is fenced.

mod common;
use common::rbd_controller::*;
use common::*;
use csi::v1 as pb;
use rados::rbd::Image;
use std::time::Duration;
use tonic::Code;

/// A create crashes after making the image, and some other client (a stuck or dead driver
/// instance whose watch Ceph keeps) still has that never-handed-out image open: the retry
/// fences that client, remakes the image and leaves exactly one.
#[tokio::test]
async fn crash_leftover_image_held_open_by_another_client_is_fenced() {
    let name = unique("pvc-fence");
    let mut req = create_req(&name, 8 * MIB);
    req.parameters
        .insert("imageFeatures".into(), "layering".into());
    let mut d = Driver::start(
        &["--type=rbd", "--controllerserver=true"],
        &[("FERROCEPH_TEST_CRASH_AT", "create.image")],
    );
    let mut ctl = d.controller().await;
    assert!(ctl.create_volume(req.clone()).await.is_err());
    assert!(d.wait_exit(Duration::from_secs(10)).is_some());
    // the stuck client: its own connection, holding the unfinished image open read-write
    let holder = admin();
    let holder_id = holder.instance_id();
    let io = holder.ioctx("rbd", "").unwrap();
    let key = format!("csi.volume.{name}");
    let got = io.omap_get("csi.volumes.default", &[key.as_str()]).unwrap();
    let uuid = String::from_utf8(got.get(&key).expect("directory key left").clone()).unwrap();
    let held = Image::open(&io, &format!("csi-vol-{uuid}")).expect("open the unfinished image");
    let holder_addr = held
        .watchers()
        .unwrap()
        .into_iter()
        .find(|w| w.id as u64 == holder_id)
        .expect("the holder watches the image")
        .addr;

    d.envs.clear();
    d.spawn();
    let mut ctl = d.controller().await;
    let v = ctl
        .create_volume(req.clone())
        .await
        .expect("the retry fences the holder and finishes")
        .into_inner()
        .volume
        .unwrap();
    let mine: Vec<String> = images()
        .into_iter()
        .filter(|i| i.contains(&uuid_of(&v.volume_id)))
        .collect();
    assert_eq!(mine.len(), 1, "{mine:?}");
    let log = std::fs::read_to_string(&d.log).unwrap_or_default();
    assert!(
        log.contains(&format!("client={holder_id}")) && log.contains("fenced"),
        "the log names the fenced client: {log}"
    );
    let (_, list) = admin_cli("ceph", &["osd", "blocklist", "ls"]);
    assert!(list.contains(&holder_addr), "{holder_addr} not in {list}");
    let _ = admin_cli("ceph", &["osd", "blocklist", "rm", &holder_addr]);
    drop(held);
    drop(holder);
    ctl.delete_volume(del_req(&v.volume_id))
        .await
        .expect("delete");
}

/// Kills the driver at each step of each flow, restarts it and retries: the retry must
/// finish the work and leave exactly the intended objects.
#[tokio::test]
async fn crash_at_every_step_converges() {
    // the killed drivers' watches pin their images until the OSD drops them
    let _watch = WatchTimeout::set(10);
    let (v, name, extra) = crash_during_creates().await;
    let (snap_id, sname) = crash_during_snapshots(&v).await;

    // the temporary snapshot on the source is gone (or parked in Ceph's trash namespace)
    let (_, snaps) = admin_cli(
        "rbd",
        &["snap", "ls", "--all", &format!("rbd/{}", image_name(&v))],
    );
    assert!(!snaps.contains(" user "), "{snaps}");
    {
        let d = Driver::rbd();
        let mut ctl = d.controller().await;
        for id in &extra {
            ctl.delete_volume(del_req(id)).await.unwrap();
        }
    }

    // clone flow; the driver that finished the clone stays up until the end
    let (cname, clone, _clone_driver) = crash_during_clone(&v).await;

    // delete flows
    for (point, id, is_snap) in [
        ("delete.trashed", clone.volume_id.clone(), false),
        ("delete.released", v.volume_id.clone(), false),
        ("delete.trashed", snap_id.clone(), true),
    ] {
        crash_during_delete(point, &id, is_snap).await;
    }

    // Images a dead client still watched could not leave the trash at once; the reaper
    // removes them once Ceph has expired the watch.
    let d = Driver::start(
        &["--type=rbd", "--controllerserver=true", "--reapinterval=2s"],
        &[],
    );
    let mut ctl = d.controller().await;
    ctl.delete_volume(del_req(&v.volume_id)).await.unwrap();
    let ours = [
        uuid_of(&v.volume_id),
        uuid_of(&clone.volume_id),
        uuid_of(&snap_id),
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (_, trash) = admin_cli("rbd", &["trash", "ls", "-p", "rbd", "--all", "--long"]);
        let left: Vec<_> = ours.iter().filter(|u| trash.contains(u.as_str())).collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left:?} left in trash: {trash}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    for u in &ours {
        assert!(
            !images().iter().any(|i| i.contains(u.as_str())),
            "image {u} leaked"
        );
        assert!(
            !object_exists(&format!("csi.volume.{u}")) && !object_exists(&format!("csi.snap.{u}")),
            "journal {u} leaked"
        );
    }
    assert!(!journal_has(&name) && !journal_has(&cname) && !snap_journal_has(&sname));
}

/// A CreateVolume request without exclusive-lock: a killed process's lock would stall the
/// retry until the OSD expires its watch (30 s), which is Ceph's behaviour, not ours.
fn crash_create_req(name: &str, size: i64) -> pb::CreateVolumeRequest {
    let mut r = common::create_req(name, size);
    r.parameters
        .insert("imageFeatures".into(), "layering,deep-flatten".into());
    r
}

/// Crashes CreateVolume at each of its steps; every retry finishes with one image. Returns
/// the last volume, its name, and the volumes of the earlier rounds.
async fn crash_during_creates() -> (pb::Volume, String, Vec<String>) {
    let create_req = crash_create_req;
    let mut extra: Vec<String> = Vec::new();
    let mut v: Option<pb::Volume> = None;
    let mut name = String::new();
    for point in [
        "create.claimed",
        "create.image_made",
        "create.image",
        "create.recorded",
    ] {
        name = unique("pvc-crash");
        let mut d = Driver::start(
            &["--type=rbd", "--controllerserver=true"],
            &[("FERROCEPH_TEST_CRASH_AT", point)],
        );
        let mut ctl = d.controller().await;
        assert!(ctl.create_volume(create_req(&name, 8 * MIB)).await.is_err());
        assert!(
            d.wait_exit(Duration::from_secs(10)).is_some(),
            "crash point {point} not reached"
        );
        d.envs.clear();
        d.spawn();
        let mut ctl = d.controller().await;
        let got = ctl
            .create_volume(create_req(&name, 8 * MIB))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        let again = ctl
            .create_volume(create_req(&name, 8 * MIB))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(got.volume_id, again.volume_id, "after {point}");
        assert_eq!(
            images()
                .iter()
                .filter(|i| i.contains(&uuid_of(&got.volume_id)))
                .count(),
            1,
            "after {point}"
        );
        if let Some(prev) = v.replace(got) {
            extra.push(prev.volume_id);
        }
    }
    let v = v.unwrap();
    (v, name, extra)
}

/// Crashes CreateSnapshot of `v` at each of its steps; every retry finishes with one
/// snapshot. Returns the last snapshot's id and name.
async fn crash_during_snapshots(v: &pb::Volume) -> (String, String) {
    let mut snap_id = String::new();
    let mut sname = String::new();
    for point in [
        "snapshot.reserved",
        "snapshot.tempsnap",
        "snapshot.cloned",
        "snapshot.recorded",
    ] {
        sname = unique("snap-crash");
        let mut d = Driver::start(
            &["--type=rbd", "--controllerserver=true"],
            &[("FERROCEPH_TEST_CRASH_AT", point)],
        );
        let mut ctl = d.controller().await;
        assert!(ctl
            .create_snapshot(snap_req(&sname, &v.volume_id))
            .await
            .is_err());
        assert!(
            d.wait_exit(Duration::from_secs(10)).is_some(),
            "crash point {point} not reached"
        );
        d.envs.clear();
        d.spawn();
        let mut ctl = d.controller().await;
        let s = ctl
            .create_snapshot(snap_req(&sname, &v.volume_id))
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        let s2 = ctl
            .create_snapshot(snap_req(&sname, &v.volume_id))
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        assert_eq!(s.snapshot_id, s2.snapshot_id);
        if !snap_id.is_empty() {
            ctl.delete_snapshot(del_snap_req(&snap_id)).await.unwrap();
        }
        snap_id = s.snapshot_id;
    }
    (snap_id, sname)
}

/// Crashes a clone of `v` at its temporary snapshot; the retry makes the clone. Returns
/// the clone's name, the clone and the driver that made it.
async fn crash_during_clone(v: &pb::Volume) -> (String, pb::Volume, Driver) {
    let create_req = crash_create_req;
    let cname = unique("pvc-crash-clone");
    let mut creq = create_req(&cname, 8 * MIB);
    creq.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Volume(
            pb::volume_content_source::VolumeSource {
                volume_id: v.volume_id.clone(),
            },
        )),
    });
    let mut d = Driver::start(
        &["--type=rbd", "--controllerserver=true"],
        &[("FERROCEPH_TEST_CRASH_AT", "clone.tempsnap")],
    );
    let mut ctl = d.controller().await;
    let _ = ctl.create_volume(creq.clone()).await;
    let _ = d.wait_exit(Duration::from_secs(10));
    d.envs.clear();
    d.spawn();
    let mut ctl = d.controller().await;
    let clone = ctl
        .create_volume(creq)
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    (cname, clone, d)
}

/// Crashes the delete of `id` (a snapshot if `is_snap`) at `point`; the retry deletes it.
async fn crash_during_delete(point: &str, id: &str, is_snap: bool) {
    let mut d = Driver::start(
        &["--type=rbd", "--controllerserver=true"],
        &[("FERROCEPH_TEST_CRASH_AT", point)],
    );
    let mut ctl = d.controller().await;
    // Retry through the lingering watch of the previous killed process until the
    // crash point is reached.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let r = if is_snap {
            ctl.delete_snapshot(del_snap_req(id)).await.map(|_| ())
        } else {
            ctl.delete_volume(del_req(id)).await.map(|_| ())
        };
        if d.wait_exit(Duration::from_secs(2)).is_some() {
            break;
        }
        match r {
            Err(e)
                if e.code() == Code::FailedPrecondition && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_secs(2)).await
            }
            other => panic!("crash point {point} not reached: {other:?}"),
        }
    }
    d.envs.clear();
    d.spawn();
    let mut ctl = d.controller().await;
    // The killed process's watch on the image lingers until the OSD expires it (30 s);
    // until then DeleteVolume answers FailedPrecondition and the CO retries, as here.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let r = if is_snap {
            ctl.delete_snapshot(del_snap_req(id)).await.map(|_| ())
        } else {
            ctl.delete_volume(del_req(id)).await.map(|_| ())
        };
        match r {
            Ok(()) => break,
            Err(e)
                if e.code() == Code::FailedPrecondition && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_secs(2)).await
            }
            Err(e) => panic!("delete after crash at {point}: {e:?}"),
        }
    }
}
