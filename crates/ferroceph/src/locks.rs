//! One operation at a time per volume id, snapshot id, request name or node path. A second
//! caller gets `Aborted` immediately (the CSI spec's answer for "an operation is already in
//! flight"); the guard releases the keys when dropped, so a lock lives exactly as long as
//! the work holding it.

use crate::error::Error;
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// What an operation holds. Each kind is its own namespace: a request name never collides
/// with a handle that happens to be spelled the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LockKey {
    /// A CreateVolume's request name.
    CreateName(String),
    /// A CreateSnapshot's request name.
    SnapshotName(String),
    /// A volume or snapshot handle on the controller (also held by a clone's source).
    Handle(String),
    /// A volume on this node (stage, publish, unpublish, unstage, expand).
    NodeVolume(String),
    /// A staging or target path on this node.
    NodePath(String),
}

impl LockKey {
    pub fn create_name(name: &str) -> LockKey {
        LockKey::CreateName(name.to_string())
    }
    pub fn snapshot_name(name: &str) -> LockKey {
        LockKey::SnapshotName(name.to_string())
    }
    pub fn handle(id: &str) -> LockKey {
        LockKey::Handle(id.to_string())
    }
    pub fn node_volume(id: &str) -> LockKey {
        LockKey::NodeVolume(id.to_string())
    }
    pub fn node_path(path: &Path) -> LockKey {
        LockKey::NodePath(path.display().to_string())
    }
}

impl std::fmt::Display for LockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockKey::CreateName(n) => write!(f, "request name {n:?}"),
            LockKey::SnapshotName(n) => write!(f, "snapshot request name {n:?}"),
            LockKey::Handle(id) => write!(f, "{id:?}"),
            LockKey::NodeVolume(id) => write!(f, "{id:?} on this node"),
            LockKey::NodePath(p) => write!(f, "path {p:?}"),
        }
    }
}

#[derive(Clone, Default)]
pub struct OpLocks {
    held: Arc<Mutex<HashSet<LockKey>>>,
}

pub struct OpGuard {
    held: Arc<Mutex<HashSet<LockKey>>>,
    keys: Vec<LockKey>,
}

impl OpLocks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes every key or none; on conflict returns the key that is busy.
    pub fn try_lock(&self, keys: impl IntoIterator<Item = LockKey>) -> Result<OpGuard, LockKey> {
        let keys: Vec<LockKey> = keys.into_iter().collect();
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(busy) = keys.iter().find(|k| held.contains(*k)) {
            return Err(busy.clone());
        }
        for k in &keys {
            held.insert(k.clone());
        }
        Ok(OpGuard {
            held: self.held.clone(),
            keys,
        })
    }

    pub fn in_flight(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Locks and turns a conflict into the CSI `Aborted` answer; `what` names the kind of
    /// operation ("volume", "snapshot").
    pub fn acquire(
        &self,
        what: &str,
        keys: impl IntoIterator<Item = LockKey>,
    ) -> Result<OpGuard, Error> {
        self.try_lock(keys).map_err(|busy| {
            Error::Aborted(format!(
                "an operation on {what} {busy} is already in progress; retry later"
            ))
        })
    }
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for k in &self.keys {
            held.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_until_release() {
        let locks = OpLocks::new();
        let (v1, v2) = (LockKey::handle("vol-1"), LockKey::handle("vol-2"));
        let g = locks.try_lock([v1.clone()]).unwrap();
        assert_eq!(
            locks.try_lock([v2.clone(), v1.clone()]).err(),
            Some(v1.clone())
        );
        // all-or-nothing: vol-2 was not taken by the failed attempt
        let g2 = locks.try_lock([v2]).unwrap();
        drop(g);
        assert!(locks.try_lock([v1]).is_ok());
        drop(g2);
        assert_eq!(locks.in_flight(), 0);
    }

    #[test]
    fn kinds_do_not_collide_and_conflicts_are_aborted() {
        let locks = OpLocks::new();
        let _g = locks.acquire("volume", [LockKey::handle("a")]).unwrap();
        let e = locks
            .acquire("volume", [LockKey::handle("a")])
            .err()
            .unwrap();
        assert_eq!(e.code(), tonic::Code::Aborted);
        assert!(e.message().contains("\"a\""), "{e}");
        assert!(locks.acquire("volume", [LockKey::create_name("a")]).is_ok());
    }
}
