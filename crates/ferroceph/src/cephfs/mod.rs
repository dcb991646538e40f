//! The CephFS driver (`--type=cephfs`): controller (subvolumes, snapshots and clones
//! through the mgr `volumes` module) and node (ceph-fuse or kernel mounts).

pub(crate) mod backing;
pub mod controller;
pub mod mounter;
pub mod node;
pub mod params;
pub(crate) mod reftracker;
pub mod subvolume;
