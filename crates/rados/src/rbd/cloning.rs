//! Clones: creating one from a snapshot, its parent, flattening it.

use super::features::check_features;
use super::image::Image;
use super::options::{build_opts, check_order, check_striping, stripe_pair, CloneOptions, OptSpec};
use crate::error::{Error, Result};
use crate::ioctx::IoCtx;
use crate::sys;

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

impl Image {
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
}
