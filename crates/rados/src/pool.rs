//! A pool of shared cluster connections.
//!
//! Connecting costs several round trips and a few dozen threads, while CSI
//! requests for the same cluster and user arrive constantly, so connections
//! are shared as `Arc<Cluster>` and dropped again once idle.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, ConnectConfig};
use crate::error::Result;

/// Default idle time after which a connection is dropped.
pub const DEFAULT_IDLE_TTL: Duration = Duration::from_secs(15 * 60);

/// Connections keyed by (monitors, user, hash of the key).
///
/// * [`ClusterPool::get`] hands out the shared connection for a config,
///   connecting on first use. Concurrent `get`s for the same key wait on that
///   key's own mutex, so only one connection is ever opened per key (gets for
///   other keys are not blocked by a slow connect).
/// * An entry is *idle* when nobody outside the pool holds its
///   `Arc<Cluster>` and no `get` returned it for the TTL. Idle entries are
///   dropped by every `get` and by [`ClusterPool::reap`] (call it
///   periodically); the connection shuts down when its last `Arc` goes.
/// * The key material never appears in the map or in `Debug` output: the
///   map holds a 128-bit keyed hash of it (see [`KeyHasher`]).
pub struct ClusterPool {
    ttl: Duration,
    slots: Mutex<HashMap<PoolKey, Arc<Slot>>>,
    hasher: KeyHasher,
}

/// Hashes key material for use as part of a map key.
///
/// Two `std` `RandomState`s, i.e. SipHash-1-3 with two independent 128-bit
/// keys that the standard library draws from the OS random number generator
/// once per process (and perturbs per instance). The result is therefore a
/// keyed hash (a MAC) of the cephx key under a secret that never leaves the
/// process: it cannot be reversed, looked up in a precomputed table, or
/// compared across processes, and it is only ever used to tell connections
/// apart within this pool. Concatenating two 64-bit outputs makes an
/// accidental collision between two different keys of the same user
/// (which would hand out a connection authenticated with the other key)
/// negligible (~2^-128). This avoids a SHA-2 dependency; nothing here needs a
/// stable or public digest.
struct KeyHasher {
    a: RandomState,
    b: RandomState,
}

impl KeyHasher {
    fn new() -> KeyHasher {
        KeyHasher {
            a: RandomState::new(),
            b: RandomState::new(),
        }
    }

    fn hash(&self, key: &str) -> [u64; 2] {
        [self.a.hash_one(key), self.b.hash_one(key)]
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    monitors: String,
    user: String,
    key_hash: [u64; 2],
}

impl fmt::Debug for PoolKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolKey")
            .field("monitors", &self.monitors)
            .field("user", &self.user)
            .field(
                "key_hash",
                &format_args!("{:016x}{:016x}", self.key_hash[0], self.key_hash[1]),
            )
            .finish()
    }
}

/// One key's entry; its mutex serialises connecting for that key.
struct Slot {
    state: Mutex<SlotState>,
}

struct SlotState {
    cluster: Option<Arc<Cluster>>,
    last_used: Instant,
    /// Set when the slot was taken out of the map; a `get` that raced with
    /// the removal must start over instead of filling an orphan slot.
    removed: bool,
}

impl SlotState {
    fn idle(&self, now: Instant, ttl: Duration) -> bool {
        let in_use = self
            .cluster
            .as_ref()
            .is_some_and(|c| Arc::strong_count(c) > 1);
        !in_use && now.saturating_duration_since(self.last_used) >= ttl
    }
}

/// Locks ignoring poisoning: the protected state stays consistent even if a
/// holder panicked (every update is a single assignment).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Default for ClusterPool {
    fn default() -> Self {
        ClusterPool::new(DEFAULT_IDLE_TTL)
    }
}

impl fmt::Debug for ClusterPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<PoolKey> = lock(&self.slots).keys().cloned().collect();
        f.debug_struct("ClusterPool")
            .field("ttl", &self.ttl)
            .field("entries", &keys)
            .finish()
    }
}

impl ClusterPool {
    /// An empty pool whose entries expire after `ttl` of idleness.
    pub fn new(ttl: Duration) -> ClusterPool {
        ClusterPool {
            ttl,
            slots: Mutex::new(HashMap::new()),
            hasher: KeyHasher::new(),
        }
    }

