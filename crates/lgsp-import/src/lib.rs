//! From spreadsheets to packets. Most agencies have no HR software of their own and fill the ministry's spreadsheet
//! templates; this crate reads such a sheet (one row per person; `schemas/cbccvc/templates/`), turns every row into
//! one packet, checks it with the gateway's own validator, and says of every bad cell where it is — `Sheet1!D12:
//! NgaySinh: …`, the row and column the clerk sees. Sending the good packets is the caller's (`lgsp-gateway import
//! --send`).
#![forbid(unsafe_code)]

pub mod sheet;
pub mod template;

use std::path::{Path, PathBuf};

use lgsp_schema::{Catalog, Format, Options};
use serde::Serialize;

pub use sheet::{Sheet, SheetError, Value, column_letters};
pub use template::{Column, Kind, Template};

/// One thing wrong with a row, at the cell a clerk fixes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CellProblem {
    /// `Sheet1!D12`.
    pub cell: String,
    /// The packet field, e.g. `NgaySinh`.
    pub field: String,
    /// The validator's rule, or `import.*` for what the import itself found.
    pub rule: String,
    pub message: String,
}

impl std::fmt::Display for CellProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}: {} ({})",
            self.cell, self.field, self.message, self.rule
        )
    }
}

/// What became of one row.
#[derive(Debug, Clone, Serialize)]
pub struct RowOutcome {
    /// The row's number in the sheet.
    pub row: usize,
    /// The packet, when the row is good.
    #[serde(skip)]
    pub packet: Option<Vec<u8>>,
    /// Where the packet was written.
    pub file: Option<PathBuf>,
    pub problems: Vec<CellProblem>,
}

impl RowOutcome {
    pub fn is_good(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The whole import.
#[derive(Debug, Clone, Serialize)]
pub struct Import {
    pub sheet: String,
    pub message_type: &'static str,
    /// Columns of the sheet no template column takes (ignored).
    pub ignored_columns: Vec<String>,
    pub rows: Vec<RowOutcome>,
}

/// Why nothing could be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Sheet(#[from] SheetError),
    #[error("no template for {0}; templates exist for {1}")]
    NoTemplate(String, String),
    #[error(
        "{sheet}: no heading row in the first {HEADING_SEARCH} rows; the table starts with the template's headings ({expected})"
    )]
    NoHeadings { sheet: String, expected: String },
    #[error(
        "{sheet}!{row}: the heading row lacks the column `{heading}` ({field}); add it as in the template"
    )]
    MissingColumn {
        sheet: String,
        row: usize,
        heading: &'static str,
        field: &'static str,
    },
    #[error("{0}: cannot write the packet: {1}")]
    Write(String, std::io::Error),
}

/// How many rows are searched for the heading row (a title may stand above it).
pub const HEADING_SEARCH: usize = 10;

/// The heading row (the first of the first rows that names at least three template columns, by its index among
/// the rows): each template column with the sheet column that holds it, and the sheet headings no template column
/// takes.
struct Layout {
    index: usize,
    columns: Vec<(&'static Column, usize)>,
    ignored: Vec<String>,
}

fn layout(sheet: &Sheet, template: &'static Template) -> Result<Layout, ImportError> {
    for (index, row) in sheet.rows.iter().enumerate().take(HEADING_SEARCH) {
        let mut columns = Vec::new();
        let mut ignored = Vec::new();
        for (c, v) in row.cells.iter().enumerate() {
            let Value::Text(h) = v else { continue };
            match template.column(h) {
                Some(col)
                    if !columns
                        .iter()
                        .any(|(k, _): &(&Column, usize)| k.field == col.field) =>
                {
                    columns.push((col, c));
                }
                _ if !h.trim().is_empty() => {
                    ignored.push(format!("{}{}: {}", column_letters(c), row.number, h.trim()))
                }
                _ => {}
            }
        }
        if columns.len() < 3 {
            continue;
        }
        if let Some(missing) = template
            .columns
            .iter()
            .find(|t| t.required && !columns.iter().any(|(c, _)| c.field == t.field))
        {
            return Err(ImportError::MissingColumn {
                sheet: sheet.name.clone(),
                row: row.number,
                heading: missing.heading,
                field: missing.field,
            });
        }
        return Ok(Layout {
            index,
            columns,
            ignored,
        });
    }
    let expected: Vec<&str> = template.columns.iter().map(|c| c.heading).collect();
    Err(ImportError::NoHeadings {
        sheet: sheet.name.clone(),
        expected: expected.join(", "),
    })
}

/// What to import.
pub struct Ask<'a> {
    pub message_type: &'a str,
    pub catalog: &'a Catalog,
    /// Where good packets are written (`None`: only checked).
    pub out: Option<&'a Path>,
    pub options: Options,
}

