//! The RBD trash as this driver uses it: a delete records the image in the instance's
//! [`TrashLog`] and moves it to the trash, and answers; a background remover takes the
//! recorded images out of the trash (children before parents), so a DeleteVolume costs a
//! trash move instead of deleting every object of the image. Images this driver did not
//! record (an administrator's `rbd trash mv`, another instance's) are never removed.

use super::{image_id, Place, HARD_CLONE_DEPTH};
use crate::error::{Error, Result};
use crate::journal::{self, TrashLog, Trashed};
use rados::rbd::{self, Image, TrashEntry};
use rados::{Cluster, ErrorKind, IoCtx};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How old an interrupted trash move must be before the remover finishes it.
const STALE_TRASH_MOVE_SECS: i64 = 30;
/// How old a record of a trash move that never happened (the process died in between)
/// must be before the remover drops it; a retried delete records the move again.
const STALE_TRASH_RECORD_SECS: i64 = 3600;
/// Images removed at the same time in one pool (each removal already deletes the image's
/// objects several at a time inside librbd).
const REMOVERS: usize = 2;
/// A removal pass starts no new removal after this long; the next pass goes on.
const PASS_BUDGET: Duration = Duration::from_secs(120);

fn log_err(what: &str) -> impl FnOnce(journal::JournalError) -> Error + '_ {
    move |e| match e {
        journal::JournalError::Rados(e) => Error::ceph(what, e),
        other => Error::internal(format!("{what}: {other}")),
    }
}

/// Moves `image` (id `id`) to the trash with no deferment, recorded first in the trash log
/// so that the remover knows it is ours to remove. A process killed between the two
/// leaves a record of an image that is not in the trash: the retried delete records and
/// moves it again, and the remover drops the record once it is stale.
pub(crate) fn move_to_trash(place: &Place<'_>, image: &str, id: &str) -> Result<()> {
    place
        .trash_log()
        .record(id, image)
        .map_err(log_err("record a move to the trash"))?;
    crate::ceph::crash_point("delete.recorded");
    // A watch that opened after the in-use check (the mgr's flatten task, our own removal
    // of a clone) makes the move fail with EBUSY for a moment: retried briefly.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match rbd::trash_move(&place.io, image, 0) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Busy && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(Error::ceph("move image to trash", e)),
        }
    }
}

/// [`move_to_trash`] for an image known by name only (an unfinished or rolled-back one).
pub(crate) fn move_aside(place: &Place<'_>, image: &str) -> Result<()> {
    let id = image_id(&place.io, image)?;
    move_to_trash(place, image, &id)
}

/// Held by a removal pass: two passes at once would each find the image the other is
/// removing open (EBUSY), and the drain at shut-down must not exit under a pass in flight.
pub(crate) fn pass_lock() -> &'static tokio::sync::Mutex<()> {
    static PASS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    &PASS
}

/// Wakes the background remover: a delete just put an image in the trash.
pub(crate) fn request_removal() {
    wake().notify_one();
}

fn wake() -> &'static tokio::sync::Notify {
    static WAKE: std::sync::OnceLock<tokio::sync::Notify> = std::sync::OnceLock::new();
    WAKE.get_or_init(tokio::sync::Notify::new)
}

/// Waits until a delete asks for a removal pass ([`request_removal`]) or `interval` has
/// passed (the periodic retry of images that clones or a dead client's watch kept in the
/// trash; zero: wake-ups only). Requests made during a pass wake the next one at once.
pub(crate) async fn next_removal_pass(interval: Duration) {
    if interval.is_zero() {
        wake().notified().await;
        return;
    }
    tokio::select! {
        () = wake().notified() => {}
        () = tokio::time::sleep(interval) => {}
    }
}

