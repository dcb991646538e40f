//! RBD Controller service: validation and CSI shapes here, Ceph work in `image.rs`.

use crate::ceph::Ceph;
use crate::config::{ClusterMap, ConfigError};
use crate::error::Error;
use crate::journal;
use crate::listing::{
    controller_capabilities, invalid, page, snapshot_filter, timestamp, uuid_tail,
};
use crate::locks::OpLocks;
use crate::rbd::image::{self, CreateSpec, Place, Source};
use crate::rbd::params::{controller_credentials, Credentials, RbdParams, DEFAULT_SNAP_PREFIX};
use crate::validate::{self, RBD_MODES};
use crate::volid::CsiId;
use csi::v1 as pb;
use csi::v1::controller_server::Controller;
use pb::controller_service_capability::rpc::Type as CapType;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

/// Where a cluster is and how to log in, remembered from the last call that carried
/// secrets, for the RPCs that carry none (ListVolumes, GetCapacity, ControllerGetVolume).
#[derive(Clone)]
struct Known {
    monitors: Vec<String>,
    namespace: String,
    creds: Credentials,
    pools: BTreeSet<String>,
}

pub struct RbdController {
    instance: String,
    clusters: Arc<ClusterMap>,
    ceph: Ceph,
    locks: OpLocks,
    known: Mutex<BTreeMap<String, Known>>,
}

/// Monitors and RADOS namespace for a clusterID: from config.json, or (legacy
/// StorageClasses) the monitor list itself carried as the clusterID.
fn resolve(
    clusters: &ClusterMap,
    cluster_id: &str,
    legacy_monitors: &[String],
) -> Result<(Vec<String>, String), Status> {
    if !legacy_monitors.is_empty() {
        return Ok((legacy_monitors.to_vec(), String::new()));
    }
    match clusters.get(cluster_id) {
        Ok(info) => Ok((info.monitors.clone(), info.rbd.rados_namespace.clone())),
        Err(ConfigError::UnknownCluster { .. }) | Err(ConfigError::Missing { .. })
            if looks_like_monitors(cluster_id) =>
        {
            Ok((
                cluster_id.split(',').map(str::to_string).collect(),
                String::new(),
            ))
        }
        Err(e @ ConfigError::UnknownCluster { .. }) => Err(Status::invalid_argument(e.to_string())),
        Err(e) => Err(Status::failed_precondition(e.to_string())),
    }
}

