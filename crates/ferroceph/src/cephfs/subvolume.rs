//! Blocking CephFS flows on the cluster through the mgr `volumes` module (JSON commands
//! over librados, no CLI): create (blank, from a snapshot, from a volume), snapshot,
//! expand, delete. As for RBD, each flow records its intent in the journal (the
//! filesystem's metadata pool, namespace `csi`) before touching Ceph, and each step is
//! idempotent, so a retry after a crash at any point finishes the work or undoes it.
//!
//! Clones are asynchronous in Ceph: CreateVolume starts one, waits for it within part of
//! the RPC's deadline, and answers Aborted with the clone's state while it is not complete; a failed or cancelled clone is removed with its
//! journal entry and reported, so the next retry starts over cleanly.

use crate::ceph::{crash_point, status};
use crate::cephfs::params::{DEFAULT_SNAP_PREFIX, DEFAULT_VOL_PREFIX};
use crate::journal::{self, Attrs, Entry, Journal, JournalError, Kind, Lookup};
use crate::validate;
use csi::v1 as pb;
use rados::{Cluster, ErrorKind, IoCtx};
use serde_json::{json, Value};
use tonic::Status;

/// Journal keys of ours (ignored by ceph-csi).
/// The subvolume group a volume or snapshot lives in (ceph-csi always uses config.json's).
pub const GROUP_KEY: &str = "csi.ferroceph.group";
/// The CSI id of a volume's content source, so a retry can tell a compatible request.
pub const SOURCE_ID_KEY: &str = "csi.ferroceph.source";
/// `<group>/<subvolume>@<snapshot>` a volume is cloned from.
pub const CLONE_FROM_KEY: &str = "csi.ferroceph.clonefrom";
/// "1" when that snapshot was made for the clone (volume source) and goes when it is done.
pub const TEMP_SNAP_KEY: &str = "csi.ferroceph.tempsnap";
/// Snapshot creation time (unix nanoseconds) and size (the source's quota) in bytes.
pub const CREATED_KEY: &str = "csi.ferroceph.created";
pub const SIZE_KEY: &str = "csi.ferroceph.size";

const EAGAIN: i32 = libc::EAGAIN;
const EOPNOTSUPP: i32 = libc::EOPNOTSUPP;

pub fn jerr(what: &str, e: JournalError) -> Status {
    match e {
        JournalError::Rados(e) => status(what, &e),
        other => Status::internal(format!("{what}: {other}")),
    }
}

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

pub fn filesystems(cluster: &Cluster) -> Result<Vec<FsInfo>, Status> {
    let out = cluster
        .mon_command(r#"{"prefix": "fs dump", "format": "json"}"#, &[])
        .map_err(|e| status("read the filesystem map", &e))?;
    let v: Value = serde_json::from_slice(&out.out)
        .map_err(|e| Status::internal(format!("cannot parse `fs dump`: {e}")))?;
    Ok(parse_fs_dump(&v))
}

pub fn fs_by_name(cluster: &Cluster, name: &str) -> Result<FsInfo, Status> {
    let all = filesystems(cluster)?;
    let names: Vec<String> = all.iter().map(|f| f.name.clone()).collect();
    all.into_iter().find(|f| f.name == name).ok_or_else(|| {
        Status::invalid_argument(format!(
            "CephFS filesystem {name:?} does not exist (known: {}); check the fsName parameter",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ))
    })
}

pub fn fs_by_id(cluster: &Cluster, fscid: i64) -> Result<Option<FsInfo>, Status> {
    Ok(filesystems(cluster)?.into_iter().find(|f| f.fscid == fscid))
}

/// The mgr `volumes` module for one filesystem.
pub struct Volumes<'a> {
    pub cluster: &'a Cluster,
    pub fs: &'a str,
}

/// What `fs subvolume info` says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubInfo {
    pub state: String,
    pub path: String,
    /// None: no quota ("infinite").
    pub quota: Option<u64>,
    pub used: u64,
    pub data_pool: String,
    pub kind: String,
}

impl SubInfo {
    pub fn parse(v: &Value) -> SubInfo {
        SubInfo {
            state: v["state"].as_str().unwrap_or("complete").to_string(),
            path: v["path"].as_str().unwrap_or("").to_string(),
            quota: v["bytes_quota"].as_u64().filter(|q| *q > 0),
            used: v["bytes_used"].as_u64().unwrap_or(0),
            data_pool: v["data_pool"].as_str().unwrap_or("").to_string(),
            kind: v["type"].as_str().unwrap_or("").to_string(),
        }
    }
}

/// What `fs clone status` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloneState {
    /// pending or in-progress; the text describes it for the CO.
    Running(String),
    Complete,
    /// failed or canceled, with Ceph's reason.
    Failed(String),
}

pub fn parse_clone_status(v: &Value) -> CloneState {
    let s = &v["status"];
    let state = s["state"].as_str().unwrap_or("unknown");
    let source = &s["source"];
    let from = match (source["subvolume"].as_str(), source["snapshot"].as_str()) {
        (Some(sub), Some(snap)) => format!(
            " from {}/{sub}@{snap}",
            source["group"].as_str().unwrap_or("_nogroup")
        ),
        _ => String::new(),
    };
    match state {
        "complete" => CloneState::Complete,
        "failed" | "canceled" | "cancelled" => {
            let f = &s["failure"];
            let why = match (f["errno"].as_str(), f["error_msg"].as_str()) {
                (Some(n), Some(m)) => format!("{m} (errno {n})"),
                (None, Some(m)) => m.to_string(),
                _ => "no reason given".to_string(),
            };
            CloneState::Failed(format!("clone {state}{from}: {why}"))
        }
        other => {
            let mut text = format!("clone {other}{from}");
            // Newer Ceph (Reef+) reports progress; Pacific reports the state only.
            let p = &s["progress_report"];
            if let Some(pct) = p["percentage cloned"].as_str() {
                text.push_str(&format!(", {pct} cloned"));
            }
            if let Some(amount) = p["amount cloned"].as_str() {
                text.push_str(&format!(" ({amount})"));
            }
            if let Some(files) = p["files cloned"].as_str() {
                text.push_str(&format!(", {files} files"));
            }
            CloneState::Running(text)
        }
    }
}

