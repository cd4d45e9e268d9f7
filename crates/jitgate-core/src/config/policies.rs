//! `[[policies]]` validation: each policy checked against the resources, compiled to the
//! catalog's [`Policy`].

use super::*;

/// Every `resources` glob of a policy must match a resource (with a did-you-mean).
fn check_resource_globs(
    p: &schema::PolicyConfig,
    pname: &str,
    d: &mut Diags<'_>,
    resources: &BTreeMap<String, Resource>,
) {
    let names: Vec<&str> = resources.keys().map(String::as_str).collect();
    for g in &p.resources {
        if !names.iter().any(|n| crate::glob::matches(g.get_ref(), n)) {
            let help = match diag::did_you_mean(g.get_ref(), names.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None if names.is_empty() => "declare the resource in a [[resources]] table".to_string(),
                None => format!("the resources are: {}", names.join(", ")),
            };
            d.error(
                span(g),
                format!("policy `{pname}`: `{}` matches no resource", g.get_ref()),
                Some(help),
            );
        }
    }
}

/// A policy's approval steps (`approvers` is one step named `approval`), each checked.
fn steps(p: &schema::PolicyConfig, pname: &str, d: &mut Diags<'_>) -> Vec<Step> {
    let steps: Vec<Step> = if p.steps.is_empty() {
        if p.approvers.is_empty() && p.auto_approve.is_empty() {
            d.error(
                span(&p.name),
                format!(
                    "policy `{pname}` has neither approvers nor auto_approve rules: requests could never be approved"
                ),
                Some("add `approvers = [\"dba\"]`".into()),
            );
        }
        vec![Step {
            name: "approval".into(),
            approvers: p.approvers.clone(),
            approvals: p.approvals,
        }]
    } else {
        if !p.approvers.is_empty() {
            d.error(
                span(&p.name),
                format!("policy `{pname}`: both `approvers` and `steps`"),
                Some("move the approvers into a step".into()),
            );
        }
        p.steps
            .iter()
            .map(|s| Step {
                name: s.name.clone(),
                approvers: s.approvers.clone(),
                approvals: s.approvals,
            })
            .collect()
    };
    for s in &steps {
        if s.approvals == 0 {
            d.error(
                span(&p.name),
                format!("policy `{pname}` step `{}`: approvals must be at least 1", s.name),
                Some("use auto_approve rules for requests that need no approver".into()),
            );
        }
        if s.approvers.is_empty() && !p.steps.is_empty() {
            d.error(
                span(&p.name),
                format!("policy `{pname}` step `{}` has no approvers", s.name),
                None,
            );
        }
    }
    steps
}

/// A policy's auto_approve rules; one without a condition, or longer than the policy allows, is
/// a warning.
fn auto_approve(
    p: &schema::PolicyConfig,
    pname: &str,
    d: &mut Diags<'_>,
    md: HumanDuration,
    sources: &[schema::OnCallConfig],
) -> Vec<AutoApprove> {
    let mut auto = Vec::new();
    for (i, a) in p.auto_approve.iter().enumerate() {
        if let Some(m) = a.max_duration
            && m > md
        {
            d.warning(span(&p.name), format!("policy `{pname}` auto_approve #{}: max_duration {m} exceeds the policy's max_duration {md}; the policy's limit applies", i + 1), None);
        }
        let oncall = a.oncall.as_ref().and_then(|spanned| {
            let o = spanned.get_ref();
            if !sources.iter().any(|s| s.name.get_ref() == &o.source) {
                let known: Vec<&str> = sources.iter().map(|s| s.name.get_ref().as_str()).collect();
                d.error(
                    span(spanned),
                    format!(
                        "policy `{pname}` auto_approve #{}: oncall source `{}` is not an [[oncall]] source",
                        i + 1,
                        o.source
                    ),
                    Some(if known.is_empty() {
                        "add an [[oncall]] section with that name".into()
                    } else {
                        format!("sources: {}", known.join(", "))
                    }),
                );
                return None;
            }
            if o.escalation_level_max == 0 {
                d.error(
                    span(spanned),
                    format!(
                        "policy `{pname}` auto_approve #{}: escalation_level_max must be at least 1",
                        i + 1
                    ),
                    Some("1 is the primary on-call".into()),
                );
                return None;
            }
            Some(crate::catalog::OnCallRule {
                source: o.source.clone(),
                escalation_level_max: o.escalation_level_max,
            })
        });
        if a.oncall.is_some() && oncall.is_none() {
            // Refused above; do not compile the rule without its condition.
            continue;
        }
        if a.groups.is_empty()
            && a.access.is_empty()
            && a.window.is_none()
            && a.max_duration.is_none()
            && a.match_labels.is_empty()
            && oncall.is_none()
        {
            d.warning(
                span(&p.name),
                format!(
                    "policy `{pname}` auto_approve #{} has no condition: every request is approved at once",
                    i + 1
                ),
                Some("add at least `groups` or `max_duration`".into()),
            );
        }
        auto.push(AutoApprove {
            groups: a.groups.clone(),
            access: a.access.clone(),
            max_duration: a.max_duration,
            window: a.window.clone(),
            match_labels: a.match_labels.clone(),
            oncall,
        });
    }
    auto
}

