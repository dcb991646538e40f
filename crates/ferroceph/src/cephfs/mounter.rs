//! How a CephFS path gets mounted on a node, and what is remembered about it.
//!
//! - `fuse`: `ceph-fuse -f` (foreground) started by the plugin in its own session,
//!   so it is not a daemon we lose track of: its PID (and start time, against PID reuse)
//!   is recorded, and unstage waits for it to exit after the unmount, killing it if it
//!   lingers. Being in its own session it outlives the plugin process: a plugin
//!   restart leaves healthy mounts working, and the next NodeStage re-adopts them.
//! - `kernel`: `mount -t ceph mon1,mon2:/path target -o name=<id>,secretfile=<file>,...`;
//!   the key travels in a 0600 file that exists only while `mount` runs, so it is never in
//!   an argument list, an environment or `/proc/mounts`.
//!
//! The record (`<staging>.ferroceph-cephfs.json`, next to the staging path) says which
//! mounter was used, where, as whom, and the ceph-fuse PID; never the key.

use crate::cephfs::params::Mounter;
use crate::error::{Error, Result};
use crate::node::exec;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

pub const RECORD_SUFFIX: &str = ".ferroceph-cephfs.json";
pub const FUSE_LOG_SUFFIX: &str = ".ceph-fuse.log";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    pub volume_id: String,
    pub mounter: String,
    pub cluster_id: String,
    pub fs_name: String,
    pub root_path: String,
    pub user: String,
    pub monitors: Vec<String>,
    pub options: Vec<String>,
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuse_pid: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuse_start: Option<u64>,
}

fn sibling(staging: &Path, suffix: &str) -> PathBuf {
    let name = staging
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "staging".to_string());
    staging.with_file_name(format!("{name}{suffix}"))
}

pub fn record_path(staging: &Path) -> PathBuf {
    sibling(staging, RECORD_SUFFIX)
}

pub fn fuse_log_path(staging: &Path) -> PathBuf {
    sibling(staging, FUSE_LOG_SUFFIX)
}

pub fn read_record(staging: &Path) -> Option<StageRecord> {
    let text = std::fs::read_to_string(record_path(staging)).ok()?;
    match serde_json::from_str(&text) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(staging = %staging.display(), "ignoring an unreadable stage record: {e}");
            None
        }
    }
}

/// Writes the record atomically (temporary file + rename), 0600.
pub fn write_record(staging: &Path, rec: &StageRecord) -> std::io::Result<()> {
    let path = record_path(staging);
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec_pretty(rec).map_err(std::io::Error::other)?;
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)
}

pub fn remove_record(staging: &Path) {
    for p in [record_path(staging), fuse_log_path(staging)] {
        if let Err(e) = std::fs::remove_file(&p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %p.display(), "cannot remove: {e}");
            }
        }
    }
}

fn clean_addr(a: &str) -> Option<String> {
    let a = a.trim();
    let a = a
        .strip_prefix("v1:")
        .or_else(|| a.strip_prefix("v2:"))
        .unwrap_or(a);
    let a = a.split('/').next().unwrap_or("").trim();
    (!a.is_empty()).then(|| a.to_string())
}

/// Monitor addresses as the kernel and ceph-fuse take them: `v1:`/`v2:` prefixes and
/// `/nonce` suffixes dropped, and an address vector `[v2:..,v1:..]` reduced to its v1
/// address (the kernel's default protocol).
pub fn plain_monitors(monitors: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for m in monitors {
        let m = m.trim();
        let vector = m
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .filter(|s| s.starts_with("v1:") || s.starts_with("v2:"));
        match vector {
            Some(v) => {
                let addrs: Vec<&str> = v.split(',').collect();
                let pick = addrs
                    .iter()
                    .find(|a| a.trim().starts_with("v1:"))
                    .or(addrs.first());
                out.extend(pick.and_then(|a| clean_addr(a)));
            }
            None => out.extend(m.split(',').filter_map(clean_addr)),
        }
    }
    out
}

/// What to mount and how.
pub struct MountSpec<'a> {
    pub monitors: &'a [String],
    pub user: &'a str,
    pub keyfile: &'a Path,
    pub fs_name: &'a str,
    pub root: &'a str,
    /// Mount options, "ro" included when read-only.
    pub options: &'a [String],
    pub target: &'a Path,
}

