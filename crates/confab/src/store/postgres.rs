//! The cluster store: PostgreSQL, shared by every node. Same contract as
//! SQLite, and the same queries where the dialects agree.
//!
//! What a cluster adds: several nodes append at once. A batch locks, in
//! room-name order and then the direct-message sequence row, the counters
//! it draws ids from, and holds them until it commits. So ids are dense
//! (a rolled-back batch gives its ids back) and every id is committed
//! before the next one is handed out: a node that receives message `n`
//! knows `n - 1` is already in the store, which is what lets receivers
//! fill gaps from history (see `broker::redis`).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row;

use super::idempotency::{KeyClaim, KeyRecord};
use super::{Draft, PageQuery, Paged, Prune, Result, Store, Stored};
use crate::protocol::{now_ms, DirectMessage, RoomMessage, RoomName, UserName};

/// History in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `url` and applies the migrations (under PostgreSQL's
    /// advisory lock, so nodes starting together do not race).
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            // A send waits this long for a connection at most, then is
            // answered `unavailable`.
            .acquire_timeout(Duration::from_secs(3))
            .connect(url)
            .await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(Self { pool })
    }
}

super::idempotency_keys!(sqlx::PgPool);
super::shared_queries!(sqlx::PgPool, sqlx::PgConnection, sqlx::postgres::PgRow);

/// Column vectors for one multi-row insert.
#[derive(Default)]
struct Columns {
    room: Vec<String>,
    id: Vec<i64>,
    sender: Vec<String>,
    body: Vec<String>,
    client_id: Vec<Option<String>>,
    ts: Vec<i64>,
}

impl Columns {
    fn push(&mut self, key: &str, id: i64, sender: &str, body: &str, client_id: &Option<String>) {
        self.room.push(key.to_owned());
        self.id.push(id);
        self.sender.push(sender.to_owned());
        self.body.push(body.to_owned());
        self.client_id.push(client_id.clone());
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn append(&self, batch: &[Draft], prune: &Prune) -> Result<Vec<Stored>> {
        let ts = now_ms();
        let (per_room, dms) = super::draw(batch);
        let mut tx = self.pool.begin().await?;
        // Take the counters in one fixed order (rooms by name, then the
        // direct-message row), so two nodes' batches never deadlock.
        let mut next_room: BTreeMap<String, i64> = BTreeMap::new();
        if !per_room.is_empty() {
            let names: Vec<&str> = per_room.keys().copied().collect();
            let counts: Vec<i64> = per_room.values().copied().collect();
            let rows = sqlx::query(
                "INSERT INTO rooms (name, last_id) \
                 SELECT name, n FROM UNNEST($1::text[], $2::bigint[]) AS t(name, n) ORDER BY name \
                 ON CONFLICT (name) DO UPDATE SET last_id = rooms.last_id + EXCLUDED.last_id \
                 RETURNING name, last_id",
            )
            .bind(&names)
            .bind(&counts)
            .fetch_all(&mut *tx)
            .await?;
            for row in rows {
                let name: String = row.try_get("name")?;
                let last: i64 = row.try_get("last_id")?;
                let n = per_room.get(name.as_str()).copied().unwrap_or(0);
                next_room.insert(name, last - n + 1);
            }
        }
        let mut next_dm = 0;
        if dms > 0 {
            let last: i64 = sqlx::query_scalar(
                "UPDATE dm_sequence SET last_id = last_id + $1 WHERE one RETURNING last_id",
            )
            .bind(dms)
            .fetch_one(&mut *tx)
            .await?;
            next_dm = last - dms + 1;
        }
        let out = super::assign(batch, next_room, next_dm, ts)?;
        let (mut rooms, mut directs) = (Columns::default(), Columns::default());
        for stored in &out {
            match stored {
                Stored::Room(m) => rooms.push(
                    m.room.as_str(),
                    m.id,
                    m.from.as_str(),
                    &m.body,
                    &m.client_id,
                ),
                Stored::Direct(d) => {
                    directs.push(d.to.as_str(), d.id, d.from.as_str(), &d.body, &d.client_id)
                }
            }
        }
        rooms.ts = vec![ts; rooms.id.len()];
        directs.ts = vec![ts; directs.id.len()];
        if !rooms.id.is_empty() {
            sqlx::query(
                "INSERT INTO messages (room, id, sender, body, client_id, ts) \
                 SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], \
                 $5::text[], $6::bigint[])",
            )
            .bind(&rooms.room)
            .bind(&rooms.id)
            .bind(&rooms.sender)
            .bind(&rooms.body)
            .bind(&rooms.client_id)
            .bind(&rooms.ts)
            .execute(&mut *tx)
            .await?;
        }
        if !directs.id.is_empty() {
            sqlx::query(
                "INSERT INTO direct_messages (recipient, id, sender, body, client_id, ts) \
                 SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], \
                 $5::text[], $6::bigint[])",
            )
            .bind(&directs.room)
            .bind(&directs.id)
            .bind(&directs.sender)
            .bind(&directs.body)
            .bind(&directs.client_id)
            .bind(&directs.ts)
            .execute(&mut *tx)
            .await?;
        }
        queries::prune(&mut tx, prune).await?;
        tx.commit().await?;
        Ok(out)
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
        sqlx::query("UPDATE users SET delivered_id = GREATEST(delivered_id, $2) WHERE name = $1")
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
        let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM users WHERE name = $1")
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
