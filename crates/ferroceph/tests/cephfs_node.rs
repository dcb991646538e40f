//! CephFS node against the dev cluster's filesystem: RWX on two nodes with quotas,
//! expansion and stats, static volumes, and node plugin restarts.

mod common;
use common::cephfs::*;
use common::*;
use csi::v1 as pb;
use pb::volume_capability::access_mode::Mode;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rwx_on_two_nodes_quota_expansion_and_stats() {
    let t0 = Instant::now();
    let a = fs_driver(true, Some("node-a"));
    let b = fs_driver(false, Some("node-b"));
    let scratch = FsScratch::new("rwx");
    let mut ctl = a.controller().await;
    let name = unique("pvc-fs-rwx");
    let mut req = fs_create(&name, 16 * MIB);
    req.parameters
        .insert("csi.storage.k8s.io/pvc/namespace".into(), "team-a".into());
    req.parameters.insert("pool".into(), "cephfs_data".into());
    req.parameters.insert("mounter".into(), "fuse".into());
    let vol = ctl
        .create_volume(req.clone())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(vol.capacity_bytes, 16 * MIB);
    assert!(vol.volume_id.starts_with("0001-0024-"), "{}", vol.volume_id);
    // the location is the filesystem's fscid
    assert!(
        vol.volume_id.contains("-0000000000000001-"),
        "{}",
        vol.volume_id
    );
    let ctx = &vol.volume_context;
    let sub = ctx["subvolumeName"].clone();
    assert_eq!(sub, format!("csi-vol-{}", uuid_of(&vol.volume_id)));
    assert!(ctx["subvolumePath"].starts_with(&format!("/volumes/{GROUP}/{sub}/")));
    assert_eq!(ctx["fsName"], FS);
    assert_eq!(ctx["clusterID"], cluster().fsid());
    assert_eq!(ctx["pool"], "cephfs_data");
    assert_eq!(ctx["mounter"], "fuse");
    assert!(!ctx.keys().any(|k| k.starts_with("csi.storage.k8s.io/")));
    let info = sub_info(GROUP, &sub).expect("subvolume exists");
    assert_eq!(info["bytes_quota"].as_i64(), Some(16 * MIB));
    assert_eq!(info["data_pool"], "cephfs_data");
    assert!(journal_has(&name));
    assert!(
        journal_keys(&format!("csi.volume.{}", uuid_of(&vol.volume_id)))
            .contains(&"csi.volume.owner".to_string())
    );

    // idempotent; an incompatible size is AlreadyExists
    let again = ctl
        .create_volume(req.clone())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(again.volume_id, vol.volume_id);
    assert_eq!(again.volume_context, vol.volume_context);
    let mut bigger = req.clone();
    bigger.capacity_range = Some(pb::CapacityRange {
        required_bytes: 64 * MIB,
        limit_bytes: 0,
    });
    assert_eq!(
        ctl.create_volume(bigger).await.unwrap_err().code(),
        Code::AlreadyExists
    );

    // stage on two nodes at once, publish on both
    let (sa, sb) = (scratch.path("a/globalmount"), scratch.path("b/globalmount"));
    let (ta, tb) = (scratch.path("a/pod/mount"), scratch.path("b/pod/mount"));
    let mut na = a.node().await;
    let mut nb = b.node().await;
    let (ra, rb) = tokio::join!(
        na.node_stage_volume(fs_stage_req(&vol, &sa, Mode::MultiNodeMultiWriter)),
        nb.node_stage_volume(fs_stage_req(&vol, &sb, Mode::MultiNodeMultiWriter))
    );
    ra.unwrap();
    rb.unwrap();
    na.node_stage_volume(fs_stage_req(&vol, &sa, Mode::MultiNodeMultiWriter))
        .await
        .expect("stage is idempotent");
    let rec = record_of(&sa);
    assert_eq!(rec["mounter"], "fuse");
    assert_eq!(rec["volume_id"], vol.volume_id.as_str());
    let pid_a = rec["fuse_pid"].as_i64().expect("ceph-fuse pid recorded") as i32;
    let pid_b = record_of(&sb)["fuse_pid"].as_i64().unwrap() as i32;
    // the key is in no record, argument list or environment, and no key file is left
    for pid in [pid_a, pid_b] {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        for k in cluster().all_keys() {
            for blob in [&cmdline, &environ] {
                assert!(
                    !String::from_utf8_lossy(blob).contains(&k),
                    "key in ceph-fuse's argv/env"
                );
            }
        }
    }
    for k in cluster().all_keys() {
        assert!(!rec.to_string().contains(&k));
    }
    for d in [&a, &b] {
        let keys = d.dir.path().join("keys");
        let left = std::fs::read_dir(&keys).map(|r| r.count()).unwrap_or(0);
        assert_eq!(left, 0, "key files left in {}", keys.display());
    }
    na.node_publish_volume(fs_publish_req(&vol, &sa, &ta, Mode::MultiNodeMultiWriter))
        .await
        .unwrap();
    nb.node_publish_volume(fs_publish_req(&vol, &sb, &tb, Mode::MultiNodeMultiWriter))
        .await
        .unwrap();
    nb.node_publish_volume(fs_publish_req(&vol, &sb, &tb, Mode::MultiNodeMultiWriter))
        .await
        .expect("publish is idempotent");

    // written through one node, read through the other
    write_file(&ta.join("hello.txt"), b"written on node a");
    assert_eq!(
        std::fs::read(tb.join("hello.txt")).unwrap(),
        b"written on node a"
    );
    write_file(&tb.join("reply.txt"), b"and node b answers");
    assert_eq!(
        std::fs::read(ta.join("reply.txt")).unwrap(),
        b"and node b answers"
    );

    // the quota is enforced at the requested size
    let quota_err = {
        let mut f = std::fs::File::create(ta.join("big")).unwrap();
        let chunk = vec![7u8; MIB as usize];
        let mut err = None;
        for _ in 0..64 {
            if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_data()) {
                err = Some(e);
                break;
            }
        }
        err
    };
    let e = quota_err.expect("writing 64 MiB into a 16 MiB volume must fail");
    assert_eq!(e.raw_os_error(), Some(libc::EDQUOT), "{e}");
    std::fs::remove_file(ta.join("big")).unwrap();

    // stats: quota-based size, used bytes and inodes, healthy
    let st = na
        .node_get_volume_stats(stats_req(&vol, &ta))
        .await
        .unwrap()
        .into_inner();
    let bytes = st
        .usage
        .iter()
        .find(|u| u.unit == pb::volume_usage::Unit::Bytes as i32)
        .unwrap();
    assert_eq!(bytes.total, 16 * MIB, "{st:?}");
    let inodes = st
        .usage
        .iter()
        .find(|u| u.unit == pb::volume_usage::Unit::Inodes as i32)
        .unwrap();
    assert!(inodes.used >= 2, "{st:?}");
    assert!(!st.volume_condition.unwrap().abnormal);

    // expansion: quota only, visible on both nodes without a remount
    let exp = ctl
        .controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            capacity_range: Some(pb::CapacityRange {
                required_bytes: 32 * MIB,
                limit_bytes: 0,
            }),
            secrets: fs_secrets(),
            volume_capability: Some(rwx()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exp.capacity_bytes, 32 * MIB);
    assert!(!exp.node_expansion_required);
    let deadline = Instant::now() + Duration::from_secs(20);
    while statvfs_total(&tb) != 32 * MIB as u64 || statvfs_total(&ta) != 32 * MIB as u64 {
        assert!(
            Instant::now() < deadline,
            "new size not visible: {}",
            statvfs_total(&tb)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // a smaller "expansion" keeps the size
    let exp = ctl
        .controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            capacity_range: Some(pb::CapacityRange {
                required_bytes: 8 * MIB,
                limit_bytes: 0,
            }),
            secrets: fs_secrets(),
            volume_capability: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exp.capacity_bytes, 32 * MIB);

    // teardown, twice (idempotent); ceph-fuse exits
    for _ in 0..2 {
        na.node_unpublish_volume(unpublish_req(&vol.volume_id, &ta))
            .await
            .unwrap();
        nb.node_unpublish_volume(unpublish_req(&vol.volume_id, &tb))
            .await
            .unwrap();
        na.node_unstage_volume(unstage_req(&vol.volume_id, &sa))
            .await
            .unwrap();
        nb.node_unstage_volume(unstage_req(&vol.volume_id, &sb))
            .await
            .unwrap();
    }
    assert!(mounts_under(&scratch.root).is_empty());
    assert!(fuse_pids_under(&scratch.root).is_empty());
    assert!(!ta.exists(), "target directory removed");
    assert_eq!(record_of(&sa), Value::Null, "record removed");

    ctl.delete_volume(fs_del(&vol.volume_id)).await.unwrap();
    ctl.delete_volume(fs_del(&vol.volume_id)).await.unwrap();
    assert!(sub_info(GROUP, &sub).is_none());
    assert!(!journal_has(&name));
    assert!(journal_keys(&format!("csi.volume.{}", uuid_of(&vol.volume_id))).is_empty());
    assert_no_secrets(&a);
    assert_no_secrets(&b);
    eprintln!("rwx test: {:?}", t0.elapsed());
}

