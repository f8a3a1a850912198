//! Config errors that name the file, the line and the fix.

use std::fmt;
use std::ops::Range;

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted path of the field, e.g. `hop[0].route[1].upstream`.
    pub field: String,
    pub message: String,
}

impl Problem {
    pub fn without_line(field: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            line: None,
            column: None,
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Every problem found in one file; the config is refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub source: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match (p.line, p.column) {
                (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: ", self.source)?,
                (Some(l), None) => write!(f, "{}:{l}: ", self.source)?,
                _ => write!(f, "{}: ", self.source)?,
            }
            if p.field.is_empty() {
                write!(f, "{}", p.message)?;
            } else {
                write!(f, "{}: {}", p.field, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Turns byte offsets into 1-based line and column numbers.
pub(crate) struct SourceMap<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> SourceMap<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SourceMap { text, line_starts }
    }

    pub(crate) fn line_of(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&s| s <= offset).max(1)
    }

    pub(crate) fn column_of(&self, offset: usize) -> usize {
        let line = self.line_of(offset);
        let start = self.line_starts[line - 1];
        self.text
            .get(start..offset.min(self.text.len()))
            .map_or(1, |s| s.chars().count() + 1)
    }

    pub(crate) fn problem(
        &self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Problem {
        Problem {
            line: Some(self.line_of(span.start)),
            column: Some(self.column_of(span.start)),
            field: field.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns_are_one_based() {
        let m = SourceMap::new("a = 1\nbb = 2\n");
        assert_eq!((m.line_of(0), m.column_of(0)), (1, 1));
        assert_eq!((m.line_of(6), m.column_of(6)), (2, 1));
        assert_eq!((m.line_of(11), m.column_of(11)), (2, 6));
    }
}
