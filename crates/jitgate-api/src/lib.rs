//! # jitgate-api
//!
//! The control plane ([`ControlPlane`]): requests, approvals, grants, sessions, audit search and
//! machine tokens, persisted through the store and audited; and its HTTP face ([`router`]): the
//! versioned JSON API the CLI uses, Prometheus `/metrics`, `/healthz` and `/readyz`.

pub mod control;
pub mod error;
pub mod http;
pub mod notify;
pub mod slack;
pub mod wire;

pub use control::{ControlError, ControlPlane, ControlResult, Login, OidcProvider};
pub use error::{ApiError, ApiResult};
pub use http::{ops_router, router};
