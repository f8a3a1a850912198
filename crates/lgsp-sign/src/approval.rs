//! The approval policy (Thông tư 06/2023/TT-BNV): a `PheDuyetDuLieu` packet carries two signatures — the
//! approving person's and the agency's — each of which must verify, chain to a signing CA, have been valid and
//! unrevoked when it signed, and be allowed to sign; the agency's must be the sending agency's own; and the
//! approval must fall within its window: the last days of the month it approves (Vietnam time), arriving no
//! later than the operator allows.

use lgsp_problem::Violation;
use time::{Duration, OffsetDateTime, UtcOffset};

use crate::jws;
use crate::trust::{Signer, TrustError, TrustStore};
use crate::xml::{self, Check, Found};

/// The namespace of the CBCCVC packets.
pub const CBCCVC_NS: &str = "urn:lgsp:cbccvc:v1";

/// Vietnam's time zone (UTC+7, no daylight saving): months begin and end in it.
pub const VIETNAM: UtcOffset = match UtcOffset::from_hms(7, 0, 0) {
    Ok(o) => o,
    Err(_) => UtcOffset::UTC,
};

/// An approval may claim a signing time at most this far ahead of the gateway's clock.
const CLOCK_SKEW: Duration = Duration::minutes(5);

/// When approvals of a month are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// The approval is made within the last `days` days of the month it approves.
    pub days: u32,
    /// How long after the month ends an approval may still arrive.
    pub lateness: Duration,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            days: 5,
            lateness: Duration::ZERO,
        }
    }
}

/// How approvals are checked.
#[derive(Debug)]
pub struct Policy {
    pub trust: TrustStore,
    /// An agency's signing certificate names it by a SAN URI `<prefix><agency code>`.
    pub identity_prefix: String,
    pub window: Window,
}

/// A verified approval: what the journal keeps of it.
#[derive(Debug, Clone)]
pub struct Approval {
    /// KyPheDuyet, `YYYY-MM`.
    pub month: String,
    pub approved_at: OffsetDateTime,
    pub person: Signer,
    pub agency: Signer,
    /// The profiles it approves, in the packet's order.
    pub profiles: Vec<ApprovedProfile>,
}

/// One `HoSo` entry of an approval: whose profile, which record, and the SHA-256 of the profile packet approved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovedProfile {
    /// SoCCCD: the 12-digit citizen id.
    pub cccd: String,
    /// MaBanGhi: the agency's record id.
    pub record: String,
    /// BamSHA256, lower-case hex.
    pub sha256: String,
    /// Where the entry's BamSHA256 is (`/PheDuyetDuLieu/HoSo[2]/BamSHA256`).
    pub path: String,
}

impl ApprovedProfile {
    /// The `index`-th (0-based) entry of the approval at `root`, its fields read by `field`.
    fn read(root: &str, index: usize, field: impl Fn(&str) -> String) -> ApprovedProfile {
        ApprovedProfile {
            cccd: field("SoCCCD"),
            record: field("MaBanGhi"),
            sha256: field("BamSHA256"),
            path: format!("{root}/HoSo[{}]/BamSHA256", index + 1),
        }
    }
}

impl Approval {
    /// What the journal keeps of it: month, time, both signers (subject, serial, SHA-256 of the certificate), and
    /// the approved profiles.
    pub fn to_json(&self) -> serde_json::Value {
        let signer = |s: &Signer| serde_json::json!({"subject": s.subject, "uris": s.uris, "serial": s.serial, "sha256": s.fingerprint});
        let profiles: Vec<serde_json::Value> = self
            .profiles
            .iter()
            .map(|p| serde_json::json!({"SoCCCD": p.cccd, "MaBanGhi": p.record, "BamSHA256": p.sha256}))
            .collect();
        serde_json::json!({
            "month": self.month,
            "approved_at": self.approved_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            "person": signer(&self.person),
            "agency": signer(&self.agency),
            "profiles": profiles,
        })
    }
}

/// The two roles a signature plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Person,
    Agency,
}

/// The first instant of the month after `month` (`YYYY-MM`), Vietnam time.
pub fn month_end(month: &str) -> Option<OffsetDateTime> {
    let (y, m) = month.split_once('-')?;
    let (y, m): (i32, u8) = (y.parse().ok()?, m.parse().ok()?);
    let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let date = time::Date::from_calendar_date(y, time::Month::try_from(m).ok()?, 1).ok()?;
    Some(date.midnight().assume_offset(VIETNAM))
}

/// An `xs:dateTime`; one without a zone is Vietnam time.
pub fn parse_time(text: &str) -> Option<OffsetDateTime> {
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    OffsetDateTime::parse(text, rfc3339)
        .ok()
        .or_else(|| OffsetDateTime::parse(&format!("{text}+07:00"), rfc3339).ok())
}

