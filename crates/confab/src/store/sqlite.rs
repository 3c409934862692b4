//! The embedded store: SQLite in WAL mode, one file under `./confab-data/`
//! by default. Appends come in batches from the sequencer's single task,
//! so one transaction (and one fsync) covers many messages.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::idempotency::{KeyClaim, KeyRecord};
use super::{Draft, PageQuery, Paged, Result, Store, Stored};
use crate::protocol::{now_ms, DirectMessage, RoomMessage, RoomName, UserName};

/// History in SQLite.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database `url` names and applies the
    /// migrations.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let memory = url.contains(":memory:");
        if let Some(path) = url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or(path);
            if let Some(dir) = std::path::Path::new(path).parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir)?;
                }
            }
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Batched commits make a full fsync per batch affordable, and
            // an acknowledged message must survive a power cut.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5));
        // Every connection to `:memory:` is its own database: keep one.
        let pool = SqlitePoolOptions::new()
            .max_connections(if memory { 1 } else { 4 })
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }
}

super::idempotency_keys!(sqlx::SqlitePool);

/// A row of `messages` as a [`RoomMessage`].
fn room_message(row: &sqlx::sqlite::SqliteRow) -> Result<RoomMessage> {
    Ok(RoomMessage {
        room: parse_name(row.try_get("room")?, RoomName::parse)?,
        id: row.try_get("id")?,
        from: parse_name(row.try_get("sender")?, UserName::parse)?,
        body: row.try_get("body")?,
        ts: row.try_get("ts")?,
        client_id: row.try_get("client_id")?,
    })
}

/// A row of `direct_messages` as a [`DirectMessage`].
fn direct_message(row: &sqlx::sqlite::SqliteRow) -> Result<DirectMessage> {
    Ok(DirectMessage {
        id: row.try_get("id")?,
        from: parse_name(row.try_get("sender")?, UserName::parse)?,
        to: parse_name(row.try_get("recipient")?, UserName::parse)?,
        body: row.try_get("body")?,
        ts: row.try_get("ts")?,
        client_id: row.try_get("client_id")?,
    })
}

pub(super) fn parse_name<T, E: std::fmt::Display>(
    s: String,
    parse: fn(&str) -> std::result::Result<T, E>,
) -> Result<T> {
    parse(&s).map_err(|e| super::StoreError::Unavailable(format!("stored name `{s}`: {e}")))
}

/// Turns rows fetched newest-first or oldest-first, one more than the
/// limit, into an oldest-first page.
pub(super) fn page<T>(mut items: Vec<T>, limit: u32, newest_first: bool) -> Paged<T> {
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    if newest_first {
        items.reverse();
    }
    Paged { items, more }
}

