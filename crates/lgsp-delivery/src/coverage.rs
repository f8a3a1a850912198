//! Whether an approval approves what was sent: each `HoSo` entry of a verified `PheDuyetDuLieu` (SoCCCD and the
//! SHA-256 of the profile packet approved) against the profile packets (HoSoCBCCVC) this hop journalled for the
//! sending agency up to the close of the approval window. An entry whose profile never reached the hop is
//! `approval.unknown_profile`; one that names a version the hop does not hold, or not the last one sent, is
//! `approval.changed_profile`. Both are 422 `packet.invalid`, each at its entry.

use lgsp_journal::{Journal, JournalError, ProfileSent};
use lgsp_problem::Violation;
use lgsp_sign::Approval;

/// The rule codes of this check (exported at 0 with the others).
pub const RULES: &[&str] = &["approval.unknown_profile", "approval.changed_profile"];

fn shown(us: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(us / 1_000_000)
        .map(lgsp_sign::approval::show)
        .unwrap_or_default()
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// The problems of `approval`'s entries against the profiles the journal holds; empty when every entry names the
/// last profile the agency sent for its SoCCCD before `until_us`.
pub async fn check(
    journal: &Journal,
    hop: &str,
    agency: &str,
    approval: &Approval,
    until_us: i64,
) -> Result<Vec<Violation>, JournalError> {
    let mut subjects: Vec<String> = approval.profiles.iter().map(|p| p.cccd.clone()).collect();
    subjects.sort();
    subjects.dedup();
    let sent = journal.profiles(hop, agency, &subjects, until_us).await?;
    let mut problems = Vec::new();
    for entry in &approval.profiles {
        let versions: Vec<&ProfileSent> = sent.iter().filter(|p| p.subject == entry.cccd).collect();
        let violation = |rule: &'static str, message: String| Violation {
            path: entry.path.clone(),
            line: None,
            column: None,
            rule,
            message,
        };
        let Some(last) = versions.last() else {
            problems.push(violation(
                "approval.unknown_profile",
                format!(
                    "no profile of SoCCCD {} from agency {agency} reached this hop; send the profile (HoSoCBCCVC) before approving it",
                    entry.cccd
                ),
            ));
            continue;
        };
        if last.sha256 == entry.sha256 {
            continue;
        }
        let message = match versions.iter().find(|v| v.sha256 == entry.sha256) {
            Some(approved) => format!(
                "the approved profile of SoCCCD {} (message {}, {}) was replaced by message {} of {} (SHA-256 {}…); approve the last profile sent",
                entry.cccd,
                approved.message_id,
                shown(approved.accepted_us),
                last.message_id,
                shown(last.accepted_us),
                short(&last.sha256)
            ),
            None => format!(
                "BamSHA256 {}… is no profile of SoCCCD {} this hop holds; the last one sent is message {} of {} (SHA-256 {}…): approve the profile as it was sent",
                short(&entry.sha256),
                entry.cccd,
                last.message_id,
                shown(last.accepted_us),
                short(&last.sha256)
            ),
        };
        problems.push(violation("approval.changed_profile", message));
    }
    Ok(problems)
}
