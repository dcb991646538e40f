//! Volumes that ceph-csi's RBD node plugin staged on this node before its image was replaced
//! by ferroceph's: the pods keep running, and kubelet goes on with NodePublishVolume,
//! NodeGetVolumeStats, NodeUnpublishVolume and NodeUnstageVolume on the same staging path.
//!
//! What ceph-csi (v3.x) leaves under a staging path `<staging>`:
//!
//! ```text
//! <staging>/image-meta.json   JSON written before the map: "Version", "pool",
//!                             "radosNamespace", "image", "unmapOptions" (for the mounter in
//!                             use), "accessType" (true: rbd-nbd, false: krbd), "encrypted",
//!                             "device" (rbd-nbd only), "logDir", "logFileStrategy"
//! <staging>/<volume id>       filesystem volumes: a directory the device is mounted on;
//!                             block volumes: a file the device node is bind-mounted onto
//! ```
//!
//! Such a staging path is served from `<staging>/<volume id>` as it is (no record of ours
//! is written) until it is unstaged: unmount, remove the inner path, unmap the device the
//! way ceph-csi mapped it (only after checking it really is that image), remove the JSON.
//! Encrypted volumes (a LUKS container under a dm-crypt mapping) are refused.

use crate::error::{Error, Result};
use crate::node::mount::{self, MountEntry};
use crate::node::{exec, record};
use crate::rbd::attach::{self, krbd, Mounter};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file ceph-csi writes into the staging path.
pub(crate) const META_FILE: &str = "image-meta.json";

/// ceph-csi's `image-meta.json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct Meta {
    #[serde(rename = "Version", default)]
    pub version: i64,
    #[serde(default)]
    pub pool: String,
    #[serde(rename = "radosNamespace", default)]
    pub namespace: String,
    #[serde(default)]
    pub image: String,
    #[serde(rename = "unmapOptions", default)]
    pub unmap_options: String,
    /// true when the image was mapped with rbd-nbd
    #[serde(rename = "accessType", default)]
    pub nbd: bool,
    #[serde(default)]
    pub encrypted: bool,
    /// the nbd device (empty for krbd)
    #[serde(rename = "device", default)]
    pub device: String,
    #[serde(rename = "logDir", default)]
    pub log_dir: String,
    #[serde(rename = "logFileStrategy", default)]
    pub log_strategy: String,
}

fn valid_name(v: &str, allow_empty: bool) -> bool {
    (allow_empty || !v.is_empty())
        && !v.starts_with('-')
        && v.len() <= 512
        && !v
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '/' | '@'))
}

/// An option list handed to `rbd unmap --options`: `a,b=c`, nothing an option parser or a
/// shell could read otherwise.
fn valid_options(v: &str) -> bool {
    v.split(',').all(|o| {
        !o.is_empty()
            && !o.starts_with('-')
            && o.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=' | '.' | ':'))
    })
}

impl Meta {
    /// Parses and checks the file's text (its values end up as `rbd` arguments).
    pub(crate) fn parse(text: &str) -> Result<Meta> {
        let m: Meta = serde_json::from_str(text).map_err(|e| {
            Error::precondition(format!("ceph-csi's {META_FILE} is not valid: {e}"))
        })?;
        if !valid_name(&m.pool, false)
            || !valid_name(&m.namespace, true)
            || !valid_name(&m.image, false)
        {
            return Err(Error::precondition(format!(
                "ceph-csi's {META_FILE} names an invalid image {:?}",
                m.spec()
            )));
        }
        let opts = m.unmap_options.trim();
        if !opts.is_empty() && !valid_options(opts) {
            return Err(Error::precondition(format!(
                "ceph-csi's {META_FILE} holds invalid unmap options {opts:?}"
            )));
        }
        if !m.device.is_empty() && !m.device.starts_with("/dev/nbd") {
            return Err(Error::precondition(format!(
                "ceph-csi's {META_FILE} names an unexpected device {:?}",
                m.device
            )));
        }
        Ok(m)
    }

