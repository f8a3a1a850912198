//! Code lists (danh mục) as data: the ranks and professional titles with their salary groups, the salary
//! coefficient table, ethnic groups, religions, staff categories, qualification levels, and the province and
//! country codes a SoCCCD starts with. Each is a CSV file under `codes/` of the schema directory (compiled into the
//! binary for `schemas = "embedded"`), whose first lines name its legal source and effective date:
//!
//! ```text
//! # <title>
//! # nguon: <legal source>
//! # hieu_luc: YYYY-MM-DD
//! ma,ten
//! 01,Kinh
//! ```
//!
//! An operator updates a list by editing its file and reloading; a file that does not load is refused with its
//! line, and the running lists keep serving.

use std::collections::HashMap;
use std::path::Path;

use crate::domain::{Day, Fixed};
use crate::xsd::SchemaFiles;

/// A code list that could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct CodesError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

/// What a list says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListInfo {
    /// The file's stem, the name errors cite (`ngach`, `dan_toc`, …).
    pub name: &'static str,
    pub title: String,
    /// The legal source (`# nguon:`).
    pub source: String,
    /// When the list took effect (`# hieu_luc:`).
    pub effective: Day,
}

/// A list of codes with names (`ma,ten`).
#[derive(Debug, Clone)]
pub struct CodeList {
    pub info: ListInfo,
    rows: Vec<(String, String)>,
    by_code: FnvMap<usize>,
    by_name: FnvMap<usize>,
}

impl CodeList {
    /// The code `value` is, or names exactly.
    pub fn code_of(&self, value: &str) -> Option<&str> {
        let i = self
            .by_code
            .get(value)
            .or_else(|| self.by_name.get(value))?;
        Some(&self.rows[*i].0)
    }

    pub fn has_code(&self, code: &str) -> bool {
        self.by_code.contains_key(code)
    }

    pub fn name_of(&self, code: &str) -> Option<&str> {
        self.by_code.get(code).map(|i| self.rows[*i].1.as_str())
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// A rank (ngạch) or professional title (chức danh nghề nghiệp).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rank {
    pub code: String,
    pub name: String,
    /// The salary group (nhóm lương), a group of the coefficient table, e.g. `A1`.
    pub group: String,
    /// The staff category it belongs to (`CongChuc` for ranks, `VienChuc` for titles).
    pub category: String,
    /// A title's grade (hạng: I–IV); ranks have none.
    pub grade: Option<String>,
    /// Its group's steps, resolved when the lists load (step 1 first).
    pub steps: std::sync::Arc<[Step]>,
}

impl Rank {
    /// Step `n` (from 1) of the rank's salary group.
    pub fn step(&self, n: usize) -> Option<&Step> {
        self.steps.get(n.checked_sub(1)?)
    }
}

/// One step of a salary group: the coefficient, or the range a row admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub low: Fixed,
    pub high: Fixed,
    /// As written, for messages.
    pub text: String,
}

/// FNV-1a: the code lists are looked up with every record, with short keys. Lookups only — a table built from
/// the operator's files, never from packets — so a hasher without a random key costs an attacker nothing to
/// exploit (no insertions to collide).
#[derive(Debug, Clone, Copy, Default)]
pub struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

pub type FnvMap<V> = HashMap<String, V, std::hash::BuildHasherDefault<Fnv>>;

/// Every code list the domain rules read.
#[derive(Debug, Clone)]
pub struct CodeLists {
    /// `ngach.csv`.
    pub ranks: FnvMap<Rank>,
    pub ranks_info: ListInfo,
    /// `he_so_luong.csv`: the steps of each salary group, step 1 first.
    pub scales: HashMap<String, std::sync::Arc<[Step]>>,
    pub scales_info: ListInfo,
    pub ethnic: CodeList,
    pub religions: CodeList,
    pub categories: CodeList,
    pub qualifications: CodeList,
    pub provinces: CodeList,
    pub countries: CodeList,
}

/// The grades (hạng) a professional title may have.
pub const GRADES: &[&str] = &["I", "II", "III", "IV"];

/// The list files, under `codes/` of a schema directory.
pub const FILES: &[&str] = &[
    "ngach",
    "he_so_luong",
    "dan_toc",
    "ton_giao",
    "loai_can_bo",
    "trinh_do",
    "tinh_khai_sinh",
    "quoc_gia",
];

/// A list file read: its header and its records (with their line numbers).
struct Parsed {
    info: ListInfo,
    file: String,
    records: Vec<(usize, HashMap<String, String>)>,
}

impl Parsed {
    fn error(&self, line: usize, message: impl Into<String>) -> CodesError {
        CodesError {
            file: self.file.clone(),
            line: Some(line),
            message: message.into(),
        }
    }

