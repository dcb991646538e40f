//! CreateVolume: blank volumes, and the journal bookkeeping that makes a create
//! idempotent across crashes (reserve, resume or roll back, adopt ceph-csi entries).

use super::*;

/// Where a new volume's data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Blank,
    /// A snapshot's uuid (same pool).
    Snapshot(String),
    /// A volume's uuid (same pool).
    Volume(String),
}

pub struct CreateSpec<'a> {
    pub name: &'a str,
    pub size: u64,
    pub range: Option<&'a pb::CapacityRange>,
    pub params: &'a RbdParams,
    pub source: Source,
    /// The CSI id of the source, recorded for idempotency checks ("" for blank).
    pub source_id: &'a str,
}

#[derive(Debug, Clone)]
pub struct Created {
    pub uuid: String,
    pub image: String,
    pub size: u64,
}

/// Looks `name` up, clearing a dangling directory key left by a crash.
pub(super) fn find(journal: &Journal<'_>, name: &str) -> Result<Option<Entry>> {
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

/// Like [`find`], but a directory key whose entry object is missing is adopted rather than
/// dropped: [`create_blank_fresh`] writes the entry and the image at the same time, so the
/// image of a crashed attempt may exist under that uuid; adopting the entry makes the
/// retry remove and remake it instead of leaking it.
pub(super) fn find_volume(journal: &Journal<'_>, spec: &CreateSpec<'_>) -> Result<Option<Entry>> {
    match journal
        .lookup(spec.name)
        .map_err(|e| jerr("journal lookup", e))?
    {
        Lookup::Found(entry) => Ok(Some(entry)),
        Lookup::Dangling { uuid } => {
            let attrs = new_volume_attrs(spec, &uuid);
            match journal.write_entry(spec.name, &uuid, &attrs) {
                Ok(()) => Ok(Some(Entry {
                    uuid,
                    pool_id: None,
                    attrs,
                })),
                // the entry object belongs to another name: the key was dropped
                Err(JournalError::UuidClash(_)) => Ok(None),
                Err(e) => Err(jerr("journal reserve", e)),
            }
        }
        Lookup::Absent => Ok(None),
    }
}

/// Reserves `name` under a fresh uuid with `attrs` (plus the image name).
pub(super) fn reserve_new(
    journal: &Journal<'_>,
    name: &str,
    prefix: &str,
    mut attrs: Attrs,
) -> Result<Entry> {
    for _ in 0..5 {
        let uuid = uuid::Uuid::new_v4().to_string();
        attrs.insert(journal::IMAGE_NAME.to_string(), format!("{prefix}{uuid}"));
        match journal.reserve(name, &uuid, &attrs) {
            Ok(()) => {
                return Ok(Entry {
                    uuid,
                    pool_id: None,
                    attrs,
                });
            }
            Err(JournalError::UuidClash(_)) => continue,
            Err(e) => return Err(jerr("journal reserve", e)),
        }
    }
    Err(Error::internal(
        "could not find a free uuid after 5 attempts",
    ))
}

/// Removes an image an interrupted attempt left behind. Creating or cloning an image takes
/// several steps inside librbd, so after a crash the image may exist but be incomplete (a
/// clone without its parent link reads as blank). It was never handed out — the journal
/// entry has no image id — so it is removed and made again rather than trusted.
pub(super) fn discard_unfinished(place: &Place<'_>, image: &str) -> Result<()> {
    if let Some(img) = place.open(image)? {
        for snap in img
            .snap_list()
            .map_err(|e| Error::ceph("list snapshots of an unfinished image", e))?
        {
            ok_if_missing(
                img.snap_remove(&snap.name),
                "remove a snapshot of an unfinished image",
            )?;
        }
    }
    let mut fenced = 0;
    for attempt in 0..8 {
        match rbd::remove(&place.io, image) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Busy && attempt == 0 => {
                fenced = fence_watchers(place, image)?;
                if fenced == 0 {
                    return Err(still_open(image, &e));
                }
            }
            // the OSDs drop a fenced client's watch once they see the new OSD map
            Err(e) if e.kind() == ErrorKind::Busy && attempt < 7 => {
                tracing::debug!(image, fenced, "waiting for the fenced watch to go: {e}");
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            Err(e) if e.kind() == ErrorKind::Busy => {
                // The OSD can keep a watch of a killed client that no blocklist or timeout
                // clears until the placement group re-peers. Move the image aside to free
                // its name; the trash reaper removes it once the watch is gone.
                tracing::warn!(
                    image,
                    "an unfinished image keeps a watch after its client was fenced (a stale \
                     OSD watch, cleared when the PG re-peers); moving it to the trash: {e}"
                );
                return move_aside(place, image);
            }
            Err(e) => return Err(Error::ceph("remove an unfinished image", e)),
        }
    }
    Ok(())
}

pub(super) fn still_open(image: &str, e: &rados::Error) -> Error {
    Error::Aborted(format!(
        "image {image} from an interrupted attempt is still open by another client; retry: {e}"
    ))
}

/// Blocklists the clients other than this process that still watch `image`, an image of
/// an unfinished journal entry: it was never handed out, so only a driver instance that
/// was making it can have it open, and that instance is dead or stuck. Ceph normally drops
/// a dead client's watch after 30 s, but keeps it for good when the client died while
/// registering it; fencing drops it at once. Returns how many clients were fenced.
pub(super) fn fence_watchers(place: &Place<'_>, image: &str) -> Result<usize> {
    let Some(img) = place.open_read_only(image)? else {
        return Ok(0);
    };
    let watchers = img
        .watchers()
        .map_err(|e| Error::ceph("list the clients of an unfinished image", e))?;
    drop(img);
    let me = i64::try_from(place.cluster.instance_id()).unwrap_or(-1);
    let mut fenced = 0;
    for w in watchers.iter().filter(|w| w.id != me) {
        let cmd = serde_json::json!({
            "prefix": "osd blocklist",
            "blocklistop": "add",
            "addr": w.addr,
            "expire": 3600.0,
        });
        place
            .cluster
            .mon_command(&cmd.to_string(), &[])
            .map_err(|e| Error::ceph(format!("fence client.{} ({})", w.id, w.addr), e))?;
        tracing::warn!(
            image,
            client = w.id,
            addr = %w.addr,
            "fenced (blocklisted for 1 h) a client that still had an unfinished image open"
        );
        fenced += 1;
    }
    Ok(fenced)
}

/// Best-effort undo of a creation that failed (not crashed): whatever this name got so
/// far is removed, so a claim deleted before a retry leaks nothing.
pub(super) fn rollback(
    place: &Place<'_>,
    journal: &Journal<'_>,
    entry: &Entry,
    name: &str,
    images: &[&str],
    temp_snap: Option<(&str, &str)>,
) {
    rollback_images(place, images);
    if let Some((src, snap)) = temp_snap {
        if let Ok(Some(img)) = place.open(src) {
            let _ = img.snap_remove(snap);
        }
    }
    if let Err(e) = journal.release(&entry.uuid, Some(name)) {
        tracing::warn!(name, "rollback could not release the journal entry: {e}");
    }
}

pub(super) fn rollback_images(place: &Place<'_>, images: &[&str]) {
    for image in images {
        if let Ok(Some(img)) = place.open(image) {
            let _ = img.snap_remove(image);
            drop(img);
            if let Err(e) = rbd::remove(&place.io, image) {
                if e.kind() != ErrorKind::NotFound {
                    tracing::warn!(
                        image,
                        "rollback could not remove the image (the reaper or a retry will): {e}"
                    );
                    if let Err(e) = move_aside(place, image) {
                        tracing::warn!(
                            image,
                            "rollback could not move the image aside: {}",
                            e.message()
                        );
                    }
                }
            }
        }
    }
}

/// The journal keys a new volume entry starts with (the name key is added by the journal).
pub(super) fn new_volume_attrs(spec: &CreateSpec<'_>, uuid: &str) -> Attrs {
    let mut attrs = Attrs::new();
    attrs.insert(DRIVER_KEY.to_string(), "ferroceph".to_string());
    if let Some(ns) = &spec.params.pvc_namespace {
        attrs.insert(journal::OWNER.to_string(), ns.clone());
    }
    if !spec.source_id.is_empty() {
        attrs.insert(SOURCE_KEY.to_string(), spec.source_id.to_string());
    }
    attrs.insert(
        journal::IMAGE_NAME.to_string(),
        format!("{}{uuid}", spec.params.vol_prefix),
    );
    attrs
}

/// The common case of a blank volume under a name never seen before, in as few sequential
/// round trips as the Ceph work allows: the name is claimed without a lookup first (one
/// guarded write), then the journal entry and the image are written at the same time. Both
/// are trusted only once the image id lands in the entry, so a crash in between leaves an
/// unfinished entry the next call finds and remakes. None: the name is known already (or
/// this pool has no journal yet), take the general path.
pub(super) fn create_blank_fresh(
    place: &Place<'_>,
    journal: &Journal<'_>,
    spec: &CreateSpec<'_>,
) -> Result<Option<Created>> {
    let opts = image_options(spec.params, spec.size)?;
    let uuid = uuid::Uuid::new_v4().to_string();
    let t0 = std::time::Instant::now();
    match journal
        .claim(spec.name, &uuid)
        .map_err(|e| jerr("journal reserve", e))?
    {
        Claim::Claimed => {}
        Claim::Taken | Claim::NoDirectory => return Ok(None),
    }
    crash_point("create.claimed");
    let attrs = new_volume_attrs(spec, &uuid);
    let entry = Entry {
        uuid,
        pool_id: None,
        attrs,
    };
    let image = entry_image(&entry, &spec.params.vol_prefix);
    let entry_written = journal
        .start_entry(spec.name, &entry.uuid, &entry.attrs)
        .map(|pending| {
            let made = rbd::create(&place.io, &image, &opts);
            // the entry may or may not be written yet when a crash comes here
            crash_point("create.image_made");
            (pending, made)
        });
    let (entry_written, image_made) = match entry_written {
        Ok((pending, made)) => (pending.finish(), made),
        Err(e) => {
            rollback(place, journal, &entry, spec.name, &[], None);
            return Err(jerr("journal reserve", e));
        }
    };
    let image_made: Result<(), (ErrorKind, Error)> =
        image_made.map_err(|e| (e.kind(), fresh_image_error(&image, &e)));
    let ours: &[&str] = match &image_made {
        // someone else's image under this name (a uuid collision): never touch it
        Err((ErrorKind::AlreadyExists, _)) => &[],
        _ => &[image.as_str()],
    };
    match entry_written {
        Ok(()) => {}
        Err(JournalError::UuidClash(_)) => {
            // The uuid belongs to another entry; the journal already dropped our claim.
            rollback_images(place, ours);
            return Ok(None);
        }
        Err(e) => {
            rollback(place, journal, &entry, spec.name, ours, None);
            return Err(jerr("journal reserve", e));
        }
    }
    if let Err((_, e)) = image_made {
        rollback(place, journal, &entry, spec.name, ours, None);
        return Err(e);
    }
    crash_point("create.image");
    let t_made = t0.elapsed();
    let finished = finish_volume(place, journal, &entry, &image, spec);
    tracing::debug!(
        image,
        claimed_and_made_ms = t_made.as_secs_f64() * 1e3,
        total_ms = t0.elapsed().as_secs_f64() * 1e3,
        "blank volume created"
    );
    match finished {
        Ok(size) => Ok(Some(Created {
            uuid: entry.uuid,
            image,
            size,
        })),
        Err(e) => {
            rollback(place, journal, &entry, spec.name, &[&image], None);
            Err(e)
        }
    }
}

pub fn create_volume(place: &Place<'_>, spec: &CreateSpec<'_>) -> Result<Created> {
    let journal = place.volumes();
    if spec.source == Source::Blank {
        if let Some(created) = create_blank_fresh(place, &journal, spec)? {
            return Ok(created);
        }
    }
    let mut found = find_volume(&journal, spec)?;
    if let Some(entry) = &found {
        match existing_volume(place, &journal, entry, spec)? {
            Existing::Done(created) => return Ok(created),
            Existing::Deleted => found = None,
            Existing::Unfinished => {}
        }
    }
    // Everything that can make the request fail for good is checked before reserving.
    let parent = plan_source(place, spec)?;
    let resumed = found.is_some();
    let entry = match found {
        Some(entry) => entry,
        None => {
            let mut attrs = new_volume_attrs(spec, "");
            attrs.remove(journal::IMAGE_NAME);
            reserve_new(&journal, spec.name, &spec.params.vol_prefix, attrs)?
        }
    };
    crash_point("create.reserved");
    let image = entry_image(&entry, &spec.params.vol_prefix);
    let built = (|| {
        if resumed {
            discard_unfinished(place, &image)?;
        }
        let made = match &parent {
            None => rbd::create(&place.io, &image, &image_options(spec.params, spec.size)?),
            Some(Parent::Snapshot(snap_image)) => rbd::clone(
                &place.io,
                snap_image,
                snap_image,
                &place.io,
                &image,
                &clone_options(spec.params)?,
            ),
            Some(Parent::Volume(src)) => clone_volume(place, src, &image, spec)?,
        };
        made.map_err(|e| fresh_image_error(&image, &e))?;
        crash_point("create.image");
        finish_volume(place, &journal, &entry, &image, spec)
    })();
    match built {
        Ok(size) => Ok(Created {
            uuid: entry.uuid,
            image,
            size,
        }),
        Err(e) => {
            let temp = match &parent {
                Some(Parent::Volume(src)) => Some((src.as_str(), image.as_str())),
                _ => None,
            };
            rollback(place, &journal, &entry, spec.name, &[&image], temp);
            Err(e)
        }
    }
}

/// What a journal entry found for a CreateVolume's name stands for.
pub(super) enum Existing {
    /// A volume that exists and fits the request: the answer.
    Done(Created),
    /// A finished volume whose image is gone by name: a delete killed after moving the
    /// image to the trash and before releasing the entry (or someone removed it). The
    /// entry has been released, so the name gets a new entry and handle rather than an
    /// image remade under the deleted volume's handle.
    Deleted,
    /// An attempt that did not finish: made again under the same entry.
    Unfinished,
}

pub(super) fn existing_volume(
    place: &Place<'_>,
    journal: &Journal<'_>,
    entry: &Entry,
    spec: &CreateSpec<'_>,
) -> Result<Existing> {
    let image = entry_image(entry, &spec.params.vol_prefix);
    if entry.attr(journal::IMAGE_ID).is_some() {
        let Some(img) = place.open_read_only(&image)? else {
            journal
                .release(&entry.uuid, Some(spec.name))
                .map_err(|e| jerr("release a deleted volume's journal entry", e))?;
            return Ok(Existing::Deleted);
        };
        check_source(entry, spec)?;
        let size = img.size().map_err(|e| Error::ceph("stat image", e))?;
        if !validate::size_fits(size, spec.range) {
            return Err(Error::AlreadyExists(format!(
                "volume {:?} already exists with size {size}, which does not fit the requested range",
                spec.name
            )));
        }
        return Ok(Existing::Done(Created {
            uuid: entry.uuid.clone(),
            image,
            size,
        }));
    }
    check_source(entry, spec)?;
    if entry.attr(DRIVER_KEY).is_none() {
        if let Some(created) = adopt_volume(place, journal, entry, &image, spec)? {
            return Ok(Existing::Done(created));
        }
    }
    Ok(Existing::Unfinished)
}

pub(super) fn check_source(entry: &Entry, spec: &CreateSpec<'_>) -> Result<()> {
    let recorded_source = entry.attr(SOURCE_KEY).unwrap_or("");
    if recorded_source != spec.source_id {
        return Err(Error::AlreadyExists(format!(
            "volume {:?} already exists with another content source ({:?})",
            spec.name, recorded_source
        )));
    }
    Ok(())
}

/// Takes over ceph-csi's entry without an image id: its image (if it exists) is the
/// volume, possibly in use, so its id is recorded and it is handed out as it is. None when
/// the image does not exist (ceph-csi never made it): then it is made as usual.
pub(super) fn adopt_volume(
    place: &Place<'_>,
    journal: &Journal<'_>,
    entry: &Entry,
    image: &str,
    spec: &CreateSpec<'_>,
) -> Result<Option<Created>> {
    let Some(img) = place.open_read_only(image)? else {
        return Ok(None);
    };
    let size = img.size().map_err(|e| Error::ceph("stat image", e))?;
    if !validate::size_fits(size, spec.range) {
        return Err(Error::AlreadyExists(format!(
            "volume {:?} already exists with size {size}, which does not fit the requested range",
            spec.name
        )));
    }
    let id = img.id().map_err(|e| Error::ceph("read image id", e))?;
    journal
        .set_attrs(&entry.uuid, &[(journal::IMAGE_ID, id.as_str())])
        .map_err(|e| jerr("journal record", e))?;
    tracing::info!(
        image,
        "adopted a ceph-csi journal entry that had no image id"
    );
    Ok(Some(Created {
        uuid: entry.uuid.clone(),
        image: image.to_string(),
        size,
    }))
}
