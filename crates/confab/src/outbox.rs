//! What flows to one connection: a shared, lazily encoded [`Delivery`],
//! and the bounded [`Outbox`] it is queued in.
//!
//! Slow-consumer policy: an outbox holds at most `outbound_queue` events.
//! Fan-out never waits on it: when it is full, that connection alone is
//! closed with 1013 ([`Close::SLOW`]) and the room keeps its pace. The
//! client reconnects and resumes with `since`, losing nothing.

use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::protocol::codes::Close;
use crate::protocol::seed::Dialect;
use crate::protocol::Event;
use crate::ws::Utf8Bytes;

/// How a connection wants events written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The native protocol's JSON.
    Native,
    /// A tutorial dialect.
    Seed(Dialect),
}

impl Encoding {
    fn slot(self) -> usize {
        match self {
            Encoding::Native => 0,
            Encoding::Seed(Dialect::Text) => 1,
            Encoding::Seed(Dialect::RoomJson) => 2,
            Encoding::Seed(Dialect::UserJson) => 3,
        }
    }
}

/// One event on its way to many connections. Each encoding is made once,
/// by the first connection that needs it, and the bytes are shared by all.
#[derive(Debug)]
pub struct Delivery {
    /// The event.
    pub event: Event,
    encoded: [OnceLock<Option<Utf8Bytes>>; 4],
}

impl Delivery {
    /// Wraps an event for fan-out.
    pub fn new(event: Event) -> Arc<Self> {
        Arc::new(Self {
            event,
            encoded: Default::default(),
        })
    }

    /// Wraps an event whose native JSON is already at hand (as it is when
    /// it arrives from another node), so it is not encoded again.
    pub fn with_native(event: Event, json: String) -> Arc<Self> {
        let d = Self {
            event,
            encoded: Default::default(),
        };
        let _ = d.encoded[0].set(Some(json.into()));
        Arc::new(d)
    }

    /// The event in `encoding`, or `None` if that encoding cannot show it.
    pub fn encoded(&self, encoding: Encoding) -> Option<Utf8Bytes> {
        self.encoded[encoding.slot()]
            .get_or_init(|| match encoding {
                Encoding::Native => Some(
                    serde_json::to_string(&self.event)
                        .expect("events always serialize")
                        .into(),
                ),
                Encoding::Seed(dialect) => dialect.encode(&self.event).map(Into::into),
            })
            .clone()
    }
}

/// Closes one connection from outside it (slow consumer, kick), once.
#[derive(Debug, Default)]
pub struct Kill {
    token: CancellationToken,
    reason: OnceLock<Close>,
}

impl Kill {
    /// Asks the connection to close with `close`; the first reason wins.
    pub fn fire(&self, close: Close) {
        let _ = self.reason.set(close);
        self.token.cancel();
    }

    /// Resolves once fired.
    pub async fn fired(&self) -> Close {
        self.token.cancelled().await;
        self.reason.get().copied().unwrap_or(Close::INTERNAL)
    }
}

/// The sending side of one connection's queue. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Arc<Delivery>>,
    kill: Arc<Kill>,
    /// Takes only messages and direct messages: a tutorial connection has
    /// no way to show presence or typing, and queueing them anyway would
    /// cost every member a wake-up per join in a large room.
    chat_only: bool,
}

/// What [`Outbox::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued.
    Queued,
    /// The queue was full: the connection is being closed as slow.
    Overflow,
    /// The connection is gone.
    Gone,
    /// The connection does not take this kind of event.
    Skipped,
}

impl Outbox {
    /// A queue of `capacity` events and its receiving end.
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<Arc<Delivery>>, Arc<Kill>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let kill = Arc::new(Kill::default());
        (
            Self {
                tx,
                kill: kill.clone(),
                chat_only: false,
            },
            rx,
            kill,
        )
    }

    /// This outbox, taking only messages and direct messages.
    pub fn chat_only(mut self) -> Self {
        self.chat_only = true;
        self
    }

    /// Queues `delivery` without waiting; a full queue closes the
    /// connection as a slow consumer.
    pub fn push(&self, delivery: Arc<Delivery>) -> Pushed {
        if self.chat_only && !matches!(delivery.event, Event::Message(_) | Event::Dm(_)) {
            return Pushed::Skipped;
        }
        match self.tx.try_send(delivery) {
            Ok(()) => Pushed::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.kill.fire(Close::SLOW);
                Pushed::Overflow
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Pushed::Gone,
        }
    }

    /// Closes the connection with `close`.
    pub fn kill(&self, close: Close) {
        self.kill.fire(close);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{PresenceChange, RoomMessage, RoomName, UserName};

    #[test]
    fn a_chat_only_outbox_takes_messages_and_skips_presence() {
        let (outbox, mut rx, _) = Outbox::new(4);
        let outbox = outbox.chat_only();
        let room = RoomName::parse("lobby").unwrap();
        let user = UserName::parse("ann").unwrap();
        let presence = Delivery::new(Event::Presence {
            room: room.clone(),
            user: user.clone(),
            event: PresenceChange::Join,
        });
        let message = Delivery::new(Event::Message(RoomMessage {
            room,
            id: 1,
            from: user,
            body: "hi".into(),
            ts: 0,
            client_id: None,
        }));

        assert_eq!(outbox.push(presence), Pushed::Skipped);
        assert_eq!(outbox.push(message), Pushed::Queued);
        assert!(matches!(rx.try_recv().unwrap().event, Event::Message(_)));
        assert!(rx.try_recv().is_err());
    }
}
