//! Object map (omap) key/value operations, used for the CSI journal.
//!
//! All updates go through RADOS compound write operations, so that e.g.
//! [`IoCtx::create_with_omap`] is a single atomic round trip.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::ioctx::IoCtx;
use crate::sys::{self, WriteAction};

/// One page of [`IoCtx::omap_list_page`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OmapPage {
    /// Entries in key order.
    pub entries: Vec<(String, Vec<u8>)>,
    /// Whether more entries follow the last one returned.
    pub more: bool,
}

fn utf8_key(op: &'static str, ctx: &dyn Fn() -> String, k: Vec<u8>) -> Result<String> {
    String::from_utf8(k)
        .map_err(|_| Error::new(op, libc::EILSEQ, ctx()).with_detail("omap key is not valid UTF-8"))
}

impl IoCtx {
    /// Sets omap keys on `obj` (creating the object if needed).
    pub fn omap_set(&self, obj: &str, pairs: &[(&str, &[u8])]) -> Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        let raw: Vec<(&[u8], &[u8])> = pairs.iter().map(|(k, v)| (k.as_bytes(), *v)).collect();
        self.raw()
            .write_op(obj, &[WriteAction::OmapSet(&raw)])
            .map_err(|e| Error::new("omap set", e, self.ctx(obj)))
    }

    /// Sets omap key `key` of the existing object `obj` to `value` unless the key already
    /// holds a non-empty value, atomically and in one round trip. `Ok(false)`: the key was
    /// taken, nothing changed. `NotFound` if the object does not exist.
    pub fn omap_set_if_absent(&self, obj: &str, key: &str, value: &[u8]) -> Result<bool> {
        let pair = [(key.as_bytes(), value)];
        match self.raw().write_op(
            obj,
            &[
                WriteAction::OmapCmpEq(key, b""),
                WriteAction::OmapSet(&pair),
            ],
        ) {
            Ok(()) => Ok(true),
            Err(e) if e == libc::ECANCELED => Ok(false),
            Err(e) => Err(Error::new("omap set if absent", e, self.ctx(obj))),
        }
    }

    /// Creates `obj` exclusively and sets omap keys on it, atomically and in
    /// one round trip. If the object already exists this fails with
    /// [`crate::ErrorKind::AlreadyExists`] and changes nothing.
    pub fn create_with_omap(&self, obj: &str, pairs: &[(&str, &[u8])]) -> Result<()> {
        let raw: Vec<(&[u8], &[u8])> = pairs.iter().map(|(k, v)| (k.as_bytes(), *v)).collect();
        self.raw()
            .write_op(
                obj,
                &[
                    WriteAction::Create { exclusive: true },
                    WriteAction::OmapSet(&raw),
                ],
            )
            .map_err(|e| Error::new("create object with omap", e, self.ctx(obj)))
    }

    /// [`IoCtx::create_with_omap`] without waiting: the operation is sent at once and its
    /// result comes from [`PendingWrite::wait`], so other calls (on this io context too)
    /// can run meanwhile. Dropping the handle waits as well.
    pub fn start_create_with_omap(
        &self,
        obj: &str,
        pairs: &[(&str, &[u8])],
    ) -> Result<PendingWrite<'_>> {
        let raw: Vec<(&[u8], &[u8])> = pairs.iter().map(|(k, v)| (k.as_bytes(), *v)).collect();
        let inner = self
            .raw()
            .aio_write_op(
                obj,
                &[
                    WriteAction::Create { exclusive: true },
                    WriteAction::OmapSet(&raw),
                ],
            )
            .map_err(|e| Error::new("create object with omap", e, self.ctx(obj)))?;
        Ok(PendingWrite {
            inner,
            context: self.ctx(obj),
        })
    }

    /// The values of those `keys` that exist (missing keys are absent from
    /// the map). `NotFound` if the object does not exist.
    pub fn omap_get(&self, obj: &str, keys: &[&str]) -> Result<BTreeMap<String, Vec<u8>>> {
        if keys.is_empty() {
            return Ok(BTreeMap::new());
        }
        let raw: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        let ctx = || self.ctx(obj);
        let entries = self
            .raw()
            .omap_get_vals_by_keys(obj, &raw)
            .map_err(|e| Error::new("omap get", e, ctx()))?;
        entries
            .into_iter()
            .map(|(k, v)| Ok((utf8_key("omap get", &ctx, k)?, v)))
            .collect()
    }

    /// One page of at most `max` entries whose key starts with
    /// `filter_prefix` and sorts after `start_after` (`""` = from the start).
    /// The OSD may return fewer than `max` entries with `more` set.
    pub fn omap_list_page(
        &self,
        obj: &str,
        start_after: &str,
        filter_prefix: &str,
        max: usize,
    ) -> Result<OmapPage> {
        let ctx = || self.ctx(obj);
        if max == 0 {
            return Ok(OmapPage::default());
        }
        let (raw, more) = self
            .raw()
            .omap_get_vals(
                obj,
                start_after,
                filter_prefix,
                u64::try_from(max).unwrap_or(u64::MAX),
            )
            .map_err(|e| Error::new("omap list", e, ctx()))?;
        let entries = raw
            .into_iter()
            .map(|(k, v)| Ok((utf8_key("omap list", &ctx, k)?, v)))
            .collect::<Result<Vec<_>>>()?;
        Ok(OmapPage { entries, more })
    }

    /// Up to `max` entries whose key starts with `filter_prefix` and sorts
    /// after `start_after`, in key order (fetching several pages if the OSD
    /// caps a reply). To paginate, pass the last key returned as the next
    /// `start_after`.
    pub fn omap_list(
        &self,
        obj: &str,
        start_after: &str,
        filter_prefix: &str,
        max: usize,
    ) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out: Vec<(String, Vec<u8>)> = Vec::new();
        let mut after = start_after.to_string();
        while out.len() < max {
            let page = self.omap_list_page(obj, &after, filter_prefix, max - out.len())?;
            let Some((last, _)) = page.entries.last() else {
                break;
            };
            // A page must move forward; otherwise stop rather than loop.
            if last.as_str() <= after.as_str() && !after.is_empty() {
                break;
            }
            after = last.clone();
            out.extend(page.entries);
            if !page.more {
                break;
            }
        }
        out.truncate(max);
        Ok(out)
    }

    /// Removes omap keys (absent keys are ignored). `NotFound` if the object
    /// does not exist.
    pub fn omap_remove(&self, obj: &str, keys: &[&str]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let raw: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        self.raw()
            .write_op(obj, &[WriteAction::OmapRmKeys(&raw)])
            .map_err(|e| Error::new("omap remove", e, self.ctx(obj)))
    }

    /// Removes `remove` and sets `set` in one atomic write operation.
    pub fn omap_update(&self, obj: &str, set: &[(&str, &[u8])], remove: &[&str]) -> Result<()> {
        if set.is_empty() && remove.is_empty() {
            return Ok(());
        }
        let s: Vec<(&[u8], &[u8])> = set.iter().map(|(k, v)| (k.as_bytes(), *v)).collect();
        let r: Vec<&[u8]> = remove.iter().map(|k| k.as_bytes()).collect();
        self.raw()
            .write_op(
                obj,
                &[
                    sys::WriteAction::OmapRmKeys(&r),
                    sys::WriteAction::OmapSet(&s),
                ],
            )
            .map_err(|e| Error::new("omap update", e, self.ctx(obj)))
    }
}

/// A write started by [`IoCtx::start_create_with_omap`].
pub struct PendingWrite<'a> {
    inner: sys::AioWrite<'a>,
    context: String,
}

impl PendingWrite<'_> {
    /// Waits for the write (bounded by the connection's OSD timeout) and returns its result.
    pub fn wait(self) -> Result<()> {
        let context = self.context;
        self.inner
            .wait()
            .map_err(|e| Error::new("create object with omap", e, context))
    }
}
