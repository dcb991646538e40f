//! Bridge from the async services to the blocking Ceph access layer: pooled connections,
//! `spawn_blocking`, and one mapping from Ceph errors to gRPC codes whose messages say what
//! the driver was waiting for.

use crate::error::Error;
use rados::{Cluster, ClusterPool, ConnectConfig};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct Ceph {
    pool: Arc<ClusterPool>,
    timeout: Duration,
}

impl Ceph {
    pub fn new(timeout: Duration) -> Self {
        Ceph {
            pool: Arc::new(ClusterPool::new(Duration::from_secs(600))),
            timeout,
        }
    }

    pub fn connect_config(&self, monitors: &[String], user: &str, key: &str) -> ConnectConfig {
        ConnectConfig::new(monitors.to_vec(), user, key).with_timeout(self.timeout)
    }

    /// Runs `f` on a blocking thread with a pooled connection.
    pub async fn run<T, F>(&self, cfg: ConnectConfig, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Cluster) -> Result<T, Error> + Send + 'static,
    {
        let pool = self.pool.clone();
        let op = crate::server::RPC_METHOD
            .try_with(|m| m.clone())
            .unwrap_or_else(|_| "background".to_string());
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let cluster = pool
                .get(&cfg)
                .map_err(|e| Error::ceph("connect to the cluster", e))?;
            f(&cluster)
        })
        .await
        .map_err(|e| Error::internal(format!("Ceph worker failed: {e}")))?;
        crate::metrics::get().ceph_op(&op, started.elapsed());
        result
    }
}

/// Bytes that can still be written to a pool (the `max_avail` of `ceph df`), 0 when the
/// pool is not listed.
pub(crate) fn pool_max_avail(cluster: &Cluster, pool_id: i64) -> Result<i64, Error> {
    let out = cluster
        .mon_command(r#"{"prefix": "df", "format": "json"}"#, &[])
        .map_err(Error::ceph_ctx("read pool usage"))?;
    let v: serde_json::Value = serde_json::from_slice(&out.out)
        .map_err(|e| Error::internal(format!("ceph df answered with invalid JSON: {e}")))?;
    Ok(v["pools"]
        .as_array()
        .and_then(|pools| pools.iter().find(|p| p["id"].as_i64() == Some(pool_id)))
        .and_then(|p| p["stats"]["max_avail"].as_i64())
        .unwrap_or(0))
}

/// Test-only crash points: when FERROCEPH_TEST_CRASH_AT names this point the process
/// aborts here, as a kill -9 would, so tests can prove every flow converges on retry.
pub fn crash_point(name: &str) {
    static AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = AT.get_or_init(|| std::env::var("FERROCEPH_TEST_CRASH_AT").ok());
    if at.as_deref() == Some(name) {
        eprintln!("ferroceph: crash point {name} reached, aborting");
        std::process::abort();
    }
}
