//! Postgres clients that verify the gateway: `jitgate connect`, `jitgate pg-service`,
//! `jitgate pg-env`, and the gateway CA pin they share with `jitgate login`.
//!
//! The password a user sends to the Postgres front end is their gateway token, so a client that
//! does not check who answers (`sslmode=require`) hands it to whoever sits on the path. Every
//! connection string the CLI writes says `sslmode=verify-full` with `sslrootcert` set to the
//! gateway's CA, pinned in the config folder (`gateway-ca.pem`): fetched over a verified API
//! connection (or loopback), or checked against a fingerprint the operator gave
//! (`jitgate login --ca-pin sha256:...`). A gateway with a publicly trusted certificate has no
//! CA to pin and clients use the system roots (`sslrootcert=system`, libpq 16+).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};

use crate::cli::Conn;
use crate::client::{Client, config_base};
use crate::files::write_private;

/// What Postgres clients verify the gateway's certificate against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgRoot {
    /// A CA file (the pinned gateway CA, or the user's `--ca-file`).
    File(PathBuf),
    /// The system's trusted roots (a publicly trusted gateway certificate).
    System,
}

impl PgRoot {
    /// The `sslrootcert` value.
    pub fn sslrootcert(&self) -> String {
        match self {
            Self::File(p) => p.display().to_string(),
            Self::System => "system".to_string(),
        }
    }
}

/// `config_base()/gateway-ca.pem`.
pub fn pinned_ca_path() -> Result<PathBuf> {
    Ok(config_base()
        .context("cannot find a config folder: set HOME or JITGATE_CONFIG_DIR")?
        .join("gateway-ca.pem"))
}

/// `config_base()/pgpass`: the passfile `pg-env` points at (PGPASSFILE).
pub fn pgpass_path() -> Result<PathBuf> {
    Ok(config_base()
        .context("cannot find a config folder: set HOME or JITGATE_CONFIG_DIR")?
        .join("pgpass"))
}

/// Normalize a fingerprint as printed by the gateway (`sha256:ab:cd...`, any case).
fn normalize_pin(pin: &str) -> Result<String> {
    let hexpart: String = pin
        .trim()
        .strip_prefix("sha256:")
        .or_else(|| pin.trim().strip_prefix("SHA256:"))
        .unwrap_or(pin.trim())
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hexpart.len() != 64 || !hexpart.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "`{pin}` is not a certificate fingerprint: expected `sha256:` and 64 hex digits, as `jitgate serve` logs it (ca_sha256)"
        );
    }
    Ok(format!("sha256:{hexpart}"))
}

/// The one certificate of a CA answer: its fingerprint and a PEM of exactly the DER that was
/// hashed (what gets pinned). More than one certificate is refused: pinning a file whose first
/// certificate matched would trust whatever else rides along.
fn single_ca(pem: &str) -> Result<(String, String)> {
    use base64::Engine;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("the gateway's CA answer is not a PEM certificate: {e}"))?;
    let [der] = certs.as_slice() else {
        bail!(
            "the gateway's CA answer holds {} certificates, not exactly one: refused (someone may be adding their own)",
            certs.len()
        );
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    Ok((jitgate_pg::tls::fingerprint(der), out))
}

