//! Section by section: every rule a `gateway.toml` must keep, each finding with its line and
//! the fix; the compiled [`Catalog`] when there is none.

use super::*;

pub(super) fn validate(c: &Config, d: &mut Diags<'_>) -> Catalog {
    let allow_inline = c.gateway.allow_inline_secrets;
    check_listeners(c, d);
    check_store(c, d, allow_inline);
    check_oidc(c, d, allow_inline);
    let identities = identities(c, d, allow_inline);
    let resources = resources(c, d, allow_inline);
    let policies = super::policies::policies(c, d, &resources);
    check_redact(c, d);
    check_webhooks(c, d, allow_inline);
    check_slack(c, d);
    check_console(c, d);
    let oncall = oncall_sources(c, d);
    Catalog {
        oncall,
        resources,
        policies,
        identities,
        admin_groups: c.gateway.admin_groups.clone(),
        auditor_groups: c.gateway.auditor_groups.clone(),
        expiry_warning: c.gateway.expiry_warning,
        wait_on_connect: c.gateway.wait_on_connect,
        console_url: c
            .console
            .enabled
            .then(|| {
                c.gateway
                    .public_url
                    .as_deref()
                    .map(|u| u.trim_end_matches('/').to_string())
            })
            .flatten(),
    }
}

/// `[[oncall]]`: a unique name, exactly one of url and file, a known format, sane timings.
fn oncall_sources(c: &Config, d: &mut Diags<'_>) -> Vec<crate::catalog::OnCallSource> {
    use crate::catalog::{OnCallLocation, OnCallSource};
    use crate::oncall::OnCallFormat;
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for o in &c.oncall {
        let name = o.name.get_ref();
        let at = span(&o.name);
        let mut ok = true;
        if name.trim().is_empty() || !seen.insert(name.clone()) {
            d.error(
                at.clone(),
                format!("[[oncall]] name `{name}` is empty or used twice"),
                Some("give each source a unique name (auto_approve conditions refer to it)".into()),
            );
            ok = false;
        }
        let location = match (&o.url, &o.file) {
            (Some(u), None) if u.starts_with("https://") || u.starts_with("http://") => {
                Some(OnCallLocation::Url(u.clone()))
            }
            (Some(u), None) => {
                d.error(
                    at.clone(),
                    format!("[[oncall]] `{name}`: url `{u}` is not an http(s) URL"),
                    Some(
                        "e.g. url = \"https://api.pagerduty.com/oncalls?include[]=users&schedule_ids[]=PABC123\""
                            .into(),
                    ),
                );
                None
            }
            (None, Some(f)) => Some(OnCallLocation::File(f.clone())),
            _ => {
                d.error(
                    at.clone(),
                    format!("[[oncall]] `{name}` needs exactly one of `url` and `file`"),
                    Some("url = \"https://...\" polls an endpoint; file = \"oncall.json\" reads a file a job keeps current".into()),
                );
                None
            }
        };
        let format = match o.format.get_ref().as_str() {
            "pagerduty" => Some(OnCallFormat::PagerDuty),
            "simple" => Some(OnCallFormat::Simple),
            other => {
                d.error(
                    span(&o.format),
                    format!("[[oncall]] `{name}`: format `{other}` is neither `pagerduty` nor `simple`"),
                    Some("pagerduty: PagerDuty's GET /oncalls answer; simple: {\"oncall\": [{\"identity\": \"...\", \"level\": 1}]}".into()),
                );
                None
            }
        };
        if o.poll_every.secs() == 0 || o.timeout.secs() == 0 {
            d.error(
                at.clone(),
                format!("[[oncall]] `{name}`: poll_every and timeout must be at least 1s"),
                None,
            );
            ok = false;
        }
        if o.max_age < o.poll_every {
            d.error(
                at.clone(),
                format!(
                    "[[oncall]] `{name}`: max_age {} is shorter than poll_every {}: the source would be stale between reads",
                    o.max_age, o.poll_every
                ),
                Some(format!("set max_age to at least {} (e.g. three polls)", o.poll_every)),
            );
            ok = false;
        }
        if let Some(OnCallLocation::Url(u)) = &location {
            let has_credential = o.credential_env.is_some() || o.credential_file.is_some();
            if u.starts_with("http://") && has_credential {
                d.warning(
                    at.clone(),
                    format!("[[oncall]] `{name}`: url is http://, so its credential travels in cleartext"),
                    Some("use https:// (plain http is only sensible on loopback)".into()),
                );
            }
            if format == Some(OnCallFormat::PagerDuty)
                && !u.contains("schedule_ids")
                && !u.contains("escalation_policy_ids")
            {
                d.warning(
                    at.clone(),
                    format!(
                        "[[oncall]] `{name}`: the url names no schedule_ids[] or escalation_policy_ids[], so PagerDuty answers with everyone on call in the account: whoever is on call for any team is on call here"
                    ),
                    Some("add &schedule_ids[]=PXXXXXX (or escalation_policy_ids[]) for the team that owns these resources".into()),
                );
            }
        }
        if o.credential_env.is_some() && o.credential_file.is_some() {
            d.error(
                at.clone(),
                format!("[[oncall]] `{name}` has both credential_env and credential_file"),
                Some("keep one".into()),
            );
            ok = false;
        }
        if o.file.is_some() && (o.credential_env.is_some() || o.credential_file.is_some()) {
            d.warning(
                at.clone(),
                format!("[[oncall]] `{name}` reads a file: its credential is not used"),
                None,
            );
        }
        if let (true, Some(location), Some(format)) = (ok, location, format) {
            out.push(OnCallSource {
                name: name.clone(),
                location,
                format,
                poll_every: o.poll_every,
                max_age: o.max_age,
                header: o.header.clone(),
                credential: o
                    .credential_env
                    .clone()
                    .map(SecretRef::Env)
                    .or_else(|| o.credential_file.clone().map(SecretRef::File)),
                timeout: o.timeout,
            });
        }
    }
    out
}

