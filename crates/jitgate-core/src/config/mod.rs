//! `gateway.toml`: parsing, validation with file:line:column diagnostics, and compilation into
//! the runtime [`Catalog`].
//!
//! [`load`] never panics on any input: every problem becomes a [`Diag`] naming the place and the
//! fix. Semantic checks (duplicate names, globs that match nothing, inline secrets, durations
//! that contradict each other) run after the syntax is accepted, and all of them are reported at
//! once so an operator fixes a file in one pass.

mod catalog_schema;
pub mod diag;
mod policies;
mod reload;
pub mod schema;
mod validate;

use validate::validate;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use diag::{Diag, Diags, Severity};
pub use reload::{RELOADABLE, restart_needed};
use schema::{Config, ResourceKind};
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::catalog::{
    AutoApprove, Catalog, Credential, Policy, READ_ONLY, READ_WRITE, Resource, SecretRef, StaticIdentity, Step,
};
use crate::duration::HumanDuration;

/// A file that passed validation.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The parsed file, with relative paths resolved against the file's folder.
    pub config: Config,
    /// The runtime view.
    pub catalog: Catalog,
    /// Findings that did not refuse the file.
    pub warnings: Vec<Diag>,
    /// The file's values as written (no paths resolved), for [`restart_needed`] to compare.
    pub raw: toml::Table,
}

/// Read, parse, validate and compile `path`. On failure, every finding (errors first).
pub fn load(path: &Path) -> Result<Loaded, Vec<Diag>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![Diag {
            severity: Severity::Error,
            file: path.to_path_buf(),
            line: 0,
            col: 0,
            message: format!("cannot read the config file: {e}"),
            help: Some("pass the right file with --config PATH (default ./gateway.toml)".into()),
        }]
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    load_str(path, &text, &base)
}

/// Like [`load`], for text already read. Relative paths are resolved against `base`.
pub fn load_str(path: &Path, text: &str, base: &Path) -> Result<Loaded, Vec<Diag>> {
    let mut d = Diags::new(path, text);
    let mut config: Config = match toml::from_str(text) {
        Ok(c) => c,
        Err(e) => {
            syntax_error(&mut d, &e);
            return Err(d.items);
        }
    };
    resolve_paths(&mut config, base);
    let catalog = validate(&config, &mut d);
    if d.has_errors() {
        let mut items = d.items;
        items.sort_by_key(|x| (x.severity != Severity::Error, x.line));
        return Err(items);
    }
    Ok(Loaded {
        config,
        catalog,
        warnings: d.items,
        raw: toml::from_str(text).unwrap_or_default(),
    })
}

fn syntax_error(d: &mut Diags<'_>, e: &toml::de::Error) {
    let msg = e.message().trim().to_string();
    let mut help = None;
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (field, tail) = rest.split_once('`').unwrap_or((rest, ""));
        let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
        help = Some(match diag::did_you_mean(field, expected.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None if !expected.is_empty() => format!("the keys allowed here are: {}", expected.join(", ")),
            None => "remove this key".to_string(),
        });
        d.error(e.span(), format!("unknown key `{field}`"), help);
        return;
    }
    if msg.contains("missing field") {
        help = Some("add the key to this table (see gateway.toml.example)".to_string());
    } else if msg.contains("unknown variant") {
        help = Some("use one of the values listed above".to_string());
    }
    d.error(e.span(), msg, help);
}

fn resolve_paths(c: &mut Config, base: &Path) {
    let fix = |p: &mut PathBuf| {
        if p.is_relative() && !base.as_os_str().is_empty() {
            *p = base.join(&*p);
        }
    };
    fix(&mut c.gateway.data_dir);
    if let Some(p) = c.gateway.shared_keys_dir.as_mut() {
        fix(p);
    }
    if let Some(t) = c.tls.as_mut() {
        for p in [&mut t.cert_file, &mut t.key_file, &mut t.ca_file]
            .into_iter()
            .flatten()
        {
            fix(p);
        }
    }
    for i in &mut c.identities {
        if let Some(p) = i.token_file.as_mut() {
            fix(p);
        }
    }
    for w in &mut c.notify.webhooks {
        for p in [&mut w.url_file, &mut w.secret_file].into_iter().flatten() {
            fix(p);
        }
    }
    if let Some(p) = c.ssh.host_ca_key_file.as_mut() {
        fix(p);
    }
    for o in &mut c.oncall {
        for p in [&mut o.file, &mut o.credential_file].into_iter().flatten() {
            fix(p);
        }
    }
    for p in &mut c.policies {
        if let Some(f) = p.ticket.as_mut().and_then(|t| t.get_mut().credential_file.as_mut()) {
            fix(f);
        }
    }
    for r in &mut c.resources {
        for cr in r.credentials.values_mut() {
            if let Some(p) = cr.password_file.as_mut() {
                fix(p);
            }
        }
        for p in [&mut r.known_hosts_file, &mut r.upstream_key_file]
            .into_iter()
            .flatten()
        {
            fix(p);
        }
        if let Some(p) = r.tls.as_mut().and_then(|t| t.ca_file.as_mut()) {
            fix(p);
        }
    }
}

