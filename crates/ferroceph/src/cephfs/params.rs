//! CephFS StorageClass parameters, secrets and the volume_context the node reads, in
//! ceph-csi's names, checked up front so a typo answers InvalidArgument naming the
//! parameter instead of a half-made volume.

use crate::credentials::{self, Credentials};
use std::collections::{BTreeMap, HashMap};

pub const DEFAULT_VOL_PREFIX: &str = "csi-vol-";
pub const DEFAULT_SNAP_PREFIX: &str = "csi-snap-";
/// The RADOS namespace of the journal in the metadata pool when config.json names none.
pub const DEFAULT_JOURNAL_NAMESPACE: &str = "csi";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ParamError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, ParamError> {
    Err(ParamError(msg.into()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mounter {
    Kernel,
    Fuse,
}

impl Mounter {
    pub fn parse(s: &str) -> Result<Mounter, ParamError> {
        match s.trim() {
            "kernel" => Ok(Mounter::Kernel),
            "fuse" | "ceph-fuse" => Ok(Mounter::Fuse),
            other => err(format!(
                "mounter {other:?} is not known: use kernel or fuse"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mounter::Kernel => "kernel",
            Mounter::Fuse => "fuse",
        }
    }
}

/// Parameters of a CephFS StorageClass (CreateVolume).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsParams {
    pub cluster_id: String,
    pub fs_name: String,
    /// Data pool for the subvolume's layout.
    pub pool: Option<String>,
    pub mounter: Option<Mounter>,
    pub kernel_mount_options: Option<String>,
    pub fuse_mount_options: Option<String>,
    pub vol_prefix: String,
    pub snap_prefix: String,
    pub pvc_namespace: Option<String>,
    /// `backingSnapshot: "true"`: a volume from a snapshot is the snapshot itself, read-only,
    /// with no subvolume of its own (see `cephfs::backing`).
    pub backing_snapshot: bool,
    /// Every parameter not under `csi.storage.k8s.io/`, returned in the volume_context.
    pub context: BTreeMap<String, String>,
}

/// Accepted and ignored (consumed by sidecars, or harmless defaults of ceph-csi).
const IGNORED: &[&str] = &["provisionVolume", "cephLogDir", "cephLogStrategy"];
/// ceph-csi parameters accepted with their harmless value only.
const ONLY_DEFAULT: &[(&str, &str)] = &[("encrypted", "false")];

/// A boolean parameter as ceph-csi reads it (Go's strconv.ParseBool).
fn parse_bool(k: &str, v: &str) -> Result<bool, ParamError> {
    match v.trim() {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "" | "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        other => err(format!(
            "parameter {k}={other:?} must be \"true\" or \"false\""
        )),
    }
}

/// Mount options from a parameter: comma separated, no spaces, and never a key or user
/// (those come from the secrets only).
pub fn check_mount_options(what: &str, opts: &str) -> Result<Vec<String>, ParamError> {
    let mut out = Vec::new();
    for o in opts.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        if o.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return err(format!("{what}: option {o:?} must not contain spaces"));
        }
        let key = o.split('=').next().unwrap_or(o);
        if matches!(
            key,
            "secret" | "secretfile" | "name" | "key" | "keyfile" | "keyring"
        ) {
            return err(format!(
                "{what}: option {key:?} is set by the driver from the secrets; remove it"
            ));
        }
        out.push(o.to_string());
    }
    Ok(out)
}

fn check_prefix(k: &str, p: &str) -> Result<(), ParamError> {
    if p.contains('/') || p.contains('@') || p.len() > 64 || p.chars().any(char::is_control) {
        return err(format!(
            "{k} {p:?} must not contain '/' or '@' and must be at most 64 bytes"
        ));
    }
    Ok(())
}

