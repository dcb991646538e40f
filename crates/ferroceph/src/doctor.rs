//! `ferroceph doctor`: checks a node (kernel modules, /dev/fuse, tools, keys directory,
//! kubelet mount propagation) and the clusters of the cluster map (monitors reachable, and
//! with `--secrets-file` the user's key and caps), and prints one line per check with, for
//! every problem, why it matters and the exact fix. Exit code 0 when nothing failed
//! (warnings allowed), 1 otherwise. `--json` prints the same report as one JSON object.
//!
//! With `--pool` it also checks the RBD journal of `--instanceid` against the pool's images
//! (orphaned journal keys, orphaned `<prefix><uuid>` images, per-volume objects without a
//! directory key, and with `--pv-json` volumes no PV references); `--fix` removes the
//! orphans after printing exactly what it will remove, and changes nothing else.
//!
//! Keys are read from the secrets file only to connect; no message carries one.

use crate::config::{ClusterInfo, ClusterMap};
use crate::duration::parse_duration;
use clap::{Args, ValueEnum};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod fix;
mod journal;

/// What the machine runs: node checks need the node plugin's view of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Node and cluster checks.
    All,
    /// Kernel, tools, keys directory, kubelet directories, cluster map and monitors.
    Node,
    /// Cluster map, monitors and (with --secrets-file) the Ceph user.
    Controller,
}

#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Which checks to run: node (kernel, tools, keys dir), controller (cluster only), all.
    #[arg(long, value_enum, default_value = "all")]
    pub role: Role,

    /// Cluster map (ceph-csi's config.json).
    #[arg(long, default_value = "/etc/ceph-csi-config/config.json")]
    pub configpath: PathBuf,

    /// The driver's --keysdir: must be writable and should be memory-backed.
    #[arg(long, default_value = "/tmp/csi/keys")]
    pub keysdir: PathBuf,

    /// The StorageClass imageFeatures to check against the kernel's krbd support
    /// (default: layering, ceph-csi's default).
    #[arg(long)]
    pub image_features: Option<String>,

    /// CSI secrets (JSON object or KEY=VALUE lines) with userID/userKey and/or
    /// adminID/adminKey: connect with them, report the fsid and try the pool.
    #[arg(long)]
    pub secrets_file: Option<PathBuf>,

    /// Cluster of the map to connect to with --secrets-file (default: the only one).
    #[arg(long)]
    pub clusterid: Option<String>,

    /// Pool the user must be able to list (RBD image pool), tried with --secrets-file.
    #[arg(long)]
    pub pool: Option<String>,

    /// Deadline of each network check (TCP connect to a monitor, Ceph connection).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,

    /// Driver instance (its --instanceid) whose RADOS journal in --pool is checked:
    /// csi.volumes.<id> and csi.snaps.<id>.
    #[arg(long, default_value = "default")]
    pub instanceid: String,

    /// The output of `kubectl get pv -o json`: report journal volumes no PV references.
    #[arg(long)]
    pub pv_json: Option<PathBuf>,

    /// Only images named <prefix><uuid> are volume images (StorageClass volumeNamePrefix).
    #[arg(long, default_value = "csi-vol-")]
    pub volume_name_prefix: String,

    /// Only images named <prefix><uuid> are snapshot images (snapshotNamePrefix).
    #[arg(long, default_value = "csi-snap-")]
    pub snapshot_name_prefix: String,

    /// Remove the orphans found in the journal check (orphaned journal keys, orphaned
    /// images without watchers, per-volume objects without a directory key), after
    /// printing exactly what will be removed. Nothing else is ever changed.
    #[arg(long)]
    pub fix: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Skip,
    Warn,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => " OK ",
            Status::Skip => "SKIP",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One finding: what was checked, what was found, and for problems why and how to fix it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub id: String,
    pub status: Status,
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn new(id: impl Into<String>, status: Status, summary: impl Into<String>) -> Check {
        Check {
            id: id.into(),
            status,
            summary: summary.into(),
            why: None,
            fix: None,
        }
    }
    fn ok(id: impl Into<String>, summary: impl Into<String>) -> Check {
        Check::new(id, Status::Ok, summary)
    }
    fn skip(id: impl Into<String>, summary: impl Into<String>) -> Check {
        Check::new(id, Status::Skip, summary)
    }
    fn problem(
        id: impl Into<String>,
        status: Status,
        summary: impl Into<String>,
        why: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            id: id.into(),
            status,
            summary: summary.into(),
            why: Some(why.into()),
            fix: Some(fix.into()),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    pub ok: bool,
    pub failures: usize,
    pub warnings: usize,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn new(checks: Vec<Check>) -> Report {
        let failures = checks.iter().filter(|c| c.status == Status::Fail).count();
        let warnings = checks.iter().filter(|c| c.status == Status::Warn).count();
        Report {
            ok: failures == 0,
            failures,
            warnings,
            checks,
        }
    }

    pub fn exit_code(&self) -> i32 {
        i32::from(!self.ok)
    }

    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!("[{}] {}: {}\n", c.status.label(), c.id, c.summary));
            if let Some(why) = &c.why {
                out.push_str(&format!("       why: {why}\n"));
            }
            if let Some(fix) = &c.fix {
                out.push_str(&format!("       fix: {fix}\n"));
            }
        }
        out.push_str(&match (self.failures, self.warnings) {
            (0, 0) => "\nno problems found\n".to_string(),
            (0, w) => format!("\n{w} warning(s), no failures\n"),
            (f, w) => format!("\n{f} failure(s), {w} warning(s): apply the fixes above\n"),
        });
        out
    }
}

