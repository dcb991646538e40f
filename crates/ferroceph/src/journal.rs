//! The name → uuid journal in RADOS omap, in ceph-csi's layout (shared/FACTS.md), so that
//! volumes and snapshots made by either driver are found by the other.
//!
//! Crash safety comes from the order of the steps. Reserving writes the directory key
//! first and then creates the per-entry object together with all its keys in one atomic
//! operation; removing deletes the directory key first (the per-entry object still knows the
//! name) and the per-entry object last. A process killed between any two steps leaves a
//! state that the next call for the same name or handle recognises and finishes.

use rados::IoCtx;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Volume,
    Snapshot,
}

impl Kind {
    fn dir_prefix(self) -> &'static str {
        match self {
            Kind::Volume => "csi.volumes.",
            Kind::Snapshot => "csi.snaps.",
        }
    }
    fn key_prefix(self) -> &'static str {
        match self {
            Kind::Volume => "csi.volume.",
            Kind::Snapshot => "csi.snap.",
        }
    }
    /// The per-entry key holding the request name.
    pub fn name_key(self) -> &'static str {
        match self {
            Kind::Volume => "csi.volname",
            Kind::Snapshot => "csi.snapname",
        }
    }
}

pub const IMAGE_NAME: &str = "csi.imagename";
pub const IMAGE_ID: &str = "csi.imageid";
pub const OWNER: &str = "csi.volume.owner";
pub const SOURCE: &str = "csi.source";
pub const JOURNAL_POOL: &str = "csi.journalpool";
/// ceph-csi's KMS of an encrypted volume (or of a snapshot of one).
pub const ENCRYPT_KMS: &str = "csi.volume.encryptKMS";

pub type Attrs = BTreeMap<String, String>;

/// What the journal knows about a request name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Absent,
    /// The directory key points at an entry whose object is missing or belongs to another
    /// name: left by a crash (or by ceph-csi's own reservation order).
    Dangling {
        uuid: String,
    },
    Found(Entry),
}

/// Outcome of [`Journal::claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Claimed,
    /// The name already has a directory key: look it up.
    Taken,
    /// The directory object does not exist yet (first entry of this pool).
    NoDirectory,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub uuid: String,
    /// Pool id when the directory value is `<16-hex pool>/<uuid>` (image in another pool).
    pub pool_id: Option<i64>,
    pub attrs: Attrs,
}

