//! One run of the validation benchmark's work, for instruction counts under callgrind (repeatable, unlike
//! wall time on a shared VM): `valgrind --tool=callgrind target/release/examples/profile {bare|validate} FILE [N]`
//! (N runs, default 1: many runs of a small packet show the fixed cost per packet).

use lgsp_schema::{Catalog, Format, Options};
use quick_xml::events::Event;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(file)) = (args.get(1), args.get(2)) else {
        return Err("usage: profile {bare|validate} FILE [N]".into());
    };
    let runs: usize = match args.get(3) {
        Some(n) => n.parse().map_err(|e| format!("N: {e}"))?,
        None => 1,
    };
    let bytes = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
    match mode.as_str() {
        "bare" => {
            let mut n = 0usize;
            for _ in 0..runs {
                let text = std::str::from_utf8(&bytes).map_err(|e| e.to_string())?;
                let mut reader = quick_xml::Reader::from_str(text);
                loop {
                    match reader.read_event() {
                        Ok(Event::Eof) | Err(_) => break,
                        Ok(e) => {
                            std::hint::black_box(&e);
                            n += 1;
                        }
                    }
                }
            }
            println!("{n} events");
        }
        "validate" => {
            let catalog = Catalog::embedded().map_err(|e| e.to_string())?;
            let mut violations = 0;
            for _ in 0..runs {
                let report =
                    catalog.validate("HoSoCBCCVC", Format::Xml, &bytes, &Options::default());
                violations += report.violations.len();
            }
            println!("{violations} violations");
        }
        other => return Err(format!("unknown mode {other}; use bare or validate")),
    }
    Ok(())
}
