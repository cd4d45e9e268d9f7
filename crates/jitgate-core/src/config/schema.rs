//! The serde schema of `gateway.toml`.
//!
//! Every table refuses unknown keys so a typo is an error with a did-you-mean, never a silently
//! ignored setting. Fields whose meaning depends on other parts of the file carry their source
//! span (`Spanned`) so semantic errors can point at the exact line.

use std::path::PathBuf;

pub use super::catalog_schema::*;
pub use crate::catalog::{ResourceKind, UpstreamTlsMode};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::duration::HumanDuration;

/// The whole file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[gateway]`
    #[serde(default)]
    pub gateway: GatewaySection,
    /// `[listen]`
    #[serde(default)]
    pub listen: ListenSection,
    /// `[postgres]`: front-end settings.
    #[serde(default)]
    pub postgres: PostgresSection,
    /// `[ssh]`: front-end settings.
    #[serde(default)]
    pub ssh: SshSection,
    /// `[tls]`: omitted means a self-signed certificate generated into `data_dir`.
    pub tls: Option<TlsSection>,
    /// `[store]`: omitted means SQLite in `data_dir`.
    #[serde(default)]
    pub store: StoreSection,
    /// `[oidc]`
    pub oidc: Option<OidcSection>,
    /// `[[identities]]`: machine users, break-glass, local development.
    #[serde(default)]
    pub identities: Vec<IdentityConfig>,
    /// `[[resources]]`
    #[serde(default)]
    pub resources: Vec<ResourceConfig>,
    /// `[[policies]]`: the first one that matches decides.
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
    /// `[audit]`
    #[serde(default)]
    pub audit: AuditSection,
    /// `[notify]`
    #[serde(default)]
    pub notify: NotifySection,
    /// `[console]`: the web console on the API listener.
    #[serde(default)]
    pub console: ConsoleSection,
    /// `[[oncall]]`: who is on call, for auto-approval.
    #[serde(default)]
    pub oncall: Vec<OnCallConfig>,
}

/// `[console]`: the web console served at `/` on `[listen] http`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSection {
    /// Serve the console (default true). Off: `/` answers 404 and only the JSON API is served.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A console session ends after this long without a request.
    #[serde(default = "default_console_idle")]
    pub idle_timeout: HumanDuration,
    /// A console session ends this long after sign-in, whatever its use (and never after the
    /// gateway token it holds expires).
    #[serde(default = "default_console_absolute")]
    pub absolute_timeout: HumanDuration,
}

fn default_console_idle() -> HumanDuration {
    HumanDuration(30 * 60)
}

fn default_console_absolute() -> HumanDuration {
    HumanDuration(12 * 3600)
}

impl Default for ConsoleSection {
    fn default() -> Self {
        Self {
            enabled: true,
            idle_timeout: default_console_idle(),
            absolute_timeout: default_console_absolute(),
        }
    }
}