    /// `pool/image` or `pool/namespace/image`.
    pub(crate) fn spec(&self) -> String {
        if self.namespace.is_empty() {
            format!("{}/{}", self.pool, self.image)
        } else {
            format!("{}/{}/{}", self.pool, self.namespace, self.image)
        }
    }

    pub(crate) fn mounter(&self) -> Mounter {
        if self.nbd {
            Mounter::Nbd
        } else {
            Mounter::Krbd
        }
    }
}

/// A staging path in ceph-csi's layout.
#[derive(Debug, Clone)]
pub(crate) struct Staged {
    pub meta: Meta,
    pub staging: PathBuf,
    /// `<staging>/<volume id>`
    pub inner: PathBuf,
    /// what is mounted at `inner`, if anything
    pub mount: Option<MountEntry>,
}

/// `<staging>/<volume id>`, when the volume id is one path component.
pub(crate) fn inner_path(staging: &Path, volume_id: &str) -> Option<PathBuf> {
    (!volume_id.is_empty() && volume_id != "." && volume_id != ".." && !volume_id.contains('/'))
        .then(|| staging.join(volume_id))
}

/// The ceph-csi layout at `staging` for `volume_id`, if there is one (and no record of
/// ferroceph's, which the caller checks first).
pub(crate) fn find(staging: &Path, volume_id: &str) -> Result<Option<Staged>> {
    let meta_path = staging.join(META_FILE);
    let text = match std::fs::read_to_string(&meta_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::internal(format!(
                "cannot read {}: {e}",
                meta_path.display()
            )))
        }
    };
    let meta = Meta::parse(&text)?;
    let inner = inner_path(staging, volume_id).ok_or_else(|| {
        Error::invalid(format!(
            "volume id {volume_id:?} cannot name ceph-csi's staging directory"
        ))
    })?;
    let mount = mount::mount_at(&inner).map_err(|e| {
        Error::internal(format!(
            "cannot read the mount table for {}: {e}",
            inner.display()
        ))
    })?;
    Ok(Some(Staged {
        meta,
        staging: staging.to_path_buf(),
        inner,
        mount,
    }))
}

/// The krbd image a sysfs device id maps: (pool, namespace, image, snapshot).
fn krbd_image(id: &str) -> Option<(String, String, String, String)> {
    let d = Path::new(krbd::SYSFS_DEVICES).join(id);
    let read = |f: &str| {
        std::fs::read_to_string(d.join(f))
            .ok()
            .map(|s| s.trim().to_string())
    };
    Some((
        read("pool")?,
        read("pool_ns").unwrap_or_default(),
        read("name")?,
        read("current_snap").unwrap_or_default(),
    ))
}

/// Whether a (pool, namespace, image, snapshot) tuple is the image of `meta`, mapped
/// without a snapshot.
fn same_image(meta: &Meta, pool: &str, ns: &str, image: &str, snap: &str) -> bool {
    pool == meta.pool && ns == meta.namespace && image == meta.image && matches!(snap, "" | "-")
}

/// One entry of `rbd device list --device-type nbd --format json`.
#[derive(Debug, Deserialize)]
struct NbdEntry {
    #[serde(default)]
    pool: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    image: String,
    #[serde(default)]
    snap: String,
    #[serde(default)]
    device: String,
}

/// The images rbd-nbd serves, by device.
async fn nbd_mappings(timeout: Duration) -> Result<Vec<NbdEntry>> {
    let args = ["device", "list", "--device-type", "nbd", "--format", "json"];
    let out = exec::output("rbd", &args, &[], timeout)
        .await
        .map_err(Error::from)?;
    if !out.success() {
        return Err(Error::internal(format!(
            "rbd device list --device-type nbd failed: {}",
            out.stderr.trim()
        )));
    }
    let text = out.stdout.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(text)
        .map_err(|e| Error::internal(format!("cannot parse rbd device list: {e}")))
}

