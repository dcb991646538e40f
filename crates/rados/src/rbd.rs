//! RBD images: creation, cloning, snapshots, trash, metadata and block I/O.

use std::fmt;

use crate::error::{Error, Result};
use crate::ioctx::IoCtx;
use crate::sys;

// ---------------------------------------------------------------------------
// Features
// ---------------------------------------------------------------------------

/// `RBD_FEATURE_LAYERING`
pub const FEATURE_LAYERING: u64 = 1 << 0;
/// `RBD_FEATURE_STRIPINGV2` (set implicitly when striping is requested)
pub const FEATURE_STRIPINGV2: u64 = 1 << 1;
/// `RBD_FEATURE_EXCLUSIVE_LOCK`
pub const FEATURE_EXCLUSIVE_LOCK: u64 = 1 << 2;
/// `RBD_FEATURE_OBJECT_MAP`
pub const FEATURE_OBJECT_MAP: u64 = 1 << 3;
/// `RBD_FEATURE_FAST_DIFF`
pub const FEATURE_FAST_DIFF: u64 = 1 << 4;
/// `RBD_FEATURE_DEEP_FLATTEN`
pub const FEATURE_DEEP_FLATTEN: u64 = 1 << 5;
/// `RBD_FEATURE_JOURNALING`
pub const FEATURE_JOURNALING: u64 = 1 << 6;
/// `RBD_FEATURE_DATA_POOL` (set implicitly when a data pool is given)
pub const FEATURE_DATA_POOL: u64 = 1 << 7;
/// `RBD_FEATURE_OPERATIONS` (internal)
pub const FEATURE_OPERATIONS: u64 = 1 << 8;
/// `RBD_FEATURE_MIGRATING` (internal)
pub const FEATURE_MIGRATING: u64 = 1 << 9;
/// `RBD_FEATURE_NON_PRIMARY` (internal)
pub const FEATURE_NON_PRIMARY: u64 = 1 << 10;
/// `RBD_FEATURE_DIRTY_CACHE` (internal)
pub const FEATURE_DIRTY_CACHE: u64 = 1 << 11;

/// Bits and names, as in `rbd/features.h`.
pub const FEATURES: [(u64, &str); 12] = [
    (FEATURE_LAYERING, "layering"),
    (FEATURE_STRIPINGV2, "striping"),
    (FEATURE_EXCLUSIVE_LOCK, "exclusive-lock"),
    (FEATURE_OBJECT_MAP, "object-map"),
    (FEATURE_FAST_DIFF, "fast-diff"),
    (FEATURE_DEEP_FLATTEN, "deep-flatten"),
    (FEATURE_JOURNALING, "journaling"),
    (FEATURE_DATA_POOL, "data-pool"),
    (FEATURE_OPERATIONS, "operations"),
    (FEATURE_MIGRATING, "migrating"),
    (FEATURE_NON_PRIMARY, "non-primary"),
    (FEATURE_DIRTY_CACHE, "dirty-cache"),
];

/// Features a user may request when creating an image (what a StorageClass
/// `imageFeatures` parameter may list).
pub const USER_FEATURES: u64 = FEATURE_LAYERING
    | FEATURE_EXCLUSIVE_LOCK
    | FEATURE_OBJECT_MAP
    | FEATURE_FAST_DIFF
    | FEATURE_DEEP_FLATTEN
    | FEATURE_JOURNALING;

/// Parses a comma-separated feature list such as
/// `"layering,exclusive-lock,object-map,fast-diff,deep-flatten,journaling"`
/// into a bitmask. Blanks around names and empty items are ignored; an
/// unknown name is an `InvalidArgument` error naming it.
pub fn parse_features(list: &str) -> Result<u64> {
    let mut bits = 0;
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match FEATURES.iter().find(|(_, n)| *n == name) {
            Some((b, _)) => bits |= b,
            None => {
                let known: Vec<&str> = FEATURES.iter().map(|(_, n)| *n).collect();
                return Err(
                    Error::invalid("parse rbd features", format!("{list:?}")).with_detail(format!(
                        "unknown feature {name:?} (known: {})",
                        known.join(", ")
                    )),
                );
            }
        }
    }
    Ok(bits)
}

