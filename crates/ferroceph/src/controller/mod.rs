//! The CSI Controller service, once, over a Ceph backend (`rbd::controller`,
//! `cephfs::controller`): request validation, idempotency locks, handles, credentials for
//! secret-less RPCs, listings and pagination live here; the backend does the Ceph work.

pub(crate) mod backend;
pub(crate) mod known;
pub(crate) mod listing;

use crate::ceph::Ceph;
use crate::config::ClusterMap;
use crate::credentials::Credentials;
use crate::error::{Error, Result};
use crate::locks::{LockKey, OpLocks};
use crate::validate;
use crate::volid::CsiId;
use backend::{At, Backend, NewVolume, Site};
use csi::v1 as pb;
use csi::v1::controller_server::Controller;
use known::Registry;
use listing::{controller_capabilities, page_after, snapshot_filter, timestamp};
use pb::controller_service_capability::rpc::Type as CapType;
use rados::Cluster;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub(crate) struct ControllerCore<B: Backend> {
    pub(crate) instance: String,
    pub(crate) clusters: Arc<ClusterMap>,
    pub(crate) ceph: Ceph,
    locks: OpLocks,
    pub(crate) registry: Registry,
    backend: PhantomData<B>,
}

const CAPABILITIES: [CapType; 10] = [
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

/// A cluster the controller can reach for a listing, with the locations to look in.
pub(crate) struct Target {
    pub(crate) site: Site,
    pub(crate) creds: Credentials,
    pub(crate) locations: BTreeSet<String>,
}

impl<B: Backend> ControllerCore<B> {
    pub(crate) fn new(
        instance: String,
        clusters: Arc<ClusterMap>,
        ceph: Ceph,
        locks: OpLocks,
        secrets_dir: Option<PathBuf>,
    ) -> Self {
        ControllerCore {
            instance,
            clusters,
            ceph,
            locks,
            registry: Registry::new(secrets_dir),
            backend: PhantomData,
        }
    }

    /// Runs backend work on a connected cluster.
    async fn on_site<T, F>(&self, site: &Site, creds: &Credentials, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Cluster, &Site) -> Result<T> + Send + 'static,
    {
        let cfg = self
            .ceph
            .connect_config(&site.monitors, &creds.user, &creds.key);
        let site = site.clone();
        self.ceph.run(cfg, move |c| f(c, &site)).await
    }

    /// Decodes a handle and finds its cluster; None for handles that are not ours (static
    /// volumes, garbage).
    fn locate(&self, handle: &str) -> Result<Option<(CsiId, Site)>> {
        let Ok(id) = CsiId::decode(handle) else {
            return Ok(None);
        };
        let site = B::site(&self.clusters, &id.cluster_id, None, &self.instance)?;
        Ok(Some((id, site)))
    }

    /// The request's credentials, else the configured ones, else the last ones a call
    /// carried for this cluster.
    fn creds_for(
        &self,
        secrets: &HashMap<String, String>,
        cluster_id: &str,
    ) -> Result<Credentials> {
        if !secrets.is_empty() {
            return B::credentials(secrets);
        }
        if let Some(s) = self.registry.configured_secrets(cluster_id)? {
            return B::credentials(&s);
        }
        if let Some(c) = self.registry.get(cluster_id).and_then(|k| k.creds) {
            return Ok(c);
        }
        Err(Error::precondition(format!(
            "no {} credentials for cluster {cluster_id:?}: this RPC carries no secrets; mount the provisioner Secret into the controller and pass --controllersecrets=<dir> (see README, \"Controller credentials\")",
            B::NAME
        )))
    }

    /// Every cluster a secret-less listing can reach: those with configured credentials in
    /// config.json, and those a call with secrets taught us.
    pub(crate) fn targets(&self) -> Vec<Target> {
        let mut out: BTreeMap<String, Target> = BTreeMap::new();
        for (cid, k) in self.registry.all() {
            let creds = match self.registry.configured_secrets(&cid) {
                Ok(Some(s)) => B::credentials(&s).ok(),
                _ => None,
            }
            .or(k.creds);
            if let Some(creds) = creds {
                out.insert(
                    cid,
                    Target {
                        site: k.site,
                        creds,
                        locations: k.locations,
                    },
                );
            }
        }
        if self.registry.has_secrets_dir() {
            if let Ok(all) = self.clusters.clusters() {
                for info in all.iter() {
                    if out.contains_key(&info.cluster_id) {
                        continue;
                    }
                    let Ok(Some(s)) = self.registry.configured_secrets(&info.cluster_id) else {
                        continue;
                    };
                    let (Ok(creds), Ok(site)) = (
                        B::credentials(&s),
                        B::site(&self.clusters, &info.cluster_id, None, &self.instance),
                    ) else {
                        continue;
                    };
                    out.insert(
                        info.cluster_id.clone(),
                        Target {
                            site,
                            creds,
                            locations: BTreeSet::new(),
                        },
                    );
                }
            }
        }
        out.into_values().collect()
    }

    /// DeleteVolume and DeleteSnapshot: idempotent, under the handle's lock; a handle that
    /// is not ours (a static volume) is a no-op success.
    async fn delete_by_handle(
        &self,
        kind: &'static str,
        handle: &str,
        secrets: &HashMap<String, String>,
        remove: fn(&Cluster, &Site, &CsiId) -> Result<Option<String>>,
    ) -> Result<()> {
        validate::id(handle, &format!("{kind}_id"))?;
        let Some((id, site)) = self.locate(handle)? else {
            tracing::info!(id = %handle, "not a ferroceph {kind} handle (static or unknown); nothing to delete");
            return Ok(());
        };
        let creds = self.creds_for(secrets, &id.cluster_id)?;
        let guard = self.locks.acquire(kind, [LockKey::handle(handle)])?;
        let location = self
            .on_site(&site, &creds, move |c, site| {
                let _guard = guard;
                remove(c, site, &id)
            })
            .await?;
        if location.is_none() {
            tracing::info!(id = %handle, "its {} no longer exists; nothing to delete", B::LOCATION);
        }
        let creds = (!secrets.is_empty()).then_some(&creds);
        self.registry.remember(&site, creds, location.as_deref());
        Ok(())
    }

    async fn create_volume(&self, req: pb::CreateVolumeRequest) -> Result<pb::Volume> {
        validate::name(&req.name)?;
        validate::capabilities(&req.volume_capabilities, B::modes())?;
        let params = B::parse_params(&req.parameters)?;
        B::requested_size(req.capacity_range.as_ref())?;
        let creds = B::create_credentials(&req.secrets, &params)?;
        let cluster_id = B::cluster_id(&params).to_string();
        let site = B::site(&self.clusters, &cluster_id, Some(&params), &self.instance)?;
        let source = validate::content_source(&req, &cluster_id)?;
        // the source too, so it cannot be deleted under the clone
        let mut keys = vec![LockKey::create_name(&req.name)];
        keys.extend(source.as_ref().map(|s| LockKey::handle(&s.raw)));
        let guard = self.locks.acquire("volume", keys)?;
        let location = B::location_name(&params).to_string();
        let new = NewVolume {
            name: req.name.clone(),
            params,
            capabilities: req.volume_capabilities,
            range: req.capacity_range,
            source,
            time_left: crate::server::time_left(),
        };
        let made = self
            .on_site(&site, &creds, move |c, site| {
                let _guard = guard;
                B::create_volume(c, site, new)
            })
            .await?;
        self.registry.remember(&site, Some(&creds), Some(&location));
        let volume_id = CsiId::new(&cluster_id, made.location, &made.uuid)
            .map_err(Error::invalid)?
            .to_string();
        Ok(pb::Volume {
            capacity_bytes: made.capacity as i64,
            volume_id,
            volume_context: made.context.into_iter().collect(),
            content_source: req.volume_content_source,
            accessible_topology: vec![],
        })
    }

    async fn validate_capabilities(
        &self,
        req: pb::ValidateVolumeCapabilitiesRequest,
    ) -> Result<pb::ValidateVolumeCapabilitiesResponse> {
        validate::id(&req.volume_id, "volume_id")?;
        if req.volume_capabilities.is_empty() {
            return Err(Error::invalid("volume_capabilities is required"));
        }
        let is_static = req
            .volume_context
            .get("staticVolume")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let missing = || Error::not_found(format!("volume {} does not exist", req.volume_id));
        match self.locate(&req.volume_id)? {
            // Static volumes are the administrator's; the controller never looks at them.
            None if is_static => {}
            None => return Err(missing()),
            Some((id, site)) => {
                let creds = self.creds_for(&req.secrets, &id.cluster_id)?;
                let exists = self
                    .on_site(&site, &creds, move |c, site| B::volume_exists(c, site, &id))
                    .await?;
                if !exists {
                    return Err(missing());
                }
            }
        }
        let problems: Vec<String> = req
            .volume_capabilities
            .iter()
            .filter_map(|c| {
                validate::capability(c, B::modes())
                    .err()
                    .map(|e| e.message())
            })
            .collect();
        Ok(if problems.is_empty() {
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
        })
    }

    async fn list_volumes(&self, req: pb::ListVolumesRequest) -> Result<pb::ListVolumesResponse> {
        let mut all: Vec<(String, pb::VolumeCondition)> = Vec::new();
        for t in self.targets() {
            let cid = t.site.cluster_id.clone();
            let remembered = t.locations.clone();
            let found = self
                .on_site(&t.site, &t.creds, move |c, site| {
                    let mut locations = remembered;
                    if let Ok(more) = B::discover_locations(c) {
                        locations.extend(more);
                    }
                    let mut out = Vec::new();
                    for loc in locations {
                        // a pool the user may not read is not an error for the listing
                        let Ok(Some((location, entries))) =
                            B::list_volumes(c, site, &At::Name(loc))
                        else {
                            continue;
                        };
                        for e in entries {
                            if let Ok(id) = CsiId::new(&site.cluster_id, location, &e.uuid) {
                                out.push((id.to_string(), e.condition));
                            }
                        }
                    }
                    Ok(out)
                })
                .await;
            match found {
                Ok(v) => all.extend(v.into_iter().map(|(id, c)| {
                    (
                        id,
                        pb::VolumeCondition {
                            abnormal: c.abnormal,
                            message: c.message,
                        },
                    )
                })),
                Err(e) => tracing::warn!(cluster = %cid, "ListVolumes skips this cluster: {e}"),
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all.dedup_by(|a, b| a.0 == b.0);
        let (items, next) =
            page_after(&all, |v| v.0.as_str(), &req.starting_token, req.max_entries)?;
        Ok(pb::ListVolumesResponse {
            entries: items
                .into_iter()
                .map(|(volume_id, condition)| pb::list_volumes_response::Entry {
                    volume: Some(pb::Volume {
                        volume_id,
                        ..Default::default()
                    }),
                    status: Some(pb::list_volumes_response::VolumeStatus {
                        published_node_ids: vec![],
                        volume_condition: Some(condition),
                    }),
                })
                .collect(),
            next_token: next,
        })
    }

    async fn get_capacity(&self, req: pb::GetCapacityRequest) -> Result<pb::GetCapacityResponse> {
        if !req.volume_capabilities.is_empty() {
            validate::capabilities(&req.volume_capabilities, B::modes())?;
        }
        let cluster_id = req.parameters.get("clusterID").cloned().unwrap_or_default();
        let targets = self.targets();
        let Some(t) = targets
            .into_iter()
            .find(|t| cluster_id.is_empty() || t.site.cluster_id == cluster_id)
        else {
            return Ok(pb::GetCapacityResponse::default());
        };
        let location = t.locations.iter().next().cloned();
        let params = req.parameters;
        let avail = self
            .on_site(&t.site, &t.creds, move |c, _| {
                match B::capacity_pool(c, &params, location.as_deref())? {
                    Some(pool_id) => crate::ceph::pool_max_avail(c, pool_id),
                    None => Ok(0),
                }
            })
            .await?;
        Ok(pb::GetCapacityResponse {
            available_capacity: avail,
            maximum_volume_size: None,
            minimum_volume_size: None,
        })
    }

    async fn create_snapshot(&self, req: pb::CreateSnapshotRequest) -> Result<pb::Snapshot> {
        validate::name(&req.name)?;
        validate::id(&req.source_volume_id, "source_volume_id")?;
        let prefix = B::snapshot_prefix(&req.parameters)?;
        let creds = B::credentials(&req.secrets)?;
        let missing = |why: &str| {
            Error::not_found(format!(
                "source volume {:?} does not exist{why}",
                req.source_volume_id
            ))
        };
        let Some((src, site)) = self.locate(&req.source_volume_id)? else {
            return Err(missing(" (static volumes cannot be snapshotted)"));
        };
        let guard = self.locks.acquire(
            "snapshot",
            [
                LockKey::snapshot_name(&req.name),
                LockKey::handle(&req.source_volume_id),
            ],
        )?;
        let (name, raw) = (req.name.clone(), req.source_volume_id.clone());
        let source = src.clone();
        let made = self
            .on_site(&site, &creds, move |c, site| {
                let _guard = guard;
                B::create_snapshot(c, site, &source, &raw, &name, &prefix)
            })
            .await?;
        let Some((snap, location)) = made else {
            return Err(missing(&format!(" (its {} is gone)", B::LOCATION)));
        };
        self.registry.remember(&site, Some(&creds), Some(&location));
        let snapshot_id = CsiId::new(&src.cluster_id, snap.location, &snap.uuid)
            .map_err(Error::internal)?
            .to_string();
        Ok(pb::Snapshot {
            size_bytes: snap.size as i64,
            snapshot_id,
            source_volume_id: req.source_volume_id,
            creation_time: Some(timestamp(snap.created_nanos)),
            ready_to_use: true,
            group_snapshot_id: String::new(),
        })
    }

    /// Where a ListSnapshots looks: the place its ids name, else every known location.
    fn snapshot_targets(
        &self,
        target: Option<(String, i64)>,
        secrets: &HashMap<String, String>,
    ) -> Result<Vec<(Site, Credentials, Vec<At>)>> {
        if let Some((cluster_id, location)) = target {
            let site = match B::site(&self.clusters, &cluster_id, None, &self.instance) {
                Ok(s) => s,
                Err(_) => match self.registry.get(&cluster_id) {
                    Some(k) => k.site,
                    None => return Ok(vec![]),
                },
            };
            return match self.creds_for(secrets, &cluster_id) {
                Ok(creds) => Ok(vec![(site, creds, vec![At::Id(location)])]),
                Err(_) if secrets.is_empty() => Ok(vec![]),
                Err(e) => Err(e),
            };
        }
        Ok(self
            .targets()
            .into_iter()
            .map(|t| {
                let creds = if secrets.is_empty() {
                    t.creds
                } else {
                    B::credentials(secrets).unwrap_or(t.creds)
                };
                let ats = t.locations.into_iter().map(At::Name).collect();
                (t.site, creds, ats)
            })
            .collect())
    }

    async fn list_snapshots(
        &self,
        req: pb::ListSnapshotsRequest,
    ) -> Result<pb::ListSnapshotsResponse> {
        let Some(filter) = snapshot_filter(&req) else {
            return Ok(pb::ListSnapshotsResponse::default());
        };
        let mut out: Vec<pb::Snapshot> = Vec::new();
        let search_all = filter.target.is_none();
        for (site, creds, ats) in self.snapshot_targets(filter.target.clone(), &req.secrets)? {
            let only = filter.snapshot_uuid.clone();
            let source = filter.source.clone();
            let found = self
                .on_site(&site, &creds, move |c, site| {
                    let mut ats = ats;
                    if search_all {
                        if let Ok(more) = B::discover_locations(c) {
                            ats.extend(more.into_iter().map(At::Name));
                        }
                        ats.dedup();
                    }
                    let mut snaps = Vec::new();
                    for at in &ats {
                        let Some((location, entries)) =
                            B::list_snapshots(c, site, at, only.as_deref())?
                        else {
                            continue;
                        };
                        snaps.extend(entries.into_iter().filter_map(|e| {
                            snapshot_entry(&site.cluster_id, location, e, source.as_ref())
                        }));
                    }
                    Ok(snaps)
                })
                .await;
            match found {
                Ok(s) => out.extend(s),
                Err(e) if search_all => {
                    tracing::warn!(cluster = %site.cluster_id, "ListSnapshots skips this cluster: {e}")
                }
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.snapshot_id.cmp(&b.snapshot_id));
        out.dedup_by(|a, b| a.snapshot_id == b.snapshot_id);
        let (items, next) = page_after(
            &out,
            |s| s.snapshot_id.as_str(),
            &req.starting_token,
            req.max_entries,
        )?;
        Ok(pb::ListSnapshotsResponse {
            entries: items
                .into_iter()
                .map(|s| pb::list_snapshots_response::Entry { snapshot: Some(s) })
                .collect(),
            next_token: next,
        })
    }

    async fn expand(
        &self,
        req: pb::ControllerExpandVolumeRequest,
    ) -> Result<pb::ControllerExpandVolumeResponse> {
        validate::id(&req.volume_id, "volume_id")?;
        let Some(range) = req.capacity_range.as_ref() else {
            return Err(Error::invalid("capacity_range is required"));
        };
        let size = validate::capacity(Some(range))?;
        if let Some(cap) = &req.volume_capability {
            validate::capability(cap, B::modes()).map_err(Error::invalid)?;
        }
        let missing =
            |why: &str| Error::not_found(format!("volume {} does not exist{why}", req.volume_id));
        let Some((id, site)) = self.locate(&req.volume_id)? else {
            return Err(missing(" (static volumes are not expanded by the driver)"));
        };
        let creds = self.creds_for(&req.secrets, &id.cluster_id)?;
        let guard = self
            .locks
            .acquire("volume", [LockKey::handle(&req.volume_id)])?;
        let raw = req.volume_id.clone();
        let done = self
            .on_site(&site, &creds, move |c, site| {
                let _guard = guard;
                B::expand(c, site, &id, &raw, size)
            })
            .await?
            .ok_or_else(|| missing(""))?;
        Ok(pb::ControllerExpandVolumeResponse {
            capacity_bytes: done.capacity as i64,
            node_expansion_required: done.node_expansion_required,
        })
    }

    async fn get_volume(
        &self,
        req: pb::ControllerGetVolumeRequest,
    ) -> Result<pb::ControllerGetVolumeResponse> {
        validate::id(&req.volume_id, "volume_id")?;
        let missing = || Error::not_found(format!("volume {} does not exist", req.volume_id));
        let Some((id, site)) = self.locate(&req.volume_id)? else {
            return Err(missing());
        };
        let creds = self.creds_for(&HashMap::new(), &id.cluster_id)?;
        let (capacity, condition) = self
            .on_site(&site, &creds, move |c, site| {
                B::volume_condition(c, site, &id)
            })
            .await?
            .ok_or_else(missing)?;
        Ok(pb::ControllerGetVolumeResponse {
            volume: Some(pb::Volume {
                capacity_bytes: capacity as i64,
                volume_id: req.volume_id,
                ..Default::default()
            }),
            status: Some(pb::controller_get_volume_response::VolumeStatus {
                published_node_ids: vec![],
                volume_condition: Some(pb::VolumeCondition {
                    abnormal: condition.abnormal,
                    message: condition.message,
                }),
            }),
        })
    }
}

/// A journal's snapshot as the CO sees it; None when a source filter excludes it.
fn snapshot_entry(
    cluster_id: &str,
    location: i64,
    e: backend::SnapshotEntry,
    source: Option<&CsiId>,
) -> Option<pb::Snapshot> {
    let source_id = e
        .source_uuid
        .as_deref()
        .and_then(|u| CsiId::new(cluster_id, location, u).ok());
    if let Some(want) = source {
        if source_id.as_ref() != Some(want) {
            return None;
        }
    }
    let sid = CsiId::new(cluster_id, location, &e.uuid).ok()?;
    Some(pb::Snapshot {
        size_bytes: e.size as i64,
        snapshot_id: sid.to_string(),
        source_volume_id: source_id.map(|s| s.to_string()).unwrap_or_default(),
        creation_time: Some(timestamp(e.created_nanos)),
        ready_to_use: true,
        group_snapshot_id: String::new(),
    })
}

#[tonic::async_trait]
impl<B: Backend> Controller for ControllerCore<B> {
    async fn create_volume(
        &self,
        request: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::CreateVolumeResponse>, Status> {
        crate::server::note_volume(&request.get_ref().name);
        let volume = ControllerCore::create_volume(self, request.into_inner()).await?;
        Ok(Response::new(pb::CreateVolumeResponse {
            volume: Some(volume),
        }))
    }

    async fn delete_volume(
        &self,
        request: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeResponse>, Status> {
        crate::server::note_volume(&request.get_ref().volume_id);
        let req = request.into_inner();
        self.delete_by_handle("volume", &req.volume_id, &req.secrets, B::delete_volume)
            .await?;
        Ok(Response::new(pb::DeleteVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        request: Request<pb::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<pb::ValidateVolumeCapabilitiesResponse>, Status> {
        crate::server::note_volume(&request.get_ref().volume_id);
        Ok(Response::new(
            self.validate_capabilities(request.into_inner()).await?,
        ))
    }

    async fn list_volumes(
        &self,
        request: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        Ok(Response::new(
            ControllerCore::list_volumes(self, request.into_inner()).await?,
        ))
    }

    async fn get_capacity(
        &self,
        request: Request<pb::GetCapacityRequest>,
    ) -> Result<Response<pb::GetCapacityResponse>, Status> {
        Ok(Response::new(
            ControllerCore::get_capacity(self, request.into_inner()).await?,
        ))
    }

    async fn controller_get_capabilities(
        &self,
        _request: Request<pb::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<pb::ControllerGetCapabilitiesResponse>, Status> {
        Ok(Response::new(controller_capabilities(&CAPABILITIES)))
    }

    async fn create_snapshot(
        &self,
        request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::CreateSnapshotResponse>, Status> {
        crate::server::note_volume(&request.get_ref().source_volume_id);
        let snapshot = ControllerCore::create_snapshot(self, request.into_inner()).await?;
        Ok(Response::new(pb::CreateSnapshotResponse {
            snapshot: Some(snapshot),
        }))
    }

    async fn delete_snapshot(
        &self,
        request: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        crate::server::note_volume(&request.get_ref().snapshot_id);
        let req = request.into_inner();
        self.delete_by_handle(
            "snapshot",
            &req.snapshot_id,
            &req.secrets,
            B::delete_snapshot,
        )
        .await?;
        Ok(Response::new(pb::DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        Ok(Response::new(
            ControllerCore::list_snapshots(self, request.into_inner()).await?,
        ))
    }

    async fn controller_expand_volume(
        &self,
        request: Request<pb::ControllerExpandVolumeRequest>,
    ) -> Result<Response<pb::ControllerExpandVolumeResponse>, Status> {
        crate::server::note_volume(&request.get_ref().volume_id);
        Ok(Response::new(self.expand(request.into_inner()).await?))
    }

    async fn controller_get_volume(
        &self,
        request: Request<pb::ControllerGetVolumeRequest>,
    ) -> Result<Response<pb::ControllerGetVolumeResponse>, Status> {
        crate::server::note_volume(&request.get_ref().volume_id);
        Ok(Response::new(self.get_volume(request.into_inner()).await?))
    }
}
