//! Attaching an RBD image as a local block device, behind one trait with three ways:
//!
//! - `krbd`: the kernel's rbd module (`rbd map --device-type krbd`), the production path;
//!   image features the kernel lacks are refused up front with FailedPrecondition.
//! - `rbd-nbd`: user space (`rbd map --device-type nbd`); the rbd-nbd daemon runs in its own
//!   session, so it outlives a restart of the plugin process.
//! - `fuse`: our own exporter (`ferroceph fuse-export`, a process of its own) exposes the
//!   image as one file through librbd, with a loop device on top. Works on kernels without
//!   rbd or nbd modules, which is how the node path is tested for real.
//!
//! `auto` (the default) takes krbd if the kernel has rbd, else rbd-nbd if it has nbd, else
//! fuse; the choice and its reason are logged and recorded.

pub mod fuse;
pub mod krbd;
pub(crate) mod nbd;
pub(crate) mod writers;

use crate::ceph::Ceph;
use crate::error::{Error, Result};
use crate::node::record::{FuseState, ImageLocation, Paths, Record};
use crate::rbd::params::parse_map_options;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mounter {
    Krbd,
    Nbd,
    Fuse,
}

impl Mounter {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mounter::Krbd => "krbd",
            Mounter::Nbd => "rbd-nbd",
            Mounter::Fuse => "fuse",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Mounter> {
        match s {
            "krbd" => Some(Mounter::Krbd),
            "rbd-nbd" | "nbd" => Some(Mounter::Nbd),
            "fuse" => Some(Mounter::Fuse),
            _ => None,
        }
    }

    /// The key of this mounter in `mapOptions` (`krbd:...;nbd:...`).
    fn options_key(self) -> &'static str {
        match self {
            Mounter::Krbd => "krbd",
            Mounter::Nbd => "nbd",
            Mounter::Fuse => "fuse",
        }
    }
}

/// What the kernel offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KernelSupport {
    pub krbd: bool,
    pub nbd: bool,
}

impl KernelSupport {
    pub(crate) fn detect() -> KernelSupport {
        KernelSupport {
            krbd: Path::new("/sys/bus/rbd").exists(),
            nbd: Path::new("/sys/module/nbd").exists() || Path::new("/sys/block/nbd0").exists(),
        }
    }
}

/// Picks the mounter for a `mounter` parameter (absent = `auto`); returns it with the
/// reason, or why the requested one cannot work here.
pub(crate) fn choose(requested: Option<&str>, kernel: KernelSupport) -> Result<(Mounter, String)> {
    let req = requested
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("auto");
    if req == "auto" {
        return Ok(if kernel.krbd {
            (
                Mounter::Krbd,
                "auto: the kernel has the rbd module".to_string(),
            )
        } else if kernel.nbd {
            (
                Mounter::Nbd,
                "auto: no kernel rbd module, the kernel has nbd".to_string(),
            )
        } else {
            (
                Mounter::Fuse,
                "auto: the kernel has neither the rbd nor the nbd module".to_string(),
            )
        });
    }
    let Some(m) = Mounter::parse(req) else {
        return Err(Error::invalid(format!(
            "mounter {req:?} is not known: use krbd, rbd-nbd, fuse or auto"
        )));
    };
    Ok((m, format!("mounter {req} requested")))
}

/// The options of `mapOptions`/`unmapOptions` that apply to `m`, joined with ','.
pub(crate) fn options_for(list: Option<&str>, m: Mounter) -> Result<Option<String>> {
    let Some(list) = list.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let parsed = parse_map_options(list).map_err(|e| Error::invalid(e.0))?;
    let opts: Vec<String> = parsed
        .into_iter()
        .filter(|(k, o)| k == m.options_key() && !o.is_empty())
        .map(|(_, o)| o)
        .collect();
    Ok((!opts.is_empty()).then(|| opts.join(",")))
}

