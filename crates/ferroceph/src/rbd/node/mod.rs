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
use crate::error::{Error, Result};
use crate::locks::OpLocks;
use crate::node::record::{self, ImageLocation, Record, StageState, RECORD_VERSION};
use crate::node::{format, inuse, mount, stats};
use crate::rbd::attach::fuse::EXPORT_FILE;
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

mod cephcsi;
mod publish;
mod service;
mod stage;
mod usage;
use publish::record_for_device;
use unstage::refuse_if_in_use;
mod unstage;

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

pub(crate) struct RbdNode {
    inner: Arc<Inner>,
}

/// Names handed to the rbd tools as arguments: nothing that could pass for an option or
/// another image.
fn check_name(what: &str, v: &str, allow_empty: bool) -> Result<()> {
    if v.is_empty() && !allow_empty {
        return Err(Error::invalid(format!("{what} is empty")));
    }
    if v.starts_with('-')
        || v.len() > 512
        || v.chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '/' | '@'))
    {
        return Err(Error::invalid(format!("{what} {v:?} is not a valid name")));
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
) -> Result<Credentials> {
    let legacy = ctx
        .get("userId")
        .or_else(|| ctx.get("adminId"))
        .map(String::as_str);
    let c = controller_credentials(secrets, legacy).map_err(Error::invalid)?;
    check_name("userID", &c.user, false)?;
    Ok(c)
}

fn fs_type_of(cap: &pb::VolumeCapability, ctx: &HashMap<String, String>) -> Result<String> {
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
        return Err(Error::invalid(format!(
            "fsType {fs:?} is not supported: use ext4 or xfs"
        )));
    }
    Ok(fs)
}

fn mount_flags(cap: &pb::VolumeCapability) -> Result<Vec<String>> {
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
        return Err(Error::invalid(format!("mount flag {bad:?} is not valid")));
    }
    Ok(flags)
}

fn is_static(volume_id: &str, ctx: &HashMap<String, String>) -> bool {
    ctx.get("staticVolume").map(|s| s.trim()) == Some("true") || CsiId::decode(volume_id).is_err()
}

/// Unmounts `path` until nothing is mounted there (mounts can be stacked).
async fn unmount_all(path: &Path) -> Result<()> {
    for _ in 0..8 {
        if !mount::is_mount_point(path).unwrap_or(false) {
            return Ok(());
        }
        mount::unmount(path, EXEC_TIMEOUT)
            .await
            .map_err(Error::from)?;
    }
    if mount::is_mount_point(path).unwrap_or(false) {
        return Err(Error::internal(format!(
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

/// The staging of a volume ceph-csi staged, as a record (never written) to publish from,
/// after checking it is the volume's image. FailedPrecondition when there is none, or when
/// it is encrypted: a pod must never get the raw LUKS container.
async fn cephcsi_view(staging: &Path, vid: &str, block: bool) -> Result<Record> {
    let not_staged = || {
        Error::precondition(format!(
            "volume {vid} is not staged at {}; NodeStageVolume first",
            staging.display()
        ))
    };
    let Some(st) = cephcsi::find(staging, vid)? else {
        return Err(not_staged());
    };
    if st.meta.encrypted {
        return Err(Error::precondition(format!(
            "volume {vid} was staged by ceph-csi as an encrypted volume, and ferroceph does not implement volume encryption yet; it is not published (that would hand the pod the raw LUKS container): drain the node's pods of it and stage it with ceph-csi, or copy its data to an unencrypted volume"
        )));
    }
    if st.mount.is_none() {
        return Err(not_staged());
    }
    let dev = cephcsi::candidate_device(&st, mount_device).ok_or_else(|| {
        Error::precondition(format!(
            "cannot tell which device is mounted at {}",
            st.inner.display()
        ))
    })?;
    if cephcsi::device_is_image(&st.meta, &dev, EXEC_TIMEOUT).await? == Some(false) {
        return Err(Error::precondition(format!(
            "{dev} mounted at {} does not map {} as ceph-csi's {} says",
            st.inner.display(),
            st.meta.spec(),
            cephcsi::META_FILE
        )));
    }
    let rec = cephcsi::as_record(&st, vid, &dev);
    if rec.block != block {
        return Err(Error::invalid(format!(
            "volume {vid} is staged (by ceph-csi) as a {} volume",
            if rec.block { "block" } else { "filesystem" }
        )));
    }
    Ok(rec)
}

impl RbdNode {
    pub(crate) fn new(
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

    fn attacher_for(&self, rec: &Record) -> Result<Box<dyn attach::Attacher>> {
        let m = Mounter::parse(&rec.mounter).ok_or_else(|| {
            Error::internal(format!(
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
