//! Node checks: kernel modules (rbd, nbd, ceph), krbd's image features, /dev/fuse and
//! loop devices, and the mounters the node plugin will pick.

use super::kubelet::{keysdir_check, kubelet_checks};
use super::report::{Check, Verdict};
use super::tools::tool_checks;
use super::DoctorArgs;
use std::path::{Path, PathBuf};

/// Whether a kernel feature is there now, can be loaded, or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ModState {
    /// Present now; the string is the evidence.
    Loaded(String),
    /// Not loaded, but `modprobe` finds it in modules.dep.
    Loadable,
    /// modules.dep was readable and does not list it.
    Missing,
    /// Not loaded, and the module index could not be read (the string says why).
    Unknown(String),
}

impl ModState {
    fn usable_now(&self) -> bool {
        matches!(self, ModState::Loaded(_))
    }
}

/// True when `modules.dep` (or `modules.builtin`) text lists module `name` (`rbd`,
/// `nbd`, `ceph`, `fuse`), compressed or not; `-` and `_` are the same in module names.
pub(crate) fn module_listed(index: &str, name: &str) -> bool {
    let want = name.replace('-', "_");
    index.lines().any(|line| {
        let path = line.split(':').next().unwrap_or("").trim();
        let file = path.rsplit('/').next().unwrap_or("");
        let Some(pos) = file.find(".ko") else {
            return false;
        };
        let rest = &file[pos + 3..];
        let ext_ok = rest.is_empty() || matches!(rest, ".xz" | ".gz" | ".zst");
        ext_ok && file[..pos].replace('-', "_") == want
    })
}

/// True when `/proc/filesystems` lists filesystem `fs`.
pub(crate) fn filesystems_list(text: &str, fs: &str) -> bool {
    text.lines()
        .any(|l| l.split_whitespace().last() == Some(fs))
}

fn module_state(loaded_evidence: Option<String>, name: &str) -> ModState {
    if let Some(e) = loaded_evidence {
        return ModState::Loaded(e);
    }
    let release = match std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        Ok(r) => r.trim().to_string(),
        Err(e) => return ModState::Unknown(format!("cannot read the kernel release: {e}")),
    };
    let dir = PathBuf::from("/lib/modules").join(&release);
    let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    if module_listed(&builtin, name) {
        // Built in but not visible: treat as present (the evidence check missed it).
        return ModState::Loaded(format!("built into kernel {release}"));
    }
    match std::fs::read_to_string(dir.join("modules.dep")) {
        Ok(dep) if module_listed(&dep, name) => ModState::Loadable,
        Ok(_) => ModState::Missing,
        Err(e) => ModState::Unknown(format!(
            "{} is not readable ({e})",
            dir.join("modules.dep").display()
        )),
    }
}

pub(super) fn exists(p: &str) -> bool {
    Path::new(p).exists()
}

fn is_char_device(p: &str) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p)
        .map(|m| m.file_type().is_char_device())
        .unwrap_or(false)
}

/// The RBD mounter `auto` picks, given what the kernel offers now (mirrors the node
/// plugin: krbd if the rbd module is loaded, else rbd-nbd if nbd is, else fuse).
pub(crate) fn rbd_auto_mounter(krbd: bool, nbd: bool) -> &'static str {
    if krbd {
        "krbd"
    } else if nbd {
        "rbd-nbd"
    } else {
        "fuse"
    }
}

/// Parses `/sys/bus/rbd/supported_features` (hex, e.g. `0x3d`).
pub(crate) fn parse_supported_features(text: &str) -> Option<u64> {
    let t = text.trim();
    let hex = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    u64::from_str_radix(hex, 16).ok()
}

/// Names of the features in `wanted` that `supported` lacks.
pub(crate) fn missing_features(wanted: u64, supported: u64) -> Vec<String> {
    rados::rbd::feature_names(wanted & !supported)
}

