//! Compound object operations with optimistic concurrency: read an object together with
//! its version, then write it only if nobody changed it in between (`assert_version`).
//! Reference trackers (a counter in the data, references in the omap, a format version in
//! an xattr) are kept this way.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::ioctx::IoCtx;
use crate::sys::WriteAction;

/// An object's data and some of its omap values, read together.
pub type DataAndOmap = (Vec<u8>, BTreeMap<String, Vec<u8>>);

/// One step of [`IoCtx::object_write`]; all steps apply atomically or none does.
#[derive(Debug, Clone, Copy)]
pub enum ObjectOp<'a> {
    /// Create the object; fails with `AlreadyExists` if it exists.
    CreateExclusive,
    /// Fail the whole operation unless the object is at this version (see
    /// [`is_out_of_date`]).
    AssertVersion(u64),
    /// Set an xattr.
    SetXattr(&'a str, &'a [u8]),
    /// Replace the object's data.
    WriteFull(&'a [u8]),
    /// Set omap keys.
    OmapSet(&'a [(&'a str, &'a [u8])]),
    /// Remove omap keys (absent keys are ignored).
    OmapRmKeys(&'a [&'a str]),
    /// Remove the object.
    Remove,
}

/// Whether an error says that an asserted object version no longer holds (someone else
/// wrote the object meanwhile): the caller re-reads and tries again.
pub fn is_out_of_date(e: &Error) -> bool {
    e.errno == libc::ERANGE || e.errno == libc::EOVERFLOW
}

impl IoCtx {
    /// The value of xattr `name` (at most `max` bytes) and the object's current version.
    /// `NotFound` if the object (or `ENODATA` if the xattr) does not exist.
    pub fn xattr_versioned(&self, obj: &str, name: &str, max: usize) -> Result<(Vec<u8>, u64)> {
        self.raw()
            .getxattr_versioned(obj, name, max)
            .map_err(|e| Error::new("get xattr", e, self.ctx(obj)))
    }

    /// Up to `len` bytes of the object's data and the values of those `keys` that exist,
    /// read atomically, provided the object is still at `version`.
    pub fn read_at_version(
        &self,
        obj: &str,
        version: u64,
        len: usize,
        keys: &[&str],
    ) -> Result<DataAndOmap> {
        let raw: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        let (data, entries) = self
            .raw()
            .read_at_version(obj, version, len, &raw)
            .map_err(|e| Error::new("read object", e, self.ctx(obj)))?;
        let mut map = BTreeMap::new();
        for (k, v) in entries {
            let k = String::from_utf8(k).map_err(|_| {
                Error::new("read object", libc::EILSEQ, self.ctx(obj))
                    .with_detail("omap key is not valid UTF-8")
            })?;
            map.insert(k, v);
        }
        Ok((data, map))
    }

    /// Runs `ops` on `obj` as one atomic write operation.
    pub fn object_write(&self, obj: &str, ops: &[ObjectOp<'_>]) -> Result<()> {
        let sets: Vec<Vec<(&[u8], &[u8])>> = ops
            .iter()
            .map(|op| match op {
                ObjectOp::OmapSet(pairs) => pairs.iter().map(|(k, v)| (k.as_bytes(), *v)).collect(),
                _ => Vec::new(),
            })
            .collect();
        let rms: Vec<Vec<&[u8]>> = ops
            .iter()
            .map(|op| match op {
                ObjectOp::OmapRmKeys(keys) => keys.iter().map(|k| k.as_bytes()).collect(),
                _ => Vec::new(),
            })
            .collect();
        let actions: Vec<WriteAction<'_>> = ops
            .iter()
            .enumerate()
            .map(|(i, op)| match op {
                ObjectOp::CreateExclusive => WriteAction::Create { exclusive: true },
                ObjectOp::AssertVersion(v) => WriteAction::AssertVersion(*v),
                ObjectOp::SetXattr(n, v) => WriteAction::SetXattr(n, v),
                ObjectOp::WriteFull(d) => WriteAction::WriteFull(d),
                ObjectOp::OmapSet(_) => WriteAction::OmapSet(&sets[i]),
                ObjectOp::OmapRmKeys(_) => WriteAction::OmapRmKeys(&rms[i]),
                ObjectOp::Remove => WriteAction::Remove,
            })
            .collect();
        self.raw()
            .write_op(obj, &actions)
            .map_err(|e| Error::new("write object", e, self.ctx(obj)))
    }
}
