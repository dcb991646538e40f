//! `ferroceph bench`: provisioning latency and throughput of a real driver process against
//! the floor (the same Ceph operations issued directly through the access layer from one
//! process), start-up time, and memory. Prints a table and a final JSON line.
//!
//! Cluster coordinates come from the environment, as `scripts/dev-cluster.sh env` prints
//! them: FERRO_MONITORS, FERRO_FSID, FERRO_RBD_USER, FERRO_RBD_KEY.

use clap::Args;
use csi::v1 as pb;
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Volumes per sequential and concurrent run.
    #[arg(long, default_value_t = 50)]
    pub n: usize,
    /// Requests in flight in the concurrent run.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Volumes created before the "after creates" memory sample.
    #[arg(long, default_value_t = 200)]
    pub rss_creates: usize,
    /// Snapshot/restore rounds.
    #[arg(long, default_value_t = 10)]
    pub snapshots: usize,
    /// RBD pool to use.
    #[arg(long, default_value = "rbd")]
    pub pool: String,
    /// Node rounds (fresh volume, stage+publish, unpublish+unstage) through the FUSE
    /// attachments, for RBD and for CephFS.
    #[arg(long, default_value_t = 5)]
    pub node_rounds: usize,
    /// KEY=VALUE file with the cluster coordinates, used when FERRO_MONITORS is not in the
    /// environment (default: the dev cluster's `$FERROCEPH_CLUSTER_DIR/env`, i.e.
    /// /var/tmp/ferroceph-cluster/env). Keeps the keys out of every process environment.
    #[arg(long)]
    pub env_file: Option<PathBuf>,
    /// Only the RBD CreateVolume/DeleteVolume figures (sequential and concurrent, with
    /// their floors): a quick check of the provisioning path.
    #[arg(long)]
    pub quick: bool,
}

struct Env {
    /// CephFS user, key and filesystem, when the environment names them.
    cephfs: Option<(String, String, String)>,
    monitors: String,
    fsid: String,
    user: String,
    key: String,
}

fn env(file: Option<&Path>) -> anyhow::Result<Env> {
    let from_file: HashMap<String, String> = if std::env::var_os("FERRO_MONITORS").is_some() {
        HashMap::new()
    } else {
        let path = file.map(Path::to_path_buf).unwrap_or_else(|| {
            let dir = std::env::var_os("FERROCEPH_CLUSTER_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/tmp/ferroceph-cluster"));
            dir.join("env")
        });
        let text = std::fs::read_to_string(&path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the cluster coordinates from {}: {e} (start the dev cluster with \
                 `scripts/dev-cluster.sh up`, or pass --env-file)",
                path.display()
            )
        })?;
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect()
    };
    let get = |k: &str| {
        std::env::var(k)
            .ok()
            .or_else(|| from_file.get(k).cloned())
            .ok_or_else(|| anyhow::anyhow!("{k} is not set in the environment or the env file"))
    };
    let cephfs = match (
        get("FERRO_CEPHFS_USER"),
        get("FERRO_CEPHFS_KEY"),
        get("FERRO_FS_NAME"),
    ) {
        (Ok(u), Ok(k), Ok(f)) => Some((u, k, f)),
        _ => None,
    };
    Ok(Env {
        cephfs,
        monitors: get("FERRO_MONITORS")?,
        fsid: get("FERRO_FSID")?,
        user: get("FERRO_RBD_USER")?,
        key: get("FERRO_RBD_KEY")?,
    })
}

#[derive(Default, Clone)]
struct Stats {
    samples: Vec<f64>,
}

impl Stats {
    fn push(&mut self, d: Duration) {
        self.samples.push(d.as_secs_f64() * 1000.0);
    }
    fn pct(&self, p: f64) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        let mut v = self.samples.clone();
        v.sort_by(f64::total_cmp);
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i.min(v.len() - 1)]
    }
    fn median(&self) -> f64 {
        self.pct(0.5)
    }
    fn max(&self) -> f64 {
        self.samples.iter().cloned().fold(0.0, f64::max)
    }
}

struct DriverProc {
    child: std::process::Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for DriverProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_driver(e: &Env) -> anyhow::Result<(DriverProc, Instant)> {
    spawn_typed(e, "rbd")
}

/// Flags of a driver process that serves both the controller and the node service.
const CONTROLLER_AND_NODE: &[&str] = &[
    "--controllerserver=true",
    "--nodeserver=true",
    "--nodeid=bench",
];

/// Flags of a node plugin alone, as it runs on every node of a cluster.
const NODE_ONLY: &[&str] = &["--nodeserver=true", "--nodeid=bench-node"];

fn spawn_typed(e: &Env, driver_type: &str) -> anyhow::Result<(DriverProc, Instant)> {
    spawn_with(e, driver_type, CONTROLLER_AND_NODE)
}

fn spawn_node(e: &Env, driver_type: &str) -> anyhow::Result<(DriverProc, Instant)> {
    spawn_with(e, driver_type, NODE_ONLY)
}

fn spawn_with(
    e: &Env,
    driver_type: &str,
    services: &[&str],
) -> anyhow::Result<(DriverProc, Instant)> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("csi.sock");
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        json!([{"clusterID": e.fsid, "monitors": [e.monitors]}]).to_string(),
    )?;
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let child = std::process::Command::new(exe)
        .arg(format!("--type={driver_type}"))
        .args(services)
        .arg("--metricsport=0")
        .arg(format!("--endpoint=unix://{}", socket.display()))
        .arg(format!("--configpath={}", config.display()))
        .arg(format!("--keysdir={}", dir.path().join("keys").display()))
        .env("FERROCEPH_LOG", "warn")
        // the driver gets keys only with requests, never from its environment
        .env_remove("FERRO_ADMIN_KEY")
        .env_remove("FERRO_RBD_KEY")
        .env_remove("FERRO_CEPHFS_KEY")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    Ok((
        DriverProc {
            child,
            socket,
            _dir: dir,
        },
        started,
    ))
}

