//! Node-plugin test helpers shared by the node test binaries (kernel scenarios, node
//! safety, restarts): two node plugins, volumes, stage/publish calls that panic with the
//! request on failure, data patterns written and read back durably, and the check that
//! nothing of a volume is left on the node.
#![allow(dead_code)]

use super::*;
use csi::v1 as pb;
use pb::volume_capability::access_mode::Mode;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use tonic::transport::Channel;

pub type NodeClient = pb::node_client::NodeClient<Channel>;
pub type CtlClient = pb::controller_client::ControllerClient<Channel>;

/// A node plugin ("node-a", with the controller) and a second node plugin ("node-b").
pub struct Nodes {
    pub a: Driver,
    pub b: Driver,
}

pub fn rbd_nodes() -> Nodes {
    Nodes {
        a: Driver::start(
            &[
                "--type=rbd",
                "--controllerserver=true",
                "--nodeserver=true",
                "--nodeid=vm-node-a",
            ],
            &[],
        ),
        b: Driver::start(
            &["--type=rbd", "--nodeserver=true", "--nodeid=vm-node-b"],
            &[],
        ),
    }
}

#[derive(Clone)]
pub struct Vol {
    pub id: String,
    pub ctx: HashMap<String, String>,
    pub image: String,
}

pub fn fs_cap(fs: &str, mode: Mode) -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(pb::volume_capability::AccessType::Mount(
            pb::volume_capability::MountVolume {
                fs_type: fs.to_string(),
                ..Default::default()
            },
        )),
        access_mode: Some(pb::volume_capability::AccessMode { mode: mode as i32 }),
    }
}

pub async fn create_rbd(
    ctl: &mut CtlClient,
    scratch: &mut Scratch,
    size: i64,
    params: &[(&str, &str)],
) -> Vol {
    let mut req = create_req(&unique("pvc-vm"), size);
    for (k, v) in params {
        req.parameters.insert(k.to_string(), v.to_string());
    }
    let v = ctl
        .create_volume(req)
        .await
        .expect("CreateVolume")
        .into_inner()
        .volume
        .expect("volume");
    let image = v.volume_context["imageName"].clone();
    scratch.images.push(image.clone());
    Vol {
        image,
        id: v.volume_id,
        ctx: v.volume_context,
    }
}

pub async fn stage(node: &mut NodeClient, v: &Vol, staging: &Path, cap: &pb::VolumeCapability) {
    node.node_stage_volume(stage_req(
        &v.id,
        &v.ctx,
        staging,
        cap.clone(),
        cluster().rbd_secrets(),
    ))
    .await
    .unwrap_or_else(|e| panic!("NodeStageVolume {}: {e:?}", staging.display()));
}

pub async fn publish(
    node: &mut NodeClient,
    v: &Vol,
    staging: &Path,
    target: &Path,
    cap: &pb::VolumeCapability,
    ro: bool,
) {
    node.node_publish_volume(publish_req(&v.id, &v.ctx, staging, target, cap.clone(), ro))
        .await
        .unwrap_or_else(|e| panic!("NodePublishVolume {}: {e:?}", target.display()));
}

pub async fn unpublish(node: &mut NodeClient, v: &Vol, target: &Path) {
    node.node_unpublish_volume(unpublish_req(&v.id, target))
        .await
        .expect("NodeUnpublishVolume");
}

pub async fn unstage(node: &mut NodeClient, v: &Vol, staging: &Path) {
    node.node_unstage_volume(unstage_req(&v.id, staging))
        .await
        .expect("NodeUnstageVolume");
}

/// Pseudo-random bytes (xorshift), reproducible from `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The device (or, for a block volume, the device node) mounted at `path`.
pub fn mount_source(path: &Path) -> Option<String> {
    ferroceph::node::mount::mount_at(path)
        .ok()
        .flatten()
        .map(|m| m.source)
}

pub fn is_mounted(path: &Path) -> bool {
    ferroceph::node::mount::is_mount_point(path).unwrap_or(false)
}

/// Size in bytes of the block device or filesystem at `path`.
pub fn size_of(path: &Path, block: bool) -> u64 {
    if block {
        let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        f.seek(SeekFrom::End(0)).expect("seek to the end")
    } else {
        let st = nix::sys::statvfs::statvfs(path).expect("statvfs");
        st.blocks() * st.fragment_size()
    }
}

/// Writes `data` at the start of the device, or into `file` on the filesystem, durably.
pub fn write_data(path: &Path, block: bool, data: &[u8]) {
    if block {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("open {} for writing: {e}", path.display()));
        f.write_all(data).expect("write the device");
        f.sync_all().expect("fsync the device");
    } else {
        let p = path.join("data.bin");
        let mut f = std::fs::File::create(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        f.write_all(data).expect("write");
        f.sync_all().expect("fsync");
    }
}

