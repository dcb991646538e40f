//! Shared test harness: the dev cluster's coordinates, a driver process on a temporary
//! socket, and typed CSI clients.
#![allow(dead_code)]

use csi::v1 as pb;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

pub mod cephfs;
pub mod doctor;
pub mod manifests;
pub mod node;
pub mod rbd_controller;
mod scratch;
pub mod vm;
#[allow(unused_imports)] // not every test binary uses it
pub use scratch::{alive, kernel_devices_of, loops_on, Scratch};

pub struct ClusterEnv {
    pub vars: HashMap<String, String>,
}

impl ClusterEnv {
    pub fn get(&self, k: &str) -> String {
        self.vars
            .get(k)
            .cloned()
            .unwrap_or_else(|| panic!("dev cluster env lacks {k}"))
    }
    pub fn monitors(&self) -> String {
        self.get("FERRO_MONITORS")
    }
    pub fn fsid(&self) -> String {
        self.get("FERRO_FSID")
    }
    pub fn rbd_secrets(&self) -> HashMap<String, String> {
        HashMap::from([
            ("userID".to_string(), self.get("FERRO_RBD_USER")),
            ("userKey".to_string(), self.get("FERRO_RBD_KEY")),
        ])
    }
    pub fn admin_secrets(&self) -> HashMap<String, String> {
        HashMap::from([
            ("adminID".to_string(), self.get("FERRO_ADMIN_ID")),
            ("adminKey".to_string(), self.get("FERRO_ADMIN_KEY")),
        ])
    }
    /// Every cephx key of the dev cluster, for leak checks.
    pub fn all_keys(&self) -> Vec<String> {
        ["FERRO_ADMIN_KEY", "FERRO_RBD_KEY", "FERRO_CEPHFS_KEY"]
            .iter()
            .filter_map(|k| self.vars.get(*k).cloned())
            .collect()
    }
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The dev cluster's env, from the process environment or `scripts/dev-cluster.sh env`.
pub fn cluster() -> &'static ClusterEnv {
    static ENV: OnceLock<ClusterEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut vars: HashMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("FERRO_"))
            .collect();
        if !vars.contains_key("FERRO_RBD_KEY") {
            let out = Command::new(workspace().join("scripts/dev-cluster.sh"))
                .arg("env")
                .output()
                .expect("run scripts/dev-cluster.sh env");
            assert!(
                out.status.success(),
                "the dev cluster is not up: run scripts/dev-cluster.sh up ({})",
                String::from_utf8_lossy(&out.stderr)
            );
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some((k, v)) = line.split_once('=') {
                    vars.insert(k.trim().to_string(), v.trim().to_string());
                }
            }
        }
        ClusterEnv { vars }
    })
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().to_string()[..8])
}

/// Runs the admin `ceph`/`rbd`/`rados` CLIs against the dev cluster (for checks only).
pub fn admin_cli(tool: &str, args: &[&str]) -> (bool, String) {
    let conf = cluster().get("FERRO_CEPH_CONF");
    let out = Command::new(tool)
        .arg("-c")
        .arg(&conf)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {tool}: {e}"));
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), s)
}

pub struct Driver {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub config: PathBuf,
    pub child: Option<Child>,
    /// A command the driver runs under (e.g. `unshare --pid ...`), empty for none.
    pub wrapper: Vec<String>,
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferroceph")
}

impl Driver {
    /// An RBD driver (controller + node) on a private socket, with a config.json that maps
    /// the cluster's fsid to its monitors.
    pub fn rbd() -> Driver {
        Self::start(
            &[
                "--type=rbd",
                "--controllerserver=true",
                "--nodeserver=true",
                "--nodeid=test-node",
            ],
            &[],
        )
    }

    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Driver {
        Self::start_wrapped(&[], args, envs)
    }

