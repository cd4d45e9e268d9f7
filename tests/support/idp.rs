//! The test OpenID Connect provider (scripts/test-idp: panva's oidc-provider) and a scripted
//! "browser" that logs in through its forms (cookie jar, redirects off).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

pub struct Idp {
    pub name: String,
    pub issuer: String,
    pub users: PathBuf,
    pub dir: PathBuf,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test-idp")
}

const HINT: &str = "node/npm missing? run ./scripts/install-deps";

/// Start (or reuse) instance `name`; `ttl`: ID token lifetime in seconds.
pub fn idp(name: &str, ttl: Option<u32>) -> Idp {
    let mut c = Command::new(script());
    c.args(["up", name]);
    if let Some(t) = ttl {
        c.env("JITGATE_TEST_IDP_TTL", t.to_string());
    }
    let v = super::fixture_env(&mut c, "scripts/test-idp up", HINT);
    Idp {
        name: name.to_string(),
        issuer: v["JITGATE_TEST_IDP_ISSUER"].clone(),
        users: PathBuf::from(&v["JITGATE_TEST_IDP_USERS"]),
        dir: PathBuf::from(&v["JITGATE_TEST_IDP_DIR"]),
    }
}

impl Idp {
    /// Restart with a fresh signing key (new kid), same port.
    pub fn rotate(&self) {
        super::fixture_env(
            Command::new(script()).args(["rotate", &self.name]),
            "scripts/test-idp rotate",
            HINT,
        );
    }

    /// The kid the provider publishes now.
    pub fn kids(&self) -> Vec<String> {
        let v: serde_json::Value = block_on(async {
            reqwest::get(format!("{}/jwks", self.issuer))
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        });
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    }

    /// Change a user's groups (the provider re-reads the file at each login).
    pub fn set_groups(&self, sub: &str, groups: &[&str]) {
        let mut users: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&self.users).unwrap()).unwrap();
        for u in users.as_array_mut().unwrap() {
            if u["sub"] == sub {
                u["groups"] = serde_json::json!(groups);
            }
        }
        std::fs::write(&self.users, users.to_string()).unwrap();
    }

    /// `[oidc]` for gateway.toml (client secret from a file next to it).
    pub fn oidc_section(&self, secret_file: &std::path::Path, extra: &str) -> String {
        std::fs::write(secret_file, "gateway-secret\n").unwrap();
        format!(
            "[oidc]\nissuer = \"{}\"\nclient_id = \"gateway\"\nclient_secret_file = \"{}\"\n{extra}\n",
            self.issuer,
            secret_file.display()
        )
    }

    /// A real ID token for `client` (code flow with PKCE, done by the test itself).
    pub fn id_token(&self, client: &str, secret: &str, user: &str, password: &str) -> String {
        use base64::Engine;
        use sha2::Digest;
        let verifier = format!("verifier-{}-{}", std::process::id(), "x".repeat(40));
        let challenge =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
        let redirect = "http://127.0.0.1:9/callback";
        let url = format!(
            "{}/auth?response_type=code&client_id={client}&redirect_uri={}&scope=openid%20email%20groups&state=s1&nonce=n1&code_challenge={challenge}&code_challenge_method=S256",
            self.issuer,
            enc(redirect)
        );
        let b = Browser::new(&self.issuer);
        let cb = b.login(&url, user, password).expect("login");
        let code = query(&cb, "code").expect("code");
        block_on(async {
            let r = reqwest::Client::new()
                .post(format!("{}/token", self.issuer))
                .basic_auth(client, Some(secret))
                .form(&[
                    ("grant_type", "authorization_code"),
                    ("code", code.as_str()),
                    ("redirect_uri", redirect),
                    ("code_verifier", verifier.as_str()),
                ])
                .send()
                .await
                .unwrap();
            let v: serde_json::Value = r.json().await.unwrap();
            v["id_token"].as_str().unwrap_or_else(|| panic!("{v}")).to_string()
        })
    }
}

pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn query(url: &str, key: &str) -> Option<String> {
    url.split_once('?')?
        .1
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.replace("%2F", "/").replace("%3A", ":"))
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A scripted browser: cookie jar, no automatic redirects.
pub struct Browser {
    issuer: String,
    http: reqwest::Client,
    cookies: std::sync::Mutex<HashMap<String, String>>,
}