impl FsParams {
    pub fn parse(params: &HashMap<String, String>) -> Result<Self, ParamError> {
        let get = |k: &str| {
            params
                .get(k)
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let mut keys: Vec<&String> = params.keys().collect();
        keys.sort();
        for k in keys {
            let v = &params[k];
            if let Some((_, ok)) = ONLY_DEFAULT.iter().find(|(name, _)| name == k) {
                if !v.trim().eq_ignore_ascii_case(ok) {
                    return err(format!(
                        "parameter {k}={v:?} is not supported by ferroceph's CephFS driver; remove it or set it to {ok:?}"
                    ));
                }
                continue;
            }
            let known = matches!(
                k.as_str(),
                "clusterID"
                    | "fsName"
                    | "pool"
                    | "mounter"
                    | "kernelMountOptions"
                    | "fuseMountOptions"
                    | "volumeNamePrefix"
                    | "snapshotNamePrefix"
                    | "backingSnapshot"
            ) || k.starts_with("csi.storage.k8s.io/")
                || IGNORED.contains(&k.as_str());
            if !known {
                return err(format!(
                    "unknown parameter {k:?}; CephFS takes clusterID, fsName, pool, mounter, kernelMountOptions, fuseMountOptions, volumeNamePrefix and snapshotNamePrefix"
                ));
            }
        }
        let cluster_id =
            get("clusterID").ok_or(ParamError("missing parameter clusterID".into()))?;
        let fs_name = get("fsName").ok_or(ParamError(
            "missing parameter fsName (the CephFS filesystem, see `ceph fs ls`)".into(),
        ))?;
        let mounter = get("mounter").map(|m| Mounter::parse(&m)).transpose()?;
        if let Some(o) = get("kernelMountOptions") {
            check_mount_options("kernelMountOptions", &o)?;
            crate::options::check_cephfs_mount("kernel", &o)
                .map_err(|e| ParamError(e.message()))?;
        }
        if let Some(o) = get("fuseMountOptions") {
            check_mount_options("fuseMountOptions", &o)?;
            crate::options::check_cephfs_mount("fuse", &o).map_err(|e| ParamError(e.message()))?;
        }
        let vol_prefix = get("volumeNamePrefix").unwrap_or_else(|| DEFAULT_VOL_PREFIX.into());
        check_prefix("volumeNamePrefix", &vol_prefix)?;
        let snap_prefix = get("snapshotNamePrefix").unwrap_or_else(|| DEFAULT_SNAP_PREFIX.into());
        check_prefix("snapshotNamePrefix", &snap_prefix)?;
        let context = params
            .iter()
            .filter(|(k, _)| !k.starts_with("csi.storage.k8s.io/"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(FsParams {
            cluster_id,
            fs_name,
            pool: get("pool"),
            mounter,
            kernel_mount_options: get("kernelMountOptions"),
            fuse_mount_options: get("fuseMountOptions"),
            vol_prefix,
            snap_prefix,
            pvc_namespace: get("csi.storage.k8s.io/pvc/namespace"),
            backing_snapshot: parse_bool(
                "backingSnapshot",
                params.get("backingSnapshot").map_or("", String::as_str),
            )?,
            context,
        })
    }
}

/// Parameters of a VolumeSnapshotClass (CreateSnapshot): only the snapshot name prefix
/// matters; clusterID and fsName are accepted for ceph-csi compatibility.
pub fn snapshot_prefix(params: &HashMap<String, String>) -> Result<String, ParamError> {
    let mut prefix = DEFAULT_SNAP_PREFIX.to_string();
    for (k, v) in params {
        match k.as_str() {
            "snapshotNamePrefix" => {
                let v = v.trim();
                if !v.is_empty() {
                    check_prefix(k, v)?;
                    prefix = v.to_string();
                }
            }
            "clusterID" | "fsName" => {}
            k if k.starts_with("csi.storage.k8s.io/") => {}
            other => return err(format!("unknown snapshot parameter {other:?}")),
        }
    }
    Ok(prefix)
}

/// Provisioning (and node staging of provisioned volumes): adminID/adminKey, else
/// userID/userKey.
pub fn admin_credentials(secrets: &HashMap<String, String>) -> Result<Credentials, ParamError> {
    credentials::admin_first(secrets).map_err(|e| ParamError(e.message()))
}

/// Static volumes: userID/userKey, else adminID/adminKey.
pub fn user_credentials(secrets: &HashMap<String, String>) -> Result<Credentials, ParamError> {
    credentials::user_first(secrets).map_err(|e| ParamError(e.message()))
}

/// What the node needs to mount a volume, from the volume_context (and the handle).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeVolume {
    pub cluster_id: String,
    pub is_static: bool,
    /// fsName; may be empty for a provisioned volume (then found from the handle's fscid).
    pub fs_name: String,
    /// rootPath (static) or subvolumePath (provisioned); may be empty for a provisioned
    /// volume (then asked from the cluster).
    pub root_path: String,
    pub mounter: Option<Mounter>,
    pub kernel_mount_options: Option<String>,
    pub fuse_mount_options: Option<String>,
    /// `backingSnapshot: "true"`: a read-only view of a snapshot, whose path the node finds
    /// from the journal (subvolumePath is the snapshot's subvolume, not the volume).
    pub backing_snapshot: bool,
}

fn check_root(path: &str) -> Result<(), ParamError> {
    if !path.starts_with('/')
        || path.split('/').any(|c| c == "..")
        || path
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || c == ',')
    {
        return err(format!(
            "path {path:?} in the volume context must be absolute, without '..', spaces or commas"
        ));
    }
    Ok(())
}

impl NodeVolume {
    /// `handle_cluster` is the clusterID decoded from the handle, if it decodes.
    pub fn parse(
        ctx: &HashMap<String, String>,
        handle_cluster: Option<&str>,
    ) -> Result<Self, ParamError> {
        let get = |k: &str| {
            ctx.get(k)
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        let is_static = match get("staticVolume").as_deref() {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(v) => return err(format!("staticVolume {v:?} must be \"true\" or \"false\"")),
        };
        let cluster_id = match (get("clusterID"), handle_cluster) {
            (Some(c), _) => c,
            (None, Some(c)) => c.to_string(),
            (None, None) => return err("volume context lacks clusterID"),
        };
        if is_static && get("backingSnapshotID").is_some() {
            return err(
                "pre-provisioned snapshot-backed volumes (backingSnapshotID) are not supported by ferroceph",
            );
        }
        let backing_snapshot = !is_static
            && parse_bool(
                "backingSnapshot",
                get("backingSnapshot").as_deref().unwrap_or(""),
            )?;
        let (fs_name, root_path) = if is_static {
            let root = get("rootPath").ok_or(ParamError(
                "a static volume needs rootPath in its volume attributes".into(),
            ))?;
            let fs = get("fsName").ok_or(ParamError(
                "a static volume needs fsName in its volume attributes".into(),
            ))?;
            (fs, root)
        } else {
            if handle_cluster.is_none() {
                return err(
                    "the volume handle is not a CephFS volume id and the volume is not static (set staticVolume: \"true\", rootPath and fsName for a pre-made volume)",
                );
            }
            (
                get("fsName").unwrap_or_default(),
                get("subvolumePath").unwrap_or_default(),
            )
        };
        if !root_path.is_empty() {
            check_root(&root_path)?;
        }
        if fs_name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',')
        {
            return err(format!("fsName {fs_name:?} is not a filesystem name"));
        }
        let mounter = get("mounter").map(|m| Mounter::parse(&m)).transpose()?;
        let kernel_mount_options = get("kernelMountOptions");
        if let Some(o) = &kernel_mount_options {
            check_mount_options("kernelMountOptions", o)?;
            crate::options::check_cephfs_mount("kernel", o).map_err(|e| ParamError(e.message()))?;
        }
        let fuse_mount_options = get("fuseMountOptions");
        if let Some(o) = &fuse_mount_options {
            check_mount_options("fuseMountOptions", o)?;
            crate::options::check_cephfs_mount("fuse", o).map_err(|e| ParamError(e.message()))?;
        }
        Ok(NodeVolume {
            cluster_id,
            is_static,
            fs_name,
            root_path,
            mounter,
            kernel_mount_options,
            fuse_mount_options,
            backing_snapshot,
        })
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
    fn ceph_csi_storage_class() {
        let p = FsParams::parse(&map(&[
            ("clusterID", "abc"),
            ("fsName", "cephfs"),
            ("pool", "cephfs_data"),
            ("mounter", "fuse"),
            ("fuseMountOptions", "debug"),
            ("csi.storage.k8s.io/pvc/namespace", "team"),
            ("csi.storage.k8s.io/provisioner-secret-name", "s"),
        ]))
        .unwrap();
        assert_eq!(p.fs_name, "cephfs");
        assert_eq!(p.pool.as_deref(), Some("cephfs_data"));
        assert_eq!(p.mounter, Some(Mounter::Fuse));
        assert_eq!(p.vol_prefix, DEFAULT_VOL_PREFIX);
        assert_eq!(p.pvc_namespace.as_deref(), Some("team"));
        assert_eq!(p.context.len(), 5);
        assert!(!p.context.keys().any(|k| k.starts_with("csi.storage")));
    }

    #[test]
    fn rejections_name_the_parameter() {
        let e = FsParams::parse(&map(&[("clusterID", "a"), ("fsName", "f"), ("poool", "x")]))
            .unwrap_err();
        assert!(e.0.contains("\"poool\""), "{e}");
        let e = FsParams::parse(&map(&[("clusterID", "a")])).unwrap_err();
        assert!(e.0.contains("fsName"), "{e}");
        let e = FsParams::parse(&map(&[("fsName", "a")])).unwrap_err();
        assert!(e.0.contains("clusterID"), "{e}");
        let e = FsParams::parse(&map(&[
            ("clusterID", "a"),
            ("fsName", "f"),
            ("mounter", "nfs"),
        ]))
        .unwrap_err();
        assert!(e.0.contains("mounter"), "{e}");
        let e = FsParams::parse(&map(&[
            ("clusterID", "a"),
            ("fsName", "f"),
            ("kernelMountOptions", "secret=abc"),
        ]))
        .unwrap_err();
        assert!(e.0.contains("secret"), "{e}");
        let e = FsParams::parse(&map(&[
            ("clusterID", "a"),
            ("fsName", "f"),
            ("backingSnapshot", "maybe"),
        ]))
        .unwrap_err();
        assert!(e.0.contains("backingSnapshot"), "{e}");
        for (v, want) in [
            ("true", true),
            ("True", true),
            ("1", true),
            ("false", false),
        ] {
            let p = FsParams::parse(&map(&[
                ("clusterID", "a"),
                ("fsName", "f"),
                ("backingSnapshot", v),
            ]))
            .unwrap();
            assert_eq!(p.backing_snapshot, want, "{v}");
        }
        assert!(FsParams::parse(&map(&[
            ("clusterID", "a"),
            ("fsName", "f"),
            ("volumeNamePrefix", "a/b"),
        ]))
        .is_err());
        assert_eq!(
            snapshot_prefix(&map(&[("snapshotNamePrefix", "s-")])).unwrap(),
            "s-"
        );
        assert!(snapshot_prefix(&map(&[("pool", "x")])).is_err());
    }

    #[test]
    fn credentials_prefer_the_right_pair() {
        let both = map(&[
            ("adminID", "client.adm"),
            ("adminKey", "AK"),
            ("userID", "usr"),
            ("userKey", "UK"),
        ]);
        assert_eq!(admin_credentials(&both).unwrap().user, "adm");
        assert_eq!(user_credentials(&both).unwrap().user, "usr");
        let user_only = map(&[("userID", "usr"), ("userKey", "UK")]);
        assert_eq!(admin_credentials(&user_only).unwrap().key, "UK");
        let e = admin_credentials(&map(&[("adminID", "x")])).unwrap_err();
        assert!(e.0.contains("[adminID]") && !e.0.contains("UK"), "{e}");
        assert!(format!("{:?}", admin_credentials(&both).unwrap()).contains("***"));
    }

    #[test]
    fn node_volume_context() {
        let v = NodeVolume::parse(
            &map(&[
                ("clusterID", "c"),
                ("fsName", "cephfs"),
                ("subvolumePath", "/volumes/csi/x/uuid"),
                ("mounter", "kernel"),
            ]),
            Some("c"),
        )
        .unwrap();
        assert!(!v.is_static);
        assert_eq!(v.mounter, Some(Mounter::Kernel));
        let s = NodeVolume::parse(
            &map(&[
                ("clusterID", "c"),
                ("fsName", "cephfs"),
                ("staticVolume", "true"),
                ("rootPath", "/static/dir"),
            ]),
            None,
        )
        .unwrap();
        assert!(s.is_static);
        assert_eq!(s.root_path, "/static/dir");
        assert!(NodeVolume::parse(
            &map(&[
                ("clusterID", "c"),
                ("staticVolume", "true"),
                ("fsName", "f")
            ]),
            None
        )
        .is_err());
        assert!(NodeVolume::parse(&map(&[("clusterID", "c")]), None).is_err());
        assert!(NodeVolume::parse(
            &map(&[
                ("clusterID", "c"),
                ("staticVolume", "true"),
                ("fsName", "f"),
                ("rootPath", "/a/../etc")
            ]),
            None
        )
        .is_err());
    }
}
