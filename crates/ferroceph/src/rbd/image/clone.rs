//! Volumes with a content source: planning the source (snapshot or volume, encryption,
//! clone depth), cloning through a temporary snapshot, and finishing a new volume.

use super::*;

/// Length of the parent chain above `img` (0 for an image that is not a clone).
pub(super) fn chain_depth(place: &Place<'_>, img: &Image) -> Result<usize> {
    let mut depth = 0;
    let mut parent = img
        .parent()
        .map_err(|e| Error::ceph("read image parent", e))?;
    while let Some(p) = parent {
        depth += 1;
        if depth > HARD_CLONE_DEPTH * 2 {
            break;
        }
        let io = place
            .cluster
            .ioctx_by_id(p.pool_id, &p.pool_namespace)
            .map_err(|e| Error::ceph("open parent pool", e))?;
        let next = match rbd::Image::open_by_id_read_only(&io, &p.image_id) {
            Ok(img) => img
                .parent()
                .map_err(|e| Error::ceph("read image parent", e))?,
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(Error::ceph("open parent image", e)),
        };
        parent = next;
    }
    Ok(depth)
}

/// Asks the mgr to flatten `image` in the background.
pub(super) fn flatten_async(place: &Place<'_>, image: &str) {
    let spec = image_spec(&place.io, image);
    let cmd = serde_json::json!({"prefix": "rbd task add flatten", "image_spec": spec}).to_string();
    if let Err(e) = place.cluster.mgr_command(&cmd, &[]) {
        tracing::warn!(image, "cannot queue a background flatten: {e}");
    }
}

/// Image metadata keys where ceph-csi records that an image is (to be) LUKS-encrypted:
/// the current one and the one before v3.4.
pub(super) const META_ENCRYPTED: [&str; 2] =
    ["rbd.csi.ceph.com/encrypted", ".rbd.csi.ceph.com/encrypted"];

/// FailedPrecondition for a ceph-csi encrypted volume or snapshot (a KMS in its journal
/// entry, or an encryption state in the image's metadata): its data is a LUKS container
/// that this driver cannot open yet, so it must not be snapshotted, cloned or staged.
pub(crate) fn refuse_encrypted(
    attrs: Option<&Attrs>,
    img: Option<&Image>,
    what: &str,
) -> Result<()> {
    let kms = attrs
        .and_then(|a| a.get(journal::ENCRYPT_KMS))
        .filter(|k| !k.is_empty());
    let state = match img {
        Some(img) => {
            let mut found = None;
            for key in META_ENCRYPTED {
                match img.metadata_get(key) {
                    Ok(Some(v)) if !v.is_empty() => {
                        found = Some(v);
                        break;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::ceph("read the image's encryption state", e)),
                }
            }
            found
        }
        None => None,
    };
    if kms.is_none() && state.is_none() {
        return Ok(());
    }
    let how = match (kms, state) {
        (Some(k), _) => format!("KMS {k:?}"),
        (None, Some(s)) => format!("state {s:?}"),
        (None, None) => String::new(),
    };
    Err(Error::precondition(format!(
        "{what} is encrypted by ceph-csi ({how}); ferroceph does not implement encryption yet, \
         so it cannot snapshot, clone or stage it: keep ceph-csi for encrypted volumes"
    )))
}

/// The image (and for snapshots the same-named snapshot on it) a new volume clones.
pub(super) enum Parent {
    Snapshot(String),
    Volume(String),
}

/// Checks the content source: it exists, fits in the requested size, and its clone chain
/// is short enough to clone from.
pub(super) fn plan_source(place: &Place<'_>, spec: &CreateSpec<'_>) -> Result<Option<Parent>> {
    let (journal, uuid, what, prefix) = match &spec.source {
        Source::Blank => return Ok(None),
        Source::Snapshot(u) => (
            place.snaps(),
            u,
            "snapshot",
            crate::rbd::params::DEFAULT_SNAP_PREFIX,
        ),
        Source::Volume(u) => (
            place.volumes(),
            u,
            "source volume",
            spec.params.vol_prefix.as_str(),
        ),
    };
    let missing = || Error::not_found(format!("{what} {} does not exist", spec.source_id));
    let attrs = journal
        .get(uuid)
        .map_err(|e| jerr("read the source's journal entry", e))?
        .ok_or_else(missing)?;
    if matches!(spec.source, Source::Snapshot(_)) && !attrs.contains_key(journal::IMAGE_ID) {
        return Err(Error::not_found(format!(
            "snapshot {} is not ready (still being created or gone)",
            spec.source_id
        )));
    }
    let image = attrs
        .get(journal::IMAGE_NAME)
        .cloned()
        .unwrap_or_else(|| format!("{prefix}{uuid}"));
    let img = place.open_read_only(&image)?.ok_or_else(missing)?;
    refuse_encrypted(
        Some(&attrs),
        Some(&img),
        &format!("{what} {}", spec.source_id),
    )?;
    let size = img
        .size()
        .map_err(|e| Error::ceph("stat the content source", e))?;
    if spec.size < size {
        return Err(Error::OutOfRange(format!(
            "requested size {} is smaller than the {what} ({size} bytes)",
            spec.size
        )));
    }
    if chain_depth(place, &img)? + 1 >= HARD_CLONE_DEPTH {
        flatten_async(place, &image);
        return Err(Error::Aborted(format!(
            "{what} {} sits on a clone chain of {HARD_CLONE_DEPTH} images; it is being flattened, retry shortly",
            spec.source_id
        )));
    }
    Ok(Some(match spec.source {
        Source::Snapshot(_) => Parent::Snapshot(image),
        _ => Parent::Volume(image),
    }))
}

