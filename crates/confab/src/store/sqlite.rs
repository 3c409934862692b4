//! The embedded store: SQLite in WAL mode, one file under `./confab-data/`
//! by default. Appends come in batches from the sequencer's single task,
//! so one transaction (and one fsync) covers many messages, and go through
//! one connection of their own: SQLite's single writer, kept out of the
//! pool the reads share (a pooled connection costs a second round trip to
//! SQLite's thread per use, the ping sqlx makes when it is given back).
//!
//! A database in memory (`sqlite::memory:`) has no disk to wait for, so
//! its writer is a plain SQLite connection ([`rusqlite`]) that writes each
//! batch on the sequencer's own thread ([`inline`]): no hand-off to sqlx's
//! worker thread and back, which cost two context switches per batch and,
//! on a busy core, left batches waiting for that thread to be scheduled.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, SqliteConnection, SqlitePool};

use super::idempotency::{KeyClaim, KeyRecord};
use super::{Draft, PageQuery, Paged, Prune, Result, Store, Stored};
use crate::protocol::{now_ms, DirectMessage, RoomMessage, RoomName, UserName};

/// History in SQLite.
#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// `None` once closed.
    writer: tokio::sync::Mutex<Option<Writer>>,
}

/// The connection appends go through, and what it has handed out.
#[derive(Debug)]
struct Writer {
    conn: Appender,
    /// The last id handed out per room and for direct messages, read from
    /// the database on opening and kept here after.
    heads: Heads,
}

/// How a batch reaches SQLite.
#[derive(Debug)]
enum Appender {
    /// Through sqlx's connection: a round trip to its worker thread, where
    /// a file's commit waits for `fsync`.
    Worker(SqliteConnection),
    /// Written on the caller's thread (a database in memory). `None` only
    /// while a batch waits for a lock on a blocking thread.
    Inline(Option<rusqlite::Connection>),
}

#[derive(Debug, Default)]
struct Heads {
    rooms: std::collections::HashMap<String, i64>,
    dm: i64,
}

impl Heads {
    async fn load(conn: &mut SqliteConnection) -> Result<Self> {
        let rooms = sqlx::query_as::<_, (String, i64)>(ROOM_HEADS)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .collect();
        let dm = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM direct_messages")
            .fetch_one(&mut *conn)
            .await?;
        Ok(Self { rooms, dm })
    }
}

/// Each room's head: its highest message id (an index seek), or the id
/// its row was written with if none of its messages is left.
const ROOM_HEADS: &str = "SELECT name, \
     COALESCE((SELECT MAX(id) FROM messages WHERE room = rooms.name), last_id) FROM rooms";

/// A room's row, written with the batch that stores its first message.
const NEW_ROOM: &str =
    "INSERT INTO rooms (name, last_id) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING";

/// One batch's rows of each kind, as a JSON array of
/// `[key, id, sender, body, client_id]`; `$2` is the batch's timestamp.
const ROOM_ROWS: &str = "INSERT INTO messages (room, id, sender, body, client_id, ts) \
     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, $2 FROM json_each($1)";
const DIRECT_ROWS: &str =
    "INSERT INTO direct_messages (recipient, id, sender, body, client_id, ts) \
     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, $2 FROM json_each($1)";

fn insert<'q>(
    sql: &'q str,
    rows: &'q str,
    ts: i64,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    sqlx::query(sql).bind(rows).bind(ts)
}

impl SqliteStore {
    /// Opens (creating if needed) the database `url` names and applies the
    /// migrations.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let memory = super::in_memory(url);
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
        // The writer opens first and alone: turning a new file to WAL takes
        // an exclusive lock that the busy timeout does not wait for, so the
        // pool's connections, opening at once, failed a first start now and
        // then with "database is locked". Once the file is WAL, they skip it.
        // (In memory, the writer opens after the pool, which makes the
        // database.)
        let file_writer = if memory {
            None
        } else {
            Some(options.connect().await?)
        };
        // sqlx makes `:memory:` one shared-cache database per options
        // value: the pool's connections and the writer see the same one,
        // and it lives while any of them is open.
        // No ping before each acquire: a local file does not go away, and
        // every saved round trip to the worker thread shortens a batch.
        let pool = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(if memory { 1 } else { 4 })
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        let heads = Heads::load(&mut *pool.acquire().await?).await?;
        let conn = match file_writer {
            Some(conn) => Appender::Worker(conn),
            None => Appender::Inline(Some(inline::open(options.get_filename())?)),
        };
        let writer = Writer { conn, heads };
        Ok(Self {
            pool,
            writer: tokio::sync::Mutex::new(Some(writer)),
        })
    }
}

