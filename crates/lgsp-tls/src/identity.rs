//! Who is on the other end: the identity read from the peer's leaf certificate.

use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::prelude::*;

/// Where the identity was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource {
    SanUri,
    CommonName,
    /// One of an agency's `certificates` (its public key, or its exact subject and issuer).
    Pinned,
}

/// The client certificates the config recognises as agencies besides a SAN URI: SPKI SHA-256 pins and exact
/// subject + issuer names (`[[agency]] certificates`).
#[derive(Debug, Clone, Default)]
pub struct CertificatePins {
    by: std::collections::HashMap<lgsp_config::CertificateMatch, String>,
}

impl CertificatePins {
    pub fn new(agencies: &[lgsp_config::AgencyConfig]) -> CertificatePins {
        CertificatePins {
            by: agencies
                .iter()
                .flat_map(|a| a.certificates.iter().map(|c| (c.clone(), a.code.clone())))
                .collect(),
        }
    }

    /// The agency a certificate is pinned to, by its key first, then by its subject and issuer.
    fn agency(&self, cert: &X509Certificate<'_>) -> Option<&str> {
        if self.by.is_empty() {
            return None;
        }
        let spki = hex::encode(Sha256::digest(cert.public_key().raw));
        if let Some(code) = self.by.get(&lgsp_config::CertificateMatch::Spki(spki)) {
            return Some(code);
        }
        let names = lgsp_config::dn_key(&cert.subject().to_string())
            .zip(lgsp_config::dn_key(&cert.issuer().to_string()))?;
        self.by
            .get(&lgsp_config::CertificateMatch::Names {
                subject: names.0,
                issuer: names.1,
            })
            .map(String::as_str)
    }
}

/// The identity of a verified client certificate: an agency code (mã định danh) or a peer gateway's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub id: String,
    pub source: IdentitySource,
    /// SHA-256 of the leaf certificate (DER), hex; the `x5t#S256` thumbprint tokens bind to.
    pub cert_sha256: String,
    /// Unix seconds when the certificate expires.
    pub not_after: i64,
    /// The certificate's SubjectPublicKeyInfo (DER): what a peer's hop signatures are verified with.
    pub spki: std::sync::Arc<[u8]>,
}

/// The gateways a hop trusts to relay for agencies: known by the exact identity in their certificate's SAN URI —
/// never by a Common Name, which any certificate of the CA may carry — and, when pinned, by the certificate's
/// SHA-256 too.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    /// Identity → pinned certificate SHA-256 (lower-case hex), if any.
    by_id: std::collections::HashMap<String, Option<String>>,
}

impl Peers {
    pub fn new(peers: &[lgsp_config::PeerConfig]) -> Peers {
        Peers {
            by_id: peers
                .iter()
                .map(|p| (p.id.clone(), p.sha256.clone()))
                .collect(),
        }
    }

    /// Whether the connection's certificate is one of these gateways.
    pub fn admits(&self, identity: &PeerIdentity) -> bool {
        identity.source == IdentitySource::SanUri
            && self
                .by_id
                .get(&identity.id)
                .is_some_and(|pin| pin.as_ref().is_none_or(|p| *p == identity.cert_sha256))
    }
}

/// The TCP address a connection came from: a request extension the listener sets beside [`PeerIdentity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::SocketAddr);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("the client certificate cannot be parsed: {0}")]
    Unparsable(String),
    #[error(
        "the client certificate has neither a SAN URI starting with `{prefix}` nor a Subject CN"
    )]
    Missing { prefix: String },
}

impl PeerIdentity {
    /// Reads the identity: the rest of the first SAN URI starting with `uri_prefix`, else the Subject CN.
    pub fn from_certificate(
        der: &CertificateDer<'_>,
        uri_prefix: &str,
    ) -> Result<Self, IdentityError> {
        Self::recognise(der, uri_prefix, &CertificatePins::default())
    }

