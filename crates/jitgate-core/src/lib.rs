//! # jitgate-core
//!
//! The heart of jitgate with no sockets in it: the configuration model ([`config`], [`catalog`]),
//! the lifecycle rules of requests, approvals and grants ([`engine`]), and the live state the
//! protocol front ends consult on every connection — the grant cache, the session registry and
//! the expiry scheduler, bundled as the [`Enforcer`]. Time comes from a [`Clock`], so every rule
//! is tested without sleeping.

pub mod catalog;
pub mod clock;
pub mod config;
pub mod duration;
pub mod enforcer;
pub mod engine;
pub mod frontend;
pub mod glob;
pub mod grants;
pub mod metrics;
pub mod model;
pub mod oncall;
pub mod onconnect;
pub mod sessions;
pub mod when;
pub mod window;

pub use catalog::Catalog;
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use duration::HumanDuration;
pub use enforcer::{Enforcer, LiveEvent};
pub use frontend::{Admission, AuthFailure, Gatekeeper, SessionRefused, Want};
pub use grants::{GrantCache, LiveGrant};
pub use metrics::Metrics;
pub use model::{Approval, Grant, GrantState, Principal, Request, RequestState};
pub use sessions::{KillReason, SessionGuard, SessionInfo, SessionRegistry};

/// Hex SHA-256 of a bearer token, as stored and configured (`token_sha256`).
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}