super::idempotency_keys!(sqlx::SqlitePool);
super::shared_queries!(
    sqlx::SqlitePool,
    sqlx::SqliteConnection,
    sqlx::sqlite::SqliteRow
);

/// A whole batch in one statement on sqlx's connection: rows go in as one
/// JSON array through `json_each`, and a statement is atomic on its own,
/// so the usual batch costs one round trip to SQLite's worker thread
/// instead of four (BEGIN, draw ids, insert, COMMIT); only a batch with
/// both room and direct messages, or with a prune, needs a transaction.
async fn append_through_worker(
    conn: &mut SqliteConnection,
    stored: Vec<Stored>,
    new_rooms: &[(String, i64)],
    prune: &Prune,
    ts: i64,
) -> Result<Vec<Stored>> {
    let (mut messages, mut directs) = (Vec::new(), Vec::new());
    for s in &stored {
        let r = s.row();
        let rows = if r.direct {
            &mut directs
        } else {
            &mut messages
        };
        rows.push((r.key, r.id, r.from, r.body, r.client_id));
    }
    let messages =
        (!messages.is_empty()).then(|| serde_json::to_string(&messages).expect("rows serialize"));
    let directs =
        (!directs.is_empty()).then(|| serde_json::to_string(&directs).expect("rows serialize"));
    match (
        &messages,
        &directs,
        prune.is_empty() && new_rooms.is_empty(),
    ) {
        (Some(rows), None, true) => {
            insert(ROOM_ROWS, rows, ts).execute(&mut *conn).await?;
        }
        (None, Some(rows), true) => {
            insert(DIRECT_ROWS, rows, ts).execute(&mut *conn).await?;
        }
        (None, None, true) => {}
        _ => {
            let mut tx = conn.begin().await?;
            for (room, last) in new_rooms {
                sqlx::query(NEW_ROOM)
                    .bind(room)
                    .bind(last)
                    .execute(&mut *tx)
                    .await?;
            }
            for (table, rows) in [(ROOM_ROWS, &messages), (DIRECT_ROWS, &directs)] {
                if let Some(rows) = rows {
                    insert(table, rows, ts).execute(&mut *tx).await?;
                }
            }
            queries::prune(&mut tx, prune).await?;
            tx.commit().await?;
        }
    }
    Ok(stored)
}

/// The writer of a database in memory: a connection of its own to sqlx's
/// shared-cache database, used on the caller's thread.
mod inline {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use rusqlite::{params, Connection, ErrorCode, OpenFlags};

    use super::super::{Prune, Result, StoreError, Stored, PRUNE_DMS, PRUNE_ROOM};
    use super::{closed, NEW_ROOM};

    /// One row of each table: key, id, sender, body, client id, ts.
    const ROOM_ROW: &str = "INSERT INTO messages (room, id, sender, body, client_id, ts) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
    const DIRECT_ROW: &str =
        "INSERT INTO direct_messages (recipient, id, sender, body, client_id, ts) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

    /// How long a batch waits for a lock another connection holds.
    const LOCK_WAIT: Duration = Duration::from_secs(5);

