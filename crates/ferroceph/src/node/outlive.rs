//! User-space attachments that outlive the node plugin's container.
//!
//! The FUSE exporter, rbd-nbd and ceph-fuse serve mounted volumes from user space. When the
//! plugin's container stops (a crash, an OOM kill, a liveness restart, a DaemonSet rolling
//! update), the container runtime kills every process of the container's cgroup, and with
//! a PID namespace of its own the kernel kills every process of that namespace when its
//! first process exits. The node plugin therefore runs in the host's PID namespace
//! (`hostPID: true`, as ceph-csi's RBD node plugin does) and starts each attachment process
//! through `ferroceph launch`, which moves itself into a cgroup of its own outside the
//! container's (`--attachcgroup`, at the root of each hierarchy of the host's cgroup
//! filesystem mounted at `--cgrouproot`, joining the host's cgroup namespace first when the
//! container has a private one) and then execs the attachment. The runtime's kill no longer
//! reaches it, and the restarted plugin re-adopts it from the staging record.

use clap::Args;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// Where the node plugin puts its attachment processes (flags of the serving driver).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outlive {
    /// Name of the attachments' cgroup below the root of every hierarchy.
    pub cgroup: String,
    /// Where the host's cgroup hierarchies are mounted.
    pub cgroup_root: PathBuf,
    /// The cgroup namespace to join first (the host's: `/proc/1/ns/cgroup` with hostPID).
    pub cgroup_ns: PathBuf,
}

impl Outlive {
    /// From the flags; `None` when disabled (`--attachcgroup=none` or empty).
    pub(crate) fn from_flags(
        cgroup: &str,
        cgroup_root: &Path,
        cgroup_ns: &Path,
    ) -> Option<Outlive> {
        let c = cgroup.trim().trim_matches('/');
        (!c.is_empty() && c != "none").then(|| Outlive {
            cgroup: c.to_string(),
            cgroup_root: cgroup_root.to_path_buf(),
            cgroup_ns: cgroup_ns.to_path_buf(),
        })
    }

    /// The program and arguments that run `program args` through `ferroceph launch`.
    pub(crate) fn wrap(
        &self,
        exe: &Path,
        program: &str,
        args: &[String],
    ) -> (PathBuf, Vec<String>) {
        let mut a = vec![
            "launch".to_string(),
            "--cgroup".into(),
            self.cgroup.clone(),
            "--cgroup-root".into(),
            self.cgroup_root.display().to_string(),
            "--cgroup-ns".into(),
            self.cgroup_ns.display().to_string(),
            "--".into(),
            program.to_string(),
        ];
        a.extend(args.iter().cloned());
        (exe.to_path_buf(), a)
    }
}

static OUTLIVE: std::sync::OnceLock<Option<Outlive>> = std::sync::OnceLock::new();

/// Sets the node plugin's choice once, from its flags, before it serves.
pub(crate) fn set(o: Option<Outlive>) {
    let _ = OUTLIVE.set(o);
}

/// The node plugin's choice (`None`: attachments stay in the plugin's cgroup).
pub(crate) fn current() -> Option<&'static Outlive> {
    OUTLIVE.get().and_then(Option::as_ref)
}

/// Runs `program args` directly, or through `ferroceph launch` when `outlive` is set.
pub(crate) fn command_line(
    outlive: Option<&Outlive>,
    exe: &Path,
    program: &str,
    args: &[String],
) -> (PathBuf, Vec<String>) {
    match outlive {
        Some(o) => o.wrap(exe, program, args),
        None => (PathBuf::from(program), args.to_vec()),
    }
}

