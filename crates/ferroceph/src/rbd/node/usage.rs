//! NodeGetVolumeStats and NodeExpandVolume.

use super::*;
use crate::locks::LockKey;

impl Inner {
    /// The record for a request that may or may not name the staging path.
    pub(super) fn find_record(&self, staging: &str, volume_path: &Path) -> Option<Record> {
        if !staging.is_empty() {
            if let Ok(Some(r)) = record::read(Path::new(staging)) {
                return Some(r);
            }
        }
        let m = mount::mount_at(volume_path).ok().flatten()?;
        record_for_device(&mount_device(&m)?)
    }

    pub(super) async fn volume_stats(
        &self,
        req: pb::NodeGetVolumeStatsRequest,
    ) -> Result<pb::NodeGetVolumeStatsResponse> {
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
                return Err(Error::not_found(format!(
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
                return Err(Error::not_found(format!(
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

    pub(super) async fn expand(&self, req: pb::NodeExpandVolumeRequest) -> Result<i64> {
        let vid = req.volume_id.as_str();
        validate::id(vid, "volume_id")?;
        let path = mount::volume_path(&req.volume_path, &req.volume_id)?;
        let want = req
            .capacity_range
            .as_ref()
            .map(|r| r.required_bytes.max(0) as u64)
            .unwrap_or(0);
        let _guard = self.locks.acquire("volume", [LockKey::node_volume(vid)])?;
        if !path.exists() {
            return Err(Error::not_found(format!(
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
                return Err(Error::not_found(format!(
                    "{} holds volume {}, not {vid}",
                    path.display(),
                    r.volume_id
                )));
            }
        }
        let entry = mount::mount_at(&path).map_err(Error::internal)?;
        let device = match (&rec, &entry) {
            (Some(r), _) if r.device.is_some() => r.device.clone().unwrap_or_default(),
            (_, Some(m)) => mount_device(m).ok_or_else(|| {
                Error::precondition(format!(
                    "cannot tell which device is mounted at {}",
                    path.display()
                ))
            })?,
            _ => {
                return Err(Error::not_found(format!(
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
            let m = entry
                .ok_or_else(|| Error::precondition(format!("{} is not mounted", path.display())))?;
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