/// The names of the bits set in `bits`, in bit order; unknown bits are
/// rendered as `unknown(0x...)`.
pub fn feature_names(bits: u64) -> Vec<String> {
    let mut out: Vec<String> = FEATURES
        .iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| (*n).to_string())
        .collect();
    let known = FEATURES.iter().fold(0, |acc, (b, _)| acc | b);
    if bits & !known != 0 {
        out.push(format!("unknown({:#x})", bits & !known));
    }
    out
}

/// [`feature_names`] joined with commas (the inverse of [`parse_features`]
/// for known bits).
pub fn features_to_string(bits: u64) -> String {
    feature_names(bits).join(",")
}

/// Checks that requested features are user-settable and their dependencies
/// are met (object-map and journaling need exclusive-lock, fast-diff needs
/// object-map), with a message naming the problem.
pub fn check_features(bits: u64) -> Result<()> {
    let bad = |msg: String| {
        Err(Error::invalid("check rbd features", features_to_string(bits)).with_detail(msg))
    };
    let extra = bits & !USER_FEATURES;
    if extra != 0 {
        return bad(format!(
            "features {} cannot be requested",
            features_to_string(extra)
        ));
    }
    let deps = [
        (FEATURE_OBJECT_MAP, FEATURE_EXCLUSIVE_LOCK),
        (FEATURE_FAST_DIFF, FEATURE_OBJECT_MAP),
        (FEATURE_JOURNALING, FEATURE_EXCLUSIVE_LOCK),
    ];
    for (f, needs) in deps {
        if bits & f != 0 && bits & needs == 0 {
            return bad(format!(
                "feature {} requires {}",
                features_to_string(f),
                features_to_string(needs)
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Create / clone options
// ---------------------------------------------------------------------------

/// Smallest and largest object size order librbd accepts (4 KiB .. 32 MiB).
pub const MIN_ORDER: u8 = 12;
/// See [`MIN_ORDER`].
pub const MAX_ORDER: u8 = 25;

/// Parameters of a new image (always image format 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageOptions {
    /// Size in bytes.
    pub size: u64,
    /// Feature bits (see [`parse_features`]); always passed explicitly, so
    /// the cluster's `rbd_default_features` do not apply.
    pub features: u64,
    /// Object size as a power of two (`None`: cluster default, 22 = 4 MiB).
    pub order: Option<u8>,
    /// Stripe unit in bytes (must be given together with `stripe_count`).
    pub stripe_unit: Option<u64>,
    /// Stripe count (must be given together with `stripe_unit`).
    pub stripe_count: Option<u64>,
    /// Separate (e.g. erasure-coded) pool for the data objects.
    pub data_pool: Option<String>,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions::new(0)
    }
}

impl ImageOptions {
    /// `size` bytes, feature `layering`, cluster defaults otherwise.
    pub fn new(size: u64) -> ImageOptions {
        ImageOptions {
            size,
            features: FEATURE_LAYERING,
            order: None,
            stripe_unit: None,
            stripe_count: None,
            data_pool: None,
        }
    }

    /// Object size in bytes, if an order is set.
    pub fn object_size(&self) -> Option<u64> {
        self.order.map(|o| 1u64 << o)
    }

    /// Sets the order from an object size, which must be a power of two
    /// between 4 KiB and 32 MiB.
    pub fn set_object_size(&mut self, bytes: u64) -> Result<()> {
        self.order = Some(order_from_object_size(bytes)?);
        Ok(())
    }

    fn validate(&self, name: &str) -> Result<()> {
        if let Some(o) = self.order {
            check_order(o)?;
        }
        check_striping(name, self.stripe_unit, self.stripe_count, self.order)
    }
}

/// Parameters of a clone ([`clone`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneOptions {
    /// Feature bits of the clone (`None`: those of the parent).
    pub features: Option<u64>,
    /// Object size order (`None`: that of the parent).
    pub order: Option<u8>,
    /// Stripe unit in bytes.
    pub stripe_unit: Option<u64>,
    /// Stripe count.
    pub stripe_count: Option<u64>,
    /// Data pool of the clone.
    pub data_pool: Option<String>,
    /// Clone format: 2 (default) needs no snapshot protection; 1 requires
    /// the parent snapshot to be protected.
    pub clone_format: u8,
}

impl Default for CloneOptions {
    fn default() -> Self {
        CloneOptions {
            features: None,
            order: None,
            stripe_unit: None,
            stripe_count: None,
            data_pool: None,
            clone_format: 2,
        }
    }
}

/// The order (log2) of an object size.
pub fn order_from_object_size(bytes: u64) -> Result<u8> {
    if !bytes.is_power_of_two() {
        return Err(Error::invalid("set rbd object size", bytes.to_string())
            .with_detail("not a power of two"));
    }
    let order = u8::try_from(bytes.trailing_zeros()).unwrap_or(u8::MAX);
    check_order(order)?;
    Ok(order)
}

fn check_order(order: u8) -> Result<()> {
    if (MIN_ORDER..=MAX_ORDER).contains(&order) {
        Ok(())
    } else {
        Err(
            Error::invalid("set rbd object size", format!("order {order}")).with_detail(format!(
                "object size must be between 2^{MIN_ORDER} and 2^{MAX_ORDER} bytes"
            )),
        )
    }
}

fn check_striping(
    name: &str,
    unit: Option<u64>,
    count: Option<u64>,
    order: Option<u8>,
) -> Result<()> {
    match (unit, count) {
        (None, None) => Ok(()),
        (Some(u), Some(c)) => {
            if u == 0 || c == 0 {
                return Err(Error::invalid("rbd striping", name.to_string())
                    .with_detail("stripe unit and stripe count must be positive"));
            }
            if let Some(o) = order {
                let obj = 1u64 << o;
                if u > obj || obj % u != 0 {
                    return Err(
                        Error::invalid("rbd striping", name.to_string()).with_detail(format!(
                            "stripe unit {u} must divide the object size {obj}"
                        )),
                    );
                }
            }
            Ok(())
        }
        _ => Err(Error::invalid("rbd striping", name.to_string())
            .with_detail("stripe unit and stripe count must be given together")),
    }
}

fn opt_err(name: &str, io: &IoCtx, what: &str, e: i32) -> Error {
    Error::new("rbd set image option", e, io.ctx(name)).with_detail(what.to_string())
}

/// What to put into an `rbd_image_options_t`.
#[derive(Default, Clone, Copy)]
struct OptSpec<'a> {
    format: Option<u64>,
    features: Option<u64>,
    order: Option<u8>,
    stripe: Option<(u64, u64)>,
    data_pool: Option<&'a str>,
    clone_format: Option<u8>,
}

fn build_opts(name: &str, io: &IoCtx, spec: &OptSpec<'_>) -> Result<sys::ImageOpts> {
    let OptSpec {
        format,
        features,
        order,
        stripe,
        data_pool,
        clone_format,
    } = *spec;
    let mut o = sys::ImageOpts::new().map_err(|e| opt_err(name, io, "allocate", e))?;
    if let Some(f) = format {
        o.set_u64(sys::RBD_IMAGE_OPTION_FORMAT, f)
            .map_err(|e| opt_err(name, io, "format", e))?;
    }
    if let Some(f) = features {
        o.set_u64(sys::RBD_IMAGE_OPTION_FEATURES, f)
            .map_err(|e| opt_err(name, io, "features", e))?;
    }
    if let Some(ord) = order {
        o.set_u64(sys::RBD_IMAGE_OPTION_ORDER, u64::from(ord))
            .map_err(|e| opt_err(name, io, "order", e))?;
    }
    if let Some((unit, count)) = stripe {
        o.set_u64(sys::RBD_IMAGE_OPTION_STRIPE_UNIT, unit)
            .map_err(|e| opt_err(name, io, "stripe unit", e))?;
        o.set_u64(sys::RBD_IMAGE_OPTION_STRIPE_COUNT, count)
            .map_err(|e| opt_err(name, io, "stripe count", e))?;
    }
    if let Some(dp) = data_pool {
        o.set_str(sys::RBD_IMAGE_OPTION_DATA_POOL, dp)
            .map_err(|e| opt_err(name, io, "data pool", e))?;
    }
    if let Some(cf) = clone_format {
        o.set_u64(sys::RBD_IMAGE_OPTION_CLONE_FORMAT, u64::from(cf))
            .map_err(|e| opt_err(name, io, "clone format", e))?;
    }
    Ok(o)
}

fn stripe_pair(unit: Option<u64>, count: Option<u64>) -> Option<(u64, u64)> {
    unit.zip(count)
}

// ---------------------------------------------------------------------------
// Pool-level operations
// ---------------------------------------------------------------------------

/// Creates image `name` (format 2) with `opts` via `rbd_create4`.
pub fn create(io: &IoCtx, name: &str, opts: &ImageOptions) -> Result<()> {
    check_features(opts.features)?;
    opts.validate(name)?;
    let spec = OptSpec {
        format: Some(2),
        features: Some(opts.features),
        order: opts.order,
        stripe: stripe_pair(opts.stripe_unit, opts.stripe_count),
        data_pool: opts.data_pool.as_deref(),
        clone_format: None,
    };
    let mut o = build_opts(name, io, &spec)?;
    sys::rbd_create(io.raw(), name, opts.size, &mut o)
        .map_err(|e| Error::new("rbd create", e, io.ctx(name)))
}

/// Clones `parent@snap` (in `parent_io`) to `child` (in `child_io`) via
/// `rbd_clone3`. With the default clone format 2 the snapshot need not be
/// protected.
pub fn clone(
    parent_io: &IoCtx,
    parent: &str,
    snap: &str,
    child_io: &IoCtx,
    child: &str,
    opts: &CloneOptions,
) -> Result<()> {
    if let Some(f) = opts.features {
        check_features(f)?;
    }
    if let Some(o) = opts.order {
        check_order(o)?;
    }
    check_striping(child, opts.stripe_unit, opts.stripe_count, opts.order)?;
    if !matches!(opts.clone_format, 1 | 2) {
        return Err(
            Error::invalid("rbd clone", child_io.ctx(child)).with_detail(format!(
                "clone format must be 1 or 2, not {}",
                opts.clone_format
            )),
        );
    }
    let spec = OptSpec {
        features: opts.features,
        order: opts.order,
        stripe: stripe_pair(opts.stripe_unit, opts.stripe_count),
        data_pool: opts.data_pool.as_deref(),
        clone_format: Some(opts.clone_format),
        ..OptSpec::default()
    };
    let mut o = build_opts(child, child_io, &spec)?;
    sys::rbd_clone(parent_io.raw(), parent, snap, child_io.raw(), child, &mut o).map_err(|e| {
        Error::new(
            "rbd clone",
            e,
            format!(
                "{parent}@{snap} {} to {}",
                parent_io.location(),
                child_io.ctx(child)
            ),
        )
    })
}

/// An image's id and name, as listed by [`list_image_specs`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ImageSpec {
    /// Image id.
    pub id: String,
    /// Image name.
    pub name: String,
}

