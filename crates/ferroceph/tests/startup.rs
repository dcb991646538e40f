//! What a node plugin does at start-up (issue 13 items 10 and 11): key files a killed
//! process left are swept and the keys directory is made private; a metrics port that is
//! taken does not keep the driver from serving CSI.

mod common;
use common::*;
use csi::v1 as pb;
use std::os::unix::fs::PermissionsExt;

/// Item 10: a SIGKILL during `rbd map` or a mount leaves `keyfile-*` with the key in
/// `--keysdir` (an emptyDir, 0777). The next start removes it and makes the dir 0700; a
/// key file of a process that still runs (another plugin sharing the dir) is kept.
#[tokio::test]
async fn leftover_key_files_are_swept_at_start() {
    let mut d = Driver::start(&["--type=rbd", "--nodeserver=true", "--nodeid=n1"], &[]);
    d.kill();
    let keys = d.dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o777)).unwrap();
    let stale = [
        keys.join("keyfile-0b1c2d3e-4f50-4a6b-8c7d-8e9fa0b1c2d3"),
        keys.join("keyfile-999999999-0b1c2d3e-4f50-4a6b-8c7d-8e9fa0b1c2d3"),
    ];
    for f in &stale {
        std::fs::write(f, "AQBstalekey==").unwrap();
    }
    let live = keys.join(format!("keyfile-{}-in-use", std::process::id()));
    std::fs::write(&live, "AQBlivekey==").unwrap();

    d.spawn();
    for f in &stale {
        assert!(!f.exists(), "{} was left behind", f.display());
    }
    assert!(
        live.exists(),
        "the key file of a running process was removed"
    );
    let mode = std::fs::metadata(&keys).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "keys dir mode {mode:o}");
    assert!(!d.log_text().contains("AQB"));
}

/// Item 11: a taken `--metricsport` (two plugins on one host with the default) is logged,
/// and the driver serves CSI anyway.
#[tokio::test]
async fn taken_metrics_port_does_not_stop_csi() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let d = Driver::start(
        &[
            "--type=rbd",
            "--nodeserver=true",
            "--nodeid=n1",
            "--metricsaddr=127.0.0.1",
            &format!("--metricsport={port}"),
        ],
        &[],
    );
    let ready = d
        .identity()
        .await
        .probe(pb::ProbeRequest {})
        .await
        .expect("Probe")
        .into_inner();
    assert_ne!(ready.ready, Some(false.into()));
    let info = d
        .node()
        .await
        .node_get_info(pb::NodeGetInfoRequest {})
        .await
        .expect("NodeGetInfo")
        .into_inner();
    assert_eq!(info.node_id, "n1");
    assert!(
        d.log_text().contains("cannot serve metrics"),
        "{}",
        d.log_text()
    );
    drop(taken);
}
