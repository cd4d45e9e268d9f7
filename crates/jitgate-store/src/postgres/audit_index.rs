//! The shared audit index: every replica's events searchable from any replica (rows keyed
//! by node; the line itself is the body).

use super::*;

#[async_trait]
impl AuditIndex for PgStore {
    async fn index(&self, events: &[Indexed]) -> std::result::Result<(), String> {
        let me = self.clone();
        let events = events.to_vec();
        self.on_runtime(async move {
            let node = me.inner.node.clone();
            let mut seqs = Vec::with_capacity(events.len());
            let mut times = Vec::with_capacity(events.len());
            let mut kinds = Vec::with_capacity(events.len());
            let mut actors = Vec::with_capacity(events.len());
            let mut resources = Vec::with_capacity(events.len());
            let mut grants = Vec::with_capacity(events.len());
            let mut sessions = Vec::with_capacity(events.len());
            let mut body = Vec::with_capacity(events.len());
            // Words as one space-separated list per event ('' for none): `tsvector` input of
            // plain ASCII words needs no quoting.
            let mut words = Vec::with_capacity(events.len());
            for Indexed { head: e, line, .. } in events {
                words.push(e.text.as_deref().map(|t| jitgate_audit::text::words(t).join(" ")));
                seqs.push(i64::try_from(e.seq).unwrap_or(i64::MAX));
                times.push(ms(e.time));
                kinds.push(e.kind.into_owned());
                actors.push(e.actor.as_deref().map(str::to_owned));
                resources.push(e.resource.as_deref().map(str::to_owned));
                grants.push(e.grant_id);
                sessions.push(e.session_id.as_deref().map(str::to_owned));
                body.push(line);
            }
            me.with("audit_index", async |c| {
                c.execute(
                    "INSERT INTO jitgate_audit_events (node, seq, time, kind, actor, resource, grant_id, session_id, body, words) \
                     SELECT $1, s, t, k, a, r, g, ss, b, w::tsvector FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::text[], $9::text[], $10::text[]) AS u(s, t, k, a, r, g, ss, b, w) \
                     ON CONFLICT (node, seq) DO UPDATE SET time = EXCLUDED.time, kind = EXCLUDED.kind, actor = EXCLUDED.actor, \
                     resource = EXCLUDED.resource, grant_id = EXCLUDED.grant_id, session_id = EXCLUDED.session_id, body = EXCLUDED.body, \
                     words = EXCLUDED.words",
                    &[&node, &seqs, &times, &kinds, &actors, &resources, &grants, &sessions, &body, &words],
                )
                .await
                .map_err(backend)?;
                Ok(())
            })
            .await
        })
        .await
    }

    async fn max_seq(&self) -> std::result::Result<u64, String> {
        let me = self.clone();
        self.on_runtime(async move {
            let node = me.inner.node.clone();
            me.with("audit_max_seq", async |c| {
                let row = c
                    .query_one("SELECT max(seq) FROM jitgate_audit_events WHERE node = $1", &[&node])
                    .await
                    .map_err(backend)?;
                let n: Option<i64> = row.try_get(0).map_err(backend)?;
                Ok(u64::try_from(n.unwrap_or(0)).unwrap_or(0))
            })
            .await
        })
        .await
    }

    async fn search(&self, q: &Query) -> std::result::Result<Vec<Event>, String> {
        let q = q.clone();
        let me = self.clone();
        self.on_runtime(async move {
            me.with("audit_search", async |c| {
                // Coarse filters in SQL, exact ones in Rust; rows come through a portal a page
                // at a time so a broad search stops reading once it has `limit` matches.
                let tx = c.transaction().await.map_err(backend)?;
                let st = tx
                    .prepare(
                        "SELECT body FROM jitgate_audit_events WHERE ($1::bigint IS NULL OR time >= $1) \
                         AND ($2::bigint IS NULL OR time <= $2) AND ($3::text IS NULL OR resource = $3) \
                         AND ($4::text IS NULL OR session_id = $4) AND ($5::bigint IS NULL OR grant_id = $5) \
                         AND ($6::text IS NULL OR words @@ $6::text::tsquery) \
                         ORDER BY time DESC, node DESC, seq DESC",
                    )
                    .await
                    .map_err(backend)?;
                let (since, until) = (q.since.map(ms), q.until.map(ms));
                let tsq = match q.text.as_deref() {
                    Some(n) => {
                        jitgate_audit::text::check_needle(n).map_err(StoreError::Backend)?;
                        let terms: Vec<String> = jitgate_audit::text::index_terms(n)
                            .into_iter()
                            .map(|t| format!("'{}'{}", t.word, if t.prefix { ":*" } else { "" }))
                            .collect();
                        Some(terms.join(" & "))
                    }
                    None => None,
                };
                let portal = tx
                    .bind(&st, &[&since, &until, &q.resource, &q.session, &q.grant, &tsq])
                    .await
                    .map_err(backend)?;
                let limit = q.limit.unwrap_or(1000);
                let mut out = Vec::new();
                'pages: loop {
                    let rows = tx.query_portal(&portal, 1000).await.map_err(backend)?;
                    if rows.is_empty() {
                        break;
                    }
                    for row in &rows {
                        let e: Event = from_json(&row.try_get::<_, String>(0).map_err(backend)?)?;
                        if q.matches(&e) {
                            out.push(e);
                            if out.len() >= limit {
                                break 'pages;
                            }
                        }
                    }
                }
                out.reverse();
                Ok(out)
            })
            .await
        })
        .await
    }
}
