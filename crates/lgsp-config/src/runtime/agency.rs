//! `[[agency]]`: each connected body's code (mã định danh), status (trial | official), API-key hashes and the unit
//! codes (MaDonVi) it may send packets for.

use std::collections::{BTreeMap, HashSet};

use toml::Spanned;

use super::check::Checker;
use crate::file::{AgencyStatus, FileAgency, FileKey, KeyKind};
use crate::parse::valid_agency_code;

#[derive(Debug, Clone)]
pub struct AgencyConfig {
    pub code: String,
    pub name: Option<String>,
    pub status: AgencyStatus,
    pub keys: Vec<KeyConfig>,
    /// Unit-code patterns (MaDonVi) this agency may send for; `*` matches any run of characters.
    pub units: Vec<String>,
    /// Client certificates recognised as this agency besides a SAN URI with the prefix.
    pub certificates: Vec<CertificateMatch>,
    /// Its own bound on what it holds undelivered (else `[journal] agency_quota`).
    pub quota: Option<super::journal::Quota>,
}

/// How a client certificate is recognised as an agency's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CertificateMatch {
    /// The SHA-256 of its SubjectPublicKeyInfo (lower-case hex): this key, whatever the certificate.
    Spki(String),
    /// Its exact subject and issuer distinguished names, each as attribute=value pairs in a canonical order
    /// ([`dn_key`]): this holder from this CA, whatever the key (a renewed certificate keeps matching).
    Names { subject: String, issuer: String },
}

/// A distinguished name as a comparable key: its attribute=value pairs, types upper-cased, sorted, joined by `,`.
/// `CN=A, O=B, C=VN` and `C=VN,O=B,CN=A` (openssl's RFC 2253 order) are the same name. `None` when it holds no
/// `type=value` pair.
pub fn dn_key(dn: &str) -> Option<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut escaped = false;
    for ch in dn.chars() {
        match ch {
            '\\' if !escaped => escaped = true,
            ',' | '+' if !escaped => {
                parts.push(std::mem::take(&mut current));
            }
            c => {
                current.push(c);
                escaped = false;
            }
        }
    }
    parts.push(current);
    let mut pairs = Vec::new();
    for p in parts {
        let p = p.trim();
        if p.is_empty() {
            continue;
        }
        let (t, v) = p.split_once('=')?;
        let t = t.trim().to_ascii_uppercase();
        let t = match t.as_str() {
            "2.5.4.3" | "COMMONNAME" => "CN".to_owned(),
            "2.5.4.10" | "ORGANIZATIONNAME" => "O".to_owned(),
            "2.5.4.11" | "ORGANIZATIONALUNITNAME" => "OU".to_owned(),
            "2.5.4.6" | "COUNTRYNAME" => "C".to_owned(),
            "2.5.4.7" | "LOCALITYNAME" => "L".to_owned(),
            "2.5.4.8" | "STATEORPROVINCENAME" => "ST".to_owned(),
            "1.2.840.113549.1.9.1" | "EMAILADDRESS" => "EMAIL".to_owned(),
            "0.9.2342.19200300.100.1.1" | "USERID" => "UID".to_owned(),
            _ => t,
        };
        if t.is_empty() {
            return None;
        }
        pairs.push(format!("{t}={}", v.trim()));
    }
    if pairs.is_empty() {
        return None;
    }
    pairs.sort();
    Some(pairs.join(","))
}

#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub sha256: [u8; 32],
    pub kind: KeyKind,
    pub label: Option<String>,
    /// Unix seconds from which the key works, if set (a new key issued ahead of a rotation).
    pub not_before: Option<i64>,
    /// Unix seconds at which the key stops working, if set (an old key retired at the end of an overlap).
    pub not_after: Option<i64>,
}