pub(super) struct NodeFacts {
    rbd: ModState,
    nbd: ModState,
    ceph: ModState,
    fuse_dev: bool,
    loop_control: bool,
    pub(super) rbd_mounter: &'static str,
    pub(super) cephfs_mounter: Option<&'static str>,
}

pub(super) fn node_checks(args: &DoctorArgs) -> Vec<Check> {
    let mut out = Vec::new();
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let facts = {
        let rbd = module_state(
            exists("/sys/bus/rbd").then(|| "/sys/bus/rbd exists".to_string()),
            "rbd",
        );
        let nbd = module_state(
            (exists("/sys/module/nbd") || exists("/sys/block/nbd0"))
                .then(|| "/sys/module/nbd exists".to_string()),
            "nbd",
        );
        let ceph = module_state(
            filesystems_list(&filesystems, "ceph")
                .then(|| "/proc/filesystems lists ceph".to_string()),
            "ceph",
        );
        let fuse_dev = is_char_device("/dev/fuse");
        let loop_control = exists("/dev/loop-control");
        let rbd_mounter = rbd_auto_mounter(rbd.usable_now(), nbd.usable_now());
        // The CephFS node loads the ceph module itself when it can, else uses ceph-fuse.
        let cephfs_mounter = if ceph.usable_now() || ceph == ModState::Loadable {
            Some("kernel")
        } else if fuse_dev {
            Some("fuse")
        } else {
            None
        };
        NodeFacts {
            rbd,
            nbd,
            ceph,
            fuse_dev,
            loop_control,
            rbd_mounter,
            cephfs_mounter,
        }
    };

    out.push(module_check(
        "kernel.rbd",
        "kernel rbd module (mounter krbd)",
        &facts.rbd,
        "rbd",
        "without it the krbd mounter cannot map images; mounter auto falls back to rbd-nbd or fuse",
    ));
    out.push(krbd_features_check(args, &facts));
    out.push(module_check(
        "kernel.nbd",
        "kernel nbd module (mounter rbd-nbd)",
        &facts.nbd,
        "nbd",
        "without it the rbd-nbd mounter cannot attach images",
    ));
    out.push(module_check(
        "kernel.ceph",
        "kernel ceph filesystem (CephFS mounter kernel)",
        &facts.ceph,
        "ceph",
        "without it CephFS volumes are mounted with ceph-fuse, which is slower and restarts with the plugin",
    ));
    out.push(if facts.fuse_dev {
        Check::ok("dev.fuse", "/dev/fuse is a character device (fuse mounters usable)")
    } else {
        let only_way = facts.rbd_mounter == "fuse";
        Check::problem(
            "dev.fuse",
            if only_way { Verdict::Fail } else { Verdict::Warn },
            "/dev/fuse is missing",
            if only_way {
                "the kernel has neither rbd nor nbd loaded, so RBD volumes need the fuse mounter, which needs /dev/fuse; ceph-fuse needs it too"
            } else {
                "the RBD fuse mounter and ceph-fuse need /dev/fuse"
            },
            "load the module on the host (modprobe fuse) and mount the host's /dev into the plugin container (hostPath /dev)",
        )
    });
    out.push(if facts.loop_control {
        Check::ok("dev.loop", "/dev/loop-control exists (loop devices for the fuse mounter)")
    } else {
        Check::problem(
            "dev.loop",
            if facts.rbd_mounter == "fuse" {
                Verdict::Fail
            } else {
                Verdict::Warn
            },
            "/dev/loop-control is missing",
            "the RBD fuse mounter puts a loop device on the exported image",
            "load the loop module on the host (modprobe loop) and mount the host's /dev into the plugin container",
        )
    });
    out.push(rbd_mounter_check(&facts));
    out.push(match facts.cephfs_mounter {
        Some(m) => Check::ok(
            "mounter.cephfs",
            format!("CephFS volumes without a mounter parameter use {m}"),
        ),
        None => Check::problem(
            "mounter.cephfs",
            Verdict::Fail,
            "no CephFS mounter can work on this node",
            "the kernel has no ceph filesystem and /dev/fuse is missing for ceph-fuse",
            "load the ceph module on the host (modprobe ceph) or provide /dev/fuse",
        ),
    });
    out.extend(tool_checks(&facts));
    out.push(keysdir_check(&args.keysdir));
    out.extend(kubelet_checks());
    out
}

