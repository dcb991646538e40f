//! CephFS Node service: NodeStage mounts the subvolume (or a static volume's rootPath) at
//! the staging path with ceph-fuse or the kernel client, NodePublish bind-mounts it into
//! the pod, and NodeGetVolumeStats reports the quota-based size and the mount's health.
//!
//! Plugin restarts: a ceph-fuse process runs in its own session and outlives the
//! plugin process, so healthy mounts keep working while the plugin is down, and the next
//! NodeStage re-adopts them from the record next to the staging path. A ceph-fuse that
//! died (its mount answers ENOTCONN) is detached and mounted again by the next NodeStage,
//! or by the next NodePublish when it carries secrets; without secrets NodePublish reports
//! FailedPrecondition naming the broken staging mount. (When the plugin runs in a
//! container, restarting the container kills its ceph-fuse processes too; they are
//! remounted the same way.)

use crate::ceph::Ceph;
use crate::cephfs::controller::journal_namespace;
use crate::cephfs::mounter::{self, Health, MountSpec, StageRecord};
use crate::cephfs::params::{
    admin_credentials, check_mount_options, user_credentials, Mounter, NodeVolume,
};
use crate::cephfs::subvolume::{self, FsPlace};
use crate::config::{ClusterInfo, ClusterMap};
use crate::credentials::Credentials;
use crate::error::Error;
use crate::locks::{LockKey, OpLocks};
use crate::node::keyfile::KeyFile;
use crate::node::{inuse, mount};
use crate::validate::{self, CapSummary, CEPHFS_MODES};
use crate::volid::CsiId;
use csi::v1 as pb;
use csi::v1::node_server::Node;
use pb::node_service_capability::rpc::Type as NodeCap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;
use tonic::{Request, Response, Status};

const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);
const UMOUNT_TIMEOUT: Duration = Duration::from_secs(30);
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long ceph-fuse may take to exit by itself after its mount is gone.
const FUSE_EXIT_GRACE: Duration = Duration::from_secs(10);

pub struct CephFsNode {
    node_id: String,
    instance: String,
    clusters: Arc<ClusterMap>,
    ceph: Ceph,
    locks: OpLocks,
    keys_dir: PathBuf,
    default_mounter: OnceCell<Mounter>,
}

fn invalid(e: impl std::fmt::Display) -> Error {
    Error::invalid(e)
}

fn cluster_info(clusters: &ClusterMap, cluster_id: &str) -> Result<ClusterInfo, Error> {
    Ok(clusters.get(cluster_id)?)
}

fn io_status(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::internal(format!("{what} {}: {e}", path.display()))
}

/// The capability of a node request: required, filesystem only.
fn node_capability(cap: Option<&pb::VolumeCapability>) -> Result<CapSummary, Error> {
    let cap = cap.ok_or_else(|| Error::invalid("volume_capability is required"))?;
    validate::capability(cap, &CEPHFS_MODES)
}

fn mount_flags(cap: Option<&pb::VolumeCapability>) -> Result<Vec<String>, Error> {
    match cap.and_then(|c| c.access_type.as_ref()) {
        Some(pb::volume_capability::AccessType::Mount(m)) => {
            check_mount_options("mount_flags", &m.mount_flags.join(",")).map_err(invalid)
        }
        _ => Ok(Vec::new()),
    }
}

/// Everything a stage needs, from a NodeStage (or NodePublish) request.
struct StageRequest<'a> {
    volume_id: &'a str,
    staging: &'a Path,
    cap: CapSummary,
    flags: Vec<String>,
    secrets: &'a HashMap<String, String>,
    context: &'a HashMap<String, String>,
}

impl CephFsNode {
    pub fn new(
        node_id: String,
        instance: String,
        clusters: Arc<ClusterMap>,
        ceph: Ceph,
        locks: OpLocks,
        keys_dir: PathBuf,
    ) -> Self {
        CephFsNode {
            node_id,
            instance,
            clusters,
            ceph,
            locks,
            keys_dir,
            default_mounter: OnceCell::new(),
        }
    }

    async fn default_mounter(&self) -> Mounter {
        *self
            .default_mounter
            .get_or_init(|| async {
                let m = mounter::detect_default().await;
                tracing::info!(mounter = m.as_str(), "default CephFS mounter");
                m
            })
            .await
    }

    fn lock(&self, volume_id: &str) -> Result<crate::locks::OpGuard, Status> {
        Ok(self
            .locks
            .acquire("volume", [LockKey::node_volume(volume_id)])?)
    }

