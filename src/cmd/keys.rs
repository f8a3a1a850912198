//! `lgsp-gateway keys new`: a fresh API key, shown once, and the config entry holding its hash. `keys rotate`: a new
//! key beside the agency's current ones, which get a `not_after` at the end of the overlap — printed, or written
//! into the operator's gateway.toml with its comments and layout kept. `keys csr`: a key and a request for the
//! agency's signing certificate, to send to a real CA.

use std::path::Path;
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

/// What `keys rotate` asks for.
pub struct Rotation<'a> {
    pub config: &'a Path,
    pub agency: &'a str,
    pub kind: KeyKind,
    /// How long the current keys keep working beside the new one.
    pub overlap: std::time::Duration,
    pub label: Option<&'a str>,
    /// Write the file (after checking the result as check-config does) rather than print the change.
    pub write: bool,
}

/// `keys rotate`: a new key for `agency`; its current keys of the kind end at now + overlap.
pub fn rotate(r: &Rotation<'_>) -> ExitCode {
    if !lgsp_config::valid_agency_code(r.agency) {
        return super::failed(format!(
            "`{}` is not an agency code (mã định danh): dot-separated groups of 0-9 and A-Z, e.g. 000.00.00.H29",
            r.agency
        ));
    }
    let source = r.config.display().to_string();
    let text = match std::fs::read_to_string(r.config) {
        Ok(t) => t,
        Err(e) => return super::failed(format!("{source}: cannot read the file: {e}")),
    };
    let now = time::OffsetDateTime::now_utc();
    let overlap = time::Duration::try_from(r.overlap).unwrap_or(time::Duration::MAX);
    let end = now.saturating_add(overlap);
    let key = match lgsp_auth::generate_key(r.kind) {
        Ok(k) => k,
        Err(e) => return super::failed(format!("the OS random generator failed: {e}")),
    };
    let label = r.label.map_or_else(
        || format!("rotated-{}", vietnam_time(now).date()),
        str::to_owned,
    );
    let new_key = NewKey {
        sha256: lgsp_auth::sha256_hex(&key),
        kind: r.kind,
        label: &label,
    };
    let rotated = match rotate_text(&text, r.agency, &new_key, end) {
        Ok(x) => x,
        Err(e) => return super::failed(format!("{source}: {e}")),
    };
    // The result must pass what check-config checks before anyone relies on it.
    if let Err(e) = lgsp_config::parse(&rotated.text, &source, Path::new(".")) {
        return super::failed(format!(
            "the rotated config does not check, nothing written:\n{e}"
        ));
    }
    let until = format_instant(end);
    println!(
        "New API key for {} ({}), shown once — hand it over on a secure channel:",
        r.agency,
        r.kind.as_str()
    );
    println!("  {key}");
    if r.write {
        if let Err(e) = replace_file(r.config, &rotated.text) {
            return super::failed(format!("{source}: writing the rotated config: {e}"));
        }
        println!(
            "{source}: the new key added as \"{label}\"; {} current key(s) end at {until}.",
            rotated.retired
        );
        println!(
            "Next: lgsp-gateway check-config {source} && systemctl reload lgsp-gateway (or SIGHUP); after {until} \
             the old key answers 401 auth.key_outside_validity — then remove its entry."
        );
    } else {
        println!(
            "The agency's keys after the rotation ({} current key(s) end at {until}); put them in {source}, or run \
             again with --write to have them written (with a key of its own):",
            rotated.retired
        );
        println!("keys = {}", rotated.keys.trim());
    }
    ExitCode::SUCCESS
}

/// The key `rotate_text` adds.
struct NewKey<'a> {
    sha256: String,
    kind: KeyKind,
    label: &'a str,
}

/// The config text after a rotation, the agency's new `keys` array as written in it, and how many keys were
/// given their end.
#[derive(Debug)]
struct Rotated {
    text: String,
    keys: String,
    retired: usize,
}

