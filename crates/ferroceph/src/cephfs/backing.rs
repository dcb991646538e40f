//! Snapshot-backed CephFS volumes (StorageClass `backingSnapshot: "true"`), interoperable
//! with ceph-csi's: such a volume has no subvolume; it is a read-only view of a snapshot
//! (`<subvolume dir>/.snap/<snapshot>/<subvolume uuid>`). Its journal entry names the
//! snapshot's CSI id under `csi.volume.backingsnapshotid`, and the snapshot's reference
//! tracker `rt-backingsnapshot-<snapshot id>` (journal namespace of the metadata pool)
//! holds a normal reference keyed by the snapshot id and one keyed by each volume's
//! subvolume name (`csi-vol-<uuid>`, though no such subvolume exists).
//!
//! DeleteSnapshot masks the snapshot's own reference: while volumes still reference it the
//! snapshot stays (DeleteSnapshot succeeds, the removal is deferred); DeleteVolume drops the
//! volume's reference and, when it was the last one of a snapshot already deleted by the
//! CO, removes the snapshot then. Unlike ceph-csi, the snapshot goes before its tracker
//! (a crash in between leaves the tracker, and the retry finishes), and a volume whose
//! tracker is missing never removes the snapshot (the snapshot may still be wanted).

use crate::ceph::crash_point;
use crate::cephfs::reftracker::{self, RefType, Removed};
use crate::cephfs::subvolume::{
    self, find, jerr, reserve_new, CreateSpec, Created, FsPlace, Source, GROUP_KEY, SOURCE_ID_KEY,
};
use crate::error::{Error, Result};
use crate::journal::{self, Attrs};

use crate::cephfs::subvolume::backed::resolve;
pub(crate) use crate::cephfs::subvolume::backed::{
    backing_of, snapshot_uuid, tracker_name, BACKING_SNAPSHOT_ID,
};
use csi::v1 as pb;

/// Snapshot-backed volumes are read-only: every requested access mode must be a reader
/// mode (ceph-csi's rule, checked on all modes rather than any).
pub(crate) fn check_capabilities(caps: &[pb::VolumeCapability]) -> Result<()> {
    use pb::volume_capability::access_mode::Mode;
    let read_only = |c: &pb::VolumeCapability| {
        matches!(
            c.access_mode.as_ref().map(|m| m.mode()),
            Some(Mode::MultiNodeReaderOnly | Mode::SingleNodeReaderOnly)
        )
    };
    if caps.is_empty() || !caps.iter().all(read_only) {
        return Err(Error::invalid(
            "backingSnapshot may be used only with read-only access modes (ReadOnlyMany or SINGLE_NODE_READER_ONLY)",
        ));
    }
    Ok(())
}
/// CreateVolume of a snapshot-backed volume from snapshot `spec.source` (id
/// `spec.source_id`): a journal entry and a reference, no subvolume. Idempotent.
pub(crate) fn create_volume(place: &FsPlace<'_>, spec: &CreateSpec<'_>) -> Result<Created> {
    let Source::Snapshot(snap_uuid) = &spec.source else {
        return Err(Error::invalid(
            "backingSnapshot needs a snapshot as the volume's content source",
        ));
    };
    let snapshot_id = spec.source_id;
    let journal = place.volumes();
    let found = find(&journal, spec.name)?;
    if let Some(entry) = &found {
        if backing_of(&entry.attrs) != Some(snapshot_id) {
            return Err(Error::AlreadyExists(format!(
                "volume {:?} already exists, and is not backed by snapshot {snapshot_id}",
                spec.name
            )));
        }
    }
    let tracker = tracker_name(snapshot_id);
    let masked = reftracker::read(&place.io, &tracker, &[snapshot_id])?
        .is_some_and(|st| st.refs.get(snapshot_id) == Some(&RefType::Mask));
    if masked && found.is_none() {
        return Err(Error::not_found(format!(
            "snapshot {snapshot_id} was deleted (it stays only while volumes still use it)"
        )));
    }
    let backing = resolve(place, snap_uuid, snapshot_id)?;
    if let (Some(want), Some(have)) = (spec.quota, backing.size) {
        if want > have {
            return Err(Error::OutOfRange(format!(
                "a snapshot-backed volume has its snapshot's size ({have} bytes); {want} bytes were requested"
            )));
        }
    }
    let entry = match found {
        Some(entry) => entry,
        None => reserve_new(&journal, spec.name, |uuid| {
            let mut attrs = Attrs::new();
            attrs.insert(
                journal::IMAGE_NAME.to_string(),
                format!("{}{uuid}", spec.vol_prefix),
            );
            attrs.insert(GROUP_KEY.to_string(), place.group.clone());
            attrs.insert(SOURCE_ID_KEY.to_string(), snapshot_id.to_string());
            attrs.insert(BACKING_SNAPSHOT_ID.to_string(), snapshot_id.to_string());
            if let Some(ns) = spec.owner {
                attrs.insert(journal::OWNER.to_string(), ns.to_string());
            }
            attrs
        })?,
    };
    crash_point("cephfs.backing.reserved");
    let (_, vol_ref) = place.volume_names(&entry.uuid, &entry.attrs);
    reftracker::add(&place.io, &tracker, &[snapshot_id, &vol_ref])?;
    crash_point("cephfs.backing.referenced");
    // The snapshot may have been deleted between the check and the reference.
    if let Err(e) = resolve(place, snap_uuid, snapshot_id) {
        if e.is_not_found() {
            let _ = drop_reference(place, &tracker, snapshot_id, &vol_ref);
            let _ = journal.release(&entry.uuid, Some(spec.name));
        }
        return Err(e);
    }
    Ok(Created {
        uuid: entry.uuid.clone(),
        subvolume: vol_ref,
        path: backing.sub_dir,
        quota: backing.size,
    })
}

