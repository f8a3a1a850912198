//! Reading a spreadsheet (xlsx, xlsm, xls, ods — through calamine) or a CSV file into rows of cells, each row
//! with the number and each cell with the column letter a clerk sees.

use std::path::Path;

use calamine::{Data, Reader};

/// What a cell holds, as the importer reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Empty,
    Text(String),
    Number(f64),
    /// A date cell: year, month, day.
    Date(u16, u8, u8),
}

impl Value {
    pub fn is_empty(&self) -> bool {
        match self {
            Value::Empty => true,
            Value::Text(t) => t.trim().is_empty(),
            _ => false,
        }
    }
}

/// One row: its number in the sheet (1-based, as shown) and its cells by column (0 = A).
#[derive(Debug, Clone)]
pub struct Row {
    pub number: usize,
    pub cells: Vec<Value>,
}

impl Row {
    pub fn cell(&self, column: usize) -> &Value {
        self.cells.get(column).unwrap_or(&Value::Empty)
    }
}

/// A sheet read whole.
#[derive(Debug, Clone)]
pub struct Sheet {
    /// The sheet's name (a CSV file's stem).
    pub name: String,
    pub rows: Vec<Row>,
}

/// Why a spreadsheet could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SheetError {
    #[error("{path}: {message}")]
    Unreadable { path: String, message: String },
    #[error("{path} has no sheet named `{sheet}`; its sheets are {sheets}")]
    NoSuchSheet {
        path: String,
        sheet: String,
        sheets: String,
    },
}

/// The letters of a column: 0 → A, 25 → Z, 26 → AA.
pub fn column_letters(mut column: usize) -> String {
    let mut out = Vec::new();
    loop {
        out.push(b'A' + (column % 26) as u8);
        if column < 26 {
            break;
        }
        column = column / 26 - 1;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Most rows read from one file: a sheet past this is refused rather than read into memory.
pub const MAX_ROWS: usize = 100_000;

/// Reads `sheet` (default: the first) of a workbook, or a CSV file (by its extension).
pub fn read(path: &Path, sheet: Option<&str>) -> Result<Sheet, SheetError> {
    let shown = path.display().to_string();
    let unreadable = |message: String| SheetError::Unreadable {
        path: shown.clone(),
        message,
    };
    let is_csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    if is_csv {
        return read_csv(path).map_err(unreadable);
    }
    let mut book = calamine::open_workbook_auto(path).map_err(|e| {
        unreadable(format!(
            "not a spreadsheet calamine can read ({e}); save it as .xlsx or .csv"
        ))
    })?;
    let names = book.sheet_names();
    let name = match sheet {
        Some(s) => {
            names
                .iter()
                .find(|n| *n == s)
                .cloned()
                .ok_or_else(|| SheetError::NoSuchSheet {
                    path: shown.clone(),
                    sheet: s.to_owned(),
                    sheets: names.join(", "),
                })?
        }
        None => names
            .first()
            .cloned()
            .ok_or_else(|| unreadable("the workbook has no sheet".into()))?,
    };
    let range = book
        .worksheet_range(&name)
        .map_err(|e| unreadable(format!("sheet {name}: {e}")))?;
    let (top, left) = range.start().unwrap_or((0, 0));
    let (top, left) = (top as usize, left as usize);
    let mut rows = Vec::new();
    for (i, r) in range.rows().enumerate() {
        if rows.len() >= MAX_ROWS {
            return Err(unreadable(format!(
                "more than {MAX_ROWS} rows; split the file"
            )));
        }
        let mut cells = vec![Value::Empty; left];
        cells.extend(r.iter().map(value));
        rows.push(Row {
            number: top + i + 1,
            cells,
        });
    }
    Ok(Sheet { name, rows })
}

fn value(d: &Data) -> Value {
    match d {
        Data::Empty | Data::Error(_) => Value::Empty,
        Data::String(s) | Data::DateTimeIso(s) | Data::DurationIso(s) => Value::Text(s.clone()),
        Data::Int(i) => Value::Number(*i as f64),
        Data::Float(f) => Value::Number(*f),
        Data::Bool(b) => Value::Text(if *b { "true" } else { "false" }.into()),
        Data::DateTime(dt) if dt.is_datetime() => {
            let (y, m, d, ..) = dt.to_ymd_hms_milli();
            Value::Date(y, m, d)
        }
        Data::DateTime(dt) => Value::Number(dt.as_f64()),
    }
}

fn read_csv(path: &Path) -> Result<Sheet, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(path)
        .map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for (i, r) in reader.records().enumerate() {
        if rows.len() >= MAX_ROWS {
            return Err(format!("more than {MAX_ROWS} rows; split the file"));
        }
        let r = r.map_err(|e| format!("row {}: {e}", i + 1))?;
        let cells = r
            .iter()
            .map(|c| {
                let c = c.trim_start_matches('\u{feff}');
                if c.trim().is_empty() {
                    Value::Empty
                } else {
                    Value::Text(c.to_owned())
                }
            })
            .collect();
        rows.push(Row {
            number: i + 1,
            cells,
        });
    }
    let name = path
        .file_stem()
        .map_or_else(|| "csv".to_owned(), |s| s.to_string_lossy().into_owned());
    Ok(Sheet { name, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_lettered_as_spreadsheets_letter_them() {
        assert_eq!(column_letters(0), "A");
        assert_eq!(column_letters(25), "Z");
        assert_eq!(column_letters(26), "AA");
        assert_eq!(column_letters(27), "AB");
        assert_eq!(column_letters(701), "ZZ");
        assert_eq!(column_letters(702), "AAA");
    }
}
