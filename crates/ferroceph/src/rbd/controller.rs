//! The RBD backend of the controller core: the Ceph work of each Controller RPC on RBD
//! images (in `image.rs`), and RBD's StorageClass parameters and secrets.

use crate::config::{ClusterMap, ConfigError};
use crate::controller::backend::{
    At, Backend, Condition, Expanded, MadeSnapshot, MadeVolume, NewVolume, Site, SnapshotEntry,
    VolumeEntry,
};
use crate::controller::listing::uuid_tail;
use crate::controller::ControllerCore;
use crate::error::{Error, Result};
use crate::journal;
use crate::rbd::image::{self, CreateSpec, Place, Source};
use crate::rbd::params::{controller_credentials, Credentials, RbdParams, DEFAULT_SNAP_PREFIX};
use crate::validate::{self, ModeRules, RBD_MODES};
use crate::volid::CsiId;
use csi::v1 as pb;
use rados::Cluster;
use std::collections::{BTreeSet, HashMap};

pub(crate) struct RbdBackend;

/// The CSI Controller service for RBD.
pub(crate) type RbdController = ControllerCore<RbdBackend>;

/// Monitors and RADOS namespace for a clusterID: from config.json, or (legacy
/// StorageClasses) the monitor list itself carried as the clusterID.
fn resolve(
    clusters: &ClusterMap,
    cluster_id: &str,
    legacy_monitors: &[String],
) -> Result<(Vec<String>, String)> {
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
        Err(e) => Err(e.into()),
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

fn place_at<'c>(c: &'c Cluster, site: &Site, at: &At) -> Result<Option<Place<'c>>> {
    Ok(match at {
        At::Name(pool) => Some(Place::by_name(c, pool, &site.namespace, &site.instance)?),
        At::Id(id) => Place::by_id(c, *id, &site.namespace, &site.instance)?,
    })
}

/// The image a volume's journal entry names; None when the entry is gone.
fn volume_image(place: &Place<'_>, uuid: &str) -> Result<Option<String>> {
    Ok(place
        .volumes()
        .get(uuid)
        .map_err(|e| image::jerr("read volume journal", e))?
        .and_then(|attrs| attrs.get(journal::IMAGE_NAME).cloned()))
}

impl Backend for RbdBackend {
    const NAME: &'static str = "RBD";
    const LOCATION: &'static str = "pool";
    type Params = RbdParams;

