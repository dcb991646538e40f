//! Kernel scenarios: krbd, rbd-nbd and the kernel CephFS client driven through the driver's
//! gRPC API inside a VM running Debian's own kernel (scripts/vm.sh; this host's kernel has
//! none of those modules). On the host each test boots the VM once for all the selected
//! scenarios and reports its own; inside the VM (`FERRO_IN_VM=1`) it runs its body. There is
//! no udevd in the VM, as in a plugin container.
//!
//! Run one by hand: `cargo test -p ferroceph --test kernel -- --ignored krbd_xfs` (ignored in a plain
//! `cargo test`: scripts/test.sh runs them beside the host tests); the guest's console,
//! scenario output and driver logs stay in target/tmp/vm/last/. Volumes that ceph-csi staged
//! are in kernel/cephcsi.rs.

#[path = "kernel/cephcsi.rs"]
mod cephcsi;
mod common;
use common::node::*;
use common::vm::scenario;
use common::*;
use csi::v1 as pb;
use pb::volume_capability::access_mode::Mode;
use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;
use tonic::Code;

/// Every scenario, in the order the VM runs them (the module-juggling one last).
const ALL: &[&str] = &[
    "krbd_stage_without_udevd",
    "krbd_ext4_filesystem_lifecycle",
    "krbd_xfs_filesystem_lifecycle",
    "krbd_raw_block_lifecycle",
    "krbd_refuses_features_the_kernel_lacks",
    "krbd_rwo_volume_refused_on_a_second_node",
    "krbd_reuses_only_a_matching_mapping",
    "nbd_ext4_filesystem_lifecycle",
    "nbd_xfs_filesystem_lifecycle",
    "nbd_raw_block_lifecycle",
    "nbd_survives_plugin_restart",
    "nbd_healthy_across_pid_namespaces",
    "cephfs_kernel_two_nodes",
    "cephcsi::cephcsi_staged_krbd_volume_is_published_and_unstaged",
    "cephcsi::cephcsi_staged_nbd_volume_is_published_and_unstaged",
    "doctor_reports_the_kernel",
    "auto_mounter_follows_kernel_modules",
];

// ---------------------------------------------------------------- RBD lifecycle

