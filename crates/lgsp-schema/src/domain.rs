//! Domain rules the schema languages cannot say, each with a stable code. They run on the simple values the
//! validators collected, one record at a time (the values of one element or object: a profile, a salary step, a
//! staffing line, …), as each record closes; what a packet's root must agree with (the number of approved
//! profiles, the sum of the staffing lines) is tallied from its children first. Codes are checked against the
//! code lists (`codes/*.csv`, [`crate::codes`]).

use crate::Field;
use crate::codes::{CodeList, CodeLists, Rank};

/// Field names the rules read; the validators keep only these (`phienBan` is the root's attribute, which the XML
/// validator hands over itself).
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
    "BacLuong",
    "DanToc",
    "TonGiao",
    "LoaiCanBo",
    "HangChucDanh",
    "TrinhDoChuyenMon",
    "TrinhDo",
    "SoLuongHoSo",
    "BienCheCoMat",
    "SoLuong",
    "phienBan",
];

// Indices into FIELDS of the fields the rules look up.
const SO_CCCD: usize = 1;
const NGAY_SINH: usize = 2;
const GIOI_TINH: usize = 3;
const NGAY_TUYEN_DUNG: usize = 4;
const MA_NGACH: usize = 5;
const HE_SO_LUONG: usize = 6;
const NGAY_BAT_DAU: usize = 7;
const NGAY_KET_THUC: usize = 8;
const NGAY_HUONG: usize = 9;
const NGAY_LAP: usize = 10;
const THOI_DIEM_PHE_DUYET: usize = 11;
const BAC_LUONG: usize = 12;
const DAN_TOC: usize = 13;
const TON_GIAO: usize = 14;
const LOAI_CAN_BO: usize = 15;
const HANG_CHUC_DANH: usize = 16;
const TRINH_DO_CHUYEN_MON: usize = 17;
const TRINH_DO: usize = 18;
const SO_LUONG_HO_SO: usize = 19;
const BIEN_CHE_CO_MAT: usize = 20;
const SO_LUONG: usize = 21;
const PHIEN_BAN: usize = 22;

/// Dates that cannot lie in the future (a decision's effective date, NgayHieuLuc, may), by field index.
const fn is_past_date(field: usize) -> bool {
    matches!(
        field,
        NGAY_SINH
            | NGAY_TUYEN_DUNG
            | NGAY_BAT_DAU
            | NGAY_KET_THUC
            | NGAY_HUONG
            | NGAY_LAP
            | THOI_DIEM_PHE_DUYET
    )
}

/// The packet version from which a profile names its staff category (LoaiCanBo) and, for a professional title,
/// its grade (HangChucDanh); 1.0 packets may leave them out.
pub const VERSION_WITH_CATEGORY: &str = "1.1";

/// What the rules check against.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// "Today" for the not-in-the-future rule.
    pub today: Day,
    pub lists: &'a CodeLists,
}

/// What a packet's root must agree with, gathered from its children as they close, and the packet's version.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// `HoSo` entries of an approval batch.
    approved: u64,
    /// The sum of the staffing lines' `SoLuong` (`None` once one is not a number: the schema reports it).
    staff: Option<u64>,
    staff_lines: u64,
    /// The packet's `phienBan` is [`VERSION_WITH_CATEGORY`] or later.
    names_category: bool,
}

impl Tally {
    /// The root's `phienBan` (the XML validator reads it from the root's attributes).
    pub fn set_version(&mut self, version: &str) {
        self.names_category = version == VERSION_WITH_CATEGORY;
    }
}

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

/// Checks every rule on a set of fields, as the unit tests give them: records are the fields sharing a parent,
/// in first-seen order; the tallies come first. (Packets close their records as they stream: [`close_record`].)
#[cfg(test)]
fn check(fields: &[Field], rules: &Rules<'_>, out: &mut Vec<crate::Violation>) {
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
    fn element<'f>(r: &[&'f Field]) -> &'f str {
        r.first().map_or("", |f| element_of(&f.parent))
    }
    let mut tally = Tally::default();
    for record in &records {
        self::tally(element(record), record, &mut tally);
    }
    for record in &records {
        check_record(
            element(record),
            record,
            rules,
            &tally,
            &mut |i, rule, message| {
                let f = record[i];
                out.push(crate::Violation {
                    path: f.path.clone(),
                    line: f.line,
                    column: f.column,
                    rule,
                    message,
                });
            },
        );
    }
}

/// The element a record's path names: `/A/B[2]` → `B`.
#[cfg(test)]
fn element_of(path: &str) -> &str {
    let last = path.rsplit('/').next().unwrap_or_default();
    last.split('[').next().unwrap_or_default()
}

