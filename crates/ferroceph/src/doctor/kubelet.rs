//! The keys directory (writable, memory-backed) and the kubelet directories' mount
//! propagation.

use super::node::exists;
use super::report::{Check, Verdict};
use crate::node::mount::{parse_mountinfo, MountEntry};
use std::path::Path;

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// A readable name for a statfs filesystem magic.
pub(crate) fn fs_name(magic: i64) -> String {
    match magic {
        TMPFS_MAGIC => "tmpfs".into(),
        RAMFS_MAGIC => "ramfs".into(),
        0xEF53 => "ext2/3/4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x794C_7630 => "overlayfs".into(),
        0x6969 => "nfs".into(),
        m => format!("filesystem type {m:#x}"),
    }
}

pub(crate) fn memory_backed(magic: i64) -> bool {
    magic == TMPFS_MAGIC || magic == RAMFS_MAGIC
}

pub(super) fn keysdir_check(dir: &Path) -> Check {
    let id = "keysdir";
    // The driver creates the directory (0700) on first use; judge the nearest existing one.
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let created_later = existing != dir;
    if !existing.is_dir() {
        return Check::problem(
            id,
            Verdict::Fail,
            format!("{} is not a directory", existing.display()),
            "the driver writes short-lived key files for rbd map, ceph-fuse and mount.ceph there",
            "point --keysdir at a directory (the manifests mount a memory-backed emptyDir at /tmp/csi/keys)",
        );
    }
    let probe = existing.join(format!(".ferroceph-doctor-{}", std::process::id()));
    let writable = {
        use std::os::unix::fs::OpenOptionsExt;
        let r = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&probe);
        let _ = std::fs::remove_file(&probe);
        r
    };
    if let Err(e) = writable {
        return Check::problem(
            id,
            Verdict::Fail,
            format!("cannot create a file in {}: {e}", existing.display()),
            "every krbd/rbd-nbd map and CephFS mount writes the key to a 0600 file there first",
            "mount a writable memory-backed emptyDir at the --keysdir path (emptyDir: {medium: Memory})",
        );
    }
    let magic = match nix::sys::statfs::statfs(existing) {
        // fs_type_t is i64 here, but not on every target.
        #[allow(clippy::unnecessary_cast)]
        Ok(s) => s.filesystem_type().0 as i64,
        Err(e) => {
            return Check::problem(
                id,
                Verdict::Warn,
                format!("{} is writable, but statfs failed: {e}", existing.display()),
                "cannot tell whether key files could reach a disk",
                "mount a memory-backed emptyDir at the --keysdir path",
            )
        }
    };
    let place = if created_later {
        format!(
            "{} (created on first use, under {})",
            dir.display(),
            existing.display()
        )
    } else {
        dir.display().to_string()
    };
    if memory_backed(magic) {
        Check::ok(
            id,
            format!("{place} is writable and memory-backed ({})", fs_name(magic)),
        )
    } else {
        Check::problem(
            id,
            Verdict::Warn,
            format!("{place} is writable but on {}", fs_name(magic)),
            "key files live for a second, but on disk-backed storage their blocks can outlive the file",
            "mount a memory-backed emptyDir at the --keysdir path (emptyDir: {medium: Memory}), as the ferroceph manifests do",
        )
    }
}

// ---------------------------------------------------------------------------------------
// Node: kubelet directories and mount propagation
// ---------------------------------------------------------------------------------------

/// The mount that contains `path` (the last, longest matching mount point wins, as the
/// kernel stacks later mounts on top).
pub(crate) fn mount_of<'a>(entries: &'a [MountEntry], path: &str) -> Option<&'a MountEntry> {
    let mut best: Option<&MountEntry> = None;
    for e in entries {
        let mp = e.mount_point.to_str().unwrap_or("").trim_end_matches('/');
        let inside = path == mp || mp.is_empty() || path.starts_with(&format!("{mp}/"));
        let longer = match best {
            None => true,
            Some(b) => e.mount_point.as_os_str().len() >= b.mount_point.as_os_str().len(),
        };
        if inside && longer {
            best = Some(e);
        }
    }
    best
}

