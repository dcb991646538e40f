//! The cluster map (`config.json`, a ConfigMap in Kubernetes), in ceph-csi's format.
//! It is re-read whenever the file changes, so operators can add clusters without a restart.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct RbdConfig {
    #[serde(default, rename = "radosNamespace")]
    pub rados_namespace: String,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct CephFsConfig {
    #[serde(default, rename = "subvolumeGroup")]
    pub subvolume_group: String,
    #[serde(default, rename = "kernelMountOptions")]
    pub kernel_mount_options: String,
    #[serde(default, rename = "fuseMountOptions")]
    pub fuse_mount_options: String,
    #[serde(default, rename = "radosNamespace")]
    pub rados_namespace: String,
}

/// One entry of the cluster map. Unknown fields are ignored so that maps written for newer
/// ceph-csi releases still load.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ClusterInfo {
    #[serde(rename = "clusterID")]
    pub cluster_id: String,
    #[serde(default)]
    pub monitors: Vec<String>,
    #[serde(default)]
    pub rbd: RbdConfig,
    #[serde(default, rename = "cephFS")]
    pub cephfs: CephFsConfig,
}

impl ClusterInfo {
    pub fn subvolume_group(&self) -> &str {
        if self.cephfs.subvolume_group.is_empty() {
            "csi"
        } else {
            &self.cephfs.subvolume_group
        }
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    #[error("cluster map {path} does not exist: mount the ceph-csi-config ConfigMap there or pass --configpath")]
    Missing { path: String },
    #[error("cannot read cluster map {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("cluster map {path} is not valid: {reason} (expected a JSON list of {{\"clusterID\": \"...\", \"monitors\": [\"host:port\", ...]}})")]
    Invalid { path: String, reason: String },
    #[error("clusterID {cluster_id:?} is not in the cluster map {path} (known: {known}); add it to the ceph-csi-config ConfigMap")]
    UnknownCluster {
        cluster_id: String,
        path: String,
        known: String,
    },
    #[error("clusterID {cluster_id:?} in {path} lists no monitors")]
    NoMonitors { cluster_id: String, path: String },
}

#[derive(Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

struct Loaded {
    stamp: Stamp,
    clusters: Result<Arc<Vec<ClusterInfo>>, ConfigError>,
}

/// Reads the map lazily and reloads it when its modification time or size changes.
pub struct ClusterMap {
    path: PathBuf,
    cache: Mutex<Option<Loaded>>,
}

impl ClusterMap {
    /// The map is read once right away, so that its problems and the settings in it that
    /// ferroceph ignores are logged at start-up rather than at the first RPC.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let map = ClusterMap {
            path: path.into(),
            cache: Mutex::new(None),
        };
        let _ = map.clusters();
        map
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// All clusters, reloading the file if it changed.
    pub fn clusters(&self) -> Result<Arc<Vec<ClusterInfo>>, ConfigError> {
        let path = self.path.display().to_string();
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError::Missing { path })
            }
            Err(e) => {
                return Err(ConfigError::Unreadable {
                    path,
                    reason: e.to_string(),
                })
            }
        };
        let stamp = Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(loaded) = cache.as_ref() {
            if loaded.stamp == stamp {
                return loaded.clusters.clone();
            }
        }
        let clusters = load(&self.path).map(Arc::new);
        if let Err(e) = &clusters {
            tracing::warn!(error = %e, "cluster map not usable");
        }
        *cache = Some(Loaded {
            stamp,
            clusters: clusters.clone(),
        });
        clusters
    }

    pub fn get(&self, cluster_id: &str) -> Result<ClusterInfo, ConfigError> {
        let clusters = self.clusters()?;
        let path = self.path.display().to_string();
        let info = clusters
            .iter()
            .find(|c| c.cluster_id == cluster_id)
            .cloned()
            .ok_or_else(|| ConfigError::UnknownCluster {
                cluster_id: cluster_id.to_string(),
                path: path.clone(),
                known: known_ids(&clusters),
            })?;
        if info.monitors.is_empty() {
            return Err(ConfigError::NoMonitors {
                cluster_id: cluster_id.to_string(),
                path,
            });
        }
        Ok(info)
    }
}

fn known_ids(clusters: &[ClusterInfo]) -> String {
    if clusters.is_empty() {
        "none".to_string()
    } else {
        clusters
            .iter()
            .map(|c| format!("{:?}", c.cluster_id))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn load(path: &Path) -> Result<Vec<ClusterInfo>, ConfigError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
        path: p.clone(),
        reason: e.to_string(),
    })?;
    let clusters = parse(&text).map_err(|reason| ConfigError::Invalid {
        path: p.clone(),
        reason,
    })?;
    for (cluster, key) in ignored_keys(&text) {
        tracing::warn!(
            cluster = %cluster,
            "{p}: {key} is set but not implemented by ferroceph; ignored"
        );
    }
    Ok(clusters)
}

/// Settings of ceph-csi's cluster map that ferroceph reads.
const IMPLEMENTED: &[&str] = &[
    "clusterID",
    "monitors",
    "rbd.radosNamespace",
    "cephFS.subvolumeGroup",
    "cephFS.kernelMountOptions",
    "cephFS.fuseMountOptions",
    "cephFS.radosNamespace",
];