    /// Asks the cluster for what the volume_context lacks (volumes made by older
    /// provisioners): the filesystem name from the handle's fscid, the subvolume path from
    /// the journal.
    async fn lookup(
        &self,
        id: &CsiId,
        info: &ClusterInfo,
        user: &str,
        key: &str,
    ) -> Result<(String, String), Error> {
        let cfg = self.ceph.connect_config(&info.monitors, user, key);
        let ns = journal_namespace(info);
        let group = info.subvolume_group().to_string();
        let fscid = id.location;
        let uuid = id.uuid.clone();
        let vid = id.to_string();
        let instance = self.instance.clone();
        self.ceph
            .run(cfg, move |cluster| {
                let place =
                    FsPlace::by_id(cluster, fscid, &ns, &instance, &group)?.ok_or_else(|| {
                        Error::not_found(format!("the filesystem of volume {vid} does not exist"))
                    })?;
                let path = subvolume::volume_path(&place, &uuid)?.ok_or_else(|| {
                    Error::not_found(format!(
                        "volume {vid} has no subvolume path (missing or not ready)"
                    ))
                })?;
                Ok((place.fs.name.clone(), path))
            })
            .await
    }

    /// Mounts the volume at the staging path, or confirms it is already mounted there.
    async fn stage(&self, r: StageRequest<'_>) -> Result<(), Error> {
        let handle = CsiId::decode(r.volume_id).ok();
        let vol = NodeVolume::parse(r.context, handle.as_ref().map(|h| h.cluster_id.as_str()))
            .map_err(invalid)?;
        let info = cluster_info(&self.clusters, &vol.cluster_id)?;
        let creds = if vol.is_static {
            user_credentials(r.secrets)
        } else {
            admin_credentials(r.secrets)
        }
        .map_err(invalid)?;

        let (fs_name, root, snap_root) = self
            .mount_source(&r, &vol, handle.as_ref(), &info, &creds)
            .await?;
        let which = match vol.mounter {
            Some(m) => m,
            None => self.default_mounter().await,
        };
        let options = mount_options(&r, &vol, &info, which)?;
        let record = StageRecord {
            volume_id: r.volume_id.to_string(),
            mounter: which.as_str().to_string(),
            cluster_id: vol.cluster_id.clone(),
            fs_name: fs_name.clone(),
            root_path: root.clone(),
            user: creds.user.clone(),
            monitors: info.monitors.clone(),
            options: options.clone(),
            read_only: r.cap.read_only,
            fuse_pid: None,
            fuse_start: None,
        };

        // Already mounted: the same volume and healthy is success; broken is cleaned up.
        if mount::is_mount_point(r.staging).unwrap_or(false)
            && self
                .already_staged(&r, &record, snap_root.is_some())
                .await?
        {
            return Ok(());
        }

        mount::check_no_symlinks(r.staging, "staging_target_path")?;
        std::fs::create_dir_all(r.staging)
            .map_err(|e| io_status("cannot create the staging directory", r.staging, e))?;
        let key = KeyFile::create(&self.keys_dir, &creds.key)
            .map_err(|e| Error::internal(format!("cannot write a key file: {e}")))?;
        let spec = MountSpec {
            monitors: &info.monitors,
            user: &creds.user,
            keyfile: key.path(),
            fs_name: &fs_name,
            root: &root,
            options: &options,
            target: r.staging,
        };
        let mut rec = record;
        match which {
            Mounter::Fuse => {
                let log = mounter::fuse_log_path(r.staging);
                let p = mounter::mount_fuse(&spec, &log, MOUNT_TIMEOUT).await?;
                rec.fuse_pid = Some(p.pid);
                rec.fuse_start = Some(p.start);
            }
            Mounter::Kernel => mounter::mount_kernel(&spec, MOUNT_TIMEOUT).await?,
        }
        drop(key);
        if let Some(rel) = &snap_root {
            if let Err(e) = bind_snapshot(r.staging, rel).await {
                if let Err(t) = self.teardown(r.staging, Some(&rec)).await {
                    tracing::warn!(staging = %r.staging.display(), "cannot undo the mount: {t}");
                }
                return Err(e);
            }
        }
        if let Err(e) = mounter::write_record(r.staging, &rec) {
            // Without a record unstage still works (it finds ceph-fuse by its command line).
            tracing::warn!(staging = %r.staging.display(), "cannot write the stage record: {e}");
        }
        tracing::info!(
            volume = r.volume_id,
            staging = %r.staging.display(),
            mounter = which.as_str(),
            pid = rec.fuse_pid,
            "staged"
        );
        Ok(())
    }

