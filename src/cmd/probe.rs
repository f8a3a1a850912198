//! `lgsp-gateway probe`: the connectivity probe of `lgsp-probe`, its options from the command line over a profile.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use lgsp_probe::Profile;

pub fn probe(
    profile: Option<&Path>,
    given: Profile,
    api_key: Option<String>,
    timeout: u64,
    json: bool,
) -> ExitCode {
    let file = match profile.map(Profile::read).transpose() {
        Ok(p) => p.unwrap_or_default(),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let lookup = |name: &str| std::env::var(name).ok();
    let opts = match file.options(given, api_key, lookup, Duration::from_secs(timeout)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return super::failed(format!("starting the runtime: {e}")),
    };
    let report = runtime.block_on(lgsp_probe::probe(&opts));
    report.write(&mut std::io::stdout().lock(), json);
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
