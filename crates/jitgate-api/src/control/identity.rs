//! Who the caller is: bearer tokens, gateway tokens and OIDC logins, machine tokens, SSH
//! user certificates.

use super::*;
use jitgate_auth::{AuthError, Identity, Oidc, Refused, Tokens};

/// Identity services attached at start-up.
pub struct Login {
    /// Gateway tokens and the revocation list.
    pub tokens: Tokens,
    /// The relying party, when `[oidc]` is configured; a reload replaces it.
    provider: std::sync::RwLock<Option<Provider>>,
}

/// The configured OpenID Connect relying party and what `[oidc]` says about its tokens.
#[derive(Clone)]
pub struct Provider {
    /// The relying party.
    pub oidc: Arc<Oidc>,
    /// `[oidc] accept_id_tokens`.
    pub accept_id_tokens: bool,
}

impl Login {
    /// Gateway tokens and, when `[oidc]` is configured, its relying party.
    pub fn new(tokens: Tokens, provider: Option<Provider>) -> Self {
        Self {
            tokens,
            provider: std::sync::RwLock::new(provider),
        }
    }

    /// Replace the relying party (a reload of `[oidc]`): logins started from now on use the
    /// new one; a code or device login begun before it must be started again.
    pub fn set_provider(&self, provider: Option<Provider>) {
        if let Ok(mut p) = self.provider.write() {
            *p = provider;
        }
    }

    /// The relying party in force.
    pub fn provider(&self) -> Option<Provider> {
        self.provider.read().ok().and_then(|p| p.clone())
    }
}

pub(crate) fn reason_label(e: &AuthError) -> &'static str {
    match e {
        AuthError::Provider(_) => "provider",
        AuthError::Denied(_) => "denied",
        AuthError::InvalidToken(_) => "invalid_id_token",
        AuthError::UnknownAttempt => "unknown_attempt",
        AuthError::Pending => "pending",
        AuthError::BadRequest(_) => "bad_request",
    }
}

impl ControlPlane {
    /// The login services attached at start (none: tests and tools), for a reload to update.
    pub fn identity_services(&self) -> Option<&Login> {
        self.login.as_ref()
    }

    /// The login services, or a refusal saying login is not configured here.
    pub fn login_services(&self) -> ControlResult<&Login> {
        self.login
            .as_ref()
            .ok_or_else(|| ControlError::bad_request("login is not configured on this gateway", None))
    }

    /// The OpenID Connect relying party in force, or a refusal naming the missing `[oidc]`.
    pub fn oidc(&self) -> ControlResult<Provider> {
        self.login_services()?.provider().ok_or_else(|| {
            ControlError::bad_request(
                "this gateway has no OpenID Connect provider configured",
                Some(
                    "operators: add an [oidc] section to gateway.toml; machines use tokens from `jitgate token create`"
                        .into(),
                ),
            )
        })
    }

    /// Check a gateway token (`jg2.`, or `jg1.` from before): authenticity, expiry, revocation.
    pub(crate) fn verify_gateway_token(&self, token: &str) -> Result<Principal, AuthFailure> {
        let refused = |reason, message: String| AuthFailure::Refused { reason, message };
        let login = self
            .login_services()
            .map_err(|_| refused("invalid_token", "invalid or expired token".into()))?;
        match login.tokens.verify(token, self.now().as_second()) {
            Ok(c) => Ok(Principal {
                name: c.sub,
                groups: c.groups,
                auth_time: c.auth_time,
            }),
            Err(e) => {
                let label = match &e {
                    Refused::Revoked => "revoked_token",
                    Refused::Token(jitgate_auth::TokenError::Expired) => "expired_token",
                    Refused::Token(_) => "invalid_token",
                };
                Err(refused(label, e.to_string()))
            }
        }
    }

