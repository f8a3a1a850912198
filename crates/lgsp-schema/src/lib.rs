//! Packet validation for the CBCCVC message types: a streaming validator for a subset of XML Schema over
//! quick-xml events (no DOM), JSON Schema (draft 2020-12) through the `jsonschema` crate, and the domain rules the
//! schema languages cannot say (citizen-id structure, dates, salary coefficients).
#![forbid(unsafe_code)]

pub mod xsd;

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
        Limits { max_depth: 32, max_attributes: 32, max_text: 64 * 1024, max_errors: 50 }
    }
}

/// One thing wrong with a packet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// Where, as `/HoSoCBCCVC/QuaTrinhCongTac[2]/NgayBatDau` (attributes as `/@name`).
    pub path: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Stable rule code, e.g. `xsd.pattern`, `json.required`, `cccd.province`.
    pub rule: &'static str,
    pub message: String,
}

/// A simple value found in a packet, kept for the domain rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Path of the element holding it (fields with the same parent form one record).
    pub parent: String,
    pub name: String,
    pub value: String,
    pub path: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
}