/// Everything an attacher needs besides the request.
#[derive(Clone)]
pub(crate) struct AttachEnv {
    pub keysdir: PathBuf,
    /// Deadline of Ceph operations and of connecting.
    pub ceph_timeout: Duration,
    /// Deadline of one child process (map, losetup, ...).
    pub exec_timeout: Duration,
    /// Our own executable, for the FUSE exporter.
    pub exe: PathBuf,
    pub ceph: Ceph,
}

pub(crate) struct AttachRequest<'a> {
    pub loc: &'a ImageLocation,
    pub key: &'a str,
    pub read_only: bool,
    /// Raw `mapOptions`.
    pub map_options: Option<&'a str>,
    pub paths: &'a Paths,
}

/// A fresh attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attached {
    pub device: String,
    pub fuse: Option<FuseState>,
    pub nbd_pid: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Health {
    Healthy,
    /// The attachment is gone or broken (a definite failure); the reason says what.
    Broken(String),
    /// It did not answer in time: slow (OSD peering), not known to be broken. Nothing that
    /// pods use may be torn down for this.
    Unresponsive(String),
}

#[tonic::async_trait]
pub(crate) trait Attacher: Send + Sync {
    /// Attaches the image; on failure nothing is left behind.
    async fn attach(&self, req: &AttachRequest<'_>) -> Result<Attached>;

    /// Detaches whatever the record says is (or may be) attached. Idempotent: an attachment
    /// that is already gone is fine.
    async fn detach(&self, rec: &Record) -> Result<()>;

    /// Whether the attachment still works.
    async fn health(&self, rec: &Record) -> Health;

    /// Makes the device show the image's size after a resize, waiting for at least
    /// `want` bytes (0: whatever it is now); returns the device size.
    async fn refresh_size(&self, rec: &Record, want: u64) -> Result<u64>;
}

/// `rbd map --device-type <device_type>` arguments (krbd and rbd-nbd differ only there).
pub(crate) fn rbd_map_args(
    device_type: &str,
    loc: &ImageLocation,
    keyfile: &Path,
    options: Option<&str>,
    read_only: bool,
) -> Vec<String> {
    let mut a = vec![
        "map".to_string(),
        loc.spec(),
        "--device-type".into(),
        device_type.into(),
        "--id".into(),
        loc.user.clone(),
        "-m".into(),
        loc.monitors.join(","),
        "--keyfile".into(),
        keyfile.display().to_string(),
    ];
    if let Some(o) = options {
        a.push("--options".into());
        a.push(o.to_string());
    }
    if read_only {
        a.push("--read-only".into());
    }
    a
}

/// `rbd unmap --device-type <device_type>` arguments.
pub(crate) fn rbd_unmap_args(
    device_type: &str,
    device: &str,
    options: Option<&str>,
) -> Vec<String> {
    let mut a = vec![
        "unmap".to_string(),
        "--device-type".into(),
        device_type.into(),
    ];
    if let Some(o) = options {
        a.push("--options".into());
        a.push(o.to_string());
    }
    a.push(device.to_string());
    a
}

pub(crate) fn attacher(m: Mounter, env: &AttachEnv) -> Box<dyn Attacher> {
    match m {
        Mounter::Krbd => Box::new(krbd::Krbd { env: env.clone() }),
        Mounter::Nbd => Box::new(nbd::Nbd { env: env.clone() }),
        Mounter::Fuse => Box::new(fuse::Fuse { env: env.clone() }),
    }
}

/// Waits until `path` exists (udev may create device nodes a little late).
pub(crate) async fn wait_for_path(path: &Path, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if path.exists() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the block device is at least `want` bytes; returns its size.
pub(crate) async fn wait_for_size(device: &str, want: u64, timeout: Duration) -> Result<u64> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let size =
            crate::node::stats::device_size_bounded(Path::new(device), Duration::from_secs(10))
                .await
                .map_err(|e| Error::internal(format!("cannot read the size of {device}: {e}")))?;
        if size >= want {
            return Ok(size);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::internal(format!(
                "{device} is {size} bytes after the refresh, expected at least {want}; the image resize has not reached this node"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (state, start time) from /proc/<pid>/stat.
pub(crate) fn proc_stat(pid: i32) -> Option<(char, u64)> {
    if pid <= 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_proc_stat(&text)
}

/// Parses the state (field 3) and start time (field 22) of a /proc/<pid>/stat line; the
/// command name in parentheses may itself contain spaces and parentheses.
pub(crate) fn parse_proc_stat(text: &str) -> Option<(char, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // fields[0] is field 3; field 22 is fields[19].
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Sends `sig` to `pid` if it is still the process that started at `start_time`.
pub(crate) fn signal_if_same(pid: i32, start_time: u64, sig: nix::sys::signal::Signal) -> bool {
    match proc_stat(pid) {
        Some((state, start)) if start == start_time && state != 'Z' && state != 'X' => {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).is_ok()
        }
        _ => false,
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL and wait a little more. True when the process
/// is gone (or was never there).
pub(crate) async fn stop_process(pid: i32, start_time: u64, grace: Duration) -> bool {
    use nix::sys::signal::Signal;
    let same =
        |p: i32| proc_stat(p).is_some_and(|(s, st)| st == start_time && s != 'Z' && s != 'X');
    if !same(pid) {
        return true;
    }
    signal_if_same(pid, start_time, Signal::SIGTERM);
    for (limit, kill) in [(grace, true), (Duration::from_secs(5), false)] {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if !same(pid) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if kill {
            tracing::warn!(pid, "process did not stop after SIGTERM; sending SIGKILL");
            signal_if_same(pid, start_time, Signal::SIGKILL);
        }
    }
    !same(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_prefers_krbd_then_nbd_then_fuse() {
        let k = |krbd, nbd| KernelSupport { krbd, nbd };
        assert_eq!(choose(None, k(true, true)).unwrap().0, Mounter::Krbd);
        assert_eq!(
            choose(Some("auto"), k(false, true)).unwrap().0,
            Mounter::Nbd
        );
        let (m, why) = choose(Some(""), k(false, false)).unwrap();
        assert_eq!(m, Mounter::Fuse);
        assert!(why.contains("neither"), "{why}");
        assert_eq!(
            choose(Some("rbd-nbd"), k(true, true)).unwrap().0,
            Mounter::Nbd
        );
        assert_eq!(
            choose(Some("fuse"), k(true, true)).unwrap().0,
            Mounter::Fuse
        );
        assert_eq!(
            choose(Some("iscsi"), k(true, true)).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn map_options_per_mounter() {
        let l = Some("krbd:lock_on_read,queue_depth=1024;nbd:try-netlink,reattach-timeout=300");
        assert_eq!(
            options_for(l, Mounter::Krbd).unwrap().as_deref(),
            Some("lock_on_read,queue_depth=1024")
        );
        assert_eq!(
            options_for(l, Mounter::Nbd).unwrap().as_deref(),
            Some("try-netlink,reattach-timeout=300")
        );
        assert_eq!(options_for(l, Mounter::Fuse).unwrap(), None);
        assert_eq!(
            options_for(Some("noshare"), Mounter::Krbd)
                .unwrap()
                .as_deref(),
            Some("noshare")
        );
        assert_eq!(options_for(None, Mounter::Krbd).unwrap(), None);
        assert!(options_for(Some("bogus:x"), Mounter::Krbd).is_err());
    }

    #[test]
    fn proc_stat_fields() {
        let line = "1234 (ferro (x) y) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 5 0 987654 1000 200";
        assert_eq!(parse_proc_stat(line), Some(('S', 987654)));
        assert_eq!(parse_proc_stat("garbage"), None);
        let me = std::process::id() as i32;
        // this process runs (not a zombie); pid -1 is none
        assert!(proc_stat(me).is_some_and(|(s, _)| s != 'Z' && s != 'X'));
        assert!(proc_stat(-1).is_none());
    }
}
