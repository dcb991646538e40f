//! Who has an image open: header watchers and exclusive-lock owners.

use super::image::Image;
use crate::error::{Error, Result};

/// A client watching the image header (i.e. having it open read-write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watcher {
    /// Client address.
    pub addr: String,
    /// Client (global) id.
    pub id: i64,
    /// Watch cookie.
    pub cookie: u64,
}

/// Mode of an image's exclusive lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// `RBD_LOCK_MODE_EXCLUSIVE`
    Exclusive,
    /// `RBD_LOCK_MODE_SHARED`
    Shared,
    /// Anything newer.
    Other(i32),
}

/// Current owners of the exclusive lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOwners {
    /// Lock mode.
    pub mode: LockMode,
    /// Owner descriptions.
    pub owners: Vec<String>,
}

impl Image {
    /// Clients watching the image header (`rbd_watchers_list`); includes
    /// this handle when it is open read-write.
    pub fn watchers(&self) -> Result<Vec<Watcher>> {
        let v = self
            .raw
            .watchers()
            .map_err(|e| Error::new("rbd list watchers", e, self.ctx()))?;
        Ok(v.into_iter()
            .map(|(addr, id, cookie)| Watcher { addr, id, cookie })
            .collect())
    }

    /// Breaks the exclusive lock held by `owner` (an entry of
    /// [`Image::lock_owners`]), blocklisting that client first. For owners
    /// known to be dead: their watch outlives them for the watch timeout, and
    /// until then librbd would wait for them to release the lock.
    pub fn lock_break(&self, owner: &str) -> Result<()> {
        self.raw
            .lock_break(owner)
            .map_err(|e| Error::new("rbd lock break", e, format!("{owner} on {}", self.ctx())))
    }

    /// Owners of the exclusive lock (empty when unlocked). Requires the
    /// `exclusive-lock` feature (`InvalidArgument` otherwise).
    pub fn lock_owners(&self) -> Result<LockOwners> {
        let (mode, owners) = match self.raw.lock_owners() {
            Ok(v) => v,
            Err(libc::ENOENT) => (0, Vec::new()),
            Err(e) => return Err(Error::new("rbd get lock owners", e, self.ctx())),
        };
        let mode = match mode {
            0 => LockMode::Exclusive,
            1 => LockMode::Shared,
            m => LockMode::Other(m),
        };
        Ok(LockOwners { mode, owners })
    }
}
