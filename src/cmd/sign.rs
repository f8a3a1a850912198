//! `lgsp-gateway sign` and `lgsp-gateway verify`: an integrator signs an approval packet the way the gateway
//! verifies it, and checks one offline with the gateway's own code (`lgsp_sign`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use lgsp_config::{ConfigPath, SigningConfig};
use lgsp_sign::xml::SigningKey;

/// Where the signing key comes from.
pub enum KeySource<'a> {
    /// A PEM key and its PEM certificate chain (the signer's first).
    Pem { key: &'a Path, cert: &'a Path },
    /// A PKCS#12 file; its password in the named environment variable (none: empty).
    Pkcs12 {
        file: &'a Path,
        password_env: Option<&'a str>,
    },
}

/// The packet's format: its extension, else its first character.
fn is_json(path: &Path, bytes: &[u8]) -> bool {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => true,
        Some("xml") => false,
        _ => bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{'),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn load_key(source: &KeySource<'_>, pss: bool) -> Result<SigningKey, String> {
    match source {
        KeySource::Pem { key, cert } => {
            SigningKey::from_pem(&read(key)?, &read(cert)?, pss).map_err(|e| e.to_string())
        }
        KeySource::Pkcs12 { file, password_env } => {
            let password = match password_env {
                Some(var) => std::env::var(var).map_err(|_| {
                    format!("the variable {var} holding the PKCS#12 password is not set")
                })?,
                None => String::new(),
            };
            SigningKey::from_pkcs12(&read(file)?, &password, pss).map_err(|e| e.to_string())
        }
    }
}

/// Signs `packet` once more with the key; writes it to `out` (`-` or none: standard output).
pub fn sign(source: &KeySource<'_>, pss: bool, packet: &Path, out: Option<&Path>) -> ExitCode {
    match sign_file(source, pss, packet) {
        Ok(signed) => {
            let written = match out {
                Some(p) if p != Path::new("-") => {
                    std::fs::write(p, signed).map_err(|e| format!("{}: {e}", p.display()))
                }
                _ => {
                    print!("{signed}");
                    Ok(())
                }
            };
            written.map_or_else(super::failed, |()| ExitCode::SUCCESS)
        }
        Err(e) => super::failed(e),
    }
}

fn sign_file(source: &KeySource<'_>, pss: bool, packet: &Path) -> Result<String, String> {
    let key = load_key(source, pss)?;
    let bytes = read(packet)?;
    let text =
        std::str::from_utf8(&bytes).map_err(|e| format!("{}: not UTF-8: {e}", packet.display()))?;
    if is_json(packet, &bytes) {
        lgsp_sign::jws::sign_text(text, &key)
    } else {
        lgsp_sign::xml::sign(text, &key)
    }
    .map_err(|e| format!("{}: {e}", packet.display()))
}

/// What `verify` checks against.
pub struct VerifyAsk<'a> {
    /// Config whose `[signing]` names the CAs (none: the embedded default's), unless `ca` is given.
    pub config: Option<&'a Path>,
    pub ca: &'a [PathBuf],
    pub crls: &'a [PathBuf],
    /// The sending agency; none: the agency signature is not compared with a sender.
    pub agency: Option<&'a str>,
    /// When the packet arrived (RFC 3339); none: the arrival deadline is not checked.
    pub received: Option<&'a str>,
    pub json: bool,
    pub files: &'a [PathBuf],
}

fn signing_config(ask: &VerifyAsk<'_>) -> Result<SigningConfig, String> {
    if ask.ca.is_empty() {
        let config = super::load(ask.config)?;
        return config.signing.ok_or_else(|| {
            format!(
                "{} has no [signing] section; name the signing CA with --ca",
                config.source
            )
        });
    }
    let window = lgsp_config::defaults::SIGNING_APPROVAL_WINDOW;
    Ok(SigningConfig {
        ca: ask
            .ca
            .iter()
            .map(|p| ConfigPath::given(p, "--ca"))
            .collect(),
        crls: ask
            .crls
            .iter()
            .map(|p| ConfigPath::given(p, "--crl"))
            .collect(),
        identity_uri_prefix: lgsp_config::DEFAULT_IDENTITY_URI_PREFIX.to_owned(),
        approval_window_days: u32::try_from(window.as_secs() / 86_400).unwrap_or(5),
        approval_lateness: lgsp_config::defaults::SIGNING_APPROVAL_LATENESS,
        check_coverage: false,
    })
}

pub fn verify(ask: &VerifyAsk<'_>) -> ExitCode {
    let policy = match signing_config(ask).and_then(|s| {
        lgsp_proxy::signing_policy(&s).map_err(|problems| {
            lgsp_config::ConfigError {
                source: "the signing CAs".into(),
                problems,
            }
            .to_string()
        })
    }) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let received = match ask.received.map(|r| {
        lgsp_sign::approval::parse_time(r)
            .ok_or_else(|| format!("--received {r}: not an RFC 3339 time"))
    }) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut refused = 0usize;
    for path in ask.files {
        let shown = path.display().to_string();
        let verdict = read(path).map(|bytes| {
            if is_json(path, &bytes) {
                policy.verify_json(&bytes, ask.agency, received)
            } else {
                policy.verify_xml(&bytes, ask.agency, received)
            }
        });
        let signer = |s: &lgsp_sign::Signer| serde_json::json!({"subject": s.subject, "uris": s.uris, "serial": s.serial, "sha256": s.fingerprint});
        match verdict {
            Err(e) => {
                refused += 1;
                if ask.json {
                    println!(
                        "{}",
                        serde_json::json!({"file": shown, "approved": false, "error": e})
                    );
                } else {
                    println!("{shown}: error: {e}");
                }
            }
            Ok(Ok(a)) => {
                if ask.json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "file": shown, "approved": true, "month": a.month,
                            "approved_at": a.approved_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                            "person": signer(&a.person), "agency": signer(&a.agency),
                        })
                    );
                } else {
                    println!(
                        "{shown}: approved ({}): person {} (serial {}), agency {} (serial {})",
                        a.month,
                        a.person.subject,
                        a.person.serial,
                        a.agency.uris.join(", "),
                        a.agency.serial
                    );
                }
            }
            Ok(Err(violations)) => {
                refused += 1;
                if ask.json {
                    println!(
                        "{}",
                        serde_json::json!({"file": shown, "approved": false, "errors": violations})
                    );
                } else {
                    println!("{shown}: not approved: {} problem(s)", violations.len());
                    for v in &violations {
                        println!("  {} [{}] {}", v.path, v.rule, v.message);
                    }
                }
            }
        }
    }
    if refused > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
