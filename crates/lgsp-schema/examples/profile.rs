//! One run of the validation benchmark's work, for instruction counts under callgrind (repeatable, unlike
//! wall time on a shared VM): `valgrind --tool=callgrind target/release/examples/profile {bare|validate} FILE`.

use lgsp_schema::{Catalog, Format, Options};
use quick_xml::events::Event;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(file)) = (args.get(1), args.get(2)) else {
        return Err("usage: profile {bare|validate} FILE".into());
    };
    let bytes = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
    match mode.as_str() {
        "bare" => {
            let text = std::str::from_utf8(&bytes).map_err(|e| e.to_string())?;
            let mut reader = quick_xml::Reader::from_str(text);
            let mut n = 0usize;
            loop {
                match reader.read_event() {
                    Ok(Event::Eof) | Err(_) => break,
                    Ok(e) => {
                        std::hint::black_box(&e);
                        n += 1;
                    }
                }
            }
            println!("{n} events");
        }
        "validate" => {
            let catalog = Catalog::embedded().map_err(|e| e.to_string())?;
            let report = catalog.validate("HoSoCBCCVC", Format::Xml, &bytes, &Options::default());
            println!("{} violations", report.violations.len());
        }
        other => return Err(format!("unknown mode {other}; use bare or validate")),
    }
    Ok(())
}
