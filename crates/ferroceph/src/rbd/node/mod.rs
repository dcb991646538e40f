//! RBD Node service: stage (attach, probe, format only if blank, mount), publish (bind
//! mounts), unpublish, unstage (unmount, detach), expand, stats.
//!
//! Every staged volume has a record beside its staging path (`node::record`), written
//! before anything is attached and updated after each step, so unstage, stats and
//! expansion work after a restart and an interrupted stage converges when retried.
//!
//! Restarts: the FUSE exporter and the rbd-nbd daemon run in sessions of their own and keep
//! serving while the plugin is down. At start-up the plugin finds its FUSE exports in the
//! mount table, reads their records and re-adopts the healthy ones. A dead attachment
//! cannot be re-attached then: that needs the volume's key, and the node holds no secrets
//! at start-up (keys are never written to disk). It is reported through VolumeCondition
//! (abnormal, with the reason) and re-attached by the next NodeStageVolume, which carries
//! the secret; keys seen by NodeStageVolume are kept in memory only, so a NodePublishVolume
//! in the same plugin lifetime can re-attach too.

use crate::ceph::Ceph;
use crate::config::{ClusterMap, ConfigError};
use crate::error::Error;
use crate::fuse_export::EXPORT_FILE;
use crate::locks::OpLocks;
use crate::node::record::{self, ImageLocation, Record, StageState, RECORD_VERSION};
use crate::node::{format, inuse, mount, stats};
use crate::rbd::attach::{self, AttachEnv, AttachRequest, Health, KernelSupport, Mounter};
use crate::rbd::params::{controller_credentials, Credentials, DEFAULT_VOL_PREFIX};
use crate::validate::{self, CapSummary, RBD_MODES};
use crate::volid::CsiId;
use csi::v1 as pb;
use csi::v1::node_server::Node;
use pb::node_service_capability::rpc::Type as CapType;
use pb::volume_capability::AccessType;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::{Request, Response, Status};

mod cephcsi;

/// Deadline of one mount/umount/losetup/rbd call.
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of mkfs (lazy init keeps it short even for large volumes).
const MKFS_TIMEOUT: Duration = Duration::from_secs(110);
/// Deadline of statvfs/stat probes that may touch a dead device.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Mount options a bind mount can carry (per-mount flags); filesystem options were
/// applied when the staging mount was made.
const BIND_FLAGS: &[&str] = &[
    "ro",
    "nosuid",
    "nodev",
    "noexec",
    "noatime",
    "nodiratime",
    "relatime",
    "strictatime",
];

struct Inner {
    node_id: String,
    clusters: Arc<ClusterMap>,
    env: AttachEnv,
    locks: OpLocks,
    /// Keys from NodeStageVolume by volume id, in memory only, for re-attaching.
    keys: Mutex<HashMap<String, Credentials>>,
    /// Staging paths whose attachment start-up found dead.
    broken: Mutex<HashSet<PathBuf>>,
}

pub struct RbdNode {
    inner: Arc<Inner>,
}

fn invalid(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// Names handed to the rbd tools as arguments: nothing that could pass for an option or
/// another image.
fn check_name(what: &str, v: &str, allow_empty: bool) -> Result<(), Status> {
    if v.is_empty() && !allow_empty {
        return Err(Status::invalid_argument(format!("{what} is empty")));
    }
    if v.starts_with('-')
        || v.len() > 512
        || v.chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '/' | '@'))
    {
        return Err(Status::invalid_argument(format!(
            "{what} {v:?} is not a valid name"
        )));
    }
    Ok(())
}

fn looks_like_monitors(s: &str) -> bool {
    !s.is_empty()
        && s.split(',').all(|m| {
            m.rsplit_once(':')
                .map(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
                .unwrap_or(false)
        })
}

/// Credentials for staging: userID/userKey (or the legacy single `key`, with the user from
/// the `userId`/`adminId` volume attribute).
fn node_credentials(
    secrets: &HashMap<String, String>,
    ctx: &HashMap<String, String>,
) -> Result<Credentials, Status> {
    let legacy = ctx
        .get("userId")
        .or_else(|| ctx.get("adminId"))
        .map(String::as_str);
    let c = controller_credentials(secrets, legacy).map_err(invalid)?;
    check_name("userID", &c.user, false)?;
    Ok(c)
}

fn fs_type_of(cap: &pb::VolumeCapability, ctx: &HashMap<String, String>) -> Result<String, Status> {
    let from_cap = match &cap.access_type {
        Some(AccessType::Mount(m)) => m.fs_type.trim().to_string(),
        _ => String::new(),
    };
    let fs = if !from_cap.is_empty() {
        from_cap
    } else {
        ctx.get("csi.storage.k8s.io/fstype")
            .or_else(|| ctx.get("fsType"))
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "ext4".to_string())
    };
    if !format::SUPPORTED.contains(&fs.as_str()) {
        return Err(Status::invalid_argument(format!(
            "fsType {fs:?} is not supported: use ext4 or xfs"
        )));
    }
    Ok(fs)
}

fn mount_flags(cap: &pb::VolumeCapability) -> Result<Vec<String>, Status> {
    let flags: Vec<String> = match &cap.access_type {
        Some(AccessType::Mount(m)) => m
            .mount_flags
            .iter()
            .flat_map(|f| f.split(','))
            .map(|f| f.trim().to_string())
            .filter(|f| !f.is_empty())
            .collect(),
        _ => vec![],
    };
    if let Some(bad) = flags
        .iter()
        .find(|f| f.starts_with('-') || f.chars().any(|c| c.is_control() || c.is_whitespace()))
    {
        return Err(Status::invalid_argument(format!(
            "mount flag {bad:?} is not valid"
        )));
    }
    Ok(flags)
}

fn is_static(volume_id: &str, ctx: &HashMap<String, String>) -> bool {
    ctx.get("staticVolume").map(|s| s.trim()) == Some("true") || CsiId::decode(volume_id).is_err()
}

/// Unmounts `path` until nothing is mounted there (mounts can be stacked).
async fn unmount_all(path: &Path) -> Result<(), Status> {
    for _ in 0..8 {
        if !mount::is_mount_point(path).unwrap_or(false) {
            return Ok(());
        }
        mount::unmount(path, EXEC_TIMEOUT)
            .await
            .map_err(|e| e.to_status())?;
    }
    if mount::is_mount_point(path).unwrap_or(false) {
        return Err(Status::internal(format!(
            "{} is still mounted after repeated unmounts",
            path.display()
        )));
    }
    Ok(())
}

/// The device name behind a mount entry: `/dev/loop3` for filesystems, `loop3` from the
/// root of a device bind-mounted onto a file.
fn mount_device(m: &mount::MountEntry) -> Option<String> {
    if let Some(name) = m.source.strip_prefix("/dev/") {
        return Some(format!("/dev/{name}"));
    }
    let name = Path::new(&m.root).file_name()?.to_str()?;
    (name.starts_with("loop") || name.starts_with("rbd") || name.starts_with("nbd"))
        .then(|| format!("/dev/{name}"))
}

