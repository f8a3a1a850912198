//! Validation throughput of a 4 KiB and a 1 MiB HoSoCBCCVC packet (work history) and of a 1 MiB packet of salary
//! steps (every record a rank, step and coefficient looked up in the code lists) against a bare quick-xml event
//! loop over the same bytes, measured in the same run. Criterion reports each; the closing lines print
//! validator/bare as a throughput ratio (goal ≥ 0.5). `cargo bench -p lgsp-schema --bench validate`.

#[path = "timing.rs"]
mod timing;

use std::hint::black_box;
use std::time::Duration;

use timing::per_iteration;

use criterion::{Criterion, Throughput};
use lgsp_schema::{Catalog, Format, Options};
use quick_xml::events::Event;

const WORK: &str = "  <QuaTrinhCongTac>\n    <NgayBatDau>2020-01-01</NgayBatDau>\n    <NgayKetThuc>2020-12-31</NgayKetThuc>\n    <DonViCongTac>Văn phòng UBND tỉnh</DonViCongTac>\n    <ChucVu>Chuyên viên</ChucVu>\n  </QuaTrinhCongTac>\n";
const SALARY: &str = "  <QuaTrinhLuong>\n    <NgayHuong>2021-09-01</NgayHuong>\n    <MaNgach>01.003</MaNgach>\n    <BacLuong>3</BacLuong>\n    <HeSoLuong>3.00</HeSoLuong>\n  </QuaTrinhLuong>\n";

/// A valid profile packet of at least `size` bytes: the full sample with more `entry` elements (work history
/// before the salary steps, salary steps after them).
fn packet(size: usize, entry: &str) -> Vec<u8> {
    let head = include_str!("../../../schemas/cbccvc/samples/valid/HoSoCBCCVC-01-day-du.xml");
    let split = head
        .find("  <QuaTrinhLuong>")
        .expect("sample has QuaTrinhLuong");
    let (before, after) = head.split_at(split);
    let mut out = before.to_owned();
    while out.len() + after.len() < size {
        out.push_str(entry);
    }
    out.push_str(after);
    out.into_bytes()
}

/// The baseline: every event of the document read and dropped.
fn bare(bytes: &[u8]) -> usize {
    let text = std::str::from_utf8(bytes).unwrap_or_default();
    let mut reader = quick_xml::Reader::from_str(text);
    let mut n = 0usize;
    loop {
        match reader.read_event() {
            Ok(Event::Eof) | Err(_) => break,
            Ok(e) => {
                black_box(&e);
                n += 1;
            }
        }
    }
    n
}

fn main() {
    let catalog = Catalog::embedded().expect("embedded schemas");
    let opts = Options::default();
    let sizes = [
        ("4KiB", packet(4 * 1024, WORK)),
        ("1MiB", packet(1024 * 1024, WORK)),
        ("1MiB-salary-steps", packet(1024 * 1024, SALARY)),
    ];
    for (_, p) in &sizes {
        let r = catalog.validate("HoSoCBCCVC", Format::Xml, p, &opts);
        assert!(
            r.is_valid(),
            "bench packet must be valid: {:?}",
            r.violations.first()
        );
    }
    let mut c = Criterion::default().configure_from_args();
    for (name, p) in &sizes {
        let mut g = c.benchmark_group(format!("HoSoCBCCVC-{name}"));
        g.throughput(Throughput::Bytes(p.len() as u64));
        g.bench_function("bare quick-xml loop", |b| b.iter(|| bare(black_box(p))));
        g.bench_function("validate (schema + domain)", |b| {
            b.iter(|| catalog.validate("HoSoCBCCVC", Format::Xml, black_box(p), &opts))
        });
        g.finish();
    }
    c.final_summary();
    println!("\nvalidator throughput / bare quick-xml loop throughput (goal ≥ 0.5):");
    for (name, p) in &sizes {
        let t_bare = per_iteration(Duration::from_millis(200), || {
            black_box(bare(black_box(p)));
        });
        let t_val = per_iteration(Duration::from_millis(200), || {
            black_box(catalog.validate("HoSoCBCCVC", Format::Xml, black_box(p), &opts));
        });
        let mbps = |t: Duration| p.len() as f64 / t.as_secs_f64() / 1e6;
        println!(
            "  {name} ({} bytes): bare {:.1} MB/s, validate {:.1} MB/s, ratio {:.2}",
            p.len(),
            mbps(t_bare),
            mbps(t_val),
            t_bare.as_secs_f64() / t_val.as_secs_f64()
        );
    }
}