    /// A driver run under `wrapper` (a command that execs the rest of its arguments).
    pub fn start_wrapped(wrapper: &[&str], args: &[&str], envs: &[(&str, &str)]) -> Driver {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("csi/csi.sock");
        let log = dir.path().join("driver.log");
        let config = dir.path().join("config.json");
        let c = cluster();
        let map = serde_json::json!([{"clusterID": c.fsid(), "monitors": [c.monitors()]}]);
        let _ = std::fs::create_dir_all(dir.path().join("csi"));
        std::fs::write(&config, map.to_string()).expect("write config.json");
        let mut d = Driver {
            dir,
            socket,
            log,
            config,
            child: None,
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        d.spawn();
        d
    }

    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// (Re)starts the process with the same arguments, appending to the same log.
    pub fn spawn(&mut self) {
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let mut cmd = match self.wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        cmd.args(&self.args)
            .arg(format!("--endpoint={}", self.endpoint()))
            .arg(format!("--configpath={}", self.config.display()))
            .arg(format!(
                "--keysdir={}",
                self.dir.path().join("keys").display()
            ))
            .args(
                if self.args.iter().any(|a| a.starts_with("--metricsport")) {
                    None
                } else {
                    Some("--metricsport=0")
                },
            )
            .env("FERROCEPH_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup log"))
            .stderr(logf);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn ferroceph"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("driver exited early ({st}): {}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "driver socket did not appear: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits for the process to exit (e.g. after a crash point), returning its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the driver as Kubernetes does (SIGTERM, then SIGKILL after a grace period), so
    /// that an RBD controller removes the images of its last deletes from the trash.
    pub fn stop(&mut self) {
        if !self.wrapper.is_empty() {
            return self.kill();
        }
        let Some(c) = self.child.as_mut() else { return };
        unsafe_free_kill(c.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if matches!(c.try_wait(), Ok(Some(_))) {
                self.child = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        unsafe_free_kill(c.id(), "TERM");
        c.wait().expect("wait")
    }

    pub async fn channel(&self) -> Channel {
        ferroceph::client::connect(&self.endpoint(), Duration::from_secs(120))
            .await
            .expect("connect to driver")
    }

    pub async fn controller(&self) -> pb::controller_client::ControllerClient<Channel> {
        pb::controller_client::ControllerClient::new(self.channel().await)
    }

    pub async fn identity(&self) -> pb::identity_client::IdentityClient<Channel> {
        pb::identity_client::IdentityClient::new(self.channel().await)
    }

    pub async fn node(&self) -> pb::node_client::NodeClient<Channel> {
        pb::node_client::NodeClient::new(self.channel().await)
    }
}

fn unsafe_free_kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// Where driver logs are kept after each test, for the suite-wide secrets audit
/// (`scripts/secrets-audit.sh`).
pub fn kept_logs_dir() -> PathBuf {
    vm::guest_log_dir()
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("ferroceph-logs"))
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.stop();
        let dir = kept_logs_dir();
        if std::fs::create_dir_all(&dir).is_ok() {
            let name = self
                .dir
                .path()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            // read + write, not fs::copy: the VM's results share (9p) refuses its shortcuts
            if let Ok(text) = std::fs::read(&self.log) {
                if let Err(e) = std::fs::write(dir.join(format!("{name}.log")), text) {
                    eprintln!("cannot keep the driver log in {}: {e}", dir.display());
                }
            }
        }
    }
}

pub fn mount_cap(mode: pb::volume_capability::access_mode::Mode) -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(pb::volume_capability::AccessType::Mount(
            pb::volume_capability::MountVolume::default(),
        )),
        access_mode: Some(pb::volume_capability::AccessMode { mode: mode as i32 }),
    }
}

pub fn block_cap(mode: pb::volume_capability::access_mode::Mode) -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(pb::volume_capability::AccessType::Block(
            pb::volume_capability::BlockVolume {},
        )),
        access_mode: Some(pb::volume_capability::AccessMode { mode: mode as i32 }),
    }
}

pub fn rwo() -> pb::VolumeCapability {
    mount_cap(pb::volume_capability::access_mode::Mode::SingleNodeWriter)
}

/// StorageClass parameters for the dev cluster's rbd pool.
pub fn rbd_params() -> HashMap<String, String> {
    HashMap::from([
        ("clusterID".to_string(), cluster().fsid()),
        ("pool".to_string(), cluster().get("FERRO_RBD_POOL")),
        (
            "imageFeatures".to_string(),
            "layering,exclusive-lock,object-map,fast-diff,deep-flatten".to_string(),
        ),
    ])
}

pub fn create_req(name: &str, size: i64) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        name: name.to_string(),
        capacity_range: Some(pb::CapacityRange {
            required_bytes: size,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![rwo()],
        parameters: rbd_params(),
        secrets: cluster().rbd_secrets(),
        ..Default::default()
    }
}

