//! Domain rules the schema languages cannot say, each with a stable code. They run on the simple values the
//! validators collected, grouped by the element/object holding them (one profile, one salary step, …).

use crate::{Field, Violation};

/// Field names the rules read; the validators keep only these.
pub const FIELDS: &[&str] = &[
    "MaDonVi",
    "SoCCCD",
    "NgaySinh",
    "GioiTinh",
    "NgayTuyenDung",
    "MaNgach",
    "HeSoLuong",
    "NgayBatDau",
    "NgayKetThuc",
    "NgayHuong",
    "NgayLap",
    "ThoiDiemPheDuyet",
];

/// Dates that cannot lie in the future (a decision's effective date, NgayHieuLuc, may).
const PAST_DATES: &[&str] = &[
    "NgaySinh",
    "NgayTuyenDung",
    "NgayBatDau",
    "NgayKetThuc",
    "NgayHuong",
    "NgayLap",
    "ThoiDiemPheDuyet",
];

/// The 63 province codes of birth registration (first three digits of a CCCD).
pub const PROVINCES: &[&str] = &[
    "001", "002", "004", "006", "008", "010", "011", "012", "014", "015", "017", "019", "020",
    "022", "024", "025", "026", "027", "030", "031", "033", "034", "035", "036", "037", "038",
    "040", "042", "044", "045", "046", "048", "049", "051", "052", "054", "056", "058", "060",
    "062", "064", "066", "067", "068", "070", "072", "074", "075", "077", "079", "080", "082",
    "083", "084", "086", "087", "089", "091", "092", "093", "094", "095", "096",
];

/// Salary coefficient ranges (first and last step) of the common civil-service ranks, from the salary table for
/// civil servants (Nghị định 204/2004/NĐ-CP, bảng 2). Other ranks are held to the overall range.
const RANKS: &[(&str, &str, &str, &str)] = &[
    ("01.001", "chuyên viên cao cấp (A3.1)", "6.20", "8.00"),
    ("01.002", "chuyên viên chính (A2.1)", "4.40", "6.78"),
    ("01.003", "chuyên viên (A1)", "2.34", "4.98"),
    ("01.004", "cán sự (A0)", "2.10", "4.89"),
    ("01.005", "nhân viên (B)", "1.86", "4.06"),
];
const OVERALL: (&str, &str) = ("1.00", "10.00");

/// A calendar date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Day {
    pub year: i32,
    pub month: u8,
    pub day: u8,
}

impl Day {
    /// `YYYY-MM-DD` (a longer value such as a dateTime is read by its first ten characters).
    pub fn parse(s: &str) -> Option<Day> {
        let b: &[u8; 10] = s.as_bytes().get(..10)?.try_into().ok()?;
        if b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        let d = |i: usize| {
            let x = b[i].wrapping_sub(b'0');
            (x < 10).then_some(x)
        };
        let year = ((i32::from(d(0)?) * 10 + i32::from(d(1)?)) * 10 + i32::from(d(2)?)) * 10
            + i32::from(d(3)?);
        let month = d(5)? * 10 + d(6)?;
        let day = d(8)? * 10 + d(9)?;
        let valid = (1..=12).contains(&month)
            && day >= 1
            && day <= crate::xsd::days_in_month(i64::from(year), month);
        valid.then_some(Day { year, month, day })
    }

    /// Today in Vietnam (UTC+7), the calendar the packets are written in.
    pub fn today() -> Day {
        let now = time::OffsetDateTime::now_utc() + time::Duration::hours(7);
        Day {
            year: now.year(),
            month: u8::from(now.month()),
            day: now.day(),
        }
    }
}

impl std::fmt::Display for Day {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// A kept value as the rules see it: which field it is and its (normalised) text.
pub trait Item {
    /// Its index in [`FIELDS`].
    fn field(&self) -> usize;
    fn value(&self) -> &str;
}

impl Item for Field {
    fn field(&self) -> usize {
        field_index(self.name).unwrap_or(usize::MAX)
    }
    fn value(&self) -> &str {
        &self.value
    }
}

impl<T: Item + ?Sized> Item for &T {
    fn field(&self) -> usize {
        (**self).field()
    }
    fn value(&self) -> &str {
        (**self).value()
    }
}

/// The index in [`FIELDS`] of the field a simple element or JSON key of this name is kept as, if a rule reads it.
pub fn field_index(name: &str) -> Option<usize> {
    FIELDS.iter().position(|f| *f == name)
}

/// As [`field_index`], by name.
pub fn field_name(name: &str) -> Option<&'static str> {
    field_index(name).map(|i| FIELDS[i])
}