/// One removal pass over the pools the controller knows on one cluster: every image this
/// instance recorded in a pool's trash log and whose deferment has ended is removed, up to
/// [`REMOVERS`] at a time; images clones still depend on stay until their last child is
/// gone.
pub(crate) fn remove_trashed_in(
    cluster: &Cluster,
    pools: &[String],
    namespace: &str,
    instance: &str,
) -> Pass {
    let deadline = Instant::now() + PASS_BUDGET;
    let mut pass = Pass::default();
    for pool in pools {
        match cluster.ioctx(pool, namespace) {
            Ok(io) => pass.add(remove_trashed(cluster, &io, instance, deadline)),
            Err(e) => tracing::debug!(pool, "trash remover cannot open the pool: {e}"),
        }
    }
    pass
}

/// What a removal pass did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Pass {
    /// Images that left the trash.
    pub removed: usize,
    /// Images still open somewhere (EBUSY): a watch about to go, worth another pass soon.
    pub busy: usize,
}

impl Pass {
    pub(crate) fn add(&mut self, other: Pass) {
        self.removed += other.removed;
        self.busy += other.busy;
    }
}

/// What became of one trash entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removal {
    Removed,
    Busy,
    Stays,
}

/// [`remove_trashed_in`] for one pool. Children go before parents, so rounds run while
/// they make progress.
pub(crate) fn remove_trashed(
    cluster: &Cluster,
    io: &IoCtx,
    instance: &str,
    deadline: Instant,
) -> Pass {
    let log = TrashLog::new(io, instance);
    let mut pass = Pass::default();
    for _ in 0..HARD_CLONE_DEPTH + 1 {
        if Instant::now() >= deadline {
            break;
        }
        let recorded = match log.all() {
            Ok(r) if r.is_empty() => return pass,
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cannot read the trash log: {e}");
                return pass;
            }
        };
        let entries = match rbd::trash_list(io) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("cannot list the trash: {e}");
                return pass;
            }
        };
        let now = journal::unix_now();
        let due: Vec<&TrashEntry> = entries
            .iter()
            .filter(|e| e.deferment_end_time <= now && recorded.contains_key(&e.id))
            .take(2000)
            .collect();
        let round = remove_all(cluster, io, instance, &due, deadline);
        pass.removed += round.removed;
        // busy in the last round only: the earlier rounds' busy entries were tried again
        pass.busy = round.busy;
        drop_stale_records(&log, io, &recorded, &entries, now);
        if round.removed == 0 {
            break;
        }
    }
    pass
}

/// Removes `due` with up to [`REMOVERS`] threads, each with its own I/O context on the
/// same connection.
fn remove_all(
    cluster: &Cluster,
    io: &IoCtx,
    instance: &str,
    due: &[&TrashEntry],
    deadline: Instant,
) -> Pass {
    let queue = Mutex::new(due.iter());
    let next = || queue.lock().unwrap_or_else(|p| p.into_inner()).next();
    let (pool_id, namespace) = (io.pool_id(), io.namespace().to_string());
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..REMOVERS.min(due.len()))
            .map(|_| {
                s.spawn(|| {
                    let io = match cluster.ioctx_by_id(pool_id, &namespace) {
                        Ok(io) => io,
                        Err(e) => {
                            tracing::debug!("trash remover cannot open the pool: {e}");
                            return Pass::default();
                        }
                    };
                    let io = &io;
                    let mut pass = Pass::default();
                    while Instant::now() < deadline {
                        let Some(e) = next() else { break };
                        match remove_entry(cluster, io, instance, e) {
                            Removal::Removed => pass.removed += 1,
                            Removal::Busy => pass.busy += 1,
                            Removal::Stays => {}
                        }
                    }
                    pass
                })
            })
            .collect();
        let mut total = Pass::default();
        for w in workers {
            total.add(w.join().unwrap_or_default());
        }
        total
    })
}

