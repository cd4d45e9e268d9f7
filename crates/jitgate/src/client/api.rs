//! The typed API: one method per route, over the [`wire`] types the server decodes, so the CLI
//! and the gateway share one description of every path and body.

use anyhow::Result;
use jitgate_api::wire::{self, paths};
use jitgate_core::{Grant, Request, SessionInfo};
use serde_json::Value;

use super::Client;

/// What the requester or an approver does to a request.
#[derive(Debug, Clone, Copy)]
pub enum Decision {
    Approve,
    Deny,
    Cancel,
}

impl Client {
    pub async fn create_request(&self, body: &wire::CreateRequest) -> Result<Request> {
        self.post(paths::REQUESTS, body).await
    }

    pub async fn request(&self, id: i64) -> Result<wire::RequestStatus> {
        self.get(&wire::path(paths::REQUEST, id)).await
    }

    /// A long poll: the request once it is no longer at `version`, or after `wait_secs`.
    pub async fn wait_request(&self, id: i64, version: i64, wait_secs: u64) -> Result<wire::RequestStatus> {
        self.get_query(
            &wire::path(paths::REQUEST, id),
            &wire::RequestWait {
                wait: Some(format!("{wait_secs}s")),
                version: Some(version),
            },
        )
        .await
    }

    pub async fn requests(&self, q: &wire::ListRequests) -> Result<Vec<Request>> {
        self.get_query(paths::REQUESTS, q).await
    }

    /// Approve, deny or cancel request `id` (cancel takes no reason).
    pub async fn decide(&self, id: i64, d: Decision, reason: Option<String>) -> Result<Request> {
        let route = match d {
            Decision::Approve => paths::REQUEST_APPROVE,
            Decision::Deny => paths::REQUEST_DENY,
            Decision::Cancel => return self.post(&wire::path(paths::REQUEST_CANCEL, id), &wire::Empty {}).await,
        };
        self.post(&wire::path(route, id), &wire::Reason { reason }).await
    }

    pub async fn break_glass(&self, body: &wire::BreakGlass) -> Result<Request> {
        self.post(paths::BREAK_GLASS, body).await
    }

    pub async fn oncall(&self) -> Result<Vec<wire::OnCallStatus>> {
        self.get(paths::ONCALL).await
    }

    pub async fn reviews(&self, all: bool) -> Result<Vec<Value>> {
        self.get_query(paths::REVIEWS, &wire::ListReviews { all }).await
    }

    pub async fn review(&self, id: i64) -> Result<Value> {
        self.get(&wire::path(paths::REVIEW, id)).await
    }

    pub async fn close_review(&self, id: i64, note: String) -> Result<Request> {
        self.post(&wire::path(paths::REVIEW_CLOSE, id), &wire::CloseReview { note })
            .await
    }

    pub async fn grants(&self, all: bool) -> Result<Vec<Grant>> {
        self.get_query(paths::GRANTS, &wire::ListGrants { all }).await
    }

    pub async fn revoke(&self, grant: i64, reason: Option<String>) -> Result<Grant> {
        self.post(&wire::path(paths::GRANT_REVOKE, grant), &wire::Reason { reason })
            .await
    }

    pub async fn release(&self, grant: i64) -> Result<Grant> {
        self.post(&wire::path(paths::GRANT_RELEASE, grant), &wire::Empty {})
            .await
    }

    /// An extension is a new request on the grant.
    pub async fn extend(&self, grant: i64, body: &wire::Extend) -> Result<Request> {
        self.post(&wire::path(paths::GRANT_EXTEND, grant), body).await
    }

    pub async fn sessions(&self) -> Result<Vec<SessionInfo>> {
        self.get(paths::SESSIONS).await
    }

    pub async fn kill(&self, session: &str) -> Result<SessionInfo> {
        self.post(&wire::path(paths::SESSION_KILL, session), &wire::Empty {})
            .await
    }

    /// Events as the log holds them (printed as they are with `--json`).
    pub async fn audit(&self, q: &wire::AuditQuery) -> Result<Vec<Value>> {
        self.get_query(paths::AUDIT, q).await
    }

    pub async fn whoami(&self) -> Result<wire::WhoAmI> {
        self.get(paths::WHOAMI).await
    }

    pub async fn resources(&self) -> Result<Vec<wire::ResourceView>> {
        self.get(paths::RESOURCES).await
    }

    /// Where the front ends listen (`postgres`, `ssh`, `public_url`, host key and CA).
    pub async fn info(&self) -> Result<Value> {
        self.get(paths::INFO).await
    }

    pub async fn tls_ca(&self) -> Result<wire::TlsCa> {
        self.get(paths::TLS_CA).await
    }

    pub async fn create_token(&self, body: &wire::CreateToken) -> Result<wire::MintedToken> {
        self.post(paths::TOKENS, body).await
    }

    pub async fn revoke_token(&self, token_id: &str) -> Result<wire::Revoked> {
        let body = wire::RevokeToken {
            token_id: token_id.to_string(),
        };
        self.post(paths::TOKENS_REVOKE, &body).await
    }

    pub async fn ssh_cert(&self, public_key: &str) -> Result<wire::SshCert> {
        let body = wire::SshCertRequest {
            public_key: public_key.to_string(),
        };
        self.post(paths::SSH_CERT, &body).await
    }

    pub async fn login_start(&self, redirect_uri: &str, max_age: Option<u64>) -> Result<wire::LoginStarted> {
        let body = wire::LoginStart {
            redirect_uri: redirect_uri.to_string(),
            max_age,
        };
        self.post(paths::LOGIN_START, &body).await
    }

    pub async fn login_finish(&self, body: &wire::LoginFinish) -> Result<wire::LoginResult> {
        self.post(paths::LOGIN_FINISH, body).await
    }

    pub async fn device_start(&self) -> Result<jitgate_auth::DeviceStart> {
        self.post(paths::LOGIN_DEVICE, &wire::Empty {}).await
    }

    /// `None` while the user has not answered.
    pub async fn device_poll(&self, id: &str) -> Result<Option<wire::LoginResult>> {
        let body = wire::DevicePoll { id: id.to_string() };
        Ok(match self.post(paths::LOGIN_DEVICE_POLL, &body).await? {
            wire::DevicePolled::LoggedIn(r) => Some(r),
            wire::DevicePolled::Pending(_) => None,
        })
    }

    pub async fn drain(&self, draining: bool) -> Result<wire::Drained> {
        self.post(paths::DRAIN, &wire::Drain { draining }).await
    }

    pub async fn logout(&self) -> Result<wire::Revoked> {
        self.post(paths::LOGOUT, &wire::Empty {}).await
    }
}
