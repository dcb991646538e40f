//! RADOS io contexts (a pool plus a namespace) and plain object operations.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::sys;

/// An io context: all object and image operations of this crate happen in
/// one pool and one RADOS namespace. Created by [`crate::Cluster::ioctx`].
///
/// `Send` but not `Sync`: hand it to another thread, or open one per thread
/// (they are cheap); it keeps its cluster connection alive.
pub struct IoCtx {
    raw: sys::Ioctx,
    pool: String,
    namespace: String,
}

/// Size and modification time of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectStat {
    /// Size in bytes of the object's data (omap not included).
    pub size: u64,
    /// Last modification time (second precision).
    pub mtime: SystemTime,
}

impl fmt::Debug for IoCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoCtx")
            .field("pool", &self.pool)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl IoCtx {
    pub(crate) fn new(raw: sys::Ioctx, pool: String, namespace: String) -> IoCtx {
        IoCtx {
            raw,
            pool,
            namespace,
        }
    }

    pub(crate) fn raw(&self) -> &sys::Ioctx {
        &self.raw
    }

    /// The pool's name.
    pub fn pool_name(&self) -> &str {
        &self.pool
    }

    /// The pool's id.
    pub fn pool_id(&self) -> i64 {
        self.raw.pool_id()
    }

    /// The RADOS namespace (`""` = default).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `"in pool rbd"` / `"in pool rbd namespace ns1"`, for error contexts.
    pub(crate) fn location(&self) -> String {
        if self.namespace.is_empty() {
            format!("in pool {}", self.pool)
        } else {
            format!("in pool {} namespace {}", self.pool, self.namespace)
        }
    }

    /// `"{what} in pool ..."`.
    pub(crate) fn ctx(&self, what: &str) -> String {
        format!("{what} {}", self.location())
    }

    /// Creates an empty object. With `exclusive`, fails with
    /// [`crate::ErrorKind::AlreadyExists`] if it exists already.
    pub fn create_object(&self, name: &str, exclusive: bool) -> Result<()> {
        self.raw
            .write_op(name, &[sys::WriteAction::Create { exclusive }])
            .map_err(|e| Error::new("create object", e, self.ctx(name)))
    }

    /// Removes an object (data, xattrs and omap).
    pub fn remove_object(&self, name: &str) -> Result<()> {
        self.raw
            .remove(name)
            .map_err(|e| Error::new("remove object", e, self.ctx(name)))
    }

    /// Size and mtime of an object; `NotFound` if it does not exist.
    pub fn stat(&self, name: &str) -> Result<ObjectStat> {
        let (size, mtime) = self
            .raw
            .stat(name)
            .map_err(|e| Error::new("stat object", e, self.ctx(name)))?;
        let mtime = u64::try_from(mtime)
            .ok()
            .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s)))
            .unwrap_or(UNIX_EPOCH);
        Ok(ObjectStat { size, mtime })
    }
}