/// Removes one recorded trash entry, forgets its record, and removes its parent too when
/// this driver trashed the parent and it was waiting for its last child.
fn remove_entry(cluster: &Cluster, io: &IoCtx, instance: &str, e: &TrashEntry) -> Removal {
    let parent = Image::open_by_id_read_only(io, &e.id)
        .ok()
        .and_then(|img| img.parent().ok().flatten());
    let mut result = rbd::trash_remove(io, &e.id, false);
    // A delete killed inside librbd's trash move leaves the entry "moving", which librbd
    // never removes; an old one is finished here (the image was being deleted anyway).
    if matches!(&result, Err(err) if err.errno == libc::EUCLEAN)
        && journal::unix_now() - e.deletion_time >= STALE_TRASH_MOVE_SECS
    {
        tracing::warn!(image = %e.name, "finishing an interrupted move to the trash");
        result = rbd::trash_finish_move(io, &e.id, &e.name)
            .and_then(|()| rbd::trash_remove(io, &e.id, false));
    }
    match result {
        Ok(()) => {}
        Err(err) if err.kind() == ErrorKind::NotFound => {}
        Err(err) => {
            tracing::debug!(image = %e.name, "trash entry stays for now: {err}");
            return if err.errno == libc::EBUSY {
                Removal::Busy
            } else {
                Removal::Stays
            };
        }
    }
    crate::ceph::crash_point("reap.removed");
    tracing::info!(image = %e.name, "removed a deleted image from the trash");
    if let Err(err) = TrashLog::new(io, instance).forget(&e.id) {
        tracing::debug!(image = %e.name, "trash record stays for now: {err}");
    }
    purge_parent(cluster, instance, parent);
    Removal::Removed
}

/// Records of images no longer in the trash: removed already (the process died before
/// forgetting them), or a move that never happened (the image still exists: the retried
/// delete records it again, so an old record is dropped).
fn drop_stale_records(
    log: &TrashLog<'_>,
    io: &IoCtx,
    recorded: &BTreeMap<String, Trashed>,
    entries: &[TrashEntry],
    now: i64,
) {
    for (id, rec) in recorded {
        // a young record is most likely a delete between its record and its move
        if now - rec.recorded_at < STALE_TRASH_MOVE_SECS || entries.iter().any(|e| &e.id == id) {
            continue;
        }
        let stale = match Image::open_by_id_read_only(io, id) {
            Err(e) if e.kind() == ErrorKind::NotFound => true,
            Ok(_) => now - rec.recorded_at >= STALE_TRASH_RECORD_SECS,
            Err(_) => false,
        };
        if stale {
            if let Err(err) = log.forget(id) {
                tracing::debug!(image = %rec.name, "stale trash record stays for now: {err}");
            }
        }
    }
}

/// After a child image is removed, removes its parent too if this driver moved the parent
/// to the trash (a deleted snapshot or volume that clones kept) and nothing else depends
/// on it. Walks up the chain, across pools. A parent someone else trashed is theirs.
fn purge_parent(cluster: &Cluster, instance: &str, mut parent: Option<rbd::ParentInfo>) {
    let mut steps = 0;
    while let Some(p) = parent.take() {
        steps += 1;
        if !p.trash || steps > HARD_CLONE_DEPTH * 2 {
            return;
        }
        let Ok(io) = cluster.ioctx_by_id(p.pool_id, &p.pool_namespace) else {
            return;
        };
        let log = TrashLog::new(&io, instance);
        match log.get(&p.image_id) {
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(image_id = %p.image_id, "cannot read the trash log: {e}");
                return;
            }
        }
        let grand = Image::open_by_id_read_only(&io, &p.image_id)
            .ok()
            .and_then(|img| img.parent().ok().flatten());
        match rbd::trash_remove(&io, &p.image_id, false) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                tracing::debug!(image_id = %p.image_id, "parent stays in the trash: {e}");
                return;
            }
        }
        if let Err(e) = log.forget(&p.image_id) {
            tracing::debug!(image_id = %p.image_id, "trash record stays for now: {e}");
        }
        parent = grand;
    }
}
