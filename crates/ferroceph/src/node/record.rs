//! The record of a staged volume: what was attached, and how, kept in a small JSON file
//! beside the staging path so that unstage, expansion and stats work after the plugin
//! restarts, and so that start-up can find user-space attachments to re-adopt.
//!
//! Layout, for a staging path `<dir>/<name>` (kubelet: `<dir>` is the per-volume directory
//! `.../kubernetes.io/csi/<driver>/<sha256 of the handle>/` and `<name>` is `globalmount`;
//! for raw block volumes `<dir>` is `.../volumeDevices/staging/` and `<name>` the PV name):
//!
//! ```text
//! <dir>/.ferroceph-<name>.json   the record (0600; never holds a key)
//! <dir>/.ferroceph-<name>.fuse/  mount point of the FUSE exporter (fuse mounter only)
//! <dir>/.ferroceph-<name>.log    the exporter's log
//! ```
//!
//! The record is written before anything is attached and updated after each step, so a
//! crash at any point leaves enough behind for the next stage or unstage to finish or undo.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub(crate) const RECORD_VERSION: u32 = 1;
const PREFIX: &str = ".ferroceph-";
/// Names longer than this are replaced by a hash so the file names stay under NAME_MAX.
const MAX_NAME: usize = 200;

/// How far staging got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StageState {
    /// Record written, attach in progress (or interrupted).
    Attaching,
    /// Device attached; filesystem not (yet) mounted.
    Attached,
    /// Done: device attached and, for filesystem volumes, mounted at the staging path.
    Staged,
}

/// Where the image lives and who maps it. Never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageLocation {
    pub cluster_id: String,
    pub monitors: Vec<String>,
    pub pool: String,
    #[serde(default)]
    pub namespace: String,
    pub image: String,
    pub user: String,
}

impl ImageLocation {
    /// `pool/image` or `pool/namespace/image`, as the rbd tools write it.
    pub(crate) fn spec(&self) -> String {
        if self.namespace.is_empty() {
            format!("{}/{}", self.pool, self.image)
        } else {
            format!("{}/{}/{}", self.pool, self.namespace, self.image)
        }
    }
}

/// The FUSE exporter serving the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FuseState {
    pub pid: i32,
    /// Start time of the process (clock ticks since boot, /proc/<pid>/stat field 22), so a
    /// recycled pid is never taken for our exporter.
    pub start_time: u64,
    pub dir: PathBuf,
    pub file: PathBuf,
    /// The exporter's Ceph client id (`client.<id>`), to find its watch and lock if it
    /// dies holding the image's exclusive lock.
    #[serde(default)]
    pub client_id: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub version: u32,
    pub volume_id: String,
    pub staging_path: PathBuf,
    pub state: StageState,
    /// What was asked for (`auto`, `krbd`, ...), and what was used.
    pub requested_mounter: String,
    pub mounter: String,
    /// Why that mounter (for `auto`: what the kernel offered).
    #[serde(default)]
    pub reason: String,
    pub image: ImageLocation,
    /// The block device (`/dev/loop3`, `/dev/rbd0`, `/dev/nbd1`) once attached.
    #[serde(default)]
    pub device: Option<String>,
    #[serde(default)]
    pub fuse: Option<FuseState>,
    #[serde(default)]
    pub nbd_pid: Option<i32>,
    #[serde(default)]
    pub unmap_options: Option<String>,
    pub read_only: bool,
    pub block: bool,
    #[serde(default)]
    pub fs_type: Option<String>,
    #[serde(default)]
    pub mount_options: Vec<String>,
    /// mkfs was started on this volume after it was proven blank and has not finished. The
    /// stage never completed, so no pod can have written to it: a retry formats it again
    /// whatever an interrupted mkfs left on it.
    #[serde(default)]
    pub format_started: bool,
    /// Seconds since the epoch of the last update.
    #[serde(default)]
    pub updated: u64,
}

/// The files belonging to one staging path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    pub record: PathBuf,
    pub fuse_dir: PathBuf,
    pub log: PathBuf,
}

/// 64-bit FNV-1a, for names only.
fn fnv(s: &[u8]) -> u64 {
    s.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub fn paths(staging: &Path) -> Paths {
    let dir = staging.parent().unwrap_or_else(|| Path::new("/"));
    let name = staging
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.is_empty() && n.len() <= MAX_NAME)
        .map(str::to_string)
        .unwrap_or_else(|| format!("h{:016x}", fnv(staging.as_os_str().as_encoded_bytes())));
    Paths {
        record: dir.join(format!("{PREFIX}{name}.json")),
        fuse_dir: dir.join(format!("{PREFIX}{name}.fuse")),
        log: dir.join(format!("{PREFIX}{name}.log")),
    }
}