/// NodeUnstageVolume must not unmount and detach a volume under its users (the FUSE
/// exporter would die under a mounted filesystem): FailedPrecondition naming every publish
/// mount of the staging mount or of the device, and every process holding the device open.
async fn refuse_if_in_use(rec: &Record) -> Result<(), Status> {
    let Some(dev) = rec.device.clone() else {
        return Ok(());
    };
    // read-only views of a block volume are loop devices of their own on the exported
    // file (FUSE) or on the mapped device
    let mut devices = vec![dev.clone()];
    let under = rec.fuse.as_ref().map(|f| f.file.clone());
    for d in attach::fuse::loops_backed_by(&under.unwrap_or_else(|| PathBuf::from(&dev))) {
        if !devices.contains(&d) {
            devices.push(d);
        }
    }
    let mounts = inuse::mount_table();
    let mut binds = inuse::mounts_of_devices(&devices, &rec.staging_path, &mounts, mount_device);
    if !rec.block {
        for b in inuse::binds_of(&rec.staging_path, &mounts) {
            if !binds.contains(&b) {
                binds.push(b);
            }
        }
    }
    let mut openers = inuse::steady_openers(&devices).await;
    // The rbd-nbd daemon holds the nbd device it serves: it is the attachment, not a user.
    if dev.starts_with("/dev/nbd") {
        openers.retain(|(_, comm)| comm != "rbd-nbd");
    }
    match inuse::describe(&binds, &openers, &dev) {
        Some(users) => Err(Status::failed_precondition(format!(
            "volume {} is still in use: {users}; NodeUnpublishVolume every target and stop the users first (refusing to unmount and detach it under them)",
            rec.volume_id
        ))),
        None => Ok(()),
    }
}

/// Whether `device` is a read-only view publish made for a block volume: a second loop
/// device on the FUSE export, or a loop device on a krbd/rbd-nbd device.
fn is_read_only_view(device: &str) -> bool {
    if let Some(r) = record_for_device(device) {
        return r.device.as_deref() != Some(device);
    }
    attach::fuse::loop_backing(device).is_some_and(|b| {
        let b = b.display().to_string();
        b.starts_with("/dev/rbd") || b.starts_with("/dev/nbd")
    })
}

/// The record of a FUSE attachment found from its loop device (for requests that do not
/// name the staging path).
fn record_for_device(device: &str) -> Option<Record> {
    let backing = attach::fuse::loop_backing(device)?;
    if backing.file_name()? != EXPORT_FILE {
        return None;
    }
    let rec_path = record::record_for_fuse_dir(backing.parent()?)?;
    record::read_at(&rec_path).ok().flatten()
}

/// The staging of a volume ceph-csi staged, as a record (never written) to publish from,
/// after checking it is the volume's image. FailedPrecondition when there is none, or when
/// it is encrypted: a pod must never get the raw LUKS container.
async fn cephcsi_view(staging: &Path, vid: &str, block: bool) -> Result<Record, Status> {
    let not_staged = || {
        Status::failed_precondition(format!(
            "volume {vid} is not staged at {}; NodeStageVolume first",
            staging.display()
        ))
    };
    let Some(st) = cephcsi::find(staging, vid)? else {
        return Err(not_staged());
    };
    if st.meta.encrypted {
        return Err(Status::failed_precondition(format!(
            "volume {vid} was staged by ceph-csi as an encrypted volume, and ferroceph does not implement volume encryption yet; it is not published (that would hand the pod the raw LUKS container): drain the node's pods of it and stage it with ceph-csi, or copy its data to an unencrypted volume"
        )));
    }
    if st.mount.is_none() {
        return Err(not_staged());
    }
    let dev = cephcsi::candidate_device(&st, mount_device).ok_or_else(|| {
        Status::failed_precondition(format!(
            "cannot tell which device is mounted at {}",
            st.inner.display()
        ))
    })?;
    if cephcsi::device_is_image(&st.meta, &dev, EXEC_TIMEOUT).await? == Some(false) {
        return Err(Status::failed_precondition(format!(
            "{dev} mounted at {} does not map {} as ceph-csi's {} says",
            st.inner.display(),
            st.meta.spec(),
            cephcsi::META_FILE
        )));
    }
    let rec = cephcsi::as_record(&st, vid, &dev);
    if rec.block != block {
        return Err(Status::invalid_argument(format!(
            "volume {vid} is staged (by ceph-csi) as a {} volume",
            if rec.block { "block" } else { "filesystem" }
        )));
    }
    Ok(rec)
}

impl RbdNode {
    pub fn new(
        node_id: String,
        clusters: Arc<ClusterMap>,
        ceph: Ceph,
        keysdir: PathBuf,
        ceph_timeout: Duration,
    ) -> Self {
        let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("ferroceph"));
        let inner = Arc::new(Inner {
            node_id,
            clusters,
            env: AttachEnv {
                keysdir,
                ceph_timeout,
                exec_timeout: EXEC_TIMEOUT,
                exe,
                ceph,
            },
            locks: OpLocks::new(),
            keys: Mutex::new(HashMap::new()),
            broken: Mutex::new(HashSet::new()),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let i = inner.clone();
            rt.spawn(async move { i.readopt().await });
        }
        RbdNode { inner }
    }
}

impl Inner {
    fn attacher(&self, m: Mounter) -> Box<dyn attach::Attacher> {
        attach::attacher(m, &self.env)
    }

    fn attacher_for(&self, rec: &Record) -> Result<Box<dyn attach::Attacher>, Status> {
        let m = Mounter::parse(&rec.mounter).ok_or_else(|| {
            Status::internal(format!(
                "the record of {} names an unknown mounter {:?}",
                rec.staging_path.display(),
                rec.mounter
            ))
        })?;
        Ok(self.attacher(m))
    }

    fn remember_key(&self, volume_id: &str, c: &Credentials) {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(volume_id.to_string(), c.clone());
    }

    fn cached_key(&self, volume_id: &str) -> Option<Credentials> {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(volume_id)
            .cloned()
    }

    fn set_broken(&self, staging: &Path, broken: bool) {
        let mut b = self.broken.lock().unwrap_or_else(|p| p.into_inner());
        if broken {
            b.insert(staging.to_path_buf());
        } else {
            b.remove(staging);
        }
    }