/// Entry point of the subcommand; the checks block (sockets, librados), so they run on a
/// blocking thread.
pub async fn run(args: DoctorArgs) -> i32 {
    let json = args.json;
    let report = match tokio::task::spawn_blocking(move || diagnose(&args)).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferroceph doctor: the checks failed to run: {e}");
            return 1;
        }
    };
    let text = if json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => s + "\n",
            Err(e) => {
                eprintln!("ferroceph doctor: cannot encode the report: {e}");
                return 1;
            }
        }
    } else {
        report.render_text()
    };
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
    report.exit_code()
}

/// Runs every check of `args.role` and collects the findings.
pub fn diagnose(args: &DoctorArgs) -> Report {
    let mut checks = Vec::new();
    if args.role != Role::Controller {
        checks.extend(node_checks(args));
    }
    checks.extend(cluster_checks(args));
    Report::new(checks)
}

// ---------------------------------------------------------------------------------------
// Node: kernel modules, devices, mounters
// ---------------------------------------------------------------------------------------

/// Whether a kernel feature is there now, can be loaded, or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModState {
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
pub fn module_listed(index: &str, name: &str) -> bool {
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
pub fn filesystems_list(text: &str, fs: &str) -> bool {
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

fn exists(p: &str) -> bool {
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
pub fn rbd_auto_mounter(krbd: bool, nbd: bool) -> &'static str {
    if krbd {
        "krbd"
    } else if nbd {
        "rbd-nbd"
    } else {
        "fuse"
    }
}

/// Parses `/sys/bus/rbd/supported_features` (hex, e.g. `0x3d`).
pub fn parse_supported_features(text: &str) -> Option<u64> {
    let t = text.trim();
    let hex = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    u64::from_str_radix(hex, 16).ok()
}

/// Names of the features in `wanted` that `supported` lacks.
pub fn missing_features(wanted: u64, supported: u64) -> Vec<String> {
    rados::rbd::feature_names(wanted & !supported)
}

struct NodeFacts {
    rbd: ModState,
    nbd: ModState,
    ceph: ModState,
    fuse_dev: bool,
    loop_control: bool,
    rbd_mounter: &'static str,
    cephfs_mounter: Option<&'static str>,
}

fn node_checks(args: &DoctorArgs) -> Vec<Check> {
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
            if only_way { Status::Fail } else { Status::Warn },
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
                Status::Fail
            } else {
                Status::Warn
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
            Status::Fail,
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
            Status::Warn,
            format!("{what}: not loaded, but the kernel has it as a module"),
            format!("{why}; mounter auto only uses what is loaded"),
            format!(
                "on the host: modprobe {module} && echo {module} > /etc/modules-load.d/{module}.conf"
            ),
        ),
        ModState::Missing => Check::problem(
            id,
            Status::Warn,
            format!("{what}: not available in this kernel"),
            why.to_string(),
            format!(
                "install a kernel that ships the {module} module (e.g. linux-image-amd64 on Debian; some cloud kernels omit it), or use another mounter"
            ),
        ),
        ModState::Unknown(reason) => Check::problem(
            id,
            Status::Warn,
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
                Status::Fail,
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
                Status::Warn,
                format!("cannot read {}: {e}", krbd_supported_features_path()),
                "kernels before 4.11 do not publish their features; krbd maps of images with features the kernel lacks fail with 'feature set mismatch'",
                "use imageFeatures: layering, or the rbd-nbd/fuse mounter",
            )
        }
    };
    let Some(supported) = parse_supported_features(&text) else {
        return Check::problem(
            id,
            Status::Warn,
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
                Status::Fail
            } else {
                Status::Warn
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
            Status::Warn,
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
            Status::Fail,
            "no RBD mounter can work on this node",
            "neither the rbd nor the nbd kernel module is loaded and /dev/fuse is missing",
            "on the host: modprobe rbd (or nbd, or fuse), then restart the node plugin",
        ),
        _ => Check::problem(
            id,
            Status::Warn,
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

// ---------------------------------------------------------------------------------------
// Node: tools
// ---------------------------------------------------------------------------------------

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
fn tool_severity(name: &str, rbd_mounter: &str, cephfs_mounter: Option<&str>) -> Status {
    match name {
        "mount" | "umount" | "blkid" | "mkfs.ext4" | "resize2fs" => Status::Fail,
        "rbd" if matches!(rbd_mounter, "krbd" | "rbd-nbd") => Status::Fail,
        "rbd-nbd" if rbd_mounter == "rbd-nbd" => Status::Fail,
        "losetup" if rbd_mounter == "fuse" => Status::Fail,
        "ceph-fuse" if cephfs_mounter == Some("fuse") => Status::Fail,
        "mount.ceph" if cephfs_mounter == Some("kernel") => Status::Fail,
        _ => Status::Warn,
    }
}

/// Finds an executable called `name` in `path` (a PATH value) or the sbin directories
/// mount(8) searches for helpers.
pub fn find_tool(name: &str, path: &str) -> Option<PathBuf> {
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

fn tool_checks(facts: &NodeFacts) -> Vec<Check> {
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

// ---------------------------------------------------------------------------------------
// Node: keys directory
// ---------------------------------------------------------------------------------------

const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// A readable name for a statfs filesystem magic.
pub fn fs_name(magic: i64) -> String {
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

pub fn memory_backed(magic: i64) -> bool {
    magic == TMPFS_MAGIC || magic == RAMFS_MAGIC
}

fn keysdir_check(dir: &Path) -> Check {
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
            Status::Fail,
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
            Status::Fail,
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
                Status::Warn,
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
            Status::Warn,
            format!("{place} is writable but on {}", fs_name(magic)),
            "key files live for a second, but on disk-backed storage their blocks can outlive the file",
            "mount a memory-backed emptyDir at the --keysdir path (emptyDir: {medium: Memory}), as the ferroceph manifests do",
        )
    }
}

// ---------------------------------------------------------------------------------------
// Node: kubelet directories and mount propagation
// ---------------------------------------------------------------------------------------

use crate::node::mount::{parse_mountinfo, MountEntry};

/// The mount that contains `path` (the last, longest matching mount point wins, as the
/// kernel stacks later mounts on top).
pub fn mount_of<'a>(entries: &'a [MountEntry], path: &str) -> Option<&'a MountEntry> {
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

fn kubelet_checks() -> Vec<Check> {
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
                    Status::Fail,
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
                    Status::Fail,
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
                    Status::Warn,
                    format!("cannot find the mount holding {dir} in /proc/self/mountinfo"),
                    "mount propagation cannot be verified",
                    "check that the volumeMount has mountPropagation: Bidirectional",
                ),
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Cluster: map, monitors, credentials, pool
// ---------------------------------------------------------------------------------------

/// One monitor endpoint from the cluster map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Splits one `monitors` entry into endpoints. Accepts `host`, `host:port`, `[v6]:port`,
/// `v1:`/`v2:` prefixes, `/nonce` suffixes and addrvecs `[v2:a:3300,v1:a:6789]`, and
/// comma-separated lists. Without a port: 3300 for `v2:`, 6789 otherwise.
pub fn parse_monitor(entry: &str) -> Result<Vec<Endpoint>, String> {
    let s = entry.trim();
    let inner = match s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        Some(i) if i.starts_with("v1:") || i.starts_with("v2:") => i,
        _ => s,
    };
    let parts: Vec<&str> = inner
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        return Err(format!("{entry:?} names no monitor"));
    }
    parts.into_iter().map(parse_one_monitor).collect()
}