/// The record path that belongs to a FUSE mount directory found in mountinfo.
pub(crate) fn record_for_fuse_dir(dir: &Path) -> Option<PathBuf> {
    let name = dir.file_name()?.to_str()?;
    let stem = name.strip_prefix(PREFIX)?.strip_suffix(".fuse")?;
    Some(dir.with_file_name(format!("{PREFIX}{stem}.json")))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads the record at `path`; `Ok(None)` when there is none.
pub(crate) fn read_at(path: &Path) -> Result<Option<Record>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::precondition(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    let rec: Record = serde_json::from_str(&text).map_err(|e| {
        Error::precondition(format!("{} is not a ferroceph record: {e}", path.display()))
    })?;
    if rec.version > RECORD_VERSION {
        return Err(Error::precondition(format!(
            "{} was written by a newer ferroceph (record version {})",
            path.display(),
            rec.version
        )));
    }
    Ok(Some(rec))
}

pub fn read(staging: &Path) -> Result<Option<Record>> {
    read_at(&paths(staging).record)
}

/// Writes the record atomically (temporary file, fsync, rename), 0600.
pub(crate) fn write(rec: &mut Record) -> Result<()> {
    rec.updated = now();
    let p = paths(&rec.staging_path);
    if let Some(dir) = p.record.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))?;
    }
    let tmp = p.record.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(rec)
        .map_err(|e| Error::internal(format!("encode record: {e}")))?;
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &p.record)
    })();
    res.map_err(|e| Error::internal(format!("cannot write {}: {e}", p.record.display())))
}

/// Removes the record; Ok if it was not there.
pub(crate) fn remove(staging: &Path) -> Result<()> {
    let p = paths(staging);
    for f in [&p.record, &p.record.with_extension("json.tmp")] {
        match std::fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::internal(format!(
                    "cannot remove {}: {e}",
                    f.display()
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(staging: &Path) -> Record {
        Record {
            version: RECORD_VERSION,
            volume_id: "vol-1".into(),
            staging_path: staging.to_path_buf(),
            state: StageState::Attaching,
            requested_mounter: "auto".into(),
            mounter: "fuse".into(),
            reason: "no rbd or nbd module".into(),
            image: ImageLocation {
                cluster_id: "c".into(),
                monitors: vec!["127.0.0.1:6789".into()],
                pool: "rbd".into(),
                namespace: String::new(),
                image: "csi-vol-x".into(),
                user: "csi-rbd".into(),
            },
            device: None,
            fuse: None,
            nbd_pid: None,
            unmap_options: None,
            read_only: false,
            block: false,
            fs_type: Some("ext4".into()),
            mount_options: vec![],
            format_started: false,
            updated: 0,
        }
    }

    #[test]
    fn layout_beside_the_staging_path() {
        let p = paths(Path::new(
            "/var/lib/kubelet/plugins/kubernetes.io/csi/rbd.ferroceph.io/abc/globalmount",
        ));
        assert_eq!(
            p.record,
            PathBuf::from("/var/lib/kubelet/plugins/kubernetes.io/csi/rbd.ferroceph.io/abc/.ferroceph-globalmount.json")
        );
        assert_eq!(
            record_for_fuse_dir(&p.fuse_dir).as_deref(),
            Some(p.record.as_path())
        );
        assert_eq!(record_for_fuse_dir(Path::new("/x/other.fuse")), None);
        let long = format!("/x/{}", "n".repeat(250));
        let p = paths(Path::new(&long));
        assert!(p.record.file_name().unwrap().len() < 64);
        assert_eq!(
            paths(Path::new("/x/y/")).record,
            PathBuf::from("/x/.ferroceph-y.json")
        );
    }

    #[test]
    fn round_trip_private_and_keyless() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("globalmount");
        assert_eq!(read(&staging).unwrap(), None);
        let mut rec = sample(&staging);
        write(&mut rec).unwrap();
        let back = read(&staging).unwrap().unwrap();
        assert_eq!(back, rec);
        let meta = std::fs::metadata(paths(&staging).record).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(paths(&staging).record).unwrap();
        assert!(!text.to_lowercase().contains("key"), "{text}");
        remove(&staging).unwrap();
        remove(&staging).unwrap();
        assert_eq!(read(&staging).unwrap(), None);
        std::fs::write(paths(&staging).record, "{").unwrap();
        assert!(read(&staging).is_err());
    }
}