/// A time as operators read it: Vietnam time to the minute.
pub fn show(t: OffsetDateTime) -> String {
    let t = t.to_offset(VIETNAM);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} (UTC+7)",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

fn violation(path: String, rule: &'static str, message: String) -> Violation {
    Violation {
        path,
        line: None,
        column: None,
        rule,
        message,
    }
}

impl Policy {
    /// Checks an XML approval sent by `agency` (`None` offline, when the sender is not known: the agency signature
    /// is then not compared with it); `received` is when it arrived (`None` offline: the arrival deadline is then
    /// not checked).
    pub fn verify_xml(
        &self,
        bytes: &[u8],
        agency: Option<&str>,
        received: Option<OffsetDateTime>,
    ) -> Result<Approval, Vec<Violation>> {
        let root = "/PheDuyetDuLieu";
        let unreadable = |why: String| {
            vec![violation(
                root.into(),
                "signature.unsupported",
                format!("the packet cannot be read for its signatures: {why}"),
            )]
        };
        let text = std::str::from_utf8(bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes))
            .map_err(|e| unreadable(e.to_string()))?;
        let doc = xml::parse(text).map_err(|e| unreadable(e.0))?;
        let month = xml::root_field(&doc, CBCCVC_NS, "KyPheDuyet").unwrap_or_default();
        let approved_at = xml::root_field(&doc, CBCCVC_NS, "ThoiDiemPheDuyet").unwrap_or_default();
        let found = xml::verify(&doc);
        let mut approval = self.judge(
            root,
            "Signature",
            found,
            &month,
            &approved_at,
            agency,
            received,
        )?;
        let hoso = doc
            .document_element()
            .map(|r| xml::children(&doc, r, CBCCVC_NS, "HoSo"))
            .unwrap_or_default();
        approval.profiles = hoso
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                ApprovedProfile::read(root, i, |name| {
                    xml::child_text(&doc, h, CBCCVC_NS, name).unwrap_or_default()
                })
            })
            .collect();
        Ok(approval)
    }

    /// Checks a JSON approval (JWS in `ChuKySo`) sent by `agency`, as [`Policy::verify_xml`] does.
    pub fn verify_json(
        &self,
        bytes: &[u8],
        agency: Option<&str>,
        received: Option<OffsetDateTime>,
    ) -> Result<Approval, Vec<Violation>> {
        let root = "/PheDuyetDuLieu";
        let packet: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
            vec![violation(
                root.into(),
                "signature.unsupported",
                format!("the packet cannot be read for its signatures: {e}"),
            )]
        })?;
        let empty = serde_json::Map::new();
        let object = jws::approval_object(&packet).unwrap_or(&empty);
        let field = |name: &str| {
            object
                .get(name)
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let found = jws::verify(object);
        let mut approval = self.judge(
            root,
            jws::FIELD,
            found,
            &field("KyPheDuyet"),
            &field("ThoiDiemPheDuyet"),
            agency,
            received,
        )?;
        let hoso = object
            .get("HoSo")
            .and_then(serde_json::Value::as_array)
            .cloned()
            .unwrap_or_default();
        approval.profiles = hoso
            .iter()
            .enumerate()
            .map(|(i, h)| {
                ApprovedProfile::read(root, i, |name| {
                    h.get(name)
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                })
            })
            .collect();
        Ok(approval)
    }

    /// The verdict on the signatures found, whatever the packet's format.
    #[allow(clippy::too_many_arguments)]
    pub fn judge(
        &self,
        root: &str,
        element: &str,
        found: Vec<Found>,
        month: &str,
        approved_at: &str,
        agency: Option<&str>,
        received: Option<OffsetDateTime>,
    ) -> Result<Approval, Vec<Violation>> {
        let mut problems = Vec::new();
        let at_path = |i: usize| format!("{root}/{element}[{i}]");
        let (Some(signed_at), Some(end)) = (parse_time(approved_at), month_end(month)) else {
            return Err(vec![violation(
                format!("{root}/ThoiDiemPheDuyet"),
                "signature.outside_window",
                format!(
                    "ThoiDiemPheDuyet `{approved_at}` or KyPheDuyet `{month}` cannot be read as a time and a month"
                ),
            )]);
        };
        let mut person: Option<(usize, Signer)> = None;
        let mut agency_signer: Option<(usize, Signer)> = None;
        for f in found {
            let path = at_path(f.index);
            let chain = match f.check {
                Check::Verified { chain } => chain,
                Check::DigestMismatch(why) => {
                    problems.push(violation(path, "signature.digest_mismatch", format!(
                        "the packet was changed after this signature was made ({why}); sign the packet as it is sent, and send it unchanged"
                    )));
                    continue;
                }
                Check::Invalid(why) => {
                    problems.push(violation(path, "signature.invalid", format!(
                        "the signature value does not verify with the certificate in KeyInfo ({why}); sign with the key of that certificate"
                    )));
                    continue;
                }
                Check::Unsupported(why) => {
                    problems.push(violation(path, "signature.unsupported", format!(
                        "the signature is outside the profile: {why}; sign with `lgsp-gateway sign`"
                    )));
                    continue;
                }
            };
            let signer = match self.trust.check(&chain, signed_at) {
                Ok(s) => s,
                Err(e) => {
                    let (rule, fix) = match &e {
                        TrustError::Revoked => (
                            "signature.revoked",
                            "sign again with a certificate that is not revoked",
                        ),
                        TrustError::Expired(_) => (
                            "signature.expired",
                            "sign with a certificate valid at ThoiDiemPheDuyet",
                        ),
                        TrustError::KeyUsage => (
                            "signature.key_usage",
                            "sign with a signing certificate (digitalSignature or nonRepudiation), not a TLS one",
                        ),
                        TrustError::Unreadable(_) | TrustError::Untrusted(_) => (
                            "signature.untrusted",
                            "sign with a certificate issued by the ministry's signing CA, and put its intermediates in KeyInfo",
                        ),
                    };
                    problems.push(violation(path, rule, format!("{e}; {fix}")));
                    continue;
                }
            };
            let role = if signer
                .uris
                .iter()
                .any(|u| u.starts_with(&self.identity_prefix))
            {
                Role::Agency
            } else {
                Role::Person
            };
            let slot = match role {
                Role::Person => &mut person,
                Role::Agency => &mut agency_signer,
            };
            if let Some((first, _)) = slot {
                problems.push(violation(path, "signature.duplicate", format!(
                    "a second {} signature (the first is {element}[{first}]); an approval carries one signature of the approving person and one of the agency",
                    if role == Role::Agency { "agency" } else { "person's" }
                )));
                continue;
            }
            *slot = Some((f.index, signer));
        }
        if let (Some((i, signer)), Some(agency)) = (&agency_signer, agency) {
            let wanted = format!("{}{agency}", self.identity_prefix);
            if !signer.uris.contains(&wanted) {
                let named: Vec<&str> = signer
                    .uris
                    .iter()
                    .filter(|u| u.starts_with(&self.identity_prefix))
                    .map(String::as_str)
                    .collect();
                problems.push(violation(at_path(*i), "signature.wrong_agency", format!(
                    "the agency signature is by {}, but the packet is sent by agency {agency}; the agency signs its own approvals with its own signing certificate ({wanted})",
                    named.join(", ")
                )));
            }
        }
        let present = person.is_some() as usize + agency_signer.is_some() as usize;
        if problems.is_empty() && present < 2 {
            let missing = if person.is_none() {
                "the approving person's signature (a personal signing certificate)"
            } else {
                "the agency's signature (its signing certificate, SAN URI with the agency code)"
            };
            problems.push(violation(root.into(), "signature.missing", format!(
                "the approval lacks {missing}; each approval is signed by the approving person and by the agency (`lgsp-gateway sign` once with each key)"
            )));
        }
        let start = end - Duration::days(i64::from(self.window.days));
        if signed_at < start || signed_at >= end {
            problems.push(violation(format!("{root}/ThoiDiemPheDuyet"), "signature.outside_window", format!(
                "approved at {}, outside the approval window of {month}: {} to {} (the last {} days of the month); approve the month within its window",
                show(signed_at), show(start), show(end), self.window.days
            )));
        } else if let Some(now) = received {
            if signed_at > now + CLOCK_SKEW {
                problems.push(violation(format!("{root}/ThoiDiemPheDuyet"), "signature.outside_window", format!(
                    "approved at {}, which is still in the future; check the signing computer's clock",
                    show(signed_at)
                )));
            } else if now > end + self.window.lateness {
                problems.push(violation(format!("{root}/KyPheDuyet"), "signature.outside_window", format!(
                    "the approval of {month} arrives at {}, after its window closed at {} (and the {} minutes of lateness allowed); ask the LGSP operator about a late approval",
                    show(now), show(end), self.window.lateness.whole_minutes()
                )));
            }
        }
        match (problems.is_empty(), person, agency_signer) {
            (true, Some((_, person)), Some((_, agency))) => Ok(Approval {
                month: month.to_owned(),
                approved_at: signed_at,
                person,
                agency,
                profiles: Vec::new(),
            }),
            _ => Err(problems),
        }
    }
}