/// Drops a volume's reference; the snapshot goes first when it was the last one.
fn drop_reference(
    place: &FsPlace<'_>,
    tracker: &str,
    snapshot_id: &str,
    vol_ref: &str,
) -> Result<Removed> {
    reftracker::remove(&place.io, tracker, &[(vol_ref, RefType::Normal)], || {
        let uuid = snapshot_uuid(place, snapshot_id)?;
        subvolume::delete_snapshot(place, &uuid)?;
        crash_point("cephfs.backing.snapshot-removed");
        Ok(())
    })
}

/// DeleteVolume: a snapshot-backed volume drops its reference and its journal entry; any
/// other volume is removed as usual. Idempotent.
pub(crate) fn delete_volume(place: &FsPlace<'_>, uuid: &str) -> Result<()> {
    let journal = place.volumes();
    let attrs = journal
        .get(uuid)
        .map_err(|e| jerr("read volume journal", e))?;
    let Some(snapshot_id) = attrs.as_ref().and_then(backing_of) else {
        return subvolume::delete_volume(place, uuid);
    };
    let attrs = attrs.clone().unwrap_or_default();
    let (_, vol_ref) = place.volume_names(uuid, &attrs);
    let tracker = tracker_name(snapshot_id);
    match drop_reference(place, &tracker, snapshot_id, &vol_ref)? {
        Removed::Absent => tracing::warn!(
            volume = %vol_ref,
            "the reference tracker {tracker} of the volume's backing snapshot is missing; the snapshot is left alone"
        ),
        Removed::LastGone => {
            tracing::info!(volume = %vol_ref, "last user of deleted snapshot {snapshot_id} gone; snapshot removed")
        }
        Removed::Unchanged | Removed::Kept(_) => {}
    }
    crash_point("cephfs.backing.unreferenced");
    journal
        .release(uuid, None)
        .map_err(|e| jerr("remove journal entry", e))?;
    Ok(())
}

/// DeleteSnapshot: a snapshot that snapshot-backed volumes still use is kept (its own
/// reference becomes a mask) and removed with its last volume; otherwise removed now.
pub(crate) fn delete_snapshot(place: &FsPlace<'_>, snapshot_id: &str, uuid: &str) -> Result<()> {
    let tracker = tracker_name(snapshot_id);
    let removed = reftracker::remove(&place.io, &tracker, &[(snapshot_id, RefType::Mask)], || {
        subvolume::delete_snapshot(place, uuid)
    })?;
    match removed {
        Removed::Absent => subvolume::delete_snapshot(place, uuid),
        Removed::LastGone => Ok(()),
        Removed::Unchanged | Removed::Kept(_) => {
            tracing::info!(
                snapshot = snapshot_id,
                "snapshot-backed volumes still use the snapshot; it is removed with the last of them"
            );
            Ok(())
        }
    }
}