/// `jitgate login --ca-pin`: fetch the gateway's CA without trusting the connection, accept it
/// only if its fingerprint is `pin`, and pin it. Returns the pinned file.
pub async fn pin_by_fingerprint(conn: &Conn, pin: &str) -> Result<PathBuf> {
    let want = normalize_pin(pin)?;
    let base = Client::new_anonymous(conn)?.base().to_string();
    if is_remote_plain_http(&base) {
        bail!(
            "{base} is plain HTTP to another host: the login and the token would cross the network in clear, whatever CA is pinned\nhint: use the gateway's https:// URL"
        );
    }
    // Unverified on purpose: what it returns is trusted only if it hashes to the pin, and
    // everything after (the login itself) is verified against it.
    let http = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")?;
    let resp = http
        .get(format!("{base}{}", jitgate_api::wire::paths::TLS_CA))
        .send()
        .await
        .map_err(|e| crate::exit::Unreachable(format!("cannot reach the gateway at {base}: {}", e.without_url())))?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        bail!(
            "the gateway at {base} has no CA to pin (its certificate is meant to be publicly trusted); log in without --ca-pin"
        );
    }
    let v: jitgate_api::wire::TlsCa = resp.json().await.context("unexpected answer from /v1/tls/ca")?;
    let (got, pem) = single_ca(&v.pem)?;
    if got != want {
        bail!(
            "the gateway at {base} presents CA {got}, not the pinned {want}: someone may be intercepting the connection; nothing was sent. Check the fingerprint with the gateway's operator"
        );
    }
    let path = pinned_ca_path()?;
    write_private(&path, pem.as_bytes())?;
    Ok(path)
}

/// Scheme (lower case) and host of an API URL, as the HTTP client will use them.
fn scheme_host(base: &str) -> Option<(String, String)> {
    let u = reqwest::Url::parse(base).ok()?;
    Some((
        u.scheme().to_ascii_lowercase(),
        u.host_str()?.trim_matches(['[', ']']).to_string(),
    ))
}

/// Whether an API URL reaches this host only (plain HTTP there is as private as the host).
fn is_loopback_url(base: &str) -> bool {
    scheme_host(base)
        .is_some_and(|(_, h)| h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()))
}

/// Plain HTTP to another host: nothing fetched over it can be trusted, no token may cross it.
fn is_remote_plain_http(base: &str) -> bool {
    scheme_host(base).is_none_or(|(scheme, _)| scheme != "https") && !is_loopback_url(base)
}

/// The root Postgres clients should verify the gateway against: the user's `--ca-file`, else
/// the gateway's CA as the API (verified, or loopback) hands it out, pinned again on every call
/// so a renewed leaf keeps working; the system roots when the gateway has no CA to pin.
pub async fn pg_root(conn: &Conn, c: &Client) -> Result<PgRoot> {
    if let Some(f) = &conn.ca_file {
        return Ok(PgRoot::File(f.clone()));
    }
    let base = c.base().to_string();
    if is_remote_plain_http(&base) {
        let pinned = pinned_ca_path()?;
        if pinned.exists() {
            return Ok(PgRoot::File(pinned));
        }
        bail!(
            "the gateway's API at {base} is plain HTTP beyond this host, so the CA it hands out cannot be trusted\nhint: run `jitgate login --ca-pin sha256:...` with the fingerprint from the operator, or pass --ca-file"
        );
    }
    match c.tls_ca().await {
        Ok(v) => {
            let (_, pem) = single_ca(&v.pem)?;
            let pem = pem.as_str();
            let path = pinned_ca_path()?;
            let same = std::fs::read_to_string(&path).is_ok_and(|old| old == pem);
            if !same {
                write_private(&path, pem.as_bytes())?;
            }
            Ok(PgRoot::File(path))
        }
        Err(e) if e.to_string().contains("publicly trusted") => Ok(PgRoot::System),
        Err(e) => Err(e.context("fetching the gateway's CA (/v1/tls/ca)")),
    }
}

/// Where and as whom a Postgres client reaches the gateway.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Host name or address (what the certificate must name).
    pub host: String,
    /// The Postgres front end's port.
    pub port: String,
    /// The user's identity (the Postgres user name).
    pub user: String,
}