    /// Finds the FUSE exports of staged volumes in the mount table and checks them.
    async fn readopt(&self) {
        let mounts = match mount::mounts() {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("re-adoption skipped: cannot read the mount table: {e}");
                return;
            }
        };
        for m in mounts
            .iter()
            .filter(|m| m.fs_type.starts_with("fuse") && m.source.starts_with("ferroceph:"))
        {
            let Some(rec_path) = record::record_for_fuse_dir(&m.mount_point) else {
                continue;
            };
            let rec = match record::read_at(&rec_path) {
                Ok(Some(r)) => r,
                Ok(None) => {
                    tracing::warn!(export = %m.mount_point.display(), "FUSE export without a record; leaving it alone");
                    continue;
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    continue;
                }
            };
            let Ok(a) = self.attacher_for(&rec) else {
                continue;
            };
            crate::metrics::get().volume_staged(
                "rbd",
                &rec.staging_path.display().to_string(),
                &rec.mounter,
            );
            match a.health(&rec).await {
                Health::Healthy => {
                    self.set_broken(&rec.staging_path, false);
                    tracing::info!(
                        volume = %rec.volume_id,
                        staging = %rec.staging_path.display(),
                        device = rec.device.as_deref().unwrap_or(""),
                        pid = rec.fuse.as_ref().map(|f| f.pid).unwrap_or(0),
                        "re-adopted staged volume: its FUSE export kept serving"
                    );
                }
                Health::Unresponsive(why) => {
                    tracing::warn!(
                        volume = %rec.volume_id,
                        staging = %rec.staging_path.display(),
                        "staged volume does not answer ({why}); left as it is"
                    );
                }
                Health::Broken(why) => {
                    self.set_broken(&rec.staging_path, true);
                    tracing::warn!(
                        volume = %rec.volume_id,
                        staging = %rec.staging_path.display(),
                        "staged volume's attachment is dead ({why}); it is re-attached by the next NodeStageVolume, which carries the key"
                    );
                }
            }
        }
    }

    /// Where the image lives, from the handle and the volume context.
    async fn locate(
        &self,
        volume_id: &str,
        ctx: &HashMap<String, String>,
        creds: &Credentials,
    ) -> Result<ImageLocation, Status> {
        let get = |k: &str| {
            ctx.get(k)
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let decoded = if is_static(volume_id, ctx) {
            None
        } else {
            CsiId::decode(volume_id).ok()
        };
        let legacy: Vec<String> = get("monitors")
            .map(|m| {
                m.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let cluster_id = get("clusterID")
            .or_else(|| decoded.as_ref().map(|d| d.cluster_id.clone()))
            .unwrap_or_default();
        let (monitors, ns_cfg) = if !legacy.is_empty() {
            (legacy, String::new())
        } else if cluster_id.is_empty() {
            return Err(Status::invalid_argument(
                "volume_context lacks clusterID (or the legacy monitors list)",
            ));
        } else {
            match self.clusters.get(&cluster_id) {
                Ok(info) => (info.monitors.clone(), info.rbd.rados_namespace.clone()),
                Err(ConfigError::UnknownCluster { .. }) | Err(ConfigError::Missing { .. })
                    if looks_like_monitors(&cluster_id) =>
                {
                    (
                        cluster_id.split(',').map(str::to_string).collect(),
                        String::new(),
                    )
                }
                Err(e @ ConfigError::UnknownCluster { .. }) => return Err(invalid(e)),
                Err(e) => return Err(Status::failed_precondition(e.to_string())),
            }
        };
        for m in &monitors {
            if m.starts_with('-') || m.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(Status::invalid_argument(format!(
                    "monitor address {m:?} is not valid"
                )));
            }
        }
        let namespace = get("radosNamespace").unwrap_or(ns_cfg);
        let image = match (get("imageName"), &decoded) {
            (Some(i), _) => i,
            (None, Some(d)) => format!(
                "{}{}",
                get("volumeNamePrefix").unwrap_or_else(|| DEFAULT_VOL_PREFIX.to_string()),
                d.uuid
            ),
            // A static volume's handle is the image name.
            (None, None) => volume_id.to_string(),
        };
        let pool = match (get("pool"), &decoded) {
            (Some(p), _) => p,
            (None, Some(d)) => {
                let cfg = self
                    .env
                    .ceph
                    .connect_config(&monitors, &creds.user, &creds.key);
                let id = d.location;
                self.env
                    .ceph
                    .run(cfg, move |c| {
                        c.pool_name(id)
                            .map_err(Error::ceph_ctx("look up the volume's pool"))
                    })
                    .await?
            }
            (None, None) => {
                return Err(Status::invalid_argument(
                    "volume_context lacks pool (required for static volumes)",
                ))
            }
        };
        check_name("pool", &pool, false)?;
        check_name("radosNamespace", &namespace, true)?;
        check_name("imageName", &image, false)?;
        Ok(ImageLocation {
            cluster_id,
            monitors,
            pool,
            namespace,
            image,
            user: creds.user.clone(),
        })
    }

    /// Unmounts the staging path, detaches, removes the record.
    async fn teardown(&self, rec: &Record) -> Result<(), Status> {
        if !rec.block {
            unmount_all(&rec.staging_path).await?;
        }
        self.attacher_for(rec)?.detach(rec).await?;
        record::remove(&rec.staging_path).map_err(internal)?;
        self.set_broken(&rec.staging_path, false);
        Ok(())
    }

    /// Attaches per `rec` (which is written first, then updated with the device).
    async fn attach(
        &self,
        rec: &mut Record,
        key: &str,
        map_options: Option<&str>,
    ) -> Result<(), Status> {
        let m = Mounter::parse(&rec.mounter)
            .ok_or_else(|| Status::internal("unknown mounter in record"))?;
        rec.state = StageState::Attaching;
        rec.device = None;
        rec.fuse = None;
        rec.nbd_pid = None;
        record::write(rec).map_err(internal)?;
        let paths = record::paths(&rec.staging_path);
        let req = AttachRequest {
            loc: &rec.image,
            key,
            read_only: rec.read_only,
            map_options,
            paths: &paths,
        };
        let attached = match self.attacher(m).attach(&req).await {
            Ok(a) => a,
            Err(e) => {
                let _ = record::remove(&rec.staging_path);
                return Err(e);
            }
        };
        rec.device = Some(attached.device.clone());
        rec.fuse = attached.fuse;
        rec.nbd_pid = attached.nbd_pid;
        rec.state = StageState::Attached;
        record::write(rec).map_err(internal)?;
        if !attach::wait_for_path(Path::new(&attached.device), Duration::from_secs(10)).await {
            return Err(Status::internal(format!(
                "device {} did not appear",
                attached.device
            )));
        }
        Ok(())
    }

    /// Probes the device, formats it if (and only if) it is blank, mounts it.
    async fn mount_staging(
        &self,
        rec: &mut Record,
        mkfs_options: Option<&str>,
    ) -> Result<(), Status> {
        let dev = rec
            .device
            .clone()
            .ok_or_else(|| Status::internal("no device recorded"))?;
        let wanted = rec.fs_type.clone().unwrap_or_else(|| "ext4".into());
        let probe = format::probe(&dev, EXEC_TIMEOUT).await?;
        let fs = match probe {
            // Our own mkfs was interrupted (a kill, a deadline): whatever it left, no pod
            // has seen the volume yet. Only a read that failed (an error above) stops this.
            format::Probe::Filesystem(_) | format::Probe::Other(_) if rec.format_started => {
                tracing::warn!(volume = %rec.volume_id, device = %dev, fs = %wanted, "an earlier mkfs of this blank volume did not finish: formatting again");
                self.format(rec, &dev, &wanted, mkfs_options).await?;
                wanted
            }
            format::Probe::Filesystem(t) => {
                if t != wanted {
                    tracing::warn!(volume = %rec.volume_id, found = %t, requested = %wanted, "the volume already holds a filesystem of another type; mounting it as it is");
                }
                t
            }
            format::Probe::Other(what) => {
                return Err(Status::failed_precondition(format!(
                    "{} ({dev}) holds {what}, not a filesystem; refusing to format or mount it",
                    rec.image.spec()
                )))
            }
            format::Probe::Blank if rec.read_only => {
                return Err(Status::failed_precondition(format!(
                    "{} has no filesystem yet and is staged read-only; stage it read-write once so it is formatted",
                    rec.image.spec()
                )))
            }
            format::Probe::Blank => {
                tracing::info!(volume = %rec.volume_id, device = %dev, fs = %wanted, "blank device: formatting");
                self.format(rec, &dev, &wanted, mkfs_options).await?;
                wanted
            }
        };
        let mut opts = rec.mount_options.clone();
        for o in format::fs_mount_options(&fs) {
            if !opts.contains(&o) {
                opts.push(o);
            }
        }
        if rec.read_only && !opts.iter().any(|o| o == "ro") {
            opts.push("ro".into());
        }
        std::fs::create_dir_all(&rec.staging_path).map_err(|e| {
            Status::internal(format!("cannot create {}: {e}", rec.staging_path.display()))
        })?;
        mount::mount(&dev, &rec.staging_path, &fs, &opts, EXEC_TIMEOUT)
            .await
            .map_err(|e| e.to_status())?;
        rec.fs_type = Some(fs);
        Ok(())
    }

    /// mkfs, with the record saying so while it runs (see [`Record::format_started`]).
    async fn format(
        &self,
        rec: &mut Record,
        dev: &str,
        fs: &str,
        mkfs_options: Option<&str>,
    ) -> Result<(), Status> {
        rec.format_started = true;
        record::write(rec).map_err(internal)?;
        crate::ceph::crash_point("stage.formatting");
        format::mkfs(fs, dev, mkfs_options, MKFS_TIMEOUT).await?;
        rec.format_started = false;
        record::write(rec).map_err(internal)
    }

    async fn stage(&self, req: pb::NodeStageVolumeRequest) -> Result<(), Status> {
        let vid = req.volume_id.as_str();
        validate::id(vid, "volume_id")?;
        let staging = mount::check_path(&req.staging_target_path, "staging_target_path")?;
        mount::check_no_symlinks(&staging, "staging_target_path")?;
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
        let summary: CapSummary = validate::capability(cap, &RBD_MODES).map_err(invalid)?;
        let ctx = &req.volume_context;
        // ceph-csi's encrypted volumes hold a LUKS container: handing it to a pod as it is
        // would show garbage and invite a format over the user's data.
        if ctx
            .get("encrypted")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        {
            return Err(Status::failed_precondition(format!(
                "volume {vid} is encrypted (ceph-csi's encrypted: \"true\"), and ferroceph does not implement volume encryption yet; stage it with ceph-csi, or copy its data to an unencrypted volume"
            )));
        }
        let creds = node_credentials(&req.secrets, ctx)?;
        let fs_type = if summary.block {
            None
        } else {
            Some(fs_type_of(cap, ctx)?)
        };
        let flags = mount_flags(cap)?;
        let (mounter, reason) = attach::choose(
            ctx.get("mounter").map(String::as_str),
            KernelSupport::detect(),
        )?;
        let map_options = ctx.get("mapOptions").cloned();
        let unmap_options = ctx.get("unmapOptions").cloned();
        attach::options_for(map_options.as_deref(), mounter)?;
        attach::options_for(unmap_options.as_deref(), mounter)?;
        let mkfs_options = ctx.get("mkfsOptions").cloned();

        let _guard = self.locks.acquire(
            "volume",
            [format!("node:{vid}"), format!("path:{}", staging.display())],
        )?;
        self.remember_key(vid, &creds);

        // The client of this staging path's own dead attachment, still listed as a watcher.
        let mut previous_client = Vec::new();
        // and whether its mkfs was interrupted (the next attachment formats again)
        let mut format_started = false;
        if let Some(mut rec) = record::read(&staging).map_err(Status::failed_precondition)? {
            if rec.volume_id != vid {
                return Err(Status::already_exists(format!(
                    "staging path {} already holds volume {}",
                    staging.display(),
                    rec.volume_id
                )));
            }
            if rec.block != summary.block || rec.read_only != summary.read_only {
                return Err(Status::already_exists(format!(
                    "volume {vid} is already staged at {} as a {} {} volume; unstage it first",
                    staging.display(),
                    if rec.read_only {
                        "read-only"
                    } else {
                        "read-write"
                    },
                    if rec.block { "block" } else { "filesystem" },
                )));
            }
            let health = match rec.device {
                Some(_) => self.attacher_for(&rec)?.health(&rec).await,
                None => Health::Broken("the attach was interrupted".into()),
            };
            match health {
                Health::Healthy => {
                    let mounted = rec.block || mount::is_mount_point(&staging).unwrap_or(false);
                    if rec.state == StageState::Staged && mounted {
                        tracing::debug!(volume = %vid, "already staged");
                        return Ok(());
                    }
                    // Attached but not (or no longer) mounted: finish the job.
                    if !rec.block && !mounted {
                        self.mount_staging(&mut rec, mkfs_options.as_deref())
                            .await?;
                    }
                    rec.state = StageState::Staged;
                    record::write(&mut rec).map_err(internal)?;
                    return Ok(());
                }
                Health::Unresponsive(why) => {
                    return Err(Status::unavailable(format!(
                        "volume {vid} is staged at {} but does not answer ({why}); it is left alone for the pods using it: retry when the cluster answers again",
                        staging.display()
                    )));
                }
                Health::Broken(why) => {
                    tracing::warn!(volume = %vid, staging = %staging.display(), "re-attaching: {why}");
                    if !rec.block {
                        // The filesystem on the dead device cannot be flushed any more.
                        if let Err(e) = unmount_all(&staging).await {
                            tracing::warn!("{}", e.message());
                            let s = staging.display().to_string();
                            let _ =
                                crate::node::exec::output("umount", &["-l", &s], &[], EXEC_TIMEOUT)
                                    .await;
                        }
                    }
                    self.attacher_for(&rec)?.detach(&rec).await?;
                    self.release_dead_lock(&rec, &creds).await;
                    previous_client.extend(rec.fuse.as_ref().and_then(|f| f.client_id));
                    format_started = rec.format_started;
                    record::remove(&staging).map_err(internal)?;
                    self.set_broken(&staging, false);
                }
            }
        } else if mount::is_mount_point(&staging).unwrap_or(false) {
            return Err(Status::already_exists(format!(
                "staging path {} is already a mount point that ferroceph did not make",
                staging.display()
            )));
        } else if let Some(st) = cephcsi::find(&staging, vid)? {
            if st.mount.is_some() {
                // Staged by ceph-csi and still mounted: it is served from there (a second
                // mapping mounted beside it would corrupt the filesystem).
                cephcsi_view(&staging, vid, summary.block).await?;
                tracing::info!(volume = %vid, staging = %staging.display(), "already staged by ceph-csi; served as it is");
                return Ok(());
            }
            // What a ceph-csi stage left without a mount: finish undoing it, then stage.
            cephcsi::unstage(&st, vid, EXEC_TIMEOUT).await?;
        }

        let loc = self.locate(vid, ctx, &creds).await?;
        if !summary.multi_node && !summary.read_only {
            attach::writers::refuse_other_users(&self.env, vid, &loc, &creds.key, &previous_client)
                .await?;
        }
        let mut rec = Record {
            version: RECORD_VERSION,
            volume_id: vid.to_string(),
            staging_path: staging.clone(),
            state: StageState::Attaching,
            requested_mounter: ctx
                .get("mounter")
                .cloned()
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| "auto".into()),
            mounter: mounter.as_str().to_string(),
            reason: reason.clone(),
            image: loc,
            device: None,
            fuse: None,
            nbd_pid: None,
            unmap_options,
            read_only: summary.read_only,
            block: summary.block,
            fs_type,
            mount_options: flags,
            format_started,
            updated: 0,
        };
        self.attach(&mut rec, &creds.key, map_options.as_deref())
            .await?;
        if !rec.block {
            if let Err(e) = self.mount_staging(&mut rec, mkfs_options.as_deref()).await {
                // A definite failure: leave nothing attached behind (kubelet will not call
                // NodeUnstageVolume for a stage that failed).
                if let Err(t) = self.teardown(&rec).await {
                    tracing::warn!("cleanup after a failed stage: {}", t.message());
                }
                return Err(e);
            }
        }
        rec.state = StageState::Staged;
        record::write(&mut rec).map_err(internal)?;
        tracing::info!(
            volume = %vid,
            image = %rec.image.spec(),
            mounter = %rec.mounter,
            reason = %reason,
            device = rec.device.as_deref().unwrap_or(""),
            staging = %staging.display(),
            "staged"
        );
        Ok(())
    }

    async fn unstage(&self, req: pb::NodeUnstageVolumeRequest) -> Result<(), Status> {
        let vid = req.volume_id.as_str();
        validate::id(vid, "volume_id")?;
        let staging = mount::check_path(&req.staging_target_path, "staging_target_path")?;
        let _guard = self.locks.acquire(
            "volume",
            [format!("node:{vid}"), format!("path:{}", staging.display())],
        )?;
        match record::read(&staging).map_err(Status::failed_precondition)? {
            None => match cephcsi::find(&staging, vid)? {
                // staged by ceph-csi before its node plugin was replaced by ours
                Some(st) => cephcsi::unstage(&st, vid, EXEC_TIMEOUT).await?,
                // Nothing recorded: nothing of ours is attached; only a mount may remain.
                None => unmount_all(&staging).await?,
            },
            Some(rec) if rec.volume_id != vid => {
                return Err(Status::failed_precondition(format!(
                    "staging path {} holds volume {}, not {vid}",
                    staging.display(),
                    rec.volume_id
                )));
            }
            Some(rec) => {
                refuse_if_in_use(&rec).await?;
                self.teardown(&rec).await?;
                tracing::info!(volume = %vid, staging = %staging.display(), mounter = %rec.mounter, "unstaged");
            }
        }
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(vid);
        Ok(())
    }

    async fn publish(&self, req: pb::NodePublishVolumeRequest) -> Result<(), Status> {
        let vid = req.volume_id.as_str();
        validate::id(vid, "volume_id")?;
        let staging = mount::check_path(&req.staging_target_path, "staging_target_path")?;
        let target = mount::check_path(&req.target_path, "target_path")?;
        mount::check_no_symlinks(&target, "target_path")?;
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("volume_capability is required"))?;
        let summary = validate::capability(cap, &RBD_MODES).map_err(invalid)?;
        let flags = mount_flags(cap)?;
        let _guard = self.locks.acquire(
            "volume",
            [format!("node:{vid}"), format!("path:{}", target.display())],
        )?;
        // ceph-csi's staged volumes are served from `<staging>/<volume id>`
        let (mut rec, staged_by_cephcsi) =
            match record::read(&staging).map_err(Status::failed_precondition)? {
                Some(r) => (r, false),
                None => (cephcsi_view(&staging, vid, summary.block).await?, true),
            };
        let staging = if staged_by_cephcsi {
            rec.staging_path.clone()
        } else {
            staging
        };
        if rec.volume_id != vid {
            return Err(Status::failed_precondition(format!(
                "staging path {} holds volume {}, not {vid}",
                staging.display(),
                rec.volume_id
            )));
        }
        if rec.block != summary.block {
            return Err(Status::invalid_argument(format!(
                "volume {vid} is staged as a {} volume",
                if rec.block { "block" } else { "filesystem" }
            )));
        }
        let health = self.attacher_for(&rec)?.health(&rec).await;
        if let Health::Unresponsive(why) = health {
            return Err(Status::unavailable(format!(
                "volume {vid} does not answer ({why}); its attachment is left alone: retry when the cluster answers again"
            )));
        }
        if let Health::Broken(why) = health {
            if staged_by_cephcsi {
                return Err(Status::failed_precondition(format!(
                    "the attachment ceph-csi made for volume {vid} is dead ({why}); NodeUnstageVolume and NodeStageVolume it again"
                )));
            }
            let Some(creds) = self.cached_key(vid) else {
                return Err(Status::failed_precondition(format!(
                    "the attachment of volume {vid} is dead ({why}); NodeStageVolume re-attaches it"
                )));
            };
            tracing::warn!(volume = %vid, "re-attaching before publish: {why}");
            rec = self.reattach(rec, &creds).await?;
        }
        let read_only = req.readonly || summary.read_only;
        let mut opts: Vec<String> = flags
            .into_iter()
            .filter(|f| BIND_FLAGS.contains(&f.as_str()) && f != "ro")
            .collect();
        opts.dedup();

        let staged_dev = rec.device.clone().unwrap_or_default();
        // A device node ignores a read-only bind mount: a block volume published read-only
        // from a read-write staging gets a read-only device of its own (FUSE: a second,
        // read-only loop device on the exported file; krbd, rbd-nbd: a read-only loop device
        // on the mapped device).
        let ro_view = rec.block && read_only && !rec.read_only;
        let fuse_file = rec.fuse.as_ref().map(|f| f.file.clone());

        if let Some(m) = mount::mount_at(&target).map_err(internal)? {
            let dev = mount_device(&m).unwrap_or_default();
            let backing = attach::fuse::loop_backing(&dev);
            let same = dev == staged_dev
                || (fuse_file.is_some() && backing.as_ref() == fuse_file.as_ref())
                || (!staged_dev.is_empty() && backing == Some(PathBuf::from(&staged_dev)));
            if same && m.read_only() == read_only {
                return Ok(());
            }
            if same {
                return Err(Status::already_exists(format!(
                    "volume {vid} is already published at {} {}",
                    target.display(),
                    if m.read_only() {
                        "read-only"
                    } else {
                        "read-write"
                    }
                )));
            }
            // A stale bind of an attachment that has been replaced: bind the live one.
            tracing::warn!(volume = %vid, target = %target.display(), source = %m.source, "replacing a stale publish mount");
            unmount_all(&target).await?;
        }

        let source: PathBuf = if rec.block && ro_view {
            let under = fuse_file
                .clone()
                .unwrap_or_else(|| PathBuf::from(&staged_dev));
            PathBuf::from(attach::fuse::read_only_view(&under, EXEC_TIMEOUT).await?)
        } else if rec.block {
            PathBuf::from(staged_dev.clone())
        } else {
            if !mount::is_mount_point(&staging).unwrap_or(false) {
                return Err(Status::failed_precondition(format!(
                    "volume {vid} is not mounted at {}; NodeStageVolume again",
                    staging.display()
                )));
            }
            staging.clone()
        };
        if rec.block {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    Status::internal(format!("cannot create {}: {e}", parent.display()))
                })?;
            }
            if !target.exists() {
                std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&target)
                    .map_err(|e| {
                        Status::internal(format!("cannot create {}: {e}", target.display()))
                    })?;
            }
        } else {
            std::fs::create_dir_all(&target).map_err(|e| {
                Status::internal(format!("cannot create {}: {e}", target.display()))
            })?;
        }
        let view = ro_view.then(|| source.display().to_string());
        if let Err(e) = mount::bind(&source, &target, read_only, &opts, EXEC_TIMEOUT).await {
            if let Some(v) = &view {
                let _ = crate::node::exec::output("losetup", &["-d", v], &[], EXEC_TIMEOUT).await;
            }
            return Err(e.to_status());
        }
        tracing::info!(volume = %vid, target = %target.display(), read_only, block = rec.block, "published");
        Ok(())
    }

    /// A FUSE exporter killed while holding the image's exclusive lock keeps it until its
    /// watch times out (30 s), and the next writer waits that long. Once the exporter is
    /// known dead, its lock is broken (librbd blocklists it first, so it is fenced).
    /// Only that client's lock: a live owner elsewhere is never touched.
    async fn release_dead_lock(&self, rec: &Record, creds: &Credentials) {
        let Some(f) = &rec.fuse else { return };
        let Some(id) = f.client_id else { return };
        if attach::fuse::exporter_alive(f) || rec.read_only {
            return;
        }
        let loc = rec.image.clone();
        let cfg = self
            .env
            .ceph
            .connect_config(&loc.monitors, &creds.user, &creds.key);
        let r = self
            .env
            .ceph
            .run(cfg, move |c| {
                let st = |what: &str, e: &rados::Error| crate::ceph::status(what, e);
                let io = c
                    .ioctx(&loc.pool, &loc.namespace)
                    .map_err(|e| st("open pool", &e))?;
                // Read-write: librbd answers lock queries only on such a handle.
                let img =
                    rados::rbd::Image::open(&io, &loc.image).map_err(|e| st("open image", &e))?;
                let Ok(owners) = img.lock_owners() else {
                    return Ok(None); // no exclusive-lock feature
                };
                let watchers = img.watchers().map_err(|e| st("list watchers", &e))?;
                let Some(w) = watchers
                    .into_iter()
                    .find(|w| u64::try_from(w.id).ok() == Some(id))
                else {
                    return Ok(None);
                };
                if !owners.owners.contains(&w.addr) {
                    return Ok(None);
                }
                img.lock_break(&w.addr)
                    .map_err(|e| st("break the dead exporter's lock", &e))?;
                Ok(Some(w.addr))
            })
            .await;
        match r {
            Ok(Some(addr)) => {
                tracing::info!(volume = %rec.volume_id, client = id, %addr, "broke the exclusive lock of the dead FUSE exporter")
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(volume = %rec.volume_id, "cannot release the dead exporter's lock (the next writer waits for its watch to time out): {}", e.message())
            }
        }
    }

    /// Replaces a dead attachment with a fresh one (same image, same staging path).
    async fn reattach(&self, mut rec: Record, creds: &Credentials) -> Result<Record, Status> {
        if !rec.block && unmount_all(&rec.staging_path).await.is_err() {
            let s = rec.staging_path.display().to_string();
            let _ = crate::node::exec::output("umount", &["-l", &s], &[], EXEC_TIMEOUT).await;
        }
        self.attacher_for(&rec)?.detach(&rec).await?;
        self.release_dead_lock(&rec, creds).await;
        rec.image.user = creds.user.clone();
        self.attach(&mut rec, &creds.key, None).await?;
        if !rec.block {
            self.mount_staging(&mut rec, None).await?;
        }
        rec.state = StageState::Staged;
        record::write(&mut rec).map_err(internal)?;
        self.set_broken(&rec.staging_path, false);
        Ok(rec)
    }

    async fn unpublish(&self, req: pb::NodeUnpublishVolumeRequest) -> Result<(), Status> {
        let vid = req.volume_id.as_str();
        validate::id(vid, "volume_id")?;
        let target = mount::check_path(&req.target_path, "target_path")?;
        let _guard = self.locks.acquire(
            "volume",
            [format!("node:{vid}"), format!("path:{}", target.display())],
        )?;
        // A read-only view of a block volume (see publish) goes with its target.
        let view = mount::mount_at(&target)
            .ok()
            .flatten()
            .and_then(|m| mount_device(&m))
            .filter(|dev| is_read_only_view(dev));
        unmount_all(&target).await?;
        if let Some(dev) = view {
            match crate::node::exec::output("losetup", &["-d", &dev], &[], EXEC_TIMEOUT).await {
                Ok(o) if o.success() => {}
                Ok(o) => tracing::warn!(device = %dev, "losetup -d: {}", o.stderr),
                Err(e) => tracing::warn!(device = %dev, "{e}"),
            }
        }
        match std::fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() => {
                if let Err(e) = std::fs::remove_dir(&target) {
                    tracing::warn!(target = %target.display(), "cannot remove: {e}");
                }
            }
            Ok(_) => {
                if let Err(e) = std::fs::remove_file(&target) {
                    tracing::warn!(target = %target.display(), "cannot remove: {e}");
                }
            }
            Err(_) => {}
        }
        tracing::info!(volume = %vid, target = %target.display(), "unpublished");
        Ok(())
    }

    /// The record for a request that may or may not name the staging path.
    fn find_record(&self, staging: &str, volume_path: &Path) -> Option<Record> {
        if !staging.is_empty() {
            if let Ok(Some(r)) = record::read(Path::new(staging)) {
                return Some(r);
            }
        }
        let m = mount::mount_at(volume_path).ok().flatten()?;
        record_for_device(&mount_device(&m)?)
    }

    async fn volume_stats(
        &self,
        req: pb::NodeGetVolumeStatsRequest,
    ) -> Result<pb::NodeGetVolumeStatsResponse, Status> {
        use pb::volume_usage::Unit;
        validate::id(&req.volume_id, "volume_id")?;
        let mut path = mount::volume_path(&req.volume_path, &req.volume_id)?;
        let mut problems: Vec<String> = Vec::new();
        let staging = Path::new(&req.staging_target_path);
        if !req.staging_target_path.is_empty() && record::read(staging).ok().flatten().is_none() {
            if let Ok(Some(st)) = cephcsi::find(staging, &req.volume_id) {
                // staged by ceph-csi: its staging mount is one level down
                if path == staging {
                    path = st.inner.clone();
                }
                if let Some(dev) = cephcsi::candidate_device(&st, mount_device) {
                    match cephcsi::device_is_image(&st.meta, &dev, PROBE_TIMEOUT).await {
                        Ok(Some(true)) => {}
                        Ok(Some(false)) => {
                            problems.push(format!("{dev} does not map {}", st.meta.spec()))
                        }
                        Ok(None) => {
                            problems.push(format!("{dev} ({}) is no longer mapped", st.meta.spec()))
                        }
                        Err(e) => problems.push(e.message()),
                    }
                }
            }
        }
        let p = path.clone();
        let what = format!("stat of {}", path.display());
        match stats::bounded(PROBE_TIMEOUT, &what, move || std::fs::symlink_metadata(&p)).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Status::not_found(format!(
                    "volume path {} does not exist",
                    path.display()
                )))
            }
            Err(e) => {
                return Ok(pb::NodeGetVolumeStatsResponse {
                    usage: vec![],
                    volume_condition: Some(pb::VolumeCondition {
                        abnormal: true,
                        message: format!("{} cannot be reached: {e}", path.display()),
                    }),
                })
            }
        }
        let rec = self.find_record(&req.staging_target_path, &path);
        if let Some(r) = &rec {
            if r.volume_id != req.volume_id {
                return Err(Status::not_found(format!(
                    "{} holds volume {}, not {}",
                    path.display(),
                    r.volume_id,
                    req.volume_id
                )));
            }
            if let Ok(a) = self.attacher_for(r) {
                if let Health::Broken(why) | Health::Unresponsive(why) = a.health(r).await {
                    problems.push(why);
                }
            }
        }
        let mounted = mount::is_mount_point(&path).unwrap_or(false);
        let mut usage = Vec::new();
        if stats::is_block_device(&path) {
            match stats::device_size_bounded(&path, PROBE_TIMEOUT).await {
                Ok(size) => usage.push(pb::VolumeUsage {
                    total: size as i64,
                    available: 0,
                    used: 0,
                    unit: Unit::Bytes as i32,
                }),
                Err(e) => problems.push(format!("cannot read the device size: {e}")),
            }
        } else if !mounted {
            problems.push(format!("{} is not mounted", path.display()));
        } else {
            match stats::fs_stats_bounded(&path, PROBE_TIMEOUT).await {
                Ok(s) => {
                    usage.push(pb::VolumeUsage {
                        total: s.bytes_total as i64,
                        available: s.bytes_available as i64,
                        used: s.bytes_used as i64,
                        unit: Unit::Bytes as i32,
                    });
                    usage.push(pb::VolumeUsage {
                        total: s.inodes_total as i64,
                        available: s.inodes_free as i64,
                        used: s.inodes_used as i64,
                        unit: Unit::Inodes as i32,
                    });
                }
                Err(e) => problems.push(format!("statvfs failed: {e}")),
            }
        }
        Ok(pb::NodeGetVolumeStatsResponse {
            usage,
            volume_condition: Some(pb::VolumeCondition {
                abnormal: !problems.is_empty(),
                message: if problems.is_empty() {
                    "volume is healthy".to_string()
                } else {
                    problems.join("; ")
                },
            }),
        })
    }

    async fn expand(&self, req: pb::NodeExpandVolumeRequest) -> Result<i64, Status> {
        let vid = req.volume_id.as_str();
        validate::id(vid, "volume_id")?;
        let path = mount::volume_path(&req.volume_path, &req.volume_id)?;
        let want = req
            .capacity_range
            .as_ref()
            .map(|r| r.required_bytes.max(0) as u64)
            .unwrap_or(0);
        let _guard = self.locks.acquire("volume", [format!("node:{vid}")])?;
        if !path.exists() {
            return Err(Status::not_found(format!(
                "volume path {} does not exist",
                path.display()
            )));
        }
        let block = matches!(
            req.volume_capability
                .as_ref()
                .and_then(|c| c.access_type.as_ref()),
            Some(AccessType::Block(_))
        ) || stats::is_block_device(&path);
        let rec = self.find_record(&req.staging_target_path, &path);
        if let Some(r) = &rec {
            if r.volume_id != vid {
                return Err(Status::not_found(format!(
                    "{} holds volume {}, not {vid}",
                    path.display(),
                    r.volume_id
                )));
            }
        }
        let entry = mount::mount_at(&path).map_err(internal)?;
        let device = match (&rec, &entry) {
            (Some(r), _) if r.device.is_some() => r.device.clone().unwrap_or_default(),
            (_, Some(m)) => mount_device(m).ok_or_else(|| {
                Status::failed_precondition(format!(
                    "cannot tell which device is mounted at {}",
                    path.display()
                ))
            })?,
            _ => {
                return Err(Status::not_found(format!(
                    "volume {vid} is not staged or published at {}",
                    path.display()
                )))
            }
        };
        let size = match &rec {
            Some(r) => self.attacher_for(r)?.refresh_size(r, want).await?,
            None => attach::wait_for_size(&device, want, Duration::from_secs(30)).await?,
        };
        if !block {
            let m = entry.ok_or_else(|| {
                Status::failed_precondition(format!("{} is not mounted", path.display()))
            })?;
            format::grow(
                &m.fs_type,
                &device,
                &path.display().to_string(),
                MKFS_TIMEOUT,
            )
            .await?;
            tracing::info!(volume = %vid, device = %device, size, fs = %m.fs_type, "filesystem grown");
        }
        Ok(size as i64)
    }
}