/// `[gateway]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// Store, keys, generated certificates, recordings, audit log.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The URL users and the CLI reach the API at.
    pub public_url: Option<String>,
    /// Groups whose members may revoke any grant, kill any session and mint machine tokens.
    #[serde(default = "default_admin_groups")]
    pub admin_groups: Vec<String>,
    /// Groups whose members may search the whole audit log (others see their own events).
    #[serde(default = "default_auditor_groups")]
    pub auditor_groups: Vec<String>,
    /// Allow secrets written inline in this file (`password = "..."`). Off: use `*_env`/`*_file`.
    #[serde(default)]
    pub allow_inline_secrets: bool,
    /// How long before expiry sessions are warned.
    #[serde(default = "default_warning")]
    pub expiry_warning: HumanDuration,
    /// How long a request may stay pending before it expires (policies may override).
    #[serde(default = "default_pending_timeout")]
    pub pending_timeout: HumanDuration,
    /// Request on connect: how long a psql or ssh connection that asked for access waits for
    /// the decision before it is ended (the request stays pending). `0s` turns requests on
    /// connect off.
    #[serde(default = "default_wait_on_connect")]
    pub wait_on_connect: HumanDuration,
    /// `text` (default) or `json` log lines.
    #[serde(default)]
    pub log_format: LogFormat,
    /// On SIGTERM, how long `/readyz` answers 503 while new sessions are still admitted, so a
    /// load balancer stops sending them here first (Kubernetes: a few seconds).
    #[serde(default)]
    pub drain_delay: HumanDuration,
    /// After that, how long live sessions may go on (new ones are refused) before the rest are
    /// ended with "shutdown". `0s`: end them at once. Keep `drain_delay + drain_timeout` under
    /// the supervisor's stop timeout (systemd `TimeoutStopSec`, Kubernetes
    /// `terminationGracePeriodSeconds`).
    #[serde(default)]
    pub drain_timeout: HumanDuration,
    /// A folder laid out like data_dir holding the keys every replica must share
    /// (`auth/token_keys.json`, `ssh/host_key`, `ssh/host_ca`, `ssh/user_ca`, `ssh/upstream_ca`,
    /// `tls/ca.crt`, `tls/ca.key`), e.g. a Kubernetes Secret mounted read-only. At start each
    /// file found there is installed into data_dir (0600); a missing folder refuses the start.
    pub shared_keys_dir: Option<PathBuf>,
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            public_url: None,
            admin_groups: default_admin_groups(),
            auditor_groups: default_auditor_groups(),
            allow_inline_secrets: false,
            expiry_warning: default_warning(),
            pending_timeout: default_pending_timeout(),
            wait_on_connect: default_wait_on_connect(),
            log_format: LogFormat::Text,
            drain_delay: HumanDuration::default(),
            drain_timeout: HumanDuration::default(),
            shared_keys_dir: None,
        }
    }
}

fn default_wait_on_connect() -> HumanDuration {
    HumanDuration(600)
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./jitgate-data")
}
fn default_admin_groups() -> Vec<String> {
    vec!["jitgate-admins".to_string()]
}
fn default_auditor_groups() -> Vec<String> {
    vec!["jitgate-auditors".to_string()]
}
fn default_warning() -> HumanDuration {
    HumanDuration::minutes(5)
}
fn default_pending_timeout() -> HumanDuration {
    HumanDuration::hours(1)
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[listen]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenSection {
    /// HTTP API, `/metrics`, health.
    #[serde(default = "default_http_spanned")]
    pub http: Spanned<String>,
    /// Serve the API over TLS. Omitted: TLS whenever `http` is not a loopback address.
    pub http_tls: Option<Spanned<bool>>,
    /// Postgres front end.
    pub postgres: Option<Spanned<String>>,
    /// SSH front end.
    pub ssh: Option<Spanned<String>>,
    /// Plain-HTTP ops listener for probes and Prometheus: `/healthz`, `/readyz` and `/metrics`
    /// only (no API, no token, no TLS), e.g. `0.0.0.0:9090`.
    pub ops: Option<Spanned<String>>,
}

impl ListenSection {
    /// Whether the API is served over TLS (explicit setting, or: not loopback).
    pub fn http_uses_tls(&self) -> bool {
        match &self.http_tls {
            Some(v) => *v.get_ref(),
            None => self
                .http
                .get_ref()
                .parse::<std::net::SocketAddr>()
                .is_ok_and(|a| !a.ip().is_loopback()),
        }
    }
}

impl Default for ListenSection {
    fn default() -> Self {
        Self {
            http: Spanned::new(0..0, default_http()),
            http_tls: None,
            postgres: None,
            ssh: None,
            ops: None,
        }
    }
}

fn default_http_spanned() -> Spanned<String> {
    Spanned::new(0..0, default_http())
}

fn default_http() -> String {
    "127.0.0.1:8080".to_string()
}

/// `[postgres]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSection {
    /// Accept clients without TLS. Only for loopback test set-ups: the password is a token.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Time allowed for TLS, startup and authentication.
    #[serde(default = "default_startup_timeout")]
    pub startup_timeout: HumanDuration,
    /// Most concurrent client connections.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Largest protocol message accepted from a client, in bytes.
    #[serde(default = "default_max_message")]
    pub max_message_size: usize,
    /// Most SCRAM-SHA-256 iterations an upstream may ask the gateway to compute for one login
    /// (PostgreSQL's default is 4096; 100,000 take about 0.1 s here, and the result is cached).
    /// A server asking for more is refused at once: a hostile or spoofed upstream cannot make
    /// the gateway burn CPU.
    #[serde(default = "default_max_scram_iterations")]
    pub max_scram_iterations: u32,
}

