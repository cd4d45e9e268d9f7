//! Webhook and Slack payloads built from audit events with user-supplied text: valid JSON out,
//! and no text of a user's becomes Slack markup (a mention, a link, a quote).
#![no_main]

use jitgate_audit::{Event, Kind};
use jitgate_fuzz::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let kind = Kind::ALL[usize::from(b.byte()) % Kind::ALL.len()];
    let mut s = || String::from_utf8_lossy(b.part()).into_owned();
    let (actor, resource, reason, identity, access, duration, session) = (s(), s(), s(), s(), s(), s(), s());
    let ev = Event::new(kind, jiff::Timestamp::UNIX_EPOCH)
        .actor(actor)
        .resource(resource)
        .reason(Some(reason))
        .session(session)
        .request(1)
        .grant(2)
        .details(serde_json::json!({"identity": identity, "access": access, "duration": duration, "expires_at": "x"}));
    let j = jitgate_api::notify::json_payload(&ev);
    let back: serde_json::Value = serde_json::from_str(&serde_json::to_string(&j).unwrap()).unwrap();
    assert_eq!(back, j);
    let p = jitgate_api::notify::slack_payload(&ev);
    let text = p["text"].as_str().unwrap();
    assert!(!text.contains('<'), "user text became markup: {text:?}");
    let quotes = usize::from(kind == Kind::RequestCreated);
    assert_eq!(text.matches('>').count(), quotes, "user text became a quote: {text:?}");
    serde_json::from_str::<serde_json::Value>(&serde_json::to_string(&p).unwrap()).unwrap();
});
