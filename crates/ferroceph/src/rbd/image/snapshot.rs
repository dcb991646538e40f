//! CreateSnapshot and the snapshot entries it reads back.

use super::*;

pub struct SnapshotInfo {
    pub uuid: String,
    pub size: u64,
    pub created_nanos: i64,
    pub source_image: String,
}

pub(super) fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
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
        source_image: attrs.get(journal::SOURCE).cloned().unwrap_or_default(),
    }
}

/// A snapshot's size and creation time: from our journal keys, or for a snapshot ceph-csi
/// made (which has none of them) from the snapshot on its image.
pub fn read_snapshot_info(place: &Place<'_>, uuid: &str, attrs: &Attrs) -> SnapshotInfo {
    let mut info = snapshot_info(uuid, attrs);
    if attrs.contains_key(SIZE_KEY) && attrs.contains_key(CREATED_KEY) {
        return info;
    }
    let image = attrs
        .get(journal::IMAGE_NAME)
        .cloned()
        .unwrap_or_else(|| format!("{}{uuid}", crate::rbd::params::DEFAULT_SNAP_PREFIX));
    let Ok(Some(img)) = place.open_read_only(&image) else {
        return info;
    };
    match img.snap_list() {
        Ok(snaps) => {
            if let Some(snap) = snaps.iter().find(|s| s.name == image) {
                info.size = snap.size;
                match img.snap_timestamp_nanos(snap.id) {
                    Ok(t) => info.created_nanos = t,
                    Err(e) => tracing::debug!(image, "snapshot time unknown: {e}"),
                }
            }
        }
        Err(e) => tracing::debug!(image, "snapshot size unknown: {e}"),
    }
    info
}

/// Takes over ceph-csi's snapshot entry without an image id (ceph-csi died before recording
/// it): its clone image holds the snapshot's data and may have restored volumes, so it is
/// finished the way ceph-csi would (snapshot on the clone, temporary snapshot on the source
/// gone, id recorded), never remade. None when the clone does not exist: made as usual.
pub(super) fn adopt_snapshot(
    place: &Place<'_>,
    journal: &Journal<'_>,
    entry: &Entry,
    source_image: &str,
    prefix: &str,
) -> Result<Option<SnapshotInfo>> {
    let image = entry_image(entry, prefix);
    let Some(img) = place.open_read_only(&image)? else {
        return Ok(None);
    };
    let snaps = img
        .snap_list()
        .map_err(|e| Error::ceph("list snapshots of the snapshot image", e))?;
    let id = img.id().map_err(|e| Error::ceph("read image id", e))?;
    drop(img);
    if !snaps.iter().any(|s| s.name == image) {
        let img = place
            .open(&image)?
            .ok_or_else(|| Error::Aborted(format!("snapshot image {image} vanished; retry")))?;
        ok_if_exists(img.snap_create(&image), "snapshot the snapshot image")?;
    }
    if let Some(src) = place.open_read_only(source_image)? {
        let leftover = src
            .snap_list()
            .map_err(|e| Error::ceph("list snapshots of the source volume", e))?
            .iter()
            .any(|s| s.name == image);
        drop(src);
        if leftover {
            if let Some(src) = place.open(source_image)? {
                ok_if_missing(src.snap_remove(&image), "remove the temporary snapshot")?;
            }
        }
    }
    journal
        .set_attrs(&entry.uuid, &[(journal::IMAGE_ID, id.as_str())])
        .map_err(|e| jerr("journal record", e))?;
    tracing::info!(
        image,
        "adopted a ceph-csi snapshot entry that had no image id"
    );
    Ok(Some(read_snapshot_info(place, &entry.uuid, &entry.attrs)))
}