/// `[console]`: timeouts that can end a session.
fn check_console(c: &Config, d: &mut Diags<'_>) {
    let (idle, abs) = (c.console.idle_timeout, c.console.absolute_timeout);
    if idle.secs() < 60 || abs.secs() < 60 {
        d.error(
            None,
            format!("[console] idle_timeout {idle} and absolute_timeout {abs} must be at least 1m"),
            Some("defaults: idle_timeout = \"30m\", absolute_timeout = \"12h\"".into()),
        );
    } else if idle > abs {
        d.error(
            None,
            format!("[console] idle_timeout {idle} is longer than absolute_timeout {abs}"),
            Some(format!("lower idle_timeout to {abs} or less")),
        );
    }
}

/// `[listen]`, `[postgres]` and `[tls]`.
fn check_listeners(c: &Config, d: &mut Diags<'_>) {
    check_addr(d, "[listen] http", &c.listen.http);
    if let Ok(a) = c.listen.http.get_ref().parse::<SocketAddr>()
        && !a.ip().is_loopback()
        && !c.listen.http_uses_tls()
    {
        d.warning(
            c.listen.http_tls.as_ref().and_then(span),
            "http_tls = false on a non-loopback address: bearer tokens would cross the network in clear",
            Some("remove http_tls (TLS is automatic beyond loopback) or put a TLS-terminating proxy in front".into()),
        );
    }
    for (what, v) in [
        ("[listen] postgres", &c.listen.postgres),
        ("[listen] ssh", &c.listen.ssh),
        ("[listen] ops", &c.listen.ops),
    ] {
        if let Some(v) = v {
            check_addr(d, what, v);
        }
    }

    if !(1..=10_000_000).contains(&c.postgres.max_scram_iterations) {
        d.error(
            None,
            format!(
                "[postgres] max_scram_iterations = {} is out of range",
                c.postgres.max_scram_iterations
            ),
            Some("use 1..=10000000 (default 100000; PostgreSQL's own default is 4096)".into()),
        );
    }

    // [tls]
    if let Some(t) = &c.tls {
        check_tls(t, d);
    }
}

