//! The Postgres startup phase: the first packets (SSLRequest, GSSENCRequest, CancelRequest,
//! StartupMessage with parameters) as the front end reads them, then a PasswordMessage.
#![no_main]

use bytes::BytesMut;
use jitgate_fuzz::block_on;
use jitgate_pg::frontend::read_startup;
use jitgate_pg::protocol::{self, Startup};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    block_on(async {
        let mut r = data;
        // The front end answers SSLRequest/GSSENCRequest and reads the next packet.
        for _ in 0..4 {
            let Ok(body) = read_startup(&mut r).await else { return };
            match protocol::parse_startup(&body) {
                Ok(Startup::Ssl | Startup::GssEnc) => continue,
                Ok(Startup::Cancel { .. }) | Err(_) => return,
                Ok(Startup::Start { params, .. }) => {
                    assert!(params.iter().all(|(k, _)| !k.is_empty()));
                    break;
                }
            }
        }
        // PasswordMessage: a tagged message, a NUL-terminated token.
        let mut buf = BytesMut::new();
        if let Ok((tag, body)) = jitgate_pg::io::read_message(&mut r, &mut buf, 8192).await {
            assert!(body.len() <= 8192);
            if tag == b'p' {
                let _ = protocol::cstr(&body);
            }
        }
    });
});