impl Default for PostgresSection {
    fn default() -> Self {
        Self {
            allow_plaintext: false,
            startup_timeout: default_startup_timeout(),
            max_connections: default_max_connections(),
            max_message_size: default_max_message(),
            max_scram_iterations: default_max_scram_iterations(),
        }
    }
}

fn default_max_scram_iterations() -> u32 {
    100_000
}

fn default_startup_timeout() -> HumanDuration {
    HumanDuration(10)
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_message() -> usize {
    64 << 20
}

/// `[ssh]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshSection {
    /// Time allowed from TCP accept to a successful login.
    #[serde(default = "default_ssh_login_timeout")]
    pub login_timeout: HumanDuration,
    /// Most concurrent client connections.
    #[serde(default = "default_ssh_max_connections")]
    pub max_connections: usize,
    /// Most open channels per connection (sessions, forwards).
    #[serde(default = "default_ssh_max_channels")]
    pub max_channels: usize,
    /// Environment variables clients may pass (`SendEnv`); `*` at the end matches a prefix.
    #[serde(default = "default_ssh_env_allow")]
    pub env_allow: Vec<String>,
    /// Record interactive sessions as asciicast v2 under `data_dir/recordings/`.
    #[serde(default = "default_true")]
    pub record: bool,
    /// Lifetime of user certificates the gateway signs (`jitgate ssh-cert`, `jitgate login`).
    #[serde(default = "default_ssh_cert_lifetime")]
    pub cert_lifetime: HumanDuration,
    /// Private key of the host CA that signs the gateway's host certificate (OpenSSH format).
    /// Replicas given the same file are all trusted by one `@cert-authority` line; default:
    /// `data_dir/ssh/host_ca`, generated.
    pub host_ca_key_file: Option<PathBuf>,
    /// Host names the gateway's host certificate is valid for (its principals); empty: any name
    /// the CA is trusted for (the CA is the gateway's own).
    #[serde(default)]
    pub host_names: Vec<String>,
}

impl Default for SshSection {
    fn default() -> Self {
        Self {
            login_timeout: default_ssh_login_timeout(),
            max_connections: default_ssh_max_connections(),
            max_channels: default_ssh_max_channels(),
            env_allow: default_ssh_env_allow(),
            record: true,
            cert_lifetime: default_ssh_cert_lifetime(),
            host_ca_key_file: None,
            host_names: Vec::new(),
        }
    }
}

fn default_ssh_login_timeout() -> HumanDuration {
    HumanDuration(30)
}
fn default_ssh_max_connections() -> usize {
    4_096
}
fn default_ssh_max_channels() -> usize {
    16
}
fn default_ssh_env_allow() -> Vec<String> {
    vec!["LANG".to_string(), "LC_*".to_string()]
}
fn default_true() -> bool {
    true
}
fn default_ssh_cert_lifetime() -> HumanDuration {
    HumanDuration::hours(12)
}

