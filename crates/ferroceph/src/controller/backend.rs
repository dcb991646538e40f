//! What a Ceph backend (RBD images, CephFS subvolumes) supplies to the one CSI controller
//! core: parsing its StorageClass parameters and secrets, and the Ceph work of each RPC.
//! The Ceph work runs on a blocking thread with a connected cluster (see `Ceph::run`), so
//! it is written as associated functions taking everything they need by value or reference.

use crate::config::ClusterMap;
use crate::credentials::Credentials;
use crate::error::Result;
use crate::validate::{ContentSource, ModeRules};
use crate::volid::CsiId;
use csi::v1 as pb;
use rados::Cluster;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Where in a cluster a backend works: monitors, the journal's RADOS namespace, the CephFS
/// subvolume group (empty for RBD) and the driver instance whose journal it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Site {
    pub(crate) cluster_id: String,
    pub(crate) monitors: Vec<String>,
    pub(crate) namespace: String,
    pub(crate) group: String,
    pub(crate) instance: String,
}

/// A location of volumes inside a cluster: an RBD pool or a CephFS filesystem, by the id
/// that handles carry or by the name that StorageClasses carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum At {
    Id(i64),
    Name(String),
}

/// A CreateVolume, validated.
pub(crate) struct NewVolume<P> {
    pub(crate) name: String,
    pub(crate) params: P,
    pub(crate) capabilities: Vec<pb::VolumeCapability>,
    pub(crate) range: Option<pb::CapacityRange>,
    pub(crate) source: Option<ContentSource>,
    /// What is left of the RPC's deadline when the Ceph work starts.
    pub(crate) time_left: Option<Duration>,
}

pub(crate) struct MadeVolume {
    pub(crate) uuid: String,
    /// Pool id or fscid: the handle's location field.
    pub(crate) location: i64,
    pub(crate) capacity: u64,
    pub(crate) context: BTreeMap<String, String>,
}

pub(crate) struct MadeSnapshot {
    pub(crate) uuid: String,
    pub(crate) location: i64,
    pub(crate) size: u64,
    pub(crate) created_nanos: i64,
}

/// One snapshot of a journal: its uuid, the uuid of the volume it was taken from (None when
/// that volume's name does not end in a uuid), size and creation time.
pub(crate) struct SnapshotEntry {
    pub(crate) uuid: String,
    pub(crate) source_uuid: Option<String>,
    pub(crate) size: u64,
    pub(crate) created_nanos: i64,
}

impl SnapshotEntry {
    pub(crate) fn new(
        uuid: String,
        source_uuid: Option<String>,
        size: u64,
        created_nanos: i64,
    ) -> SnapshotEntry {
        SnapshotEntry {
            uuid,
            source_uuid,
            size,
            created_nanos,
        }
    }
}

/// One volume of a journal with its condition (is its image or subvolume there?).
pub(crate) struct VolumeEntry {
    pub(crate) uuid: String,
    pub(crate) condition: Condition,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Condition {
    pub(crate) abnormal: bool,
    pub(crate) message: String,
}

impl Condition {
    pub(crate) fn healthy(message: impl Into<String>) -> Condition {
        Condition {
            abnormal: false,
            message: message.into(),
        }
    }
    pub(crate) fn abnormal(message: impl Into<String>) -> Condition {
        Condition {
            abnormal: true,
            message: message.into(),
        }
    }
}

pub(crate) struct Expanded {
    pub(crate) capacity: u64,
    pub(crate) node_expansion_required: bool,
}

pub(crate) trait Backend: Send + Sync + 'static {
    /// "RBD" or "CephFS", for messages.
    const NAME: &'static str;
    /// What a location is called in messages: "pool" or "filesystem".
    const LOCATION: &'static str;
    /// The access modes the backend serves.
    fn modes() -> &'static ModeRules;

    /// StorageClass parameters of a CreateVolume, parsed and checked.
    type Params: Clone + Send + 'static;
    fn parse_params(params: &HashMap<String, String>) -> Result<Self::Params>;
    fn cluster_id(params: &Self::Params) -> &str;
    /// The pool or filesystem name the parameters provision into.
    fn location_name(params: &Self::Params) -> &str;
    /// Credentials for CreateVolume (may use legacy parameters).
    fn create_credentials(
        secrets: &HashMap<String, String>,
        params: &Self::Params,
    ) -> Result<Credentials>;
    /// Credentials for every other controller RPC.
    fn credentials(secrets: &HashMap<String, String>) -> Result<Credentials>;
    /// Where a cluster is; `params` lets legacy StorageClasses carry their monitors.
    fn site(
        clusters: &ClusterMap,
        cluster_id: &str,
        params: Option<&Self::Params>,
        instance: &str,
    ) -> Result<Site>;
    /// The name prefix of new snapshots from CreateSnapshot's parameters.
    fn snapshot_prefix(params: &HashMap<String, String>) -> Result<String>;
    /// The size a CreateVolume asks for; None means "no size" (CephFS without a quota).
    fn requested_size(range: Option<&pb::CapacityRange>) -> Result<Option<u64>>;

    // The Ceph work, on a connected cluster.
    fn create_volume(c: &Cluster, site: &Site, v: NewVolume<Self::Params>) -> Result<MadeVolume>;
    /// Some(location name) when the location existed; Ok for a volume already gone.
    fn delete_volume(c: &Cluster, site: &Site, id: &CsiId) -> Result<Option<String>>;
    fn delete_snapshot(c: &Cluster, site: &Site, id: &CsiId) -> Result<Option<String>>;
    fn volume_exists(c: &Cluster, site: &Site, id: &CsiId) -> Result<bool>;
    /// None when the source's location is gone.
    fn create_snapshot(
        c: &Cluster,
        site: &Site,
        source: &CsiId,
        source_raw: &str,
        name: &str,
        prefix: &str,
    ) -> Result<Option<(MadeSnapshot, String)>>;
    /// None when the volume does not exist.
    fn expand(
        c: &Cluster,
        site: &Site,
        id: &CsiId,
        raw: &str,
        size: u64,
    ) -> Result<Option<Expanded>>;
    /// Capacity and condition; None when the volume does not exist.
    fn volume_condition(c: &Cluster, site: &Site, id: &CsiId) -> Result<Option<(u64, Condition)>>;
    /// Every location of the cluster that may hold volumes (pools with the rbd
    /// application, filesystems), for listings after a restart.
    fn discover_locations(c: &Cluster) -> Result<Vec<String>>;
    /// The volumes of one location's journal; None when the location is gone.
    fn list_volumes(c: &Cluster, site: &Site, at: &At) -> Result<Option<(i64, Vec<VolumeEntry>)>>;
    /// The snapshots of one location's journal (only `only` when given); None when the
    /// location is gone.
    fn list_snapshots(
        c: &Cluster,
        site: &Site,
        at: &At,
        only: Option<&str>,
    ) -> Result<Option<(i64, Vec<SnapshotEntry>)>>;
    /// The id of the pool whose free space GetCapacity reports, from its parameters (or the
    /// location the controller last provisioned into).
    fn capacity_pool(
        c: &Cluster,
        params: &HashMap<String, String>,
        location: Option<&str>,
    ) -> Result<Option<i64>>;
}
