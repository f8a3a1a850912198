//! Failed authentications, counted per certificate identity and per source address: each key has a bucket of
//! `burst` failures refilled at `rate`; while a key's bucket is empty every attempt under it is refused, right
//! credentials included, so guessing keys or tokens costs time instead of CPU.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use lgsp_config::RateSpec;

/// Most keys tracked at once; past it, full buckets (nothing owed) are dropped first.
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Failures still allowed.
    left: f64,
    at: Instant,
}

/// The failure buckets of one hop.
#[derive(Debug)]
pub struct FailureThrottle {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl FailureThrottle {
    pub fn new(spec: RateSpec) -> Self {
        FailureThrottle {
            per_sec: f64::from(spec.count) / f64::from(spec.period_secs.max(1)),
            burst: f64::from(spec.burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refilled(&self, b: Bucket, now: Instant) -> f64 {
        (b.left + now.duration_since(b.at).as_secs_f64() * self.per_sec).min(self.burst)
    }

    /// How long until any of `keys` may try again, if one of them has no failures left.
    pub fn wait(&self, keys: &[String]) -> Option<Duration> {
        let now = Instant::now();
        let buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        keys.iter()
            .filter_map(|k| buckets.get(k))
            .map(|b| self.refilled(*b, now))
            .filter(|left| *left < 1.0)
            .map(|left| Duration::from_secs_f64((1.0 - left) / self.per_sec.max(f64::MIN_POSITIVE)))
            .max()
    }

    /// Counts one failure against each of `keys`.
    pub fn failed(&self, keys: &[String]) {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() + keys.len() > MAX_KEYS {
            buckets.retain(|_, b| {
                (b.left + now.duration_since(b.at).as_secs_f64() * self.per_sec) < self.burst
            });
        }
        for k in keys {
            let left = buckets
                .get(k)
                .map_or(self.burst, |b| self.refilled(*b, now));
            if buckets.len() < MAX_KEYS || buckets.contains_key(k) {
                buckets.insert(
                    k.clone(),
                    Bucket {
                        left: (left - 1.0).max(0.0),
                        at: now,
                    },
                );
            }
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_key_is_held_back_once_its_burst_of_failures_is_spent() {
        let t = FailureThrottle::new(RateSpec {
            count: 1,
            period_secs: 60,
            burst: 3,
        });
        let h29 = keys(&["id:000.00.00.H29", "ip:192.0.2.1"]);
        for _ in 0..3 {
            assert_eq!(t.wait(&h29), None);
            t.failed(&h29);
        }
        let wait = t.wait(&h29).expect("held back");
        assert!(
            wait > Duration::from_secs(50) && wait <= Duration::from_secs(60),
            "{wait:?}"
        );
        // Another identity from the same address is held back too; from elsewhere it is not.
        assert!(
            t.wait(&keys(&["id:000.00.00.H26", "ip:192.0.2.1"]))
                .is_some()
        );
        assert_eq!(t.wait(&keys(&["id:000.00.00.H26", "ip:192.0.2.9"])), None);
        assert_eq!(t.tracked(), 2);
    }

    #[test]
    fn the_bucket_refills_with_time() {
        let t = FailureThrottle::new(RateSpec {
            count: 1000,
            period_secs: 1,
            burst: 1,
        });
        let k = keys(&["ip:192.0.2.1"]);
        t.failed(&k);
        assert!(t.wait(&k).is_some());
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(t.wait(&k), None);
    }
}
