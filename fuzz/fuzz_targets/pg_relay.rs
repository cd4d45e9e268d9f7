//! The Postgres relay, both directions at once: arbitrary client frame sequences (Query, Parse,
//! Bind, Execute, Sync, Close, FunctionCall, CopyData, garbage) with the classifier in the loop,
//! against arbitrary backend frames (ErrorResponse fields, ReadyForQuery, CommandComplete tags,
//! ParameterStatus, CopyInResponse). Read-only and read-write. Never a panic, never a hang.
#![no_main]

use jitgate_fuzz::{Bytes, relay};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let flags = b.byte();
    let chunk = usize::from(b.byte()) * 8;
    let client = b.part();
    let server = b.rest();
    relay::run(flags & 1 == 1, client, server, chunk);
});