#[tonic::async_trait]
impl Node for RbdNode {
    async fn node_stage_volume(
        &self,
        request: Request<pb::NodeStageVolumeRequest>,
    ) -> Result<Response<pb::NodeStageVolumeResponse>, Status> {
        crate::server::note_volume(&request.get_ref().volume_id);
        let staging = request.get_ref().staging_target_path.clone();
        self.inner.stage(request.into_inner()).await?;
        if let Ok(Some(rec)) = record::read(Path::new(&staging)) {
            crate::metrics::get().volume_staged("rbd", &staging, &rec.mounter);
        }
        Ok(Response::new(pb::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        request: Request<pb::NodeUnstageVolumeRequest>,
    ) -> Result<Response<pb::NodeUnstageVolumeResponse>, Status> {
        crate::server::note_volume(&request.get_ref().volume_id);
        let staging = request.get_ref().staging_target_path.clone();
        self.inner.unstage(request.into_inner()).await?;
        crate::metrics::get().volume_unstaged(&staging);
        Ok(Response::new(pb::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        request: Request<pb::NodePublishVolumeRequest>,
    ) -> Result<Response<pb::NodePublishVolumeResponse>, Status> {
        crate::server::note_volume(&request.get_ref().volume_id);
        self.inner.publish(request.into_inner()).await?;
        Ok(Response::new(pb::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<pb::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<pb::NodeUnpublishVolumeResponse>, Status> {
        crate::server::note_volume(&request.get_ref().volume_id);
        self.inner.unpublish(request.into_inner()).await?;
        Ok(Response::new(pb::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<pb::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<pb::NodeGetVolumeStatsResponse>, Status> {
        crate::server::note_volume(&request.get_ref().volume_id);
        Ok(Response::new(
            self.inner.volume_stats(request.into_inner()).await?,
        ))
    }

    async fn node_expand_volume(
        &self,
        request: Request<pb::NodeExpandVolumeRequest>,
    ) -> Result<Response<pb::NodeExpandVolumeResponse>, Status> {
        crate::server::note_volume(&request.get_ref().volume_id);
        let capacity_bytes = self.inner.expand(request.into_inner()).await?;
        Ok(Response::new(pb::NodeExpandVolumeResponse {
            capacity_bytes,
        }))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<pb::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<pb::NodeGetCapabilitiesResponse>, Status> {
        let caps = [
            CapType::StageUnstageVolume,
            CapType::ExpandVolume,
            CapType::GetVolumeStats,
            CapType::VolumeCondition,
            CapType::SingleNodeMultiWriter,
        ]
        .into_iter()
        .map(|t| pb::NodeServiceCapability {
            r#type: Some(pb::node_service_capability::Type::Rpc(
                pb::node_service_capability::Rpc { r#type: t as i32 },
            )),
        })
        .collect();
        Ok(Response::new(pb::NodeGetCapabilitiesResponse {
            capabilities: caps,
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<pb::NodeGetInfoRequest>,
    ) -> Result<Response<pb::NodeGetInfoResponse>, Status> {
        Ok(Response::new(pb::NodeGetInfoResponse {
            node_id: self.inner.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn names_that_could_be_options_are_refused() {
        assert!(check_name("pool", "rbd", false).is_ok());
        assert!(check_name("radosNamespace", "", true).is_ok());
        for bad in ["", "-x", "a/b", "a@s", "a b", "a\nb"] {
            assert!(check_name("imageName", bad, false).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn credentials_for_staging() {
        let c =
            node_credentials(&map(&[("userID", "csi-rbd"), ("userKey", "K")]), &map(&[])).unwrap();
        assert_eq!(c.user, "csi-rbd");
        let c = node_credentials(&map(&[("key", "K")]), &map(&[("userId", "kube")])).unwrap();
        assert_eq!(c.user, "kube");
        assert_eq!(
            node_credentials(&map(&[]), &map(&[])).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert!(
            node_credentials(&map(&[("userID", "-evil"), ("userKey", "K")]), &map(&[])).is_err()
        );
    }

    #[test]
    fn fs_type_and_flags() {
        let cap = |fs: &str, flags: &[&str]| pb::VolumeCapability {
            access_type: Some(AccessType::Mount(pb::volume_capability::MountVolume {
                fs_type: fs.into(),
                mount_flags: flags.iter().map(|s| s.to_string()).collect(),
                volume_mount_group: String::new(),
            })),
            access_mode: None,
        };
        assert_eq!(fs_type_of(&cap("", &[]), &map(&[])).unwrap(), "ext4");
        assert_eq!(
            fs_type_of(&cap("", &[]), &map(&[("csi.storage.k8s.io/fstype", "xfs")])).unwrap(),
            "xfs"
        );
        assert_eq!(fs_type_of(&cap("xfs", &[]), &map(&[])).unwrap(), "xfs");
        assert!(fs_type_of(&cap("ntfs", &[]), &map(&[])).is_err());
        assert_eq!(
            mount_flags(&cap("", &["discard,noatime", " nodev "])).unwrap(),
            vec!["discard", "noatime", "nodev"]
        );
        assert!(mount_flags(&cap("", &["a b"])).is_err());
        assert!(mount_flags(&cap("", &["-o"])).is_err());
    }

    #[test]
    fn static_handles() {
        assert!(is_static("my-image", &map(&[])));
        assert!(is_static(
            "0001-0024-fed5480a-f00f-417a-a51d-31d8a8144c03-0000000000000003-eba90b33-0156-11ec-a30b-4678a93686c2",
            &map(&[("staticVolume", "true")])
        ));
        assert!(!is_static(
            "0001-0024-fed5480a-f00f-417a-a51d-31d8a8144c03-0000000000000003-eba90b33-0156-11ec-a30b-4678a93686c2",
            &map(&[])
        ));
    }

    #[test]
    fn devices_behind_mounts() {
        let m = |source: &str, root: &str| mount::MountEntry {
            dev: "7:3".into(),
            root: root.into(),
            mount_point: PathBuf::from("/t"),
            options: "rw".into(),
            fs_type: "ext4".into(),
            source: source.into(),
            super_options: "rw".into(),
            tags: vec![],
        };
        assert_eq!(
            mount_device(&m("/dev/loop3", "/")).as_deref(),
            Some("/dev/loop3")
        );
        assert_eq!(
            mount_device(&m("udev", "/loop4")).as_deref(),
            Some("/dev/loop4")
        );
        assert_eq!(mount_device(&m("tmpfs", "/x")), None);
    }
}