/// Host and port from `/v1/info` (public_url's host, else the listen address when specific,
/// else the API's host), user from `/v1/whoami`.
pub async fn endpoint(c: &Client) -> Result<Endpoint> {
    let who = c.whoami().await?;
    let info = c.info().await?;
    let Some(addr) = info["postgres"].as_str() else {
        bail!("the gateway has no Postgres front end ([listen] postgres is not set)");
    };
    let port = addr.rsplit_once(':').map(|x| x.1).unwrap_or("15432").to_string();
    let listen_host = addr.rsplit_once(':').map_or(addr, |x| x.0);
    let listen_host = listen_host.trim_start_matches('[').trim_end_matches(']');
    let host = info["public_url"]
        .as_str()
        .and_then(crate::url_host)
        .or_else(|| (listen_host != "0.0.0.0" && listen_host != "::").then(|| listen_host.to_string()))
        .or_else(|| crate::url_host(c.base()))
        .unwrap_or_else(|| "127.0.0.1".into());
    let user = who.principal.name;
    for (what, v) in [("host", &host), ("port", &port), ("user", &user)] {
        if v.is_empty() || v.chars().any(|c| c.is_control()) {
            bail!("the gateway sent an unusable {what} ({v:?}): refusing to write it into connection settings");
        }
    }
    Ok(Endpoint { host, port, user })
}

/// A file's text, empty when it does not exist; an error (never an empty string) when it cannot
/// be read, so a file that is not UTF-8 or not readable is not overwritten with only our lines.
fn read_existing(path: &std::path::Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(anyhow!("cannot read {} ({e}); not rewriting it", path.display())),
    }
}

/// The postgres resources this user sees.
async fn pg_resources(c: &Client) -> Result<Vec<String>> {
    let resources = c.resources().await?;
    Ok(resources
        .into_iter()
        .filter(|r| r.kind == "postgres")
        .map(|r| r.name)
        .collect())
}

/// Escape a field of a pgpass line (`:` and `\`).
fn pgpass_field(s: &str) -> String {
    s.replace('\\', "\\\\").replace(':', "\\:")
}

/// The pgpass line giving the token as the password for this gateway endpoint (any database).
fn pgpass_line(ep: &Endpoint, token: &str) -> String {
    format!(
        "{}:{}:*:{}:{}\n",
        pgpass_field(&ep.host),
        pgpass_field(&ep.port),
        pgpass_field(&ep.user),
        pgpass_field(token)
    )
}

/// Write `config_base()/pgpass` (0600; libpq ignores a passfile others can read) with the token
/// as the password for this gateway endpoint. Returns its path.
pub fn write_pgpass(ep: &Endpoint, token: &str) -> Result<PathBuf> {
    let path = pgpass_path()?;
    let text = format!(
        "# written by jitgate (login, pg-env) - the gateway token is the password\n{}",
        pgpass_line(ep, token)
    );
    write_private(&path, text.as_bytes())?;
    Ok(path)
}

/// The passfile libpq, pgjdbc and node-postgres read by default: `$PGPASSFILE`, else
/// `~/.pgpass`.
fn default_pgpass() -> Result<PathBuf> {
    if let Some(f) = std::env::var_os("PGPASSFILE") {
        return Ok(PathBuf::from(f));
    }
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".pgpass"))
}

// Markers of jitgate's block in the user's passfile (no `:`, so they can never match a
// connection as an entry would).
const PASS_BEGIN: &str = "# >>> jitgate - written by `jitgate pg-service` and `jitgate login`, replaced on re-run";
const PASS_END: &str = "# <<< jitgate";

/// Put the token line into jitgate's block of the user's default passfile, at the top (the
/// first matching line wins, so a wildcard entry of the user's cannot shadow it). Other lines
/// stay. Returns the file.
fn write_default_pgpass(ep: &Endpoint, token: &str) -> Result<PathBuf> {
    let path = default_pgpass()?;
    let old = read_existing(&path)?;
    let block = format!("{PASS_BEGIN}\n{}{PASS_END}\n", pgpass_line(ep, token));
    let rest = replace_block_with(&old, "", PASS_BEGIN, PASS_END);
    write_private(&path, format!("{block}{rest}").as_bytes())?;
    Ok(path)
}

