//! The OpenID Connect relying party (openidconnect crate): discovery, authorization code + PKCE
//! with a loopback redirect (RFC 8252), the device authorization grant (RFC 8628), and full ID
//! token verification — issuer, audience, signature against the provider's JWKS (re-fetched when
//! an unknown key id shows up, so key rotation at the provider needs nothing here), expiry with a
//! small clock skew, and the nonce of the code flow.
//!
//! The gateway is the confidential client: the client secret never leaves it. The CLI asks the
//! gateway for an authorization URL, the user's browser comes back to the CLI's loopback listener
//! with a code, and the CLI hands the code to the gateway, which exchanges and verifies it.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreClaimName, CoreClaimType, CoreClientAuthMethod,
    CoreErrorResponseType, CoreGenderClaim, CoreGrantType, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm, CoreResponseMode, CoreResponseType, CoreRevocableToken,
    CoreRevocationErrorResponse, CoreSubjectIdentifierType, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AdditionalProviderMetadata, AuthorizationCode, ClaimsVerificationError, Client, ClientId,
    ClientSecret, CsrfToken, EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdToken,
    IdTokenClaims, IdTokenFields, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier, ProviderMetadata, RedirectUrl,
    Scope, SignatureVerificationError, StandardErrorResponse, StandardTokenResponse, TokenResponse,
};
use serde::{Deserialize, Serialize};

mod device;
use device::DeviceLogin;
pub use device::{DeviceAnswer, DeviceStart, MAX_DEVICE_WAIT, poll_answer};

/// Claims beyond the standard ones (groups, custom identity claims), kept as JSON.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ExtraClaims(HashMap<String, serde_json::Value>);
impl AdditionalClaims for ExtraClaims {}

/// The device endpoint from discovery.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct DeviceMeta {
    #[serde(default)]
    device_authorization_endpoint: Option<String>,
}
impl AdditionalProviderMetadata for DeviceMeta {}

type Meta = ProviderMetadata<
    DeviceMeta,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;
/// The relying-party client as discovery builds it (auth URL set; token and userinfo endpoints as
/// the provider advertises them).
type RpClient = Client<
    ExtraClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    TokenResp,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;
type IdTok = IdToken<ExtraClaims, CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm>;
type TokenResp = StandardTokenResponse<
    IdTokenFields<
        ExtraClaims,
        EmptyExtraTokenFields,
        CoreGenderClaim,
        CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    >,
    CoreTokenType,
>;

/// Relying-party settings (from `[oidc]`).
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// Issuer URL.
    pub issuer: String,
    /// Client id.
    pub client_id: String,
    /// Client secret (resolved).
    pub client_secret: Option<String>,
    /// Claim naming the identity (`email`, `sub`, `preferred_username` or a custom one).
    pub identity_claim: String,
    /// Claim with the groups.
    pub groups_claim: String,
    /// Scopes besides `openid`.
    pub scopes: Vec<String>,
    /// Accept `email` when `email_verified` is false.
    pub allow_unverified_email: bool,
    /// Tolerated clock difference for `exp`.
    pub clock_skew: Duration,
}

/// Who logged in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// Identity name (from `identity_claim`).
    pub name: String,
    /// Groups (from `groups_claim`).
    pub groups: Vec<String>,
    /// The provider's subject.
    pub subject: String,
    /// When the user authenticated at the provider (`auth_time`, unix seconds), when the ID
    /// token says.
    pub auth_time: Option<i64>,
}

/// Why a login failed. `Display` never contains a token, code or secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The provider could not be reached or answered nonsense.
    #[error("identity provider unavailable: {0}")]
    Provider(String),
    /// The provider refused (wrong password, user said no, code reused or expired).
    #[error("identity provider refused the login: {0}")]
    Denied(String),
    /// The ID token failed verification.
    #[error("ID token rejected: {0}")]
    InvalidToken(String),
    /// Unknown or expired login attempt (state / device id).
    #[error("unknown or expired login attempt; start again with `jitgate login`")]
    UnknownAttempt,
    /// The device code is still waiting for the user.
    #[error("waiting for the user to approve the device login")]
    Pending,
    /// A request the gateway will not serve (bad redirect URI, no device flow).
    #[error("{0}")]
    BadRequest(String),
}

