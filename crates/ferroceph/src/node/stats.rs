//! Volume statistics: bytes and inodes of a mounted filesystem (statvfs), the size of a
//! block device, all bounded in time because a dead backing store can make them hang.

use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStats {
    pub bytes_total: u64,
    pub bytes_available: u64,
    pub bytes_used: u64,
    pub inodes_total: u64,
    pub inodes_free: u64,
    pub inodes_used: u64,
}

/// statvfs of the filesystem holding `path`.
pub fn fs_stats(path: &Path) -> std::io::Result<FsStats> {
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
pub fn device_size(path: &Path) -> std::io::Result<u64> {
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::End(0))
}

/// Runs a blocking probe on a worker thread and gives up after `timeout` (the thread may
/// stay blocked on a dead mount; the caller does not).
pub async fn bounded<T, F>(timeout: Duration, what: &str, f: F) -> std::io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
{
    match tokio::time::timeout(timeout, tokio::task::spawn_blocking(f)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(std::io::Error::other(format!("{what}: worker failed: {e}"))),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{what} did not answer within {}s", timeout.as_secs_f64()),
        )),
    }
}

/// Like [`bounded`], on a thread of its own instead of tokio's shared blocking pool: a
/// read of a device or mount whose backing store hangs may never return, and such reads
/// must not take the pool's threads from every other blocking task.
pub async fn on_own_thread<T, F>(timeout: Duration, what: &str, f: F) -> std::io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("ferroceph-probe".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| std::io::Error::other(format!("{what}: cannot start a thread: {e}")))?;
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(std::io::Error::other(format!("{what}: worker failed"))),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{what} did not answer within {}s", timeout.as_secs_f64()),
        )),
    }
}

pub async fn fs_stats_bounded(path: &Path, timeout: Duration) -> std::io::Result<FsStats> {
    let p: PathBuf = path.to_path_buf();
    bounded(timeout, "statvfs", move || fs_stats(&p)).await
}

pub async fn device_size_bounded(path: &Path, timeout: Duration) -> std::io::Result<u64> {
    let p: PathBuf = path.to_path_buf();
    bounded(timeout, "device size", move || device_size(&p)).await
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
}
