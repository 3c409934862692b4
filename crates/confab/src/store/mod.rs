//! History: the one place messages are kept. A [`Store`] appends batches
//! of drafts in one transaction, assigning ids and timestamps, and answers
//! history queries. Nothing is delivered or acknowledged before the store
//! has it (see `sequencer`).
//!
//! * [`sqlite`]: the embedded default, one file (or memory).
//! * [`postgres`]: shared by the nodes of a cluster.

pub mod idempotency;
pub mod postgres;
pub mod sqlite;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;

use crate::protocol::{DirectMessage, RoomMessage, RoomName, UserName};
use idempotency::{KeyClaim, KeyRecord};

/// A message that is not stored yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Draft {
    /// To a room.
    Room {
        /// The room.
        room: RoomName,
        /// The sender.
        from: UserName,
        /// The text.
        body: String,
        /// The sending client's id for it.
        client_id: Option<String>,
    },
    /// To a user.
    Direct {
        /// The sender.
        from: UserName,
        /// The recipient.
        to: UserName,
        /// The text.
        body: String,
        /// The sending client's id for it.
        client_id: Option<String>,
    },
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// A room message.
    Room(RoomMessage),
    /// A direct message.
    Direct(DirectMessage),
}

/// A stored message as a row of its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Row<'a> {
    /// Whether it goes to `direct_messages` (else `messages`).
    pub direct: bool,
    /// The room, or the recipient of a direct message.
    pub key: &'a str,
    pub id: i64,
    pub from: &'a str,
    pub body: &'a str,
    pub client_id: Option<&'a str>,
    pub ts: i64,
}

impl Stored {
    /// Its row: the columns every SQL store writes.
    pub(crate) fn row(&self) -> Row<'_> {
        let (direct, key, (id, from, body, client_id, ts)) = match self {
            Stored::Room(m) => (
                false,
                m.room.as_str(),
                (m.id, &m.from, &m.body, &m.client_id, m.ts),
            ),
            Stored::Direct(d) => (
                true,
                d.to.as_str(),
                (d.id, &d.from, &d.body, &d.client_id, d.ts),
            ),
        };
        Row {
            direct,
            key,
            id,
            from: from.as_str(),
            body,
            client_id: client_id.as_deref(),
            ts,
        }
    }

    /// Its id and timestamp.
    pub fn id_ts(&self) -> (i64, i64) {
        match self {
            Stored::Room(m) => (m.id, m.ts),
            Stored::Direct(d) => (d.id, d.ts),
        }
    }
}

/// The ids a batch needs: how many per room (in name order, the order
/// in which backends lock their counters) and how many direct-message ids.
pub(crate) fn draw(batch: &[Draft]) -> (BTreeMap<&str, i64>, i64) {
    let mut rooms: BTreeMap<&str, i64> = BTreeMap::new();
    let mut dms = 0;
    for draft in batch {
        match draft {
            Draft::Room { room, .. } => *rooms.entry(room.as_str()).or_default() += 1,
            Draft::Direct { .. } => dms += 1,
        }
    }
    (rooms, dms)
}

/// Gives each draft its id, counting up from the first id drawn for its
/// room (`first_room`) or for direct messages (`first_dm`), in batch order.
pub(crate) fn assign(
    batch: &[Draft],
    mut first_room: BTreeMap<String, i64>,
    mut first_dm: i64,
    ts: i64,
) -> Result<Vec<Stored>> {
    batch
        .iter()
        .map(|draft| match draft {
            Draft::Room {
                room,
                from,
                body,
                client_id,
            } => {
                let next = first_room.get_mut(room.as_str()).ok_or_else(|| {
                    StoreError::Unavailable(format!("no id drawn for room `{room}`"))
                })?;
                let id = *next;
                *next += 1;
                Ok(Stored::Room(RoomMessage {
                    room: room.clone(),
                    id,
                    from: from.clone(),
                    body: body.clone(),
                    ts,
                    client_id: client_id.clone(),
                }))
            }
            Draft::Direct {
                from,
                to,
                body,
                client_id,
            } => {
                let id = first_dm;
                first_dm += 1;
                Ok(Stored::Direct(DirectMessage {
                    id,
                    from: from.clone(),
                    to: to.clone(),
                    body: body.clone(),
                    ts,
                    client_id: client_id.clone(),
                }))
            }
        })
        .collect()
}

/// Which page of history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PageQuery {
    /// Only ids below this one (the newest of them).
    pub before: Option<i64>,
    /// Only ids above this one (the oldest of them).
    pub after: Option<i64>,
    /// At most this many.
    pub limit: u32,
}

/// A page, oldest first, and whether the query had more to give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paged<T> {
    /// The messages, oldest first.
    pub items: Vec<T>,
    /// Whether more lie beyond the page in the direction asked.
    pub more: bool,
}