/// Adds `key` to the `keys` of the `[[agency]]` with `code`, and gives each of its keys of the same kind that would
/// work past `end` a `not_after = end`; everything else in `text` (comments, layout) is kept.
fn rotate_text(
    text: &str,
    code: &str,
    key: &NewKey<'_>,
    end: time::OffsetDateTime,
) -> Result<Rotated, String> {
    use toml_edit::{DocumentMut, InlineTable, Item, Value};
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| format!("not TOML: {e}"))?;
    let agency = doc
        .get_mut("agency")
        .and_then(Item::as_array_of_tables_mut)
        .and_then(|list| {
            list.iter_mut()
                .find(|t| t.get("code").and_then(Item::as_str) == Some(code))
        })
        .ok_or_else(|| {
            format!("no [[agency]] with code = \"{code}\": add the agency (with its first key from `keys new`) first")
        })?;
    let keys = agency
        .entry("keys")
        .or_insert(Item::Value(Value::Array(toml_edit::Array::new())))
        .as_array_mut()
        .ok_or_else(|| {
            format!("`keys` of agency {code} is not an inline array: write keys = [ {{ sha256 = \"…\", kind = \"…\" }}, … ]")
        })?;
    let end_unix = end.unix_timestamp();
    let until = format_instant(end);
    let mut retired = 0;
    for (i, item) in keys.iter_mut().enumerate() {
        let entry = item.as_inline_table_mut().ok_or_else(|| {
            format!("keys[{i}] of agency {code} is not a table {{ sha256 = \"…\", kind = \"…\" }}")
        })?;
        if entry.get("kind").and_then(Value::as_str) != Some(key.kind.as_str()) {
            continue;
        }
        let ends = match entry.get("not_after").and_then(Value::as_str) {
            Some(t) => Some(lgsp_config::instant(t).ok_or_else(|| {
                format!("keys[{i}].not_after of agency {code}: `{t}` is not a time")
            })?),
            None => None,
        };
        if ends.is_none_or(|t| t > end_unix) {
            entry.insert("not_after", Value::from(until.as_str()));
            entry.fmt();
            retired += 1;
        }
    }
    let mut added = InlineTable::new();
    added.insert("sha256", Value::from(key.sha256.as_str()));
    added.insert("kind", Value::from(key.kind.as_str()));
    added.insert("label", Value::from(key.label));
    // Laid out as the entries before it: a multi-line array keeps one entry per line, a one-line array stays one.
    let own_line = keys
        .iter()
        .last()
        .and_then(|v| v.decor().prefix())
        .and_then(|p| p.as_str())
        .filter(|p| p.contains('\n'))
        .map(str::to_owned);
    let mut value = Value::InlineTable(added);
    match own_line {
        Some(p) => value.decor_mut().set_prefix(p),
        None => value
            .decor_mut()
            .set_prefix(if keys.is_empty() { "" } else { " " }),
    }
    keys.push_formatted(value);
    let keys_text = keys.to_string();
    Ok(Rotated {
        text: doc.to_string(),
        keys: keys_text,
        retired,
    })
}

/// `t` in Vietnam time (UTC+07:00), as operators read it.
fn vietnam_time(t: time::OffsetDateTime) -> time::OffsetDateTime {
    t.to_offset(time::macros::offset!(+7))
}

