//! Simple types: the built-in types of the subset, their lexical spaces and value comparison, and the facets a
//! restriction adds.

use std::borrow::Cow;
use std::cmp::Ordering;

use regex::Regex;

/// Built-in types of the subset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    String,
    NormalizedString,
    Token,
    Boolean,
    Decimal,
    Integer,
    Int,
    Long,
    NonNegativeInteger,
    PositiveInteger,
    Date,
    DateTime,
    GYear,
}

impl Builtin {
    pub fn from_local(name: &str) -> Option<Self> {
        Some(match name {
            "string" => Builtin::String,
            "normalizedString" => Builtin::NormalizedString,
            "token" => Builtin::Token,
            "boolean" => Builtin::Boolean,
            "decimal" => Builtin::Decimal,
            "integer" => Builtin::Integer,
            "int" => Builtin::Int,
            "long" => Builtin::Long,
            "nonNegativeInteger" => Builtin::NonNegativeInteger,
            "positiveInteger" => Builtin::PositiveInteger,
            "date" => Builtin::Date,
            "dateTime" => Builtin::DateTime,
            "gYear" => Builtin::GYear,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Builtin::String => "xs:string",
            Builtin::NormalizedString => "xs:normalizedString",
            Builtin::Token => "xs:token",
            Builtin::Boolean => "xs:boolean",
            Builtin::Decimal => "xs:decimal",
            Builtin::Integer => "xs:integer",
            Builtin::Int => "xs:int",
            Builtin::Long => "xs:long",
            Builtin::NonNegativeInteger => "xs:nonNegativeInteger",
            Builtin::PositiveInteger => "xs:positiveInteger",
            Builtin::Date => "xs:date",
            Builtin::DateTime => "xs:dateTime",
            Builtin::GYear => "xs:gYear",
        }
    }

    /// `xs:string` and its whitespace-handling kin: the types whose values may hold whitespace.
    pub fn is_stringy(self) -> bool {
        matches!(
            self,
            Builtin::String | Builtin::NormalizedString | Builtin::Token
        )
    }

    fn is_numeric(self) -> bool {
        matches!(
            self,
            Builtin::Decimal
                | Builtin::Integer
                | Builtin::Int
                | Builtin::Long
                | Builtin::NonNegativeInteger
                | Builtin::PositiveInteger
        )
    }

    /// Whitespace handling of the type (XSD `whiteSpace`): preserve, replace or collapse.
    pub fn normalize(self, raw: &str) -> String {
        self.normalized(raw).into_owned()
    }

    /// As [`Builtin::normalize`], borrowing when the value is already normal (the common case).
    pub fn normalized(self, raw: &str) -> std::borrow::Cow<'_, str> {
        use std::borrow::Cow;
        let b = raw.as_bytes();
        // Tab, line feed and carriage return are the only bytes below 0x20 XML text holds; these scans have no
        // early exit so they run a few bytes per instruction.
        let controls = || b.iter().fold(false, |acc, c| acc | (*c < 0x20));
        match self {
            Builtin::String => Cow::Borrowed(raw),
            Builtin::NormalizedString if !controls() => Cow::Borrowed(raw),
            Builtin::NormalizedString => Cow::Owned(raw.replace(['\t', '\n', '\r'], " ")),
            _ => {
                let doubled = b
                    .iter()
                    .zip(b.iter().skip(1))
                    .fold(false, |acc, (x, y)| acc | ((*x == b' ') & (*y == b' ')));
                let edges = b.first() == Some(&b' ') || b.last() == Some(&b' ');
                if !(edges || doubled || controls()) {
                    return Cow::Borrowed(raw);
                }
                Cow::Owned(
                    raw.split([' ', '\t', '\n', '\r'])
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                        .join(" "),
                )
            }
        }
    }