pub enum Step {
    Redirect(String),
    Page(u16, String),
}

impl Browser {
    pub fn new(issuer: &str) -> Self {
        Self {
            issuer: issuer.to_string(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn absolute(&self, loc: &str) -> String {
        if loc.starts_with('/') {
            format!("{}{loc}", self.issuer)
        } else {
            loc.to_string()
        }
    }

    fn request(&self, method: &str, url: &str, form: Option<&[(&str, &str)]>) -> Step {
        block_on(async {
            let mut rb = if method == "POST" {
                self.http.post(url)
            } else {
                self.http.get(url)
            };
            let jar: String = self
                .cookies
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            if !jar.is_empty() {
                rb = rb.header("cookie", jar);
            }
            if let Some(f) = form {
                rb = rb.form(f);
            }
            let r = rb.send().await.unwrap();
            for c in r.headers().get_all("set-cookie") {
                let c = c.to_str().unwrap();
                if let Some((kv, _)) = c.split_once(';').or(Some((c, "")))
                    && let Some((k, v)) = kv.split_once('=')
                {
                    self.cookies.lock().unwrap().insert(k.trim().to_string(), v.to_string());
                }
            }
            let status = r.status().as_u16();
            match r.headers().get("location") {
                Some(l) => Step::Redirect(self.absolute(l.to_str().unwrap())),
                None => Step::Page(status, r.text().await.unwrap_or_default()),
            }
        })
    }

    /// Follow `start` through the provider, answering the login form; returns the first URL
    /// outside the provider (the client's redirect), or `Err(page)` where it stopped.
    pub fn login(&self, start: &str, user: &str, password: &str) -> Result<String, String> {
        let mut url = start.to_string();
        for _ in 0..20 {
            if !url.starts_with(&self.issuer) {
                return Ok(url);
            }
            let path = url.trim_start_matches(&self.issuer).to_string();
            let step = if path.starts_with("/interaction/") && path.matches('/').count() == 2 {
                self.request(
                    "POST",
                    &format!("{url}/login"),
                    Some(&[("login", user), ("password", password)]),
                )
            } else {
                self.request("GET", &url, None)
            };
            match step {
                Step::Redirect(l) => url = l,
                Step::Page(status, body) => return Err(format!("HTTP {status}: {body}")),
            }
        }
        Err("too many redirects".into())
    }

    /// Start at `start`, then abort at the login form: the provider redirects with an error.
    pub fn abort(&self, start: &str) -> String {
        let Step::Redirect(interaction) = self.request("GET", start, None) else {
            panic!("no interaction");
        };
        let Step::Redirect(next) = self.request("GET", &format!("{interaction}/abort"), None) else {
            panic!("abort did not redirect");
        };
        let mut url = next;
        for _ in 0..5 {
            if !url.starts_with(&self.issuer) {
                return url;
            }
            match self.request("GET", &url, None) {
                Step::Redirect(l) => url = l,
                Step::Page(s, b) => panic!("stopped at HTTP {s}: {b}"),
            }
        }
        url
    }

    /// Approve a device login: enter `user_code`, then log in as `user`.
    pub fn device(&self, user_code: &str, user: &str, password: &str) -> Result<(), String> {
        let page = match self.request("GET", &format!("{}/device", self.issuer), None) {
            Step::Page(_, b) => b,
            Step::Redirect(l) => return Err(format!("unexpected redirect to {l}")),
        };
        let xsrf = page
            .split("name=\"xsrf\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .ok_or("no xsrf field")?
            .to_string();
        let step = self.request(
            "POST",
            &format!("{}/device", self.issuer),
            Some(&[("xsrf", xsrf.as_str()), ("user_code", user_code), ("confirm", "yes")]),
        );
        let Step::Redirect(next) = step else {
            return Err("device confirmation did not redirect".into());
        };
        match self.login(&next, user, password) {
            Ok(u) => Err(format!("left the provider to {u}")),
            Err(page) if page.contains("success") => Ok(()),
            Err(page) => Err(page),
        }
    }
}
