//! A local stand-in for Slack's Web API (Slack itself cannot be reached from here), answering
//! in its documented formats: `chat.postMessage` and `chat.update` (recorded, with
//! `{"ok": true, "channel", "ts"}`), `users.info` (`user.profile.email`) and
//! `users.lookupByEmail` (`user.id`, or `users_not_found`), and `response_url` posts
//! (recorded). Every call's bearer token is recorded too.
//! <https://api.slack.com/methods/chat.postMessage>, <https://api.slack.com/methods/users.info>

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

/// One recorded call: the method (or `response`), the Authorization header, the JSON body.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub auth: String,
    pub body: serde_json::Value,
}

pub struct Slack {
    pub port: u16,
    pub calls: Arc<Mutex<Vec<Call>>>,
}

/// Slack users of the stand-in: id → e-mail (`None`: a profile without one).
const USERS: &[(&str, Option<&str>)] = &[
    ("U_BOB", Some("bob@example.com")),
    ("U_ALICE", Some("alice@example.com")),
    ("U_CAROL", Some("carol@example.com")),
    ("U_NOBODY", None),
    ("U_GUEST", Some("carol@example.com")),
];

fn query(path: &str, key: &str) -> Option<String> {
    let q = path.split_once('?')?.1;
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.replace("%40", "@"))
}

fn answer(method: &str, path: &str, body: &serde_json::Value, n: usize) -> serde_json::Value {
    match method {
        "chat.postMessage" | "chat.update" => serde_json::json!({
            "ok": true,
            "channel": body["channel"],
            "ts": body.get("ts").cloned().unwrap_or_else(|| serde_json::json!(format!("1700000000.{n:06}"))),
        }),
        "users.info" => {
            let u = query(path, "user").unwrap_or_default();
            match USERS.iter().find(|(id, _)| *id == u) {
                // A single-channel guest (is_restricted) with a real member's e-mail.
                Some((id, Some(email))) if *id == "U_GUEST" => serde_json::json!({"ok": true, "user": {"id": id,
                    "team_id": "T_TEST", "is_restricted": true, "is_email_confirmed": true, "profile": {"email": email}}}),
                Some((id, Some(email))) => serde_json::json!({"ok": true, "user": {"id": id, "team_id": "T_TEST",
                    "is_email_confirmed": true, "profile": {"email": email}}}),
                Some((id, None)) => {
                    serde_json::json!({"ok": true, "user": {"id": id, "team_id": "T_TEST", "profile": {}}})
                }
                None => serde_json::json!({"ok": false, "error": "user_not_found"}),
            }
        }
        "users.lookupByEmail" => {
            let e = query(path, "email").unwrap_or_default();
            match USERS.iter().find(|(_, m)| *m == Some(e.as_str())) {
                Some((id, _)) => serde_json::json!({"ok": true, "user": {"id": id}}),
                None => serde_json::json!({"ok": false, "error": "users_not_found"}),
            }
        }
        _ => serde_json::json!({"ok": true}),
    }
}

impl Slack {
    pub fn start() -> Self {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let c = calls.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let c = c.clone();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let (head, body) = loop {
                        let n = s.read(&mut chunk).unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..at]).to_string();
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        while buf.len() < at + 4 + len {
                            let n = s.read(&mut chunk).unwrap_or(0);
                            if n == 0 {
                                break;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                        }
                        break (head, String::from_utf8_lossy(&buf[at + 4..]).to_string());
                    };
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let auth = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .starts_with("authorization:")
                                .then(|| l[14..].trim().to_string())
                        })
                        .unwrap_or_default();
                    let method = if let Some(m) = path.strip_prefix("/api/") {
                        m.split('?').next().unwrap().to_string()
                    } else {
                        "response".to_string()
                    };
                    let body: serde_json::Value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
                    let n = {
                        let mut g = c.lock().unwrap();
                        g.push(Call {
                            method: method.clone(),
                            auth,
                            body: body.clone(),
                        });
                        g.len()
                    };
                    let out = answer(&method, &path, &body, n).to_string();
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{out}",
                        out.len()
                    );
                });
            }
        });
        Self { port, calls }
    }

    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}/api", self.port)
    }

    pub fn response_url(&self) -> String {
        format!("http://127.0.0.1:{}/response/1", self.port)
    }

    /// Calls of `method` so far.
    pub fn calls(&self, method: &str) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }
}
