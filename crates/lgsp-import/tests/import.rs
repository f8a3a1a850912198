//! The HoSoCBCCVC template filled as clerks fill it — good rows, and rows each breaking one rule — imported from
//! .xlsx and from .csv: the good rows become valid packets, every bad cell is named by its sheet, column and row.

use std::path::{Path, PathBuf};

use lgsp_import::{Ask, Import, template};
use lgsp_schema::{Catalog, Day, Format, Options};
use rust_xlsxwriter::{ExcelDateTime, Workbook};

/// A cell as the test writes it.
#[derive(Clone)]
enum C {
    T(&'static str),
    N(f64),
    D(u16, u8, u8),
    E,
}

/// A good row, by template column (A = Thao tác … R = Lý luận chính trị): a primary-school teacher.
fn teacher() -> Vec<C> {
    use C::*;
    vec![
        T("Tạo mới"),
        T("000.01.00.H29"),
        T("001090012345"),
        T("Nguyễn Văn An"),
        D(1990, 5, 12),
        T("Nam"),
        T("Kinh"),
        T("Không"),
        T("Hà Nội"),
        E,
        T("Viên chức"),
        T("V.07.03.29"),
        T("III"),
        N(2.0),
        N(2.67),
        D(2015, 9, 1),
        T("Đại học"),
        T("Trung cấp"),
    ]
}

/// Another good row, typed the other way: CCCD as a number (Excel drops the zeros), dates as text, a decimal
/// comma, codes instead of names.
fn civil_servant() -> Vec<C> {
    use C::*;
    vec![
        E,
        T("000.00.00.H29"),
        N(1_190_012_345.0),
        T("Trần Thị Bình"),
        T("12/05/1990"),
        T("Nữ"),
        T("02"),
        E,
        E,
        T("Chuyên viên"),
        T("CongChuc"),
        T("01.003"),
        E,
        N(3.0),
        T("3,00"),
        T("01/09/2015"),
        T("DaiHoc"),
        E,
    ]
}

/// Column index by letter.
fn col(letter: char) -> usize {
    (letter as u8 - b'A') as usize
}

fn with(mut row: Vec<C>, changes: &[(char, C)]) -> Vec<C> {
    for (letter, c) in changes {
        row[col(*letter)] = c.clone();
    }
    row
}

/// Rows breaking one rule each, with the cell and rule the import must name.
fn bad_rows() -> Vec<(Vec<C>, char, &'static str)> {
    use C::*;
    vec![
        (
            with(teacher(), &[('E', T("12/5/90"))]),
            'E',
            "import.unreadable",
        ),
        (
            with(teacher(), &[('C', T("003090012345"))]),
            'C',
            "cccd.province",
        ),
        (
            with(civil_servant(), &[('O', N(3.1))]),
            'O',
            "salary.coefficient_mismatch",
        ),
        (
            with(civil_servant(), &[('N', N(10.0))]),
            'N',
            "salary.step_out_of_range",
        ),
        (
            with(civil_servant(), &[('L', T("09.999"))]),
            'L',
            "code.unknown",
        ),
        (with(teacher(), &[('G', T("Kinh tế"))]), 'G', "code.unknown"),
        (with(teacher(), &[('K', E)]), 'K', "import.required"),
        (
            with(teacher(), &[('M', T("II"))]),
            'M',
            "title.grade_mismatch",
        ),
        (
            with(teacher(), &[('K', T("Công chức"))]),
            'K',
            "staff.category_mismatch",
        ),
        (with(teacher(), &[('D', E)]), 'D', "import.required"),
        (
            with(teacher(), &[('B', T("000.01.00.h29"))]),
            'B',
            "xsd.pattern",
        ),
        (
            with(teacher(), &[('P', D(1989, 1, 1))]),
            'P',
            "date.recruitment_before_birth",
        ),
        (with(teacher(), &[('F', T("Khác"))]), 'F', "xsd.enumeration"),
        (
            with(teacher(), &[('Q', T("Cử nhân luật"))]),
            'Q',
            "code.unknown",
        ),
    ]
}

/// The sheet: a title, the headings (row 2), the hint row, two good rows, the bad rows, two more good rows.
fn rows() -> Vec<Vec<C>> {
    let mut rows = vec![teacher(), civil_servant()];
    rows.extend(bad_rows().into_iter().map(|(r, ..)| r));
    rows.push(teacher());
    rows.push(civil_servant());
    rows
}

/// The first data row's number (row 1: title, 2: headings, 3: hints).
const FIRST: usize = 4;

fn xlsx(dir: &Path) -> PathBuf {
    let mut book = Workbook::new();
    let s = book.add_worksheet();
    s.set_name("Sheet1").unwrap();
    s.write_string(0, 0, "Danh sách hồ sơ CBCCVC tháng 11/2026")
        .unwrap();
    for (i, c) in template::HO_SO.columns.iter().enumerate() {
        s.write_string(1, i as u16, c.heading).unwrap();
        s.write_string(2, i as u16, c.hint).unwrap();
    }
    let date = rust_xlsxwriter::Format::new().set_num_format("dd/mm/yyyy");
    for (r, row) in rows().iter().enumerate() {
        let r = (FIRST - 1 + r) as u32;
        for (c, v) in row.iter().enumerate() {
            let c = c as u16;
            match v {
                C::T(t) => {
                    s.write_string(r, c, *t).unwrap();
                }
                C::N(n) => {
                    s.write_number(r, c, *n).unwrap();
                }
                C::D(y, m, d) => {
                    let dt = ExcelDateTime::from_ymd(*y, *m, *d).unwrap();
                    s.write_datetime_with_format(r, c, &dt, &date).unwrap();
                }
                C::E => {}
            }
        }
    }
    let path = dir.join("ho-so.xlsx");
    book.save(&path).unwrap();
    path
}

fn csv(dir: &Path) -> PathBuf {
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let mut text = String::from("Danh sách hồ sơ CBCCVC tháng 11/2026\n");
    let headings: Vec<String> = template::HO_SO
        .columns
        .iter()
        .map(|c| quote(c.heading))
        .collect();
    text.push_str(&(headings.join(",") + "\n"));
    let hints: Vec<String> = template::HO_SO
        .columns
        .iter()
        .map(|c| quote(c.hint))
        .collect();
    text.push_str(&(hints.join(",") + "\n"));
    for row in rows() {
        let cells: Vec<String> = row
            .iter()
            .map(|v| match v {
                C::T(t) => quote(t),
                C::N(n) if n.fract() == 0.0 => format!("{n:.0}"),
                C::N(n) => format!("{n}"),
                C::D(y, m, d) => format!("{d:02}/{m:02}/{y}"),
                C::E => String::new(),
            })
            .collect();
        text.push_str(&(cells.join(",") + "\n"));
    }
    let path = dir.join("ho-so.csv");
    std::fs::write(&path, text).unwrap();
    path
}

fn options() -> Options {
    Options {
        today: Some(Day {
            year: 2026,
            month: 11,
            day: 25,
        }),
        ..Options::default()
    }
}

fn run(path: &Path, out: &Path) -> Import {
    let catalog = Catalog::embedded().unwrap();
    let sheet = lgsp_import::sheet::read(path, None).unwrap();
    let ask = Ask {
        message_type: "HoSoCBCCVC",
        catalog: &catalog,
        out: Some(out),
        options: options(),
    };
    lgsp_import::import(&sheet, &ask).unwrap()
}

fn check(import: &Import, sheet: &str) {
    let all = rows();
    assert_eq!(import.rows.len(), all.len(), "one outcome per filled row");
    let bad = bad_rows();
    let catalog = Catalog::embedded().unwrap();
    for (i, outcome) in import.rows.iter().enumerate() {
        assert_eq!(outcome.row, FIRST + i);
        let expected = i.checked_sub(2).and_then(|b| bad.get(b));
        match expected {
            None => {
                assert!(
                    outcome.is_good(),
                    "row {}: {:#?}",
                    outcome.row,
                    outcome.problems
                );
                let file = outcome.file.as_ref().expect("a good row is written");
                let bytes = std::fs::read(file).unwrap();
                let r = catalog.validate("HoSoCBCCVC", Format::Xml, &bytes, &options());
                assert!(r.is_valid(), "{}: {:?}", file.display(), r.violations);
            }
            Some((_, letter, rule)) => {
                let got: Vec<(String, &str)> = outcome
                    .problems
                    .iter()
                    .map(|p| (p.cell.clone(), p.rule.as_str()))
                    .collect();
                let cell = format!("{sheet}!{letter}{}", outcome.row);
                assert_eq!(
                    got,
                    [(cell, *rule)],
                    "row {}: {:#?}",
                    outcome.row,
                    outcome.problems
                );
                assert!(outcome.file.is_none(), "a bad row is not written");
            }
        }
    }
}

#[test]
fn a_filled_xlsx_becomes_packets_and_every_bad_cell_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let import = run(&xlsx(dir.path()), &out);
    check(&import, "Sheet1");
    // The reported text is what a clerk reads.
    let first_bad = &import.rows[2].problems[0];
    assert_eq!(
        first_bad.to_string(),
        "Sheet1!E6: NgaySinh: `12/5/90` is not a date; write it as dd/mm/yyyy (e.g. 12/05/1990) (import.unreadable)"
    );
    let written = std::fs::read_dir(&out).unwrap().count();
    assert_eq!(written, 4);
    // The CCCD typed as a number got its zeros back, the decimal comma became a point, names became codes.
    let second = std::fs::read_to_string(import.rows[1].file.as_ref().unwrap()).unwrap();
    for piece in [
        "<SoCCCD>001190012345</SoCCCD>",
        "<HeSoLuong>3.00</HeSoLuong>",
        "<NgaySinh>1990-05-12</NgaySinh>",
        "<GioiTinh>Nu</GioiTinh>",
    ] {
        assert!(second.contains(piece), "{piece} not in\n{second}");
    }
    let first = std::fs::read_to_string(import.rows[0].file.as_ref().unwrap()).unwrap();
    for piece in [
        "phienBan=\"1.1\"",
        "loaiThaoTac=\"TaoMoi\"",
        "<LoaiCanBo>VienChuc</LoaiCanBo>",
        "<TrinhDoChuyenMon>DaiHoc</TrinhDoChuyenMon>",
        "<LyLuanChinhTri>TrungCap</LyLuanChinhTri>",
        "<DanToc>01</DanToc>",
    ] {
        assert!(first.contains(piece), "{piece} not in\n{first}");
    }
}

