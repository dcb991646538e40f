//! Probing, formatting and growing filesystems on block devices.
//!
//! The one rule: a device is formatted only with positive proof that it is blank: the
//! low-level probe (`blkid -p`, which reads the superblocks itself instead of trusting a
//! cache) finds neither a filesystem nor a partition table nor any other signature, *and*
//! the first and last MiB of the device read back successfully as zeros. blkid answers
//! "nothing found" when a read fails with EIO (a placement group inactive while an OSD
//! restarts), so its silence alone proves nothing. Anything else, including a probe that
//! fails or is ambivalent, is left alone.

use crate::error::{Error, Result};
use crate::node::exec::{self, ExecError};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// What a device holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Probe {
    /// No signature of any kind: safe to format.
    Blank,
    /// A filesystem of this type (`ext4`, `xfs`, ...).
    Filesystem(String),
    /// Something that is not a mountable filesystem (partition table, LVM, RAID, swap,
    /// crypto, ...), described for the error message.
    Other(String),
}

/// Interprets `blkid -p -o export` output (KEY=VALUE lines).
pub(crate) fn parse_blkid_export(out: &str) -> Probe {
    let kv: BTreeMap<&str, &str> = out
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    if let Some(pt) = kv.get("PTTYPE") {
        return Probe::Other(format!("a {pt} partition table"));
    }
    let usage = kv.get("USAGE").copied().unwrap_or("");
    match kv.get("TYPE") {
        Some(t) if usage == "filesystem" || usage.is_empty() => {
            if matches!(
                *t,
                "swap" | "LVM2_member" | "linux_raid_member" | "crypto_LUKS"
            ) {
                Probe::Other(format!("a {t} signature"))
            } else {
                Probe::Filesystem(t.to_string())
            }
        }
        Some(t) => Probe::Other(format!("a {t} signature ({usage})")),
        None if kv.is_empty() => Probe::Blank,
        None => Probe::Other(format!(
            "unrecognised signatures ({})",
            kv.keys().copied().collect::<Vec<_>>().join(", ")
        )),
    }
}

/// How much of each end of a device must read back as zeros before it counts as blank
/// (partition tables, RAID and LVM signatures live at either end).
const BLANK_CHECK_BYTES: u64 = 1 << 20;

/// Probes `device`. blkid exits 2 when it finds nothing; that becomes `Blank` only when the
/// ends of the device read back as zeros. Any failure to read is an error (Unavailable):
/// the caller must not format.
pub(crate) async fn probe(device: &str, timeout: Duration) -> Result<Probe> {
    let args = ["-p", "-o", "export", device];
    let out = exec::output("blkid", &args, &[], timeout)
        .await
        .map_err(Error::from)?;
    match out.code {
        Some(0) => Ok(parse_blkid_export(&out.stdout)),
        Some(2) => match read_ends_are_zero(device, timeout).await {
            Ok(true) => Ok(Probe::Blank),
            Ok(false) => Ok(Probe::Other(
                "data that no known filesystem or signature matches (the first or last MiB is not zeros)"
                    .into(),
            )),
            Err(e) => Err(Error::unavailable(format!(
                "cannot read {device} to prove it is blank ({e}); not formatting it. Is the cluster healthy (OSDs up, placement groups active)? Retry then"
            ))),
        },
        Some(8) => Ok(Probe::Other(
            "several conflicting signatures (blkid is ambivalent)".into(),
        )),
        code => Err(ExecError::Failed {
            cmd: exec::describe("blkid", &args),
            code: code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "signal".into()),
            stderr: out.stderr,
        }
        .into()),
    }
}

/// Whether the first and last [`BLANK_CHECK_BYTES`] of `device` read back as zeros. The
/// reads bypass the page cache (O_DIRECT) and run on a thread of their own: a read of a
/// device whose backing store hangs may never return.
async fn read_ends_are_zero(device: &str, timeout: Duration) -> std::io::Result<bool> {
    let dev = device.to_string();
    crate::node::stats::bounded(
        timeout,
        &format!("read of the first and last MiB of {device}"),
        move || ends_are_zero(Path::new(&dev)),
    )
    .await
}