/// The whole life of an RBD volume through one mounter, with `fs` a filesystem type or
/// None for a raw block volume: create, stage (formats the blank device), publish, write,
/// read-only publish refuses writes, online expansion, unpublish, unstage, restage on
/// another node with the data byte-identical, delete; nothing left on the node.
async fn rbd_lifecycle(mounter: &str, fs: Option<&str>) {
    let n = rbd_nodes();
    let mut scratch = Scratch::new();
    let root = scratch.dir.path().to_path_buf();
    let mut ctl = n.a.controller().await;
    let (mut na, mut nb) = (n.a.node().await, n.b.node().await);
    let block = fs.is_none();
    // xfs wants at least 300 MiB
    let size = if fs == Some("xfs") {
        320 * MIB
    } else {
        64 * MIB
    };
    let v = create_rbd(&mut ctl, &mut scratch, size, &[("mounter", mounter)]).await;
    let cap = match fs {
        Some(f) => fs_cap(f, Mode::SingleNodeWriter),
        None => block_cap(Mode::SingleNodeWriter),
    };
    let dev_prefix = if mounter == "krbd" {
        "/dev/rbd"
    } else {
        "/dev/nbd"
    };

    let (sa, ta, ta_ro) = (
        root.join("a/globalmount"),
        root.join("a/pod1/volume"),
        root.join("a/pod2/volume"),
    );
    stage(&mut na, &v, &sa, &cap).await;
    stage(&mut na, &v, &sa, &cap).await; // idempotent
    let device = ferroceph::node::record::read(&sa)
        .expect("record")
        .expect("a staging record")
        .device
        .expect("device recorded");
    assert!(device.starts_with(dev_prefix), "{mounter} staged {device}");
    if let Some(f) = fs {
        assert_eq!(mount_source(&sa).as_deref(), Some(device.as_str()));
        assert_eq!(blkid_type(&device), f, "the blank device was formatted");
    }
    publish(&mut na, &v, &sa, &ta, &cap, false).await;
    let data = pattern(0x5eed, 1 << 20);
    write_data(&ta, block, &data);

    // a second pod on the node, read-only
    publish(&mut na, &v, &sa, &ta_ro, &cap, true).await;
    assert_writes_refused(&ta_ro, block);
    assert_eq!(read_data(&ta_ro, block, data.len()), data);
    unpublish(&mut na, &v, &ta_ro).await;

    // online expansion, seen by the pod without a remount
    let before = size_of(&ta, block);
    let bigger = size + 64 * MIB;
    let got = expand(&mut ctl, &mut na, &v, &sa, &ta, &cap, bigger).await;
    assert!(got >= bigger || got == 0, "NodeExpandVolume answered {got}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while block && size_of(&ta, block) < bigger as u64 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = size_of(&ta, block);
    assert!(
        after > before + 32 * MIB as u64,
        "the pod still sees {after} bytes (was {before}) after expanding to {bigger}"
    );
    if block {
        assert_eq!(after, bigger as u64, "the block device has the new size");
    }
    assert_eq!(read_data(&ta, block, data.len()), data);

    unpublish(&mut na, &v, &ta).await;
    unpublish(&mut na, &v, &ta).await; // idempotent
    unstage(&mut na, &v, &sa).await;
    unstage(&mut na, &v, &sa).await; // idempotent
    assert_node_clean(&n, &v.image, &root);

    // the pod moves to another node
    let (sb, tb) = (root.join("b/globalmount"), root.join("b/pod1/volume"));
    stage(&mut nb, &v, &sb, &cap).await;
    publish(&mut nb, &v, &sb, &tb, &cap, false).await;
    assert_eq!(
        read_data(&tb, block, data.len()),
        data,
        "the data on the other node differs"
    );
    unpublish(&mut nb, &v, &tb).await;
    unstage(&mut nb, &v, &sb).await;
    assert_node_clean(&n, &v.image, &root);

    ctl.delete_volume(del_req(&v.id))
        .await
        .expect("DeleteVolume");
    assert!(!image_exists(&v.image), "image left after DeleteVolume");
}

#[test]
#[ignore = "boots a VM: cargo test --test kernel -- --ignored"]
fn krbd_ext4_filesystem_lifecycle() {
    scenario("krbd_ext4_filesystem_lifecycle", ALL, || {
        rbd_lifecycle("krbd", Some("ext4"))
    });
}

#[test]
#[ignore = "boots a VM: cargo test --test kernel -- --ignored"]
fn krbd_xfs_filesystem_lifecycle() {
    scenario("krbd_xfs_filesystem_lifecycle", ALL, || {
        rbd_lifecycle("krbd", Some("xfs"))
    });
}

#[test]
#[ignore = "boots a VM: cargo test --test kernel -- --ignored"]
fn krbd_raw_block_lifecycle() {
    scenario("krbd_raw_block_lifecycle", ALL, || {
        rbd_lifecycle("krbd", None)
    });
}

#[test]
#[ignore = "boots a VM: cargo test --test kernel -- --ignored"]
fn nbd_ext4_filesystem_lifecycle() {
    scenario("nbd_ext4_filesystem_lifecycle", ALL, || {
        rbd_lifecycle("rbd-nbd", Some("ext4"))
    });
}

#[test]
#[ignore = "boots a VM: cargo test --test kernel -- --ignored"]
fn nbd_xfs_filesystem_lifecycle() {
    scenario("nbd_xfs_filesystem_lifecycle", ALL, || {
        rbd_lifecycle("rbd-nbd", Some("xfs"))
    });
}

#[test]
#[ignore = "boots a VM: cargo test --test kernel -- --ignored"]
fn nbd_raw_block_lifecycle() {
    scenario("nbd_raw_block_lifecycle", ALL, || {
        rbd_lifecycle("rbd-nbd", None)
    });
}

// ---------------------------------------------------------------- krbd specifics

/// No udevd runs here (as in a plugin container): `rbd map` must not wait for udev events.
/// Before `noudev` was passed, the stage blocked until the 60 s deadline of `rbd map`.
#[test]
#[ignore = "boots a VM: cargo test --test kernel -- --ignored"]
fn krbd_stage_without_udevd() {
    scenario("krbd_stage_without_udevd", ALL, || async {
        for udevd in ["systemd-udevd", "udevd"] {
            assert!(pids_named(udevd).is_empty(), "{udevd} runs in the VM");
        }
        let n = rbd_nodes();
        let mut scratch = Scratch::new();
        let mut ctl = n.a.controller().await;
        let mut na = n.a.node().await;
        let v = create_rbd(&mut ctl, &mut scratch, 32 * MIB, &[("mounter", "krbd")]).await;
        let cap = block_cap(Mode::SingleNodeWriter);
        let sa = scratch.dir.path().join("globalmount");
        let mut req =
            tonic::Request::new(stage_req(&v.id, &v.ctx, &sa, cap, cluster().rbd_secrets()));
        // well below rbd map's own 60 s deadline
        req.set_timeout(Duration::from_secs(30));
        let started = std::time::Instant::now();
        let r = na.node_stage_volume(req).await;
        assert!(
            r.is_ok(),
            "krbd stage without udevd failed after {:?}: {r:?}",
            started.elapsed()
        );
        assert_eq!(krbd_devices_of(&v.image).len(), 1);
        unstage(&mut na, &v, &sa).await;
        assert_node_clean(&n, &v.image, scratch.dir.path());
        ctl.delete_volume(del_req(&v.id))
            .await
            .expect("DeleteVolume");
    });
}

/// An image with a feature this kernel's krbd lacks (journaling) is refused before any
/// map, naming the feature and the fix, from the kernel's own supported_features.
#[test]
#[ignore = "boots a VM: cargo test --test kernel -- --ignored"]
fn krbd_refuses_features_the_kernel_lacks() {
    scenario("krbd_refuses_features_the_kernel_lacks", ALL, || async {
        let supported = std::fs::read_to_string("/sys/bus/rbd/supported_features")
            .expect("the rbd module is loaded");
        let supported =
            ferroceph::rbd::attach::krbd::parse_supported(&supported).expect("a hex feature mask");
        assert_eq!(
            supported & rados::rbd::FEATURE_JOURNALING,
            0,
            "this kernel supports journaling: the scenario needs another feature"
        );
        let n = rbd_nodes();
        let mut scratch = Scratch::new();
        let mut ctl = n.a.controller().await;
        let mut na = n.a.node().await;
        let v = create_rbd(
            &mut ctl,
            &mut scratch,
            32 * MIB,
            &[
                ("mounter", "krbd"),
                ("imageFeatures", "layering,exclusive-lock,journaling"),
            ],
        )
        .await;
        let sa = scratch.dir.path().join("globalmount");
        let err = na
            .node_stage_volume(stage_req(
                &v.id,
                &v.ctx,
                &sa,
                fs_cap("ext4", Mode::SingleNodeWriter),
                cluster().rbd_secrets(),
            ))
            .await
            .expect_err("a journaling image must not be mapped by krbd");
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        let msg = err.message();
        assert!(msg.contains("journaling"), "{msg}");
        assert!(msg.contains("rbd feature disable"), "{msg}");
        assert!(
            msg.contains(&rados::rbd::features_to_string(supported)),
            "the message names what this kernel supports: {msg}"
        );
        assert!(krbd_devices_of(&v.image).is_empty(), "mapped anyway");
        assert!(!is_mounted(&sa));
        assert_node_clean(&n, &v.image, scratch.dir.path());
        ctl.delete_volume(del_req(&v.id))
            .await
            .expect("DeleteVolume");
    });
}

/// Node b may not map a single-node read-write volume that node a has mounted; it may once
/// node a unstaged it.
#[test]
#[ignore = "boots a VM: cargo test --test kernel -- --ignored"]
fn krbd_rwo_volume_refused_on_a_second_node() {
    scenario("krbd_rwo_volume_refused_on_a_second_node", ALL, || async {
        let n = rbd_nodes();
        let mut scratch = Scratch::new();
        let root = scratch.dir.path().to_path_buf();
        let mut ctl = n.a.controller().await;
        let (mut na, mut nb) = (n.a.node().await, n.b.node().await);
        let v = create_rbd(&mut ctl, &mut scratch, 32 * MIB, &[("mounter", "krbd")]).await;
        let cap = fs_cap("ext4", Mode::SingleNodeWriter);
        let (sa, sb) = (root.join("a/globalmount"), root.join("b/globalmount"));
        stage(&mut na, &v, &sa, &cap).await;
        let err = nb
            .node_stage_volume(stage_req(
                &v.id,
                &v.ctx,
                &sb,
                cap.clone(),
                cluster().rbd_secrets(),
            ))
            .await
            .expect_err("node b must not map a RWO volume node a uses");
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(
            err.message().contains("another client has it open"),
            "{err:?}"
        );
        assert_eq!(krbd_devices_of(&v.image).len(), 1, "mapped twice");
        assert!(!is_mounted(&sb));
        unstage(&mut na, &v, &sa).await;
        stage(&mut nb, &v, &sb, &cap).await;
        unstage(&mut nb, &v, &sb).await;
        assert_node_clean(&n, &v.image, &root);
        ctl.delete_volume(del_req(&v.id))
            .await
            .expect("DeleteVolume");
    });
}

/// A leftover krbd mapping of the image is reused only when it is what the stage needs: a
/// read-only mapping (made by hand here, as an administrator or a reader would) is never
/// handed to a read-write stage, which maps its own writable device.
#[test]
#[ignore = "boots a VM: cargo test --test kernel -- --ignored"]
fn krbd_reuses_only_a_matching_mapping() {
    scenario("krbd_reuses_only_a_matching_mapping", ALL, || async {
        let n = rbd_nodes();
        let mut scratch = Scratch::new();
        let root = scratch.dir.path().to_path_buf();
        let mut ctl = n.a.controller().await;
        let mut na = n.a.node().await;
        let v = create_rbd(&mut ctl, &mut scratch, 32 * MIB, &[("mounter", "krbd")]).await;
        let conf = cluster().get("FERRO_CEPH_CONF");
        let out = Command::new("rbd")
            .args(["-c", &conf, "map", "-o", "noudev", "--read-only"])
            .arg(format!("{}/{}", cluster().get("FERRO_RBD_POOL"), v.image))
            .output()
            .expect("rbd map");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ro_dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let cap = block_cap(Mode::SingleNodeWriter);
        let sa = root.join("globalmount");
        stage(&mut na, &v, &sa, &cap).await;
        let dev = ferroceph::node::record::read(&sa)
            .expect("record")
            .expect("staged")
            .device
            .expect("device");
        assert_ne!(
            dev, ro_dev,
            "the read-only mapping was reused for a read-write stage"
        );
        let ro_flag = |d: &str| {
            std::fs::read_to_string(format!("/sys/block/{}/ro", d.trim_start_matches("/dev/")))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        assert_eq!(ro_flag(&dev), "0", "the staged device is read-only");
        unstage(&mut na, &v, &sa).await;
        let out = Command::new("rbd")
            .args(["-c", &conf, "unmap", "-o", "noudev", &ro_dev])
            .output()
            .expect("rbd unmap");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_node_clean(&n, &v.image, &root);
        ctl.delete_volume(del_req(&v.id))
            .await
            .expect("DeleteVolume");
    });
}

// ---------------------------------------------------------------- rbd-nbd restart

/// The node plugin is SIGKILLed while an rbd-nbd volume is mounted: the volume keeps
/// serving I/O, and the restarted plugin finds it healthy and does not re-attach it.
#[test]
#[ignore = "boots a VM: cargo test --test kernel -- --ignored"]
fn nbd_survives_plugin_restart() {
    scenario("nbd_survives_plugin_restart", ALL, || async {
        let mut n = rbd_nodes();
        let mut scratch = Scratch::new();
        let root = scratch.dir.path().to_path_buf();
        let mut ctl = n.a.controller().await;
        let v = create_rbd(&mut ctl, &mut scratch, 64 * MIB, &[("mounter", "rbd-nbd")]).await;
        let cap = fs_cap("ext4", Mode::SingleNodeWriter);
        let (sa, ta) = (root.join("globalmount"), root.join("pod/volume"));
        let mut na = n.a.node().await;
        stage(&mut na, &v, &sa, &cap).await;
        publish(&mut na, &v, &sa, &ta, &cap, false).await;
        let device = mount_source(&sa).expect("staged");
        let daemon = nbd_daemon(&device).expect("an rbd-nbd daemon serves the device");

        n.a.kill(); // SIGKILL
        let data = pattern(7, 256 << 10);
        write_data(&ta, false, &data);
        assert_eq!(
            read_data(&ta, false, data.len()),
            data,
            "I/O while the plugin is down"
        );

        n.a.spawn();
        let mut na = n.a.node().await;
        stage(&mut na, &v, &sa, &cap).await; // kubelet retries; must not re-attach
        publish(&mut na, &v, &sa, &ta, &cap, false).await;
        let stats = na
            .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
                volume_id: v.id.clone(),
                volume_path: ta.display().to_string(),
                staging_target_path: sa.display().to_string(),
            })
            .await
            .expect("NodeGetVolumeStats")
            .into_inner();
        let cond = stats.volume_condition.expect("volume condition");
        assert!(!cond.abnormal, "reported unhealthy: {}", cond.message);
        assert_eq!(mount_source(&sa).as_deref(), Some(device.as_str()));
        assert_eq!(
            nbd_daemon(&device),
            Some(daemon),
            "the rbd-nbd daemon was replaced"
        );
        assert!(alive(daemon));
        write_data(&ta, false, &data);

        unpublish(&mut na, &v, &ta).await;
        unstage(&mut na, &v, &sa).await;
        assert_node_clean(&n, &v.image, &root);
        let mut ctl = n.a.controller().await;
        ctl.delete_volume(del_req(&v.id))
            .await
            .expect("DeleteVolume");
    });
}