#[test]
fn a_filled_csv_gives_the_same_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let import = run(&csv(dir.path()), dir.path());
    check(&import, "ho-so");
}

#[test]
fn the_shipped_template_is_the_template_in_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/cbccvc/templates");
    let sheet = lgsp_import::sheet::read(&dir.join("HoSoCBCCVC.xlsx"), None).unwrap();
    assert_eq!(sheet.name, "HoSoCBCCVC");
    let headings: Vec<String> = sheet.rows[0]
        .cells
        .iter()
        .map(|v| match v {
            lgsp_import::Value::Text(t) => t.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    let expected: Vec<&str> = template::HO_SO.columns.iter().map(|c| c.heading).collect();
    assert_eq!(headings, expected);
    let csv = std::fs::read_to_string(dir.join("HoSoCBCCVC.csv")).unwrap();
    assert_eq!(csv.trim_end(), expected.join(","));
    // Empty, it imports to nothing (the hint row is not a person).
    let catalog = Catalog::embedded().unwrap();
    let ask = Ask {
        message_type: "HoSoCBCCVC",
        catalog: &catalog,
        out: None,
        options: options(),
    };
    assert!(lgsp_import::import(&sheet, &ask).unwrap().rows.is_empty());
}

#[test]
fn a_sheet_without_a_required_column_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.csv");
    std::fs::write(
        &path,
        "Mã đơn vị,Số CCCD,Họ và tên,Ngày sinh\n000.00.00.H29,001090012345,A B,12/05/1990\n",
    )
    .unwrap();
    let catalog = Catalog::embedded().unwrap();
    let sheet = lgsp_import::sheet::read(&path, None).unwrap();
    let ask = Ask {
        message_type: "HoSoCBCCVC",
        catalog: &catalog,
        out: None,
        options: options(),
    };
    let e = lgsp_import::import(&sheet, &ask).unwrap_err().to_string();
    assert_eq!(
        e,
        "x!1: the heading row lacks the column `Giới tính` (GioiTinh); add it as in the template"
    );
    let e = lgsp_import::import(
        &sheet,
        &Ask {
            message_type: "BienChe",
            ..ask
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("no template for BienChe"), "{e}");
}
