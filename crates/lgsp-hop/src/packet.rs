//! Why a packet is refused: the one error of the packet check, shared by the layers that check a packet (the
//! validation layer, and the journal layer for an approval's coverage) so each refusal reads the same.

use std::sync::Arc;

use http::StatusCode;
use lgsp_problem::{Problem, Violation};

/// Why a packet was refused (a body too large or unreadable is a [`BodyError`](crate::body::BodyError)).
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("Content-Type {got:?} is neither XML nor JSON")]
    UnsupportedMediaType { got: Option<String> },
    #[error("charset {got} is not UTF-8")]
    UnsupportedCharset { got: String },
    #[error("Content-Encoding {got} is not identity")]
    UnsupportedEncoding { got: String },
    #[error("{count} Content-Type headers")]
    AmbiguousContentType { count: usize },
    #[error("packet not well-formed ({} errors)", violations.len())]
    Malformed { violations: Vec<Violation> },
    #[error("packet invalid ({} errors)", violations.len())]
    Invalid {
        violations: Vec<Violation>,
        truncated: bool,
    },
    #[error("no message type {got:?} to validate")]
    UnknownMessageType {
        got: String,
        known: &'static [&'static str],
    },
    #[error("agency {agency} may not send packets for unit {unit}")]
    OutsideJurisdiction {
        agency: Arc<str>,
        unit: String,
        patterns: String,
        violation: Box<Violation>,
    },
}

impl Problem for PacketError {
    fn status(&self) -> StatusCode {
        match self {
            PacketError::UnsupportedMediaType { .. }
            | PacketError::UnsupportedCharset { .. }
            | PacketError::UnsupportedEncoding { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            PacketError::Malformed { .. } | PacketError::AmbiguousContentType { .. } => {
                StatusCode::BAD_REQUEST
            }
            PacketError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            PacketError::OutsideJurisdiction { .. } => StatusCode::FORBIDDEN,
            PacketError::UnknownMessageType { .. } => StatusCode::NOT_FOUND,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            PacketError::UnsupportedMediaType { .. } => "packet.unsupported_media_type",
            PacketError::UnsupportedCharset { .. } => "packet.unsupported_charset",
            PacketError::UnsupportedEncoding { .. } => "packet.unsupported_encoding",
            PacketError::AmbiguousContentType { .. } => "packet.ambiguous_content_type",
            PacketError::Malformed { .. } => "packet.malformed",
            PacketError::Invalid { .. } => "packet.invalid",
            PacketError::OutsideJurisdiction { .. } => "authz.unit_outside_jurisdiction",
            PacketError::UnknownMessageType { .. } => "validate.unknown_message_type",
        }
    }

    fn detail(&self) -> String {
        match self {
            PacketError::UnsupportedMediaType { got } => format!(
                "Content-Type {} is not a packet format; send application/xml or application/json.",
                got.as_deref().unwrap_or("(none)")
            ),
            PacketError::UnsupportedCharset { got } => format!(
                "The packet is declared as charset={got}; packets are read as UTF-8 only: convert it to UTF-8 and send charset=utf-8 (or no charset)."
            ),
            PacketError::UnsupportedEncoding { got } => format!(
                "The packet is sent with Content-Encoding {got}; send it unencoded (the gateway validates and forwards the packet as it is)."
            ),
            PacketError::AmbiguousContentType { count } => {
                format!("The request carries {count} Content-Type headers; send exactly one.")
            }
            PacketError::Malformed { violations } => format!(
                "The packet is not well-formed ({}); fix it and send it again. `errors` says where.",
                violations.last().map_or("", |v| v.rule)
            ),
            PacketError::Invalid {
                violations,
                truncated,
            } => format!(
                "The packet breaks {}{} rule(s) of its schema or the domain rules; `errors` lists each with its path and line.",
                violations.len(),
                if *truncated { "+" } else { "" }
            ),
            PacketError::UnknownMessageType { got, known } => format!(
                "`{got}` is not a message type; validate at {{this prefix}}/{{type}} with one of {}.",
                known.join(", ")
            ),
            PacketError::OutsideJurisdiction {
                agency,
                unit,
                patterns,
                ..
            } => format!(
                "Agency {agency} may send packets only for units matching {patterns}; MaDonVi {unit} lies outside. Send it through the agency that manages {unit}, or ask the LGSP operator to extend `units`."
            ),
        }
    }

    fn errors(&self) -> &[Violation] {
        match self {
            PacketError::Malformed { violations } | PacketError::Invalid { violations, .. } => {
                violations
            }
            PacketError::OutsideJurisdiction { violation, .. } => {
                std::slice::from_ref(&**violation)
            }
            _ => &[],
        }
    }
}