/// A node plugin in its own PID namespace (a container without hostPID) sees no process
/// behind the host pid the kernel gives for an nbd device: a second NodePublish must keep
/// the device and the first pod's mount working, not re-attach (unmount) it.
#[test]
#[ignore = "boots a VM: cargo test --test kernel -- --ignored"]
fn nbd_healthy_across_pid_namespaces() {
    scenario("nbd_healthy_across_pid_namespaces", ALL, || async {
        let ctl_driver = Driver::start(&["--type=rbd", "--controllerserver=true"], &[]);
        // mounts made inside propagate out, as with kubelet's Bidirectional propagation
        let node = Driver::start_wrapped(
            &[
                "unshare",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount",
                "--propagation=unchanged",
                "--mount-proc",
            ],
            &["--type=rbd", "--nodeserver=true", "--nodeid=vm-node-pidns"],
            &[],
        );
        let mut scratch = Scratch::new();
        let root = scratch.dir.path().to_path_buf();
        let mut ctl = ctl_driver.controller().await;
        let mut n = node.node().await;
        let v = create_rbd(&mut ctl, &mut scratch, 64 * MIB, &[("mounter", "rbd-nbd")]).await;
        let cap = fs_cap("ext4", Mode::SingleNodeWriter);
        let (sa, t1, t2) = (
            root.join("globalmount"),
            root.join("pod1/volume"),
            root.join("pod2/volume"),
        );
        stage(&mut n, &v, &sa, &cap).await;
        publish(&mut n, &v, &sa, &t1, &cap, false).await;
        let device = mount_source(&sa).expect("staged and visible outside the namespace");
        let daemon = nbd_daemon(&device).expect("connected");
        let data = pattern(11, 128 << 10);
        write_data(&t1, false, &data);

        publish(&mut n, &v, &sa, &t2, &cap, false).await;
        stage(&mut n, &v, &sa, &cap).await; // kubelet's periodic restage
        assert_eq!(mount_source(&sa).as_deref(), Some(device.as_str()));
        assert_eq!(nbd_daemon(&device), Some(daemon), "re-attached");
        assert_eq!(
            read_data(&t1, false, data.len()),
            data,
            "the first pod lost its volume"
        );
        assert_eq!(read_data(&t2, false, data.len()), data);
        write_data(&t1, false, &data);
        let st = n
            .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
                volume_id: v.id.clone(),
                volume_path: t1.display().to_string(),
                staging_target_path: sa.display().to_string(),
            })
            .await
            .expect("NodeGetVolumeStats")
            .into_inner();
        let cond = st.volume_condition.expect("condition");
        assert!(!cond.abnormal, "reported broken: {}", cond.message);

        for t in [&t1, &t2] {
            unpublish(&mut n, &v, t).await;
        }
        unstage(&mut n, &v, &sa).await;
        assert!(kernel_devices_of(&v.image).is_empty(), "left attached");
        ctl.delete_volume(del_req(&v.id))
            .await
            .expect("DeleteVolume");
    });
}