/// An instant as the config writes it: RFC 3339, or a date (midnight in Vietnam, UTC+07:00); Unix seconds.
pub fn instant(text: &str) -> Option<i64> {
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    if let Ok(t) = time::OffsetDateTime::parse(text, rfc3339) {
        return Some(t.unix_timestamp());
    }
    let date = time::Date::parse(
        text,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .ok()?;
    Some(
        date.midnight()
            .assume_offset(time::macros::offset!(+7))
            .unix_timestamp(),
    )
}

/// Every agency: codes valid and unique, every key hash owned by one agency.
pub(super) fn agencies(c: &mut Checker<'_>, list: &[FileAgency]) -> Vec<AgencyConfig> {
    let mut codes = HashSet::new();
    let mut key_owner: BTreeMap<[u8; 32], &str> = BTreeMap::new();
    let mut cert_owner: std::collections::HashMap<CertificateMatch, &str> =
        std::collections::HashMap::new();
    let mut agencies = Vec::new();
    for (i, a) in list.iter().enumerate() {
        let field = format!("agency[{i}]");
        let code = a.code.get_ref();
        if !valid_agency_code(code) {
            c.problem(&a.code, format!("{field}.code"), format!(
                "`{code}` is not an agency code (mã định danh): dot-separated groups of 0-9 and A-Z, at most 35 characters, e.g. \"000.00.00.H29\""
            ));
        }
        if !codes.insert(code.as_str()) {
            c.problem(
                &a.code,
                format!("{field}.code"),
                "each agency code may appear once",
            );
        }
        let mut keys = Vec::new();
        for (k, key) in a.keys.iter().enumerate() {
            let kf = format!("{field}.keys[{k}].sha256");
            let Some(digest) = digest(c, key, &kf) else {
                continue;
            };
            if let Some(owner) = key_owner.insert(digest, code) {
                c.problem(&key.sha256, kf, format!("this key hash is already given to agency {owner}; every key belongs to one agency"));
            }
            let mut when = |v: &Option<Spanned<String>>, name: &str| {
                v.as_ref().and_then(|t| {
                    let at = instant(t.get_ref());
                    if at.is_none() {
                        c.problem(t, format!("{field}.keys[{k}].{name}"), format!(
                            "`{}` is not a time: write RFC 3339 (\"2026-12-31T17:00:00Z\") or a date (\"2027-01-01\", midnight in Vietnam)",
                            t.get_ref()
                        ));
                    }
                    at
                })
            };
            let (not_before, not_after) = (
                when(&key.not_before, "not_before"),
                when(&key.not_after, "not_after"),
            );
            if let (Some(b), Some(a), Some(v)) = (not_before, not_after, &key.not_after)
                && a <= b
            {
                c.problem(
                    v,
                    format!("{field}.keys[{k}].not_after"),
                    "must come after not_before",
                );
            }
            keys.push(KeyConfig {
                sha256: digest,
                kind: key.kind,
                label: key.label.clone(),
                not_before,
                not_after,
            });
        }
        let mut certificates = Vec::new();
        for (k, cert) in a.certificates.iter().enumerate() {
            let cf = format!("{field}.certificates[{k}]");
            let Some(m) = certificate(c, cert, &cf) else {
                continue;
            };
            if let Some(owner) = cert_owner.insert(m.clone(), code) {
                c.problem(cert, cf, format!(
                    "this certificate is already recognised as agency {owner}'s; a certificate identifies one agency"
                ));
            }
            certificates.push(m);
        }
        agencies.push(AgencyConfig {
            code: code.clone(),
            name: a.name.clone(),
            status: a.status,
            keys,
            units: units(c, a.units.as_deref(), code, &format!("{field}.units")),
            certificates,
            quota: a.quota.as_ref().map(|q| {
                super::journal::quota(
                    c,
                    Some(q),
                    &format!("{field}.quota"),
                    super::journal::Quota {
                        packets: super::defaults::JOURNAL_QUOTA_PACKETS,
                        bytes: super::defaults::JOURNAL_QUOTA_BYTES,
                    },
                )
            }),
        });
    }
    agencies
}

/// One `certificates` entry: a SPKI SHA-256, or a subject with its issuer.
fn certificate(
    c: &mut Checker<'_>,
    v: &Spanned<crate::file::FileCertificate>,
    field: &str,
) -> Option<CertificateMatch> {
    let f = v.get_ref();
    let fix = "write { spki_sha256 = \"<64 hex digits>\" } (openssl x509 -in cert.pem -noout -pubkey | openssl pkey -pubin -outform DER | sha256sum) or { subject = \"CN=…,O=…,C=VN\", issuer = \"CN=…,O=…,C=VN\" } (openssl x509 -in cert.pem -noout -subject -issuer -nameopt RFC2253,-esc_msb)";
    match (&f.spki_sha256, &f.subject, &f.issuer) {
        (Some(pin), None, None) => {
            let hex: String = pin
                .chars()
                .filter(|c| *c != ':')
                .collect::<String>()
                .to_ascii_lowercase();
            if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
                Some(CertificateMatch::Spki(hex))
            } else {
                c.problem(
                    v,
                    format!("{field}.spki_sha256"),
                    format!("`{pin}` is not a SHA-256; {fix}"),
                );
                None
            }
        }
        (None, Some(subject), Some(issuer)) => match (dn_key(subject), dn_key(issuer)) {
            (Some(subject), Some(issuer)) => Some(CertificateMatch::Names { subject, issuer }),
            _ => {
                c.problem(
                    v,
                    field,
                    format!("the subject or issuer is not a distinguished name; {fix}"),
                );
                None
            }
        },
        (None, Some(_), None) => {
            c.problem(v, field, format!(
                "a subject alone would match a look-alike from any CA the hop trusts: name its issuer too; {fix}"
            ));
            None
        }
        _ => {
            c.problem(v, field, format!("name the certificate one way; {fix}"));
            None
        }
    }
}

