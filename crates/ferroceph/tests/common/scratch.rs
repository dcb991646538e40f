//! A scratch directory for node tests: staging and target paths under one temporary
//! directory, and everything the FUSE attachment made under it found and undone.

use super::{admin_cli, image_exists};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A scratch directory for staging and target paths; on drop (also after a failed
/// assertion) it unmounts, detaches and stops whatever is still attached under it, and
/// removes the images it was told about.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub images: Vec<String>,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().expect("tempdir"),
            images: Vec::new(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn mounts_under(&self) -> Vec<PathBuf> {
        let root = self.dir.path().to_path_buf();
        let mut v: Vec<PathBuf> = ferroceph::node::mount::mounts()
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(&root))
            .collect();
        v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        v
    }

    pub fn loops_under(&self) -> Vec<String> {
        let root = self.dir.path();
        let mut v = Vec::new();
        if let Ok(entries) = std::fs::read_dir("/sys/block") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let f = format!("/sys/block/{name}/loop/backing_file");
                if let Ok(b) = std::fs::read_to_string(f) {
                    if Path::new(b.trim_end()).starts_with(root) {
                        v.push(format!("/dev/{name}"));
                    }
                }
            }
        }
        v
    }

    pub fn exporters_under(&self) -> Vec<i32> {
        let want = self.dir.path().display().to_string();
        let mut v = Vec::new();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                    continue;
                };
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                if cmd.contains("fuse-export") && cmd.contains(&want) && alive(pid) {
                    v.push(pid);
                }
            }
        }
        v
    }
}

pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s[s.rfind(')')? + 1..].trim_start().to_string();
            rest.chars().next()
        })
        .is_some_and(|st| st != 'Z' && st != 'X')
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Loop devices first: once the FUSE export is detached their backing path no
        // longer names our directory.
        let loops = self.loops_under();
        for m in self.mounts_under() {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        for l in loops {
            let _ = Command::new("losetup").arg("-d").arg(&l).status();
        }
        let pids = self.exporters_under();
        for pid in &pids {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while pids.iter().any(|p| alive(*p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in pids.iter().filter(|p| alive(**p)) {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
        for m in self.mounts_under() {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        // krbd and rbd-nbd devices of our images (kernel scenarios), with the read-only
        // loop views on them.
        for img in &self.images {
            for dev in kernel_devices_of(img) {
                for l in loops_on(&dev) {
                    let _ = Command::new("losetup").arg("-d").arg(&l).status();
                }
                let kind = if dev.starts_with("/dev/nbd") {
                    "nbd"
                } else {
                    "krbd"
                };
                let _ = Command::new("rbd")
                    .args(["unmap", "--device-type", kind, "-o", "noudev,force", &dev])
                    .status();
            }
        }
        for img in self.images.iter().rev() {
            if image_exists(img) {
                let (ok, out) = admin_cli("rbd", &["rm", "--no-progress", &format!("rbd/{img}")]);
                if !ok {
                    eprintln!("cleanup: rbd rm {img}: {out}");
                }
            }
        }
    }
}

/// The krbd devices and rbd-nbd devices that serve `image`.
pub fn kernel_devices_of(image: &str) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/sys/bus/rbd/devices")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
        if name.trim() == image {
            v.push(format!("/dev/rbd{}", e.file_name().to_string_lossy()));
        }
    }
    for e in std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if !n.starts_with("nbd") {
            continue;
        }
        let Some(pid) = std::fs::read_to_string(e.path().join("pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd).contains(image) {
            v.push(format!("/dev/{n}"));
        }
    }
    v
}

/// Loop devices whose backing file is `file` (a device for a read-only view).
pub fn loops_on(file: &str) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/sys/block")
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        let b = std::fs::read_to_string(e.path().join("loop/backing_file")).unwrap_or_default();
        if n.starts_with("loop") && b.trim_end() == file {
            v.push(format!("/dev/{n}"));
        }
    }
    v
}