    /// The value of `column` in a record (empty when the cell is).
    fn cell<'r>(&self, record: &'r HashMap<String, String>, column: &str) -> &'r str {
        record.get(column).map_or("", |v| v.trim())
    }
}

fn parse(
    files: &dyn SchemaFiles,
    name: &'static str,
    columns: &[&str],
) -> Result<Parsed, CodesError> {
    let path = Path::new("codes").join(format!("{name}.csv"));
    let file = files.display(&path);
    let fail = |line: Option<usize>, message: String| CodesError {
        file: file.clone(),
        line,
        message,
    };
    let text = files
        .read(&path)
        .map_err(|e| fail(None, format!("cannot read: {e}")))?;
    let (mut title, mut source, mut effective) = (None, None, None);
    for (i, line) in text
        .lines()
        .enumerate()
        .take_while(|(_, l)| l.starts_with('#'))
    {
        let line_no = i + 1;
        let body = line.trim_start_matches('#').trim();
        if let Some(v) = body.strip_prefix("nguon:") {
            source = Some(v.trim().to_owned());
        } else if let Some(v) = body.strip_prefix("hieu_luc:") {
            let day = Day::parse(v.trim())
                .filter(|_| v.trim().len() == 10)
                .ok_or_else(|| {
                    fail(
                        Some(line_no),
                        format!("hieu_luc `{}` is not a date; write YYYY-MM-DD", v.trim()),
                    )
                })?;
            effective = Some(day);
        } else if title.is_none() {
            title = Some(body.to_owned());
        }
    }
    let (Some(source), Some(effective)) = (source, effective) else {
        return Err(fail(
            Some(1),
            "the list must open with `# <title>`, `# nguon: <legal source>` and `# hieu_luc: YYYY-MM-DD` lines"
                .into(),
        ));
    };
    let mut reader = csv::ReaderBuilder::new()
        .comment(Some(b'#'))
        .flexible(false)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .map_err(|e| fail(None, format!("no header row: {e}")))?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    if let Some(missing) = columns.iter().find(|c| !headers.iter().any(|h| h == *c)) {
        return Err(fail(
            None,
            format!(
                "the header row lacks the column `{missing}`; it needs {}",
                columns.join(",")
            ),
        ));
    }
    let mut records = Vec::new();
    for r in reader.records() {
        let r = r.map_err(|e| {
            let line = e.position().map(|p| usize::try_from(p.line()).unwrap_or(0));
            fail(line, format!("not a CSV record: {e}"))
        })?;
        let line = r
            .position()
            .map_or(0, |p| usize::try_from(p.line()).unwrap_or(0));
        let row = headers
            .iter()
            .cloned()
            .zip(r.iter().map(str::to_owned))
            .collect();
        records.push((line, row));
    }
    Ok(Parsed {
        info: ListInfo {
            name,
            title: title.unwrap_or_default(),
            source,
            effective,
        },
        file,
        records,
    })
}

/// A `ma,ten` list: codes unique and non-empty.
fn code_list(files: &dyn SchemaFiles, name: &'static str) -> Result<CodeList, CodesError> {
    let p = parse(files, name, &["ma", "ten"])?;
    let mut list = CodeList {
        info: p.info.clone(),
        rows: Vec::new(),
        by_code: FnvMap::default(),
        by_name: FnvMap::default(),
    };
    for (line, r) in &p.records {
        let (code, label) = (p.cell(r, "ma"), p.cell(r, "ten"));
        if code.is_empty() || label.is_empty() {
            return Err(p.error(*line, "every row needs a code (ma) and a name (ten)"));
        }
        let i = list.rows.len();
        if list.by_code.insert(code.to_owned(), i).is_some() {
            return Err(p.error(*line, format!("the code `{code}` appears twice")));
        }
        list.by_name.entry(label.to_owned()).or_insert(i);
        list.rows.push((code.to_owned(), label.to_owned()));
    }
    Ok(list)
}

/// `nhom,bac,he_so_tu,he_so_den`: every group's steps numbered 1, 2, … without a gap.
type Scales = HashMap<String, std::sync::Arc<[Step]>>;

