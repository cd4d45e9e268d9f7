//! SSH: the `LOGIN@RESOURCE` user name, and command lines assembled from terminal input.
#![no_main]

use jitgate_fuzz::Bytes;
use jitgate_ssh::record::LineAssembler;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let user = String::from_utf8_lossy(b.part());
    if let Some(t) = jitgate_ssh::target::parse(&user) {
        assert!(!t.resource.is_empty() && !t.resource.contains('@'));
        assert!(t.login.as_deref().is_none_or(|l| !l.is_empty()));
        assert!(!t.resource.chars().any(char::is_control));
    }
    let max = usize::from(b.byte()) + 1;
    let mut la = LineAssembler::new(max);
    while !b.is_empty() {
        let n = usize::from(b.byte());
        for line in la.feed(b.take(n)) {
            assert!(!line.is_empty());
            assert!(line.chars().count() <= max.max(16) + 1, "{line:?}");
        }
    }
});
