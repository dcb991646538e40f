//! Volume statistics: bytes and inodes of a mounted filesystem (statvfs), the size of a
//! block device, all bounded in time because a dead backing store can make them hang.

use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FsStats {
    pub bytes_total: u64,
    pub bytes_available: u64,
    pub bytes_used: u64,
    pub inodes_total: u64,
    pub inodes_free: u64,
    pub inodes_used: u64,
}

/// statvfs of the filesystem holding `path`.
pub(crate) fn fs_stats(path: &Path) -> std::io::Result<FsStats> {
    let s = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    let frsize = s.fragment_size() as u64;
    let total = (s.blocks() as u64).saturating_mul(frsize);
    let free = (s.blocks_free() as u64).saturating_mul(frsize);
    let avail = (s.blocks_available() as u64).saturating_mul(frsize);
    let files = s.files() as u64;
    let ffree = s.files_free() as u64;
    Ok(FsStats {
        bytes_total: total,
        bytes_available: avail,
        bytes_used: total.saturating_sub(free),
        inodes_total: files,
        inodes_free: ffree,
        inodes_used: files.saturating_sub(ffree),
    })
}

/// Whether `path` is a block device node (also a device bind-mounted onto a file).
pub fn is_block_device(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false)
}

/// Size in bytes of a block device (or of a file).
pub(crate) fn device_size(path: &Path) -> std::io::Result<u64> {
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::End(0))
}

/// Whether a probe's error proves the mount or device broken (its server gone, a stale
/// handle, an I/O error), as opposed to slow (a timeout) or unexplained: only a definite
/// failure justifies tearing down what pods may still use.
pub(crate) fn is_definite_failure(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTCONN | libc::ESTALE | libc::EIO | libc::ENODEV | libc::ENXIO | libc::ENOENT)
    )
}

/// At most this many probe threads may hang at once; past it, new probes fail at once.
const MAX_HUNG: usize = 32;

/// Probes that did not answer in time and whose threads still wait, by `what`.
static HUNG: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Runs a blocking probe on a thread of its own and gives up after `timeout`.
///
/// Not on tokio's shared blocking pool: a probe of a hung mount or device may never
/// return, and once hung probes held the pool's threads every Ceph call (and every later
/// probe) would wait behind them. `what` names the probe and its path: while an earlier
/// probe of the same `what` still hangs, the next one fails at once instead of adding a
/// thread, and at most [`MAX_HUNG`] threads hang in all. A timeout is
/// [`std::io::ErrorKind::TimedOut`]: slow, not broken.
pub(crate) async fn bounded<T, F>(timeout: Duration, what: &str, f: F) -> std::io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
{
    let timed_out = |why: String| std::io::Error::new(std::io::ErrorKind::TimedOut, why);
    {
        let hung = HUNG.lock().unwrap_or_else(|p| p.into_inner());
        if hung.iter().any(|w| w == what) {
            return Err(timed_out(format!(
                "{what} did not answer: an earlier one still waits"
            )));
        }
        if hung.len() >= MAX_HUNG {
            return Err(timed_out(format!(
                "{what} not tried: {} probes already wait for answers",
                hung.len()
            )));
        }
    }
    // (finished, abandoned): whoever comes second cleans up the hung entry.
    let state = std::sync::Arc::new(std::sync::Mutex::new((false, false)));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let key = what.to_string();
    let st = state.clone();
    std::thread::Builder::new()
        .name("ferroceph-probe".into())
        .spawn(move || {
            let r = f();
            let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
            s.0 = true;
            if s.1 {
                let mut hung = HUNG.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(i) = hung.iter().position(|w| *w == key) {
                    hung.swap_remove(i);
                }
            }
            let _ = tx.send(r);
        })
        .map_err(|e| std::io::Error::other(format!("{what}: cannot start a thread: {e}")))?;
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(std::io::Error::other(format!("{what}: worker failed"))),
        Err(_) => {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            if !s.0 {
                s.1 = true;
                HUNG.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(what.to_string());
            }
            Err(timed_out(format!(
                "{what} did not answer within {}s",
                timeout.as_secs_f64()
            )))
        }
    }
}

pub(crate) async fn fs_stats_bounded(path: &Path, timeout: Duration) -> std::io::Result<FsStats> {
    let p: PathBuf = path.to_path_buf();
    bounded(
        timeout,
        &format!("statvfs of {}", path.display()),
        move || fs_stats(&p),
    )
    .await
}

pub(crate) async fn device_size_bounded(path: &Path, timeout: Duration) -> std::io::Result<u64> {
    let p: PathBuf = path.to_path_buf();
    bounded(timeout, &format!("size of {}", path.display()), move || {
        device_size(&p)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_a_real_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let s = fs_stats(dir.path()).unwrap();
        assert!(s.bytes_total > 0);
        assert!(s.bytes_available <= s.bytes_total);
        assert!(s.bytes_used <= s.bytes_total);
        assert!(s.inodes_used <= s.inodes_total);
        let f = dir.path().join("f");
        std::fs::write(&f, vec![0u8; 12345]).unwrap();
        assert_eq!(device_size(&f).unwrap(), 12345);
        assert!(!is_block_device(&f));
    }

    #[tokio::test]
    async fn bounded_gives_up() {
        let r = bounded(Duration::from_millis(50), "sleep", || {
            std::thread::sleep(Duration::from_millis(500));
            Ok(())
        })
        .await;
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_hung_probe_is_not_piled_up() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let r = bounded(Duration::from_millis(50), "probe of /hung", move || {
            let _ = rx.recv();
            Ok(())
        })
        .await;
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
        // the same probe again fails at once; another path is tried
        let t = std::time::Instant::now();
        let r = bounded(Duration::from_secs(5), "probe of /hung", || Ok(())).await;
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(
            bounded(Duration::from_secs(5), "probe of /other", || Ok(()))
                .await
                .is_ok()
        );
        // once the hung one returns, the path is probed again
        tx.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            if bounded(Duration::from_secs(5), "probe of /hung", || Ok(()))
                .await
                .is_ok()
            {
                break;
            }
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
