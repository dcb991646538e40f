//! NodePublishVolume / NodeUnpublishVolume: bind mounts of the staging mount or device,
//! with read-only views of block volumes.

use super::*;
use crate::locks::LockKey;

/// Whether `device` is a read-only view publish made for a block volume: a second loop
/// device on the FUSE export, or a loop device on a krbd/rbd-nbd device.
pub(super) fn is_read_only_view(device: &str) -> bool {
    if let Some(r) = record_for_device(device) {
        return r.device.as_deref() != Some(device);
    }
    attach::fuse::loop_backing(device).is_some_and(|b| {
        let b = b.display().to_string();
        b.starts_with("/dev/rbd") || b.starts_with("/dev/nbd")
    })
}

/// The record of a FUSE attachment found from its loop device (for requests that do not
/// name the staging path).
pub(super) fn record_for_device(device: &str) -> Option<Record> {
    let backing = attach::fuse::loop_backing(device)?;
    if backing.file_name()? != EXPORT_FILE {
        return None;
    }
    let rec_path = record::record_for_fuse_dir(backing.parent()?)?;
    record::read_at(&rec_path).ok().flatten()
}

/// Whether `target` already holds this publish (true), after unmounting a stale bind of
/// an attachment that has been replaced. AlreadyExists when it is published with the
/// other read-only state.
async fn already_published(rec: &Record, target: &Path, read_only: bool) -> Result<bool> {
    let Some(m) = mount::mount_at(target).map_err(Error::internal)? else {
        return Ok(false);
    };
    let staged_dev = rec.device.clone().unwrap_or_default();
    let fuse_file = rec.fuse.as_ref().map(|f| f.file.clone());
    let dev = mount_device(&m).unwrap_or_default();
    let backing = attach::fuse::loop_backing(&dev);
    let same = dev == staged_dev
        || (fuse_file.is_some() && backing.as_ref() == fuse_file.as_ref())
        || (!staged_dev.is_empty() && backing == Some(PathBuf::from(&staged_dev)));
    if same && m.read_only() == read_only {
        return Ok(true);
    }
    if same {
        return Err(Error::AlreadyExists(format!(
            "volume {} is already published at {} {}",
            rec.volume_id,
            target.display(),
            if m.read_only() {
                "read-only"
            } else {
                "read-write"
            }
        )));
    }
    // A stale bind of an attachment that has been replaced: bind the live one.
    tracing::warn!(volume = %rec.volume_id, target = %target.display(), source = %m.source, "replacing a stale publish mount");
    unmount_all(target).await?;
    Ok(false)
}

/// What publish binds: the staging mount, the device, or (`ro_view`) a new read-only
/// loop device on the exported file or the mapped device.
async fn publish_source(rec: &Record, staging: &Path, ro_view: bool) -> Result<PathBuf> {
    let staged_dev = rec.device.clone().unwrap_or_default();
    if rec.block && ro_view {
        let under = rec
            .fuse
            .as_ref()
            .map(|f| f.file.clone())
            .unwrap_or_else(|| PathBuf::from(&staged_dev));
        return Ok(PathBuf::from(
            attach::fuse::read_only_view(&under, EXEC_TIMEOUT).await?,
        ));
    }
    if rec.block {
        return Ok(PathBuf::from(staged_dev));
    }
    if !mount::is_mount_point(staging).unwrap_or(false) {
        return Err(Error::precondition(format!(
            "volume {} is not mounted at {}; NodeStageVolume again",
            rec.volume_id,
            staging.display()
        )));
    }
    Ok(staging.to_path_buf())
}

/// The bind target: a file for a block volume (its parent made), a directory otherwise.
fn create_target(target: &Path, block: bool) -> Result<()> {
    let cannot = |p: &Path, e: std::io::Error| {
        Error::internal(format!("cannot create {}: {e}", p.display()))
    };
    if !block {
        return std::fs::create_dir_all(target).map_err(|e| cannot(target, e));
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|e| cannot(parent, e))?;
    }
    if !target.exists() {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(target)
            .map_err(|e| cannot(target, e))?;
    }
    Ok(())
}

