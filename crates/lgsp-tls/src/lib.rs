//! TLS for every listener and upstream: PEM/CRL loading, rustls server configs that require and verify client
//! certificates (TLS 1.2/1.3, aws-lc-rs only), upstream client configs, the peer identity read from a certificate
//! (x509-parser), handshake-failure reasons, and the dev PKI (rcgen).
#![forbid(unsafe_code)]

mod config;
pub mod csr;
pub mod devpki;
mod handshake;
mod identity;
mod load;

pub use config::{ALPN_H1, ALPN_H2, ServerTls, client_config, provider, server_config, server_tls};
pub use handshake::{HandshakeFailure, rustls_error};
pub use identity::{
    CertificatePins, ClientAddr, IdentityError, IdentitySource, PeerIdentity, Peers,
};
pub use load::{TlsError, load_certs, load_crls, load_key};

/// When a certificate or CRL named in the config stops being usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    /// `server`, `client`, `ca` or `crl`.
    pub role: &'static str,
    /// The certificate's Subject CN (or the whole subject), or the CRL's issuer.
    pub subject: String,
    /// Unix seconds: the certificate's notAfter, or the CRL's nextUpdate.
    pub at: i64,
}

fn subject_label(name: &x509_parser::x509::X509Name<'_>) -> String {
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map_or_else(|| name.to_string(), str::to_owned)
}

/// The expiry of every certificate in `path` (for a chain: each of them) under `role`.
pub fn cert_expiry(
    path: &lgsp_config::ConfigPath,
    role: &'static str,
) -> Result<Vec<Expiry>, TlsError> {
    use x509_parser::prelude::FromDer;
    let mut out = Vec::new();
    for der in load_certs(path)? {
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der.as_ref())
            .map_err(|e| TlsError::at(path, format!("certificate cannot be parsed: {e}")))?;
        out.push(Expiry {
            role,
            subject: subject_label(cert.subject()),
            at: cert.validity().not_after.timestamp(),
        });
    }
    Ok(out)
}

/// The next update of every CRL in `path`.
pub fn crl_expiry(path: &lgsp_config::ConfigPath) -> Result<Vec<Expiry>, TlsError> {
    use x509_parser::prelude::FromDer;
    let mut out = Vec::new();
    for der in load_crls(path)? {
        let (_, crl) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(der.as_ref())
                .map_err(|e| TlsError::at(path, format!("CRL cannot be parsed: {e}")))?;
        if let Some(next) = crl.next_update() {
            out.push(Expiry {
                role: "crl",
                subject: subject_label(crl.issuer()),
                at: next.timestamp(),
            });
        }
    }
    Ok(out)
}

/// Subject (CN, else the whole name) and expiry (Unix seconds) of a DER certificate, for reports.
pub fn describe_certificate(der: &[u8]) -> Option<(String, i64)> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    Some((
        subject_label(cert.subject()),
        cert.validity().not_after.timestamp(),
    ))
}
