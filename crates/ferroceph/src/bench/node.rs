//! Node figures: NodeStage+NodePublish and the reverse through the attach paths, with a
//! scratch directory that is cleaned up after a failure.

use super::*;

pub(super) type Ctl = pb::controller_client::ControllerClient<Channel>;
pub(super) type Node = pb::node_client::NodeClient<Channel>;

/// A mount capability with an access mode and a filesystem type ("" = the driver's).
pub(super) fn mount_cap(
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

/// Staging and target paths of node rounds, under one temporary directory. `cleanup`
/// runs after the rounds, also after a failed one: it detaches whatever is still mounted
/// there, with its loop devices, RBD FUSE exporters and ceph-fuse processes, and removes
/// the directory only once nothing is mounted under it.
pub(super) struct NodeScratch {
    pub(super) root: PathBuf,
    pub(super) staged: Vec<PathBuf>,
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
pub(super) struct NodeKind {
    pub(super) driver_type: &'static str,
    pub(super) staged_by: fn(&Path) -> Option<String>,
    pub(super) create: pb::CreateVolumeRequest,
    pub(super) cap: pb::VolumeCapability,
    pub(super) secrets: HashMap<String, String>,
    pub(super) context: HashMap<String, String>,
}

/// The node plugin's figures: memory (RSS KiB, threads) right after its first Probe and
/// after the rounds, and the latencies of the rounds.
pub(super) struct NodeFigures {
    pub(super) idle: (u64, u64),
    pub(super) after: (u64, u64),
    pub(super) stage_publish: Stats,
    pub(super) unpublish_unstage: Stats,
}

/// The first NodeStageVolume+NodePublishVolume failed: the attachment does not work on
/// this machine (as opposed to a failure after it worked once).
#[derive(Debug)]
pub(super) struct FirstStageFailed(String);

impl std::fmt::Display for FirstStageFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the first NodeStage+NodePublish failed: {}", self.0)
    }
}

impl std::error::Error for FirstStageFailed {}

/// A provisioned volume as the node requests name it.
pub(super) struct NodeVol<'a> {
    pub(super) id: String,
    pub(super) context: HashMap<String, String>,
    pub(super) kind: &'a NodeKind,
}

pub(super) async fn stage_publish(
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

pub(super) async fn unpublish_unstage(
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
pub(super) async fn node_round(
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

pub(super) async fn delete_volume(
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
pub(super) async fn node_rounds(
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
pub(super) async fn node_bench(
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
pub(super) fn rbd_node_kind(e: &Env, pool: &str) -> NodeKind {
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
