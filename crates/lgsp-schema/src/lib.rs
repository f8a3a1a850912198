//! Packet validation for the CBCCVC message types: a streaming validator for a subset of XML Schema over
//! quick-xml events (no DOM), JSON Schema (draft 2020-12) through the `jsonschema` crate, and the domain rules the
//! schema languages cannot say (citizen-id structure, dates, salary coefficients).
#![forbid(unsafe_code)]

pub mod codes;
pub mod domain;
pub mod json;
pub mod xsd;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use codes::{CodeLists, CodesError};
pub use domain::Day;

/// Bounds on what one packet may make the validator hold.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_depth: usize,
    pub max_attributes: usize,
    /// Longest text of one element or attribute, in bytes.
    pub max_text: usize,
    /// Violations reported before validation stops.
    pub max_errors: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 32,
            max_attributes: 32,
            max_text: 64 * 1024,
            max_errors: 50,
        }
    }
}

/// One thing wrong with a packet (the entries of a refused packet's problem document).
pub use lgsp_problem::Violation;

/// A simple value found in a packet, kept for the domain rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Path of the element holding it (fields with the same parent form one record); shared by the record.
    pub parent: std::sync::Arc<str>,
    /// One of [`domain::FIELDS`].
    pub name: &'static str,
    pub value: String,
    pub path: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
}

/// Every rule code a violation may carry (the `rule` of `errors[]`, the `rule` label of
/// `lgsp_validation_failures_total`, exported as 0 from start-up). A test keeps it equal to the codes the sources
/// emit.
pub const RULES: &[&str] = &[
    "approval.count_mismatch",
    "cccd.birth_year",
    "cccd.century_gender",
    "cccd.length",
    "cccd.province",
    "code.unknown",
    "date.end_before_start",
    "date.in_future",
    "date.invalid",
    "date.recruitment_before_birth",
    "json.additional_properties",
    "json.all_of",
    "json.any_of",
    "json.const",
    "json.depth_exceeded",
    "json.duplicate_key",
    "json.encoding",
    "json.enum",
    "json.exclusive_maximum",
    "json.exclusive_minimum",
    "json.format",
    "json.malformed",
    "json.max_items",
    "json.max_length",
    "json.maximum",
    "json.min_items",
    "json.min_length",
    "json.minimum",
    "json.multiple_of",
    "json.not",
    "json.number_too_large",
    "json.one_of",
    "json.pattern",
    "json.required",
    "json.schema",
    "json.truncated",
    "json.type",
    "json.unique_items",
    "packet.unknown_type",
    "salary.coefficient_mismatch",
    "salary.step_out_of_range",
    "staff.category_mismatch",
    "staffing.total_mismatch",
    "title.grade_mismatch",
    "version.field_required",
    "xml.depth_exceeded",
    "xml.doctype_forbidden",
    "xml.encoding",
    "xml.malformed",
    "xml.text_too_long",
    "xml.too_many_attributes",
    "xml.truncated",
    "xml.undeclared_entity",
    "xsd.attribute_missing",
    "xsd.attribute_unexpected",
    "xsd.enumeration",
    "xsd.fraction_digits",
    "xsd.invalid_value",
    "xsd.length",
    "xsd.max_exclusive",
    "xsd.max_inclusive",
    "xsd.max_length",
    "xsd.min_exclusive",
    "xsd.min_inclusive",
    "xsd.min_length",
    "xsd.missing_element",
    "xsd.nil_not_allowed",
    "xsd.nil_with_content",
    "xsd.pattern",
    "xsd.text_not_allowed",
    "xsd.total_digits",
    "xsd.unexpected_element",
    "xsd.unknown_root",
    "xsd.xsi_type_unsupported",
];

/// The message types of the national CBCCVC database (names as in the schemas).
pub const MESSAGE_TYPES: &[&str] = &["HoSoCBCCVC", "BienChe", "PheDuyetDuLieu", "BienDong"];