fn parse_one_monitor(a: &str) -> Result<Endpoint, String> {
    let (a, default_port) = if let Some(r) = a.strip_prefix("v2:") {
        (r, 3300)
    } else if let Some(r) = a.strip_prefix("v1:") {
        (r, 6789)
    } else {
        (a, 6789)
    };
    // A `/nonce` suffix (addrs as `ceph mon dump` prints them).
    let a = match a.rsplit_once('/') {
        Some((head, nonce)) if nonce.bytes().all(|c| c.is_ascii_digit()) => head,
        _ => a,
    };
    let bad = || format!("{a:?} is not host, host:port or [ipv6]:port");
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let (h, tail) = rest.split_once(']').ok_or_else(bad)?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse::<u16>().map_err(|_| bad())?,
            None if tail.is_empty() => default_port,
            None => return Err(bad()),
        };
        (h.to_string(), port)
    } else if a.matches(':').count() > 1 {
        (a.to_string(), default_port)
    } else if let Some((h, p)) = a.split_once(':') {
        (h.to_string(), p.parse::<u16>().map_err(|_| bad())?)
    } else {
        (a.to_string(), default_port)
    };
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok(Endpoint { host, port })
}

/// What answered on a monitor port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A Ceph messenger banner (`ceph v027` = msgr1, `ceph v2` = msgr2).
    Ceph(&'static str),
    /// The port is open but said nothing within the deadline.
    Silent,
    /// Something else answered.
    NotCeph,
    /// Could not connect (the reason).
    Down(String),
}

/// Classifies the first bytes a monitor port sends.
pub fn classify_banner(bytes: &[u8]) -> Probe {
    if bytes.starts_with(b"ceph v2") {
        Probe::Ceph("msgr2")
    } else if bytes.starts_with(b"ceph v027") {
        Probe::Ceph("msgr1")
    } else if bytes.is_empty() {
        Probe::Silent
    } else {
        Probe::NotCeph
    }
}

