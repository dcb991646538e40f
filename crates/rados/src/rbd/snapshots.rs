//! Snapshots of an image.

use super::image::Image;
use crate::error::{Error, Result};

/// A snapshot of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapInfo {
    /// Snapshot id.
    pub id: u64,
    /// Image size at the snapshot.
    pub size: u64,
    /// Snapshot name.
    pub name: String,
}

impl Image {
    /// Creates snapshot `snap`.
    pub fn snap_create(&self, snap: &str) -> Result<()> {
        self.raw
            .snap_create(snap)
            .map_err(|e| Error::new("rbd snap create", e, self.snap_ctx(snap)))
    }

    /// Removes snapshot `snap`. With clone v2 children it moves to the trash
    /// snapshot namespace until they are gone.
    pub fn snap_remove(&self, snap: &str) -> Result<()> {
        self.raw
            .snap_remove(snap)
            .map_err(|e| Error::new("rbd snap remove", e, self.snap_ctx(snap)))
    }

    /// All (user) snapshots.
    pub fn snap_list(&self) -> Result<Vec<SnapInfo>> {
        let v = self
            .raw
            .snap_list()
            .map_err(|e| Error::new("rbd snap list", e, self.ctx()))?;
        Ok(v.into_iter()
            .map(|(id, size, name)| SnapInfo { id, size, name })
            .collect())
    }

    /// When snapshot `snap_id` was taken, in nanoseconds since the Unix epoch.
    pub fn snap_timestamp_nanos(&self, snap_id: u64) -> Result<i64> {
        let (secs, nanos) = self
            .raw
            .snap_timestamp(snap_id)
            .map_err(|e| Error::new("rbd snap get timestamp", e, self.ctx()))?;
        Ok(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
    }

    /// Protects snapshot `snap` (needed for clone format 1 only).
    pub fn snap_protect(&self, snap: &str) -> Result<()> {
        self.raw
            .snap_protect(snap)
            .map_err(|e| Error::new("rbd snap protect", e, self.snap_ctx(snap)))
    }

    /// Unprotects snapshot `snap`.
    pub fn snap_unprotect(&self, snap: &str) -> Result<()> {
        self.raw
            .snap_unprotect(snap)
            .map_err(|e| Error::new("rbd snap unprotect", e, self.snap_ctx(snap)))
    }

    /// Whether snapshot `snap` is protected.
    pub fn snap_is_protected(&self, snap: &str) -> Result<bool> {
        self.raw
            .snap_is_protected(snap)
            .map_err(|e| Error::new("rbd snap is protected", e, self.snap_ctx(snap)))
    }
}
