//! The sample corpus: every valid packet passes; every invalid one fails with the rule its file name gives.

use std::path::{Path, PathBuf};

use lgsp_schema::{Catalog, Day, Format, Options};

fn corpus(sub: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../schemas/cbccvc/samples")
        .join(sub);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| Format::from_path(p).is_some())
        .collect();
    files.sort();
    files
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

fn opts(domain: bool) -> Options {
    Options {
        domain,
        today: Some(Day {
            year: 2026,
            month: 11,
            day: 25,
        }),
        ..Options::default()
    }
}

fn is_domain(rule: &str) -> bool {
    [
        "cccd.",
        "date.",
        "salary.",
        "code.",
        "staff.",
        "title.",
        "version.",
        "approval.",
        "staffing.",
    ]
    .iter()
    .any(|p| rule.starts_with(p))
}

#[test]
fn the_corpus_is_large_enough() {
    for (sub, min) in [("valid", 20), ("invalid", 60)] {
        for ext in ["xml", "json"] {
            let n = corpus(sub)
                .iter()
                .filter(|p| p.extension().unwrap() == ext)
                .count();
            assert!(n >= min, "{sub}/*.{ext}: {n} files, want at least {min}");
        }
    }
}

#[test]
fn valid_packets_pass_every_rule() {
    let catalog = Catalog::embedded().unwrap();
    for f in corpus("valid") {
        let t = name(&f).split('-').next().unwrap().to_owned();
        let format = Format::from_path(&f).unwrap();
        let bytes = std::fs::read(&f).unwrap();
        assert_eq!(
            catalog.detect(format, &bytes),
            Some(t.as_str()),
            "{}",
            name(&f)
        );
        let r = catalog.validate(&t, format, &bytes, &opts(true));
        assert!(r.is_valid(), "{}: {:#?}", name(&f), r.violations);
        assert_eq!(r.units.len(), 1, "{}: the packet's MaDonVi", name(&f));
    }
}

