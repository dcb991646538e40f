//! The FUSE attachment: our exporter (`ferroceph fuse-export`, see `fuse_export.rs`) serves
//! the image as `<fuse dir>/image`, and a loop device (`losetup --direct-io=on`) turns that
//! file into a block device.
//!
//! The exporter is started in its own process group and session and is not waited for, so
//! it keeps serving when the plugin process exits or is killed; the plugin recovers it from
//! the record (pid + start time) or, failing that, by its command line. The key travels on
//! the exporter's standard input, never in argv or the environment.

use super::{stop_process, AttachEnv, AttachRequest, Attached, Attacher, Health};
use crate::error::{Error, Result};
use crate::node::exec;
use crate::node::mount;
use crate::node::record::{FuseState, Record};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// The attachment process this mounter starts (`ferroceph fuse-export`, fuse_export.rs):
/// its subcommand, the line it prints once it serves, the one file it exports and the
/// sub-type of its FUSE mount (`fuse.ferroceph-rbd` in /proc/self/mountinfo).
pub const SUBCOMMAND: &str = "fuse-export";
pub const READY: &str = "READY";
pub const EXPORT_FILE: &str = "image";
pub const FUSE_SUBTYPE: &str = "ferroceph-rbd";

pub(crate) struct Fuse {
    pub env: AttachEnv,
}

/// `losetup` arguments that attach `file`.
pub(crate) fn losetup_args(file: &Path, read_only: bool) -> Vec<String> {
    let mut a = vec![
        "--find".to_string(),
        "--show".into(),
        "--direct-io=on".into(),
    ];
    if read_only {
        a.push("--read-only".into());
    }
    a.push(file.display().to_string());
    a
}

/// The exporter's arguments (no key: it reads that from standard input).
pub(crate) fn exporter_args(req: &AttachRequest<'_>, dir: &Path, timeout: Duration) -> Vec<String> {
    let mut a = vec![
        SUBCOMMAND.to_string(),
        "--monitors".into(),
        req.loc.monitors.join(","),
        "--user".into(),
        req.loc.user.clone(),
        "--pool".into(),
        req.loc.pool.clone(),
        format!("--namespace={}", req.loc.namespace),
        "--image".into(),
        req.loc.image.clone(),
        "--mountpoint".into(),
        dir.display().to_string(),
        format!("--timeout={}s", timeout.as_secs().max(1)),
    ];
    if req.read_only {
        a.push("--read-only".into());
    }
    a
}

/// A second, read-only loop device on an exported file, for publishing a block volume
/// read-only: a read-only bind mount does not stop writes to a device node, a read-only
/// device does.
pub(crate) async fn read_only_view(file: &Path, timeout: Duration) -> Result<String> {
    let args = losetup_args(file, true);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = exec::run("losetup", &a, &[], timeout)
        .await
        .map_err(Error::from)?;
    let device = out.stdout.trim().to_string();
    if loop_name(&device).is_none() {
        return Err(Error::internal(format!(
            "losetup printed {device:?} instead of a loop device"
        )));
    }
    Ok(device)
}

/// `/dev/loop3` → `loop3`.
fn loop_name(device: &str) -> Option<&str> {
    device
        .strip_prefix("/dev/")
        .filter(|n| n.starts_with("loop"))
}

/// The file behind a loop device, from sysfs.
pub(crate) fn loop_backing(device: &str) -> Option<PathBuf> {
    let name = loop_name(device)?;
    let s = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    Some(PathBuf::from(s.trim_end_matches('\n')))
}

/// Every loop device backed by `file`.
pub fn loops_backed_by(file: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                return None;
            }
            let dev = format!("/dev/{name}");
            (loop_backing(&dev)?.as_path() == file).then_some(dev)
        })
        .collect();
    out.sort();
    out
}

