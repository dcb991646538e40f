//! ferroceph: a Kubernetes CSI driver for Ceph RBD and CephFS.
#![deny(unsafe_code)]

pub mod bench;
pub mod ceph;
pub mod cephfs;
pub mod cli;
pub mod client;
pub mod config;
pub(crate) mod controller;
pub mod credentials;
pub mod doctor;
pub mod driver;
pub(crate) mod duration;
pub mod error;
pub mod fuse_export;
pub(crate) mod identity;
pub mod journal;
pub(crate) mod liveness;
pub mod locks;
pub(crate) mod metrics;
pub mod node;
pub mod options;
pub mod rbd;
pub(crate) mod server;
pub mod sys;
pub(crate) mod validate;
pub mod volid;
