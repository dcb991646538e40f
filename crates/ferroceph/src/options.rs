//! Allow-lists for the options a StorageClass (or a volume context) hands to node tools:
//! `mkfsOptions` (mkfs.ext4/ext3/xfs), `mapOptions`/`unmapOptions` (rbd map/unmap, krbd
//! and rbd-nbd), `kernelMountOptions` (mount -t ceph) and `fuseMountOptions` (ceph-fuse
//! -o). These reach the tools verbatim and run as root on the node, so anything not known
//! to be harmless is refused, naming the option: `mkfsOptions: "-d /var/lib/kubelet/pods"`
//! would copy node files (service-account tokens) into a tenant's volume, `mkfs.xfs -p`
//! reads a proto file from the node, `quiesce-hook=` runs a program.

use crate::error::{Error, Result};

/// A value is a plain number with an optional unit suffix (`4096`, `64k`, `1g`).
fn is_size(v: &str) -> bool {
    let digits = v.trim_end_matches(|c: char| "kKmMgGtTpPeEsb".contains(c));
    !digits.is_empty() && digits.len() + 1 >= v.len() && digits.chars().all(|c| c.is_ascii_digit())
}

fn is_bool(v: &str) -> bool {
    matches!(v, "0" | "1")
}

/// Letters, digits and `_.-` only (labels, feature names, enum values).
fn is_word(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A `key[=value]` option checked against `allowed`: (key, what the value must be).
#[derive(Clone, Copy)]
enum Val {
    /// No value.
    None,
    Size,
    Bool,
    Word,
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// `a|b|...` of `k:v` pairs (krbd `crush_location`).
    Location,
}

fn check_kv(what: &str, opt: &str, allowed: &[(&str, Val)]) -> Result<()> {
    let (key, value) = match opt.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (opt, None),
    };
    let Some((_, rule)) = allowed.iter().find(|(k, _)| *k == key) else {
        return Err(Error::invalid(format!(
            "{what}: option {key:?} is not allowed (allowed: {})",
            allowed
                .iter()
                .map(|(k, _)| *k)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let ok = match (rule, value) {
        (Val::None, None) => true,
        (Val::None, Some(_)) | (_, None) => false,
        (Val::Size, Some(v)) => is_size(v),
        (Val::Bool, Some(v)) => is_bool(v),
        (Val::Word, Some(v)) => is_word(v),
        (Val::OneOf(words), Some(v)) => words.contains(&v),
        (Val::Location, Some(v)) => v.split('|').all(|kv| {
            kv.split_once(':')
                .is_some_and(|(k, v)| is_word(k) && is_word(v))
        }),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{what}: option {opt:?} has a value that is not allowed{}",
            match rule {
                Val::None => " (it takes none)".to_string(),
                Val::Size => " (a number)".to_string(),
                Val::Bool => " (0 or 1)".to_string(),
                Val::Word => " (letters, digits, '_', '.', '-')".to_string(),
                Val::OneOf(w) => format!(" (one of {})", w.join(", ")),
                Val::Location => " (type:name pairs separated by '|')".to_string(),
            }
        )))
    }
}

fn check_list(what: &str, list: &str, allowed: &[(&str, Val)]) -> Result<()> {
    list.split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .try_for_each(|o| check_kv(what, o, allowed))
}

const EXT_EXTENDED: &[(&str, Val)] = &[
    ("nodiscard", Val::None),
    ("discard", Val::None),
    ("lazy_itable_init", Val::Bool),
    ("lazy_journal_init", Val::Bool),
    ("stride", Val::Size),
    ("stripe_width", Val::Size),
    ("stripe-width", Val::Size),
    ("packed_meta_blocks", Val::Bool),
    ("num_backup_sb", Val::OneOf(&["0", "1", "2"])),
    ("assume_storage_prezeroed", Val::Bool),
];

const XFS_SECTIONS: &[(&str, &[(&str, Val)])] = &[
    (
        "-m",
        &[
            ("crc", Val::Bool),
            ("finobt", Val::Bool),
            ("reflink", Val::Bool),
            ("rmapbt", Val::Bool),
            ("bigtime", Val::Bool),
            ("inobtcount", Val::Bool),
        ],
    ),
    (
        "-i",
        &[
            ("size", Val::Size),
            ("maxpct", Val::Size),
            ("align", Val::Bool),
            ("sparse", Val::Bool),
            ("attr", Val::OneOf(&["1", "2"])),
            ("projid32bit", Val::Bool),
            ("nrext64", Val::Bool),
        ],
    ),
    (
        "-d",
        &[
            ("agcount", Val::Size),
            ("agsize", Val::Size),
            ("su", Val::Size),
            ("sw", Val::Size),
            ("sunit", Val::Size),
            ("swidth", Val::Size),
        ],
    ),
    (
        "-l",
        &[
            ("size", Val::Size),
            ("version", Val::OneOf(&["1", "2"])),
            ("su", Val::Size),
            ("sunit", Val::Size),
            ("lazy-count", Val::Bool),
        ],
    ),
    (
        "-n",
        &[
            ("size", Val::Size),
            ("version", Val::OneOf(&["2", "ci"])),
            ("ftype", Val::Bool),
        ],
    ),
    ("-b", &[("size", Val::Size)]),
    ("-s", &[("size", Val::Size)]),
];

/// Checks `mkfsOptions` for `fs_type`; returns the arguments (whitespace-separated).
pub fn check_mkfs(fs_type: &str, options: &str) -> Result<Vec<String>> {
    let what = "mkfsOptions";
    if options.chars().any(|c| c.is_control() && c != '\t') {
        return Err(Error::invalid(format!(
            "{what} must not contain control characters"
        )));
    }
    let args: Vec<String> = options.split_whitespace().map(str::to_string).collect();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        // `-X value` or `-Xvalue`
        // (byte 2 must start a character: `-é` is no flag plus value)
        let (flag, attached) =
            if a.starts_with('-') && a.len() > 2 && !a.starts_with("--") && a.is_char_boundary(2) {
                (&a[..2], Some(&a[2..]))
            } else {
                (a, None)
            };
        let value = |i: &mut usize| -> Result<String> {
            if let Some(v) = attached {
                return Ok(v.to_string());
            }
            *i += 1;
            args.get(*i)
                .cloned()
                .ok_or_else(|| Error::invalid(format!("{what}: option {flag:?} needs a value")))
        };
        let ext = matches!(fs_type, "ext4" | "ext3" | "ext2");
        match (ext, flag) {
            (_, "-q") | (true, "-j") | (false, "-K") if attached.is_none() => {}
            (true, "-m") => {
                let v = value(&mut i)?;
                if !v.parse::<u8>().is_ok_and(|p| p <= 50) {
                    return Err(Error::invalid(format!(
                        "{what}: -m {v:?} must be a percentage (0-50)"
                    )));
                }
            }
            (true, "-b" | "-i" | "-I" | "-N" | "-g" | "-G") => {
                let v = value(&mut i)?;
                if !is_size(&v) {
                    return Err(Error::invalid(format!(
                        "{what}: {flag} {v:?} must be a number"
                    )));
                }
            }
            (true, "-E") => check_list(what, &value(&mut i)?, EXT_EXTENDED)?,
            (true, "-O") => {
                let v = value(&mut i)?;
                if !v
                    .split(',')
                    .all(|f| is_word(f.strip_prefix('^').unwrap_or(f)))
                {
                    return Err(Error::invalid(format!(
                        "{what}: -O {v:?} is not a list of feature names"
                    )));
                }
            }
            (true, "-T") => {
                let v = value(&mut i)?;
                if !is_word(&v) {
                    return Err(Error::invalid(format!(
                        "{what}: -T {v:?} is not a usage type"
                    )));
                }
            }
            (true, "-e") => {
                let v = value(&mut i)?;
                if !matches!(v.as_str(), "continue" | "remount-ro" | "panic") {
                    return Err(Error::invalid(format!(
                        "{what}: -e {v:?} must be continue, remount-ro or panic"
                    )));
                }
            }
            (_, "-L") => {
                let v = value(&mut i)?;
                if !is_word(&v) || v.len() > 16 {
                    return Err(Error::invalid(format!(
                        "{what}: label {v:?} must be at most 16 letters, digits, '_', '.', '-'"
                    )));
                }
            }
            (false, f) if XFS_SECTIONS.iter().any(|(s, _)| *s == f) => {
                let allowed = XFS_SECTIONS
                    .iter()
                    .find(|(s, _)| *s == f)
                    .map(|(_, a)| *a)
                    .unwrap_or(&[]);
                check_list(&format!("{what} {f}"), &value(&mut i)?, allowed)?;
            }
            _ => {
                return Err(Error::invalid(format!(
                    "{what}: option {a:?} is not allowed for {fs_type} (allowed: {})",
                    if ext {
                        "-m, -b, -i, -I, -N, -g, -G, -E, -O, -T, -e, -L, -j, -q"
                    } else {
                        "-m, -i, -d, -l, -n, -b, -s, -L, -K, -q with sizes and 0/1 switches"
                    }
                )))
            }
        }
        i += 1;
    }
    Ok(args)
}