/// `[[policies]]`, checked against the resources and identities; a resource no policy covers
/// is a warning.
pub(super) fn policies(c: &Config, d: &mut Diags<'_>, resources: &BTreeMap<String, Resource>) -> Vec<Policy> {
    let mut policies = Vec::new();
    let mut seen_pol = BTreeSet::new();
    for p in &c.policies {
        let pname = p.name.get_ref();
        if !seen_pol.insert(pname.clone()) {
            d.error(
                span(&p.name),
                format!("duplicate policy name `{pname}`"),
                Some("give each policy a unique name".into()),
            );
        }
        if p.resources.is_empty() && p.match_labels.is_empty() {
            d.error(
                span(&p.name),
                format!("policy `{pname}` covers no resource"),
                Some("add `resources = [\"prod-*\"]` or `match_labels = { env = \"prod\" }`".into()),
            );
        }
        check_resource_globs(p, pname, d, resources);
        if p.requesters.is_empty() {
            d.error(
                span(&p.name),
                format!("policy `{pname}` has no requesters: nobody could request"),
                Some("add `requesters = [\"dev\"]` (groups)".into()),
            );
        }
        let steps = steps(p, pname, d);
        if p.escalate_after.is_some() == p.escalate_to.is_empty() {
            d.error(
                span(&p.name),
                format!("policy `{pname}`: escalate_after and escalate_to go together"),
                Some("set both, or neither".into()),
            );
        }
        let (dd, md) = (*p.default_duration.get_ref(), *p.max_duration.get_ref());
        if md.secs() == 0 {
            d.error(span(&p.max_duration), "max_duration must be longer than 0s", None);
        }
        if dd > md {
            d.error(
                span(&p.default_duration),
                format!("policy `{pname}`: default_duration {dd} is longer than max_duration {md}"),
                Some(format!("lower default_duration to {md} or less")),
            );
        }
        // Access levels must exist on at least one covered resource.
        let covered: Vec<&Resource> = resources
            .values()
            .filter(|r| {
                p.resources.iter().any(|g| crate::glob::matches(g.get_ref(), &r.name))
                    || (!p.match_labels.is_empty() && p.match_labels.iter().all(|(k, v)| r.labels.get(k) == Some(v)))
            })
            .collect();
        for a in &p.access {
            if !covered.is_empty() && !covered.iter().any(|r| r.access_levels.contains(a.get_ref())) {
                d.error(span(a), format!("policy `{pname}`: no covered resource offers access `{}`", a.get_ref()), Some("postgres resources offer `read-only`/`read-write` (per credentials); ssh resources their `logins`".into()));
            }
        }
        if let Some(su) = &p.step_up {
            let v = *su.get_ref();
            if v.secs() == 0 || v.secs() > 86_400 {
                d.error(
                    span(su),
                    format!("policy `{pname}`: step_up {v} must be between 1s and 24h"),
                    Some("a few minutes is usual: step_up = \"5m\"".into()),
                );
            }
        }
        if let Some(ie) = &p.idle_end {
            let v = *ie.get_ref();
            if v.secs() == 0 || v.secs() > 7 * 86_400 {
                d.error(
                    span(ie),
                    format!("policy `{pname}`: idle_end {v} must be between 1s and 7d"),
                    Some("e.g. idle_end = \"15m\": the grant ends 15 minutes after its last session".into()),
                );
            }
        }
        let first_use = match p.start.as_ref().map(|s| (s, s.get_ref().as_str())) {
            None | Some((_, "approval")) => false,
            Some((_, "first-use")) => true,
            Some((sp, other)) => {
                d.error(
                    span(sp),
                    format!("policy `{pname}`: start = \"{other}\" is not a start"),
                    Some("start = \"approval\" (the default: the clock runs from the approval) or start = \"first-use\" (from the first session)".into()),
                );
                false
            }
        };
        let first_use_within = p
            .first_use_within
            .as_ref()
            .map_or(HumanDuration::hours(1), |w| *w.get_ref());
        if let Some(w) = &p.first_use_within {
            let v = *w.get_ref();
            if v.secs() == 0 || v.secs() > 30 * 86_400 {
                d.error(
                    span(w),
                    format!("policy `{pname}`: first_use_within {v} must be between 1s and 30d"),
                    Some("e.g. first_use_within = \"24h\"".into()),
                );
            }
        }
        let break_glass = p.break_glass.as_ref().and_then(|b| {
            let sp = span(b);
            let b = b.get_ref();
            let mut ok = true;
            if b.groups.is_empty() || b.reviewers.is_empty() {
                d.error(
                    sp.clone(),
                    format!("policy `{pname}`: break_glass needs `groups` (who may) and `reviewers` (who reviews)"),
                    Some("e.g. [policies.break_glass] groups = [\"oncall\"], reviewers = [\"security\"]".into()),
                );
                ok = false;
            }
            if b.max_duration.secs() == 0 || b.max_duration.secs() > 86_400 {
                d.error(
                    sp.clone(),
                    format!(
                        "policy `{pname}`: break_glass max_duration {} must be between 1s and 24h",
                        b.max_duration
                    ),
                    Some("break-glass access is for emergencies: max_duration = \"30m\" is usual".into()),
                );
                ok = false;
            }
            if b.per_day == 0 {
                d.error(
                    sp.clone(),
                    format!("policy `{pname}`: break_glass per_day must be at least 1"),
                    Some("remove [policies.break_glass] to forbid break-glass".into()),
                );
                ok = false;
            }
            if b.review_within.secs() == 0 {
                d.error(
                    sp,
                    format!("policy `{pname}`: break_glass review_within must be at least 1s"),
                    None,
                );
                ok = false;
            }
            ok.then(|| crate::catalog::BreakGlass {
                groups: b.groups.clone(),
                max_duration: b.max_duration,
                reviewers: b.reviewers.clone(),
                review_within: b.review_within,
                per_day: b.per_day,
            })
        });
        let ticket = p.ticket.as_ref().and_then(|t| {
            let sp = span(t);
            let t = t.get_ref();
            let mut ok = true;
            let pattern = match t.pattern.as_deref().map(regex::Regex::new) {
                None => None,
                Some(Ok(r)) => Some(r),
                Some(Err(e)) => {
                    d.error(
                        sp.clone(),
                        format!("policy `{pname}`: ticket pattern is not a regular expression: {e}"),
                        Some("e.g. pattern = \"^(INC|CHG)-[0-9]+$\"".into()),
                    );
                    ok = false;
                    None
                }
            };
            if let Some(u) = &t.url
                && (!u.contains("{ticket}") || !(u.starts_with("https://") || u.starts_with("http://")))
            {
                d.error(
                    sp.clone(),
                    format!("policy `{pname}`: ticket url `{u}` must be an http(s) URL containing {{ticket}}"),
                    Some("e.g. url = \"https://jira.example.com/rest/api/2/issue/{ticket}\"".into()),
                );
                ok = false;
            }
            if t.status_field.is_some() == t.allowed.is_empty() {
                d.error(
                    sp.clone(),
                    format!("policy `{pname}`: ticket status_field and allowed go together"),
                    Some("e.g. status_field = \"fields.status.name\", allowed = [\"In Progress\"]".into()),
                );
                ok = false;
            }
            if (t.status_field.is_some() || t.title_field.is_some() || t.credential_env.is_some()) && t.url.is_none() {
                d.error(
                    sp.clone(),
                    format!("policy `{pname}`: ticket status_field, title_field and credentials need a url to check"),
                    None,
                );
                ok = false;
            }
            let fail_open = match t.on_error.as_deref() {
                None | Some("deny") => false,
                Some("allow") => true,
                Some(other) => {
                    d.error(
                        sp.clone(),
                        format!("policy `{pname}`: ticket on_error = \"{other}\" is neither \"deny\" nor \"allow\""),
                        Some(
                            "on_error = \"deny\" (the default) refuses requests while the ticket system is down".into(),
                        ),
                    );
                    ok = false;
                    false
                }
            };
            ok.then(|| crate::catalog::TicketCheck {
                required: t.required,
                pattern,
                url: t.url.clone(),
                header: t.header.clone(),
                credential: t
                    .credential_env
                    .clone()
                    .map(SecretRef::Env)
                    .or_else(|| t.credential_file.clone().map(SecretRef::File)),
                status_field: t.status_field.clone(),
                allowed: t.allowed.clone(),
                title_field: t.title_field.clone(),
                timeout: t.timeout,
                fail_open,
            })
        });
        let auto = auto_approve(p, pname, d, md, &c.oncall);
        policies.push(Policy {
            name: pname.clone(),
            resources: p.resources.iter().map(|g| g.get_ref().clone()).collect(),
            match_labels: p.match_labels.clone(),
            requesters: p.requesters.clone(),
            access: p.access.iter().map(|a| a.get_ref().clone()).collect(),
            steps,
            escalate_after: p.escalate_after,
            escalate_to: p.escalate_to.clone(),
            default_duration: dd,
            max_duration: md,
            reason_required: p.reason_required,
            pending_timeout: p.pending_timeout.unwrap_or(c.gateway.pending_timeout),
            allow_port_forwarding: p.allow_port_forwarding,
            step_up: p.step_up.as_ref().map(|s| *s.get_ref()),
            chat_approve: p.chat_approve,
            single_session: p.single_session,
            idle_end: p.idle_end.as_ref().map(|s| *s.get_ref()),
            first_use,
            first_use_within,
            break_glass,
            ticket,
            auto_approve: auto,
        });
    }
    for r in resources.values() {
        if !policies.iter().any(|p| p.covers(r)) {
            d.warning(
                None,
                format!("resource `{}` is covered by no policy: nobody can request it", r.name),
                Some("add a [[policies]] entry whose `resources` matches it".into()),
            );
        }
    }
    policies
}