fn span<T>(s: &Spanned<T>) -> Option<std::ops::Range<usize>> {
    Some(s.span())
}

fn secret(
    d: &mut Diags<'_>,
    what: &str,
    env: &Option<String>,
    file: &Option<PathBuf>,
    inline: &Option<Spanned<String>>,
    allow_inline: bool,
) -> Option<SecretRef> {
    let n = usize::from(env.is_some()) + usize::from(file.is_some()) + usize::from(inline.is_some());
    if n > 1 {
        d.error(
            inline.as_ref().and_then(span),
            format!("{what}: more than one source given"),
            Some(format!("keep exactly one of `{what}_env`, `{what}_file`")),
        );
    }
    if let Some(i) = inline {
        if !allow_inline {
            d.error(
                span(i),
                format!("inline secret `{what}` refused: secrets in gateway.toml end up in backups and diffs"),
                Some(format!(
                    "write `{what}_env = \"VAR\"` or `{what}_file = \"/path\"` instead, or set \
                     `allow_inline_secrets = true` in [gateway] for a throw-away setup"
                )),
            );
        }
        return Some(SecretRef::Inline(i.get_ref().clone()));
    }
    if let Some(e) = env {
        return Some(SecretRef::Env(e.clone()));
    }
    file.as_ref().map(|f| SecretRef::File(f.clone()))
}

