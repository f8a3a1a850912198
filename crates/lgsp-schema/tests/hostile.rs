//! Hostile input: every case gets a 4xx-class verdict with its rule — never a panic, never unbounded memory.
//! Also replays the inputs the fuzzers found (`tests/regressions/`) and random mutations of the corpus.

use std::path::Path;

use lgsp_schema::{Catalog, Format, Limits, Options};
use proptest::prelude::*;

fn catalog() -> &'static Catalog {
    static C: std::sync::OnceLock<Catalog> = std::sync::OnceLock::new();
    C.get_or_init(|| Catalog::embedded().unwrap())
}

fn verdict(format: Format, bytes: &[u8]) -> (bool, Vec<&'static str>) {
    let r = catalog().validate("HoSoCBCCVC", format, bytes, &Options::default());
    (r.malformed, r.violations.iter().map(|v| v.rule).collect())
}

fn xml_rule(bytes: &[u8]) -> &'static str {
    let (malformed, rules) = verdict(Format::Xml, bytes);
    assert!(malformed, "expected a refusal, got {rules:?}");
    // The refusal that stopped validation comes last, after any schema violations before it.
    rules.last().copied().unwrap_or_default()
}

const HEAD: &str = "<HoSoCBCCVC xmlns=\"urn:lgsp:cbccvc:v1\" phienBan=\"1.0\">";

#[test]
fn doctype_and_entities_are_never_expanded() {
    let laughs = "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\">]><HoSoCBCCVC>&lol2;</HoSoCBCCVC>";
    assert_eq!(xml_rule(laughs.as_bytes()), "xml.doctype_forbidden");
    let xxe = "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><HoSoCBCCVC>&x;</HoSoCBCCVC>";
    assert_eq!(xml_rule(xxe.as_bytes()), "xml.doctype_forbidden");
    let undeclared = format!("{HEAD}<MaDonVi>&x;</MaDonVi></HoSoCBCCVC>");
    assert_eq!(xml_rule(undeclared.as_bytes()), "xml.undeclared_entity");
    let predefined = format!("{HEAD}<MaDonVi>&#48;&amp;</MaDonVi></HoSoCBCCVC>");
    let (malformed, rules) = verdict(Format::Xml, predefined.as_bytes());
    assert!(!malformed && rules.contains(&"xsd.pattern"), "{rules:?}");
}

#[test]
fn limits_bound_depth_attributes_and_text() {
    let deep = format!("{HEAD}{}", "<a>".repeat(100_000));
    assert_eq!(xml_rule(deep.as_bytes()), "xml.depth_exceeded");
    let attrs: String = (0..100).map(|i| format!(" a{i}=\"x\"")).collect();
    let many = format!("<HoSoCBCCVC xmlns=\"urn:lgsp:cbccvc:v1\"{attrs}/>");
    assert_eq!(xml_rule(many.as_bytes()), "xml.too_many_attributes");
    let long = format!(
        "{HEAD}<MaDonVi>{}</MaDonVi></HoSoCBCCVC>",
        "A".repeat(200_000)
    );
    assert_eq!(xml_rule(long.as_bytes()), "xml.text_too_long");
    let long_attr = format!(
        "<HoSoCBCCVC xmlns=\"urn:lgsp:cbccvc:v1\" phienBan=\"{}\"/>",
        "1".repeat(200_000)
    );
    assert_eq!(xml_rule(long_attr.as_bytes()), "xml.text_too_long");
}

#[test]
fn encodings_other_than_utf8_are_refused() {
    assert_eq!(
        xml_rule(b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><HoSoCBCCVC/>"),
        "xml.encoding"
    );
    assert_eq!(xml_rule(b"\xFF\xFE<\x00H\x00"), "xml.encoding");
    assert_eq!(
        xml_rule(b"<HoSoCBCCVC>\xC3\x28</HoSoCBCCVC>"),
        "xml.encoding"
    );
    // A UTF-8 byte-order mark is fine.
    let (malformed, _) = verdict(
        Format::Xml,
        format!("\u{FEFF}{HEAD}</HoSoCBCCVC>").as_bytes(),
    );
    assert!(!malformed);
}

#[test]
fn broken_documents_are_malformed_or_truncated() {
    assert_eq!(
        xml_rule(format!("{HEAD}<MaDonVi>").as_bytes()),
        "xml.truncated"
    );
    assert_eq!(xml_rule(b""), "xml.malformed");
    assert_eq!(
        xml_rule(format!("{HEAD}</HoSoCBCCVC><HoSoCBCCVC/>").as_bytes()),
        "xml.malformed"
    );
    assert_eq!(
        xml_rule(format!("{HEAD}<x:y/></HoSoCBCCVC>").as_bytes()),
        "xml.malformed"
    );
}

#[test]
fn hostile_json() {
    let rule = |s: &[u8]| {
        let (malformed, rules) = verdict(Format::Json, s);
        assert!(malformed, "{rules:?}");
        rules[0]
    };
    assert_eq!(
        rule(br#"{"HoSoCBCCVC": {"MaDonVi": "A", "MaDonVi": "B"}}"#),
        "json.duplicate_key"
    );
    assert_eq!(rule("[".repeat(200_000).as_bytes()), "json.depth_exceeded");
    assert_eq!(
        rule(format!("[{}]", "9".repeat(5000)).as_bytes()),
        "json.number_too_large"
    );
    assert_eq!(rule(b"{\"HoSoCBCCVC\": {"), "json.truncated");
    assert_eq!(rule(b"\xFF"), "json.encoding");
}

#[test]
fn error_count_is_bounded() {
    let many: String = (0..10_000).map(|_| "<Bad/>").collect();
    let doc = format!("{HEAD}{many}</HoSoCBCCVC>");
    let opts = Options {
        limits: Limits {
            max_errors: 7,
            ..Limits::default()
        },
        ..Options::default()
    };
    let r = catalog().validate("HoSoCBCCVC", Format::Xml, doc.as_bytes(), &opts);
    assert_eq!(r.violations.len(), 7);
    assert!(r.truncated);
}

#[test]
fn fuzz_regressions_never_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/regressions");
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        for format in [Format::Xml, Format::Json] {
            for t in lgsp_schema::MESSAGE_TYPES {
                let _ = catalog().validate(t, format, &bytes, &Options::default());
            }
        }
    }
}

fn seeds(ext: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/cbccvc/samples/valid");
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    out.sort();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mutated_xml_never_panics(seed in 0usize..20, cuts in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut bytes = seeds("xml")[seed % 20].clone();
        for (at, b) in cuts {
            let i = at % bytes.len();
            bytes[i] = b;
        }
        let _ = verdict(Format::Xml, &bytes);
    }

    #[test]
    fn mutated_json_never_panics(seed in 0usize..20, cuts in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut bytes = seeds("json")[seed % 20].clone();
        for (at, b) in cuts {
            let i = at % bytes.len();
            bytes[i] = b;
        }
        let _ = verdict(Format::Json, &bytes);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = verdict(Format::Xml, &bytes);
        let _ = verdict(Format::Json, &bytes);
    }
}
