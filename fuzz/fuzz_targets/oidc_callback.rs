//! The loopback redirect `jitgate login` reads from whatever connects to it: never a panic, and
//! query decoding agrees with the form decoder browsers and servers use (`form_urlencoded`).
#![no_main]

use jitgate_auth::callback::{self, Redirect};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let q = String::from_utf8_lossy(data);
    if !matches!(callback::parse(data), Redirect::Other) {
        assert!(q.contains("/callback?"));
    }
    for pair in q.split('&').filter(|p| p.contains('=')) {
        let (k, v) = pair.split_once('=').unwrap_or_default();
        let ours = (callback::percent_decode(k), callback::percent_decode(v));
        let theirs = form_urlencoded::parse(pair.as_bytes())
            .next()
            .map(|(a, b)| (a.into_owned(), b.into_owned()))
            .unwrap_or_default();
        assert_eq!(ours, theirs, "{pair:?}");
    }
});
