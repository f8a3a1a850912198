//! `lgsp-gateway probe`: the connectivity probe of `lgsp-probe`.

use std::process::ExitCode;

pub fn probe(opts: &lgsp_probe::ProbeOptions, json: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return super::failed(format!("starting the runtime: {e}")),
    };
    let report = runtime.block_on(lgsp_probe::probe(opts));
    report.write(&mut std::io::stdout().lock(), json);
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