    /// Opens the in-memory database sqlx opened as `name` (its shared
    /// cache), with the flags sqlx uses for it.
    pub(super) fn open(name: &Path) -> anyhow::Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_MEMORY
            | OpenFlags::SQLITE_OPEN_SHARED_CACHE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        Ok(Connection::open_with_flags(name, flags)?)
    }

    /// Writes `stored` and deletes what `prune` names, in one transaction,
    /// here and now. If the pool's connection holds a lock this needs (it
    /// is reading or writing the same tables), the batch waits for it on a
    /// blocking thread: the runtime's thread is never made to wait.
    pub(super) async fn append(
        slot: &mut Option<Connection>,
        stored: Vec<Stored>,
        new_rooms: &[(String, i64)],
        prune: &Prune,
    ) -> Result<Vec<Stored>> {
        let conn = slot.as_mut().ok_or_else(closed)?;
        match write(conn, &stored, new_rooms, prune) {
            Ok(()) => return Ok(stored),
            Err(err) if !locked(&err) => return Err(failed(err)),
            Err(_) => {}
        }
        let mut conn = slot.take().ok_or_else(closed)?;
        let (new_rooms, prune) = (new_rooms.to_vec(), prune.clone());
        let (conn, stored, written) = tokio::task::spawn_blocking(move || {
            let written = write_waiting(&mut conn, &stored, &new_rooms, &prune);
            (conn, stored, written)
        })
        .await
        .map_err(|err| StoreError::Unavailable(format!("the store's writer failed: {err}")))?;
        *slot = Some(conn);
        written.map_err(failed)?;
        Ok(stored)
    }

    /// [`write`], tried again while a lock held elsewhere is in the way,
    /// for up to [`LOCK_WAIT`]. Blocks: for a blocking thread only.
    fn write_waiting(
        conn: &mut Connection,
        stored: &[Stored],
        new_rooms: &[(String, i64)],
        prune: &Prune,
    ) -> rusqlite::Result<()> {
        let start = Instant::now();
        loop {
            match write(conn, stored, new_rooms, prune) {
                Err(err) if locked(&err) && start.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(Duration::from_micros(200));
                }
                done => return done,
            }
        }
    }

    /// One transaction: the rows of rooms new with this batch, a prepared
    /// insert per message (no JSON to make and parse: there is no round
    /// trip to save here), then the prune. BEGIN and COMMIT are prepared
    /// once as well (rusqlite's `Transaction` parses them anew for every
    /// batch); whatever fails, the batch is rolled back.
    pub(super) fn write(
        conn: &Connection,
        stored: &[Stored],
        new_rooms: &[(String, i64)],
        prune: &Prune,
    ) -> rusqlite::Result<()> {
        conn.prepare_cached("BEGIN")?.execute([])?;
        let written = write_rows(conn, stored, new_rooms, prune)
            .and_then(|()| conn.prepare_cached("COMMIT")?.execute([]).map(drop));
        if written.is_err() && !conn.is_autocommit() {
            // The error to report is the one above, whatever this says.
            let _ = conn.execute_batch("ROLLBACK");
        }
        written
    }

    /// The batch's rows and its prune, inside the transaction [`write`]
    /// opened.
    fn write_rows(
        conn: &Connection,
        stored: &[Stored],
        new_rooms: &[(String, i64)],
        prune: &Prune,
    ) -> rusqlite::Result<()> {
        for (room, last) in new_rooms {
            conn.prepare_cached(NEW_ROOM)?
                .execute(params![room, last])?;
        }
        let mut rooms = conn.prepare_cached(ROOM_ROW)?;
        let mut directs = conn.prepare_cached(DIRECT_ROW)?;
        for s in stored {
            let r = s.row();
            let insert = if r.direct { &mut directs } else { &mut rooms };
            insert.execute(params![r.key, r.id, r.from, r.body, r.client_id, r.ts])?;
        }
        for (room, upto) in &prune.rooms {
            conn.prepare_cached(PRUNE_ROOM)?
                .execute(params![room.as_str(), upto])?;
        }
        for user in &prune.dms {
            conn.prepare_cached(PRUNE_DMS)?
                .execute(params![user.as_str(), prune.dm_offset()])?;
        }
        Ok(())
    }

    /// Whether another connection of the shared cache holds a lock that
    /// `err` ran into.
    fn locked(err: &rusqlite::Error) -> bool {
        matches!(
            err.sqlite_error_code(),
            Some(ErrorCode::DatabaseLocked | ErrorCode::DatabaseBusy)
        )
    }

    fn failed(err: rusqlite::Error) -> StoreError {
        StoreError::Unavailable(err.to_string())
    }
}

fn closed() -> super::StoreError {
    super::StoreError::Unavailable("the store is closed".into())
}