async fn wait_probe(socket: &Path) -> anyhow::Result<Channel> {
    let endpoint = format!("unix://{}", socket.display());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(ch) = crate::client::connect(&endpoint, Duration::from_secs(5)).await {
            let mut id = pb::identity_client::IdentityClient::new(ch.clone());
            if id.probe(pb::ProbeRequest {}).await.is_ok() {
                return Ok(ch);
            }
        }
        if Instant::now() > deadline {
            anyhow::bail!("driver did not answer Probe within 10 s");
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

/// One numeric field of /proc/<pid>/status (kB for the memory ones), 0 when unreadable.
fn proc_status_field(pid: u32, name: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with(':')))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The anonymous part of a process's RSS (heap, stacks), KiB: the rest is file-backed pages
/// of the binary and the shared libraries it maps.
fn anon_kib(pid: u32) -> u64 {
    proc_status_field(pid, "RssAnon")
}

/// (RSS KiB, threads).
fn rss_kib(pid: u32) -> (u64, u64) {
    (
        proc_status_field(pid, "VmRSS"),
        proc_status_field(pid, "Threads"),
    )
}

fn create_req(e: &Env, pool: &str, name: &str) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        name: name.to_string(),
        capacity_range: Some(pb::CapacityRange {
            required_bytes: 1 << 30,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![pb::VolumeCapability {
            access_type: Some(pb::volume_capability::AccessType::Mount(Default::default())),
            access_mode: Some(pb::volume_capability::AccessMode {
                mode: pb::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
            }),
        }],
        parameters: HashMap::from([
            ("clusterID".to_string(), e.fsid.clone()),
            ("pool".to_string(), pool.to_string()),
        ]),
        secrets: secrets(e),
        ..Default::default()
    }
}

fn secrets(e: &Env) -> HashMap<String, String> {
    HashMap::from([
        ("userID".to_string(), e.user.clone()),
        ("userKey".to_string(), e.key.clone()),
    ])
}

async fn create_many(
    ch: &Channel,
    e: &Arc<Env>,
    pool: &str,
    prefix: &str,
    n: usize,
    conc: usize,
) -> anyhow::Result<(Vec<String>, Stats, Duration)> {
    let sem = Arc::new(tokio::sync::Semaphore::new(conc.max(1)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await?;
        let mut ctl = pb::controller_client::ControllerClient::new(ch.clone());
        let req = create_req(e, pool, &format!("{prefix}-{i}"));
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = ctl.create_volume(req).await;
            drop(permit);
            r.map(|r| {
                (
                    r.into_inner()
                        .volume
                        .map(|v| v.volume_id)
                        .unwrap_or_default(),
                    t.elapsed(),
                )
            })
        }));
    }
    let mut ids = Vec::new();
    let mut stats = Stats::default();
    for t in tasks {
        let (id, d) = t.await??;
        ids.push(id);
        stats.push(d);
    }
    Ok((ids, stats, started.elapsed()))
}

async fn delete_many(
    ch: &Channel,
    e: &Arc<Env>,
    ids: &[String],
    conc: usize,
) -> anyhow::Result<(Stats, Duration)> {
    let sem = Arc::new(tokio::sync::Semaphore::new(conc.max(1)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for id in ids {
        let permit = sem.clone().acquire_owned().await?;
        let mut ctl = pb::controller_client::ControllerClient::new(ch.clone());
        let req = pb::DeleteVolumeRequest {
            volume_id: id.clone(),
            secrets: secrets(e),
        };
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = ctl.delete_volume(req).await;
            drop(permit);
            r.map(|_| t.elapsed())
        }));
    }
    let mut stats = Stats::default();
    for t in tasks {
        stats.push(t.await??);
    }
    Ok((stats, started.elapsed()))
}

