//! Writes the spreadsheet templates agencies fill: `cargo run -p lgsp-import --example write_template -- DIR`
//! writes `DIR/{MessageType}.xlsx` (headings, a row of hints, text cells for SoCCCD, date cells, drop-down lists,
//! and a sheet "Hướng dẫn" explaining every column) and `DIR/{MessageType}.csv` (headings only). The files in
//! `schemas/cbccvc/templates/` are its output; `tests/import.rs` checks they match the templates in code.

use std::path::PathBuf;

use lgsp_import::template::{Kind, List, TEMPLATES, Template};
use rust_xlsxwriter::{DataValidation, DocProperties, ExcelDateTime, Format, Workbook, XlsxError};

fn choices(kind: Kind, lists: &lgsp_schema::CodeLists) -> Option<Vec<String>> {
    match kind {
        Kind::Gender => Some(vec!["Nam".into(), "Nữ".into()]),
        Kind::Choice(c) => Some(c.iter().map(|(_, label)| (*label).to_owned()).collect()),
        Kind::Listed(l @ (List::Category | List::Qualification)) => {
            let list = l.of(lists);
            let codes: Vec<String> = match l {
                List::Category => vec!["CanBo", "CongChuc", "VienChuc", "NguoiLaoDong"],
                _ => vec![
                    "TienSi", "ThacSi", "DaiHoc", "CaoDang", "TrungCap", "SoCap", "Khac",
                ],
            }
            .into_iter()
            .filter_map(|c| list.name_of(c).map(str::to_owned))
            .collect();
            Some(codes)
        }
        _ => None,
    }
}

fn write(t: &Template, dir: &std::path::Path) -> Result<(), XlsxError> {
    let lists =
        lgsp_schema::CodeLists::embedded().map_err(|e| XlsxError::ParameterError(e.to_string()))?;
    let mut book = Workbook::new();
    // A fixed date: the same templates make the same files.
    let props = DocProperties::new()
        .set_title(format!(
            "{}: mẫu nhập liệu (lgsp-gateway import)",
            t.message_type
        ))
        .set_creation_datetime(&ExcelDateTime::from_ymd(2026, 11, 29)?);
    book.set_properties(&props);
    let heading = Format::new().set_bold().set_text_wrap();
    let hint = Format::new().set_italic().set_font_color("#808080");
    let text = Format::new().set_num_format("@");
    let date = Format::new().set_num_format("dd/mm/yyyy");
    let sheet = book.add_worksheet();
    sheet.set_name(t.message_type)?;
    for (i, c) in t.columns.iter().enumerate() {
        let col = u16::try_from(i).unwrap_or(u16::MAX);
        sheet.write_string_with_format(0, col, c.heading, &heading)?;
        sheet.write_string_with_format(1, col, c.hint, &hint)?;
        sheet.set_column_width(col, 18)?;
        match c.kind {
            Kind::Cccd | Kind::Text | Kind::Listed(_) => {
                sheet.set_column_format(col, &text)?;
            }
            Kind::Date => {
                sheet.set_column_format(col, &date)?;
            }
            _ => {}
        }
        if let Some(options) = choices(c.kind, &lists) {
            let v = DataValidation::new().allow_list_strings(&options)?;
            sheet.add_data_validation(2, col, 10_001, col, &v)?;
        }
    }
    sheet.set_freeze_panes(2, 0)?;
    let guide = book.add_worksheet();
    guide.set_name("Hướng dẫn")?;
    for (j, h) in ["Cột", "Trường", "Bắt buộc", "Ghi"].iter().enumerate() {
        guide.write_string_with_format(0, u16::try_from(j).unwrap_or(0), *h, &heading)?;
    }
    for (i, c) in t.columns.iter().enumerate() {
        let row = u32::try_from(i + 1).unwrap_or(u32::MAX);
        guide.write_string(row, 0, c.heading)?;
        guide.write_string(row, 1, c.field)?;
        guide.write_string(row, 2, if c.required { "có" } else { "không" })?;
        guide.write_string(row, 3, c.hint)?;
    }
    guide.set_column_width(0, 24)?;
    guide.set_column_width(3, 60)?;
    book.save(dir.join(format!("{}.xlsx", t.message_type)))?;
    let headings: Vec<&str> = t.columns.iter().map(|c| c.heading).collect();
    std::fs::write(
        dir.join(format!("{}.csv", t.message_type)),
        headings.join(",") + "\n",
    )
    .map_err(XlsxError::IoError)?;
    Ok(())
}

fn main() -> Result<(), XlsxError> {
    let dir = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from("schemas/cbccvc/templates"), PathBuf::from);
    std::fs::create_dir_all(&dir).map_err(XlsxError::IoError)?;
    for t in TEMPLATES {
        write(t, &dir)?;
        println!("wrote {}/{}.xlsx and .csv", dir.display(), t.message_type);
    }
    Ok(())
}