    /// The filesystem and directory to mount, and for a snapshot-backed volume the
    /// snapshot root to bind over it: from the volume context, else asked from the cluster.
    async fn mount_source(
        &self,
        r: &StageRequest<'_>,
        vol: &NodeVolume,
        handle: Option<&CsiId>,
        info: &ClusterInfo,
        creds: &Credentials,
    ) -> Result<(String, String, Option<String>), Error> {
        if vol.backing_snapshot && !r.cap.read_only {
            return Err(Error::invalid(
                "a snapshot-backed volume supports only read-only access modes",
            ));
        }
        let from_context = vol.is_static
            || (!vol.backing_snapshot && !vol.fs_name.is_empty() && !vol.root_path.is_empty());
        let (fs_name, root) = if from_context {
            (vol.fs_name.clone(), vol.root_path.clone())
        } else {
            let id = handle.ok_or_else(|| Error::invalid("not a CephFS volume handle"))?;
            let (fs, path) = self.lookup(id, info, &creds.user, &creds.key).await?;
            (
                if vol.fs_name.is_empty() {
                    fs
                } else {
                    vol.fs_name.clone()
                },
                if vol.root_path.is_empty() || vol.backing_snapshot {
                    path
                } else {
                    vol.root_path.clone()
                },
            )
        };
        // A snapshot-backed volume: the snapshot's subvolume directory is mounted and its
        // snapshot root bound read-only over it (neither client mounts a .snap path).
        let (root, snap_root) = match vol.backing_snapshot {
            false => (root, None),
            true => match root.split_once("/.snap/") {
                Some((dir, rel)) => (format!("{dir}/"), Some(format!(".snap/{rel}"))),
                None => {
                    return Err(Error::internal(format!(
                        "snapshot-backed volume {} resolved to {root:?}, not a snapshot path",
                        r.volume_id
                    )))
                }
            },
        };
        Ok((fs_name, root, snap_root))
    }

    /// A staging path that is already a mount point: Ok(true) when it holds this volume,
    /// healthy (or adopted); Ok(false) when it was torn down to be mounted again.
    async fn already_staged(
        &self,
        r: &StageRequest<'_>,
        record: &StageRecord,
        snapshot_backed: bool,
    ) -> Result<bool, Error> {
        let rec = mounter::read_record(r.staging);
        match mounter::probe(r.staging, PROBE_TIMEOUT).await {
            // No record for a snapshot-backed volume: a crash may have come before
            // the snapshot was bound; mount it again rather than adopt the directory.
            Health::Ok(_) if rec.is_none() && snapshot_backed => {
                self.teardown(r.staging, None).await?;
                Ok(false)
            }
            Health::Ok(_) => match rec {
                Some(rec) if rec.volume_id == r.volume_id => {
                    self.readopt(r.staging, rec);
                    Ok(true)
                }
                Some(rec) => Err(Error::AlreadyExists(format!(
                    "staging path {} already holds volume {}",
                    r.staging.display(),
                    rec.volume_id
                ))),
                // Mounted by us just before a crash that kept the record from
                // being written: adopt it when it is the same path.
                None => match mounter::adoptable(r.staging, &record.root_path) {
                    Some(pid) => {
                        let mut rec = record.clone();
                        rec.fuse_pid = pid.map(|p| p.pid);
                        rec.fuse_start = pid.map(|p| p.start);
                        if let Err(e) = mounter::write_record(r.staging, &rec) {
                            tracing::warn!("cannot write the stage record: {e}");
                        }
                        Ok(true)
                    }
                    None => Err(Error::AlreadyExists(format!(
                        "staging path {} is already mounted, and not with this volume",
                        r.staging.display()
                    ))),
                },
            },
            h if mounter::needs_remount(&h, mounter::fuse_gone(rec.as_ref())) => {
                tracing::warn!(
                    staging = %r.staging.display(),
                    "the staged mount is broken ({h:?}); mounting it again"
                );
                self.teardown(r.staging, rec.as_ref()).await?;
                Ok(false)
            }
            h => Err(slow(r.volume_id, r.staging, &h)),
        }
    }

