//! rustls configs: one crypto provider (aws-lc-rs), TLS 1.2 and 1.3 only, ALPN h2 + http/1.1.

use std::sync::Arc;

use lgsp_config::{ClientTlsConfig, ServerTlsConfig};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

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

/// A server config that requires a client certificate chaining to `client_ca` and not revoked by `crls`.
pub fn server_config(t: &ServerTlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
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
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::at(&t.key, format!("key does not fit the certificate: {e}")))?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_H1.to_vec()];
    Ok(Arc::new(cfg))
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
