//! Mounts: reading /proc/self/mountinfo, mounting, bind-mounting and unmounting with
//! deadlines, and checks that keep every mount inside the paths kubelet gave.

use crate::error::{Error, Result};
use crate::node::exec::{self, ExecError};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the mounted filesystem: a bind mount shares it with its source.
    pub dev: String,
    /// Path inside the source filesystem that is mounted (differs from "/" for binds).
    pub root: String,
    pub mount_point: PathBuf,
    pub options: String,
    pub fs_type: String,
    pub source: String,
    pub super_options: String,
    /// Optional fields: propagation tags such as `shared:1` or `master:2`.
    pub tags: Vec<String>,
}

impl MountEntry {
    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
    /// Mounts below it propagate to its peers (the host, for a Bidirectional mount).
    pub(crate) fn shared(&self) -> bool {
        self.tags.iter().any(|t| t.starts_with("shared:"))
    }
    /// It receives mounts from a master but does not send any back.
    pub(crate) fn slave(&self) -> bool {
        self.tags.iter().any(|t| t.starts_with("master:"))
    }
}

/// Undoes the octal escapes mountinfo uses for space, tab, newline and backslash.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && s.is_char_boundary(i + 4) {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            if l.len() < 6 || r.len() < 3 {
                return None;
            }
            Some(MountEntry {
                dev: l[2].to_string(),
                root: unescape(l[3]),
                mount_point: PathBuf::from(unescape(l[4])),
                options: l[5].to_string(),
                fs_type: r[0].to_string(),
                source: unescape(r[1]),
                super_options: r[2].to_string(),
                tags: l[6..].iter().map(|t| t.to_string()).collect(),
            })
        })
        .collect()
}

pub fn mounts() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// The last (topmost) mount at `path`, if any.
pub fn mount_at(path: &Path) -> std::io::Result<Option<MountEntry>> {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    Ok(mounts()?.into_iter().rev().find(|m| m.mount_point == path))
}

pub fn is_mount_point(path: &Path) -> std::io::Result<bool> {
    Ok(mount_at(path)?.is_some())
}

/// CSI paths must be absolute, without `..`, NUL or control characters; kubelet never
/// sends anything else, so anything else is refused rather than interpreted.
pub(crate) fn check_path(path: &str, what: &str) -> Result<PathBuf> {
    if path.is_empty() {
        return Err(Error::invalid(format!("{what} is required")));
    }
    if path.len() > 4096 || path.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "{what} contains control characters or is too long"
        )));
    }
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(Error::invalid(format!(
            "{what} {path:?} must be an absolute path"
        )));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(Error::invalid(format!(
            "{what} {path:?} must not contain '..'"
        )));
    }
    Ok(p.to_path_buf())
}

/// The `volume_path` of NodeGetVolumeStats and NodeExpandVolume: required, and a path that
/// cannot hold the volume (relative, with `..`) holds none of it, which the spec answers
/// with NotFound ("the volume does not exist on the specified path"). Nothing is ever done
/// with such a path.
pub(crate) fn volume_path(path: &str, volume_id: &str) -> Result<PathBuf> {
    if path.is_empty() {
        return Err(Error::invalid("volume_path is required"));
    }
    check_path(path, "volume_path").map_err(|e| {
        Error::not_found(format!(
            "volume {volume_id} is not at {path:?}: {}",
            e.message()
        ))
    })
}

/// Refuses a path whose existing parent chain goes through a symlink, so a mount can not
/// be redirected outside the directory kubelet named.
pub(crate) fn check_no_symlinks(path: &Path, what: &str) -> Result<()> {
    let mut cur = PathBuf::from("/");
    for c in path.components().skip(1) {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::invalid(format!(
                    "{what} {} goes through the symlink {}; refusing to mount there",
                    path.display(),
                    cur.display()
                )))
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    Ok(())
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `mount [-t fstype] [-o options] source target`.
pub(crate) async fn mount(
    source: &str,
    target: &Path,
    fs_type: &str,
    options: &[String],
    timeout: Duration,
) -> Result<(), ExecError> {
    let mut args: Vec<String> = Vec::new();
    if !fs_type.is_empty() {
        args.push("-t".into());
        args.push(fs_type.into());
    }
    if !options.is_empty() {
        args.push("-o".into());
        args.push(options.join(","));
    }
    args.push(source.into());
    args.push(s(target));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    exec::run("mount", &a, &[], timeout).await.map(drop)
}

/// Bind-mounts `source` on `target`, then remounts read-only when asked (a bind mount
/// ignores `ro` on the first call).
pub(crate) async fn bind(
    source: &Path,
    target: &Path,
    read_only: bool,
    extra: &[String],
    timeout: Duration,
) -> Result<(), ExecError> {
    exec::run("mount", &["--bind", &s(source), &s(target)], &[], timeout).await?;
    if read_only || !extra.is_empty() {
        let mut opts = vec!["remount".to_string(), "bind".to_string()];
        if read_only {
            opts.push("ro".into());
        }
        opts.extend(extra.iter().cloned());
        if let Err(e) = exec::run("mount", &["-o", &opts.join(","), &s(target)], &[], timeout).await
        {
            let _ = unmount(target, timeout).await;
            return Err(e);
        }
    }
    Ok(())
}

/// Unmounts `target` if it is a mount point; Ok when it was not mounted.
pub(crate) async fn unmount(target: &Path, timeout: Duration) -> Result<(), ExecError> {
    if !is_mount_point(target).unwrap_or(true) {
        return Ok(());
    }
    let out = exec::output("umount", &[&s(target)], &[], timeout).await?;
    if out.success() || out.stderr.contains("not mounted") || out.stderr.contains("no mount point")
    {
        Ok(())
    } else {
        Err(ExecError::Failed {
            cmd: format!("umount {}", s(target)),
            code: out
                .code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "signal".into()),
            stderr: out.stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
600 22 7:3 / /var/lib/kubelet/plugins/x/globalmount rw,relatime shared:300 - ext4 /dev/loop3 rw
601 22 7:3 / /var/lib/kubelet/pods/p/volumes/kubernetes.io~csi/pv/mount ro,relatime shared:300 - ext4 /dev/loop3 rw
602 22 0:50 /volumes/csi/sub /mnt/with\\040space rw - fuse.ceph-fuse ceph-fuse rw,user_id=0
";

    #[test]
    fn parses_mountinfo() {
        let m = parse_mountinfo(SAMPLE);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].source, "/dev/loop3");
        assert_eq!(m[1].dev, "7:3");
        assert!(m[2].read_only());
        assert!(!m[1].read_only());
        assert_eq!(m[3].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(m[3].root, "/volumes/csi/sub");
        assert_eq!(m[3].fs_type, "fuse.ceph-fuse");
    }

    #[test]
    fn paths() {
        assert!(check_path("/var/lib/kubelet/x", "target_path").is_ok());
        assert!(check_path("relative/x", "target_path").is_err());
        assert!(check_path("/var/lib/../../etc", "target_path").is_err());
        assert!(check_path("/a\u{0}b", "target_path").is_err());
        assert!(check_path("", "target_path").is_err());
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/etc", &link).unwrap();
        assert!(check_no_symlinks(&link.join("x"), "target_path").is_err());
        assert!(check_no_symlinks(&dir.path().join("plain/x"), "target_path").is_ok());
    }
}
