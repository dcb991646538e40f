//! Reference trackers in the on-disk format ceph-csi uses (so both drivers can share one):
//! a RADOS object whose
//! - xattr `csi.ceph.com/rt-version` holds the format version, a big-endian u32 (1);
//! - data holds the number of counted references, a big-endian u32;
//! - omap maps each reference key to its type, one byte: 1 = normal (counted), 2 = mask
//!   (kept, not counted, and never added again).
//!
//! Keys make adding and removing idempotent. The object is removed when the count drops to
//! zero. Every change asserts the object version seen by the read before it, so concurrent
//! writers (ferroceph or ceph-csi) never lose each other's updates; a lost race is retried.

use crate::ceph::crash_point;
use crate::error::{Error, Result};
use rados::objops::is_out_of_date;
use rados::{ErrorKind, IoCtx, ObjectOp};
use std::collections::BTreeMap;

const VERSION_XATTR: &str = "csi.ceph.com/rt-version";
const VERSION_1: u32 = 1;
const NORMAL: u8 = 1;
const MASK: u8 = 2;
/// How often a write that lost a race with another writer is tried again.
const ATTEMPTS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefType {
    /// Counted; removing it decrements the count.
    Normal,
    /// Not counted; a normal reference removed as a mask stays as one.
    Mask,
}

/// What a tracker holds for the keys asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct State {
    version: u64,
    pub(crate) count: u32,
    pub(crate) refs: BTreeMap<String, RefType>,
}

/// The result of [`remove`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Removed {
    /// No such tracker.
    Absent,
    /// The tracker did not change (the references were already gone or masked).
    Unchanged,
    /// References changed; this many counted ones remain.
    Kept(u32),
    /// The last counted reference went, and so did the tracker.
    LastGone,
}

fn corrupt(name: &str, what: impl std::fmt::Display) -> Error {
    Error::internal(format!(
        "reference tracker {name} is damaged ({what}); inspect it with `rados -p <metadata pool> -N csi getxattr/get/listomapvals {name}`"
    ))
}

fn raced(name: &str) -> Error {
    Error::Aborted(format!(
        "reference tracker {name} kept changing under concurrent updates; retry"
    ))
}

/// Reads the tracker's count and the types of `keys`; None when it does not exist.
pub(crate) fn read(io: &IoCtx, name: &str, keys: &[&str]) -> Result<Option<State>> {
    for _ in 0..ATTEMPTS {
        let (ver, version) = match io.xattr_versioned(name, VERSION_XATTR, 4) {
            Ok(v) => v,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) if e.errno == libc::ENODATA => return Err(corrupt(name, "no version xattr")),
            Err(e) => return Err(Error::ceph("read the reference tracker's version", e)),
        };
        let ver: [u8; 4] = ver
            .as_slice()
            .try_into()
            .map_err(|_| corrupt(name, format!("version is {} bytes", ver.len())))?;
        let ver = u32::from_be_bytes(ver);
        if ver != VERSION_1 {
            return Err(Error::internal(format!(
                "reference tracker {name} has format version {ver}, which this driver does not know"
            )));
        }
        let (data, omap) = match io.read_at_version(name, version, 4, keys) {
            Ok(r) => r,
            Err(e) if is_out_of_date(&e) || e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::ceph("read the reference tracker", e)),
        };
        let count: [u8; 4] = data
            .as_slice()
            .try_into()
            .map_err(|_| corrupt(name, format!("count is {} bytes", data.len())))?;
        let mut refs = BTreeMap::new();
        for (k, v) in omap {
            let t = match v.as_slice() {
                [NORMAL] => RefType::Normal,
                [MASK] => RefType::Mask,
                other => return Err(corrupt(name, format!("reference {k} has type {other:?}"))),
            };
            refs.insert(k, t);
        }
        return Ok(Some(State {
            version,
            count: u32::from_be_bytes(count),
            refs,
        }));
    }
    Err(raced(name))
}

/// Adds normal references for those `keys` the tracker does not hold yet (in any type),
/// creating it when missing. Returns whether it was created.
pub(crate) fn add(io: &IoCtx, name: &str, keys: &[&str]) -> Result<bool> {
    for _ in 0..ATTEMPTS {
        let Some(st) = read(io, name, keys)? else {
            let pairs: Vec<(&str, &[u8])> = keys.iter().map(|k| (*k, &[NORMAL][..])).collect();
            let count = u32::try_from(pairs.len())
                .map_err(|_| Error::internal("too many references"))?
                .to_be_bytes();
            let ver = VERSION_1.to_be_bytes();
            match io.object_write(
                name,
                &[
                    ObjectOp::CreateExclusive,
                    ObjectOp::SetXattr(VERSION_XATTR, &ver),
                    ObjectOp::OmapSet(&pairs),
                    ObjectOp::WriteFull(&count),
                ],
            ) {
                Ok(()) => return Ok(true),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::ceph("create the reference tracker", e)),
            }
        };
        let new: Vec<(&str, &[u8])> = keys
            .iter()
            .filter(|k| !st.refs.contains_key(**k))
            .map(|k| (*k, &[NORMAL][..]))
            .collect();
        if new.is_empty() {
            return Ok(false);
        }
        let count = u32::try_from(new.len())
            .ok()
            .and_then(|n| st.count.checked_add(n))
            .ok_or_else(|| corrupt(name, "the count would overflow"))?
            .to_be_bytes();
        match io.object_write(
            name,
            &[
                ObjectOp::AssertVersion(st.version),
                ObjectOp::WriteFull(&count),
                ObjectOp::OmapSet(&new),
            ],
        ) {
            Ok(()) => return Ok(false),
            Err(e) if is_out_of_date(&e) || e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::ceph("add to the reference tracker", e)),
        }
    }
    Err(raced(name))
}