/// Where a rule reports: the index of the offending item in its record, the rule code and the message.
pub type Emit<'e> = dyn FnMut(usize, &'static str, String) + 'e;

/// The first item of each field in a record, found in one pass.
struct Record<'r, I> {
    items: &'r [I],
    first: [usize; FIELDS.len()],
}

impl<'r, I: Item> Record<'r, I> {
    fn new(items: &'r [I]) -> Self {
        let mut first = [usize::MAX; FIELDS.len()];
        for (i, f) in items.iter().enumerate().rev() {
            if let Some(slot) = first.get_mut(f.field()) {
                *slot = i;
            }
        }
        Record { items, first }
    }

    /// The index and value of `field`'s first item.
    fn get(&self, field: usize) -> Option<(usize, &'r str)> {
        let i = self.first[field];
        self.items.get(i).map(|f| (i, f.value()))
    }
}

/// Adds a child record to what its root must agree with (call it for every record as it closes, before the root).
pub fn tally<I: Item>(element: &str, items: &[I], t: &mut Tally) {
    tally_in(&Record::new(items), element, t);
}

/// A record that closes as the document streams: tallied, then checked (its children closed before it).
pub fn close_record<I: Item>(
    element: &str,
    items: &[I],
    rules: &Rules<'_>,
    t: &mut Tally,
    emit: &mut Emit<'_>,
) {
    let r = Record::new(items);
    tally_in(&r, element, t);
    check_in(&r, element, rules, t, emit);
}

fn tally_in<I: Item>(r: &Record<'_, I>, element: &str, t: &mut Tally) {
    match element {
        "HoSo" => t.approved += 1,
        "ChiTiet" => {
            t.staff_lines += 1;
            let n = r.get(SO_LUONG).and_then(|(_, v)| v.parse::<u64>().ok());
            t.staff = match (t.staff_lines, t.staff, n) {
                (1, _, n) => n,
                (_, Some(sum), Some(n)) => sum.checked_add(n),
                _ => None,
            };
        }
        _ => {}
    }
    if let Some((_, v)) = r.get(PHIEN_BAN) {
        t.set_version(v);
    }
}

/// Checks the rules on one record of `element` (the kept values of one element or object).
pub fn check_record<I: Item>(
    element: &str,
    items: &[I],
    rules: &Rules<'_>,
    tally: &Tally,
    emit: &mut Emit<'_>,
) {
    check_in(&Record::new(items), element, rules, tally, emit);
}

fn check_in<I: Item>(
    r: &Record<'_, I>,
    element: &str,
    rules: &Rules<'_>,
    tally: &Tally,
    emit: &mut Emit<'_>,
) {
    let birth = r.get(NGAY_SINH).and_then(|(_, v)| Day::parse(v));
    if let Some((i, v)) = r.get(SO_CCCD) {
        let gender = r.get(GIOI_TINH).map(|(_, g)| g);
        check_cccd(v, birth, gender, rules.lists, &mut |rule, message| {
            emit(i, rule, message)
        });
    }
    check_dates(r, birth, rules.today, emit);
    let lists = rules.lists;
    for (field, list) in [
        (DAN_TOC, &lists.ethnic),
        (TON_GIAO, &lists.religions),
        (LOAI_CAN_BO, &lists.categories),
        (TRINH_DO_CHUYEN_MON, &lists.qualifications),
        (TRINH_DO, &lists.qualifications),
    ] {
        if let Some((i, v)) = r.get(field)
            && list.code_of(v).is_none()
        {
            emit(i, "code.unknown", unknown(FIELDS[field], v, list));
        }
    }
    let rank = match r.get(MA_NGACH) {
        Some((i, code)) => {
            let rank = lists.ranks.get(code);
            if rank.is_none() {
                emit(
                    i,
                    "code.unknown",
                    format!(
                        "MaNgach `{}` is not in the list ngach ({}); use a rank or title code of codes/ngach.csv",
                        crate::xsd::clip_text(code),
                        lists.ranks_info.title
                    ),
                );
            }
            rank.map(|k| (i, k))
        }
        None => None,
    };
    if let Some((at, rank)) = rank {
        check_salary(r, rank, emit);
        check_category(r, at, rank, element, tally, emit);
    }
    check_totals(r, element, tally, emit);
}

fn unknown(field: &str, value: &str, list: &CodeList) -> String {
    format!(
        "{field} `{}` is not in the list {} ({}); use a code or a name of codes/{}.csv",
        crate::xsd::clip_text(value),
        list.info.name,
        list.info.title,
        list.info.name
    )
}

