//! The sequencer: the one path every message takes, in this order:
//! store (in a batch, one transaction) → publish → acknowledge.
//!
//! One task per node takes drafts from a bounded queue, appends whatever
//! has gathered (up to [`MAX_BATCH`]) in one transaction, then publishes
//! the stored messages in id order and answers each sender. So a message
//! is never delivered or acknowledged before it is stored, ids increase in
//! delivery order, and under load many messages share one commit.
//!
//! With a [`Retention`], the sequencer also deletes what falls out of the
//! history window: in the transaction of the next batch, or on its own
//! once no batch is waiting.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::broker::Broker;
use crate::outbox::Delivery;
use crate::protocol::{Event, Topic};
use crate::store::{Draft, Prune, Store, StoreError, Stored};

/// The most drafts stored in one transaction.
pub const MAX_BATCH: usize = 512;

/// How many drafts may wait for the sequencer; senders wait beyond that.
const QUEUE: usize = 8192;

/// How much history is kept (`--history-keep`): the newest `keep`
/// messages of each room and to each user; 0 keeps all.
///
/// A room is pruned whenever its id reaches a multiple of a sixteenth of
/// the window, so it holds at most `keep + keep / 16` messages, and the
/// cost is one range delete per `keep / 16` messages. Direct-message ids
/// are server-wide, so the user whose message draws such an id has their
/// inbox pruned: on average every `keep / 16` of their own messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    keep: u32,
}

impl Retention {
    /// Keep the newest `keep` messages per room and per recipient (0: all).
    pub fn keep(keep: u32) -> Self {
        Self { keep }
    }

    /// Adds to `prune` what falls out of the window once `stored` is in
    /// the store.
    fn due(self, stored: &Stored, prune: &mut Prune) {
        if self.keep == 0 {
            return;
        }
        let keep = i64::from(self.keep);
        let every = (keep / 16).max(1);
        match stored {
            Stored::Room(m) if m.id % every == 0 && m.id > keep => {
                prune.room(m.room.clone(), m.id - keep);
            }
            Stored::Direct(d) if d.id % every == 0 => {
                prune.dms.insert(d.to.clone());
            }
            _ => {}
        }
    }
}

struct Job {
    draft: Draft,
    reply: oneshot::Sender<Result<Stored, StoreError>>,
}

/// Submits drafts to the node's sequencer task.
#[derive(Clone)]
pub struct Sequencer {
    tx: mpsc::Sender<Job>,
}

impl Sequencer {
    /// Starts the task. It ends once every `Sequencer` clone is dropped
    /// and the queue is drained, so no submitted draft is abandoned.
    pub fn start(
        store: Arc<dyn Store>,
        broker: Arc<dyn Broker>,
        retention: Retention,
        on_stored: impl Fn(&Stored) + Send + 'static,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(rx, store, broker, retention, on_stored));
        (Self { tx }, task)
    }

    /// Stores `draft`, publishes it, and returns it as stored.
    pub async fn submit(&self, draft: Draft) -> Result<Stored, StoreError> {
        let (reply, rx) = oneshot::channel();
        let gone = || StoreError::Unavailable("server is shutting down".into());
        self.tx
            .send(Job { draft, reply })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

async fn run(
    mut rx: mpsc::Receiver<Job>,
    store: Arc<dyn Store>,
    broker: Arc<dyn Broker>,
    retention: Retention,
    on_stored: impl Fn(&Stored),
) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    // What the next append deletes along with its batch.
    let mut prune = Prune::keeping(retention.keep);
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        if jobs.len() < MAX_BATCH {
            // Let the connections that are ready run first, then take what
            // they submitted too. Otherwise the sequencer, woken by the
            // first submit, runs straight after it (tokio's LIFO slot) and
            // every batch holds one message: a round trip to the store per
            // message. With nothing else ready, it costs one poll of the
            // I/O driver.
            tokio::task::yield_now().await;
            while jobs.len() < MAX_BATCH {
                let Ok(job) = rx.try_recv() else { break };
                jobs.push(job);
            }
        }
        // Move the drafts out rather than copy every body once more.
        let (drafts, replies): (Vec<Draft>, Vec<_>) =
            jobs.drain(..).map(|j| (j.draft, j.reply)).unzip();
        match append(&*store, &drafts, &mut prune).await {
            Ok(stored) => {
                let last = last_of_room(&stored);
                for ((reply, stored), last) in replies.into_iter().zip(stored).zip(last) {
                    on_stored(&stored);
                    retention.due(&stored, &mut prune);
                    publish(&*broker, &stored, last).await;
                    let _ = reply.send(Ok(stored));
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, batch = drafts.len(), "store append failed");
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Unavailable(err.to_string())));
                }
            }
        }
        if !prune.is_empty() && rx.is_empty() {
            // No batch is waiting to carry the deletes.
            if let Err(err) = append(&*store, &[], &mut prune).await {
                tracing::warn!(error = %err, "history prune failed");
            }
        }
    }
}