const KRBD_MAP: &[(&str, Val)] = &[
    ("lock_on_read", Val::None),
    ("exclusive", Val::None),
    ("notrim", Val::None),
    ("abort_on_full", Val::None),
    ("noshare", Val::None),
    ("share", Val::None),
    ("crc", Val::None),
    ("nocrc", Val::None),
    ("tcp_nodelay", Val::None),
    ("notcp_nodelay", Val::None),
    ("cephx_require_signatures", Val::None),
    ("cephx_sign_messages", Val::None),
    ("rxbounce", Val::None),
    ("udev", Val::None),
    ("noudev", Val::None),
    ("force", Val::None),
    ("queue_depth", Val::Size),
    ("alloc_size", Val::Size),
    ("lock_timeout", Val::Size),
    ("mount_timeout", Val::Size),
    ("osdkeepalive", Val::Size),
    ("osd_idle_ttl", Val::Size),
    (
        "read_from_replica",
        Val::OneOf(&["no", "balance", "localize"]),
    ),
    ("crush_location", Val::Location),
    (
        "compression_hint",
        Val::OneOf(&["none", "compressible", "incompressible"]),
    ),
    (
        "ms_mode",
        Val::OneOf(&["legacy", "crc", "secure", "prefer-crc", "prefer-secure"]),
    ),
];