fn resolve(ep: &Endpoint, timeout: Duration) -> Result<Vec<SocketAddr>, String> {
    let target = (ep.host.clone(), ep.port);
    let (tx, rx) = std::sync::mpsc::channel();
    // getaddrinfo has no deadline of its own.
    std::thread::spawn(move || {
        let _ = tx.send(target.to_socket_addrs().map(|a| a.collect::<Vec<_>>()));
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(v)) if !v.is_empty() => Ok(v),
        Ok(Ok(_)) => Err(format!("{} resolves to no address", ep.host)),
        Ok(Err(e)) => Err(format!("cannot resolve {}: {e}", ep.host)),
        Err(_) => Err(format!(
            "resolving {} took longer than {:.1}s",
            ep.host,
            timeout.as_secs_f64()
        )),
    }
}

fn probe_endpoint(ep: &Endpoint, timeout: Duration) -> (Probe, Option<SocketAddr>) {
    let addrs = match resolve(ep, timeout) {
        Ok(a) => a,
        Err(e) => return (Probe::Down(e), None),
    };
    let mut last = String::new();
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(mut s) => {
                let _ = s.set_read_timeout(Some(timeout.min(Duration::from_secs(2))));
                let mut buf = [0u8; 9];
                let mut got = 0;
                while got < buf.len() {
                    match s.read(&mut buf[got..]) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                }
                return (classify_banner(&buf[..got]), Some(addr));
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    (Probe::Down(last), None)
}

/// Endpoints listed more than once (same host and port), in first-seen order.
pub fn duplicate_endpoints(eps: &[Endpoint]) -> Vec<Endpoint> {
    let mut seen = std::collections::HashSet::new();
    let mut dups: Vec<Endpoint> = Vec::new();
    for e in eps {
        if !seen.insert((e.host.to_ascii_lowercase(), e.port)) && !dups.contains(e) {
            dups.push(e.clone());
        }
    }
    dups
}

/// The cluster's monitors as librados should get them: each endpoint once. librados
/// aborts the process (ceph_assert in MonMap::add) when an address repeats.
pub fn unique_monitors(monitors: &[String]) -> Vec<String> {
    let mut eps = Vec::new();
    for m in monitors {
        match parse_monitor(m) {
            Ok(v) => eps.extend(v),
            Err(_) => return monitors.to_vec(),
        }
    }
    let mut out: Vec<String> = Vec::new();
    for e in eps {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

fn cluster_checks(args: &DoctorArgs) -> Vec<Check> {
    let mut out = Vec::new();
    let map = ClusterMap::new(&args.configpath);
    let clusters = match map.clusters() {
        Ok(c) => c,
        Err(e) => {
            out.push(Check::problem(
                "config",
                Status::Fail,
                e.to_string(),
                "every RPC looks up its clusterID in this map to find the monitors",
                format!(
                    "fill the cluster map ConfigMap (ferroceph-rbd-config / ferroceph-cephfs-config in deploy/kubernetes) with config.json = [{{\"clusterID\": \"<fsid>\", \"monitors\": [\"<mon-ip>:6789\"]}}] and mount it at {} (or pass --configpath)",
                    args.configpath.parent().map(|p| p.display().to_string()).unwrap_or_default()
                ),
            ));
            return out;
        }
    };
    if clusters.is_empty() {
        out.push(Check::problem(
            "config",
            Status::Fail,
            format!("{} lists no cluster", args.configpath.display()),
            "StorageClasses name a clusterID that must be in this map",
            "add an entry {\"clusterID\": \"<fsid>\", \"monitors\": [\"<mon-ip>:6789\"]} to config.json",
        ));
        return out;
    }
    out.push(Check::ok(
        "config",
        format!(
            "{} parses: {} cluster(s): {}",
            args.configpath.display(),
            clusters.len(),
            clusters
                .iter()
                .map(|c| c.cluster_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ));
    for c in clusters.iter() {
        out.push(monitors_check(c, args.timeout));
    }
    if let Some(path) = &args.secrets_file {
        out.extend(credential_checks(args, path, &clusters));
    } else {
        out.push(Check::skip(
            "ceph.auth",
            "no --secrets-file given: the Ceph user and its caps were not tried",
        ));
    }
    out
}

fn monitors_check(c: &ClusterInfo, timeout: Duration) -> Check {
    let id = format!("monitors.{}", c.cluster_id);
    if c.monitors.is_empty() {
        return Check::problem(
            id,
            Status::Fail,
            format!("clusterID {:?} lists no monitors", c.cluster_id),
            "the driver cannot reach a cluster without monitors",
            "add \"monitors\": [\"<mon-ip>:6789\", ...] to this entry of config.json (ceph mon dump shows them)",
        );
    }
    let mut endpoints = Vec::new();
    let mut bad = Vec::new();
    for m in &c.monitors {
        match parse_monitor(m) {
            Ok(eps) => endpoints.extend(eps),
            Err(e) => bad.push(e),
        }
    }
    if !bad.is_empty() {
        return Check::problem(
            id,
            Status::Fail,
            format!("unparsable monitor address: {}", bad.join("; ")),
            "librados cannot connect to an address it cannot parse",
            "write monitors as \"10.0.0.1:6789\" (or \"[v2:10.0.0.1:3300,v1:10.0.0.1:6789]\")",
        );
    }
    let dups = duplicate_endpoints(&endpoints);
    if !dups.is_empty() {
        let list = dups
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        return Check::problem(
            id,
            Status::Fail,
            format!("monitor(s) listed more than once: {list}"),
            "librados aborts the whole process (ceph_assert in MonMap::add) when a monitor address repeats: the driver would crash on its first call for this cluster",
            "list each monitor once in this entry of config.json (an addrvec [v2:ip:3300,v1:ip:6789] already covers both ports of a monitor)",
        );
    }
    let probed: Vec<(Endpoint, (Probe, Option<SocketAddr>))> = std::thread::scope(|s| {
        let handles: Vec<_> = endpoints
            .iter()
            .map(|ep| s.spawn(move || (ep.clone(), probe_endpoint(ep, timeout))))
            .collect();
        handles
            .into_iter()
            .zip(endpoints.iter())
            .map(|(h, ep)| {
                h.join()
                    .unwrap_or_else(|_| (ep.clone(), (Probe::Down("probe panicked".into()), None)))
            })
            .collect()
    });
    // Two names for one address crash librados just the same.
    let mut by_addr: BTreeMap<SocketAddr, Vec<String>> = BTreeMap::new();
    for (ep, (_, addr)) in &probed {
        if let Some(a) = addr {
            by_addr.entry(*a).or_default().push(ep.to_string());
        }
    }
    if let Some((addr, names)) = by_addr.iter().find(|(_, n)| n.len() > 1) {
        return Check::problem(
            id,
            Status::Fail,
            format!("{} all reach {addr}", names.join(" and ")),
            "librados aborts the whole process (ceph_assert in MonMap::add) when a monitor address repeats: the driver would crash on its first call for this cluster",
            "list each monitor once in this entry of config.json",
        );
    }
    let results: Vec<(Endpoint, Probe)> = probed.into_iter().map(|(e, (p, _))| (e, p)).collect();
    let describe = |(ep, p): &(Endpoint, Probe)| match p {
        Probe::Ceph(v) => format!("{ep} ok ({v})"),
        Probe::Silent => format!("{ep} open (no banner)"),
        Probe::NotCeph => format!("{ep} answers, but not as a Ceph monitor"),
        Probe::Down(e) => format!("{ep} unreachable ({e})"),
    };
    let up = results
        .iter()
        .filter(|(_, p)| matches!(p, Probe::Ceph(_) | Probe::Silent))
        .count();
    let text = results.iter().map(describe).collect::<Vec<_>>().join("; ");
    let fix = "check the addresses against `ceph mon dump`, and that the node and the controller pods can reach them (firewall, hostNetwork for kernel clients); 6789 is msgr1 and 3300 msgr2";
    if up == results.len() {
        Check::ok(
            id,
            format!("{up}/{} monitor(s) reachable: {text}", results.len()),
        )
    } else if up == 0 {
        Check::problem(
            id,
            Status::Fail,
            format!("no monitor reachable: {text}"),
            format!(
                "every call for clusterID {:?} would time out (DeadlineExceeded) waiting for a monitor",
                c.cluster_id
            ),
            fix,
        )
    } else {
        Check::problem(
            id,
            Status::Warn,
            format!("{up}/{} monitor(s) reachable: {text}", results.len()),
            "clients retry other monitors, but every connection that tries a dead one first is slower",
            fix,
        )
    }
}

/// Parses a secrets file: a JSON object of strings, or KEY=VALUE lines (`#` comments).
/// Errors never quote the file's content.
pub fn parse_secrets(text: &str) -> Result<BTreeMap<String, String>, String> {
    if let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(text) {
        return m
            .into_iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => Ok((k, s)),
                _ => Err(format!("the value of {k:?} is not a string")),
            })
            .collect();
    }
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {} is neither JSON nor KEY=VALUE", n + 1))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// The (role, user, key) pairs in CSI secrets: userID/userKey, adminID/adminKey.
pub fn credentials(secrets: &BTreeMap<String, String>) -> Vec<(&'static str, String, String)> {
    [
        ("user", "userID", "userKey"),
        ("admin", "adminID", "adminKey"),
    ]
    .iter()
    .filter_map(|(role, id, key)| {
        let u = secrets.get(*id)?.trim();
        let k = secrets.get(*key)?.trim();
        (!u.is_empty() && !k.is_empty()).then(|| (*role, u.to_string(), k.to_string()))
    })
    .collect()
}

fn looks_like_fsid(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn credential_checks(args: &DoctorArgs, path: &Path, clusters: &[ClusterInfo]) -> Vec<Check> {
    let mut out = Vec::new();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            out.push(Check::problem(
                "ceph.auth",
                Status::Fail,
                format!("cannot read {}: {e}", path.display()),
                "the credentials to try are in this file",
                "pass a readable file with userID/userKey (JSON or KEY=VALUE lines)",
            ));
            return out;
        }
    };
    let secrets = match parse_secrets(&text) {
        Ok(s) => s,
        Err(e) => {
            out.push(Check::problem(
                "ceph.auth",
                Status::Fail,
                format!("{}: {e}", path.display()),
                "the credentials to try are in this file",
                "write it as {\"userID\": \"...\", \"userKey\": \"...\"} or userID=... / userKey=... lines",
            ));
            return out;
        }
    };
    let creds = credentials(&secrets);
    if creds.is_empty() {
        out.push(Check::problem(
            "ceph.auth",
            Status::Fail,
            format!(
                "{} has neither userID+userKey nor adminID+adminKey",
                path.display()
            ),
            "these are the keys ceph-csi secrets carry (RBD: userID/userKey; CephFS: adminID/adminKey)",
            "add userID (without client.) and userKey (ceph auth get-key client.<id>)",
        ));
        return out;
    }
    let cluster = match &args.clusterid {
        Some(id) => clusters.iter().find(|c| &c.cluster_id == id),
        None if clusters.len() == 1 => clusters.first(),
        None => {
            out.push(Check::problem(
                "ceph.auth",
                Status::Fail,
                format!(
                    "the map has {} clusters: which one should the secrets be tried on?",
                    clusters.len()
                ),
                "each clusterID has its own users",
                "pass --clusterid <clusterID>",
            ));
            return out;
        }
    };
    let Some(cluster) = cluster else {
        out.push(Check::problem(
            "ceph.auth",
            Status::Fail,
            format!(
                "clusterID {:?} is not in {}",
                args.clusterid.as_deref().unwrap_or(""),
                args.configpath.display()
            ),
            "StorageClasses and the driver find monitors by clusterID",
            "add it to config.json or pass one of the listed clusterIDs",
        ));
        return out;
    };
    let mut first_connected: Option<(String, rados::Cluster)> = None;
    for (role, user, key) in creds {
        let id = format!("ceph.auth.{role}");
        let cfg = rados::ConnectConfig::new(unique_monitors(&cluster.monitors), user.clone(), key)
            .with_timeout(args.timeout);
        match rados::Cluster::connect(&cfg) {
            Ok(conn) => {
                let fsid = conn.fsid().unwrap_or_else(|e| format!("unknown ({e})"));
                if looks_like_fsid(&cluster.cluster_id)
                    && fsid.len() == 36
                    && !fsid.eq_ignore_ascii_case(&cluster.cluster_id)
                {
                    out.push(Check::problem(
                        id,
                        Status::Warn,
                        format!(
                            "client.{user} authenticated; the cluster's fsid is {fsid}, but its clusterID is {:?}",
                            cluster.cluster_id
                        ),
                        "a clusterID shaped like an fsid but naming another cluster usually means the monitors of a different cluster are listed",
                        "compare `ceph fsid` with the clusterID and the monitors in config.json",
                    ));
                } else {
                    out.push(Check::ok(
                        id,
                        format!(
                            "client.{user} authenticated to clusterID {:?} (fsid {fsid})",
                            cluster.cluster_id
                        ),
                    ));
                }
                if first_connected.is_none() {
                    first_connected = Some((user, conn));
                }
            }
            Err(e) => out.push(auth_failure(id, &user, &e)),
        }
    }
    match (&args.pool, first_connected) {
        (Some(pool), Some((user, conn))) => {
            let ns = &cluster.rbd.rados_namespace;
            let pc = pool_check(&conn, &user, pool, ns);
            let listed = pc.status == Status::Ok;
            out.push(pc);
            if listed {
                out.extend(journal::run(args, &conn, &cluster.cluster_id, pool, ns));
            } else {
                out.push(Check::skip(
                    "journal",
                    "the pool could not be listed: the journal was not checked and nothing was fixed",
                ));
            }
        }
        (Some(pool), None) => out.push(Check::skip(
            "ceph.pool",
            format!("pool {pool:?} not tried: no user authenticated"),
        )),
        (None, _) => out.push(Check::skip(
            "ceph.pool",
            "no --pool given: listing a pool was not tried",
        )),
    }
    out
}

fn auth_failure(id: String, user: &str, e: &rados::Error) -> Check {
    use rados::ErrorKind as K;
    let (why, fix) = match e.kind() {
        K::PermissionDenied => (
            "the monitors refused the key: it is not client.".to_string() + user + "'s key, or the user does not exist",
            format!(
                "compare the secret's key with `ceph auth get-key client.{user}`; create the user if missing: ceph auth get-or-create client.{user} mon 'profile rbd' osd 'profile rbd pool=<pool>' mgr 'profile rbd pool=<pool>'"
            ),
        ),
        K::TimedOut => (
            "no monitor answered in time".to_string(),
            "check the monitors of this clusterID in config.json and the network path to them (see the monitors check)".to_string(),
        ),
        K::InvalidArgument => (
            "the key or the monitor list is malformed".to_string(),
            format!(
                "put the base64 key exactly as `ceph auth get-key client.{user}` prints it (no client. prefix in the user ID)"
            ),
        ),
        _ => (
            "connecting to the cluster failed".to_string(),
            "check the monitors and the credentials".to_string(),
        ),
    };
    Check::problem(id, Status::Fail, format!("client.{user}: {e}"), why, fix)
}

fn pool_check(conn: &rados::Cluster, user: &str, pool: &str, namespace: &str) -> Check {
    use rados::ErrorKind as K;
    let id = "ceph.pool";
    let ns_text = if namespace.is_empty() {
        String::new()
    } else {
        format!(" (RADOS namespace {namespace})")
    };
    if let Err(e) = conn.pool_lookup(pool) {
        return if e.kind() == K::NotFound {
            Check::problem(
                id,
                Status::Fail,
                format!("pool {pool:?} does not exist (or client.{user} may not see it)"),
                "CreateVolume in a StorageClass with this pool fails with NotFound",
                format!("ceph osd pool create {pool} && rbd pool init {pool}"),
            )
        } else {
            Check::problem(
                id,
                Status::Fail,
                format!("looking up pool {pool:?} failed: {e}"),
                "the driver looks up the pool of every volume",
                "check the monitors and client.".to_string() + user + "'s mon caps",
            )
        };
    }
    let listed = conn
        .ioctx(pool, namespace)
        .and_then(|io| rados::rbd::list_images(&io));
    match listed {
        Ok(images) => Check::ok(
            id,
            format!(
                "client.{user} can list pool {pool:?}{ns_text}: {} image(s)",
                images.len()
            ),
        ),
        Err(e) if e.kind() == K::PermissionDenied => Check::problem(
            id,
            Status::Fail,
            format!("client.{user} may not list pool {pool:?}{ns_text}: {e}"),
            "the user's caps are too narrow: provisioning and staging need read/write on the pool",
            format!(
                "ceph auth caps client.{user} mon 'profile rbd' osd 'profile rbd pool={pool}' mgr 'profile rbd pool={pool}'"
            ),
        ),
        Err(e) if e.kind() == K::NotFound && !namespace.is_empty() => Check::problem(
            id,
            Status::Fail,
            format!("RADOS namespace {namespace:?} of pool {pool:?} does not exist: {e}"),
            "config.json sets rbd.radosNamespace for this cluster",
            format!("rbd namespace create {pool}/{namespace}"),
        ),
        Err(e) => Check::problem(
            id,
            Status::Fail,
            format!("listing pool {pool:?}{ns_text} failed: {e}"),
            "the driver reads and writes this pool for every volume",
            "check the pool with `rbd ls -p ".to_string() + pool + "` as client." + user,
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

    #[test]
    fn tool_severity_follows_the_mounters() {
        assert_eq!(tool_severity("mount", "fuse", None), Status::Fail);
        assert_eq!(tool_severity("rbd", "krbd", None), Status::Fail);
        assert_eq!(tool_severity("rbd", "fuse", None), Status::Warn);
        assert_eq!(tool_severity("losetup", "fuse", None), Status::Fail);
        assert_eq!(tool_severity("losetup", "krbd", None), Status::Warn);
        assert_eq!(
            tool_severity("ceph-fuse", "krbd", Some("fuse")),
            Status::Fail
        );
        assert_eq!(
            tool_severity("ceph-fuse", "krbd", Some("kernel")),
            Status::Warn
        );
        assert_eq!(
            tool_severity("mount.ceph", "krbd", Some("kernel")),
            Status::Fail
        );
        assert_eq!(tool_severity("mkfs.xfs", "krbd", None), Status::Warn);
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

    #[test]
    fn monitor_addresses() {
        let ep = |h: &str, p| Endpoint {
            host: h.into(),
            port: p,
        };
        assert_eq!(
            parse_monitor("10.0.0.1:6789").unwrap(),
            vec![ep("10.0.0.1", 6789)]
        );
        assert_eq!(parse_monitor("mon-a").unwrap(), vec![ep("mon-a", 6789)]);
        assert_eq!(
            parse_monitor("[v2:10.0.0.1:3300/0,v1:10.0.0.1:6789/0]").unwrap(),
            vec![ep("10.0.0.1", 3300), ep("10.0.0.1", 6789)]
        );
        assert_eq!(
            parse_monitor("v2:10.0.0.1").unwrap(),
            vec![ep("10.0.0.1", 3300)]
        );
        assert_eq!(parse_monitor("[::1]:6789").unwrap(), vec![ep("::1", 6789)]);
        assert_eq!(parse_monitor("fe80::1").unwrap(), vec![ep("fe80::1", 6789)]);
        assert_eq!(
            parse_monitor("a:1, b:2").unwrap(),
            vec![ep("a", 1), ep("b", 2)]
        );
        assert!(parse_monitor("a:notaport").is_err());
        assert!(parse_monitor("a:0").is_err());
        assert!(parse_monitor("").is_err());
        assert!(parse_monitor("[::1]x").is_err());
        assert_eq!(ep("::1", 6789).to_string(), "[::1]:6789");
        assert_eq!(ep("10.0.0.1", 6789).to_string(), "10.0.0.1:6789");
    }

    #[test]
    fn duplicated_monitors_are_caught() {
        let eps: Vec<Endpoint> = [
            "10.0.0.1:6789",
            "[v2:10.0.0.1:3300,v1:10.0.0.1:6789]",
            "B:1",
            "b:1",
        ]
        .iter()
        .flat_map(|m| parse_monitor(m).unwrap())
        .collect();
        let d: Vec<String> = duplicate_endpoints(&eps)
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(d, vec!["10.0.0.1:6789", "b:1"]);
        assert_eq!(
            unique_monitors(&[
                "10.0.0.1:6789".into(),
                "[v2:10.0.0.1:3300,v1:10.0.0.1:6789]".into()
            ]),
            vec!["10.0.0.1:6789".to_string(), "10.0.0.1:3300".into()]
        );
        assert_eq!(unique_monitors(&["x:y".into()]), vec!["x:y".to_string()]);
    }

    #[test]
    fn banners() {
        assert_eq!(classify_banner(b"ceph v027"), Probe::Ceph("msgr1"));
        assert_eq!(classify_banner(b"ceph v2\n\x10"), Probe::Ceph("msgr2"));
        assert_eq!(classify_banner(b""), Probe::Silent);
        assert_eq!(classify_banner(b"HTTP/1.1 "), Probe::NotCeph);
    }

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
            assert_eq!(c.status, Status::Ok, "{c:?}");
            let c = keysdir_check(&dir.path().join("later/keys"));
            assert_eq!(c.status, Status::Ok, "{c:?}");
            assert!(c.summary.contains("created on first use"), "{c:?}");
        }
        let file = tempfile::NamedTempFile::new().unwrap();
        let c = keysdir_check(file.path());
        assert_eq!(c.status, Status::Fail, "{c:?}");
    }

    #[test]
    fn secrets_files() {
        let j = parse_secrets(r#"{"userID": "csi-rbd", "userKey": "AQ=="}"#).unwrap();
        assert_eq!(j["userID"], "csi-rbd");
        let kv = parse_secrets("# c\nadminID = admin\nadminKey=AQB==\n\n").unwrap();
        assert_eq!(kv["adminKey"], "AQB==");
        let err = parse_secrets("userKey AQSECRETSECRET\n").unwrap_err();
        assert!(!err.contains("SECRET"), "{err}");
        assert!(parse_secrets(r#"{"userID": 1}"#).is_err());

        let creds = credentials(&kv);
        assert_eq!(creds.len(), 1);
        assert_eq!(creds[0].0, "admin");
        let both = parse_secrets("userID=u\nuserKey=k\nadminID=a\nadminKey=k2\n").unwrap();
        let roles: Vec<_> = credentials(&both).into_iter().map(|c| c.0).collect();
        assert_eq!(roles, vec!["user", "admin"]);
        assert!(credentials(&parse_secrets("userID=u\n").unwrap()).is_empty());
    }

    #[test]
    fn fsid_shape() {
        assert!(looks_like_fsid("5db14e3a-f2f0-42dd-893b-202e8d15f48c"));
        assert!(!looks_like_fsid("my-cluster"));
        assert!(!looks_like_fsid("5db14e3a-f2f0-42dd-893b-202e8d15f48"));
    }

    #[test]
    fn report_text_json_and_exit_code() {
        let r = Report::new(vec![
            Check::ok("a", "fine"),
            Check::problem("bb", Status::Warn, "meh", "because", "do this"),
        ]);
        assert!(r.ok);
        assert_eq!(r.exit_code(), 0);
        let t = r.render_text();
        assert!(
            t.contains("[ OK ] a: fine\n[WARN] bb: meh\n       why: because\n"),
            "{t}"
        );
        assert!(
            t.contains("why: because") && t.contains("fix: do this"),
            "{t}"
        );
        assert!(t.contains("1 warning(s), no failures"), "{t}");

        let r = Report::new(vec![Check::problem("c", Status::Fail, "bad", "w", "f")]);
        assert!(!r.ok);
        assert_eq!(r.exit_code(), 1);
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["failures"], 1);
        assert_eq!(v["checks"][0]["status"], "fail");
        assert_eq!(v["checks"][0]["fix"], "f");
        let ok: serde_json::Value = serde_json::to_value(Check::ok("x", "y")).unwrap();
        assert!(ok.get("fix").is_none());
    }

    #[test]
    fn unreachable_monitor_fails_fast() {
        // A port nothing listens on: connection refused right away.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let c = ClusterInfo {
            cluster_id: "x".into(),
            monitors: vec![format!("127.0.0.1:{port}")],
            rbd: Default::default(),
            cephfs: Default::default(),
        };
        let started = std::time::Instant::now();
        let check = monitors_check(&c, Duration::from_secs(2));
        assert_eq!(check.status, Status::Fail, "{check:?}");
        assert!(check.summary.contains("unreachable"), "{check:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