/// Waits until no image of the volumes `ids` is left in the driver's trash log in `pool`
/// (each deleted image has left the trash); returns how long that took.
async fn trash_drained(e: &Arc<Env>, pool: &str, ids: &[String]) -> anyhow::Result<Duration> {
    let (e, pool) = (e.clone(), pool.to_string());
    let images: std::collections::HashSet<String> = ids
        .iter()
        .map(|id| {
            format!(
                "csi-vol-{}",
                id.get(id.len().saturating_sub(36)..).unwrap_or(id)
            )
        })
        .collect();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Duration> {
        let cfg = rados::ConnectConfig::new([e.monitors.clone()], e.user.clone(), e.key.clone());
        let cluster = rados::Cluster::connect(&cfg)?;
        let io = cluster.ioctx(&pool, "")?;
        let started = Instant::now();
        loop {
            let left = match io.omap_list("csi.ferroceph.trash.default", "", "", 100_000) {
                Ok(kv) => kv.iter().any(|(_, v)| {
                    let v = String::from_utf8_lossy(v);
                    v.split_once(' ')
                        .is_some_and(|(_, name)| images.contains(name))
                }),
                Err(e) if e.kind() == rados::ErrorKind::NotFound => false,
                Err(e) => return Err(e.into()),
            };
            if !left {
                return Ok(started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(600) {
                anyhow::bail!("deleted images still in the trash after 10 minutes");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await?
}

/// The floor: what a create must do in Ceph (directory key, per-volume object with its
/// keys, image, image id recorded), issued directly, and the reverse for a delete.
fn floor_create(io: &rados::IoCtx, name: &str) -> anyhow::Result<String> {
    let uuid = uuid::Uuid::new_v4().to_string();
    let image = format!("floor-vol-{uuid}");
    io.omap_set(
        "floor.volumes",
        &[(format!("floor.volume.{name}").as_str(), uuid.as_bytes())],
    )?;
    io.create_with_omap(
        &format!("floor.volume.{uuid}"),
        &[
            ("csi.volname", name.as_bytes()),
            ("csi.imagename", image.as_bytes()),
        ],
    )?;
    rados::rbd::create(io, &image, &rados::rbd::ImageOptions::new(1 << 30))?;
    io.omap_set(
        &format!("floor.volume.{uuid}"),
        &[("csi.imageid", b"x".as_slice())],
    )?;
    Ok(uuid)
}

/// The floor of what DeleteVolume does before it answers: look at the image (watchers,
/// id), record the move in a trash log, move the image to the trash, drop the name key and
/// the per-volume object. Returns the image id for [`floor_remove`].
fn floor_delete(io: &rados::IoCtx, name: &str, uuid: &str) -> anyhow::Result<String> {
    let image = format!("floor-vol-{uuid}");
    let img = rados::rbd::Image::open_read_only(io, &image)?;
    anyhow::ensure!(img.watchers()?.is_empty(), "floor image {image} in use");
    let id = img.id()?;
    drop(img);
    io.omap_set("floor.trash", &[(id.as_str(), image.as_bytes())])?;
    rados::rbd::trash_move(io, &image, 0)?;
    io.omap_remove("floor.volumes", &[format!("floor.volume.{name}").as_str()])?;
    io.remove_object(&format!("floor.volume.{uuid}"))?;
    Ok(id)
}

/// The floor of the removal that follows a delete: the image leaves the trash and its
/// record goes.
fn floor_remove(io: &rados::IoCtx, id: &str) -> anyhow::Result<()> {
    rados::rbd::trash_remove(io, id, false)?;
    io.omap_remove("floor.trash", &[id])?;
    Ok(())
}

type Made = Vec<(String, String)>;

/// Sequential creates and deletes, driver and floor taking turns one volume at a time, so
/// both meet the same cluster (a single-node cluster's speed drifts while it digests
/// earlier work). Returns (driver create, driver delete, floor create, floor delete).
async fn paired_sequential(
    ch: &Channel,
    e: &Arc<Env>,
    pool: &str,
    prefix: &str,
    n: usize,
) -> anyhow::Result<(Stats, Stats, Stats, Stats)> {
    let io = {
        let (e, pool) = (e.clone(), pool.to_string());
        tokio::task::spawn_blocking(move || -> anyhow::Result<rados::IoCtx> {
            let cfg =
                rados::ConnectConfig::new([e.monitors.clone()], e.user.clone(), e.key.clone());
            let cluster = rados::Cluster::connect(&cfg)?;
            Ok(cluster.ioctx(&pool, "")?)
        })
        .await??
    };
    let io = Arc::new(std::sync::Mutex::new(io));
    let floor_op = |name: String, uuid: Option<String>| {
        let io = io.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<(String, Duration)> {
            let io = io
                .lock()
                .map_err(|_| anyhow::anyhow!("floor io context poisoned"))?;
            let t = Instant::now();
            let u = match uuid {
                None => floor_create(&io, &name)?,
                Some(u) => {
                    let id = floor_delete(&io, &name, &u)?;
                    let answered = t.elapsed();
                    floor_remove(&io, &id)?;
                    return Ok((u, answered));
                }
            };
            Ok((u, t.elapsed()))
        })
    };
    let (mut dc, mut dd, mut fc, mut fd) = (
        Stats::default(),
        Stats::default(),
        Stats::default(),
        Stats::default(),
    );
    let (mut ids, mut made) = (Vec::new(), Vec::new());
    for i in 0..n.max(1) {
        let (id, t) = create_one(ch, e, pool, &format!("{prefix}-{i}")).await?;
        dc.push(t);
        ids.push(id);
        let name = format!("seq-{i}");
        let (u, t) = floor_op(name.clone(), None).await??;
        fc.push(t);
        made.push((name, u));
    }
    for (id, (name, u)) in ids.iter().zip(made) {
        let (s, _) = delete_many(ch, e, std::slice::from_ref(id), 1).await?;
        dd.samples.extend_from_slice(&s.samples);
        // the floor's delete must not share the cluster with the driver's background removal
        trash_drained(e, pool, std::slice::from_ref(id)).await?;
        let (_, t) = floor_op(name, Some(u)).await??;
        fd.push(t);
    }
    Ok((dc, dd, fc, fd))
}

async fn create_one(
    ch: &Channel,
    e: &Arc<Env>,
    pool: &str,
    name: &str,
) -> anyhow::Result<(String, Duration)> {
    let mut ctl = pb::controller_client::ControllerClient::new(ch.clone());
    let req = create_req(e, pool, name);
    let t = Instant::now();
    let v = ctl.create_volume(req).await?.into_inner().volume;
    Ok((v.map(|v| v.volume_id).unwrap_or_default(), t.elapsed()))
}

/// One phase of the concurrent floor, per thread: create (names), delete (name, uuid) or
/// remove from the trash (image ids).
#[derive(Clone)]
enum FloorWork {
    Create,
    Delete(Made),
    Remove(Vec<String>),
}

/// Rates of the concurrent floor, per second: creates, deletes answered, and deletes with
/// the image removed from the trash too.
struct FloorRates {
    create: f64,
    delete: f64,
    removed: f64,
}

/// The concurrent floor: `conc` threads, each with its own I/O context, sharing one
/// connection.
fn floor(e: &Env, pool: &str, n: usize, conc: usize) -> anyhow::Result<FloorRates> {
    let cfg = rados::ConnectConfig::new([e.monitors.clone()], e.user.clone(), e.key.clone());
    let cluster = Arc::new(rados::Cluster::connect(&cfg)?);
    let io = cluster.ioctx(pool, "")?;
    for i in 0..3 {
        let u = floor_create(&io, &format!("warm-{i}"))?;
        let id = floor_delete(&io, &format!("warm-{i}"), &u)?;
        floor_remove(&io, &id)?;
    }
    let conc = conc.max(1);
    let per = n.div_ceil(conc);
    let run = |work: Vec<FloorWork>| -> anyhow::Result<(f64, Vec<Made>)> {
        let started = Instant::now();
        let mut handles = Vec::new();
        for (t, work) in work.into_iter().enumerate() {
            let cluster = cluster.clone();
            let pool = pool.to_string();
            handles.push(std::thread::spawn(move || -> anyhow::Result<Made> {
                let io = cluster.ioctx(&pool, "")?;
                let mut out = Vec::new();
                match work {
                    FloorWork::Create => {
                        for i in 0..per {
                            let name = format!("con-{t}-{i}");
                            let u = floor_create(&io, &name)?;
                            out.push((name, u));
                        }
                    }
                    FloorWork::Delete(items) => {
                        for (name, u) in items {
                            out.push((name.clone(), floor_delete(&io, &name, &u)?));
                        }
                    }
                    FloorWork::Remove(ids) => {
                        for id in ids {
                            floor_remove(&io, &id)?;
                        }
                    }
                }
                Ok(out)
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            all.push(
                h.join()
                    .map_err(|_| anyhow::anyhow!("floor thread panicked"))??,
            );
        }
        Ok((started.elapsed().as_secs_f64(), all))
    };
    let (create_secs, made) = run(vec![FloorWork::Create; conc])?;
    let (delete_secs, trashed) = run(made.into_iter().map(FloorWork::Delete).collect())?;
    let ids = trashed
        .into_iter()
        .map(|t| FloorWork::Remove(t.into_iter().map(|(_, id)| id).collect()))
        .collect();
    let (remove_secs, _) = run(ids)?;
    let _ = io.remove_object("floor.volumes");
    let _ = io.remove_object("floor.trash");
    let total = (per * conc) as f64;
    Ok(FloorRates {
        create: total / create_secs,
        delete: total / delete_secs,
        removed: total / (delete_secs + remove_secs),
    })
}

type Ctl = pb::controller_client::ControllerClient<Channel>;
type Node = pb::node_client::NodeClient<Channel>;

/// A mount capability with an access mode and a filesystem type ("" = the driver's).
fn mount_cap(
    mode: pb::volume_capability::access_mode::Mode,
    fs_type: &str,
) -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(pb::volume_capability::AccessType::Mount(
            pb::volume_capability::MountVolume {
                fs_type: fs_type.to_string(),
                ..Default::default()
            },
        )),
        access_mode: Some(pb::volume_capability::AccessMode { mode: mode as i32 }),
    }
}

/// Median, p90 and max of a figure, for the JSON line.
fn summary(s: &Stats) -> serde_json::Value {
    json!({"median": s.median(), "p90": s.pct(0.9), "max": s.max()})
}

/// Staging and target paths of node rounds, under one temporary directory. `cleanup`
/// runs after the rounds, also after a failed one: it detaches whatever is still mounted
/// there, with its loop devices, RBD FUSE exporters and ceph-fuse processes, and removes
/// the directory only once nothing is mounted under it.
struct NodeScratch {
    root: PathBuf,
    staged: Vec<PathBuf>,
}

impl NodeScratch {
    fn new(tag: &str) -> anyhow::Result<NodeScratch> {
        let root = tempfile::Builder::new()
            .prefix(&format!("ferroceph-bench-{tag}-"))
            .tempdir()?
            .keep();
        Ok(NodeScratch {
            root,
            staged: Vec::new(),
        })
    }

    /// Fresh (staging, target) paths for round `i`.
    fn paths(&mut self, i: usize) -> (PathBuf, PathBuf) {
        let base = self.root.join(format!("round-{i}"));
        let staging = base.join("globalmount");
        self.staged.push(staging.clone());
        (staging, base.join("pod/mount"))
    }

    /// Mount points under the directory, deepest first.
    fn mounts(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = crate::node::mount::mounts()
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(&self.root))
            .collect();
        v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        v.dedup();
        v
    }

    /// Loop devices whose backing file lies under the directory.
    fn loops(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir("/sys/block") else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| format!("/dev/{}", e.file_name().to_string_lossy()))
            .filter(|dev| {
                crate::rbd::attach::fuse::loop_backing(dev)
                    .is_some_and(|b| b.starts_with(&self.root))
            })
            .collect()
    }

    async fn cleanup(self) {
        let t = Duration::from_secs(30);
        let loops = self.loops();
        for m in self.mounts() {
            eprintln!("bench: cleanup: unmounting {}", m.display());
            if let Err(e) = crate::cephfs::mounter::lazy_unmount(&m, t).await {
                eprintln!("bench: cleanup: {}", e.message());
            }
        }
        for dev in loops {
            eprintln!("bench: cleanup: detaching {dev}");
            let _ = crate::node::exec::output("losetup", &["-d", &dev], &[], t).await;
        }
        for staging in &self.staged {
            let fuse_dir = crate::node::record::paths(staging).fuse_dir;
            for (pid, start) in crate::rbd::attach::fuse::find_exporters(&fuse_dir) {
                eprintln!("bench: cleanup: stopping the FUSE exporter {pid}");
                crate::rbd::attach::stop_process(pid, start, Duration::from_secs(10)).await;
            }
            if let Some(p) = crate::cephfs::mounter::find_fuse(staging) {
                eprintln!("bench: cleanup: stopping ceph-fuse {}", p.pid);
                crate::cephfs::mounter::stop_fuse(p, Duration::from_secs(5)).await;
            }
        }
        // what the exporters held until they stopped
        for m in self.mounts() {
            let _ = crate::cephfs::mounter::lazy_unmount(&m, t).await;
        }
        if self.mounts().is_empty() {
            if let Err(e) = std::fs::remove_dir_all(&self.root) {
                eprintln!("bench: cleanup: cannot remove {}: {e}", self.root.display());
            }
        } else {
            eprintln!(
                "bench: cleanup: {} is left behind: something is still mounted under it",
                self.root.display()
            );
        }
    }
}

/// What the node rounds of one driver type ask for: the CreateVolume request (its name
/// is set per round), the capability to stage and publish with, the secrets (for the
/// controller's DeleteVolume and the node's NodeStageVolume), and volume_context entries
/// to add on the node side; `staged_by` reads which mounter staged a staging path (from
/// the plugin's record), to make sure the rounds measure the path they claim to.
struct NodeKind {
    driver_type: &'static str,
    staged_by: fn(&Path) -> Option<String>,
    create: pb::CreateVolumeRequest,
    cap: pb::VolumeCapability,
    secrets: HashMap<String, String>,
    context: HashMap<String, String>,
}

/// The node plugin's figures: memory (RSS KiB, threads) right after its first Probe and
/// after the rounds, and the latencies of the rounds.
struct NodeFigures {
    idle: (u64, u64),
    after: (u64, u64),
    stage_publish: Stats,
    unpublish_unstage: Stats,
}

/// The first NodeStageVolume+NodePublishVolume failed: the attachment does not work on
/// this machine (as opposed to a failure after it worked once).
#[derive(Debug)]
struct FirstStageFailed(String);

impl std::fmt::Display for FirstStageFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the first NodeStage+NodePublish failed: {}", self.0)
    }
}

impl std::error::Error for FirstStageFailed {}

/// A provisioned volume as the node requests name it.
struct NodeVol<'a> {
    id: String,
    context: HashMap<String, String>,
    kind: &'a NodeKind,
}