    /// As [`Builtin::normalized`] for element text; `eol` says XML line-end handling is still to do (the text
    /// is as it stood in the input). Only `xs:string` needs a scan for it: the other types' scan for control
    /// characters finds a carriage return anyway.
    pub fn normalized_text(self, raw: &str, eol: bool) -> std::borrow::Cow<'_, str> {
        use std::borrow::Cow;
        match self {
            Builtin::String if eol && raw.bytes().fold(false, |acc, b| acc | (b == b'\r')) => {
                line_ends(Cow::Borrowed(raw))
            }
            Builtin::NormalizedString if eol => match self.normalized(raw) {
                Cow::Borrowed(s) => Cow::Borrowed(s),
                Cow::Owned(_) => {
                    Cow::Owned(self.normalized(&line_ends(Cow::Borrowed(raw))).into_owned())
                }
            },
            _ => self.normalized(raw),
        }
    }

    /// Parses a normalized lexical value into the type's value space.
    pub fn parse(self, v: &str) -> Result<Value, String> {
        match self {
            Builtin::String | Builtin::NormalizedString | Builtin::Token => Ok(Value::Str),
            Builtin::Boolean => match v {
                "true" | "1" | "false" | "0" => Ok(Value::Str),
                _ => Err(format!("`{}` is not an {}: use true, false, 1 or 0", clip(v), self.name())),
            },
            Builtin::Decimal => Decimal::parse(v).map(Value::Num).ok_or_else(|| format!("`{}` is not an xs:decimal", clip(v))),
            _ if self.is_numeric() => {
                let d = Decimal::parse_integer(v).ok_or_else(|| format!("`{}` is not an integer", clip(v)))?;
                let (lo, hi): (Option<&str>, Option<&str>) = match self {
                    Builtin::Int => (Some("-2147483648"), Some("2147483647")),
                    Builtin::Long => (Some("-9223372036854775808"), Some("9223372036854775807")),
                    Builtin::NonNegativeInteger => (Some("0"), None),
                    Builtin::PositiveInteger => (Some("1"), None),
                    _ => (None, None),
                };
                let below = lo.and_then(Decimal::parse).is_some_and(|lo| d.cmp(&lo) == Ordering::Less);
                let above = hi.and_then(Decimal::parse).is_some_and(|hi| d.cmp(&hi) == Ordering::Greater);
                if below || above {
                    let range = format!("{}..{}", lo.unwrap_or("-∞"), hi.unwrap_or("∞"));
                    return Err(format!("`{}` is outside the range of {} ({range})", clip(v), self.name()));
                }
                Ok(Value::Num(d))
            }
            Builtin::Date => plain_date(v)
                .or_else(|| parse_date_time(v, Kind::Date)).map(Value::Time).ok_or_else(|| {
                format!("`{}` is not an xs:date: write YYYY-MM-DD with a real day of the month", clip(v))
            }),
            Builtin::DateTime => parse_date_time(v, Kind::DateTime).map(Value::Time).ok_or_else(|| {
                format!("`{}` is not an xs:dateTime: write YYYY-MM-DDThh:mm:ss with an optional zone, e.g. 2026-10-31T16:30:00+07:00", clip(v))
            }),
            Builtin::GYear => parse_date_time(v, Kind::GYear).map(Value::Time).ok_or_else(|| {
                format!("`{}` is not an xs:gYear: write the year with four digits", clip(v))
            }),
            _ => Ok(Value::Str),
        }
    }
}

/// XML line-end handling: `\r\n` and a lone `\r` read as `\n`.
pub(crate) fn line_ends(raw: Cow<'_, str>) -> Cow<'_, str> {
    if !raw.contains('\r') {
        return raw;
    }
    Cow::Owned(raw.replace("\r\n", "\n").replace('\r', "\n"))
}

/// Shortens a value quoted in a message.
pub fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if s.chars().nth(64).is_some() {
        out.push('…');
    }
    out
}

/// A value in the value space, for facets that compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Str,
    Num(Decimal),
    Time(TimeValue),
}