#[async_trait]
impl Store for SqliteStore {
    /// Ids come from the heads this store keeps in memory (it is the only
    /// writer: one node, one sequencer), read back from the messages
    /// themselves on opening; a room's row is written once, with its first
    /// batch. Heads move only once the write succeeded.
    async fn append(&self, batch: &[Draft], prune: &Prune) -> Result<Vec<Stored>> {
        let ts = now_ms();
        let (rooms, dms) = super::draw(batch);
        let mut writer = self.writer.lock().await;
        let Some(Writer {
            conn,
            heads: current,
        }) = writer.as_mut()
        else {
            return Err(closed());
        };
        let first_room = rooms
            .keys()
            .map(|room| {
                let last = current.rooms.get(*room).copied().unwrap_or(0);
                (room.to_string(), last + 1)
            })
            .collect();
        // Rooms this batch makes: their row goes in with it, once.
        let new_rooms: Vec<(String, i64)> = rooms
            .iter()
            .filter(|(room, _)| !current.rooms.contains_key(**room))
            .map(|(room, n)| (room.to_string(), *n))
            .collect();
        let stored = super::assign(batch, first_room, current.dm + 1, ts)?;
        let stored = match conn {
            Appender::Worker(conn) => {
                append_through_worker(conn, stored, &new_rooms, prune, ts).await?
            }
            Appender::Inline(conn) => inline::append(conn, stored, &new_rooms, prune).await?,
        };
        for (room, n) in rooms {
            *current.rooms.entry(room.to_string()).or_default() += n;
        }
        current.dm += dms;
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
        if let Some(Writer {
            conn: Appender::Worker(conn),
            ..
        }) = self.writer.lock().await.take()
        {
            let _ = conn.close().await;
        }
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::super::lobby_draft;
    use super::*;

    /// Appends one lobby message alone; how many were stored.
    async fn say(store: &SqliteStore, body: &str) -> usize {
        store
            .append(&[lobby_draft(body)], &Prune::default())
            .await
            .unwrap()
            .len()
    }

    /// In memory, the writer shares SQLite's cache with the pool's
    /// connection, which may hold the one write lock: the batch then waits
    /// for it (off the runtime's thread) and is stored once it is free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn an_append_in_memory_waits_for_the_lock_the_pool_holds() {
        let store = Arc::new(SqliteStore::open("sqlite::memory:").await.unwrap());
        assert_eq!(say(&store, "first").await, 1);

        let mut tx = store.pool.begin().await.unwrap();
        sqlx::query("INSERT INTO users (name, first_seen) VALUES ('bob', 0)")
            .execute(&mut *tx)
            .await
            .unwrap();
        let append = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .append(&[lobby_draft("second")], &Prune::default())
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!append.is_finished(), "the append went past a held lock");
        tx.commit().await.unwrap();

        let stored = append.await.unwrap().unwrap();
        assert_eq!(stored.iter().map(|s| s.id_ts().0).collect::<Vec<_>>(), [2]);
        let page = store
            .room_page(
                &RoomName::parse("lobby").unwrap(),
                PageQuery {
                    limit: 10,
                    ..PageQuery::default()
                },
            )
            .await
            .unwrap();
        let bodies: Vec<_> = page.items.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, ["first", "second"]);
        // The writer is back in its place and takes the next batch here.
        assert_eq!(say(&store, "third").await, 1);
    }

    /// A batch that fails part way (here its third row repeats the
    /// first's key) leaves none of its rows, and the writer takes the next
    /// batch: no transaction is left open.
    #[tokio::test]
    async fn a_batch_that_fails_part_way_in_memory_is_rolled_back_whole() {
        let store = SqliteStore::open("sqlite::memory:").await.unwrap();
        let row = |id| {
            Stored::Room(RoomMessage {
                room: RoomName::parse("lobby").unwrap(),
                id,
                from: UserName::parse("ann").unwrap(),
                body: format!("message {id}"),
                ts: 0,
                client_id: None,
            })
        };
        let count = || async {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM messages")
                .fetch_one(&store.pool)
                .await
                .unwrap()
        };
        let mut writer = store.writer.lock().await;
        let Some(Writer {
            conn: Appender::Inline(Some(conn)),
            ..
        }) = writer.as_mut()
        else {
            panic!("a database in memory is written inline");
        };

        let err = inline::write(conn, &[row(1), row(2), row(1)], &[], &Prune::default());
        assert!(err.is_err(), "a repeated key is refused");
        assert!(
            conn.is_autocommit(),
            "the failed batch's transaction is over"
        );
        assert_eq!(count().await, 0);

        inline::write(conn, &[row(1), row(2)], &[], &Prune::default()).unwrap();
        assert_eq!(count().await, 2);
    }
}