fn group_missing(e: &rados::Error) -> bool {
    e.kind() == ErrorKind::NotFound
        && e.detail
            .as_deref()
            .is_some_and(|d| d.contains("group") && d.contains("does not exist"))
}

impl<'a> Volumes<'a> {
    pub fn new(cluster: &'a Cluster, fs: &'a str) -> Self {
        Volumes { cluster, fs }
    }

    fn cmd(&self, mut v: Value) -> rados::Result<Value> {
        v["vol_name"] = json!(self.fs);
        v["format"] = json!("json");
        let out = self.cluster.mgr_command(&v.to_string(), &[])?;
        if out.out.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        Ok(serde_json::from_slice(&out.out).unwrap_or(Value::Null))
    }

    pub fn group_create(&self, group: &str) -> rados::Result<()> {
        self.cmd(json!({"prefix": "fs subvolumegroup create", "group_name": group}))
            .map(drop)
    }

    /// Runs `f`; when it fails because the subvolume group is missing, creates the group
    /// and runs `f` once more (ceph-csi leaves the claim Pending instead, #4548).
    pub fn in_group<T>(&self, group: &str, f: impl Fn() -> rados::Result<T>) -> rados::Result<T> {
        match f() {
            Err(e) if group_missing(&e) => {
                tracing::info!(fs = self.fs, group, "creating the missing subvolume group");
                self.group_create(group)?;
                f()
            }
            r => r,
        }
    }

    pub fn create(
        &self,
        group: &str,
        sub: &str,
        size: Option<u64>,
        pool: Option<&str>,
    ) -> rados::Result<()> {
        let mut c = json!({"prefix": "fs subvolume create", "sub_name": sub, "group_name": group});
        if let Some(s) = size {
            c["size"] = json!(s);
        }
        if let Some(p) = pool {
            c["pool_layout"] = json!(p);
        }
        self.in_group(group, || self.cmd(c.clone())).map(drop)
    }

