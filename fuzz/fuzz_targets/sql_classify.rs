//! The SQL classifier: never panics, and its cache (exact text and literal-masked keys) never
//! gives a text another text's verdict — every cached verdict equals a fresh one from
//! PostgreSQL's parser — and a text is unparsed exactly when PostgreSQL's parser rejects it.
#![no_main]

use std::sync::OnceLock;

use jitgate_fuzz::sql;
use jitgate_pg::classify::{self, Class, Classifier, Verdict};
use libfuzzer_sys::fuzz_target;

fn shared() -> &'static Classifier {
    static C: OnceLock<Classifier> = OnceLock::new();
    C.get_or_init(Classifier::new)
}

/// What a verdict decides (the refusal's wording may quote the first text of a key).
fn decision(v: &Verdict) -> (Class, usize, bool, bool, bool) {
    (v.class, v.statements, v.read_only_refusal.is_some(), v.secret, v.ends_transaction)
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else { return };
    let texts = if mode & 1 == 0 {
        sql::generate(rest)
    } else {
        rest.split(|b| *b == 0xff)
            .take(8)
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .collect()
    };
    for t in &texts {
        let cached = shared().classify(t);
        let fresh = classify::classify(t);
        assert_eq!(decision(&cached), decision(&fresh), "the cache disagrees with the parser on {t:?}");
        let rejected = pg_query::parse(t, pg_query::ParserOptions::default()).is_err();
        assert_eq!(rejected, fresh.class == Class::Unparsed, "unparsed vs PostgreSQL's parser on {t:?}");
        if fresh.secret {
            // Each password literal becomes '***' (longer than '' or 'x'): bounded growth, and
            // redacting again changes nothing.
            let r = classify::redact(t);
            assert!(r.len() <= 2 * t.len() + 64 || r.starts_with("<redacted"), "{r:?}");
            assert_eq!(classify::redact(&r), r, "redaction is not idempotent on {t:?}");
        }
        assert_eq!(classify::masked_key(t), classify::masked_key(t));
    }
});