// Indices into FIELDS of the fields the rules look up.
const SO_CCCD: usize = 1;
const NGAY_SINH: usize = 2;
const GIOI_TINH: usize = 3;
const NGAY_TUYEN_DUNG: usize = 4;
const MA_NGACH: usize = 5;
const HE_SO_LUONG: usize = 6;
const NGAY_BAT_DAU: usize = 7;
const NGAY_KET_THUC: usize = 8;

/// Checks every rule on fields from anywhere in a packet (the JSON path): records are the fields sharing a
/// parent, in first-seen order; violations come in field order.
pub fn check(fields: &[Field], today: Day, out: &mut Vec<Violation>) {
    // One pass; a batch may hold thousands of records.
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut records: Vec<Vec<&Field>> = Vec::new();
    let mut last: Option<(&std::sync::Arc<str>, usize)> = None;
    for f in fields {
        // A record's fields mostly come together and share one Arc: compare pointers before hashing paths.
        let i = match last {
            Some((p, i)) if std::sync::Arc::ptr_eq(p, &f.parent) => i,
            _ => *index.entry(&*f.parent).or_insert_with(|| {
                records.push(Vec::new());
                records.len() - 1
            }),
        };
        last = Some((&f.parent, i));
        records[i].push(f);
    }
    for record in &records {
        check_record(record, today, &mut |i, rule, message| {
            let f = record[i];
            out.push(Violation {
                path: f.path.clone(),
                line: f.line,
                column: f.column,
                rule,
                message,
            });
        });
    }
}

/// Where a rule reports: the index of the offending item in its record, the rule code and the message.
pub type Emit<'e> = dyn FnMut(usize, &'static str, String) + 'e;

/// Checks the rules on one record (the kept values of one element or object: a profile, a salary step, …).
pub fn check_record<I: Item>(record: &[I], today: Day, emit: &mut Emit<'_>) {
    // The first item of each field, found in one pass.
    let mut first = [usize::MAX; FIELDS.len()];
    for (i, f) in record.iter().enumerate().rev() {
        if let Some(slot) = first.get_mut(f.field()) {
            *slot = i;
        }
    }
    let get = |field: usize| record.get(first[field]).map(|f| (first[field], f));
    let birth = get(NGAY_SINH).and_then(|(_, f)| Day::parse(f.value()));
    let gender = get(GIOI_TINH).map(|(_, f)| f.value());
    if let Some((i, f)) = get(SO_CCCD) {
        check_cccd(f.value(), birth, gender, &mut |rule, message| {
            emit(i, rule, message)
        });
    }
    // Every past date once, remembering the first start and end of a period.
    let (mut start, mut end) = (None, None);
    for (i, f) in record.iter().enumerate() {
        let field = f.field();
        let Some(name) = FIELDS.get(field).filter(|n| PAST_DATES.contains(n)) else {
            continue;
        };
        let day = Day::parse(f.value());
        if i == first[NGAY_BAT_DAU] {
            start = day;
        } else if i == first[NGAY_KET_THUC] {
            end = day.map(|d| (i, d));
        }
        match day {
            None => emit(
                i,
                "date.invalid",
                format!("{name} `{}` is not a calendar date (YYYY-MM-DD)", f.value()),
            ),
            Some(d) if d > today => emit(
                i,
                "date.in_future",
                format!("{name} {d} lies after today ({today}); check the year"),
            ),
            Some(_) => {}
        }
    }
    if let (Some((i, f)), Some(b)) = (get(NGAY_TUYEN_DUNG), birth)
        && let Some(t) = Day::parse(f.value())
        && t <= b
    {
        emit(
            i,
            "date.recruitment_before_birth",
            format!("NgayTuyenDung {t} is not after NgaySinh {b}"),
        );
    }
    if let (Some(s), Some((i, e))) = (start, end)
        && e < s
    {
        emit(
            i,
            "date.end_before_start",
            format!("NgayKetThuc {e} is before NgayBatDau {s}"),
        );
    }
    if let Some((i, f)) = get(HE_SO_LUONG) {
        let rank = get(MA_NGACH).map(|(_, m)| m.value());
        if let Some((rule, message)) = check_coefficient(f.value(), rank) {
            emit(i, rule, message);
        }
    }
}

