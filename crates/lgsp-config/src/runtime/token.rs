//! `[token]`: bearer tokens issued by `POST /token` (lifetime, shared secret); `[auth]`: how many failed
//! authentications an identity or an address may make.

use std::time::Duration;

use super::check::Checker;
use super::route::{RateSpec, rate_spec};
use super::{ConfigPath, defaults};
use crate::file::{FileAuth, FileToken};

#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub ttl: Duration,
    /// At least [`defaults::TOKEN_SECRET_MIN_BYTES`] bytes, read when the gateway is prepared.
    pub secret_file: Option<ConfigPath>,
    /// The secret before the last rotation (tokens name the secret that signed them, `kid` in their header):
    /// accepted, never used to sign.
    pub previous_secret_file: Option<ConfigPath>,
}

pub(super) fn token(c: &mut Checker<'_>, f: &FileToken) -> TokenConfig {
    TokenConfig {
        ttl: c.duration_within(
            f.ttl.as_ref(),
            "token.ttl",
            defaults::TOKEN_TTL,
            &defaults::TOKEN_TTL_RANGE,
        ),
        secret_file: f
            .secret_file
            .as_ref()
            .map(|p| c.path(p, "token.secret_file")),
        previous_secret_file: {
            if let (Some(p), None) = (&f.previous_secret_file, &f.secret_file) {
                c.problem(
                    p,
                    "token.previous_secret_file",
                    "a previous secret needs a current one: set token.secret_file too",
                );
            }
            f.previous_secret_file
                .as_ref()
                .map(|p| c.path(p, "token.previous_secret_file"))
        },
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Failed authentications per certificate identity and per source address: past the burst, further attempts
    /// are refused (429 `auth.too_many_failures`) until the rate allows one again.
    pub failures: RateSpec,
}

pub(super) fn auth(c: &mut Checker<'_>, f: &FileAuth) -> AuthConfig {
    let (count, period_secs) = defaults::AUTH_FAILURE_RATE;
    let default = RateSpec {
        count,
        period_secs,
        burst: defaults::AUTH_FAILURE_BURST,
    };
    let failures = match (&f.failure_rate, &f.failure_burst) {
        (None, None) => default,
        (Some(rate), Some(burst)) => rate_spec(c, rate, burst, "auth.failure").unwrap_or(default),
        (Some(v), None) => {
            c.problem(
                v,
                "auth.failure_burst",
                "give failure_rate and failure_burst together",
            );
            default
        }
        (None, Some(v)) => {
            c.problem(
                v,
                "auth.failure_rate",
                "give failure_rate and failure_burst together",
            );
            default
        }
    };
    AuthConfig { failures }
}

#[cfg(test)]
mod tests {
    use crate::tests::problems_of;

    #[test]
    fn ttl_lies_between_a_minute_and_a_day() {
        let p = problems_of("ttl = \"1h\"", "ttl = \"2h\"\nttl_typo = 1");
        assert!(p[0].message.contains("unknown field `ttl_typo`"), "{p:?}");
        let p = problems_of("ttl = \"1h\"", "ttl = \"48h\"");
        assert_eq!(p[0].field, "token.ttl");
        assert!(p[0].message.contains("between 1m and 1d"), "{p:?}");
    }
}
