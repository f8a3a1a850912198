//! GCRA on a theoretical arrival time (TAT): a request is allowed when the TAT, advanced by one emission interval,
//! stays within the burst tolerance of now.

use std::time::Duration;

/// A rate with a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Time one request "costs": the period divided by the count (e.g. 50 ms for 20/s).
    pub interval_ns: u64,
    /// Requests allowed at once.
    pub burst: u32,
    /// The rate as written, for headers and logs (count per period).
    pub count: u32,
    pub period_secs: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a rate; write a count per second, minute or hour, e.g. \"20/s\", \"600/m\", \"10000/h\""
)]
pub struct QuotaError(pub String);

impl Quota {
    /// `"20/s"`, `"600/m"`, `"10000/h"` with a burst of at least 1.
    pub fn parse(rate: &str, burst: u32) -> Result<Quota, QuotaError> {
        let err = || QuotaError(rate.to_owned());
        let (count, unit) = rate.trim().split_once('/').ok_or_else(err)?;
        let count: u32 = count.trim().parse().map_err(|_| err())?;
        let period_secs = match unit.trim() {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => return Err(err()),
        };
        if count == 0 || burst == 0 {
            return Err(err());
        }
        Ok(Quota {
            // At least 1 ns: a rate above 10^9 per second would otherwise divide by zero in every decision.
            interval_ns: (u64::from(period_secs) * 1_000_000_000 / u64::from(count)).max(1),
            burst,
            count,
            period_secs,
        })
    }

    /// `count` per `period_secs` with `burst` (callers validated them: all at least 1).
    pub fn new(count: u32, period_secs: u32, burst: u32) -> Quota {
        let count = count.max(1);
        Quota {
            interval_ns: (u64::from(period_secs.max(1)) * 1_000_000_000 / u64::from(count)).max(1),
            burst: burst.max(1),
            count,
            period_secs,
        }
    }

    fn tolerance_ns(&self) -> u64 {
        self.interval_ns.saturating_mul(u64::from(self.burst))
    }

    /// The `RateLimit-Policy` window: the time a full burst takes to refill, in whole seconds (at least 1).
    pub fn window_secs(&self) -> u64 {
        self.tolerance_ns().div_ceil(1_000_000_000).max(1)
    }
}

/// The verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow {
        remaining: u32,
        reset: Duration,
    },
    Deny {
        retry_after: Duration,
        reset: Duration,
    },
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// One GCRA step. Returns the decision and the new TAT to store (unchanged when denied).
pub fn step(tat: u64, now: u64, q: &Quota) -> (Decision, u64) {
    let tat = tat.max(now);
    let new_tat = tat + q.interval_ns;
    let allow_at = new_tat.saturating_sub(q.tolerance_ns());
    if now < allow_at {
        let d = Decision::Deny {
            retry_after: Duration::from_nanos(allow_at - now),
            reset: Duration::from_nanos(tat - now),
        };
        return (d, tat);
    }
    let remaining = (now + q.tolerance_ns() - new_tat) / q.interval_ns;
    let d = Decision::Allow {
        remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
        reset: Duration::from_nanos(new_tat - now),
    };
    (d, new_tat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_beyond_a_billion_per_second_still_decide() {
        let q = Quota::new(u32::MAX, 1, 1_000_000);
        assert_eq!(q.interval_ns, 1);
        assert!(step(0, 1, &q).0.allowed());
        let q = Quota::parse("4000000000/s", 1).unwrap_or_else(|_| Quota::new(u32::MAX, 1, 1));
        assert!(q.interval_ns >= 1);
    }

    #[test]
    fn parses_rates() {
        assert_eq!(Quota::parse("20/s", 40).unwrap().interval_ns, 50_000_000);
        assert_eq!(Quota::parse("600/m", 1).unwrap().interval_ns, 100_000_000);
        assert!(Quota::parse("20", 1).is_err());
        assert!(Quota::parse("0/s", 1).is_err());
        assert!(Quota::parse("5/d", 1).is_err());
        assert!(Quota::parse("5/s", 0).is_err());
        assert_eq!(Quota::parse("20/s", 40).unwrap().window_secs(), 2);
    }

    #[test]
    fn a_burst_then_one_per_interval() {
        let q = Quota::parse("10/s", 3).unwrap();
        let mut tat = 0;
        let now = 1_000_000_000;
        for expected_remaining in [2, 1, 0] {
            let (d, t) = step(tat, now, &q);
            assert_eq!(
                d,
                Decision::Allow {
                    remaining: expected_remaining,
                    reset: Duration::from_nanos(t - now)
                }
            );
            tat = t;
        }
        let (d, t) = step(tat, now, &q);
        assert_eq!(
            d,
            Decision::Deny {
                retry_after: Duration::from_millis(100),
                reset: Duration::from_millis(300)
            }
        );
        assert_eq!(t, tat);
        // One interval later exactly one more fits.
        assert!(step(tat, now + 100_000_000, &q).0.allowed());
        // After a long pause the whole burst is back.
        let (d, _) = step(tat, now + 10_000_000_000, &q);
        assert_eq!(
            d,
            Decision::Allow {
                remaining: 2,
                reset: Duration::from_millis(100)
            }
        );
    }
}