impl Value {
    fn compare(&self, other: &Value) -> Option<Ordering> {
        match (self, other) {
            (Value::Num(a), Value::Num(b)) => Some(a.cmp(b)),
            (Value::Time(a), Value::Time(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

/// An arbitrary-precision decimal: sign, integer digits (no leading zeros), fraction digits (no trailing zeros).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal {
    negative: bool,
    int: String,
    frac: String,
}

impl Decimal {
    pub fn parse(s: &str) -> Option<Decimal> {
        let (negative, body) = match s.as_bytes().first()? {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let (int, frac) = body.split_once('.').unwrap_or((body, ""));
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let int = int.trim_start_matches('0').to_owned();
        let frac = frac.trim_end_matches('0').to_owned();
        let zero = int.is_empty() && frac.is_empty();
        Some(Decimal {
            negative: negative && !zero,
            int,
            frac,
        })
    }

    pub fn parse_integer(s: &str) -> Option<Decimal> {
        if s.contains('.') {
            return None;
        }
        Decimal::parse(s)
    }

    /// Significant digits (XSD totalDigits counts the value, not the lexical form).
    pub fn total_digits(&self) -> usize {
        (self.int.len() + self.frac.len()).max(1)
    }

    pub fn fraction_digits(&self) -> usize {
        self.frac.len()
    }

    fn cmp_magnitude(&self, other: &Decimal) -> Ordering {
        self.int
            .len()
            .cmp(&other.int.len())
            .then_with(|| self.int.cmp(&other.int))
            .then_with(|| self.frac.cmp(&other.frac))
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self.negative, other.negative) {
            (false, true) => Ordering::Greater,
            (true, false) => Ordering::Less,
            (false, false) => self.cmp_magnitude(other),
            (true, true) => other.cmp_magnitude(self),
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Date,
    DateTime,
    GYear,
}

/// A point in time normalised to UTC where a zone is given; compared field by field.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeValue {
    pub year: i64,
    pub month: u8,
    pub day: u8,
    seconds: i64,
    nanos: String,
}

/// The common `YYYY-MM-DD` (four-digit year, no zone) read straight from its bytes.
fn plain_date(v: &str) -> Option<TimeValue> {
    let b: &[u8; 10] = v.as_bytes().try_into().ok()?;
    let digit = |i: usize| b[i].is_ascii_digit().then(|| i64::from(b[i] - b'0'));
    if b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = ((digit(0)? * 10 + digit(1)?) * 10 + digit(2)?) * 10 + digit(3)?;
    let month = u8::try_from(digit(5)? * 10 + digit(6)?).ok()?;
    let day = u8::try_from(digit(8)? * 10 + digit(9)?).ok()?;
    if year == 0 || !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    Some(TimeValue {
        year,
        month,
        day,
        seconds: 0,
        nanos: String::new(),
    })
}

pub(crate) fn days_in_month(year: i64, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

fn digits(s: &str, n: usize) -> Option<u32> {
    (s.len() == n && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Splits a trailing zone (`Z` or `±hh:mm`) off, returning its offset in minutes.
fn split_zone(s: &str) -> Option<(&str, Option<i64>)> {
    if let Some(rest) = s.strip_suffix('Z') {
        return Some((rest, Some(0)));
    }
    if s.len() > 6 {
        let (rest, zone) = s.split_at(s.len() - 6);
        let zb = zone.as_bytes();
        if (zb[0] == b'+' || zb[0] == b'-') && zb[3] == b':' {
            let h = digits(&zone[1..3], 2)?;
            let m = digits(&zone[4..6], 2)?;
            if h > 14 || m > 59 || (h == 14 && m > 0) {
                return None;
            }
            let off = i64::from(h * 60 + m);
            return Some((rest, Some(if zb[0] == b'-' { -off } else { off })));
        }
    }
    Some((s, None))
}

/// Year: at least four digits, no leading zero beyond four, not 0000; an optional leading minus.
fn parse_year(s: &str) -> Option<i64> {
    let (neg, body) = s.strip_prefix('-').map_or((false, s), |b| (true, b));
    if body.len() < 4
        || !body.bytes().all(|b| b.is_ascii_digit())
        || (body.len() > 4 && body.starts_with('0'))
    {
        return None;
    }
    let y: i64 = body.parse().ok()?;
    if y == 0 {
        return None;
    }
    Some(if neg { -y } else { y })
}

fn parse_date_time(s: &str, kind: Kind) -> Option<TimeValue> {
    // Every lexical form here is ASCII; checking first keeps the byte slicing below on char boundaries.
    if !s.is_ascii() {
        return None;
    }
    let (body, zone) = split_zone(s)?;
    let (date_part, time_part) = match kind {
        Kind::DateTime => {
            let (d, t) = body.split_once('T')?;
            (d, Some(t))
        }
        _ => (body, None),
    };
    let (year, month, day) = if kind == Kind::GYear {
        (parse_year(date_part)?, 1, 1)
    } else {
        // The year may be negative; split from the right.
        let (ym, d) = date_part.rsplit_once('-')?;
        let (y, m) = ym.rsplit_once('-')?;
        let (year, month, day) = (
            parse_year(y)?,
            u8::try_from(digits(m, 2)?).ok()?,
            u8::try_from(digits(d, 2)?).ok()?,
        );
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return None;
        }
        (year, month, day)
    };
    let mut seconds = 0i64;
    let mut nanos = String::new();
    if let Some(t) = time_part {
        let mut parts = t.splitn(3, ':');
        let (h, m, sec) = (parts.next()?, parts.next()?, parts.next()?);
        let (sec, frac) = sec.split_once('.').map_or((sec, ""), |(a, b)| (a, b));
        let (h, m, sec) = (digits(h, 2)?, digits(m, 2)?, digits(sec, 2)?);
        if h > 23
            || m > 59
            || sec > 59
            || (!frac.is_empty() && !frac.bytes().all(|b| b.is_ascii_digit()))
        {
            return None;
        }
        if t.contains('.') && frac.is_empty() {
            return None;
        }
        seconds = i64::from(h * 3600 + m * 60 + sec);
        nanos = frac.trim_end_matches('0').to_owned();
    }
    let mut v = TimeValue {
        year,
        month,
        day,
        seconds,
        nanos,
    };
    if let Some(offset) = zone {
        v.seconds -= offset * 60;
        normalise(&mut v);
    }
    Some(v)
}

/// Carries seconds outside one day into the date.
fn normalise(v: &mut TimeValue) {
    while v.seconds < 0 {
        v.seconds += 86_400;
        if v.day > 1 {
            v.day -= 1;
        } else {
            if v.month > 1 {
                v.month -= 1;
            } else {
                v.month = 12;
                v.year -= 1;
            }
            v.day = days_in_month(v.year, v.month);
        }
    }
    while v.seconds >= 86_400 {
        v.seconds -= 86_400;
        if v.day < days_in_month(v.year, v.month) {
            v.day += 1;
        } else {
            v.day = 1;
            if v.month < 12 {
                v.month += 1;
            } else {
                v.month = 1;
                v.year += 1;
            }
        }
    }
}

/// The facets one restriction step adds. Patterns of one step are alternatives; steps are all checked.
#[derive(Debug, Default, Clone)]
pub struct Facets {
    pub patterns: Vec<(String, Regex)>,
    pub enumeration: Vec<String>,
    pub length: Option<usize>,
    pub min_length: Option<usize>,
    pub max_length: Option<usize>,
    pub min_inclusive: Option<(String, Value)>,
    pub max_inclusive: Option<(String, Value)>,
    pub min_exclusive: Option<(String, Value)>,
    pub max_exclusive: Option<(String, Value)>,
    pub total_digits: Option<usize>,
    pub fraction_digits: Option<usize>,
}

/// A simple type: its built-in base and the restriction steps from the base down.
#[derive(Debug, Clone)]
pub struct SimpleType {
    pub name: Option<String>,
    pub builtin: Builtin,
    pub steps: Vec<Facets>,
}

/// A value that breaks the type: the rule code and what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimpleError {
    pub rule: &'static str,
    pub message: String,
}

fn fail(rule: &'static str, message: String) -> Result<(), SimpleError> {
    Err(SimpleError { rule, message })
}

impl SimpleType {
    pub fn builtin(b: Builtin) -> Self {
        SimpleType {
            name: Some(b.name().to_owned()),
            builtin: b,
            steps: Vec::new(),
        }
    }

    fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("a restriction of {}", self.builtin.name()))
    }

    /// Checks a raw (unnormalised) value against the type.
    pub fn check(&self, raw: &str) -> Result<(), SimpleError> {
        self.check_normalized(&self.builtin.normalized(raw))
    }

    /// Checks a value already normalised by [`Builtin::normalized`].
    pub fn check_normalized(&self, v: &str) -> Result<(), SimpleError> {
        let value = if self.builtin.is_stringy() {
            // Every string is in the lexical space of the string types.
            Value::Str
        } else {
            self.builtin.parse(v).map_err(|message| SimpleError {
                rule: "xsd.invalid_value",
                message,
            })?
        };
        for f in &self.steps {
            self.check_step(f, v, &value)?;
        }
        Ok(())
    }

    fn check_step(&self, f: &Facets, v: &str, value: &Value) -> Result<(), SimpleError> {
        if !f.patterns.is_empty() && !f.patterns.iter().any(|(_, re)| re.is_match(v)) {
            let shown: Vec<&str> = f.patterns.iter().map(|(p, _)| p.as_str()).collect();
            return fail(
                "xsd.pattern",
                format!(
                    "`{}` does not match the pattern {} of {}",
                    clip(v),
                    shown.join(" | "),
                    self.label()
                ),
            );
        }
        if !f.enumeration.is_empty() {
            let hit = f.enumeration.iter().any(|e| {
                match (self.builtin.is_numeric(), Decimal::parse(e), value) {
                    (true, Some(ed), Value::Num(d)) => ed == *d,
                    _ => e == v,
                }
            });
            if !hit {
                return fail(
                    "xsd.enumeration",
                    format!("`{}` is not one of: {}", clip(v), f.enumeration.join(", ")),
                );
            }
        }
        let length_applies = self.builtin.is_stringy()
            && (f.length.is_some() || f.min_length.is_some() || f.max_length.is_some());
        if length_applies {
            let chars = char_count(v, f);
            if let Some(n) = f.length.filter(|n| chars != *n) {
                return fail(
                    "xsd.length",
                    format!(
                        "`{}` has {chars} characters; exactly {n} are required",
                        clip(v)
                    ),
                );
            }
            if let Some(n) = f.min_length.filter(|n| chars < *n) {
                return fail(
                    "xsd.min_length",
                    format!(
                        "`{}` has {chars} characters; at least {n} are required",
                        clip(v)
                    ),
                );
            }
            if let Some(n) = f.max_length.filter(|n| chars > *n) {
                return fail(
                    "xsd.max_length",
                    format!(
                        "`{}` has {chars} characters; at most {n} are allowed",
                        clip(v)
                    ),
                );
            }
        }
        if let Value::Num(d) = value {
            if let Some(n) = f.total_digits.filter(|n| d.total_digits() > *n) {
                return fail(
                    "xsd.total_digits",
                    format!(
                        "`{}` has {} digits; at most {n} are allowed",
                        clip(v),
                        d.total_digits()
                    ),
                );
            }
            if let Some(n) = f.fraction_digits.filter(|n| d.fraction_digits() > *n) {
                return fail(
                    "xsd.fraction_digits",
                    format!(
                        "`{}` has {} decimal places; at most {n} are allowed",
                        clip(v),
                        d.fraction_digits()
                    ),
                );
            }
        }
        if let Value::Str = value {
            // Strings have no order: the bounds facets do not apply.
            return Ok(());
        }
        fn cmp<'b>(
            value: &Value,
            bound: &'b Option<(String, Value)>,
        ) -> Option<(&'b String, Ordering)> {
            bound
                .as_ref()
                .and_then(|(s, b)| value.compare(b).map(|o| (s, o)))
        }
        let cmp = |bound| cmp(value, bound);
        if let Some((b, Ordering::Less)) = cmp(&f.min_inclusive) {
            return fail(
                "xsd.min_inclusive",
                format!("`{}` is below the minimum {b}", clip(v)),
            );
        }
        if let Some((b, Ordering::Greater)) = cmp(&f.max_inclusive) {
            return fail(
                "xsd.max_inclusive",
                format!("`{}` is above the maximum {b}", clip(v)),
            );
        }
        if let Some((b, Ordering::Less | Ordering::Equal)) = cmp(&f.min_exclusive) {
            return fail(
                "xsd.min_exclusive",
                format!("`{}` must be greater than {b}", clip(v)),
            );
        }
        if let Some((b, Ordering::Greater | Ordering::Equal)) = cmp(&f.max_exclusive) {
            return fail(
                "xsd.max_exclusive",
                format!("`{}` must be less than {b}", clip(v)),
            );
        }
        Ok(())
    }
}

/// The number of characters of `v`, or its byte length when that already settles every length facet of `f`
/// (a UTF-8 character takes one to four bytes; values are mostly ASCII).
fn char_count(v: &str, f: &Facets) -> usize {
    let bytes = v.len();
    let settled = f.length.is_none()
        && f.min_length.is_none_or(|n| bytes.div_ceil(4) >= n)
        && f.max_length.is_none_or(|n| bytes <= n);
    if settled { bytes } else { v.chars().count() }
}

/// Translates an XSD regular expression into an anchored Rust regex, refusing constructs outside the subset.
pub fn translate_pattern(xsd: &str) -> Result<String, String> {
    let mut out = String::from("^(?:");
    let mut chars = xsd.chars().peekable();
    let mut in_class = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let Some(n) = chars.next() else {
                    return Err("a pattern may not end with a lone backslash".into());
                };
                match n {
                    'i' | 'I' | 'c' | 'C' => {
                        return Err(format!(
                            "the XML name escape \\{n} is outside the supported pattern subset"
                        ));
                    }
                    'p' | 'P' if chars.peek() == Some(&'{') => {
                        let block: String = chars.clone().take_while(|c| *c != '}').collect();
                        if block.starts_with("{Is") {
                            return Err(format!(
                                "the block escape \\{n}{block}}} is outside the supported pattern subset"
                            ));
                        }
                        out.push('\\');
                        out.push(n);
                    }
                    _ => {
                        out.push('\\');
                        out.push(n);
                    }
                }
            }
            '[' => {
                in_class += 1;
                out.push('[');
            }
            ']' if in_class > 0 => {
                in_class -= 1;
                out.push(']');
            }
            '-' if in_class > 0 && chars.peek() == Some(&'[') => {
                return Err(
                    "character class subtraction (-[...]) is outside the supported pattern subset"
                        .into(),
                );
            }
            '^' if in_class == 0 => out.push_str("\\^"),
            '$' if in_class == 0 => out.push_str("\\$"),
            _ => out.push(c),
        }
    }
    out.push_str(")$");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_compare_and_count_digits_by_value() {
        let d = |s| Decimal::parse(s).unwrap();
        assert!(d("3.00") == d("3"));
        assert!(d("-1") < d("0"));
        assert!(d("10") > d("9.99"));
        assert!(d("-10") < d("-9"));
        assert_eq!(d("3.00").fraction_digits(), 0);
        assert_eq!(d("123.45").total_digits(), 5);
        assert_eq!(d("0.00").total_digits(), 1);
        assert!(Decimal::parse("1e5").is_none());
        assert!(Decimal::parse(".").is_none());
    }

