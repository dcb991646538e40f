//! Command line: ceph-csi's serving flags (so existing manifests port with an image swap),
//! plus operator subcommands.

use crate::duration::parse_duration;
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("FERROCEPH_GIT_COMMIT"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "ferroceph",
    version = VERSION,
    about = "Kubernetes CSI driver for Ceph RBD and CephFS",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DriverType {
    Rbd,
    Cephfs,
    Liveness,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Which driver to serve.
    #[arg(long = "type", value_enum)]
    pub driver_type: Option<DriverType>,

    /// CSI endpoint: unix:///path/csi.sock (or unix:/path).
    #[arg(long, default_value = "unix:///csi/csi.sock")]
    pub endpoint: String,

    /// Node id reported by NodeGetInfo (required with --nodeserver).
    #[arg(long, env = "NODE_ID")]
    pub nodeid: Option<String>,

    /// CSI driver name (default rbd.ferroceph.io / cephfs.ferroceph.io).
    #[arg(long)]
    pub drivername: Option<String>,

    /// Serve the Controller service.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub controllerserver: bool,

    /// Serve the Node service.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    pub nodeserver: bool,

    /// Suffix of the journal objects (csi.volumes.<instanceid>).
    #[arg(long, default_value = "default")]
    pub instanceid: String,

    /// Port of the Prometheus metrics endpoint (0 disables it).
    #[arg(long, default_value_t = 8080)]
    pub metricsport: u16,

    /// Address the metrics endpoint binds to (the pod IP in Kubernetes).
    #[arg(long, env = "POD_IP", default_value = "127.0.0.1")]
    pub metricsaddr: String,

    /// Path of the Prometheus metrics endpoint.
    #[arg(long, default_value = "/metrics")]
    pub metricspath: String,

    /// Liveness: interval between probes (e.g. 60s, 1m).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub polltime: Duration,

    /// Liveness: deadline of one probe.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Deadline of one RPC; a call that takes longer answers DeadlineExceeded.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub rpctimeout: Duration,

    /// Deadline of one Ceph call (monitor/OSD operations, connection).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub cephtimeout: Duration,

    /// How often the controller retries removing deleted images left in the RBD trash
    /// (clones still depend on them, or a dead client's watch); 0: only right after deletes.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub reapinterval: Duration,

    /// Controller: a directory holding a Secret's keys (the provisioner secret, mounted as a
    /// volume; `<dir>/<clusterID>/` for one cluster), used by the RPCs that carry no
    /// secrets (ListVolumes, ListSnapshots, GetCapacity, ControllerGetVolume) and by the
    /// trash reaper, also after a restart.
    #[arg(long)]
    pub controllersecrets: Option<PathBuf>,

    /// Log format: text (one line per event) or json (one object per line).
    #[arg(long, value_enum, default_value = "text", env = "FERROCEPH_LOG_FORMAT")]
    pub logformat: LogFormat,

    /// Cluster map (ceph-csi's config.json).
    #[arg(long, default_value = "/etc/ceph-csi-config/config.json")]
    pub configpath: PathBuf,

    /// Directory for short-lived 0600 key files.
    #[arg(long, default_value = "/tmp/csi/keys")]
    pub keysdir: PathBuf,

    /// Node plugin: the cgroup (below the root of each hierarchy under --cgrouproot) that the
    /// user-space attachments (FUSE exporter, rbd-nbd, ceph-fuse) are started in, so that
    /// they outlive the plugin's container; `none` keeps them in the plugin's own cgroup.
    #[arg(long, default_value = "none")]
    pub attachcgroup: String,

    /// Node plugin: where the host's cgroup hierarchies are mounted (with --attachcgroup).
    #[arg(long, default_value = "/sys/fs/cgroup")]
    pub cgrouproot: PathBuf,

    /// Node plugin: the host's cgroup namespace, joined by the attachments' launcher when
    /// the container has one of its own (needs hostPID for the default).
    #[arg(long, default_value = "/proc/1/ns/cgroup")]
    pub cgroupns: PathBuf,

    /// Node labels that make up the node's topology domain (accepted for compatibility).
    #[arg(long, default_value = "")]
    pub domainlabels: String,

    // ceph-csi flags accepted so manifests port unchanged; they have no effect here.
    #[arg(long, hide = true)]
    pub v: Option<String>,
    #[arg(long, hide = true)]
    pub pidlimit: Option<String>,
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub enableprofiling: Option<String>,
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub setmetadata: Option<String>,
    #[arg(long, hide = true)]
    pub stagingpath: Option<String>,
    #[arg(long, hide = true)]
    pub clustername: Option<String>,
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub logtostderr: Option<String>,
    #[arg(long = "extra-create-metadata", hide = true, num_args = 0..=1, default_missing_value = "true")]
    pub extra_create_metadata: Option<String>,
}

impl ServeArgs {
    pub fn driver_name(&self) -> String {
        if let Some(n) = &self.drivername {
            return n.clone();
        }
        match self.driver_type {
            Some(DriverType::Cephfs) => "cephfs.ferroceph.io".to_string(),
            _ => "rbd.ferroceph.io".to_string(),
        }
    }
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Call one CSI RPC on a running driver and print the response as JSON.
    Client(crate::client::ClientArgs),
    /// Measure provisioning against the Ceph floor, start-up time and memory (needs the
    /// FERRO_* variables of `scripts/dev-cluster.sh env`).
    Bench(crate::bench::BenchArgs),
    /// Check this node and the clusters of the cluster map; print each problem with its fix.
    Doctor(crate::doctor::DoctorArgs),
    /// Internal: serve one RBD image as a file over FUSE (started by the RBD node plugin).
    #[command(name = "fuse-export", hide = true)]
    FuseExport(crate::fuse_export::FuseExportArgs),
    /// Internal: start an attachment process in the attachments' cgroup (node plugin).
    #[command(hide = true)]
    Launch(crate::node::outlive::LaunchArgs),
}

/// Go's flag package also accepts `-name=value`; rewrite those to `--name=value` so
/// ceph-csi manifests written either way parse.
pub fn normalize_go_flags(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            let single = a.starts_with('-') && !a.starts_with("--");
            // `get`: an empty argument (e.g. an empty --namespace value) must not panic.
            let tail = a.get(1..).unwrap_or("");
            let name_len = tail.split('=').next().map(str::len).unwrap_or(0);
            if i > 0
                && single
                && name_len > 1
                && tail.starts_with(|c: char| c.is_ascii_alphabetic())
            {
                format!("-{a}")
            } else {
                a
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        let argv = normalize_go_flags(args.iter().map(|s| s.to_string()));
        Cli::try_parse_from(argv).unwrap()
    }

    #[test]
    fn ceph_csi_manifest_flags_parse() {
        let cli = parse(&[
            "ferroceph",
            "--type=rbd",
            "--nodeid=node-1",
            "--endpoint=unix:///csi/csi-provisioner.sock",
            "--v=5",
            "--controllerserver=true",
            "--drivername=rbd.csi.ceph.com",
            "--pidlimit=-1",
            "--enableprofiling=false",
            "--setmetadata=true",
            "-instanceid=abc",
        ]);
        assert_eq!(cli.serve.driver_type, Some(DriverType::Rbd));
        assert!(cli.serve.controllerserver);
        assert!(!cli.serve.nodeserver);
        assert_eq!(cli.serve.instanceid, "abc");
        assert_eq!(cli.serve.driver_name(), "rbd.csi.ceph.com");
    }

    #[test]
    fn defaults() {
        let cli = parse(&["ferroceph", "--type", "cephfs", "--nodeserver"]);
        assert!(cli.serve.nodeserver);
        assert_eq!(cli.serve.driver_name(), "cephfs.ferroceph.io");
        assert_eq!(cli.serve.endpoint, "unix:///csi/csi.sock");
        assert_eq!(cli.serve.keysdir, PathBuf::from("/tmp/csi/keys"));
        assert_eq!(cli.serve.polltime, Duration::from_secs(60));
    }

    #[test]
    fn empty_arguments_do_not_panic() {
        let a = normalize_go_flags(["ferroceph".to_string(), "--namespace".into(), String::new()]);
        assert_eq!(a[2], "");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("150s").unwrap(), Duration::from_secs(150));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("3x").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
