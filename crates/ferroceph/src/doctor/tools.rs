//! The programs the node plugin runs, and whether this node has them.

use super::node::NodeFacts;
use super::report::{Check, Verdict};
use std::path::{Path, PathBuf};

/// A program the node plugin runs, the Debian package that ships it, and what for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    pub name: &'static str,
    pub package: &'static str,
    pub needed_for: &'static str,
}

/// Every program the node plugin may run (the container image must provide them all).
pub const TOOLS: &[Tool] = &[
    Tool {
        name: "mount",
        package: "mount",
        needed_for: "every stage and publish",
    },
    Tool {
        name: "umount",
        package: "mount",
        needed_for: "every unpublish and unstage",
    },
    Tool {
        name: "blkid",
        package: "util-linux",
        needed_for: "detecting an existing filesystem before formatting an RBD volume",
    },
    Tool {
        name: "mkfs.ext4",
        package: "e2fsprogs",
        needed_for: "formatting ext4 RBD volumes (the default fsType)",
    },
    Tool {
        name: "resize2fs",
        package: "e2fsprogs",
        needed_for: "growing ext4 RBD volumes",
    },
    Tool {
        name: "mkfs.xfs",
        package: "xfsprogs",
        needed_for: "formatting xfs RBD volumes",
    },
    Tool {
        name: "xfs_growfs",
        package: "xfsprogs",
        needed_for: "growing xfs RBD volumes",
    },
    Tool {
        name: "losetup",
        package: "mount",
        needed_for: "the RBD fuse mounter (loop device on the exported image)",
    },
    Tool {
        name: "rbd",
        package: "ceph-common",
        needed_for: "the krbd and rbd-nbd mounters (rbd map/unmap)",
    },
    Tool {
        name: "rbd-nbd",
        package: "rbd-nbd",
        needed_for: "the rbd-nbd mounter",
    },
    Tool {
        name: "ceph-fuse",
        package: "ceph-fuse",
        needed_for: "the CephFS fuse mounter",
    },
    Tool {
        name: "mount.ceph",
        package: "ceph-common",
        needed_for: "the CephFS kernel mounter (reads the key from secretfile=)",
    },
    Tool {
        name: "modprobe",
        package: "kmod",
        needed_for: "loading the rbd, nbd and ceph modules on demand",
    },
    Tool {
        name: "fusermount",
        package: "fuse3",
        needed_for: "detaching a ceph-fuse mount whose daemon died",
    },
];

/// How bad a missing tool is, given the mounters this node uses.
fn tool_severity(name: &str, rbd_mounter: &str, cephfs_mounter: Option<&str>) -> Verdict {
    match name {
        "mount" | "umount" | "blkid" | "mkfs.ext4" | "resize2fs" => Verdict::Fail,
        "rbd" if matches!(rbd_mounter, "krbd" | "rbd-nbd") => Verdict::Fail,
        "rbd-nbd" if rbd_mounter == "rbd-nbd" => Verdict::Fail,
        "losetup" if rbd_mounter == "fuse" => Verdict::Fail,
        "ceph-fuse" if cephfs_mounter == Some("fuse") => Verdict::Fail,
        "mount.ceph" if cephfs_mounter == Some("kernel") => Verdict::Fail,
        _ => Verdict::Warn,
    }
}

/// Finds an executable called `name` in `path` (a PATH value) or the sbin directories
/// mount(8) searches for helpers.
pub(crate) fn find_tool(name: &str, path: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    path.split(':')
        .filter(|d| !d.is_empty())
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

pub(super) fn tool_checks(facts: &NodeFacts) -> Vec<Check> {
    let path = std::env::var("PATH").unwrap_or_default();
    TOOLS
        .iter()
        .map(|t| {
            let id = format!("tool.{}", t.name);
            match find_tool(t.name, &path) {
                Some(p) => Check::ok(id, format!("{} found at {}", t.name, p.display())),
                None => Check::problem(
                    id,
                    tool_severity(t.name, facts.rbd_mounter, facts.cephfs_mounter),
                    format!("{} is not on PATH", t.name),
                    format!("needed for {}", t.needed_for),
                    format!(
                        "install the Debian package {} in the node image (apt-get install --no-install-recommends {}); the ferroceph image ships it",
                        t.package, t.package
                    ),
                ),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_severity_follows_the_mounters() {
        assert_eq!(tool_severity("mount", "fuse", None), Verdict::Fail);
        assert_eq!(tool_severity("rbd", "krbd", None), Verdict::Fail);
        assert_eq!(tool_severity("rbd", "fuse", None), Verdict::Warn);
        assert_eq!(tool_severity("losetup", "fuse", None), Verdict::Fail);
        assert_eq!(tool_severity("losetup", "krbd", None), Verdict::Warn);
        assert_eq!(
            tool_severity("ceph-fuse", "krbd", Some("fuse")),
            Verdict::Fail
        );
        assert_eq!(
            tool_severity("ceph-fuse", "krbd", Some("kernel")),
            Verdict::Warn
        );
        assert_eq!(
            tool_severity("mount.ceph", "krbd", Some("kernel")),
            Verdict::Fail
        );
        assert_eq!(tool_severity("mkfs.xfs", "krbd", None), Verdict::Warn);
    }

    #[test]
    fn finds_tools_on_path() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("mytool");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        let plain = dir.path().join("notexec");
        std::fs::write(&plain, "").unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let path = format!("/nonexistent:{}", dir.path().display());
        assert_eq!(find_tool("mytool", &path), Some(exe));
        assert_eq!(find_tool("notexec", &path), None);
        assert_eq!(find_tool("no-such-tool-xyz", &path), None);
    }
}