fn ends_are_zero(device: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    const ALIGN: usize = 4096;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(device)?;
    let size = f.seek(SeekFrom::End(0))?;
    let chunk = BLANK_CHECK_BYTES.min(size);
    let mut starts = vec![0];
    if size > chunk {
        // aligned down, so O_DIRECT accepts the offset
        starts.push((size - chunk) & !(ALIGN as u64 - 1));
    }
    let len = usize::try_from(chunk).map_err(std::io::Error::other)?;
    let mut raw = vec![0u8; len + ALIGN];
    let off = raw.as_ptr().align_offset(ALIGN);
    let buf = &mut raw[off..off + len];
    for start in starts {
        f.seek(SeekFrom::Start(start))?;
        let mut done = 0;
        while done < len {
            match f.read(&mut buf[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if buf[..done].iter().any(|b| *b != 0) {
            return Ok(false);
        }
    }
    Ok(true)
}

pub(crate) const SUPPORTED: &[&str] = &["ext4", "ext3", "xfs"];

/// The mkfs command for `fs_type`: ceph-csi's defaults unless `mkfs_options` (a
/// whitespace-separated list from the StorageClass, allow-listed) replaces them.
pub(crate) fn mkfs_command(
    fs_type: &str,
    device: &str,
    mkfs_options: Option<&str>,
) -> Result<(String, Vec<String>)> {
    if !SUPPORTED.contains(&fs_type) {
        return Err(Error::invalid(format!(
            "fsType {fs_type:?} is not supported: use ext4 or xfs"
        )));
    }
    let mut args: Vec<String> = match mkfs_options.map(str::trim).filter(|o| !o.is_empty()) {
        Some(opts) => crate::options::check_mkfs(fs_type, opts)?,
        None => match fs_type {
            "xfs" => vec!["-K".into()],
            _ => vec![
                "-m0".into(),
                "-Enodiscard,lazy_itable_init=1,lazy_journal_init=1".into(),
            ],
        },
    };
    if let Some(bad) = args.iter().find(|a| a.as_str() == device) {
        return Err(Error::invalid(format!(
            "mkfsOptions must not name the device ({bad})"
        )));
    }
    args.push(device.to_string());
    Ok((format!("mkfs.{fs_type}"), args))
}

pub(crate) async fn mkfs(
    fs_type: &str,
    device: &str,
    mkfs_options: Option<&str>,
    timeout: Duration,
) -> Result<()> {
    let (prog, args) = mkfs_command(fs_type, device, mkfs_options)?;
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    exec::run(&prog, &a, &[], timeout)
        .await
        .map(drop)
        .map_err(Error::from)
}

/// Mount options every mount of `fs_type` needs (xfs: `nouuid`, so a clone or a snapshot
/// restore mounts beside its origin).
pub(crate) fn fs_mount_options(fs_type: &str) -> Vec<String> {
    match fs_type {
        "xfs" => vec!["nouuid".to_string()],
        _ => vec![],
    }
}

/// The command that grows a mounted filesystem to fill its device.
pub(crate) fn grow_command(
    fs_type: &str,
    device: &str,
    mount_point: &str,
) -> Option<(String, Vec<String>)> {
    match fs_type {
        "ext4" | "ext3" | "ext2" => Some(("resize2fs".into(), vec![device.into()])),
        "xfs" => Some(("xfs_growfs".into(), vec![mount_point.into()])),
        _ => None,
    }
}

pub(crate) async fn grow(
    fs_type: &str,
    device: &str,
    mount_point: &str,
    timeout: Duration,
) -> Result<()> {
    let Some((prog, args)) = grow_command(fs_type, device, mount_point) else {
        return Err(Error::precondition(format!(
            "cannot grow a {fs_type} filesystem online"
        )));
    };
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match exec::run(&prog, &a, &[], timeout).await {
        Ok(_) => Ok(()),
        Err(ExecError::Failed { stderr, .. }) if stderr.contains("Permission denied") => {
            Err(Error::precondition(format!(
                "{prog} was refused by the kernel ({}); growing a mounted {fs_type} filesystem needs the CAP_SYS_RESOURCE capability: grant it to the node plugin (a privileged container has it)",
                stderr.lines().last().unwrap_or("").trim()
            )))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkid_output() {
        assert_eq!(parse_blkid_export(""), Probe::Blank);
        assert_eq!(
            parse_blkid_export(
                "DEVNAME=/dev/loop0\nUUID=x\nBLOCK_SIZE=1024\nTYPE=ext4\nUSAGE=filesystem\n"
            ),
            Probe::Filesystem("ext4".into())
        );
        assert_eq!(
            parse_blkid_export("TYPE=xfs\nUSAGE=filesystem"),
            Probe::Filesystem("xfs".into())
        );
        assert!(matches!(
            parse_blkid_export("PTUUID=abc\nPTTYPE=gpt\n"),
            Probe::Other(s) if s.contains("gpt")
        ));
        assert!(matches!(
            parse_blkid_export("TYPE=LVM2_member\nUSAGE=raid\n"),
            Probe::Other(_)
        ));
        assert!(matches!(
            parse_blkid_export("TYPE=swap\nUSAGE=other\n"),
            Probe::Other(_)
        ));
        assert!(matches!(
            parse_blkid_export("SOMETHING=1\n"),
            Probe::Other(_)
        ));
    }

    #[test]
    fn ceph_csi_mkfs_defaults() {
        let (p, a) = mkfs_command("ext4", "/dev/loop3", None).unwrap();
        assert_eq!(p, "mkfs.ext4");
        assert_eq!(
            a,
            vec![
                "-m0",
                "-Enodiscard,lazy_itable_init=1,lazy_journal_init=1",
                "/dev/loop3"
            ]
        );
        let (p, a) = mkfs_command("xfs", "/dev/rbd0", None).unwrap();
        assert_eq!(
            (p.as_str(), a),
            ("mkfs.xfs", vec!["-K".to_string(), "/dev/rbd0".into()])
        );
        let (_, a) = mkfs_command("ext4", "/dev/rbd0", Some(" -m1  -O ^has_journal ")).unwrap();
        assert_eq!(a, vec!["-m1", "-O", "^has_journal", "/dev/rbd0"]);
        assert!(mkfs_command("btrfs", "/dev/rbd0", None).is_err());
        assert!(mkfs_command("ext4", "/dev/rbd0", Some("-F /dev/rbd0")).is_err());
        assert_eq!(fs_mount_options("xfs"), vec!["nouuid"]);
        assert!(fs_mount_options("ext4").is_empty());
        assert_eq!(
            grow_command("xfs", "/dev/rbd0", "/mnt").unwrap().1,
            vec!["/mnt".to_string()]
        );
        assert_eq!(
            grow_command("ext4", "/dev/rbd0", "/mnt").unwrap().0,
            "resize2fs"
        );
        assert!(grow_command("vfat", "/dev/rbd0", "/mnt").is_none());
    }
}