/// A store failure. Every one means "not stored"; the caller answers
/// `unavailable` and never acknowledges.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or refused the operation.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

/// Result alias for store calls.
pub type Result<T> = std::result::Result<T, StoreError>;

/// History to delete in the same transaction as an append: what a
/// retention window (`--history-keep`) has let fall out. Riding on the
/// next append, a prune costs no commit (and, on disk, no `fsync`) of its
/// own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prune {
    /// Rooms, each with the id up to which its messages go.
    pub rooms: BTreeMap<RoomName, i64>,
    /// Recipients whose direct messages beyond the newest `keep` go.
    pub dms: BTreeSet<UserName>,
    /// How many direct messages each recipient keeps.
    pub keep: u32,
}

impl Prune {
    /// Nothing to delete, keeping `keep` direct messages per recipient.
    pub fn keeping(keep: u32) -> Self {
        Self {
            keep,
            ..Self::default()
        }
    }

    /// Whether there is nothing to delete.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty() && self.dms.is_empty()
    }

    /// Adds `room`'s messages up to `upto`.
    pub fn room(&mut self, room: RoomName, upto: i64) {
        let bound = self.rooms.entry(room).or_default();
        *bound = (*bound).max(upto);
    }

    /// The `OFFSET` of [`PRUNE_DMS`]: how many of a recipient's newest
    /// direct messages lie above the one kept last.
    pub(crate) fn dm_offset(&self) -> i64 {
        i64::from(self.keep.max(1)) - 1
    }

    /// Forgets what was to be deleted (done, or given up).
    pub fn clear(&mut self) {
        self.rooms.clear();
        self.dms.clear();
    }
}

/// The history store. Implementations: [`sqlite::SqliteStore`],
/// [`postgres::PostgresStore`].
///
/// Contract (a shared test suite holds every implementation to it):
/// * `append` is all or nothing, its prune included; room ids are unique
///   per room and increase in the order of the batch; direct-message ids
///   are unique and increasing server-wide.
/// * pages are oldest first; `more` says whether the query had more rows.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a batch in one transaction, assigning ids and timestamps,
    /// and deletes what `prune` names in the same transaction. The batch
    /// may be empty.
    async fn append(&self, batch: &[Draft], prune: &Prune) -> Result<Vec<Stored>>;
    /// A page of a room's history.
    async fn room_page(&self, room: &RoomName, q: PageQuery) -> Result<Paged<RoomMessage>>;
    /// A page of the conversation between two users.
    async fn dm_page(
        &self,
        a: &UserName,
        b: &UserName,
        q: PageQuery,
    ) -> Result<Paged<DirectMessage>>;
    /// Direct messages to or from `user` with ids above `after`, oldest
    /// first (resume after a reconnect).
    async fn dms_since(
        &self,
        user: &UserName,
        after: i64,
        limit: u32,
    ) -> Result<Paged<DirectMessage>>;
    /// Direct messages to `user` never delivered to any of its
    /// connections, oldest first.
    async fn undelivered_dms(&self, user: &UserName, limit: u32) -> Result<Vec<DirectMessage>>;
    /// Records that direct messages to `user` up to `id` were delivered.
    async fn mark_delivered(&self, user: &UserName, id: i64) -> Result<()>;
    /// Records that `user` exists (it has connected once).
    async fn register_user(&self, user: &UserName) -> Result<()>;
    /// Whether `user` has ever connected.
    async fn user_exists(&self, user: &UserName) -> Result<bool>;
    /// The latest message id of each room with history, by name.
    async fn room_heads(&self) -> Result<Vec<(RoomName, i64, i64)>>;
    /// Checks that the store answers.
    async fn ping(&self) -> Result<()>;
    /// Claims an idempotency key (see [`idempotency`]): `None` if this
    /// call claimed it, else the earlier claim.
    async fn claim_key(&self, claim: &KeyClaim) -> Result<Option<KeyRecord>>;
    /// Records the message id a claimed key's publish stored.
    async fn complete_key(&self, key: &str, message_id: i64) -> Result<()>;
    /// Forgets a claimed key whose publish failed, so it can be retried.
    async fn release_key(&self, key: &str) -> Result<()>;
    /// Forgets keys claimed before `before_ms`; returns how many.
    async fn prune_keys(&self, before_ms: i64) -> Result<u64>;
    /// Flushes and closes.
    async fn close(&self);
}

