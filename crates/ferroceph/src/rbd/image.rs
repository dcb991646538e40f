//! Blocking RBD flows on the cluster: create (blank, from a snapshot, from a volume),
//! snapshot, expand, delete. Each flow is a sequence of idempotent steps recorded in the
//! journal first, so a retry after a crash at any point finishes the work (or undoes it)
//! and never leaves an image or omap key behind.

use crate::ceph::{crash_point, status};
use crate::journal::{self, Attrs, Claim, Entry, Journal, JournalError, Kind, Lookup, TrashLog};
use crate::rbd::params::RbdParams;
use crate::validate;
use csi::v1 as pb;
use rados::rbd::{self, CloneOptions, Image, ImageOptions};
use rados::{Cluster, ErrorKind, IoCtx};
use tonic::Status;

/// Journal key (ours, ignored by ceph-csi) holding the content source of a volume, so a
/// retried CreateVolume can tell a compatible request from a conflicting one.
pub const SOURCE_KEY: &str = "csi.ferroceph.source";
/// Journal key (ours) marking a volume entry this driver wrote. An entry that lacks it and
/// `csi.imageid` was written by ceph-csi (before v3.0 it never recorded the id): its image
/// may hold data and is adopted, never remade as an unfinished one of ours would be.
pub const DRIVER_KEY: &str = "csi.ferroceph.driver";
/// Journal keys of a snapshot: creation time (unix nanoseconds) and size in bytes. Every
/// snapshot entry this driver writes has the creation time; one without it is ceph-csi's.
pub const CREATED_KEY: &str = "csi.ferroceph.created";
pub const SIZE_KEY: &str = "csi.ferroceph.size";

/// Image metadata keys naming the claim, as ceph-csi's `--setmetadata` writes them.
const META_PVC_NAME: &str = "csi.storage.k8s.io/pvc/name";
const META_PVC_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";
const META_PV_NAME: &str = "csi.storage.k8s.io/pv/name";

/// Flatten a new clone (in the background, by the mgr) once its chain is this deep.
pub const SOFT_CLONE_DEPTH: usize = 4;
/// Refuse to add to a chain this deep until flattening has shortened it.
pub const HARD_CLONE_DEPTH: usize = 8;

mod delete;
mod trash;
pub use delete::{delete_snapshot, delete_volume};
use trash::move_aside;
pub(crate) use trash::{next_removal_pass, remove_trashed_in, request_removal};

pub fn jerr(what: &str, e: JournalError) -> Status {
    match e {
        JournalError::Rados(e) => status(what, &e),
        other => Status::internal(format!("{what}: {other}")),
    }
}

/// A pool (and RADOS namespace) on a connected cluster, with its journals.
pub struct Place<'a> {
    pub cluster: &'a Cluster,
    pub io: IoCtx,
    pub pool_id: i64,
    pub instance: String,
}

impl<'a> Place<'a> {
    pub fn by_name(
        cluster: &'a Cluster,
        pool: &str,
        namespace: &str,
        instance: &str,
    ) -> Result<Self, Status> {
        let io = cluster.ioctx(pool, namespace).map_err(|e| match e.kind() {
            ErrorKind::NotFound => Status::invalid_argument(format!(
                "pool {pool:?} does not exist in the cluster; check the StorageClass pool parameter"
            )),
            _ => status(&format!("open pool {pool}"), &e),
        })?;
        let pool_id = io.pool_id();
        Ok(Place {
            cluster,
            io,
            pool_id,
            instance: instance.to_string(),
        })
    }

    /// None when the pool no longer exists.
    pub fn by_id(
        cluster: &'a Cluster,
        pool_id: i64,
        namespace: &str,
        instance: &str,
    ) -> Result<Option<Self>, Status> {
        match cluster.ioctx_by_id(pool_id, namespace) {
            Ok(io) => Ok(Some(Place {
                cluster,
                io,
                pool_id,
                instance: instance.to_string(),
            })),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(status(&format!("open pool id {pool_id}"), &e)),
        }
    }

    pub fn volumes(&self) -> Journal<'_> {
        Journal::new(&self.io, Kind::Volume, &self.instance)
    }

    pub fn snaps(&self) -> Journal<'_> {
        Journal::new(&self.io, Kind::Snapshot, &self.instance)
    }

    pub(crate) fn trash_log(&self) -> TrashLog<'_> {
        TrashLog::new(&self.io, &self.instance)
    }

    fn open(&self, image: &str) -> Result<Option<Image>, Status> {
        self.open_with(image, false)
    }

    fn open_read_only(&self, image: &str) -> Result<Option<Image>, Status> {
        self.open_with(image, true)
    }

    fn open_with(&self, image: &str, read_only: bool) -> Result<Option<Image>, Status> {
        let opened = if read_only {
            Image::open_read_only(&self.io, image)
        } else {
            Image::open(&self.io, image)
        };
        match opened {
            Ok(img) => Ok(Some(img)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(status(&format!("open image {image}"), &e)),
        }
    }
}

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

