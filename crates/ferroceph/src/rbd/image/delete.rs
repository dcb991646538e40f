//! DeleteVolume and DeleteSnapshot. Each answers once the deletion is crash-safe: the
//! image is recorded in the trash log and moved to the trash, then the journal entry is
//! released; the background remover ([`super::trash`]) takes the image out of the trash.
//!
//! Why this order: a process killed after the record and before the move leaves the image
//! and its journal entry as they were (the retried delete records and moves it again); one
//! killed after the move and before the release leaves an entry whose image is in the
//! trash, which the retried delete releases and which a CreateVolume of the same name
//! treats as deleted (it reserves a new entry rather than remaking the old image under the
//! old handle). Releasing first instead would leave, after a kill, an image no entry and
//! no trash record points at: a leak.

use super::trash::move_to_trash;
use super::Place;
use crate::ceph::crash_point;
use crate::error::{Error, Result};
use crate::journal::{self, Attrs, JournalError};
use rados::rbd::Image;
use rados::ErrorKind;

fn jerr(what: &str) -> impl FnOnce(JournalError) -> Error + '_ {
    move |e| match e {
        JournalError::Rados(e) => Error::ceph(what, e),
        other => Error::internal(format!("{what}: {other}")),
    }
}

fn image_of(attrs: Option<&Attrs>, prefix: &str, uuid: &str) -> String {
    attrs
        .and_then(|a| a.get(journal::IMAGE_NAME).cloned())
        .unwrap_or_else(|| format!("{prefix}{uuid}"))
}

/// Fails with FailedPrecondition when another client keeps the image open read-write (a
/// node that mapped it). `img` must be opened read-only, which registers no watch of its
/// own. Watches that go within a few seconds are waited out: this controller's background
/// removal of a clone opens its parent, and the mgr's flatten task opens the chain.
fn check_unused(place: &Place<'_>, img: &Image, image: &str) -> Result<()> {
    let me = i64::try_from(place.cluster.instance_id()).unwrap_or(-1);
    let deadline = std::time::Instant::now() + TRANSIENT_WATCH_WAIT;
    loop {
        let watchers = img
            .watchers()
            .map_err(Error::ceph_ctx("list image watchers"))?;
        if watchers.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            let others: Vec<String> = watchers
                .iter()
                .filter(|w| w.id != me)
                .map(|w| format!("client.{} at {}", w.id, w.addr))
                .collect();
            if others.is_empty() {
                return Err(Error::Aborted(format!(
                    "image {image} is still open by this controller's background trash removal; retry"
                )));
            }
            return Err(Error::precondition(format!(
                "image {image} is still in use by {}; unstage it on that node (or unmap it) first (a client that died is dropped by Ceph within 30 s)",
                others.join(", ")
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// How long a delete waits for watches that are about to go.
const TRANSIENT_WATCH_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

pub fn delete_volume(place: &Place<'_>, uuid: &str) -> Result<()> {
    let journal = place.volumes();
    let attrs = journal.get(uuid).map_err(jerr("read volume journal"))?;
    let image = image_of(attrs.as_ref(), crate::rbd::params::DEFAULT_VOL_PREFIX, uuid);
    // Not found by name: already in the trash (an interrupted delete recorded it there,
    // and the remover takes it) or removed by someone else.
    if let Some(img) = place.open_read_only(&image)? {
        check_unused(place, &img, &image)?;
        let id = img.id().map_err(Error::ceph_ctx("read image id"))?;
        drop(img);
        move_to_trash(place, &image, &id)?;
    }
    crash_point("delete.trashed");
    trash_temp_clone(place, &format!("{image}-temp"))?;
    journal
        .release(uuid, None)
        .map_err(jerr("remove journal entry"))?;
    crash_point("delete.released");
    Ok(())
}

/// ceph-csi clones a volume through a temporary clone of the source named
/// `<image>-temp`, which stays as the new image's parent; it goes with its child (the
/// remover takes it once the child has left the trash).
fn trash_temp_clone(place: &Place<'_>, temp: &str) -> Result<()> {
    let Some(img) = place.open_read_only(temp)? else {
        return Ok(());
    };
    let id = img.id().map_err(Error::ceph_ctx("read image id"))?;
    drop(img);
    move_to_trash(place, temp, &id)
}

pub fn delete_snapshot(place: &Place<'_>, uuid: &str) -> Result<()> {
    let journal = place.snaps();
    let attrs = journal.get(uuid).map_err(jerr("read snapshot journal"))?;
    let image = image_of(
        attrs.as_ref(),
        crate::rbd::params::DEFAULT_SNAP_PREFIX,
        uuid,
    );
    if let Some(img) = place.open(&image)? {
        match img.snap_remove(&image) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::ceph("remove the snapshot", e)),
        }
        let id = img.id().map_err(Error::ceph_ctx("read image id"))?;
        drop(img);
        move_to_trash(place, &image, &id)?;
    }
    crash_point("delete.trashed");
    // A crash between the temporary snapshot and the clone leaves it on the source.
    if let Some(src) = attrs.as_ref().and_then(|a| a.get(journal::SOURCE)) {
        if let Some(src_img) = place.open(src)? {
            match src_img.snap_remove(&image) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(Error::ceph("remove a leftover temporary snapshot", e)),
            }
        }
    }
    journal
        .release(uuid, None)
        .map_err(jerr("remove journal entry"))?;
    Ok(())
}