/// Exporter processes serving `dir`, found by command line: (pid, start time).
pub fn find_exporters(dir: &Path) -> Vec<(i32, u64)> {
    let want = dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
            let is_ours = args.iter().any(|a| *a == SUBCOMMAND.as_bytes())
                && args
                    .windows(2)
                    .any(|w| w[0] == b"--mountpoint" && w[1] == want.as_bytes());
            if !is_ours {
                return None;
            }
            let (state, start) = super::proc_stat(pid)?;
            (state != 'Z' && state != 'X').then_some((pid, start))
        })
        .collect()
}

/// Whether the recorded exporter process still runs.
pub(crate) fn exporter_alive(f: &FuseState) -> bool {
    super::proc_stat(f.pid).is_some_and(|(s, st)| st == f.start_time && s != 'Z' && s != 'X')
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join(" | ")
}

/// The error for the gRPC code name the exporter reported (`ERROR <code> <message>`).
fn code_error(code: &str, msg: String) -> Error {
    match code {
        "NotFound" => Error::not_found(msg),
        "PermissionDenied" => Error::PermissionDenied(msg),
        "Unavailable" => Error::unavailable(msg),
        "InvalidArgument" => Error::invalid(msg),
        "FailedPrecondition" => Error::precondition(msg),
        _ => Error::internal(msg),
    }
}

impl Fuse {
    /// Starts the exporter and waits for READY; returns its (pid, start time).
    async fn start_exporter(
        &self,
        req: &AttachRequest<'_>,
        dir: &Path,
    ) -> Result<(i32, u64, Option<u64>)> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&req.paths.log)
            .map_err(|e| {
                Error::internal(format!("cannot open {}: {e}", req.paths.log.display()))
            })?;
        let exe = &self.env.exe;
        let (program, args) = crate::node::outlive::command_line(
            crate::node::outlive::current(),
            exe,
            &exe.display().to_string(),
            &exporter_args(req, dir, self.env.ceph_timeout),
        );
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(&args)
            .env("FERROCEPH_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd.spawn().map_err(|e| {
            Error::internal(format!(
                "cannot start the FUSE exporter {}: {e}",
                self.env.exe.display()
            ))
        })?;
        let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.start_kill();
            return Err(Error::internal("the FUSE exporter has no pipes"));
        };
        let handshake = async {
            stdin.write_all(req.key.trim().as_bytes()).await?;
            stdin.write_all(b"\n").await?;
            stdin.shutdown().await?;
            drop(stdin);
            let mut line = String::new();
            tokio::io::BufReader::new(stdout)
                .read_line(&mut line)
                .await?;
            Ok::<String, std::io::Error>(line)
        };
        let wait = self.env.ceph_timeout + Duration::from_secs(15);
        let line = match tokio::time::timeout(wait, handshake).await {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                let _ = child.start_kill();
                return Err(Error::internal(format!(
                    "FUSE exporter for {} failed to start: {e}; log: {}",
                    req.loc.spec(),
                    tail(&req.paths.log, 3)
                )));
            }
            Err(_) => {
                let _ = child.start_kill();
                return Err(Error::DeadlineExceeded(format!(
                    "FUSE exporter for {} did not become ready within {}s; log: {}",
                    req.loc.spec(),
                    wait.as_secs(),
                    tail(&req.paths.log, 3)
                )));
            }
        };
        let line = line.trim();
        if let Some(rest) = line.strip_prefix(READY) {
            let start = super::proc_stat(pid).map(|(_, s)| s).unwrap_or(0);
            let client_id = rest.trim().parse().ok();
            // Not waited for: tokio reaps it if it exits while we run; after a restart
            // it is re-adopted through the record.
            drop(child);
            return Ok((pid, start, client_id));
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        if let Some(rest) = line.strip_prefix("ERROR ") {
            let (code, msg) = rest.split_once(' ').unwrap_or(("Internal", rest));
            return Err(code_error(
                code,
                format!("cannot export {}: {msg}", req.loc.spec()),
            ));
        }
        Err(Error::internal(format!(
            "FUSE exporter for {} exited before it was ready; log: {}",
            req.loc.spec(),
            tail(&req.paths.log, 3)
        )))
    }

    /// Detaches loop devices on `file`, stops exporters of `dir`, unmounts and removes
    /// `dir`. Tolerates every piece being already gone.
    pub(crate) async fn teardown(&self, dir: &Path, file: &Path, known: Option<&FuseState>) {
        let t = self.env.exec_timeout;
        for dev in loops_backed_by(file) {
            match exec::output("losetup", &["-d", &dev], &[], t).await {
                Ok(o) if o.success() => tracing::debug!(device = %dev, "loop device detached"),
                Ok(o) => tracing::warn!(device = %dev, "losetup -d: {}", o.stderr),
                Err(e) => tracing::warn!(device = %dev, "{e}"),
            }
        }
        // The kernel lets go of a loop device when its last user closes it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while !loops_backed_by(file).is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = loops_backed_by(file);
        if !left.is_empty() {
            tracing::warn!(devices = ?left, "loop devices still in use; they detach when their last user closes them");
        }

        let mut procs: Vec<(i32, u64)> = find_exporters(dir);
        if let Some(f) = known {
            if exporter_alive(f) && !procs.iter().any(|(p, _)| *p == f.pid) {
                procs.push((f.pid, f.start_time));
            }
        }
        for (pid, start) in procs {
            if !stop_process(pid, start, Duration::from_secs(10)).await {
                tracing::warn!(pid, "FUSE exporter did not exit");
            }
        }
        if mount::is_mount_point(dir).unwrap_or(false) {
            if let Err(e) = mount::unmount(dir, t).await {
                tracing::warn!(dir = %dir.display(), "{e}; detaching lazily");
                let _ = exec::output("umount", &["-l", &dir.display().to_string()], &[], t).await;
            }
        }
        match std::fs::remove_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(dir = %dir.display(), "cannot remove: {e}"),
        }
    }

    async fn stat_file(file: &Path) -> std::io::Result<u64> {
        let f = file.to_path_buf();
        crate::node::stats::bounded(
            Duration::from_secs(10),
            &format!("stat of {}", file.display()),
            move || std::fs::metadata(&f).map(|m| m.len()),
        )
        .await
    }
}

