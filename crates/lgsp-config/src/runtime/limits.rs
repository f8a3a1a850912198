//! `[ratelimit]` (where rate-limit decisions are made) and `[overload]` (caps on requests in flight).

use std::time::Duration;

use super::check::Checker;
use super::{Origin, defaults};
use crate::file::{FileOverload, FileRateLimit};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitBackend {
    Local,
    /// A Redis URL shared by every replica, and where the file names it.
    Redis {
        url: String,
        origin: Origin,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub backend: RateLimitBackend,
    /// With the shared backend unreachable: decide locally (true) or refuse with 503 (false).
    pub fallback_local: bool,
    pub timeout: Duration,
    pub key_prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverloadConfig {
    pub max_in_flight: usize,
    pub max_in_flight_per_agency: usize,
    pub retry_after: Duration,
}

pub(super) fn ratelimit(c: &mut Checker<'_>, f: &FileRateLimit) -> RateLimitConfig {
    let backend = match &f.backend {
        None => RateLimitBackend::Local,
        Some(b) if b.get_ref() == "local" => RateLimitBackend::Local,
        Some(b) if b.get_ref().starts_with("redis://") || b.get_ref().starts_with("rediss://") => {
            RateLimitBackend::Redis {
                url: b.get_ref().clone(),
                origin: c.origin(b, "ratelimit.backend"),
            }
        }
        Some(b) => {
            let message = format!(
                "`{}`: write \"local\" or a Redis URL like \"redis://127.0.0.1:6379\"",
                b.get_ref()
            );
            c.problem(b, "ratelimit.backend", message);
            RateLimitBackend::Local
        }
    };
    RateLimitConfig {
        backend,
        fallback_local: c.choice(
            f.on_backend_failure.as_ref(),
            "ratelimit.on_backend_failure",
            defaults::RATELIMIT_FALLBACK_LOCAL,
            &[("local", true), ("refuse", false)],
            "write \"local\" (decide in-process) or \"refuse\" (answer 503)",
        ),
        timeout: c.duration(
            f.timeout.as_ref(),
            "ratelimit.timeout",
            defaults::RATELIMIT_TIMEOUT,
        ),
        key_prefix: f
            .key_prefix
            .clone()
            .unwrap_or_else(|| defaults::RATELIMIT_KEY_PREFIX.to_owned()),
    }
}

pub(super) fn overload(c: &mut Checker<'_>, f: &FileOverload) -> OverloadConfig {
    OverloadConfig {
        max_in_flight: c.bounded(
            f.max_in_flight.as_ref(),
            "overload.max_in_flight",
            defaults::MAX_IN_FLIGHT,
            &defaults::MAX_IN_FLIGHT_RANGE,
        ),
        max_in_flight_per_agency: c.bounded(
            f.max_in_flight_per_agency.as_ref(),
            "overload.max_in_flight_per_agency",
            defaults::MAX_IN_FLIGHT_PER_AGENCY,
            &defaults::MAX_IN_FLIGHT_PER_AGENCY_RANGE,
        ),
        retry_after: c.duration(
            f.retry_after.as_ref(),
            "overload.retry_after",
            defaults::OVERLOAD_RETRY_AFTER,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::problems_of;

    #[test]
    fn overload_fields_are_named_by_their_section() {
        let p = problems_of("max_in_flight = 10000", "max_in_flight = 0");
        assert_eq!(p[0].field, "overload.max_in_flight");
        let p = problems_of(
            "max_in_flight_per_agency = 200",
            "max_in_flight_per_agency = 0",
        );
        assert_eq!(p[0].field, "overload.max_in_flight_per_agency");
    }

    #[test]
    fn backends_are_local_or_redis_urls() {
        let p = problems_of("backend = \"local\"", "backend = \"memcached://x\"");
        assert_eq!(p[0].field, "ratelimit.backend");
        let p = problems_of(
            "on_backend_failure = \"local\"",
            "on_backend_failure = \"panic\"",
        );
        assert_eq!(p[0].field, "ratelimit.on_backend_failure");
        let text = crate::EMBEDDED.replacen(
            "backend = \"local\"",
            "backend = \"redis://127.0.0.1:6379\"",
            1,
        );
        let c = crate::parse(&text, "t.toml", std::path::Path::new(".")).unwrap();
        let RateLimitBackend::Redis { url, origin } = &c.ratelimit.backend else {
            panic!("{:?}", c.ratelimit.backend);
        };
        assert_eq!(url, "redis://127.0.0.1:6379");
        assert_eq!(origin.field, "ratelimit.backend");
        assert!(origin.line.is_some());
    }
}
