//! # jitgate-audit
//!
//! Every step of the access lifecycle — requests, approvals, grants, sessions, statements,
//! commands, auth failures, reloads — is an [`Event`] appended to a JSONL file whose lines are
//! hash-chained ([`chain`]), so tampering is evident to `jitgate audit verify`. The [`AuditSink`]
//! owns the file through one writer thread; an optional [`AuditIndex`] (the store) makes events
//! searchable.

pub mod chain;
pub mod checkpoint;
pub mod details;
pub mod event;
pub mod kind;
pub mod redact;
pub mod sink;
pub mod text;

pub use chain::{
    Broken, Report, SignedAt, Verified, VerifiedChain, rotated_files, verify_chain, verify_file, verify_signed,
};
pub use checkpoint::{CheckpointKey, PublicKey};
pub use event::{Event, GENESIS, Head, Query, STATEMENT_KIND, Statement};
pub use kind::{Kind, UnknownKind};
pub use redact::{BadPattern, Redactor};
pub use sink::{AuditError, AuditIndex, AuditSink, Indexed};

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    #[tokio::test]
    async fn recorded_events_chain_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let sink = AuditSink::open(&path, None, None).unwrap();
        for i in 0..5 {
            let seq = sink
                .record(Event::new(Kind::RequestCreated, Timestamp::now()).request(i))
                .await
                .unwrap();
            assert_eq!(seq, u64::try_from(i).unwrap() + 1);
        }
        drop(sink);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let v = verify_file(&path).unwrap();
        assert_eq!(v.lines, 5);
        let sink = AuditSink::open(&path, None, None).unwrap();
        assert_eq!(
            sink.record(Event::new(Kind::GatewayStarted, Timestamp::now()))
                .await
                .unwrap(),
            6
        );
        assert_eq!(verify_file(&path).unwrap().lines, 6);
    }

    #[tokio::test]
    async fn a_one_byte_edit_is_found_at_the_next_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let sink = AuditSink::open(&path, None, None).unwrap();
        for who in ["alice", "bob", "carol"] {
            sink.record(Event::new(Kind::RequestApproved, Timestamp::now()).actor(who))
                .await
                .unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"bob\"", "\"bib\"", 1)).unwrap();
        let e = verify_file(&path).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
    }

    #[tokio::test]
    async fn a_partial_last_line_is_cut_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let sink = AuditSink::open(&path, None, None).unwrap();
        sink.record(Event::new(Kind::GatewayStarted, Timestamp::now()))
            .await
            .unwrap();
        drop(sink);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"seq\":2,\"ti");
        std::fs::write(&path, &text).unwrap();
        assert!(verify_file(&path).is_err());
        let sink = AuditSink::open(&path, None, None).unwrap();
        assert_eq!(
            sink.record(Event::new(Kind::GatewayStarted, Timestamp::now()))
                .await
                .unwrap(),
            2
        );
        assert_eq!(verify_file(&path).unwrap().lines, 2);
    }

    #[tokio::test]
    async fn emitted_events_keep_their_order_under_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let sink = AuditSink::open(&path, None, None).unwrap();
        for i in 0..20_000 {
            sink.emit(Event::new(Kind::PgStatement, Timestamp::now()).request(i))
                .await
                .unwrap();
        }
        sink.record(Event::new(Kind::GatewayStarted, Timestamp::now()))
            .await
            .unwrap();
        let v = verify_file(&path).unwrap();
        assert_eq!(v.lines, 20_001);
    }

    #[tokio::test]
    async fn rotation_keeps_one_verifiable_chain_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let sink = AuditSink::open_with(&path, None, None, Some(2_000)).unwrap();
        for i in 0..60 {
            sink.record(
                Event::new(Kind::PgStatement, Timestamp::now())
                    .request(i)
                    .reason(Some("x".repeat(100))),
            )
            .await
            .unwrap();
        }
        drop(sink);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let rotated = rotated_files(&path);
        assert!(rotated.len() >= 3, "{rotated:?}");
        let v = verify_chain(&path).unwrap();
        assert_eq!(v.files, rotated.len() + 1);
        // Reopening continues the same chain.
        let sink = AuditSink::open_with(&path, None, None, Some(2_000)).unwrap();
        sink.record(Event::new(Kind::GatewayStarted, Timestamp::now()))
            .await
            .unwrap();
        drop(sink);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        verify_chain(&path).unwrap();
        // A one-byte edit in a rotated file breaks the link into the next file.
        let victim = &rotated[1];
        let text = std::fs::read_to_string(victim).unwrap();
        std::fs::write(victim, text.replacen("pg.statement", "pg.statemenT", 1)).unwrap();
        let (file, broken) = verify_chain(&path).unwrap_err();
        assert!(file == *victim || file == rotated[2], "{file:?} {broken}");
    }

    #[tokio::test]
    async fn a_missing_rotated_file_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let sink = AuditSink::open_with(&path, None, None, Some(1_500)).unwrap();
        for i in 0..40 {
            sink.record(
                Event::new(Kind::GatewayStarted, Timestamp::now())
                    .request(i)
                    .reason(Some("y".repeat(100))),
            )
            .await
            .unwrap();
        }
        drop(sink);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let rotated = rotated_files(&path);
        assert!(rotated.len() >= 3);
        std::fs::remove_file(&rotated[1]).unwrap();
        assert!(verify_chain(&path).is_err());
    }
}
