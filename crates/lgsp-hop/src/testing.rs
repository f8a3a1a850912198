//! Fixtures of the unit tests: the embedded config over a fresh dev PKI, with every listener on port 0.

use std::sync::Arc;

use lgsp_config::Config;
use lgsp_tls::{IdentitySource, PeerIdentity};

/// A dev PKI in a temporary directory and the embedded config resolved against it.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture::new()
    }
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        lgsp_tls::devpki::init(&dir.path().join("certs")).expect("dev PKI");
        Fixture { dir }
    }

    /// The embedded config with every `(from, to)` replaced once, and its listeners on port 0.
    pub fn text(&self, edits: &[(&str, &str)]) -> String {
        let mut text = lgsp_config::EMBEDDED.to_owned();
        for (from, to) in edits {
            assert!(text.contains(from), "the default config has no {from:?}");
            text = text.replacen(from, to, 1);
        }
        for port in ["9464", "8443", "8444", "8445"] {
            text = text.replacen(
                &format!("listen = \"127.0.0.1:{port}\""),
                "listen = \"127.0.0.1:0\"",
                1,
            );
        }
        // Its own journal, wherever the text is parsed from.
        text.replacen(
            "url = \"sqlite://journal.db\"",
            &format!(
                "url = \"sqlite://{}\"",
                self.dir.path().join("journal.db").display()
            ),
            1,
        )
    }

    pub fn config(&self, edits: &[(&str, &str)]) -> Config {
        let text = self.text(edits);
        lgsp_config::parse(&text, "test.toml", self.dir.path())
            .unwrap_or_else(|e| panic!("test config invalid: {e}"))
    }
}

/// The identity the listener reads from a client certificate.
pub fn identity(id: &str) -> PeerIdentity {
    PeerIdentity {
        id: id.into(),
        source: IdentitySource::SanUri,
        cert_sha256: "5a1c9a6317dff2acda2f6c0caf3b4582b0a980d6827cb1d5bfd6b2926f8faeae".into(),
        // 2100-01-01: valid for as long as any test runs.
        not_after: 4_102_444_800,
        spki: Default::default(),
    }
}

pub fn metrics() -> Arc<lgsp_metrics::Metrics> {
    lgsp_metrics::Metrics::new().expect("metrics")
}
