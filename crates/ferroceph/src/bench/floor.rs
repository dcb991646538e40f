//! The floor: the Ceph work of a create and a delete issued directly from one process,
//! sequential (in turn with the driver) and concurrent.

use super::*;

/// Waits until no image of the volumes `ids` is left in the driver's trash log in `pool`
/// (each deleted image has left the trash); returns how long that took.
pub(super) async fn trash_drained(
    e: &Arc<Env>,
    pool: &str,
    ids: &[String],
) -> anyhow::Result<Duration> {
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
pub(super) fn floor_create(io: &rados::IoCtx, name: &str) -> anyhow::Result<String> {
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
pub(super) fn floor_delete(io: &rados::IoCtx, name: &str, uuid: &str) -> anyhow::Result<String> {
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
pub(super) fn floor_remove(io: &rados::IoCtx, id: &str) -> anyhow::Result<()> {
    rados::rbd::trash_remove(io, id, false)?;
    io.omap_remove("floor.trash", &[id])?;
    Ok(())
}

pub(super) type Made = Vec<(String, String)>;

/// Sequential creates and deletes, driver and floor taking turns one volume at a time, so
/// both meet the same cluster (a single-node cluster's speed drifts while it digests
/// earlier work). Returns (driver create, driver delete, floor create, floor delete).
pub(super) async fn paired_sequential(
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

/// One phase of the concurrent floor, per thread: create (names), delete (name, uuid) or
/// remove from the trash (image ids).
#[derive(Clone)]
pub(super) enum FloorWork {
    Create,
    Delete(Made),
    Remove(Vec<String>),
}

/// Rates of the concurrent floor, per second: creates, deletes answered, and deletes with
/// the image removed from the trash too.
pub(super) struct FloorRates {
    pub(super) create: f64,
    pub(super) delete: f64,
    pub(super) removed: f64,
}

/// The concurrent floor: `conc` threads, each with its own I/O context, sharing one
/// connection.
pub(super) fn floor(e: &Env, pool: &str, n: usize, conc: usize) -> anyhow::Result<FloorRates> {
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
