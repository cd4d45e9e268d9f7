//! asciicast v2 files given to `jitgate play`: an error naming the line, or the waits and text
//! to replay; never a panic (times and speeds of any size).
#![no_main]

use jitgate_fuzz::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let speed = f64::from(b.u16()) / 64.0 + 1e-3;
    let idle = match b.byte() {
        0 => f64::INFINITY,
        1 => f64::MAX,
        n => f64::from(n),
    };
    let text = String::from_utf8_lossy(b.rest());
    if let Ok(events) = jitgate_ssh::record::cast_output(&text, speed, idle) {
        for (wait, _) in events {
            assert!(wait.as_secs_f64().is_finite());
        }
    }
});