fn scales(files: &dyn SchemaFiles) -> Result<(Scales, ListInfo), CodesError> {
    let p = parse(
        files,
        "he_so_luong",
        &["nhom", "bac", "he_so_tu", "he_so_den"],
    )?;
    let mut groups: HashMap<String, Vec<Step>> = HashMap::new();
    for (line, r) in &p.records {
        let group = p.cell(r, "nhom");
        let step: usize = p
            .cell(r, "bac")
            .parse()
            .map_err(|_| p.error(*line, "bac must be a whole number (the step, from 1)"))?;
        let (lo_text, hi_text) = (p.cell(r, "he_so_tu"), p.cell(r, "he_so_den"));
        let hi_text = if hi_text.is_empty() { lo_text } else { hi_text };
        let (Some(low), Some(high)) = (Fixed::parse(lo_text), Fixed::parse(hi_text)) else {
            return Err(p.error(
                *line,
                "he_so_tu and he_so_den must be decimals such as 2.34",
            ));
        };
        if low > high {
            return Err(p.error(*line, "he_so_tu is above he_so_den"));
        }
        let steps = groups.entry(group.to_owned()).or_default();
        if group.is_empty() || step != steps.len() + 1 {
            return Err(p.error(
                *line,
                format!(
                    "group `{group}` step {step} is out of order; steps run 1, 2, 3, … within a group"
                ),
            ));
        }
        let text = if lo_text == hi_text {
            lo_text.to_owned()
        } else {
            format!("{lo_text}–{hi_text}")
        };
        steps.push(Step { low, high, text });
    }
    let groups = groups.into_iter().map(|(g, s)| (g, s.into())).collect();
    Ok((groups, p.info))
}

/// `ma,ten,nhom_luong,loai,hang`: every rank's group, category and grade known.
fn ranks(
    files: &dyn SchemaFiles,
    scales: &Scales,
    categories: &CodeList,
) -> Result<(FnvMap<Rank>, ListInfo), CodesError> {
    let p = parse(files, "ngach", &["ma", "ten", "nhom_luong", "loai", "hang"])?;
    let mut out = FnvMap::default();
    for (line, r) in &p.records {
        let grade = Some(p.cell(r, "hang")).filter(|g| !g.is_empty());
        let group = p.cell(r, "nhom_luong");
        let Some(steps) = scales.get(group) else {
            return Err(p.error(
                *line,
                format!("nhom_luong `{group}` is not a group of he_so_luong.csv"),
            ));
        };
        let rank = Rank {
            code: p.cell(r, "ma").to_owned(),
            name: p.cell(r, "ten").to_owned(),
            group: group.to_owned(),
            category: p.cell(r, "loai").to_owned(),
            grade: grade.map(str::to_owned),
            steps: steps.clone(),
        };
        if rank.code.is_empty() || rank.name.is_empty() {
            return Err(p.error(*line, "every row needs a code (ma) and a name (ten)"));
        }
        if !categories.has_code(&rank.category) {
            return Err(p.error(
                *line,
                format!("loai `{}` is not a code of loai_can_bo.csv", rank.category),
            ));
        }
        if let Some(g) = grade.filter(|g| !GRADES.contains(g)) {
            return Err(p.error(
                *line,
                format!("hang `{g}` is not a grade; write I, II, III or IV, or leave it empty"),
            ));
        }
        if let Some(old) = out.insert(rank.code.clone(), rank) {
            return Err(p.error(*line, format!("the code `{}` appears twice", old.code)));
        }
    }
    Ok((out, p.info))
}

impl CodeLists {
    /// The lists compiled into the binary.
    pub fn embedded() -> Result<CodeLists, CodesError> {
        CodeLists::load_from(&crate::xsd::EmbeddedFiles(crate::EMBEDDED))
    }

    /// The lists under `codes/` of a schema directory.
    pub fn load(dir: &Path) -> Result<CodeLists, CodesError> {
        CodeLists::load_from(&crate::xsd::DirFiles(dir.to_owned()))
    }

    pub(crate) fn load_from(files: &dyn SchemaFiles) -> Result<CodeLists, CodesError> {
        let (scales, scales_info) = scales(files)?;
        let categories = code_list(files, "loai_can_bo")?;
        let (ranks, ranks_info) = ranks(files, &scales, &categories)?;
        let provinces = code_list(files, "tinh_khai_sinh")?;
        let countries = code_list(files, "quoc_gia")?;
        for (code, _) in &countries.rows {
            if code.len() != 3
                || !code.bytes().all(|b| b.is_ascii_digit())
                || provinces.has_code(code)
            {
                return Err(CodesError {
                    file: files.display(Path::new("codes/quoc_gia.csv")),
                    line: None,
                    message: format!(
                        "`{code}` must be three digits and no province code of tinh_khai_sinh.csv"
                    ),
                });
            }
        }
        Ok(CodeLists {
            ranks,
            ranks_info,
            scales,
            scales_info,
            ethnic: code_list(files, "dan_toc")?,
            religions: code_list(files, "ton_giao")?,
            categories,
            qualifications: code_list(files, "trinh_do")?,
            provinces,
            countries,
        })
    }

    /// The step of `group` numbered `step` (from 1).
    pub fn step(&self, group: &str, step: usize) -> Option<&Step> {
        self.scales.get(group)?.get(step.checked_sub(1)?)
    }

