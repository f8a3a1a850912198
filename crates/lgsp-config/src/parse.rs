//! Small value parsers shared by the config checks.

use std::time::Duration;

/// `"250ms"`, `"10s"`, `"2m"`, `"1h"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let fix = || {
        format!(
            "`{s}` is not a duration; write a whole number with a unit: \"250ms\", \"10s\", \"2m\", \"1h\" or \"30d\""
        )
    };
    let n: u64 = num.parse().map_err(|_| fix())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        "d" => Duration::from_secs(n.saturating_mul(86_400)),
        _ => return Err(fix()),
    };
    if d.is_zero() {
        return Err(format!("`{s}` is zero; a timeout must be at least 1ms"));
    }
    Ok(d)
}

/// `"20/s"`, `"600/m"`, `"10000/h"` → (count, period in seconds).
pub fn parse_rate(s: &str) -> Result<(u32, u32), String> {
    let fix = || {
        format!(
            "`{s}` is not a rate; write a count per second, minute or hour, e.g. \"20/s\", \"600/m\", \"10000/h\""
        )
    };
    let (count, unit) = s.trim().split_once('/').ok_or_else(fix)?;
    let count: u32 = count.trim().parse().map_err(|_| fix())?;
    let period = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(fix()),
    };
    if count == 0 {
        return Err(format!(
            "`{s}`: a rate of zero refuses everything; remove the route or its agencies instead"
        ));
    }
    Ok((count, period))
}

/// `https://host:port[/base]` → (authority, base path without a trailing slash): upstreams are always TLS, the
/// port always explicit.
pub(crate) fn parse_upstream(s: &str) -> Result<(String, String), String> {
    let fix = || {
        format!(
            "`{s}` is not an upstream URL; write \"https://host:port\" with an optional base path, e.g. \"https://ndxp.example:8444/ndxp\", or a broker: \"nats://host:4222/subject\", \"amqp://user:pass@host:5672/%2f?exchange=…&routing_key=…\""
        )
    };
    let rest = s.strip_prefix("https://").ok_or_else(fix)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if path.contains(['?', '#']) || authority.contains('@') {
        return Err(fix());
    }
    let uri: http::Uri = format!("https://{authority}/").parse().map_err(|_| fix())?;
    if uri.host().is_none_or(str::is_empty) || uri.port_u16().is_none() {
        return Err(fix());
    }
    Ok((authority.to_owned(), path.trim_end_matches('/').to_owned()))
}

/// Agency codes (mã định danh điện tử, QĐ 20/2020/QĐ-TTg): dot-separated groups of `0-9A-Z`, at most 35 chars.
pub fn valid_agency_code(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 35
        && s.split('.').all(|g| {
            !g.is_empty()
                && g.bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
        })
}

/// Names that become header values and metric labels: `[A-Za-z0-9._-]{1,64}`.
pub fn valid_identity(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("10").unwrap_err().contains("\"10s\""));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1.5s").is_err());
    }

    #[test]
    fn upstreams() {
        let (authority, base) = parse_upstream("https://localhost:8444/ndxp/").unwrap();
        assert_eq!(
            (authority.as_str(), base.as_str()),
            ("localhost:8444", "/ndxp")
        );
        assert_eq!(parse_upstream("https://127.0.0.1:1").unwrap().1, "");
        assert!(parse_upstream("http://localhost:8444").is_err());
        assert!(parse_upstream("https://localhost").is_err());
        assert!(parse_upstream("https://localhost:8444/x?y").is_err());
    }

    #[test]
    fn agency_codes() {
        assert!(valid_agency_code("000.00.00.H29"));
        assert!(valid_agency_code("G09"));
        assert!(!valid_agency_code("000.00.00.h29"));
        assert!(!valid_agency_code("000..H29"));
        assert!(!valid_agency_code(&"A".repeat(36)));
    }
}