/// `[store]`.
fn check_store(c: &Config, d: &mut Diags<'_>, allow_inline: bool) {
    let st = &c.store;
    let sources =
        usize::from(st.url.is_some()) + usize::from(st.url_env.is_some()) + usize::from(st.url_file.is_some());
    if sources > 1 {
        d.error(
            st.url.as_ref().and_then(span),
            "[store]: more than one of url, url_env, url_file given",
            Some("keep exactly one".into()),
        );
    }
    if let Some(u) = &st.url {
        let s = u.get_ref();
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            let has_password = s
                .split_once("://")
                .and_then(|(_, rest)| rest.split(['/', '?']).next())
                .and_then(|auth| auth.rsplit_once('@'))
                .is_some_and(|(cred, _)| cred.contains(':'));
            if has_password && !allow_inline {
                d.error(
                    span(u),
                    "inline secret refused: the store URL carries a password",
                    Some("put the URL in `url_env = \"VAR\"` or `url_file = \"/path\"`, or set allow_inline_secrets = true in [gateway] for a throw-away setup".into()),
                );
            }
        } else if !s.starts_with("sqlite://") {
            d.error(
                span(u),
                format!("unsupported store URL `{s}`"),
                Some("write `postgres://user@host:5432/jitgate` (shared by replicas) or `sqlite:///path/to/jitgate.db`, or omit [store] for SQLite in data_dir".into()),
            );
        }
    }
    if st.pool_size == 0 || st.pool_size > 256 {
        d.error(
            None,
            format!("[store] pool_size = {} is out of range", st.pool_size),
            Some("use 1..=256 (default 8)".into()),
        );
    }
    if let Some(n) = &st.node
        && (n.is_empty() || n.len() > 64 || !n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
    {
        d.error(
            None,
            format!("[store] node = {n:?} is not a valid node name"),
            Some("use 1-64 letters, digits, '-', '_' or '.', unique per replica (e.g. gw-1)".into()),
        );
    }
}

/// `[oidc]`.
fn check_oidc(c: &Config, d: &mut Diags<'_>, allow_inline: bool) {
    if let Some(o) = &c.oidc {
        secret(
            d,
            "client_secret",
            &o.client_secret_env,
            &o.client_secret_file,
            &o.client_secret,
            allow_inline,
        );
        if !(o.issuer.starts_with("https://")
            || o.issuer.starts_with("http://127.0.0.1")
            || o.issuer.starts_with("http://localhost"))
        {
            d.error(
                None,
                format!("[oidc] issuer `{}` must be an https URL", o.issuer),
                Some("use the provider's https issuer URL".into()),
            );
        }
    }
}