/// Appends `drafts` with what `prune` names deleted in the same
/// transaction, and empties `prune`. If that fails, the batch is tried
/// again alone, so that a delete never costs messages: what it would have
/// deleted goes with the next prune of the same room or user.
async fn append(
    store: &dyn Store,
    drafts: &[Draft],
    prune: &mut Prune,
) -> Result<Vec<Stored>, StoreError> {
    let mut result = store.append(drafts, prune).await;
    if result.is_err() && !prune.is_empty() && !drafts.is_empty() {
        tracing::warn!(
            ?prune,
            "append with a history prune failed; trying without it"
        );
        prune.clear();
        result = store.append(drafts, prune).await;
    }
    prune.clear();
    result
}

/// For each message of a stored batch, whether it is the last of the
/// batch to its room: only that one may be written straight to an idle
/// connection ([`Delivery::direct`]); the ones before it wait in the
/// queue, to go out together with it.
fn last_of_room(stored: &[Stored]) -> Vec<bool> {
    let mut later = HashSet::new();
    let mut last: Vec<bool> = stored
        .iter()
        .rev()
        .map(|s| match s {
            Stored::Room(m) => later.insert(&m.room),
            Stored::Direct(_) => false,
        })
        .collect();
    last.reverse();
    last
}

/// Publishes a stored message to its room, or to both ends of a direct
/// message. A failed publish is logged, not retried: the message is
/// stored, so clients get it on their next `since` resume.
async fn publish(broker: &dyn Broker, stored: &Stored, last_of_room: bool) {
    let (topics, event) = match stored {
        Stored::Room(m) => (vec![Topic::Room(m.room.clone())], Event::Message(m.clone())),
        Stored::Direct(d) => {
            let mut topics = vec![Topic::User(d.to.clone())];
            if d.from != d.to {
                topics.push(Topic::User(d.from.clone()));
            }
            (topics, Event::Dm(d.clone()))
        }
    };
    let delivery = Delivery::with_direct(event, last_of_room);
    for topic in topics {
        if let Err(err) = broker.publish(&topic, delivery.clone()).await {
            tracing::warn!(error = %err, ?topic, "publish failed; message is stored");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{DirectMessage, RoomMessage, RoomName, UserName};
    use crate::store::{lobby_draft, PageQuery};

    fn room(id: i64) -> Stored {
        Stored::Room(RoomMessage {
            room: RoomName::parse("lobby").unwrap(),
            id,
            from: UserName::parse("ann").unwrap(),
            body: "hi".into(),
            ts: 0,
            client_id: None,
        })
    }

    fn dm(id: i64) -> Stored {
        Stored::Direct(DirectMessage {
            id,
            from: UserName::parse("ann").unwrap(),
            to: UserName::parse("bob").unwrap(),
            body: "hi".into(),
            ts: 0,
            client_id: None,
        })
    }

    /// What `r` deletes after `stored` alone.
    fn due(r: Retention, stored: Stored) -> Prune {
        let mut prune = Prune::keeping(r.keep);
        r.due(&stored, &mut prune);
        prune
    }

    #[test]
    fn only_the_last_message_of_a_batch_to_each_room_may_be_written_at_once() {
        let m = |name: &str, id| {
            let Stored::Room(mut m) = room(id) else {
                unreachable!()
            };
            m.room = RoomName::parse(name).unwrap();
            Stored::Room(m)
        };
        let batch = [m("a", 1), m("b", 1), m("a", 2), dm(1), m("b", 2), m("c", 1)];
        assert_eq!(
            last_of_room(&batch),
            [false, false, true, false, true, true]
        );
    }

    #[test]
    fn a_room_is_pruned_every_sixteenth_of_its_window_once_past_it() {
        let r = Retention::keep(160);
        let bounds: Vec<i64> = (1..=400)
            .flat_map(|id| due(r, room(id)).rooms.into_values())
            .collect();
        // Ids 170, 180, … 400: each prune leaves the newest 160.
        assert_eq!(bounds.first(), Some(&10));
        assert_eq!(bounds.last(), Some(&240));
        assert_eq!(bounds.len(), 24);
    }

    #[test]
    fn nothing_is_pruned_when_everything_is_kept() {
        let r = Retention::keep(0);
        assert!((1..=1000).all(|id| due(r, room(id)).is_empty() && due(r, dm(id)).is_empty()));
    }

    #[test]
    fn a_recipient_is_pruned_when_their_message_draws_a_multiple() {
        let r = Retention::keep(32);
        assert!(due(r, dm(3)).is_empty());
        let bob = UserName::parse("bob").unwrap();
        assert_eq!(due(r, dm(4)).dms.into_iter().collect::<Vec<_>>(), [bob]);
        // A small window prunes on every message.
        assert!(!due(Retention::keep(5), dm(7)).is_empty());
    }

    /// A file store whose deletes of room messages fail: a trigger,
    /// installed over a connection of its own, refuses them.
    async fn refusing_deletes(dir: &tempfile::TempDir) -> Arc<dyn Store> {
        use sqlx::Connection;
        let url = format!("sqlite://{}", dir.path().join("confab.db").display());
        let store = crate::store::open(&url).await.unwrap();
        let mut admin = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query(
            "CREATE TRIGGER refuse_deletes BEFORE DELETE ON messages \
             BEGIN SELECT RAISE(ABORT, 'deletes refused'); END",
        )
        .execute(&mut admin)
        .await
        .unwrap();
        store
    }

    #[tokio::test]
    async fn a_batch_whose_prune_fails_is_stored_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = refusing_deletes(&dir).await;
        let lobby = RoomName::parse("lobby").unwrap();
        let mut none = Prune::keeping(4);
        let first: Vec<Draft> = (1..=3).map(|i| lobby_draft(&format!("m{i}"))).collect();
        append(&*store, &first, &mut none).await.unwrap();

        let mut prune = Prune::keeping(4);
        prune.room(lobby.clone(), 2);
        let stored = append(&*store, &[lobby_draft("m4")], &mut prune)
            .await
            .expect("the batch is stored once the prune is dropped");
        assert_eq!(stored.len(), 1);
        assert!(prune.is_empty(), "the refused prune is not carried on");

        let q = PageQuery {
            before: None,
            after: None,
            limit: 10,
        };
        let page = store.room_page(&lobby, q).await.unwrap();
        let ids: Vec<i64> = page.items.iter().map(|m| m.id).collect();
        assert_eq!(ids, [1, 2, 3, 4], "nothing was deleted, nothing lost");

        // A prune alone has no batch to save: it fails, and is dropped.
        prune.room(lobby.clone(), 3);
        assert!(append(&*store, &[], &mut prune).await.is_err());
        assert!(prune.is_empty());
        assert_eq!(store.room_page(&lobby, q).await.unwrap().items.len(), 4);
        store.close().await;
    }

    #[test]
    fn prunes_gathered_for_one_append_keep_each_rooms_highest_bound() {
        let r = Retention::keep(16);
        let mut prune = Prune::keeping(16);
        for id in [32, 48, 17] {
            r.due(&room(id), &mut prune);
        }
        let lobby = RoomName::parse("lobby").unwrap();
        assert_eq!(prune.rooms.into_iter().collect::<Vec<_>>(), [(lobby, 32)]);
    }
}