    /// The outcome of a provider step: failures are counted, logged and audited, then turned
    /// into the API error.
    pub async fn attempt<T>(&self, method: &str, r: Result<T, AuthError>) -> ControlResult<T> {
        match r {
            Ok(v) => Ok(v),
            Err(e) => {
                self.login_failed(method, &e).await;
                Err(ControlError::Login(e))
            }
        }
    }

    /// Count, log and audit a failed login (never with a token, code or secret).
    pub async fn login_failed(&self, method: &str, e: &AuthError) {
        self.metrics()
            .auth_failures_total
            .with_label_values(&["oidc", reason_label(e)])
            .inc();
        tracing::info!(method, error = %e, "login failed");
        let ev = Event::new(Kind::LoginFailed, self.now()).detail(jitgate_audit::details::LoginFailed {
            method,
            error: e.to_string(),
        });
        let _ = self.audit().emit(ev).await;
    }

    /// Mint a gateway token for a verified identity and audit it (no audit, no token). The
    /// token carries the provider's `auth_time`, which a policy's `step_up` checks.
    pub async fn logged_in(&self, method: &str, id: &Identity) -> ControlResult<LoginResult> {
        let login = self.login_services()?;
        let (token, c) = login
            .tokens
            .mint_authenticated(&id.name, &id.groups, self.now().as_second(), id.auth_time)
            .map_err(ControlError::internal)?;
        let expires_at = jiff::Timestamp::from_second(c.exp).map_err(ControlError::internal)?;
        let ev = Event::new(Kind::Login, self.now())
            .actor(&id.name)
            .detail(jitgate_audit::details::Login {
                method,
                groups: &id.groups,
                subject: &id.subject,
                token_id: &c.jti,
                expires_at: expires_at.to_string(),
            });
        self.audit().record(ev).await?;
        if let Ok(mut k) = self.known_groups.lock() {
            let now = self.now().as_second();
            k.retain(|_, l| l.exp > now);
            k.insert(
                id.name.clone(),
                super::KnownLogin {
                    groups: id.groups.clone(),
                    jti: c.jti.clone(),
                    exp: c.exp,
                },
            );
        }
        tracing::info!(identity = %id.name, method, token_id = %c.jti, "login");
        Ok(LoginResult {
            token,
            identity: id.name.clone(),
            groups: id.groups.clone(),
            expires_at: expires_at.to_string(),
            token_id: c.jti,
        })
    }

    /// Who `name` is when they act without a token (a chat button): with `allow_static`, a
    /// static identity of gateway.toml (only an operator's explicit mapping may name one);
    /// otherwise a provider identity with the groups of its latest login on this gateway
    /// while that login's token lives and is not revoked (a logout or an admin's revocation
    /// ends chat actions too). `None`: unknown here (they sign in once). Never with an
    /// `auth_time`, so a policy's `step_up` always refuses it.
    pub fn principal_for(&self, name: &str, allow_static: bool) -> Option<Principal> {
        if let Some(i) = self.catalog().identities.iter().find(|i| i.name == name) {
            return allow_static.then(|| Principal::new(i.name.clone(), i.groups.clone()));
        }
        let now = self.now().as_second();
        let login = self.known_groups.lock().ok()?.get(name).cloned()?;
        let revoked = self.login.as_ref().is_some_and(|l| l.tokens.is_revoked(&login.jti));
        (login.exp > now && !revoked).then(|| Principal::new(name, login.groups))
    }

    /// Load the revocation list from the store (at start).
    pub async fn restore_revocations(&self) -> ControlResult<usize> {
        let Some(login) = self.login.as_ref() else { return Ok(0) };
        let now = self.now().as_second();
        let list = self.store().revoked_tokens(now).await?;
        for (jti, exp) in &list {
            login.tokens.revoke(jti, *exp, now);
        }
        Ok(list.len())
    }