/// What removing `refs` from `st` changes: (keys to remove, keys to set to mask, new count).
fn plan(
    name: &str,
    st: &State,
    refs: &[(&str, RefType)],
) -> Result<(Vec<String>, Vec<String>, u32)> {
    let (mut gone, mut masked, mut minus) = (Vec::new(), Vec::new(), 0u32);
    for (k, want) in refs {
        match (st.refs.get(*k), want) {
            (Some(have), RefType::Normal) => {
                gone.push(k.to_string());
                if *have == RefType::Normal {
                    minus += 1;
                }
            }
            (Some(RefType::Normal), RefType::Mask) => {
                masked.push(k.to_string());
                minus += 1;
            }
            (Some(RefType::Mask), RefType::Mask) | (None, RefType::Normal) => {}
            (None, RefType::Mask) => masked.push(k.to_string()),
        }
    }
    let count = st
        .count
        .checked_sub(minus)
        .ok_or_else(|| corrupt(name, "its count is lower than its references"))?;
    Ok((gone, masked, count))
}

/// Removes references: a normal removal drops the key, a mask removal turns the key into
/// a mask (adding it when missing). When no counted reference would remain,
/// `before_last` runs first (it must be idempotent: a lost race runs it again) and then
/// the tracker is removed, so a crash in between leaves the tracker for a retry.
pub(crate) fn remove(
    io: &IoCtx,
    name: &str,
    refs: &[(&str, RefType)],
    mut before_last: impl FnMut() -> Result<()>,
) -> Result<Removed> {
    let keys: Vec<&str> = refs.iter().map(|(k, _)| *k).collect();
    for _ in 0..ATTEMPTS {
        let Some(st) = read(io, name, &keys)? else {
            return Ok(Removed::Absent);
        };
        let (gone, masked, count) = plan(name, &st, refs)?;
        if gone.is_empty() && masked.is_empty() {
            return Ok(Removed::Unchanged);
        }
        let result = if count == 0 {
            before_last()?;
            crash_point("cephfs.reftracker.before-remove");
            io.object_write(
                name,
                &[ObjectOp::AssertVersion(st.version), ObjectOp::Remove],
            )
        } else {
            let c = count.to_be_bytes();
            let rm: Vec<&str> = gone.iter().map(String::as_str).collect();
            let set: Vec<(&str, &[u8])> =
                masked.iter().map(|k| (k.as_str(), &[MASK][..])).collect();
            io.object_write(
                name,
                &[
                    ObjectOp::AssertVersion(st.version),
                    ObjectOp::WriteFull(&c),
                    ObjectOp::OmapRmKeys(&rm),
                    ObjectOp::OmapSet(&set),
                ],
            )
        };
        match result {
            Ok(()) if count == 0 => return Ok(Removed::LastGone),
            Ok(()) => return Ok(Removed::Kept(count)),
            Err(e) if is_out_of_date(&e) || e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::ceph("update the reference tracker", e)),
        }
    }
    Err(raced(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(count: u32, refs: &[(&str, RefType)]) -> State {
        State {
            version: 7,
            count,
            refs: refs.iter().map(|(k, t)| (k.to_string(), *t)).collect(),
        }
    }

    #[test]
    fn removal_follows_the_typed_reference_rules() {
        use RefType::*;
        let s = st(2, &[("snap", Normal), ("vol", Normal)]);
        // masking a normal reference uncounts it but keeps the key
        assert_eq!(
            plan("rt", &s, &[("snap", Mask)]).unwrap(),
            (vec![], vec!["snap".to_string()], 1)
        );
        // a normal removal of a masked key drops it without touching the count
        let s = st(1, &[("snap", Mask), ("vol", Normal)]);
        assert_eq!(
            plan("rt", &s, &[("snap", Normal)]).unwrap(),
            (vec!["snap".to_string()], vec![], 1)
        );
        // the last counted reference
        assert_eq!(
            plan("rt", &s, &[("vol", Normal)]).unwrap(),
            (vec!["vol".to_string()], vec![], 0)
        );
        // unknown keys: nothing for a normal removal, a new mask for a mask removal
        assert_eq!(
            plan("rt", &s, &[("x", Normal)]).unwrap(),
            (vec![], vec![], 1)
        );
        assert_eq!(
            plan("rt", &s, &[("x", Mask)]).unwrap(),
            (vec![], vec!["x".to_string()], 1)
        );
        // a count lower than the references is reported, not wrapped
        let bad = st(0, &[("vol", Normal)]);
        assert!(plan("rt", &bad, &[("vol", Normal)]).is_err());
    }
}