pub(super) fn kubelet_checks() -> Vec<Check> {
    const DIRS: [&str; 2] = ["/var/lib/kubelet/plugins", "/var/lib/kubelet/pods"];
    if !DIRS.iter().any(|d| exists(d)) {
        return vec![Check::skip(
            "kubelet",
            "no /var/lib/kubelet here: not running in the node plugin pod (skipped)",
        )];
    }
    let entries =
        parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
    DIRS.iter()
        .map(|dir| {
            let id = format!("kubelet.{}", dir.trim_start_matches("/var/lib/kubelet/"));
            if !exists(dir) {
                return Check::problem(
                    id,
                    Verdict::Fail,
                    format!("{dir} does not exist in this container"),
                    "kubelet asks the plugin to mount under this directory",
                    format!("mount the host's {dir} into the plugin container (hostPath, mountPropagation: Bidirectional)"),
                );
            }
            match mount_of(&entries, dir) {
                Some(m) if m.shared() => Check::ok(
                    id,
                    format!("{dir} is on a shared mount ({}): mounts propagate to the host", m.mount_point.display()),
                ),
                Some(m) => Check::problem(
                    id,
                    Verdict::Fail,
                    format!(
                        "{dir} is on a {} mount ({})",
                        if m.slave() { "slave (HostToContainer)" } else { "private" },
                        m.mount_point.display()
                    ),
                    "volumes the plugin mounts there stay invisible to kubelet and the pods, which then see empty directories",
                    "set mountPropagation: Bidirectional on this volumeMount (privileged container), and make the host mount shared (mount --make-rshared /var/lib/kubelet)",
                ),
                None => Check::problem(
                    id,
                    Verdict::Warn,
                    format!("cannot find the mount holding {dir} in /proc/self/mountinfo"),
                    "mount propagation cannot be verified",
                    "check that the volumeMount has mountPropagation: Bidirectional",
                ),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_propagation() {
        let text = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    30 22 0:25 / /var/lib/kubelet/pods rw shared:5 master:1 - ext4 /dev/vda rw\n\
                    31 22 0:26 / /var/lib/kubelet/plugins rw master:2 - ext4 /dev/vda rw\n\
                    32 22 0:27 / /mnt/with\\040space rw - tmpfs tmpfs rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[3].mount_point, std::path::Path::new("/mnt/with space"));
        let pods = mount_of(&m, "/var/lib/kubelet/pods/abc").unwrap();
        assert_eq!(pods.mount_point.to_str(), Some("/var/lib/kubelet/pods"));
        assert!(pods.shared());
        let plugins = mount_of(&m, "/var/lib/kubelet/plugins").unwrap();
        assert!(!plugins.shared() && plugins.slave());
        assert_eq!(
            mount_of(&m, "/var/lib/kubelet")
                .unwrap()
                .mount_point
                .to_str(),
            Some("/")
        );
        assert_eq!(
            mount_of(&m, "/mnt/with space/x")
                .unwrap()
                .mount_point
                .to_str(),
            Some("/mnt/with space")
        );
        assert_eq!(
            mount_of(&m, "/var/lib/kubelet/podsx")
                .unwrap()
                .mount_point
                .to_str(),
            Some("/")
        );
    }

    #[test]
    fn keysdir_filesystems() {
        assert!(memory_backed(TMPFS_MAGIC));
        assert!(memory_backed(RAMFS_MAGIC));
        assert!(!memory_backed(0xEF53));
        assert_eq!(fs_name(0xEF53), "ext2/3/4");
        assert_eq!(fs_name(1), "filesystem type 0x1");
    }

    #[test]
    fn keysdir_on_memory_and_missing_dirs() {
        if Path::new("/dev/shm").is_dir() {
            let dir = tempfile::tempdir_in("/dev/shm").unwrap();
            let c = keysdir_check(dir.path());
            assert_eq!(c.status, Verdict::Ok, "{c:?}");
            let c = keysdir_check(&dir.path().join("later/keys"));
            assert_eq!(c.status, Verdict::Ok, "{c:?}");
            assert!(c.summary.contains("created on first use"), "{c:?}");
        }
        let file = tempfile::NamedTempFile::new().unwrap();
        let c = keysdir_check(file.path());
        assert_eq!(c.status, Verdict::Fail, "{c:?}");
    }
}
