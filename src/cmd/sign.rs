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

/// Where the signing key comes from, as the command line names it.
pub enum KeyFiles {
    Pem {
        key: PathBuf,
        cert: PathBuf,
    },
    Pkcs12 {
        file: PathBuf,
        password_env: Option<String>,
    },
}

impl KeyFiles {
    /// The key, loaded.
    pub fn load(&self) -> Result<SigningKey, String> {
        let source = match self {
            KeyFiles::Pem { key, cert } => KeySource::Pem { key, cert },
            KeyFiles::Pkcs12 { file, password_env } => KeySource::Pkcs12 {
                file,
                password_env: password_env.as_deref(),
            },
        };
        load_key(&source, false)
    }
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
        let bytes = read(path);
        if let Ok(bytes) = &bytes
            && !is_json(path, bytes)
            && is_export(bytes)
        {
            refused += usize::from(!verify_export(&policy, &shown, bytes, ask.json));
            continue;
        }
        let verdict = bytes.map(|bytes| {
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

/// Whether an XML file is a signed journal export (its root is `XuatNhatKy`).
fn is_export(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(512)];
    String::from_utf8_lossy(head).contains(&format!("<{}", lgsp_sign::export::ROOT))
}

/// Verifies a signed journal export: its one signature (chain to the signing CAs, valid now) and its records'
/// hash chain (each record's hash recomputed, each linked to the one before). Prints the verdict; true if good.
fn verify_export(policy: &lgsp_sign::Policy, shown: &str, bytes: &[u8], json: bool) -> bool {
    let verdict = check_export(policy, bytes);
    match (&verdict, json) {
        (Ok((signer, n, chains)), true) => println!(
            "{}",
            serde_json::json!({"file": shown, "export": true, "valid": true, "records": n,
                "chains": chains.iter().map(|(c, first, last)| serde_json::json!({"chain": c, "first_seq": first, "last_seq": last})).collect::<Vec<_>>(),
                "signer": {"subject": signer.subject, "serial": signer.serial, "sha256": signer.fingerprint}})
        ),
        (Ok((signer, n, chains)), false) => {
            let spans: Vec<String> = chains
                .iter()
                .map(|(c, first, last)| format!("chain {c}: seq {first}–{last}"))
                .collect();
            println!(
                "{shown}: journal export of {n} records ({}), each chain whole, signed by {} (serial {})",
                spans.join(", "),
                signer.subject,
                signer.serial
            )
        }
        (Err(e), true) => println!(
            "{}",
            serde_json::json!({"file": shown, "export": true, "valid": false, "error": e})
        ),
        (Err(e), false) => println!("{shown}: NOT a valid journal export: {e}"),
    }
    verdict.is_ok()
}

/// A verified export: its signer, its record count, and each chain's first and last record.
type ExportChecked = (lgsp_sign::Signer, u64, Vec<(String, i64, i64)>);

fn check_export(policy: &lgsp_sign::Policy, bytes: &[u8]) -> Result<ExportChecked, String> {
    use lgsp_sign::xml::{self, Check};
    let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
    let doc = xml::parse(text).map_err(|e| e.0)?;
    let found = xml::verify(&doc);
    let [one] = found.as_slice() else {
        return Err(format!(
            "it carries {} signatures; an export carries one",
            found.len()
        ));
    };
    let chain = match &one.check {
        Check::Verified { chain } => chain,
        Check::DigestMismatch(why) => return Err(format!("changed after it was signed ({why})")),
        Check::Invalid(why) => return Err(format!("the signature does not verify ({why})")),
        Check::Unsupported(why) => {
            return Err(format!("the signature is outside the profile: {why}"));
        }
    };
    let signer = policy
        .trust
        .check(chain, time::OffsetDateTime::now_utc())
        .map_err(|e| format!("the signer: {e}"))?;
    let root = doc.document_element().ok_or("no root element")?;
    let mut n = 0u64;
    // Per chain, in order of first appearance: (chain, first seq, last seq, last hash).
    let mut chains: Vec<(String, i64, i64, String)> = Vec::new();
    for r in xml::children(&doc, root, lgsp_sign::export::NS, lgsp_sign::export::RECORD) {
        let attr = |name: &str| doc.get_attribute(r, name).unwrap_or_default().to_owned();
        let seq: i64 = attr("seq")
            .parse()
            .map_err(|_| format!("a record's seq `{}` is not a number", attr("seq")))?;
        let (chain, link, hash) = (attr("chain"), attr("prevHash"), attr("hash"));
        let content = doc.text_content_deep(r);
        if lgsp_journal::chain::hash(seq, &link, &content) != hash {
            return Err(format!(
                "chain {chain}, record {seq}: its content does not match its hash"
            ));
        }
        match chains.iter_mut().find(|c| c.0 == chain) {
            Some(c) => {
                if c.3 != link || seq != c.2 + 1 {
                    return Err(format!(
                        "chain {chain}, record {seq}: it does not follow record {}",
                        c.2
                    ));
                }
                c.2 = seq;
                c.3 = hash;
            }
            None => chains.push((chain, seq, seq, hash)),
        }
        n += 1;
    }
    Ok((
        signer,
        n,
        chains.into_iter().map(|(c, f, l, _)| (c, f, l)).collect(),
    ))
}
