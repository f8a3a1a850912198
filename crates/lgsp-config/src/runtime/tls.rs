//! `[hop.tls]` / `[emulator.tls]` (the listener's certificate, client CAs, CRLs, identity prefix) and
//! `[hop.upstream_tls]` (the hop's own client identity towards its upstreams). Files are named here and loaded by
//! the preparation stage, whose errors point back at these paths.

use std::time::Duration;

use super::ConfigPath;
use super::check::Checker;
use super::defaults;
use crate::file::{FileClientTls, FileServerTls};

#[derive(Debug, Clone)]
pub struct ServerTlsConfig {
    pub cert: ConfigPath,
    pub key: ConfigPath,
    pub client_ca: Vec<ConfigPath>,
    pub crls: Vec<ConfigPath>,
    pub identity_uri_prefix: String,
    pub handshake_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ClientTlsConfig {
    pub cert: ConfigPath,
    pub key: ConfigPath,
    pub ca: Vec<ConfigPath>,
}

/// A SAN URI prefix identities are read after (`urn:lgsp:id:` by default); never empty.
pub(super) fn identity_uri_prefix(
    c: &mut Checker<'_>,
    v: Option<&toml::Spanned<String>>,
    field: &str,
) -> String {
    match v {
        Some(p) if p.get_ref().is_empty() => {
            c.problem(
                p,
                field,
                format!(
                    "must not be empty; the default is \"{}\"",
                    defaults::IDENTITY_URI_PREFIX
                ),
            );
            defaults::IDENTITY_URI_PREFIX.to_owned()
        }
        Some(p) => p.get_ref().clone(),
        None => defaults::IDENTITY_URI_PREFIX.to_owned(),
    }
}

pub(super) fn server_tls(c: &mut Checker<'_>, t: &FileServerTls, field: &str) -> ServerTlsConfig {
    let prefix = identity_uri_prefix(
        c,
        t.identity_uri_prefix.as_ref(),
        &format!("{field}.identity_uri_prefix"),
    );
    ServerTlsConfig {
        cert: c.path(&t.cert, format!("{field}.cert")),
        key: c.path(&t.key, format!("{field}.key")),
        client_ca: c.paths(&t.client_ca, &format!("{field}.client_ca"), true),
        crls: c.paths(&t.crls, &format!("{field}.crls"), false),
        identity_uri_prefix: prefix,
        handshake_timeout: c.duration(
            t.handshake_timeout.as_ref(),
            &format!("{field}.handshake_timeout"),
            defaults::HANDSHAKE_TIMEOUT,
        ),
    }
}

pub(super) fn client_tls(c: &mut Checker<'_>, t: &FileClientTls, field: &str) -> ClientTlsConfig {
    ClientTlsConfig {
        cert: c.path(&t.cert, format!("{field}.cert")),
        key: c.path(&t.key, format!("{field}.key")),
        ca: c.paths(&t.ca, &format!("{field}.ca"), true),
    }
}

#[cfg(test)]
mod tests {
    use crate::tests::problems_of;

    #[test]
    fn paths_keep_their_field_and_place() {
        let c = crate::embedded().unwrap();
        let crl = &c.hops[0].tls.crls[0];
        assert_eq!(crl.origin.field, "hop[0].tls.crls[0]");
        let line = crate::EMBEDDED[..crate::EMBEDDED
            .find("crls = [\"certs/ca.crl.pem\"]")
            .unwrap()]
            .lines()
            .count()
            + 1;
        assert_eq!(crl.origin.line, Some(line));
        assert_eq!(crl.origin.column, Some(9));
    }

    #[test]
    fn an_empty_identity_prefix_and_no_client_ca_are_refused() {
        let p = problems_of(
            "identity_uri_prefix = \"urn:lgsp:id:\"",
            "identity_uri_prefix = \"\"",
        );
        assert_eq!(p[0].field, "hop[0].tls.identity_uri_prefix");
        let p = problems_of("client_ca = [\"certs/ca.pem\"]", "client_ca = []");
        assert_eq!(
            (p[0].field.as_str(), p[0].line),
            ("hop[0].tls.client_ca", None)
        );
    }
}
