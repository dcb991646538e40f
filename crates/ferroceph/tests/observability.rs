//! Metrics and the liveness sidecar.

mod common;
use common::*;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `start` with a port that was free a moment ago; another process can take it
/// before the started one binds it, so a start that fails (returns None or panics) is
/// tried again with another port.
fn on_free_port<T>(start: impl Fn(u16) -> Option<T>) -> (T, u16) {
    for _ in 0..5 {
        let port = free_port();
        if let Ok(Some(t)) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| start(port)))
        {
            return (t, port);
        }
    }
    panic!("no free port could be bound in 5 attempts");
}

fn scrape(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn wait_for(port: u16, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(text) = scrape(port) {
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} never appeared in:\n{text}"
            );
        }
        assert!(Instant::now() < deadline, "no metrics on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn rpc_metrics_and_liveness() {
    // a driver that cannot bind its metrics port says so before it serves CSI (and keeps
    // serving without metrics): try another port then
    let (d, port) = on_free_port(|port| {
        let d = Driver::start(
            &[
                "--type=rbd",
                "--controllerserver=true",
                &format!("--metricsport={port}"),
            ],
            &[],
        );
        (!d.log_text().contains("cannot serve metrics")).then_some(d)
    });
    let mut ctl = d.controller().await;
    let v = ctl
        .create_volume(create_req(&unique("pvc-metrics"), 4 * MIB))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let mut bad = create_req(&unique("pvc-metrics"), 4 * MIB);
    bad.parameters.insert("nope".into(), "1".into());
    assert!(ctl.create_volume(bad).await.is_err());
    ctl.delete_volume(del_req(&v.volume_id)).await.unwrap();
    let text = wait_for(
        port,
        "ferroceph_rpc_requests_total{method=\"CreateVolume\",code=\"InvalidArgument\"} 1",
    );
    assert!(
        text.contains("ferroceph_rpc_requests_total{method=\"CreateVolume\",code=\"Ok\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("ferroceph_rpc_duration_seconds_bucket{le="),
        "{text}"
    );
    assert!(
        text.contains("ferroceph_ceph_operation_duration_seconds_count{op=\"CreateVolume\"}"),
        "{text}"
    );
    assert!(text.contains("ferroceph_build_info"), "{text}");
    // csi_liveness is the liveness sidecar's measurement; a driver container that exported
    // its own (always 0) would contradict the sidecar's 1 on every dashboard
    assert!(!text.contains("csi_liveness"), "{text}");
    for key in cluster().all_keys() {
        assert!(!text.contains(&key), "a key in the metrics");
    }

    // the liveness sidecar probes the socket and exports csi_liveness
    let (mut live, lport) = on_free_port(|lport| {
        let mut live = Command::new(bin())
            .args([
                "--type=liveness",
                &format!("--endpoint={}", d.endpoint()),
                &format!("--metricsport={lport}"),
                "--polltime=200ms",
                "--timeout=2s",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // a sidecar that could not bind its port has exited within this time
        std::thread::sleep(Duration::from_millis(300));
        match live.try_wait() {
            Ok(None) => Some(live),
            _ => None,
        }
    });
    let sidecar = wait_for(lport, "csi_liveness 1");
    assert_eq!(
        sidecar.matches("# TYPE csi_liveness gauge").count(),
        1,
        "{sidecar}"
    );
    // ...and the driver still does not export it while the sidecar runs
    let text = scrape(port).expect("driver metrics");
    assert!(!text.contains("csi_liveness"), "{text}");
    drop(d); // the driver goes away: the probe fails
    wait_for(lport, "csi_liveness 0");
    let _ = live.kill();
    let _ = live.wait();
}