/// `[[identities]]`: each checked, duplicates refused.
fn identities(c: &Config, d: &mut Diags<'_>, allow_inline: bool) -> Vec<StaticIdentity> {
    let mut identities = Vec::new();
    let mut seen_ids: BTreeMap<String, usize> = BTreeMap::new();
    for i in &c.identities {
        let name = i.name.get_ref();
        if let Some(first) = seen_ids.get(name) {
            let (l, _) = d.line_col(*first);
            d.error(
                span(&i.name),
                format!("duplicate identity `{name}` (first defined on line {l})"),
                Some("give each identity a unique name".into()),
            );
        }
        seen_ids.insert(name.clone(), i.name.span().start);
        let mut token_sha256 = None;
        if let Some(h) = &i.token_sha256 {
            let v = h.get_ref().to_ascii_lowercase();
            if v.len() != 64 || !v.chars().all(|c| c.is_ascii_hexdigit()) {
                d.error(
                    span(h),
                    "token_sha256 must be 64 hex characters",
                    Some("paste the line `jitgate token create NAME` printed".into()),
                );
            }
            token_sha256 = Some(v);
        }
        let src = secret(d, "token", &i.token_env, &i.token_file, &i.token, allow_inline);
        if token_sha256.is_some() && src.is_some() {
            d.error(
                span(&i.name),
                format!("identity `{name}`: both token_sha256 and a token source"),
                Some("keep one".into()),
            );
        }
        if let Some(src) = src {
            match src.resolve() {
                Ok(tok) => token_sha256 = Some(hex::encode(Sha256::digest(tok.as_bytes()))),
                Err(e) => d.warning(
                    span(&i.name),
                    format!("identity `{name}`: {e}; it cannot log in until it is"),
                    None,
                ),
            }
        }
        for k in &i.ssh_keys {
            if let Err(e) = check_ssh_public_key(k) {
                d.error(
                    span(&i.name),
                    format!("identity `{name}`: ssh_keys entry is not an OpenSSH public key: {e}"),
                    Some("paste the line of the .pub file: `ssh-ed25519 AAAA... comment`".into()),
                );
            }
        }
        identities.push(StaticIdentity {
            name: name.clone(),
            groups: i.groups.clone(),
            token_sha256,
            ssh_keys: i.ssh_keys.clone(),
        });
    }
    identities
}

/// `[[resources]]`: each checked and resolved (credentials, keys, TLS).
fn resources(c: &Config, d: &mut Diags<'_>, allow_inline: bool) -> BTreeMap<String, Resource> {
    let mut resources = BTreeMap::new();
    let mut first_res: BTreeMap<String, usize> = BTreeMap::new();
    for r in &c.resources {
        let name = r.name.get_ref();
        if !valid_name(name) {
            d.error(
                span(&r.name),
                format!("resource name `{name}` is not allowed"),
                Some("use letters, digits, `-`, `_` and `.` (at most 64)".into()),
            );
        }
        if let Some(first) = first_res.get(name) {
            let (l, _) = d.line_col(*first);
            d.error(
                span(&r.name),
                format!("duplicate resource `{name}` (first defined on line {l})"),
                Some("give each resource a unique name".into()),
            );
            continue;
        }
        first_res.insert(name.clone(), r.name.span().start);
        let addr = r.address.get_ref();
        match addr.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {}
            _ => d.error(
                span(&r.address),
                format!("address `{addr}` needs a host and a port"),
                Some("write \"host:port\", e.g. \"db.internal:5432\"".into()),
            ),
        }
        let (credentials, access_levels) = match r.kind {
            ResourceKind::Postgres => postgres_resource(r, name, d, allow_inline),
            ResourceKind::Ssh => (BTreeMap::new(), ssh_resource(r, name, d)),
        };
        resources.insert(
            name.clone(),
            Resource {
                name: name.clone(),
                kind: r.kind,
                address: addr.clone(),
                database: r.database.clone(),
                databases: r.databases.clone(),
                labels: r.labels.clone(),
                access_levels,
                credentials,
                tls: r.tls.as_ref().map(|t| (t.mode, t.ca_file.clone())),
                host_key: r.host_key.clone(),
                known_hosts_file: r.known_hosts_file.clone(),
                host_ca: r.host_ca.clone(),
                upstream_key_file: r.upstream_key_file.clone(),
                upstream_ca: r.upstream_ca,
                connect_timeout: r.connect_timeout.unwrap_or(HumanDuration(10)),
            },
        );
    }
    resources
}

