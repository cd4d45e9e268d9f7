//! The API client the CLI commands use: finds the gateway and the token, sends JSON, and turns
//! the API's `{error, hint}` bodies into messages for stderr.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::cli::Conn;

mod api;
pub use api::Decision;

/// The login file written by `jitgate login` (0600).
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct LoginFile {
    /// Gateway URL.
    pub url: Option<String>,
    /// Gateway token.
    pub token: Option<String>,
    /// The identity the token names.
    #[serde(default)]
    pub identity: Option<String>,
    /// Token expiry.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// CA file for the gateway's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// The CLI's folder: `$JITGATE_CONFIG_DIR`, else `$XDG_CONFIG_HOME/jitgate`, else
/// `~/.config/jitgate`.
pub fn config_base() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("JITGATE_CONFIG_DIR") {
        return Some(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("jitgate"))
}

/// `config_base()/login.json`.
pub fn login_path() -> Option<PathBuf> {
    config_base().map(|b| b.join("login.json"))
}

fn read_login() -> LoginFile {
    login_path()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

/// A failed API call, shown to the user as `error: ...` and `hint: ...`.
#[derive(Debug)]
pub struct ApiFailure {
    /// What went wrong, as the gateway said it.
    pub error: String,
    /// What to do.
    pub hint: Option<String>,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.error)?;
        if let Some(h) = &self.hint {
            write!(f, "\nhint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiFailure {}

/// A configured client.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// From flags, environment and the login file.
    pub fn new(conn: &Conn) -> Result<Self> {
        Self::build(conn, None, true)
    }

    /// Without any token (for logging in).
    pub fn new_anonymous(conn: &Conn) -> Result<Self> {
        Self::build(conn, None, false)
    }

    /// With this token.
    pub fn with_token(conn: &Conn, token: &str) -> Result<Self> {
        Self::build(conn, Some(token.to_string()), false)
    }

    fn build(conn: &Conn, explicit: Option<String>, use_stored: bool) -> Result<Self> {
        let login = read_login();
        let base = conn
            .url
            .clone()
            .or(login.url)
            .unwrap_or_else(|| "http://127.0.0.1:8080".to_string())
            .trim_end_matches('/')
            .to_string();
        let token = if use_stored {
            std::env::var("JITGATE_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .or(login.token)
        } else {
            explicit
        };
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(30));
        if let Some(ca) = conn.ca_file.as_ref().or(login.ca_file.as_ref()) {
            let pem = std::fs::read(ca).with_context(|| format!("reading --ca-file {}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", ca.display()))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder.build().context("cannot build the HTTP client")?;
        Ok(Self { http, base, token })
    }

    async fn send<T: DeserializeOwned>(&self, rb: reqwest::RequestBuilder) -> Result<T> {
        let rb = match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        };
        let resp = rb.send().await.map_err(|e| {
            let chain = format!("{:?}", e);
            let hint = if chain.contains("certificate") || chain.contains("UnknownIssuer") {
                "the gateway's TLS certificate is not trusted: on first contact run `jitgate login --ca-pin sha256:...` with the CA fingerprint from the gateway's operator (`jitgate serve` logs it as ca_sha256), or pass --ca-file (JITGATE_CA_FILE) with the CA, e.g. data_dir/tls/ca.crt"
            } else {
                "is `jitgate serve` running? set --url or JITGATE_URL"
            };
            anyhow::Error::new(crate::exit::Unreachable(format!(
                "cannot reach the gateway at {}: {}\nhint: {hint}",
                self.base,
                e.without_url()
            )))
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.context("reading the gateway's answer")?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .with_context(|| format!("unexpected answer from the gateway (HTTP {status})"));
        }
        #[derive(Deserialize)]
        struct E {
            error: String,
            hint: Option<String>,
        }
        let e: E = serde_json::from_slice(&bytes).unwrap_or(E {
            error: format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)),
            hint: None,
        });
        let hint = match (status.as_u16(), e.hint, &self.token) {
            (401, None, None) => Some("no token found: set JITGATE_TOKEN or run `jitgate login`".to_string()),
            (_, h, _) => h,
        };
        Err(ApiFailure { error: e.error, hint }.into())
    }

    /// The bearer token in use.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The API base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// GET `path` (a [`jitgate_api::wire::paths`] route).
    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    /// GET `path` with `query` as its query string.
    async fn get_query<T: DeserializeOwned>(&self, path: &str, query: &impl Serialize) -> Result<T> {
        self.send(self.http.get(format!("{}{path}", self.base)).query(query))
            .await
    }

    /// POST `body` as JSON to `path` (a [`jitgate_api::wire::paths`] route).
    async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }
}
