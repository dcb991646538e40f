//! Shared helpers of the rbd_controller_*.rs tests: an admin connection to the dev
//! cluster, direct image I/O, and journal look-ups.

use super::{cluster, omap_keys};
use csi::v1 as pb;
use rados::rbd::Image;

pub fn admin() -> rados::Cluster {
    let c = cluster();
    rados::Cluster::connect(&rados::ConnectConfig::new(
        [c.monitors()],
        "admin",
        c.get("FERRO_ADMIN_KEY"),
    ))
    .expect("admin connection")
}

pub fn image_name(v: &pb::Volume) -> String {
    v.volume_context["imageName"].clone()
}

pub fn write_image(name: &str, data: &[u8]) {
    let c = admin();
    let io = c.ioctx("rbd", "").unwrap();
    let img = Image::open(&io, name).unwrap();
    img.write(0, data).unwrap();
    img.flush().unwrap();
}

pub fn read_image(name: &str, len: usize) -> Vec<u8> {
    let c = admin();
    let io = c.ioctx("rbd", "").unwrap();
    let img = Image::open_read_only(&io, name).unwrap();
    let mut buf = vec![0u8; len];
    img.read(0, &mut buf).unwrap();
    buf
}

pub fn journal_has(name: &str) -> bool {
    omap_keys("csi.volumes.default")
        .iter()
        .any(|k| k == &format!("csi.volume.{name}"))
}

pub fn snap_journal_has(name: &str) -> bool {
    omap_keys("csi.snaps.default")
        .iter()
        .any(|k| k == &format!("csi.snap.{name}"))
}
