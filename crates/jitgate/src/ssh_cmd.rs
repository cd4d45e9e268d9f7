//! SSH commands of the CLI: `ssh-cert` (get a user certificate for your key), `ssh-config`
//! (ssh_config entries so `ssh web-1` works) and `play` (replay an SSH session recording).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::json;

use crate::cli::Conn;
use crate::client::Client;

/// The CLI's folder (see `client::config_base`), created 0700.
pub fn config_dir() -> Result<PathBuf> {
    let dir = crate::client::config_base().context("HOME is not set; set JITGATE_CONFIG_DIR")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
    }
    Ok(dir)
}

/// The private key ssh should use: `--key` (a private key path; its `.pub` is beside it) or
/// `config_dir/id_ed25519`, generated on first use.
fn key_path(key: Option<PathBuf>) -> Result<PathBuf> {
    match key {
        Some(k) => {
            let k = if k.extension().is_some_and(|e| e == "pub") {
                k.with_extension("")
            } else {
                k
            };
            if !pub_path(&k).exists() {
                bail!(
                    "{} not found (give the private key path; its .pub must be beside it)",
                    pub_path(&k).display()
                );
            }
            Ok(k)
        }
        None => {
            let k = config_dir()?.join("id_ed25519");
            if !k.exists() {
                jitgate_ssh::keys::load_or_generate(&k, "jitgate")
                    .with_context(|| format!("generating {}", k.display()))?;
                eprintln!("generated {}", k.display());
            }
            Ok(k)
        }
    }
}