async fn stage_publish(
    node: &mut Node,
    v: &NodeVol<'_>,
    staging: &Path,
    target: &Path,
) -> anyhow::Result<()> {
    node.node_stage_volume(pb::NodeStageVolumeRequest {
        volume_id: v.id.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(v.kind.cap.clone()),
        secrets: v.kind.secrets.clone(),
        volume_context: v.context.clone(),
        ..Default::default()
    })
    .await
    .map_err(|s| anyhow::anyhow!("NodeStageVolume: {}: {}", s.code(), s.message()))?;
    node.node_publish_volume(pb::NodePublishVolumeRequest {
        volume_id: v.id.clone(),
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(v.kind.cap.clone()),
        volume_context: v.context.clone(),
        ..Default::default()
    })
    .await
    .map_err(|s| anyhow::anyhow!("NodePublishVolume: {}: {}", s.code(), s.message()))?;
    Ok(())
}

async fn unpublish_unstage(
    node: &mut Node,
    v: &NodeVol<'_>,
    staging: &Path,
    target: &Path,
) -> anyhow::Result<()> {
    node.node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
        volume_id: v.id.clone(),
        target_path: target.display().to_string(),
    })
    .await
    .map_err(|s| anyhow::anyhow!("NodeUnpublishVolume: {}: {}", s.code(), s.message()))?;
    node.node_unstage_volume(pb::NodeUnstageVolumeRequest {
        volume_id: v.id.clone(),
        staging_target_path: staging.display().to_string(),
    })
    .await
    .map_err(|s| anyhow::anyhow!("NodeUnstageVolume: {}: {}", s.code(), s.message()))?;
    Ok(())
}

