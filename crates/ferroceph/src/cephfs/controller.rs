//! CephFS Controller service: validation and CSI shapes here, Ceph work in `subvolume.rs`.

use crate::ceph::Ceph;
use crate::cephfs::backing;
use crate::cephfs::params::{
    admin_credentials, snapshot_prefix, FsParams, DEFAULT_JOURNAL_NAMESPACE,
};
use crate::cephfs::subvolume::{self, CreateSpec, FsPlace, Source};
use crate::config::{ClusterInfo, ClusterMap, ConfigError};
use crate::credentials::Credentials;
use crate::error::Error;
use crate::journal;
use crate::listing::{
    controller_capabilities, invalid, page, snapshot_filter, timestamp, uuid_tail,
};
use crate::locks::OpLocks;
use crate::validate::{self, CEPHFS_MODES};
use crate::volid::CsiId;
use csi::v1 as pb;
use csi::v1::controller_server::Controller;
use pb::controller_service_capability::rpc::Type as CapType;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

/// Where a cluster is and how to log in, remembered from the last call that carried
/// secrets, for the RPCs that carry none (ListVolumes, ListSnapshots, GetCapacity,
/// ControllerGetVolume).
#[derive(Clone)]
struct Known {
    creds: Credentials,
    /// Filesystems provisioned from, by name.
    filesystems: BTreeSet<String>,
}

/// The longest a CreateVolume waits for a CephFS clone before answering Aborted.
const CLONE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

pub struct CephFsController {
    instance: String,
    clusters: Arc<ClusterMap>,
    ceph: Ceph,
    locks: OpLocks,
    known: Mutex<BTreeMap<String, Known>>,
}

/// The cluster's entry in config.json.
fn cluster_info(clusters: &ClusterMap, cluster_id: &str) -> Result<ClusterInfo, Status> {
    clusters.get(cluster_id).map_err(|e| match e {
        ConfigError::UnknownCluster { .. } => Status::invalid_argument(e.to_string()),
        _ => Status::failed_precondition(e.to_string()),
    })
}

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
pub fn requested_quota(range: Option<&pb::CapacityRange>) -> Result<Option<u64>, Status> {
    match range {
        None => Ok(None),
        Some(r) if r.required_bytes == 0 && r.limit_bytes == 0 => Ok(None),
        Some(r) => validate::capacity(Some(r)).map(Some),
    }
}

impl CephFsController {
    pub fn new(instance: String, clusters: Arc<ClusterMap>, ceph: Ceph, locks: OpLocks) -> Self {
        CephFsController {
            instance,
            clusters,
            ceph,
            locks,
            known: Mutex::new(BTreeMap::new()),
        }
    }

    fn remember(&self, cluster_id: &str, creds: &Credentials, fs: Option<&str>) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let entry = known
            .entry(cluster_id.to_string())
            .or_insert_with(|| Known {
                creds: creds.clone(),
                filesystems: BTreeSet::new(),
            });
        entry.creds = creds.clone();
        if let Some(f) = fs {
            entry.filesystems.insert(f.to_string());
        }
    }

    fn known(&self) -> BTreeMap<String, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn creds_for(
        &self,
        secrets: &HashMap<String, String>,
        cluster_id: &str,
    ) -> Result<Credentials, Status> {
        if secrets.is_empty() {
            if let Some(k) = self.known().get(cluster_id) {
                return Ok(k.creds.clone());
            }
        }
        admin_credentials(secrets).map_err(invalid)
    }

    /// Decodes a handle and finds its cluster; None for handles that are not ours
    /// (static volumes, garbage).
    fn locate(&self, handle: &str) -> Result<Option<(CsiId, ClusterInfo)>, Status> {
        let Ok(id) = CsiId::decode(handle) else {
            return Ok(None);
        };
        let info = cluster_info(&self.clusters, &id.cluster_id)?;
        Ok(Some((id, info)))
    }

    /// Runs `f` on the filesystem a handle points at; `None` when the filesystem is gone.
    async fn on_fs<T, F>(
        &self,
        id: &CsiId,
        info: &ClusterInfo,
        creds: &Credentials,
        f: F,
    ) -> Result<Option<(T, String)>, Status>
    where
        T: Send + 'static,
        F: FnOnce(&FsPlace<'_>) -> Result<T, Status> + Send + 'static,
    {
        let cfg = self
            .ceph
            .connect_config(&info.monitors, &creds.user, &creds.key);
        let ns = journal_namespace(info);
        let group = info.subvolume_group().to_string();
        let instance = self.instance.clone();
        let fscid = id.location;
        self.ceph
            .run(cfg, move |cluster| {
                match FsPlace::by_id(cluster, fscid, &ns, &instance, &group)? {
                    None => Ok(None),
                    Some(place) => {
                        let name = place.fs.name.clone();
                        f(&place).map(|t| Some((t, name))).map_err(Error::from)
                    }
                }
            })
            .await
            .map_err(Status::from)
    }
}