fn looks_like_monitors(s: &str) -> bool {
    !s.is_empty()
        && s.split(',').all(|m| {
            m.rsplit_once(':')
                .map(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
                .unwrap_or(false)
        })
}

impl RbdController {
    pub fn new(instance: String, clusters: Arc<ClusterMap>, ceph: Ceph, locks: OpLocks) -> Self {
        RbdController {
            instance,
            clusters,
            ceph,
            locks,
            known: Mutex::new(BTreeMap::new()),
        }
    }

    /// DeleteVolume and DeleteSnapshot: idempotent, under the handle's lock; a handle that
    /// is not ours (a static volume) is a no-op success. `remove` does the Ceph side.
    async fn delete_by_handle(
        &self,
        kind: &'static str,
        handle: &str,
        secrets: &HashMap<String, String>,
        remove: fn(&Place<'_>, &str) -> crate::error::Result<()>,
    ) -> Result<(), Status> {
        let creds = self.creds(secrets)?;
        let Some((id, monitors, namespace)) = self.locate(handle)? else {
            tracing::info!(id = %handle, "not a ferroceph {kind} handle (static or unknown); nothing to delete");
            return Ok(());
        };
        let guard = self.locks.acquire(kind, [format!("id:{handle}")])?;
        let cfg = self.ceph.connect_config(&monitors, &creds.user, &creds.key);
        let instance = self.instance.clone();
        let ns = namespace.clone();
        let cluster_id = id.cluster_id.clone();
        let pool = self
            .ceph
            .run(cfg, move |cluster| {
                let _guard = guard;
                match Place::by_id(cluster, id.location, &ns, &instance)? {
                    None => Ok(None),
                    Some(place) => {
                        remove(&place, &id.uuid)?;
                        Ok(Some(place.io.pool_name().to_string()))
                    }
                }
            })
            .await?;
        self.remember(&cluster_id, &monitors, &namespace, &creds, pool.as_deref());
        image::request_removal();
        Ok(())
    }

    fn remember(
        &self,
        cluster_id: &str,
        monitors: &[String],
        namespace: &str,
        creds: &Credentials,
        pool: Option<&str>,
    ) {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let entry = known
            .entry(cluster_id.to_string())
            .or_insert_with(|| Known {
                monitors: monitors.to_vec(),
                namespace: namespace.to_string(),
                creds: creds.clone(),
                pools: BTreeSet::new(),
            });
        entry.monitors = monitors.to_vec();
        entry.namespace = namespace.to_string();
        entry.creds = creds.clone();
        if let Some(p) = pool {
            entry.pools.insert(p.to_string());
        }
    }

    /// Removes deleted images from the trash in the background, in the pools this
    /// controller used: at once after a delete asks for it, and every `interval` (zero:
    /// only when asked) for images that clones or a dead client's watch kept there. Only
    /// images this instance trashed (see `journal::TrashLog`).
    pub fn spawn_trash_reaper(self: &Arc<Self>, interval: std::time::Duration) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                image::next_removal_pass(interval).await;
                let Some(ctl) = me.upgrade() else { return };
                for (cluster_id, k) in ctl.known() {
                    let cfg = ctl
                        .ceph
                        .connect_config(&k.monitors, &k.creds.user, &k.creds.key);
                    let pools: Vec<String> = k.pools.iter().cloned().collect();
                    let (ns, instance) = (k.namespace.clone(), ctl.instance.clone());
                    let r = ctl
                        .ceph
                        .run(cfg, move |cluster| {
                            Ok(image::remove_trashed_in(cluster, &pools, &ns, &instance))
                        })
                        .await;
                    if let Err(e) = r {
                        tracing::debug!(cluster = %cluster_id, "trash remover: {}", e.message());
                    }
                }
            }
        });
    }

    fn known(&self) -> BTreeMap<String, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Decodes a handle and finds its cluster; `None` for handles that are not ours
    /// (static volumes, garbage).
    fn locate(&self, handle: &str) -> Result<Option<(CsiId, Vec<String>, String)>, Status> {
        let Ok(id) = CsiId::decode(handle) else {
            return Ok(None);
        };
        let (mons, ns) = resolve(&self.clusters, &id.cluster_id, &[])?;
        Ok(Some((id, mons, ns)))
    }

    fn creds(&self, secrets: &HashMap<String, String>) -> Result<Credentials, Status> {
        controller_credentials(secrets, None).map_err(invalid)
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
        self.creds(secrets)
    }
}

