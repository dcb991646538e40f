//! The image handle: opening, size and info, resize, metadata.

use std::fmt;

use crate::error::{Error, Result};
use crate::ioctx::IoCtx;
use crate::sys;

/// What `rbd_stat` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Size in bytes.
    pub size: u64,
    /// Object size in bytes.
    pub obj_size: u64,
    /// Number of objects the image spans.
    pub num_objs: u64,
    /// log2 of `obj_size`.
    pub order: u32,
    /// Prefix of the image's data objects (`rbd_data.<id>`).
    pub block_name_prefix: String,
}

/// An open image. Closed on drop.
///
/// `Send + Sync`: librbd image handles are internally synchronised, so I/O
/// may be issued concurrently from several threads (see `sys.rs`).
pub struct Image {
    pub(super) raw: sys::Image,
    pub(super) name: String,
    pub(super) location: String,
    pub(super) read_only: bool,
}

impl fmt::Debug for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Image")
            .field("name", &self.name)
            .field("location", &self.location)
            .field("read_only", &self.read_only)
            .finish_non_exhaustive()
    }
}

impl Image {
    fn open_with(io: &IoCtx, name: &str, snap: Option<&str>, read_only: bool) -> Result<Image> {
        let raw = sys::Image::open(io.raw(), name, snap, read_only).map_err(|e| {
            let what = match snap {
                Some(s) => format!("{name}@{s}"),
                None => name.to_string(),
            };
            Error::new(
                if read_only {
                    "rbd open read-only"
                } else {
                    "rbd open"
                },
                e,
                io.ctx(&what),
            )
        })?;
        Ok(Image {
            raw,
            name: name.to_string(),
            location: io.location(),
            read_only,
        })
    }

    /// Opens image `name` read-write (this registers a watch on its header).
    pub fn open(io: &IoCtx, name: &str) -> Result<Image> {
        Image::open_with(io, name, None, false)
    }

    /// Opens the image with id `id` read-only; also finds images in the trash.
    pub fn open_by_id_read_only(io: &IoCtx, id: &str) -> Result<Image> {
        let raw = sys::Image::open_by_id_read_only(io.raw(), id)
            .map_err(|e| Error::new("rbd open by id", e, io.ctx(&format!("image id {id}"))))?;
        Ok(Image {
            raw,
            name: String::new(),
            location: io.location(),
            read_only: true,
        })
    }

    /// Opens image `name` read-only (no watch; metadata may become stale).
    pub fn open_read_only(io: &IoCtx, name: &str) -> Result<Image> {
        Image::open_with(io, name, None, true)
    }

    /// Opens snapshot `snap` of image `name` (always read-only).
    pub fn open_snapshot(io: &IoCtx, name: &str, snap: &str) -> Result<Image> {
        Image::open_with(io, name, Some(snap), true)
    }

    /// The image name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the handle is read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub(super) fn ctx(&self) -> String {
        format!("{} {}", self.name, self.location)
    }

    pub(super) fn snap_ctx(&self, snap: &str) -> String {
        format!("{}@{} {}", self.name, snap, self.location)
    }

    /// Size, object size, object count, order and block name prefix.
    pub fn stat(&self) -> Result<ImageInfo> {
        let i = self
            .raw
            .stat()
            .map_err(|e| Error::new("rbd stat", e, self.ctx()))?;
        Ok(ImageInfo {
            size: i.size,
            obj_size: i.obj_size,
            num_objs: i.num_objs,
            order: u32::try_from(i.order).unwrap_or(0),
            block_name_prefix: i.block_name_prefix,
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> Result<u64> {
        self.raw
            .size()
            .map_err(|e| Error::new("rbd get size", e, self.ctx()))
    }

    /// Feature bits (see [`feature_names`]).
    pub fn features(&self) -> Result<u64> {
        self.raw
            .features()
            .map_err(|e| Error::new("rbd get features", e, self.ctx()))
    }

    /// The image id (`rbd_get_id`).
    pub fn id(&self) -> Result<String> {
        self.raw
            .id()
            .map_err(|e| Error::new("rbd get id", e, self.ctx()))
    }

    /// Grows or shrinks the image.
    pub fn resize(&self, new_size: u64) -> Result<()> {
        self.raw.resize(new_size).map_err(|e| {
            Error::new(
                "rbd resize",
                e,
                format!("{} to {new_size} bytes", self.ctx()),
            )
        })
    }

    /// Image metadata value of `key`, `None` if unset.
    pub fn metadata_get(&self, key: &str) -> Result<Option<String>> {
        match self.raw.metadata_get(key) {
            Ok(v) => Ok(Some(v)),
            Err(libc::ENOENT) => Ok(None),
            Err(e) => Err(Error::new(
                "rbd metadata get",
                e,
                format!("{key:?} of {}", self.ctx()),
            )),
        }
    }

    /// Sets image metadata `key` to `value`.
    pub fn metadata_set(&self, key: &str, value: &str) -> Result<()> {
        self.raw
            .metadata_set(key, value)
            .map_err(|e| Error::new("rbd metadata set", e, format!("{key:?} of {}", self.ctx())))
    }

    /// Removes image metadata `key` (`NotFound` if unset).
    pub fn metadata_remove(&self, key: &str) -> Result<()> {
        self.raw.metadata_remove(key).map_err(|e| {
            Error::new(
                "rbd metadata remove",
                e,
                format!("{key:?} of {}", self.ctx()),
            )
        })
    }
}