/// DeleteVolume of an RBD volume with the provisioner's secrets.
pub fn del_req(id: &str) -> pb::DeleteVolumeRequest {
    pb::DeleteVolumeRequest {
        volume_id: id.to_string(),
        secrets: cluster().rbd_secrets(),
    }
}

/// NodeStageVolume of a provisioned volume, as kubelet sends it.
pub fn stage_req(
    id: &str,
    ctx: &HashMap<String, String>,
    staging: &Path,
    cap: pb::VolumeCapability,
    secrets: HashMap<String, String>,
) -> pb::NodeStageVolumeRequest {
    pb::NodeStageVolumeRequest {
        volume_id: id.to_string(),
        publish_context: HashMap::new(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(cap),
        secrets,
        volume_context: ctx.clone(),
    }
}

/// NodePublishVolume of a staged volume, as kubelet sends it.
pub fn publish_req(
    id: &str,
    ctx: &HashMap<String, String>,
    staging: &Path,
    target: &Path,
    cap: pb::VolumeCapability,
    readonly: bool,
) -> pb::NodePublishVolumeRequest {
    pb::NodePublishVolumeRequest {
        volume_id: id.to_string(),
        publish_context: HashMap::new(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(cap),
        readonly,
        secrets: HashMap::new(),
        volume_context: ctx.clone(),
    }
}

pub fn unpublish_req(id: &str, target: &Path) -> pb::NodeUnpublishVolumeRequest {
    pb::NodeUnpublishVolumeRequest {
        volume_id: id.to_string(),
        target_path: target.display().to_string(),
    }
}

pub fn unstage_req(id: &str, staging: &Path) -> pb::NodeUnstageVolumeRequest {
    pb::NodeUnstageVolumeRequest {
        volume_id: id.to_string(),
        staging_target_path: staging.display().to_string(),
    }
}

/// CreateSnapshot of an RBD volume with the snapshotter's secrets.
pub fn snap_req(name: &str, source: &str) -> pb::CreateSnapshotRequest {
    pb::CreateSnapshotRequest {
        name: name.to_string(),
        source_volume_id: source.to_string(),
        secrets: cluster().rbd_secrets(),
        parameters: Default::default(),
    }
}

/// DeleteSnapshot of an RBD snapshot with the snapshotter's secrets.
pub fn del_snap_req(id: &str) -> pb::DeleteSnapshotRequest {
    pb::DeleteSnapshotRequest {
        snapshot_id: id.to_string(),
        secrets: cluster().rbd_secrets(),
    }
}

/// The uuid at the end of a volume or snapshot id.
pub fn uuid_of(id: &str) -> String {
    id[id.len() - 36..].to_string()
}

pub const MIB: i64 = 1 << 20;

/// Names of the images in the rbd pool (admin view).
pub fn images() -> Vec<String> {
    let (ok, out) = admin_cli("rbd", &["ls", "-p", "rbd", "--format", "json"]);
    assert!(ok, "rbd ls: {out}");
    serde_json::from_str(&out).unwrap_or_default()
}

pub fn image_exists(name: &str) -> bool {
    images().iter().any(|i| i == name)
}

/// The omap keys of a RADOS object in the rbd pool.
pub fn omap_keys(obj: &str) -> Vec<String> {
    let (ok, out) = admin_cli("rados", &["-p", "rbd", "listomapkeys", obj]);
    if !ok {
        return Vec::new();
    }
    out.lines().map(str::to_string).collect()
}

pub fn object_exists(obj: &str) -> bool {
    admin_cli("rados", &["-p", "rbd", "stat", obj]).0
}

/// Sets the OSDs' watch timeout for the life of the guard: how long a killed driver's
/// watches keep pinning its images (30 s by default, which would dominate the run). Clients
/// ping their watches every 5 s, so 10 s stays safe for the live ones.
pub struct WatchTimeout;

impl WatchTimeout {
    pub fn set(secs: u64) -> WatchTimeout {
        let (ok, out) = admin_cli(
            "ceph",
            &[
                "config",
                "set",
                "osd",
                "osd_client_watch_timeout",
                &secs.to_string(),
            ],
        );
        assert!(ok, "cannot set osd_client_watch_timeout: {out}");
        WatchTimeout
    }
}

impl Drop for WatchTimeout {
    fn drop(&mut self) {
        let (ok, out) = admin_cli("ceph", &["config", "rm", "osd", "osd_client_watch_timeout"]);
        if !ok {
            eprintln!("cannot reset osd_client_watch_timeout: {out}");
        }
    }
}