#[tonic::async_trait]
impl Controller for RbdController {
    async fn create_volume(
        &self,
        request: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::CreateVolumeResponse>, Status> {
        crate::server::note_volume(&request.get_ref().name);
        let req = request.into_inner();
        validate::name(&req.name)?;
        validate::capabilities(&req.volume_capabilities, &RBD_MODES)?;
        let params = RbdParams::parse(&req.parameters).map_err(invalid)?;
        let size = validate::capacity(req.capacity_range.as_ref())?;
        let creds =
            controller_credentials(&req.secrets, params.admin_id.as_deref()).map_err(invalid)?;
        let (monitors, namespace) = resolve(&self.clusters, &params.cluster_id, &params.monitors)?;

        let source = validate::content_source(&req, &params.cluster_id)?;
        let source_id = source.as_ref().map(|s| s.raw.clone()).unwrap_or_default();
        let guard = self.locks.acquire(
            "volume",
            validate::create_lock_keys(&req.name, source.as_ref()),
        )?;
        let cfg = self.ceph.connect_config(&monitors, &creds.user, &creds.key);
        let instance = self.instance.clone();
        let name = req.name.clone();
        let range = req.capacity_range;
        let p = params.clone();
        let ns = namespace.clone();
        let src_id = source_id.clone();
        let (created, pool_id) = self
            .ceph
            .run(cfg, move |cluster| {
                let _guard = guard;
                let place = Place::by_name(cluster, &p.pool, &ns, &instance)?;
                let source = match source {
                    None => Source::Blank,
                    Some(src) => {
                        if src.id.location != place.pool_id {
                            return Err(Error::invalid(format!(
                                "content source {src_id} lives in pool id {}, but the volume goes to pool {:?} (id {}); cloning across pools is not supported",
                                src.id.location, p.pool, place.pool_id
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
                    size,
                    range: range.as_ref(),
                    params: &p,
                    source,
                    source_id: &src_id,
                };
                let created = image::create_volume(&place, &spec)?;
                Ok((created, place.pool_id))
            })
            .await?;
        self.remember(
            &params.cluster_id,
            &monitors,
            &namespace,
            &creds,
            Some(&params.pool),
        );

        let volume_id = CsiId::new(&params.cluster_id, pool_id, &created.uuid)
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .to_string();
        let mut ctx = params.volume_context();
        ctx.insert("imageName".into(), created.image.clone());
        ctx.insert("journalPool".into(), params.pool.clone());
        if !namespace.is_empty() {
            ctx.insert("radosNamespace".into(), namespace);
        }
        Ok(Response::new(pb::CreateVolumeResponse {
            volume: Some(pb::Volume {
                capacity_bytes: created.size as i64,
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
        self.delete_by_handle("volume", &req.volume_id, &req.secrets, image::delete_volume)
            .await?;
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
        let Some((id, monitors, namespace)) = self.locate(&req.volume_id)? else {
            return Err(Status::not_found(format!(
                "volume {} does not exist",
                req.volume_id
            )));
        };
        let creds = self.creds_for(&req.secrets, &id.cluster_id)?;
        let cfg = self.ceph.connect_config(&monitors, &creds.user, &creds.key);
        let instance = self.instance.clone();
        let uuid = id.uuid.clone();
        let exists = self
            .ceph
            .run(cfg, move |cluster| {
                let Some(place) = Place::by_id(cluster, id.location, &namespace, &instance)? else {
                    return Ok(false);
                };
                Ok(place
                    .volumes()
                    .get(&uuid)
                    .map_err(|e| image::jerr("read volume journal", e))?
                    .is_some())
            })
            .await?;
        if !exists {
            return Err(Status::not_found(format!(
                "volume {} does not exist",
                req.volume_id
            )));
        }
        let problems: Vec<String> = req
            .volume_capabilities
            .iter()
            .filter_map(|c| validate::capability(c, &RBD_MODES).err())
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
            let cfg = self
                .ceph
                .connect_config(&k.monitors, &k.creds.user, &k.creds.key);
            let instance = self.instance.clone();
            let pools = k.pools.clone();
            let ns = k.namespace.clone();
            let cid = cluster_id.clone();
            let ids = self
                .ceph
                .run(cfg, move |cluster| {
                    let mut ids = Vec::new();
                    for pool in &pools {
                        let place = Place::by_name(cluster, pool, &ns, &instance)?;
                        let mut after = String::new();
                        loop {
                            let batch = place
                                .volumes()
                                .list(&after, 1000)
                                .map_err(|e| image::jerr("list volume journal", e))?;
                            let Some((last, _)) = batch.last() else { break };
                            after = last.clone();
                            for (_, uuid) in &batch {
                                if let Ok(id) = CsiId::new(&cid, place.pool_id, uuid) {
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
        if let Some(cap) = &req.volume_capabilities.first() {
            validate::capabilities(&req.volume_capabilities, &RBD_MODES)?;
            let _ = cap;
        }
        let cluster_id = req.parameters.get("clusterID").cloned().unwrap_or_default();
        let pool = req.parameters.get("pool").cloned().unwrap_or_default();
        let known = self.known();
        let Some(k) = known.get(&cluster_id).or_else(|| {
            if cluster_id.is_empty() {
                known.values().next()
            } else {
                None
            }
        }) else {
            return Ok(Response::new(pb::GetCapacityResponse::default()));
        };
        let pool = if pool.is_empty() {
            k.pools.iter().next().cloned().unwrap_or_default()
        } else {
            pool
        };
        let cfg = self
            .ceph
            .connect_config(&k.monitors, &k.creds.user, &k.creds.key);
        let avail = self
            .ceph
            .run(cfg, move |cluster| {
                let out = cluster
                    .mon_command(r#"{"prefix": "df", "format": "json"}"#, &[])
                    .map_err(|e| crate::ceph::status("read pool usage", &e))?;
                let v: serde_json::Value = serde_json::from_slice(&out.out).unwrap_or_default();
                let avail = v["pools"]
                    .as_array()
                    .and_then(|pools| pools.iter().find(|p| p["name"] == pool.as_str()))
                    .and_then(|p| p["stats"]["max_avail"].as_i64())
                    .unwrap_or(0);
                Ok(avail)
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
        let mut prefix = DEFAULT_SNAP_PREFIX.to_string();
        for (k, v) in &req.parameters {
            match k.as_str() {
                "snapshotNamePrefix" => prefix = v.clone(),
                "clusterID" | "pool" => {}
                k if k.starts_with("csi.storage.k8s.io/") => {}
                other => {
                    return Err(Status::invalid_argument(format!(
                        "unknown snapshot parameter {other:?}"
                    )))
                }
            }
        }
        let creds = self.creds(&req.secrets)?;
        let Some((src, monitors, namespace)) = self.locate(&req.source_volume_id)? else {
            return Err(Status::not_found(format!(
                "source volume {:?} does not exist",
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
        let cfg = self.ceph.connect_config(&monitors, &creds.user, &creds.key);
        let instance = self.instance.clone();
        let name = req.name.clone();
        let source_volume_id = req.source_volume_id.clone();
        let (info, pool_id) = self
            .ceph
            .run(cfg, move |cluster| {
                let _guard = guard;
                let not_found = || {
                    Status::not_found(format!("source volume {source_volume_id} does not exist"))
                };
                let place = Place::by_id(cluster, src.location, &namespace, &instance)?
                    .ok_or_else(not_found)?;
                let attrs = place
                    .volumes()
                    .get(&src.uuid)
                    .map_err(|e| image::jerr("read volume journal", e))?
                    .ok_or_else(not_found)?;
                image::refuse_encrypted(
                    Some(&attrs),
                    None,
                    &format!("source volume {source_volume_id}"),
                )?;
                let source_image = attrs
                    .get(journal::IMAGE_NAME)
                    .cloned()
                    .ok_or_else(not_found)?;
                let info = image::create_snapshot(&place, &name, &source_image, &prefix)?;
                Ok((info, place.pool_id))
            })
            .await?;
        let snapshot_id = CsiId::new(&src.cluster_id, pool_id, &info.uuid)
            .map_err(|e| Status::internal(e.to_string()))?
            .to_string();
        Ok(Response::new(pb::CreateSnapshotResponse {
            snapshot: Some(pb::Snapshot {
                size_bytes: info.size as i64,
                snapshot_id,
                source_volume_id: req.source_volume_id,
                creation_time: Some(timestamp(info.created_nanos)),
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
        self.delete_by_handle(
            "snapshot",
            &req.snapshot_id,
            &req.secrets,
            image::delete_snapshot,
        )
        .await?;
        Ok(Response::new(pb::DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let req = request.into_inner();
        // Which (cluster, pool) pairs to look in.
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
                for pool in &k.pools {
                    targets.push((cid.clone(), -1, Some(pool.clone())));
                }
            }
        }
        let mut out: Vec<pb::Snapshot> = Vec::new();
        for (cluster_id, pool_id, pool_name) in targets {
            let (monitors, namespace) = match resolve(&self.clusters, &cluster_id, &[]) {
                Ok(x) => x,
                Err(_) => match known.get(&cluster_id) {
                    Some(k) => (k.monitors.clone(), k.namespace.clone()),
                    None => continue,
                },
            };
            let creds = match self.creds_for(&req.secrets, &cluster_id) {
                Ok(c) => c,
                Err(_) if req.secrets.is_empty() => continue,
                Err(e) => return Err(e),
            };
            let cfg = self.ceph.connect_config(&monitors, &creds.user, &creds.key);
            let instance = self.instance.clone();
            let filter_id = filter_id.clone();
            let filter_source = filter_source.clone();
            let cid = cluster_id.clone();
            let snaps = self
                .ceph
                .run(cfg, move |cluster| {
                    let place = match pool_name {
                        Some(p) => Place::by_name(cluster, &p, &namespace, &instance)?,
                        None => match Place::by_id(cluster, pool_id, &namespace, &instance)? {
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
                                .map_err(|e| image::jerr("list snapshot journal", e))?;
                            let Some((last, _)) = batch.last() else { break };
                            after = last.clone();
                            uuids.extend(batch.into_iter().map(|(_, u)| u));
                        }
                    }
                    let mut snaps = Vec::new();
                    for uuid in uuids {
                        let Some(attrs) = journal
                            .get(&uuid)
                            .map_err(|e| image::jerr("read snapshot journal", e))?
                        else {
                            continue;
                        };
                        if !attrs.contains_key(journal::IMAGE_ID) {
                            continue; // not finished
                        }
                        let info = image::read_snapshot_info(&place, &uuid, &attrs);
                        let source_id = uuid_tail(&info.source_image)
                            .and_then(|u| CsiId::new(&cid, place.pool_id, u).ok());
                        if let Some(want) = &filter_source {
                            if source_id.as_ref() != Some(want) {
                                continue;
                            }
                        }
                        let Ok(sid) = CsiId::new(&cid, place.pool_id, &uuid) else {
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
            validate::capability(cap, &RBD_MODES).map_err(Status::invalid_argument)?;
        }
        let creds = self.creds(&req.secrets)?;
        let Some((id, monitors, namespace)) = self.locate(&req.volume_id)? else {
            return Err(Status::not_found(format!(
                "volume {} does not exist",
                req.volume_id
            )));
        };
        let guard = self
            .locks
            .acquire("volume", [format!("id:{}", req.volume_id)])?;
        let cfg = self.ceph.connect_config(&monitors, &creds.user, &creds.key);
        let instance = self.instance.clone();
        let vid = req.volume_id.clone();
        let new_size = self
            .ceph
            .run(cfg, move |cluster| {
                let _guard = guard;
                let not_found = || Status::not_found(format!("volume {vid} does not exist"));
                let place = Place::by_id(cluster, id.location, &namespace, &instance)?
                    .ok_or_else(not_found)?;
                let attrs = place
                    .volumes()
                    .get(&id.uuid)
                    .map_err(|e| image::jerr("read volume journal", e))?
                    .ok_or_else(not_found)?;
                let img = attrs
                    .get(journal::IMAGE_NAME)
                    .cloned()
                    .ok_or_else(not_found)?;
                image::expand(&place, &img, size)
            })
            .await?;
        Ok(Response::new(pb::ControllerExpandVolumeResponse {
            capacity_bytes: new_size as i64,
            // Block volumes too: a FUSE attachment's loop device keeps its old size until
            // NodeExpandVolume refreshes it (krbd and rbd-nbd devices follow by themselves).
            node_expansion_required: true,
        }))
    }

    async fn controller_get_volume(
        &self,
        request: Request<pb::ControllerGetVolumeRequest>,
    ) -> Result<Response<pb::ControllerGetVolumeResponse>, Status> {
        crate::server::note_volume(&request.get_ref().volume_id);
        let req = request.into_inner();
        validate::id(&req.volume_id, "volume_id")?;
        let Some((id, monitors, namespace)) = self.locate(&req.volume_id)? else {
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
        let cfg = self.ceph.connect_config(&monitors, &creds.user, &creds.key);
        let instance = self.instance.clone();
        let vid = req.volume_id.clone();
        let (size, condition) = self
            .ceph
            .run(cfg, move |cluster| {
                let not_found = || Status::not_found(format!("volume {vid} does not exist"));
                let place = Place::by_id(cluster, id.location, &namespace, &instance)?
                    .ok_or_else(not_found)?;
                let attrs = place
                    .volumes()
                    .get(&id.uuid)
                    .map_err(|e| image::jerr("read volume journal", e))?
                    .ok_or_else(not_found)?;
                let img = attrs
                    .get(journal::IMAGE_NAME)
                    .cloned()
                    .ok_or_else(not_found)?;
                match rados::rbd::Image::open_read_only(&place.io, &img) {
                    Ok(i) => Ok((
                        i.size().unwrap_or(0),
                        (false, "image is present".to_string()),
                    )),
                    Err(e) if e.kind() == rados::ErrorKind::NotFound => {
                        Ok((0, (true, format!("image {img} is missing from the pool"))))
                    }
                    Err(e) => Ok((0, (true, format!("image {img} cannot be opened: {e}")))),
                }
            })
            .await?;
        Ok(Response::new(pb::ControllerGetVolumeResponse {
            volume: Some(pb::Volume {
                capacity_bytes: size as i64,
                volume_id: req.volume_id,
                ..Default::default()
            }),
            status: Some(pb::controller_get_volume_response::VolumeStatus {
                published_node_ids: vec![],
                volume_condition: Some(pb::VolumeCondition {
                    abnormal: condition.0,
                    message: condition.1,
                }),
            }),
        }))
    }
}
