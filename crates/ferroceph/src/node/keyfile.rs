//! Short-lived key files for tools that take a cephx key only from a file (`rbd map
//! --keyfile`, `ceph-fuse --keyfile`, `mount -t ceph secretfile=`). The file is created
//! 0600 in the keys directory (kept 0700) and removed when the guard drops, whatever
//! happened. A process killed while it held one (SIGKILL during `rbd map` or a mount)
//! leaves it behind; [`prepare_dir`] sweeps those at start-up. The creator's pid is part
//! of the name, so a sweep never takes the file of another plugin that shares the
//! directory and is still running.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub(crate) struct KeyFile {
    path: PathBuf,
}

const PREFIX: &str = "keyfile-";

/// Creates `dir` 0700, or makes it 0700 (an emptyDir is 0777).
fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    if std::fs::metadata(dir)?.permissions().mode() & 0o777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// The pid in a key file's name (`keyfile-<pid>-<uuid>`); None for other names.
fn creator(name: &str) -> Option<i32> {
    let (pid, _) = name.strip_prefix(PREFIX)?.split_once('-')?;
    pid.parse().ok()
}

/// Makes the keys directory private and removes the key files that processes no longer
/// running left behind; returns how many were removed. Run once at start-up.
pub(crate) fn prepare_dir(dir: &Path) -> std::io::Result<usize> {
    private_dir(dir)?;
    let me = std::process::id() as i32;
    let mut removed = 0;
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(PREFIX) {
            continue;
        }
        let live_owner = creator(&name)
            .is_some_and(|pid| pid != me && Path::new(&format!("/proc/{pid}")).exists());
        if live_owner {
            continue;
        }
        match std::fs::remove_file(e.path()) {
            Ok(()) => removed += 1,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(path = %e.path().display(), "cannot remove a leftover key file: {err}")
            }
        }
    }
    Ok(removed)
}

impl KeyFile {
    /// Writes `key` to a new file with a random name under `dir` (made 0700).
    pub(crate) fn create(dir: &Path, key: &str) -> std::io::Result<KeyFile> {
        private_dir(dir)?;
        let path = dir.join(format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let guard = KeyFile { path };
        f.write_all(key.trim().as_bytes())?;
        f.sync_all()?;
        Ok(guard)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), "cannot remove key file: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let path = {
            let k = KeyFile::create(&keys, "AQBkey==\n").unwrap();
            let meta = std::fs::metadata(k.path()).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
            assert_eq!(std::fs::read_to_string(k.path()).unwrap(), "AQBkey==");
            k.path().to_path_buf()
        };
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(&keys).unwrap().count(), 0);
    }

    #[test]
    fn sweep_keeps_live_owners_only() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys).unwrap();
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let live = format!("{PREFIX}{}-x", child.id());
        for n in [
            "keyfile-6b3c1a2e-0000-4000-8000-000000000000",
            "keyfile-999999999-y",
            &format!("{PREFIX}{}-z", std::process::id()),
            &live,
            "other",
        ] {
            std::fs::write(keys.join(n), "AQBkey==").unwrap();
        }
        let removed = prepare_dir(&keys).unwrap();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(removed, 3);
        let mut left: Vec<String> = std::fs::read_dir(&keys)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec![live, "other".to_string()]);
        let mode = std::fs::metadata(&keys).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(creator("keyfile-12-ab"), Some(12));
        assert_eq!(creator("keyfile-ab"), None);
    }
}
