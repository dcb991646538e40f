//! Blocking CephFS flows on the cluster through the mgr `volumes` module (JSON commands
//! over librados, no CLI): create (blank, from a snapshot, from a volume), snapshot,
//! expand, delete. As for RBD, each flow records its intent in the journal (the
//! filesystem's metadata pool, namespace `csi`) before touching Ceph, and each step is
//! idempotent, so a retry after a crash at any point finishes the work or undoes it.
//!
//! Clones are asynchronous in Ceph: CreateVolume starts one, waits for it within part of
//! the RPC's deadline, and answers Aborted with the clone's state while it is not complete; a failed or cancelled clone is removed with its
//! journal entry and reported, so the next retry starts over cleanly.
//!
//! Submodules: `place` (filesystems and where a volume's journal lives), `mgr` (the
//! `volumes` module's commands), `create`, `delete`, `snapshot`, and `info` (quota,
//! state and path of a volume).

pub(crate) mod backed;
mod create;
mod delete;
mod info;
mod mgr;
mod place;
mod snapshot;

pub use create::{create_volume, CreateSpec, Created, Source};
pub use delete::delete_volume;
pub use info::{expand, volume_condition, volume_path};
pub use mgr::{parse_clone_status, CloneState, SubInfo, Volumes};
pub use place::{filesystems, fs_by_id, fs_by_name, parse_fs_dump, FsInfo, FsPlace, SnapRef};
pub use snapshot::{
    create_snapshot, delete_snapshot, parse_ceph_time, read_snapshot_info, snapshot_info,
    SnapshotInfo,
};

use crate::error::{Error, Result};
use crate::journal::{Attrs, Entry, Journal, JournalError, Lookup};

/// Journal keys of ours (ignored by ceph-csi).
/// The subvolume group a volume or snapshot lives in (ceph-csi always uses config.json's).
pub const GROUP_KEY: &str = "csi.ferroceph.group";
/// The CSI id of a volume's content source, so a retry can tell a compatible request.
pub const SOURCE_ID_KEY: &str = "csi.ferroceph.source";
/// `<group>/<subvolume>@<snapshot>` a volume is cloned from.
pub const CLONE_FROM_KEY: &str = "csi.ferroceph.clonefrom";
/// "1" when that snapshot was made for the clone (volume source) and goes when it is done.
pub const TEMP_SNAP_KEY: &str = "csi.ferroceph.tempsnap";
/// Snapshot creation time (unix nanoseconds) and size (the source's quota) in bytes.
pub const CREATED_KEY: &str = "csi.ferroceph.created";
pub const SIZE_KEY: &str = "csi.ferroceph.size";

pub(super) const EAGAIN: i32 = libc::EAGAIN;
pub(super) const EOPNOTSUPP: i32 = libc::EOPNOTSUPP;

pub fn jerr(what: &str, e: JournalError) -> Error {
    match e {
        JournalError::Rados(e) => Error::ceph(what, e),
        other => Error::internal(format!("{what}: {other}")),
    }
}

/// Maps an mgr error to a status, with Ceph's explanation.
pub fn merr(what: &str, e: &rados::Error) -> Error {
    if e.errno == EAGAIN {
        return Error::Aborted(format!("{what}: {e}; retry later"));
    }
    Error::ceph(what, e.clone())
}

/// Looks `name` up, clearing a dangling directory key left by a crash.
pub(crate) fn find(journal: &Journal<'_>, name: &str) -> Result<Option<Entry>> {
    match journal
        .lookup(name)
        .map_err(|e| jerr("journal lookup", e))?
    {
        Lookup::Found(entry) => Ok(Some(entry)),
        Lookup::Dangling { uuid } => {
            journal
                .release(&uuid, Some(name))
                .map_err(|e| jerr("clean up a stale journal entry", e))?;
            Ok(None)
        }
        Lookup::Absent => Ok(None),
    }
}

/// Reserves `name` under a fresh uuid; `attrs` gives the per-entry keys for a uuid (the
/// entry object is created with all of them in one step).
pub(crate) fn reserve_new(
    journal: &Journal<'_>,
    name: &str,
    attrs: impl Fn(&str) -> Attrs,
) -> Result<Entry> {
    for _ in 0..5 {
        let uuid = uuid::Uuid::new_v4().to_string();
        let attrs = attrs(&uuid);
        match journal.reserve(name, &uuid, &attrs) {
            Ok(()) => {
                return Ok(Entry {
                    uuid,
                    pool_id: None,
                    attrs,
                })
            }
            Err(JournalError::UuidClash(_)) => continue,
            Err(e) => return Err(jerr("journal reserve", e)),
        }
    }
    Err(Error::internal(
        "could not find a free uuid after 5 attempts",
    ))
}