    #[test]
    fn integer_ranges() {
        assert!(Builtin::Int.parse("2147483647").is_ok());
        assert!(Builtin::Int.parse("2147483648").is_err());
        assert!(Builtin::PositiveInteger.parse("0").is_err());
        assert!(Builtin::NonNegativeInteger.parse("-0").is_ok());
        assert!(Builtin::Integer.parse("1.0").is_err());
    }

    #[test]
    fn dates_are_calendar_checked_and_zones_normalised() {
        assert!(Builtin::Date.parse("2024-02-29").is_ok());
        assert!(Builtin::Date.parse("2023-02-29").is_err());
        assert!(Builtin::Date.parse("1990-13-01").is_err());
        assert!(Builtin::Date.parse("12/05/1990").is_err());
        assert!(Builtin::Date.parse("2026-10-31+07:00").is_ok());
        assert!(Builtin::DateTime.parse("2026-10-31T25:00:00").is_err());
        assert!(Builtin::DateTime.parse("2026-10-31").is_err());
        let a = Builtin::DateTime
            .parse("2026-10-31T00:30:00+07:00")
            .unwrap();
        let b = Builtin::DateTime.parse("2026-10-30T17:30:00Z").unwrap();
        assert_eq!(a, b);
        assert!(Builtin::GYear.parse("13").is_err());
        assert!(Builtin::GYear.parse("2013").is_ok());
        // Found by the fuzzer: a multi-byte character where a zone would start.
        assert!(Builtin::Date.parse("20\u{feff}01-01").is_err());
        assert!(
            Builtin::DateTime
                .parse("2026-10-31T00:00:00\u{feff}+07")
                .is_err()
        );
    }

    #[test]
    fn whitespace_rules() {
        assert_eq!(Builtin::Token.normalize("  a \n b "), "a b");
        assert_eq!(Builtin::NormalizedString.normalize("a\tb"), "a b");
        assert_eq!(Builtin::String.normalize(" a "), " a ");
    }

    #[test]
    fn patterns_are_anchored_and_literal_anchors_escaped() {
        let re = Regex::new(&translate_pattern("[0-9]{2}\\.[0-9]{3}").unwrap()).unwrap();
        assert!(re.is_match("01.003"));
        assert!(!re.is_match("x01.003"));
        assert!(translate_pattern("\\i\\c*").is_err());
        assert!(translate_pattern("[a-z-[aeiou]]").is_err());
        let re = Regex::new(&translate_pattern("a$").unwrap()).unwrap();
        assert!(re.is_match("a$"));
    }
}