fn pub_path(k: &Path) -> PathBuf {
    let mut s = k.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

fn cert_path(k: &Path) -> PathBuf {
    let mut s = k.as_os_str().to_owned();
    s.push("-cert.pub");
    PathBuf::from(s)
}

/// Ask the gateway to sign the key; write `KEY-cert.pub`. Returns (cert path, valid_before).
async fn fetch_cert(c: &Client, key: &Path) -> Result<(PathBuf, u64)> {
    let public =
        std::fs::read_to_string(pub_path(key)).with_context(|| format!("reading {}", pub_path(key).display()))?;
    let v = c.ssh_cert(public.trim()).await?;
    let out = cert_path(key);
    std::fs::write(&out, format!("{}\n", v.certificate)).with_context(|| format!("writing {}", out.display()))?;
    Ok((out, v.valid_before))
}

fn until(valid_before: u64) -> String {
    jiff::Timestamp::from_second(i64::try_from(valid_before).unwrap_or(0))
        .map(|t| t.to_string())
        .unwrap_or_else(|_| valid_before.to_string())
}

/// Fetch a certificate for `key` (default: config_dir/id_ed25519, generated).
pub async fn refresh_cert(c: &Client, key: Option<PathBuf>) -> Result<(PathBuf, u64)> {
    let key = key_path(key)?;
    fetch_cert(c, &key).await
}

/// The default certificate file (config_dir/id_ed25519-cert.pub), if a config folder exists.
pub fn default_cert_path() -> Option<PathBuf> {
    crate::client::config_base().map(|d| cert_path(&d.join("id_ed25519")))
}

/// `jitgate ssh-cert`.
pub async fn ssh_cert(conn: &Conn, key: Option<PathBuf>) -> Result<ExitCode> {
    let c = Client::new(conn)?;
    let key = key_path(key)?;
    let (path, vb) = fetch_cert(&c, &key).await?;
    if conn.json {
        println!(
            "{}",
            json!({"certificate_file": path, "identity_file": key, "valid_before": vb})
        );
    } else {
        println!("wrote {} (valid until {})", path.display(), until(vb));
        println!("ssh uses it with -i {} (or run `jitgate ssh-config`)", key.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// `jitgate ssh-config`: pins the gateway's host CA (and current host key) in
/// `config_dir/known_hosts`, makes sure the certificate is fresh, writes `Host` entries for every
/// SSH resource to `config_dir/ssh_config` and includes that file from the user's ssh config with
/// one `Include` line (re-running replaces the file, never adds a second line).
pub async fn ssh_config(
    conn: &Conn,
    key: Option<PathBuf>,
    print_only: bool,
    ssh_config: Option<PathBuf>,
) -> Result<ExitCode> {
    let c = Client::new(conn)?;
    let info = c.info().await?;
    let Some(addr) = info["ssh"].as_str() else {
        bail!("the gateway has no SSH front end ([listen] ssh is not set)");
    };
    let host_key = info["ssh_host_key"]
        .as_str()
        .context("the gateway did not send its SSH host key")?;
    let (listen_host, port) = addr.rsplit_once(':').unwrap_or((addr, "2222"));
    let host = info["public_url"]
        .as_str()
        .and_then(crate::url_host)
        .or_else(|| (listen_host != "0.0.0.0" && listen_host != "[::]").then(|| listen_host.to_string()))
        .or_else(|| crate::url_host(c.base()))
        .unwrap_or_else(|| "127.0.0.1".into());
    let dir = config_dir()?;
    let key = key_path(key)?;
    let (cert, vb) = fetch_cert(&c, &key).await?;
    // Pinned through the API (TLS-verified), under an alias so it cannot clash with the host's
    // own entries.
    if !safe_word(&host, true) {
        bail!("the gateway's host name {host:?} cannot go into an ssh config (letters, digits, . - : only)");
    }
    for p in [&dir, &key] {
        safe_path(p)?;
    }
    let alias = format!("jitgate-{host}");
    let kh = dir.join("known_hosts");
    let fields = |l: &str| l.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    // The host CA signs every replica's host key (and the next one after a rotation); the key
    // itself is pinned too, for a gateway that presents no certificate.
    let mut pins = String::new();
    if let Some(ca) = info["ssh_host_ca"].as_str() {
        pins.push_str(&format!("@cert-authority {alias} {}\n", fields(ca)));
    }
    pins.push_str(&format!("{alias} {}\n", fields(host_key)));
    // Revocations the user added stay (a leaked gateway key is revoked with `@revoked`).
    if let Ok(old) = std::fs::read_to_string(&kh) {
        for l in old.lines().filter(|l| l.trim_start().starts_with("@revoked")) {
            pins.push_str(l);
            pins.push('\n');
        }
    }
    crate::files::write_private(&kh, pins.as_bytes())?;
    let resources = c.resources().await?;
    let fingerprint = jitgate_ssh::keys::parse_public(host_key)
        .map(|k| jitgate_ssh::keys::fingerprint(&k))
        .unwrap_or_default();
    let mut out = format!(
        "# jitgate SSH entries (generated by `jitgate ssh-config`; certificate valid until {})\n# gateway host key {fingerprint}, pinned in {}\n",
        until(vb),
        kh.display()
    );
    for r in resources.iter().filter(|r| r.kind == "ssh") {
        let name = r.name.as_str();
        // Resources no policy lets you request are left out.
        let Some(login) = r.access.first().map(String::as_str) else {
            continue;
        };
        // What the gateway sends goes into a file ssh reads: nothing but plain names.
        if !safe_word(name, false) || !safe_word(login, false) || !port.bytes().all(|b| b.is_ascii_digit()) {
            eprintln!("jitgate: skipping resource {name:?} (login {login:?}): not a plain name for an ssh config");
            continue;
        }
        out.push_str(&format!(
            "Host {name}\n  HostName {host}\n  Port {port}\n  User {login}@{name}\n  HostKeyAlias {alias}\n  UserKnownHostsFile \"{}\"\n  GlobalKnownHostsFile none\n  StrictHostKeyChecking yes\n  IdentityFile \"{}\"\n  CertificateFile \"{}\"\n  IdentitiesOnly yes\n",
            kh.display(),
            key.display(),
            cert.display()
        ));
    }
    if print_only {
        print!("{out}");
        return Ok(ExitCode::SUCCESS);
    }
    let entries = dir.join("ssh_config");
    // ssh refuses an included file others may write ("Bad owner or permissions").
    crate::files::write_private(&entries, out.as_bytes())?;
    let main = match ssh_config {
        Some(p) => p,
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".ssh/config"))
            .context("HOME is not set: say which ssh config to extend with --ssh-config")?,
    };
    // A config that is a symlink (dotfile managers) is updated where it points.
    let main = std::fs::canonicalize(&main).unwrap_or(main);
    let added = include(&main, &entries)?;
    let n = out.matches("\nHost ").count() + usize::from(out.starts_with("Host "));
    eprintln!(
        "wrote {n} Host entr{} to {}{}; gateway host CA pinned in {}",
        if n == 1 { "y" } else { "ies" },
        entries.display(),
        if added {
            format!(" (included from {})", main.display())
        } else {
            String::new()
        },
        kh.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// A name that can stand unquoted in an ssh config: letters, digits, `.`, `_`, `-` (and `:` in a
/// host, for IPv6).
fn safe_word(s: &str, host: bool) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') || (host && b == b':'))
}

/// A path that can stand double-quoted in an ssh config (no quote, `%` token or line break).
fn safe_path(p: &Path) -> Result<()> {
    let s = p.to_string_lossy();
    if s.contains(['"', '%', '\n', '\r']) {
        bail!(
            "{} cannot go into an ssh config (contains a quote, % or line break); set JITGATE_CONFIG_DIR / --key elsewhere",
            p.display()
        );
    }
    Ok(())
}

/// Make `main` include `file` with one line at its top (an `Include` must come before any `Host`
/// block to apply everywhere). Returns whether the line was added; present already: untouched.
fn include(main: &Path, file: &Path) -> Result<bool> {
    let line = format!("Include \"{}\"", file.display());
    let text = match std::fs::read_to_string(main) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", main.display())),
    };
    if text.lines().any(|l| l.trim() == line) {
        return Ok(false);
    }
    if let Some(parent) = main.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if parent.file_name().is_some_and(|n| n == ".ssh") {
                let _ = std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700));
            }
        }
    }
    let new = format!("# added by `jitgate ssh-config`\n{line}\n\n{text}");
    // Written beside and renamed: a crash never leaves the user's ssh config half-written.
    let tmp = main.with_extension("jitgate-tmp");
    std::fs::write(&tmp, new).with_context(|| format!("writing {}", tmp.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(main).map(|m| m.permissions().mode()).unwrap_or(0o600);
        let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode & 0o777));
    }
    std::fs::rename(&tmp, main).with_context(|| format!("updating {}", main.display()))?;
    Ok(true)
}

/// `jitgate play`: replay an asciicast v2 recording in the terminal.
pub fn play(session: &str, file: Option<PathBuf>, config: &Path, speed: f64, idle_limit: f64) -> Result<ExitCode> {
    let path = match file {
        Some(f) => f,
        None => {
            if session.contains('/') || session.contains("..") {
                bail!("`{session}` is not a session id (s-…)");
            }
            let loaded = crate::serve::report(jitgate_core::config::load(config))?;
            let p = loaded
                .config
                .gateway
                .data_dir
                .join("recordings")
                .join(format!("{session}.cast"));
            if !p.exists() {
                bail!(
                    "no recording for {session} at {} (only interactive SSH sessions are recorded; `jitgate audit search --session {session}` shows its events)",
                    p.display()
                );
            }
            p
        }
    };
    if !(speed > 0.0 && speed.is_finite()) {
        bail!("--speed must be a positive number");
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let events =
        jitgate_ssh::record::cast_output(&text, speed, idle_limit).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (wait, data) in events {
        if !wait.is_zero() {
            out.flush()?;
            std::thread::sleep(wait);
        }
        out.write_all(data.as_bytes())?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