/// ceph-csi's snapshot layout: a temporary snapshot of the source, a clone of it named
/// `csi-snap-<uuid>` that keeps the data when the source goes away, and a snapshot of the
/// same name on that clone that restores clone from.
pub fn create_snapshot(
    place: &Place<'_>,
    name: &str,
    source_image: &str,
    prefix: &str,
) -> Result<SnapshotInfo> {
    let journal = place.snaps();
    let found = find(&journal, name)?;
    if let Some(entry) = &found {
        if entry.attr(journal::SOURCE) != Some(source_image) {
            return Err(Error::AlreadyExists(format!(
                "snapshot {name:?} already exists for another source volume ({:?})",
                entry.attr(journal::SOURCE).unwrap_or("")
            )));
        }
        if entry.attr(journal::IMAGE_ID).is_some()
            && place.open_read_only(&entry_image(entry, prefix))?.is_some()
        {
            return Ok(read_snapshot_info(place, &entry.uuid, &entry.attrs));
        }
        if entry.attr(CREATED_KEY).is_none() {
            if let Some(info) = adopt_snapshot(place, &journal, entry, source_image, prefix)? {
                return Ok(info);
            }
        }
    }
    // Read-only until a write is due: an open for writing registers a watch, and a watch
    // left by a crashed process stalls other writers until Ceph expires it.
    let src = place.open_read_only(source_image)?;
    if let Some(src) = &src {
        refuse_encrypted(None, Some(src), &format!("volume image {source_image}"))?;
    }
    let snap_image_known = found.as_ref().map(|e| entry_image(e, prefix));
    // An unfinished snapshot image from an interrupted attempt is made again (see
    // discard_unfinished): it was never handed out.
    if let Some(i) = &snap_image_known {
        discard_unfinished(place, i)?;
    }
    let clone_exists = match &snap_image_known {
        Some(i) => place.open_read_only(i)?.is_some(),
        None => false,
    };
    if !clone_exists {
        // Nothing to resume from without the source: fail before reserving anything.
        let Some(src) = &src else {
            if let Some(entry) = &found {
                rollback(place, &journal, entry, name, &[], None);
            }
            return Err(Error::not_found(format!(
                "source volume image {source_image} does not exist"
            )));
        };
        check_snapshot_source(place, src, source_image)?;
    }
    let entry = match found {
        Some(entry) => entry,
        None => {
            let mut attrs = Attrs::new();
            attrs.insert(journal::SOURCE.to_string(), source_image.to_string());
            attrs.insert(CREATED_KEY.to_string(), now_nanos().to_string());
            reserve_new(&journal, name, prefix, attrs)?
        }
    };
    crash_point("snapshot.reserved");
    let snap_image = entry_image(&entry, prefix);
    let built = build_snapshot(
        place,
        &journal,
        &entry,
        source_image,
        &snap_image,
        src.is_some(),
        clone_exists,
    );
    match built {
        Ok(size_s) => {
            let mut attrs = entry.attrs.clone();
            attrs.insert(SIZE_KEY.to_string(), size_s);
            Ok(snapshot_info(&entry.uuid, &attrs))
        }
        Err(e) => {
            rollback(
                place,
                &journal,
                &entry,
                name,
                &[&snap_image],
                Some((source_image, &snap_image)),
            );
            Err(e)
        }
    }
}

/// A source volume image must have layering and sit on a clone chain short enough to grow.
fn check_snapshot_source(place: &Place<'_>, src: &Image, source_image: &str) -> Result<()> {
    let features = src
        .features()
        .map_err(|e| Error::ceph("read source features", e))?;
    if features & rbd::FEATURE_LAYERING == 0 {
        return Err(Error::precondition(format!(
            "image {source_image} lacks the layering feature, which snapshots need; add layering to imageFeatures"
        )));
    }
    if chain_depth(place, src)? + 1 >= HARD_CLONE_DEPTH {
        flatten_async(place, source_image);
        return Err(Error::Aborted(format!(
            "volume image {source_image} sits on a clone chain of {HARD_CLONE_DEPTH} images; it is being flattened, retry shortly"
        )));
    }
    Ok(())
}

/// The steps of a snapshot after its entry is reserved: temporary snapshot on the source,
/// clone into the snapshot image, temporary snapshot removed, snapshot on the clone, size
/// and id recorded. Returns the size as recorded.
fn build_snapshot(
    place: &Place<'_>,
    journal: &Journal<'_>,
    entry: &Entry,
    source_image: &str,
    snap_image: &str,
    has_source: bool,
    clone_exists: bool,
) -> Result<String> {
    let src = match has_source {
        true => place.open(source_image)?,
        false => None,
    };
    if let Some(src) = &src {
        if !clone_exists {
            ok_if_exists(src.snap_create(snap_image), "snapshot the source volume")?;
            crash_point("snapshot.tempsnap");
            let opts = CloneOptions {
                features: Some(rbd::FEATURE_LAYERING | rbd::FEATURE_DEEP_FLATTEN),
                ..CloneOptions::default()
            };
            rbd::clone(
                &place.io,
                source_image,
                snap_image,
                &place.io,
                snap_image,
                &opts,
            )
            .map_err(|e| fresh_image_error(snap_image, &e))?;
            crash_point("snapshot.cloned");
        }
        ok_if_missing(src.snap_remove(snap_image), "remove the temporary snapshot")?;
    }
    let img = place
        .open(snap_image)?
        .ok_or_else(|| Error::Aborted(format!("snapshot image {snap_image} vanished; retry")))?;
    ok_if_exists(img.snap_create(snap_image), "snapshot the snapshot image")?;
    let size = img
        .size()
        .map_err(|e| Error::ceph("stat snapshot image", e))?;
    let id = img.id().map_err(|e| Error::ceph("read image id", e))?;
    if chain_depth(place, &img)? >= SOFT_CLONE_DEPTH {
        flatten_async(place, snap_image);
    }
    let size_s = size.to_string();
    journal
        .set_attrs(
            &entry.uuid,
            &[
                (SIZE_KEY, size_s.as_str()),
                (journal::IMAGE_ID, id.as_str()),
            ],
        )
        .map_err(|e| jerr("journal record", e))?;
    crash_point("snapshot.recorded");
    Ok(size_s)
}
