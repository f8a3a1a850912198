//! rustls configs: one crypto provider (aws-lc-rs), TLS 1.2 and 1.3 only, ALPN h2 + http/1.1.

use std::sync::Arc;

use lgsp_config::{ClientTlsConfig, ServerTlsConfig};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::HandshakeFailure;
use crate::load::{TlsError, load_certs, load_crls, load_key};

pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_H1: &[u8] = b"http/1.1";
const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The one crypto provider of the project.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots(paths: &[lgsp_config::ConfigPath]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for p in paths {
        for cert in load_certs(p)? {
            roots
                .add(cert)
                .map_err(|e| TlsError::at(p, format!("not usable as a CA certificate: {e}")))?;
        }
    }
    Ok(roots)
}

/// A listener's server TLS, and the verifier it checks client certificates with, so a certificate accepted
/// earlier can be asked again (after a reload: revoked since? its CA still trusted?).
#[derive(Clone)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    pub verifier: Arc<dyn ClientCertVerifier>,
}

impl ServerTls {
    /// Whether a client chain (leaf first) accepted earlier still passes: chain to a trusted CA, validity now,
    /// revocation by the current CRLs.
    pub fn still_accepts(&self, chain: &[CertificateDer<'static>]) -> Result<(), HandshakeFailure> {
        let (leaf, intermediates) = chain.split_first().ok_or(HandshakeFailure::NoClientCert)?;
        self.verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(|_| ())
            .map_err(|e| HandshakeFailure::from_rustls(&e))
    }
}

/// A server config that requires a client certificate chaining to `client_ca` and not revoked by `crls`.
pub fn server_config(t: &ServerTlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    server_tls(t).map(|s| s.config)
}

/// As [`server_config`], with its verifier.
pub fn server_tls(t: &ServerTlsConfig) -> Result<ServerTls, TlsError> {
    let provider = provider();
    let roots = Arc::new(roots(&t.client_ca)?);
    let mut crls = Vec::new();
    for p in &t.crls {
        crls.extend(load_crls(p)?);
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .with_crls(crls)
        // Our CAs issue leaves directly; intermediates are checked for chain validity, leaves for revocation.
        .only_check_end_entity_revocation()
        .build()
        .map_err(|e| {
            TlsError::at(
                &t.client_ca[0],
                format!("cannot build the client verifier: {e}"),
            )
        })?;
    let chain = load_certs(&t.cert)?;
    let key = load_key(&t.key)?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::at(&t.cert, e.to_string()))?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::at(&t.key, format!("key does not fit the certificate: {e}")))?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_H1.to_vec()];
    Ok(ServerTls {
        config: Arc::new(cfg),
        verifier,
    })
}

/// A client config presenting this hop's own certificate and trusting `ca` for upstream servers.
pub fn client_config(t: &ClientTlsConfig) -> Result<ClientConfig, TlsError> {
    let roots = roots(&t.ca)?;
    let chain = load_certs(&t.cert)?;
    let key = load_key(&t.key)?;
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::at(&t.cert, e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| TlsError::at(&t.key, format!("key does not fit the certificate: {e}")))?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devpki;
    use lgsp_config::ConfigPath;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn an_accepted_chain_is_asked_again_against_the_current_crls() {
        let dir = tempfile::tempdir().unwrap();
        devpki::init(dir.path()).unwrap();
        let at = |f: &str| ConfigPath::given(dir.path().join(f), f.to_owned());
        let cfg = ServerTlsConfig {
            cert: at("lgsp-server.pem"),
            key: at("lgsp-server.key"),
            client_ca: vec![at("ca.pem")],
            crls: vec![at("ca.crl.pem")],
            identity_uri_prefix: devpki::DEV_URI_PREFIX.into(),
            handshake_timeout: std::time::Duration::from_secs(5),
        };
        let tls = server_tls(&cfg).unwrap();
        let chain = |stem: &str| {
            CertificateDer::pem_file_iter(dir.path().join(format!("{stem}.pem")))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
        };
        let h29 = chain(&devpki::agency_stem("000.00.00.H29"));
        let revoked = chain(&format!(
            "{}-revoked",
            devpki::agency_stem(devpki::DEV_REVOKED_AGENCY)
        ));
        assert_eq!(tls.still_accepts(&h29), Ok(()));
        assert_eq!(tls.still_accepts(&revoked), Err(HandshakeFailure::Revoked));
        assert_eq!(tls.still_accepts(&[]), Err(HandshakeFailure::NoClientCert));
        // Without the CRL, the same chain passes: the answer is the current config's.
        let lenient = server_tls(&ServerTlsConfig {
            crls: Vec::new(),
            ..cfg
        })
        .unwrap();
        assert_eq!(lenient.still_accepts(&revoked), Ok(()));
    }
}