struct PendingLogin {
    nonce: Nonce,
    verifier: String,
    redirect: String,
    created: Instant,
    /// The `max_age` asked for (seconds): the ID token must then carry an `auth_time` no
    /// older than that.
    max_age: Option<u64>,
    /// Started by the web console: only its callback (bound to the browser) may finish it,
    /// never `POST /v1/login/finish`.
    console: bool,
}

const ATTEMPT_TTL: Duration = Duration::from_secs(600);
const MAX_ATTEMPTS: usize = 10_000;

/// The relying party.
pub struct Oidc {
    cfg: OidcConfig,
    http: reqwest::Client,
    meta: tokio::sync::Mutex<Option<Arc<Meta>>>,
    /// Last re-fetch forced by an unknown key id (rate limit).
    last_refresh: Mutex<Option<Instant>>,
    pending: Mutex<HashMap<String, PendingLogin>>,
    devices: Mutex<HashMap<String, DeviceLogin>>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Oidc({})", self.cfg.issuer)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct HttpError(String);

async fn send(
    http: reqwest::Client,
    req: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, HttpError> {
    let (parts, body) = req.into_parts();
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).map_err(|e| HttpError(e.to_string()))?;
    let mut rb = http.request(method, parts.uri.to_string()).body(body);
    for (k, v) in &parts.headers {
        rb = rb.header(k.as_str(), v.as_bytes());
    }
    let resp = rb.send().await.map_err(|e| HttpError(e.without_url().to_string()))?;
    let mut b = openidconnect::http::Response::builder().status(resp.status().as_u16());
    for (k, v) in resp.headers() {
        b = b.header(k.as_str(), v.as_bytes());
    }
    let bytes = resp.bytes().await.map_err(|e| HttpError(e.to_string()))?;
    b.body(bytes.to_vec()).map_err(|e| HttpError(e.to_string()))
}

fn random_id() -> String {
    let b: [u8; 16] = rand::random();
    hex::encode(b)
}

/// Redirect URIs the gateway accepts from the CLI: loopback http only (RFC 8252 §7.3).
fn loopback_redirect(uri: &str) -> bool {
    let Some(rest) = uri.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.contains('@') {
        // userinfo (`http://127.0.0.1:80@evil.example/`): the host is what follows the `@`.
        return false;
    }
    let h = host.rsplit_once(':').map_or(host, |(h, _)| h);
    matches!(h, "127.0.0.1" | "[::1]" | "localhost")
}

impl Oidc {
    /// A relying party for `cfg` (no network until the first login).
    pub fn new(cfg: OidcConfig) -> Result<Self, AuthError> {
        IssuerUrl::new(cfg.issuer.clone()).map_err(|e| AuthError::BadRequest(format!("[oidc] issuer: {e}")))?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| AuthError::Provider(e.to_string()))?;
        Ok(Self {
            cfg,
            http,
            meta: tokio::sync::Mutex::new(None),
            last_refresh: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            devices: Mutex::new(HashMap::new()),
        })
    }

    /// Issuer URL.
    pub fn issuer(&self) -> &str {
        &self.cfg.issuer
    }