/// Whether `device` is mapped (krbd or rbd-nbd) to the image of `meta`: `Ok(None)` when it
/// is not mapped at all any more, `Ok(Some(false))` when it maps another image.
pub(crate) async fn device_is_image(
    meta: &Meta,
    device: &str,
    timeout: Duration,
) -> Result<Option<bool>> {
    if let Some(id) = device.strip_prefix("/dev/rbd") {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            return Ok(Some(false)); // a partition or something else
        }
        return Ok(krbd_image(id).map(|(p, n, i, s)| same_image(meta, &p, &n, &i, &s)));
    }
    if device.starts_with("/dev/nbd") {
        if attach::nbd::daemon_pid(device).is_none() {
            return Ok(None);
        }
        let list = nbd_mappings(timeout).await?;
        return Ok(Some(list.iter().any(|e| {
            e.device == device && same_image(meta, &e.pool, &e.namespace, &e.image, &e.snap)
        })));
    }
    Ok(Some(false))
}

/// The device of the volume: the one mounted at the inner path, else the one ceph-csi
/// recorded (rbd-nbd), else the only krbd mapping of the image.
pub(crate) fn candidate_device(
    st: &Staged,
    device_of: impl Fn(&MountEntry) -> Option<String>,
) -> Option<String> {
    if let Some(d) = st.mount.as_ref().and_then(device_of) {
        return Some(d);
    }
    if !st.meta.device.is_empty() {
        return Some(st.meta.device.clone());
    }
    if st.meta.nbd {
        return None;
    }
    let mut found = Vec::new();
    for e in std::fs::read_dir(krbd::SYSFS_DEVICES)
        .into_iter()
        .flatten()
        .flatten()
    {
        let id = e.file_name().to_string_lossy().into_owned();
        if let Some((p, n, i, s)) = krbd_image(&id) {
            if same_image(&st.meta, &p, &n, &i, &s) {
                found.push(krbd::device_for_id(&id).display().to_string());
            }
        }
    }
    // Several mappings (an administrator's read-only one, say): none is known to be ours.
    (found.len() == 1).then(|| found.remove(0))
}

/// `rbd unmap` of `device` as ceph-csi mapped it, with its recorded unmap options.
pub(crate) async fn unmap(meta: &Meta, device: &str, timeout: Duration) -> Result<()> {
    let user = Some(meta.unmap_options.trim()).filter(|s| !s.is_empty());
    let (kind, opts) = match meta.mounter() {
        // ceph-csi always adds noudev for krbd (and so must we: there may be no udevd)
        Mounter::Nbd => ("nbd", user.map(str::to_string)),
        _ => (
            "krbd",
            Some(match user {
                Some(u) if u.split(',').any(|o| o == "noudev") => u.to_string(),
                Some(u) => format!("noudev,{u}"),
                None => "noudev".to_string(),
            }),
        ),
    };
    let args = attach::rbd_unmap_args(kind, device, opts.as_deref());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = exec::output("rbd", &a, &[], timeout)
        .await
        .map_err(Error::from)?;
    if out.success() || out.stderr.contains("not mapped") {
        Ok(())
    } else {
        Err(Error::internal(format!(
            "rbd unmap {device} (ceph-csi's mapping of {}) failed: {}",
            meta.spec(),
            out.stderr.trim()
        )))
    }
}

/// Removes the inner path (directory or file) once nothing is mounted there.
pub(crate) fn remove_inner(st: &Staged) -> Result<()> {
    let r = match std::fs::symlink_metadata(&st.inner) {
        Ok(m) if m.is_dir() => std::fs::remove_dir(&st.inner),
        Ok(_) => std::fs::remove_file(&st.inner),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    r.map_err(|e| Error::internal(format!("cannot remove {}: {e}", st.inner.display())))
}

/// Removes `image-meta.json`: the last step, so an interrupted unstage is finished by the
/// next one.
pub(crate) fn remove_meta(st: &Staged) -> Result<()> {
    match std::fs::remove_file(st.staging.join(META_FILE)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::internal(format!(
            "cannot remove ceph-csi's {META_FILE} in {}: {e}",
            st.staging.display()
        ))),
    }
}

