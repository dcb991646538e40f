//! DeleteVolume of a volume with a subvolume.

use super::create::remove_temp_snapshot;
use super::info::{existing, Existing};
use super::{jerr, merr, FsPlace, CLONE_FROM_KEY};
use crate::ceph::crash_point;
use crate::error::{Error, Result};
use rados::ErrorKind;

/// Removes a volume's subvolume (keeping its snapshots when it has some, as Ceph allows),
/// a leftover temporary snapshot, and the journal entry. Idempotent.
pub fn delete_volume(place: &FsPlace<'_>, uuid: &str) -> Result<()> {
    let journal = place.volumes();
    let attrs = journal
        .get(uuid)
        .map_err(|e| jerr("read volume journal", e))?
        .unwrap_or_default();
    let (group, sub) = place.volume_names(uuid, &attrs);
    let mgr = place.mgr();
    if attrs.contains_key(CLONE_FROM_KEY) {
        if let Existing::Cloning(_) = existing(place, &group, &sub, true)? {
            mgr.clone_cancel(&group, &sub)
                .map_err(|e| merr("cancel the running clone", &e))?;
        }
    }
    match mgr.remove(&group, &sub, false) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) if e.kind() == ErrorKind::Busy => {
            // ENOTEMPTY: it has snapshots. Keep them (clones and restores still use
            // them); Ceph removes the rest when the last snapshot goes.
            match mgr.remove(&group, &sub, true) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(merr("remove the subvolume (retaining its snapshots)", &e)),
            }
        }
        Err(e) => return Err(merr("remove the subvolume", &e)),
    }
    crash_point("cephfs.delete.removed");
    if !remove_temp_snapshot(place, &attrs) {
        return Err(Error::unavailable(
            "the temporary snapshot the volume was cloned from could not be removed yet; retry",
        ));
    }
    journal
        .release(uuid, None)
        .map_err(|e| jerr("remove journal entry", e))?;
    Ok(())
}
