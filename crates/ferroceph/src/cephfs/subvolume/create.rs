//! CreateVolume: a blank subvolume, or a clone of a snapshot or (through a temporary
//! snapshot) of another volume, recorded in the journal first so a retry after a crash
//! finishes or undoes it.

use super::info::{existing, settle, Existing};
use super::mgr::SubInfo;
use super::{
    find, jerr, merr, reserve_new, FsPlace, SnapRef, CLONE_FROM_KEY, GROUP_KEY, SIZE_KEY,
    SOURCE_ID_KEY, TEMP_SNAP_KEY,
};
use crate::ceph::crash_point;
use crate::error::{Error, Result};
use crate::journal::{self, Attrs, Entry, Journal};
use crate::validate;
use csi::v1 as pb;
use rados::ErrorKind;

/// Where a new volume's data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Blank,
    /// A snapshot's uuid (same filesystem).
    Snapshot(String),
    /// A volume's uuid (same filesystem).
    Volume(String),
}

pub struct CreateSpec<'a> {
    pub name: &'a str,
    /// None: no quota.
    pub quota: Option<u64>,
    pub range: Option<&'a pb::CapacityRange>,
    pub pool: Option<&'a str>,
    pub vol_prefix: &'a str,
    pub owner: Option<&'a str>,
    pub source: Source,
    /// The CSI id of the source, "" for blank.
    pub source_id: &'a str,
    /// How long to wait for a clone to complete before answering Aborted.
    pub clone_wait: std::time::Duration,
}

#[derive(Debug, Clone)]
pub struct Created {
    pub uuid: String,
    pub subvolume: String,
    pub path: String,
    pub quota: Option<u64>,
}

fn quota_fits(quota: Option<u64>, spec: &CreateSpec<'_>) -> bool {
    match (quota, spec.quota) {
        (Some(q), _) => validate::size_fits(q, spec.range),
        (None, None) => true,
        (None, Some(_)) => false,
    }
}

/// Undo of a creation that failed (not crashed): the subvolume (a running clone is
/// cancelled first), a temporary snapshot, and the journal entry. The entry is kept when
/// something could not be removed, so a retry or DeleteVolume still finds it; returns
/// whether everything is gone.
fn rollback(place: &FsPlace<'_>, journal: &Journal<'_>, entry: &Entry, name: &str) -> bool {
    let mgr = place.mgr();
    let (group, sub) = place.volume_names(&entry.uuid, &entry.attrs);
    if entry.attrs.contains_key(CLONE_FROM_KEY) {
        let _ = mgr.clone_cancel(&group, &sub);
    }
    let mut clean = match mgr.remove(&group, &sub, false) {
        Ok(()) => true,
        Err(e) if e.kind() == ErrorKind::NotFound => true,
        Err(e) => {
            tracing::warn!(subvolume = %sub, "rollback could not remove the subvolume (a retry or DeleteVolume will): {e}");
            false
        }
    };
    clean &= remove_temp_snapshot(place, &entry.attrs);
    if clean {
        if let Err(e) = journal.release(&entry.uuid, Some(name)) {
            tracing::warn!(name, "rollback could not release the journal entry: {e}");
            clean = false;
        }
    }
    clean
}

/// Removes the temporary snapshot a volume clone was made from; true when it is gone.
pub(super) fn remove_temp_snapshot(place: &FsPlace<'_>, attrs: &Attrs) -> bool {
    if attrs.get(TEMP_SNAP_KEY).map(String::as_str) != Some("1") {
        return true;
    }
    let Some(src) = attrs.get(CLONE_FROM_KEY).and_then(|s| SnapRef::decode(s)) else {
        return true;
    };
    match place.mgr().snapshot_remove(&src.group, &src.sub, &src.snap) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(snapshot = %src.encode(), "cannot remove the temporary snapshot (left for a retry or DeleteVolume): {e}");
            false
        }
    }
}

/// The snapshot with journal uuid `uuid` (CSI id `id`) and its size; NotFound when gone.
fn snapshot_source(place: &FsPlace<'_>, uuid: &str, id: &str) -> Result<(SnapRef, Option<u64>)> {
    let missing = || Error::not_found(format!("snapshot {id} does not exist"));
    let attrs = place
        .snaps()
        .get(uuid)
        .map_err(|e| jerr("read the snapshot's journal entry", e))?
        .ok_or_else(missing)?;
    let src = place.snapshot_ref(uuid, &attrs).ok_or_else(missing)?;
    place
        .mgr()
        .snapshot_info(&src.group, &src.sub, &src.snap)
        .map_err(|e| merr("read the snapshot", &e))?
        .ok_or_else(missing)?;
    let size = attrs.get(SIZE_KEY).and_then(|s| s.parse::<u64>().ok());
    Ok((src, size.filter(|s| *s > 0)))
}

