//! What flows to one connection: a shared, lazily encoded [`Delivery`],
//! the bounded [`Outbox`] it is queued in, and the connection's [`Inbox`],
//! which also carries the order to close (slow consumer, kick) and the
//! heartbeat's tick.
//!
//! Slow-consumer policy: an outbox holds at most `outbound_queue` events.
//! Fan-out never waits on it: when it is full, that connection alone is
//! closed with 1013 ([`Close::SLOW`]) and the room keeps its pace. The
//! client reconnects and resumes with `since`, losing nothing.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::task::Poll;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

use crate::protocol::codes::Close;
use crate::protocol::seed::Dialect;
use crate::protocol::Event;
use crate::ws::{text_frame, Utf8Bytes};

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

/// One event on its way to many connections. Each encoding, and the
/// WebSocket frame that carries it, is made once, by the first connection
/// that needs it, and the bytes are shared by all.
#[derive(Debug)]
pub struct Delivery {
    /// The event.
    pub event: Event,
    encoded: [OnceLock<Option<Utf8Bytes>>; 4],
    frames: [OnceLock<Option<Bytes>>; 4],
}

impl Delivery {
    /// Wraps an event for fan-out.
    pub fn new(event: Event) -> Arc<Self> {
        Arc::new(Self {
            event,
            encoded: Default::default(),
            frames: Default::default(),
        })
    }

    /// Wraps an event whose native JSON is already at hand (as it is when
    /// it arrives from another node), so it is not encoded again.
    pub fn with_native(event: Event, json: String) -> Arc<Self> {
        let d = Self {
            event,
            encoded: Default::default(),
            frames: Default::default(),
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

    /// The whole text frame of the event in `encoding` (see
    /// [`Self::encoded`]), as it is written to every connection.
    pub fn frame(&self, encoding: Encoding) -> Option<Bytes> {
        self.frames[encoding.slot()]
            .get_or_init(|| self.encoded(encoding).map(|text| text_frame(&text)))
            .clone()
    }
}

/// One connection's queue and the reason it must close, if it must. One
/// allocation per connection; the queue grows only when events wait.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    waker: AtomicWaker,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Arc<Delivery>>,
    capacity: usize,
    /// Set once (slow consumer, kick): the first reason wins.
    close: Option<Close>,
    /// The node's heartbeat came by since the connection last looked.
    beat: bool,
    receiver_gone: bool,
}

/// The sending side of one connection's queue. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
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
    pub fn new(capacity: usize) -> (Self, Inbox) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                capacity: capacity.max(1),
                close: None,
                beat: false,
                receiver_gone: false,
            }),
            waker: AtomicWaker::new(),
        });
        (
            Self {
                shared: shared.clone(),
                chat_only: false,
            },
            Inbox { shared },
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
        let pushed = {
            let mut state = self.shared.state.lock();
            if state.receiver_gone {
                return Pushed::Gone;
            }
            if state.queue.len() >= state.capacity {
                state.close.get_or_insert(Close::SLOW);
                Pushed::Overflow
            } else {
                state.queue.push_back(delivery);
                Pushed::Queued
            }
        };
        self.shared.waker.wake();
        pushed
    }

    /// Closes the connection with `close` (the first reason given wins).
    pub fn kill(&self, close: Close) {
        self.shared.state.lock().close.get_or_insert(close);
        self.shared.waker.wake();
    }

    /// Tells the connection that a heartbeat period has passed. Ticks
    /// that come before it looks count as one.
    pub fn beat(&self) {
        self.shared.state.lock().beat = true;
        self.shared.waker.wake();
    }
}

/// What the connection is told next.
#[derive(Debug)]
pub enum Next {
    /// An event to write.
    Delivery(Arc<Delivery>),
    /// Close, for this reason.
    Close(Close),
    /// A heartbeat period has passed.
    Beat,
}

/// The receiving end, owned by the connection's task.
#[derive(Debug)]
pub struct Inbox {
    shared: Arc<Shared>,
}

impl Inbox {
    /// The next event, or the close that comes before any of them.
    pub async fn next(&mut self) -> Next {
        std::future::poll_fn(|cx| {
            if let Some(next) = self.poll_once() {
                return Poll::Ready(next);
            }
            self.shared.waker.register(cx.waker());
            // A push between the check and the registration woke nobody.
            match self.poll_once() {
                Some(next) => Poll::Ready(next),
                None => Poll::Pending,
            }
        })
        .await
    }

    fn poll_once(&mut self) -> Option<Next> {
        let mut state = self.shared.state.lock();
        if let Some(close) = state.close {
            return Some(Next::Close(close));
        }
        if std::mem::take(&mut state.beat) {
            return Some(Next::Beat);
        }
        let next = state.queue.pop_front().map(Next::Delivery);
        if next.is_none() && state.queue.capacity() > SHRINK_ABOVE {
            // A burst is over: give the memory back.
            state.queue.shrink_to(SHRINK_ABOVE);
        }
        next
    }

    /// An event already queued, if any (closes are left for [`Self::next`]).
    pub fn try_next(&mut self) -> Option<Arc<Delivery>> {
        self.shared.state.lock().queue.pop_front()
    }

    /// How many events wait.
    pub fn len(&self) -> usize {
        self.shared.state.lock().queue.len()
    }

    /// Whether no event waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock();
        state.receiver_gone = true;
        state.queue = VecDeque::new();
    }
}

/// Queue capacity kept once a burst has drained.
const SHRINK_ABOVE: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{PresenceChange, RoomMessage, RoomName, UserName};

    #[test]
    fn a_chat_only_outbox_takes_messages_and_skips_presence() {
        let (outbox, mut rx) = Outbox::new(4);
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
        assert!(matches!(rx.try_next().unwrap().event, Event::Message(_)));
        assert!(rx.try_next().is_none());
    }
}
