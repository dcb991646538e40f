//! One operation at a time per volume id, snapshot id or request name. A second caller
//! gets `Aborted` immediately (the CSI spec's answer for "an operation is already in
//! flight"); the guard releases the key when dropped, so a lock lives exactly as long as
//! the work holding it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
pub struct OpLocks {
    held: Arc<Mutex<HashSet<String>>>,
}

pub struct OpGuard {
    held: Arc<Mutex<HashSet<String>>>,
    keys: Vec<String>,
}

impl OpLocks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes every key or none; on conflict returns the key that is busy.
    pub fn try_lock<I, S>(&self, keys: I) -> Result<OpGuard, String>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let keys: Vec<String> = keys.into_iter().map(Into::into).collect();
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

    /// Locks and turns a conflict into the CSI `Aborted` status.
    pub fn acquire<I, S>(&self, what: &str, keys: I) -> Result<OpGuard, tonic::Status>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.try_lock(keys).map_err(|busy| {
            tonic::Status::aborted(format!(
                "an operation on {what} {busy:?} is already in progress; retry later"
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
        let g = locks.try_lock(["vol-1"]).unwrap();
        assert_eq!(
            locks.try_lock(["vol-2", "vol-1"]).err().as_deref(),
            Some("vol-1")
        );
        // all-or-nothing: vol-2 was not taken by the failed attempt
        let g2 = locks.try_lock(["vol-2"]).unwrap();
        drop(g);
        assert!(locks.try_lock(["vol-1"]).is_ok());
        drop(g2);
        assert_eq!(locks.in_flight(), 0);
    }

    #[test]
    fn conflict_maps_to_aborted() {
        let locks = OpLocks::new();
        let _g = locks.acquire("volume", ["a"]).unwrap();
        let e = locks.acquire("volume", ["a"]).err().unwrap();
        assert_eq!(e.code(), tonic::Code::Aborted);
    }
}