/// (clusterID, dotted key) of every setting in the map that ferroceph does not implement
/// (`netNamespaceFilePath`, `readAffinity`, `nfs`, ...). Settings left at an empty or false
/// value change nothing and are not listed.
fn ignored_keys(text: &str) -> Vec<(String, String)> {
    fn is_unset(v: &serde_json::Value) -> bool {
        use serde_json::Value;
        match v {
            Value::Null | Value::Bool(false) => true,
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.values().all(is_unset),
            Value::Number(_) | Value::Bool(true) => false,
        }
    }
    let Ok(serde_json::Value::Array(entries)) = serde_json::from_str(text) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in &entries {
        let Some(obj) = entry.as_object() else {
            continue;
        };
        let cluster = obj
            .get("clusterID")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        for (k, v) in obj {
            match v.as_object() {
                Some(inner) if k == "rbd" || k == "cephFS" => {
                    for (ik, iv) in inner {
                        let key = format!("{k}.{ik}");
                        if !IMPLEMENTED.contains(&key.as_str()) && !is_unset(iv) {
                            out.push((cluster.clone(), key));
                        }
                    }
                }
                _ => {
                    if !IMPLEMENTED.contains(&k.as_str()) && !is_unset(v) {
                        out.push((cluster.clone(), k.clone()));
                    }
                }
            }
        }
    }
    out
}

pub fn parse(text: &str) -> Result<Vec<ClusterInfo>, String> {
    let clusters: Vec<ClusterInfo> = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut seen = std::collections::HashSet::new();
    for c in &clusters {
        if c.cluster_id.is_empty() {
            return Err("an entry has an empty clusterID".to_string());
        }
        if !seen.insert(c.cluster_id.as_str()) {
            return Err(format!("clusterID {:?} appears twice", c.cluster_id));
        }
    }
    Ok(clusters)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"[
      {"clusterID": "fed5480a-f00f-417a-a51d-31d8a8144c03",
       "monitors": ["10.0.0.1:6789", "10.0.0.2:6789"],
       "rbd": {"radosNamespace": "ns1", "netNamespaceFilePath": ""},
       "cephFS": {"subvolumeGroup": "grp", "kernelMountOptions": "ms_mode=secure"},
       "readAffinity": {"enabled": false}},
      {"clusterID": "second", "monitors": ["127.0.0.1:6789"]}
    ]"#;

    #[test]
    fn parses_ceph_csi_format() {
        let c = parse(SAMPLE).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].rbd.rados_namespace, "ns1");
        assert_eq!(c[0].subvolume_group(), "grp");
        assert_eq!(c[0].cephfs.kernel_mount_options, "ms_mode=secure");
        assert_eq!(c[1].subvolume_group(), "csi");
        assert_eq!(c[1].rbd, RbdConfig::default());
    }

    #[test]
    fn names_the_settings_it_ignores() {
        assert!(
            ignored_keys(SAMPLE).is_empty(),
            "{:?}",
            ignored_keys(SAMPLE)
        );
        let map = r#"[{"clusterID": "a", "monitors": ["m:1"],
            "rbd": {"radosNamespace": "x", "netNamespaceFilePath": "/run/netns/a", "mirrorDaemonCount": 2},
            "cephFS": {"subvolumeGroup": "g", "netNamespaceFilePath": ""},
            "nfs": {"netNamespaceFilePath": "/run/netns/b"},
            "readAffinity": {"enabled": true, "crushLocationLabels": ["zone"]}}]"#;
        let keys: Vec<String> = ignored_keys(map).into_iter().map(|(_, k)| k).collect();
        assert_eq!(
            keys,
            [
                "nfs",
                "rbd.mirrorDaemonCount",
                "rbd.netNamespaceFilePath",
                "readAffinity"
            ]
        );
    }

    #[test]
    fn rejects_duplicates_and_empty_ids() {
        assert!(
            parse(r#"[{"clusterID":"a","monitors":[]},{"clusterID":"a"}]"#)
                .unwrap_err()
                .contains("twice")
        );
        assert!(parse(r#"[{"clusterID":""}]"#)
            .unwrap_err()
            .contains("empty"));
        assert!(parse("{").is_err());
    }

    #[test]
    fn clear_errors_and_reload_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let map = ClusterMap::new(&path);
        assert!(matches!(map.get("x"), Err(ConfigError::Missing { .. })));

        std::fs::write(&path, "[{\"clusterID\": \"a\",").unwrap();
        let err = map.get("a").unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");

        std::fs::write(&path, SAMPLE).unwrap();
        let err = map.get("nope").unwrap_err().to_string();
        assert!(err.contains("\"second\""), "{err}");
        assert_eq!(map.get("second").unwrap().monitors, vec!["127.0.0.1:6789"]);

        std::fs::write(&path, r#"[{"clusterID": "third", "monitors": ["m:1"]}]"#).unwrap();
        assert_eq!(map.get("third").unwrap().monitors, vec!["m:1"]);
        assert!(map.get("second").is_err());

        std::fs::write(&path, r#"[{"clusterID": "nomons"}]"#).unwrap();
        assert!(matches!(
            map.get("nomons"),
            Err(ConfigError::NoMonitors { .. })
        ));
    }
}
