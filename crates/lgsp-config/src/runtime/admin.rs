//! The process-wide sections: `[admin]` (admin listener: address, drain, token, names), `[log]` and `[pki]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::ConfigPath;
use super::check::Checker;
use super::defaults;
use crate::file::{FileAdmin, FileLog, FilePki, LogFormat};

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub drain_timeout: Duration,
    /// On SIGTERM, how long `/readyz` answers 503 while every listener still serves (so a load balancer's health
    /// check takes the replica out) before listeners close and the drain begins; zero when not set.
    pub shutdown_delay: Duration,
    /// The file holding the admin token; `None`: `POST /admin/reload` is off (SIGHUP reloads).
    pub token_file: Option<ConfigPath>,
    /// Host names the admin listener answers to besides IP literals and `localhost` (lower case).
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    /// Lines the non-blocking writer queues while the output is slow; beyond them lines are dropped (counted in
    /// `lgsp_log_lines_dropped_total`), never waited for. Takes a restart.
    pub buffer_lines: usize,
}

#[derive(Debug, Clone)]
pub struct PkiConfig {
    pub dir: PathBuf,
    pub dev_autogen: bool,
}

pub(super) fn admin(c: &mut Checker<'_>, f: &FileAdmin) -> AdminConfig {
    AdminConfig {
        listen: c.addr(&f.listen, "admin.listen"),
        drain_timeout: c.duration(
            f.drain_timeout.as_ref(),
            "admin.drain_timeout",
            defaults::DRAIN_TIMEOUT,
        ),
        shutdown_delay: match &f.shutdown_delay {
            Some(v) => c.duration_within(
                Some(v),
                "admin.shutdown_delay",
                Duration::ZERO,
                &(Duration::from_millis(1)..=Duration::from_secs(600)),
            ),
            None => Duration::ZERO,
        },
        token_file: f.token_file.as_ref().map(|p| c.path(p, "admin.token_file")),
        hosts: f
            .hosts
            .iter()
            .filter_map(|h| {
                let name = h.get_ref().to_ascii_lowercase();
                let valid = !name.is_empty()
                    && name.len() <= 253
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
                if !valid {
                    c.problem(h, "admin.hosts", format!("`{}` is not a host name; write names like \"lgsp-admin.example.gov.vn\" (IP addresses and localhost are always answered)", h.get_ref()));
                }
                valid.then_some(name)
            })
            .collect(),
    }
}

pub(super) fn log(c: &mut Checker<'_>, f: &FileLog) -> LogConfig {
    if let Some(l) = &f.level
        && !defaults::LOG_LEVELS.contains(&l.get_ref().as_str())
        && !l.get_ref().contains('=')
    {
        c.problem(
            l,
            "log.level",
            "use error, warn, info, debug, trace or a filter like \"info,lgsp_proxy=debug\"",
        );
    }
    LogConfig {
        buffer_lines: c.bounded(
            f.buffer_lines.as_ref(),
            "log.buffer_lines",
            defaults::LOG_BUFFER_LINES,
            &defaults::LOG_BUFFER_LINES_RANGE,
        ),
        format: f.format.unwrap_or_default(),
        level: f
            .level
            .as_ref()
            .map_or_else(|| defaults::LOG_LEVEL.to_owned(), |l| l.get_ref().clone()),
    }
}

pub(super) fn pki(c: &Checker<'_>, f: &FilePki) -> PkiConfig {
    PkiConfig {
        dir: f.dir.as_ref().map_or_else(
            || c.base().join(defaults::PKI_DIR),
            |d| c.path(d, "pki.dir").path,
        ),
        dev_autogen: f.dev_autogen.unwrap_or(defaults::PKI_DEV_AUTOGEN),
    }
}

#[cfg(test)]
mod tests {
    use crate::tests::problems_of;

    #[test]
    fn log_level_must_be_a_level_or_a_filter() {
        let p = problems_of("level = \"info\"", "level = \"loud\"");
        assert_eq!(p[0].field, "log.level");
        assert!(p[0].message.contains("info,lgsp_proxy=debug"), "{p:?}");
        assert!(problems_of("level = \"info\"", "level = \"info,hyper=warn\"").is_empty());
    }

    #[test]
    fn admin_listen_is_an_address_and_distinct() {
        let p = problems_of("listen = \"127.0.0.1:9464\"", "listen = \"localhost\"");
        assert_eq!(p[0].field, "admin.listen");
        let p = problems_of("listen = \"127.0.0.1:9464\"", "listen = \"127.0.0.1:8443\"");
        assert!(
            p.iter()
                .any(|p| p.field == "admin.listen" && p.message.contains("already uses")),
            "{p:?}"
        );
    }
}
