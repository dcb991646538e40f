//! Short-lived key files for tools that take a cephx key only from a file (`rbd map
//! --keyfile`, `ceph-fuse --keyfile`, `mount -t ceph secretfile=`). The file is created
//! 0600 in the keys directory and removed when the guard drops, whatever happened.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub struct KeyFile {
    path: PathBuf,
}

impl KeyFile {
    /// Writes `key` to a new file with a random name under `dir` (created 0700 if missing).
    pub fn create(dir: &Path, key: &str) -> std::io::Result<KeyFile> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let path = dir.join(format!("keyfile-{}", uuid::Uuid::new_v4()));
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

    pub fn path(&self) -> &Path {
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
    use std::os::unix::fs::PermissionsExt;

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
}
