//! Times as the journal's users write and read them: RFC 3339 (UTC) out, RFC 3339 or a date (midnight in Vietnam,
//! UTC+07:00, the agencies' own day) in, and a month `YYYY-MM` as the span of its days in Vietnam.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Vietnam's offset: dates without a time are midnight there.
const DAY_OFFSET: time::UtcOffset = match time::UtcOffset::from_hms(7, 0, 0) {
    Ok(o) => o,
    Err(_) => time::UtcOffset::UTC,
};

/// RFC 3339 (UTC) of microseconds since the epoch.
pub fn rfc3339(us: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// `2026-11-01T08:00:00+07:00`, or a date `2026-11-01` (midnight in Vietnam): microseconds since the epoch.
pub fn parse_time(v: &str) -> Result<i64, String> {
    let t = if v.len() == 10 {
        date(v).map(|d| d.midnight().assume_offset(DAY_OFFSET))
    } else {
        OffsetDateTime::parse(v, &Rfc3339).map_err(|e| e.to_string())
    }
    .map_err(|e| format!("`{v}` is neither an RFC 3339 time nor a date YYYY-MM-DD ({e})"))?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).map_err(|_| format!("`{v}` is out of range"))
}

/// `YYYY-MM-DD`.
fn date(v: &str) -> Result<time::Date, String> {
    let mut parts = v.split('-');
    let mut next = || parts.next().and_then(|p| p.parse::<u16>().ok());
    let (Some(y), Some(m), Some(d)) = (next(), next(), next()) else {
        return Err("not YYYY-MM-DD".into());
    };
    let month = time::Month::try_from(u8::try_from(m).unwrap_or(0)).map_err(|e| e.to_string())?;
    time::Date::from_calendar_date(i32::from(y), month, u8::try_from(d).unwrap_or(0))
        .map_err(|e| e.to_string())
}

/// `YYYY-MM` → the month's start and the next month's (microseconds), in Vietnam time.
pub fn month_bounds(month: &str) -> Result<(i64, i64), String> {
    let bad = || format!("--month {month}: write the month as YYYY-MM, e.g. 2026-11");
    let (y, m) = month.split_once('-').ok_or_else(bad)?;
    let (y, m): (i32, u32) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if !(1..=12).contains(&m) || month.len() != 7 {
        return Err(bad());
    }
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let start = parse_time(&format!("{y:04}-{m:02}-01")).map_err(|_| bad())?;
    let end = parse_time(&format!("{ny:04}-{nm:02}-01")).map_err(|_| bad())?;
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_month_runs_from_its_first_midnight_in_vietnam_to_the_next() {
        let (from, to) = month_bounds("2026-12").unwrap();
        assert_eq!(rfc3339(from), "2026-11-30T17:00:00Z");
        assert_eq!(rfc3339(to), "2026-12-31T17:00:00Z");
        for bad in ["2026-13", "2026-1", "26-01", "x"] {
            assert!(month_bounds(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_time("2026-11-01").unwrap(),
            from - 30 * 86_400_000_000
        );
        assert!(parse_time("2026-11-01T08:00:00+07:00").is_ok());
        assert!(parse_time("yesterday").is_err());
    }
}