    /// Provider metadata and keys; `refresh` re-fetches them, at most once every 10 s (an
    /// attacker presenting tokens with made-up key ids cannot make us hammer the provider).
    async fn meta(&self, refresh: bool) -> Result<Arc<Meta>, AuthError> {
        let mut g = self.meta.lock().await;
        if let Some(m) = g.as_ref() {
            let allowed = refresh
                && self
                    .last_refresh
                    .lock()
                    .map(|l| l.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)))
                    .unwrap_or(false);
            if !allowed {
                return Ok(m.clone());
            }
            if let Ok(mut l) = self.last_refresh.lock() {
                *l = Some(Instant::now());
            }
        }
        let http = self.http.clone();
        let client = move |r| send(http.clone(), r);
        let issuer = IssuerUrl::new(self.cfg.issuer.clone()).map_err(|e| AuthError::Provider(e.to_string()))?;
        let m = Meta::discover_async(issuer, &client)
            .await
            .map_err(|e| AuthError::Provider(format!("discovery at {} failed: {e}", self.cfg.issuer)))?;
        let m = Arc::new(m);
        *g = Some(m.clone());
        Ok(m)
    }

    fn prune<T>(map: &mut HashMap<String, T>, alive: impl Fn(&T) -> bool) {
        map.retain(|_, v| alive(v));
    }

    /// Start a code + PKCE login for the CLI; returns (authorization URL, state). With
    /// `max_age`, as for the console: the ID token's `auth_time` must be that recent.
    pub async fn start_login(&self, redirect_uri: &str, max_age: Option<u64>) -> Result<(String, String), AuthError> {
        if !loopback_redirect(redirect_uri) {
            return Err(AuthError::BadRequest(
                "redirect_uri must be a loopback http URL (http://127.0.0.1:PORT/callback)".into(),
            ));
        }
        self.start_code_flow(redirect_uri, max_age, false).await
    }

    /// Start a code + PKCE login for the gateway's own web console, whose callback URL the
    /// gateway builds itself (never a caller's). With `max_age` (a step-up) the provider must
    /// authenticate the user again unless it did so within that many seconds, and
    /// [`Oidc::finish_login`] refuses an ID token whose `auth_time` is missing or older.
    pub async fn start_console_login(
        &self,
        redirect_uri: &str,
        max_age: Option<u64>,
    ) -> Result<(String, String), AuthError> {
        self.start_code_flow(redirect_uri, max_age, true).await
    }

    /// Drop a login attempt (the console's callback refused it): its code cannot be redeemed.
    pub fn forget(&self, state: &str) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(state);
        }
    }

    async fn start_code_flow(
        &self,
        redirect_uri: &str,
        max_age: Option<u64>,
        console: bool,
    ) -> Result<(String, String), AuthError> {
        let meta = self.meta(false).await?;
        let redirect = RedirectUrl::new(redirect_uri.to_string()).map_err(|e| AuthError::BadRequest(e.to_string()))?;
        let client = RpClient::from_provider_metadata(
            (*meta).clone(),
            ClientId::new(self.cfg.client_id.clone()),
            self.cfg.client_secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(redirect);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        );
        for s in &self.cfg.scopes {
            req = req.add_scope(Scope::new(s.clone()));
        }
        if let Some(m) = max_age {
            req = req.set_max_age(Duration::from_secs(m));
        }
        let (url, state, nonce) = req.set_pkce_challenge(challenge).url();
        let mut p = self
            .pending
            .lock()
            .map_err(|_| AuthError::Provider("state lock".into()))?;
        Self::prune(&mut p, |v| v.created.elapsed() < ATTEMPT_TTL);
        // Full (a flood of started logins nobody finishes): the oldest attempt makes room, so
        // a flood cannot refuse everyone else's login.
        while p.len() >= MAX_ATTEMPTS {
            let Some(oldest) = p.iter().min_by_key(|(_, v)| v.created).map(|(k, _)| k.clone()) else {
                break;
            };
            p.remove(&oldest);
        }
        p.insert(
            state.secret().clone(),
            PendingLogin {
                nonce,
                verifier: verifier.secret().clone(),
                redirect: redirect_uri.to_string(),
                created: Instant::now(),
                max_age,
                console,
            },
        );
        Ok((url.to_string(), state.secret().clone()))
    }

    /// Finish a CLI code login: exchange the code, verify the ID token (with the nonce).
    pub async fn finish_login(&self, state: &str, code: &str) -> Result<Identity, AuthError> {
        self.finish(state, code, false).await
    }

    /// Finish a web console login (its callback checked the browser's binding first).
    pub async fn finish_console_login(&self, state: &str, code: &str) -> Result<Identity, AuthError> {
        self.finish(state, code, true).await
    }

    async fn finish(&self, state: &str, code: &str, console: bool) -> Result<Identity, AuthError> {
        let pending = {
            let mut p = self
                .pending
                .lock()
                .map_err(|_| AuthError::Provider("state lock".into()))?;
            // A console attempt is not the CLI's to finish (and the reverse): left alone.
            if p.get(state).is_some_and(|x| x.console != console) {
                return Err(AuthError::UnknownAttempt);
            }
            p.remove(state)
        }
        .filter(|p| p.created.elapsed() < ATTEMPT_TTL)
        .ok_or(AuthError::UnknownAttempt)?;
        let meta = self.meta(false).await?;
        let client = RpClient::from_provider_metadata(
            (*meta).clone(),
            ClientId::new(self.cfg.client_id.clone()),
            self.cfg.client_secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(
            RedirectUrl::new(pending.redirect.clone()).map_err(|e| AuthError::BadRequest(e.to_string()))?,
        );
        let http = self.http.clone();
        let hc = move |r| send(http.clone(), r);
        let tok: TokenResp = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| AuthError::Provider(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier.clone()))
            .request_async(&hc)
            .await
            .map_err(|e| AuthError::Denied(token_error(&e)))?;
        let id = tok
            .id_token()
            .ok_or_else(|| AuthError::InvalidToken("the provider sent no ID token".into()))?;
        let who = self.verify(id, Some(&pending.nonce)).await?;
        if let Some(max_age) = pending.max_age {
            fresh_enough(
                who.auth_time,
                max_age,
                self.cfg.clock_skew,
                chrono::Utc::now().timestamp(),
            )?;
        }
        Ok(who)
    }

    /// Verify an ID token obtained elsewhere for this client (no nonce: there was no redirect).
    pub async fn exchange_id_token(&self, id_token: &str) -> Result<Identity, AuthError> {
        let id = IdTok::from_str(id_token.trim()).map_err(|_| AuthError::InvalidToken("not a JWT".into()))?;
        self.verify(&id, None).await
    }

    async fn verify(&self, id: &IdTok, nonce: Option<&Nonce>) -> Result<Identity, AuthError> {
        let mut meta = self.meta(false).await?;
        for attempt in 0..2 {
            let client = RpClient::from_provider_metadata(
                (*meta).clone(),
                ClientId::new(self.cfg.client_id.clone()),
                self.cfg.client_secret.clone().map(ClientSecret::new),
            );
            let skew = chrono::Duration::from_std(self.cfg.clock_skew).unwrap_or_default();
            let verifier = client
                .id_token_verifier()
                .set_time_fn(move || chrono::Utc::now() - skew);
            let result = match nonce {
                Some(n) => id.claims(&verifier, n),
                None => id.claims(&verifier, |_: Option<&Nonce>| Ok(())),
            };
            match result {
                Ok(claims) => return identity(&self.cfg, claims),
                Err(ClaimsVerificationError::SignatureVerification(SignatureVerificationError::NoMatchingKey))
                    if attempt == 0 =>
                {
                    // A key we have not seen: the provider may have rotated. Re-fetch once.
                    meta = self.meta(true).await?;
                }
                Err(e) => return Err(AuthError::InvalidToken(claims_error(&e))),
            }
        }
        Err(AuthError::InvalidToken(
            "signed with a key the provider does not publish".into(),
        ))
    }
}

