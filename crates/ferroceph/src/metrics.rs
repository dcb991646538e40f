//! Prometheus metrics on `--metricsport`/`--metricspath`: per-RPC counts by gRPC code,
//! latency histograms, operations in flight, Ceph call latencies, staged volumes by
//! mounter, build info, and ceph-csi's `csi_liveness`, which only the liveness sidecar
//! (`--type=liveness`, the process that measures it) exports.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RpcLabels {
    pub(crate) method: String,
    pub(crate) code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct MethodLabels {
    pub(crate) method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OpLabels {
    pub(crate) op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct MounterLabels {
    pub(crate) driver: String,
    pub(crate) mounter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BuildLabels {
    pub(crate) version: String,
    pub(crate) commit: String,
}

pub(crate) struct Metrics {
    /// staging path → (driver, mounter) of the volumes staged on this node.
    staged_paths: std::sync::Mutex<std::collections::HashMap<String, (String, String)>>,
    pub(crate) rpc_total: Family<RpcLabels, Counter>,
    pub(crate) rpc_seconds: Family<MethodLabels, Histogram>,
    pub(crate) rpc_in_flight: Family<MethodLabels, Gauge>,
    pub(crate) ceph_seconds: Family<OpLabels, Histogram>,
    pub(crate) staged: Family<MounterLabels, Gauge>,
    liveness: Gauge,
    registry: std::sync::Mutex<Registry>,
    liveness_exported: std::sync::Once,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

pub(crate) fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let rpc_total = Family::<RpcLabels, Counter>::default();
        let rpc_seconds = Family::<MethodLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let rpc_in_flight = Family::<MethodLabels, Gauge>::default();
        let ceph_seconds = Family::<OpLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let staged = Family::<MounterLabels, Gauge>::default();
        let liveness = Gauge::default();
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
                commit: env!("FERROCEPH_GIT_COMMIT").to_string(),
            })
            .set(1);
        registry.register(
            "ferroceph_rpc_requests",
            "CSI RPCs served, by method and gRPC code",
            rpc_total.clone(),
        );
        registry.register(
            "ferroceph_rpc_duration_seconds",
            "CSI RPC latency",
            rpc_seconds.clone(),
        );
        registry.register(
            "ferroceph_rpc_in_flight",
            "CSI RPCs being served now",
            rpc_in_flight.clone(),
        );
        registry.register(
            "ferroceph_ceph_operation_duration_seconds",
            "Latency of the Ceph work of one RPC",
            ceph_seconds.clone(),
        );
        registry.register(
            "ferroceph_staged_volumes",
            "Volumes staged on this node, by attach method",
            staged.clone(),
        );
        registry.register(
            "ferroceph_build_info",
            "Version and commit of the running binary",
            build,
        );
        Metrics {
            staged_paths: Default::default(),
            rpc_total,
            rpc_seconds,
            rpc_in_flight,
            ceph_seconds,
            staged,
            liveness,
            registry: std::sync::Mutex::new(registry),
            liveness_exported: std::sync::Once::new(),
        }
    }

    /// Adds `csi_liveness` to what this process exports and returns the gauge. Only the
    /// liveness sidecar calls it: a driver container cannot probe itself, and a
    /// `csi_liveness 0` beside the sidecar's `1` would make alerts fire for a healthy plugin.
    pub(crate) fn export_liveness(&self) -> &Gauge {
        self.liveness_exported.call_once(|| {
            self.registry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .register(
                    "csi_liveness",
                    "1 when the last probe of the CSI endpoint succeeded",
                    self.liveness.clone(),
                );
        });
        &self.liveness
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            out.clear();
        }
        out
    }

    pub(crate) fn rpc_started(&self, method: &str) {
        self.rpc_in_flight
            .get_or_create(&MethodLabels {
                method: method.to_string(),
            })
            .inc();
    }

    pub(crate) fn rpc_finished(&self, method: &str, code: &str, elapsed: Duration) {
        let m = MethodLabels {
            method: method.to_string(),
        };
        self.rpc_in_flight.get_or_create(&m).dec();
        self.rpc_seconds
            .get_or_create(&m)
            .observe(elapsed.as_secs_f64());
        self.rpc_total
            .get_or_create(&RpcLabels {
                method: method.to_string(),
                code: code.to_string(),
            })
            .inc();
    }

    /// Records that a volume is staged at `staging` (idempotent) and refreshes the gauge.
    pub(crate) fn volume_staged(&self, driver: &str, staging: &str, mounter: &str) {
        let mut paths = self.staged_paths.lock().unwrap_or_else(|p| p.into_inner());
        paths.insert(
            staging.to_string(),
            (driver.to_string(), mounter.to_string()),
        );
        self.refresh_staged(&paths);
    }

    pub(crate) fn volume_unstaged(&self, staging: &str) {
        let mut paths = self.staged_paths.lock().unwrap_or_else(|p| p.into_inner());
        paths.remove(staging);
        self.refresh_staged(&paths);
    }

    fn refresh_staged(&self, paths: &std::collections::HashMap<String, (String, String)>) {
        self.staged.clear();
        for (driver, mounter) in paths.values() {
            self.staged
                .get_or_create(&MounterLabels {
                    driver: driver.clone(),
                    mounter: mounter.clone(),
                })
                .inc();
        }
    }

    pub(crate) fn ceph_op(&self, op: &str, elapsed: Duration) {
        self.ceph_seconds
            .get_or_create(&OpLabels { op: op.to_string() })
            .observe(elapsed.as_secs_f64());
    }
}

