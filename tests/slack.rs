//! The Slack app against a local stand-in for Slack's Web API (tests/support/slack.rs) and
//! interaction payloads signed as Slack signs them: buttons approve in place only where the
//! policy allows it, messages are updated after a decision made anywhere, bad, old and
//! replayed signatures and unmapped users are refused, and user text is inert markup.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::slack::Slack;
use support::*;

const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

fn sign(ts: &str, body: &str) -> String {
    use hmac::Mac;
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    m.update(format!("v0:{ts}:{body}").as_bytes());
    format!("v0={}", hex::encode(m.finalize().into_bytes()))
}

fn enc(s: &str) -> String {
    support::idp::enc(s)
}

/// POST a block_actions payload to the interactivity endpoint; returns the status.
fn press(gw: &Gateway, slack: &Slack, user: &str, action: &str, value: &str, reason: Option<&str>) -> (u16, String) {
    let mut payload = serde_json::json!({
        "type": "block_actions",
        "user": {"id": user},
        "team": {"id": if user == "U_FOREIGN" { "T_OTHER" } else { "T_TEST" }},
        "response_url": slack.response_url(),
        "actions": [{"action_id": action, "value": value, "type": "button"}],
        "state": {"values": {}},
    });
    if let Some(r) = reason {
        payload["state"]["values"] =
            serde_json::json!({"reason": {"reason": {"type": "plain_text_input", "value": r}}});
    }
    let body = format!("payload={}", enc(&payload.to_string()));
    post_signed(gw, &body, now(), None)
}