#[test]
fn invalid_packets_fail_with_the_rule_in_their_name() {
    let catalog = Catalog::embedded().unwrap();
    let mut wrong = Vec::new();
    for f in corpus("invalid") {
        let n = name(&f);
        let mut parts = n.split('-');
        let t = parts.next().unwrap();
        let rule = parts.nth(1).unwrap();
        let format = Format::from_path(&f).unwrap();
        let bytes = std::fs::read(&f).unwrap();
        let full = catalog.validate(t, format, &bytes, &opts(true));
        let rules: Vec<&str> = full.violations.iter().map(|v| v.rule).collect();
        let schema_only = catalog.validate(t, format, &bytes, &opts(false));
        let ok = if is_domain(rule) {
            schema_only.is_valid() && rules.contains(&rule)
        } else if format == Format::Xml {
            rules.first() == Some(&rule)
        } else {
            rules.contains(&rule)
        };
        if !ok {
            wrong.push(format!("{n}: got {:?}", full.violations));
        }
        for v in &full.violations {
            assert!(v.path.starts_with('/'), "{n}: path {:?}", v.path);
            if format == Format::Xml || full.malformed {
                assert!(v.line.is_some(), "{n}: no line in {v:?}");
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} files fail with another rule:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn errors_name_path_line_and_column() {
    let catalog = Catalog::embedded().unwrap();
    let f = corpus("invalid")
        .into_iter()
        .find(|p| name(p).contains("CongTac-thieu-DonVi") && name(p).ends_with(".xml"))
        .unwrap();
    let r = catalog.validate(
        "HoSoCBCCVC",
        Format::Xml,
        &std::fs::read(f).unwrap(),
        &opts(true),
    );
    let v = &r.violations[0];
    assert_eq!(v.path, "/HoSoCBCCVC/QuaTrinhCongTac[1]");
    assert_eq!((v.line, v.column), (Some(18), Some(3)));
    assert!(v.message.contains("DonViCongTac"), "{}", v.message);

    let f = corpus("invalid")
        .into_iter()
        .find(|p| name(p).contains("HeSoLuong-9.99") && name(p).ends_with(".json"))
        .unwrap();
    let r = catalog.validate(
        "HoSoCBCCVC",
        Format::Json,
        &std::fs::read(f).unwrap(),
        &opts(true),
    );
    let v = &r.violations[0];
    assert_eq!(
        (v.path.as_str(), v.rule),
        ("/HoSoCBCCVC/HeSoLuong", "salary.coefficient_mismatch")
    );
    assert!(v.line.is_some() && v.column.is_some(), "{v:?}");
}

#[test]
fn namespaces_resolve_by_prefix_and_scope() {
    let catalog = Catalog::embedded().unwrap();
    let plain = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../schemas/cbccvc/samples/valid/HoSoCBCCVC-02-toi-thieu.xml"),
    )
    .unwrap();
    let check =
        |doc: &str| catalog.validate("HoSoCBCCVC", Format::Xml, doc.as_bytes(), &opts(true));
    // The same packet written with a prefix is the same packet.
    let prefixed = plain
        .replace(
            "<HoSoCBCCVC xmlns=\"urn:lgsp:cbccvc:v1\"",
            "<c:HoSoCBCCVC xmlns:c=\"urn:lgsp:cbccvc:v1\"",
        )
        .replace("</HoSoCBCCVC>", "</c:HoSoCBCCVC>")
        .replace("<MaDonVi>", "<c:MaDonVi>")
        .replace("</MaDonVi>", "</c:MaDonVi>");
    let with_default_then_prefix = prefixed.replace(
        "xmlns:c=\"urn:lgsp:cbccvc:v1\"",
        "xmlns:c=\"urn:lgsp:cbccvc:v1\" xmlns=\"urn:lgsp:cbccvc:v1\"",
    );
    let r = check(&with_default_then_prefix);
    assert!(r.is_valid(), "{:?}", r.violations);
    // A child that redeclares the default namespace leaves the schema's namespace.
    let moved = plain.replace("<SoCCCD>", "<SoCCCD xmlns=\"urn:other\">");
    let r = check(&moved);
    assert_eq!(
        r.violations[0].rule, "xsd.unexpected_element",
        "{:?}",
        r.violations
    );
    assert!(
        r.violations[0].message.contains("\"urn:other\""),
        "{:?}",
        r.violations
    );
    // The redeclaration's scope ends with its element: what follows is in the schema's namespace again, and only
    // the SoCCCD the schema wanted is reported missing.
    assert_eq!(r.violations.len(), 2, "{:?}", r.violations);
    assert_eq!(r.violations[1].rule, "xsd.missing_element");
    let undeclared = plain
        .replace("<SoCCCD>", "<x:SoCCCD>")
        .replace("</SoCCCD>", "</x:SoCCCD>");
    let r = check(&undeclared);
    assert!(
        r.malformed && r.violations.last().unwrap().message.contains("`x`"),
        "{:?}",
        r.violations
    );
}

#[test]
fn domain_findings_come_in_document_order_across_records() {
    // A bad birth date at the top and a bad period end inside the first QuaTrinhCongTac: the inner record is
    // checked first (it closes first), yet the answer lists the findings as they stand in the packet.
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../schemas/cbccvc/samples/valid/HoSoCBCCVC-01-day-du.xml"),
    )
    .unwrap()
    .replace(
        "<NgaySinh>1990-05-12</NgaySinh>",
        "<NgaySinh>2027-05-12</NgaySinh>",
    )
    .replace(
        "<NgayKetThuc>2019-12-31</NgayKetThuc>",
        "<NgayKetThuc>2014-12-31</NgayKetThuc>",
    );
    let catalog = Catalog::embedded().unwrap();
    let r = catalog.validate("HoSoCBCCVC", Format::Xml, text.as_bytes(), &opts(true));
    let found: Vec<(&str, &str)> = r
        .violations
        .iter()
        .filter(|v| is_domain(v.rule))
        .map(|v| (v.path.as_str(), v.rule))
        .collect();
    assert!(
        found.contains(&("/HoSoCBCCVC/NgaySinh", "date.in_future")),
        "{found:?}"
    );
    assert_eq!(
        found.last(),
        Some(&(
            "/HoSoCBCCVC/QuaTrinhCongTac[1]/NgayKetThuc",
            "date.end_before_start"
        )),
        "{found:?}"
    );
    let lines: Vec<usize> = r
        .violations
        .iter()
        .filter(|v| is_domain(v.rule))
        .filter_map(|v| v.line)
        .collect();
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{lines:?}");
}

#[test]
fn rules_lists_every_rule_code_the_validators_emit() {
    let re = regex::Regex::new(
        r#""((?:xsd|xml|json|cccd|date|code|title|salary|version|staff|staffing|approval|packet)\.[a-z_]+)""#,
    )
    .unwrap();
    let mut emitted = std::collections::BTreeSet::new();
    let mut dirs = vec![std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                let code = text
                    .split("#[cfg(test)]\nmod tests")
                    .next()
                    .unwrap_or_default();
                // The list itself is not a source of codes.
                let code = match code.split_once("pub const RULES") {
                    Some((before, after)) => {
                        format!("{before}{}", after.split_once("];").map_or("", |(_, a)| a))
                    }
                    None => code.to_owned(),
                };
                emitted.extend(re.captures_iter(&code).map(|c| c[1].to_owned()));
            }
        }
    }
    let listed: std::collections::BTreeSet<String> =
        lgsp_schema::RULES.iter().map(|r| (*r).to_owned()).collect();
    assert_eq!(emitted, listed);
}