/// The key hash as 32 bytes; `None` (problem recorded) when it is not 64 hex digits.
fn digest(c: &mut Checker<'_>, key: &FileKey, field: &str) -> Option<[u8; 32]> {
    let mut digest = [0u8; 32];
    match hex_into(key.sha256.get_ref(), &mut digest) {
        Some(()) => Some(digest),
        None => {
            c.problem(
                &key.sha256,
                field,
                "write the SHA-256 of the key as 64 hex digits; `lgsp-gateway keys new` prints it",
            );
            None
        }
    }
}

fn hex_into(hex: &str, out: &mut [u8; 32]) -> Option<()> {
    if hex.len() != 64 {
        return None;
    }
    for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(())
}

/// The unit patterns; without a list, only the agency's own code.
fn units(
    c: &mut Checker<'_>,
    list: Option<&[Spanned<String>]>,
    code: &str,
    field: &str,
) -> Vec<String> {
    let Some(list) = list else {
        return vec![code.to_owned()];
    };
    for u in list {
        let p = u.get_ref();
        let plain = p.replace('*', "0");
        let segments: Vec<&str> = p.split('.').collect();
        let whole = segments.iter().all(|s| *s == "*" || !s.contains('*'));
        if p.is_empty() || !valid_agency_code(&plain) || !whole || segments.len() > 4 {
            c.problem(
                u,
                field,
                format!(
                    "`{p}` is not a unit-code pattern: a unit code such as \"000.00.15.H26\" (four levels), where `*` stands for one whole level and a leading `*` for every level above those written, e.g. \"*.H29\" or \"*.15.H26\""
                ),
            );
        }
    }
    list.iter().map(|u| u.get_ref().clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::problems_of;

    #[test]
    fn key_hashes_are_64_hex_digits() {
        let mut d = [0u8; 32];
        assert!(hex_into(&"ab".repeat(32), &mut d).is_some());
        assert_eq!(d[31], 0xab);
        assert!(hex_into(&"ab".repeat(31), &mut d).is_none());
        assert!(hex_into(&format!("{}zz", "ab".repeat(31)), &mut d).is_none());
        assert!(hex_into(&format!("{}é", "a".repeat(62)), &mut d).is_none());
    }

    #[test]
    fn codes_units_and_keys_are_checked_with_their_fields() {
        let p = problems_of("code = \"000.00.00.H29\"", "code = \"000.00.00.h29\"");
        assert_eq!(p[0].field, "agency[0].code");
        let p = problems_of("units = [\"*.H29\"]", "units = [\"*.h 29\"]");
        assert_eq!(p[0].field, "agency[0].units");
        let p = problems_of("units = [\"*.H29\"]", "units = [\"*H29\"]");
        assert!(p[0].message.contains("one whole level"), "{p:?}");
        let p = problems_of("units = [\"*.H29\"]", "units = [\"1.2.3.4.H29\"]");
        assert_eq!(p[0].field, "agency[0].units");
        let p = problems_of("sha256 = \"5a1c", "sha256 = \"xx5a1c");
        assert_eq!(p[0].field, "agency[0].keys[0].sha256");
        let p = problems_of("code = \"000.00.00.H26\"", "code = \"000.00.00.H29\"");
        assert!(p.iter().any(|p| p.message.contains("appear once")), "{p:?}");
    }

    #[test]
    fn a_distinguished_name_is_the_same_in_either_order_and_spacing() {
        let rfc2253 = super::dn_key("CN=Sở Nội vụ thành phố Hà Nội,O=UBND TP Hà Nội,C=VN");
        let display = super::dn_key("C=VN, O=UBND TP Hà Nội, CN=Sở Nội vụ thành phố Hà Nội");
        assert_eq!(rfc2253, display);
        assert_eq!(
            rfc2253.as_deref(),
            Some("C=VN,CN=Sở Nội vụ thành phố Hà Nội,O=UBND TP Hà Nội")
        );
        // An escaped comma is part of the value; another value is another name; a type is case-blind.
        assert_eq!(
            super::dn_key("CN=Sở Nội vụ\\, Hà Nội,C=VN").as_deref(),
            Some("C=VN,CN=Sở Nội vụ, Hà Nội")
        );
        assert_ne!(super::dn_key("CN=A,C=VN"), super::dn_key("CN=a,C=VN"));
        assert_eq!(super::dn_key("cn=A,c=VN"), super::dn_key("CN=A,C=VN"));
        assert_eq!(super::dn_key("not a name"), None);
    }
}