/// `ceph-fuse` arguments: foreground, monitors, user, key file, filesystem, root path.
pub fn fuse_args(spec: &MountSpec<'_>) -> Vec<String> {
    let mut a = vec![
        spec.target.display().to_string(),
        "-f".to_string(),
        "-m".to_string(),
        plain_monitors(spec.monitors).join(","),
        "-n".to_string(),
        format!("client.{}", spec.user),
        format!("--keyfile={}", spec.keyfile.display()),
        format!("--client_fs={}", spec.fs_name),
        "-r".to_string(),
        spec.root.to_string(),
    ];
    if !spec.options.is_empty() {
        a.push("-o".to_string());
        a.push(spec.options.join(","));
    }
    a
}

/// `mount -t ceph` source and options for the kernel client.
pub fn kernel_mount(spec: &MountSpec<'_>) -> (String, Vec<String>) {
    let source = format!("{}:{}", plain_monitors(spec.monitors).join(","), spec.root);
    let mut opts = vec![
        format!("name={}", spec.user),
        format!("secretfile={}", spec.keyfile.display()),
        format!("mds_namespace={}", spec.fs_name),
    ];
    opts.extend(spec.options.iter().cloned());
    (source, opts)
}

/// The mounter a node uses when the volume names none: the kernel client when the kernel
/// knows the `ceph` filesystem (loading the module if it can), else ceph-fuse.
pub async fn detect_default() -> Mounter {
    if kernel_has_ceph() {
        return Mounter::Kernel;
    }
    let _ = exec::output("modprobe", &["-q", "ceph"], &[], Duration::from_secs(5)).await;
    if kernel_has_ceph() {
        Mounter::Kernel
    } else {
        Mounter::Fuse
    }
}

fn kernel_has_ceph() -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|t| filesystems_list_ceph(&t))
        .unwrap_or(false)
}

pub fn filesystems_list_ceph(text: &str) -> bool {
    text.lines()
        .any(|l| l.split_whitespace().last() == Some("ceph"))
}

/// A running ceph-fuse: PID and start time (clock ticks since boot, /proc/PID/stat field 22).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FuseProc {
    pub pid: i32,
    pub start: u64,
}

/// (state, start time, comm) of a process, None when it does not exist.
fn proc_stat(pid: i32) -> Option<(char, u64, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); start time is field 22.
    let state = rest.first()?.chars().next()?;
    let start = rest.get(19)?.parse().ok()?;
    Some((state, start, comm))
}

/// True while the process runs (zombies count as gone) and is the one recorded.
pub fn alive(p: FuseProc) -> bool {
    match proc_stat(p.pid) {
        Some((state, start, _)) => !matches!(state, 'Z' | 'X' | 'x') && start == p.start,
        None => false,
    }
}

fn proc_of(pid: i32) -> Option<FuseProc> {
    proc_stat(pid).map(|(_, start, _)| FuseProc { pid, start })
}

/// Finds the ceph-fuse serving `target` by its command line (for a mount whose record
/// was not written, e.g. the plugin died right after mounting).
pub fn find_fuse(target: &Path) -> Option<FuseProc> {
    find_fuse_with(target, None)
}

/// Like [`find_fuse`], also requiring `-r <root>` when `root` is given.
fn find_fuse_with(target: &Path, root: Option<&str>) -> Option<FuseProc> {
    let want = target.display().to_string();
    let dir = std::fs::read_dir("/proc").ok()?;
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_fuse = args.first().is_some_and(|a| a.ends_with(b"ceph-fuse"));
        let root_ok = root.is_none_or_matches(&args);
        if is_fuse && root_ok && args.iter().skip(1).any(|a| *a == want.as_bytes()) {
            if let Some(p) = proc_of(pid) {
                if alive(p) {
                    return Some(p);
                }
            }
        }
    }
    None
}

trait RootArg {
    fn is_none_or_matches(&self, args: &[&[u8]]) -> bool;
}

impl RootArg for Option<&str> {
    fn is_none_or_matches(&self, args: &[&[u8]]) -> bool {
        match self {
            None => true,
            Some(root) => args
                .windows(2)
                .any(|w| w[0] == b"-r" && w[1] == root.as_bytes()),
        }
    }
}

