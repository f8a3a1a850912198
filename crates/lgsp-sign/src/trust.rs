//! The signing CAs (`[signing] ca`, `crls`): whether a signer's certificate chain leads to one of them, was valid
//! when it signed, is not revoked, and may sign (key usage). Separate from the mTLS CAs: a certificate that may
//! open a connection is not thereby one that may approve data.

use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use webpki::{
    CertRevocationList, EndEntityCert, ExpirationPolicy, KeyPurposeIdIter, OwnedCertRevocationList,
    RevocationCheckDepth, RevocationOptionsBuilder, UnknownStatusPolicy,
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Why a signer's certificate is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// Not a certificate the gateway can read.
    #[error("the certificate cannot be read: {0}")]
    Unreadable(String),
    /// No chain to a signing CA (unknown issuer, bad chain signature, a CA constraint broken).
    #[error("{0}")]
    Untrusted(String),
    /// Listed in a CRL of its issuer.
    #[error("the certificate is revoked by its CA")]
    Revoked,
    /// Not valid at the signing time.
    #[error("the certificate was not valid at the signing time ({0})")]
    Expired(String),
    /// Its key usage allows neither digitalSignature nor nonRepudiation.
    #[error("the certificate's key usage allows neither digitalSignature nor nonRepudiation")]
    KeyUsage,
}

/// What the gateway knows of a verified signer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    /// The subject DN, as RFC 4514 text.
    pub subject: String,
    /// The subject's common name, when it has one.
    pub common_name: Option<String>,
    /// The SAN URIs of the certificate (an agency's identity is one of them).
    pub uris: Vec<String>,
    /// The serial number, hex.
    pub serial: String,
    /// SHA-256 of the certificate (DER), hex: what the journal keeps to name it.
    pub fingerprint: String,
}

/// The signing CAs and their CRLs, loaded once.
pub struct TrustStore {
    anchors: Vec<TrustAnchor<'static>>,
    crls: Vec<OwnedCertRevocationList>,
}

impl std::fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustStore")
            .field("anchors", &self.anchors.len())
            .field("crls", &self.crls.len())
            .finish()
    }
}

/// Extended key usage is not what decides here: signing certificates carry none, or e-mail protection, or
/// document signing; the key usage bits do (checked after the path is built).
struct AnyPurpose;

impl webpki::ExtendedKeyUsageValidator for AnyPurpose {
    fn validate(&self, _iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        Ok(())
    }
}

impl TrustStore {
    /// From the signing CA certificates and CRLs (DER). A CA or CRL that cannot be read is an error naming its
    /// position.
    pub fn new(cas: &[CertificateDer<'_>], crls: &[Vec<u8>]) -> Result<TrustStore, String> {
        let anchors = cas
            .iter()
            .enumerate()
            .map(|(i, c)| {
                webpki::anchor_from_trusted_cert(c)
                    .map(|a| a.to_owned())
                    .map_err(|e| format!("CA certificate {}: {e}", i + 1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if anchors.is_empty() {
            return Err("no CA certificate".into());
        }
        let crls = crls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                OwnedCertRevocationList::from_der(c).map_err(|e| format!("CRL {}: {e}", i + 1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustStore { anchors, crls })
    }

    /// Checks a signer's chain (the signer first, then the intermediates it sent) at the signing time.
    pub fn check(&self, chain: &[Vec<u8>], at: time::OffsetDateTime) -> Result<Signer, TrustError> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(TrustError::Unreadable("no certificate".into()));
        };
        let leaf_der = CertificateDer::from(leaf.as_slice());
        let ee = EndEntityCert::try_from(&leaf_der)
            .map_err(|e| TrustError::Unreadable(e.to_string()))?;
        let intermediates: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        let seconds = u64::try_from(at.unix_timestamp()).unwrap_or(0);
        let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(seconds));
        let crls: Vec<CertRevocationList<'_>> = self
            .crls
            .iter()
            .map(|c| CertRevocationList::from(c.clone()))
            .collect();
        let crl_refs: Vec<&CertRevocationList<'_>> = crls.iter().collect();
        let revocation = RevocationOptionsBuilder::new(&crl_refs).ok().map(|b| {
            b.with_depth(RevocationCheckDepth::Chain)
                .with_status_policy(UnknownStatusPolicy::Allow)
                .with_expiration_policy(ExpirationPolicy::Ignore)
                .build()
        });
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &self.anchors,
            &intermediates,
            time,
            AnyPurpose,
            revocation,
            None,
        )
        .map_err(|e| match e {
            webpki::Error::CertRevoked => TrustError::Revoked,
            webpki::Error::CertExpired { .. } => TrustError::Expired("it had expired".into()),
            webpki::Error::CertNotValidYet { .. } => {
                TrustError::Expired("it was not yet valid".into())
            }
            webpki::Error::UnknownIssuer => TrustError::Untrusted(
                "its chain leads to none of the signing CAs ([signing] ca)".into(),
            ),
            other => TrustError::Untrusted(format!("its chain does not verify: {other}")),
        })?;
        describe(leaf)
    }
}

/// Reads what the gateway reports of a certificate, and refuses one that may not sign.
fn describe(der: &[u8]) -> Result<Signer, TrustError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| TrustError::Unreadable(e.to_string()))?;
    // No key usage extension means any usage (RFC 5280 §4.2.1.3); a malformed one is refused.
    match cert.key_usage() {
        Err(e) => return Err(TrustError::Unreadable(format!("its key usage: {e}"))),
        Ok(Some(ku)) if !ku.value.digital_signature() && !ku.value.non_repudiation() => {
            return Err(TrustError::KeyUsage);
        }
        Ok(_) => {}
    }
    let uris = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some((*u).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    Ok(Signer {
        subject: cert.subject().to_string(),
        common_name,
        uris,
        serial: cert.raw_serial_as_string().replace(':', ""),
        fingerprint: fingerprint(der),
    })
}

/// SHA-256 of a certificate (DER), hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der))
}
