//! Blocking RBD flows on the cluster: create (blank, from a snapshot, from a volume),
//! snapshot, expand, delete. Each flow is a sequence of idempotent steps recorded in the
//! journal first, so a retry after a crash at any point finishes the work (or undoes it)
//! and never leaves an image or omap key behind.

use crate::ceph::crash_point;
use crate::error::{Error, Result};
use crate::journal::{self, Attrs, Claim, Entry, Journal, JournalError, Kind, Lookup, TrashLog};
use crate::rbd::params::RbdParams;
use crate::validate;
use csi::v1 as pb;
use rados::rbd::{self, CloneOptions, Image, ImageOptions};
use rados::{Cluster, ErrorKind, IoCtx};

/// Journal key (ours, ignored by ceph-csi) holding the content source of a volume, so a
/// retried CreateVolume can tell a compatible request from a conflicting one.
pub const SOURCE_KEY: &str = "csi.ferroceph.source";
/// Journal key (ours) marking a volume entry this driver wrote. An entry that lacks it and
/// `csi.imageid` was written by ceph-csi (before v3.0 it never recorded the id): its image
/// may hold data and is adopted, never remade as an unfinished one of ours would be.
pub const DRIVER_KEY: &str = "csi.ferroceph.driver";
/// Journal keys of a snapshot: creation time (unix nanoseconds) and size in bytes. Every
/// snapshot entry this driver writes has the creation time; one without it is ceph-csi's.
pub const CREATED_KEY: &str = "csi.ferroceph.created";
pub const SIZE_KEY: &str = "csi.ferroceph.size";

/// Image metadata keys naming the claim, as ceph-csi's `--setmetadata` writes them.
const META_PVC_NAME: &str = "csi.storage.k8s.io/pvc/name";
const META_PVC_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";
const META_PV_NAME: &str = "csi.storage.k8s.io/pv/name";

/// Flatten a new clone (in the background, by the mgr) once its chain is this deep.
pub const SOFT_CLONE_DEPTH: usize = 4;
/// Refuse to add to a chain this deep until flattening has shortened it.
pub const HARD_CLONE_DEPTH: usize = 8;

mod clone;
mod create;
mod delete;
mod place;
mod snapshot;
mod trash;
pub(crate) use clone::refuse_encrypted;
use clone::*;
use create::*;
pub use create::{create_volume, CreateSpec, Created, Source};
pub use delete::{delete_snapshot, delete_volume};
pub use place::Place;
pub use snapshot::{create_snapshot, read_snapshot_info, snapshot_info, SnapshotInfo};
use trash::move_aside;
pub(crate) use trash::{next_removal_pass, pass_lock, remove_trashed_in, request_removal, Pass};

pub fn jerr(what: &str, e: JournalError) -> Error {
    match e {
        JournalError::Rados(e) => Error::ceph(what, e),
        other => Error::internal(format!("{what}: {other}")),
    }
}

fn image_options(params: &RbdParams, size: u64) -> Result<ImageOptions> {
    let features = rbd::parse_features(&params.features.join(","))
        .map_err(|e| Error::invalid(format!("imageFeatures: {e}")))?;
    let mut o = ImageOptions::new(size);
    o.features = features;
    o.stripe_unit = params.stripe_unit;
    o.stripe_count = params.stripe_count;
    o.data_pool = params.data_pool.clone();
    if let Some(os) = params.object_size {
        o.set_object_size(os)
            .map_err(|e| Error::invalid(format!("objectSize: {e}")))?;
    }
    Ok(o)
}

fn clone_options(params: &RbdParams) -> Result<CloneOptions> {
    let o = image_options(params, 0)?;
    Ok(CloneOptions {
        features: Some(o.features),
        order: o.order,
        stripe_unit: o.stripe_unit,
        stripe_count: o.stripe_count,
        data_pool: o.data_pool,
        clone_format: 2,
    })
}

fn ok_if_exists(r: rados::Result<()>, what: &str) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::ceph(what, e)),
    }
}

fn ok_if_missing(r: rados::Result<()>, what: &str) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::ceph(what, e)),
    }
}

fn entry_image(entry: &Entry, prefix: &str) -> String {
    entry
        .attr(journal::IMAGE_NAME)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{prefix}{}", entry.uuid))
}

/// The id of `image`, read from the pool's `rbd_directory` (`name_<image>` holds the id as
/// a length-prefixed string) in one round trip instead of opening the image.
fn image_id(io: &IoCtx, image: &str) -> Result<String> {
    let key = format!("name_{image}");
    let found = io
        .omap_get("rbd_directory", &[key.as_str()])
        .map_err(|e| Error::ceph("read the image directory", e))?;
    let raw = found.get(&key).ok_or_else(|| {
        Error::Aborted(format!("image {image} vanished while being created; retry"))
    })?;
    let len = raw
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .unwrap_or(usize::MAX);
    raw.get(4..4usize.saturating_add(len))
        .and_then(|b| std::str::from_utf8(b).ok())
        .map(str::to_string)
        .ok_or_else(|| Error::internal(format!("rbd_directory entry of {image} is malformed")))
}

fn image_spec(io: &IoCtx, image: &str) -> String {
    if io.namespace().is_empty() {
        format!("{}/{image}", io.pool_name())
    } else {
        format!("{}/{}/{image}", io.pool_name(), io.namespace())
    }
}

/// Grows the image to at least `size`; returns the size it has now.
pub fn expand(place: &Place<'_>, image: &str, size: u64) -> Result<u64> {
    let img = place
        .open(image)?
        .ok_or_else(|| Error::not_found(format!("volume image {image} does not exist")))?;
    let current = img.size().map_err(|e| Error::ceph("stat image", e))?;
    if size > current {
        img.resize(size)
            .map_err(|e| Error::ceph("resize image", e))?;
        return Ok(size);
    }
    Ok(current)
}
