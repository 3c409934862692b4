//! The sequencer: the one path every message takes, in this order:
//! store (in a batch, one transaction) → publish → acknowledge.
//!
//! One task per node takes drafts from a bounded queue, appends whatever
//! has gathered (up to [`MAX_BATCH`]) in one transaction, then publishes
//! the stored messages in id order and answers each sender. So a message
//! is never delivered or acknowledged before it is stored, ids increase in
//! delivery order, and under load many messages share one commit.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::broker::Broker;
use crate::outbox::Delivery;
use crate::protocol::{Event, Topic};
use crate::store::{Draft, Store, StoreError, Stored};

/// The most drafts stored in one transaction.
pub const MAX_BATCH: usize = 512;

/// How many drafts may wait for the sequencer; senders wait beyond that.
const QUEUE: usize = 8192;

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
        on_stored: impl Fn(&Stored) + Send + 'static,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(rx, store, broker, on_stored));
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
    on_stored: impl Fn(&Stored),
) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
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
        match store.append(&drafts).await {
            Ok(stored) => {
                for (reply, stored) in replies.into_iter().zip(stored) {
                    on_stored(&stored);
                    publish(&*broker, &stored).await;
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
    }
}

/// Publishes a stored message to its room, or to both ends of a direct
/// message. A failed publish is logged, not retried: the message is
/// stored, so clients get it on their next `since` resume.
async fn publish(broker: &dyn Broker, stored: &Stored) {
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
    let delivery = Delivery::new(event);
    for topic in topics {
        if let Err(err) = broker.publish(&topic, delivery.clone()).await {
            tracing::warn!(error = %err, ?topic, "publish failed; message is stored");
        }
    }
}
