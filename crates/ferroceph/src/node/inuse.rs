//! Who still uses a staged volume, so that NodeUnstageVolume refuses to unmount or detach
//! it under a running pod: publish mounts (bind mounts of the staging mount, or of its
//! device for raw block) and processes holding the device open.

use crate::node::mount::{self, MountEntry};
use std::path::{Path, PathBuf};

/// `path` as the mount table spells it.
fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

/// Mount points other than `staging` that show the filesystem mounted at `staging`
/// (bind mounts share its `major:minor`).
pub(crate) fn binds_of(staging: &Path, mounts: &[MountEntry]) -> Vec<PathBuf> {
    let staging = canonical(staging);
    let Some(dev) = mounts
        .iter()
        .rev()
        .find(|m| m.mount_point == staging)
        .map(|m| m.dev.clone())
    else {
        return Vec::new();
    };
    mounts
        .iter()
        .filter(|m| m.dev == dev && m.mount_point != staging)
        .map(|m| m.mount_point.clone())
        .collect()
}

/// Mount points other than `staging` whose device (per `device_of`) is one of `devices`.
pub(crate) fn mounts_of_devices(
    devices: &[String],
    staging: &Path,
    mounts: &[MountEntry],
    device_of: impl Fn(&MountEntry) -> Option<String>,
) -> Vec<PathBuf> {
    let staging = canonical(staging);
    mounts
        .iter()
        .filter(|m| m.mount_point != staging)
        .filter(|m| device_of(m).is_some_and(|d| devices.contains(&d)))
        .map(|m| m.mount_point.clone())
        .collect()
}

/// Processes (pid, command name) other than this one holding one of `devices` open.
pub(crate) fn openers(devices: &[String]) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .ok()
                .and_then(|t| t.to_str().map(|t| devices.iter().any(|d| d == t)))
                .unwrap_or(false)
        });
        if holds {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            out.push((pid, comm.trim().to_string()));
        }
    }
    out
}

/// [`openers`] that still hold a device after a few scans: tools that scan every device
/// (losetup --find, blkid, udev rules) open it for an instant and are no users.
pub(crate) async fn steady_openers(devices: &[String]) -> Vec<(i32, String)> {
    let mut held = openers(devices);
    for wait_ms in [100, 250] {
        if held.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(wait_ms)).await;
        let again = openers(devices);
        held.retain(|p| again.contains(p));
    }
    held
}

/// The users of a staged volume as a sentence, or None when there are none.
pub(crate) fn describe(
    binds: &[PathBuf],
    openers: &[(i32, String)],
    device: &str,
) -> Option<String> {
    let mut parts: Vec<String> = binds
        .iter()
        .map(|b| format!("published at {}", b.display()))
        .collect();
    parts.extend(
        openers
            .iter()
            .map(|(pid, comm)| format!("{device} is open in process {pid} ({comm})")),
    );
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Every mount, or an empty list when the table cannot be read (the unmount that follows
/// then reports the problem).
pub(crate) fn mount_table() -> Vec<MountEntry> {
    mount::mounts().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_share_the_device_number() {
        let m = mount::parse_mountinfo(
            "\
22 1 8:1 / / rw - ext4 /dev/sda1 rw
600 22 7:3 / /k/globalmount rw - ext4 /dev/loop3 rw
601 22 7:3 / /k/pods/p/mount rw - ext4 /dev/loop3 rw
602 22 0:5 /loop3 /k/pods/q/dev rw - devtmpfs udev rw
603 22 7:4 / /k/other rw - ext4 /dev/loop4 rw
",
        );
        assert_eq!(
            binds_of(Path::new("/k/globalmount"), &m),
            vec![PathBuf::from("/k/pods/p/mount")]
        );
        assert!(binds_of(Path::new("/k/nothing"), &m).is_empty());
        let dev = |e: &MountEntry| {
            e.source
                .strip_prefix("/dev/")
                .map(|n| format!("/dev/{n}"))
                .or_else(|| Some(format!("/dev{}", e.root)))
        };
        assert_eq!(
            mounts_of_devices(&["/dev/loop3".into()], Path::new("/k/globalmount"), &m, dev),
            vec![
                PathBuf::from("/k/pods/p/mount"),
                PathBuf::from("/k/pods/q/dev")
            ]
        );
        assert_eq!(
            describe(&[PathBuf::from("/t")], &[(7, "dd".into())], "/dev/loop3").unwrap(),
            "published at /t; /dev/loop3 is open in process 7 (dd)"
        );
        assert_eq!(describe(&[], &[], "/dev/loop3"), None);
    }

    #[test]
    fn an_open_file_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("dev");
        std::fs::write(&f, b"x").unwrap();
        let name = f.display().to_string();
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("exec 3<{name}; sleep 30"))
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut found = Vec::new();
        while found.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            found = openers(std::slice::from_ref(&name));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.iter().any(|(p, _)| *p == pid), "{found:?}");
    }
}