impl Entry {
    pub fn attr(&self, k: &str) -> Option<&str> {
        self.attrs.get(k).map(String::as_str)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{0}")]
    Rados(#[from] rados::Error),
    #[error("uuid {0} is already used by another entry")]
    UuidClash(String),
    #[error("journal entry {0} is corrupt: {1}")]
    Corrupt(String, String),
}

/// A per-entry object being written; see [`Journal::start_entry`].
pub struct PendingEntry<'j, 'a> {
    journal: &'j Journal<'a>,
    write: rados::PendingWrite<'a>,
    name: String,
    uuid: String,
}

impl PendingEntry<'_, '_> {
    /// Waits for the write. An entry object that exists already is fine when it holds this
    /// name (a retry); under another name the uuid clashes and the name's directory key is
    /// dropped again.
    pub fn finish(self) -> Result<(), JournalError> {
        let (j, name, uuid) = (self.journal, self.name, self.uuid);
        match self.write.wait() {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == rados::ErrorKind::AlreadyExists => match j.get(&uuid)? {
                Some(existing)
                    if existing.get(j.kind.name_key()).map(String::as_str) == Some(&name) =>
                {
                    Ok(())
                }
                _ => {
                    j.remove_dir_key(&name, &uuid)?;
                    Err(JournalError::UuidClash(uuid))
                }
            },
            Err(e) => Err(e.into()),
        }
    }
}

pub struct Journal<'a> {
    io: &'a IoCtx,
    kind: Kind,
    dir: String,
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

impl<'a> Journal<'a> {
    pub fn new(io: &'a IoCtx, kind: Kind, instance: &str) -> Self {
        Journal {
            io,
            kind,
            dir: format!("{}{}", kind.dir_prefix(), instance),
        }
    }

    pub fn dir_object(&self) -> &str {
        &self.dir
    }

    pub fn entry_object(&self, uuid: &str) -> String {
        format!("{}{}", self.kind.key_prefix(), uuid)
    }

    fn dir_key(&self, name: &str) -> String {
        format!("{}{}", self.kind.key_prefix(), name)
    }

    /// Reads the per-entry keys of `uuid`, None when the object does not exist.
    pub fn get(&self, uuid: &str) -> Result<Option<Attrs>, JournalError> {
        match self.io.omap_list(&self.entry_object(uuid), "", "", 1024) {
            Ok(kv) => Ok(Some(kv.into_iter().map(|(k, v)| (k, text(&v))).collect())),
            Err(e) if e.kind() == rados::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn lookup(&self, name: &str) -> Result<Lookup, JournalError> {
        let key = self.dir_key(name);
        let got = match self.io.omap_get(&self.dir, &[key.as_str()]) {
            Ok(m) => m,
            Err(e) if e.kind() == rados::ErrorKind::NotFound => return Ok(Lookup::Absent),
            Err(e) => return Err(e.into()),
        };
        let Some(value) = got.get(&key) else {
            return Ok(Lookup::Absent);
        };
        let value = text(value);
        let (pool_id, uuid) = match value.split_once('/') {
            Some((pool, uuid)) => {
                let id = i64::from_str_radix(pool, 16).map_err(|_| {
                    JournalError::Corrupt(key.clone(), format!("bad pool in {value:?}"))
                })?;
                (Some(id), uuid.to_string())
            }
            None => (None, value),
        };
        match self.get(&uuid)? {
            Some(attrs) if attrs.get(self.kind.name_key()).map(String::as_str) == Some(name) => {
                Ok(Lookup::Found(Entry {
                    uuid,
                    pool_id,
                    attrs,
                }))
            }
            _ => Ok(Lookup::Dangling { uuid }),
        }
    }

    /// Reserves `name` under `uuid` with the given per-entry keys (the name key is added).
    /// Idempotent for the same (name, uuid); a uuid taken by another name is a clash the
    /// caller answers by picking a new uuid.
    pub fn reserve(&self, name: &str, uuid: &str, attrs: &Attrs) -> Result<(), JournalError> {
        let key = self.dir_key(name);
        self.io
            .omap_set(&self.dir, &[(key.as_str(), uuid.as_bytes())])?;
        self.write_entry(name, uuid, attrs)
    }

    /// The first step of a reservation for a name that is probably new, in one round trip
    /// and without a lookup first: the directory key is set to `uuid` only if the name has
    /// none yet. Finish with [`Journal::write_entry`].
    pub fn claim(&self, name: &str, uuid: &str) -> Result<Claim, JournalError> {
        match self
            .io
            .omap_set_if_absent(&self.dir, &self.dir_key(name), uuid.as_bytes())
        {
            Ok(true) => Ok(Claim::Claimed),
            Ok(false) => Ok(Claim::Taken),
            Err(e) if e.kind() == rados::ErrorKind::NotFound => Ok(Claim::NoDirectory),
            Err(e) => Err(e.into()),
        }
    }

    /// The second step of a reservation: the per-entry object with all its keys at once.
    pub fn write_entry(&self, name: &str, uuid: &str, attrs: &Attrs) -> Result<(), JournalError> {
        self.start_entry(name, uuid, attrs)?.finish()
    }

    /// [`Journal::write_entry`] sent without waiting, so the caller can do other work while
    /// it is in flight; [`PendingEntry::finish`] waits and resolves a clash.
    pub fn start_entry(
        &self,
        name: &str,
        uuid: &str,
        attrs: &Attrs,
    ) -> Result<PendingEntry<'_, 'a>, JournalError> {
        let mut all: Vec<(&str, &[u8])> = attrs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .collect();
        all.push((self.kind.name_key(), name.as_bytes()));
        let write = self
            .io
            .start_create_with_omap(&self.entry_object(uuid), &all)?;
        Ok(PendingEntry {
            journal: self,
            write,
            name: name.to_string(),
            uuid: uuid.to_string(),
        })
    }

    pub fn set_attrs(&self, uuid: &str, attrs: &[(&str, &str)]) -> Result<(), JournalError> {
        let kv: Vec<(&str, &[u8])> = attrs.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        self.io.omap_set(&self.entry_object(uuid), &kv)?;
        Ok(())
    }

    /// Removes the directory key of `name` if it still points at `uuid`.
    fn remove_dir_key(&self, name: &str, uuid: &str) -> Result<(), JournalError> {
        let key = self.dir_key(name);
        let current = match self.io.omap_get(&self.dir, &[key.as_str()]) {
            Ok(m) => m.get(&key).map(|v| text(v)),
            Err(e) if e.kind() == rados::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        if let Some(v) = current {
            if v == uuid || v.ends_with(&format!("/{uuid}")) {
                self.io.omap_remove(&self.dir, &[key.as_str()])?;
            }
        }
        Ok(())
    }

    /// Forgets an entry: directory key first, then the per-entry object. Safe to repeat.
    /// `name` is read from the entry when not given.
    pub fn release(&self, uuid: &str, name: Option<&str>) -> Result<(), JournalError> {
        let stored = self.get(uuid)?;
        let name = name.map(str::to_string).or_else(|| {
            stored
                .as_ref()
                .and_then(|a| a.get(self.kind.name_key()).cloned())
        });
        if let Some(name) = &name {
            self.remove_dir_key(name, uuid)?;
        }
        if let Some(stored) = &stored {
            // A directory key can point at another name's entry (a crash or a clash): that
            // entry is not this name's to remove.
            let owner = stored.get(self.kind.name_key());
            if owner.is_some() && owner != name.as_ref() {
                return Ok(());
            }
            match self.io.remove_object(&self.entry_object(uuid)) {
                Ok(()) => {}
                Err(e) if e.kind() == rados::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// The entries' attributes: of `only` when given, else of every directory entry;
    /// entries whose per-entry object is gone are left out.
    pub fn entries(&self, only: Option<&str>) -> Result<Vec<(String, Attrs)>, JournalError> {
        let uuids: Vec<String> = match only {
            Some(u) => vec![u.to_string()],
            None => self.list_all()?.into_iter().map(|(_, u)| u).collect(),
        };
        let mut out = Vec::with_capacity(uuids.len());
        for uuid in uuids {
            if let Some(attrs) = self.get(&uuid)? {
                out.push((uuid, attrs));
            }
        }
        Ok(out)
    }

    /// The entries (of `only`, else all) whose attributes hold `done_key`: those a create
    /// finished.
    pub fn finished_entries(
        &self,
        only: Option<&str>,
        done_key: &str,
    ) -> Result<Vec<(String, Attrs)>, JournalError> {
        let mut all = self.entries(only)?;
        all.retain(|(_, attrs)| attrs.contains_key(done_key));
        Ok(all)
    }

    /// Every directory entry (request name → uuid), read in batches.
    pub fn list_all(&self) -> Result<Vec<(String, String)>, JournalError> {
        let mut out: Vec<(String, String)> = Vec::new();
        loop {
            let after = out.last().map(|(name, _)| name.clone()).unwrap_or_default();
            let batch = self.list(&after, 1000)?;
            if batch.is_empty() {
                return Ok(out);
            }
            out.extend(batch);
        }
    }

    /// Directory entries after `start_after` (request name → uuid), at most `max`.
    pub fn list(
        &self,
        start_after: &str,
        max: usize,
    ) -> Result<Vec<(String, String)>, JournalError> {
        let after = if start_after.is_empty() {
            String::new()
        } else {
            self.dir_key(start_after)
        };
        let kv = match self
            .io
            .omap_list(&self.dir, &after, self.kind.key_prefix(), max)
        {
            Ok(kv) => kv,
            Err(e) if e.kind() == rados::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        Ok(kv
            .into_iter()
            .filter_map(|(k, v)| {
                let name = k.strip_prefix(self.kind.key_prefix())?.to_string();
                let v = text(&v);
                let uuid = v.rsplit('/').next().unwrap_or(&v).to_string();
                Some((name, uuid))
            })
            .collect())
    }
}

/// The images this driver instance moved to the RBD trash, one omap key per image id in
/// `csi.ferroceph.trash.<instance>` next to the journal. An id is recorded before the move
/// and forgotten after the image has left the trash, so a process killed at any point
/// leaves the record of every image it may have trashed; the trash reaper removes only
/// recorded images, never an administrator's soft delete or another instance's images.
pub(crate) struct TrashLog<'a> {
    io: &'a IoCtx,
    object: String,
}

/// A recorded trash move: when it was recorded (unix seconds) and the image's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Trashed {
    pub(crate) recorded_at: i64,
    pub(crate) name: String,
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl<'a> TrashLog<'a> {
    pub(crate) fn new(io: &'a IoCtx, instance: &str) -> Self {
        TrashLog {
            io,
            object: format!("csi.ferroceph.trash.{instance}"),
        }
    }

    /// Records that the image `name` with id `id` is about to be moved to the trash.
    pub(crate) fn record(&self, id: &str, name: &str) -> Result<(), JournalError> {
        let value = format!("{} {name}", unix_now());
        self.io.omap_set(&self.object, &[(id, value.as_bytes())])?;
        Ok(())
    }

    pub(crate) fn forget(&self, id: &str) -> Result<(), JournalError> {
        match self.io.omap_remove(&self.object, &[id]) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == rados::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) fn get(&self, id: &str) -> Result<Option<Trashed>, JournalError> {
        match self.io.omap_get(&self.object, &[id]) {
            Ok(m) => Ok(m.get(id).map(|v| parse_trashed(&text(v)))),
            Err(e) if e.kind() == rados::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every recorded image id with its record.
    pub(crate) fn all(&self) -> Result<BTreeMap<String, Trashed>, JournalError> {
        let mut out = BTreeMap::new();
        let mut after = String::new();
        loop {
            let batch = match self.io.omap_list(&self.object, &after, "", 1000) {
                Ok(kv) => kv,
                Err(e) if e.kind() == rados::ErrorKind::NotFound => break,
                Err(e) => return Err(e.into()),
            };
            let Some((last, _)) = batch.last() else { break };
            after = last.clone();
            out.extend(
                batch
                    .into_iter()
                    .map(|(k, v)| (k, parse_trashed(&text(&v)))),
            );
        }
        Ok(out)
    }
}

fn parse_trashed(v: &str) -> Trashed {
    let (at, name) = v.split_once(' ').unwrap_or(("0", v));
    Trashed {
        recorded_at: at.parse().unwrap_or(0),
        name: name.to_string(),
    }
}