/// A healthy mount at `target` that has no record: Some when it mounts `root` (a
/// ceph-fuse found by its command line, with its process; or a kernel mount whose source
/// ends with the path), None when it is something else.
pub fn adoptable(target: &Path, root: &str) -> Option<Option<FuseProc>> {
    let m = crate::node::mount::mount_at(target).ok()??;
    if m.fs_type == "ceph" {
        return m.source.ends_with(&format!(":{root}")).then_some(None);
    }
    if m.fs_type.starts_with("fuse") {
        return find_fuse_with(target, Some(root)).map(Some);
    }
    None
}

fn signal(p: FuseProc, sig: i32) {
    if alive(p) {
        // The PID was checked to be our recorded ceph-fuse (same start time).
        if let Ok(sig) = nix::sys::signal::Signal::try_from(sig) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), sig);
        }
    }
}

/// Waits for the process to exit; true when it did within `timeout`.
pub async fn wait_gone(p: FuseProc, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(p) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// After the unmount: lets ceph-fuse exit by itself, then asks (SIGTERM), then forces
/// (SIGKILL). Returns true when it is gone.
pub async fn stop_fuse(p: FuseProc, grace: Duration) -> bool {
    if wait_gone(p, grace).await {
        return true;
    }
    tracing::warn!(
        pid = p.pid,
        "ceph-fuse lingers after the unmount; terminating it"
    );
    signal(p, libc::SIGTERM);
    if wait_gone(p, Duration::from_secs(3)).await {
        return true;
    }
    signal(p, libc::SIGKILL);
    wait_gone(p, Duration::from_secs(3)).await
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.contains("did not load config file")
                && !l.contains("parsing config file")
                && !l.contains("can't open ceph.conf")
                && !l.contains("init, newargv")
        })
        .collect();
    let start = lines.len().saturating_sub(4);
    lines[start..].join(" | ")
}

fn is_fuse_mount(target: &Path) -> bool {
    matches!(
        crate::node::mount::mount_at(target),
        Ok(Some(m)) if m.fs_type.starts_with("fuse")
    )
}

