//! Agreement with the reference tools: on every corpus file our schema-only verdict (valid or not, domain rules
//! off) equals `xmllint --noout --schema` for XML and the Python `jsonschema` package for JSON.

use std::path::{Path, PathBuf};
use std::process::Command;

use lgsp_schema::{Catalog, Format, Options};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/cbccvc")
}

fn files(ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in ["valid", "invalid"] {
        for e in std::fs::read_dir(root().join("samples").join(sub)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == ext) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// In CI (`CI` set) a missing tool fails the test; elsewhere it is skipped with the reason.
fn available(what: &str, probe: &mut Command) -> bool {
    let ok = probe.output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{what} is missing in CI: .ci/run must install it"
        );
        eprintln!("skipped: {what} is not installed (run .ci/run, or install it)");
    }
    ok
}

fn ours(format: Format, path: &Path) -> bool {
    let catalog = Catalog::embedded().unwrap();
    let t = path
        .file_name()
        .unwrap()
        .to_string_lossy()
        .split('-')
        .next()
        .unwrap()
        .to_owned();
    let opts = Options {
        domain: false,
        ..Options::default()
    };
    catalog
        .validate(&t, format, &std::fs::read(path).unwrap(), &opts)
        .is_valid()
}

#[test]
fn xml_verdicts_equal_xmllint() {
    if !available(
        "xmllint (libxml2-utils)",
        Command::new("xmllint").arg("--version"),
    ) {
        return;
    }
    let mut differ = Vec::new();
    let all = files("xml");
    for f in &all {
        let t = f
            .file_name()
            .unwrap()
            .to_string_lossy()
            .split('-')
            .next()
            .unwrap()
            .to_owned();
        let out = Command::new("xmllint")
            .arg("--noout")
            .arg("--schema")
            .arg(root().join(format!("{t}.xsd")))
            .arg(f)
            .output()
            .unwrap();
        let theirs = out.status.success();
        if theirs != ours(Format::Xml, f) {
            differ.push(format!(
                "{}: xmllint {theirs} — {}",
                f.display(),
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .next()
                    .unwrap_or("")
            ));
        }
    }
    assert!(all.len() >= 80);
    assert!(
        differ.is_empty(),
        "verdicts differ on {} of {} files:\n{}",
        differ.len(),
        all.len(),
        differ.join("\n")
    );
}

#[test]
fn json_verdicts_equal_python_jsonschema() {
    if !available(
        "python3 with jsonschema",
        Command::new("python3").args(["-c", "import jsonschema"]),
    ) {
        return;
    }
    let all = files("json");
    let script = r#"
import json, sys
from jsonschema import Draft202012Validator
root = sys.argv[1]
for path in sys.argv[2:]:
    t = path.rsplit("/", 1)[1].split("-")[0]
    schema = json.load(open(f"{root}/{t}.schema.json", encoding="utf-8"))
    try:
        doc = json.load(open(path, encoding="utf-8"))
        ok = Draft202012Validator(schema).is_valid(doc)
    except Exception:
        ok = False
    print("valid" if ok else "invalid")
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(root())
        .args(&all)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts: Vec<bool> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l == "valid")
        .collect();
    assert_eq!(verdicts.len(), all.len());
    let differ: Vec<String> = all
        .iter()
        .zip(&verdicts)
        .filter(|(f, theirs)| **theirs != ours(Format::Json, f))
        .map(|(f, theirs)| format!("{}: python-jsonschema {theirs}", f.display()))
        .collect();
    assert!(all.len() >= 80);
    assert!(
        differ.is_empty(),
        "verdicts differ on {} of {} files:\n{}",
        differ.len(),
        all.len(),
        differ.join("\n")
    );
}