/// Defines, in the module that invokes it, a module `keys` with the
/// idempotency-key queries for one sqlx pool type (a path from the crate
/// root, e.g. `sqlx::PgPool`). The SQL is the same in both dialects, so
/// each backend's [`Store`] methods call `keys::claim` and friends.
macro_rules! idempotency_keys {
    ($pool:ty) => {
        /// The idempotency-key queries (see `store::idempotency`).
        mod keys {
            use sqlx::Row;

            use $crate::store::idempotency::{KeyClaim, KeyRecord};
            use $crate::store::{Result, StoreError};

            pub(super) async fn claim(pool: &$pool, claim: &KeyClaim) -> Result<Option<KeyRecord>> {
                // The earlier claim may be released between the insert
                // and the select; then the key is free again: retry.
                for _ in 0..3 {
                    let inserted = sqlx::query(
                        "INSERT INTO idempotency_keys (key, scope, target, sender, created_at) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key) DO NOTHING",
                    )
                    .bind(&claim.key)
                    .bind(claim.scope)
                    .bind(&claim.target)
                    .bind(&claim.sender)
                    .bind(claim.created_at)
                    .execute(pool)
                    .await?
                    .rows_affected();
                    if inserted == 1 {
                        return Ok(None);
                    }
                    let row = sqlx::query(
                        "SELECT scope, target, sender, message_id, created_at \
                         FROM idempotency_keys WHERE key = $1",
                    )
                    .bind(&claim.key)
                    .fetch_optional(pool)
                    .await?;
                    if let Some(row) = row {
                        return Ok(Some(KeyRecord {
                            scope: row.try_get("scope")?,
                            target: row.try_get("target")?,
                            sender: row.try_get("sender")?,
                            message_id: row.try_get("message_id")?,
                            created_at: row.try_get("created_at")?,
                        }));
                    }
                }
                Err(StoreError::Unavailable(format!(
                    "idempotency key `{}` keeps changing hands",
                    claim.key
                )))
            }

            pub(super) async fn complete(pool: &$pool, key: &str, message_id: i64) -> Result<()> {
                sqlx::query("UPDATE idempotency_keys SET message_id = $2 WHERE key = $1")
                    .bind(key)
                    .bind(message_id)
                    .execute(pool)
                    .await?;
                Ok(())
            }

            pub(super) async fn release(pool: &$pool, key: &str) -> Result<()> {
                sqlx::query("DELETE FROM idempotency_keys WHERE key = $1 AND message_id IS NULL")
                    .bind(key)
                    .execute(pool)
                    .await?;
                Ok(())
            }

            pub(super) async fn prune(pool: &$pool, before_ms: i64) -> Result<u64> {
                let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
                    .bind(before_ms)
                    .execute(pool)
                    .await?;
                Ok(done.rows_affected())
            }
        }
    };
}
pub(crate) use idempotency_keys;

/// Opens the store a URL names: `sqlite://PATH`, `sqlite::memory:` or
/// `postgres://…`.
pub async fn open(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PostgresStore::open(url).await?))
    } else {
        anyhow::bail!("unsupported store URL scheme in `{}`", redact(url))
    }
}

/// Deletes a room's messages up to an id: `$1` room, `$2` id.
pub(crate) const PRUNE_ROOM: &str = "DELETE FROM messages WHERE room = $1 AND id <= $2";

/// Deletes a recipient's direct messages beyond the newest `keep`: `$1`
/// recipient, `$2` [`Prune::dm_offset`]. The subquery is the id of the
/// `keep`th newest (NULL, so nothing goes, while there are fewer); both
/// walk the (recipient, id) index.
pub(crate) const PRUNE_DMS: &str = "DELETE FROM direct_messages WHERE recipient = $1 AND id < \
     (SELECT id FROM direct_messages WHERE recipient = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)";

/// A room draft from `ann` to `lobby`, for the store's unit tests.
#[cfg(test)]
pub(crate) fn lobby_draft(body: &str) -> Draft {
    Draft::Room {
        room: RoomName::parse("lobby").unwrap(),
        from: UserName::parse("ann").unwrap(),
        body: body.into(),
        client_id: None,
    }
}

/// Whether a store URL names a database that lives in the process.
pub fn in_memory(url: &str) -> bool {
    url.starts_with("sqlite:") && url.contains(":memory:")
}

/// A URL with any password replaced, fit for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

pub(crate) fn parse_name<T, E: std::fmt::Display>(
    s: String,
    parse: fn(&str) -> std::result::Result<T, E>,
) -> Result<T> {
    parse(&s).map_err(|e| StoreError::Unavailable(format!("stored name `{s}`: {e}")))
}

/// Turns rows fetched newest-first or oldest-first, one more than the
/// limit, into an oldest-first page.
pub(crate) fn page<T>(mut items: Vec<T>, limit: u32, newest_first: bool) -> Paged<T> {
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    if newest_first {
        items.reverse();
    }
    Paged { items, more }
}

