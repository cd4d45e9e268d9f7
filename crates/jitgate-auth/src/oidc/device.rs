//! The device flow (RFC 8628): start a login the user finishes on another device, poll the
//! provider's token endpoint, and read its answers with bounds of our own.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use std::str::FromStr;

use super::{AuthError, IdTok, Identity, MAX_ATTEMPTS, Oidc, random_id};

pub(super) struct DeviceLogin {
    device_code: String,
    expires: Instant,
}

/// What a device login needs the user to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceStart {
    /// Handle for polling (not the device code).
    pub id: String,
    /// Code the user types.
    pub user_code: String,
    /// Where they type it.
    pub verification_uri: String,
    /// A URL with the code filled in, when the provider gives one.
    pub verification_uri_complete: Option<String>,
    /// Seconds until the code expires.
    pub expires_in: u64,
    /// Seconds between polls.
    pub interval: u64,
}

impl Oidc {
    /// POST a form to a provider endpoint with client authentication; (success?, JSON body).
    async fn post_form(&self, url: &str, form: &[(&str, &str)]) -> Result<(bool, serde_json::Value), AuthError> {
        let resp = self
            .http
            .post(url)
            .basic_auth(&self.cfg.client_id, self.cfg.client_secret.as_deref())
            .form(form)
            .send()
            .await
            .map_err(|e| AuthError::Provider(e.without_url().to_string()))?;
        let ok = resp.status().is_success();
        let v = resp.json().await.map_err(|e| AuthError::Provider(e.to_string()))?;
        Ok((ok, v))
    }

    /// Start a device login (RFC 8628).
    pub async fn start_device(&self) -> Result<DeviceStart, AuthError> {
        let meta = self.meta(false).await?;
        let Some(endpoint) = meta.additional_metadata().device_authorization_endpoint.clone() else {
            return Err(AuthError::BadRequest(
                "the identity provider does not offer the device flow; use `jitgate login` (browser)".into(),
            ));
        };
        let scope = std::iter::once("openid".to_string())
            .chain(self.cfg.scopes.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        let (ok, v) = self
            .post_form(
                &endpoint,
                &[("client_id", self.cfg.client_id.as_str()), ("scope", scope.as_str())],
            )
            .await?;
        if !ok {
            return Err(AuthError::Denied(oauth_error(&v)));
        }
        let answer = DeviceAnswer::parse(&v)?;
        let id = random_id();
        let device_code = answer.device_code;
        let expires_in = answer.expires_in;
        let start = DeviceStart {
            id: id.clone(),
            user_code: answer.user_code,
            verification_uri: answer.verification_uri,
            verification_uri_complete: answer.verification_uri_complete,
            expires_in,
            interval: answer.interval,
        };
        let mut d = self
            .devices
            .lock()
            .map_err(|_| AuthError::Provider("device lock".into()))?;
        Self::prune(&mut d, |x| x.expires > Instant::now());
        if d.len() >= MAX_ATTEMPTS {
            return Err(AuthError::BadRequest(
                "too many logins in progress; try again in a minute".into(),
            ));
        }
        d.insert(
            id,
            DeviceLogin {
                device_code,
                expires: Instant::now() + Duration::from_secs(expires_in),
            },
        );
        Ok(start)
    }

    /// Poll a device login once: `Err(Pending)` while the user has not approved yet.
    pub async fn poll_device(&self, id: &str) -> Result<Identity, AuthError> {
        let device_code = {
            let d = self
                .devices
                .lock()
                .map_err(|_| AuthError::Provider("device lock".into()))?;
            d.get(id)
                .filter(|x| x.expires > Instant::now())
                .map(|x| x.device_code.clone())
                .ok_or(AuthError::UnknownAttempt)?
        };
        let meta = self.meta(false).await?;
        let token_url = meta
            .token_endpoint()
            .ok_or_else(|| AuthError::Provider("the provider has no token endpoint".into()))?
            .url()
            .to_string();
        let (ok, v) = self
            .post_form(
                &token_url,
                &[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("device_code", device_code.as_str()),
                    ("client_id", self.cfg.client_id.as_str()),
                ],
            )
            .await?;
        let answer = poll_answer(ok, &v);
        if !matches!(answer, Err(AuthError::Pending))
            && let Ok(mut d) = self.devices.lock()
        {
            d.remove(id);
        }
        let id_token = answer?;
        let tok = IdTok::from_str(id_token).map_err(|_| AuthError::InvalidToken("not a JWT".into()))?;
        self.verify(&tok, None).await
    }
}

/// The longest a device login may wait for the user, whatever the provider says (RFC 8628 gives
/// no upper bound; a huge `expires_in` would keep the attempt, and overflow the clock).
pub const MAX_DEVICE_WAIT: u64 = 1800;

/// The fields of a device authorization answer (RFC 8628 section 3.2) the gateway uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAnswer {
    /// The code the gateway polls with (never shown to the user).
    pub device_code: String,
    /// The code the user types.
    pub user_code: String,
    /// Where they type it.
    pub verification_uri: String,
    /// A URL with the code filled in.
    pub verification_uri_complete: Option<String>,
    /// Seconds the codes live: the provider's value, 600 when absent, within 1..=MAX_DEVICE_WAIT.
    pub expires_in: u64,
    /// Seconds between polls: the provider's value, 5 when absent, within 1..=60.
    pub interval: u64,
}

impl DeviceAnswer {
    /// Read a provider's answer; a missing or non-string required field is a provider error.
    pub fn parse(v: &serde_json::Value) -> Result<Self, AuthError> {
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let need = |k: &str| s(k).ok_or_else(|| AuthError::Provider(format!("no {k} in the device answer")));
        let num = |k: &str, default: u64, max: u64| {
            v.get(k)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(default)
                .clamp(1, max)
        };
        Ok(Self {
            device_code: need("device_code")?,
            user_code: need("user_code")?,
            verification_uri: need("verification_uri")?,
            verification_uri_complete: s("verification_uri_complete"),
            expires_in: num("expires_in", 600, MAX_DEVICE_WAIT),
            interval: num("interval", 5, 60),
        })
    }
}

/// What one poll of the token endpoint said: the ID token, `Pending` while the user has not
/// answered (RFC 8628 `authorization_pending` / `slow_down`), or why the login failed.
pub fn poll_answer(ok: bool, v: &serde_json::Value) -> Result<&str, AuthError> {
    if !ok {
        let err = v.get("error").and_then(|e| e.as_str()).unwrap_or_default();
        if matches!(err, "authorization_pending" | "slow_down") {
            return Err(AuthError::Pending);
        }
        return Err(AuthError::Denied(oauth_error(v)));
    }
    v.get("id_token")
        .and_then(|x| x.as_str())
        .ok_or_else(|| AuthError::InvalidToken("the provider sent no ID token".into()))
}

fn oauth_error(v: &serde_json::Value) -> String {
    let e = v.get("error").and_then(|x| x.as_str()).unwrap_or("error");
    match v.get("error_description").and_then(|x| x.as_str()) {
        Some(d) => format!("{e}: {d}"),
        None => e.to_string(),
    }
}