/// Grows a clone to the requested size, labels the image, and records its id, which marks
/// the journal entry complete.
pub(super) fn finish_volume(
    place: &Place<'_>,
    journal: &Journal<'_>,
    entry: &Entry,
    image: &str,
    spec: &CreateSpec<'_>,
) -> Result<u64> {
    if spec.source == Source::Blank {
        // A blank image made by this call has the requested size and no watchers: its id
        // and labels are written directly instead of opening it (an open and close cost
        // more round trips than the create itself).
        let id = image_id(&place.io, image)?;
        let header = format!("rbd_header.{id}");
        let meta: Vec<(String, &String)> = [
            (META_PVC_NAME, &spec.params.pvc_name),
            (META_PVC_NAMESPACE, &spec.params.pvc_namespace),
            (META_PV_NAME, &spec.params.pv_name),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (format!("metadata_{k}"), v)))
        .collect();
        if !meta.is_empty() {
            let kv: Vec<(&str, &[u8])> = meta
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_bytes()))
                .collect();
            place
                .io
                .omap_set(&header, &kv)
                .map_err(|e| Error::ceph("set image metadata", e))?;
        }
        journal
            .set_attrs(&entry.uuid, &[(journal::IMAGE_ID, id.as_str())])
            .map_err(|e| jerr("journal record", e))?;
        crash_point("create.recorded");
        return Ok(spec.size);
    }
    let img = place.open(image)?.ok_or_else(|| {
        Error::Aborted(format!("image {image} vanished while being created; retry"))
    })?;
    let mut size = img.size().map_err(|e| Error::ceph("stat image", e))?;
    if size < spec.size {
        img.resize(spec.size)
            .map_err(|e| Error::ceph("grow the new volume", e))?;
        size = spec.size;
    }
    for (k, v) in [
        (META_PVC_NAME, &spec.params.pvc_name),
        (META_PVC_NAMESPACE, &spec.params.pvc_namespace),
        (META_PV_NAME, &spec.params.pv_name),
    ] {
        if let Some(v) = v {
            img.metadata_set(k, v)
                .map_err(|e| Error::ceph("set image metadata", e))?;
        }
    }
    if spec.source != Source::Blank {
        let depth = chain_depth(place, &img)?;
        if depth >= SOFT_CLONE_DEPTH {
            flatten_async(place, image);
        }
    }
    let id = img.id().map_err(|e| Error::ceph("read image id", e))?;
    journal
        .set_attrs(&entry.uuid, &[(journal::IMAGE_ID, id.as_str())])
        .map_err(|e| jerr("journal record", e))?;
    crash_point("create.recorded");
    Ok(size)
}

/// Clones a volume through a temporary snapshot named after the new image; with clone
/// format 2 it can be removed right after cloning (Ceph keeps it in the trash namespace
/// while the clone needs it).
pub(super) fn clone_volume(
    place: &Place<'_>,
    src: &str,
    image: &str,
    spec: &CreateSpec<'_>,
) -> Result<rados::Result<()>> {
    let src_img = place.open(src)?.ok_or_else(|| {
        Error::not_found(format!("source volume {} does not exist", spec.source_id))
    })?;
    ok_if_exists(src_img.snap_create(image), "snapshot the source volume")?;
    crash_point("clone.tempsnap");
    let made = rbd::clone(
        &place.io,
        src,
        image,
        &place.io,
        image,
        &clone_options(spec.params)?,
    );
    ok_if_missing(src_img.snap_remove(image), "remove the temporary snapshot")?;
    Ok(made)
}

/// The error for an image this call was making. An image that already exists is never
/// adopted: it could be half made by an interrupted attempt.
pub(super) fn fresh_image_error(image: &str, e: &rados::Error) -> Error {
    match e.kind() {
        ErrorKind::AlreadyExists => {
            Error::Aborted(format!("image {image} appeared while being created; retry"))
        }
        _ => Error::ceph("create the volume image", e.clone()),
    }
}
