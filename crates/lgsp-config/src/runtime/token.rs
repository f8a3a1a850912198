//! `[token]`: bearer tokens issued by `POST /token` (lifetime, shared secret).

use std::time::Duration;

use super::check::Checker;
use super::{ConfigPath, defaults};
use crate::file::FileToken;

#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub ttl: Duration,
    /// At least [`defaults::TOKEN_SECRET_MIN_BYTES`] bytes, read when the gateway is prepared.
    pub secret_file: Option<ConfigPath>,
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
    }
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
        assert!(p[0].message.contains("between 1m and 24h"), "{p:?}");
    }
}
