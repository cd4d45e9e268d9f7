//! The SFTP observer on arbitrary packet streams in both directions, cut anywhere.
#![no_main]

use jitgate_fuzz::Bytes;
use jitgate_ssh::sftp::SftpWatch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let mut w = SftpWatch::default();
    while !b.is_empty() {
        let ctl = b.byte();
        let part = b.take(usize::from(ctl & 0x7f) * 4);
        if ctl & 0x80 == 0 {
            let _ = w.client(part);
        } else {
            let _ = w.server(part);
        }
    }
    let _ = w.finish();
});
