//! RBD images: creation, cloning, snapshots, trash, metadata and block I/O.

mod cloning;
mod create;
mod features;
mod image;
mod io;
mod listing;
mod options;
mod snapshots;
mod trash;
mod watchers;

pub use cloning::{clone, ParentInfo};
pub use create::{create, remove};
pub use features::*;
pub use image::{Image, ImageInfo};
pub use listing::{list_image_specs, list_images, ImageSpec};
pub use options::{order_from_object_size, CloneOptions, ImageOptions, MAX_ORDER, MIN_ORDER};
pub use snapshots::SnapInfo;
pub use trash::{trash_finish_move, trash_list, trash_move, trash_remove, TrashEntry};
pub use watchers::{LockMode, LockOwners, Watcher};