/// Checks the content source and says which snapshot to clone from, and how big it is.
/// A snapshot-backed source volume is cloned from its snapshot (as ceph-csi does).
fn plan_source(place: &FsPlace<'_>, spec: &CreateSpec<'_>) -> Result<Option<(SnapRef, bool)>> {
    let (src, temp, size) = match &spec.source {
        Source::Blank => return Ok(None),
        Source::Snapshot(uuid) => {
            let (src, size) = snapshot_source(place, uuid, spec.source_id)?;
            (src, false, size)
        }
        Source::Volume(uuid) => {
            let missing =
                || Error::not_found(format!("source volume {} does not exist", spec.source_id));
            let attrs = place
                .volumes()
                .get(uuid)
                .map_err(|e| jerr("read the source volume's journal entry", e))?
                .ok_or_else(missing)?;
            if let Some(sid) = super::backed::backing_of(&attrs) {
                let snap = super::backed::snapshot_uuid(place, sid)?;
                let (src, size) = snapshot_source(place, &snap, sid)?;
                (src, false, size)
            } else {
                let (group, sub) = place.volume_names(uuid, &attrs);
                let info = match existing(place, &group, &sub, attrs.contains_key(CLONE_FROM_KEY))?
                {
                    Existing::Ready(i) => i,
                    Existing::Cloning(s) => {
                        return Err(Error::Aborted(format!(
                            "source volume {} is still being cloned ({s}); retry when it is ready",
                            spec.source_id
                        )))
                    }
                    Existing::Absent | Existing::Failed(_) => return Err(missing()),
                };
                // The temporary snapshot is named after the new subvolume (set when reserving).
                let snap = String::new();
                (SnapRef { group, sub, snap }, true, info.quota)
            }
        }
    };
    if let (Some(want), Some(have)) = (spec.quota, size) {
        if want < have {
            return Err(Error::OutOfRange(format!(
                "requested size {want} is smaller than the content source ({have} bytes)"
            )));
        }
    }
    Ok(Some((src, temp)))
}

/// Snapshot-backed volumes have no subvolume: they cannot be cloned, snapshotted or
/// expanded (ceph-csi refuses the last two as well).
pub(super) fn refuse_backing(attrs: &Attrs, id: &str, what: &str) -> Result<()> {
    if super::backed::backing_of(attrs).is_some() {
        return Err(Error::invalid(format!(
            "volume {id} is snapshot-backed (a read-only view of a snapshot) and cannot be {what}"
        )));
    }
    Ok(())
}

fn has_clone_record(entry: &Entry) -> bool {
    entry.attrs.contains_key(CLONE_FROM_KEY)
}

/// Reserves a new volume entry with everything a retry needs: group, owner, content
/// source, and for clones the snapshot they come from (a volume source's temporary
/// snapshot is named after the new subvolume).
fn reserve_volume(
    place: &FsPlace<'_>,
    journal: &Journal<'_>,
    spec: &CreateSpec<'_>,
    planned: Option<&(SnapRef, bool)>,
) -> Result<Entry> {
    reserve_new(journal, spec.name, |uuid| {
        let sub = format!("{}{uuid}", spec.vol_prefix);
        let mut attrs = Attrs::new();
        attrs.insert(journal::IMAGE_NAME.to_string(), sub.clone());
        attrs.insert(GROUP_KEY.to_string(), place.group.clone());
        if let Some(ns) = spec.owner {
            attrs.insert(journal::OWNER.to_string(), ns.to_string());
        }
        if !spec.source_id.is_empty() {
            attrs.insert(SOURCE_ID_KEY.to_string(), spec.source_id.to_string());
        }
        if let Some((src, temp)) = planned {
            let mut src = src.clone();
            if *temp {
                src.snap = sub;
                attrs.insert(TEMP_SNAP_KEY.to_string(), "1".to_string());
            }
            attrs.insert(CLONE_FROM_KEY.to_string(), src.encode());
        }
        attrs
    })
}