    /// A healthy mount found again (plugin restart or a repeated call): fill in the
    /// ceph-fuse PID if the record lost it.
    fn readopt(&self, staging: &Path, mut rec: StageRecord) {
        if rec.mounter != Mounter::Fuse.as_str() {
            return;
        }
        let known = match (rec.fuse_pid, rec.fuse_start) {
            (Some(pid), Some(start)) => mounter::alive(mounter::FuseProc { pid, start }),
            _ => false,
        };
        if !known {
            if let Some(p) = mounter::find_fuse(staging) {
                rec.fuse_pid = Some(p.pid);
                rec.fuse_start = Some(p.start);
                if let Err(e) = mounter::write_record(staging, &rec) {
                    tracing::warn!("cannot update the stage record: {e}");
                }
            }
        }
    }

    /// Unmounts the staging path and stops its ceph-fuse.
    async fn teardown(&self, staging: &Path, rec: Option<&StageRecord>) -> Result<(), Error> {
        // Find the process before the mount goes (its command line names the path).
        let mut fuse = rec
            .and_then(|r| r.fuse_pid.zip(r.fuse_start))
            .map(|(pid, start)| mounter::FuseProc { pid, start });
        if fuse.is_none_or_dead() {
            fuse = mounter::find_fuse(staging);
        }
        mounter::unmount_all(staging, UMOUNT_TIMEOUT).await?;
        if let Some(p) = fuse {
            if !mounter::stop_fuse(p, FUSE_EXIT_GRACE).await {
                return Err(Error::internal(format!(
                    "ceph-fuse (pid {}) for {} does not exit even when killed",
                    p.pid,
                    staging.display()
                )));
            }
        }
        Ok(())
    }
}

/// The mount options: the volume's or the cluster's for the mounter, the capability's
/// flags, and `ro` for a read-only capability.
fn mount_options(
    r: &StageRequest<'_>,
    vol: &NodeVolume,
    info: &ClusterInfo,
    which: Mounter,
) -> Result<Vec<String>, Error> {
    let options = match which {
        Mounter::Kernel => vol
            .kernel_mount_options
            .clone()
            .unwrap_or_else(|| info.cephfs.kernel_mount_options.clone()),
        Mounter::Fuse => vol
            .fuse_mount_options
            .clone()
            .unwrap_or_else(|| info.cephfs.fuse_mount_options.clone()),
    };
    let mut options = check_mount_options("mount options", &options).map_err(invalid)?;
    for f in &r.flags {
        if !options.contains(f) {
            options.push(f.clone());
        }
    }
    if r.cap.read_only && !options.iter().any(|o| o == "ro") {
        options.push("ro".to_string());
    }

    Ok(options)
}

/// Binds the snapshot root `rel` of the directory mounted at `staging` over `staging`,
/// read-only.
async fn bind_snapshot(staging: &Path, rel: &str) -> Result<(), Error> {
    let source = staging.join(rel);
    if rel.split('/').any(|c| c == "..") {
        return Err(Error::internal(format!("bad snapshot path {rel:?}")));
    }
    mount::bind(&source, staging, true, &[], MOUNT_TIMEOUT)
        .await
        .map_err(|e| {
            Error::internal(format!(
                "cannot bind the snapshot {} over {}: {e}",
                source.display(),
                staging.display()
            ))
        })
}

/// Unavailable for a mount that answers slowly or oddly but is not known to be broken: it
/// is left alone for the pods using it.
fn slow(volume_id: &str, path: &Path, h: &Health) -> Error {
    Error::unavailable(format!(
        "the mount of volume {volume_id} at {} {}; it is left alone for the pods using it: retry when the cluster answers again (MDS failover?)",
        path.display(),
        match h {
            Health::Broken(e) => format!("answers {}", mounter::errno_text(*e)),
            _ => format!("does not answer within {}s", PROBE_TIMEOUT.as_secs()),
        }
    ))
}

trait MaybeProc {
    fn is_none_or_dead(&self) -> bool;
}

impl MaybeProc for Option<mounter::FuseProc> {
    fn is_none_or_dead(&self) -> bool {
        match self {
            None => true,
            Some(p) => !mounter::alive(*p),
        }
    }
}

fn rpc_caps(caps: &[NodeCap]) -> Vec<pb::NodeServiceCapability> {
    caps.iter()
        .map(|t| pb::NodeServiceCapability {
            r#type: Some(pb::node_service_capability::Type::Rpc(
                pb::node_service_capability::Rpc { r#type: *t as i32 },
            )),
        })
        .collect()
}