/// Serves the metrics over plain HTTP until the process ends, and `GET /healthz` (200 `ok`)
/// as a health endpoint. Port 0 disables it.
pub(crate) async fn serve(addr: &str, port: u16, path: &str) -> std::io::Result<()> {
    if port == 0 {
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind((addr, port)).await?;
    tracing::info!(%addr, port, path, "serving metrics");
    let path = path.to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let path = path.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n =
                    match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
                        Ok(Ok(n)) => n,
                        _ => return,
                    };
                let req = String::from_utf8_lossy(&buf[..n]);
                let target = req.split_whitespace().nth(1).unwrap_or("");
                let target = target.split('?').next().unwrap_or("");
                let (status, ctype, body) = if target == path {
                    (
                        "200 OK",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        get().render(),
                    )
                } else if target == "/healthz" {
                    ("200 OK", "text/plain", "ok".to_string())
                } else {
                    (
                        "404 Not Found",
                        "text/plain",
                        format!("metrics are at {path}\n"),
                    )
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            });
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn renders_and_serves() {
        let m = get();
        m.rpc_started("CreateVolume");
        m.rpc_finished("CreateVolume", "Ok", Duration::from_millis(12));
        m.ceph_op("CreateVolume", Duration::from_millis(10));
        let text = m.render();
        assert!(
            text.contains("ferroceph_rpc_requests_total{method=\"CreateVolume\",code=\"Ok\"} 1"),
            "{text}"
        );
        assert!(text.contains("ferroceph_build_info"), "{text}");
        assert!(!text.contains("csi_liveness"), "{text}");
        // A free port may be taken by another process between the probe and serve(): try
        // a few.
        let mut port = 0;
        for attempt in 0..10 {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            port = listener.local_addr().unwrap().port();
            drop(listener);
            match serve("127.0.0.1", port, "/metrics").await {
                Ok(()) => break,
                Err(e) if attempt < 9 => eprintln!("port {port}: {e}; another one"),
                Err(e) => panic!("cannot serve metrics: {e}"),
            }
        }
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.contains("ferroceph_rpc_duration_seconds"), "{out}");

        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.ends_with("\r\n\r\nok"), "{out}");
    }

    #[test]
    fn csi_liveness_only_where_exported() {
        let m = Metrics::new();
        assert!(!m.render().contains("csi_liveness"));
        m.export_liveness().set(1);
        m.export_liveness().set(1); // registered once
        let text = m.render();
        assert_eq!(
            text.matches("# TYPE csi_liveness gauge").count(),
            1,
            "{text}"
        );
        assert!(text.contains("\ncsi_liveness 1\n"), "{text}");
    }
}