fn check_cccd(
    v: &str,
    birth: Option<Day>,
    gender: Option<&str>,
    emit: &mut dyn FnMut(&'static str, String),
) {
    if v.len() != 12 || !v.bytes().all(|b| b.is_ascii_digit()) {
        emit(
            "cccd.length",
            format!(
                "SoCCCD `{}` must be exactly 12 digits",
                crate::xsd::clip_text(v)
            ),
        );
        return;
    }
    if !PROVINCES.contains(&&v[..3]) {
        emit(
            "cccd.province",
            format!(
                "SoCCCD starts with {}, which is not a province code of birth registration",
                &v[..3]
            ),
        );
    }
    let digit = i32::from(v.as_bytes()[3] - b'0');
    let year_digits = &v[4..6];
    if let Some(b) = birth {
        let century = (b.year - 1900).div_euclid(100);
        if !(0..=4).contains(&century) || digit / 2 != century {
            let expected = century * 2;
            emit(
                "cccd.century_gender",
                format!(
                    "the 4th digit of SoCCCD is {digit}, but someone born in {} has {} (male) or {} (female)",
                    b.year,
                    expected,
                    expected + 1
                ),
            );
        } else if let Some(g) = gender.filter(|g| (digit % 2 == 0) != (*g == "Nam")) {
            emit(
                "cccd.century_gender",
                format!(
                    "the 4th digit of SoCCCD is {digit}, which says {}, but GioiTinh is {g}",
                    if digit % 2 == 0 { "male" } else { "female" }
                ),
            );
        }
        if year_digits != format!("{:02}", b.year.rem_euclid(100)) {
            emit(
                "cccd.birth_year",
                format!(
                    "digits 5–6 of SoCCCD are {year_digits}, but NgaySinh is in {}",
                    b.year
                ),
            );
        }
    } else if let Some(g) = gender.filter(|g| (digit % 2 == 0) != (*g == "Nam")) {
        emit(
            "cccd.century_gender",
            format!("the 4th digit of SoCCCD is {digit}, which does not fit GioiTinh {g}"),
        );
    }
}

fn check_coefficient(value: &str, rank: Option<&str>) -> Option<(&'static str, String)> {
    let v = Fixed::parse(value)?;
    let range = rank.and_then(|r| RANKS.iter().find(|(code, ..)| *code == r));
    let (lo, hi) = range.map_or(OVERALL, |(_, _, lo, hi)| (*lo, *hi));
    if v >= Fixed::parse(lo)? && v <= Fixed::parse(hi)? {
        return None;
    }
    let label = match range {
        Some((code, name, ..)) => format!("rank {code} {name}"),
        None => "any rank".to_owned(),
    };
    Some((
        "salary.coefficient_out_of_range",
        format!("HeSoLuong {value} is outside {lo}–{hi} for {label}"),
    ))
}

/// A decimal read without allocating, for comparing against the (positive) coefficient bounds: whole part,
/// the first 18 fraction digits, and whether any non-zero digit follows them. A negative value reads as zero
/// (below every bound) and a whole part beyond `u64` as `u64::MAX` (above every bound).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fixed(u64, u64, bool);

impl Fixed {
    pub fn parse(s: &str) -> Option<Fixed> {
        let (negative, s) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        let all_digits = |t: &str| t.bytes().all(|c| c.is_ascii_digit());
        if (int.is_empty() && frac.is_empty()) || !all_digits(int) || !all_digits(frac) {
            return None;
        }
        if negative {
            return Some(Fixed(0, 0, false));
        }
        let value = |t: &[u8]| {
            t.iter().fold(0u64, |n, c| {
                n.saturating_mul(10).saturating_add(u64::from(c - b'0'))
            })
        };
        let whole = value(int.as_bytes());
        let (head, rest) = frac.as_bytes().split_at(frac.len().min(18));
        let scaled = value(head) * 10u64.pow(18 - head.len() as u32);
        Some(Fixed(whole, scaled, rest.iter().any(|c| *c != b'0')))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(parent: &str, name: &'static str, value: &str) -> Field {
        Field {
            parent: parent.into(),
            name,
            value: value.into(),
            path: format!("{parent}/{name}"),
            line: None,
            column: None,
        }
    }

    fn rules(fields: &[Field]) -> Vec<&'static str> {
        let mut out = Vec::new();
        check(
            fields,
            Day {
                year: 2026,
                month: 11,
                day: 25,
            },
            &mut out,
        );
        out.into_iter().map(|v| v.rule).collect()
    }

    fn profile(cccd: &str, birth: &str, gender: &str) -> Vec<Field> {
        vec![
            field("/H", "SoCCCD", cccd),
            field("/H", "NgaySinh", birth),
            field("/H", "GioiTinh", gender),
        ]
    }

    #[test]
    fn cccd_structure() {
        assert!(rules(&profile("001090012345", "1990-05-12", "Nam")).is_empty());
        assert!(rules(&profile("079301004567", "2001-03-09", "Nu")).is_empty());
        assert_eq!(
            rules(&profile("003090012345", "1990-05-12", "Nam")),
            ["cccd.province"]
        );
        assert_eq!(
            rules(&profile("001190012345", "1990-05-12", "Nam")),
            ["cccd.century_gender"]
        );
        assert_eq!(
            rules(&profile("001290012345", "1990-05-12", "Nam")),
            ["cccd.century_gender"]
        );
        assert_eq!(
            rules(&profile("001091012345", "1990-05-12", "Nam")),
            ["cccd.birth_year"]
        );
        assert_eq!(
            rules(&profile("00109001234", "1990-05-12", "Nam")),
            ["cccd.length"]
        );
    }

    #[test]
    fn coefficients_compare_exactly() {
        let out = |v: &str| {
            rules(&[
                field("/L", "MaNgach", "01.003"),
                field("/L", "HeSoLuong", v),
            ]) == ["salary.coefficient_out_of_range"]
        };
        assert!(!out("2.34") && !out("+4.98") && !out("4.980000000000000000000") && !out("3"));
        assert!(out("4.98000000000000000001"));
        assert!(out("2.33999999999999999999999"));
        assert!(out("-3.00") && out("-0"));
        assert!(out("123456789012345678901234567890"));
        // Not a number: the schema reports it; the rule stays silent.
        assert!(rules(&[field("/L", "HeSoLuong", "3,00")]).is_empty());
    }

    #[test]
    fn dates_and_coefficients() {
        let mut f = profile("001090012345", "1990-05-12", "Nam");
        f.push(field("/H", "NgayTuyenDung", "1989-01-01"));
        assert_eq!(rules(&f), ["date.recruitment_before_birth"]);
        assert_eq!(
            rules(&[field("/H", "NgayLap", "2026-11-26")]),
            ["date.in_future"]
        );
        assert_eq!(
            rules(&[field("/H", "NgayLap", "2026-04-31")]),
            ["date.invalid"]
        );
        assert!(rules(&[field("/H", "NgayLap", "2026-11-25")]).is_empty());
        assert_eq!(
            rules(&[
                field("/L", "MaNgach", "01.003"),
                field("/L", "HeSoLuong", "4.99")
            ]),
            ["salary.coefficient_out_of_range"]
        );
        assert!(
            rules(&[
                field("/L", "MaNgach", "01.003"),
                field("/L", "HeSoLuong", "4.98")
            ])
            .is_empty()
        );
        assert!(
            rules(&[
                field("/L", "MaNgach", "09.999"),
                field("/L", "HeSoLuong", "9.99")
            ])
            .is_empty()
        );
        assert_eq!(
            rules(&[
                field("/C", "NgayBatDau", "2020-01-01"),
                field("/C", "NgayKetThuc", "2019-01-01")
            ]),
            ["date.end_before_start"]
        );
    }
}
