//! `jitgate audit verify` on an arbitrary file: a verdict (intact or broken at a line), never a
//! panic; and an intact verdict only for a chain whose every line hashes into the next.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("jitgate-fuzz-audit-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("audit.jsonl");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(v) = jitgate_audit::verify_file(&path) {
        // Intact: every line is an event (an empty file is an empty chain).
        let text = String::from_utf8_lossy(data);
        for line in text.lines().filter(|l| !l.is_empty()) {
            assert!(serde_json::from_str::<jitgate_audit::Event>(line).is_ok(), "{v:?}: {line:?}");
        }
    }
});
