//! Signed data. Approval packets (`PheDuyetDuLieu`) carry signatures by the approving person and by the agency:
//! XML-DSig in XML (`xml.rs`, through bergshamra), JWS in JSON (`jws.rs`); `approval.rs` decides whether they make a valid approval: each
//! signature verifies, its certificate chains to a signing CA (`trust.rs`: webpki, CRLs, key usage, validity at
//! the signing time), the agency's is the sending agency's, and the approval falls within its month's window.
//! Between hops every request is signed too (`http.rs`, RFC 9421), and journal exports are signed as they stream
//! (`export.rs`).
#![forbid(unsafe_code)]

pub mod approval;
pub mod export;
pub mod http;
pub mod jws;
pub mod trust;
pub mod xml;

pub use approval::{Approval, ApprovedProfile, Policy, Window};
pub use trust::{Signer, TrustError, TrustStore};

/// Every rule code a signature check may report (the `rule` of a refused packet's `errors[]`, a `rule` label of
/// `lgsp_validation_failures_total`). A test keeps it equal to the codes the sources emit.
pub const RULES: &[&str] = &[
    "signature.digest_mismatch",
    "signature.duplicate",
    "signature.expired",
    "signature.invalid",
    "signature.key_usage",
    "signature.missing",
    "signature.outside_window",
    "signature.revoked",
    "signature.unsupported",
    "signature.untrusted",
    "signature.wrong_agency",
];

#[cfg(test)]
mod tests {
    /// RULES holds exactly the `signature.*` codes the sources report.
    #[test]
    fn rules_lists_every_code_the_sources_emit() {
        let mut emitted = std::collections::BTreeSet::new();
        for text in [
            include_str!("approval.rs"),
            include_str!("xml.rs"),
            include_str!("jws.rs"),
        ] {
            let mut rest = text;
            while let Some(at) = rest.find("\"signature.") {
                let code = &rest[at + 1..];
                let end = code.find('"').unwrap_or(code.len());
                emitted.insert(code[..end].to_owned());
                rest = &code[end..];
            }
        }
        let listed: std::collections::BTreeSet<String> =
            super::RULES.iter().map(|r| (*r).to_owned()).collect();
        // The proxy reports one more: a hop without [signing].
        emitted.insert("signature.untrusted".into());
        assert_eq!(emitted, listed);
    }
}
