//! User-space attachments outlive the node plugin's container (issue 16): the plugin runs
//! the way a hostPID container does, in a cgroup and a cgroup namespace of its own, and
//! "the container dies" the way a runtime stops one: every process of its cgroup gets
//! SIGKILL. With `--attachcgroup` the FUSE exporter and ceph-fuse were started outside that
//! cgroup: they keep serving the mounted volumes, the restarted plugin re-adopts them without
//! re-attaching, and unstages them cleanly. Without it, the same kill takes them down.

mod common;
use common::*;
use csi::v1 as pb;
use ferroceph::node::record;
use ferroceph::rbd::attach::fuse::{find_exporters, loops_backed_by};
use pb::volume_capability::access_mode::Mode;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A container's cgroups: its own cgroup in the pids (v1) and unified (v2) hierarchies,
/// mounted for the test under a scratch directory so nothing else on the machine moves.
struct Container {
    dir: tempfile::TempDir,
    name: String,
    attach: String,
}

const HIERARCHIES: [(&str, &str, &str); 2] =
    [("pids", "cgroup", "pids"), ("unified", "cgroup2", "")];

impl Container {
    fn new() -> Container {
        let dir = tempfile::tempdir().expect("tempdir");
        for (sub, fstype, opts) in HIERARCHIES {
            let mp = dir.path().join(sub);
            std::fs::create_dir_all(&mp).expect("mkdir");
            let mut cmd = Command::new("mount");
            cmd.args(["-t", fstype]);
            if !opts.is_empty() {
                cmd.args(["-o", opts]);
            }
            let st = cmd.arg("none").arg(&mp).status().expect("mount");
            assert!(
                st.success(),
                "cannot mount the {fstype} hierarchy for the test"
            );
        }
        let id = &uuid::Uuid::new_v4().to_string()[..8];
        let c = Container {
            dir,
            name: format!("ferroceph-test-plugin-{id}"),
            attach: format!("ferroceph-test-attach-{id}"),
        };
        for (sub, _, _) in HIERARCHIES {
            std::fs::create_dir_all(c.root().join(sub).join(&c.name)).expect("container cgroup");
        }
        c
    }

