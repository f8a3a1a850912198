//! Gateway configuration: the `gateway.toml` file model (stage one, serde with unknown keys refused) and the
//! validated runtime model (stage two), with errors that name the file, line and fix.
#![forbid(unsafe_code)]

mod error;
pub mod file;
mod parse;
mod runtime;

use std::path::Path;

pub use error::{ConfigError, Problem};
pub use file::{AgencyStatus, HopRole, KeyKind, LogFormat};
pub use parse::{parse_duration, parse_rate, valid_agency_code, valid_identity};
pub use runtime::defaults;
pub use runtime::defaults::IDENTITY_URI_PREFIX as DEFAULT_IDENTITY_URI_PREFIX;
pub use runtime::human;
pub use runtime::{
    AdminConfig, AgencyConfig, AuthConfig, Broker, CertificateMatch, ClientTlsConfig, Config,
    ConfigPath, ConsumerConfig, DeliveryConfig, DeliveryMode, EmulatorConfig, HopConfig,
    HttpConfig, JournalConfig, KeyConfig, LogConfig, Origin, OverloadConfig, PeerConfig, PkiConfig,
    Quota, RateLimitBackend, RateLimitConfig, RateSpec, RouteConfig, SchemaSource, ServerTlsConfig,
    SigningConfig, SourceKind, TokenConfig, Upstream, UpstreamConfig, UpstreamProtocol,
    ValidationConfig, dn_key, instant, valid_subject,
};

/// The default config, compiled into the binary so a fresh clone runs with no file.
pub const EMBEDDED: &str = include_str!("../../../gateway.toml");
/// How the embedded config names itself in errors.
pub const EMBEDDED_SOURCE: &str = "<embedded gateway.toml>";

/// Parses and validates config text. Relative paths resolve against `base`.
pub fn parse(text: &str, source: &str, base: &Path) -> Result<Config, ConfigError> {
    let file: file::FileConfig = toml::from_str(text).map_err(|e| {
        let map = error::SourceMap::new(text);
        let (line, column) = e.span().map_or((None, None), |s| {
            (Some(map.line_of(s.start)), Some(map.column_of(s.start)))
        });
        ConfigError {
            source: source.to_owned(),
            problems: vec![Problem {
                line,
                column,
                field: String::new(),
                message: e.message().to_owned(),
            }],
        }
    })?;
    Config::from_file(file, text, source, base)
}

/// Reads and validates a config file; relative paths resolve against the current directory, as an operator
/// running `lgsp-gateway run --config /etc/lgsp/gateway.toml` from the deployment directory expects.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        source: source.clone(),
        problems: vec![Problem::without_line(
            "",
            format!("cannot read the file: {e}"),
        )],
    })?;
    parse(&text, &source, Path::new("."))
}

/// The embedded default config.
pub fn embedded() -> Result<Config, ConfigError> {
    parse(EMBEDDED, EMBEDDED_SOURCE, Path::new("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The problems of the embedded config with the first `from` replaced by `to` (the test must change it).
    pub(crate) fn problems_of(from: &str, to: &str) -> Vec<Problem> {
        assert!(
            EMBEDDED.contains(from),
            "the default config has no {from:?}"
        );
        let text = EMBEDDED.replacen(from, to, 1);
        match parse(&text, "t.toml", Path::new(".")) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems,
        }
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = embedded().unwrap();
        assert_eq!(c.hops.len(), 2);
        assert!(c.emulator.is_some());
        assert!(c.pki.dev_autogen);
    }

    #[test]
    fn unknown_key_is_refused_with_its_line() {
        let text = EMBEDDED.replacen("[admin]\n", "[admin]\nlisten_typo = 1\n", 1);
        let e = parse(&text, "t.toml", Path::new(".")).unwrap_err();
        let line = text
            .lines()
            .position(|l| l.starts_with("listen_typo"))
            .unwrap()
            + 1;
        assert_eq!(e.problems[0].line, Some(line), "{e}");
        assert!(
            e.problems[0]
                .message
                .contains("unknown field `listen_typo`"),
            "{e}"
        );
    }

    #[test]
    fn semantic_errors_are_all_reported_with_lines() {
        let text = EMBEDDED
            .replacen("\ntimeout = \"30s\"", "\ntimeout = \"30 seconds\"", 1)
            .replacen(
                "upstream = \"https://localhost:8444\"",
                "upstream = \"http://localhost:8444\"",
                1,
            );
        let e = parse(&text, "t.toml", Path::new(".")).unwrap_err();
        assert_eq!(e.problems.len(), 2, "{e}");
        let shown = e.to_string();
        assert!(shown.contains("route[0].timeout"), "{shown}");
        assert!(shown.contains("route[0].upstream"), "{shown}");
        for p in &e.problems {
            let line = p.line.unwrap();
            assert!(
                text.lines().nth(line - 1).unwrap().contains("30 seconds")
                    || text.lines().nth(line - 1).unwrap().contains("http://")
            );
        }
    }

    #[test]
    fn trial_upstream_defaults_to_the_emulator_and_dry_runs_forward_nothing() {
        let c = embedded().unwrap();
        let route = |hop: usize, name: &str| {
            c.hops[hop]
                .routes
                .iter()
                .find(|r| r.name == name)
                .unwrap()
                .clone()
        };
        let trial = route(0, "HoSoCBCCVC").trial_upstream.unwrap();
        assert_eq!(
            (trial.authority.as_str(), trial.base_path.as_str()),
            ("localhost:8445", "/cbccvc/v1/HoSoCBCCVC")
        );
        let receipts = route(1, "BienNhan").trial_upstream.unwrap();
        assert_eq!(receipts.base_path, "/cbccvc/v1/BienNhan");
        let dry = route(0, "validate");
        assert!(dry.dry_run && dry.trial_upstream.is_none() && dry.upstream.authority.is_empty());

        // A dry-run route with an upstream, and a route with neither, are refused with their lines.
        let text = EMBEDDED
            .replacen(
                "dry_run = true\n",
                "dry_run = true\nupstream = \"https://x:1\"\n",
                1,
            )
            .replacen("upstream = \"https://localhost:8444\"\n", "", 1);
        let e = parse(&text, "t.toml", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("a dry-run, messages or inbox route forwards nothing"),
            "{e}"
        );
        assert!(e.contains("name the upstream"), "{e}");
    }

    #[test]
    fn route_agency_must_be_known() {
        let text = EMBEDDED.replacen("agencies = [\"*\"]", "agencies = [\"000.00.00.X99\"]", 1);
        let e = parse(&text, "t.toml", Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("is not an [[agency]] code"), "{e}");
    }

    #[test]
    fn duplicate_key_hash_is_refused() {
        let c = embedded().unwrap();
        let first = &c.agencies[0].keys[0].sha256;
        let hex: String = first.iter().map(|b| format!("{b:02x}")).collect();
        let text = format!(
            "{EMBEDDED}\n[[agency]]\ncode = \"000.00.00.Z01\"\nstatus = \"trial\"\nkeys = [{{ sha256 = \"{hex}\", kind = \"trial\" }}]\n"
        );
        let e = parse(&text, "t.toml", Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("already given to agency"), "{e}");
    }
}
