//! `lgsp-gateway certs init`: the dev PKI.

use std::path::PathBuf;
use std::process::ExitCode;

pub fn init(dir: Option<PathBuf>, force: bool) -> ExitCode {
    let dir = match dir {
        Some(d) => d,
        None => match super::load(None) {
            Ok(cfg) => cfg.pki.dir,
            Err(e) => return super::failed(e),
        },
    };
    if lgsp_tls::devpki::exists(&dir) && !force {
        return super::failed(format!(
            "{} already holds a dev PKI (ca.pem); pass --force to replace all of it",
            dir.display()
        ));
    }
    let report = match lgsp_tls::devpki::init(&dir) {
        Ok(r) => r,
        Err(e) => return super::failed(e),
    };
    println!("wrote the dev PKI to {}:", report.dir.display());
    for f in &report.files {
        println!("  {f}");
    }
    println!("Dev certificates only: see certs/README.md for production PKI.");
    ExitCode::SUCCESS
}