impl Inner {
    pub(super) async fn publish(&self, req: pb::NodePublishVolumeRequest) -> Result<()> {
        let vid = req.volume_id.as_str();
        validate::id(vid, "volume_id")?;
        let staging = mount::check_path(&req.staging_target_path, "staging_target_path")?;
        let target = mount::check_path(&req.target_path, "target_path")?;
        mount::check_no_symlinks(&target, "target_path")?;
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| Error::invalid("volume_capability is required"))?;
        let summary = validate::capability(cap, &RBD_MODES)?;
        let flags = mount_flags(cap)?;
        let _guard = self.locks.acquire(
            "volume",
            [LockKey::node_volume(vid), LockKey::node_path(&target)],
        )?;
        let (rec, staging) = self.staged(staging, vid, summary.block).await?;
        let read_only = req.readonly || summary.read_only;
        let mut opts: Vec<String> = flags
            .into_iter()
            .filter(|f| BIND_FLAGS.contains(&f.as_str()) && f != "ro")
            .collect();
        opts.dedup();
        if already_published(&rec, &target, read_only).await? {
            return Ok(());
        }
        // A device node ignores a read-only bind mount: a block volume published read-only
        // from a read-write staging gets a read-only device of its own (FUSE: a second,
        // read-only loop device on the exported file; krbd, rbd-nbd: a read-only loop device
        // on the mapped device).
        let ro_view = rec.block && read_only && !rec.read_only;
        let source = publish_source(&rec, &staging, ro_view).await?;
        create_target(&target, rec.block)?;
        let view = ro_view.then(|| source.display().to_string());
        if let Err(e) = mount::bind(&source, &target, read_only, &opts, EXEC_TIMEOUT).await {
            if let Some(v) = &view {
                let _ = crate::node::exec::output("losetup", &["-d", v], &[], EXEC_TIMEOUT).await;
            }
            return Err(e.into());
        }
        tracing::info!(volume = %vid, target = %target.display(), read_only, block = rec.block, "published");
        Ok(())
    }

    /// The record of the volume staged at `staging` (ours, or a view of ceph-csi's) and
    /// the staging path to publish from, its attachment alive (re-attached if it died and
    /// the key is known).
    async fn staged(&self, staging: PathBuf, vid: &str, block: bool) -> Result<(Record, PathBuf)> {
        // ceph-csi's staged volumes are served from `<staging>/<volume id>`
        let (mut rec, staged_by_cephcsi) = match record::read(&staging)? {
            Some(r) => (r, false),
            None => (cephcsi_view(&staging, vid, block).await?, true),
        };
        let staging = if staged_by_cephcsi {
            rec.staging_path.clone()
        } else {
            staging
        };
        if rec.volume_id != vid {
            return Err(Error::precondition(format!(
                "staging path {} holds volume {}, not {vid}",
                staging.display(),
                rec.volume_id
            )));
        }
        if rec.block != block {
            return Err(Error::invalid(format!(
                "volume {vid} is staged as a {} volume",
                if rec.block { "block" } else { "filesystem" }
            )));
        }
        let health = self.attacher_for(&rec)?.health(&rec).await;
        if let Health::Unresponsive(why) = health {
            return Err(Error::unavailable(format!(
                "volume {vid} does not answer ({why}); its attachment is left alone: retry when the cluster answers again"
            )));
        }
        if let Health::Broken(why) = health {
            if staged_by_cephcsi {
                return Err(Error::precondition(format!(
                    "the attachment ceph-csi made for volume {vid} is dead ({why}); NodeUnstageVolume and NodeStageVolume it again"
                )));
            }
            let Some(creds) = self.cached_key(vid) else {
                return Err(Error::precondition(format!(
                    "the attachment of volume {vid} is dead ({why}); NodeStageVolume re-attaches it"
                )));
            };
            tracing::warn!(volume = %vid, "re-attaching before publish: {why}");
            rec = self.reattach(rec, &creds).await?;
        }
        Ok((rec, staging))
    }

    pub(super) async fn unpublish(&self, req: pb::NodeUnpublishVolumeRequest) -> Result<()> {
        let vid = req.volume_id.as_str();
        validate::id(vid, "volume_id")?;
        let target = mount::check_path(&req.target_path, "target_path")?;
        let _guard = self.locks.acquire(
            "volume",
            [LockKey::node_volume(vid), LockKey::node_path(&target)],
        )?;
        // A read-only view of a block volume (see publish) goes with its target.
        let view = mount::mount_at(&target)
            .ok()
            .flatten()
            .and_then(|m| mount_device(&m))
            .filter(|dev| is_read_only_view(dev));
        unmount_all(&target).await?;
        if let Some(dev) = view {
            match crate::node::exec::output("losetup", &["-d", &dev], &[], EXEC_TIMEOUT).await {
                Ok(o) if o.success() => {}
                Ok(o) => tracing::warn!(device = %dev, "losetup -d: {}", o.stderr),
                Err(e) => tracing::warn!(device = %dev, "{e}"),
            }
        }
        match std::fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() => {
                if let Err(e) = std::fs::remove_dir(&target) {
                    tracing::warn!(target = %target.display(), "cannot remove: {e}");
                }
            }
            Ok(_) => {
                if let Err(e) = std::fs::remove_file(&target) {
                    tracing::warn!(target = %target.display(), "cannot remove: {e}");
                }
            }
            Err(_) => {}
        }
        tracing::info!(volume = %vid, target = %target.display(), "unpublished");
        Ok(())
    }
}
