//! The CephFS backend of the controller core: the Ceph work of each Controller RPC on
//! subvolumes (in `subvolume.rs`), and CephFS's StorageClass parameters and secrets.

use crate::cephfs::backing;
use crate::cephfs::params::{
    admin_credentials, snapshot_prefix, FsParams, DEFAULT_JOURNAL_NAMESPACE,
};
use crate::cephfs::subvolume::{self, CreateSpec, FsPlace, Source};
use crate::config::{ClusterInfo, ClusterMap};
use crate::controller::backend::{
    At, Backend, Condition, Expanded, MadeSnapshot, MadeVolume, NewVolume, Site, SnapshotEntry,
    VolumeEntry,
};
use crate::controller::listing::uuid_tail;
use crate::controller::ControllerCore;
use crate::credentials::Credentials;
use crate::error::{Error, Result};
use crate::journal;
use crate::validate::{self, ModeRules, CEPHFS_MODES};
use crate::volid::CsiId;
use csi::v1 as pb;
use rados::Cluster;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

pub(crate) struct CephFsBackend;

/// The CSI Controller service for CephFS.
pub(crate) type CephFsController = ControllerCore<CephFsBackend>;

/// The longest a CreateVolume waits for a CephFS clone before answering Aborted.
const CLONE_WAIT: Duration = Duration::from_secs(30);
/// What a CreateVolume keeps of its deadline to answer after the clone wait.
const ANSWER_MARGIN: Duration = Duration::from_secs(5);

/// The journal's RADOS namespace in the metadata pool.
pub fn journal_namespace(info: &ClusterInfo) -> String {
    if info.cephfs.rados_namespace.is_empty() {
        DEFAULT_JOURNAL_NAMESPACE.to_string()
    } else {
        info.cephfs.rados_namespace.clone()
    }
}

/// The quota a CreateVolume asks for: none when no capacity is given (or both bounds are
/// 0), else the capacity rounded up to whole MiB.
pub fn requested_quota(range: Option<&pb::CapacityRange>) -> Result<Option<u64>> {
    match range {
        None => Ok(None),
        Some(r) if r.required_bytes == 0 && r.limit_bytes == 0 => Ok(None),
        Some(r) => Ok(Some(validate::capacity(Some(r))?)),
    }
}

fn place_at<'c>(c: &'c Cluster, site: &Site, at: &At) -> Result<Option<FsPlace<'c>>> {
    Ok(match at {
        At::Name(fs) => Some(FsPlace::by_name(
            c,
            fs,
            &site.namespace,
            &site.instance,
            &site.group,
        )?),
        At::Id(fscid) => FsPlace::by_id(c, *fscid, &site.namespace, &site.instance, &site.group)?,
    })
}

