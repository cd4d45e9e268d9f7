//! Requests, grants, sessions, tokens: the [`Store`] calls, each a bounded query or one
//! transaction that also publishes its change.

use super::*;
use crate::Replication;

pub(super) fn session_record(r: &Row) -> Result<SessionRecord> {
    let info: SessionInfo = from_json(&r.try_get::<_, String>(0).map_err(backend)?)?;
    let ended: Option<i64> = r.try_get(1).map_err(backend)?;
    Ok(SessionRecord {
        info,
        ended_at: ended.and_then(|m| Timestamp::from_millisecond(m).ok()),
        end_reason: r.try_get(2).map_err(backend)?,
        node: Some(r.try_get(3).map_err(backend)?),
    })
}

pub(super) async fn save_request(tx: &tokio_postgres::Transaction<'_>, r: &Request) -> Result<Request> {
    let mut next = r.clone();
    next.version = r.version + 1;
    let n = tx
        .execute(
            "UPDATE jitgate_requests SET state = $1, version = $2, body = $3 WHERE id = $4 AND version = $5",
            &[&next.state.as_str(), &next.version, &to_json(&next)?, &r.id, &r.version],
        )
        .await
        .map_err(backend)?;
    if n == 0 {
        let exists = tx
            .query_opt("SELECT id FROM jitgate_requests WHERE id = $1", &[&r.id])
            .await
            .map_err(backend)?;
        return Err(if exists.is_some() {
            StoreError::Conflict
        } else {
            StoreError::NotFound
        });
    }
    Ok(next)
}

pub(super) async fn save_grant(tx: &tokio_postgres::Transaction<'_>, g: &Grant) -> Result<()> {
    let n = tx
        .execute(
            "UPDATE jitgate_grants SET state = $1, expires_at = $2, body = $3 WHERE id = $4",
            &[&g.state.as_str(), &ms(g.expires_at), &to_json(g)?, &g.id],
        )
        .await
        .map_err(backend)?;
    if n == 0 { Err(StoreError::NotFound) } else { Ok(()) }
}

#[async_trait]
impl Store for PgStore {
    async fn create_request(&self, r: &Request) -> Result<Request> {
        self.write("create_request", async |tx| {
            let row = tx
                .query_one(
                    "INSERT INTO jitgate_requests (requester, state, version, body) VALUES ($1, $2, 1, '{}') RETURNING id",
                    &[&r.requester, &r.state.as_str()],
                )
                .await
                .map_err(backend)?;
            let mut out = r.clone();
            out.id = row.try_get(0).map_err(backend)?;
            out.version = 1;
            tx.execute(
                "UPDATE jitgate_requests SET body = $1 WHERE id = $2",
                &[&to_json(&out)?, &out.id],
            )
            .await
            .map_err(backend)?;
            let id = out.id;
            Ok((out, Some(Change::Request { id })))
        })
        .await
    }

    async fn update_request(&self, r: &Request) -> Result<Request> {
        self.write("update_request", async |tx| {
            Ok((save_request(tx, r).await?, Some(Change::Request { id: r.id })))
        })
        .await
    }

    async fn get_request(&self, id: i64) -> Result<Option<Request>> {
        self.one("get_request", "SELECT body FROM jitgate_requests WHERE id = $1", &id)
            .await
    }

    async fn list_requests(&self, f: &RequestFilter) -> Result<Vec<Request>> {
        self.with("list_requests", async |c| {
            let state = f.state.map(|s| s.as_str());
            let rows = c
                .query(
                    "SELECT body FROM jitgate_requests WHERE ($1::text IS NULL OR state = $1) \
                     AND ($2::text IS NULL OR requester = $2) ORDER BY id DESC LIMIT $3",
                    &[&state, &f.requester, &limit(f.limit)],
                )
                .await
                .map_err(backend)?;
            bodies(&rows)
        })
        .await
    }

    async fn pending_requests(&self) -> Result<(u64, Option<Request>)> {
        self.with("pending_requests", async |c| {
            let n: i64 = c
                .query_one("SELECT count(*) FROM jitgate_requests WHERE state = 'pending'", &[])
                .await
                .map_err(backend)?
                .get(0);
            let rows = c
                .query(
                    "SELECT body FROM jitgate_requests WHERE state = 'pending' ORDER BY id LIMIT 1",
                    &[],
                )
                .await
                .map_err(backend)?;
            let oldest: Vec<Request> = bodies(&rows)?;
            Ok((u64::try_from(n).unwrap_or(0), oldest.into_iter().next()))
        })
        .await
    }