    fn modes() -> &'static ModeRules {
        &RBD_MODES
    }

    fn parse_params(params: &HashMap<String, String>) -> Result<RbdParams> {
        RbdParams::parse(params).map_err(Error::invalid)
    }

    fn cluster_id(params: &RbdParams) -> &str {
        &params.cluster_id
    }

    fn location_name(params: &RbdParams) -> &str {
        &params.pool
    }

    fn create_credentials(
        secrets: &HashMap<String, String>,
        params: &RbdParams,
    ) -> Result<Credentials> {
        controller_credentials(secrets, params.admin_id.as_deref()).map_err(Error::invalid)
    }

    fn credentials(secrets: &HashMap<String, String>) -> Result<Credentials> {
        controller_credentials(secrets, None).map_err(Error::invalid)
    }

    fn site(
        clusters: &ClusterMap,
        cluster_id: &str,
        params: Option<&RbdParams>,
        instance: &str,
    ) -> Result<Site> {
        let legacy = params.map(|p| p.monitors.as_slice()).unwrap_or_default();
        let (monitors, namespace) = resolve(clusters, cluster_id, legacy)?;
        Ok(Site {
            cluster_id: cluster_id.to_string(),
            monitors,
            namespace,
            group: String::new(),
            instance: instance.to_string(),
        })
    }

    fn snapshot_prefix(params: &HashMap<String, String>) -> Result<String> {
        let mut prefix = DEFAULT_SNAP_PREFIX.to_string();
        for (k, v) in params {
            match k.as_str() {
                "snapshotNamePrefix" => prefix = v.clone(),
                "clusterID" | "pool" => {}
                k if k.starts_with("csi.storage.k8s.io/") => {}
                other => {
                    return Err(Error::invalid(format!(
                        "unknown snapshot parameter {other:?}"
                    )))
                }
            }
        }
        Ok(prefix)
    }

    fn requested_size(range: Option<&pb::CapacityRange>) -> Result<Option<u64>> {
        Ok(Some(validate::capacity(range)?))
    }

    fn create_volume(c: &Cluster, site: &Site, v: NewVolume<RbdParams>) -> Result<MadeVolume> {
        let p = &v.params;
        let place = Place::by_name(c, &p.pool, &site.namespace, &site.instance)?;
        let source_id = v.source.as_ref().map(|s| s.raw.clone()).unwrap_or_default();
        let source = match v.source {
            None => Source::Blank,
            Some(src) if src.id.location != place.pool_id => {
                return Err(Error::invalid(format!(
                    "content source {source_id} lives in pool id {}, but the volume goes to pool {:?} (id {}); cloning across pools is not supported",
                    src.id.location, p.pool, place.pool_id
                )));
            }
            Some(src) if src.is_snapshot => Source::Snapshot(src.id.uuid),
            Some(src) => Source::Volume(src.id.uuid),
        };
        let size = validate::capacity(v.range.as_ref())?;
        let spec = CreateSpec {
            name: &v.name,
            size,
            range: v.range.as_ref(),
            params: p,
            source,
            source_id: &source_id,
        };
        let created = image::create_volume(&place, &spec)?;
        let mut context = p.volume_context();
        context.insert("imageName".into(), created.image.clone());
        context.insert("journalPool".into(), p.pool.clone());
        if !site.namespace.is_empty() {
            context.insert("radosNamespace".into(), site.namespace.clone());
        }
        Ok(MadeVolume {
            uuid: created.uuid,
            location: place.pool_id,
            capacity: created.size,
            context,
        })
    }

    fn delete_volume(c: &Cluster, site: &Site, id: &CsiId) -> Result<Option<String>> {
        let Some(place) = place_at(c, site, &At::Id(id.location))? else {
            return Ok(None);
        };
        image::delete_volume(&place, &id.uuid)?;
        // the image is in the trash: the background remover takes it from there
        image::request_removal();
        Ok(Some(place.io.pool_name().to_string()))
    }

    fn delete_snapshot(c: &Cluster, site: &Site, id: &CsiId) -> Result<Option<String>> {
        let Some(place) = place_at(c, site, &At::Id(id.location))? else {
            return Ok(None);
        };
        image::delete_snapshot(&place, &id.uuid)?;
        image::request_removal();
        Ok(Some(place.io.pool_name().to_string()))
    }

    fn volume_exists(c: &Cluster, site: &Site, id: &CsiId) -> Result<bool> {
        let Some(place) = place_at(c, site, &At::Id(id.location))? else {
            return Ok(false);
        };
        Ok(place
            .volumes()
            .get(&id.uuid)
            .map_err(|e| image::jerr("read volume journal", e))?
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
        let not_found = || Error::not_found(format!("source volume {source_raw} does not exist"));
        let attrs = place
            .volumes()
            .get(&source.uuid)
            .map_err(|e| image::jerr("read volume journal", e))?
            .ok_or_else(not_found)?;
        image::refuse_encrypted(Some(&attrs), None, &format!("source volume {source_raw}"))?;
        let source_image = attrs
            .get(journal::IMAGE_NAME)
            .cloned()
            .ok_or_else(not_found)?;
        let info = image::create_snapshot(&place, name, &source_image, prefix)?;
        let made = MadeSnapshot {
            uuid: info.uuid,
            location: place.pool_id,
            size: info.size,
            created_nanos: info.created_nanos,
        };
        Ok(Some((made, place.io.pool_name().to_string())))
    }

    fn expand(
        c: &Cluster,
        site: &Site,
        id: &CsiId,
        _raw: &str,
        size: u64,
    ) -> Result<Option<Expanded>> {
        let Some(place) = place_at(c, site, &At::Id(id.location))? else {
            return Ok(None);
        };
        let Some(img) = volume_image(&place, &id.uuid)? else {
            return Ok(None);
        };
        let capacity = image::expand(&place, &img, size)?;
        // Block volumes too: a FUSE attachment's loop device keeps its old size until
        // NodeExpandVolume refreshes it (krbd and rbd-nbd devices follow by themselves).
        Ok(Some(Expanded {
            capacity,
            node_expansion_required: true,
        }))
    }

    fn volume_condition(c: &Cluster, site: &Site, id: &CsiId) -> Result<Option<(u64, Condition)>> {
        let Some(place) = place_at(c, site, &At::Id(id.location))? else {
            return Ok(None);
        };
        let Some(img) = volume_image(&place, &id.uuid)? else {
            return Ok(None);
        };
        Ok(Some(
            match rados::rbd::Image::open_read_only(&place.io, &img) {
                Ok(i) => (
                    i.size().unwrap_or(0),
                    Condition::healthy("image is present"),
                ),
                Err(e) if e.kind() == rados::ErrorKind::NotFound => (
                    0,
                    Condition::abnormal(format!("image {img} is missing from the pool")),
                ),
                Err(e) => (
                    0,
                    Condition::abnormal(format!("image {img} cannot be opened: {e}")),
                ),
            },
        ))
    }

    fn discover_locations(c: &Cluster) -> Result<Vec<String>> {
        let out = c
            .mon_command(
                r#"{"prefix": "osd pool ls", "detail": "detail", "format": "json"}"#,
                &[],
            )
            .map_err(Error::ceph_ctx("list pools"))?;
        Ok(rbd_pools(&out.out))
    }

    fn list_volumes(c: &Cluster, site: &Site, at: &At) -> Result<Option<(i64, Vec<VolumeEntry>)>> {
        let Some(place) = place_at(c, site, at)? else {
            return Ok(None);
        };
        let entries = place
            .volumes()
            .list_all()
            .map_err(|e| image::jerr("list volume journal", e))?;
        if entries.is_empty() {
            return Ok(Some((place.pool_id, vec![])));
        }
        // One listing of the pool's images tells which volumes still have theirs.
        let present: BTreeSet<String> = rados::rbd::list_images(&place.io)
            .map_err(Error::ceph_ctx("list images"))?
            .iter()
            .filter_map(|name| uuid_tail(name).map(str::to_string))
            .collect();
        let volumes = entries
            .into_iter()
            .map(|(_, uuid)| {
                let condition = if present.contains(&uuid) {
                    Condition::healthy("image is present")
                } else {
                    Condition::abnormal(format!(
                        "no image of volume {uuid} in pool {}",
                        place.io.pool_name()
                    ))
                };
                VolumeEntry { uuid, condition }
            })
            .collect();
        Ok(Some((place.pool_id, volumes)))
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
            .finished_entries(only, journal::IMAGE_ID)
            .map_err(|e| image::jerr("read snapshot journal", e))?;
        let out = finished
            .into_iter()
            .map(|(uuid, attrs)| {
                let info = image::read_snapshot_info(&place, &uuid, &attrs);
                let source_uuid = uuid_tail(&info.source_image).map(str::to_string);
                SnapshotEntry::new(uuid, source_uuid, info.size, info.created_nanos)
            })
            .collect();
        Ok(Some((place.pool_id, out)))
    }

    /// Data lands in `dataPool` when the StorageClass names one, so that is the pool whose
    /// free space counts.
    fn capacity_pool(
        c: &Cluster,
        params: &HashMap<String, String>,
        location: Option<&str>,
    ) -> Result<Option<i64>> {
        let named = |k: &str| params.get(k).filter(|v| !v.is_empty()).cloned();
        let Some(pool) = named("dataPool")
            .or_else(|| named("pool"))
            .or_else(|| location.map(str::to_string))
        else {
            return Ok(None);
        };
        match c.pool_lookup(&pool) {
            Ok(id) => Ok(Some(id)),
            Err(e) if e.kind() == rados::ErrorKind::NotFound => Err(Error::invalid(format!(
                "pool {pool:?} does not exist in the cluster; check the StorageClass parameters"
            ))),
            Err(e) => Err(Error::ceph(format!("look up pool {pool}"), e)),
        }
    }
}

