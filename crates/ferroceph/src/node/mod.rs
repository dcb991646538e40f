//! Node-side building blocks shared by the RBD and CephFS node services: child processes
//! with deadlines, mounts, and path checks.

pub(crate) mod exec;
pub(crate) mod format;
pub(crate) mod inuse;
pub(crate) mod keyfile;
pub mod mount;
pub mod outlive;
pub mod record;
pub mod stats;
