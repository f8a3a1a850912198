//! `lgsp-gateway keys new`: a fresh API key, shown once, and the config entry holding its hash.

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