/// Every past date once; recruitment after birth; a period's end not before its start.
fn check_dates<I: Item>(r: &Record<'_, I>, birth: Option<Day>, today: Day, emit: &mut Emit<'_>) {
    let (mut start, mut end) = (None, None);
    for (i, f) in r.items.iter().enumerate() {
        if !is_past_date(f.field()) {
            continue;
        }
        let name = FIELDS[f.field()];
        let day = Day::parse(f.value());
        if i == r.first[NGAY_BAT_DAU] {
            start = day;
        } else if i == r.first[NGAY_KET_THUC] {
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
    if let (Some((i, v)), Some(b)) = (r.get(NGAY_TUYEN_DUNG), birth)
        && let Some(t) = Day::parse(v)
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
}

/// BacLuong within the steps of the rank's salary group; HeSoLuong the coefficient of that step.
fn check_salary<I: Item>(r: &Record<'_, I>, rank: &Rank, emit: &mut Emit<'_>) {
    let Some((i, step)) = r.get(BAC_LUONG) else {
        return;
    };
    let Ok(n) = step.parse::<usize>() else {
        return;
    };
    let steps = rank.steps.len();
    let Some(expected) = rank.step(n) else {
        emit(
            i,
            "salary.step_out_of_range",
            format!(
                "BacLuong {n} is past the {steps} steps of salary group {} ({} {})",
                rank.group, rank.code, rank.name
            ),
        );
        return;
    };
    let Some((j, value)) = r.get(HE_SO_LUONG) else {
        return;
    };
    // Written as the table writes it: no need to read the number.
    if value == expected.text {
        return;
    }
    let Some(v) = Fixed::parse(value) else {
        return;
    };
    if v < expected.low || v > expected.high {
        emit(
            j,
            "salary.coefficient_mismatch",
            format!(
                "HeSoLuong {value} is not the coefficient of step {n} of salary group {} ({} {}): expected {}",
                rank.group, rank.code, rank.name, expected.text
            ),
        );
    }
}

/// The staff category and grade agree with the rank or title; a 1.1 profile names them.
fn check_category<I: Item>(
    r: &Record<'_, I>,
    at: usize,
    rank: &Rank,
    element: &str,
    tally: &Tally,
    emit: &mut Emit<'_>,
) {
    let category = r.get(LOAI_CAN_BO);
    if let Some((i, c)) = category
        && matches!(c, "CongChuc" | "VienChuc")
        && c != rank.category
    {
        emit(
            i,
            "staff.category_mismatch",
            format!(
                "LoaiCanBo is {c}, but MaNgach {} ({}) belongs to {}: civil servants (CongChuc) hold ranks, public employees (VienChuc) professional titles",
                rank.code, rank.name, rank.category
            ),
        );
    }
    let grade = r.get(HANG_CHUC_DANH);
    if let Some((i, g)) = grade {
        let message = match &rank.grade {
            None => Some(format!(
                "MaNgach {} ({}) has no grade (hạng); leave HangChucDanh out",
                rank.code, rank.name
            )),
            Some(own) if own != g => Some(format!(
                "MaNgach {} ({}) is grade {own}, but HangChucDanh is {g}",
                rank.code, rank.name
            )),
            Some(_) => None,
        };
        if let Some(m) = message {
            emit(i, "title.grade_mismatch", m);
        }
    }
    if element != "HoSoCBCCVC" || !tally.names_category {
        return;
    }
    if category.is_none() {
        emit(
            at,
            "version.field_required",
            format!(
                "phienBan {VERSION_WITH_CATEGORY} requires LoaiCanBo (the staff category: CanBo, CongChuc, VienChuc or NguoiLaoDong) before MaNgach"
            ),
        );
    }
    if let (None, Some(own)) = (grade, &rank.grade) {
        emit(
            at,
            "version.field_required",
            format!(
                "phienBan {VERSION_WITH_CATEGORY} requires HangChucDanh after the professional title {} ({}): grade {own}",
                rank.code, rank.name
            ),
        );
    }
}

/// An approval batch lists as many profiles as it counts; a staffing report's lines add up to its total.
fn check_totals<I: Item>(r: &Record<'_, I>, element: &str, tally: &Tally, emit: &mut Emit<'_>) {
    if element == "PheDuyetDuLieu"
        && let Some((i, v)) = r.get(SO_LUONG_HO_SO)
        && let Ok(n) = v.parse::<u64>()
        && n != tally.approved
    {
        emit(
            i,
            "approval.count_mismatch",
            format!(
                "SoLuongHoSo is {n}, but the batch lists {} HoSo",
                tally.approved
            ),
        );
    }
    if element == "BienChe"
        && let (Some((i, v)), Some(sum)) = (r.get(BIEN_CHE_CO_MAT), tally.staff)
        && let Ok(n) = v.parse::<u64>()
        && n != sum
    {
        emit(
            i,
            "staffing.total_mismatch",
            format!(
                "BienCheCoMat is {n}, but the {} ChiTiet lines add up to {sum}",
                tally.staff_lines
            ),
        );
    }
}

fn check_cccd(
    v: &str,
    birth: Option<Day>,
    gender: Option<&str>,
    lists: &CodeLists,
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
    let place = &v[..3];
    if !lists.provinces.has_code(place) && !lists.countries.has_code(place) {
        emit(
            "cccd.province",
            format!(
                "SoCCCD starts with {place}, which is neither a province code of birth registration (codes/tinh_khai_sinh.csv) nor a country code (codes/quoc_gia.csv)"
            ),
        );
    }
    let digit = i32::from(v.as_bytes()[3] - b'0');
    let year_digits = &v[4..6];
    // Another value is the schema's to report, not a mismatch of the id.
    let gender = gender.filter(|g| matches!(*g, "Nam" | "Nu"));
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
        let lists = CodeLists::embedded().unwrap();
        let rules = Rules {
            today: Day {
                year: 2026,
                month: 11,
                day: 25,
            },
            lists: &lists,
        };
        let mut out = Vec::new();
        check(fields, &rules, &mut out);
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
    fn a_gender_the_schema_refuses_is_no_mismatch_of_the_id() {
        assert!(rules(&profile("001090012345", "1990-05-12", "Khác")).is_empty());
        assert_eq!(
            rules(&profile("001090012345", "1990-05-12", "Nu")),
            ["cccd.century_gender"]
        );
    }

    #[test]
    fn a_birth_registered_abroad_carries_a_country_code() {
        // 840: a birth registered in the United States.
        assert!(rules(&profile("840090012345", "1990-05-12", "Nam")).is_empty());
        assert_eq!(
            rules(&profile("999090012345", "1990-05-12", "Nam")),
            ["cccd.province"]
        );
    }

    fn salary(rank: &str, step: &str, coefficient: &str) -> Vec<&'static str> {
        rules(&[
            field("/L", "MaNgach", rank),
            field("/L", "BacLuong", step),
            field("/L", "HeSoLuong", coefficient),
        ])
    }

    #[test]
    fn the_coefficient_is_the_one_of_the_groups_step() {
        assert!(salary("01.003", "3", "3.00").is_empty());
        assert!(salary("01.003", "9", "4.98").is_empty());
        assert!(salary("01.003", "3", "3.000000000000000000000").is_empty());
        assert_eq!(
            salary("01.003", "3", "3.01"),
            ["salary.coefficient_mismatch"]
        );
        assert_eq!(
            salary("01.003", "3", "2.99999999999999999999999"),
            ["salary.coefficient_mismatch"]
        );
        assert_eq!(salary("01.003", "10", "4.98"), ["salary.step_out_of_range"]);
        assert_eq!(salary("01.001", "7", "8.00"), ["salary.step_out_of_range"]);
        assert!(salary("01.005", "12", "4.06").is_empty());
        // A public employee's title: the teacher of the issue, THPT grade III, group A1.
        assert!(salary("V.07.05.15", "1", "2.34").is_empty());
        assert_eq!(
            salary("V.07.05.15", "1", "4.40"),
            ["salary.coefficient_mismatch"]
        );
        assert_eq!(salary("09.999", "1", "2.34"), ["code.unknown"]);
        // Not a number: the schema reports it; the rule stays silent.
        assert!(salary("01.003", "3", "3,00").is_empty());
    }

    #[test]
    fn coefficients_compare_exactly() {
        assert!(Fixed::parse("4.98").unwrap() == Fixed::parse("+4.980000000000000000000").unwrap());
        assert!(Fixed::parse("4.98000000000000000001").unwrap() > Fixed::parse("4.98").unwrap());
        assert!(Fixed::parse("2.33999999999999999999999").unwrap() < Fixed::parse("2.34").unwrap());
        assert!(Fixed::parse("-3.00").unwrap() < Fixed::parse("1").unwrap());
        assert!(
            Fixed::parse("123456789012345678901234567890").unwrap() > Fixed::parse("10").unwrap()
        );
        assert!(Fixed::parse("3,00").is_none());
    }

    #[test]
    fn the_past_dates_are_the_ones_named() {
        let past: Vec<&str> = (0..FIELDS.len())
            .filter(|i| is_past_date(*i))
            .map(|i| FIELDS[i])
            .collect();
        assert_eq!(
            past,
            [
                "NgaySinh",
                "NgayTuyenDung",
                "NgayBatDau",
                "NgayKetThuc",
                "NgayHuong",
                "NgayLap",
                "ThoiDiemPheDuyet"
            ]
        );
    }

    #[test]
    fn codes_come_from_their_lists() {
        let with = |name: &'static str, value: &str| rules(&[field("/H", name, value)]);
        assert!(with("DanToc", "Kinh").is_empty());
        assert!(with("DanToc", "01").is_empty());
        assert_eq!(with("DanToc", "Kinh tế"), ["code.unknown"]);
        assert!(with("TonGiao", "Không").is_empty());
        assert_eq!(with("TonGiao", "99"), ["code.unknown"]);
        assert!(with("LoaiCanBo", "VienChuc").is_empty());
        assert_eq!(with("LoaiCanBo", "CongNhan"), ["code.unknown"]);
        assert_eq!(with("TrinhDo", "CuNhan"), ["code.unknown"]);
        assert!(with("TrinhDoChuyenMon", "ThacSi").is_empty());
    }

    #[test]
    fn category_and_grade_agree_with_the_rank_and_a_1_1_profile_names_them() {
        let record = |extra: &[(&'static str, &str)]| {
            let mut f = vec![field("/HoSoCBCCVC", "MaNgach", "V.07.05.15")];
            f.extend(extra.iter().map(|(n, v)| field("/HoSoCBCCVC", n, v)));
            rules(&f)
        };
        assert!(record(&[("LoaiCanBo", "VienChuc"), ("HangChucDanh", "III")]).is_empty());
        assert_eq!(
            record(&[("LoaiCanBo", "CongChuc")]),
            ["staff.category_mismatch"]
        );
        assert!(record(&[("LoaiCanBo", "NguoiLaoDong")]).is_empty());
        assert_eq!(record(&[("HangChucDanh", "II")]), ["title.grade_mismatch"]);
        assert_eq!(
            rules(&[
                field("/HoSoCBCCVC", "MaNgach", "01.003"),
                field("/HoSoCBCCVC", "HangChucDanh", "III")
            ]),
            ["title.grade_mismatch"]
        );
        // 1.0 may leave both out; 1.1 may not.
        assert!(record(&[("phienBan", "1.0")]).is_empty());
        assert_eq!(
            record(&[("phienBan", "1.1")]),
            ["version.field_required", "version.field_required"]
        );
        assert_eq!(
            record(&[("phienBan", "1.1"), ("LoaiCanBo", "VienChuc")]),
            ["version.field_required"]
        );
        // A rank has no grade to name.
        assert!(
            rules(&[
                field("/HoSoCBCCVC", "phienBan", "1.1"),
                field("/HoSoCBCCVC", "MaNgach", "01.003"),
                field("/HoSoCBCCVC", "LoaiCanBo", "CongChuc")
            ])
            .is_empty()
        );
    }

    #[test]
    fn a_root_agrees_with_its_children_whatever_the_order() {
        let batch = |count: &str, entries: usize| {
            let mut f = vec![field("/PheDuyetDuLieu", "SoLuongHoSo", count)];
            for i in 1..=entries {
                let parent = format!("/PheDuyetDuLieu/HoSo[{i}]");
                f.push(field(&parent, "SoCCCD", "001090012345"));
            }
            rules(&f)
        };
        assert!(batch("2", 2).is_empty());
        assert_eq!(batch("3", 2), ["approval.count_mismatch"]);
        let staffing = |total: &str, lines: &[&str]| {
            let mut f = Vec::new();
            for (i, n) in lines.iter().enumerate() {
                let parent = format!("/BienChe/ChiTiet[{}]", i + 1);
                f.push(field(&parent, "MaNgach", "01.003"));
                f.push(field(&parent, "SoLuong", n));
            }
            f.push(field("/BienChe", "BienCheCoMat", total));
            rules(&f)
        };
        assert!(staffing("30", &["10", "20"]).is_empty());
        assert_eq!(staffing("31", &["10", "20"]), ["staffing.total_mismatch"]);
        // A line that is not a number is the schema's to report; the total is not checked then.
        assert!(staffing("31", &["10", "x"]).is_empty());
    }

    #[test]
    fn dates() {
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
                field("/C", "NgayBatDau", "2020-01-01"),
                field("/C", "NgayKetThuc", "2019-01-01")
            ]),
            ["date.end_before_start"]
        );
    }
}