fn module_check(id: &str, what: &str, state: &ModState, module: &str, why: &str) -> Check {
    match state {
        ModState::Loaded(evidence) => Check::ok(id, format!("{what}: present ({evidence})")),
        ModState::Loadable => Check::problem(
            id,
            Verdict::Warn,
            format!("{what}: not loaded, but the kernel has it as a module"),
            format!("{why}; mounter auto only uses what is loaded"),
            format!(
                "on the host: modprobe {module} && echo {module} > /etc/modules-load.d/{module}.conf"
            ),
        ),
        ModState::Missing => Check::problem(
            id,
            Verdict::Warn,
            format!("{what}: not available in this kernel"),
            why.to_string(),
            format!(
                "install a kernel that ships the {module} module (e.g. linux-image-amd64 on Debian; some cloud kernels omit it), or use another mounter"
            ),
        ),
        ModState::Unknown(reason) => Check::problem(
            id,
            Verdict::Warn,
            format!("{what}: not loaded, and whether it can be loaded is unknown: {reason}"),
            why.to_string(),
            format!(
                "mount the host's /lib/modules read-only into the plugin container, or run modprobe {module} on the host"
            ),
        ),
    }
}

fn krbd_features_check(args: &DoctorArgs, facts: &NodeFacts) -> Check {
    let id = "kernel.rbd.features";
    let list = args.image_features.as_deref().unwrap_or("layering");
    let wanted = match rados::rbd::parse_features(list) {
        Ok(w) => w,
        Err(e) => {
            return Check::problem(
                id,
                Verdict::Fail,
                format!("--image-features {list:?} is not a feature list"),
                e.to_string(),
                "use names from: layering, exclusive-lock, object-map, fast-diff, deep-flatten, journaling",
            )
        }
    };
    if !facts.rbd.usable_now() {
        return Check::skip(
            id,
            "the rbd module is not loaded, so its supported features cannot be read",
        );
    }
    let text = match std::fs::read_to_string(krbd_supported_features_path()) {
        Ok(t) => t,
        Err(e) => {
            return Check::problem(
                id,
                Verdict::Warn,
                format!("cannot read {}: {e}", krbd_supported_features_path()),
                "kernels before 4.11 do not publish their features; krbd maps of images with features the kernel lacks fail with 'feature set mismatch'",
                "use imageFeatures: layering, or the rbd-nbd/fuse mounter",
            )
        }
    };
    let Some(supported) = parse_supported_features(&text) else {
        return Check::problem(
            id,
            Verdict::Warn,
            format!(
                "{} holds {:?}, not a hex feature mask",
                krbd_supported_features_path(),
                text.trim()
            ),
            "the driver cannot check image features before mapping",
            "report this kernel version to the ferroceph maintainers",
        );
    };
    let missing = missing_features(wanted, supported);
    let have = rados::rbd::features_to_string(supported);
    if missing.is_empty() {
        Check::ok(
            id,
            format!("krbd supports imageFeatures {list} (kernel supports: {have})"),
        )
    } else {
        Check::problem(
            id,
            if facts.rbd_mounter == "krbd" {
                Verdict::Fail
            } else {
                Verdict::Warn
            },
            format!(
                "krbd on this kernel lacks {} of imageFeatures {list} (kernel supports: {have})",
                missing.join(", ")
            ),
            "mapping such an image with krbd fails (\"feature set mismatch\"), so the volume never mounts",
            format!(
                "drop {} from the StorageClass imageFeatures, or set mounter: rbd-nbd (or fuse) in the StorageClass, or upgrade the node kernel",
                missing.join(",")
            ),
        )
    }
}

fn krbd_supported_features_path() -> &'static str {
    "/sys/bus/rbd/supported_features"
}