/// One round on a provisioned volume: (stage+publish, unpublish+unstage). After a
/// failure the volume is unpublished and unstaged as far as the plugin manages.
async fn node_round(
    node: &mut Node,
    v: &NodeVol<'_>,
    staging: &Path,
    target: &Path,
    first: bool,
) -> anyhow::Result<(Duration, Duration)> {
    let t = Instant::now();
    let up = stage_publish(node, v, staging, target).await;
    let up_t = t.elapsed();
    let up = up.and_then(|()| match (v.kind.staged_by)(staging) {
        Some(m) if m == "fuse" => Ok(()),
        other => Err(anyhow::anyhow!(
            "staged through {}, not the FUSE path",
            other.as_deref().unwrap_or("an unknown mounter (no record)")
        )),
    });
    if let Err(e) = up {
        let _ = unpublish_unstage(node, v, staging, target).await;
        return Err(if first {
            FirstStageFailed(format!("{e:#}")).into()
        } else {
            e
        });
    }
    let t = Instant::now();
    let down = unpublish_unstage(node, v, staging, target).await;
    let down_t = t.elapsed();
    if let Err(e) = down {
        let _ = unpublish_unstage(node, v, staging, target).await;
        return Err(e);
    }
    Ok((up_t, down_t))
}

async fn delete_volume(
    ctl: &mut Ctl,
    id: &str,
    secrets: &HashMap<String, String>,
) -> anyhow::Result<()> {
    ctl.delete_volume(pb::DeleteVolumeRequest {
        volume_id: id.to_string(),
        secrets: secrets.clone(),
    })
    .await
    .map_err(|s| anyhow::anyhow!("DeleteVolume {id}: {}: {}", s.code(), s.message()))?;
    Ok(())
}

/// The rounds: per round the controller creates a fresh volume (not timed), the node
/// stages+publishes it and unpublishes+unstages it (timed), and the controller deletes
/// it. `live` holds the volumes not deleted yet, for the cleanup after a failure.
async fn node_rounds(
    ctl: &mut Ctl,
    node: &mut Node,
    kind: &NodeKind,
    prefix: &str,
    rounds: usize,
    scratch: &mut NodeScratch,
    live: &mut Vec<String>,
) -> anyhow::Result<(Stats, Stats)> {
    let (mut up, mut down) = (Stats::default(), Stats::default());
    for i in 0..rounds {
        let mut req = kind.create.clone();
        req.name = format!("{prefix}-{i}");
        let vol = ctl
            .create_volume(req)
            .await
            .map_err(|s| anyhow::anyhow!("CreateVolume: {}: {}", s.code(), s.message()))?
            .into_inner()
            .volume
            .ok_or_else(|| anyhow::anyhow!("CreateVolume answered no volume"))?;
        live.push(vol.volume_id.clone());
        let mut context = vol.volume_context;
        context.extend(kind.context.clone());
        let v = NodeVol {
            id: vol.volume_id,
            context,
            kind,
        };
        let (staging, target) = scratch.paths(i);
        let (u, d) = node_round(node, &v, &staging, &target, i == 0).await?;
        up.push(u);
        down.push(d);
        delete_volume(ctl, &v.id, &kind.secrets).await?;
        live.retain(|id| id != &v.id);
    }
    Ok((up, down))
}

/// A node plugin of its own (node service only), its memory idle and after `rounds`
/// node rounds through `ctl_ch`'s controller. Whatever a failed round leaves behind is
/// unmounted, stopped and deleted before the error is returned.
async fn node_bench(
    ctl_ch: &Channel,
    e: &Env,
    kind: &NodeKind,
    prefix: &str,
    rounds: usize,
) -> anyhow::Result<NodeFigures> {
    let (d, _) = spawn_node(e, kind.driver_type)?;
    let node_ch = wait_probe(&d.socket).await?;
    let pid = d.child.id();
    let idle = rss_kib(pid);
    let mut ctl = pb::controller_client::ControllerClient::new(ctl_ch.clone());
    let mut node = pb::node_client::NodeClient::new(node_ch);
    let mut scratch = NodeScratch::new(kind.driver_type)?;
    let mut live = Vec::new();
    let r = node_rounds(
        &mut ctl,
        &mut node,
        kind,
        prefix,
        rounds,
        &mut scratch,
        &mut live,
    )
    .await;
    let after = rss_kib(pid);
    scratch.cleanup().await;
    drop(d);
    for id in &live {
        if let Err(err) = delete_volume(&mut ctl, id, &kind.secrets).await {
            eprintln!("bench: cleanup: {err:#}");
        }
    }
    let (stage_publish, unpublish_unstage) = r?;
    Ok(NodeFigures {
        idle,
        after,
        stage_publish,
        unpublish_unstage,
    })
}

/// RBD through the FUSE attachment (`mounter=fuse`), ext4 as in the node tests.
fn rbd_node_kind(e: &Env, pool: &str) -> NodeKind {
    use pb::volume_capability::access_mode::Mode;
    NodeKind {
        driver_type: "rbd",
        staged_by: |staging| {
            crate::node::record::read(staging)
                .ok()
                .flatten()
                .map(|r| r.mounter)
        },
        create: create_req(e, pool, ""),
        cap: mount_cap(Mode::SingleNodeWriter, "ext4"),
        secrets: secrets(e),
        context: HashMap::from([("mounter".to_string(), "fuse".to_string())]),
    }
}

/// The CephFS figures: CreateVolume/DeleteVolume, CreateSnapshot/DeleteSnapshot, and the
/// node rounds through ceph-fuse (Err: why they were skipped).
struct FsFigures {
    create: Stats,
    delete: Stats,
    snap_create: Stats,
    snap_delete: Stats,
    node: Result<NodeFigures, String>,
}

fn cephfs_create_req(
    e: &Env,
    fs: &str,
    secrets: &HashMap<String, String>,
    name: String,
) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        name,
        capacity_range: Some(pb::CapacityRange {
            required_bytes: 1 << 30,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_cap(
            pb::volume_capability::access_mode::Mode::MultiNodeMultiWriter,
            "",
        )],
        parameters: HashMap::from([
            ("clusterID".to_string(), e.fsid.clone()),
            ("fsName".to_string(), fs.to_string()),
        ]),
        secrets: secrets.clone(),
        ..Default::default()
    }
}

/// Why ceph-fuse cannot mount here, if that is visible without trying.
fn ceph_fuse_unavailable() -> Option<String> {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("ceph-fuse").is_file()));
    if !on_path {
        return Some("ceph-fuse is not installed (not on PATH)".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse does not exist".into());
    }
    None
}

