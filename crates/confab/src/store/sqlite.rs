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
super::shared_queries!(sqlx::SqlitePool, sqlx::sqlite::SqliteRow);

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
            (
                serde_json::to_string(&directs),
                insert("direct_messages", "recipient"),
            ),
        ] {
            let rows = rows.expect("rows serialize");
            if rows != "[]" {
                sqlx::query(&sql)
                    .bind(rows)
                    .bind(ts)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(stored)
    }

    async fn room_page(&self, room: &RoomName, q: PageQuery) -> Result<Paged<RoomMessage>> {
        queries::room_page(&self.pool, room, q).await
    }

    async fn dm_page(
        &self,
        a: &UserName,
        b: &UserName,
        q: PageQuery,
    ) -> Result<Paged<DirectMessage>> {
        queries::dm_page(&self.pool, a, b, q).await
    }

    async fn dms_since(
        &self,
        user: &UserName,
        after: i64,
        limit: u32,
    ) -> Result<Paged<DirectMessage>> {
        queries::dms_since(&self.pool, user, after, limit).await
    }

    async fn undelivered_dms(&self, user: &UserName, limit: u32) -> Result<Vec<DirectMessage>> {
        queries::undelivered_dms(&self.pool, user, limit).await
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
        queries::register_user(&self.pool, user).await
    }

    async fn user_exists(&self, user: &UserName) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM users WHERE name = $1")
            .bind(user.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    async fn room_heads(&self) -> Result<Vec<(RoomName, i64, i64)>> {
        queries::room_heads(&self.pool).await
    }

    async fn ping(&self) -> Result<()> {
        queries::ping(&self.pool).await
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