/// The schema files of `schemas/cbccvc/`, compiled into the binary so the gateway runs from anywhere.
pub const EMBEDDED: &[(&str, &str)] = &[
    (
        "common.xsd",
        include_str!("../../../schemas/cbccvc/common.xsd"),
    ),
    (
        "HoSoCBCCVC.xsd",
        include_str!("../../../schemas/cbccvc/HoSoCBCCVC.xsd"),
    ),
    (
        "BienChe.xsd",
        include_str!("../../../schemas/cbccvc/BienChe.xsd"),
    ),
    (
        "PheDuyetDuLieu.xsd",
        include_str!("../../../schemas/cbccvc/PheDuyetDuLieu.xsd"),
    ),
    (
        "xmldsig-profile.xsd",
        include_str!("../../../schemas/cbccvc/xmldsig-profile.xsd"),
    ),
    (
        "xmldsig-filter2-profile.xsd",
        include_str!("../../../schemas/cbccvc/xmldsig-filter2-profile.xsd"),
    ),
    (
        "BienDong.xsd",
        include_str!("../../../schemas/cbccvc/BienDong.xsd"),
    ),
    (
        "HoSoCBCCVC.schema.json",
        include_str!("../../../schemas/cbccvc/HoSoCBCCVC.schema.json"),
    ),
    (
        "BienChe.schema.json",
        include_str!("../../../schemas/cbccvc/BienChe.schema.json"),
    ),
    (
        "PheDuyetDuLieu.schema.json",
        include_str!("../../../schemas/cbccvc/PheDuyetDuLieu.schema.json"),
    ),
    (
        "BienDong.schema.json",
        include_str!("../../../schemas/cbccvc/BienDong.schema.json"),
    ),
    (
        "codes/ngach.csv",
        include_str!("../../../schemas/cbccvc/codes/ngach.csv"),
    ),
    (
        "codes/he_so_luong.csv",
        include_str!("../../../schemas/cbccvc/codes/he_so_luong.csv"),
    ),
    (
        "codes/dan_toc.csv",
        include_str!("../../../schemas/cbccvc/codes/dan_toc.csv"),
    ),
    (
        "codes/ton_giao.csv",
        include_str!("../../../schemas/cbccvc/codes/ton_giao.csv"),
    ),
    (
        "codes/loai_can_bo.csv",
        include_str!("../../../schemas/cbccvc/codes/loai_can_bo.csv"),
    ),
    (
        "codes/trinh_do.csv",
        include_str!("../../../schemas/cbccvc/codes/trinh_do.csv"),
    ),
    (
        "codes/tinh_khai_sinh.csv",
        include_str!("../../../schemas/cbccvc/codes/tinh_khai_sinh.csv"),
    ),
    (
        "codes/quoc_gia.csv",
        include_str!("../../../schemas/cbccvc/codes/quoc_gia.csv"),
    ),
];

/// The two packet formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Xml,
    Json,
}

impl Format {
    /// From a `Content-Type` (`application/xml`, `text/xml`, `application/*+xml`, `application/json`, `…+json`).
    pub fn from_content_type(ct: &str) -> Option<Format> {
        let mime = ct
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match mime.as_str() {
            "application/xml" | "text/xml" => Some(Format::Xml),
            "application/json" => Some(Format::Json),
            m if m.starts_with("application/") && m.ends_with("+xml") => Some(Format::Xml),
            m if m.starts_with("application/") && m.ends_with("+json") => Some(Format::Json),
            _ => None,
        }
    }

