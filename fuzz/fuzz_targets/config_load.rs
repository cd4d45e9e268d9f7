//! `gateway.toml` loading and validation: never a panic, and every finding names the file
//! (and its line when the text has one).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match jitgate_core::config::load_str(Path::new("gateway.toml"), text, Path::new("/nonexistent-fuzz")) {
        Ok(l) => {
            for w in &l.warnings {
                assert!(w.to_string().starts_with("gateway.toml"));
            }
        }
        Err(diags) => {
            assert!(!diags.is_empty());
            for d in &diags {
                assert!(d.to_string().starts_with("gateway.toml"), "{d}");
            }
        }
    }
});
