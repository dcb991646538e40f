//! Creating and removing images.

use super::features::check_features;
use super::options::{build_opts, stripe_pair, ImageOptions, OptSpec};
use crate::error::{Error, Result};
use crate::ioctx::IoCtx;
use crate::sys;

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

/// Removes image `name` (`Busy` while it has snapshots or watchers).
pub fn remove(io: &IoCtx, name: &str) -> Result<()> {
    sys::rbd_remove_image(io.raw(), name).map_err(|e| Error::new("rbd remove", e, io.ctx(name)))
}
