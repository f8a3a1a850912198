//! The checker every section builds with: it collects each problem with its place in the file instead of stopping
//! at the first, and turns the small value types (addresses, durations, paths, bounded numbers) into runtime values.

use std::fmt::Display;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::{ConfigPath, Origin};
use crate::error::{Problem, SourceMap};
use crate::parse::parse_duration;

pub(crate) struct Checker<'a> {
    map: &'a SourceMap<'a>,
    /// The directory relative paths resolve against.
    base: &'a Path,
    pub(crate) problems: Vec<Problem>,
}

impl<'a> Checker<'a> {
    pub(crate) fn new(map: &'a SourceMap<'a>, base: &'a Path) -> Self {
        Checker {
            map,
            base,
            problems: Vec::new(),
        }
    }

    pub(crate) fn base(&self) -> &Path {
        self.base
    }

    /// A problem at the value `at`.
    pub(crate) fn problem<T>(
        &mut self,
        at: &Spanned<T>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.problems
            .push(self.map.problem(at.span(), field, message));
    }

    /// A problem with no single place in the file (something missing).
    pub(crate) fn missing(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::without_line(field, message));
    }

    /// Where `at` was written, for problems found after this stage.
    pub(crate) fn origin<T>(&self, at: &Spanned<T>, field: impl Into<String>) -> Origin {
        let start = at.span().start;
        Origin {
            field: field.into(),
            line: Some(self.map.line_of(start)),
            column: Some(self.map.column_of(start)),
        }
    }

    pub(crate) fn addr(&mut self, v: &Spanned<String>, field: &str) -> SocketAddr {
        v.get_ref().parse().unwrap_or_else(|_| {
            let message = format!(
                "`{}` is not an address; write it as \"127.0.0.1:8443\"",
                v.get_ref()
            );
            self.problem(v, field, message);
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    /// The duration written at `v`, or `default` when it is absent (or wrong: the problem is recorded).
    pub(crate) fn duration(
        &mut self,
        v: Option<&Spanned<String>>,
        field: &str,
        default: Duration,
    ) -> Duration {
        let Some(v) = v else { return default };
        parse_duration(v.get_ref()).unwrap_or_else(|e| {
            self.problem(v, field, e);
            default
        })
    }

    /// As [`Self::duration`], within `range`.
    pub(crate) fn duration_within(
        &mut self,
        v: Option<&Spanned<String>>,
        field: &str,
        default: Duration,
        range: &RangeInclusive<Duration>,
    ) -> Duration {
        let d = self.duration(v, field, default);
        if let Some(v) = v
            && !range.contains(&d)
        {
            let (lo, hi) = (range.start(), range.end());
            self.problem(
                v,
                field,
                format!("choose between {} and {}", human(*lo), human(*hi)),
            );
        }
        d
    }

    /// A file path, resolved against the base directory.
    pub(crate) fn path(&self, v: &Spanned<String>, field: impl Into<String>) -> ConfigPath {
        let p = PathBuf::from(v.get_ref());
        ConfigPath {
            path: if p.is_absolute() {
                p
            } else {
                self.base.join(p)
            },
            origin: self.origin(v, field),
        }
    }

    /// A list of file paths (`field[i]`); `required` lists need at least one.
    pub(crate) fn paths(
        &mut self,
        v: &[Spanned<String>],
        field: &str,
        required: bool,
    ) -> Vec<ConfigPath> {
        if required && v.is_empty() {
            self.missing(field, "needs at least one PEM file");
        }
        v.iter()
            .enumerate()
            .map(|(i, p)| self.path(p, format!("{field}[{i}]")))
            .collect()
    }

    /// A size (bytes, or a number with a unit), or `default` when absent.
    pub(crate) fn size<T>(
        &mut self,
        v: Option<&Spanned<T>>,
        get: impl Fn(&T) -> Option<&crate::file::FileSize>,
        field: &str,
        default: u64,
    ) -> u64 {
        let Some(at) = v else { return default };
        let Some(size) = get(at.get_ref()) else {
            return default;
        };
        match size {
            crate::file::FileSize::Bytes(n) => *n,
            crate::file::FileSize::Text(t) => parse_size(t).unwrap_or_else(|e| {
                self.problem(at, field, e);
                default
            }),
        }
    }

    /// A count within `range`, or `default` when absent.
    pub(crate) fn bounded(
        &mut self,
        v: Option<&Spanned<u64>>,
        field: &str,
        default: u64,
        range: &RangeInclusive<u64>,
    ) -> usize {
        let n = v.map_or(default, |s| *s.get_ref());
        if let Some(s) = v
            && !range.contains(&n)
        {
            self.problem(
                s,
                field,
                format!("choose between {} and {}", range.start(), range.end()),
            );
        }
        usize::try_from(n).unwrap_or(usize::MAX)
    }

    /// One of a few words, each meaning a value; anything else is a problem listing the choices.
    pub(crate) fn choice<T: Copy>(
        &mut self,
        v: Option<&Spanned<String>>,
        field: &str,
        default: T,
        choices: &[(&str, T)],
        fix: impl Display,
    ) -> T {
        let Some(v) = v else { return default };
        match choices.iter().find(|(word, _)| *word == v.get_ref()) {
            Some((_, value)) => *value,
            None => {
                self.problem(v, field, format!("`{}`: {fix}", v.get_ref()));
                default
            }
        }
    }
}

/// `"512MiB"`, `"1 GiB"`, `"2GB"`, `"4096"`: bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let fix = || {
        format!(
            "`{text}` is not a size; write bytes (1048576) or a number with B, KiB, MiB, GiB, TiB, KB, MB, GB or TB (\"512MiB\")"
        )
    };
    let n: u64 = number.parse().map_err(|_| fix())?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return Err(fix()),
    };
    n.checked_mul(scale).ok_or_else(fix)
}

/// A duration as the config writes it (`1m`, `250ms`).
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_nanos() != 0 {
        format!("{}ms", d.as_millis())
    } else if s >= 86_400 && s.is_multiple_of(86_400) {
        format!("{}d", s / 86_400)
    } else if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_bytes_or_a_number_with_a_unit() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size(" 1 GiB "), Ok(1 << 30));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        for bad in ["", "GiB", "1 gib", "1.5GiB", "-1", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_are_written_back_as_the_config_writes_them() {
        assert_eq!(human(Duration::from_secs(60)), "1m");
        assert_eq!(human(Duration::from_secs(86_400)), "1d");
        assert_eq!(human(Duration::from_secs(7200)), "2h");
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_secs(90)), "90s");
    }
}