/// Unstages a volume ceph-csi staged: refuses while it is published or open, then unmounts
/// the inner path, removes it, unmaps the device (only if it is the recorded image) and
/// removes `image-meta.json`. Each step is skipped when already done, so a retry after an
/// interruption finishes the job.
pub(crate) async fn unstage(st: &Staged, volume_id: &str, timeout: Duration) -> Result<()> {
    if st.meta.encrypted {
        return Err(Error::precondition(format!(
            "volume {volume_id} was staged by ceph-csi as an encrypted volume (a LUKS container under a dm-crypt mapping), which ferroceph does not handle; unstage it with ceph-csi's node plugin"
        )));
    }
    let device = candidate_device(st, super::mount_device);
    if let Some(dev) = &device {
        match device_is_image(&st.meta, dev, timeout).await? {
            Some(false) => {
                return Err(Error::precondition(format!(
                    "{dev} (used by ceph-csi's staging {}) does not map {}: refusing to unmount or unmap it",
                    st.inner.display(),
                    st.meta.spec()
                )))
            }
            // mapped, or gone already: its publish mounts may remain either way
            Some(true) | None => {
                let rec = as_record(st, volume_id, dev);
                super::refuse_if_in_use(&rec).await?;
            }
        }
    } else if st.mount.is_some() {
        return Err(Error::precondition(format!(
            "cannot tell which device is mounted at {}; refusing to unstage it",
            st.inner.display()
        )));
    }
    super::unmount_all(&st.inner).await?;
    remove_inner(st)?;
    if let Some(dev) = &device {
        if device_is_image(&st.meta, dev, timeout).await? == Some(true) {
            unmap(&st.meta, dev, timeout).await?;
        }
    }
    remove_meta(st)?;
    tracing::info!(volume = %volume_id, staging = %st.staging.display(), image = %st.meta.spec(), device = device.as_deref().unwrap_or(""), "unstaged a volume ceph-csi had staged");
    Ok(())
}