/// `[tls]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain of the front ends (Postgres and API). Without it the gateway runs
    /// its own CA (`data_dir/tls/ca.crt`) and issues itself a certificate for `names`; clients
    /// pin that CA at `jitgate login`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// With `cert_file` from a private CA: that CA's certificate (PEM), handed to `jitgate login`
    /// so clients verify the gateway against it. Leave unset for a publicly trusted certificate
    /// (clients then use the system roots).
    pub ca_file: Option<PathBuf>,
    /// Without `cert_file`: the DNS names and IP addresses clients reach the gateway by, for the
    /// generated certificate (always valid for `localhost`, `127.0.0.1` and `::1`, and for the
    /// host of `[gateway] public_url`). Clients verify the name (`sslmode=verify-full`).
    #[serde(default)]
    pub names: Vec<Spanned<String>>,
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `sqlite:///path/jitgate.db` (default: `jitgate.db` in data_dir) or
    /// `postgres://user@host:port/db` (shared by several gateway replicas). A URL with a
    /// password belongs in `url_env` or `url_file`.
    pub url: Option<Spanned<String>>,
    /// Read the URL from this environment variable (it may carry a password).
    pub url_env: Option<String>,
    /// Read the URL from this file (it may carry a password).
    pub url_file: Option<PathBuf>,
    /// PostgreSQL store: the CA that signed the store's certificate. TLS is then required and
    /// the certificate and host name are verified; without it the URL must say `sslmode=disable`.
    pub ca_file: Option<PathBuf>,
    /// PostgreSQL store: this gateway's name among the replicas (sessions and audit rows carry
    /// it). Default: generated once into `data_dir/node_id`.
    pub node: Option<String>,
    /// PostgreSQL store: connections per replica (plus one for the change feed).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// PostgreSQL store: refuse to start when this host's clock and the store's differ by more
    /// (grants end on every replica by its own clock).
    #[serde(default = "default_store_skew")]
    pub max_clock_skew: HumanDuration,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            url: None,
            url_env: None,
            url_file: None,
            ca_file: None,
            node: None,
            pool_size: default_pool_size(),
            max_clock_skew: default_store_skew(),
        }
    }
}

fn default_pool_size() -> usize {
    8
}
fn default_store_skew() -> HumanDuration {
    HumanDuration(2)
}

/// `[oidc]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSection {
    /// Issuer URL (discovery at `/.well-known/openid-configuration`).
    pub issuer: String,
    /// Registered client id.
    pub client_id: String,
    /// Client secret from the environment.
    pub client_secret_env: Option<String>,
    /// Client secret from a file.
    pub client_secret_file: Option<PathBuf>,
    /// Inline client secret (refused unless `allow_inline_secrets`).
    pub client_secret: Option<Spanned<String>>,
    /// Claim holding the groups.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Claim holding the identity.
    #[serde(default = "default_identity_claim")]
    pub identity_claim: String,
    /// Scopes asked for besides `openid`.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// Accept an email the provider marks unverified (`email_verified = false`).
    #[serde(default)]
    pub allow_unverified_email: bool,
    /// Clock difference tolerated when checking an ID token's expiry.
    #[serde(default = "default_clock_skew")]
    pub clock_skew: HumanDuration,
    /// Accept ID tokens issued to this client by other means (`POST /v1/login/id_token`, e.g.
    /// CI workload identity). Off: only the code and device flows log in.
    #[serde(default)]
    pub accept_id_tokens: bool,
    /// Lifetime of the gateway tokens (and SSH certificates) a login yields.
    #[serde(default = "default_token_lifetime")]
    pub token_lifetime: HumanDuration,
}

fn default_scopes() -> Vec<String> {
    vec!["email".into(), "profile".into(), "groups".into()]
}
fn default_clock_skew() -> HumanDuration {
    HumanDuration(60)
}
fn default_token_lifetime() -> HumanDuration {
    HumanDuration::hours(12)
}

fn default_groups_claim() -> String {
    "groups".to_string()
}
fn default_identity_claim() -> String {
    "email".to_string()
}