/// The queries both SQL stores run word for word (`$N` placeholders work
/// in SQLite and PostgreSQL alike), expanded once per backend with its
/// pool, connection and row types, so each `Store` impl delegates to one
/// copy.
macro_rules! shared_queries {
    ($pool:ty, $conn:ty, $row:ty) => {
        /// History and user queries shared by the SQL stores.
        mod queries {
            use sqlx::Row;

            use $crate::protocol::{now_ms, DirectMessage, RoomMessage, RoomName, UserName};
            use $crate::store::{page, parse_name, PageQuery, Paged, Result};

            /// A row of `messages` as a [`RoomMessage`].
            pub(crate) fn room_message(row: &$row) -> Result<RoomMessage> {
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
            pub(crate) fn direct_message(row: &$row) -> Result<DirectMessage> {
                Ok(DirectMessage {
                    id: row.try_get("id")?,
                    from: parse_name(row.try_get("sender")?, UserName::parse)?,
                    to: parse_name(row.try_get("recipient")?, UserName::parse)?,
                    body: row.try_get("body")?,
                    ts: row.try_get("ts")?,
                    client_id: row.try_get("client_id")?,
                })
            }

            pub(crate) async fn room_page(pool: &$pool, room: &RoomName, q: PageQuery) -> Result<Paged<RoomMessage>> {
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
                    .fetch_all(pool)
                    .await?;
                let items = rows.iter().map(room_message).collect::<Result<Vec<_>>>()?;
                Ok(page(items, q.limit, newest_first))
            }

            pub(crate) async fn dm_page(pool: &$pool, a: &UserName,
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
                    .fetch_all(pool)
                    .await?;
                let items = rows
                    .iter()
                    .map(direct_message)
                    .collect::<Result<Vec<_>>>()?;
                Ok(page(items, q.limit, newest_first))
            }

            pub(crate) async fn dms_since(pool: &$pool, user: &UserName,
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
                .fetch_all(pool)
                .await?;
                let items = rows
                    .iter()
                    .map(direct_message)
                    .collect::<Result<Vec<_>>>()?;
                Ok(page(items, limit, false))
            }

            pub(crate) async fn undelivered_dms(pool: &$pool, user: &UserName, limit: u32) -> Result<Vec<DirectMessage>> {
                let rows = sqlx::query(
                    "SELECT d.* FROM direct_messages d JOIN users u ON u.name = d.recipient \
                     WHERE d.recipient = $1 AND d.id > u.delivered_id ORDER BY d.id ASC LIMIT $2",
                )
                .bind(user.as_str())
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
                rows.iter().map(direct_message).collect()
            }

            pub(crate) async fn register_user(pool: &$pool, user: &UserName) -> Result<()> {
                sqlx::query(
                    "INSERT INTO users (name, first_seen) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                )
                .bind(user.as_str())
                .bind(now_ms())
                .execute(pool)
                .await?;
                Ok(())
            }

            pub(crate) async fn room_heads(pool: &$pool) -> Result<Vec<(RoomName, i64, i64)>> {
                let rows = sqlx::query(
                    // The head from the messages (one index seek): SQLite
                    // writes a room's row once, PostgreSQL's is its counter.
                    "SELECT r.name AS name, m.id AS last_id, m.ts AS ts FROM rooms r \
                     JOIN messages m ON m.room = r.name \
                     AND m.id = (SELECT MAX(id) FROM messages WHERE room = r.name) ORDER BY r.name",
                )
                .fetch_all(pool)
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

            /// Deletes what `prune` names, on `conn` (inside the caller's
            /// transaction).
            pub(crate) async fn prune(conn: &mut $conn, prune: &$crate::store::Prune) -> Result<()> {
                for (room, upto) in &prune.rooms {
                    sqlx::query($crate::store::PRUNE_ROOM)
                        .bind(room.as_str())
                        .bind(upto)
                        .execute(&mut *conn)
                        .await?;
                }
                for user in &prune.dms {
                    sqlx::query($crate::store::PRUNE_DMS)
                    .bind(user.as_str())
                    .bind(prune.dm_offset())
                    .execute(&mut *conn)
                    .await?;
                }
                Ok(())
            }

            pub(crate) async fn ping(pool: &$pool) -> Result<()> {
                sqlx::query("SELECT 1").execute(pool).await?;
                Ok(())
            }
        }
    };
}
pub(crate) use shared_queries;

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            super::redact("postgres://app:s3cret@db:5432/chat"),
            "postgres://app:***@db:5432/chat"
        );
        assert_eq!(super::redact("redis://db:6379/"), "redis://db:6379/");
        assert_eq!(super::redact("sqlite::memory:"), "sqlite::memory:");
    }
}
