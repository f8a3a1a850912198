//! Peak memory of JSON validation, counted by the allocator: an 8 MiB packet may raise the process's peak by at
//! most 4 times its size, whatever it holds. Everything runs in one test so that no other test allocates while
//! the peak is read.

use lgsp_schema::{Catalog, Format, Limits, Options};
use peak_alloc::PeakAlloc;

#[global_allocator]
static ALLOCATOR: PeakAlloc = PeakAlloc;

const MIB: usize = 1024 * 1024;

/// `{"<root>":{"<key>":<open><item>,<item>,…<close>}}` of about `size` bytes.
fn packet(root: &str, head: &str, key: &str, item: &str, size: usize) -> Vec<u8> {
    let mut out = format!("{{\"{root}\":{{{head}\"{key}\":[").into_bytes();
    while out.len() + item.len() + 4 < size {
        out.extend_from_slice(item.as_bytes());
        out.push(b',');
    }
    out.extend_from_slice(item.as_bytes());
    out.extend_from_slice(b"]}}");
    out
}

/// How far validating `body` raises the peak above what was allocated before, as a multiple of its size.
fn peak_ratio(catalog: &Catalog, message_type: &str, body: &[u8]) -> (f64, usize, usize) {
    let opts = Options::default();
    let before = ALLOCATOR.current_usage();
    ALLOCATOR.reset_peak_usage();
    let report = catalog.validate(message_type, Format::Json, body, &opts);
    let peak = ALLOCATOR.peak_usage().saturating_sub(before);
    let violations = report.violations.len();
    drop(report);
    (peak as f64 / body.len() as f64, peak, violations)
}

#[test]
fn json_validation_holds_at_most_four_times_the_packet() {
    let catalog = Catalog::embedded().expect("embedded schemas");
    let profile = r#""phienBan":"1.0","MaDonVi":"000.00.00.H29","#;
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        // The attack: an array of numbers under a key the schema does not allow.
        (
            "numbers under an undeclared key",
            "HoSoCBCCVC",
            packet("HoSoCBCCVC", "", "a", "0", 8 * MIB),
        ),
        // The same under a declared key whose value must be a string.
        (
            "numbers where a string stands",
            "HoSoCBCCVC",
            packet("HoSoCBCCVC", profile, "HoVaTen", "0", 8 * MIB),
        ),
        // Objects where a string stands.
        (
            "objects where a string stands",
            "HoSoCBCCVC",
            packet("HoSoCBCCVC", profile, "HoVaTen", "{}", 8 * MIB),
        ),
        // A staffing report of 8 MiB of well-formed lines: the batch itself, streamed record by record.
        (
            "a staffing report of 260 000 lines",
            "BienChe",
            packet(
                "BienChe",
                r#""phienBan":"1.0","MaDonVi":"000.00.00.H29","Nam":"2026","BienCheDuocGiao":0,"BienCheCoMat":0,"NguoiLap":"Tran Thi Binh","NgayLap":"2026-10-15","#,
                "ChiTiet",
                r#"{"MaNgach":"01.003","SoLuong":0}"#,
                8 * MIB,
            ),
        ),
        // Every line wrong: the error list stays within max_errors.
        (
            "a staffing report whose every line is wrong",
            "BienChe",
            packet(
                "BienChe",
                r#""phienBan":"1.0","MaDonVi":"000.00.00.H29","#,
                "ChiTiet",
                r#"{"MaNgach":"x","SoLuong":-1,"Them":[0,0,0,0]}"#,
                8 * MIB,
            ),
        ),
    ];
    let mut worst = 0.0f64;
    for (what, message_type, body) in &cases {
        let (ratio, peak, violations) = peak_ratio(&catalog, message_type, body);
        println!(
            "{what}: {:.1} MiB packet, peak +{} KiB = {ratio:.4}× its size, {violations} violations",
            body.len() as f64 / MIB as f64,
            peak / 1024,
        );
        assert!(ratio <= 4.0, "{what}: peak {ratio:.2}× the packet");
        worst = worst.max(ratio);
    }
    // For comparison, the whole packet as one serde_json::Value (what validation built before it streamed).
    let (_, _, attack) = &cases[0];
    let before = ALLOCATOR.current_usage();
    ALLOCATOR.reset_peak_usage();
    let whole = lgsp_schema::json::parse(attack, &Limits::default()).expect("well-formed");
    let dom = ALLOCATOR.peak_usage().saturating_sub(before) as f64 / attack.len() as f64;
    drop(whole);
    println!(
        "the attack packet as one serde_json::Value: peak +{dom:.1}× its size; streamed: worst +{worst:.2}×"
    );
    assert!(
        dom > 4.0,
        "the comparison no longer shows what streaming saves"
    );
}
