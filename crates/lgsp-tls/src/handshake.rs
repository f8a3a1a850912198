//! Why a TLS handshake failed, as a bounded metric label and a log reason.

/// Reasons a client's handshake fails; `as_str` is the `reason` label of `lgsp_tls_handshake_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    NoClientCert,
    UnknownCa,
    Expired,
    NotYetValid,
    Revoked,
    RevocationUnknown,
    BadCertificate,
    Protocol,
    Timeout,
    Io,
}

impl HandshakeFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::NoClientCert => "no_client_cert",
            HandshakeFailure::UnknownCa => "unknown_ca",
            HandshakeFailure::Expired => "expired",
            HandshakeFailure::NotYetValid => "not_yet_valid",
            HandshakeFailure::Revoked => "revoked",
            HandshakeFailure::RevocationUnknown => "revocation_unknown",
            HandshakeFailure::BadCertificate => "bad_certificate",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Io => "io",
        }
    }

    /// Classifies the error `TlsAcceptor::accept` returned.
    pub fn classify(e: &std::io::Error) -> Self {
        let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return HandshakeFailure::Io;
        };
        Self::from_rustls(tls)
    }

    pub fn from_rustls(e: &rustls::Error) -> Self {
        use rustls::CertificateError as C;
        match e {
            rustls::Error::NoCertificatesPresented => HandshakeFailure::NoClientCert,
            rustls::Error::InvalidCertificate(c) => match c {
                C::UnknownIssuer => HandshakeFailure::UnknownCa,
                C::Expired | C::ExpiredContext { .. } => HandshakeFailure::Expired,
                C::NotValidYet | C::NotValidYetContext { .. } => HandshakeFailure::NotYetValid,
                C::Revoked => HandshakeFailure::Revoked,
                C::UnknownRevocationStatus
                | C::ExpiredRevocationList
                | C::ExpiredRevocationListContext { .. } => HandshakeFailure::RevocationUnknown,
                _ => HandshakeFailure::BadCertificate,
            },
            _ => HandshakeFailure::Protocol,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_rustls_errors_wrapped_in_io() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::Revoked),
        );
        assert_eq!(HandshakeFailure::classify(&io), HandshakeFailure::Revoked);
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::NoCertificatesPresented,
        );
        assert_eq!(HandshakeFailure::classify(&io).as_str(), "no_client_cert");
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(HandshakeFailure::classify(&io), HandshakeFailure::Io);
    }
}
