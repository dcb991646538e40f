//! Which clusters the controller can reach without the request's secrets, and with which
//! credentials: ListVolumes, ListSnapshots, GetCapacity and ControllerGetVolume carry no
//! secrets in Kubernetes. Credentials come from `--controllersecrets` (a directory holding a
//! Secret's keys, mounted into the controller; survives restarts) or else from the last call
//! that carried secrets for that cluster (memory only).

use crate::controller::backend::Site;
use crate::credentials::Credentials;
use crate::error::{Error, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A cluster the controller has worked with.
#[derive(Clone)]
pub(crate) struct Known {
    pub(crate) site: Site,
    pub(crate) creds: Option<Credentials>,
    /// Pools or filesystems it provisioned into or deleted from.
    pub(crate) locations: BTreeSet<String>,
}

pub(crate) struct Registry {
    known: Mutex<BTreeMap<String, Known>>,
    secrets_dir: Option<PathBuf>,
}

/// The longest value a secret file may hold (a cephx key is 40 characters).
const MAX_SECRET_FILE: u64 = 4096;

impl Registry {
    pub(crate) fn new(secrets_dir: Option<PathBuf>) -> Registry {
        Registry {
            known: Mutex::new(BTreeMap::new()),
            secrets_dir,
        }
    }

    pub(crate) fn remember(
        &self,
        site: &Site,
        creds: Option<&Credentials>,
        location: Option<&str>,
    ) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let entry = known
            .entry(site.cluster_id.clone())
            .or_insert_with(|| Known {
                site: site.clone(),
                creds: None,
                locations: BTreeSet::new(),
            });
        entry.site = site.clone();
        if let Some(c) = creds {
            entry.creds = Some(c.clone());
        }
        if let Some(l) = location {
            entry.locations.insert(l.to_string());
        }
    }

    pub(crate) fn all(&self) -> BTreeMap<String, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn get(&self, cluster_id: &str) -> Option<Known> {
        self.all().remove(cluster_id)
    }

    pub(crate) fn has_secrets_dir(&self) -> bool {
        self.secrets_dir.is_some()
    }

    /// The configured secret for a cluster: `<dir>/<clusterID>/` when that directory
    /// exists, else `<dir>/` itself. None without `--controllersecrets` or when it holds no
    /// keys.
    pub(crate) fn configured_secrets(
        &self,
        cluster_id: &str,
    ) -> Result<Option<HashMap<String, String>>> {
        let Some(dir) = &self.secrets_dir else {
            return Ok(None);
        };
        let per_cluster = dir.join(cluster_id);
        let from = if !cluster_id.is_empty()
            && !cluster_id.contains('/')
            && !cluster_id.starts_with('.')
            && per_cluster.is_dir()
        {
            per_cluster
        } else {
            dir.clone()
        };
        let secrets = read_secret_dir(&from)?;
        Ok((!secrets.is_empty()).then_some(secrets))
    }
}

/// The keys of a Kubernetes Secret mounted as a volume: one file per key; the `..data`
/// bookkeeping entries and subdirectories are skipped. Values are never logged.
pub(crate) fn read_secret_dir(dir: &Path) -> Result<HashMap<String, String>> {
    let unreadable = |e: std::io::Error| {
        Error::precondition(format!(
            "cannot read the controller secrets directory {}: {e} (check --controllersecrets and the Secret volume)",
            dir.display()
        ))
    };
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        if meta.len() > MAX_SECRET_FILE {
            return Err(Error::precondition(format!(
                "secret file {} is larger than {MAX_SECRET_FILE} bytes; it is not a cephx user or key",
                path.display()
            )));
        }
        let value = std::fs::read_to_string(&path).map_err(unreadable)?;
        out.insert(name, value.trim().to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_volume_layout_is_read_and_per_cluster_dirs_win() {
        let dir = std::env::temp_dir().join(format!("ferro-known-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("..2026_12_02").join("x")).unwrap();
        std::fs::create_dir_all(dir.join("cluster-b")).unwrap();
        std::fs::write(dir.join("userID"), "csi-rbd\n").unwrap();
        std::fs::write(dir.join("userKey"), "AQB-key==").unwrap();
        std::fs::write(dir.join("..data"), "ignored").unwrap();
        std::fs::write(dir.join("cluster-b").join("adminID"), "admin").unwrap();
        std::fs::write(dir.join("cluster-b").join("adminKey"), "AQC-key==").unwrap();
        let reg = Registry::new(Some(dir.clone()));
        let a = reg.configured_secrets("cluster-a").unwrap().unwrap();
        assert_eq!(a.get("userID").map(String::as_str), Some("csi-rbd"));
        assert_eq!(
            a.len(),
            2,
            "bookkeeping entries are skipped: {:?}",
            a.keys()
        );
        let b = reg.configured_secrets("cluster-b").unwrap().unwrap();
        assert_eq!(b.get("adminID").map(String::as_str), Some("admin"));
        assert!(!b.contains_key("userID"));
        // a clusterID is never a path outside the directory
        let up = reg.configured_secrets("../etc").unwrap().unwrap();
        assert_eq!(up.len(), 2);
        assert!(Registry::new(None)
            .configured_secrets("x")
            .unwrap()
            .is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