/// A postgres resource: its credentials (passwords resolved) and the access levels they offer;
/// SSH settings on it are an error.
fn postgres_resource(
    r: &schema::ResourceConfig,
    name: &str,
    d: &mut Diags<'_>,
    allow_inline: bool,
) -> (BTreeMap<String, Credential>, Vec<String>) {
    let mut credentials = BTreeMap::new();
    if r.credentials.is_empty() {
        d.error(
            span(&r.name),
            format!("postgres resource `{name}` has no credentials"),
            Some("add `credentials.read-only = { user = \"app_ro\", password_env = \"VAR\" }`".into()),
        );
    }
    for (level, cr) in &r.credentials {
        if level != READ_ONLY && level != READ_WRITE {
            d.error(
                span(&r.name),
                format!("resource `{name}`: unknown access level `{level}` in credentials"),
                Some("use `read-only` or `read-write`".into()),
            );
        }
        let pw = secret(
            d,
            "password",
            &cr.password_env,
            &cr.password_file,
            &cr.password,
            allow_inline,
        );
        credentials.insert(
            level.clone(),
            Credential {
                user: cr.user.clone(),
                password: pw,
            },
        );
    }
    if !r.logins.is_empty() || r.host_key.is_some() || r.upstream_key_file.is_some() || !r.host_ca.is_empty() {
        d.error(
            span(&r.name),
            format!("resource `{name}` is kind postgres but has SSH keys (logins/host_key/upstream_key_file)"),
            Some("remove them or set kind = \"ssh\"".into()),
        );
    }
    let levels = [READ_ONLY, READ_WRITE]
        .iter()
        .filter(|l| credentials.contains_key(**l))
        .map(|s| s.to_string())
        .collect();
    (credentials, levels)
}

/// An ssh resource: its logins (the access levels), with a pinned host key and an upstream
/// credential required; postgres credentials on it are an error.
fn ssh_resource(r: &schema::ResourceConfig, name: &str, d: &mut Diags<'_>) -> Vec<String> {
    if r.logins.is_empty() {
        d.error(
            span(&r.name),
            format!("ssh resource `{name}` has no logins"),
            Some("add `logins = [\"ubuntu\"]`".into()),
        );
    }
    if let Some(Err(e)) = r.host_key.as_deref().map(check_ssh_public_key) {
        d.error(
            span(&r.name),
            format!("ssh resource `{name}`: host_key is not an OpenSSH public key: {e}"),
            Some("use `ssh-keyscan -t ed25519 HOST` and paste `ssh-ed25519 AAAA...`".into()),
        );
    }
    for (i, ca) in r.host_ca.iter().enumerate() {
        if let Err(e) = check_ssh_public_key(ca) {
            d.error(
                span(&r.name),
                format!(
                    "ssh resource `{name}`: host_ca entry {} is not an OpenSSH public key: {e}",
                    i + 1
                ),
                Some("paste the CA's public key line (`ssh-ed25519 AAAA...`, the host CA's .pub file)".into()),
            );
        }
    }
    if r.host_key.is_none() && r.known_hosts_file.is_none() && r.host_ca.is_empty() {
        d.error(
            span(&r.name),
            format!("ssh resource `{name}` has no pinned host key"),
            Some(
                "add `host_key = \"ssh-ed25519 AAAA...\"` (ssh-keyscan prints it), `known_hosts_file` or `host_ca`"
                    .into(),
            ),
        );
    }
    if r.upstream_key_file.is_none() && !r.upstream_ca {
        d.error(
            span(&r.name),
            format!("ssh resource `{name}` has no upstream credential"),
            Some("add `upstream_ca = true` (preferred) or `upstream_key_file = \"/path\"`".into()),
        );
    }
    if !r.credentials.is_empty() {
        d.error(
            span(&r.name),
            format!("ssh resource `{name}` has postgres credentials"),
            Some("remove them or set kind = \"postgres\"".into()),
        );
    }
    r.logins.clone()
}