/// The uuids of the subvolumes in a group (from their `<prefix><uuid>` names).
fn subvolume_uuids(c: &Cluster, fs: &str, group: &str) -> Result<BTreeSet<String>> {
    let cmd = serde_json::json!({
        "prefix": "fs subvolume ls", "vol_name": fs, "group_name": group, "format": "json"
    });
    let out = match c.mgr_command(&cmd.to_string(), &[]) {
        Ok(out) => out,
        Err(e) if e.kind() == rados::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => {
            return Err(Error::ceph(
                format!("list the subvolumes of {fs}/{group}"),
                e,
            ))
        }
    };
    let v: serde_json::Value = serde_json::from_slice(&out.out).unwrap_or_default();
    Ok(v.as_array()
        .map(|subs| {
            subs.iter()
                .filter_map(|s| s["name"].as_str().and_then(uuid_tail).map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

impl Backend for CephFsBackend {
    const NAME: &'static str = "CephFS";
    const LOCATION: &'static str = "filesystem";
    type Params = FsParams;

    fn modes() -> &'static ModeRules {
        &CEPHFS_MODES
    }

    fn parse_params(params: &HashMap<String, String>) -> Result<FsParams> {
        FsParams::parse(params).map_err(Error::invalid)
    }

    fn cluster_id(params: &FsParams) -> &str {
        &params.cluster_id
    }

    fn location_name(params: &FsParams) -> &str {
        &params.fs_name
    }

    fn create_credentials(
        secrets: &HashMap<String, String>,
        _params: &FsParams,
    ) -> Result<Credentials> {
        Self::credentials(secrets)
    }

    fn credentials(secrets: &HashMap<String, String>) -> Result<Credentials> {
        admin_credentials(secrets).map_err(Error::invalid)
    }

    fn site(
        clusters: &ClusterMap,
        cluster_id: &str,
        _params: Option<&FsParams>,
        instance: &str,
    ) -> Result<Site> {
        let info = clusters.get(cluster_id)?;
        Ok(Site {
            cluster_id: cluster_id.to_string(),
            namespace: journal_namespace(&info),
            group: info.subvolume_group().to_string(),
            monitors: info.monitors,
            instance: instance.to_string(),
        })
    }

    fn snapshot_prefix(params: &HashMap<String, String>) -> Result<String> {
        snapshot_prefix(params).map_err(Error::invalid)
    }

    fn requested_size(range: Option<&pb::CapacityRange>) -> Result<Option<u64>> {
        requested_quota(range)
    }

    fn create_volume(c: &Cluster, site: &Site, v: NewVolume<FsParams>) -> Result<MadeVolume> {
        let p = &v.params;
        if p.backing_snapshot {
            backing::check_capabilities(&v.capabilities)?;
        }
        let place = FsPlace::by_name(c, &p.fs_name, &site.namespace, &site.instance, &site.group)?;
        let source_id = v.source.as_ref().map(|s| s.raw.clone()).unwrap_or_default();
        let source = match v.source {
            None => Source::Blank,
            Some(src) if src.id.location != place.fs.fscid => {
                return Err(Error::invalid(format!(
                    "content source {source_id} lives in filesystem id {}, but the volume goes to {:?} (id {}); cloning across filesystems is not supported",
                    src.id.location, p.fs_name, place.fs.fscid
                )));
            }
            Some(src) if src.is_snapshot => Source::Snapshot(src.id.uuid),
            Some(src) => Source::Volume(src.id.uuid),
        };
        // a clone may complete within the RPC (leaving time to answer); longer ones get
        // Aborted and the CO's retry finds them done
        let clone_wait = v
            .time_left
            .map(|t| t.saturating_sub(ANSWER_MARGIN).min(CLONE_WAIT))
            .unwrap_or_default();
        let spec = CreateSpec {
            name: &v.name,
            quota: requested_quota(v.range.as_ref())?,
            range: v.range.as_ref(),
            pool: p.pool.as_deref(),
            vol_prefix: &p.vol_prefix,
            owner: p.pvc_namespace.as_deref(),
            source,
            source_id: &source_id,
            clone_wait,
        };
        let created = if p.backing_snapshot {
            backing::create_volume(&place, &spec)?
        } else {
            subvolume::create_volume(&place, &spec)?
        };
        let mut context = p.context.clone();
        context.insert("clusterID".into(), p.cluster_id.clone());
        context.insert("fsName".into(), p.fs_name.clone());
        context.insert("subvolumeName".into(), created.subvolume.clone());
        context.insert("subvolumePath".into(), created.path.clone());
        Ok(MadeVolume {
            uuid: created.uuid,
            location: place.fs.fscid,
            capacity: created.quota.unwrap_or(0),
            context,
        })
    }

    fn delete_volume(c: &Cluster, site: &Site, id: &CsiId) -> Result<Option<String>> {
        let Some(place) = place_at(c, site, &At::Id(id.location))? else {
            return Ok(None);
        };
        // a snapshot-backed volume drops its reference; others remove their subvolume
        backing::delete_volume(&place, &id.uuid)?;
        Ok(Some(place.fs.name.clone()))
    }

    fn delete_snapshot(c: &Cluster, site: &Site, id: &CsiId) -> Result<Option<String>> {
        let Some(place) = place_at(c, site, &At::Id(id.location))? else {
            return Ok(None);
        };
        // kept while snapshot-backed volumes still use it (ceph-csi's reference tracker)
        backing::delete_snapshot(&place, &id.to_string(), &id.uuid)?;
        Ok(Some(place.fs.name.clone()))
    }

    fn volume_exists(c: &Cluster, site: &Site, id: &CsiId) -> Result<bool> {
        let Some(place) = place_at(c, site, &At::Id(id.location))? else {
            return Ok(false);
        };
        Ok(place
            .volumes()
            .get(&id.uuid)
            .map_err(|e| subvolume::jerr("read volume journal", e))?
            .is_some())
    }

    fn create_snapshot(
        c: &Cluster,
        site: &Site,
        source: &CsiId,
        source_raw: &str,
        name: &str,
        prefix: &str,
    ) -> Result<Option<(MadeSnapshot, String)>> {
        let Some(place) = place_at(c, site, &At::Id(source.location))? else {
            return Ok(None);
        };
        let s = subvolume::create_snapshot(&place, name, &source.uuid, source_raw, prefix)?;
        let made = MadeSnapshot {
            uuid: s.uuid,
            location: place.fs.fscid,
            size: s.size,
            created_nanos: s.created_nanos,
        };
        Ok(Some((made, place.fs.name.clone())))
    }

    fn expand(
        c: &Cluster,
        site: &Site,
        id: &CsiId,
        raw: &str,
        size: u64,
    ) -> Result<Option<Expanded>> {
        let Some(place) = place_at(c, site, &At::Id(id.location))? else {
            return Ok(None);
        };
        let quota = subvolume::expand(&place, &id.uuid, raw, size)?;
        Ok(Some(Expanded {
            // 0: the volume has no quota at all, so any size fits.
            capacity: if quota == 0 { size } else { quota },
            node_expansion_required: false,
        }))
    }

    fn volume_condition(c: &Cluster, site: &Site, id: &CsiId) -> Result<Option<(u64, Condition)>> {
        let Some(place) = place_at(c, site, &At::Id(id.location))? else {
            return Ok(None);
        };
        Ok(
            subvolume::volume_condition(&place, &id.uuid)?.map(|(quota, abnormal, message)| {
                (quota.unwrap_or(0), Condition { abnormal, message })
            }),
        )
    }

    fn discover_locations(c: &Cluster) -> Result<Vec<String>> {
        Ok(subvolume::filesystems(c)?
            .into_iter()
            .map(|fs| fs.name)
            .collect())
    }

    fn list_volumes(c: &Cluster, site: &Site, at: &At) -> Result<Option<(i64, Vec<VolumeEntry>)>> {
        let Some(place) = place_at(c, site, at)? else {
            return Ok(None);
        };
        let entries = place
            .volumes()
            .list_all()
            .map_err(|e| subvolume::jerr("list volume journal", e))?;
        if entries.is_empty() {
            return Ok(Some((place.fs.fscid, vec![])));
        }
        // One listing of the group; volumes recorded in another group are asked one by one.
        let present = subvolume_uuids(c, &place.fs.name, &place.group)?;
        let mut volumes = Vec::with_capacity(entries.len());
        for (_, uuid) in entries {
            let condition = if present.contains(&uuid) {
                Condition::healthy("subvolume is present")
            } else {
                match subvolume::volume_condition(&place, &uuid)? {
                    Some((_, abnormal, message)) => Condition { abnormal, message },
                    None => continue, // released since the listing
                }
            };
            volumes.push(VolumeEntry { uuid, condition });
        }
        Ok(Some((place.fs.fscid, volumes)))
    }

    fn list_snapshots(
        c: &Cluster,
        site: &Site,
        at: &At,
        only: Option<&str>,
    ) -> Result<Option<(i64, Vec<SnapshotEntry>)>> {
        let Some(place) = place_at(c, site, at)? else {
            return Ok(None);
        };
        let finished = place
            .snaps()
            .finished_entries(only, journal::SOURCE)
            .map_err(|e| subvolume::jerr("read snapshot journal", e))?;
        let out = finished
            .into_iter()
            .map(|(uuid, attrs)| {
                let info = subvolume::read_snapshot_info(&place, &uuid, &attrs);
                let source_uuid = uuid_tail(&info.source_sub).map(str::to_string);
                SnapshotEntry::new(uuid, source_uuid, info.size, info.created_nanos)
            })
            .collect();
        Ok(Some((place.fs.fscid, out)))
    }

    /// The `pool` parameter (the subvolumes' data pool), else the filesystem's first data
    /// pool.
    fn capacity_pool(
        c: &Cluster,
        params: &HashMap<String, String>,
        location: Option<&str>,
    ) -> Result<Option<i64>> {
        if let Some(pool) = params.get("pool").filter(|p| !p.is_empty()) {
            return match c.pool_lookup(pool) {
                Ok(id) => Ok(Some(id)),
                Err(e) if e.kind() == rados::ErrorKind::NotFound => Err(Error::invalid(
                    format!("pool {pool:?} does not exist in the cluster; check the StorageClass parameters"),
                )),
                Err(e) => Err(Error::ceph(format!("look up pool {pool}"), e)),
            };
        }
        let fs_name = params
            .get("fsName")
            .filter(|f| !f.is_empty())
            .map(String::as_str)
            .or(location);
        let Some(fs_name) = fs_name else {
            return Ok(None);
        };
        let fs = subvolume::fs_by_name(c, fs_name)?;
        Ok(fs.data_pools.first().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_from_capacity() {
        assert_eq!(requested_quota(None).unwrap(), None);
        let r = |req, lim| pb::CapacityRange {
            required_bytes: req,
            limit_bytes: lim,
        };
        assert_eq!(requested_quota(Some(&r(0, 0))).unwrap(), None);
        assert_eq!(requested_quota(Some(&r(1, 0))).unwrap(), Some(1 << 20));
        assert_eq!(
            requested_quota(Some(&r(5 << 20, 0))).unwrap(),
            Some(5 << 20)
        );
        assert!(requested_quota(Some(&r(-1, 0))).is_err());
    }

    #[test]
    fn uuid_tails() {
        assert_eq!(
            uuid_tail("csi-vol-eba90b33-0156-11ec-a30b-4678a93686c2"),
            Some("eba90b33-0156-11ec-a30b-4678a93686c2")
        );
        assert_eq!(uuid_tail("short"), None);
    }
}