/// Names of all images in the pool/namespace, sorted.
pub fn list_images(io: &IoCtx) -> Result<Vec<String>> {
    let mut names: Vec<String> = list_image_specs(io)?.into_iter().map(|s| s.name).collect();
    names.sort();
    Ok(names)
}

/// Ids and names of all images in the pool/namespace (`rbd_list2`).
pub fn list_image_specs(io: &IoCtx) -> Result<Vec<ImageSpec>> {
    let v = sys::rbd_list_images(io.raw()).map_err(|e| Error::new("rbd list", e, io.location()))?;
    Ok(v.into_iter()
        .map(|(id, name)| ImageSpec { id, name })
        .collect())
}

/// Removes image `name` (`Busy` while it has snapshots or watchers).
pub fn remove(io: &IoCtx, name: &str) -> Result<()> {
    sys::rbd_remove_image(io.raw(), name).map_err(|e| Error::new("rbd remove", e, io.ctx(name)))
}

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

// ---------------------------------------------------------------------------
// Image handle
// ---------------------------------------------------------------------------

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

/// The parent of a clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentInfo {
    /// Parent pool id.
    pub pool_id: i64,
    /// Parent pool name.
    pub pool_name: String,
    /// Parent RADOS namespace.
    pub pool_namespace: String,
    /// Parent image id.
    pub image_id: String,
    /// Parent image name.
    pub image_name: String,
    /// Whether the parent image is in the trash.
    pub trash: bool,
    /// Parent snapshot id.
    pub snap_id: u64,
    /// Parent snapshot name.
    pub snap_name: String,
    /// Parent snapshot namespace type (0 user, 1 group, 2 trash, 3 mirror).
    pub snap_namespace_type: i32,
}

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