/// A login asked for with `max_age`: the ID token must say when the user authenticated
/// (OpenID Connect Core 1.0 §3.1.2.1 makes `auth_time` required then), no longer ago than that.
fn fresh_enough(auth_time: Option<i64>, max_age: u64, skew: Duration, now: i64) -> Result<(), AuthError> {
    let Some(t) = auth_time else {
        return Err(AuthError::InvalidToken(
            "the provider did not say when the user authenticated (no auth_time despite max_age)".into(),
        ));
    };
    let skew_s = i64::try_from(skew.as_secs()).unwrap_or(i64::MAX);
    if t > now.saturating_add(skew_s) {
        return Err(AuthError::InvalidToken(
            "the provider says the user authenticated in the future (auth_time ahead of this clock)".into(),
        ));
    }
    let limit = i64::try_from(max_age.saturating_add(skew.as_secs())).unwrap_or(i64::MAX);
    if now.saturating_sub(t) > limit {
        return Err(AuthError::InvalidToken(format!(
            "the provider reused an authentication {} s old; a fresh one (at most {max_age} s) was required",
            now.saturating_sub(t)
        )));
    }
    Ok(())
}

/// Who a verified ID token names: the configured identity claim (an `email` only when the provider
/// verified it, unless allowed) and the groups claim (a list of strings or one string).
pub fn identity(cfg: &OidcConfig, c: &IdTokenClaims<ExtraClaims, CoreGenderClaim>) -> Result<Identity, AuthError> {
    let extra = &c.additional_claims().0;
    let name = match cfg.identity_claim.as_str() {
        "email" => {
            let email = c.email().map(|e| e.as_str().to_string()).ok_or_else(|| {
                AuthError::InvalidToken("the ID token has no email (ask for the `email` scope)".into())
            })?;
            if c.email_verified() != Some(true) && !cfg.allow_unverified_email {
                return Err(AuthError::InvalidToken(format!(
                    "the provider has not verified the email {email} (operators: [oidc] allow_unverified_email)"
                )));
            }
            email
        }
        "sub" => c.subject().as_str().to_string(),
        "preferred_username" => c
            .preferred_username()
            .map(|u| u.as_str().to_string())
            .ok_or_else(|| AuthError::InvalidToken("the ID token has no preferred_username".into()))?,
        other => extra
            .get(other)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| AuthError::InvalidToken(format!("the ID token has no `{other}` claim")))?,
    };
    let groups = match extra.get(&cfg.groups_claim) {
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    };
    Ok(Identity {
        name,
        groups,
        subject: c.subject().as_str().to_string(),
        auth_time: c.auth_time().map(|t| t.timestamp()),
    })
}

