//! The RBD trash: moving images there, listing and removing them.

use crate::error::{Error, Result};
use crate::ioctx::IoCtx;
use crate::sys;

/// Moves image `name` to the trash; it may not be removed from there
/// (without `force`) for `delay_secs` seconds.
pub fn trash_move(io: &IoCtx, name: &str, delay_secs: u64) -> Result<()> {
    sys::rbd_trash_move_image(io.raw(), name, delay_secs)
        .map_err(|e| Error::new("rbd trash move", e, io.ctx(name)))
}

/// An image in the trash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrashEntry {
    /// Image id.
    pub id: String,
    /// Image name at the time it was trashed.
    pub name: String,
    /// Who trashed it: 0 user, 1 mirroring, 2 migration, 3 removing, 4 user parent.
    pub source: i32,
    /// Unix time it was trashed.
    pub deletion_time: i64,
    /// Unix time before which it may not be removed without `force`.
    pub deferment_end_time: i64,
}

/// The images in the trash of the pool/namespace (`rbd_trash_list`).
pub fn trash_list(io: &IoCtx) -> Result<Vec<TrashEntry>> {
    let v = sys::rbd_trash_entries(io.raw())
        .map_err(|e| Error::new("rbd trash list", e, io.location()))?;
    Ok(v.into_iter()
        .map(
            |(id, name, source, deletion_time, deferment_end_time)| TrashEntry {
                id,
                name,
                source,
                deletion_time,
                deferment_end_time,
            },
        )
        .collect())
}

/// Removes the trashed image with id `id`; `force` ignores the deferment
/// delay (`PermissionDenied` without it while the delay runs).
pub fn trash_remove(io: &IoCtx, id: &str, force: bool) -> Result<()> {
    sys::rbd_trash_remove_image(io.raw(), id, force)
        .map_err(|e| Error::new("rbd trash remove", e, io.ctx(&format!("image id {id}"))))
}

/// Finishes a move to the trash that was interrupted (the process died inside
/// `rbd_trash_move`): librbd leaves such an entry in a "moving" state that it refuses to
/// remove (`EUCLEAN`) and may leave the name in the pool directory. This drops the
/// directory entry of `name` → `id` if it is still there and marks the trash entry as
/// fully moved (only if it is still "moving"), after which [`trash_remove`] works.
pub fn trash_finish_move(io: &IoCtx, id: &str, name: &str) -> Result<()> {
    let ctx = || io.ctx(&format!("{name} (id {id})"));
    let mut dir = Vec::new();
    encode_str(&mut dir, name);
    encode_str(&mut dir, id);
    match io
        .raw()
        .exec("rbd_directory", "rbd", "dir_remove_image", &dir)
    {
        Ok(()) => {}
        Err(e) if e == libc::ENOENT => {}
        Err(e) => return Err(Error::new("rbd directory remove", e, ctx())),
    }
    let mut state = Vec::new();
    encode_str(&mut state, id);
    state.push(TRASH_STATE_NORMAL);
    state.push(TRASH_STATE_MOVING);
    io.raw()
        .exec("rbd_trash", "rbd", "trash_state_set", &state)
        .map_err(|e| Error::new("rbd trash state set", e, ctx()))
}

const TRASH_STATE_NORMAL: u8 = 0;
const TRASH_STATE_MOVING: u8 = 1;

/// Ceph's encoding of a string: little-endian u32 length, then the bytes.
fn encode_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}