/// Reads `len` bytes back (bypassing the page cache for a device).
pub fn read_data(path: &Path, block: bool, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    if block {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .or_else(|_| std::fs::File::open(path))
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        // O_DIRECT wants an aligned buffer: read through an aligned copy.
        let mut aligned = AlignedBuf::new(len);
        f.read_exact(aligned.as_mut()).expect("read the device");
        buf.copy_from_slice(aligned.as_mut());
    } else {
        std::fs::File::open(path.join("data.bin"))
            .and_then(|mut f| f.read_exact(&mut buf))
            .expect("read data.bin");
    }
    buf
}

/// A 4 KiB-aligned buffer for O_DIRECT reads.
pub struct AlignedBuf {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + 4096];
        let off = (4096 - (raw.as_ptr() as usize % 4096)) % 4096;
        AlignedBuf { raw, off, len }
    }
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.off..self.off + self.len]
    }
}

/// Writes through a read-only publish must fail.
pub fn assert_writes_refused(target: &Path, block: bool) {
    if block {
        let r = std::fs::OpenOptions::new()
            .write(true)
            .open(target)
            .and_then(|mut f| {
                f.write_all(&[0xAB; 4096])?;
                f.sync_all()
            });
        assert!(
            r.is_err(),
            "a read-only published block device accepted a write at {}",
            target.display()
        );
    } else {
        let r = std::fs::write(target.join("should-fail"), b"x");
        assert!(
            r.is_err(),
            "a read-only publish accepted a file at {}",
            target.display()
        );
    }
}

/// krbd devices the kernel maps for `image`.
pub fn krbd_devices_of(image: &str) -> Vec<String> {
    kernel_devices_of(image)
        .into_iter()
        .filter(|d| d.starts_with("/dev/rbd"))
        .collect()
}

/// The pid of the rbd-nbd daemon serving `device`.
pub fn nbd_daemon(device: &str) -> Option<i32> {
    let name = device.strip_prefix("/dev/")?;
    std::fs::read_to_string(format!("/sys/block/{name}/pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Pids of processes whose command name is `comm`.
pub fn pids_named(comm: &str) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let c = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if c.trim() == comm && alive(pid) {
            v.push(pid);
        }
    }
    v
}

/// Files left in a driver's keys directory.
pub fn key_files(d: &Driver) -> Vec<PathBuf> {
    std::fs::read_dir(d.dir.path().join("keys"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}

/// Nothing of the volume is left on the node: no mapping, no nbd daemon, no mount under
/// `root`, no key file.
pub fn assert_node_clean(n: &Nodes, image: &str, root: &Path) {
    let devices = kernel_devices_of(image);
    assert!(devices.is_empty(), "devices left: {devices:?}");
    let mounts: Vec<_> = ferroceph::node::mount::mounts()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.mount_point.starts_with(root))
        .collect();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    for d in [&n.a, &n.b] {
        assert!(
            key_files(d).is_empty(),
            "key files left: {:?}",
            key_files(d)
        );
    }
}

pub async fn expand(
    ctl: &mut CtlClient,
    node: &mut NodeClient,
    v: &Vol,
    staging: &Path,
    target: &Path,
    cap: &pb::VolumeCapability,
    size: i64,
) -> i64 {
    let resp = ctl
        .controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: v.id.clone(),
            capacity_range: Some(pb::CapacityRange {
                required_bytes: size,
                limit_bytes: 0,
            }),
            secrets: cluster().rbd_secrets(),
            volume_capability: Some(cap.clone()),
        })
        .await
        .expect("ControllerExpandVolume")
        .into_inner();
    if !resp.node_expansion_required {
        // krbd and rbd-nbd devices follow the image size by themselves
        return 0;
    }
    node.node_expand_volume(pb::NodeExpandVolumeRequest {
        volume_id: v.id.clone(),
        volume_path: target.display().to_string(),
        capacity_range: Some(pb::CapacityRange {
            required_bytes: size,
            limit_bytes: 0,
        }),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(cap.clone()),
        secrets: HashMap::new(),
    })
    .await
    .expect("NodeExpandVolume")
    .into_inner()
    .capacity_bytes
}

pub fn blkid_type(device: &str) -> String {
    let out = Command::new("blkid")
        .args(["-p", "-s", "TYPE", "-o", "value", device])
        .output()
        .expect("blkid");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Writes `data` to a new file at `path` and fsyncs it.
pub fn write_synced(path: &Path, data: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(data).expect("write");
    f.sync_all().expect("fsync");
}

/// The filesystem UUID on `device` (empty when none).
pub fn fs_uuid(device: &str) -> String {
    let out = Command::new("blkid")
        .args(["-p", "-s", "UUID", "-o", "value", device])
        .output()
        .expect("blkid");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub async fn stats(
    node: &mut NodeClient,
    v: &Vol,
    path: &Path,
    staging: &Path,
) -> pb::NodeGetVolumeStatsResponse {
    node.node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
        volume_id: v.id.clone(),
        volume_path: path.display().to_string(),
        staging_target_path: staging.display().to_string(),
    })
    .await
    .expect("NodeGetVolumeStats")
    .into_inner()
}