    /// As [`Self::from_certificate`], an agency's pinned certificate first: its code, whatever the certificate's
    /// SAN URI or CN says.
    pub fn recognise(
        der: &CertificateDer<'_>,
        uri_prefix: &str,
        pins: &CertificatePins,
    ) -> Result<Self, IdentityError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| IdentityError::Unparsable(e.to_string()))?;
        let cert_sha256 = hex::encode(Sha256::digest(der.as_ref()));
        let not_after = cert.validity().not_after.timestamp();
        let spki: std::sync::Arc<[u8]> = std::sync::Arc::from(cert.public_key().raw);
        if let Some(code) = pins.agency(&cert) {
            return Ok(PeerIdentity {
                id: code.to_owned(),
                source: IdentitySource::Pinned,
                cert_sha256,
                not_after,
                spki,
            });
        }
        let from_san = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|n| match n {
                    GeneralName::URI(uri) => uri
                        .strip_prefix(uri_prefix)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned),
                    _ => None,
                })
            });
        if let Some(id) = from_san {
            return Ok(PeerIdentity {
                id,
                source: IdentitySource::SanUri,
                cert_sha256,
                not_after,
                spki,
            });
        }
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .filter(|s| !s.is_empty());
        match cn {
            Some(cn) => Ok(PeerIdentity {
                id: cn.to_owned(),
                source: IdentitySource::CommonName,
                cert_sha256,
                not_after,
                spki,
            }),
            None => Err(IdentityError::Missing {
                prefix: uri_prefix.to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devpki::{DevCa, LeafSpec};

    #[test]
    fn a_peer_is_its_exact_san_identity_and_its_pin() {
        let ca = DevCa::generate("Test CA").unwrap();
        let read = |spec: &LeafSpec| {
            PeerIdentity::from_certificate(&ca.issue(spec).unwrap().cert_der(), "urn:lgsp:id:")
                .unwrap()
        };
        let real = read(&LeafSpec::identity("LGSP-DEV"));
        let cn_only = read(&LeafSpec::client("LGSP-DEV"));
        let upper = read(&LeafSpec::client("x").with_uri("URN:LGSP:ID:LGSP-DEV"));
        let peers = Peers::new(&[lgsp_config::PeerConfig {
            id: "LGSP-DEV".into(),
            sha256: None,
        }]);
        assert!(peers.admits(&real));
        assert_eq!(cn_only.id, "LGSP-DEV");
        assert!(!peers.admits(&cn_only), "a Common Name makes no peer");
        assert!(!peers.admits(&upper), "the URI prefix is matched exactly");
        let pinned = Peers::new(&[lgsp_config::PeerConfig {
            id: "LGSP-DEV".into(),
            sha256: Some(real.cert_sha256.clone()),
        }]);
        assert!(pinned.admits(&real));
        assert!(
            !pinned.admits(&read(&LeafSpec::identity("LGSP-DEV"))),
            "another certificate of the same name"
        );
    }

    #[test]
    fn san_uri_with_prefix_wins_over_cn() {
        let ca = DevCa::generate("Test CA").unwrap();
        let leaf = ca
            .issue(&LeafSpec::client("CN-NAME").with_uri("urn:lgsp:id:000.00.00.H29"))
            .unwrap();
        let id = PeerIdentity::from_certificate(&leaf.cert_der(), "urn:lgsp:id:").unwrap();
        assert_eq!(id.id, "000.00.00.H29");
        assert_eq!(id.source, IdentitySource::SanUri);
        assert_eq!(id.cert_sha256.len(), 64);
    }

    #[test]
    fn falls_back_to_cn_when_no_uri_has_the_prefix() {
        let ca = DevCa::generate("Test CA").unwrap();
        let leaf = ca
            .issue(&LeafSpec::client("000.00.00.G09").with_uri("urn:other:G09"))
            .unwrap();
        let id = PeerIdentity::from_certificate(&leaf.cert_der(), "urn:lgsp:id:").unwrap();
        assert_eq!(
            (id.id.as_str(), id.source),
            ("000.00.00.G09", IdentitySource::CommonName)
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let der = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01]);
        assert!(matches!(
            PeerIdentity::from_certificate(&der, "urn:lgsp:id:"),
            Err(IdentityError::Unparsable(_))
        ));
    }
}