#[derive(Debug, Clone, Args)]
pub struct LaunchArgs {
    /// Cgroup to join below the root of every hierarchy under --cgroup-root.
    #[arg(long)]
    pub cgroup: String,
    /// Where the cgroup hierarchies are mounted.
    #[arg(long, default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,
    /// Cgroup namespace to join first when it is not already ours.
    #[arg(long, default_value = "/proc/1/ns/cgroup")]
    pub cgroup_ns: PathBuf,
    /// The program and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

/// `ferroceph launch`: join the attachments' cgroup, then exec the command. A failure to
/// move is reported on stderr and the command runs anyway (as before: it then dies with the
/// container); only a failed exec is an error.
pub fn launch(a: LaunchArgs) -> i32 {
    if let Err(e) = join_namespace(&a.cgroup_ns) {
        eprintln!("ferroceph launch: cannot join the cgroup namespace {}: {e}; the process stays in the container's", a.cgroup_ns.display());
    }
    match hierarchies(&a.cgroup_root) {
        Ok(h) if h.is_empty() => eprintln!(
            "ferroceph launch: no cgroup hierarchy is mounted at its root under {}; mount the host's /sys/fs/cgroup there",
            a.cgroup_root.display()
        ),
        Ok(h) => {
            for dir in h {
                if let Err(e) = join(&dir.join(&a.cgroup)) {
                    eprintln!(
                        "ferroceph launch: cannot join {}: {e}",
                        dir.join(&a.cgroup).display()
                    );
                }
            }
        }
        Err(e) => eprintln!("ferroceph launch: cannot read the mount table: {e}"),
    }
    let Some((program, args)) = a.command.split_first() else {
        eprintln!("ferroceph launch: no command");
        return 2;
    };
    let e = std::process::Command::new(program).args(args).exec();
    eprintln!("ferroceph launch: cannot run {program}: {e}");
    127
}

fn join_namespace(ns: &Path) -> std::io::Result<()> {
    let target = std::fs::metadata(ns)?;
    let mine = std::fs::metadata("/proc/self/ns/cgroup")?;
    if (target.dev(), target.ino()) == (mine.dev(), mine.ino()) {
        return Ok(());
    }
    let f = std::fs::File::open(ns)?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWCGROUP).map_err(std::io::Error::from)
}

/// Mount points under `root` of cgroup hierarchies mounted at their root (as seen from our
/// cgroup namespace): only there is `<mount>/<name>` outside the container's cgroup.
fn hierarchies(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(cgroup_mounts(&text, root))
}

pub(crate) fn cgroup_mounts(mountinfo: &str, root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let fstype = right.split(' ').next().unwrap_or("");
        if l.len() < 5 || !matches!(fstype, "cgroup" | "cgroup2") || l[3] != "/" {
            continue;
        }
        let mp = PathBuf::from(l[4].replace("\\040", " "));
        if mp.starts_with(root) && !out.contains(&mp) {
            out.push(mp);
        }
    }
    out
}

fn join(dir: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => inherit_cpuset(dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }?;
    // "0" moves the writing process itself (cgroup v1 and v2 alike)
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))?
        .write_all(b"0")
}

/// A new cgroup v1 cpuset starts with no CPUs and no memory nodes and takes no process
/// until it has them: copy its parent's.
fn inherit_cpuset(dir: &Path) -> std::io::Result<()> {
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let own = dir.join(f);
        if !own.exists() {
            continue;
        }
        if std::fs::read_to_string(&own)?.trim().is_empty() {
            if let Some(parent) = dir.parent() {
                let v = std::fs::read_to_string(parent.join(f))?;
                std::fs::write(&own, v.trim())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        let root = Path::new("/host/sys/fs/cgroup");
        let ns = Path::new("/proc/1/ns/cgroup");
        assert_eq!(Outlive::from_flags("none", root, ns), None);
        assert_eq!(Outlive::from_flags("", root, ns), None);
        let o = Outlive::from_flags("/ferroceph-attachments/", root, ns).unwrap();
        assert_eq!(o.cgroup, "ferroceph-attachments");
        let (p, a) = o.wrap(
            Path::new("/usr/local/bin/ferroceph"),
            "rbd",
            &["map".into()],
        );
        assert_eq!(p, PathBuf::from("/usr/local/bin/ferroceph"));
        assert_eq!(
            a.join(" "),
            "launch --cgroup ferroceph-attachments --cgroup-root /host/sys/fs/cgroup --cgroup-ns /proc/1/ns/cgroup -- rbd map"
        );
        let (p, a) = command_line(None, Path::new("/x"), "rbd", &["map".into()]);
        assert_eq!((p, a), (PathBuf::from("rbd"), vec!["map".to_string()]));
    }

    #[test]
    fn cgroup_mounts_at_their_root_only() {
        let mi = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
33 31 0:30 /kubepods/pod1/c1 /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:38 / /host/sys/fs/cgroup rw,relatime shared:9 - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup_mounts(mi, Path::new("/sys/fs/cgroup")),
            vec![
                PathBuf::from("/sys/fs/cgroup/pids"),
                PathBuf::from("/sys/fs/cgroup/unified")
            ]
        );
        assert_eq!(
            cgroup_mounts(mi, Path::new("/host/sys/fs/cgroup")),
            vec![PathBuf::from("/host/sys/fs/cgroup")]
        );
    }
}
