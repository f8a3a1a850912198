//! The process's log: one line per event on stderr, written by a background thread from a bounded queue so that
//! no request ever waits for the log (lines beyond `[log] buffer_lines` are dropped and counted), coloured only
//! when stderr is a terminal, its filter (`[log] level`) swapped by a reload unless `RUST_LOG` set it.

use std::io::IsTerminal;
use std::sync::Arc;

use lgsp_config::{Config, LogFormat};
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

/// The installed log; keep it for the life of the process (dropping it flushes the queue).
pub struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set: it wins over `[log] level`, at start and on reload.
    from_env: bool,
    dropped: ErrorCounter,
    _flush: WorkerGuard,
}

impl Logging {
    /// Installs the process's subscriber for `cfg`; `None` if one is already installed.
    pub fn init(cfg: &Config) -> Option<Logging> {
        let env = EnvFilter::try_from_default_env().ok();
        let from_env = env.is_some();
        let filter = env.unwrap_or_else(|| EnvFilter::new(&cfg.log.level));
        let (filter, handle) = reload::Layer::new(filter);
        let (writer, flush) = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(cfg.log.buffer_lines)
            .thread_name("lgsp-log")
            .finish(std::io::stderr());
        let dropped = writer.error_counter();
        let ansi = std::io::stderr().is_terminal();
        let output = match cfg.log.format {
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(writer)
                .boxed(),
            LogFormat::Human => tracing_subscriber::fmt::layer()
                .with_ansi(ansi)
                .with_writer(writer)
                .boxed(),
        };
        tracing_subscriber::registry()
            .with(filter)
            .with(output)
            .try_init()
            .ok()?;
        Some(Logging {
            filter: handle,
            from_env,
            dropped,
            _flush: flush,
        })
    }

    /// Applies a reloaded config's `[log] level` (unless `RUST_LOG` set the filter).
    pub fn apply(&self, cfg: &Config) {
        if self.from_env {
            return;
        }
        match self.filter.reload(EnvFilter::new(&cfg.log.level)) {
            Ok(()) => tracing::info!(level = %cfg.log.level, "log level reloaded"),
            Err(e) => tracing::warn!(error = %e, "log level not reloaded"),
        }
    }

    /// Lines dropped so far because stderr was slower than the gateway.
    pub fn dropped_lines(&self) -> usize {
        self.dropped.dropped_lines()
    }
}

/// Keeps `lgsp_log_lines_dropped_total` equal to what the writer dropped, once a second.
pub fn export_dropped(logging: Arc<Logging>, metrics: Arc<lgsp_metrics::Metrics>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        let mut seen = 0usize;
        loop {
            tick.tick().await;
            let now = logging.dropped_lines();
            if now > seen {
                metrics
                    .log_lines_dropped
                    .inc_by(u64::try_from(now - seen).unwrap_or(u64::MAX));
                seen = now;
            }
        }
    });
}
