//! The CephFS driver (`--type=cephfs`): controller (subvolumes, snapshots and clones
//! through the mgr `volumes` module) and node (ceph-fuse or kernel mounts).

pub mod controller;
pub mod mounter;
pub mod node;
pub mod params;
pub mod subvolume;
