//! Filesystems (the FSMap) and a filesystem's place on a connected cluster: its metadata
//! pool with the journals, the subvolume group, and the names a journal entry gives.

use super::{mgr::Volumes, GROUP_KEY};
use crate::cephfs::params::{DEFAULT_SNAP_PREFIX, DEFAULT_VOL_PREFIX};
use crate::error::{Error, Result};
use crate::journal::{self, Attrs, Journal, Kind};
use rados::{Cluster, ErrorKind, IoCtx};
use serde_json::Value;

/// One CephFS filesystem as the FSMap describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    pub name: String,
    pub fscid: i64,
    pub metadata_pool: i64,
    pub data_pools: Vec<i64>,
}

pub fn parse_fs_dump(v: &Value) -> Vec<FsInfo> {
    v["filesystems"]
        .as_array()
        .map(|fss| {
            fss.iter()
                .filter_map(|f| {
                    let m = &f["mdsmap"];
                    Some(FsInfo {
                        name: m["fs_name"].as_str()?.to_string(),
                        fscid: f["id"].as_i64()?,
                        metadata_pool: m["metadata_pool"].as_i64()?,
                        data_pools: m["data_pools"]
                            .as_array()
                            .map(|d| d.iter().filter_map(Value::as_i64).collect())
                            .unwrap_or_default(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn filesystems(cluster: &Cluster) -> Result<Vec<FsInfo>> {
    let out = cluster
        .mon_command(r#"{"prefix": "fs dump", "format": "json"}"#, &[])
        .map_err(Error::ceph_ctx("read the filesystem map"))?;
    let v: Value = serde_json::from_slice(&out.out)
        .map_err(|e| Error::internal(format!("cannot parse `fs dump`: {e}")))?;
    Ok(parse_fs_dump(&v))
}

pub fn fs_by_name(cluster: &Cluster, name: &str) -> Result<FsInfo> {
    let all = filesystems(cluster)?;
    let names: Vec<String> = all.iter().map(|f| f.name.clone()).collect();
    all.into_iter().find(|f| f.name == name).ok_or_else(|| {
        Error::invalid(format!(
            "CephFS filesystem {name:?} does not exist (known: {}); check the fsName parameter",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ))
    })
}

pub fn fs_by_id(cluster: &Cluster, fscid: i64) -> Result<Option<FsInfo>> {
    Ok(filesystems(cluster)?.into_iter().find(|f| f.fscid == fscid))
}

/// A snapshot of a subvolume: `<group>/<subvolume>@<snapshot>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapRef {
    pub group: String,
    pub sub: String,
    pub snap: String,
}

impl SnapRef {
    pub fn encode(&self) -> String {
        format!("{}/{}@{}", self.group, self.sub, self.snap)
    }
    pub fn decode(s: &str) -> Option<SnapRef> {
        let (group, rest) = s.split_once('/')?;
        let (sub, snap) = rest.rsplit_once('@')?;
        Some(SnapRef {
            group: group.to_string(),
            sub: sub.to_string(),
            snap: snap.to_string(),
        })
    }
}

/// A filesystem on a connected cluster, with the journals in its metadata pool.
pub struct FsPlace<'a> {
    pub cluster: &'a Cluster,
    pub fs: FsInfo,
    pub io: IoCtx,
    pub instance: String,
    /// The subvolume group new volumes go to (config.json), and the fallback for journal
    /// entries that do not record theirs (made by ceph-csi).
    pub group: String,
}

impl<'a> FsPlace<'a> {
    pub fn new(
        cluster: &'a Cluster,
        fs: FsInfo,
        namespace: &str,
        instance: &str,
        group: &str,
    ) -> Result<Self> {
        let io = cluster
            .ioctx_by_id(fs.metadata_pool, namespace)
            .map_err(|e| Error::ceph(format!("open the metadata pool of {}", fs.name), e))?;
        Ok(FsPlace {
            cluster,
            fs,
            io,
            instance: instance.to_string(),
            group: group.to_string(),
        })
    }

    pub fn by_name(
        cluster: &'a Cluster,
        fs_name: &str,
        namespace: &str,
        instance: &str,
        group: &str,
    ) -> Result<Self> {
        let fs = fs_by_name(cluster, fs_name)?;
        Self::new(cluster, fs, namespace, instance, group)
    }

    /// None when no filesystem has that id any more.
    pub fn by_id(
        cluster: &'a Cluster,
        fscid: i64,
        namespace: &str,
        instance: &str,
        group: &str,
    ) -> Result<Option<Self>> {
        match fs_by_id(cluster, fscid)? {
            None => Ok(None),
            Some(fs) => Self::new(cluster, fs, namespace, instance, group).map(Some),
        }
    }

    pub fn volumes(&self) -> Journal<'_> {
        Journal::new(&self.io, Kind::Volume, &self.instance)
    }

    pub fn snaps(&self) -> Journal<'_> {
        Journal::new(&self.io, Kind::Snapshot, &self.instance)
    }

    pub fn mgr(&self) -> Volumes<'_> {
        Volumes::new(self.cluster, &self.fs.name)
    }

    /// Name of the data pool with this id, for errors and checks.
    pub(super) fn check_data_pool(&self, pool: &str) -> Result<()> {
        let id = self.cluster.pool_lookup(pool).map_err(|e| match e.kind() {
            ErrorKind::NotFound => Error::invalid(format!(
                "pool {pool:?} does not exist; check the StorageClass pool parameter"
            )),
            _ => Error::ceph(format!("look up pool {pool}"), e),
        })?;
        if !self.fs.data_pools.contains(&id) {
            return Err(Error::invalid(format!(
                "pool {pool:?} is not a data pool of filesystem {:?}; add it with `ceph fs add_data_pool` or fix the pool parameter",
                self.fs.name
            )));
        }
        Ok(())
    }

    /// (group, subvolume) of a volume journal entry.
    pub fn volume_names(&self, uuid: &str, attrs: &Attrs) -> (String, String) {
        (
            attrs
                .get(GROUP_KEY)
                .cloned()
                .unwrap_or_else(|| self.group.clone()),
            attrs
                .get(journal::IMAGE_NAME)
                .cloned()
                .unwrap_or_else(|| format!("{DEFAULT_VOL_PREFIX}{uuid}")),
        )
    }

    /// The snapshot a snapshot journal entry names, None when the entry lacks its source.
    pub fn snapshot_ref(&self, uuid: &str, attrs: &Attrs) -> Option<SnapRef> {
        Some(SnapRef {
            group: attrs
                .get(GROUP_KEY)
                .cloned()
                .unwrap_or_else(|| self.group.clone()),
            sub: attrs.get(journal::SOURCE)?.clone(),
            snap: attrs
                .get(journal::IMAGE_NAME)
                .cloned()
                .unwrap_or_else(|| format!("{DEFAULT_SNAP_PREFIX}{uuid}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fs_dump() {
        let v: Value = serde_json::from_str(
            r#"{"epoch": 12, "filesystems": [{"mdsmap": {"fs_name": "cephfs", "metadata_pool": 2,
            "data_pools": [3, 5]}, "id": 1}, {"mdsmap": {"fs_name": "broken"}, "id": 2}]}"#,
        )
        .unwrap();
        let fss = parse_fs_dump(&v);
        assert_eq!(
            fss,
            vec![FsInfo {
                name: "cephfs".into(),
                fscid: 1,
                metadata_pool: 2,
                data_pools: vec![3, 5]
            }]
        );
        assert!(parse_fs_dump(&Value::Null).is_empty());
    }

    #[test]
    fn snap_refs_round_trip() {
        let r = SnapRef {
            group: "csi".into(),
            sub: "csi-vol-1".into(),
            snap: "csi-vol-2".into(),
        };
        assert_eq!(SnapRef::decode(&r.encode()), Some(r));
        assert_eq!(SnapRef::decode("nogroup"), None);
    }
}
