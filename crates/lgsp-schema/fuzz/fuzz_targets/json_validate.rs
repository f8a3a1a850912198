//! Fuzzes the JSON validator: any bytes, every message type, full rules. It must never panic or hang.
#![no_main]

use std::sync::OnceLock;

use lgsp_schema::{Catalog, Format, Options};
use libfuzzer_sys::fuzz_target;

static CATALOG: OnceLock<Catalog> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let catalog = CATALOG.get_or_init(|| Catalog::embedded().expect("embedded schemas load"));
    for t in lgsp_schema::MESSAGE_TYPES {
        let _ = catalog.validate(t, Format::Json, data, &Options::default());
    }
});