// ---------------------------------------------------------------- mounter auto

fn modprobe(args: &[&str]) {
    let out = Command::new("modprobe")
        .args(args)
        .output()
        .expect("modprobe");
    assert!(
        out.status.success(),
        "modprobe {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// With no mounter parameter the node takes krbd when the rbd module is loaded, rbd-nbd
/// when only nbd is, and the FUSE attachment when neither is.
#[test]
#[ignore = "boots a VM: cargo test --test kernel -- --ignored"]
fn auto_mounter_follows_kernel_modules() {
    scenario("auto_mounter_follows_kernel_modules", ALL, || async {
        let n = rbd_nodes();
        let mut scratch = Scratch::new();
        let mut ctl = n.a.controller().await;
        let mut na = n.a.node().await;
        let v = create_rbd(&mut ctl, &mut scratch, 32 * MIB, &[]).await;
        let cap = block_cap(Mode::SingleNodeWriter);
        let mut seen = Vec::new();
        // (unload before the step, expected device prefix)
        let steps: [(&[&str], &str); 3] = [
            (&[], "/dev/rbd"),
            (&["-r", "rbd"], "/dev/nbd"),
            (&["-r", "nbd"], "/dev/loop"),
        ];
        for (i, (unload, prefix)) in steps.iter().enumerate() {
            if !unload.is_empty() {
                modprobe(unload);
            }
            let sa = scratch.dir.path().join(format!("s{i}/globalmount"));
            stage(&mut na, &v, &sa, &cap).await;
            let rec = ferroceph::node::record::read(&sa)
                .expect("record")
                .expect("staged");
            let dev = rec.device.clone().unwrap_or_default();
            seen.push(format!("{} -> {dev}", rec.mounter));
            unstage(&mut na, &v, &sa).await;
            assert!(
                dev.starts_with(prefix),
                "step {i}: expected {prefix}*, got {seen:?}"
            );
        }
        modprobe(&["nbd"]);
        modprobe(&["rbd"]);
        assert_node_clean(&n, &v.image, scratch.dir.path());
        ctl.delete_volume(del_req(&v.id))
            .await
            .expect("DeleteVolume");
        eprintln!("auto picked: {seen:?}");
    });
}

// ---------------------------------------------------------------- doctor

/// `ferroceph doctor` in the VM reports the modules and krbd's features as they are.
#[test]
#[ignore = "boots a VM: cargo test --test kernel -- --ignored"]
fn doctor_reports_the_kernel() {
    scenario("doctor_reports_the_kernel", ALL, || async {
        let out = Command::new(bin())
            .args([
                "doctor",
                "--role=node",
                "--json",
                "--image-features=layering,exclusive-lock,object-map,fast-diff,deep-flatten",
            ])
            .output()
            .expect("run doctor");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("doctor --json: {e}\n{stdout}"));
        let check = |id: &str| -> serde_json::Value {
            report["checks"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["id"] == id).cloned())
                .unwrap_or_else(|| panic!("no check {id}: {stdout}"))
        };
        for id in [
            "kernel.rbd",
            "kernel.nbd",
            "kernel.ceph",
            "kernel.rbd.features",
            "mounter.rbd",
        ] {
            assert_eq!(check(id)["status"], "ok", "{id}: {}", check(id));
        }
        assert!(check("mounter.rbd")["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("krbd"));
        assert!(check("mounter.cephfs")["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("kernel"));
        let supported = std::fs::read_to_string("/sys/bus/rbd/supported_features").expect("sysfs");
        let names = rados::rbd::features_to_string(
            ferroceph::rbd::attach::krbd::parse_supported(&supported).expect("mask"),
        );
        let summary = check("kernel.rbd.features")["summary"].to_string();
        assert!(summary.contains(&names), "{summary} vs {names}");

        // journaling is what this kernel lacks: the doctor says so
        let out = Command::new(bin())
            .args([
                "doctor",
                "--role=node",
                "--json",
                "--image-features=layering,exclusive-lock,journaling",
            ])
            .output()
            .expect("run doctor");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor --json");
        let c = report["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["id"] == "kernel.rbd.features").cloned())
            .expect("features check");
        assert_ne!(c["status"], "ok", "{c}");
        assert!(c.to_string().contains("journaling"), "{c}");
    });
}

// ---------------------------------------------------------------- CephFS kernel client

fn fs_secrets() -> HashMap<String, String> {
    let c = cluster();
    HashMap::from([
        ("adminID".to_string(), c.get("FERRO_CEPHFS_USER")),
        ("adminKey".to_string(), c.get("FERRO_CEPHFS_KEY")),
    ])
}

fn fs_driver(controller: bool, node: &str) -> Driver {
    let mut args = vec![
        "--type=cephfs".to_string(),
        "--nodeserver=true".into(),
        format!("--nodeid={node}"),
    ];
    if controller {
        args.push("--controllerserver=true".into());
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    Driver::start(&a, &[])
}

/// Argument lists of every process, for a key hunt.
fn all_cmdlines() -> String {
    let mut s = String::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(b) = std::fs::read(e.path().join("cmdline")) {
            s.push_str(&String::from_utf8_lossy(&b));
            s.push('\n');
        }
    }
    s
}

/// The kernel CephFS client on two nodes at once: RWX writes seen across nodes, expansion
/// visible without a remount, stats filled in, the key never in /proc/mounts or any argv.
#[test]
#[ignore = "boots a VM: cargo test --test kernel -- --ignored"]
fn cephfs_kernel_two_nodes() {
    scenario("cephfs_kernel_two_nodes", ALL, || async {
        let a = fs_driver(true, "vm-node-a");
        let b = fs_driver(false, "vm-node-b");
        let scratch = Scratch::new();
        let root = scratch.dir.path().to_path_buf();
        let mut ctl = a.controller().await;
        let rwx = mount_cap(Mode::MultiNodeMultiWriter);
        let vol = ctl
            .create_volume(pb::CreateVolumeRequest {
                name: unique("pvc-vm-fs"),
                capacity_range: Some(pb::CapacityRange {
                    required_bytes: 64 * MIB,
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![rwx.clone()],
                parameters: HashMap::from([
                    ("clusterID".to_string(), cluster().fsid()),
                    ("fsName".to_string(), "cephfs".to_string()),
                    ("mounter".to_string(), "kernel".to_string()),
                ]),
                secrets: fs_secrets(),
                ..Default::default()
            })
            .await
            .expect("CreateVolume")
            .into_inner()
            .volume
            .expect("volume");
        let (sa, sb) = (root.join("a/globalmount"), root.join("b/globalmount"));
        let (ta, tb) = (root.join("a/pod/volume"), root.join("b/pod/volume"));

        // watch every process's argv while the nodes mount
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let stop = stop.clone();
            let keys = cluster().all_keys();
            std::thread::spawn(move || {
                let mut leaked = false;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let s = all_cmdlines();
                    leaked |= keys.iter().any(|k| s.contains(k.as_str()));
                    std::thread::sleep(Duration::from_millis(5));
                }
                leaked
            })
        };
        let mut na = a.node().await;
        let mut nb = b.node().await;
        for (node, s, t) in [(&mut na, &sa, &ta), (&mut nb, &sb, &tb)] {
            node.node_stage_volume(stage_req(
                &vol.volume_id,
                &vol.volume_context,
                s,
                rwx.clone(),
                fs_secrets(),
            ))
            .await
            .unwrap_or_else(|e| panic!("NodeStageVolume {}: {e:?}", s.display()));
            node.node_publish_volume(publish_req(
                &vol.volume_id,
                &vol.volume_context,
                s,
                t,
                rwx.clone(),
                false,
            ))
            .await
            .expect("NodePublishVolume");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(
            !watcher.join().expect("watcher"),
            "a cephx key appeared in a process's argv"
        );

        let m = ferroceph::node::mount::mount_at(&sa)
            .expect("mountinfo")
            .expect("staged");
        assert_eq!(m.fs_type, "ceph", "the kernel client mounts it: {m:?}");
        let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
        for k in cluster().all_keys() {
            assert!(!mounts.contains(&k), "the key is in /proc/mounts");
        }

        // RWX: written on one node, read on the other
        let data = pattern(42, 512 << 10);
        write_data(&ta, false, &data);
        assert_eq!(read_data(&tb, false, data.len()), data);

        // the quota is the size df shows; expansion is seen without a remount
        let before = size_of(&tb, false);
        assert_eq!(before, 64 * MIB as u64, "df shows the quota");
        ctl.controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            capacity_range: Some(pb::CapacityRange {
                required_bytes: 128 * MIB,
                limit_bytes: 0,
            }),
            secrets: fs_secrets(),
            volume_capability: Some(rwx.clone()),
        })
        .await
        .expect("ControllerExpandVolume");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while size_of(&tb, false) != 128 * MIB as u64 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert_eq!(
            size_of(&ta, false),
            128 * MIB as u64,
            "node a sees the new quota"
        );
        assert_eq!(
            size_of(&tb, false),
            128 * MIB as u64,
            "node b sees the new quota"
        );

        // stats: bytes and inodes filled in; the MDS propagates recursive usage lazily, and
        // statfs's inode count lags behind the byte count the driver reads fresh
        let unit = |st: &pb::NodeGetVolumeStatsResponse, u: pb::volume_usage::Unit| {
            st.usage
                .iter()
                .find(|x| x.unit == u as i32)
                .copied()
                .unwrap_or_else(|| panic!("no {u:?} usage in {st:?}"))
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let st = loop {
            let st = na
                .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
                    volume_id: vol.volume_id.clone(),
                    volume_path: ta.display().to_string(),
                    staging_target_path: sa.display().to_string(),
                })
                .await
                .expect("NodeGetVolumeStats")
                .into_inner();
            let used = unit(&st, pb::volume_usage::Unit::Bytes).used;
            if used >= data.len() as i64 || std::time::Instant::now() > deadline {
                break st;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let bytes = unit(&st, pb::volume_usage::Unit::Bytes);
        assert_eq!(bytes.total, 128 * MIB, "{st:?}");
        assert!(bytes.used >= data.len() as i64, "used bytes: {st:?}");
        let inodes = unit(&st, pb::volume_usage::Unit::Inodes);
        assert!(inodes.used >= 1, "used inodes: {st:?}");

        for (node, s, t) in [(&mut na, &sa, &ta), (&mut nb, &sb, &tb)] {
            node.node_unpublish_volume(unpublish_req(&vol.volume_id, t))
                .await
                .expect("NodeUnpublishVolume");
            node.node_unstage_volume(unstage_req(&vol.volume_id, s))
                .await
                .expect("NodeUnstageVolume");
            assert!(!is_mounted(s), "{} still mounted", s.display());
        }
        for d in [&a, &b] {
            assert!(
                key_files(d).is_empty(),
                "key files left: {:?}",
                key_files(d)
            );
        }
        ctl.delete_volume(pb::DeleteVolumeRequest {
            volume_id: vol.volume_id.clone(),
            secrets: fs_secrets(),
        })
        .await
        .expect("DeleteVolume");
    });
}