#[tonic::async_trait]
impl Node for CephFsNode {
    async fn node_stage_volume(
        &self,
        request: Request<pb::NodeStageVolumeRequest>,
    ) -> Result<Response<pb::NodeStageVolumeResponse>, Status> {
        crate::server::note_volume(&request.get_ref().volume_id);
        let req = request.into_inner();
        validate::id(&req.volume_id, "volume_id")?;
        let staging = mount::check_path(&req.staging_target_path, "staging_target_path")?;
        let cap = node_capability(req.volume_capability.as_ref())?;
        let flags = mount_flags(req.volume_capability.as_ref())?;
        let _guard = self.lock(&req.volume_id)?;
        self.stage(StageRequest {
            volume_id: &req.volume_id,
            staging: &staging,
            cap,
            flags,
            secrets: &req.secrets,
            context: &req.volume_context,
        })
        .await?;
        if let Some(rec) = mounter::read_record(&staging) {
            crate::metrics::get().volume_staged("cephfs", &req.staging_target_path, &rec.mounter);
        }
        Ok(Response::new(pb::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<pb::NodeUnstageVolumeRequest>,
    ) -> Result<Response<pb::NodeUnstageVolumeResponse>, Status> {
        crate::server::note_volume(&request.get_ref().volume_id);
        let req = request.into_inner();
        validate::id(&req.volume_id, "volume_id")?;
        let staging = mount::check_path(&req.staging_target_path, "staging_target_path")?;
        let _guard = self.lock(&req.volume_id)?;
        let rec = mounter::read_record(&staging);
        if let Some(r) = &rec {
            if r.volume_id != req.volume_id {
                return Err(Status::failed_precondition(format!(
                    "staging path {} holds volume {}, not {}; refusing to unmount another volume",
                    staging.display(),
                    r.volume_id,
                    req.volume_id
                )));
            }
        }
        // ceph-fuse is stopped after the unmount: with a pod's bind mount left it would die
        // under that pod (ENOTCONN), so a volume still published is refused.
        let binds = inuse::binds_of(&staging, &inuse::mount_table());
        if let Some(users) = inuse::describe(&binds, &[], "") {
            return Err(Status::failed_precondition(format!(
                "volume {} is still in use: {users}; NodeUnpublishVolume every target first (refusing to unmount it under them)",
                req.volume_id
            )));
        }
        self.teardown(&staging, rec.as_ref()).await?;
        mounter::remove_record(&staging);
        crate::metrics::get().volume_unstaged(&req.staging_target_path);
        tracing::info!(volume = %req.volume_id, staging = %staging.display(), "unstaged");
        Ok(Response::new(pb::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        request: Request<pb::NodePublishVolumeRequest>,
    ) -> Result<Response<pb::NodePublishVolumeResponse>, Status> {
        crate::server::note_volume(&request.get_ref().volume_id);
        let req = request.into_inner();
        validate::id(&req.volume_id, "volume_id")?;
        let staging = mount::check_path(&req.staging_target_path, "staging_target_path")?;
        let target = mount::check_path(&req.target_path, "target_path")?;
        let cap = node_capability(req.volume_capability.as_ref())?;
        let read_only = req.readonly || cap.read_only;
        let _guard = self.lock(&req.volume_id)?;

        if !mount::is_mount_point(&staging).unwrap_or(false) {
            return Err(Status::failed_precondition(format!(
                "volume {} is not staged at {}; call NodeStageVolume first",
                req.volume_id,
                staging.display()
            )));
        }
        if let h @ (Health::Broken(_) | Health::Hung) =
            mounter::probe(&staging, PROBE_TIMEOUT).await
        {
            if !mounter::needs_remount(
                &h,
                mounter::fuse_gone(mounter::read_record(&staging).as_ref()),
            ) {
                return Err(slow(&req.volume_id, &staging, &h).into());
            }
            if req.secrets.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "the staged mount of volume {} at {} is broken ({}); NodeStageVolume mounts it again",
                    req.volume_id,
                    staging.display(),
                    match h {
                        Health::Broken(e) => mounter::errno_text(e),
                        _ => "not answering".to_string(),
                    }
                )));
            }
            let flags = mount_flags(req.volume_capability.as_ref())?;
            self.stage(StageRequest {
                volume_id: &req.volume_id,
                staging: &staging,
                cap,
                flags,
                secrets: &req.secrets,
                context: &req.volume_context,
            })
            .await?;
        }

        if mount::is_mount_point(&target).unwrap_or(false) {
            match mounter::probe(&target, PROBE_TIMEOUT).await {
                Health::Ok(_) => return Ok(Response::new(pb::NodePublishVolumeResponse {})),
                h if !mounter::needs_remount(&h, false) => {
                    return Err(slow(&req.volume_id, &target, &h).into());
                }
                _ => {
                    // A bind of a ceph-fuse that died: bind the fresh staging mount again.
                    mounter::unmount_all(&target, UMOUNT_TIMEOUT).await?;
                }
            }
        }
        mount::check_no_symlinks(&target, "target_path")?;
        std::fs::create_dir_all(&target)
            .map_err(|e| io_status("cannot create the target directory", &target, e))?;
        mount::bind(&staging, &target, read_only, &[], MOUNT_TIMEOUT)
            .await
            .map_err(Error::from)?;
        tracing::info!(volume = %req.volume_id, target = %target.display(), read_only, "published");
        Ok(Response::new(pb::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<pb::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<pb::NodeUnpublishVolumeResponse>, Status> {
        crate::server::note_volume(&request.get_ref().volume_id);
        let req = request.into_inner();
        validate::id(&req.volume_id, "volume_id")?;
        let target = mount::check_path(&req.target_path, "target_path")?;
        let _guard = self.lock(&req.volume_id)?;
        mounter::unmount_all(&target, UMOUNT_TIMEOUT).await?;
        match std::fs::remove_dir(&target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(target = %target.display(), "cannot remove the target directory: {e}")
            }
        }
        Ok(Response::new(pb::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<pb::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<pb::NodeGetVolumeStatsResponse>, Status> {
        crate::server::note_volume(&request.get_ref().volume_id);
        let req = request.into_inner();
        validate::id(&req.volume_id, "volume_id")?;
        let path = mount::volume_path(&req.volume_path, &req.volume_id)?;
        // A dead FUSE mount fails even lstat with ENOTCONN, so existence is judged from
        // the mount table first.
        let mounted = mount::is_mount_point(&path).unwrap_or(false);
        if !mounted {
            return match std::fs::symlink_metadata(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Status::not_found(
                    format!("volume path {} does not exist", path.display()),
                )),
                _ => Err(Status::not_found(format!(
                    "volume {} is not mounted at {}",
                    req.volume_id,
                    path.display()
                ))),
            };
        }
        let (usage, condition) = match mounter::probe(&path, PROBE_TIMEOUT).await {
            Health::Ok(u) => (
                vec![
                    pb::VolumeUsage {
                        available: u.available as i64,
                        total: u.total as i64,
                        used: u.used as i64,
                        unit: pb::volume_usage::Unit::Bytes as i32,
                    },
                    pb::VolumeUsage {
                        available: u.inodes_free.unwrap_or(0) as i64,
                        total: u.inodes_total.unwrap_or(0) as i64,
                        used: u.inodes_used as i64,
                        unit: pb::volume_usage::Unit::Inodes as i32,
                    },
                ],
                pb::VolumeCondition {
                    abnormal: false,
                    message: "mounted and answering".to_string(),
                },
            ),
            Health::Broken(errno) => (
                vec![],
                pb::VolumeCondition {
                    abnormal: true,
                    message: format!(
                        "the mount at {} is broken: {}{}",
                        path.display(),
                        mounter::errno_text(errno),
                        if errno == libc::ENOTCONN {
                            " (its ceph-fuse died; NodeStageVolume mounts it again)"
                        } else {
                            ""
                        }
                    ),
                },
            ),
            Health::Hung => (
                vec![],
                pb::VolumeCondition {
                    abnormal: true,
                    message: format!(
                        "the mount at {} does not answer within {}s (cluster unreachable?)",
                        path.display(),
                        PROBE_TIMEOUT.as_secs()
                    ),
                },
            ),
        };
        Ok(Response::new(pb::NodeGetVolumeStatsResponse {
            usage,
            volume_condition: Some(condition),
        }))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<pb::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<pb::NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(pb::NodeGetCapabilitiesResponse {
            capabilities: rpc_caps(&[
                NodeCap::StageUnstageVolume,
                NodeCap::GetVolumeStats,
                NodeCap::VolumeCondition,
                NodeCap::SingleNodeMultiWriter,
            ]),
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<pb::NodeGetInfoRequest>,
    ) -> Result<Response<pb::NodeGetInfoResponse>, Status> {
        Ok(Response::new(pb::NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}