    async fn approve_with_grant(&self, r: &Request, g: &Grant) -> Result<(Request, Grant)> {
        self.write("approve_with_grant", async |tx| {
            let mut g = g.clone();
            if g.id == 0 {
                let row = tx
                    .query_one(
                        "INSERT INTO jitgate_grants (identity, resource, state, expires_at, body) VALUES ($1, $2, $3, $4, '{}') RETURNING id",
                        &[&g.identity, &g.resource, &g.state.as_str(), &ms(g.expires_at)],
                    )
                    .await
                    .map_err(backend)?;
                g.id = row.try_get(0).map_err(backend)?;
            }
            save_grant(tx, &g).await?;
            let mut r = r.clone();
            r.grant_id = Some(g.id);
            let r = save_request(tx, &r).await?;
            let id = g.id;
            Ok(((r, g), Some(Change::Grant { id })))
        })
        .await
    }

    async fn update_grant(&self, g: &Grant) -> Result<()> {
        self.write("update_grant", async |tx| {
            save_grant(tx, g).await?;
            Ok(((), Some(Change::Grant { id: g.id })))
        })
        .await
    }

    async fn get_grant(&self, id: i64) -> Result<Option<Grant>> {
        self.one("get_grant", "SELECT body FROM jitgate_grants WHERE id = $1", &id)
            .await
    }

    async fn list_grants(&self, f: &GrantFilter) -> Result<Vec<Grant>> {
        self.with("list_grants", async |c| {
            let state = f.state.map(|s| s.as_str());
            let live = f.live_at.map(ms);
            let rows = c
                .query(
                    "SELECT body FROM jitgate_grants WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR identity = $2) \
                     AND ($3::text IS NULL OR resource = $3) AND ($4::bigint IS NULL OR (state = 'active' AND expires_at > $4)) \
                     ORDER BY id DESC LIMIT $5",
                    &[&state, &f.identity, &f.resource, &live, &limit(f.limit)],
                )
                .await
                .map_err(backend)?;
            bodies(&rows)
        })
        .await
    }

