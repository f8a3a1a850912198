//! JSON validation of a 1 MiB HoSoCBCCVC packet (work history) as the gateway does it — one streaming pass, the
//! envelope's arrays checked element by element (`Catalog::validate`) — against, in the same run, the way it was
//! done before: the whole packet parsed into one `serde_json::Value` and checked by one `jsonschema` validator,
//! and a bare `serde_json` pass that builds nothing. Prints each throughput and streaming/whole-value as a ratio.
//! `cargo bench -p lgsp-schema --bench validate_json`.

#[path = "timing.rs"]
mod timing;

use std::hint::black_box;
use std::time::Duration;

use timing::per_iteration;

use lgsp_schema::{Catalog, Format, Limits, Options};
use serde::de::IgnoredAny;

const WORK: &str = r#"{"NgayBatDau":"2020-01-01","NgayKetThuc":"2020-12-31","DonViCongTac":"Văn phòng UBND tỉnh","ChucVu":"Chuyên viên"},"#;

/// A valid profile of at least `size` bytes: the full sample with more work-history entries.
fn packet(size: usize) -> Vec<u8> {
    let sample = include_str!("../../../schemas/cbccvc/samples/valid/HoSoCBCCVC-01-day-du.json");
    let at = sample
        .find("\"QuaTrinhCongTac\": [")
        .map(|i| i + "\"QuaTrinhCongTac\": [".len())
        .expect("sample has QuaTrinhCongTac");
    let (before, after) = sample.split_at(at);
    let mut out = before.to_owned();
    while out.len() + after.len() < size {
        out.push_str(WORK);
    }
    out.push_str(after);
    out.into_bytes()
}

fn main() {
    let catalog = Catalog::embedded().expect("embedded schemas");
    let opts = Options {
        domain: false,
        ..Options::default()
    };
    let schema: serde_json::Value = serde_json::from_str(include_str!(
        "../../../schemas/cbccvc/HoSoCBCCVC.schema.json"
    ))
    .expect("schema");
    let whole = jsonschema::draft202012::new(&schema).expect("validator");
    for (name, size) in [("4KiB", 4 * 1024), ("1MiB", 1024 * 1024)] {
        let p = packet(size);
        let r = catalog.validate("HoSoCBCCVC", Format::Json, &p, &opts);
        assert!(
            r.is_valid(),
            "bench packet must be valid: {:?}",
            r.violations.first()
        );
        let t_bare = per_iteration(Duration::from_millis(300), || {
            black_box(serde_json::from_slice::<IgnoredAny>(black_box(&p)).is_ok());
        });
        let t_whole = per_iteration(Duration::from_millis(300), || {
            let v = lgsp_schema::json::parse(black_box(&p), &Limits::default()).expect("parses");
            black_box(whole.iter_errors(&v).count());
        });
        let t_stream = per_iteration(Duration::from_millis(300), || {
            black_box(catalog.validate("HoSoCBCCVC", Format::Json, black_box(&p), &opts));
        });
        let mbps = |t: Duration| p.len() as f64 / t.as_secs_f64() / 1e6;
        println!(
            "{name} ({} bytes): bare serde_json {:.1} MB/s, whole Value + jsonschema {:.1} MB/s, streaming {:.1} MB/s; streaming/whole {:.2}, streaming/bare {:.2}",
            p.len(),
            mbps(t_bare),
            mbps(t_whole),
            mbps(t_stream),
            t_whole.as_secs_f64() / t_stream.as_secs_f64(),
            t_bare.as_secs_f64() / t_stream.as_secs_f64(),
        );
    }
}
