//! NodeStageVolume: locate the image, attach it (the record written first), probe, format
//! only a blank device, mount; re-attach a dead attachment.

use super::*;
use crate::locks::LockKey;

/// A NodeStageVolumeRequest, checked.
struct StageArgs<'a> {
    vid: &'a str,
    staging: PathBuf,
    ctx: &'a HashMap<String, String>,
    summary: CapSummary,
    creds: Credentials,
    fs_type: Option<String>,
    flags: Vec<String>,
    mounter: Mounter,
    /// Why this mounter (logged and recorded).
    reason: String,
    map_options: Option<String>,
    unmap_options: Option<String>,
    mkfs_options: Option<String>,
}

/// What a dead attachment at the staging path leaves for the next one to know.
#[derive(Default)]
struct Leftover {
    /// Its client, still listed as a watcher of the image.
    previous_client: Vec<u64>,
    /// Whether its mkfs was interrupted (the next attachment formats again).
    format_started: bool,
}

impl<'a> StageArgs<'a> {
    fn check(req: &'a pb::NodeStageVolumeRequest) -> Result<StageArgs<'a>> {
        let vid = req.volume_id.as_str();
        validate::id(vid, "volume_id")?;
        let staging = mount::check_path(&req.staging_target_path, "staging_target_path")?;
        mount::check_no_symlinks(&staging, "staging_target_path")?;
        let cap = req
            .volume_capability
            .as_ref()
            .ok_or_else(|| Error::invalid("volume_capability is required"))?;
        let summary: CapSummary = validate::capability(cap, &RBD_MODES)?;
        let ctx = &req.volume_context;
        // ceph-csi's encrypted volumes hold a LUKS container: handing it to a pod as it is
        // would show garbage and invite a format over the user's data.
        if ctx
            .get("encrypted")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        {
            return Err(Error::precondition(format!(
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
        Ok(StageArgs {
            vid,
            staging,
            ctx,
            summary,
            creds,
            fs_type,
            flags,
            mounter,
            reason,
            map_options,
            unmap_options,
            mkfs_options: ctx.get("mkfsOptions").cloned(),
        })
    }

    /// An existing record at the staging path must be of this volume, staged the same way.
    fn check_same_volume(&self, rec: &Record) -> Result<()> {
        let (vid, staging) = (self.vid, &self.staging);
        if rec.volume_id != vid {
            return Err(Error::AlreadyExists(format!(
                "staging path {} already holds volume {}",
                staging.display(),
                rec.volume_id
            )));
        }
        if rec.block != self.summary.block || rec.read_only != self.summary.read_only {
            return Err(Error::AlreadyExists(format!(
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
        Ok(())
    }

    /// The record of a new attachment of the image at `loc`.
    fn new_record(&self, loc: ImageLocation, format_started: bool) -> Record {
        Record {
            version: RECORD_VERSION,
            volume_id: self.vid.to_string(),
            staging_path: self.staging.clone(),
            state: StageState::Attaching,
            requested_mounter: self
                .ctx
                .get("mounter")
                .cloned()
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| "auto".into()),
            mounter: self.mounter.as_str().to_string(),
            reason: self.reason.clone(),
            image: loc,
            device: None,
            fuse: None,
            nbd_pid: None,
            unmap_options: self.unmap_options.clone(),
            read_only: self.summary.read_only,
            block: self.summary.block,
            fs_type: self.fs_type.clone(),
            mount_options: self.flags.clone(),
            format_started,
            updated: 0,
        }
    }
}

impl Inner {
    /// Where the image lives, from the handle and the volume context.
    pub(super) async fn locate(
        &self,
        volume_id: &str,
        ctx: &HashMap<String, String>,
        creds: &Credentials,
    ) -> Result<ImageLocation> {
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
            return Err(Error::invalid(
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
                Err(e @ ConfigError::UnknownCluster { .. }) => return Err(Error::invalid(e)),
                Err(e) => return Err(Error::precondition(e.to_string())),
            }
        };
        for m in &monitors {
            if m.starts_with('-') || m.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(Error::invalid(format!(
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
                return Err(Error::invalid(
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
    pub(super) async fn teardown(&self, rec: &Record) -> Result<()> {
        if !rec.block {
            unmount_all(&rec.staging_path).await?;
        }
        self.attacher_for(rec)?.detach(rec).await?;
        record::remove(&rec.staging_path)?;
        self.set_broken(&rec.staging_path, false);
        Ok(())
    }

    /// Attaches per `rec` (which is written first, then updated with the device).
    pub(super) async fn attach(
        &self,
        rec: &mut Record,
        key: &str,
        map_options: Option<&str>,
    ) -> Result<()> {
        let m = Mounter::parse(&rec.mounter)
            .ok_or_else(|| Error::internal("unknown mounter in record"))?;
        rec.state = StageState::Attaching;
        rec.device = None;
        rec.fuse = None;
        rec.nbd_pid = None;
        record::write(rec)?;
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
        record::write(rec)?;
        if !attach::wait_for_path(Path::new(&attached.device), Duration::from_secs(10)).await {
            return Err(Error::internal(format!(
                "device {} did not appear",
                attached.device
            )));
        }
        Ok(())
    }

    /// Probes the device, formats it if (and only if) it is blank, mounts it.
    pub(super) async fn mount_staging(
        &self,
        rec: &mut Record,
        mkfs_options: Option<&str>,
    ) -> Result<()> {
        let dev = rec
            .device
            .clone()
            .ok_or_else(|| Error::internal("no device recorded"))?;
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
                return Err(Error::precondition(format!(
                    "{} ({dev}) holds {what}, not a filesystem; refusing to format or mount it",
                    rec.image.spec()
                )))
            }
            format::Probe::Blank if rec.read_only => {
                return Err(Error::precondition(format!(
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
            Error::internal(format!("cannot create {}: {e}", rec.staging_path.display()))
        })?;
        mount::mount(&dev, &rec.staging_path, &fs, &opts, EXEC_TIMEOUT)
            .await
            .map_err(Error::from)?;
        rec.fs_type = Some(fs);
        Ok(())
    }

    /// mkfs, with the record saying so while it runs (see [`Record::format_started`]).
    pub(super) async fn format(
        &self,
        rec: &mut Record,
        dev: &str,
        fs: &str,
        mkfs_options: Option<&str>,
    ) -> Result<()> {
        rec.format_started = true;
        record::write(rec)?;
        crate::ceph::crash_point("stage.formatting");
        format::mkfs(fs, dev, mkfs_options, MKFS_TIMEOUT).await?;
        rec.format_started = false;
        record::write(rec)
    }

    pub(super) async fn stage(&self, req: pb::NodeStageVolumeRequest) -> Result<()> {
        let a = StageArgs::check(&req)?;
        let vid = a.vid;
        let _guard = self.locks.acquire(
            "volume",
            [LockKey::node_volume(vid), LockKey::node_path(&a.staging)],
        )?;
        self.remember_key(vid, &a.creds);
        let Some(left) = self.resume(&a).await? else {
            return Ok(());
        };
        let loc = self.locate(vid, a.ctx, &a.creds).await?;
        if !a.summary.multi_node && !a.summary.read_only {
            attach::writers::refuse_other_users(
                &self.env,
                vid,
                &loc,
                &a.creds.key,
                &left.previous_client,
            )
            .await?;
        }
        let mut rec = a.new_record(loc, left.format_started);
        self.attach(&mut rec, &a.creds.key, a.map_options.as_deref())
            .await?;
        if !rec.block {
            if let Err(e) = self
                .mount_staging(&mut rec, a.mkfs_options.as_deref())
                .await
            {
                // A definite failure: leave nothing attached behind (kubelet will not call
                // NodeUnstageVolume for a stage that failed).
                if let Err(t) = self.teardown(&rec).await {
                    tracing::warn!("cleanup after a failed stage: {}", t.message());
                }
                return Err(e);
            }
        }
        rec.state = StageState::Staged;
        record::write(&mut rec)?;
        tracing::info!(
            volume = %vid,
            image = %rec.image.spec(),
            mounter = %rec.mounter,
            reason = %a.reason,
            device = rec.device.as_deref().unwrap_or(""),
            staging = %a.staging.display(),
            "staged"
        );
        Ok(())
    }

    /// What an earlier stage left at the staging path. `None` when it is complete (or a
    /// staging of ceph-csi that is served as it is): nothing more to do. Otherwise a dead
    /// attachment has been cleared away, and what is left says what the new attachment
    /// must know of it.
    async fn resume(&self, a: &StageArgs<'_>) -> Result<Option<Leftover>> {
        let (vid, staging) = (a.vid, &a.staging);
        if let Some(rec) = record::read(staging)? {
            return self.resume_recorded(rec, a).await;
        }
        if mount::is_mount_point(staging).unwrap_or(false) {
            return Err(Error::AlreadyExists(format!(
                "staging path {} is already a mount point that ferroceph did not make",
                staging.display()
            )));
        }
        if let Some(st) = cephcsi::find(staging, vid)? {
            if st.mount.is_some() {
                // Staged by ceph-csi and still mounted: it is served from there (a second
                // mapping mounted beside it would corrupt the filesystem).
                cephcsi_view(staging, vid, a.summary.block).await?;
                tracing::info!(volume = %vid, staging = %staging.display(), "already staged by ceph-csi; served as it is");
                return Ok(None);
            }
            // What a ceph-csi stage left without a mount: finish undoing it, then stage.
            cephcsi::unstage(&st, vid, EXEC_TIMEOUT).await?;
        }
        Ok(Some(Leftover::default()))
    }

    /// [`Inner::resume`] with our own record: finish a healthy stage, leave an unresponsive
    /// one alone, clear a dead one away.
    async fn resume_recorded(
        &self,
        mut rec: Record,
        a: &StageArgs<'_>,
    ) -> Result<Option<Leftover>> {
        let (vid, staging) = (a.vid, &a.staging);
        a.check_same_volume(&rec)?;
        let health = match rec.device {
            Some(_) => self.attacher_for(&rec)?.health(&rec).await,
            None => Health::Broken("the attach was interrupted".into()),
        };
        match health {
            Health::Healthy => {
                let mounted = rec.block || mount::is_mount_point(staging).unwrap_or(false);
                if rec.state == StageState::Staged && mounted {
                    tracing::debug!(volume = %vid, "already staged");
                    return Ok(None);
                }
                // Attached but not (or no longer) mounted: finish the job.
                if !rec.block && !mounted {
                    self.mount_staging(&mut rec, a.mkfs_options.as_deref())
                        .await?;
                }
                rec.state = StageState::Staged;
                record::write(&mut rec)?;
                Ok(None)
            }
            Health::Unresponsive(why) => Err(Error::unavailable(format!(
                "volume {vid} is staged at {} but does not answer ({why}); it is left alone for the pods using it: retry when the cluster answers again",
                staging.display()
            ))),
            Health::Broken(why) => {
                tracing::warn!(volume = %vid, staging = %staging.display(), "re-attaching: {why}");
                if !rec.block {
                    // The filesystem on the dead device cannot be flushed any more.
                    if let Err(e) = unmount_all(staging).await {
                        tracing::warn!("{}", e.message());
                        let s = staging.display().to_string();
                        let _ = crate::node::exec::output("umount", &["-l", &s], &[], EXEC_TIMEOUT)
                            .await;
                    }
                }
                self.attacher_for(&rec)?.detach(&rec).await?;
                self.release_dead_lock(&rec, &a.creds).await;
                record::remove(staging)?;
                self.set_broken(staging, false);
                Ok(Some(Leftover {
                    previous_client: rec.fuse.as_ref().and_then(|f| f.client_id).into_iter().collect(),
                    format_started: rec.format_started,
                }))
            }
        }
    }

    /// A FUSE exporter killed while holding the image's exclusive lock keeps it until its
    /// watch times out (30 s), and the next writer waits that long. Once the exporter is
    /// known dead, its lock is broken (librbd blocklists it first, so it is fenced).
    /// Only that client's lock: a live owner elsewhere is never touched.
    pub(super) async fn release_dead_lock(&self, rec: &Record, creds: &Credentials) {
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
                let io = c
                    .ioctx(&loc.pool, &loc.namespace)
                    .map_err(Error::ceph_ctx("open pool"))?;
                // Read-write: librbd answers lock queries only on such a handle.
                let img = rados::rbd::Image::open(&io, &loc.image)
                    .map_err(Error::ceph_ctx("open image"))?;
                let Ok(owners) = img.lock_owners() else {
                    return Ok(None); // no exclusive-lock feature
                };
                let watchers = img.watchers().map_err(Error::ceph_ctx("list watchers"))?;
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
                    .map_err(Error::ceph_ctx("break the dead exporter's lock"))?;
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
    pub(super) async fn reattach(&self, mut rec: Record, creds: &Credentials) -> Result<Record> {
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
        record::write(&mut rec)?;
        self.set_broken(&rec.staging_path, false);
        Ok(rec)
    }
}
