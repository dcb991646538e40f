//! Node-side building blocks shared by the RBD and CephFS node services: child processes
//! with deadlines, mounts, and path checks.

pub mod exec;
pub mod format;
pub mod inuse;
pub mod keyfile;
pub mod mount;
pub mod outlive;
pub mod record;
pub mod stats;
