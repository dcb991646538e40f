//! Where a snapshot-backed CephFS volume's data is (see `cephfs::backing` for the flows that
//! create and delete them): the journal key naming the backing snapshot, the snapshot's
//! reference tracker, and the snapshot's directory as nodes mount it.

use super::{jerr, merr, FsPlace};
use crate::cephfs::reftracker::{self, RefType};
use crate::error::{Error, Result};
use crate::journal::Attrs;
use crate::volid::CsiId;

/// Journal key (ceph-csi's) of a snapshot-backed volume: the backing snapshot's CSI id.
pub(crate) const BACKING_SNAPSHOT_ID: &str = "csi.volume.backingsnapshotid";

/// The reference tracker of a snapshot, by its CSI id.
pub(crate) fn tracker_name(snapshot_id: &str) -> String {
    format!("rt-backingsnapshot-{snapshot_id}")
}

/// The backing snapshot id of a volume journal entry; None for a volume with a subvolume.
pub(crate) fn backing_of(attrs: &Attrs) -> Option<&str> {
    attrs
        .get(BACKING_SNAPSHOT_ID)
        .map(String::as_str)
        .filter(|s| !s.is_empty())
}

/// A snapshot as a backing volume sees it.
pub(crate) struct Backing {
    /// `/volumes/<group>/<subvolume>/`: the subvolume's directory (with the trailing slash
    /// ceph-csi's subvolumePath has).
    pub(crate) sub_dir: String,
    /// The snapshot's root below `sub_dir`: `.snap/<snapshot>/<subvolume uuid>`.
    pub(crate) snap_root: String,
    pub(crate) size: Option<u64>,
}

/// Finds snapshot `uuid` (id `snapshot_id`) and where its data is; NotFound when gone.
pub(crate) fn resolve(place: &FsPlace<'_>, uuid: &str, snapshot_id: &str) -> Result<Backing> {
    let missing = || Error::not_found(format!("snapshot {snapshot_id} does not exist"));
    let attrs = place
        .snaps()
        .get(uuid)
        .map_err(|e| jerr("read the snapshot's journal entry", e))?
        .ok_or_else(missing)?;
    let r = place.snapshot_ref(uuid, &attrs).ok_or_else(missing)?;
    let mgr = place.mgr();
    mgr.snapshot_info(&r.group, &r.sub, &r.snap)
        .map_err(|e| merr("read the snapshot", &e))?
        .ok_or_else(missing)?;
    let info = mgr
        .info(&r.group, &r.sub)
        .map_err(|e| merr("read the snapshot's subvolume", &e))?
        .filter(|i| !i.path.is_empty())
        .ok_or_else(|| {
            Error::precondition(format!(
                "the subvolume {}/{} of snapshot {snapshot_id} has no path (deleted with its snapshots retained?); a snapshot-backed volume needs it",
                r.group, r.sub
            ))
        })?;
    let path = info.path.trim_end_matches('/');
    let (dir, sub_uuid) = path
        .rsplit_once('/')
        .filter(|(d, u)| !d.is_empty() && !u.is_empty())
        .ok_or_else(|| Error::internal(format!("unexpected subvolume path {:?}", info.path)))?;
    Ok(Backing {
        sub_dir: format!("{dir}/"),
        snap_root: format!(".snap/{}/{sub_uuid}", r.snap),
        size: info.quota,
    })
}

/// The snapshot a backing volume uses, on the same filesystem.
pub(crate) fn snapshot_uuid(place: &FsPlace<'_>, snapshot_id: &str) -> Result<String> {
    let id = CsiId::decode(snapshot_id).map_err(|e| {
        Error::internal(format!(
            "backing snapshot id {snapshot_id:?} in the journal does not decode: {e}"
        ))
    })?;
    if id.location != place.fs.fscid {
        return Err(Error::internal(format!(
            "backing snapshot {snapshot_id} is on filesystem id {}, not on {} (id {})",
            id.location, place.fs.name, place.fs.fscid
        )));
    }
    Ok(id.uuid)
}

/// Where the node mounts a snapshot-backed volume from: the snapshot's root, read-only.
pub(crate) fn mount_root(place: &FsPlace<'_>, snapshot_id: &str) -> Result<String> {
    let uuid = snapshot_uuid(place, snapshot_id)?;
    let b = resolve(place, &uuid, snapshot_id)?;
    Ok(format!("{}{}", b.sub_dir, b.snap_root))
}

/// ControllerGetVolume of a snapshot-backed volume: (size, abnormal, message) from its
/// snapshot.
pub(crate) fn condition(
    place: &FsPlace<'_>,
    snapshot_id: &str,
) -> Result<(Option<u64>, bool, String)> {
    let uuid = snapshot_uuid(place, snapshot_id)?;
    match resolve(place, &uuid, snapshot_id) {
        Ok(b) => Ok((
            b.size,
            false,
            format!(
                "backed by snapshot {snapshot_id} ({}{})",
                b.sub_dir, b.snap_root
            ),
        )),
        Err(e) if e.is_not_found() => Ok((
            None,
            true,
            format!("its backing snapshot {snapshot_id} is missing"),
        )),
        Err(e) => Err(e),
    }
}

/// CreateSnapshot under the name of a snapshot the CO deleted but snapshot-backed volumes
/// still use: not a retry of the old request (answering with the old snapshot would also
/// let its last volume remove it under the new one), so FailedPrecondition until it is gone.
/// `source_id` is the source volume's CSI id (for the cluster id of the snapshot's id).
pub(crate) fn refuse_deleted(
    place: &FsPlace<'_>,
    source_id: &str,
    snap_uuid: &str,
    name: &str,
) -> Result<()> {
    let Ok(src) = CsiId::decode(source_id) else {
        return Ok(());
    };
    let Ok(sid) = CsiId::new(&src.cluster_id, place.fs.fscid, snap_uuid) else {
        return Ok(());
    };
    let sid = sid.to_string();
    let masked = reftracker::read(&place.io, &tracker_name(&sid), &[&sid])?
        .is_some_and(|st| st.refs.get(sid.as_str()) == Some(&RefType::Mask));
    if masked {
        return Err(Error::precondition(format!(
            "snapshot {name:?} ({sid}) was deleted and is kept only while snapshot-backed volumes use it; a new snapshot of that name can be made once they are gone"
        )));
    }
    Ok(())
}