#[tokio::test]
async fn a_static_volume_mounts_and_is_never_touched() {
    let d = fs_driver(true, Some("node-static"));
    let scratch = FsScratch::new("static");
    let sub = unique("static");
    mgr(json!({"prefix": "fs subvolumegroup create", "group_name": GROUP})).unwrap();
    mgr(json!({"prefix": "fs subvolume create", "sub_name": sub, "group_name": GROUP})).unwrap();
    let path = sub_info(GROUP, &sub).unwrap()["path"]
        .as_str()
        .unwrap()
        .to_string();
    let c = cluster();
    let vol = pb::Volume {
        volume_id: format!("static-pv-{sub}"),
        volume_context: HashMap::from([
            ("clusterID".to_string(), c.fsid()),
            ("fsName".to_string(), FS.to_string()),
            ("staticVolume".to_string(), "true".to_string()),
            ("rootPath".to_string(), path.clone()),
        ]),
        ..Default::default()
    };
    let user_secrets = HashMap::from([
        ("userID".to_string(), c.get("FERRO_CEPHFS_USER")),
        ("userKey".to_string(), c.get("FERRO_CEPHFS_KEY")),
    ]);
    let (s, t) = (scratch.path("globalmount"), scratch.path("mount"));
    let mut node = d.node().await;
    let mut req = fs_stage_req(&vol, &s, Mode::MultiNodeMultiWriter);
    req.secrets = user_secrets;
    node.node_stage_volume(req).await.unwrap();
    assert_eq!(record_of(&s)["root_path"], path.as_str());
    node.node_publish_volume(fs_publish_req(&vol, &s, &t, Mode::MultiNodeMultiWriter))
        .await
        .unwrap();
    write_file(&t.join("f"), b"static data");
    assert_eq!(std::fs::read(t.join("f")).unwrap(), b"static data");

    // the controller leaves it alone
    let mut ctl = d.controller().await;
    ctl.delete_volume(fs_del(&vol.volume_id)).await.unwrap();
    assert!(sub_info(GROUP, &sub).is_some());
    let v = ctl
        .validate_volume_capabilities(pb::ValidateVolumeCapabilitiesRequest {
            volume_id: vol.volume_id.clone(),
            volume_context: vol.volume_context.clone(),
            volume_capabilities: vec![rwx()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(v.confirmed.is_some());

    node.node_unpublish_volume(unpublish_req(&vol.volume_id, &t))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_req(&vol.volume_id, &s))
        .await
        .unwrap();
    assert!(mounts_under(&scratch.root).is_empty());
    mgr(json!({"prefix": "fs subvolume rm", "sub_name": sub, "group_name": GROUP})).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_plugin_restart_keeps_or_heals_a_staged_fuse_volume() {
    let t0 = Instant::now();
    let mut d = fs_driver(true, Some("node-restart"));
    let scratch = FsScratch::new("restart");
    let mut ctl = d.controller().await;
    let v = ctl
        .create_volume(fs_create(&unique("pvc-fs-restart"), 16 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let (s, t) = (scratch.path("globalmount"), scratch.path("pod/mount"));
    let mut node = d.node().await;
    node.node_stage_volume(fs_stage_req(&v, &s, Mode::SingleNodeWriter))
        .await
        .unwrap();
    node.node_publish_volume(fs_publish_req(&v, &s, &t, Mode::SingleNodeWriter))
        .await
        .unwrap();
    write_file(&t.join("before"), b"written before the restart");
    let pid = record_of(&s)["fuse_pid"].as_i64().unwrap() as i32;

    // the plugin dies; the mount keeps working
    d.kill();
    assert!(!is_zombie(pid), "ceph-fuse outlives the plugin");
    write_file(&t.join("during"), b"written while the plugin is down");

    // restarted: the healthy mount is re-adopted
    d.spawn();
    let mut node = d.node().await;
    node.node_stage_volume(fs_stage_req(&v, &s, Mode::SingleNodeWriter))
        .await
        .unwrap();
    node.node_publish_volume(fs_publish_req(&v, &s, &t, Mode::SingleNodeWriter))
        .await
        .unwrap();
    assert_eq!(record_of(&s)["fuse_pid"].as_i64(), Some(pid as i64));
    let st = node
        .node_get_volume_stats(stats_req(&v, &t))
        .await
        .unwrap()
        .into_inner();
    assert!(!st.volume_condition.unwrap().abnormal);

    // ceph-fuse dies: the condition says so, NodeStage mounts again, NodePublish re-binds
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !is_zombie(pid) {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    evict_clients_under(&scratch.root);
    let st = node
        .node_get_volume_stats(stats_req(&v, &t))
        .await
        .unwrap()
        .into_inner();
    let cond = st.volume_condition.unwrap();
    assert!(cond.abnormal, "{cond:?}");
    assert!(cond.message.contains("not connected"), "{}", cond.message);
    let e = node
        .node_publish_volume(fs_publish_req(&v, &s, &t, Mode::SingleNodeWriter))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    node.node_stage_volume(fs_stage_req(&v, &s, Mode::SingleNodeWriter))
        .await
        .unwrap();
    let new_pid = record_of(&s)["fuse_pid"].as_i64().unwrap() as i32;
    assert_ne!(new_pid, pid);
    node.node_publish_volume(fs_publish_req(&v, &s, &t, Mode::SingleNodeWriter))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(t.join("during")).unwrap(),
        b"written while the plugin is down"
    );
    let st = node
        .node_get_volume_stats(stats_req(&v, &t))
        .await
        .unwrap()
        .into_inner();
    assert!(!st.volume_condition.unwrap().abnormal);

    // a plugin killed again, then a clean unstage by the new process waits for ceph-fuse
    d.kill();
    d.spawn();
    let mut node = d.node().await;
    node.node_unpublish_volume(unpublish_req(&v.volume_id, &t))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_req(&v.volume_id, &s))
        .await
        .unwrap();
    assert!(mounts_under(&scratch.root).is_empty());
    assert!(is_zombie(new_pid), "ceph-fuse exited");
    let mut ctl = d.controller().await;
    ctl.delete_volume(fs_del(&v.volume_id)).await.unwrap();
    assert_no_secrets(&d);
    eprintln!("restart test: {:?}", t0.elapsed());
}