/// Names of the pools tagged with the rbd application in `osd pool ls detail` JSON.
fn rbd_pools(json: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(json).unwrap_or_default();
    v.as_array()
        .map(|pools| {
            pools
                .iter()
                .filter(|p| p["application_metadata"].get("rbd").is_some())
                .filter_map(|p| p["pool_name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl RbdController {
    /// Removes deleted images from the trash in the background, in every pool this
    /// controller can reach: at once after a delete asks for it, and every `interval` (zero:
    /// only when asked) for images that clones or a dead client's watch kept there. Only
    /// images this instance trashed (see `journal::TrashLog`); after a restart it resumes
    /// from the trash logs.
    pub(crate) fn spawn_trash_reaper(self: &std::sync::Arc<Self>, interval: std::time::Duration) {
        let me = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                image::next_removal_pass(interval).await;
                let Some(ctl) = me.upgrade() else { return };
                ctl.removal_pass().await;
            }
        });
    }

    /// A last removal pass when the controller stops, so that the images of the last
    /// deletes do not wait in the trash for the next controller; bounded by `budget`.
    /// Images still open somewhere (a watch about to go) get more passes within the budget.
    pub(crate) async fn drain_trash(&self, budget: std::time::Duration) {
        let drain = async {
            while self.removal_pass().await.busy > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        };
        if tokio::time::timeout(budget, drain).await.is_err() {
            tracing::info!("trash removal unfinished at shut-down; the next controller resumes it");
        }
    }

    async fn removal_pass(&self) -> image::Pass {
        let _pass = image::pass_lock().lock().await;
        let mut total = image::Pass::default();
        for t in self.targets() {
            let cfg = self
                .ceph
                .connect_config(&t.site.monitors, &t.creds.user, &t.creds.key);
            let (pools, site) = (t.locations, t.site);
            let cluster_id = site.cluster_id.clone();
            let r = self
                .ceph
                .run(cfg, move |cluster| {
                    let mut pools = pools;
                    if let Ok(more) = RbdBackend::discover_locations(cluster) {
                        pools.extend(more);
                    }
                    let pools: Vec<String> = pools.into_iter().collect();
                    Ok(image::remove_trashed_in(
                        cluster,
                        &pools,
                        &site.namespace,
                        &site.instance,
                    ))
                })
                .await;
            match r {
                Ok(pass) => total.add(pass),
                Err(e) => tracing::debug!(cluster = %cluster_id, "trash remover: {e}"),
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_monitor_lists_are_recognised() {
        assert!(looks_like_monitors("10.0.0.1:6789,10.0.0.2:6789"));
        assert!(!looks_like_monitors("fed5480a-f00f-417a-a51d-31d8a8144c03"));
        assert!(!looks_like_monitors(""));
    }

    #[test]
    fn rbd_pools_are_found_by_application() {
        let json = br#"[{"pool_name":"rbd","application_metadata":{"rbd":{}}},
                        {"pool_name":"cephfs_data","application_metadata":{"cephfs":{}}},
                        {"pool_name":"bare","application_metadata":{}}]"#;
        assert_eq!(rbd_pools(json), vec!["rbd".to_string()]);
        assert!(rbd_pools(b"not json").is_empty());
    }
}
