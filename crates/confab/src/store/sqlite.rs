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
        // No ping before each acquire: a local file does not go away, and
        // every saved round trip to the worker thread shortens a batch.
        let pool = SqlitePoolOptions::new()
            .test_before_acquire(false)
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
    /// A whole batch in a constant number of statements, whatever its
    /// size: one upsert draws every room's ids, one insert writes every
    /// message (rows passed as one JSON array through `json_each`). Each
    /// statement is a round trip to SQLite's worker thread, so this keeps
    /// a batch's cost from growing with its length.
    async fn append(&self, batch: &[Draft]) -> Result<Vec<Stored>> {
        let ts = now_ms();
        let (rooms, dms) = super::draw(batch);
        let mut tx = self.pool.begin().await?;
        let mut first_room = std::collections::BTreeMap::new();
        if !rooms.is_empty() {
            let counts = serde_json::to_string(&rooms).expect("names and counts serialize");
            let rows = sqlx::query(
                "INSERT INTO rooms (name, last_id) SELECT key, value FROM json_each($1) WHERE true \
                 ON CONFLICT (name) DO UPDATE SET last_id = rooms.last_id + excluded.last_id \
                 RETURNING name, last_id",
            )
            .bind(counts)
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                let name: String = row.try_get("name")?;
                let last: i64 = row.try_get("last_id")?;
                let n = rooms.get(name.as_str()).copied().unwrap_or(0);
                first_room.insert(name, last - n + 1);
            }
        }
        // Only this store's sequencer inserts direct messages, inside this
        // transaction, so the next ids follow the current maximum.
        let first_dm = if dms > 0 {
            let max: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM direct_messages")
                .fetch_one(&mut *tx)
                .await?;
            max + 1
        } else {
            0
        };
        let stored = super::assign(batch, first_room, first_dm, ts)?;
        let (mut messages, mut directs) = (Vec::new(), Vec::new());
        for s in &stored {
            match s {
                Stored::Room(m) => messages.push((&m.room, m.id, &m.from, &m.body, &m.client_id)),
                Stored::Direct(d) => directs.push((&d.to, d.id, &d.from, &d.body, &d.client_id)),
            }
        }
        let insert = |table: &str, key: &str| {
            format!(
                "INSERT INTO {table} ({key}, id, sender, body, client_id, ts) \
                 SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, $2 \
                 FROM json_each($1)"
            )
        };
        for (rows, sql) in [
            (serde_json::to_string(&messages), insert("messages", "room")),
            (serde_json::to_string(&directs), insert("direct_messages", "recipient")),
        ] {
            let rows = rows.expect("rows serialize");
            if rows != "[]" {
                sqlx::query(&sql).bind(rows).bind(ts).execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(stored)
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
