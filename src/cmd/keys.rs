//! `lgsp-gateway keys new`: a fresh API key, shown once, and the config entry holding its hash. `keys csr`: a key and
//! a request for the agency's signing certificate, to send to a real CA.

use std::process::ExitCode;

use lgsp_config::KeyKind;

pub fn new(agency: &str, kind: KeyKind) -> ExitCode {
    if !lgsp_config::valid_agency_code(agency) {
        return super::failed(format!(
            "`{agency}` is not an agency code (mã định danh): dot-separated groups of 0-9 and A-Z, e.g. 000.00.00.H29"
        ));
    }
    let key = match lgsp_auth::generate_key(kind) {
        Ok(k) => k,
        Err(e) => return super::failed(format!("the OS random generator failed: {e}")),
    };
    let hash = lgsp_auth::sha256_hex(&key);
    println!(
        "API key for {agency} ({}), shown once — hand it over on a secure channel:",
        kind.as_str()
    );
    println!("  {key}");
    println!(
        "Add this entry to `keys` of the [[agency]] with code = \"{agency}\" in gateway.toml:"
    );
    println!("  {{ sha256 = \"{hash}\", kind = \"{}\" }},", kind.as_str());
    ExitCode::SUCCESS
}

pub fn csr(
    agency: &str,
    name: Option<&str>,
    algorithm: lgsp_tls::csr::KeyAlgorithm,
    out: &std::path::Path,
    identity_prefix: &str,
) -> ExitCode {
    let request = match lgsp_tls::csr::signing_request(agency, name, algorithm, identity_prefix) {
        Ok(r) => r,
        Err(e) => return super::failed(e.to_string()),
    };
    let stem = format!("{agency}-signing");
    match lgsp_tls::csr::write_request(out, &stem, &request) {
        Ok((key, csr)) => {
            println!("key (keep it; owner-only): {}", key.display());
            println!("certificate request:       {}", csr.display());
            println!(
                "Send the request to the CA the Ministry of Home Affairs names for signing approvals; install the certificate it answers with beside the key. Check the request with: openssl req -in {} -noout -verify -text",
                csr.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => super::failed(format!("writing the request into {}: {e}", out.display())),
    }
}