const NBD_MAP: &[(&str, Val)] = &[
    ("try-netlink", Val::None),
    ("exclusive", Val::None),
    ("notrim", Val::None),
    ("udev", Val::None),
    ("noudev", Val::None),
    ("force", Val::None),
    ("reattach-timeout", Val::Size),
    ("io-timeout", Val::Size),
    ("timeout", Val::Size),
    ("nbds_max", Val::Size),
    ("max_part", Val::Size),
];

/// Checks one mounter's `mapOptions`/`unmapOptions` list (`opt1,opt2=v`).
pub fn check_map(mounter: &str, list: &str) -> Result<()> {
    let what = format!("mapOptions ({mounter})");
    match mounter {
        "krbd" => check_list(&what, list, KRBD_MAP),
        "nbd" => check_list(&what, list, NBD_MAP),
        _ => check_list(&what, list, &[]),
    }
}

const MOUNT_COMMON: &[(&str, Val)] = &[
    ("ro", Val::None),
    ("noatime", Val::None),
    ("nodiratime", Val::None),
    ("relatime", Val::None),
    ("strictatime", Val::None),
    ("lazytime", Val::None),
    ("nosuid", Val::None),
    ("nodev", Val::None),
    ("noexec", Val::None),
    ("sync", Val::None),
    ("dirsync", Val::None),
    ("_netdev", Val::None),
];

const CEPH_KERNEL: &[(&str, Val)] = &[
    ("acl", Val::None),
    ("noacl", Val::None),
    ("rbytes", Val::None),
    ("norbytes", Val::None),
    ("dcache", Val::None),
    ("nodcache", Val::None),
    ("ino32", Val::None),
    ("noasyncreaddir", Val::None),
    ("nocrc", Val::None),
    ("wsync", Val::None),
    ("nowsync", Val::None),
    ("fsc", Val::None),
    ("nofsc", Val::None),
    ("noshare", Val::None),
    ("copyfrom", Val::None),
    ("nocopyfrom", Val::None),
    ("recover_session", Val::OneOf(&["no", "clean"])),
    ("rsize", Val::Size),
    ("wsize", Val::Size),
    ("rasize", Val::Size),
    ("readdir_max_entries", Val::Size),
    ("readdir_max_bytes", Val::Size),
    ("caps_max", Val::Size),
    ("caps_wanted_delay_min", Val::Size),
    ("caps_wanted_delay_max", Val::Size),
    ("mount_timeout", Val::Size),
    ("osdkeepalive", Val::Size),
    ("osd_idle_ttl", Val::Size),
    (
        "ms_mode",
        Val::OneOf(&["legacy", "crc", "secure", "prefer-crc", "prefer-secure"]),
    ),
    (
        "read_from_replica",
        Val::OneOf(&["no", "balance", "localize"]),
    ),
    ("snapdirname", Val::Word),
];

const CEPH_FUSE: &[(&str, Val)] = &[
    ("allow_other", Val::None),
    ("default_permissions", Val::None),
    ("big_writes", Val::None),
    ("max_read", Val::Size),
    ("max_write", Val::Size),
    // ceph-csi's examples carry it: FUSE request tracing in ceph-fuse's log
    ("debug", Val::None),
];

