//! What a SIGHUP can apply to a running gateway, and what needs a restart.
//!
//! The comparison is on the file's values as written (a `toml::Table`), so moving a key to
//! another line or reformatting the file changes nothing, and every changed key is named by
//! its dotted path (`listen.postgres`, `store.pool_size`).

/// Keys (and whole tables) a reload applies. Everything else is read once at start.
/// - `resources`, `policies`, `identities` and the `[gateway]` groups and durations they use:
///   the catalog, swapped atomically (live grants and sessions are re-checked against it);
/// - `notify`: the webhooks;
/// - `oidc`: the relying party (its client secret is read again from its file or variable);
/// - `audit.redact`: the redaction patterns.
///
/// The TLS certificate's *content* is reloaded as well (on SIGHUP and on a file change), but
/// its paths under `[tls]` are not.
pub const RELOADABLE: &[&str] = &[
    "resources",
    "policies",
    "identities",
    "notify.webhooks",
    "oidc",
    "audit.redact",
    "gateway.admin_groups",
    "gateway.auditor_groups",
    "gateway.expiry_warning",
    "gateway.pending_timeout",
    "gateway.wait_on_connect",
];

/// The dotted keys that differ between `running` and `new` and that only a restart applies,
/// sorted. Empty: the reload applies everything that changed.
pub fn restart_needed(running: &toml::Table, new: &toml::Table) -> Vec<String> {
    let mut changed = Vec::new();
    diff("", running, new, &mut changed);
    changed.retain(|k| !reloadable(k));
    changed.sort();
    changed
}

fn reloadable(key: &str) -> bool {
    RELOADABLE
        .iter()
        .any(|r| key == *r || key.strip_prefix(r).is_some_and(|rest| rest.starts_with('.')))
}

fn diff(prefix: &str, a: &toml::Table, b: &toml::Table, out: &mut Vec<String>) {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (a.get(k), b.get(k)) {
            (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => diff(&path, x, y, out),
            (x, y) if x != y => out.push(path),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn t(s: &str) -> toml::Table {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn names_each_changed_key_that_needs_a_restart_and_nothing_else() {
        let old = t(r#"
[gateway]
data_dir = "/d"
admin_groups = ["a"]
[listen]
http = "0:1"
postgres = "0:2"
[oidc]
issuer = "https://a"
[[resources]]
name = "x"
"#);
        let new = t(r#"
[gateway]
admin_groups = ["b"]
data_dir = "/e"
[listen]
http = "0:1"
postgres = "0:3"
ssh = "0:4"
[oidc]
issuer = "https://b"
[store]
pool_size = 4
[[resources]]
name = "y"
"#);
        assert_eq!(
            restart_needed(&old, &new),
            ["gateway.data_dir", "listen.postgres", "listen.ssh", "store"]
        );
    }

    #[test]
    fn reformatting_or_reordering_needs_no_restart() {
        let old = t("[listen]\nhttp = \"0:1\"\n[tls]\nnames = [\"a\"]\n");
        let new = t("[tls]\nnames = [ \"a\" ]\n\n[listen]\n  http = \"0:1\"\n");
        assert!(restart_needed(&old, &new).is_empty());
    }

    #[test]
    fn a_prefix_is_not_a_table() {
        // `audit.redact` is reloadable; `audit.redaction_x` (were it a key) is not.
        assert!(reloadable("audit.redact"));
        assert!(!reloadable("audit.redactx"));
        assert!(!reloadable("audit.file"));
        assert!(reloadable("oidc.client_id"));
    }
}
