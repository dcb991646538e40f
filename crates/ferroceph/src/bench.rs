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

mod cephfs;
mod floor;
mod node;
mod report;
use cephfs::*;
use floor::*;
use node::*;

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

/// Median, p90 and max of a figure, for the JSON line.
fn summary(s: &Stats) -> serde_json::Value {
    json!({"median": s.median(), "p90": s.pct(0.9), "max": s.max()})
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
    let rbd = rbd_controller_figures(&args, &ch, &e, run_id).await?;
    if args.quick {
        report::print_quick(&args, &pool, &rbd);
        return Ok(());
    }

    eprintln!("bench: snapshot and restore x{}", args.snapshots);
    let (snap_t, restore_t) = snapshot_rounds(&ch, &e, &pool, run_id, args.snapshots).await?;

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
    let full = report::Full {
        rbd,
        snap_t,
        restore_t,
        startup,
        rss_idle,
        threads_idle,
        rss_after,
        threads_after,
        anon_after,
        rss_end,
        node,
        fs,
    };
    report::print_table(&args, &pool, &full);
    report::print_memory_and_json(&args, &full);
    Ok(())
}

/// Sequential and concurrent creates and deletes, driver and floor.
async fn rbd_controller_figures(
    args: &BenchArgs,
    ch: &Channel,
    e: &Arc<Env>,
    run_id: &str,
) -> anyhow::Result<report::Rbd> {
    let pool = &args.pool;
    eprintln!(
        "bench: sequential create/delete x{}, driver and floor in turn",
        args.n
    );
    let (seq_create, seq_delete, f_seq_c, f_seq_d) =
        paired_sequential(ch, e, pool, &format!("bench-{run_id}-seq"), args.n).await?;

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
                ch,
                e,
                pool,
                &format!("bench-{run_id}-con{round}"),
                args.n,
                args.concurrency,
            )
            .await?;
            let (d, d_wall) = delete_many(ch, e, &ids, args.concurrency).await?;
            // the driver removes deleted images in the background: wait for it, so that
            // the next run does not share the cluster with it, and time it
            let drained = trash_drained(e, pool, &ids).await?;
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
    Ok(report::Rbd {
        seq_create,
        seq_delete,
        f_seq_c,
        f_seq_d,
        con_create,
        con_delete,
        con_create_rate: per_s(drv_c_secs),
        con_delete_rate: per_s(drv_d_secs),
        con_gone_rate: per_s(drv_gone_secs),
        f_con_c: per_s(flr_c_secs),
        f_con_d: per_s(flr_d_secs),
        f_con_gone: per_s(flr_gone_secs),
    })
}

/// CreateSnapshot and CreateVolume-from-snapshot latencies, `rounds` times.
async fn snapshot_rounds(
    ch: &Channel,
    e: &Env,
    pool: &str,
    run_id: &str,
    rounds: usize,
) -> anyhow::Result<(Stats, Stats)> {
    let mut snap_t = Stats::default();
    let mut restore_t = Stats::default();
    for i in 0..rounds {
        let mut ctl = pb::controller_client::ControllerClient::new(ch.clone());
        let vol = ctl
            .create_volume(create_req(e, pool, &format!("bench-{run_id}-snapsrc-{i}")))
            .await?
            .into_inner()
            .volume
            .ok_or_else(|| anyhow::anyhow!("no volume"))?;
        let t = Instant::now();
        let snap = ctl
            .create_snapshot(pb::CreateSnapshotRequest {
                name: format!("bench-{run_id}-snap-{i}"),
                source_volume_id: vol.volume_id.clone(),
                secrets: secrets(e),
                parameters: Default::default(),
            })
            .await?
            .into_inner()
            .snapshot
            .ok_or_else(|| anyhow::anyhow!("no snapshot"))?;
        snap_t.push(t.elapsed());
        let mut r = create_req(e, pool, &format!("bench-{run_id}-restore-{i}"));
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
                secrets: secrets(e),
            })
            .await?;
        }
        ctl.delete_snapshot(pb::DeleteSnapshotRequest {
            snapshot_id: snap.snapshot_id,
            secrets: secrets(e),
        })
        .await?;
    }
    Ok((snap_t, restore_t))
}
