//! ferroceph: a Kubernetes CSI driver for Ceph RBD and CephFS.

pub mod bench;
pub mod ceph;
pub mod cephfs;
pub mod cli;
pub mod client;
pub mod config;
pub mod credentials;
pub mod doctor;
pub mod driver;
pub mod duration;
pub mod error;
pub mod fuse_export;
pub mod identity;
pub mod journal;
pub mod listing;
pub mod liveness;
pub mod locks;
pub mod metrics;
pub mod node;
pub mod options;
pub mod rbd;
pub mod server;
pub mod validate;
pub mod volid;
