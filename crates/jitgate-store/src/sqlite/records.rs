//! Requests, grants, sessions, tokens: the [`Store`] calls.

use super::*;

pub(super) fn save_request(c: &Connection, r: &Request) -> Result<Request> {
    let mut next = r.clone();
    next.version = r.version + 1;
    let n = c
        .execute(
            "UPDATE requests SET state = ?1, version = ?2, body = ?3 WHERE id = ?4 AND version = ?5",
            params![
                next.state.as_str(),
                next.version,
                to_json(&next).map_err(backend)?,
                r.id,
                r.version
            ],
        )
        .map_err(backend)?;
    if n == 0 {
        let exists: Option<i64> = c
            .query_row("SELECT id FROM requests WHERE id = ?1", [r.id], |x| x.get(0))
            .optional()
            .map_err(backend)?;
        return Err(if exists.is_some() {
            StoreError::Conflict
        } else {
            StoreError::NotFound
        });
    }
    Ok(next)
}

pub(super) fn save_grant(c: &Connection, g: &Grant) -> Result<()> {
    let n = c
        .execute(
            "UPDATE grants SET state = ?1, expires_at = ?2, body = ?3 WHERE id = ?4",
            params![g.state.as_str(), ms(g.expires_at), to_json(g).map_err(backend)?, g.id],
        )
        .map_err(backend)?;
    if n == 0 { Err(StoreError::NotFound) } else { Ok(()) }
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_request(&self, r: &Request) -> Result<Request> {
        let r = r.clone();
        self.with("create_request", move |c| {
            let tx = c.transaction().map_err(backend)?;
            tx.execute(
                "INSERT INTO requests (requester, state, version, body) VALUES (?1, ?2, 1, '{}')",
                params![r.requester, r.state.as_str()],
            )
            .map_err(backend)?;
            let mut out = r;
            out.id = tx.last_insert_rowid();
            out.version = 1;
            tx.execute(
                "UPDATE requests SET body = ?1 WHERE id = ?2",
                params![to_json(&out).map_err(backend)?, out.id],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(out)
        })
        .await
    }

    async fn update_request(&self, r: &Request) -> Result<Request> {
        let r = r.clone();
        self.with("update_request", move |c| save_request(c, &r)).await
    }

    async fn get_request(&self, id: i64) -> Result<Option<Request>> {
        self.with("get_request", move |c| {
            c.query_row("SELECT body FROM requests WHERE id = ?1", [id], |r| {
                from_json(&r.get::<_, String>(0)?)
            })
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn list_requests(&self, f: &RequestFilter) -> Result<Vec<Request>> {
        let f = f.clone();
        self.with("list_requests", move |c| {
            let mut st = c
                .prepare("SELECT body FROM requests WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR requester = ?2) ORDER BY id DESC LIMIT ?3")
                .map_err(backend)?;
            let limit = i64::try_from(f.limit.unwrap_or(1000)).unwrap_or(1000);
            let rows = st
                .query_map(params![f.state.map(|s| s.as_str()), f.requester, limit], |r| from_json(&r.get::<_, String>(0)?))
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<Request>>>().map_err(backend)
        })
        .await
    }

    async fn pending_requests(&self) -> Result<(u64, Option<Request>)> {
        self.with("pending_requests", move |c| {
            let n: i64 = c
                .query_row("SELECT count(*) FROM requests WHERE state = 'pending'", [], |r| {
                    r.get(0)
                })
                .map_err(backend)?;
            let oldest = c
                .query_row(
                    "SELECT body FROM requests WHERE state = 'pending' ORDER BY id LIMIT 1",
                    [],
                    |r| from_json(&r.get::<_, String>(0)?),
                )
                .optional()
                .map_err(backend)?;
            Ok((u64::try_from(n).unwrap_or(0), oldest))
        })
        .await
    }

    async fn approve_with_grant(&self, r: &Request, g: &Grant) -> Result<(Request, Grant)> {
        let (r, g) = (r.clone(), g.clone());
        self.with("approve_with_grant", move |c| {
            let tx = c.transaction().map_err(backend)?;
            let mut g = g;
            if g.id == 0 {
                tx.execute(
                    "INSERT INTO grants (identity, resource, state, expires_at, body) VALUES (?1, ?2, ?3, ?4, '{}')",
                    params![g.identity, g.resource, g.state.as_str(), ms(g.expires_at)],
                )
                .map_err(backend)?;
                g.id = tx.last_insert_rowid();
            }
            save_grant(&tx, &g)?;
            let mut r = r;
            r.grant_id = Some(g.id);
            let r = save_request(&tx, &r)?;
            tx.commit().map_err(backend)?;
            Ok((r, g))
        })
        .await
    }

    async fn update_grant(&self, g: &Grant) -> Result<()> {
        let g = g.clone();
        self.with("update_grant", move |c| save_grant(c, &g)).await
    }

    async fn get_grant(&self, id: i64) -> Result<Option<Grant>> {
        self.with("get_grant", move |c| {
            c.query_row("SELECT body FROM grants WHERE id = ?1", [id], |r| {
                from_json(&r.get::<_, String>(0)?)
            })
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn list_grants(&self, f: &GrantFilter) -> Result<Vec<Grant>> {
        let f = f.clone();
        self.with("list_grants", move |c| {
            let mut st = c
                .prepare(
                    "SELECT body FROM grants WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR identity = ?2) \
                     AND (?3 IS NULL OR resource = ?3) AND (?4 IS NULL OR (state = 'active' AND expires_at > ?4)) \
                     ORDER BY id DESC LIMIT ?5",
                )
                .map_err(backend)?;
            let limit = i64::try_from(f.limit.unwrap_or(1000)).unwrap_or(1000);
            let rows = st
                .query_map(
                    params![
                        f.state.map(|s| s.as_str()),
                        f.identity,
                        f.resource,
                        f.live_at.map(ms),
                        limit
                    ],
                    |r| from_json(&r.get::<_, String>(0)?),
                )
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<Grant>>>().map_err(backend)
        })
        .await
    }

    async fn session_started(&self, s: &SessionInfo) -> Result<()> {
        let s = s.clone();
        self.with_conn(&self.session_conn, "session_started", move |c| {
            c.execute(
                "INSERT OR REPLACE INTO sessions (id, started_at, body) VALUES (?1, ?2, ?3)",
                params![s.id, ms(s.started_at), to_json(&s).map_err(backend)?],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn session_ended(&self, id: &str, at: Timestamp, reason: &str) -> Result<()> {
        let (id, reason) = (id.to_string(), reason.to_string());
        self.with_conn(&self.session_conn, "session_ended", move |c| {
            c.execute(
                "UPDATE sessions SET ended_at = ?1, end_reason = ?2 WHERE id = ?3",
                params![ms(at), reason, id],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn list_sessions(&self, open_only: bool, limit: usize) -> Result<Vec<SessionRecord>> {
        self.with("list_sessions", move |c| {
            let mut st = c
                .prepare("SELECT body, ended_at, end_reason FROM sessions WHERE (?1 = 0 OR ended_at IS NULL) ORDER BY started_at DESC LIMIT ?2")
                .map_err(backend)?;
            let rows = st
                .query_map(params![i64::from(open_only), i64::try_from(limit).unwrap_or(1000)], session_row)
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
        })
        .await
    }

    async fn get_session(&self, id: &str) -> Result<Option<SessionRecord>> {
        let id = id.to_string();
        self.with("get_session", move |c| {
            c.query_row(
                "SELECT body, ended_at, end_reason FROM sessions WHERE id = ?1",
                [id],
                session_row,
            )
            .optional()
            .map_err(backend)
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
        let (reason, keep) = (reason.to_string(), keep.to_vec());
        self.with("end_open_sessions", move |c| {
            let tx = c.transaction().map_err(backend)?;
            let open: Vec<String> = {
                let mut st = tx
                    .prepare("SELECT id FROM sessions WHERE ended_at IS NULL AND started_at < ?1")
                    .map_err(backend)?;
                let rows = st
                    .query_map([ms(started_before)], |r| r.get::<_, String>(0))
                    .map_err(backend)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)?
            };
            let mut n = 0;
            for id in open.iter().filter(|id| !keep.contains(id)) {
                n += tx
                    .execute(
                        "UPDATE sessions SET ended_at = ?1, end_reason = ?2 WHERE id = ?3",
                        params![ms(at), reason, id],
                    )
                    .map_err(backend)?;
            }
            tx.commit().map_err(backend)?;
            Ok(n)
        })
        .await
    }

    async fn create_token(&self, t: &MachineToken) -> Result<()> {
        let t = t.clone();
        self.with("create_token", move |c| {
            c.execute(
                "INSERT INTO tokens (sha256, name, body) VALUES (?1, ?2, ?3)",
                params![t.sha256, t.name, to_json(&t).map_err(backend)?],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn token_by_hash(&self, sha256: &str) -> Result<Option<MachineToken>> {
        let h = sha256.to_string();
        self.with("token_by_hash", move |c| {
            c.query_row("SELECT body FROM tokens WHERE sha256 = ?1", [h], |r| {
                from_json(&r.get::<_, String>(0)?)
            })
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn revoke_token(&self, jti: &str, expires_at: i64) -> Result<()> {
        let jti = jti.to_string();
        self.with("revoke_token", move |c| {
            c.execute(
                "INSERT OR REPLACE INTO revoked_tokens (jti, expires_at) VALUES (?1, ?2)",
                params![jti, expires_at],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn revoked_tokens(&self, now: i64) -> Result<Vec<(String, i64)>> {
        self.with("revoked_tokens", move |c| {
            c.execute("DELETE FROM revoked_tokens WHERE expires_at <= ?1", [now])
                .map_err(backend)?;
            let mut st = c
                .prepare("SELECT jti, expires_at FROM revoked_tokens")
                .map_err(backend)?;
            let rows = st
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(backend)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(backend)
        })
        .await
    }

    async fn health(&self) -> Result<()> {
        self.with("health", |c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(backend))
            .await
    }
}
