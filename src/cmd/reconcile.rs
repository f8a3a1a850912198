//! `lgsp-gateway reconcile`: the agency's list of sent packets against the gateway's messages route
//! (`lgsp_probe::reconcile`).

use std::path::Path;
use std::process::ExitCode;

use lgsp_probe::ProbeOptions;
use lgsp_probe::reconcile::{fetch, read_sent, reconcile as compare};

pub fn reconcile(opts: &ProbeOptions, from: &str, to: &str, sent: &Path, json: bool) -> ExitCode {
    let text = match std::fs::read_to_string(sent) {
        Ok(t) => t,
        Err(e) => return super::failed(format!("{}: {e}", sent.display())),
    };
    let list = match read_sent(&text) {
        Ok(l) => l,
        Err(e) => return super::failed(format!("{}: {e}", sent.display())),
    };
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(e) => return super::failed(e),
    };
    let held = match runtime.block_on(fetch(opts, from, to)) {
        Ok(h) => h,
        Err(e) => return super::failed(e),
    };
    let r = compare(list, held);
    if let Err(e) = r.write(&mut std::io::stdout().lock(), json) {
        return super::failed(format!("writing the result: {e}"));
    }
    if r.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
