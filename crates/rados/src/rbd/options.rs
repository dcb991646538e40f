//! Create and clone options, validated and turned into an `rbd_image_options_t`.

use super::features::FEATURE_LAYERING;
use crate::error::{Error, Result};
use crate::ioctx::IoCtx;
use crate::sys;

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

    pub(super) fn validate(&self, name: &str) -> Result<()> {
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

pub(super) fn check_order(order: u8) -> Result<()> {
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

pub(super) fn check_striping(
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
pub(super) struct OptSpec<'a> {
    pub(super) format: Option<u64>,
    pub(super) features: Option<u64>,
    pub(super) order: Option<u8>,
    pub(super) stripe: Option<(u64, u64)>,
    pub(super) data_pool: Option<&'a str>,
    pub(super) clone_format: Option<u8>,
}

pub(super) fn build_opts(name: &str, io: &IoCtx, spec: &OptSpec<'_>) -> Result<sys::ImageOpts> {
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

pub(super) fn stripe_pair(unit: Option<u64>, count: Option<u64>) -> Option<(u64, u64)> {
    unit.zip(count)
}

#[cfg(test)]
mod tests {
    use super::*;

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