fn rbd_mounter_check(facts: &NodeFacts) -> Check {
    let id = "mounter.rbd";
    match facts.rbd_mounter {
        "krbd" => Check::ok(id, "RBD volumes without a mounter parameter use krbd"),
        "rbd-nbd" => Check::problem(
            id,
            Verdict::Warn,
            "RBD volumes without a mounter parameter use rbd-nbd (no kernel rbd module loaded)",
            "krbd is the fastest mounter; rbd-nbd runs in user space",
            if facts.rbd == ModState::Loadable {
                "on the host: modprobe rbd (and add it to /etc/modules-load.d) so krbd is used"
            } else {
                "use a kernel with the rbd module for krbd"
            },
        ),
        _ if !facts.fuse_dev => Check::problem(
            id,
            Verdict::Fail,
            "no RBD mounter can work on this node",
            "neither the rbd nor the nbd kernel module is loaded and /dev/fuse is missing",
            "on the host: modprobe rbd (or nbd, or fuse), then restart the node plugin",
        ),
        _ => Check::problem(
            id,
            Verdict::Warn,
            "RBD volumes without a mounter parameter use fuse (neither rbd nor nbd loaded)",
            "the fuse mounter works everywhere but is slower than krbd and depends on the plugin process",
            match (&facts.rbd, &facts.nbd) {
                (ModState::Loadable, _) => "on the host: modprobe rbd (and add it to /etc/modules-load.d)",
                (_, ModState::Loadable) => "on the host: modprobe nbd (and add it to /etc/modules-load.d)",
                _ => "use a kernel with the rbd module for krbd",
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_dep_lookup() {
        let dep = "kernel/drivers/block/rbd.ko.xz: kernel/net/ceph/libceph.ko.xz\n\
                   kernel/drivers/block/nbd.ko:\n\
                   kernel/fs/ceph/ceph.ko.zst: kernel/net/ceph/libceph.ko.zst kernel/fs/netfs/netfs.ko.zst\n\
                   kernel/fs/fuse/cuse.ko:\n";
        assert!(module_listed(dep, "rbd"));
        assert!(module_listed(dep, "nbd"));
        assert!(module_listed(dep, "ceph"));
        assert!(!module_listed(dep, "libceph_x"));
        assert!(
            !module_listed(dep, "libceph"),
            "only the module's own file counts"
        );
        assert!(!module_listed(dep, "fuse"));
        assert!(!module_listed("", "rbd"));
        assert!(module_listed("kernel/fs/fuse/fuse.ko\n", "fuse"));
        assert!(!module_listed("kernel/x/rbd.kox:\n", "rbd"));
    }

    #[test]
    fn proc_filesystems() {
        let t = "nodev\tsysfs\nnodev\ttmpfs\n\text4\nnodev\tceph\nfuseblk\nnodev\tfuse\n";
        assert!(filesystems_list(t, "ceph"));
        assert!(filesystems_list(t, "fuse"));
        assert!(!filesystems_list(t, "xfs"));
        assert!(!filesystems_list("nodev\tcephx\n", "ceph"));
    }

    #[test]
    fn auto_mounter_matches_the_node_plugin() {
        assert_eq!(rbd_auto_mounter(true, true), "krbd");
        assert_eq!(rbd_auto_mounter(false, true), "rbd-nbd");
        assert_eq!(rbd_auto_mounter(false, false), "fuse");
    }

    #[test]
    fn krbd_features() {
        assert_eq!(parse_supported_features("0x3d\n"), Some(0x3d));
        assert_eq!(parse_supported_features("1"), Some(1));
        assert_eq!(parse_supported_features("zz"), None);
        let wanted = rados::rbd::parse_features("layering,exclusive-lock,object-map").unwrap();
        // layering + exclusive-lock only (0x1 | 0x4).
        assert_eq!(
            missing_features(wanted, 0x5),
            vec!["object-map".to_string()]
        );
        assert!(missing_features(wanted, 0x3d).is_empty());
    }
}