/// `[audit]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// Relative to data_dir.
    #[serde(default = "default_audit_file")]
    pub file: PathBuf,
    /// SQL/command text longer than this is cut (and marked) in audit events.
    #[serde(default = "default_max_text")]
    pub max_text_len: usize,
    /// Rotate the file when it reaches this many bytes (0: never). The chain continues across
    /// files; `jitgate audit verify` walks all of them.
    #[serde(default = "default_rotate_bytes")]
    pub rotate_bytes: u64,
    /// Write a `pg.statement` event for every completed SQL statement. Off: sessions, refusals
    /// and everything else are still audited, statements are not (less disk, no SQL text).
    #[serde(default = "default_true")]
    pub statements: bool,
    /// Regular expressions whose matches are replaced with `***` in every audit event (SQL text,
    /// SSH commands, SFTP paths, reasons) before the line is written and hashed; a group named
    /// `secret` limits the mask to that group.
    #[serde(default)]
    pub redact: Vec<Spanned<String>>,
    /// Sign the chain's head (a `chain.checkpoint` line, ed25519, key in `data_dir/audit/`)
    /// after this many unsigned lines...
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: Spanned<u64>,
    /// ... or this long after the first unsigned line (and before a rotation and at shutdown).
    /// What follows the last checkpoint is not signed: this bounds how much a copy can lose
    /// unnoticed.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: Spanned<HumanDuration>,
}

impl Default for AuditSection {
    fn default() -> Self {
        Self {
            file: default_audit_file(),
            max_text_len: default_max_text(),
            rotate_bytes: default_rotate_bytes(),
            statements: true,
            redact: Vec::new(),
            checkpoint_every: default_checkpoint_every(),
            checkpoint_interval: default_checkpoint_interval(),
        }
    }
}

fn default_audit_file() -> PathBuf {
    PathBuf::from("audit.jsonl")
}
fn default_checkpoint_every() -> Spanned<u64> {
    Spanned::new(0..0, 1000)
}
fn default_checkpoint_interval() -> Spanned<HumanDuration> {
    Spanned::new(0..0, HumanDuration::minutes(1))
}
fn default_rotate_bytes() -> u64 {
    1 << 30
}
fn default_max_text() -> usize {
    4096
}

/// `[notify]`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NotifySection {
    /// `[[notify.webhooks]]`
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    /// `[notify.slack]`: the Slack app (buttons, messages updated in place, direct messages).
    pub slack: Option<SlackConfig>,
}

/// `[notify.slack]`: a Slack app with a bot token and the interactivity endpoint
/// `/v1/slack/interactions`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// The bot token (`xoxb-…`) from the environment.
    pub bot_token_env: Option<String>,
    /// The bot token from a file.
    pub bot_token_file: Option<PathBuf>,
    /// The app's signing secret (checks interaction requests) from the environment.
    pub signing_secret_env: Option<String>,
    /// The signing secret from a file.
    pub signing_secret_file: Option<PathBuf>,
    /// The channel requests are posted to (an id such as `C0123ABC`, or `#name`).
    pub channel: Spanned<String>,
    /// A channel per policy (policy name → channel), instead of `channel`.
    #[serde(default)]
    pub policy_channels: std::collections::BTreeMap<String, String>,
    /// Slack user id → identity, for users whose Slack e-mail is not their identity (and the
    /// only way a Slack user acts as a static identity of this file).
    #[serde(default)]
    pub users: std::collections::BTreeMap<String, String>,
    /// The workspace (team id, `T0123…`) whose users may press buttons; others (a Slack
    /// Connect channel's guests from another organisation) are refused. Strongly advised.
    pub team_id: Option<String>,
    /// The Web API's base URL (a stand-in in tests).
    #[serde(default = "default_slack_api")]
    pub api_url: String,
}

fn default_slack_api() -> String {
    "https://slack.com/api".into()
}

/// `[[notify.webhooks]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// URL from the environment.
    pub url_env: Option<String>,
    /// URL from a file.
    pub url_file: Option<PathBuf>,
    /// Inline URL (webhook URLs are secrets; refused unless `allow_inline_secrets`).
    pub url: Option<Spanned<String>>,
    /// `json` or `slack`.
    #[serde(default)]
    pub format: WebhookFormat,
    /// Event kinds to send (empty: all).
    #[serde(default)]
    pub events: Vec<String>,
    /// HMAC signing secret from the environment.
    pub secret_env: Option<String>,
    /// HMAC signing secret from a file.
    pub secret_file: Option<PathBuf>,
}

/// Webhook payload format.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// Versioned JSON.
    #[default]
    Json,
    /// Slack incoming-webhook blocks.
    Slack,
}