/// A record (in memory only, never written) describing ceph-csi's attachment, so that
/// publish and the in-use checks treat it like one of ours.
pub(crate) fn as_record(st: &Staged, volume_id: &str, device: &str) -> record::Record {
    let block = std::fs::symlink_metadata(&st.inner).is_ok_and(|m| !m.is_dir());
    record::Record {
        version: record::RECORD_VERSION,
        volume_id: volume_id.to_string(),
        staging_path: st.inner.clone(),
        state: record::StageState::Staged,
        requested_mounter: "ceph-csi".into(),
        mounter: st.meta.mounter().as_str().to_string(),
        reason: "staged by ceph-csi".into(),
        image: record::ImageLocation {
            cluster_id: String::new(),
            monitors: Vec::new(),
            pool: st.meta.pool.clone(),
            namespace: st.meta.namespace.clone(),
            image: st.meta.image.clone(),
            user: String::new(),
        },
        device: Some(device.to_string()),
        fuse: None,
        nbd_pid: None,
        unmap_options: None,
        read_only: st.mount.as_ref().is_some_and(|m| m.read_only()),
        block,
        fs_type: st
            .mount
            .as_ref()
            .filter(|_| !block)
            .map(|m| m.fs_type.clone()),
        mount_options: Vec::new(),
        format_started: false,
        updated: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What ceph-csi v3.12 writes for a krbd filesystem volume (json.Marshal, field order).
    const KRBD: &str = r#"{"Version":3,"pool":"replicapool","radosNamespace":"","image":"csi-vol-0e1b7a44-2c3d-4f5e-8a9b-0c1d2e3f4a5b","unmapOptions":"","accessType":false,"encrypted":false,"device":"","logDir":"","logFileStrategy":""}"#;
    const NBD: &str = r#"{"Version":3,"pool":"rbd","radosNamespace":"ns1","image":"csi-vol-x","unmapOptions":"try-netlink","accessType":true,"encrypted":false,"device":"/dev/nbd2","logDir":"/var/log/ceph","logFileStrategy":"remove"}"#;

    #[test]
    fn ceph_csi_meta_is_read() {
        let m = Meta::parse(KRBD).unwrap();
        assert_eq!(m.version, 3);
        assert_eq!(
            m.spec(),
            "replicapool/csi-vol-0e1b7a44-2c3d-4f5e-8a9b-0c1d2e3f4a5b"
        );
        assert_eq!(m.mounter(), Mounter::Krbd);
        assert!(!m.encrypted);
        let n = Meta::parse(NBD).unwrap();
        assert_eq!(n.spec(), "rbd/ns1/csi-vol-x");
        assert_eq!(n.mounter(), Mounter::Nbd);
        assert_eq!(n.device, "/dev/nbd2");
        assert_eq!(n.unmap_options, "try-netlink");
        assert_eq!(n.log_dir, "/var/log/ceph");
        // older versions lack the later fields
        let old =
            Meta::parse(r#"{"Version":2,"pool":"rbd","image":"i","accessType":false}"#).unwrap();
        assert_eq!(old.spec(), "rbd/i");
        assert!(
            Meta::parse(r#"{"Version":3,"pool":"rbd","image":"i","encrypted":true}"#)
                .unwrap()
                .encrypted
        );
    }

    #[test]
    fn ceph_csi_meta_that_could_inject_arguments_is_refused() {
        for bad in [
            r#"{"pool":"-x","image":"i"}"#,
            r#"{"pool":"rbd","image":"a b"}"#,
            r#"{"pool":"rbd","image":""}"#,
            r#"{"pool":"rbd","radosNamespace":"a/b","image":"i"}"#,
            r#"{"pool":"rbd","image":"i","unmapOptions":"force --id admin"}"#,
            r#"{"pool":"rbd","image":"i","unmapOptions":"-x"}"#,
            r#"{"pool":"rbd","image":"i","accessType":true,"device":"/dev/sda"}"#,
            r#"not json"#,
        ] {
            let e = Meta::parse(bad).unwrap_err();
            assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{bad}");
        }
        assert!(Meta::parse(r#"{"pool":"rbd","image":"i","unmapOptions":"force,x=1"}"#).is_ok());
    }

    #[test]
    fn inner_path_is_one_component() {
        let s = Path::new("/k/globalmount");
        assert_eq!(
            inner_path(s, "0001-abc").unwrap(),
            Path::new("/k/globalmount/0001-abc")
        );
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert!(inner_path(s, bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_staging_path_without_the_file_is_not_ceph_csis() {
        let d = tempfile::tempdir().unwrap();
        assert!(find(d.path(), "vol").unwrap().is_none());
        std::fs::write(d.path().join(META_FILE), KRBD).unwrap();
        std::fs::create_dir(d.path().join("vol")).unwrap();
        let st = find(d.path(), "vol").unwrap().expect("ceph-csi layout");
        assert_eq!(st.inner, d.path().join("vol"));
        assert!(st.mount.is_none());
        let rec = as_record(&st, "vol", "/dev/rbd7");
        assert!(!rec.block);
        assert_eq!(rec.mounter, "krbd");
        assert_eq!(rec.image.spec(), st.meta.spec());
        std::fs::write(d.path().join(META_FILE), "{").unwrap();
        assert!(find(d.path(), "vol").is_err());
    }

    #[test]
    fn only_the_recorded_image_matches() {
        let m = Meta::parse(KRBD).unwrap();
        assert!(same_image(&m, "replicapool", "", &m.image, "-"));
        assert!(!same_image(&m, "replicapool", "", &m.image, "snap1"));
        assert!(!same_image(&m, "other", "", &m.image, "-"));
        assert!(!same_image(&m, "replicapool", "ns", &m.image, "-"));
        assert!(!same_image(&m, "replicapool", "", "csi-vol-other", "-"));
    }
}
