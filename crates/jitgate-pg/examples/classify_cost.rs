//! What one statement costs the classifier: `cargo run --release -p jitgate-pg --example classify_cost`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Instant;

use jitgate_pg::classify::{Classifier, masked_key};

fn main() {
    let c = Classifier::new();
    let n = 200_000;
    let texts: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "SELECT abalance FROM pgbench_accounts WHERE aid = {};",
                i * 7919 % 1_000_000
            )
        })
        .collect();
    for (name, f) in [
        ("masked_key (scan)", &(|t: &str| drop(masked_key(t))) as &dyn Fn(&str)),
        ("classify, varying literal", &|t: &str| drop(c.classify(t))),
        ("classify, same text", &|_t: &str| {
            drop(c.classify("SELECT abalance FROM pgbench_accounts WHERE aid = $1;"))
        }),
    ] {
        let t = Instant::now();
        for s in &texts {
            f(s);
        }
        println!(
            "{name}: {:.2} µs per statement",
            t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
        );
    }
}