    /// From a file name's extension.
    pub fn from_path(p: &Path) -> Option<Format> {
        match p.extension()?.to_str()? {
            "xml" => Some(Format::Xml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// A schema set that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Xsd(#[from] xsd::LoadError),
    #[error(transparent)]
    Codes(#[from] CodesError),
    #[error("{file}: {message}")]
    Json { file: String, message: String },
}

struct MessageSchemas {
    xsd: xsd::Schema,
    /// Per XSD element declaration: the domain field (index in `domain::FIELDS`) its values are kept as.
    keep: Vec<Option<usize>>,
    json: json::Compiled,
}

/// Every message type's compiled XSD and JSON Schema, loaded once.
pub struct Catalog {
    types: BTreeMap<&'static str, MessageSchemas>,
    /// The code lists the domain rules check against.
    pub codes: CodeLists,
}

/// How to validate.
#[derive(Debug, Clone)]
pub struct Options {
    pub limits: Limits,
    /// Run the domain rules (off for `--schema-only`).
    pub domain: bool,
    /// "Today" for the not-in-the-future rule; `None` = today in Vietnam.
    pub today: Option<Day>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            limits: Limits::default(),
            domain: true,
            today: None,
        }
    }
}

/// The verdict on one packet.
#[derive(Debug, Default)]
pub struct Report {
    pub violations: Vec<Violation>,
    /// Not well-formed or hostile (DOCTYPE, limits, encoding): a 400, not a 422.
    pub malformed: bool,
    /// Validation stopped at `max_errors`.
    pub truncated: bool,
    /// The packet's own `MaDonVi` values (children of the root), for the jurisdiction check.
    pub units: Vec<Field>,
    /// Whose data the packet is: a profile's own `SoCCCD` (a child of the root), which approvals name.
    pub subject: Option<String>,
}

impl Report {
    pub fn is_valid(&self) -> bool {
        self.violations.is_empty()
    }
}

impl Catalog {
    /// The catalog of the schemas compiled into the binary.
    pub fn embedded() -> Result<Catalog, CatalogError> {
        Catalog::load_from(&xsd::EmbeddedFiles(EMBEDDED))
    }

    /// The catalog of a schema directory holding `{type}.xsd` and `{type}.schema.json` for every message type.
    pub fn load(dir: &Path) -> Result<Catalog, CatalogError> {
        Catalog::load_from(&xsd::DirFiles(dir.to_owned()))
    }

    fn load_from(files: &dyn xsd::SchemaFiles) -> Result<Catalog, CatalogError> {
        let mut types = BTreeMap::new();
        for t in MESSAGE_TYPES {
            let xsd_name = PathBuf::from(format!("{t}.xsd"));
            let xsd = xsd::Schema::load_from(files, &xsd_name)?;
            if !xsd.globals.contains_key(*t) {
                return Err(CatalogError::Json {
                    file: files.display(&xsd_name),
                    message: format!("declares no global element {t}"),
                });
            }
            let json_name = PathBuf::from(format!("{t}.schema.json"));
            let file = files.display(&json_name);
            let text = files
                .read(&json_name)
                .map_err(|message| CatalogError::Json {
                    file: file.clone(),
                    message,
                })?;
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| CatalogError::Json {
                    file: file.clone(),
                    message: format!("not JSON: {e}"),
                })?;
            let json = json::Compiled::new(&value).map_err(|e| CatalogError::Json {
                file: file.clone(),
                message: format!("not a usable JSON Schema 2020-12: {e}"),
            })?;
            let keep = xsd
                .elements
                .iter()
                .map(|e| domain::field_index(&e.name))
                .collect();
            types.insert(*t, MessageSchemas { xsd, keep, json });
        }
        let codes = CodeLists::load_from(files)?;
        Ok(Catalog { types, codes })
    }

    pub fn message_types(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.types.keys().copied()
    }

    pub fn knows(&self, message_type: &str) -> bool {
        self.types.contains_key(message_type)
    }

    /// The message type a packet declares: its root element, or its JSON object's single key.
    pub fn detect(&self, format: Format, bytes: &[u8]) -> Option<&'static str> {
        let name = match format {
            Format::Xml => {
                let text =
                    std::str::from_utf8(bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes))
                        .ok()?;
                let mut reader = quick_xml::Reader::from_str(text);
                loop {
                    match reader.read_event().ok()? {
                        quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e) => {
                            break e.local_name().as_ref().to_owned();
                        }
                        quick_xml::events::Event::Eof | quick_xml::events::Event::DocType(_) => {
                            return None;
                        }
                        _ => {}
                    }
                }
            }
            Format::Json => json::root_name(bytes)?,
        };
        self.types.keys().copied().find(|t| *t == name)
    }

    /// Validates one packet of `message_type` in `format`.
    pub fn validate(
        &self,
        message_type: &str,
        format: Format,
        bytes: &[u8],
        opts: &Options,
    ) -> Report {
        let Some(s) = self.types.get(message_type) else {
            return Report {
                violations: vec![Violation {
                    path: "/".into(),
                    line: None,
                    column: None,
                    rule: "packet.unknown_type",
                    message: format!(
                        "unknown message type {message_type}; use one of {}",
                        MESSAGE_TYPES.join(", ")
                    ),
                }],
                ..Report::default()
            };
        };
        let rules = opts.domain.then(|| domain::Rules {
            today: opts.today.unwrap_or_else(Day::today),
            lists: &self.codes,
        });
        let (mut violations, malformed, truncated, fields, found) = match format {
            Format::Xml => {
                let extras = xsd::Extras {
                    keep: &s.keep,
                    rules,
                    root_fields: &["MaDonVi", "SoCCCD"],
                };
                let out = xsd::validate(&s.xsd, bytes, &opts.limits, extras);
                let wrong_root = out.root.as_deref().is_some_and(|r| r != message_type);
                let mut v = out.violations;
                if wrong_root && !out.fatal {
                    v.insert(
                        0,
                        Violation {
                            path: format!("/{}", out.root.unwrap_or_default()),
                            line: Some(1),
                            column: None,
                            rule: "xsd.unknown_root",
                            message: format!("this route takes {message_type} packets"),
                        },
                    );
                }
                (v, out.fatal, out.truncated, out.fields, out.domain)
            }
            Format::Json => {
                let out = json::validate(&s.json, bytes, &opts.limits, rules.as_ref());
                (
                    out.violations,
                    out.malformed,
                    out.truncated,
                    out.root_fields,
                    out.domain,
                )
            }
        };
        if !malformed && opts.domain && !truncated {
            let room = opts.limits.max_errors.saturating_sub(violations.len());
            violations.extend(found.into_iter().take(room));
        }
        let own = |f: &Field| f.parent.strip_prefix('/') == Some(message_type);
        let subject = fields
            .iter()
            .find(|f| f.name == "SoCCCD" && own(f))
            .map(|f| f.value.clone());
        let units = fields
            .into_iter()
            .filter(|f| f.name == "MaDonVi" && own(f))
            .collect();
        Report {
            violations,
            malformed,
            truncated,
            units,
            subject,
        }
    }
}
