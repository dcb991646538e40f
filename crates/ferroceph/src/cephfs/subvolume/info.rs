//! What a volume's subvolume looks like in Ceph (ready, cloning, failed, missing), its
//! quota (expand) and path.

use super::create::refuse_backing;
use super::mgr::{CloneState, SubInfo};
use super::{jerr, merr, FsPlace, CLONE_FROM_KEY, EAGAIN};
use crate::error::{Error, Result};

/// What a journal entry's subvolume looks like in Ceph.
pub(super) enum Existing {
    Absent,
    Ready(SubInfo),
    Cloning(String),
    Failed(String),
}

pub(super) fn existing(
    place: &FsPlace<'_>,
    group: &str,
    sub: &str,
    clone: bool,
) -> Result<Existing> {
    let mgr = place.mgr();
    if clone {
        match mgr
            .clone_status(group, sub)
            .map_err(|e| merr("read the clone status", &e))?
        {
            None => return Ok(Existing::Absent),
            Some(CloneState::Running(s)) => return Ok(Existing::Cloning(s)),
            Some(CloneState::Failed(s)) => return Ok(Existing::Failed(s)),
            Some(CloneState::Complete) => {}
        }
    }
    match mgr.info(group, sub) {
        Ok(None) => Ok(Existing::Absent),
        // A subvolume deleted with its snapshots retained is gone for the CO.
        Ok(Some(i)) if i.state == "snapshot-retained" => Ok(Existing::Absent),
        Ok(Some(i)) => Ok(Existing::Ready(i)),
        // "not ready for operation info": a clone made without our marker (ceph-csi).
        Err(e) if e.errno == EAGAIN && !clone => existing(place, group, sub, true),
        Err(e) => Err(merr("read the subvolume", &e)),
    }
}

/// [`existing`], waiting up to `wait` while a clone runs: a small clone completes in
/// seconds, and answering Aborted at once sends the CO into its retry back-off (a small
/// clone's PVC bound only after 17-20 s in Kubernetes).
pub(super) fn settle(
    place: &FsPlace<'_>,
    group: &str,
    sub: &str,
    clone: bool,
    wait: std::time::Duration,
) -> Result<Existing> {
    let until = std::time::Instant::now() + wait;
    loop {
        match existing(place, group, sub, clone)? {
            Existing::Cloning(_) if std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_secs(1))
            }
            other => return Ok(other),
        }
    }
}

/// Raises the quota to at least `size`; returns the quota now (0: none, unlimited).
pub fn expand(place: &FsPlace<'_>, uuid: &str, volume_id: &str, size: u64) -> Result<u64> {
    let missing = || Error::not_found(format!("volume {volume_id} does not exist"));
    let attrs = place
        .volumes()
        .get(uuid)
        .map_err(|e| jerr("read volume journal", e))?
        .ok_or_else(missing)?;
    refuse_backing(&attrs, volume_id, "expanded")?;
    let (group, sub) = place.volume_names(uuid, &attrs);
    let info = match existing(place, &group, &sub, attrs.contains_key(CLONE_FROM_KEY))? {
        Existing::Ready(i) => i,
        Existing::Cloning(s) => {
            return Err(Error::Aborted(format!(
                "volume {volume_id} is still being cloned ({s}); retry when it is ready"
            )))
        }
        Existing::Absent | Existing::Failed(_) => return Err(missing()),
    };
    match info.quota {
        // No quota: the volume is already unlimited; leave it so.
        None => Ok(0),
        Some(q) if q >= size => Ok(q),
        Some(_) => {
            place
                .mgr()
                .resize(&group, &sub, size)
                .map_err(|e| merr("resize the subvolume", &e))?;
            Ok(size)
        }
    }
}

/// State of a volume for ControllerGetVolume: (quota, abnormal, message).
pub fn volume_condition(
    place: &FsPlace<'_>,
    uuid: &str,
) -> Result<Option<(Option<u64>, bool, String)>> {
    let Some(attrs) = place
        .volumes()
        .get(uuid)
        .map_err(|e| jerr("read volume journal", e))?
    else {
        return Ok(None);
    };
    if let Some(snapshot_id) = super::backed::backing_of(&attrs) {
        return Ok(Some(super::backed::condition(place, snapshot_id)?));
    }
    let (group, sub) = place.volume_names(uuid, &attrs);
    Ok(Some(
        match existing(place, &group, &sub, attrs.contains_key(CLONE_FROM_KEY))? {
            Existing::Ready(i) => (i.quota, false, format!("subvolume {group}/{sub} is ready")),
            Existing::Cloning(s) => (None, true, format!("subvolume {group}/{sub}: {s}")),
            Existing::Failed(s) => (None, true, format!("subvolume {group}/{sub}: {s}")),
            Existing::Absent => (None, true, format!("subvolume {group}/{sub} is missing")),
        },
    ))
}

/// The path of a provisioned volume's subvolume (for nodes given no subvolumePath); for a
/// snapshot-backed volume, the root of its snapshot.
pub fn volume_path(place: &FsPlace<'_>, uuid: &str) -> Result<Option<String>> {
    let Some(attrs) = place
        .volumes()
        .get(uuid)
        .map_err(|e| jerr("read volume journal", e))?
    else {
        return Ok(None);
    };
    if let Some(snapshot_id) = super::backed::backing_of(&attrs) {
        return super::backed::mount_root(place, snapshot_id).map(Some);
    }
    let (group, sub) = place.volume_names(uuid, &attrs);
    match existing(place, &group, &sub, attrs.contains_key(CLONE_FROM_KEY))? {
        Existing::Ready(i) if !i.path.is_empty() => Ok(Some(i.path)),
        _ => Ok(None),
    }
}