fn post_signed(gw: &Gateway, body: &str, ts: i64, signature: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let ts = ts.to_string();
    let sig = signature.map_or_else(|| sign(&ts, body), str::to_string);
    let addr = gw.url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /v1/slack/interactions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nX-Slack-Request-Timestamp: {ts}\r\nX-Slack-Signature: {sig}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    (out.split_whitespace().nth(1).unwrap().parse().unwrap(), out)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn request(gw: &Gateway, user: &str, resource: &str, reason: &str) -> i64 {
    let v = gw
        .cli(
            Some(user),
            &["request", resource, "--for", "1h", "--reason", reason, "--json"],
        )
        .json();
    v["id"].as_i64().unwrap_or_else(|| panic!("{v}"))
}

fn state(gw: &Gateway, id: i64) -> String {
    gw.cli(Some("root"), &["requests", "--json"])
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .map(|r| r["state"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

fn ephemeral(slack: &Slack, n: usize) -> String {
    assert!(
        eventually(Duration::from_secs(5), || slack.calls("response").len() >= n),
        "{:?}",
        slack.calls("response")
    );
    slack.calls("response")[n - 1].body["text"]
        .as_str()
        .unwrap()
        .to_string()
}

fn gateway(slack: &Slack, extra_gateway: &str) -> Gateway {
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::write(dir.join("bot"), "xoxb-test-token\n").unwrap();
    std::fs::write(dir.join("signing"), format!("{SECRET}\n")).unwrap();
    let res = |n: &str| {
        format!(
            "[[resources]]\nname = \"{n}\"\nkind = \"postgres\"\naddress = \"127.0.0.1:1\"\nlabels = {{ team = \"<!here>\" }}\ncredentials.read-only = {{ user = \"x\" }}\n\n"
        )
    };
    Gateway::start(&format!(
        "#gateway-extra public_url = \"https://gw.example.com\"\n{extra_gateway}{ids}{r1}{r2}{r3}\
         [[policies]]\nname = \"chatty\"\nresources = [\"chat-db\"]\nrequesters = [\"dev\"]\napprovers = [\"dba\"]\nchat_approve = true\n\n\
         [[policies]]\nname = \"production\"\nresources = [\"prod-db\"]\nrequesters = [\"dev\"]\napprovers = [\"dba\"]\nbreak_glass = {{ groups = [\"dev\"], reviewers = [\"dba\"] }}\n\n\
         [[policies]]\nname = \"stepped\"\nresources = [\"step-db\"]\nrequesters = [\"dev\"]\napprovers = [\"dba\"]\nchat_approve = true\nstep_up = \"5m\"\n\n\
         [notify.slack]\nteam_id = \"T_TEST\"\nbot_token_file = \"{bot}\"\nsigning_secret_file = \"{signing}\"\nchannel = \"C_APPROVALS\"\napi_url = \"{api}\"\npolicy_channels = {{ production = \"C_PROD\" }}\nusers = {{ U_MAPPED = \"bob@example.com\" }}\n",
        ids = identities(),
        r1 = res("chat-db"),
        r2 = res("prod-db"),
        r3 = res("step-db"),
        bot = dir.join("bot").display(),
        signing = dir.join("signing").display(),
        api = slack.api_url(),
    ))
}

#[test]
fn slack_buttons_decide_where_allowed_link_to_the_console_elsewhere_and_messages_follow_every_decision() {
    let slack = Slack::start();
    let gw = gateway(&slack, "");

    // A request is posted with Approve / Deny, its text inert.
    let id = request(&gw, "alice", "chat-db", "INC-9 <!channel> <http://evil|x> & more");
    assert!(eventually(Duration::from_secs(5), || !slack
        .calls("chat.postMessage")
        .is_empty()));
    let post = slack.calls("chat.postMessage")[0].clone();
    assert_eq!(post.auth, "Bearer xoxb-test-token");
    assert_eq!(post.body["channel"], "C_APPROVALS");
    let all = post.body.to_string();
    assert!(
        !all.contains("<!channel>") && !all.contains("<http://evil") && !all.contains("<!here>"),
        "{all}"
    );
    assert!(
        all.contains("&lt;!channel&gt; &lt;http://evil|x&gt; &amp; more"),
        "{all}"
    );
    let actions: Vec<&str> = post.body["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "actions")
        .flat_map(|b| {
            b["elements"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["action_id"].as_str().unwrap())
        })
        .collect();
    assert_eq!(actions, ["approve", "deny", "open"]);
    assert!(
        all.contains(&format!("https://gw.example.com/ui/requests/{id}")),
        "{all}"
    );

    // The requester cannot approve their own request from Slack either (the engine's rule).
    assert_eq!(press(&gw, &slack, "U_ALICE", "approve", &id.to_string(), None).0, 200);
    assert!(ephemeral(&slack, 1).contains("cannot approve your own request"));
    // A Slack user with no identity is refused; nothing changes.
    assert_eq!(press(&gw, &slack, "U_NOBODY", "approve", &id.to_string(), None).0, 200);
    assert!(ephemeral(&slack, 2).contains("not linked to a jitgate identity"));
    // A guest of the workspace with a member's e-mail, and a user of another workspace (a
    // Slack Connect channel), are refused too.
    press(&gw, &slack, "U_GUEST", "approve", &id.to_string(), None);
    assert!(ephemeral(&slack, 3).contains("no confirmed e-mail of a full member"));
    press(&gw, &slack, "U_FOREIGN", "approve", &id.to_string(), None);
    assert!(ephemeral(&slack, 4).contains("another Slack workspace"));
    assert_eq!(state(&gw, id), "pending");

    // Bad, old and replayed signatures are refused before anything is read.
    let body = format!("payload={}", enc(&serde_json::json!({"type": "block_actions", "user": {"id": "U_BOB"}, "actions": [{"action_id": "approve", "value": id.to_string()}]}).to_string()));
    assert_eq!(post_signed(&gw, &body, now(), Some("v0=00")).0, 401);
    let old = now() - 301;
    assert_eq!(post_signed(&gw, &body, old, None).0, 401, "outside the 5-minute window");
    assert_eq!(
        post_signed(
            &gw,
            &body.replace("U_BOB", "U_CAROL"),
            now(),
            Some(&sign(&now().to_string(), &body))
        )
        .0,
        401,
        "a body that is not the signed one"
    );
    assert_eq!(state(&gw, id), "pending");

    // bob (mapped by the e-mail users.info reports) approves in place.
    let ts = now();
    let payload = serde_json::json!({"type": "block_actions", "user": {"id": "U_BOB"}, "team": {"id": "T_TEST"}, "response_url": slack.response_url(), "actions": [{"action_id": "approve", "value": id.to_string(), "type": "button"}], "state": {"values": {}}});
    let signed = format!("payload={}", enc(&payload.to_string()));
    assert_eq!(post_signed(&gw, &signed, ts, None).0, 200);
    assert!(ephemeral(&slack, 5).contains(&format!("You approved request {id}")));
    assert_eq!(state(&gw, id), "approved");
    // The same signed request again is a replay.
    assert_eq!(post_signed(&gw, &signed, ts, None).0, 401, "replayed");
    // The message is updated in place, the requester told directly.
    assert!(eventually(Duration::from_secs(5), || !slack
        .calls("chat.update")
        .is_empty()));
    let up = slack.calls("chat.update")[0].body.clone();
    assert_eq!(
        up["ts"],
        post.body
            .get("ts")
            .cloned()
            .unwrap_or(serde_json::json!("1700000000.000001"))
    );
    assert!(up.to_string().contains("Approved by *bob@example.com*"), "{up}");
    assert!(!up.to_string().contains("\"approve\""), "no buttons once decided: {up}");
    assert!(eventually(Duration::from_secs(5), || slack
        .calls("chat.postMessage")
        .iter()
        .any(|c| c.body["channel"] == "U_ALICE")));
    let audit = gw.audit_events();
    assert!(
        audit
            .iter()
            .any(|e| e["kind"] == "request.approved" && e["request_id"] == id && e["actor"] == "bob@example.com")
    );

    // A policy without chat_approve: a link to the console, and a forged approve does nothing.
    let prod = request(&gw, "alice", "prod-db", "INC-10");
    assert!(eventually(Duration::from_secs(5), || slack
        .calls("chat.postMessage")
        .iter()
        .any(|c| c.body["channel"] == "C_PROD")));
    let p = slack
        .calls("chat.postMessage")
        .into_iter()
        .find(|c| c.body["channel"] == "C_PROD")
        .unwrap()
        .body
        .to_string();
    assert!(
        p.contains(&format!("https://gw.example.com/ui/requests/{prod}")) && !p.contains("\"action_id\":\"approve\""),
        "{p}"
    );
    press(&gw, &slack, "U_MAPPED", "approve", &prod.to_string(), None);
    assert!(ephemeral(&slack, 6).contains("decided in the console"));
    assert_eq!(state(&gw, prod), "pending");
    // Decided elsewhere (the CLI): the Slack message follows.
    gw.cli(Some("bob"), &["approve", &prod.to_string()]).ok();
    assert!(eventually(Duration::from_secs(5), || slack
        .calls("chat.update")
        .iter()
        .any(
            |c| c.body["channel"] == "C_PROD" && c.body.to_string().contains("Approved by *bob@example.com*")
        )));

    // step_up applies: the button opens the console even though chat_approve is on.
    let step = request(&gw, "alice", "step-db", "INC-11");
    assert!(eventually(Duration::from_secs(5), || slack
        .calls("chat.postMessage")
        .iter()
        .any(|c| c.body.to_string().contains(&format!("/ui/requests/{step}")))));
    press(&gw, &slack, "U_BOB", "approve", &step.to_string(), None);
    assert!(ephemeral(&slack, 7).contains("decided in the console"));
    assert_eq!(state(&gw, step), "pending");

    // Deny in place needs the reason typed in the message.
    let deny = request(&gw, "carol", "chat-db", "INC-12");
    press(&gw, &slack, "U_BOB", "deny", &deny.to_string(), None);
    assert!(ephemeral(&slack, 8).contains("Type a reason"));
    press(&gw, &slack, "U_BOB", "deny", &deny.to_string(), Some("use the replica"));
    assert!(ephemeral(&slack, 9).contains(&format!("You denied request {deny}")));
    assert_eq!(state(&gw, deny), "denied");
    assert!(
        gw.audit_events()
            .iter()
            .any(|e| e["kind"] == "request.denied" && e["details"]["denial_reason"] == "use the replica")
    );
}

#[test]
fn the_expiry_warning_reaches_the_holder_with_an_extend_button() {
    let slack = Slack::start();
    let gw = gateway(&slack, "#gateway-extra expiry_warning = \"65s\"\n");
    let v = gw
        .cli(
            Some("alice"),
            &["request", "chat-db", "--for", "70s", "--reason", "INC-20", "--json"],
        )
        .json();
    let id = v["id"].as_i64().unwrap();
    gw.cli(Some("bob"), &["approve", &id.to_string()]).ok();
    // The grant (70 s) warns 65 s before its end: about 5 s from now.
    assert!(
        eventually(Duration::from_secs(15), || slack.calls("chat.postMessage").iter().any(
            |c| c.body["channel"] == "U_ALICE" && c.body.to_string().contains("\"extend\"")
        )),
        "{:?}",
        slack.calls("chat.postMessage")
    );
    let dm = slack
        .calls("chat.postMessage")
        .into_iter()
        .find(|c| c.body.to_string().contains("\"extend\""))
        .unwrap();
    let grant = dm.body["blocks"][1]["elements"][0]["value"]
        .as_str()
        .unwrap()
        .to_string();
    press(&gw, &slack, "U_ALICE", "extend", &grant, None);
    let msg = ephemeral(&slack, 1);
    assert!(msg.contains("Extension request") && msg.contains("waiting"), "{msg}");
    let reqs = gw.cli(Some("root"), &["requests", "--json"]).json();
    assert!(
        reqs.as_array()
            .unwrap()
            .iter()
            .any(|r| r["extends_grant"] == grant.parse::<i64>().unwrap() && r["state"] == "pending"),
        "{reqs}"
    );
}

#[test]
fn break_glass_is_announced_in_the_policys_channel_and_so_is_its_review() {
    let slack = Slack::start();
    let gw = gateway(&slack, "");
    let r = gw
        .cli(
            Some("alice"),
            &[
                "break-glass",
                "prod-db",
                "--reason",
                "INC-77 <!channel> *orders* locked",
                "--json",
            ],
        )
        .json();
    let id = r["id"].as_i64().unwrap();
    let posted = |needle: &str| {
        slack
            .calls("chat.postMessage")
            .into_iter()
            .find(|c| c.body["text"].as_str().is_some_and(|t| t.contains(needle)))
    };
    assert!(
        eventually(Duration::from_secs(5), || posted("broke the glass").is_some()),
        "{:?}",
        slack.calls("chat.postMessage")
    );
    let m = posted("broke the glass").unwrap();
    assert_eq!(m.body["channel"], "C_PROD", "the policy's channel");
    let text = m.body["text"].as_str().unwrap();
    assert!(
        text.contains(":rotating_light: *alice@example.com* broke the glass on *prod-db*"),
        "{text}"
    );
    assert!(
        text.contains(&format!("Review {id} is due by")) && text.contains("from dba"),
        "{text}"
    );
    // The requester's text cannot ping the channel or restyle the message: it is a code span.
    assert!(text.contains("`INC-77 &lt;!channel&gt; *orders* locked`"), "{text}");
    assert!(!text.contains("<!channel>"), "{text}");
    assert_eq!(
        m.body["blocks"][1]["elements"][0]["url"],
        format!("https://gw.example.com/ui/reviews/{id}")
    );
    gw.cli(
        Some("bob"),
        &["reviews", "close", &id.to_string(), "--note", "justified"],
    )
    .ok();
    assert!(eventually(Duration::from_secs(5), || posted(
        "closed by *bob@example.com*: `justified`"
    )
    .is_some()));
}