/// Reads the sheet, makes a packet of every row, validates it, writes the good ones.
pub fn import(sheet: &Sheet, ask: &Ask<'_>) -> Result<Import, ImportError> {
    let template = template::template(ask.message_type).ok_or_else(|| {
        let all: Vec<&str> = template::TEMPLATES.iter().map(|t| t.message_type).collect();
        ImportError::NoTemplate(ask.message_type.to_owned(), all.join(", "))
    })?;
    let layout = layout(sheet, template)?;
    let mut rows = Vec::new();
    for row in sheet.rows.iter().skip(layout.index + 1) {
        if row.cells.iter().all(Value::is_empty) || is_hint_row(row, &layout) {
            continue;
        }
        let mut outcome = convert(sheet, row, template, &layout, ask);
        if let (Some(dir), Some(packet)) = (ask.out, &outcome.packet) {
            let cccd = field_text(row, &layout, "SoCCCD").unwrap_or_default();
            let file = dir.join(format!(
                "{}-{:05}-{cccd}.xml",
                template.message_type, row.number
            ));
            std::fs::write(&file, packet)
                .map_err(|e| ImportError::Write(file.display().to_string(), e))?;
            outcome.file = Some(file);
        }
        rows.push(outcome);
    }
    Ok(Import {
        sheet: sheet.name.clone(),
        message_type: template.message_type,
        ignored_columns: layout.ignored,
        rows,
    })
}

/// The template's second row repeats the hints: skip it when a sheet keeps it.
fn is_hint_row(row: &sheet::Row, layout: &Layout) -> bool {
    layout.columns.iter().all(|(c, i)| {
        matches!(row.cell(*i), Value::Text(t) if t.trim() == c.hint) || row.cell(*i).is_empty()
    }) && layout
        .columns
        .iter()
        .any(|(c, i)| matches!(row.cell(*i), Value::Text(t) if t.trim() == c.hint))
}

fn field_text(row: &sheet::Row, layout: &Layout, field: &str) -> Option<String> {
    let (c, i) = layout.columns.iter().find(|(c, _)| c.field == field)?;
    let (v, _) = read_cell(row.cell(*i), c.kind, None);
    v
}

/// A cell's text for its field, and a note when the cell could not be read as its kind.
fn read_cell(
    v: &Value,
    kind: Kind,
    lists: Option<&lgsp_schema::CodeLists>,
) -> (Option<String>, Option<String>) {
    let text = match v {
        Value::Empty => return (None, None),
        Value::Text(t) if t.trim().is_empty() => return (None, None),
        Value::Text(t) => t.trim().to_owned(),
        Value::Number(n) => match kind {
            Kind::Cccd if n.fract() == 0.0 && *n >= 0.0 && *n < 1e12 => {
                format!("{:012}", *n as u64)
            }
            Kind::Decimal2 => format!("{n:.2}"),
            Kind::Date => return (excel_serial(*n), None),
            _ if n.fract() == 0.0 && n.abs() < 1e15 => format!("{}", *n as i64),
            _ => format!("{n}"),
        },
        Value::Date(y, m, d) => match kind {
            Kind::Date => return (Some(format!("{y:04}-{m:02}-{d:02}")), None),
            _ => return (Some(format!("{d:02}/{m:02}/{y:04}")), None),
        },
    };
    match kind {
        Kind::Date => match text_date(&text) {
            Some(iso) => (Some(iso), None),
            None => (
                Some(text.clone()),
                Some(format!(
                    "`{text}` is not a date; write it as dd/mm/yyyy (e.g. 12/05/1990)"
                )),
            ),
        },
        Kind::Decimal2 => (Some(text.replace(',', ".")), None),
        Kind::Gender => match text.to_lowercase().as_str() {
            "nam" => (Some("Nam".into()), None),
            "nữ" | "nu" => (Some("Nu".into()), None),
            _ => (Some(text), None),
        },
        Kind::Listed(list) => {
            let code = lists.and_then(|l| list.of(l).code_of(&text).map(str::to_owned));
            (Some(code.unwrap_or(text)), None)
        }
        Kind::Choice(choices) => {
            let found = choices.iter().find(|(code, label)| {
                code.eq_ignore_ascii_case(&text)
                    || template::normalise(label) == template::normalise(&text)
            });
            (
                Some(found.map_or(text, |(code, _)| (*code).to_owned())),
                None,
            )
        }
        // Saved from a number cell, a domestic SoCCCD loses the zeros of its province code (001–096).
        Kind::Cccd
            if (10..12).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit()) =>
        {
            (Some(format!("{text:0>12}")), None)
        }
        Kind::Text | Kind::Cccd | Kind::Integer => (Some(text), None),
    }
}