/// RFC 3339 in Vietnam time, to the second (what `not_after` holds).
fn format_instant(t: time::OffsetDateTime) -> String {
    let t = vietnam_time(t).replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Replaces `path` with `text` at once (a file beside it, renamed over it), keeping its mode and owner; a symbolic
/// link (a config under configuration management) stays one, its target replaced.
fn replace_file(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let path = std::fs::canonicalize(path)?;
    let path = path.as_path();
    let meta = std::fs::metadata(path)?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().map_or_else(
        || "gateway.toml".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let tmp = dir.join(format!(".{name}.rotate-{}", std::process::id()));
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // Owner-only until it has the original's mode; never through a file or link already there (then refused).
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = (|| {
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::set_permissions(&tmp, meta.permissions())?;
        // Only root can give a file away; anyone else keeps their own (and the group, when they may).
        let _ = std::os::unix::fs::chown(&tmp, Some(meta.uid()), Some(meta.gid()));
        std::fs::rename(&tmp, path)?;
        // The rename itself made durable.
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() && tmp.exists() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"# the operator's comment
[[agency]]
code = "000.00.00.H29"
status = "official"
# H29's keys
keys = [
    { sha256 = "aa", kind = "production" },     # the 2026 key
    { sha256 = "bb", kind = "production", not_after = "2026-01-01" },
    { sha256 = "cc", kind = "trial" },
    { sha256 = "dd", kind = "production", not_after = "2099-01-01" },
]

[[agency]]
code = "000.00.15.H26"
status = "official"
keys = [{ sha256 = "ee", kind = "production" }]
"#;

    fn key<'a>(label: &'a str) -> NewKey<'a> {
        NewKey {
            sha256: "ff".to_owned(),
            kind: KeyKind::Production,
            label,
        }
    }

    fn end() -> time::OffsetDateTime {
        time::macros::datetime!(2027-01-04 09:00:00 UTC)
    }

    #[test]
    fn the_current_keys_of_the_kind_end_and_the_new_one_is_added_in_the_same_layout() {
        let r = rotate_text(CONFIG, "000.00.00.H29", &key("hrm-2027"), end()).expect("rotated");
        assert_eq!(r.retired, 2, "{}", r.text);
        let expected = CONFIG
            .replace(
                r#"{ sha256 = "aa", kind = "production" },"#,
                r#"{ sha256 = "aa", kind = "production", not_after = "2027-01-04T16:00:00+07:00" },"#,
            )
            .replace(
                r#"{ sha256 = "dd", kind = "production", not_after = "2099-01-01" },"#,
                r#"{ sha256 = "dd", kind = "production", not_after = "2027-01-04T16:00:00+07:00" },"#,
            )
            .replace(
                "not_after = \"2027-01-04T16:00:00+07:00\" },\n]",
                "not_after = \"2027-01-04T16:00:00+07:00\" },\n    { sha256 = \"ff\", kind = \"production\", label = \"hrm-2027\" },\n]",
            );
        assert_eq!(r.text, expected);
    }

    #[test]
    fn another_agency_and_a_one_line_array_are_handled() {
        let r = rotate_text(CONFIG, "000.00.15.H26", &key("x"), end()).expect("rotated");
        assert_eq!(r.retired, 1);
        assert!(
            r.text.contains(r#"keys = [{ sha256 = "ee", kind = "production", not_after = "2027-01-04T16:00:00+07:00" }, { sha256 = "ff", kind = "production", label = "x" }]"#),
            "{}",
            r.text
        );
        assert!(
            r.text
                .contains(r#"{ sha256 = "aa", kind = "production" },"#)
        );
    }

    #[test]
    fn an_unknown_agency_or_a_foreign_layout_is_refused_with_the_fix() {
        let e = rotate_text(CONFIG, "000.00.00.X01", &key("x"), end()).unwrap_err();
        assert!(
            e.contains("no [[agency]] with code = \"000.00.00.X01\""),
            "{e}"
        );
        let tables = "[[agency]]\ncode = \"000.00.00.H29\"\n[[agency.keys]]\nsha256 = \"aa\"\nkind = \"production\"\n";
        let e = rotate_text(tables, "000.00.00.H29", &key("x"), end()).unwrap_err();
        assert!(e.contains("not an inline array"), "{e}");
        let bad = "[[agency]]\ncode = \"000.00.00.H29\"\nkeys = [{ sha256 = \"aa\", kind = \"production\", not_after = \"soon\" }]\n";
        let e = rotate_text(bad, "000.00.00.H29", &key("x"), end()).unwrap_err();
        assert!(e.contains("`soon` is not a time"), "{e}");
        assert!(rotate_text("not = [toml", "000.00.00.H29", &key("x"), end()).is_err());
    }

    #[test]
    fn a_replaced_file_keeps_its_mode_and_a_link_stays_a_link() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        let real = dir.path().join("gateway.toml");
        std::fs::write(&real, "old").expect("write");
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).expect("mode");
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&real, &link).expect("link");
        replace_file(&link, "new").expect("replaced");
        assert!(
            std::fs::symlink_metadata(&link)
                .expect("link")
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(&real).expect("read"), "new");
        let mode = std::fs::metadata(&real).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        // Nothing left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 2);
        // A file already where the new one would be written: refused, that file and the config untouched.
        let squatter = dir
            .path()
            .join(format!(".gateway.toml.rotate-{}", std::process::id()));
        std::fs::write(&squatter, "someone else's").expect("write");
        assert!(replace_file(&real, "newer").is_err());
        assert_eq!(
            std::fs::read_to_string(&squatter).expect("read"),
            "someone else's"
        );
        assert_eq!(std::fs::read_to_string(&real).expect("read"), "new");
    }

    #[test]
    fn an_agency_without_keys_gets_its_first() {
        let r = rotate_text(
            "[[agency]]\ncode = \"000.00.00.H29\"\nstatus = \"trial\"\n",
            "000.00.00.H29",
            &key("first"),
            end(),
        )
        .expect("rotated");
        assert_eq!(r.retired, 0);
        assert!(
            r.text
                .contains(r#"keys = [{ sha256 = "ff", kind = "production", label = "first" }]"#),
            "{}",
            r.text
        );
    }
}
