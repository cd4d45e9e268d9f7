//! The control-plane suite of `tests/control_plane.rs` again, with every gateway on a fresh
//! PostgreSQL store database instead of SQLite (`support::pg_store_suite` keys on this test
//! binary's name): the same tests pass on both backends.

#[path = "control_plane.rs"]
mod suite;