/// After `jitgate login`: a new token replaces the old one where the CLI wrote it before.
pub async fn refresh_pgpass(c: &Client) {
    let Some(token) = c.token().map(str::to_string) else {
        return;
    };
    let private = pgpass_path().ok().filter(|p| p.exists());
    let shared = default_pgpass()
        .ok()
        .filter(|p| std::fs::read_to_string(p).is_ok_and(|t| t.lines().any(|l| l.trim() == PASS_BEGIN)));
    if private.is_none() && shared.is_none() {
        return;
    }
    let Ok(ep) = endpoint(c).await else { return };
    if let Some(p) = private
        && let Err(e) = write_pgpass(&ep, &token)
    {
        eprintln!("warning: cannot update {}: {e:#}", p.display());
    }
    if let Some(p) = shared
        && let Err(e) = write_default_pgpass(&ep, &token)
    {
        eprintln!("warning: cannot update {}: {e:#}", p.display());
    }
}

/// libpq's major version as psql reports it (`psql (PostgreSQL) 15.18`), if psql runs.
fn psql_major() -> Option<u32> {
    let out = std::process::Command::new("psql").arg("--version").output().ok()?;
    let s = String::from_utf8_lossy(&out.stdout);
    s.split_whitespace()
        .find_map(|w| w.split('.').next().and_then(|m| m.parse().ok()))
}

fn system_roots_need_16(root: &PgRoot) -> Result<()> {
    if *root == PgRoot::System
        && let Some(m) = psql_major()
        && m < 16
    {
        bail!(
            "the gateway's certificate is publicly trusted, and verifying it against the system roots needs libpq 16+ (sslrootcert=system); this psql is {m}\nhint: install a PostgreSQL 16+ client, or pass --ca-file with the CA of the gateway's certificate"
        );
    }
    Ok(())
}

/// `jitgate connect RESOURCE`: psql, verified (`sslmode=verify-full`), the token as password.
pub async fn connect(resource: &str, dbname: Option<String>, args: &[String], conn: &Conn) -> Result<ExitCode> {
    let c = Client::new(conn)?;
    let resources = c.resources().await?;
    let Some(r) = resources.iter().find(|r| r.name == resource) else {
        bail!("unknown resource `{resource}`; `jitgate resources` lists them");
    };
    if r.kind != "postgres" {
        bail!(
            "`jitgate connect` supports postgres resources; `{resource}` is {}",
            r.kind
        );
    }
    let ep = endpoint(&c).await?;
    let root = pg_root(conn, &c).await?;
    system_roots_need_16(&root)?;
    let db = match dbname {
        Some(d) => format!("{resource}/{d}"),
        None => resource.to_string(),
    };
    let conninfo = format!(
        "host={} port={} user={} dbname={} sslmode=verify-full sslrootcert={}",
        conninfo_value(&ep.host),
        conninfo_value(&ep.port),
        conninfo_value(&ep.user),
        conninfo_value(&db),
        conninfo_value(&root.sslrootcert())
    );
    let token = c
        .token()
        .ok_or_else(|| anyhow!("no token: set JITGATE_TOKEN or run `jitgate login`"))?;
    eprintln!("psql \"{conninfo}\"");
    let status = std::process::Command::new("psql")
        .arg(&conninfo)
        .args(args)
        .env("PGPASSWORD", token)
        .status()
        .context("running psql (is the PostgreSQL client installed?)")?;
    Ok(ExitCode::from(u8::try_from(status.code().unwrap_or(1)).unwrap_or(1)))
}

/// A conninfo value, quoted when it needs to be.
fn conninfo_value(v: &str) -> String {
    if !v.is_empty() && !v.contains([' ', '\'', '\\', '=']) {
        return v.to_string();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

const BEGIN: &str = "# >>> jitgate: written by `jitgate pg-service`; re-running replaces this block";
const END: &str = "# <<< jitgate";

/// The user's service file: `$PGSERVICEFILE`, else `~/.pg_service.conf`.
fn default_service_file() -> Result<PathBuf> {
    if let Some(f) = std::env::var_os("PGSERVICEFILE") {
        return Ok(PathBuf::from(f));
    }
    let home = std::env::var_os("HOME").context("HOME is not set: pass --file")?;
    Ok(PathBuf::from(home).join(".pg_service.conf"))
}

/// Section names of a service file outside jitgate's block.
fn foreign_sections(text: &str) -> Vec<String> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t == BEGIN {
            inside = true;
        } else if t == END {
            inside = false;
        } else if !inside && let Some(name) = t.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            out.push(name.trim().to_string());
        }
    }
    out
}