#[tonic::async_trait]
impl Attacher for Fuse {
    async fn attach(&self, req: &AttachRequest<'_>) -> Result<Attached> {
        let dir = req.paths.fuse_dir.clone();
        let file = dir.join(EXPORT_FILE);
        // Leftovers of an interrupted attempt.
        self.teardown(&dir, &file, None).await;
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))?;
        }
        let (pid, start_time, client_id) =
            self.start_exporter(req, &dir).await.inspect_err(|_| {
                let _ = std::fs::remove_dir(&dir);
            })?;
        let state = FuseState {
            pid,
            start_time,
            dir: dir.clone(),
            file: file.clone(),
            client_id,
        };
        let attached = async {
            Self::stat_file(&file).await.map_err(|e| {
                Error::internal(format!(
                    "the exported file {} is not reachable: {e}",
                    file.display()
                ))
            })?;
            let args = losetup_args(&file, req.read_only);
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = exec::run("losetup", &a, &[], self.env.exec_timeout)
                .await
                .map_err(Error::from)?;
            let device = out.stdout.trim().to_string();
            if loop_name(&device).is_none() {
                return Err(Error::internal(format!(
                    "losetup printed {device:?} instead of a loop device"
                )));
            }
            Ok(device)
        }
        .await;
        match attached {
            Ok(device) => Ok(Attached {
                device,
                fuse: Some(state),
                nbd_pid: None,
            }),
            Err(e) => {
                self.teardown(&dir, &file, Some(&state)).await;
                Err(e)
            }
        }
    }

    async fn detach(&self, rec: &Record) -> Result<()> {
        let paths = crate::node::record::paths(&rec.staging_path);
        let (dir, file) = match &rec.fuse {
            Some(f) => (f.dir.clone(), f.file.clone()),
            None => (paths.fuse_dir.clone(), paths.fuse_dir.join(EXPORT_FILE)),
        };
        self.teardown(&dir, &file, rec.fuse.as_ref()).await;
        let _ = std::fs::remove_file(&paths.log);
        if mount::is_mount_point(&dir).unwrap_or(false) {
            return Err(Error::internal(format!(
                "the FUSE export {} is still mounted",
                dir.display()
            )));
        }
        Ok(())
    }

    async fn health(&self, rec: &Record) -> Health {
        let Some(f) = &rec.fuse else {
            return Health::Broken("no FUSE exporter was recorded".into());
        };
        if !exporter_alive(f) {
            return Health::Broken(format!("the FUSE exporter (pid {}) is not running", f.pid));
        }
        if !mount::is_mount_point(&f.dir).unwrap_or(false) {
            return Health::Broken(format!(
                "the FUSE export {} is not mounted",
                f.dir.display()
            ));
        }
        if let Err(e) = Self::stat_file(&f.file).await {
            let why = format!(
                "the exported image {} is not reachable: {e}",
                f.file.display()
            );
            return if crate::node::stats::is_definite_failure(&e) {
                Health::Broken(why)
            } else {
                Health::Unresponsive(why)
            };
        }
        match &rec.device {
            Some(d) if loop_backing(d).as_deref() == Some(f.file.as_path()) => Health::Healthy,
            Some(d) => Health::Broken(format!(
                "loop device {d} no longer serves {}",
                f.file.display()
            )),
            None => Health::Broken("no loop device was recorded".into()),
        }
    }

    async fn refresh_size(&self, rec: &Record, want: u64) -> Result<u64> {
        let (Some(f), Some(dev)) = (&rec.fuse, &rec.device) else {
            return Err(Error::precondition(
                "the volume has no FUSE attachment recorded",
            ));
        };
        // The exporter reports librbd's size on every stat; wait until the resize shows.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let size = Self::stat_file(&f.file).await.map_err(|e| {
                Error::internal(format!(
                    "the exported image {} is not reachable: {e}",
                    f.file.display()
                ))
            })?;
            if size >= want {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::internal(format!(
                    "the image is still {size} bytes, expected at least {want}; was ControllerExpandVolume called?"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        exec::run("losetup", &["-c", dev], &[], self.env.exec_timeout)
            .await
            .map_err(Error::from)?;
        // read-only views published for block volumes are loop devices of their own
        for view in loops_backed_by(&f.file).iter().filter(|v| *v != dev) {
            exec::run("losetup", &["-c", view], &[], self.env.exec_timeout)
                .await
                .map_err(Error::from)?;
        }
        super::wait_for_size(dev, want, Duration::from_secs(10)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::record::{paths, ImageLocation};

    #[test]
    fn command_lines_carry_no_key() {
        let loc = ImageLocation {
            cluster_id: "c".into(),
            monitors: vec!["127.0.0.1:6789".into()],
            pool: "rbd".into(),
            namespace: "ns".into(),
            image: "csi-vol-1".into(),
            user: "csi-rbd".into(),
        };
        let p = paths(Path::new("/k/vol/globalmount"));
        let req = AttachRequest {
            loc: &loc,
            key: "AQBsecretkey==",
            read_only: true,
            map_options: None,
            paths: &p,
        };
        let a = exporter_args(&req, &p.fuse_dir, Duration::from_secs(20)).join(" ");
        assert_eq!(
            a,
            "fuse-export --monitors 127.0.0.1:6789 --user csi-rbd --pool rbd --namespace=ns --image csi-vol-1 --mountpoint /k/vol/.ferroceph-globalmount.fuse --timeout=20s --read-only"
        );
        assert!(!a.contains("AQB"));
        assert_eq!(
            losetup_args(Path::new("/d/image"), false).join(" "),
            "--find --show --direct-io=on /d/image"
        );
        assert_eq!(
            losetup_args(Path::new("/d/image"), true).join(" "),
            "--find --show --direct-io=on --read-only /d/image"
        );
        assert_eq!(loop_name("/dev/loop7"), Some("loop7"));
        assert_eq!(loop_name("/dev/sda"), None);
        assert_eq!(loop_backing("/dev/sda"), None);
    }
}
