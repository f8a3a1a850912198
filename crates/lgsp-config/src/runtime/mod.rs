//! Stage two: the validated runtime config, one module per section of the file. [`Config::from_file`] builds every
//! section with one [`check::Checker`], which collects each problem with its line instead of stopping at the first.
//! Defaults and bounds live in [`defaults`].

mod admin;
mod agency;
mod broker;
mod check;
mod consumer;
pub use check::human;
pub mod defaults;
mod emulator;
mod hop;
mod journal;
mod limits;
mod route;
mod signing;
mod tls;
mod token;
mod validation;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use toml::Spanned;

pub use admin::{AdminConfig, LogConfig, PkiConfig};
pub use agency::{AgencyConfig, CertificateMatch, KeyConfig, dn_key, instant};
pub use broker::{Broker, valid_subject};
pub use consumer::{ConsumerConfig, SourceKind};
pub use emulator::EmulatorConfig;
pub use hop::{HopConfig, HttpConfig, PeerConfig, UpstreamConfig, UpstreamProtocol};
pub use journal::{DeliveryConfig, JournalConfig, Quota};
pub use limits::{OverloadConfig, RateLimitBackend, RateLimitConfig};
pub use route::{DeliveryMode, RateSpec, RouteConfig, Upstream};
pub use signing::SigningConfig;
pub use tls::{ClientTlsConfig, ServerTlsConfig};
pub use token::{AuthConfig, TokenConfig};
pub use validation::{SchemaSource, ValidationConfig};

use crate::error::{ConfigError, Problem, SourceMap};
use crate::file::FileConfig;
use check::Checker;

/// Where a value was written: its dotted field name and its place in the file. Problems found after this stage (a
/// certificate that does not load, a Redis URL the client refuses) point back at it.
///
/// Where a value was written is not part of what it means: two origins always compare equal, so a reload that only
/// moves lines keeps state that depends on the value (the rate limiter's, for one).
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// Dotted path of the field, e.g. `hop[0].tls.crls[0]`.
    pub field: String,
    /// 1-based line and column, `None` for values the config did not write (defaults, command-line paths).
    pub line: Option<usize>,
    pub column: Option<usize>,
}

impl PartialEq for Origin {
    fn eq(&self, _: &Origin) -> bool {
        true
    }
}

impl Eq for Origin {}

impl Origin {
    /// An origin outside any config file (a path given on the command line).
    pub fn named(field: impl Into<String>) -> Origin {
        Origin {
            field: field.into(),
            line: None,
            column: None,
        }
    }

    /// A problem with the value written here.
    pub fn problem(&self, message: impl Into<String>) -> Problem {
        Problem {
            line: self.line,
            column: self.column,
            field: self.field.clone(),
            message: message.into(),
        }
    }
}

/// A file path from the config, with where the config named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigPath {
    pub path: PathBuf,
    pub origin: Origin,
}

impl ConfigPath {
    /// A path that no config named (the probe's `--cert`, say); `field` says what it is.
    pub fn given(path: impl Into<PathBuf>, field: impl Into<String>) -> ConfigPath {
        ConfigPath {
            path: path.into(),
            origin: Origin::named(field),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the config came from (a path, or `<embedded gateway.toml>`).
    pub source: String,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub pki: PkiConfig,
    pub hops: Vec<HopConfig>,
    pub agencies: Vec<AgencyConfig>,
    pub emulator: Option<EmulatorConfig>,
    pub validation: ValidationConfig,
    pub ratelimit: RateLimitConfig,
    pub overload: OverloadConfig,
    pub token: TokenConfig,
    pub auth: AuthConfig,
    pub journal: JournalConfig,
    pub delivery: DeliveryConfig,
    /// Broker sources, each read by one of `hops`.
    pub consumers: Vec<ConsumerConfig>,
    /// Who may sign approvals; `None`: approvals are refused.
    pub signing: Option<SigningConfig>,
}

impl Config {
    /// Validates a parsed file. `base` is the directory relative paths are resolved against.
    pub fn from_file(
        file: FileConfig,
        text: &str,
        source: &str,
        base: &Path,
    ) -> Result<Self, ConfigError> {
        let map = SourceMap::new(text);
        let mut c = Checker::new(&map, base);
        let agencies = agency::agencies(&mut c, &file.agencies);
        let known: HashSet<&str> = agencies.iter().map(|a| a.code.as_str()).collect();
        let mut hops = hop::hops(&mut c, &file.hops, &known);
        let admin = admin::admin(&mut c, &file.admin);
        let emulator = file
            .emulator
            .as_ref()
            .map(|e| emulator::emulator(&mut c, e));
        if hops.is_empty() && emulator.is_none() {
            c.missing(
                "hop",
                "define at least one [[hop]] (or an [emulator]) for this process to serve",
            );
        }
        distinct_listeners(&mut c, &file, &hops, &admin, emulator.as_ref());
        if let Some(e) = &emulator {
            emulator::default_trial_upstreams(&mut hops, e);
        }
        let delivery = journal::delivery(&mut c, &file.delivery);
        let consumers = consumer::consumers(&mut c, &file.consumers, &hops);
        journal::lease_outlasts_routes(&mut c, &file.delivery, &delivery, &hops);
        let config = Config {
            source: source.to_owned(),
            log: admin::log(&mut c, &file.log),
            pki: admin::pki(&c, &file.pki),
            validation: validation::validation(&mut c, &file.validation),
            ratelimit: limits::ratelimit(&mut c, &file.ratelimit),
            overload: limits::overload(&mut c, &file.overload),
            token: token::token(&mut c, &file.token),
            auth: token::auth(&mut c, &file.auth),
            journal: journal::journal(&mut c, &file.journal),
            signing: file.signing.as_ref().map(|s| signing::signing(&mut c, s)),
            delivery,
            consumers,
            admin,
            hops,
            agencies,
            emulator,
        };
        if c.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError {
                source: source.to_owned(),
                problems: c.problems,
            })
        }
    }
}

/// No two listeners of one file on the same address (port 0 is always free: the OS picks one).
fn distinct_listeners(
    c: &mut Checker<'_>,
    file: &FileConfig,
    hops: &[HopConfig],
    admin: &AdminConfig,
    emulator: Option<&EmulatorConfig>,
) {
    let mut listeners: Vec<(SocketAddr, &Spanned<String>, String)> = hops
        .iter()
        .zip(&file.hops)
        .enumerate()
        .map(|(i, (h, f))| (h.listen, &f.listen, format!("hop[{i}].listen")))
        .collect();
    listeners.push((admin.listen, &file.admin.listen, "admin.listen".into()));
    if let (Some(e), Some(f)) = (emulator, &file.emulator) {
        listeners.push((e.listen, &f.listen, "emulator.listen".into()));
    }
    let mut seen = HashSet::new();
    for (addr, at, field) in listeners {
        if addr.port() != 0 && !seen.insert(addr) {
            c.problem(
                at,
                field,
                "another listener in this file already uses this address",
            );
        }
    }
}
