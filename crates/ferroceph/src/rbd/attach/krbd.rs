//! Kernel RBD: `rbd map --device-type krbd`, with the key in a 0600 file that is removed as
//! soon as the map returns, and a feature check against `/sys/bus/rbd/supported_features`
//! so an image the kernel cannot map fails with FailedPrecondition naming each feature and
//! the fix, instead of the kernel's "feature set mismatch" (ceph/ceph-csi#1507).

use super::{
    options_for, rbd_map_args, rbd_unmap_args, AttachEnv, AttachRequest, Attached, Attacher,
    Health, Mounter,
};
use crate::error::{Error, Result};
use crate::node::exec;
use crate::node::keyfile::KeyFile;
use crate::node::record::{ImageLocation, Record};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) const SUPPORTED_FEATURES: &str = "/sys/bus/rbd/supported_features";
pub(crate) const SYSFS_DEVICES: &str = "/sys/bus/rbd/devices";

pub(crate) struct Krbd {
    pub env: AttachEnv,
}

fn map_args(
    loc: &ImageLocation,
    keyfile: &Path,
    options: Option<&str>,
    read_only: bool,
) -> Vec<String> {
    rbd_map_args("krbd", loc, keyfile, options, read_only)
}

fn unmap_args(device: &str, options: Option<&str>) -> Vec<String> {
    rbd_unmap_args("krbd", device, options)
}

/// `rbd map`/`unmap` options with `noudev` added: without a udevd (a container, a minimal
/// node) `rbd` waits for udev events that never come until its deadline kills it, while the
/// kernel's devtmpfs makes the device node anyway. ceph-csi passes it for the same reason.
fn with_noudev(options: Option<String>) -> String {
    match options {
        Some(o) if o.split(',').any(|x| x.trim() == "noudev") => o,
        Some(o) => format!("{o},noudev"),
        None => "noudev".to_string(),
    }
}

/// Parses `/sys/bus/rbd/supported_features` (`0x3d`).
pub fn parse_supported(text: &str) -> Option<u64> {
    let t = text.trim();
    let hex = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    u64::from_str_radix(hex, 16).ok()
}

/// Fails with FailedPrecondition when `image` has features that
/// `supported` lacks.
pub(crate) fn check_features(spec: &str, image: u64, supported: u64) -> Result<()> {
    let missing = image & !supported;
    if missing == 0 {
        return Ok(());
    }
    let names = rados::rbd::feature_names(missing);
    let list = names.join(" ");
    Err(Error::precondition(format!(
        "image {spec} has features the kernel's rbd module does not support: {} (the kernel supports: {}). \
         Fix: disable them on this image with `rbd feature disable {spec} {list}`, \
         give new volumes a StorageClass whose imageFeatures leave them out, \
         or use the mounter rbd-nbd or fuse (StorageClass parameter mounter)",
        names.join(", "),
        rados::rbd::features_to_string(supported),
    )))
}