/// `text` with jitgate's block replaced by `block` (appended when there was none).
fn replace_block(text: &str, block: &str) -> String {
    replace_block_with(text, block, BEGIN, END)
}

fn replace_block_with(text: &str, block: &str, begin: &str, end: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    let mut placed = false;
    for line in text.lines() {
        let t = line.trim();
        if t == begin {
            inside = true;
            if !placed {
                out.push_str(block);
                placed = true;
            }
            continue;
        }
        if inside {
            if t == end {
                inside = false;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !placed && !block.is_empty() {
        if !out.is_empty() && !out.ends_with("\n\n") {
            out.push('\n');
        }
        out.push_str(block);
    }
    out
}

/// One service section.
/// One service section. Only keys pgjdbc's service-file reader knows too (it refuses a
/// service with `passfile`), so the token comes from the default passfile.
fn service_section(name: &str, ep: &Endpoint, root: &PgRoot) -> String {
    format!(
        "[{name}]\nhost={}\nport={}\nuser={}\ndbname={name}\nsslmode=verify-full\nsslrootcert={}\n\n",
        ep.host,
        ep.port,
        ep.user,
        root.sslrootcert(),
    )
}

/// `jitgate pg-service`: a `pg_service.conf` entry per postgres resource (so `psql
/// service=prod-db`, GUI tools and drivers that read service files connect verified), written
/// into jitgate's own block of the user's service file (or printed), and the token into
/// jitgate's block of the user's passfile (`$PGPASSFILE` or `~/.pgpass`).
pub async fn pg_service(conn: &Conn, print: bool, file: Option<PathBuf>) -> Result<ExitCode> {
    let c = Client::new(conn)?;
    let token = c
        .token()
        .ok_or_else(|| anyhow!("no token: set JITGATE_TOKEN or run `jitgate login`"))?
        .to_string();
    let ep = endpoint(&c).await?;
    let root = pg_root(conn, &c).await?;
    let names = pg_resources(&c).await?;
    if names.is_empty() {
        bail!("no postgres resources are visible to you (`jitgate resources` lists what you may request)");
    }
    let path = match file {
        Some(f) => f,
        None => default_service_file()?,
    };
    let old = read_existing(&path)?;
    let taken = foreign_sections(&old);
    let mut block = format!("{BEGIN}\n# gateway: {}\n\n", c.base());
    let mut written = Vec::new();
    for n in &names {
        if n.contains([']', '\n', '\r']) {
            eprintln!(
                "warning: resource name `{}` cannot be a service name; skipped",
                n.escape_debug()
            );
            continue;
        }
        if taken.contains(n) {
            eprintln!(
                "warning: {} already has a [{n}] section of its own (libpq uses the first); left it alone and wrote no jitgate entry for {n}",
                path.display()
            );
            continue;
        }
        block.push_str(&service_section(n, &ep, &root));
        written.push(n.clone());
    }
    block.push_str(END);
    block.push('\n');
    if print {
        print!("{block}");
        return Ok(ExitCode::SUCCESS);
    }
    let text = replace_block(&old, &block);
    write_private(&path, text.as_bytes())?;
    let passfile = write_default_pgpass(&ep, &token)?;
    println!(
        "wrote {} service entries to {} ({}) and your token to {}; connect with: psql service={}",
        written.len(),
        path.display(),
        written.join(", "),
        passfile.display(),
        written.first().map_or("NAME", String::as_str)
    );
    if root == PgRoot::System {
        println!("note: sslrootcert=system needs libpq 16+ in the client");
    }
    Ok(ExitCode::SUCCESS)
}

/// A value for a POSIX shell, single-quoted when needed.
fn sh_quote(v: &str) -> String {
    if !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./-_".contains(&b))
    {
        return v.to_string();
    }
    format!("'{}'", v.replace('\'', "'\\''"))
}

/// `jitgate pg-env RESOURCE`: `export` lines for libpq (`PG*`) and node-postgres (which reads
/// no `PGSSLROOTCERT`: Node trusts `NODE_EXTRA_CA_CERTS`).
pub async fn pg_env(resource: &str, conn: &Conn) -> Result<ExitCode> {
    let c = Client::new(conn)?;
    let token = c
        .token()
        .ok_or_else(|| anyhow!("no token: set JITGATE_TOKEN or run `jitgate login`"))?
        .to_string();
    let names = pg_resources(&c).await?;
    if !names.iter().any(|n| n == resource) {
        bail!("unknown postgres resource `{resource}`; `jitgate resources` lists them");
    }
    let ep = endpoint(&c).await?;
    let root = pg_root(conn, &c).await?;
    let passfile = write_pgpass(&ep, &token)?;
    let mut vars = vec![
        ("PGHOST", ep.host.clone()),
        ("PGPORT", ep.port.clone()),
        ("PGUSER", ep.user.clone()),
        ("PGDATABASE", resource.to_string()),
        ("PGSSLMODE", "verify-full".to_string()),
        ("PGSSLROOTCERT", root.sslrootcert()),
        ("PGPASSFILE", passfile.display().to_string()),
    ];
    if let PgRoot::File(f) = &root {
        vars.push(("NODE_EXTRA_CA_CERTS", f.display().to_string()));
    }
    for (k, v) in vars {
        println!("export {k}={}", sh_quote(&v));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_is_replaced_never_duplicated_and_foreign_sections_stay() {
        let mine = "[mine]\nhost=db\n";
        let b1 = format!("{BEGIN}\n[a]\nhost=x\n\n{END}\n");
        let t1 = replace_block(mine, &b1);
        assert!(t1.starts_with(mine) && t1.ends_with(&b1), "{t1}");
        let b2 = format!("{BEGIN}\n[b]\nhost=y\n\n{END}\n");
        let t2 = replace_block(&t1, &b2);
        assert_eq!(t2.matches(BEGIN).count(), 1, "{t2}");
        assert!(
            t2.contains("[b]") && !t2.contains("[a]") && t2.contains("[mine]"),
            "{t2}"
        );
        assert_eq!(foreign_sections(&t2), vec!["mine".to_string()]);
    }

    #[test]
    fn pins_are_normalized_and_checked() {
        let h = "AB".repeat(32);
        assert_eq!(
            normalize_pin(&format!("SHA256:{h}")).ok(),
            Some(format!("sha256:{}", h.to_lowercase()))
        );
        let colons: Vec<String> = (0..32).map(|_| "ab".to_string()).collect();
        assert!(normalize_pin(&format!("sha256:{}", colons.join(":"))).is_ok());
        assert!(normalize_pin("sha256:abc").is_err());
        assert!(normalize_pin(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn only_one_certificate_is_pinned_and_urls_are_parsed_as_the_client_does() {
        let one = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";
        let (fp, pem) = single_ca(one).unwrap();
        assert!(fp.starts_with("sha256:") && pem == one, "{pem}");
        assert!(
            single_ca(&format!("{one}{one}")).is_err(),
            "a second certificate rides along"
        );
        assert!(single_ca("").is_err());
        assert!(is_remote_plain_http("HTTP://gw.example.com:8080"));
        assert!(is_remote_plain_http("http://127.0.0.1:1@evil.example/"));
        assert!(!is_remote_plain_http("http://127.0.0.1:8080"));
        assert!(!is_remote_plain_http("HTTPS://gw.example.com"));
        assert!(is_remote_plain_http("ftp://gw"));
    }

    #[test]
    fn quoting() {
        assert_eq!(conninfo_value("a b"), "'a b'");
        assert_eq!(conninfo_value("it's"), "'it\\'s'");
        assert_eq!(sh_quote("alice@example.com"), "alice@example.com");
        assert_eq!(sh_quote("/a b/c'd"), "'/a b/c'\\''d'");
        assert_eq!(pgpass_field("a:b\\c"), "a\\:b\\\\c");
    }
}