    /// The idle TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn key(&self, cfg: &ConnectConfig) -> PoolKey {
        let mut mons: Vec<&str> = cfg
            .monitors
            .iter()
            .map(|m| m.trim())
            .filter(|m| !m.is_empty())
            .collect();
        mons.sort_unstable();
        mons.dedup();
        PoolKey {
            monitors: mons.join(","),
            user: cfg.user_id().to_string(),
            key_hash: self.hasher.hash(&cfg.key),
        }
    }

    /// The shared connection for `cfg`, connecting if there is none.
    ///
    /// Blocks for at most about `cfg.timeout` when it has to connect (and,
    /// for a second caller with the same key, until the first caller's
    /// connect finished). A failed connect is not cached: the next `get`
    /// tries again.
    pub fn get(&self, cfg: &ConnectConfig) -> Result<Arc<Cluster>> {
        let key = self.key(cfg);
        drop(self.take_idle(Some(&key)));
        // Bounded: a retry only happens when `reap` removed our slot between
        // looking it up and locking it.
        for _ in 0..8 {
            let slot = Arc::clone(lock(&self.slots).entry(key.clone()).or_insert_with(|| {
                Arc::new(Slot {
                    state: Mutex::new(SlotState {
                        cluster: None,
                        last_used: Instant::now(),
                        removed: false,
                    }),
                })
            }));
            let mut st = lock(&slot.state);
            if st.removed {
                continue;
            }
            st.last_used = Instant::now();
            if let Some(c) = &st.cluster {
                return Ok(Arc::clone(c));
            }
            tracing::debug!(key = ?key, "connecting new pooled cluster connection");
            let c = match Cluster::connect(cfg) {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    // Do not keep an empty entry around. Lock order is
                    // slot → map here, but every path that holds the map
                    // only `try_lock`s slots, so this cannot deadlock.
                    st.removed = true;
                    let mut slots = lock(&self.slots);
                    if slots.get(&key).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                        slots.remove(&key);
                    }
                    return Err(e);
                }
            };
            st.cluster = Some(Arc::clone(&c));
            st.last_used = Instant::now();
            return Ok(c);
        }
        // Only reachable under pathological reap churn (TTL zero): hand out
        // an unpooled connection rather than fail.
        Ok(Arc::new(Cluster::connect(cfg)?))
    }

    /// Drops the entry for `cfg` (e.g. after the caller saw the connection
    /// misbehave); the next `get` reconnects. Holders of the old `Arc` keep
    /// using it until they drop it. Returns whether there was an entry.
    pub fn remove(&self, cfg: &ConnectConfig) -> bool {
        let key = self.key(cfg);
        let slot = lock(&self.slots).remove(&key);
        match slot {
            Some(s) => {
                let mut st = lock(&s.state);
                st.removed = true;
                let old = st.cluster.take();
                drop(st);
                drop(old);
                true
            }
            None => false,
        }
    }

    /// Drops every idle entry; returns how many were dropped.
    pub fn reap(&self) -> usize {
        let dropped = self.take_idle(None);
        let n = dropped.len();
        // Shut the connections down now, outside the map lock.
        drop(dropped);
        if n > 0 {
            tracing::debug!(count = n, "dropped idle cluster connections");
        }
        n
    }

    /// Removes idle entries (except `keep`) from the map and returns them
    /// (`None` for entries that never connected), so the caller shuts the
    /// connections down outside the map lock.
    fn take_idle(&self, keep: Option<&PoolKey>) -> Vec<Option<Arc<Cluster>>> {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut slots = lock(&self.slots);
        slots.retain(|k, slot| {
            if Some(k) == keep {
                return true;
            }
            // A slot locked by someone is in use (being connected or
            // handed out): keep it. Never block here while holding the map.
            let Ok(mut st) = slot.state.try_lock() else {
                return true;
            };
            if !st.idle(now, self.ttl) {
                return true;
            }
            st.removed = true;
            out.push(st.cluster.take());
            false
        });
        out
    }

    /// Number of entries (connected or not yet).
    pub fn len(&self) -> usize {
        lock(&self.slots).len()
    }

    /// Whether the pool has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AQBd8wJlAAAAABAAZmVycm9jZXBoLXRlc3Qtaw==";

    #[test]
    fn key_normalised_and_hashed() {
        let p = ClusterPool::new(Duration::from_secs(1));
        let a = ConnectConfig::new(["b:1", "a:1"], "client.u", KEY);
        let b = ConnectConfig::new([" a:1", "b:1", "a:1"], "u", KEY);
        assert_eq!(p.key(&a), p.key(&b));
        let c = ConnectConfig::new(
            ["a:1", "b:1"],
            "u",
            "AQBd8wJlAAAAABAAZmVycm9jZXBoLXRlc3Qteg==",
        );
        assert_ne!(p.key(&a), p.key(&c));
        let dbg = format!("{:?}", p.key(&a));
        assert!(!dbg.contains(KEY), "{dbg}");
        assert!(dbg.contains("a:1,b:1") && dbg.contains("key_hash"), "{dbg}");
        // Another pool (another seed) hashes differently.
        let q = ClusterPool::new(Duration::from_secs(1));
        assert_ne!(p.key(&a).key_hash, q.key(&a).key_hash);
    }

    #[test]
    fn failed_connect_is_not_cached() {
        let p = ClusterPool::new(Duration::ZERO);
        let mut cfg = ConnectConfig::new(Vec::<String>::new(), "u", KEY);
        cfg.monitors.clear();
        assert!(p.get(&cfg).is_err());
        assert!(p.is_empty(), "a failed connect leaves no entry");
        assert_eq!(p.reap(), 0);
        let dbg = format!("{p:?}");
        assert!(!dbg.contains(KEY));
    }
}
