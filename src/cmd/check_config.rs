//! `lgsp-gateway check-config FILE [--connect]`: the file checked as `run` loads it — parsed, then prepared by
//! the same function `run` and reload use — so it refuses exactly what `run` refuses, each problem as
//! `FILE:LINE:COLUMN: field: what to do`. With `--connect` it also opens the rate-limit backend and every
//! upstream's TLS as each hop, and reports each.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use lgsp_config::ConfigError;

pub fn check(file: &Path, connect: Option<Duration>) -> ExitCode {
    let cfg = match lgsp_config::load(file) {
        Ok(c) => c,
        Err(e) => return refused(file, &e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return super::failed(format!("starting the runtime: {e}")),
    };
    let metrics = match lgsp_metrics::Metrics::new() {
        Ok(m) => m,
        Err(e) => return super::failed(format!("metrics registry: {e}")),
    };
    runtime.block_on(async {
        let prepared = match lgsp_proxy::prepare(&cfg, &metrics, None, None) {
            Ok(p) => p,
            Err(e) => return refused(file, &e),
        };
        if let Some(timeout) = connect {
            let unreachable = report_connections(&cfg, &prepared, timeout).await;
            if !unreachable.problems.is_empty() {
                return refused(file, &unreachable);
            }
        }
        let routes: usize = cfg.hops.iter().map(|h| h.routes.len()).sum();
        println!(
            "{}: ok ({} hops, {routes} routes, {} agencies)",
            file.display(),
            cfg.hops.len(),
            cfg.agencies.len()
        );
        ExitCode::SUCCESS
    })
}

fn refused(file: &Path, e: &ConfigError) -> ExitCode {
    eprintln!("{e}");
    eprintln!("{}: {} problem(s)", file.display(), e.problems.len());
    ExitCode::FAILURE
}

/// Prints what answered; returns what did not, as problems at the lines that name them.
async fn report_connections(
    cfg: &lgsp_config::Config,
    prepared: &lgsp_proxy::Prepared,
    timeout: Duration,
) -> ConfigError {
    let mut failed = ConfigError {
        source: cfg.source.clone(),
        problems: Vec::new(),
    };
    for reach in lgsp_proxy::connect(cfg, prepared, timeout).await {
        match reach.outcome {
            Ok(answer) => println!("✓ {}: {answer}", reach.what),
            Err(e) => {
                println!("✗ {}: {e}", reach.what);
                failed
                    .problems
                    .push(reach.origin.problem(format!("{}: {e}", reach.what)));
            }
        }
    }
    failed
}
