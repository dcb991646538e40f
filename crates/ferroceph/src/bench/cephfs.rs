//! CephFS controller and ceph-fuse node figures.

use super::*;

/// The CephFS figures: CreateVolume/DeleteVolume, CreateSnapshot/DeleteSnapshot, and the
/// node rounds through ceph-fuse (Err: why they were skipped).
pub(super) struct FsFigures {
    pub(super) create: Stats,
    pub(super) delete: Stats,
    pub(super) snap_create: Stats,
    pub(super) snap_delete: Stats,
    pub(super) node: Result<NodeFigures, String>,
}

pub(super) fn cephfs_create_req(
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
pub(super) fn ceph_fuse_unavailable() -> Option<String> {
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
pub(super) async fn cephfs_snapshots(
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
pub(super) async fn cephfs_snapshot_rounds(
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
pub(super) async fn cephfs_bench(
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
