//! Bridge from the async services to the blocking Ceph access layer: pooled connections,
//! `spawn_blocking`, and one mapping from Ceph errors to gRPC codes whose messages say what
//! the driver was waiting for.

use rados::{Cluster, ClusterPool, ConnectConfig, ErrorKind};
use std::sync::Arc;
use std::time::Duration;
use tonic::Status;

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
    pub async fn run<T, F>(&self, cfg: ConnectConfig, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Cluster) -> Result<T, Status> + Send + 'static,
    {
        let pool = self.pool.clone();
        let op = crate::server::RPC_METHOD
            .try_with(|m| m.clone())
            .unwrap_or_else(|_| "background".to_string());
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let cluster = pool
                .get(&cfg)
                .map_err(|e| status("connect to the cluster", &e))?;
            f(&cluster)
        })
        .await
        .map_err(|e| Status::internal(format!("Ceph worker failed: {e}")))?;
        crate::metrics::get().ceph_op(&op, started.elapsed());
        result
    }
}

/// Maps a Ceph error to the gRPC code a CO can act on. `what` says what we were doing.
pub fn status(what: &str, e: &rados::Error) -> Status {
    let msg = format!("{what}: {e}");
    match e.kind() {
        ErrorKind::NotFound => Status::not_found(msg),
        ErrorKind::AlreadyExists => Status::already_exists(msg),
        ErrorKind::PermissionDenied => Status::permission_denied(format!(
            "{msg} (check the cephx user and key in the secret and the user's caps)"
        )),
        ErrorKind::TimedOut => Status::unavailable(format!("{msg} ({})", timed_out_hint(e))),
        ErrorKind::Busy => Status::failed_precondition(msg),
        ErrorKind::InvalidArgument => Status::invalid_argument(msg),
        _ => Status::internal(msg),
    }
}

/// What a timed-out Ceph call waited for, from the kind of operation: connecting and mon
/// commands wait for the monitor quorum, everything else for the OSDs serving the object.
fn timed_out_hint(e: &rados::Error) -> &'static str {
    let op = e.op.as_ref();
    if op.contains("connect")
        || op.contains("monitor")
        || op.starts_with("mon")
        || op.ends_with("fsid")
    {
        "no monitor answered in time: is the monitor quorum up?"
    } else if op.starts_with("mgr") {
        "the mgr did not answer in time (its volumes module waits for the MDS): are the mgr and the filesystem's MDS up?"
    } else if op.starts_with("look up pool") {
        "the cluster did not answer in time: are the monitors up?"
    } else {
        "waited for the OSDs: no OSD answered in time; are the OSDs up and the pool's PGs active?"
    }
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

#[cfg(test)]
mod timeout_message_tests {
    use super::*;

    #[test]
    fn a_timeout_names_what_it_waited_for() {
        let osd = status(
            "journal lookup",
            &rados::Error::new(
                "omap get",
                libc::ETIMEDOUT,
                "csi.volumes.default in pool rbd",
            ),
        );
        assert_eq!(osd.code(), tonic::Code::Unavailable);
        assert!(osd.message().contains("OSD"), "{}", osd.message());
        let mon = status(
            "read pool usage",
            &rados::Error::new("mon command", libc::ETIMEDOUT, "df"),
        );
        assert_eq!(mon.code(), tonic::Code::Unavailable);
        assert!(
            mon.message().contains("monitor quorum"),
            "{}",
            mon.message()
        );
    }
}
