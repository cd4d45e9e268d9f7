//! Gateway tokens (`jg2.` and `jg1.` strings) as clients present them: verify never panics, and only a
//! token this key minted verifies.
#![no_main]

use std::sync::OnceLock;

use jitgate_auth::{TokenKeys, is_gateway_token};
use libfuzzer_sys::fuzz_target;

fn keys() -> &'static TokenKeys {
    static K: OnceLock<TokenKeys> = OnceLock::new();
    K.get_or_init(TokenKeys::ephemeral)
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let _ = is_gateway_token(&s);
    assert!(keys().verify(&s, 1_800_000_000).is_err(), "a forged token verified: {s:?}");
});
