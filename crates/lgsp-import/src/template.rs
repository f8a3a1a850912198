//! The spreadsheet templates: per message type, its columns in the order of the schema, each with the Vietnamese
//! heading an agency clerk sees, the field it fills and how its cells are read.

use lgsp_schema::CodeLists;

/// How a column's cells become a field's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text as typed (a number is written without a fraction when it has none).
    Text,
    /// A citizen id: 12 digits; a number cell (Excel drops leading zeros) is padded back to 12.
    Cccd,
    /// A date: a date cell, `dd/mm/yyyy`, or `yyyy-mm-dd`.
    Date,
    /// A whole number.
    Integer,
    /// A decimal with two places (`3,00` with a comma is read as `3.00`).
    Decimal2,
    /// `Nam` / `Nữ`.
    Gender,
    /// A code of a code list, or its name.
    Listed(List),
    /// One of a few words, each with its Vietnamese label.
    Choice(&'static [(&'static str, &'static str)]),
}

/// The code lists a column may draw from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    Ethnic,
    Religion,
    Category,
    Qualification,
}

impl List {
    pub fn of(self, lists: &CodeLists) -> &lgsp_schema::codes::CodeList {
        match self {
            List::Ethnic => &lists.ethnic,
            List::Religion => &lists.religions,
            List::Category => &lists.categories,
            List::Qualification => &lists.qualifications,
        }
    }
}

/// Where a value goes in the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A child element of the root.
    Element,
    /// An attribute of the root.
    Attribute,
}

/// One column of a template.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// The heading in the template (Vietnamese).
    pub heading: &'static str,
    /// The packet field it fills.
    pub field: &'static str,
    pub kind: Kind,
    pub required: bool,
    pub target: Target,
    /// What the clerk writes, for the template's second row.
    pub hint: &'static str,
}

/// A message type's template.
#[derive(Debug, Clone, Copy)]
pub struct Template {
    pub message_type: &'static str,
    /// The packet format version the rows become.
    pub version: &'static str,
    pub columns: &'static [Column],
}

const fn col(
    heading: &'static str,
    field: &'static str,
    kind: Kind,
    required: bool,
    hint: &'static str,
) -> Column {
    Column {
        heading,
        field,
        kind,
        required,
        target: Target::Element,
        hint,
    }
}

const LY_LUAN: &[(&str, &str)] = &[
    ("SoCap", "Sơ cấp"),
    ("TrungCap", "Trung cấp"),
    ("CaoCap", "Cao cấp"),
    ("CuNhan", "Cử nhân"),
];
const THAO_TAC: &[(&str, &str)] = &[("TaoMoi", "Tạo mới"), ("CapNhat", "Cập nhật")];

/// HoSoCBCCVC: one row per person (the profile's own fields; histories are sent by the HR system).
pub const HO_SO: Template = Template {
    message_type: "HoSoCBCCVC",
    version: "1.1",
    columns: &[
        Column {
            target: Target::Attribute,
            ..col(
                "Thao tác",
                "loaiThaoTac",
                Kind::Choice(THAO_TAC),
                false,
                "Tạo mới / Cập nhật",
            )
        },
        col("Mã đơn vị", "MaDonVi", Kind::Text, true, "000.00.00.H29"),
        col("Số CCCD", "SoCCCD", Kind::Cccd, true, "12 chữ số"),
        col("Họ và tên", "HoVaTen", Kind::Text, true, "Nguyễn Văn An"),
        col("Ngày sinh", "NgaySinh", Kind::Date, true, "dd/mm/yyyy"),
        col("Giới tính", "GioiTinh", Kind::Gender, true, "Nam / Nữ"),
        col(
            "Dân tộc",
            "DanToc",
            Kind::Listed(List::Ethnic),
            true,
            "Kinh (hoặc mã 01–54)",
        ),
        col(
            "Tôn giáo",
            "TonGiao",
            Kind::Listed(List::Religion),
            false,
            "Không",
        ),
        col("Quê quán", "QueQuan", Kind::Text, false, "Hà Nội"),
        col("Chức vụ", "ChucVu", Kind::Text, false, "Chuyên viên"),
        col(
            "Loại cán bộ",
            "LoaiCanBo",
            Kind::Listed(List::Category),
            true,
            "Cán bộ / Công chức / Viên chức / Người lao động (hợp đồng)",
        ),
        col(
            "Mã ngạch/chức danh",
            "MaNgach",
            Kind::Text,
            true,
            "01.003 hoặc V.07.05.15",
        ),
        col(
            "Hạng chức danh",
            "HangChucDanh",
            Kind::Text,
            false,
            "I / II / III / IV (viên chức)",
        ),
        col("Bậc lương", "BacLuong", Kind::Integer, true, "3"),
        col("Hệ số lương", "HeSoLuong", Kind::Decimal2, true, "3,00"),
        col(
            "Ngày tuyển dụng",
            "NgayTuyenDung",
            Kind::Date,
            true,
            "dd/mm/yyyy",
        ),
        col(
            "Trình độ chuyên môn",
            "TrinhDoChuyenMon",
            Kind::Listed(List::Qualification),
            true,
            "Đại học",
        ),
        col(
            "Lý luận chính trị",
            "LyLuanChinhTri",
            Kind::Choice(LY_LUAN),
            false,
            "Trung cấp",
        ),
    ],
};

/// Every template.
pub const TEMPLATES: &[Template] = &[HO_SO];

/// The template of a message type.
pub fn template(message_type: &str) -> Option<&'static Template> {
    TEMPLATES.iter().find(|t| t.message_type == message_type)
}

/// A heading as compared: trimmed, lower case, runs of spaces folded.
pub fn normalise(heading: &str) -> String {
    heading
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

impl Template {
    /// The column a heading names: its Vietnamese heading, or the field name itself.
    pub fn column(&self, heading: &str) -> Option<&'static Column> {
        let h = normalise(heading);
        self.columns
            .iter()
            .find(|c| normalise(c.heading) == h || c.field.to_lowercase() == h)
    }

    pub fn by_field(&self, field: &str) -> Option<&'static Column> {
        self.columns.iter().find(|c| c.field == field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headings_match_loosely_and_fields_by_name() {
        assert_eq!(
            HO_SO.column("  Ngày   sinh ").map(|c| c.field),
            Some("NgaySinh")
        );
        assert_eq!(HO_SO.column("SỐ CCCD").map(|c| c.field), Some("SoCCCD"));
        assert_eq!(HO_SO.column("socccd").map(|c| c.field), Some("SoCCCD"));
        assert!(HO_SO.column("Ghi chú").is_none());
    }

    #[test]
    fn columns_follow_the_schema_order() {
        let fields: Vec<&str> = HO_SO
            .columns
            .iter()
            .filter(|c| c.target == Target::Element)
            .map(|c| c.field)
            .collect();
        let xsd = include_str!("../../../schemas/cbccvc/HoSoCBCCVC.xsd");
        let mut at = 0;
        for f in fields {
            let needle = format!("\"{f}\"");
            let i = xsd[at..]
                .find(&needle)
                .unwrap_or_else(|| panic!("{f} out of schema order"));
            at += i;
        }
    }
}
