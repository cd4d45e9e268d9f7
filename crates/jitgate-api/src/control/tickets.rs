//! Ticket checks (`[policies.ticket]`): the ticket id must match the policy's pattern and the
//! ticket system must know it (an HTTP GET answering 2xx) in an allowed state; its title is
//! stored with the request for the approvers. Fail closed by default: an unreachable ticket
//! system refuses the request unless the policy says `on_error = "allow"`.

use super::*;
use jitgate_core::catalog::TicketCheck;

/// The most of a ticket system's answer read.
const MAX_ANSWER: usize = 1 << 20;
/// The longest title kept.
const MAX_TITLE: usize = 200;

fn at_path<'v>(v: &'v serde_json::Value, path: &str) -> Option<&'v serde_json::Value> {
    path.split('.').try_fold(v, |v, k| match v {
        serde_json::Value::Array(a) => k.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => v.get(k),
    })
}

fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl ControlPlane {
    /// Check `planned`'s ticket against its policy; sets its `ticket_title`.
    pub(super) async fn check_ticket(&self, planned: &mut Request) -> ControlResult<()> {
        let cat = self.catalog();
        let policy = engine::policy_named(&cat, &planned.policy)?;
        let Some(t) = &policy.ticket else {
            return Ok(());
        };
        let pattern_hint = t
            .pattern
            .as_ref()
            .map(|p| format!(" matching `{}`", p.as_str()))
            .unwrap_or_default();
        let Some(id) = planned.ticket.clone() else {
            if t.required {
                return Err(ControlError::bad_request(
                    format!("policy `{}` requires a ticket", policy.name),
                    Some(format!(
                        "add --ticket ID{pattern_hint} (psql: -c jitgate.ticket=ID, ssh: SetEnv JITGATE_TICKET=ID)"
                    )),
                ));
            }
            return Ok(());
        };
        if let Some(p) = &t.pattern
            && !p.is_match(&id)
        {
            return Err(ControlError::bad_request(
                format!("ticket `{id}` is not a ticket id policy `{}` accepts", policy.name),
                Some(format!("name a ticket{pattern_hint}")),
            ));
        }
        let Some(url) = &t.url else {
            return Ok(());
        };
        match self.fetch_ticket(t, url, &id).await {
            Ok(answer) => {
                if let Some(f) = &t.status_field {
                    let state = at_path(&answer, f).map(text).unwrap_or_default();
                    if !t.allowed.iter().any(|a| a == &state) {
                        return Err(ControlError::bad_request(
                            format!(
                                "ticket {id} is `{}`; policy `{}` accepts tickets that are {}",
                                if state.is_empty() { "without a status" } else { &state },
                                policy.name,
                                t.allowed
                                    .iter()
                                    .map(|a| format!("`{a}`"))
                                    .collect::<Vec<_>>()
                                    .join(" or ")
                            ),
                            Some("move the ticket along, or name the ticket of the work you are doing".into()),
                        ));
                    }
                }
                planned.ticket_title = t.title_field.as_deref().and_then(|f| at_path(&answer, f)).map(|v| {
                    let s: String = text(v).chars().filter(|c| !c.is_control()).collect();
                    match s.char_indices().nth(MAX_TITLE) {
                        Some((i, _)) => format!("{}…", &s[..i]),
                        None => s,
                    }
                });
                Ok(())
            }
            Err(TicketError::Unknown(status)) => Err(ControlError::bad_request(
                format!("ticket {id} was not found by the ticket system (HTTP {status})"),
                Some("check the id".into()),
            )),
            Err(TicketError::Unreachable(why)) if t.fail_open => {
                tracing::warn!(ticket = %id, error = %why, policy = %policy.name, "ticket system unreachable; on_error = allow lets the request through");
                planned.ticket_title = Some(format!("(unchecked: the ticket system did not answer: {why})"));
                Ok(())
            }
            Err(TicketError::Unreachable(why)) => {
                tracing::warn!(ticket = %id, error = %why, policy = %policy.name, "ticket system unreachable; request refused (fail closed)");
                Err(ControlError::bad_request(
                    format!("ticket {id} could not be checked: {why}"),
                    Some(format!(
                        "policy `{}` refuses requests while its ticket system cannot be reached; try again shortly",
                        policy.name
                    )),
                ))
            }
        }
    }

    async fn fetch_ticket(&self, t: &TicketCheck, url: &str, id: &str) -> Result<serde_json::Value, TicketError> {
        let url = url.replace("{ticket}", &crate::wire::encode(id));
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(t.timeout.secs().max(1)))
            .build()
            .map_err(|e| TicketError::Unreachable(e.to_string()))?;
        let mut req = client.get(&url).header("accept", "application/json");
        if let Some(c) = &t.credential {
            let v = c
                .resolve()
                .map_err(|e| TicketError::Unreachable(format!("its credential is not available ({e})")))?;
            req = req.header(t.header.as_str(), v);
        }
        let mut resp = req.send().await.map_err(|e| {
            TicketError::Unreachable(if e.is_timeout() {
                "the ticket system did not answer in time".into()
            } else {
                "the ticket system could not be reached".into()
            })
        })?;
        let status = resp.status();
        if status.as_u16() == 404 || status.as_u16() == 410 {
            return Err(TicketError::Unknown(status.as_u16()));
        }
        if !status.is_success() {
            return Err(TicketError::Unreachable(format!(
                "the ticket system answered HTTP {}",
                status.as_u16()
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|_| TicketError::Unreachable("the answer was cut off".into()))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_ANSWER {
                return Err(TicketError::Unreachable("the answer is larger than 1 MiB".into()));
            }
        }
        if t.status_field.is_none() && t.title_field.is_none() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&body).map_err(|_| TicketError::Unreachable("the answer is not JSON".into()))
    }
}

enum TicketError {
    /// 404 / 410.
    Unknown(u16),
    /// Down, slow, 5xx, not JSON: fail closed unless the policy allows.
    Unreachable(String),
}
