//! One module per subcommand. Each returns the process's exit code and prints its own errors.

pub mod certs;
pub mod check_config;
pub mod import;
pub mod journal;
pub mod keys;
pub mod logging;
pub mod probe;
pub mod reconcile;
pub mod run;
pub mod sign;
pub mod validate;

use std::process::ExitCode;

/// `error: …` on stderr, exit 1.
pub fn failed(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}

/// The config at `path`, or the embedded default.
pub fn load(path: Option<&std::path::Path>) -> Result<lgsp_config::Config, String> {
    match path {
        Some(p) => lgsp_config::load(p),
        None => lgsp_config::embedded(),
    }
    .map_err(|e| format!("the config is invalid:\n{e}"))
}

/// A runtime for one command's async work.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))
}
