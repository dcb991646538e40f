//! `ferroceph doctor`: checks a node (kernel modules, /dev/fuse, tools, keys directory,
//! kubelet mount propagation) and the clusters of the cluster map (monitors reachable, and
//! with `--secrets-file` the user's key and caps), and prints one line per check with, for
//! every problem, why it matters and the exact fix. Exit code 0 when nothing failed
//! (warnings allowed), 1 otherwise. `--json` prints the same report as one JSON object.
//!
//! With `--pool` it also checks the RBD journal of `--instanceid` against the pool's images
//! (orphaned journal keys, orphaned `<prefix><uuid>` images, per-volume objects without a
//! directory key, and with `--pv-json` volumes no PV references); `--fix` removes the
//! orphans after printing exactly what it will remove, and changes nothing else.
//!
//! Keys are read from the secrets file only to connect; no message carries one.

use crate::duration::parse_duration;
use clap::{Args, ValueEnum};
use report::Report;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

mod cluster;
mod credentials;
mod fix;
mod journal;
mod kubelet;
mod node;
mod report;
mod tools;

pub use cluster::{duplicate_endpoints, parse_monitor, Endpoint};
pub use tools::{Tool, TOOLS};

/// What the machine runs: node checks need the node plugin's view of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Node and cluster checks.
    All,
    /// Kernel, tools, keys directory, kubelet directories, cluster map and monitors.
    Node,
    /// Cluster map, monitors and (with --secrets-file) the Ceph user.
    Controller,
}

#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Which checks to run: node (kernel, tools, keys dir), controller (cluster only), all.
    #[arg(long, value_enum, default_value = "all")]
    pub role: Role,

    /// Cluster map (ceph-csi's config.json).
    #[arg(long, default_value = "/etc/ceph-csi-config/config.json")]
    pub configpath: PathBuf,

    /// The driver's --keysdir: must be writable and should be memory-backed.
    #[arg(long, default_value = "/tmp/csi/keys")]
    pub keysdir: PathBuf,

    /// The StorageClass imageFeatures to check against the kernel's krbd support
    /// (default: layering, ceph-csi's default).
    #[arg(long)]
    pub image_features: Option<String>,

    /// CSI secrets (JSON object or KEY=VALUE lines) with userID/userKey and/or
    /// adminID/adminKey: connect with them, report the fsid and try the pool.
    #[arg(long)]
    pub secrets_file: Option<PathBuf>,

    /// Cluster of the map to connect to with --secrets-file (default: the only one).
    #[arg(long)]
    pub clusterid: Option<String>,

    /// Pool the user must be able to list (RBD image pool), tried with --secrets-file.
    #[arg(long)]
    pub pool: Option<String>,

    /// Deadline of each network check (TCP connect to a monitor, Ceph connection).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,

    /// Driver instance (its --instanceid) whose RADOS journal in --pool is checked:
    /// csi.volumes.<id> and csi.snaps.<id>.
    #[arg(long, default_value = "default")]
    pub instanceid: String,

    /// The output of `kubectl get pv -o json`: report journal volumes no PV references.
    #[arg(long)]
    pub pv_json: Option<PathBuf>,

    /// Only images named <prefix><uuid> are volume images (StorageClass volumeNamePrefix).
    #[arg(long, default_value = "csi-vol-")]
    pub volume_name_prefix: String,

    /// Only images named <prefix><uuid> are snapshot images (snapshotNamePrefix).
    #[arg(long, default_value = "csi-snap-")]
    pub snapshot_name_prefix: String,

    /// Remove the orphans found in the journal check (orphaned journal keys, orphaned
    /// images without watchers, per-volume objects without a directory key), after
    /// printing exactly what will be removed. Nothing else is ever changed.
    #[arg(long)]
    pub fix: bool,
}

/// Entry point of the subcommand; the checks block (sockets, librados), so they run on a
/// blocking thread.
pub async fn run(args: DoctorArgs) -> i32 {
    let json = args.json;
    let report = match tokio::task::spawn_blocking(move || diagnose(&args)).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferroceph doctor: the checks failed to run: {e}");
            return 1;
        }
    };
    let text = if json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => s + "\n",
            Err(e) => {
                eprintln!("ferroceph doctor: cannot encode the report: {e}");
                return 1;
            }
        }
    } else {
        report.render_text()
    };
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
    report.exit_code()
}

/// Runs every check of `args.role` and collects the findings.
pub(crate) fn diagnose(args: &DoctorArgs) -> Report {
    let mut checks = Vec::new();
    if args.role != Role::Controller {
        checks.extend(node::node_checks(args));
    }
    checks.extend(cluster::cluster_checks(args));
    Report::new(checks)
}

/// True for a string shaped like a Ceph fsid or a UUID (8-4-4-4-12 hex digits).
pub(crate) fn looks_like_fsid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsid_shape() {
        assert!(looks_like_fsid("5db14e3a-f2f0-42dd-893b-202e8d15f48c"));
        assert!(!looks_like_fsid("my-cluster"));
        assert!(!looks_like_fsid("5db14e3a-f2f0-42dd-893b-202e8d15f48"));
    }
}
