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
}

struct Env {
    /// CephFS user, key and filesystem, when the environment names them.
    cephfs: Option<(String, String, String)>,
    monitors: String,
    fsid: String,
    user: String,
    key: String,
}

fn env() -> anyhow::Result<Env> {
    let get = |k: &str| {
        std::env::var(k).map_err(|_| {
            anyhow::anyhow!("{k} is not set: run `eval \"$(scripts/dev-cluster.sh env)\"` first")
        })
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

fn spawn_typed(e: &Env, driver_type: &str) -> anyhow::Result<(DriverProc, Instant)> {
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
        .args([
            &format!("--type={driver_type}"),
            "--controllerserver=true",
            "--nodeserver=true",
            "--nodeid=bench",
            "--metricsport=0",
        ])
        .arg(format!("--endpoint=unix://{}", socket.display()))
        .arg(format!("--configpath={}", config.display()))
        .arg(format!("--keysdir={}", dir.path().join("keys").display()))
        .env("FERROCEPH_LOG", "warn")
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

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("Threads:"))
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

fn floor_delete(io: &rados::IoCtx, name: &str, uuid: &str) -> anyhow::Result<()> {
    let image = format!("floor-vol-{uuid}");
    rados::rbd::remove(io, &image)?;
    io.omap_remove("floor.volumes", &[format!("floor.volume.{name}").as_str()])?;
    io.remove_object(&format!("floor.volume.{uuid}"))?;
    Ok(())
}

/// (request name, uuid) of the volumes one floor thread made.
type Made = Vec<(String, String)>;

fn floor(e: &Env, pool: &str, n: usize, conc: usize) -> anyhow::Result<(Stats, Stats, f64, f64)> {
    let cfg = rados::ConnectConfig::new([e.monitors.clone()], e.user.clone(), e.key.clone());
    let cluster = Arc::new(rados::Cluster::connect(&cfg)?);
    let io = cluster.ioctx(pool, "")?;
    // warm up
    for i in 0..3 {
        let u = floor_create(&io, &format!("warm-{i}"))?;
        floor_delete(&io, &format!("warm-{i}"), &u)?;
    }
    let mut seq_c = Stats::default();
    let mut seq_d = Stats::default();
    let mut made = Vec::new();
    for i in 0..n {
        let name = format!("seq-{i}");
        let t = Instant::now();
        made.push((name.clone(), floor_create(&io, &name)?));
        seq_c.push(t.elapsed());
    }
    for (name, u) in &made {
        let t = Instant::now();
        floor_delete(&io, name, u)?;
        seq_d.push(t.elapsed());
    }
    // concurrent: `conc` threads, each with its own io context, sharing one connection
    let per = n.div_ceil(conc.max(1));
    let run = |delete: Option<Vec<Made>>| -> anyhow::Result<(f64, Vec<Made>)> {
        let started = Instant::now();
        let mut handles = Vec::new();
        for t in 0..conc.max(1) {
            let cluster = cluster.clone();
            let pool = pool.to_string();
            let work = delete.as_ref().map(|d| d[t].clone());
            handles.push(std::thread::spawn(move || -> anyhow::Result<Made> {
                let io = cluster.ioctx(&pool, "")?;
                let mut out = Vec::new();
                match work {
                    None => {
                        for i in 0..per {
                            let name = format!("con-{t}-{i}");
                            let u = floor_create(&io, &name)?;
                            out.push((name, u));
                        }
                    }
                    Some(items) => {
                        for (name, u) in items {
                            floor_delete(&io, &name, &u)?;
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
        Ok((
            (per * conc.max(1)) as f64 / started.elapsed().as_secs_f64(),
            all,
        ))
    };
    let (create_rate, made) = run(None)?;
    let (delete_rate, _) = run(Some(made))?;
    let _ = io.remove_object("floor.volumes");
    Ok((seq_c, seq_d, create_rate, delete_rate))
}

/// CephFS CreateVolume / DeleteVolume, sequential, after one warm-up create.
async fn cephfs_bench(e: &Env, n: usize) -> anyhow::Result<Option<(Stats, Stats)>> {
    let Some((user, key, fs)) = e.cephfs.clone() else {
        return Ok(None);
    };
    let (d, _) = spawn_typed(e, "cephfs")?;
    let ch = wait_probe(&d.socket).await?;
    let secrets = HashMap::from([("adminID".to_string(), user), ("adminKey".to_string(), key)]);
    let req = |name: String| pb::CreateVolumeRequest {
        name,
        capacity_range: Some(pb::CapacityRange {
            required_bytes: 1 << 30,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![pb::VolumeCapability {
            access_type: Some(pb::volume_capability::AccessType::Mount(Default::default())),
            access_mode: Some(pb::volume_capability::AccessMode {
                mode: pb::volume_capability::access_mode::Mode::MultiNodeMultiWriter as i32,
            }),
        }],
        parameters: HashMap::from([
            ("clusterID".to_string(), e.fsid.clone()),
            ("fsName".to_string(), fs.clone()),
        ]),
        secrets: secrets.clone(),
        ..Default::default()
    };
    let mut ctl = pb::controller_client::ControllerClient::new(ch);
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
    Ok(Some((c, dl)))
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
    let e = Arc::new(env()?);
    let pool = args.pool.clone();
    eprintln!("bench: start-up time");
    let mut startup = Stats::default();
    for _ in 0..5 {
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

    eprintln!("bench: sequential create/delete x{}", args.n);
    let (ids, seq_create, _) =
        create_many(&ch, &e, &pool, &format!("bench-{run_id}-seq"), args.n, 1).await?;
    let (seq_delete, _) = delete_many(&ch, &e, &ids, 1).await?;

    eprintln!(
        "bench: concurrent create/delete x{} ({} in flight)",
        args.n, args.concurrency
    );
    let (ids, con_create, con_c_wall) = create_many(
        &ch,
        &e,
        &pool,
        &format!("bench-{run_id}-con"),
        args.n,
        args.concurrency,
    )
    .await?;
    let (con_delete, con_d_wall) = delete_many(&ch, &e, &ids, args.concurrency).await?;
    let con_create_rate = args.n as f64 / con_c_wall.as_secs_f64();
    let con_delete_rate = args.n as f64 / con_d_wall.as_secs_f64();

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
    delete_many(&ch, &e, &ids, args.concurrency).await?;
    let (rss_end, _) = rss_kib(pid);
    drop(d);

    eprintln!("bench: CephFS create/delete x{}", args.n.min(20));
    let fs = cephfs_bench(&e, args.n.min(20)).await?;

    eprintln!("bench: floor");
    let (f_seq_c, f_seq_d, f_con_c, f_con_d) = {
        let e = e.clone();
        let pool = pool.clone();
        let (n, c) = (args.n, args.concurrency);
        tokio::task::spawn_blocking(move || floor(&e, &pool, n, c)).await??
    };

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
    if let Some((c, d)) = &fs {
        row("CephFS CreateVolume, sequential", c, None);
        row("CephFS DeleteVolume, sequential", d, None);
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
        "driver RSS: idle {:.1} MiB ({} threads), after {} creates {:.1} MiB ({} threads), after deleting them {:.1} MiB",
        rss_idle as f64 / 1024.0,
        threads_idle,
        args.rss_creates,
        rss_after as f64 / 1024.0,
        threads_after,
        rss_end as f64 / 1024.0
    );
    let out = json!({
        "n": args.n, "concurrency": args.concurrency,
        "create_seq_ms": {"median": seq_create.median(), "p90": seq_create.pct(0.9), "max": seq_create.max()},
        "delete_seq_ms": {"median": seq_delete.median(), "p90": seq_delete.pct(0.9), "max": seq_delete.max()},
        "floor_create_seq_ms": f_seq_c.median(), "floor_delete_seq_ms": f_seq_d.median(),
        "create_seq_ratio": ratio(seq_create.median(), f_seq_c.median()),
        "create_concurrent_per_s": con_create_rate, "floor_create_concurrent_per_s": f_con_c,
        "create_concurrent_ratio": ratio(con_create_rate, f_con_c),
        "delete_concurrent_per_s": con_delete_rate, "floor_delete_concurrent_per_s": f_con_d,
        "snapshot_ms": snap_t.median(), "restore_ms": restore_t.median(),
        "startup_ms": startup.median(),
        "cephfs_create_seq_ms": fs.as_ref().map(|(c, _)| c.median()),
        "cephfs_delete_seq_ms": fs.as_ref().map(|(_, d)| d.median()),
        "rss_idle_kib": rss_idle, "rss_after_creates_kib": rss_after, "rss_after_deletes_kib": rss_end,
        "threads_idle": threads_idle, "threads_after": threads_after,
    });
    println!("{out}");
    Ok(())
}