fn check_addr(d: &mut Diags<'_>, what: &str, s: &Spanned<String>) {
    if s.get_ref().parse::<SocketAddr>().is_err() {
        d.error(
            span(s),
            format!("{what}: `{}` is not an address", s.get_ref()),
            Some("write IP:PORT, e.g. \"127.0.0.1:8080\" or \"0.0.0.0:15432\"".into()),
        );
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn check_tls(t: &schema::TlsSection, d: &mut Diags<'_>) {
    let first_name = t.names.first().and_then(span);
    match (&t.cert_file, &t.key_file) {
        (Some(_), None) | (None, Some(_)) => d.error(
            None,
            "[tls]: cert_file and key_file go together",
            Some("set both (a certificate and its key), or neither for the generated certificate".into()),
        ),
        (Some(_), Some(_)) if !t.names.is_empty() => d.error(
            first_name,
            "[tls] names applies to the generated certificate, but cert_file is set",
            Some(
                "remove names (the configured certificate's own subjectAltNames apply) or remove cert_file/key_file"
                    .into(),
            ),
        ),
        (None, None) if t.ca_file.is_some() => d.error(
            None,
            "[tls] ca_file is for a configured certificate (cert_file), but none is set",
            Some(
                "remove ca_file: the generated certificate's CA (data_dir/tls/ca.crt) is handed to clients by itself"
                    .into(),
            ),
        ),
        _ => {}
    }
    for n in &t.names {
        let v = n.get_ref();
        let ok = !v.is_empty()
            && v.len() <= 253
            && (v.parse::<std::net::IpAddr>().is_ok()
                || v.split('.').enumerate().all(|(i, label)| {
                    (!label.is_empty()
                        && label.len() <= 63
                        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
                        || (i == 0 && label == "*")
                }));
        if !ok {
            d.error(
                span(n),
                format!("[tls] names: `{v}` is not a DNS name or an IP address"),
                Some("write the host name clients connect to (`gw.example.com`, `*.gw.example.com`) or an IP address, without scheme or port".into()),
            );
        }
    }
}

/// Shape check of an OpenSSH public key line (`TYPE BASE64 [comment]`): a known type, valid
/// base64, and a blob that names the same type. (The SSH front end parses it fully.)
pub fn check_ssh_public_key(line: &str) -> Result<(), String> {
    use base64::Engine;
    const TYPES: [&str; 7] = [
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    ];
    let mut parts = line.split_whitespace();
    let (Some(ty), Some(b64)) = (parts.next(), parts.next()) else {
        return Err("expected `TYPE BASE64 [comment]`".into());
    };
    if !TYPES.contains(&ty) {
        return Err(format!("unknown key type `{ty}`"));
    }
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| "the key is not valid base64".to_string())?;
    let named = blob
        .get(..4)
        .and_then(|n| <[u8; 4]>::try_from(n).ok())
        .map(u32::from_be_bytes)
        .and_then(|n| blob.get(4..4 + n as usize));
    if named != Some(ty.as_bytes()) {
        return Err(format!("the key data is not a `{ty}` key"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ssh_public_keys_are_shape_checked() {
        let ok = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl host";
        assert_eq!(super::check_ssh_public_key(ok), Ok(()));
        assert!(
            super::check_ssh_public_key("ssh-ed25519")
                .unwrap_err()
                .contains("TYPE BASE64")
        );
        assert!(
            super::check_ssh_public_key("ssh-dss AAAA")
                .unwrap_err()
                .contains("unknown key type")
        );
        assert!(
            super::check_ssh_public_key("ssh-ed25519 !!!")
                .unwrap_err()
                .contains("base64")
        );
        let rsa_blob_as_ed = ok.replace("ssh-ed25519 ", "ssh-rsa ");
        assert!(
            super::check_ssh_public_key(&rsa_blob_as_ed)
                .unwrap_err()
                .contains("not a `ssh-rsa` key")
        );
    }

    use super::*;

    fn check(text: &str) -> Result<Loaded, Vec<Diag>> {
        load_str(Path::new("gateway.toml"), text, Path::new(""))
    }

    const GOOD: &str = r#"
[[identities]]
name = "alice"
groups = ["dev"]
token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

[[resources]]
name = "prod-db"
kind = "postgres"
address = "127.0.0.1:5432"
credentials.read-only = { user = "ro", password_env = "RO_PW" }

[[policies]]
name = "prod"
resources = ["prod-*"]
requesters = ["dev"]
approvers = ["dba"]
"#;

    #[test]
    fn bad_redaction_patterns_are_reported_at_their_line() {
        let text = "[audit]\nredact = [\n  'AKIA[0-9A-Z]{16}',\n  '(?P<secret>unclosed',\n  'x*',\n]\n";
        let errs = check(&format!("{GOOD}{text}")).err().unwrap_or_default();
        let msgs: Vec<String> = errs.iter().map(ToString::to_string).collect();
        let all = msgs.join("\n");
        assert!(
            all.contains("gateway.toml:21:3: error: [audit] redact pattern is not usable: unclosed group"),
            "{all}"
        );
        assert!(
            all.contains("gateway.toml:22:3: error: [audit] redact pattern is not usable: it matches the empty string"),
            "{all}"
        );
        assert_eq!(msgs.iter().filter(|m| m.contains("redact pattern")).count(), 2, "{all}");
    }

    #[test]
    fn a_minimal_file_loads() {
        let l = check(GOOD).map_err(|e| format!("{e:?}"));
        let Ok(l) = l else { panic!("{l:?}") };
        assert_eq!(l.catalog.resources.len(), 1);
        assert_eq!(l.catalog.policies[0].steps[0].approvers, vec!["dba".to_string()]);
    }

    #[test]
    fn unknown_key_gets_line_and_did_you_mean() {
        let bad = GOOD.replace("requesters = [\"dev\"]", "requestors = [\"dev\"]");
        let e = check(&bad).err().unwrap_or_default();
        let s = e[0].to_string();
        assert!(
            s.starts_with("gateway.toml:16:1: error: unknown key `requestors`"),
            "{s}"
        );
        assert!(s.contains("did you mean `requesters`?"), "{s}");
    }

    #[test]
    fn glob_matching_nothing_is_an_error_at_its_line() {
        let bad = GOOD.replace("[\"prod-*\"]", "[\"prd-*\"]");
        let e = check(&bad).err().unwrap_or_default();
        let s = e.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
        assert!(
            s.contains("gateway.toml:15:14: error: policy `prod`: `prd-*` matches no resource"),
            "{s}"
        );
    }

    #[test]
    fn inline_secret_refused_unless_allowed() {
        let bad = GOOD.replace("password_env = \"RO_PW\"", "password = \"hunter2\"");
        let e = check(&bad).err().unwrap_or_default();
        assert!(e[0].to_string().contains("inline secret `password` refused"), "{e:?}");
        assert!(!e[0].to_string().contains("hunter2"));
        let ok = format!("[gateway]\nallow_inline_secrets = true\n{bad}");
        assert!(check(&ok).is_ok());
    }

    #[test]
    fn duplicates_and_bad_durations_are_all_reported() {
        let bad = format!(
            "{GOOD}\n[[resources]]\nname = \"prod-db\"\nkind = \"postgres\"\naddress = \"x:1\"\ncredentials.read-only = {{ user = \"ro\" }}\n"
        );
        let e = check(&bad).err().unwrap_or_default();
        assert!(
            e.iter().any(|d| d
                .message
                .contains("duplicate resource `prod-db` (first defined on line 8)")),
            "{e:?}"
        );
        let bad = GOOD.replace(
            "approvers = [\"dba\"]",
            "approvers = [\"dba\"]\nmax_duration = \"4 hours\"",
        );
        let e = check(&bad).err().unwrap_or_default();
        assert!(e[0].to_string().contains("invalid duration"), "{e:?}");
    }
}