    fn root(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Runs the plugin inside the container's cgroups and a cgroup namespace of its own.
    fn wrapper(&self) -> Vec<String> {
        let procs: Vec<String> = HIERARCHIES
            .iter()
            .map(|(sub, _, _)| {
                self.root()
                    .join(sub)
                    .join(&self.name)
                    .join("cgroup.procs")
                    .display()
                    .to_string()
            })
            .collect();
        vec![
            "sh".into(),
            "-c".into(),
            format!(
                "echo $$ > {} && echo $$ > {} && exec unshare --cgroup \"$@\"",
                procs[0], procs[1]
            ),
            "sh".into(),
        ]
    }

    /// The plugin's flags that start attachments outside the container.
    fn escape_flags(&self) -> Vec<String> {
        let ns = format!("/proc/{}/ns/cgroup", std::process::id());
        vec![
            format!("--attachcgroup={}", self.attach),
            format!("--cgrouproot={}", self.root().display()),
            format!("--cgroupns={ns}"),
        ]
    }

    fn members(&self, cgroup: &str) -> Vec<i32> {
        std::fs::read_to_string(self.root().join("pids").join(cgroup).join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// What a container runtime does to stop the container: SIGKILL its whole cgroup.
    fn kill(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids: Vec<i32> = self
                .members(&self.name)
                .into_iter()
                .filter(|p| alive(*p))
                .collect();
            if pids.is_empty() {
                return;
            }
            for p in pids {
                let _ = Command::new("kill")
                    .args(["-KILL", &p.to_string()])
                    .status();
            }
            assert!(
                Instant::now() < deadline,
                "the container's processes do not die"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.kill();
        for (sub, _, _) in HIERARCHIES {
            for c in [&self.name, &self.attach] {
                let _ = std::fs::remove_dir(self.root().join(sub).join(c));
            }
            let _ = Command::new("umount").arg(self.root().join(sub)).status();
        }
    }
}

fn node_driver(c: &Container, kind: &str, escape: bool) -> Driver {
    let mut args = vec![
        format!("--type={kind}"),
        "--nodeserver=true".into(),
        format!("--nodeid=node-{kind}"),
    ];
    if escape {
        args.extend(c.escape_flags());
    }
    let w = c.wrapper();
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    Driver::start_wrapped(&w, &a, &[])
}

fn write_and_read(dir: &Path, name: &str, len: usize) {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + name.len()) as u8).collect();
    let p = dir.join(name);
    let mut f = std::fs::File::create(&p).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    f.write_all(&data).expect("write");
    f.sync_all().expect("fsync");
    drop(f);
    let mut back = Vec::new();
    std::fs::File::open(&p)
        .and_then(|mut f| f.read_to_end(&mut back))
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    assert_eq!(back, data, "read back differs");
}

async fn healthy(
    node: &mut pb::node_client::NodeClient<tonic::transport::Channel>,
    vid: &str,
    target: &Path,
) {
    let st = node
        .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
            volume_id: vid.to_string(),
            volume_path: target.display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .expect("NodeGetVolumeStats")
        .into_inner();
    let c = st.volume_condition.expect("condition");
    assert!(!c.abnormal, "reported broken: {}", c.message);
}

fn fs_secrets() -> HashMap<String, String> {
    let c = cluster();
    HashMap::from([
        ("adminID".to_string(), c.get("FERRO_CEPHFS_USER")),
        ("adminKey".to_string(), c.get("FERRO_CEPHFS_KEY")),
    ])
}

/// The FUSE-attached RBD volume and the ceph-fuse CephFS volume keep serving I/O through the
/// death of their node plugins' container; the restarted plugins re-adopt them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuse_attachments_survive_the_plugin_container() {
    let mut s = Scratch::new();
    let container = Container::new();
    let rbd_ctl = Driver::start(&["--type=rbd", "--controllerserver=true"], &[]);
    let fs_ctl = Driver::start(&["--type=cephfs", "--controllerserver=true"], &[]);
    let mut rbd_node = node_driver(&container, "rbd", true);
    let mut fs_node = node_driver(&container, "cephfs", true);

    // an RBD volume through the FUSE exporter
    let mut ctl = rbd_ctl.controller().await;
    let mut req = create_req(&unique("pvc-outlive"), 64 * MIB);
    req.parameters.insert("mounter".into(), "fuse".into());
    let v = ctl
        .create_volume(req)
        .await
        .expect("CreateVolume")
        .into_inner()
        .volume
        .expect("volume");
    s.images.push(v.volume_context["imageName"].clone());
    let cap = rwo();
    let (sa, ta) = (s.path("rbd/globalmount"), s.path("rbd/pod/volume"));
    let mut n = rbd_node.node().await;
    n.node_stage_volume(stage_req(
        &v.volume_id,
        &v.volume_context,
        &sa,
        cap.clone(),
        cluster().rbd_secrets(),
    ))
    .await
    .expect("NodeStageVolume");
    n.node_publish_volume(publish_req(
        &v.volume_id,
        &v.volume_context,
        &sa,
        &ta,
        cap.clone(),
        false,
    ))
    .await
    .expect("NodePublishVolume");
    let exporter = record::read(&sa)
        .expect("record")
        .expect("staged")
        .fuse
        .expect("fuse")
        .pid;
    assert!(
        container.members(&container.attach).contains(&exporter),
        "the exporter is not in the attachments' cgroup"
    );

    // a CephFS volume through ceph-fuse
    let mut fctl = fs_ctl.controller().await;
    let fv = fctl
        .create_volume(pb::CreateVolumeRequest {
            name: unique("pvc-outlive-fs"),
            capacity_range: Some(pb::CapacityRange {
                required_bytes: 32 * MIB,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![mount_cap(Mode::MultiNodeMultiWriter)],
            parameters: HashMap::from([
                ("clusterID".to_string(), cluster().fsid()),
                ("fsName".to_string(), "cephfs".to_string()),
                ("mounter".to_string(), "fuse".to_string()),
            ]),
            secrets: fs_secrets(),
            ..Default::default()
        })
        .await
        .expect("CreateVolume (CephFS)")
        .into_inner()
        .volume
        .expect("volume");
    let fcap = mount_cap(Mode::MultiNodeMultiWriter);
    let (fsa, fta) = (s.path("fs/globalmount"), s.path("fs/pod/volume"));
    let mut fnode = fs_node.node().await;
    fnode
        .node_stage_volume(stage_req(
            &fv.volume_id,
            &fv.volume_context,
            &fsa,
            fcap.clone(),
            fs_secrets(),
        ))
        .await
        .expect("NodeStageVolume (CephFS)");
    fnode
        .node_publish_volume(publish_req(
            &fv.volume_id,
            &fv.volume_context,
            &fsa,
            &fta,
            fcap.clone(),
            false,
        ))
        .await
        .expect("NodePublishVolume (CephFS)");
    write_and_read(&ta, "before", 1 << 20);
    write_and_read(&fta, "before", 1 << 20);

    // the container dies
    container.kill();
    assert!(
        alive(exporter),
        "the FUSE exporter died with the plugin's container"
    );
    write_and_read(&ta, "while-down", 1 << 20);
    write_and_read(&fta, "while-down", 1 << 20);

    // it starts again (same cgroup, as a restarted container) and re-adopts everything
    rbd_node.spawn();
    fs_node.spawn();
    let mut n = rbd_node.node().await;
    n.node_stage_volume(stage_req(
        &v.volume_id,
        &v.volume_context,
        &sa,
        cap.clone(),
        cluster().rbd_secrets(),
    ))
    .await
    .expect("NodeStageVolume after the restart");
    n.node_publish_volume(publish_req(
        &v.volume_id,
        &v.volume_context,
        &sa,
        &ta,
        cap.clone(),
        false,
    ))
    .await
    .expect("NodePublishVolume after the restart");
    let again = record::read(&sa)
        .expect("record")
        .expect("staged")
        .fuse
        .expect("fuse")
        .pid;
    assert_eq!(
        again, exporter,
        "the restarted plugin re-attached the volume"
    );
    healthy(&mut n, &v.volume_id, &ta).await;
    let mut fnode = fs_node.node().await;
    fnode
        .node_stage_volume(stage_req(
            &fv.volume_id,
            &fv.volume_context,
            &fsa,
            fcap.clone(),
            fs_secrets(),
        ))
        .await
        .expect("NodeStageVolume (CephFS) after the restart");
    healthy(&mut fnode, &fv.volume_id, &fta).await;
    write_and_read(&ta, "after", 1 << 20);
    write_and_read(&fta, "after", 1 << 20);

    // and unstages them cleanly later
    n.node_unpublish_volume(unpublish_req(&v.volume_id, &ta))
        .await
        .expect("NodeUnpublishVolume");
    n.node_unstage_volume(unstage_req(&v.volume_id, &sa))
        .await
        .expect("NodeUnstageVolume");
    fnode
        .node_unpublish_volume(unpublish_req(&fv.volume_id, &fta))
        .await
        .expect("NodeUnpublishVolume (CephFS)");
    fnode
        .node_unstage_volume(unstage_req(&fv.volume_id, &fsa))
        .await
        .expect("NodeUnstageVolume (CephFS)");
    let p = record::paths(&sa);
    assert!(find_exporters(&p.fuse_dir).is_empty(), "exporter left");
    assert!(
        loops_backed_by(&p.fuse_dir.join(ferroceph::fuse_export::EXPORT_FILE)).is_empty(),
        "loop device left"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !container.members(&container.attach).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        container.members(&container.attach).is_empty(),
        "attachment processes left: {:?}",
        container.members(&container.attach)
    );
    ctl.delete_volume(del_req(&v.volume_id))
        .await
        .expect("DeleteVolume");
    fctl.delete_volume(pb::DeleteVolumeRequest {
        volume_id: fv.volume_id.clone(),
        secrets: fs_secrets(),
    })
    .await
    .expect("DeleteVolume (CephFS)");
}

/// The control: without `--attachcgroup` the same container kill takes the FUSE exporter
/// down and the pod's volume fails; NodeUnstage then still cleans up everything (the dead
/// exporter's loop device included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_escape_the_container_kill_takes_attachments_down() {
    let mut s = Scratch::new();
    let container = Container::new();
    let rbd_ctl = Driver::start(&["--type=rbd", "--controllerserver=true"], &[]);
    let mut rbd_node = node_driver(&container, "rbd", false);
    let mut ctl = rbd_ctl.controller().await;
    let mut req = create_req(&unique("pvc-no-outlive"), 32 * MIB);
    req.parameters.insert("mounter".into(), "fuse".into());
    let v = ctl
        .create_volume(req)
        .await
        .expect("CreateVolume")
        .into_inner()
        .volume
        .expect("volume");
    s.images.push(v.volume_context["imageName"].clone());
    let cap = rwo();
    let (sa, ta) = (s.path("rbd/globalmount"), s.path("rbd/pod/volume"));
    let mut n = rbd_node.node().await;
    n.node_stage_volume(stage_req(
        &v.volume_id,
        &v.volume_context,
        &sa,
        cap.clone(),
        cluster().rbd_secrets(),
    ))
    .await
    .expect("NodeStageVolume");
    n.node_publish_volume(publish_req(
        &v.volume_id,
        &v.volume_context,
        &sa,
        &ta,
        cap.clone(),
        false,
    ))
    .await
    .expect("NodePublishVolume");
    let exporter = record::read(&sa)
        .expect("record")
        .expect("staged")
        .fuse
        .expect("fuse")
        .pid;
    assert!(container.members(&container.name).contains(&exporter));
    container.kill();
    assert!(
        !alive(exporter),
        "the exporter outlived a container kill without the escape"
    );

    rbd_node.spawn();
    let mut n = rbd_node.node().await;
    n.node_unpublish_volume(unpublish_req(&v.volume_id, &ta))
        .await
        .expect("NodeUnpublishVolume");
    n.node_unstage_volume(unstage_req(&v.volume_id, &sa))
        .await
        .expect("NodeUnstageVolume");
    let p = record::paths(&sa);
    assert!(
        loops_backed_by(&p.fuse_dir.join(ferroceph::fuse_export::EXPORT_FILE)).is_empty(),
        "the dead exporter's loop device was left attached"
    );
    assert!(!ferroceph::node::mount::is_mount_point(&sa).unwrap_or(false));
    // the killed exporter's watch keeps the image busy until Ceph drops it (30 s)
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match ctl.delete_volume(del_req(&v.volume_id)).await {
            Ok(_) => break,
            Err(e) if e.code() == tonic::Code::FailedPrecondition && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(2)).await
            }
            Err(e) => panic!("DeleteVolume: {e:?}"),
        }
    }
}