fn image_options(params: &RbdParams, size: u64) -> Result<ImageOptions, Status> {
    let features = rbd::parse_features(&params.features.join(","))
        .map_err(|e| Status::invalid_argument(format!("imageFeatures: {e}")))?;
    let mut o = ImageOptions::new(size);
    o.features = features;
    o.stripe_unit = params.stripe_unit;
    o.stripe_count = params.stripe_count;
    o.data_pool = params.data_pool.clone();
    if let Some(os) = params.object_size {
        o.set_object_size(os)
            .map_err(|e| Status::invalid_argument(format!("objectSize: {e}")))?;
    }
    Ok(o)
}

fn clone_options(params: &RbdParams) -> Result<CloneOptions, Status> {
    let o = image_options(params, 0)?;
    Ok(CloneOptions {
        features: Some(o.features),
        order: o.order,
        stripe_unit: o.stripe_unit,
        stripe_count: o.stripe_count,
        data_pool: o.data_pool,
        clone_format: 2,
    })
}

fn ok_if_exists(r: rados::Result<()>, what: &str) -> Result<(), Status> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(status(what, &e)),
    }
}

fn ok_if_missing(r: rados::Result<()>, what: &str) -> Result<(), Status> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(status(what, &e)),
    }
}

/// Looks `name` up, clearing a dangling directory key left by a crash.
fn find(journal: &Journal<'_>, name: &str) -> Result<Option<Entry>, Status> {
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
fn find_volume(journal: &Journal<'_>, spec: &CreateSpec<'_>) -> Result<Option<Entry>, Status> {
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
fn reserve_new(
    journal: &Journal<'_>,
    name: &str,
    prefix: &str,
    mut attrs: Attrs,
) -> Result<Entry, Status> {
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
    Err(Status::internal(
        "could not find a free uuid after 5 attempts",
    ))
}

/// Removes an image an interrupted attempt left behind. Creating or cloning an image takes
/// several steps inside librbd, so after a crash the image may exist but be incomplete (a
/// clone without its parent link reads as blank). It was never handed out — the journal
/// entry has no image id — so it is removed and made again rather than trusted.
fn discard_unfinished(place: &Place<'_>, image: &str) -> Result<(), Status> {
    if let Some(img) = place.open(image)? {
        for snap in img
            .snap_list()
            .map_err(|e| status("list snapshots of an unfinished image", &e))?
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
                return Ok(move_aside(place, image)?);
            }
            Err(e) => return Err(status("remove an unfinished image", &e)),
        }
    }
    Ok(())
}

fn still_open(image: &str, e: &rados::Error) -> Status {
    Status::aborted(format!(
        "image {image} from an interrupted attempt is still open by another client; retry: {e}"
    ))
}

