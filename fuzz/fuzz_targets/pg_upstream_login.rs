//! The upstream login against a hostile or broken server: authentication requests (cleartext,
//! md5, SASL with SCRAM server-first and server-final messages), ParameterStatus,
//! BackendKeyData, errors. An error or a session, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    jitgate_fuzz::login::run(data);
});
