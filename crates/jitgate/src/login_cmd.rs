//! `jitgate login` / `logout`: OpenID Connect through the gateway.
//!
//! Code flow (RFC 8252): the CLI listens on `127.0.0.1:<free port>`, asks the gateway for an
//! authorization URL with that redirect, opens (or prints) it, receives the browser's redirect with
//! the code and hands the code to the gateway, which exchanges it (the client secret stays on the
//! gateway), verifies the ID token and mints a gateway token. Device flow (RFC 8628): the CLI
//! shows a code to enter elsewhere and polls the gateway. The token is stored in
//! `config_dir/login.json` (0600) and, when the gateway runs SSH, an SSH certificate for
//! `config_dir/id_ed25519` is fetched too.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use jitgate_api::wire;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cli::Conn;
use crate::client::{Client, LoginFile, login_path};
use crate::files::write_private;

const PAGE_OK: &str =
    "<!doctype html><title>jitgate</title><h1>Logged in</h1><p>You can close this tab and return to the terminal.</p>";

/// `jitgate login`.
pub async fn login(conn: &Conn, device: bool, no_browser: bool, fresh: bool, ca_pin: Option<&str>) -> Result<ExitCode> {
    if fresh && device {
        anyhow::bail!(
            "--fresh needs the browser login (the device flow cannot ask the provider for a new authentication); drop --device"
        );
    }
    // With a fingerprint: pin the gateway's CA first, so the login itself is verified.
    let mut conn = conn.clone();
    if let Some(pin) = ca_pin {
        let path = crate::pg_cmd::pin_by_fingerprint(&conn, pin).await?;
        println!("pinned the gateway's CA ({}) in {}", pin.trim(), path.display());
        conn.ca_file = Some(path);
    }
    let conn = &conn;
    // Log in without an old token in the way.
    let c = Client::new_anonymous(conn)?;
    let result = if device {
        device_flow(&c).await?
    } else {
        code_flow(&c, no_browser, fresh).await?
    };
    let wire::LoginResult {
        token,
        identity,
        groups,
        expires_at: expires,
        ..
    } = result;
    let path = login_path().context("cannot find a config folder: set HOME or JITGATE_CONFIG_DIR")?;
    // Pin the gateway's CA (fetched over this verified, or loopback, connection) for the API
    // and for Postgres clients (`connect`, `pg-service`, `pg-env`: sslmode=verify-full).
    let authed = Client::with_token(conn, &token)?;
    let ca_file = match crate::pg_cmd::pg_root(conn, &authed).await {
        Ok(crate::pg_cmd::PgRoot::File(f)) => Some(f),
        Ok(crate::pg_cmd::PgRoot::System) => None,
        Err(e) => {
            eprintln!("warning: the gateway's CA is not pinned: {e:#}");
            conn.ca_file.clone()
        }
    };
    let file = LoginFile {
        url: Some(c.base().to_string()),
        token: Some(token.clone()),
        identity: Some(identity.clone()),
        expires_at: Some(expires.clone()),
        ca_file,
    };
    write_private(&path, &serde_json::to_vec_pretty(&file)?)?;
    crate::pg_cmd::refresh_pgpass(&authed).await;
    println!("logged in as {identity} [{}] until {expires}", groups.join(", "));
    // SSH certificate, when the gateway has an SSH front end.
    let info = authed.info().await.unwrap_or(Value::Null);
    if info.get("ssh").is_some() {
        match crate::ssh_cmd::refresh_cert(&authed, None).await {
            Ok((cert, _)) => println!(
                "SSH certificate: {} (`jitgate ssh-config` prints ssh_config entries)",
                cert.display()
            ),
            Err(e) => eprintln!("warning: no SSH certificate: {e:#}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn code_flow(c: &Client, no_browser: bool, fresh: bool) -> Result<wire::LoginResult> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on a loopback port for the login redirect")?;
    let port = listener.local_addr()?.port();
    let redirect = format!("http://127.0.0.1:{port}/callback");
    let wire::LoginStarted { auth_url: url, state } = c.login_start(&redirect, fresh.then_some(0)).await?;
    let url = url.as_str();
    println!("To log in, open this URL in a browser:\n\n  {url}\n");
    if !no_browser && !open_browser(url) {
        eprintln!("(no browser could be started here: open the URL on any machine; set $BROWSER to choose one)");
    }
    let (code, got_state) = tokio::time::timeout(Duration::from_secs(300), wait_for_redirect(&listener))
        .await
        .context("no login within 5 minutes")??;
    if got_state != state {
        bail!("the login redirect carried another state (a stale or forged redirect); run `jitgate login` again");
    }
    c.login_finish(&wire::LoginFinish { state, code }).await
}

/// Serve the loopback redirect until it carries a code (or an error).
async fn wait_for_redirect(listener: &tokio::net::TcpListener) -> Result<(String, String)> {
    loop {
        let (mut sock, _) = listener.accept().await?;
        let mut buf = Vec::with_capacity(2048);
        let mut chunk = [0u8; 2048];
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                let n = sock.read(&mut chunk).await?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
        if !matches!(read, Ok(Ok(()))) {
            continue;
        }
        let (code, state) = match jitgate_auth::callback::parse(&buf) {
            jitgate_auth::callback::Redirect::Other => {
                let _ = sock
                    .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                continue;
            }
            jitgate_auth::callback::Redirect::Incomplete => {
                let _ = sock
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                continue;
            }
            jitgate_auth::callback::Redirect::Refused {
                error: err,
                description: desc,
            } => {
                let body = format!(
                    "<!doctype html><title>jitgate</title><h1>Login failed</h1><p>{}</p>",
                    html_escape(&format!("{err} {desc}"))
                );
                let _ = sock
                    .write_all(format!("HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes())
                    .await;
                bail!("the identity provider refused the login: {err} {desc}");
            }
            jitgate_auth::callback::Redirect::Code { code, state } => (code, state),
        };
        let _ = sock
            .write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{PAGE_OK}", PAGE_OK.len()).as_bytes())
            .await;
        return Ok((code, state));
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

async fn device_flow(c: &Client) -> Result<wire::LoginResult> {
    let d = c.device_start().await?;
    println!(
        "To log in, visit {} and enter the code {}",
        d.verification_uri, d.user_code
    );
    if let Some(full) = &d.verification_uri_complete {
        println!("(or open {full})");
    }
    let interval = Duration::from_secs(d.interval.clamp(1, 30));
    let deadline = std::time::Instant::now() + Duration::from_secs(d.expires_in);
    loop {
        tokio::time::sleep(interval).await;
        if let Some(done) = c.device_poll(&d.id).await? {
            return Ok(done);
        }
        if std::time::Instant::now() > deadline {
            bail!("the device code expired before the login was approved; run `jitgate login --device` again");
        }
    }
}

/// `jitgate logout`: revoke the stored token at the gateway and forget it.
pub async fn logout(conn: &Conn) -> Result<ExitCode> {
    let path = login_path().context("no config folder")?;
    let c = Client::new(conn)?;
    let result = c.logout().await;
    let _ = std::fs::remove_file(&path);
    let cert = crate::ssh_cmd::default_cert_path();
    if let Some(cert) = cert {
        let _ = std::fs::remove_file(cert);
    }
    match result {
        Ok(v) => {
            println!("logged out (token {} revoked)", v.revoked);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("warning: the gateway did not revoke the token: {e:#}\nthe local login was removed");
            Ok(ExitCode::from(1))
        }
    }
}

/// Open `url` in the user's browser: `$BROWSER` first (a `:`-separated list of commands, `%s`
/// standing for the URL, as Python's `webbrowser` and `xdg-open` read it), then the platform's
/// opener (`open` on macOS; `rundll32 url.dll,FileProtocolHandler` on Windows, which, unlike
/// `cmd /c start`, does not reinterpret `&` in the URL; `xdg-open`, `gio open` or WSL's
/// `wslview` elsewhere). True when one started.
pub(crate) fn open_browser(url: &str) -> bool {
    // The URL comes from the gateway: only a web page is handed to an opener (never a file,
    // a program or something that reads as an option).
    let web = url.starts_with("https://") || url.starts_with("http://");
    if !web || url.chars().any(char::is_whitespace) {
        eprintln!("(not opening {url:?}: not an http(s) URL)");
        return false;
    }
    let mut candidates: Vec<Vec<String>> = Vec::new();
    if let Some(b) = std::env::var_os("BROWSER") {
        let sep = if cfg!(windows) { ';' } else { ':' };
        for cmd in b.to_string_lossy().split(sep).filter(|c| !c.trim().is_empty()) {
            let mut words: Vec<String> = cmd.split_whitespace().map(str::to_string).collect();
            if words.iter().any(|w| w.contains("%s")) {
                for w in &mut words {
                    *w = w.replace("%s", url);
                }
            } else {
                words.push(url.to_string());
            }
            candidates.push(words);
        }
    }
    let platform: &[&[&str]] = if cfg!(target_os = "macos") {
        &[&["open"]]
    } else if cfg!(windows) {
        &[&["rundll32", "url.dll,FileProtocolHandler"]]
    } else {
        &[&["xdg-open"], &["gio", "open"], &["wslview"]]
    };
    for p in platform {
        let mut words: Vec<String> = p.iter().map(|w| (*w).to_string()).collect();
        words.push(url.to_string());
        candidates.push(words);
    }
    candidates.iter().any(|words| {
        let Some((prog, args)) = words.split_first() else {
            return false;
        };
        let Ok(mut child) = std::process::Command::new(prog)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        else {
            return false;
        };
        // Openers like xdg-open exit at once, non-zero when they found no browser (a headless
        // host): then the next one is tried. One still running after 2 s is a browser.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match child.try_wait() {
                Ok(Some(st)) => return st.success(),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                _ => return true,
            }
        }
    })
}