/// Blocklists the clients other than this process that still watch `image`, an image of
/// an unfinished journal entry: it was never handed out, so only a driver instance that
/// was making it can have it open, and that instance is dead or stuck. Ceph normally drops
/// a dead client's watch after 30 s, but keeps it for good when the client died while
/// registering it; fencing drops it at once. Returns how many clients were fenced.
fn fence_watchers(place: &Place<'_>, image: &str) -> Result<usize, Status> {
    let Some(img) = place.open_read_only(image)? else {
        return Ok(0);
    };
    let watchers = img
        .watchers()
        .map_err(|e| status("list the clients of an unfinished image", &e))?;
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
            .map_err(|e| status(&format!("fence client.{} ({})", w.id, w.addr), &e))?;
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
fn rollback(
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

fn rollback_images(place: &Place<'_>, images: &[&str]) {
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

fn entry_image(entry: &Entry, prefix: &str) -> String {
    entry
        .attr(journal::IMAGE_NAME)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{prefix}{}", entry.uuid))
}

/// The id of `image`, read from the pool's `rbd_directory` (`name_<image>` holds the id as
/// a length-prefixed string) in one round trip instead of opening the image.
fn image_id(io: &IoCtx, image: &str) -> Result<String, Status> {
    let key = format!("name_{image}");
    let found = io
        .omap_get("rbd_directory", &[key.as_str()])
        .map_err(|e| status("read the image directory", &e))?;
    let raw = found.get(&key).ok_or_else(|| {
        Status::aborted(format!("image {image} vanished while being created; retry"))
    })?;
    let len = raw
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .unwrap_or(usize::MAX);
    raw.get(4..4usize.saturating_add(len))
        .and_then(|b| std::str::from_utf8(b).ok())
        .map(str::to_string)
        .ok_or_else(|| Status::internal(format!("rbd_directory entry of {image} is malformed")))
}

/// Length of the parent chain above `img` (0 for an image that is not a clone).
fn chain_depth(place: &Place<'_>, img: &Image) -> Result<usize, Status> {
    let mut depth = 0;
    let mut parent = img.parent().map_err(|e| status("read image parent", &e))?;
    while let Some(p) = parent {
        depth += 1;
        if depth > HARD_CLONE_DEPTH * 2 {
            break;
        }
        let io = place
            .cluster
            .ioctx_by_id(p.pool_id, &p.pool_namespace)
            .map_err(|e| status("open parent pool", &e))?;
        let next = match rbd::Image::open_by_id_read_only(&io, &p.image_id) {
            Ok(img) => img.parent().map_err(|e| status("read image parent", &e))?,
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(status("open parent image", &e)),
        };
        parent = next;
    }
    Ok(depth)
}

/// Asks the mgr to flatten `image` in the background.
fn flatten_async(place: &Place<'_>, image: &str) {
    let spec = image_spec(&place.io, image);
    let cmd = serde_json::json!({"prefix": "rbd task add flatten", "image_spec": spec}).to_string();
    if let Err(e) = place.cluster.mgr_command(&cmd, &[]) {
        tracing::warn!(image, "cannot queue a background flatten: {e}");
    }
}

fn image_spec(io: &IoCtx, image: &str) -> String {
    if io.namespace().is_empty() {
        format!("{}/{image}", io.pool_name())
    } else {
        format!("{}/{}/{image}", io.pool_name(), io.namespace())
    }
}

/// The journal keys a new volume entry starts with (the name key is added by the journal).
fn new_volume_attrs(spec: &CreateSpec<'_>, uuid: &str) -> Attrs {
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
fn create_blank_fresh(
    place: &Place<'_>,
    journal: &Journal<'_>,
    spec: &CreateSpec<'_>,
) -> Result<Option<Created>, Status> {
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
    let image_made: Result<(), (ErrorKind, Status)> =
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

pub fn create_volume(place: &Place<'_>, spec: &CreateSpec<'_>) -> Result<Created, Status> {
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
enum Existing {
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

fn existing_volume(
    place: &Place<'_>,
    journal: &Journal<'_>,
    entry: &Entry,
    spec: &CreateSpec<'_>,
) -> Result<Existing, Status> {
    let image = entry_image(entry, &spec.params.vol_prefix);
    if entry.attr(journal::IMAGE_ID).is_some() {
        let Some(img) = place.open_read_only(&image)? else {
            journal
                .release(&entry.uuid, Some(spec.name))
                .map_err(|e| jerr("release a deleted volume's journal entry", e))?;
            return Ok(Existing::Deleted);
        };
        check_source(entry, spec)?;
        let size = img.size().map_err(|e| status("stat image", &e))?;
        if !validate::size_fits(size, spec.range) {
            return Err(Status::already_exists(format!(
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

fn check_source(entry: &Entry, spec: &CreateSpec<'_>) -> Result<(), Status> {
    let recorded_source = entry.attr(SOURCE_KEY).unwrap_or("");
    if recorded_source != spec.source_id {
        return Err(Status::already_exists(format!(
            "volume {:?} already exists with another content source ({:?})",
            spec.name, recorded_source
        )));
    }
    Ok(())
}

/// Takes over ceph-csi's entry without an image id: its image (if it exists) is the
/// volume, possibly in use, so its id is recorded and it is handed out as it is. None when
/// the image does not exist (ceph-csi never made it): then it is made as usual.
fn adopt_volume(
    place: &Place<'_>,
    journal: &Journal<'_>,
    entry: &Entry,
    image: &str,
    spec: &CreateSpec<'_>,
) -> Result<Option<Created>, Status> {
    let Some(img) = place.open_read_only(image)? else {
        return Ok(None);
    };
    let size = img.size().map_err(|e| status("stat image", &e))?;
    if !validate::size_fits(size, spec.range) {
        return Err(Status::already_exists(format!(
            "volume {:?} already exists with size {size}, which does not fit the requested range",
            spec.name
        )));
    }
    let id = img.id().map_err(|e| status("read image id", &e))?;
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

/// Image metadata keys where ceph-csi records that an image is (to be) LUKS-encrypted:
/// the current one and the one before v3.4.
const META_ENCRYPTED: [&str; 2] = ["rbd.csi.ceph.com/encrypted", ".rbd.csi.ceph.com/encrypted"];

/// FailedPrecondition for a ceph-csi encrypted volume or snapshot (a KMS in its journal
/// entry, or an encryption state in the image's metadata): its data is a LUKS container
/// that this driver cannot open yet, so it must not be snapshotted, cloned or staged.
pub(crate) fn refuse_encrypted(
    attrs: Option<&Attrs>,
    img: Option<&Image>,
    what: &str,
) -> Result<(), Status> {
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
                    Err(e) => return Err(status("read the image's encryption state", &e)),
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
    Err(Status::failed_precondition(format!(
        "{what} is encrypted by ceph-csi ({how}); ferroceph does not implement encryption yet, \
         so it cannot snapshot, clone or stage it: keep ceph-csi for encrypted volumes"
    )))
}

/// The image (and for snapshots the same-named snapshot on it) a new volume clones.
enum Parent {
    Snapshot(String),
    Volume(String),
}

/// Checks the content source: it exists, fits in the requested size, and its clone chain
/// is short enough to clone from.
fn plan_source(place: &Place<'_>, spec: &CreateSpec<'_>) -> Result<Option<Parent>, Status> {
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
    let missing = || Status::not_found(format!("{what} {} does not exist", spec.source_id));
    let attrs = journal
        .get(uuid)
        .map_err(|e| jerr("read the source's journal entry", e))?
        .ok_or_else(missing)?;
    if matches!(spec.source, Source::Snapshot(_)) && !attrs.contains_key(journal::IMAGE_ID) {
        return Err(Status::not_found(format!(
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
        .map_err(|e| status("stat the content source", &e))?;
    if spec.size < size {
        return Err(Status::out_of_range(format!(
            "requested size {} is smaller than the {what} ({size} bytes)",
            spec.size
        )));
    }
    if chain_depth(place, &img)? + 1 >= HARD_CLONE_DEPTH {
        flatten_async(place, &image);
        return Err(Status::aborted(format!(
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
fn finish_volume(
    place: &Place<'_>,
    journal: &Journal<'_>,
    entry: &Entry,
    image: &str,
    spec: &CreateSpec<'_>,
) -> Result<u64, Status> {
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
                .map_err(|e| status("set image metadata", &e))?;
        }
        journal
            .set_attrs(&entry.uuid, &[(journal::IMAGE_ID, id.as_str())])
            .map_err(|e| jerr("journal record", e))?;
        crash_point("create.recorded");
        return Ok(spec.size);
    }
    let img = place.open(image)?.ok_or_else(|| {
        Status::aborted(format!("image {image} vanished while being created; retry"))
    })?;
    let mut size = img.size().map_err(|e| status("stat image", &e))?;
    if size < spec.size {
        img.resize(spec.size)
            .map_err(|e| status("grow the new volume", &e))?;
        size = spec.size;
    }
    for (k, v) in [
        (META_PVC_NAME, &spec.params.pvc_name),
        (META_PVC_NAMESPACE, &spec.params.pvc_namespace),
        (META_PV_NAME, &spec.params.pv_name),
    ] {
        if let Some(v) = v {
            img.metadata_set(k, v)
                .map_err(|e| status("set image metadata", &e))?;
        }
    }
    if spec.source != Source::Blank {
        let depth = chain_depth(place, &img)?;
        if depth >= SOFT_CLONE_DEPTH {
            flatten_async(place, image);
        }
    }
    let id = img.id().map_err(|e| status("read image id", &e))?;
    journal
        .set_attrs(&entry.uuid, &[(journal::IMAGE_ID, id.as_str())])
        .map_err(|e| jerr("journal record", e))?;
    crash_point("create.recorded");
    Ok(size)
}

/// Clones a volume through a temporary snapshot named after the new image; with clone
/// format 2 it can be removed right after cloning (Ceph keeps it in the trash namespace
/// while the clone needs it).
fn clone_volume(
    place: &Place<'_>,
    src: &str,
    image: &str,
    spec: &CreateSpec<'_>,
) -> Result<rados::Result<()>, Status> {
    let src_img = place.open(src)?.ok_or_else(|| {
        Status::not_found(format!("source volume {} does not exist", spec.source_id))
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
fn fresh_image_error(image: &str, e: &rados::Error) -> Status {
    match e.kind() {
        ErrorKind::AlreadyExists => {
            Status::aborted(format!("image {image} appeared while being created; retry"))
        }
        _ => status("create the volume image", e),
    }
}

pub struct SnapshotInfo {
    pub uuid: String,
    pub size: u64,
    pub created_nanos: i64,
    pub source_image: String,
}

fn now_nanos() -> i64 {
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
fn adopt_snapshot(
    place: &Place<'_>,
    journal: &Journal<'_>,
    entry: &Entry,
    source_image: &str,
    prefix: &str,
) -> Result<Option<SnapshotInfo>, Status> {
    let image = entry_image(entry, prefix);
    let Some(img) = place.open_read_only(&image)? else {
        return Ok(None);
    };
    let snaps = img
        .snap_list()
        .map_err(|e| status("list snapshots of the snapshot image", &e))?;
    let id = img.id().map_err(|e| status("read image id", &e))?;
    drop(img);
    if !snaps.iter().any(|s| s.name == image) {
        let img = place
            .open(&image)?
            .ok_or_else(|| Status::aborted(format!("snapshot image {image} vanished; retry")))?;
        ok_if_exists(img.snap_create(&image), "snapshot the snapshot image")?;
    }
    if let Some(src) = place.open_read_only(source_image)? {
        let leftover = src
            .snap_list()
            .map_err(|e| status("list snapshots of the source volume", &e))?
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
) -> Result<SnapshotInfo, Status> {
    let journal = place.snaps();
    let found = find(&journal, name)?;
    if let Some(entry) = &found {
        if entry.attr(journal::SOURCE) != Some(source_image) {
            return Err(Status::already_exists(format!(
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
            return Err(Status::not_found(format!(
                "source volume image {source_image} does not exist"
            )));
        };
        let features = src
            .features()
            .map_err(|e| status("read source features", &e))?;
        if features & rbd::FEATURE_LAYERING == 0 {
            return Err(Status::failed_precondition(format!(
                "image {source_image} lacks the layering feature, which snapshots need; add layering to imageFeatures"
            )));
        }
        if chain_depth(place, src)? + 1 >= HARD_CLONE_DEPTH {
            flatten_async(place, source_image);
            return Err(Status::aborted(format!(
                "volume image {source_image} sits on a clone chain of {HARD_CLONE_DEPTH} images; it is being flattened, retry shortly"
            )));
        }
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
    let built = (|| {
        let src = match src {
            Some(_) => place.open(source_image)?,
            None => None,
        };
        if let Some(src) = &src {
            if !clone_exists {
                ok_if_exists(src.snap_create(&snap_image), "snapshot the source volume")?;
                crash_point("snapshot.tempsnap");
                let opts = CloneOptions {
                    features: Some(rbd::FEATURE_LAYERING | rbd::FEATURE_DEEP_FLATTEN),
                    ..CloneOptions::default()
                };
                rbd::clone(
                    &place.io,
                    source_image,
                    &snap_image,
                    &place.io,
                    &snap_image,
                    &opts,
                )
                .map_err(|e| fresh_image_error(&snap_image, &e))?;
                crash_point("snapshot.cloned");
            }
            ok_if_missing(
                src.snap_remove(&snap_image),
                "remove the temporary snapshot",
            )?;
        }
        let img = place.open(&snap_image)?.ok_or_else(|| {
            Status::aborted(format!("snapshot image {snap_image} vanished; retry"))
        })?;
        ok_if_exists(img.snap_create(&snap_image), "snapshot the snapshot image")?;
        let size = img.size().map_err(|e| status("stat snapshot image", &e))?;
        let id = img.id().map_err(|e| status("read image id", &e))?;
        if chain_depth(place, &img)? >= SOFT_CLONE_DEPTH {
            flatten_async(place, &snap_image);
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
    })();
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

/// Grows the image to at least `size`; returns the size it has now.
pub fn expand(place: &Place<'_>, image: &str, size: u64) -> Result<u64, Status> {
    let img = place
        .open(image)?
        .ok_or_else(|| Status::not_found(format!("volume image {image} does not exist")))?;
    let current = img.size().map_err(|e| status("stat image", &e))?;
    if size > current {
        img.resize(size).map_err(|e| status("resize image", &e))?;
        return Ok(size);
    }
    Ok(current)
}
