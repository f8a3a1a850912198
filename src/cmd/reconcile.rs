//! `lgsp-gateway reconcile`: the agency's list of sent packets against the gateway's messages route
//! (`lgsp_probe::reconcile`).

use std::path::Path;
use std::process::ExitCode;

use lgsp_probe::ProbeOptions;
use lgsp_probe::reconcile::{end_to_end, fetch, read_sent, reconcile as compare};

/// The period, the agency's list, and (end to end) the gateway's receipt route.
pub struct Ask<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub sent: &'a Path,
    pub json: bool,
    pub receipts: Option<&'a str>,
}

pub fn reconcile(opts: &ProbeOptions, ask: &Ask<'_>) -> ExitCode {
    let Ask {
        from,
        to,
        sent,
        json,
        receipts,
    } = *ask;
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
    let mut r = compare(list, held);
    if let Some(receipts) = receipts
        && let Err(e) = runtime.block_on(end_to_end(opts, receipts, &mut r))
    {
        return super::failed(e);
    }
    if let Err(e) = r.write(&mut std::io::stdout().lock(), json) {
        return super::failed(format!("writing the result: {e}"));
    }
    if r.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