#[tonic::async_trait]
impl Controller for CephFsController {
    async fn create_volume(
        &self,
        request: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::CreateVolumeResponse>, Status> {
        crate::server::note_volume(&request.get_ref().name);
        let req = request.into_inner();
        validate::name(&req.name)?;
        validate::capabilities(&req.volume_capabilities, &CEPHFS_MODES)?;
        let params = FsParams::parse(&req.parameters).map_err(invalid)?;
        let quota = requested_quota(req.capacity_range.as_ref())?;
        let creds = admin_credentials(&req.secrets).map_err(invalid)?;
        let info = cluster_info(&self.clusters, &params.cluster_id)?;

        if params.backing_snapshot {
            backing::check_capabilities(&req.volume_capabilities)?;
        }
        let source = validate::content_source(&req, &params.cluster_id)?;
        let source_id = source.as_ref().map(|s| s.raw.clone()).unwrap_or_default();
        let guard = self.locks.acquire(
            "volume",
            validate::create_lock_keys(&req.name, source.as_ref()),
        )?;
        let cfg = self
            .ceph
            .connect_config(&info.monitors, &creds.user, &creds.key);
        let instance = self.instance.clone();
        let ns = journal_namespace(&info);
        let group = info.subvolume_group().to_string();
        let name = req.name.clone();
        let range = req.capacity_range;
        let p = params.clone();
        let src_id = source_id.clone();
        // a clone may complete within the RPC (leaving time to answer); longer ones get
        // Aborted and the CO's retry finds them done
        let clone_wait = crate::server::time_left()
            .map(|t| {
                t.saturating_sub(std::time::Duration::from_secs(5))
                    .min(CLONE_WAIT)
            })
            .unwrap_or_default();
        let (created, fscid) = self
            .ceph
            .run(cfg, move |cluster| {
                let _guard = guard;
                let place = FsPlace::by_name(cluster, &p.fs_name, &ns, &instance, &group)?;
                let source = match source {
                    None => Source::Blank,
                    Some(src) => {
                        if src.id.location != place.fs.fscid {
                            return Err(Error::invalid(format!(
                                "content source {src_id} lives in filesystem id {}, but the volume goes to {:?} (id {}); cloning across filesystems is not supported",
                                src.id.location, p.fs_name, place.fs.fscid
                            )));
                        }
                        if src.is_snapshot {
                            Source::Snapshot(src.id.uuid)
                        } else {
                            Source::Volume(src.id.uuid)
                        }
                    }
                };
                let spec = CreateSpec {
                    name: &name,
                    quota,
                    range: range.as_ref(),
                    pool: p.pool.as_deref(),
                    vol_prefix: &p.vol_prefix,
                    owner: p.pvc_namespace.as_deref(),
                    source,
                    source_id: &src_id,
                    clone_wait,
                };
                let created = if p.backing_snapshot {
                    backing::create_volume(&place, &spec)?
                } else {
                    subvolume::create_volume(&place, &spec)?
                };
                Ok((created, place.fs.fscid))
            })
            .await?;
        self.remember(&params.cluster_id, &creds, Some(&params.fs_name));

        let volume_id = CsiId::new(&params.cluster_id, fscid, &created.uuid)
            .map_err(invalid)?
            .to_string();
        let mut ctx = params.context.clone();
        ctx.insert("clusterID".into(), params.cluster_id.clone());
        ctx.insert("fsName".into(), params.fs_name.clone());
        ctx.insert("subvolumeName".into(), created.subvolume.clone());
        ctx.insert("subvolumePath".into(), created.path.clone());
        Ok(Response::new(pb::CreateVolumeResponse {
            volume: Some(pb::Volume {
                capacity_bytes: created.quota.unwrap_or(0) as i64,
                volume_id,
                volume_context: ctx.into_iter().collect(),
                content_source: req.volume_content_source,
                accessible_topology: vec![],
            }),
        }))
    }

    async fn delete_volume(
        &self,
        request: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeResponse>, Status> {
        crate::server::note_volume(&request.get_ref().volume_id);
        let req = request.into_inner();
        validate::id(&req.volume_id, "volume_id")?;
        let creds = admin_credentials(&req.secrets).map_err(invalid)?;
        let Some((id, info)) = self.locate(&req.volume_id)? else {
            tracing::info!(volume = %req.volume_id, "not a ferroceph handle (static volume or unknown); nothing to delete");
            return Ok(Response::new(pb::DeleteVolumeResponse {}));
        };
        let guard = self
            .locks
            .acquire("volume", [format!("id:{}", req.volume_id)])?;
        let uuid = id.uuid.clone();
        let done = self
            .on_fs(&id, &info, &creds, move |place| {
                let _guard = guard;
                Ok(backing::delete_volume(place, &uuid)?)
            })
            .await?;
        if done.is_none() {
            tracing::info!(volume = %req.volume_id, "its filesystem no longer exists; nothing to delete");
        }
        self.remember(
            &id.cluster_id,
            &creds,
            done.as_ref().map(|(_, fs)| fs.as_str()),
        );
        Ok(Response::new(pb::DeleteVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<pb::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<pb::ValidateVolumeCapabilitiesResponse>, Status> {
        crate::server::note_volume(&request.get_ref().volume_id);
        let req = request.into_inner();
        validate::id(&req.volume_id, "volume_id")?;
        if req.volume_capabilities.is_empty() {
            return Err(Status::invalid_argument("volume_capabilities is required"));
        }
        let is_static = req
            .volume_context
            .get("staticVolume")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        match self.locate(&req.volume_id)? {
            // Static volumes are never looked at by the controller.
            None if is_static => {}
            None => {
                return Err(Status::not_found(format!(
                    "volume {} does not exist",
                    req.volume_id
                )))
            }
            Some((id, info)) => {
                let creds = self.creds_for(&req.secrets, &id.cluster_id)?;
                let uuid = id.uuid.clone();
                let exists = self
                    .on_fs(&id, &info, &creds, move |place| {
                        Ok(place
                            .volumes()
                            .get(&uuid)
                            .map_err(|e| subvolume::jerr("read volume journal", e))?
                            .is_some())
                    })
                    .await?
                    .is_some_and(|(e, _)| e);
                if !exists {
                    return Err(Status::not_found(format!(
                        "volume {} does not exist",
                        req.volume_id
                    )));
                }
            }
        }
        let problems: Vec<String> = req
            .volume_capabilities
            .iter()
            .filter_map(|c| validate::capability(c, &CEPHFS_MODES).err())
            .collect();
        let resp = if problems.is_empty() {
            pb::ValidateVolumeCapabilitiesResponse {
                confirmed: Some(pb::validate_volume_capabilities_response::Confirmed {
                    volume_context: req.volume_context,
                    volume_capabilities: req.volume_capabilities,
                    parameters: req.parameters,
                    mutable_parameters: req.mutable_parameters,
                }),
                message: String::new(),
            }
        } else {
            pb::ValidateVolumeCapabilitiesResponse {
                confirmed: None,
                message: problems.join("; "),
            }
        };
        Ok(Response::new(resp))
    }

    async fn list_volumes(
        &self,
        request: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let req = request.into_inner();
        let mut all: Vec<String> = Vec::new();
        for (cluster_id, k) in self.known() {
            let Ok(info) = cluster_info(&self.clusters, &cluster_id) else {
                continue;
            };
            let cfg = self
                .ceph
                .connect_config(&info.monitors, &k.creds.user, &k.creds.key);
            let instance = self.instance.clone();
            let ns = journal_namespace(&info);
            let group = info.subvolume_group().to_string();
            let fss = k.filesystems.clone();
            let cid = cluster_id.clone();
            let ids = self
                .ceph
                .run(cfg, move |cluster| {
                    let mut ids = Vec::new();
                    for fs in &fss {
                        let place = FsPlace::by_name(cluster, fs, &ns, &instance, &group)?;
                        let mut after = String::new();
                        loop {
                            let batch = place
                                .volumes()
                                .list(&after, 1000)
                                .map_err(|e| subvolume::jerr("list volume journal", e))?;
                            let Some((last, _)) = batch.last() else { break };
                            after = last.clone();
                            for (_, uuid) in &batch {
                                if let Ok(id) = CsiId::new(&cid, place.fs.fscid, uuid) {
                                    ids.push(id.to_string());
                                }
                            }
                        }
                    }
                    Ok(ids)
                })
                .await?;
            all.extend(ids);
        }
        all.sort();
        let (items, next) = page(&all, &req.starting_token, req.max_entries)?;
        Ok(Response::new(pb::ListVolumesResponse {
            entries: items
                .into_iter()
                .map(|volume_id| pb::list_volumes_response::Entry {
                    volume: Some(pb::Volume {
                        volume_id,
                        ..Default::default()
                    }),
                    status: None,
                })
                .collect(),
            next_token: next,
        }))
    }

    async fn get_capacity(
        &self,
        request: Request<pb::GetCapacityRequest>,
    ) -> Result<Response<pb::GetCapacityResponse>, Status> {
        let req = request.into_inner();
        if !req.volume_capabilities.is_empty() {
            validate::capabilities(&req.volume_capabilities, &CEPHFS_MODES)?;
        }
        let cluster_id = req.parameters.get("clusterID").cloned().unwrap_or_default();
        let known = self.known();
        let Some((cluster_id, k)) = known.get_key_value(&cluster_id).or_else(|| {
            if cluster_id.is_empty() {
                known.iter().next()
            } else {
                None
            }
        }) else {
            return Ok(Response::new(pb::GetCapacityResponse::default()));
        };
        let fs_name = match req.parameters.get("fsName") {
            Some(f) if !f.is_empty() => f.clone(),
            _ => match k.filesystems.iter().next() {
                Some(f) => f.clone(),
                None => return Ok(Response::new(pb::GetCapacityResponse::default())),
            },
        };
        let pool = req.parameters.get("pool").cloned().unwrap_or_default();
        let info = cluster_info(&self.clusters, cluster_id)?;
        let cfg = self
            .ceph
            .connect_config(&info.monitors, &k.creds.user, &k.creds.key);
        let avail = self
            .ceph
            .run(cfg, move |cluster| {
                let fs = subvolume::fs_by_name(cluster, &fs_name)?;
                let pool_id = if pool.is_empty() {
                    fs.data_pools.first().copied().unwrap_or(-1)
                } else {
                    cluster
                        .pool_lookup(&pool)
                        .map_err(|e| crate::ceph::status("look up the pool", &e))?
                };
                let out = cluster
                    .mon_command(r#"{"prefix": "df", "format": "json"}"#, &[])
                    .map_err(|e| crate::ceph::status("read pool usage", &e))?;
                let v: serde_json::Value = serde_json::from_slice(&out.out).unwrap_or_default();
                Ok(v["pools"]
                    .as_array()
                    .and_then(|pools| pools.iter().find(|p| p["id"].as_i64() == Some(pool_id)))
                    .and_then(|p| p["stats"]["max_avail"].as_i64())
                    .unwrap_or(0))
            })
            .await?;
        Ok(Response::new(pb::GetCapacityResponse {
            available_capacity: avail,
            maximum_volume_size: None,
            minimum_volume_size: None,
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _request: Request<pb::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<pb::ControllerGetCapabilitiesResponse>, Status> {
        let caps = [
            CapType::CreateDeleteVolume,
            CapType::CreateDeleteSnapshot,
            CapType::ListSnapshots,
            CapType::CloneVolume,
            CapType::ExpandVolume,
            CapType::ListVolumes,
            CapType::GetCapacity,
            CapType::GetVolume,
            CapType::VolumeCondition,
            CapType::SingleNodeMultiWriter,
        ];
        Ok(Response::new(controller_capabilities(&caps)))
    }

    async fn create_snapshot(
        &self,
        request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::CreateSnapshotResponse>, Status> {
        crate::server::note_volume(&request.get_ref().source_volume_id);
        let req = request.into_inner();
        validate::name(&req.name)?;
        validate::id(&req.source_volume_id, "source_volume_id")?;
        let prefix = snapshot_prefix(&req.parameters).map_err(invalid)?;
        let creds = admin_credentials(&req.secrets).map_err(invalid)?;
        let Some((src, info)) = self.locate(&req.source_volume_id)? else {
            return Err(Status::not_found(format!(
                "source volume {:?} does not exist (static volumes cannot be snapshotted)",
                req.source_volume_id
            )));
        };
        let guard = self.locks.acquire(
            "snapshot",
            [
                format!("snap:{}", req.name),
                format!("id:{}", req.source_volume_id),
            ],
        )?;
        let name = req.name.clone();
        let source_volume_id = req.source_volume_id.clone();
        let uuid = src.uuid.clone();
        let made = self
            .on_fs(&src, &info, &creds, move |place| {
                let _guard = guard;
                let s =
                    subvolume::create_snapshot(place, &name, &uuid, &source_volume_id, &prefix)?;
                Ok((s, place.fs.fscid))
            })
            .await?;
        let Some(((snap, fscid), fs)) = made else {
            return Err(Status::not_found(format!(
                "source volume {} does not exist (its filesystem is gone)",
                req.source_volume_id
            )));
        };
        self.remember(&src.cluster_id, &creds, Some(&fs));
        let snapshot_id = CsiId::new(&src.cluster_id, fscid, &snap.uuid)
            .map_err(|e| Status::internal(e.to_string()))?
            .to_string();
        Ok(Response::new(pb::CreateSnapshotResponse {
            snapshot: Some(pb::Snapshot {
                size_bytes: snap.size as i64,
                snapshot_id,
                source_volume_id: req.source_volume_id,
                creation_time: Some(timestamp(snap.created_nanos)),
                ready_to_use: true,
                group_snapshot_id: String::new(),
            }),
        }))
    }

    async fn delete_snapshot(
        &self,
        request: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        crate::server::note_volume(&request.get_ref().snapshot_id);
        let req = request.into_inner();
        validate::id(&req.snapshot_id, "snapshot_id")?;
        let creds = admin_credentials(&req.secrets).map_err(invalid)?;
        let Some((id, info)) = self.locate(&req.snapshot_id)? else {
            return Ok(Response::new(pb::DeleteSnapshotResponse {}));
        };
        let guard = self
            .locks
            .acquire("snapshot", [format!("id:{}", req.snapshot_id)])?;
        let uuid = id.uuid.clone();
        let snapshot_id = req.snapshot_id.clone();
        let done = self
            .on_fs(&id, &info, &creds, move |place| {
                let _guard = guard;
                Ok(backing::delete_snapshot(place, &snapshot_id, &uuid)?)
            })
            .await?;
        self.remember(
            &id.cluster_id,
            &creds,
            done.as_ref().map(|(_, fs)| fs.as_str()),
        );
        Ok(Response::new(pb::DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let req = request.into_inner();
        // Where to look: (cluster, fscid or -1, fs name if known).
        let Some(filter) = snapshot_filter(&req) else {
            return Ok(Response::new(pb::ListSnapshotsResponse::default()));
        };
        let mut targets: Vec<(String, i64, Option<String>)> = filter
            .target
            .into_iter()
            .map(|(c, l)| (c, l, None))
            .collect();
        let (filter_id, filter_source) = (filter.snapshot_uuid, filter.source);
        let known = self.known();
        if targets.is_empty() {
            for (cid, k) in &known {
                for fs in &k.filesystems {
                    targets.push((cid.clone(), -1, Some(fs.clone())));
                }
            }
        }
        let mut out: Vec<pb::Snapshot> = Vec::new();
        for (cluster_id, fscid, fs_name) in targets {
            let Ok(info) = cluster_info(&self.clusters, &cluster_id) else {
                continue;
            };
            let creds = match self.creds_for(&req.secrets, &cluster_id) {
                Ok(c) => c,
                Err(_) if req.secrets.is_empty() => continue,
                Err(e) => return Err(e),
            };
            let cfg = self
                .ceph
                .connect_config(&info.monitors, &creds.user, &creds.key);
            let instance = self.instance.clone();
            let ns = journal_namespace(&info);
            let group = info.subvolume_group().to_string();
            let filter_id = filter_id.clone();
            let filter_source = filter_source.clone();
            let cid = cluster_id.clone();
            let snaps = self
                .ceph
                .run(cfg, move |cluster| {
                    let place = match fs_name {
                        Some(f) => FsPlace::by_name(cluster, &f, &ns, &instance, &group)?,
                        None => match FsPlace::by_id(cluster, fscid, &ns, &instance, &group)? {
                            Some(p) => p,
                            None => return Ok(Vec::new()),
                        },
                    };
                    let journal = place.snaps();
                    let mut uuids = Vec::new();
                    if let Some(u) = filter_id {
                        uuids.push(u);
                    } else {
                        let mut after = String::new();
                        loop {
                            let batch = journal
                                .list(&after, 1000)
                                .map_err(|e| subvolume::jerr("list snapshot journal", e))?;
                            let Some((last, _)) = batch.last() else { break };
                            after = last.clone();
                            uuids.extend(batch.into_iter().map(|(_, u)| u));
                        }
                    }
                    let mut snaps = Vec::new();
                    for uuid in uuids {
                        let Some(attrs) = journal
                            .get(&uuid)
                            .map_err(|e| subvolume::jerr("read snapshot journal", e))?
                        else {
                            continue;
                        };
                        if !attrs.contains_key(journal::SOURCE) {
                            continue;
                        }
                        let info = subvolume::read_snapshot_info(&place, &uuid, &attrs);
                        let source_id = uuid_tail(&info.source_sub)
                            .and_then(|u| CsiId::new(&cid, place.fs.fscid, u).ok());
                        if let Some(want) = &filter_source {
                            if source_id.as_ref() != Some(want) {
                                continue;
                            }
                        }
                        let Ok(sid) = CsiId::new(&cid, place.fs.fscid, &uuid) else {
                            continue;
                        };
                        snaps.push(pb::Snapshot {
                            size_bytes: info.size as i64,
                            snapshot_id: sid.to_string(),
                            source_volume_id: source_id.map(|s| s.to_string()).unwrap_or_default(),
                            creation_time: Some(timestamp(info.created_nanos)),
                            ready_to_use: true,
                            group_snapshot_id: String::new(),
                        });
                    }
                    Ok(snaps)
                })
                .await?;
            out.extend(snaps);
        }
        out.sort_by(|a, b| a.snapshot_id.cmp(&b.snapshot_id));
        out.dedup_by(|a, b| a.snapshot_id == b.snapshot_id);
        let (items, next) = page(&out, &req.starting_token, req.max_entries)?;
        Ok(Response::new(pb::ListSnapshotsResponse {
            entries: items
                .into_iter()
                .map(|s| pb::list_snapshots_response::Entry { snapshot: Some(s) })
                .collect(),
            next_token: next,
        }))
    }

    async fn controller_expand_volume(
        &self,
        request: Request<pb::ControllerExpandVolumeRequest>,
    ) -> Result<Response<pb::ControllerExpandVolumeResponse>, Status> {
        crate::server::note_volume(&request.get_ref().volume_id);
        let req = request.into_inner();
        validate::id(&req.volume_id, "volume_id")?;
        let Some(range) = req.capacity_range.as_ref() else {
            return Err(Status::invalid_argument("capacity_range is required"));
        };
        let size = validate::capacity(Some(range))?;
        if let Some(cap) = &req.volume_capability {
            validate::capability(cap, &CEPHFS_MODES).map_err(Status::invalid_argument)?;
        }
        let creds = admin_credentials(&req.secrets).map_err(invalid)?;
        let Some((id, info)) = self.locate(&req.volume_id)? else {
            return Err(Status::not_found(format!(
                "volume {} does not exist (static volumes are not expanded by the driver)",
                req.volume_id
            )));
        };
        let guard = self
            .locks
            .acquire("volume", [format!("id:{}", req.volume_id)])?;
        let uuid = id.uuid.clone();
        let vid = req.volume_id.clone();
        let got = self
            .on_fs(&id, &info, &creds, move |place| {
                let _guard = guard;
                Ok(subvolume::expand(place, &uuid, &vid, size)?)
            })
            .await?;
        let Some((quota, _)) = got else {
            return Err(Status::not_found(format!(
                "volume {} does not exist (its filesystem is gone)",
                req.volume_id
            )));
        };
        Ok(Response::new(pb::ControllerExpandVolumeResponse {
            // 0: the volume has no quota at all, so any size fits.
            capacity_bytes: if quota == 0 {
                size as i64
            } else {
                quota as i64
            },
            node_expansion_required: false,
        }))
    }

    async fn controller_get_volume(
        &self,
        request: Request<pb::ControllerGetVolumeRequest>,
    ) -> Result<Response<pb::ControllerGetVolumeResponse>, Status> {
        crate::server::note_volume(&request.get_ref().volume_id);
        let req = request.into_inner();
        validate::id(&req.volume_id, "volume_id")?;
        let Some((id, info)) = self.locate(&req.volume_id)? else {
            return Err(Status::not_found(format!(
                "volume {} does not exist",
                req.volume_id
            )));
        };
        let creds = self
            .known()
            .get(&id.cluster_id)
            .map(|k| k.creds.clone())
            .ok_or_else(|| Status::failed_precondition("no credentials for this cluster are known yet (ControllerGetVolume carries no secrets)"))?;
        let uuid = id.uuid.clone();
        let got = self
            .on_fs(&id, &info, &creds, move |place| {
                Ok(subvolume::volume_condition(place, &uuid)?)
            })
            .await?;
        let Some((Some((quota, abnormal, message)), _)) = got else {
            return Err(Status::not_found(format!(
                "volume {} does not exist",
                req.volume_id
            )));
        };
        Ok(Response::new(pb::ControllerGetVolumeResponse {
            volume: Some(pb::Volume {
                capacity_bytes: quota.unwrap_or(0) as i64,
                volume_id: req.volume_id,
                ..Default::default()
            }),
            status: Some(pb::controller_get_volume_response::VolumeStatus {
                published_node_ids: vec![],
                volume_condition: Some(pb::VolumeCondition { abnormal, message }),
            }),
        }))
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