/// An open image. Closed on drop.
///
/// `Send + Sync`: librbd image handles are internally synchronised, so I/O
/// may be issued concurrently from several threads (see `sys.rs`).
pub struct Image {
    raw: sys::Image,
    name: String,
    location: String,
    read_only: bool,
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

    fn ctx(&self) -> String {
        format!("{} {}", self.name, self.location)
    }

    fn snap_ctx(&self, snap: &str) -> String {
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

    /// Copies all parent data into this clone and detaches it.
    pub fn flatten(&self) -> Result<()> {
        self.raw
            .flatten()
            .map_err(|e| Error::new("rbd flatten", e, self.ctx()))
    }

    /// The parent of a clone, `None` if the image has no parent.
    pub fn parent(&self) -> Result<Option<ParentInfo>> {
        match self.raw.parent() {
            Ok(p) => Ok(Some(ParentInfo {
                pool_id: p.pool_id,
                pool_name: p.pool_name,
                pool_namespace: p.pool_namespace,
                image_id: p.image_id,
                image_name: p.image_name,
                trash: p.trash,
                snap_id: p.snap_id,
                snap_name: p.snap_name,
                snap_namespace_type: p.snap_namespace_type,
            })),
            Err(libc::ENOENT) => Ok(None),
            Err(e) => Err(Error::new("rbd get parent", e, self.ctx())),
        }
    }

    /// Reads into `buf` from `offset`; returns the number of bytes read
    /// (short at the end of the image).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.raw.read(offset, buf).map_err(|e| {
            Error::new(
                "rbd read",
                e,
                format!("{} bytes at {offset} of {}", buf.len(), self.ctx()),
            )
        })
    }

    /// Writes `buf` at `offset`; returns the number of bytes written.
    pub fn write(&self, offset: u64, buf: &[u8]) -> Result<usize> {
        self.raw.write(offset, buf).map_err(|e| {
            Error::new(
                "rbd write",
                e,
                format!("{} bytes at {offset} of {}", buf.len(), self.ctx()),
            )
        })
    }

    /// Flushes cached writes.
    pub fn flush(&self) -> Result<()> {
        self.raw
            .flush()
            .map_err(|e| Error::new("rbd flush", e, self.ctx()))
    }

    /// Discards (deallocates) `len` bytes at `offset`; they read as zeros.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.raw.discard(offset, len).map_err(|e| {
            Error::new(
                "rbd discard",
                e,
                format!("{len} bytes at {offset} of {}", self.ctx()),
            )
        })
    }

    /// Makes `len` bytes at `offset` read as zeros: whole objects are discarded
    /// (deallocated), partial ones zeroed. Unlike [`Image::discard`], which may
    /// skip ranges smaller than `rbd_discard_granularity_bytes`, nothing is left
    /// behind, so this is what hole punching needs.
    pub fn write_zeroes(&self, offset: u64, len: usize) -> Result<usize> {
        self.raw.write_zeroes(offset, len).map_err(|e| {
            Error::new(
                "rbd write zeroes",
                e,
                format!("{len} bytes at {offset} of {}", self.ctx()),
            )
        })
    }

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn parse_and_render_features() {
        let all = "layering,exclusive-lock,object-map,fast-diff,deep-flatten,journaling";
        let bits = parse_features(all).map_err(|e| e.to_string());
        assert_eq!(bits, Ok(USER_FEATURES));
        assert_eq!(features_to_string(USER_FEATURES), all);
        assert_eq!(parse_features(" layering , ,exclusive-lock,").ok(), Some(5));
        assert_eq!(parse_features("").ok(), Some(0));
        assert_eq!(features_to_string(0), "");
        assert_eq!(
            feature_names(FEATURE_LAYERING | FEATURE_STRIPINGV2 | (1 << 40)),
            vec!["layering", "striping", "unknown(0x10000000000)"]
        );
        for (b, n) in FEATURES {
            assert_eq!(parse_features(n).ok(), Some(b));
        }
    }

    #[test]
    fn unknown_feature_is_named() {
        let e = parse_features("layering,teleport").err();
        let e = e.map(|e| (e.kind(), e.to_string()));
        assert!(
            matches!(&e, Some((ErrorKind::InvalidArgument, s)) if s.contains("\"teleport\"")),
            "{e:?}"
        );
    }

    #[test]
    fn feature_dependencies() {
        assert!(check_features(FEATURE_LAYERING).is_ok());
        assert!(check_features(USER_FEATURES).is_ok());
        let e = check_features(FEATURE_LAYERING | FEATURE_OBJECT_MAP)
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|s| s.contains("object-map requires exclusive-lock")),
            "{e:?}"
        );
        let e = check_features(FEATURE_EXCLUSIVE_LOCK | FEATURE_FAST_DIFF)
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|s| s.contains("fast-diff requires object-map")),
            "{e:?}"
        );
        let e = check_features(FEATURE_JOURNALING)
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|s| s.contains("journaling requires exclusive-lock")),
            "{e:?}"
        );
        assert!(check_features(FEATURE_OPERATIONS).is_err());
    }

    #[test]
    fn object_size_and_striping() {
        assert_eq!(order_from_object_size(4 << 20).ok(), Some(22));
        assert!(order_from_object_size(3 << 20).is_err());
        assert!(order_from_object_size(1024).is_err());
        assert!(order_from_object_size(64 << 20).is_err());
        let mut o = ImageOptions::new(1 << 30);
        assert!(o.set_object_size(1 << 22).is_ok());
        assert_eq!(o.object_size(), Some(4 << 20));
        assert!(o.validate("x").is_ok());
        o.stripe_unit = Some(1 << 20);
        assert!(o.validate("x").is_err(), "unit without count");
        o.stripe_count = Some(4);
        assert!(o.validate("x").is_ok());
        o.stripe_unit = Some(3 << 20);
        assert!(o.validate("x").is_err(), "unit must divide object size");
        assert_eq!(ImageOptions::default().features, FEATURE_LAYERING);
        assert_eq!(CloneOptions::default().clone_format, 2);
    }
}