    /// None when the subvolume (or its group) does not exist.
    pub fn info(&self, group: &str, sub: &str) -> rados::Result<Option<SubInfo>> {
        match self.cmd(json!({"prefix": "fs subvolume info", "sub_name": sub, "group_name": group}))
        {
            Ok(v) => Ok(Some(SubInfo::parse(&v))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// None when the subvolume does not exist; Complete for a subvolume that is not a clone.
    pub fn clone_status(&self, group: &str, sub: &str) -> rados::Result<Option<CloneState>> {
        match self.cmd(json!({"prefix": "fs clone status", "clone_name": sub, "group_name": group}))
        {
            Ok(v) => Ok(Some(parse_clone_status(&v))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) if e.errno == EOPNOTSUPP => Ok(Some(CloneState::Complete)),
            Err(e) => Err(e),
        }
    }

    pub fn clone_cancel(&self, group: &str, sub: &str) -> rados::Result<()> {
        self.cmd(json!({"prefix": "fs clone cancel", "clone_name": sub, "group_name": group}))
            .map(drop)
    }

    pub fn resize(&self, group: &str, sub: &str, size: u64) -> rados::Result<()> {
        self.cmd(json!({
            "prefix": "fs subvolume resize", "sub_name": sub, "group_name": group,
            "new_size": size.to_string(), "no_shrink": true
        }))
        .map(drop)
    }

    pub fn remove(&self, group: &str, sub: &str, retain_snapshots: bool) -> rados::Result<()> {
        let mut c = json!({"prefix": "fs subvolume rm", "sub_name": sub, "group_name": group, "force": true});
        if retain_snapshots {
            c["retain_snapshots"] = json!(true);
        }
        self.cmd(c).map(drop)
    }

    pub fn snapshot_create(&self, group: &str, sub: &str, snap: &str) -> rados::Result<()> {
        self.cmd(json!({
            "prefix": "fs subvolume snapshot create", "sub_name": sub, "group_name": group, "snap_name": snap
        }))
        .map(drop)
    }

    /// None when the snapshot (or its subvolume) does not exist.
    pub fn snapshot_info(
        &self,
        group: &str,
        sub: &str,
        snap: &str,
    ) -> rados::Result<Option<Value>> {
        match self.cmd(json!({
            "prefix": "fs subvolume snapshot info", "sub_name": sub, "group_name": group, "snap_name": snap
        })) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn snapshot_remove(&self, group: &str, sub: &str, snap: &str) -> rados::Result<()> {
        match self.cmd(json!({
            "prefix": "fs subvolume snapshot rm", "sub_name": sub, "group_name": group,
            "snap_name": snap, "force": true
        })) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            r => r.map(drop),
        }
    }

    pub fn clone(
        &self,
        src: &SnapRef,
        group: &str,
        target: &str,
        pool: Option<&str>,
    ) -> rados::Result<()> {
        let mut c = json!({
            "prefix": "fs subvolume snapshot clone", "sub_name": src.sub, "group_name": src.group,
            "snap_name": src.snap, "target_sub_name": target, "target_group_name": group
        });
        if let Some(p) = pool {
            c["pool_layout"] = json!(p);
        }
        match self.in_group(group, || self.cmd(c.clone())) {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
            r => r.map(drop),
        }
    }
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
    ) -> Result<Self, Status> {
        let io = cluster
            .ioctx_by_id(fs.metadata_pool, namespace)
            .map_err(|e| status(&format!("open the metadata pool of {}", fs.name), &e))?;
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
    ) -> Result<Self, Status> {
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
    ) -> Result<Option<Self>, Status> {
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
    fn check_data_pool(&self, pool: &str) -> Result<(), Status> {
        let id = self.cluster.pool_lookup(pool).map_err(|e| match e.kind() {
            ErrorKind::NotFound => Status::invalid_argument(format!(
                "pool {pool:?} does not exist; check the StorageClass pool parameter"
            )),
            _ => status(&format!("look up pool {pool}"), &e),
        })?;
        if !self.fs.data_pools.contains(&id) {
            return Err(Status::invalid_argument(format!(
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

/// Maps an mgr error to a status, with Ceph's explanation.
pub fn merr(what: &str, e: &rados::Error) -> Status {
    if e.errno == EAGAIN {
        return Status::aborted(format!("{what}: {e}; retry later"));
    }
    status(what, e)
}

/// Looks `name` up, clearing a dangling directory key left by a crash.
pub(crate) fn find(journal: &Journal<'_>, name: &str) -> Result<Option<Entry>, Status> {
    match journal
        .lookup(name)
        .map_err(|e| jerr("journal lookup", e))?
    {
        Lookup::Found(entry) => Ok(Some(entry)),
        Lookup::Dangling { uuid } => {
            journal
                .release(&uuid, Some(name))
                .map_err(|e| jerr("clean up a stale journal entry", e))?;
            Ok(None)
        }
        Lookup::Absent => Ok(None),
    }
}

/// Reserves `name` under a fresh uuid; `attrs` gives the per-entry keys for a uuid (the
/// entry object is created with all of them in one step).
pub(crate) fn reserve_new(
    journal: &Journal<'_>,
    name: &str,
    attrs: impl Fn(&str) -> Attrs,
) -> Result<Entry, Status> {
    for _ in 0..5 {
        let uuid = uuid::Uuid::new_v4().to_string();
        let attrs = attrs(&uuid);
        match journal.reserve(name, &uuid, &attrs) {
            Ok(()) => {
                return Ok(Entry {
                    uuid,
                    pool_id: None,
                    attrs,
                })
            }
            Err(JournalError::UuidClash(_)) => continue,
            Err(e) => return Err(jerr("journal reserve", e)),
        }
    }
    Err(Status::internal(
        "could not find a free uuid after 5 attempts",
    ))
}

/// Where a new volume's data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Blank,
    /// A snapshot's uuid (same filesystem).
    Snapshot(String),
    /// A volume's uuid (same filesystem).
    Volume(String),
}

pub struct CreateSpec<'a> {
    pub name: &'a str,
    /// None: no quota.
    pub quota: Option<u64>,
    pub range: Option<&'a pb::CapacityRange>,
    pub pool: Option<&'a str>,
    pub vol_prefix: &'a str,
    pub owner: Option<&'a str>,
    pub source: Source,
    /// The CSI id of the source, "" for blank.
    pub source_id: &'a str,
    /// How long to wait for a clone to complete before answering Aborted.
    pub clone_wait: std::time::Duration,
}

#[derive(Debug, Clone)]
pub struct Created {
    pub uuid: String,
    pub subvolume: String,
    pub path: String,
    pub quota: Option<u64>,
}

/// What a journal entry's subvolume looks like in Ceph.
enum Existing {
    Absent,
    Ready(SubInfo),
    Cloning(String),
    Failed(String),
}

fn existing(place: &FsPlace<'_>, group: &str, sub: &str, clone: bool) -> Result<Existing, Status> {
    let mgr = place.mgr();
    if clone {
        match mgr
            .clone_status(group, sub)
            .map_err(|e| merr("read the clone status", &e))?
        {
            None => return Ok(Existing::Absent),
            Some(CloneState::Running(s)) => return Ok(Existing::Cloning(s)),
            Some(CloneState::Failed(s)) => return Ok(Existing::Failed(s)),
            Some(CloneState::Complete) => {}
        }
    }
    match mgr.info(group, sub) {
        Ok(None) => Ok(Existing::Absent),
        // A subvolume deleted with its snapshots retained is gone for the CO.
        Ok(Some(i)) if i.state == "snapshot-retained" => Ok(Existing::Absent),
        Ok(Some(i)) => Ok(Existing::Ready(i)),
        // "not ready for operation info": a clone made without our marker (ceph-csi).
        Err(e) if e.errno == EAGAIN && !clone => existing(place, group, sub, true),
        Err(e) => Err(merr("read the subvolume", &e)),
    }
}

/// [`existing`], waiting up to `wait` while a clone runs: a small clone completes in
/// seconds, and answering Aborted at once sends the CO into its retry back-off (a small
/// clone's PVC bound only after 17-20 s in Kubernetes).
fn settle(
    place: &FsPlace<'_>,
    group: &str,
    sub: &str,
    clone: bool,
    wait: std::time::Duration,
) -> Result<Existing, Status> {
    let until = std::time::Instant::now() + wait;
    loop {
        match existing(place, group, sub, clone)? {
            Existing::Cloning(_) if std::time::Instant::now() < until => {
                std::thread::sleep(std::time::Duration::from_secs(1))
            }
            other => return Ok(other),
        }
    }
}

fn quota_fits(quota: Option<u64>, spec: &CreateSpec<'_>) -> bool {
    match (quota, spec.quota) {
        (Some(q), _) => validate::size_fits(q, spec.range),
        (None, None) => true,
        (None, Some(_)) => false,
    }
}

/// Undo of a creation that failed (not crashed): the subvolume (a running clone is
/// cancelled first), a temporary snapshot, and the journal entry. The entry is kept when
/// something could not be removed, so a retry or DeleteVolume still finds it; returns
/// whether everything is gone.
fn rollback(place: &FsPlace<'_>, journal: &Journal<'_>, entry: &Entry, name: &str) -> bool {
    let mgr = place.mgr();
    let (group, sub) = place.volume_names(&entry.uuid, &entry.attrs);
    if entry.attrs.contains_key(CLONE_FROM_KEY) {
        let _ = mgr.clone_cancel(&group, &sub);
    }
    let mut clean = match mgr.remove(&group, &sub, false) {
        Ok(()) => true,
        Err(e) if e.kind() == ErrorKind::NotFound => true,
        Err(e) => {
            tracing::warn!(subvolume = %sub, "rollback could not remove the subvolume (a retry or DeleteVolume will): {e}");
            false
        }
    };
    clean &= remove_temp_snapshot(place, &entry.attrs);
    if clean {
        if let Err(e) = journal.release(&entry.uuid, Some(name)) {
            tracing::warn!(name, "rollback could not release the journal entry: {e}");
            clean = false;
        }
    }
    clean
}

/// Removes the temporary snapshot a volume clone was made from; true when it is gone.
fn remove_temp_snapshot(place: &FsPlace<'_>, attrs: &Attrs) -> bool {
    if attrs.get(TEMP_SNAP_KEY).map(String::as_str) != Some("1") {
        return true;
    }
    let Some(src) = attrs.get(CLONE_FROM_KEY).and_then(|s| SnapRef::decode(s)) else {
        return true;
    };
    match place.mgr().snapshot_remove(&src.group, &src.sub, &src.snap) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(snapshot = %src.encode(), "cannot remove the temporary snapshot (left for a retry or DeleteVolume): {e}");
            false
        }
    }
}

/// Checks the content source and says which snapshot to clone from, and how big it is.
fn plan_source(
    place: &FsPlace<'_>,
    spec: &CreateSpec<'_>,
) -> Result<Option<(SnapRef, bool)>, Status> {
    let mgr = place.mgr();
    let (src, temp, size) = match &spec.source {
        Source::Blank => return Ok(None),
        Source::Snapshot(uuid) => {
            let missing =
                || Status::not_found(format!("snapshot {} does not exist", spec.source_id));
            let attrs = place
                .snaps()
                .get(uuid)
                .map_err(|e| jerr("read the snapshot's journal entry", e))?
                .ok_or_else(missing)?;
            let src = place.snapshot_ref(uuid, &attrs).ok_or_else(missing)?;
            mgr.snapshot_info(&src.group, &src.sub, &src.snap)
                .map_err(|e| merr("read the snapshot", &e))?
                .ok_or_else(missing)?;
            let size = attrs.get(SIZE_KEY).and_then(|s| s.parse::<u64>().ok());
            (src, false, size.filter(|s| *s > 0))
        }
        Source::Volume(uuid) => {
            let missing =
                || Status::not_found(format!("source volume {} does not exist", spec.source_id));
            let attrs = place
                .volumes()
                .get(uuid)
                .map_err(|e| jerr("read the source volume's journal entry", e))?
                .ok_or_else(missing)?;
            refuse_backing(&attrs, spec.source_id, "cloned")?;
            let (group, sub) = place.volume_names(uuid, &attrs);
            let info = match existing(place, &group, &sub, attrs.contains_key(CLONE_FROM_KEY))? {
                Existing::Ready(i) => i,
                Existing::Cloning(s) => {
                    return Err(Status::aborted(format!(
                        "source volume {} is still being cloned ({s}); retry when it is ready",
                        spec.source_id
                    )))
                }
                Existing::Absent | Existing::Failed(_) => return Err(missing()),
            };
            // The temporary snapshot is named after the new subvolume (set when reserving).
            let snap = String::new();
            (SnapRef { group, sub, snap }, true, info.quota)
        }
    };
    if let (Some(want), Some(have)) = (spec.quota, size) {
        if want < have {
            return Err(Status::out_of_range(format!(
                "requested size {want} is smaller than the content source ({have} bytes)"
            )));
        }
    }
    Ok(Some((src, temp)))
}

/// Snapshot-backed volumes have no subvolume: they cannot be cloned, snapshotted or
/// expanded (ceph-csi refuses the last two as well).
fn refuse_backing(attrs: &Attrs, id: &str, what: &str) -> Result<(), Status> {
    if crate::cephfs::backing::backing_of(attrs).is_some() {
        return Err(Status::invalid_argument(format!(
            "volume {id} is snapshot-backed (a read-only view of a snapshot) and cannot be {what}"
        )));
    }
    Ok(())
}

fn has_clone_record(entry: &Entry) -> bool {
    entry.attrs.contains_key(CLONE_FROM_KEY)
}

/// Reserves a new volume entry with everything a retry needs: group, owner, content
/// source, and for clones the snapshot they come from (a volume source's temporary
/// snapshot is named after the new subvolume).
fn reserve_volume(
    place: &FsPlace<'_>,
    journal: &Journal<'_>,
    spec: &CreateSpec<'_>,
    planned: Option<&(SnapRef, bool)>,
) -> Result<Entry, Status> {
    reserve_new(journal, spec.name, |uuid| {
        let sub = format!("{}{uuid}", spec.vol_prefix);
        let mut attrs = Attrs::new();
        attrs.insert(journal::IMAGE_NAME.to_string(), sub.clone());
        attrs.insert(GROUP_KEY.to_string(), place.group.clone());
        if let Some(ns) = spec.owner {
            attrs.insert(journal::OWNER.to_string(), ns.to_string());
        }
        if !spec.source_id.is_empty() {
            attrs.insert(SOURCE_ID_KEY.to_string(), spec.source_id.to_string());
        }
        if let Some((src, temp)) = planned {
            let mut src = src.clone();
            if *temp {
                src.snap = sub;
                attrs.insert(TEMP_SNAP_KEY.to_string(), "1".to_string());
            }
            attrs.insert(CLONE_FROM_KEY.to_string(), src.encode());
        }
        attrs
    })
}

pub fn create_volume(place: &FsPlace<'_>, spec: &CreateSpec<'_>) -> Result<Created, Status> {
    let journal = place.volumes();
    let found = find(&journal, spec.name)?;
    if let Some(entry) = &found {
        if crate::cephfs::backing::backing_of(&entry.attrs).is_some() {
            return Err(Status::already_exists(format!(
                "volume {:?} already exists as a snapshot-backed volume (backingSnapshot: \"true\")",
                spec.name
            )));
        }
        let recorded = entry.attr(SOURCE_ID_KEY).unwrap_or("");
        if recorded != spec.source_id {
            return Err(Status::already_exists(format!(
                "volume {:?} already exists with another content source ({recorded:?})",
                spec.name
            )));
        }
        let (group, sub) = place.volume_names(&entry.uuid, &entry.attrs);
        let clone = entry.attrs.contains_key(CLONE_FROM_KEY);
        match settle(place, &group, &sub, clone, spec.clone_wait)? {
            Existing::Absent => {}
            Existing::Ready(info) => {
                return finish(place, &journal, entry, spec, &group, &sub, info);
            }
            Existing::Cloning(state) => return Err(clone_pending(spec.name, &sub, &state)),
            Existing::Failed(why) => {
                let cleaned = if rollback(place, &journal, entry, spec.name) {
                    "the failed clone was removed, and a retry starts a new one"
                } else {
                    "removing the failed clone did not finish; a retry continues"
                };
                return Err(Status::internal(format!(
                    "creating volume {:?} from {} failed: {why}; {cleaned}",
                    spec.name, spec.source_id
                )));
            }
        }
    }
    // Everything that can make the request fail for good is checked before reserving.
    if let Some(pool) = spec.pool {
        place.check_data_pool(pool)?;
    }
    let planned = plan_source(place, spec)?;
    let entry = match found {
        Some(entry) if has_clone_record(&entry) == planned.is_some() => entry,
        // An entry (made by ceph-csi) that does not say how to make this kind of volume,
        // and nothing exists for it yet: start over under a fresh uuid.
        Some(entry) => {
            journal
                .release(&entry.uuid, Some(spec.name))
                .map_err(|e| jerr("clean up an unfinished journal entry", e))?;
            reserve_volume(place, &journal, spec, planned.as_ref())?
        }
        None => reserve_volume(place, &journal, spec, planned.as_ref())?,
    };
    crash_point("cephfs.create.reserved");
    let (group, sub) = place.volume_names(&entry.uuid, &entry.attrs);
    // Ok(Ok(info)): ready; Ok(Err(state)): a clone still running.
    let built = (|| -> Result<Result<SubInfo, String>, Status> {
        let mgr = place.mgr();
        match entry
            .attrs
            .get(CLONE_FROM_KEY)
            .and_then(|s| SnapRef::decode(s))
        {
            None => {
                mgr.create(&group, &sub, spec.quota, spec.pool)
                    .map_err(|e| merr("create the subvolume", &e))?;
                crash_point("cephfs.create.subvolume");
            }
            Some(src) => {
                if entry.attrs.get(TEMP_SNAP_KEY).map(String::as_str) == Some("1") {
                    mgr.snapshot_create(&src.group, &src.sub, &src.snap)
                        .map_err(|e| merr("snapshot the source volume", &e))?;
                    crash_point("cephfs.clone.tempsnap");
                }
                mgr.clone(&src, &group, &sub, spec.pool)
                    .map_err(|e| merr("start the clone", &e))?;
                crash_point("cephfs.clone.started");
            }
        }
        match settle(
            place,
            &group,
            &sub,
            entry.attrs.contains_key(CLONE_FROM_KEY),
            spec.clone_wait,
        )? {
            Existing::Ready(info) => Ok(Ok(info)),
            Existing::Cloning(state) => Ok(Err(state)),
            Existing::Absent => Err(Status::aborted(format!(
                "subvolume {sub} vanished while being created; retry"
            ))),
            Existing::Failed(why) => Err(Status::internal(format!(
                "creating volume {:?} failed: {why}",
                spec.name
            ))),
        }
    })();
    match built {
        Ok(Ok(info)) => finish(place, &journal, &entry, spec, &group, &sub, info),
        Ok(Err(state)) => Err(clone_pending(spec.name, &sub, &state)),
        Err(e) => {
            if rollback(place, &journal, &entry, spec.name) {
                Err(e)
            } else {
                Err(Status::new(
                    e.code(),
                    format!(
                        "{}; undoing it did not finish, a retry continues",
                        e.message()
                    ),
                ))
            }
        }
    }
}

fn clone_pending(name: &str, sub: &str, state: &str) -> Status {
    Status::aborted(format!(
        "volume {name:?} is being cloned into subvolume {sub}: {state}; CephFS copies the data in the background, retry later"
    ))
}

/// Completes a volume whose subvolume is ready: removes a clone's temporary snapshot,
/// sets the requested quota, and checks that an existing volume fits the request.
fn finish(
    place: &FsPlace<'_>,
    journal: &Journal<'_>,
    entry: &Entry,
    spec: &CreateSpec<'_>,
    group: &str,
    sub: &str,
    mut info: SubInfo,
) -> Result<Created, Status> {
    if entry.attrs.contains_key(CLONE_FROM_KEY) {
        let temp_gone = remove_temp_snapshot(place, &entry.attrs);
        if let Some(want) = spec.quota {
            if info.quota.map_or(true, |q| q < want) {
                place
                    .mgr()
                    .resize(group, sub, want)
                    .map_err(|e| merr("set the clone's quota", &e))?;
                info.quota = Some(want);
            }
        }
        if temp_gone && entry.attrs.contains_key(TEMP_SNAP_KEY) {
            // Done with it: a later delete needs not look for it.
            let _ = journal.set_attrs(&entry.uuid, &[(TEMP_SNAP_KEY, "0")]);
        }
    }
    if !quota_fits(info.quota, spec) {
        return Err(Status::already_exists(format!(
            "volume {:?} already exists with a quota of {}, which does not fit the requested range",
            spec.name,
            info.quota
                .map(|q| format!("{q} bytes"))
                .unwrap_or_else(|| "none".into())
        )));
    }
    crash_point("cephfs.create.done");
    Ok(Created {
        uuid: entry.uuid.clone(),
        subvolume: sub.to_string(),
        path: info.path,
        quota: info.quota,
    })
}

/// Removes a volume's subvolume (keeping its snapshots when it has some, as Ceph allows),
/// a leftover temporary snapshot, and the journal entry. Idempotent.
pub fn delete_volume(place: &FsPlace<'_>, uuid: &str) -> Result<(), Status> {
    let journal = place.volumes();
    let attrs = journal
        .get(uuid)
        .map_err(|e| jerr("read volume journal", e))?
        .unwrap_or_default();
    let (group, sub) = place.volume_names(uuid, &attrs);
    let mgr = place.mgr();
    if attrs.contains_key(CLONE_FROM_KEY) {
        if let Existing::Cloning(_) = existing(place, &group, &sub, true)? {
            mgr.clone_cancel(&group, &sub)
                .map_err(|e| merr("cancel the running clone", &e))?;
        }
    }
    match mgr.remove(&group, &sub, false) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) if e.kind() == ErrorKind::Busy => {
            // ENOTEMPTY: it has snapshots. Keep them (clones and restores still use
            // them); Ceph removes the rest when the last snapshot goes.
            match mgr.remove(&group, &sub, true) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(merr("remove the subvolume (retaining its snapshots)", &e)),
            }
        }
        Err(e) => return Err(merr("remove the subvolume", &e)),
    }
    crash_point("cephfs.delete.removed");
    if !remove_temp_snapshot(place, &attrs) {
        return Err(Status::unavailable(
            "the temporary snapshot the volume was cloned from could not be removed yet; retry",
        ));
    }
    journal
        .release(uuid, None)
        .map_err(|e| jerr("remove journal entry", e))?;
    Ok(())
}

pub struct SnapshotInfo {
    pub uuid: String,
    pub size: u64,
    pub created_nanos: i64,
    pub source_sub: String,
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Parses Ceph's `2024-01-02 03:04:05.678901` (UTC on the mgr) into unix nanoseconds.
pub fn parse_ceph_time(s: &str) -> Option<i64> {
    let (date, time) = s.trim().split_once(' ')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>());
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    // days from civil (Howard Hinnant)
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let frac: String = frac.chars().take(9).collect();
    let nanos = format!("{frac:0<9}").parse::<i64>().ok()?;
    Some((days * 86400 + hh * 3600 + mm * 60 + ss) * 1_000_000_000 + nanos)
}

pub fn snapshot_info(uuid: &str, attrs: &Attrs) -> SnapshotInfo {
    SnapshotInfo {
        uuid: uuid.to_string(),
        size: attrs
            .get(SIZE_KEY)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        created_nanos: attrs
            .get(CREATED_KEY)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        source_sub: attrs.get(journal::SOURCE).cloned().unwrap_or_default(),
    }
}

/// A snapshot's size and creation time: from our journal keys, or for a snapshot ceph-csi
/// made (which has none of them) from `fs subvolume snapshot info` and the source's quota
/// (what ceph-csi reports as a snapshot's size).
pub fn read_snapshot_info(place: &FsPlace<'_>, uuid: &str, attrs: &Attrs) -> SnapshotInfo {
    if attrs.contains_key(SIZE_KEY) && attrs.contains_key(CREATED_KEY) {
        return snapshot_info(uuid, attrs);
    }
    let Some(r) = place.snapshot_ref(uuid, attrs) else {
        return snapshot_info(uuid, attrs);
    };
    match place.mgr().snapshot_info(&r.group, &r.sub, &r.snap) {
        Ok(Some(v)) => complete_snapshot_info(place, uuid, attrs, &r, &v),
        Ok(None) => snapshot_info(uuid, attrs),
        Err(e) => {
            tracing::debug!(snapshot = %r.snap, "snapshot size and time unknown: {e}");
            snapshot_info(uuid, attrs)
        }
    }
}

/// Fills what the journal lacks from `fs subvolume snapshot info` (`v`).
fn complete_snapshot_info(
    place: &FsPlace<'_>,
    uuid: &str,
    attrs: &Attrs,
    r: &SnapRef,
    v: &Value,
) -> SnapshotInfo {
    let mut info = snapshot_info(uuid, attrs);
    if !attrs.contains_key(CREATED_KEY) {
        info.created_nanos = v["created_at"]
            .as_str()
            .and_then(parse_ceph_time)
            .unwrap_or(0);
    }
    if !attrs.contains_key(SIZE_KEY) {
        let quota = match place.mgr().info(&r.group, &r.sub) {
            Ok(Some(i)) => i.quota,
            _ => None,
        };
        info.size = quota.or_else(|| v["size"].as_u64()).unwrap_or(0);
    }
    info
}

/// Snapshots the subvolume of volume `source_uuid` as `<prefix><uuid>`.
pub fn create_snapshot(
    place: &FsPlace<'_>,
    name: &str,
    source_uuid: &str,
    source_id: &str,
    prefix: &str,
) -> Result<SnapshotInfo, Status> {
    let missing = || Status::not_found(format!("source volume {source_id} does not exist"));
    let vol_attrs = place
        .volumes()
        .get(source_uuid)
        .map_err(|e| jerr("read volume journal", e))?
        .ok_or_else(missing)?;
    refuse_backing(&vol_attrs, source_id, "snapshotted")?;
    let (group, sub) = place.volume_names(source_uuid, &vol_attrs);
    let journal = place.snaps();
    let found = find(&journal, name)?;
    let mgr = place.mgr();
    if let Some(entry) = &found {
        if entry.attr(journal::SOURCE) != Some(sub.as_str()) {
            return Err(Status::already_exists(format!(
                "snapshot {name:?} already exists for another source volume ({:?})",
                entry.attr(journal::SOURCE).unwrap_or("")
            )));
        }
        if let Some(r) = place.snapshot_ref(&entry.uuid, &entry.attrs) {
            if let Some(v) = mgr
                .snapshot_info(&r.group, &r.sub, &r.snap)
                .map_err(|e| merr("read the snapshot", &e))?
            {
                return Ok(complete_snapshot_info(
                    place,
                    &entry.uuid,
                    &entry.attrs,
                    &r,
                    &v,
                ));
            }
        }
    }
    let quota = match existing(place, &group, &sub, vol_attrs.contains_key(CLONE_FROM_KEY))? {
        Existing::Ready(i) => i.quota,
        Existing::Cloning(s) => {
            return Err(Status::aborted(format!(
            "source volume {source_id} is still being cloned ({s}); snapshot it when it is ready"
        )))
        }
        Existing::Absent | Existing::Failed(_) => {
            if let Some(entry) = &found {
                let _ = journal.release(&entry.uuid, Some(name));
            }
            return Err(missing());
        }
    };
    let entry = match found {
        Some(entry) => entry,
        None => {
            let created = now_nanos().to_string();
            reserve_new(&journal, name, |uuid| {
                Attrs::from([
                    (journal::IMAGE_NAME.to_string(), format!("{prefix}{uuid}")),
                    (journal::SOURCE.to_string(), sub.clone()),
                    (GROUP_KEY.to_string(), group.clone()),
                    (CREATED_KEY.to_string(), created.clone()),
                    (SIZE_KEY.to_string(), quota.unwrap_or(0).to_string()),
                ])
            })?
        }
    };
    crash_point("cephfs.snapshot.reserved");
    let snap = entry
        .attrs
        .get(journal::IMAGE_NAME)
        .cloned()
        .unwrap_or_else(|| format!("{prefix}{}", entry.uuid));
    if let Err(e) = mgr.snapshot_create(&group, &sub, &snap) {
        let st = merr("create the snapshot", &e);
        if let Err(e) = journal.release(&entry.uuid, Some(name)) {
            tracing::warn!(name, "rollback could not release the journal entry: {e}");
        }
        return Err(st);
    }
    crash_point("cephfs.snapshot.created");
    Ok(snapshot_info(&entry.uuid, &entry.attrs))
}

/// Removes a snapshot and its journal entry. Idempotent. A subvolume deleted earlier with
/// its snapshots retained disappears with its last snapshot.
pub fn delete_snapshot(place: &FsPlace<'_>, uuid: &str) -> Result<(), Status> {
    let journal = place.snaps();
    let attrs = journal
        .get(uuid)
        .map_err(|e| jerr("read snapshot journal", e))?;
    if let Some(r) = attrs.as_ref().and_then(|a| place.snapshot_ref(uuid, a)) {
        // Asked first, as ceph-csi does: the mgr may hold the removal until the clones are
        // done and then remove it, after the CO gave up waiting.
        let info = place
            .mgr()
            .snapshot_info(&r.group, &r.sub, &r.snap)
            .map_err(|e| merr("read the snapshot", &e))?;
        if info.is_some_and(|i| i["has_pending_clones"] == "yes") {
            return Err(Status::failed_precondition(format!(
                "snapshot {} is in use: clones are still being made from it; retry when they are done",
                r.snap
            )));
        }
        place
            .mgr()
            .snapshot_remove(&r.group, &r.sub, &r.snap)
            .map_err(|e| {
                if e.errno == EAGAIN {
                    Status::failed_precondition(format!(
                        "snapshot {} is in use: clones are still being made from it ({e}); retry when they are done",
                        r.snap
                    ))
                } else {
                    merr("remove the snapshot", &e)
                }
            })?;
    }
    crash_point("cephfs.snapshot.removed");
    journal
        .release(uuid, None)
        .map_err(|e| jerr("remove journal entry", e))?;
    Ok(())
}

/// Raises the quota to at least `size`; returns the quota now (0: none, unlimited).
pub fn expand(place: &FsPlace<'_>, uuid: &str, volume_id: &str, size: u64) -> Result<u64, Status> {
    let missing = || Status::not_found(format!("volume {volume_id} does not exist"));
    let attrs = place
        .volumes()
        .get(uuid)
        .map_err(|e| jerr("read volume journal", e))?
        .ok_or_else(missing)?;
    refuse_backing(&attrs, volume_id, "expanded")?;
    let (group, sub) = place.volume_names(uuid, &attrs);
    let info = match existing(place, &group, &sub, attrs.contains_key(CLONE_FROM_KEY))? {
        Existing::Ready(i) => i,
        Existing::Cloning(s) => {
            return Err(Status::aborted(format!(
                "volume {volume_id} is still being cloned ({s}); retry when it is ready"
            )))
        }
        Existing::Absent | Existing::Failed(_) => return Err(missing()),
    };
    match info.quota {
        // No quota: the volume is already unlimited; leave it so.
        None => Ok(0),
        Some(q) if q >= size => Ok(q),
        Some(_) => {
            place
                .mgr()
                .resize(&group, &sub, size)
                .map_err(|e| merr("resize the subvolume", &e))?;
            Ok(size)
        }
    }
}

/// State of a volume for ControllerGetVolume: (quota, abnormal, message).
pub fn volume_condition(
    place: &FsPlace<'_>,
    uuid: &str,
) -> Result<Option<(Option<u64>, bool, String)>, Status> {
    let Some(attrs) = place
        .volumes()
        .get(uuid)
        .map_err(|e| jerr("read volume journal", e))?
    else {
        return Ok(None);
    };
    let (group, sub) = place.volume_names(uuid, &attrs);
    Ok(Some(
        match existing(place, &group, &sub, attrs.contains_key(CLONE_FROM_KEY))? {
            Existing::Ready(i) => (i.quota, false, format!("subvolume {group}/{sub} is ready")),
            Existing::Cloning(s) => (None, true, format!("subvolume {group}/{sub}: {s}")),
            Existing::Failed(s) => (None, true, format!("subvolume {group}/{sub}: {s}")),
            Existing::Absent => (None, true, format!("subvolume {group}/{sub} is missing")),
        },
    ))
}

/// The path of a provisioned volume's subvolume (for nodes given no subvolumePath); for a
/// snapshot-backed volume, the root of its snapshot.
pub fn volume_path(place: &FsPlace<'_>, uuid: &str) -> Result<Option<String>, Status> {
    let Some(attrs) = place
        .volumes()
        .get(uuid)
        .map_err(|e| jerr("read volume journal", e))?
    else {
        return Ok(None);
    };
    if let Some(snapshot_id) = crate::cephfs::backing::backing_of(&attrs) {
        return crate::cephfs::backing::mount_root(place, snapshot_id)
            .map(Some)
            .map_err(Status::from);
    }
    let (group, sub) = place.volume_names(uuid, &attrs);
    match existing(place, &group, &sub, attrs.contains_key(CLONE_FROM_KEY))? {
        Existing::Ready(i) if !i.path.is_empty() => Ok(Some(i.path)),
        _ => Ok(None),
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
    fn parses_subvolume_info() {
        let v: Value = serde_json::from_str(
            r#"{"bytes_quota": 10485760, "bytes_used": 5, "path": "/volumes/csi/x/u",
            "state": "complete", "type": "subvolume", "data_pool": "cephfs_data"}"#,
        )
        .unwrap();
        let i = SubInfo::parse(&v);
        assert_eq!(i.quota, Some(10485760));
        assert_eq!(i.path, "/volumes/csi/x/u");
        let v: Value = serde_json::from_str(r#"{"bytes_quota": "infinite"}"#).unwrap();
        assert_eq!(SubInfo::parse(&v).quota, None);
    }

    #[test]
    fn parses_clone_status() {
        let v: Value = serde_json::from_str(
            r#"{"status": {"state": "in-progress", "source": {"volume": "cephfs",
            "subvolume": "csi-vol-a", "snapshot": "csi-snap-b", "group": "csi"},
            "progress_report": {"percentage cloned": "12.5%", "amount cloned": "1/8", "files cloned": "3/9"}}}"#,
        )
        .unwrap();
        match parse_clone_status(&v) {
            CloneState::Running(s) => {
                assert!(
                    s.contains("in-progress from csi/csi-vol-a@csi-snap-b"),
                    "{s}"
                );
                assert!(s.contains("12.5% cloned"), "{s}");
            }
            other => panic!("{other:?}"),
        }
        let v: Value = serde_json::from_str(
            r#"{"status": {"state": "failed", "failure": {"errno": "122", "error_msg": "Disk quota exceeded"}}}"#,
        )
        .unwrap();
        assert_eq!(
            parse_clone_status(&v),
            CloneState::Failed("clone failed: Disk quota exceeded (errno 122)".into())
        );
        let v: Value = serde_json::from_str(r#"{"status": {"state": "complete"}}"#).unwrap();
        assert_eq!(parse_clone_status(&v), CloneState::Complete);
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

    #[test]
    fn ceph_times() {
        assert_eq!(parse_ceph_time("1970-01-01 00:00:01"), Some(1_000_000_000));
        assert_eq!(
            parse_ceph_time("2024-03-01 12:00:00.5"),
            Some(1_709_294_400_500_000_000)
        );
        assert_eq!(parse_ceph_time("garbage"), None);
    }
}