pub fn create_volume(place: &FsPlace<'_>, spec: &CreateSpec<'_>) -> Result<Created> {
    let journal = place.volumes();
    let found = find(&journal, spec.name)?;
    if let Some(entry) = &found {
        if super::backed::backing_of(&entry.attrs).is_some() {
            return Err(Error::AlreadyExists(format!(
                "volume {:?} already exists as a snapshot-backed volume (backingSnapshot: \"true\")",
                spec.name
            )));
        }
        let recorded = entry.attr(SOURCE_ID_KEY).unwrap_or("");
        if recorded != spec.source_id {
            return Err(Error::AlreadyExists(format!(
                "volume {:?} already exists with another content source ({recorded:?})",
                spec.name
            )));
        }
        let (group, sub) = place.volume_names(&entry.uuid, &entry.attrs);
        let clone = entry.attrs.contains_key(CLONE_FROM_KEY);
        match settle(place, &group, &sub, clone, spec.clone_wait)? {
            Existing::Absent => {}
            Existing::Ready(info) => {
                return finish(place, &journal, entry, spec, &group, &sub, info);
            }
            Existing::Cloning(state) => return Err(clone_pending(spec.name, &sub, &state)),
            Existing::Failed(why) => {
                let cleaned = if rollback(place, &journal, entry, spec.name) {
                    "the failed clone was removed, and a retry starts a new one"
                } else {
                    "removing the failed clone did not finish; a retry continues"
                };
                return Err(Error::internal(format!(
                    "creating volume {:?} from {} failed: {why}; {cleaned}",
                    spec.name, spec.source_id
                )));
            }
        }
    }
    // Everything that can make the request fail for good is checked before reserving.
    if let Some(pool) = spec.pool {
        place.check_data_pool(pool)?;
    }
    let planned = plan_source(place, spec)?;
    let entry = match found {
        Some(entry) if has_clone_record(&entry) == planned.is_some() => entry,
        // An entry (made by ceph-csi) that does not say how to make this kind of volume,
        // and nothing exists for it yet: start over under a fresh uuid.
        Some(entry) => {
            journal
                .release(&entry.uuid, Some(spec.name))
                .map_err(|e| jerr("clean up an unfinished journal entry", e))?;
            reserve_volume(place, &journal, spec, planned.as_ref())?
        }
        None => reserve_volume(place, &journal, spec, planned.as_ref())?,
    };
    crash_point("cephfs.create.reserved");
    let (group, sub) = place.volume_names(&entry.uuid, &entry.attrs);
    // Ok(Ok(info)): ready; Ok(Err(state)): a clone still running.
    let built = (|| -> Result<Result<SubInfo, String>> {
        let mgr = place.mgr();
        match entry
            .attrs
            .get(CLONE_FROM_KEY)
            .and_then(|s| SnapRef::decode(s))
        {
            None => {
                mgr.create(&group, &sub, spec.quota, spec.pool)
                    .map_err(|e| merr("create the subvolume", &e))?;
                crash_point("cephfs.create.subvolume");
            }
            Some(src) => {
                if entry.attrs.get(TEMP_SNAP_KEY).map(String::as_str) == Some("1") {
                    mgr.snapshot_create(&src.group, &src.sub, &src.snap)
                        .map_err(|e| merr("snapshot the source volume", &e))?;
                    crash_point("cephfs.clone.tempsnap");
                }
                mgr.clone(&src, &group, &sub, spec.pool)
                    .map_err(|e| merr("start the clone", &e))?;
                crash_point("cephfs.clone.started");
            }
        }
        match settle(
            place,
            &group,
            &sub,
            entry.attrs.contains_key(CLONE_FROM_KEY),
            spec.clone_wait,
        )? {
            Existing::Ready(info) => Ok(Ok(info)),
            Existing::Cloning(state) => Ok(Err(state)),
            Existing::Absent => Err(Error::Aborted(format!(
                "subvolume {sub} vanished while being created; retry"
            ))),
            Existing::Failed(why) => Err(Error::internal(format!(
                "creating volume {:?} failed: {why}",
                spec.name
            ))),
        }
    })();
    match built {
        Ok(Ok(info)) => finish(place, &journal, &entry, spec, &group, &sub, info),
        Ok(Err(state)) => Err(clone_pending(spec.name, &sub, &state)),
        Err(e) => {
            if rollback(place, &journal, &entry, spec.name) {
                Err(e)
            } else {
                Err(Error::from_code(
                    e.code(),
                    format!(
                        "{}; undoing it did not finish, a retry continues",
                        e.message()
                    ),
                ))
            }
        }
    }
}

fn clone_pending(name: &str, sub: &str, state: &str) -> Error {
    Error::Aborted(format!(
        "volume {name:?} is being cloned into subvolume {sub}: {state}; CephFS copies the data in the background, retry later"
    ))
}

/// Completes a volume whose subvolume is ready: removes a clone's temporary snapshot,
/// sets the requested quota, and checks that an existing volume fits the request.
fn finish(
    place: &FsPlace<'_>,
    journal: &Journal<'_>,
    entry: &Entry,
    spec: &CreateSpec<'_>,
    group: &str,
    sub: &str,
    mut info: SubInfo,
) -> Result<Created> {
    if entry.attrs.contains_key(CLONE_FROM_KEY) {
        let temp_gone = remove_temp_snapshot(place, &entry.attrs);
        if let Some(want) = spec.quota {
            if info.quota.map_or(true, |q| q < want) {
                place
                    .mgr()
                    .resize(group, sub, want)
                    .map_err(|e| merr("set the clone's quota", &e))?;
                info.quota = Some(want);
            }
        }
        if temp_gone && entry.attrs.contains_key(TEMP_SNAP_KEY) {
            // Done with it: a later delete needs not look for it.
            let _ = journal.set_attrs(&entry.uuid, &[(TEMP_SNAP_KEY, "0")]);
        }
    }
    if !quota_fits(info.quota, spec) {
        return Err(Error::AlreadyExists(format!(
            "volume {:?} already exists with a quota of {}, which does not fit the requested range",
            spec.name,
            info.quota
                .map(|q| format!("{q} bytes"))
                .unwrap_or_else(|| "none".into())
        )));
    }
    crash_point("cephfs.create.done");
    Ok(Created {
        uuid: entry.uuid.clone(),
        subvolume: sub.to_string(),
        path: info.path,
        quota: info.quota,
    })
}
