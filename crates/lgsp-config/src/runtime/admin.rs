//! The process-wide sections: `[admin]` (metrics listener, drain), `[log]` and `[pki]`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::check::Checker;
use super::defaults;
use crate::file::{FileAdmin, FileLog, FilePki, LogFormat};

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
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