    async fn session_started(&self, s: &SessionInfo) -> Result<()> {
        let node = self.inner.node.clone();
        self.with("session_started", async |c| {
            c.execute(
                "INSERT INTO jitgate_sessions (id, node, started_at, body) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (id) DO UPDATE SET node = $2, started_at = $3, body = $4, ended_at = NULL, end_reason = NULL, kill_by = NULL",
                &[&s.id, &node, &ms(s.started_at), &to_json(s)?],
            )
            .await
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn session_ended(&self, id: &str, at: Timestamp, reason: &str) -> Result<()> {
        self.with("session_ended", async |c| {
            c.execute(
                "UPDATE jitgate_sessions SET ended_at = $1, end_reason = $2 WHERE id = $3",
                &[&ms(at), &reason, &id],
            )
            .await
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn list_sessions(&self, open_only: bool, limit: usize) -> Result<Vec<SessionRecord>> {
        self.with("list_sessions", async |c| {
            let lim = i64::try_from(limit).unwrap_or(1000);
            let rows = c
                .query(
                    "SELECT body, ended_at, end_reason, node FROM jitgate_sessions WHERE (NOT $1 OR ended_at IS NULL) \
                     ORDER BY started_at DESC LIMIT $2",
                    &[&open_only, &lim],
                )
                .await
                .map_err(backend)?;
            rows.iter().map(session_record).collect()
        })
        .await
    }

    async fn get_session(&self, id: &str) -> Result<Option<SessionRecord>> {
        self.with("get_session", async |c| {
            let rows = c
                .query(
                    "SELECT body, ended_at, end_reason, node FROM jitgate_sessions WHERE id = $1",
                    &[&id],
                )
                .await
                .map_err(backend)?;
            rows.first().map(session_record).transpose()
        })
        .await
    }

    async fn end_open_sessions(
        &self,
        at: Timestamp,
        reason: &str,
        keep: &[String],
        started_before: Timestamp,
    ) -> Result<usize> {
        let node = self.inner.node.clone();
        self.with("end_open_sessions", async |c| {
            let n = c
                .execute(
                    "UPDATE jitgate_sessions SET ended_at = $1, end_reason = $2 \
                     WHERE node = $3 AND ended_at IS NULL AND NOT (id = ANY($4)) AND started_at < $5",
                    &[&ms(at), &reason, &node, &keep, &ms(started_before)],
                )
                .await
                .map_err(backend)?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
        .await
    }

    async fn create_token(&self, t: &MachineToken) -> Result<()> {
        self.with("create_token", async |c| {
            c.execute(
                "INSERT INTO jitgate_tokens (sha256, name, body) VALUES ($1, $2, $3)",
                &[&t.sha256, &t.name, &to_json(t)?],
            )
            .await
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn token_by_hash(&self, sha256: &str) -> Result<Option<MachineToken>> {
        self.one(
            "token_by_hash",
            "SELECT body FROM jitgate_tokens WHERE sha256 = $1",
            &sha256,
        )
        .await
    }

    async fn revoke_token(&self, jti: &str, expires_at: i64) -> Result<()> {
        self.write("revoke_token", async |tx| {
            tx.execute(
                "INSERT INTO jitgate_revoked_tokens (jti, expires_at) VALUES ($1, $2) \
                 ON CONFLICT (jti) DO UPDATE SET expires_at = $2",
                &[&jti, &expires_at],
            )
            .await
            .map_err(backend)?;
            let change = Change::TokenRevoked {
                jti: jti.to_string(),
                expires_at,
            };
            Ok(((), Some(change)))
        })
        .await
    }

    async fn revoked_tokens(&self, now: i64) -> Result<Vec<(String, i64)>> {
        self.with("revoked_tokens", async |c| {
            c.execute("DELETE FROM jitgate_revoked_tokens WHERE expires_at <= $1", &[&now])
                .await
                .map_err(backend)?;
            let rows = c
                .query("SELECT jti, expires_at FROM jitgate_revoked_tokens", &[])
                .await
                .map_err(backend)?;
            pairs(&rows)
        })
        .await
    }

    async fn health(&self) -> Result<()> {
        if !Replication::feed_connected(self) {
            return Err(StoreError::Backend("the change feed (LISTEN) is disconnected".into()));
        }
        self.with("health", async |c| {
            c.simple_query("SELECT 1").await.map_err(backend)?;
            Ok(())
        })
        .await
    }

    fn replication(&self) -> Option<&dyn Replication> {
        Some(self)
    }
}

#[async_trait]
impl Replication for PgStore {
    fn changes(&self) -> broadcast::Receiver<Feed> {
        self.inner.feed.subscribe()
    }

    fn feed_connected(&self) -> bool {
        self.inner.feed_up.load(Ordering::SeqCst)
    }

    async fn request_kill(&self, id: &str, by: &str) -> Result<bool> {
        self.write("request_kill", async |tx| {
            let n = tx
                .execute(
                    "UPDATE jitgate_sessions SET kill_by = $1 WHERE id = $2 AND ended_at IS NULL",
                    &[&by, &id],
                )
                .await
                .map_err(backend)?;
            let change = Change::KillSession {
                id: id.to_string(),
                by: by.to_string(),
            };
            Ok((n > 0, (n > 0).then_some(change)))
        })
        .await
    }

    async fn kills_requested(&self) -> Result<Vec<(String, String)>> {
        let node = self.inner.node.clone();
        self.with("kills_requested", async |c| {
            let rows = c
                .query(
                    "SELECT id, kill_by FROM jitgate_sessions WHERE node = $1 AND ended_at IS NULL AND kill_by IS NOT NULL",
                    &[&node],
                )
                .await
                .map_err(backend)?;
            pairs(&rows)
        })
        .await
    }

    async fn register_node(&self, keys: &str) -> Result<Vec<(String, String)>> {
        let node = self.inner.node.clone();
        self.with("register_node", async |c| {
            c.execute(
                "INSERT INTO jitgate_nodes (node, keys, started_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (node) DO UPDATE SET keys = $2, started_at = $3",
                &[&node, &keys, &now_ms()],
            )
            .await
            .map_err(backend)?;
            let month_ago = now_ms() - 30 * 24 * 3600 * 1000;
            let rows = c
                .query(
                    "SELECT node, keys FROM jitgate_nodes WHERE node <> $1 AND started_at > $2 ORDER BY started_at DESC",
                    &[&node, &month_ago],
                )
                .await
                .map_err(backend)?;
            pairs(&rows)
        })
        .await
    }

    async fn clock_skew_ms(&self) -> Result<i64> {
        self.with("clock", async |c| {
            let before = now_ms();
            let row = c
                .query_one("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint", &[])
                .await
                .map_err(backend)?;
            let after = now_ms();
            let theirs: i64 = row.try_get(0).map_err(backend)?;
            Ok(theirs - (before + after) / 2)
        })
        .await
    }
}