    /// How many steps `group` has.
    pub fn steps(&self, group: &str) -> usize {
        self.scales.get(group).map_or(0, |s| s.len())
    }

    /// What each list says of itself, for reports.
    pub fn infos(&self) -> Vec<&ListInfo> {
        vec![
            &self.ranks_info,
            &self.scales_info,
            &self.ethnic.info,
            &self.religions.info,
            &self.categories.info,
            &self.qualifications.info,
            &self.provinces.info,
            &self.countries.info,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded files with `name` replaced by `text`.
    struct Patched(&'static str, String);

    impl SchemaFiles for Patched {
        fn read(&self, name: &Path) -> Result<String, String> {
            if name == Path::new("codes").join(format!("{}.csv", self.0)) {
                return Ok(self.1.clone());
            }
            crate::xsd::EmbeddedFiles(crate::EMBEDDED).read(name)
        }
        fn display(&self, name: &Path) -> String {
            name.display().to_string()
        }
    }

    fn load_with(name: &'static str, text: &str) -> Result<CodeLists, CodesError> {
        CodeLists::load_from(&Patched(name, text.to_owned()))
    }

    #[test]
    fn the_embedded_lists_load_with_their_sources() {
        let c = CodeLists::embedded().unwrap();
        assert_eq!(c.ethnic.len(), 54);
        assert_eq!(c.ethnic.code_of("Kinh"), Some("01"));
        assert_eq!(c.ethnic.code_of("54"), Some("54"));
        assert_eq!(c.provinces.len(), 63);
        assert_eq!(c.religions.code_of("Không"), Some("00"));
        let title = &c.ranks["V.07.05.15"];
        assert_eq!(
            (title.group.as_str(), title.grade.as_deref()),
            ("A1", Some("III"))
        );
        // Steps per group as Nghị định 204/2004/NĐ-CP sets them.
        for (group, steps) in [("A3.1", 6), ("A2.1", 8), ("A1", 9), ("A0", 10), ("B", 12)] {
            assert_eq!(c.steps(group), steps, "{group}");
        }
        assert_eq!(c.step("A1", 3).unwrap().text, "3.00");
        assert!(c.step("A1", 10).is_none() && c.step("A1", 0).is_none());
        for info in c.infos() {
            assert!(
                !info.source.is_empty() && info.effective.year >= 1979,
                "{info:?}"
            );
        }
    }

    #[test]
    fn a_list_that_does_not_hold_together_is_refused_with_its_line() {
        let e = load_with(
            "dan_toc",
            "# t\n# nguon: x\n# hieu_luc: 2020-01-01\nma,ten\n01,Kinh\n01,Tày\n",
        )
        .unwrap_err();
        assert_eq!(
            (e.line, e.message.as_str()),
            (Some(6), "the code `01` appears twice")
        );
        let e = load_with("dan_toc", "ma,ten\n01,Kinh\n").unwrap_err();
        assert!(e.message.contains("nguon"), "{e}");
        let e = load_with(
            "dan_toc",
            "# t\n# nguon: x\n# hieu_luc: 2020-13-01\nma,ten\n",
        )
        .unwrap_err();
        assert_eq!(e.line, Some(3));
        let e = load_with("he_so_luong", "# t\n# nguon: x\n# hieu_luc: 2004-10-01\nnhom,bac,he_so_tu,he_so_den\nA1,1,2.34,2.34\nA1,3,3.00,3.00\n").unwrap_err();
        assert!(e.message.contains("out of order"), "{e}");
        let e = load_with(
            "ngach",
            "# t\n# nguon: x\n# hieu_luc: 2021-01-01\nma,ten,nhom_luong,loai,hang\n01.003,Chuyên viên,A9,CongChuc,\n",
        )
        .unwrap_err();
        assert!(e.message.contains("nhom_luong `A9`"), "{e}");
        assert_eq!(e.to_string(), format!("codes/ngach.csv:5: {}", e.message));
        let e = load_with(
            "quoc_gia",
            "# t\n# nguon: x\n# hieu_luc: 2021-01-01\nma,ten\n001,Nowhere\n",
        )
        .unwrap_err();
        assert!(e.message.contains("no province code"), "{e}");
    }

    #[test]
    fn a_row_may_admit_a_range() {
        let text = "# t\n# nguon: x\n# hieu_luc: 2004-10-01\nnhom,bac,he_so_tu,he_so_den\nA1,1,2.34,2.34\nA0,1,2.10,2.10\nA2.1,1,4.40,4.40\nA2.2,1,4.00,4.00\nA3.1,1,6.20,6.20\nB,1,1.86,2.50\n";
        let c = load_with("he_so_luong", text).unwrap();
        let s = c.step("B", 1).unwrap();
        assert_eq!(s.text, "1.86–2.50");
        assert!(s.low < s.high);
    }
}