#[async_trait]
impl Store for SqliteStore {
    async fn append(&self, batch: &[Draft]) -> Result<Vec<Stored>> {
        let mut tx = self.pool.begin().await?;
        let mut out = Vec::with_capacity(batch.len());
        let ts = now_ms();
        for draft in batch {
            match draft {
                Draft::Room {
                    room,
                    from,
                    body,
                    client_id,
                } => {
                    let id: i64 = sqlx::query_scalar(
                        "INSERT INTO rooms (name, last_id) VALUES ($1, 1) \
                         ON CONFLICT (name) DO UPDATE SET last_id = rooms.last_id + 1 \
                         RETURNING last_id",
                    )
                    .bind(room.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
                    sqlx::query(
                        "INSERT INTO messages (room, id, sender, body, client_id, ts) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(room.as_str())
                    .bind(id)
                    .bind(from.as_str())
                    .bind(body)
                    .bind(client_id)
                    .bind(ts)
                    .execute(&mut *tx)
                    .await?;
                    out.push(Stored::Room(RoomMessage {
                        room: room.clone(),
                        id,
                        from: from.clone(),
                        body: body.clone(),
                        ts,
                        client_id: client_id.clone(),
                    }));
                }
                Draft::Direct {
                    from,
                    to,
                    body,
                    client_id,
                } => {
                    let id: i64 = sqlx::query_scalar(
                        "INSERT INTO direct_messages (sender, recipient, body, client_id, ts) \
                         VALUES ($1, $2, $3, $4, $5) RETURNING id",
                    )
                    .bind(from.as_str())
                    .bind(to.as_str())
                    .bind(body)
                    .bind(client_id)
                    .bind(ts)
                    .fetch_one(&mut *tx)
                    .await?;
                    out.push(Stored::Direct(DirectMessage {
                        id,
                        from: from.clone(),
                        to: to.clone(),
                        body: body.clone(),
                        ts,
                        client_id: client_id.clone(),
                    }));
                }
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn room_page(&self, room: &RoomName, q: PageQuery) -> Result<Paged<RoomMessage>> {
        let (sql, key, newest_first) = match (q.before, q.after) {
            (_, Some(after)) => (
                "SELECT * FROM messages WHERE room = $1 AND id > $2 ORDER BY id ASC LIMIT $3",
                after,
                false,
            ),
            (before, None) => (
                "SELECT * FROM messages WHERE room = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
                before.unwrap_or(i64::MAX),
                true,
            ),
        };
        let rows = sqlx::query(sql)
            .bind(room.as_str())
            .bind(key)
            .bind(i64::from(q.limit) + 1)
            .fetch_all(&self.pool)
            .await?;
        let items = rows.iter().map(room_message).collect::<Result<Vec<_>>>()?;
        Ok(page(items, q.limit, newest_first))
    }

    async fn dm_page(
        &self,
        a: &UserName,
        b: &UserName,
        q: PageQuery,
    ) -> Result<Paged<DirectMessage>> {
        let (sql, key, newest_first) = match (q.before, q.after) {
            (_, Some(after)) => (
                "SELECT * FROM direct_messages WHERE \
                 ((sender = $1 AND recipient = $2) OR (sender = $2 AND recipient = $1)) \
                 AND id > $3 ORDER BY id ASC LIMIT $4",
                after,
                false,
            ),
            (before, None) => (
                "SELECT * FROM direct_messages WHERE \
                 ((sender = $1 AND recipient = $2) OR (sender = $2 AND recipient = $1)) \
                 AND id < $3 ORDER BY id DESC LIMIT $4",
                before.unwrap_or(i64::MAX),
                true,
            ),
        };
        let rows = sqlx::query(sql)
            .bind(a.as_str())
            .bind(b.as_str())
            .bind(key)
            .bind(i64::from(q.limit) + 1)
            .fetch_all(&self.pool)
            .await?;
        let items = rows
            .iter()
            .map(direct_message)
            .collect::<Result<Vec<_>>>()?;
        Ok(page(items, q.limit, newest_first))
    }

    async fn dms_since(
        &self,
        user: &UserName,
        after: i64,
        limit: u32,
    ) -> Result<Paged<DirectMessage>> {
        let rows = sqlx::query(
            "SELECT * FROM direct_messages WHERE (sender = $1 OR recipient = $1) AND id > $2 \
             ORDER BY id ASC LIMIT $3",
        )
        .bind(user.as_str())
        .bind(after)
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let items = rows
            .iter()
            .map(direct_message)
            .collect::<Result<Vec<_>>>()?;
        Ok(page(items, limit, false))
    }

    async fn undelivered_dms(&self, user: &UserName, limit: u32) -> Result<Vec<DirectMessage>> {
        let rows = sqlx::query(
            "SELECT d.* FROM direct_messages d JOIN users u ON u.name = d.recipient \
             WHERE d.recipient = $1 AND d.id > u.delivered_id ORDER BY d.id ASC LIMIT $2",
        )
        .bind(user.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(direct_message).collect()
    }

    async fn mark_delivered(&self, user: &UserName, id: i64) -> Result<()> {
        sqlx::query("UPDATE users SET delivered_id = MAX(delivered_id, $2) WHERE name = $1")
            .bind(user.as_str())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn register_user(&self, user: &UserName) -> Result<()> {
        sqlx::query(
            "INSERT INTO users (name, first_seen) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(user.as_str())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn user_exists(&self, user: &UserName) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM users WHERE name = $1")
            .bind(user.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    async fn room_heads(&self) -> Result<Vec<(RoomName, i64, i64)>> {
        let rows = sqlx::query(
            "SELECT r.name AS name, r.last_id AS last_id, m.ts AS ts FROM rooms r \
             JOIN messages m ON m.room = r.name AND m.id = r.last_id ORDER BY r.name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    parse_name(row.try_get("name")?, RoomName::parse)?,
                    row.try_get("last_id")?,
                    row.try_get("ts")?,
                ))
            })
            .collect()
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn claim_key(&self, claim: &KeyClaim) -> Result<Option<KeyRecord>> {
        keys::claim(&self.pool, claim).await
    }

    async fn complete_key(&self, key: &str, message_id: i64) -> Result<()> {
        keys::complete(&self.pool, key, message_id).await
    }

    async fn release_key(&self, key: &str) -> Result<()> {
        keys::release(&self.pool, key).await
    }

    async fn prune_keys(&self, before_ms: i64) -> Result<u64> {
        keys::prune(&self.pool, before_ms).await
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