fn token_error<E: std::error::Error + 'static, T: openidconnect::ErrorResponse + 'static>(
    e: &openidconnect::RequestTokenError<E, T>,
) -> String {
    match e {
        openidconnect::RequestTokenError::ServerResponse(r) => r.to_string(),
        openidconnect::RequestTokenError::Request(r) => format!("request failed: {r}"),
        openidconnect::RequestTokenError::Parse(p, _) => format!("unreadable answer: {p}"),
        openidconnect::RequestTokenError::Other(o) => o.clone(),
    }
}

fn claims_error(e: &ClaimsVerificationError) -> String {
    match e {
        ClaimsVerificationError::Expired(_) => "expired".into(),
        ClaimsVerificationError::InvalidAudience(_) => "issued for another client (audience mismatch)".into(),
        ClaimsVerificationError::InvalidIssuer(_) => "issued by another provider (issuer mismatch)".into(),
        ClaimsVerificationError::InvalidNonce(_) => "nonce mismatch (replayed or injected login)".into(),
        ClaimsVerificationError::SignatureVerification(SignatureVerificationError::NoMatchingKey) => {
            "signed with a key the provider does not publish".into()
        }
        ClaimsVerificationError::SignatureVerification(s) => format!("bad signature: {s}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_numbers_are_bounded() {
        let v = serde_json::json!({"device_code": "d", "user_code": "U", "verification_uri": "https://x",
            "expires_in": u64::MAX, "interval": 0});
        let a = DeviceAnswer::parse(&v).unwrap();
        assert_eq!((a.expires_in, a.interval), (MAX_DEVICE_WAIT, 1));
        let v = serde_json::json!({"device_code": "d", "user_code": 7, "verification_uri": "https://x"});
        assert!(matches!(DeviceAnswer::parse(&v), Err(AuthError::Provider(m)) if m.contains("user_code")));
        let pending = serde_json::json!({"error": "slow_down"});
        assert_eq!(poll_answer(false, &pending), Err(AuthError::Pending));
        assert!(matches!(poll_answer(true, &pending), Err(AuthError::InvalidToken(_))));
    }

    #[test]
    fn max_age_needs_a_recent_auth_time() {
        let skew = Duration::from_secs(30);
        assert!(fresh_enough(Some(1000), 300, skew, 1200).is_ok());
        assert!(fresh_enough(Some(1000), 300, skew, 1330).is_ok());
        assert!(
            matches!(fresh_enough(Some(1000), 300, skew, 1331), Err(AuthError::InvalidToken(m)) if m.contains("331 s old"))
        );
        assert!(fresh_enough(None, 300, skew, 1000).is_err());
        assert!(
            fresh_enough(Some(1031), 300, skew, 1000).is_err(),
            "in the future beyond the skew"
        );
        assert!(fresh_enough(Some(1030), 300, skew, 1000).is_ok());
    }

    #[test]
    fn only_loopback_redirects() {
        assert!(loopback_redirect("http://127.0.0.1:4711/callback"));
        assert!(loopback_redirect("http://localhost:1/cb"));
        assert!(loopback_redirect("http://[::1]:80/cb"));
        assert!(!loopback_redirect("https://127.0.0.1:4711/callback"));
        assert!(!loopback_redirect("http://evil.example/callback"));
        assert!(!loopback_redirect("http://127.0.0.1.evil.example:80/cb"));
        assert!(!loopback_redirect("http://user@evil.example/127.0.0.1"));
        assert!(!loopback_redirect("http://127.0.0.1:80@evil.example/cb"));
        assert!(!loopback_redirect("http://127.0.0.1@evil.example/cb"));
    }
}