/// Starts `ceph-fuse -f` for `spec` and waits until the mount appears. The process runs
/// in its own session with its output in `log`; a task reaps it when it exits.
pub async fn mount_fuse(spec: &MountSpec<'_>, log: &Path, timeout: Duration) -> Result<FuseProc> {
    let args = fuse_args(spec);
    let logf = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(log)
        .map_err(|e| Error::internal(format!("cannot open {}: {e}", log.display())))?;
    let errf = logf
        .try_clone()
        .map_err(|e| Error::internal(format!("cannot open {}: {e}", log.display())))?;
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("ferroceph"));
    let (program, args) = crate::node::outlive::command_line(
        crate::node::outlive::current(),
        &exe,
        "ceph-fuse",
        &args,
    );
    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(logf))
        .stderr(Stdio::from(errf))
        // Identity and key come from the arguments only.
        .env_remove("CEPH_ARGS")
        .env_remove("CEPH_KEYRING")
        .kill_on_drop(false);
    // its own session, so it outlives the plugin; no inherited descriptors live on in it
    crate::sys::detach_at_exec(&mut cmd);
    let what = format!("ceph-fuse {}", args.join(" "));
    let mut child = cmd.spawn().map_err(|e| {
        Error::precondition(format!("cannot run {what}: {e} (is ceph-fuse installed?)"))
    })?;
    let pid = child.id().map(|p| p as i32).unwrap_or(-1);
    let proc = proc_of(pid).unwrap_or(FuseProc { pid, start: 0 });
    let deadline = Instant::now() + timeout;
    loop {
        if is_fuse_mount(spec.target) {
            break;
        }
        if let Ok(Some(st)) = child.try_wait() {
            let tail = log_tail(log);
            let msg = format!("{what} exited ({st}) before mounting: {tail}");
            return Err(
                if tail.contains("Permission denied") || tail.contains("Operation not permitted") {
                    Error::PermissionDenied(format!(
                        "{msg} (check the cephx user, key and its mds caps for this path)"
                    ))
                } else if tail.contains("No such file or directory") {
                    Error::not_found(format!("{msg} (does the path exist in the filesystem?)"))
                } else {
                    Error::internal(msg)
                },
            );
        }
        if Instant::now() >= deadline {
            signal(proc, libc::SIGKILL);
            let _ = child.wait().await;
            return Err(Error::DeadlineExceeded(format!(
                "{what} did not mount within {}s and was killed: {}",
                timeout.as_secs(),
                log_tail(log)
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::spawn(async move {
        match child.wait().await {
            Ok(st) => tracing::info!(pid, "ceph-fuse exited ({st})"),
            Err(e) => tracing::warn!(pid, "cannot wait for ceph-fuse: {e}"),
        }
    });
    Ok(proc)
}

/// `mount -t ceph` with the key in `spec.keyfile`.
pub async fn mount_kernel(spec: &MountSpec<'_>, timeout: Duration) -> Result<()> {
    let (source, opts) = kernel_mount(spec);
    crate::node::mount::mount(&source, spec.target, "ceph", &opts, timeout)
        .await
        .map_err(|e| e.to_error())
}

/// How a mount point answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ok(Usage),
    /// statfs failed (ENOTCONN: the ceph-fuse behind it died).
    Broken(i32),
    /// statfs did not answer in time (cluster unreachable, hung client).
    Hung,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub total: u64,
    pub available: u64,
    pub used: u64,
    /// Inodes in use, and the limit when there is one (CephFS has none by default).
    pub inodes_used: u64,
    pub inodes_total: Option<u64>,
    pub inodes_free: Option<u64>,
}

fn statvfs(path: &Path) -> std::io::Result<Usage> {
    let rbytes = recursive_bytes(path);
    let st = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    let mut u = usage_of(
        st.fragment_size() as u64,
        st.blocks() as u64,
        st.blocks_free() as u64,
        st.blocks_available() as u64,
        st.files() as u64,
        st.files_free() as u64,
    );
    // statfs of a quota-bounded CephFS mount counts usage in whole 4 MiB blocks (a volume
    // holding 3 MiB reports 0 used); the volume's recursive byte count is exact.
    if let Some(b) = rbytes {
        u.used = b;
    }
    // Likewise the inode count: statfs takes it from the quota realm's cached recursive
    // stats, which lag behind (a fresh file shows bytes used but no inode for a while).
    if let Some(n) = recursive_stat(path, "ceph.dir.rentries") {
        u.inodes_used = n;
        if let Some(total) = u.inodes_total {
            u.inodes_free = Some(total.saturating_sub(n));
        }
    }
    Ok(u)
}

/// The recursive byte count of the directory at `path` (CephFS's `ceph.dir.rbytes`).
/// Reading it also makes the kernel client fetch fresh recursive stats from the MDS.
fn recursive_bytes(path: &Path) -> Option<u64> {
    recursive_stat(path, "ceph.dir.rbytes")
}

fn recursive_stat(path: &Path, name: &str) -> Option<u64> {
    let v = xattr::get(path, name).ok()??;
    std::str::from_utf8(&v).ok()?.trim().parse().ok()
}

/// Turns statvfs figures into usage. CephFS reports the number of inodes in use as
/// `f_files` and "unlimited" (all ones) as `f_ffree`; then no inode total is claimed.
pub fn usage_of(
    frsize: u64,
    blocks: u64,
    bfree: u64,
    bavail: u64,
    files: u64,
    ffree: u64,
) -> Usage {
    let total = blocks.saturating_mul(frsize);
    let free = bfree.saturating_mul(frsize);
    let unlimited_inodes = ffree > i64::MAX as u64;
    Usage {
        total,
        available: bavail.saturating_mul(frsize),
        used: total.saturating_sub(free),
        inodes_used: if unlimited_inodes {
            files
        } else {
            files.saturating_sub(ffree)
        },
        inodes_total: (!unlimited_inodes).then_some(files),
        inodes_free: (!unlimited_inodes).then_some(ffree),
    }
}

/// statfs with a deadline, on a thread of its own (a hung FUSE mount blocks the caller;
/// see `stats::bounded` for why not on the shared blocking pool).
pub async fn probe(path: &Path, timeout: Duration) -> Health {
    let p = path.to_path_buf();
    let what = format!("statfs of {}", path.display());
    match crate::node::stats::bounded(timeout, &what, move || statvfs(&p)).await {
        Ok(u) => Health::Ok(u),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Health::Hung,
        Err(e) => Health::Broken(e.raw_os_error().unwrap_or(libc::EIO)),
    }
}

/// Whether a probe's answer justifies tearing the mount down and mounting it again. Only
/// a definite failure does (ENOTCONN, ESTALE, EIO, ..., or its ceph-fuse gone); a mount
/// that is slow to answer (MDS failover, OSD peering) serves its pods again once the
/// cluster answers, and a remount would cut them off.
pub fn needs_remount(h: &Health, fuse_gone: bool) -> bool {
    match h {
        Health::Ok(_) => false,
        Health::Hung => fuse_gone,
        Health::Broken(errno) => {
            fuse_gone
                || crate::node::stats::is_definite_failure(&std::io::Error::from_raw_os_error(
                    *errno,
                ))
        }
    }
}

/// Whether the record names a ceph-fuse process that no longer runs.
pub fn fuse_gone(rec: Option<&StageRecord>) -> bool {
    rec.and_then(|r| r.fuse_pid.zip(r.fuse_start))
        .is_some_and(|(pid, start)| !alive(FuseProc { pid, start }))
}

pub fn errno_text(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

/// Detaches whatever is mounted at `target`, even a dead FUSE mount or a hung one:
/// `umount -l`, then `fusermount -uz`.
pub async fn lazy_unmount(target: &Path, timeout: Duration) -> Result<()> {
    let t = target.display().to_string();
    let out = exec::output("umount", &["-l", &t], &[], timeout)
        .await
        .map_err(|e| e.to_error())?;
    if out.success() || !crate::node::mount::is_mount_point(target).unwrap_or(true) {
        return Ok(());
    }
    let out2 = exec::output("fusermount", &["-uz", &t], &[], timeout)
        .await
        .map_err(|e| e.to_error())?;
    if out2.success() {
        Ok(())
    } else {
        Err(Error::internal(format!(
            "cannot detach the mount at {t}: umount -l: {}; fusermount -uz: {}",
            out.stderr, out2.stderr
        )))
    }
}

/// Unmounts every mount stacked at `target`: a clean unmount when it answers, a lazy one
/// when it is broken or hangs. A busy mount is an error (something still uses it).
pub async fn unmount_all(target: &Path, timeout: Duration) -> Result<()> {
    for _ in 0..8 {
        if !crate::node::mount::is_mount_point(target).unwrap_or(false) {
            return Ok(());
        }
        match probe(target, Duration::from_secs(10)).await {
            Health::Ok(_) => {
                if let Err(e) = crate::node::mount::unmount(target, timeout).await {
                    let text = e.to_string();
                    if text.contains("busy") {
                        return Err(Error::precondition(format!(
                            "{} is still in use: {text}",
                            target.display()
                        )));
                    }
                    if matches!(e, exec::ExecError::TimedOut { .. }) {
                        lazy_unmount(target, timeout).await?;
                    } else {
                        return Err(e.to_error());
                    }
                }
            }
            Health::Broken(errno) => {
                tracing::info!(
                    path = %target.display(),
                    "detaching a broken mount ({})",
                    errno_text(errno)
                );
                lazy_unmount(target, timeout).await?;
            }
            Health::Hung => {
                tracing::warn!(path = %target.display(), "detaching a mount that does not answer");
                lazy_unmount(target, timeout).await?;
            }
        }
    }
    Err(Error::internal(format!(
        "{} is still mounted after 8 unmounts",
        target.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(mons: &'a [String], opts: &'a [String]) -> MountSpec<'a> {
        MountSpec {
            monitors: mons,
            user: "csi-cephfs",
            keyfile: Path::new("/tmp/csi/keys/keyfile-1"),
            fs_name: "cephfs",
            root: "/volumes/csi/csi-vol-1/uuid",
            options: opts,
            target: Path::new("/var/lib/kubelet/x/globalmount"),
        }
    }

    #[test]
    fn fuse_command_line() {
        let mons = vec!["10.0.0.1:6789".to_string(), "10.0.0.2:6789".to_string()];
        let opts = vec!["ro".to_string(), "debug".to_string()];
        let a = fuse_args(&spec(&mons, &opts));
        assert_eq!(
            a,
            vec![
                "/var/lib/kubelet/x/globalmount",
                "-f",
                "-m",
                "10.0.0.1:6789,10.0.0.2:6789",
                "-n",
                "client.csi-cephfs",
                "--keyfile=/tmp/csi/keys/keyfile-1",
                "--client_fs=cephfs",
                "-r",
                "/volumes/csi/csi-vol-1/uuid",
                "-o",
                "ro,debug"
            ]
        );
        assert!(!fuse_args(&spec(&mons, &[])).contains(&"-o".to_string()));
    }

    #[test]
    fn kernel_command_line_keeps_the_key_in_a_file() {
        let mons = vec![
            "[v2:10.0.0.1:3300,v1:10.0.0.1:6789]".to_string(),
            "v1:10.0.0.2:6789".to_string(),
        ];
        let opts = vec!["ro".to_string(), "ms_mode=secure".to_string()];
        let (src, o) = kernel_mount(&spec(&mons, &opts));
        assert_eq!(
            src,
            "10.0.0.1:6789,10.0.0.2:6789:/volumes/csi/csi-vol-1/uuid"
        );
        assert_eq!(
            o,
            vec![
                "name=csi-cephfs",
                "secretfile=/tmp/csi/keys/keyfile-1",
                "mds_namespace=cephfs",
                "ro",
                "ms_mode=secure"
            ]
        );
        assert!(!o.iter().any(|x| x.starts_with("secret=")));
    }

    #[test]
    fn monitor_forms() {
        let m = |v: &[&str]| plain_monitors(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(m(&["127.0.0.1:6789"]), vec!["127.0.0.1:6789"]);
        assert_eq!(m(&["a:6789,b:6789"]), vec!["a:6789", "b:6789"]);
        assert_eq!(m(&["v2:1.2.3.4:3300/0"]), vec!["1.2.3.4:3300"]);
        assert_eq!(m(&["v1:a:6789/0,v1:b:6789/0"]), vec!["a:6789", "b:6789"]);
        assert_eq!(m(&["[::1]:6789"]), vec!["[::1]:6789"]);
        assert_eq!(
            m(&["[v2:1.2.3.4:3300,v1:1.2.3.4:6789]"]),
            vec!["1.2.3.4:6789"]
        );
    }

    #[test]
    fn proc_filesystems() {
        assert!(filesystems_list_ceph("nodev\tsysfs\nnodev\tceph\n\text4\n"));
        assert!(!filesystems_list_ceph(
            "nodev\tsysfs\nnodev\tfuse\n\text4\n"
        ));
    }

    #[test]
    fn usage_from_statvfs() {
        // ceph-fuse: 8 MiB quota in 4 MiB blocks, inodes unlimited
        let u = usage_of(4 << 20, 2, 1, 1, 7, u64::MAX);
        assert_eq!(u.total, 8 << 20);
        assert_eq!(u.used, 4 << 20);
        assert_eq!(u.available, 4 << 20);
        assert_eq!(u.inodes_used, 7);
        assert_eq!(u.inodes_total, None);
        let u = usage_of(4096, 100, 50, 40, 1000, 900);
        assert_eq!(u.inodes_used, 100);
        assert_eq!(u.inodes_total, Some(1000));
    }

    #[test]
    fn records_round_trip_next_to_staging() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("globalmount");
        assert_eq!(
            record_path(&staging),
            dir.path().join("globalmount.ferroceph-cephfs.json")
        );
        let rec = StageRecord {
            volume_id: "v".into(),
            mounter: "fuse".into(),
            cluster_id: "c".into(),
            fs_name: "cephfs".into(),
            root_path: "/volumes/x".into(),
            user: "u".into(),
            monitors: vec!["m:1".into()],
            options: vec![],
            read_only: false,
            fuse_pid: Some(42),
            fuse_start: Some(7),
        };
        write_record(&staging, &rec).unwrap();
        assert_eq!(read_record(&staging), Some(rec));
        remove_record(&staging);
        assert_eq!(read_record(&staging), None);
    }

    #[test]
    fn only_definite_failures_remount() {
        let ok = Health::Ok(Usage::default());
        assert!(!needs_remount(&ok, false));
        assert!(!needs_remount(&Health::Hung, false));
        assert!(needs_remount(&Health::Hung, true));
        assert!(needs_remount(&Health::Broken(libc::ENOTCONN), false));
        assert!(needs_remount(&Health::Broken(libc::ESTALE), false));
        assert!(needs_remount(&Health::Broken(libc::EIO), false));
        assert!(!needs_remount(&Health::Broken(libc::EINTR), false));
        assert!(!needs_remount(&Health::Broken(libc::EACCES), false));
        assert!(needs_remount(&Health::Broken(libc::EACCES), true));
    }

    #[test]
    fn own_process_is_alive_and_identified() {
        let me = proc_of(std::process::id() as i32).unwrap();
        assert!(alive(me));
        assert!(!alive(FuseProc {
            pid: me.pid,
            start: me.start + 1
        }));
    }
}