/// CreateSnapshot and DeleteSnapshot, `rounds` times, on one CephFS volume.
async fn cephfs_snapshots(
    ctl: &mut Ctl,
    req: pb::CreateVolumeRequest,
    secrets: &HashMap<String, String>,
    prefix: &str,
    rounds: usize,
) -> anyhow::Result<(Stats, Stats)> {
    let vol = ctl
        .create_volume(req)
        .await?
        .into_inner()
        .volume
        .ok_or_else(|| anyhow::anyhow!("no volume"))?;
    let mut left = None;
    let r = cephfs_snapshot_rounds(ctl, &vol.volume_id, secrets, prefix, rounds, &mut left).await;
    if let Some(id) = left {
        let _ = ctl
            .delete_snapshot(pb::DeleteSnapshotRequest {
                snapshot_id: id,
                secrets: secrets.clone(),
            })
            .await;
    }
    let del = delete_volume(ctl, &vol.volume_id, secrets).await;
    let stats = r?;
    del?;
    Ok(stats)
}

/// The rounds of [`cephfs_snapshots`]; `left` names a snapshot made and not deleted.
async fn cephfs_snapshot_rounds(
    ctl: &mut Ctl,
    volume_id: &str,
    secrets: &HashMap<String, String>,
    prefix: &str,
    rounds: usize,
    left: &mut Option<String>,
) -> anyhow::Result<(Stats, Stats)> {
    let (mut c, mut d) = (Stats::default(), Stats::default());
    for i in 0..rounds {
        let t = Instant::now();
        let snap = ctl
            .create_snapshot(pb::CreateSnapshotRequest {
                name: format!("{prefix}-{i}"),
                source_volume_id: volume_id.to_string(),
                secrets: secrets.clone(),
                parameters: Default::default(),
            })
            .await?
            .into_inner()
            .snapshot
            .ok_or_else(|| anyhow::anyhow!("no snapshot"))?;
        c.push(t.elapsed());
        *left = Some(snap.snapshot_id.clone());
        let t = Instant::now();
        ctl.delete_snapshot(pb::DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id,
            secrets: secrets.clone(),
        })
        .await?;
        d.push(t.elapsed());
        *left = None;
    }
    Ok((c, d))
}

/// CephFS CreateVolume / DeleteVolume, sequential, after one warm-up create; then
/// snapshots, then node rounds through ceph-fuse with a node plugin of its own.
async fn cephfs_bench(
    e: &Env,
    n: usize,
    snapshots: usize,
    node_rounds: usize,
) -> anyhow::Result<Option<FsFigures>> {
    let Some((user, key, fs)) = e.cephfs.clone() else {
        return Ok(None);
    };
    let (d, _) = spawn_typed(e, "cephfs")?;
    let ch = wait_probe(&d.socket).await?;
    let secrets = HashMap::from([("adminID".to_string(), user), ("adminKey".to_string(), key)]);
    let req = |name: String| cephfs_create_req(e, &fs, &secrets, name);
    let mut ctl = pb::controller_client::ControllerClient::new(ch.clone());
    let run_id = &uuid::Uuid::new_v4().to_string()[..8];
    let warm = ctl
        .create_volume(req(format!("bench-{run_id}-fswarm")))
        .await?
        .into_inner()
        .volume
        .unwrap_or_default();
    ctl.delete_volume(pb::DeleteVolumeRequest {
        volume_id: warm.volume_id,
        secrets: secrets.clone(),
    })
    .await?;
    let (mut c, mut dl) = (Stats::default(), Stats::default());
    let mut ids = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        let v = ctl
            .create_volume(req(format!("bench-{run_id}-fs-{i}")))
            .await?
            .into_inner()
            .volume
            .unwrap_or_default();
        c.push(t.elapsed());
        ids.push(v.volume_id);
    }
    for id in ids {
        let t = Instant::now();
        ctl.delete_volume(pb::DeleteVolumeRequest {
            volume_id: id,
            secrets: secrets.clone(),
        })
        .await?;
        dl.push(t.elapsed());
    }

    eprintln!("bench: CephFS snapshots x{snapshots}");
    let (snap_create, snap_delete) = cephfs_snapshots(
        &mut ctl,
        req(format!("bench-{run_id}-fssnapsrc")),
        &secrets,
        &format!("bench-{run_id}-fssnap"),
        snapshots,
    )
    .await?;

    eprintln!("bench: CephFS node plugin, ceph-fuse stage/publish x{node_rounds}");
    let node = match ceph_fuse_unavailable() {
        Some(why) => Err(why),
        None => {
            let mut create = req(String::new());
            create
                .parameters
                .insert("mounter".to_string(), "fuse".to_string());
            let kind = NodeKind {
                driver_type: "cephfs",
                staged_by: |staging| {
                    crate::cephfs::mounter::read_record(staging).map(|r| r.mounter)
                },
                create,
                cap: mount_cap(
                    pb::volume_capability::access_mode::Mode::MultiNodeMultiWriter,
                    "",
                ),
                secrets: secrets.clone(),
                context: HashMap::from([("mounter".to_string(), "fuse".to_string())]),
            };
            match node_bench(
                &ch,
                e,
                &kind,
                &format!("bench-{run_id}-fsnode"),
                node_rounds,
            )
            .await
            {
                Ok(f) => Ok(f),
                Err(err) => match err.downcast_ref::<FirstStageFailed>() {
                    Some(first) => Err(first.to_string()),
                    None => return Err(err),
                },
            }
        }
    };
    if let Err(why) = &node {
        eprintln!("bench: CephFS node rounds skipped: {why}");
    }
    Ok(Some(FsFigures {
        create: c,
        delete: dl,
        snap_create,
        snap_delete,
        node,
    }))
}