/// `dd/mm/yyyy`, `d/m/yyyy`, `dd-mm-yyyy` or `yyyy-mm-dd` → `yyyy-mm-dd` (the validator checks the calendar).
fn text_date(t: &str) -> Option<String> {
    let parts: Vec<&str> = t.split(['/', '-', '.']).collect();
    let [a, b, c] = parts.as_slice() else {
        return None;
    };
    let num = |s: &str| {
        s.parse::<u32>()
            .ok()
            .filter(|_| s.bytes().all(|b| b.is_ascii_digit()))
    };
    let (y, m, d) = if a.len() == 4 {
        (num(a)?, num(b)?, num(c)?)
    } else if c.len() == 4 {
        (num(c)?, num(b)?, num(a)?)
    } else {
        return None;
    };
    Some(format!("{y:04}-{m:02}-{d:02}"))
}

/// An Excel date serial that lost its date format (1900 system).
fn excel_serial(n: f64) -> Option<String> {
    if !(1.0..2_958_466.0).contains(&n) {
        return None;
    }
    let dt = calamine::ExcelDateTime::new(n, calamine::ExcelDateTimeType::DateTime, false);
    let (y, m, d, ..) = dt.to_ymd_hms_milli();
    Some(format!("{y:04}-{m:02}-{d:02}"))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One row: its packet, validated, and every problem at its cell.
fn convert(
    sheet: &Sheet,
    row: &sheet::Row,
    template: &Template,
    layout: &Layout,
    ask: &Ask<'_>,
) -> RowOutcome {
    let cell = |i: usize| format!("{}!{}{}", sheet.name, column_letters(i), row.number);
    let mut problems = Vec::new();
    let mut values: Vec<(&Column, String)> = Vec::new();
    for col in template.columns {
        let at = layout
            .columns
            .iter()
            .find(|(c, _)| c.field == col.field)
            .map(|(_, i)| *i);
        let (text, note) = match at {
            Some(i) => read_cell(row.cell(i), col.kind, Some(&ask.catalog.codes)),
            None => (None, None),
        };
        if let (Some(note), Some(i)) = (note, at) {
            problems.push(CellProblem {
                cell: cell(i),
                field: col.field.into(),
                rule: "import.unreadable".into(),
                message: note,
            });
        }
        match (text, at) {
            (Some(t), _) => values.push((col, t)),
            (None, Some(i)) if col.required => problems.push(CellProblem {
                cell: cell(i),
                field: col.field.into(),
                rule: "import.required".into(),
                message: format!(
                    "the cell is empty; {} ({}) is required",
                    col.field, col.heading
                ),
            }),
            _ => {}
        }
    }
    let packet = packet(template, &values);
    let report = ask
        .catalog
        .validate(template.message_type, Format::Xml, &packet, &ask.options);
    for v in &report.violations {
        let field = concerned_field(v).unwrap_or(template.message_type);
        // An empty required cell was said already, as the clerk would put it.
        if matches!(v.rule, "xsd.missing_element" | "version.field_required")
            && problems
                .iter()
                .any(|p| p.rule == "import.required" && p.field == field)
        {
            continue;
        }
        if problems
            .iter()
            .any(|p| p.rule == "import.unreadable" && p.field == field)
        {
            continue;
        }
        let at = layout
            .columns
            .iter()
            .find(|(c, _)| c.field == field)
            .map_or_else(
                || layout.columns.first().map_or(0, |(_, i)| *i),
                |(_, i)| *i,
            );
        problems.push(CellProblem {
            cell: cell(at),
            field: field.to_owned(),
            rule: v.rule.to_owned(),
            message: v.message.clone(),
        });
    }
    // A listed value neither code nor name breaks the code pattern too: the list is the one to name.
    let unknown: Vec<String> = problems
        .iter()
        .filter(|p| p.rule == "code.unknown")
        .map(|p| p.field.clone())
        .collect();
    problems.retain(|p| p.rule != "xsd.pattern" || !unknown.contains(&p.field));
    RowOutcome {
        row: row.number,
        packet: problems.is_empty().then_some(packet),
        file: None,
        problems,
    }
}

/// The field a violation is about: the one it names as missing or required, else the element of its path.
fn concerned_field(v: &lgsp_schema::Violation) -> Option<&str> {
    let named = |marker: &str| {
        let rest = v.message.split(marker).nth(1)?;
        rest.split([',', ' ', '(']).next().filter(|f| !f.is_empty())
    };
    match v.rule {
        "version.field_required" => named("requires "),
        "xsd.missing_element" => named("expected: ").or_else(|| {
            let (missing, _) = v.message.split_once(" must come before ")?;
            Some(missing)
        }),
        _ => v
            .path
            .trim_start_matches('/')
            .split('/')
            .nth(1)
            .map(|s| s.split('[').next().unwrap_or(s).trim_start_matches('@')),
    }
}

/// The packet of a row's values, in the template's (the schema's) order.
fn packet(template: &Template, values: &[(&Column, String)]) -> Vec<u8> {
    let mut attrs = format!("phienBan=\"{}\"", template.version);
    for (c, v) in values
        .iter()
        .filter(|(c, _)| c.target == template::Target::Attribute)
    {
        attrs.push_str(&format!(" {}=\"{}\"", c.field, escape(v)));
    }
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<{} xmlns=\"urn:lgsp:cbccvc:v1\" {attrs}>\n",
        template.message_type
    );
    for (c, v) in values
        .iter()
        .filter(|(c, _)| c.target == template::Target::Element)
    {
        xml.push_str(&format!("  <{f}>{}</{f}>\n", escape(v), f = c.field));
    }
    xml.push_str(&format!("</{}>\n", template.message_type));
    xml.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_read_as_clerks_write_them() {
        assert_eq!(text_date("12/05/1990").as_deref(), Some("1990-05-12"));
        assert_eq!(text_date("1/9/2015").as_deref(), Some("2015-09-01"));
        assert_eq!(text_date("1990-05-12").as_deref(), Some("1990-05-12"));
        assert_eq!(text_date("12.05.1990").as_deref(), Some("1990-05-12"));
        assert!(text_date("12/05/90").is_none() && text_date("hôm qua").is_none());
        assert_eq!(excel_serial(32_640.0).as_deref(), Some("1989-05-12"));
    }

    #[test]
    fn cells_become_field_text() {
        let lists = lgsp_schema::CodeLists::embedded().unwrap();
        let r = |v: Value, k: Kind| read_cell(&v, k, Some(&lists)).0;
        assert_eq!(
            r(Value::Number(1_090_012_345.0), Kind::Cccd).as_deref(),
            Some("001090012345")
        );
        assert_eq!(
            r(Value::Number(3.0), Kind::Decimal2).as_deref(),
            Some("3.00")
        );
        assert_eq!(
            r(Value::Text("2,67".into()), Kind::Decimal2).as_deref(),
            Some("2.67")
        );
        assert_eq!(r(Value::Number(3.0), Kind::Integer).as_deref(), Some("3"));
        assert_eq!(
            r(Value::Text("Nữ".into()), Kind::Gender).as_deref(),
            Some("Nu")
        );
        assert_eq!(
            r(Value::Date(1990, 5, 12), Kind::Date).as_deref(),
            Some("1990-05-12")
        );
        let listed = |t: &str, l| r(Value::Text(t.into()), Kind::Listed(l));
        assert_eq!(
            listed("Viên chức", template::List::Category).as_deref(),
            Some("VienChuc")
        );
        assert_eq!(
            listed("Đại học", template::List::Qualification).as_deref(),
            Some("DaiHoc")
        );
        assert_eq!(listed("Tày", template::List::Ethnic).as_deref(), Some("02"));
        assert_eq!(
            listed("Không rõ", template::List::Religion).as_deref(),
            Some("Không rõ")
        );
        assert_eq!(r(Value::Empty, Kind::Text), None);
        assert!(
            read_cell(&Value::Text("12/5/90".into()), Kind::Date, None)
                .1
                .is_some()
        );
    }

    #[test]
    fn packets_escape_what_they_carry() {
        let cols = template::HO_SO.columns;
        let values = vec![
            (&cols[0], "CapNhat".to_owned()),
            (&cols[3], "A & B <C>".to_owned()),
        ];
        let xml = String::from_utf8(packet(&template::HO_SO, &values)).unwrap();
        assert!(xml.contains("loaiThaoTac=\"CapNhat\""), "{xml}");
        assert!(
            xml.contains("<HoVaTen>A &amp; B &lt;C&gt;</HoVaTen>"),
            "{xml}"
        );
    }
}