/// The device the kernel already maps `loc` to (a retry after a crash), if any: same
/// cluster (when its fsid is known), pool, namespace and image, no snapshot, and, when
/// given, the same read-only state. Two clusters with alike pool and image names must
/// never share a device.
fn mapped_device(
    loc: &ImageLocation,
    fsid: Option<&str>,
    read_only: Option<bool>,
) -> Option<String> {
    let read = |d: &Path, f: &str| {
        std::fs::read_to_string(d.join(f))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    for entry in std::fs::read_dir(SYSFS_DEVICES).ok()?.flatten() {
        let d = entry.path();
        let id = entry.file_name().to_string_lossy().into_owned();
        let ro = std::fs::read_to_string(format!("/sys/block/rbd{id}/ro"))
            .map(|s| s.trim() == "1")
            .unwrap_or(false);
        if read(&d, "pool") == loc.pool
            && read(&d, "pool_ns") == loc.namespace
            && read(&d, "name") == loc.image
            && matches!(read(&d, "current_snap").as_str(), "" | "-")
            && fsid.map_or(true, |f| read(&d, "cluster_fsid") == f)
            && read_only.map_or(true, |r| r == ro)
        {
            return Some(device_for_id(&id).display().to_string());
        }
    }
    None
}

fn supported_features() -> Result<u64> {
    let text = std::fs::read_to_string(SUPPORTED_FEATURES).map_err(|e| {
        Error::precondition(format!(
            "the kernel has no rbd module ({SUPPORTED_FEATURES}: {e}); load it (modprobe rbd) or use the mounter rbd-nbd or fuse"
        ))
    })?;
    parse_supported(&text).ok_or_else(|| {
        Error::internal(format!(
            "cannot parse {SUPPORTED_FEATURES}: {:?}",
            text.trim()
        ))
    })
}

#[tonic::async_trait]
impl Attacher for Krbd {
    async fn attach(&self, req: &AttachRequest<'_>) -> Result<Attached> {
        if !Path::new("/sys/bus/rbd").exists() {
            // Like ceph-csi: try loading the module once.
            let _ = exec::output("modprobe", &["rbd"], &[], self.env.exec_timeout).await;
        }
        let supported = supported_features()?;
        let loc = req.loc.clone();
        let cfg = self
            .env
            .ceph
            .connect_config(&loc.monitors, &loc.user, req.key);
        let l = loc.clone();
        let (features, fsid) = self
            .env
            .ceph
            .run(cfg, move |cluster| {
                let fsid = cluster
                    .fsid()
                    .map_err(Error::ceph_ctx("read the cluster fsid"))?;
                let io = cluster
                    .ioctx(&l.pool, &l.namespace)
                    .map_err(Error::ceph_ctx("open pool"))?;
                let img = rados::rbd::Image::open_read_only(&io, &l.image)
                    .map_err(Error::ceph_ctx("open image"))?;
                let features = img
                    .features()
                    .map_err(Error::ceph_ctx("read image features"))?;
                Ok((features, fsid))
            })
            .await?;
        check_features(&loc.spec(), features, supported)?;

        if let Some(dev) = mapped_device(&loc, Some(&fsid), Some(req.read_only)) {
            tracing::info!(image = %loc.spec(), device = %dev, "already mapped by the kernel; reusing");
            return Ok(Attached {
                device: dev,
                fuse: None,
                nbd_pid: None,
            });
        }
        let options = with_noudev(options_for(req.map_options, Mounter::Krbd)?);
        let key = KeyFile::create(&self.env.keysdir, req.key).map_err(|e| {
            Error::internal(format!(
                "cannot write a key file in {}: {e}",
                self.env.keysdir.display()
            ))
        })?;
        let args = map_args(&loc, key.path(), Some(&options), req.read_only);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = exec::run("rbd", &a, &[], self.env.exec_timeout)
            .await
            .map_err(Error::from)?;
        drop(key);
        let device = out.stdout.trim().to_string();
        if !device.starts_with("/dev/") {
            return Err(Error::internal(format!(
                "rbd map printed {device:?} instead of a device"
            )));
        }
        Ok(Attached {
            device,
            fuse: None,
            nbd_pid: None,
        })
    }

    async fn detach(&self, rec: &Record) -> Result<()> {
        let dev = rec
            .device
            .clone()
            .or_else(|| mapped_device(&rec.image, None, Some(rec.read_only)));
        let Some(dev) = dev else { return Ok(()) };
        if !Path::new(&dev).exists() {
            return Ok(());
        }
        let opts = with_noudev(options_for(rec.unmap_options.as_deref(), Mounter::Krbd)?);
        let args = unmap_args(&dev, Some(&opts));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = exec::output("rbd", &a, &[], self.env.exec_timeout)
            .await
            .map_err(Error::from)?;
        if out.success() || out.stderr.contains("not mapped") || out.stderr.contains("No such") {
            Ok(())
        } else {
            Err(Error::internal(format!(
                "rbd unmap {dev} failed: {}",
                out.stderr
            )))
        }
    }

    async fn health(&self, rec: &Record) -> Health {
        match &rec.device {
            Some(d) if Path::new(d).exists() => Health::Healthy,
            Some(d) => Health::Broken(format!("rbd device {d} is gone")),
            None => Health::Broken("no device was recorded".into()),
        }
    }

    async fn refresh_size(&self, rec: &Record, want: u64) -> Result<u64> {
        // The kernel follows the image header: nothing to do but wait for it.
        let dev = rec
            .device
            .clone()
            .ok_or_else(|| Error::precondition("no device was recorded"))?;
        super::wait_for_size(&dev, want, Duration::from_secs(30)).await
    }
}

/// The device node of a sysfs rbd device id.
pub(crate) fn device_for_id(id: &str) -> PathBuf {
    PathBuf::from(format!("/dev/rbd{id}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rados::rbd::{
        FEATURE_DEEP_FLATTEN, FEATURE_EXCLUSIVE_LOCK, FEATURE_FAST_DIFF, FEATURE_JOURNALING,
        FEATURE_LAYERING, FEATURE_OBJECT_MAP, USER_FEATURES,
    };

    fn loc(ns: &str) -> ImageLocation {
        ImageLocation {
            cluster_id: "c".into(),
            monitors: vec!["10.0.0.1:6789".into(), "10.0.0.2:6789".into()],
            pool: "rbd".into(),
            namespace: ns.into(),
            image: "csi-vol-1".into(),
            user: "csi-rbd".into(),
        }
    }

    #[test]
    fn map_command_line() {
        let a = map_args(&loc(""), Path::new("/tmp/csi/keys/keyfile-1"), None, false);
        assert_eq!(
            a.join(" "),
            "map rbd/csi-vol-1 --device-type krbd --id csi-rbd -m 10.0.0.1:6789,10.0.0.2:6789 --keyfile /tmp/csi/keys/keyfile-1"
        );
        let a = map_args(
            &loc("ns1"),
            Path::new("/k"),
            Some("lock_on_read,queue_depth=1024"),
            true,
        );
        assert_eq!(
            a.join(" "),
            "map rbd/ns1/csi-vol-1 --device-type krbd --id csi-rbd -m 10.0.0.1:6789,10.0.0.2:6789 --keyfile /k --options lock_on_read,queue_depth=1024 --read-only"
        );
        assert_eq!(
            unmap_args("/dev/rbd0", Some("force")).join(" "),
            "unmap --device-type krbd --options force /dev/rbd0"
        );
        assert_eq!(
            unmap_args("/dev/rbd0", None).join(" "),
            "unmap --device-type krbd /dev/rbd0"
        );
        // the key itself never appears, only the file
        assert!(!a.iter().any(|s| s.contains("AQ")));
    }

    #[test]
    fn feature_check_names_features_and_fix() {
        assert_eq!(parse_supported("0x3d\n"), Some(0x3d));
        assert_eq!(parse_supported("ff"), Some(0xff));
        assert_eq!(parse_supported("zz"), None);
        let kernel = FEATURE_LAYERING
            | FEATURE_EXCLUSIVE_LOCK
            | FEATURE_OBJECT_MAP
            | FEATURE_FAST_DIFF
            | FEATURE_DEEP_FLATTEN;
        assert!(
            check_features("rbd/img", FEATURE_LAYERING | FEATURE_EXCLUSIVE_LOCK, kernel).is_ok()
        );
        let e = check_features(
            "rbd/img",
            FEATURE_LAYERING | FEATURE_EXCLUSIVE_LOCK | FEATURE_JOURNALING,
            kernel,
        )
        .unwrap_err()
        .message();
        assert!(e.contains("journaling"), "{e}");
        assert!(e.contains("rbd feature disable rbd/img journaling"), "{e}");
        assert!(e.contains("rbd-nbd or fuse"), "{e}");
        // an old kernel (layering only) and a full-featured image
        let e = check_features("p/i", USER_FEATURES, FEATURE_LAYERING)
            .unwrap_err()
            .message();
        for f in [
            "exclusive-lock",
            "object-map",
            "fast-diff",
            "deep-flatten",
            "journaling",
        ] {
            assert!(e.contains(f), "{f}: {e}");
        }
        assert!(!e.contains("layering,") || e.contains("supports: layering"));
    }

    #[test]
    fn noudev_is_always_passed() {
        assert_eq!(with_noudev(None), "noudev");
        assert_eq!(
            with_noudev(Some("lock_on_read,queue_depth=1024".into())),
            "lock_on_read,queue_depth=1024,noudev"
        );
        assert_eq!(with_noudev(Some("noudev,force".into())), "noudev,force");
    }

    #[test]
    fn device_names() {
        assert_eq!(device_for_id("3"), PathBuf::from("/dev/rbd3"));
    }
}
