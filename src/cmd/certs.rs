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

/// What `certs csr` asks for.
pub struct HopRequest<'a> {
    pub identity: &'a str,
    pub names: &'a [String],
    pub organisation: Option<&'a str>,
    pub algorithm: lgsp_tls::csr::KeyAlgorithm,
    pub out: &'a std::path::Path,
    pub identity_prefix: &'a str,
}

/// `certs csr --hop IDENTITY --dns HOST…`: a hop's key and its certificate request for a real CA.
pub fn csr(r: &HopRequest<'_>) -> ExitCode {
    if r.names.is_empty() {
        return super::failed("name at least one --dns HOST clients reach the hop by");
    }
    let request = match lgsp_tls::csr::hop_request(
        r.identity,
        r.names,
        r.organisation,
        r.algorithm,
        r.identity_prefix,
    ) {
        Ok(req) => req,
        Err(e) => return super::failed(e.to_string()),
    };
    match lgsp_tls::csr::write_request(r.out, r.identity, &request) {
        Ok((key, csr)) => {
            println!("key (keep it; owner-only): {}", key.display());
            println!("certificate request:       {}", csr.display());
            println!(
                "Send the request to the CA; point [hop.tls] cert/key (and [hop.upstream_tls]) at the certificate it answers with and this key, then reload. Check the request with: openssl req -in {} -noout -verify -text",
                csr.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => super::failed(format!("writing the request into {}: {e}", r.out.display())),
    }
}