pub async fn run(args: BenchArgs) -> i32 {
    match bench(args).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench failed: {e:#}");
            1
        }
    }
}

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    let e = Arc::new(env(args.env_file.as_deref())?);
    let pool = args.pool.clone();
    eprintln!("bench: start-up time");
    let mut startup = Stats::default();
    for _ in 0..if args.quick { 0 } else { 5 } {
        let (d, started) = spawn_driver(&e)?;
        wait_probe(&d.socket).await?;
        startup.push(started.elapsed());
    }

    let (d, _) = spawn_driver(&e)?;
    let ch = wait_probe(&d.socket).await?;
    let pid = d.child.id();
    let (rss_idle, threads_idle) = rss_kib(pid);
    let run_id = &uuid::Uuid::new_v4().to_string()[..8];

    eprintln!("bench: warm-up");
    let (w, _, _) = create_many(&ch, &e, &pool, &format!("bench-{run_id}-warm"), 3, 1).await?;
    delete_many(&ch, &e, &w, 1).await?;

    eprintln!(
        "bench: sequential create/delete x{}, driver and floor in turn",
        args.n
    );
    let (seq_create, seq_delete, f_seq_c, f_seq_d) =
        paired_sequential(&ch, &e, &pool, &format!("bench-{run_id}-seq"), args.n).await?;

    // Concurrent runs in the order driver, floor, floor, driver: the cluster's speed drifts
    // over a run, and this order cancels a steady drift out of the ratio.
    eprintln!(
        "bench: concurrent create/delete 2x{} ({} in flight), driver and floor in ABBA order",
        args.n, args.concurrency
    );
    let (mut con_create, mut con_delete) = (Stats::default(), Stats::default());
    let (mut drv_c_secs, mut drv_d_secs, mut flr_c_secs, mut flr_d_secs) = (0.0, 0.0, 0.0, 0.0);
    let (mut drv_gone_secs, mut flr_gone_secs) = (0.0, 0.0);
    for (round, driver_side) in [true, false, false, true].into_iter().enumerate() {
        if driver_side {
            let (ids, c, c_wall) = create_many(
                &ch,
                &e,
                &pool,
                &format!("bench-{run_id}-con{round}"),
                args.n,
                args.concurrency,
            )
            .await?;
            let (d, d_wall) = delete_many(&ch, &e, &ids, args.concurrency).await?;
            // the driver removes deleted images in the background: wait for it, so that
            // the next run does not share the cluster with it, and time it
            let drained = trash_drained(&e, &pool, &ids).await?;
            con_create.samples.extend_from_slice(&c.samples);
            con_delete.samples.extend_from_slice(&d.samples);
            drv_c_secs += c_wall.as_secs_f64();
            drv_d_secs += d_wall.as_secs_f64();
            drv_gone_secs += (d_wall + drained).as_secs_f64();
        } else {
            let (e, pool) = (e.clone(), pool.clone());
            let (n, c) = (args.n, args.concurrency);
            let r = tokio::task::spawn_blocking(move || floor(&e, &pool, n, c)).await??;
            flr_c_secs += n as f64 / r.create;
            flr_d_secs += n as f64 / r.delete;
            flr_gone_secs += n as f64 / r.removed;
        }
    }
    let per_s = |secs: f64| {
        if secs > 0.0 {
            (2 * args.n) as f64 / secs
        } else {
            0.0
        }
    };
    let (con_create_rate, con_delete_rate) = (per_s(drv_c_secs), per_s(drv_d_secs));
    let (f_con_c, f_con_d) = (per_s(flr_c_secs), per_s(flr_d_secs));
    let (con_gone_rate, f_con_gone) = (per_s(drv_gone_secs), per_s(flr_gone_secs));
    if args.quick {
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        println!(
            "ferroceph bench --quick: {} volumes per run, {} in flight, pool {pool}",
            args.n, args.concurrency
        );
        for (name, s, f) in [
            ("RBD CreateVolume, sequential", &seq_create, &f_seq_c),
            ("RBD DeleteVolume, sequential", &seq_delete, &f_seq_d),
        ] {
            println!(
                "{name:<44} {:>8.1}ms floor {:>8.1}ms {:>7.2}x",
                s.median(),
                f.median(),
                ratio(s.median(), f.median())
            );
        }
        for (name, r, f) in [
            ("RBD CreateVolume throughput", con_create_rate, f_con_c),
            ("RBD DeleteVolume throughput", con_delete_rate, f_con_d),
            (
                "RBD DeleteVolume + trash removal",
                con_gone_rate,
                f_con_gone,
            ),
        ] {
            println!(
                "{:<44} {r:>8.1}/s floor {f:>8.1}/s {:>7.2}x",
                format!("{name}, {} in flight", args.concurrency),
                ratio(r, f)
            );
        }
        println!(
            "{}",
            json!({
                "create_seq_ms": seq_create.median(), "floor_create_seq_ms": f_seq_c.median(),
                "delete_seq_ms": seq_delete.median(), "floor_delete_seq_ms": f_seq_d.median(),
                "create_concurrent_per_s": con_create_rate, "floor_create_concurrent_per_s": f_con_c,
                "delete_concurrent_per_s": con_delete_rate, "floor_delete_concurrent_per_s": f_con_d,
            })
        );
        return Ok(());
    }

    eprintln!("bench: snapshot and restore x{}", args.snapshots);
    let mut snap_t = Stats::default();
    let mut restore_t = Stats::default();
    for i in 0..args.snapshots {
        let mut ctl = pb::controller_client::ControllerClient::new(ch.clone());
        let vol = ctl
            .create_volume(create_req(
                &e,
                &pool,
                &format!("bench-{run_id}-snapsrc-{i}"),
            ))
            .await?
            .into_inner()
            .volume
            .ok_or_else(|| anyhow::anyhow!("no volume"))?;
        let t = Instant::now();
        let snap = ctl
            .create_snapshot(pb::CreateSnapshotRequest {
                name: format!("bench-{run_id}-snap-{i}"),
                source_volume_id: vol.volume_id.clone(),
                secrets: secrets(&e),
                parameters: Default::default(),
            })
            .await?
            .into_inner()
            .snapshot
            .ok_or_else(|| anyhow::anyhow!("no snapshot"))?;
        snap_t.push(t.elapsed());
        let mut r = create_req(&e, &pool, &format!("bench-{run_id}-restore-{i}"));
        r.volume_content_source = Some(pb::VolumeContentSource {
            r#type: Some(pb::volume_content_source::Type::Snapshot(
                pb::volume_content_source::SnapshotSource {
                    snapshot_id: snap.snapshot_id.clone(),
                },
            )),
        });
        let t = Instant::now();
        let restored = ctl
            .create_volume(r)
            .await?
            .into_inner()
            .volume
            .ok_or_else(|| anyhow::anyhow!("no volume"))?;
        restore_t.push(t.elapsed());
        for id in [&restored.volume_id, &vol.volume_id] {
            ctl.delete_volume(pb::DeleteVolumeRequest {
                volume_id: id.clone(),
                secrets: secrets(&e),
            })
            .await?;
        }
        ctl.delete_snapshot(pb::DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id,
            secrets: secrets(&e),
        })
        .await?;
    }

    eprintln!("bench: memory after {} creates", args.rss_creates);
    let (ids, _, _) = create_many(
        &ch,
        &e,
        &pool,
        &format!("bench-{run_id}-rss"),
        args.rss_creates,
        args.concurrency,
    )
    .await?;
    let (rss_after, threads_after) = rss_kib(pid);
    let anon_after = anon_kib(pid);
    delete_many(&ch, &e, &ids, args.concurrency).await?;
    let (rss_end, _) = rss_kib(pid);

    eprintln!(
        "bench: RBD node plugin, FUSE stage/publish x{}",
        args.node_rounds
    );
    let node = node_bench(
        &ch,
        &e,
        &rbd_node_kind(&e, &pool),
        &format!("bench-{run_id}-node"),
        args.node_rounds,
    )
    .await?;
    drop(d);

    eprintln!("bench: CephFS create/delete x{}", args.n.min(20));
    let fs = cephfs_bench(&e, args.n.min(20), args.snapshots, args.node_rounds).await?;

    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    println!(
        "ferroceph bench: {} volumes per run, {} in flight, pool {}",
        args.n, args.concurrency, pool
    );
    println!(
        "{:<44} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "figure", "median", "p90", "max", "floor", "ratio"
    );
    let row = |name: &str, s: &Stats, floor: Option<&Stats>| {
        let f = floor.map(|f| f.median()).unwrap_or(0.0);
        println!(
            "{:<44} {:>8.1}ms {:>8.1}ms {:>8.1}ms {:>10} {:>8}",
            name,
            s.median(),
            s.pct(0.9),
            s.max(),
            if f > 0.0 {
                format!("{f:.1}ms")
            } else {
                "-".into()
            },
            if f > 0.0 {
                format!("{:.2}x", ratio(s.median(), f))
            } else {
                "-".into()
            }
        );
    };
    row("RBD CreateVolume, sequential", &seq_create, Some(&f_seq_c));
    row("RBD DeleteVolume, sequential", &seq_delete, Some(&f_seq_d));
    row(
        &format!("RBD CreateVolume, {} in flight (latency)", args.concurrency),
        &con_create,
        None,
    );
    row(
        &format!("RBD DeleteVolume, {} in flight (latency)", args.concurrency),
        &con_delete,
        None,
    );
    row("CreateSnapshot", &snap_t, None);
    row("CreateVolume from snapshot", &restore_t, None);
    row("exec -> first Probe answered", &startup, None);
    row(
        "RBD NodeStage+NodePublish (FUSE)",
        &node.stage_publish,
        None,
    );
    row(
        "RBD NodeUnpublish+NodeUnstage (FUSE)",
        &node.unpublish_unstage,
        None,
    );
    if let Some(f) = &fs {
        row("CephFS CreateVolume, sequential", &f.create, None);
        row("CephFS DeleteVolume, sequential", &f.delete, None);
        row("CephFS CreateSnapshot", &f.snap_create, None);
        row("CephFS DeleteSnapshot", &f.snap_delete, None);
        let names = [
            "CephFS NodeStage+NodePublish (ceph-fuse)",
            "CephFS NodeUnpublish+NodeUnstage (ceph-fuse)",
        ];
        match &f.node {
            Ok(n) => {
                row(names[0], &n.stage_publish, None);
                row(names[1], &n.unpublish_unstage, None);
            }
            Err(why) => {
                for name in names {
                    println!("{name:<44} skipped: {why}");
                }
            }
        }
    }
    println!(
        "{:<44} {:>10.0}/s {:>21} {:>8.0}/s {:>7.2}x",
        format!(
            "RBD CreateVolume throughput, {} in flight",
            args.concurrency
        ),
        con_create_rate,
        "",
        f_con_c,
        ratio(con_create_rate, f_con_c)
    );
    println!(
        "{:<44} {:>10.0}/s {:>21} {:>8.0}/s {:>7.2}x",
        format!(
            "RBD DeleteVolume throughput, {} in flight",
            args.concurrency
        ),
        con_delete_rate,
        "",
        f_con_d,
        ratio(con_delete_rate, f_con_d)
    );
    println!(
        "{:<44} {:>10.0}/s {:>21} {:>8.0}/s {:>7.2}x",
        format!(
            "RBD DeleteVolume + trash removal, {} in flight",
            args.concurrency
        ),
        con_gone_rate,
        "",
        f_con_gone,
        ratio(con_gone_rate, f_con_gone)
    );
    println!(
        "controller RSS: idle {:.1} MiB ({} threads), after {} creates {:.1} MiB ({} threads; {:.1} MiB of it anonymous, the rest mapped code of the binary and the Ceph client libraries), after deleting them {:.1} MiB",
        rss_idle as f64 / 1024.0,
        threads_idle,
        args.rss_creates,
        rss_after as f64 / 1024.0,
        threads_after,
        anon_after as f64 / 1024.0,
        rss_end as f64 / 1024.0
    );
    println!(
        "node plugin RSS: idle {:.1} MiB ({} threads), after {} FUSE stage/publish rounds {:.1} MiB ({} threads)",
        node.idle.0 as f64 / 1024.0,
        node.idle.1,
        args.node_rounds,
        node.after.0 as f64 / 1024.0,
        node.after.1
    );
    let fs_node = fs.as_ref().and_then(|f| f.node.as_ref().ok());
    let out = json!({
        "n": args.n, "concurrency": args.concurrency,
        "create_seq_ms": {"median": seq_create.median(), "p90": seq_create.pct(0.9), "max": seq_create.max()},
        "delete_seq_ms": {"median": seq_delete.median(), "p90": seq_delete.pct(0.9), "max": seq_delete.max()},
        "floor_create_seq_ms": f_seq_c.median(), "floor_delete_seq_ms": f_seq_d.median(),
        "create_seq_ratio": ratio(seq_create.median(), f_seq_c.median()),
        "create_concurrent_per_s": con_create_rate, "floor_create_concurrent_per_s": f_con_c,
        "create_concurrent_ratio": ratio(con_create_rate, f_con_c),
        "delete_concurrent_per_s": con_delete_rate, "floor_delete_concurrent_per_s": f_con_d,
        "delete_concurrent_removed_per_s": con_gone_rate, "floor_delete_concurrent_removed_per_s": f_con_gone,
        "snapshot_ms": snap_t.median(), "restore_ms": restore_t.median(),
        "startup_ms": startup.median(),
        "cephfs_create_seq_ms": fs.as_ref().map(|f| f.create.median()),
        "cephfs_delete_seq_ms": fs.as_ref().map(|f| f.delete.median()),
        "cephfs_snapshot_ms": fs.as_ref().map(|f| summary(&f.snap_create)),
        "cephfs_delete_snapshot_ms": fs.as_ref().map(|f| summary(&f.snap_delete)),
        "cephfs_stage_publish_ms": fs_node.map(|n| summary(&n.stage_publish)),
        "cephfs_unpublish_unstage_ms": fs_node.map(|n| summary(&n.unpublish_unstage)),
        "cephfs_node_skipped": fs.as_ref().and_then(|f| f.node.as_ref().err()),
        "rss_idle_kib": rss_idle, "rss_after_creates_kib": rss_after, "rss_anon_after_creates_kib": anon_after, "rss_after_deletes_kib": rss_end,
        "threads_idle": threads_idle, "threads_after": threads_after,
        "node_rounds": args.node_rounds,
        "node_stage_publish_ms": summary(&node.stage_publish),
        "node_unpublish_unstage_ms": summary(&node.unpublish_unstage),
        "node_rss_idle_kib": node.idle.0, "node_rss_after_kib": node.after.0,
        "node_threads_idle": node.idle.1, "node_threads_after": node.after.1,
    });
    println!("{out}");
    Ok(())
}
