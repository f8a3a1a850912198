//! Certificate requests an agency sends to a real CA: a new key and a PKCS#10 request for a **signing** certificate
//! (digitalSignature and nonRepudiation, for the approvals of Thông tư 06/2023), naming the agency by its code both
//! in the subject and as the SAN URI the gateway recognises (`urn:lgsp:id:<code>`). The key never leaves the
//! agency; the CA answers with the certificate.

use rcgen::{
    CertificateParams, DistinguishedName, DnType, KeyPair, KeyUsagePurpose, SanType,
    SignatureAlgorithm,
};

/// The key of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    EcdsaP256,
    Rsa2048,
    Rsa3072,
}

impl KeyAlgorithm {
    fn rcgen(self) -> &'static SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

/// A new key and its request, both PEM.
pub struct SigningRequest {
    pub key_pem: String,
    pub csr_pem: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error(
        "`{0}` is not an agency code (mã định danh): dot-separated groups of 0-9 and A-Z, e.g. 000.00.00.H29"
    )]
    BadCode(String),
    #[error("the key could not be made: {0}")]
    Key(String),
    #[error("the request could not be made: {0}")]
    Request(String),
}

/// A key and a TLS-certificate request for a hop: its identity (`LGSP-HN`) as CN and SAN URI
/// `<identity_prefix><identity>` (what the next hop's `peers` lists), its DNS names and addresses as SANs (what its
/// clients connect to), serverAuth and clientAuth — one certificate for its listener and its upstream identity, or
/// request two.
pub fn hop_request(
    identity: &str,
    names: &[String],
    organisation: Option<&str>,
    algorithm: KeyAlgorithm,
    identity_prefix: &str,
) -> Result<SigningRequest, CsrError> {
    if !lgsp_config::valid_identity(identity) {
        return Err(CsrError::BadCode(identity.chars().take(40).collect()));
    }
    let key = new_key(algorithm)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, identity);
    if let Some(o) = organisation.filter(|o| !o.trim().is_empty()) {
        dn.push(DnType::OrganizationName, o.trim());
    }
    dn.push(DnType::CountryName, "VN");
    params.distinguished_name = dn;
    let request_error = |e: rcgen::Error| CsrError::Request(e.to_string());
    let mut sans = vec![SanType::URI(
        format!("{identity_prefix}{identity}")
            .try_into()
            .map_err(request_error)?,
    )];
    for n in names {
        sans.push(match n.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(n.as_str().try_into().map_err(request_error)?),
        });
    }
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if algorithm != KeyAlgorithm::EcdsaP256 {
        params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let csr = params.serialize_request(&key).map_err(request_error)?;
    Ok(SigningRequest {
        key_pem: key.serialize_pem(),
        csr_pem: csr.pem().map_err(request_error)?,
    })
}

fn new_key(algorithm: KeyAlgorithm) -> Result<KeyPair, CsrError> {
    match algorithm {
        KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(algorithm.rcgen()),
        KeyAlgorithm::Rsa2048 => {
            KeyPair::generate_rsa_for(algorithm.rcgen(), rcgen::RsaKeySize::_2048)
        }
        KeyAlgorithm::Rsa3072 => {
            KeyPair::generate_rsa_for(algorithm.rcgen(), rcgen::RsaKeySize::_3072)
        }
    }
    .map_err(|e| CsrError::Key(e.to_string()))
}

/// A key and a signing-certificate request for agency `code` (its organisation name `name`, when given).
pub fn signing_request(
    code: &str,
    name: Option<&str>,
    algorithm: KeyAlgorithm,
    identity_prefix: &str,
) -> Result<SigningRequest, CsrError> {
    if !lgsp_config::valid_agency_code(code) {
        return Err(CsrError::BadCode(code.chars().take(40).collect()));
    }
    let key = new_key(algorithm)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, code);
    if let Some(n) = name.filter(|n| !n.trim().is_empty()) {
        dn.push(DnType::OrganizationName, n.trim());
    }
    dn.push(DnType::CountryName, "VN");
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(
        format!("{identity_prefix}{code}")
            .try_into()
            .map_err(|e: rcgen::Error| CsrError::Request(e.to_string()))?,
    )];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::ContentCommitment,
    ];
    let csr = params
        .serialize_request(&key)
        .map_err(|e| CsrError::Request(e.to_string()))?;
    Ok(SigningRequest {
        key_pem: key.serialize_pem(),
        csr_pem: csr.pem().map_err(|e| CsrError::Request(e.to_string()))?,
    })
}

/// Writes the key (owner-only) and the request as `<stem>.key` and `<stem>.csr.pem` in `dir`, refusing to replace
/// an existing key.
pub fn write_request(
    dir: &std::path::Path,
    stem: &str,
    r: &SigningRequest,
) -> std::io::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let key = dir.join(format!("{stem}.key"));
    let csr = dir.join(format!("{stem}.csr.pem"));
    if key.exists() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!(
                "{} exists; a new request never replaces a key",
                key.display()
            ),
        ));
    }
    crate::load::write_private(&key, &r.key_pem)?;
    std::fs::write(&csr, &r.csr_pem)?;
    Ok((key, csr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::FromDer;

    #[test]
    fn a_request_names_the_agency_and_asks_for_signing_only() {
        let r = signing_request(
            "000.00.00.H29",
            Some("Sở Nội vụ"),
            KeyAlgorithm::EcdsaP256,
            "urn:lgsp:id:",
        )
        .unwrap();
        assert!(r.csr_pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert!(r.key_pem.contains("PRIVATE KEY"));
        let der = rustls_pki_types::CertificateSigningRequestDer::from(pem_body(&r.csr_pem));
        let (_, req) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
        let info = &req.certification_request_info;
        let subject = info.subject.to_string();
        assert!(subject.contains("CN=000.00.00.H29"), "{subject}");
        assert!(subject.contains("C=VN"), "{subject}");
        let mut uris = Vec::new();
        let mut signing = false;
        for ext in req.requested_extensions().into_iter().flatten() {
            match ext {
                x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) => {
                    for n in &san.general_names {
                        if let x509_parser::extensions::GeneralName::URI(u) = n {
                            uris.push(u.to_string());
                        }
                    }
                }
                x509_parser::extensions::ParsedExtension::KeyUsage(ku) => {
                    signing = ku.digital_signature()
                        && ku.non_repudiation()
                        && !ku.key_encipherment()
                        && !ku.key_cert_sign();
                }
                _ => {}
            }
        }
        assert_eq!(uris, ["urn:lgsp:id:000.00.00.H29"]);
        assert!(signing, "digitalSignature and nonRepudiation only");
        assert!(matches!(
            signing_request("h29", None, KeyAlgorithm::EcdsaP256, "urn:lgsp:id:"),
            Err(CsrError::BadCode(_))
        ));
    }

    fn pem_body(pem: &str) -> Vec<u8> {
        use base64::Engine;
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    }
}