/// `[audit] redact` patterns and the checkpoint cadence.
fn check_redact(c: &Config, d: &mut Diags<'_>) {
    let every = &c.audit.checkpoint_every;
    if *every.get_ref() == 0 {
        d.error(
            span(every),
            "[audit] checkpoint_every must be at least 1 (checkpoints cannot be turned off)",
            Some("checkpoint_every = 1000 signs every thousand lines; a signature costs about 20 µs".into()),
        );
    }
    let iv = &c.audit.checkpoint_interval;
    if iv.get_ref().secs() == 0 || iv.get_ref().secs() > 86_400 {
        d.error(
            span(iv),
            format!(
                "[audit] checkpoint_interval {} must be between 1s and 24h",
                iv.get_ref()
            ),
            Some("checkpoint_interval = \"1m\": at most a minute of lines is ever unsigned".into()),
        );
    }
    for p in &c.audit.redact {
        if let Err(e) = jitgate_audit::Redactor::new(&[p.get_ref()]) {
            d.error(
                span(p),
                format!("[audit] redact pattern is not usable: {}", e.message),
                Some("write a Rust regular expression (https://docs.rs/regex/#syntax) that matches only the secret, e.g. 'AKIA[0-9A-Z]{16}' or '(?i)token=(?P<secret>\\S+)'".into()),
            );
        }
    }
}

/// `[[notify.webhooks]]`.
fn check_slack(c: &Config, d: &mut Diags<'_>) {
    let Some(s) = &c.notify.slack else { return };
    for (what, env, file, example) in [
        ("bot_token", &s.bot_token_env, &s.bot_token_file, "SLACK_BOT_TOKEN"),
        (
            "signing_secret",
            &s.signing_secret_env,
            &s.signing_secret_file,
            "SLACK_SIGNING_SECRET",
        ),
    ] {
        match (env, file) {
            (None, None) => d.error(
                span(&s.channel),
                format!("[notify.slack] needs {what}_env or {what}_file"),
                Some(format!(
                    "add `{what}_env = \"{example}\"` (the Slack app's settings page shows it)"
                )),
            ),
            (Some(_), Some(_)) => d.error(
                span(&s.channel),
                format!("[notify.slack] has both {what}_env and {what}_file"),
                Some("keep one".into()),
            ),
            _ => {}
        }
    }
    if s.channel.get_ref().trim().is_empty() {
        d.error(
            span(&s.channel),
            "[notify.slack] channel is empty",
            Some("e.g. channel = \"C0123ABCD\"".into()),
        );
    }
    for p in s.policy_channels.keys() {
        if !c.policies.iter().any(|x| x.name.get_ref() == p) {
            d.error(
                span(&s.channel),
                format!("[notify.slack] policy_channels names policy `{p}`, which does not exist"),
                None,
            );
        }
    }
    if !(s.api_url.starts_with("https://")
        || s.api_url.starts_with("http://127.0.0.1")
        || s.api_url.starts_with("http://localhost"))
    {
        d.error(
            span(&s.channel),
            format!(
                "[notify.slack] api_url {} must be https (or loopback for a local stand-in)",
                s.api_url
            ),
            None,
        );
    }
}

fn check_webhooks(c: &Config, d: &mut Diags<'_>, allow_inline: bool) {
    for w in &c.notify.webhooks {
        let src = secret(d, "url", &w.url_env, &w.url_file, &w.url, allow_inline);
        if src.is_none() {
            d.error(
                None,
                "a [[notify.webhooks]] entry has no URL",
                Some("add `url_env = \"SLACK_WEBHOOK_URL\"`".into()),
            );
        }
        if w.secret_env.is_some() && w.secret_file.is_some() {
            d.error(
                None,
                "a [[notify.webhooks]] entry has both secret_env and secret_file",
                Some("keep one".into()),
            );
        }
        for e in &w.events {
            match e.parse::<jitgate_audit::Kind>() {
                Ok(jitgate_audit::Kind::PgStatement | jitgate_audit::Kind::ChainContinued) => d.error(
                    None,
                    format!("[[notify.webhooks]] event `{e}` is not delivered to webhooks"),
                    Some(
                        "statements and chain links stay in the audit log; ship it (jitgate audit export) or search it (jitgate audit search)"
                            .into(),
                    ),
                ),
                Ok(_) => {}
                Err(unknown) => d.error(
                    None,
                    format!("[[notify.webhooks]] {unknown}"),
                    Some(
                        "docs/notifications.md lists every kind (request.created, grant.expiring, session.killed, login, ...)"
                            .into(),
                    ),
                ),
            }
        }
    }
}