    /// Revoke a gateway token by id until `exp`: in the store, in memory, and audited as `kind`.
    pub async fn revoke_jti(&self, actor: &str, jti: &str, exp: i64, kind: Kind) -> ControlResult<()> {
        let login = self.login_services()?;
        self.store().revoke_token(jti, exp).await?;
        login.tokens.revoke(jti, exp, self.now().as_second());
        let ev = Event::new(kind, self.now())
            .actor(actor)
            .detail(jitgate_audit::details::TokenRevoked { token_id: jti });
        self.audit().record(ev).await?;
        Ok(())
    }
}

impl ControlPlane {
    /// Sign an SSH user certificate for `who` and audit it.
    pub async fn sign_ssh_cert(
        &self,
        who: &Principal,
        public_key: &str,
        bearer: Option<&str>,
    ) -> ControlResult<(String, u64)> {
        let token = match (bearer, self.login.as_ref()) {
            (Some(t), Some(l)) if jitgate_auth::is_gateway_token(t) => l
                .tokens
                .keys
                .verify(t, self.now().as_second())
                .ok()
                .map(|c| (c.jti, c.exp)),
            _ => None,
        };
        let Some(signer) = self.cert_signer.as_ref() else {
            return Err(ControlError::bad_request(
                "this gateway has no SSH front end",
                Some("operators: set [listen] ssh in gateway.toml".into()),
            ));
        };
        let (cert, valid_before) =
            signer(who, public_key, token.as_ref().map(|(j, e)| (j.as_str(), *e))).map_err(|e| {
                ControlError::bad_request(e, Some("send an OpenSSH public key line (ssh-ed25519 AAAA...)".into()))
            })?;
        let ev = Event::new(Kind::SshCertIssued, self.now()).actor(&who.name).detail(
            jitgate_audit::details::SshCertIssued {
                valid_before,
                key: public_key.split_whitespace().take(2).collect::<Vec<_>>().join(" "),
            },
        );
        self.record(ev).await?;
        Ok((cert, valid_before))
    }

    /// Resolve a bearer token to a principal. Failures are not counted here: each edge (HTTP,
    /// Postgres) counts its own under its protocol label.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthFailure> {
        if jitgate_auth::is_gateway_token(token) {
            return self.verify_gateway_token(token);
        }
        let h = jitgate_core::token_hash(token);
        if let Some(i) = self.catalog().identity_by_token_hash(&h) {
            return Ok(Principal::new(i.name.clone(), i.groups.clone()));
        }
        match self.store.token_by_hash(&h).await {
            Ok(Some(t)) => Ok(Principal::new(t.name, t.groups)),
            Ok(None) => Err(AuthFailure::Refused {
                reason: "invalid_token",
                message: "invalid or expired token".into(),
            }),
            Err(e) => {
                tracing::error!(error = %e, "checking a machine token: the store did not answer");
                Err(AuthFailure::Unavailable(
                    "jitgate cannot reach its store to check this token; try again shortly".into(),
                ))
            }
        }
    }

    /// Mint a machine token (admins).
    pub async fn create_token(&self, who: &Principal, name: &str, groups: Vec<String>) -> ControlResult<MintedToken> {
        if !self.catalog().is_admin(&who.groups) {
            return Err(ControlError::forbidden("only admins may create machine tokens", None));
        }
        if name.is_empty() || name.len() > 128 || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(ControlError::bad_request(
                "invalid token name",
                Some("use a short name without spaces, e.g. ci-bot".into()),
            ));
        }
        let raw: [u8; 32] = rand::random();
        let token = format!("jgm_{}", hex::encode(raw));
        let sha256 = jitgate_core::token_hash(&token);
        let now = self.now();
        self.store
            .create_token(&MachineToken {
                name: name.to_string(),
                sha256: sha256.clone(),
                groups: groups.clone(),
                created_at: now,
                created_by: who.name.clone(),
            })
            .await?;
        self.record(Event::new(Kind::TokenCreated, now).actor(&who.name).detail(
            jitgate_audit::details::TokenCreated {
                identity: name,
                groups: &groups,
            },
        ))
        .await?;
        Ok(MintedToken {
            name: name.to_string(),
            token,
            sha256,
        })
    }
}