/// Checks `kernelMountOptions` (`kernel`) or `fuseMountOptions` (`fuse`).
pub fn check_cephfs_mount(mounter: &str, list: &str) -> Result<()> {
    let (what, extra) = match mounter {
        "kernel" => ("kernelMountOptions", CEPH_KERNEL),
        _ => ("fuseMountOptions", CEPH_FUSE),
    };
    let allowed: Vec<(&str, Val)> = MOUNT_COMMON.iter().chain(extra).copied().collect();
    check_list(what, list, &allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multibyte_after_a_dash_is_refused_not_a_panic() {
        // found by the node_options fuzz target: bytes 0x2d 0xb2
        for o in ["-\u{FFFD}", "-é", "-\u{FFFD}x", "-m\u{FFFD}"] {
            assert!(check_mkfs("ext4", o).is_err(), "{o:?}");
            assert!(check_mkfs("xfs", o).is_err(), "{o:?}");
        }
    }

    #[test]
    fn mkfs_allow_list() {
        for ok in [
            "-m0 -Enodiscard,lazy_itable_init=1,lazy_journal_init=1",
            "-m 1 -O ^has_journal -b 4096",
            "-E stride=16,stripe-width=64 -L data -T news -e remount-ro -q",
        ] {
            assert!(
                check_mkfs("ext4", ok).is_ok(),
                "{ok}: {:?}",
                check_mkfs("ext4", ok)
            );
        }
        assert_eq!(
            check_mkfs("ext4", " -m1  -O ^has_journal ").unwrap(),
            vec!["-m1", "-O", "^has_journal"]
        );
        for ok in [
            "-K",
            "-m crc=1,reflink=1 -i size=512",
            "-d agcount=4 -l size=64m -L x",
        ] {
            assert!(
                check_mkfs("xfs", ok).is_ok(),
                "{ok}: {:?}",
                check_mkfs("xfs", ok)
            );
        }
        for (fs, bad, named) in [
            ("ext4", "-d /var/lib/kubelet/pods", "-d"),
            ("ext4", "-m0 -d/etc", "-d"),
            ("ext4", "-l /etc/badblocks", "-l"),
            ("ext4", "-z /tmp/undo", "-z"),
            ("ext4", "-E root_owner=0:0", "root_owner"),
            ("ext4", "-E offset=4096", "offset"),
            ("ext4", "-F", "-F"),
            ("ext4", "-O ../x", "-O"),
            ("ext4", "-m", "-m"),
            ("xfs", "-p /etc/proto", "-p"),
            ("xfs", "-d name=/dev/sda", "name"),
            ("xfs", "-l logdev=/dev/sda", "logdev"),
            ("xfs", "-r rtdev=/dev/sda", "-r"),
            ("xfs", "-m crc=yes", "crc=yes"),
            ("xfs", "/dev/sda", "/dev/sda"),
        ] {
            let e = check_mkfs(fs, bad).unwrap_err().message();
            assert!(e.contains(named), "{bad}: {e}");
        }
    }

    #[test]
    fn map_allow_list() {
        assert!(check_map("krbd", "lock_on_read,queue_depth=1024,noudev").is_ok());
        assert!(check_map(
            "krbd",
            "crush_location=host:a|rack:b,read_from_replica=localize"
        )
        .is_ok());
        assert!(check_map("nbd", "try-netlink,reattach-timeout=300").is_ok());
        for (m, bad, named) in [
            ("nbd", "quiesce-hook=/tmp/evil", "quiesce-hook"),
            ("krbd", "queue_depth=x", "queue_depth=x"),
            ("krbd", "fsid=abc", "fsid"),
            ("krbd", "secret=AQB", "secret"),
            ("krbd", "ro", "ro"),
            ("fuse", "anything", "anything"),
        ] {
            let e = check_map(m, bad).unwrap_err().message();
            assert!(e.contains(named), "{bad}: {e}");
        }
    }

    #[test]
    fn cephfs_mount_allow_lists() {
        assert!(check_cephfs_mount(
            "kernel",
            "noatime,ms_mode=secure,rsize=4096,recover_session=clean"
        )
        .is_ok());
        assert!(check_cephfs_mount("fuse", "allow_other,noatime").is_ok());
        for (m, bad, named) in [
            ("kernel", "mds_namespace=other", "mds_namespace"),
            ("kernel", "secretfile=/etc/shadow", "secretfile"),
            ("kernel", "fsc=/x", "fsc=/x"),
            ("kernel", "context=system_u", "context"),
            ("fuse", "rw", "rw"),
            ("fuse", "fsname=x", "fsname"),
        ] {
            let e = check_cephfs_mount(m, bad).unwrap_err().message();
            assert!(e.contains(named), "{bad}: {e}");
        }
        assert!(is_size("64k") && is_size("4096") && !is_size("k") && !is_size("1kk"));
    }
}
