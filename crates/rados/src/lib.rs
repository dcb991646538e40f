//! ferroceph's one Ceph access layer: safe, blocking wrappers over librados
//! and librbd. The hand-written FFI lives in the private `sys` module, the
//! only module allowed to use `unsafe`.
//!
//! * [`Cluster`] — connect with explicit monitors/user/key (never a
//!   `ceph.conf` or keyring file), pool lookups, io contexts, mon/mgr
//!   commands.
//! * [`IoCtx`] — objects and omap in one pool + RADOS namespace.
//! * [`rbd`] — images, snapshots, clones, trash, metadata and block I/O.
//! * [`ClusterPool`] — shared, idle-expiring connections.
//! * [`Error`] — errno + operation + context, with [`ErrorKind`].
//!
//! All calls block; async callers should use `spawn_blocking`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cluster;
pub mod command;
pub mod error;
pub mod ioctx;
pub mod objops;
pub mod omap;
pub mod pool;
pub mod rbd;
mod sys;

pub use cluster::{Cluster, ConnectConfig, DEFAULT_TIMEOUT};
pub use command::CommandOutput;
pub use error::{Error, ErrorKind, Result, Service};
pub use ioctx::{IoCtx, ObjectStat};
pub use objops::ObjectOp;
pub use omap::{OmapPage, PendingWrite};
pub use pool::{ClusterPool, DEFAULT_IDLE_TTL};
pub use rbd::{Image, ImageInfo, ImageOptions};

#[cfg(test)]
mod thread_safety {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}

    #[test]
    fn handles_are_send_or_sync_as_documented() {
        send_sync::<crate::Cluster>();
        send_sync::<crate::ClusterPool>();
        send_sync::<crate::Image>();
        send::<crate::IoCtx>();
        send_sync::<crate::Error>();
    }
}
