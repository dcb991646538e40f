//! NodeUnstageVolume: refuse while in use, unmount, detach, remove the record (or undo
//! what ceph-csi staged).

use super::*;
use crate::locks::LockKey;

/// NodeUnstageVolume must not unmount and detach a volume under its users (the FUSE
/// exporter would die under a mounted filesystem): FailedPrecondition naming every publish
/// mount of the staging mount or of the device, and every process holding the device open.
pub(super) async fn refuse_if_in_use(rec: &Record) -> Result<()> {
    let Some(dev) = rec.device.clone() else {
        return Ok(());
    };
    // read-only views of a block volume are loop devices of their own on the exported
    // file (FUSE) or on the mapped device
    let mut devices = vec![dev.clone()];
    let under = rec.fuse.as_ref().map(|f| f.file.clone());
    for d in attach::fuse::loops_backed_by(&under.unwrap_or_else(|| PathBuf::from(&dev))) {
        if !devices.contains(&d) {
            devices.push(d);
        }
    }
    let mounts = inuse::mount_table();
    let mut binds = inuse::mounts_of_devices(&devices, &rec.staging_path, &mounts, mount_device);
    if !rec.block {
        for b in inuse::binds_of(&rec.staging_path, &mounts) {
            if !binds.contains(&b) {
                binds.push(b);
            }
        }
    }
    let mut openers = inuse::steady_openers(&devices).await;
    // The rbd-nbd daemon holds the nbd device it serves: it is the attachment, not a user.
    if dev.starts_with("/dev/nbd") {
        openers.retain(|(_, comm)| comm != "rbd-nbd");
    }
    match inuse::describe(&binds, &openers, &dev) {
        Some(users) => Err(Error::precondition(format!(
            "volume {} is still in use: {users}; NodeUnpublishVolume every target and stop the users first (refusing to unmount and detach it under them)",
            rec.volume_id
        ))),
        None => Ok(()),
    }
}

impl Inner {
    pub(super) async fn unstage(&self, req: pb::NodeUnstageVolumeRequest) -> Result<()> {
        let vid = req.volume_id.as_str();
        validate::id(vid, "volume_id")?;
        let staging = mount::check_path(&req.staging_target_path, "staging_target_path")?;
        let _guard = self.locks.acquire(
            "volume",
            [LockKey::node_volume(vid), LockKey::node_path(&staging)],
        )?;
        match record::read(&staging)? {
            None => match cephcsi::find(&staging, vid)? {
                // staged by ceph-csi before its node plugin was replaced by ours
                Some(st) => cephcsi::unstage(&st, vid, EXEC_TIMEOUT).await?,
                // Nothing recorded: nothing of ours is attached; only a mount may remain.
                None => unmount_all(&staging).await?,
            },
            Some(rec) if rec.volume_id != vid => {
                return Err(Error::precondition(format!(
                    "staging path {} holds volume {}, not {vid}",
                    staging.display(),
                    rec.volume_id
                )));
            }
            Some(rec) => {
                refuse_if_in_use(&rec).await?;
                self.teardown(&rec).await?;
                tracing::info!(volume = %vid, staging = %staging.display(), mounter = %rec.mounter, "unstaged");
            }
        }
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(vid);
        Ok(())
    }
}
