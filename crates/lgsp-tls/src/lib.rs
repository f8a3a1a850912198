//! TLS for every listener and upstream: PEM/CRL loading, rustls server configs that require and verify client
//! certificates (TLS 1.2/1.3, aws-lc-rs only), upstream client configs, the peer identity read from a certificate
//! (x509-parser), handshake-failure reasons, and the dev PKI (rcgen).
#![forbid(unsafe_code)]

mod config;
pub mod devpki;
mod handshake;
mod identity;
mod load;

pub use config::{ALPN_H1, ALPN_H2, client_config, provider, server_config};
pub use handshake::HandshakeFailure;
pub use identity::{IdentityError, IdentitySource, PeerIdentity};
pub use load::{TlsError, load_certs, load_crls, load_key};
