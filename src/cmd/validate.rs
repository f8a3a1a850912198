//! `lgsp-gateway validate FILE…`: packet files checked offline with the gateway's own validator.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use lgsp_schema::{Catalog, Format, Options, Report};

/// What to validate, and how to print it.
pub struct Ask<'a> {
    /// The schema only, not the domain rules.
    pub schema_only: bool,
    /// The message type of every file; `None`: read from each.
    pub message_type: Option<&'a str>,
    /// A schema directory instead of the embedded schemas.
    pub schemas: Option<&'a Path>,
    /// One JSON object per file instead of text.
    pub json: bool,
    pub files: &'a [PathBuf],
}

pub fn validate(ask: &Ask<'_>) -> ExitCode {
    let catalog = match ask.schemas {
        Some(dir) => Catalog::load(dir),
        None => Catalog::embedded(),
    };
    let catalog = match catalog {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: the schemas do not load: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(t) = ask.message_type.filter(|t| !catalog.knows(t)) {
        eprintln!(
            "error: unknown message type {t}; use one of {}",
            lgsp_schema::MESSAGE_TYPES.join(", ")
        );
        return ExitCode::from(2);
    }
    let opts = Options {
        domain: !ask.schema_only,
        ..Options::default()
    };
    let mut invalid = 0usize;
    for path in ask.files {
        let shown = path.display().to_string();
        match check(&catalog, ask.message_type, &opts, path) {
            Err(e) => {
                invalid += 1;
                if ask.json {
                    println!(
                        "{}",
                        serde_json::json!({"file": shown, "valid": false, "error": e})
                    );
                } else {
                    println!("{shown}: error: {e}");
                }
            }
            Ok((t, format, report)) => {
                if !report.is_valid() {
                    invalid += 1;
                }
                print_verdict(&shown, t, format, &report, ask.json);
            }
        }
    }
    if invalid > 0 {
        eprintln!("{invalid} of {} file(s) invalid", ask.files.len());
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// One file's verdict, or why it could not be checked.
fn check(
    catalog: &Catalog,
    message_type: Option<&str>,
    opts: &Options,
    path: &Path,
) -> Result<(String, Format, Report), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let format = file_format(path, &bytes)
        .ok_or("cannot tell XML from JSON; name the file .xml or .json")?;
    let t = match message_type {
        Some(t) => t.to_owned(),
        None => catalog
            .detect(format, &bytes)
            .ok_or("cannot tell the message type from the root; pass --type")?
            .to_owned(),
    };
    let report = catalog.validate(&t, format, &bytes, opts);
    Ok((t, format, report))
}

/// The packet format of a file: its extension, else its first non-blank byte.
fn file_format(path: &Path, bytes: &[u8]) -> Option<Format> {
    Format::from_path(path).or_else(|| match bytes.iter().find(|b| !b.is_ascii_whitespace())? {
        b'<' => Some(Format::Xml),
        b'{' | b'[' => Some(Format::Json),
        _ => None,
    })
}

fn print_verdict(shown: &str, t: String, format: Format, report: &Report, json: bool) {
    let fmt = match format {
        Format::Xml => "xml",
        Format::Json => "json",
    };
    if json {
        println!(
            "{}",
            serde_json::json!({"file": shown, "message_type": t, "format": fmt, "valid": report.is_valid(), "errors": report.violations, "truncated": report.truncated})
        );
        return;
    }
    if report.is_valid() {
        println!("{shown}: valid ({t}, {fmt})");
        return;
    }
    let more = if report.truncated { "+" } else { "" };
    println!(
        "{shown}: invalid ({t}, {fmt}): {}{more} error(s)",
        report.violations.len()
    );
    for v in &report.violations {
        let at = match (v.line, v.column) {
            (Some(l), Some(c)) => format!("{l}:{c}"),
            (Some(l), None) => format!("{l}"),
            _ => "-".to_owned(),
        };
        println!("  {at} {} [{}] {}", v.path, v.rule, v.message);
    }
}
