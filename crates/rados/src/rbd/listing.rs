//! Listing the images of a pool/namespace.

use crate::error::{Error, Result};
use crate::ioctx::IoCtx;
use crate::sys;

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
