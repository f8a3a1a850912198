//! The in-process backend: one atomic TAT per key in a DashMap, updated with compare-and-swap (no lock held
//! across a decision).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use dashmap::DashMap;
use futures_util::future::BoxFuture;

use crate::gcra::{Decision, Quota, step};
use crate::{BackendError, Key, Limiter};

pub struct LocalLimiter {
    cells: DashMap<Key, AtomicU64>,
    epoch: Instant,
}

impl Default for LocalLimiter {
    fn default() -> Self {
        // Many shards: a decision takes a shard's read lock, and with few shards the lock words bounce between
        // cores even when the keys differ.
        LocalLimiter {
            cells: DashMap::with_shard_amount(256),
            epoch: Instant::now(),
        }
    }
}

impl LocalLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Nanoseconds since the limiter was made (monotonic), offset so zero is never "now".
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX) + 1
    }

    /// Decides synchronously (the local backend never waits).
    pub fn decide(&self, key: &Key, quota: &Quota) -> Decision {
        self.decide_at(key, quota, self.now())
    }

    pub fn decide_at(&self, key: &Key, quota: &Quota, now: u64) -> Decision {
        if let Some(cell) = self.cells.get(key) {
            return cas(&cell, quota, now);
        }
        let cell = self
            .cells
            .entry(key.clone())
            .or_insert_with(|| AtomicU64::new(0));
        cas(&cell, quota, now)
    }

    /// Number of keys held (bounded by agencies × routes, both from the config).
    pub fn keys(&self) -> usize {
        self.cells.len()
    }
}

fn cas(cell: &AtomicU64, quota: &Quota, now: u64) -> Decision {
    let mut current = cell.load(Ordering::Acquire);
    loop {
        let (decision, new_tat) = step(current, now, quota);
        if new_tat == current {
            return decision;
        }
        match cell.compare_exchange_weak(current, new_tat, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return decision,
            Err(actual) => current = actual,
        }
    }
}

impl Limiter for LocalLimiter {
    fn check<'a>(
        &'a self,
        key: &'a Key,
        quota: &'a Quota,
    ) -> BoxFuture<'a, Result<Decision, BackendError>> {
        let d = self.decide(key, quota);
        Box::pin(async move { Ok(d) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn key(a: &str) -> Key {
        Key {
            agency: Arc::from(a),
            route: Arc::from("r"),
        }
    }

    #[test]
    fn keys_are_independent_and_the_burst_holds_under_threads() {
        let l = Arc::new(LocalLimiter::new());
        let q = Quota::parse("1/h", 100).unwrap();
        let allowed = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        if l.decide(&key("A"), &q).allowed() {
                            allowed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(
            allowed.load(Ordering::Relaxed),
            100,
            "exactly the burst passes, whatever the interleaving"
        );
        assert!(l.decide(&key("B"), &q).allowed());
        assert_eq!(l.keys(), 2);
    }
}
