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
use crate::protocol::{Event, RoomName};
use crate::ws::{text_frame, Direct, Gate, Utf8Bytes};

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
    /// Fan-out may write it straight to an idle connection (see
    /// [`Outbox::allow_direct`]). The sequencer says so for the last
    /// message of a stored batch to each room; everything else is queued,
    /// so that what comes together reaches a connection in one write: the
    /// rest of a batch, or what a node reads one by one from Redis.
    pub direct: bool,
    encoded: [OnceLock<Option<Utf8Bytes>>; 4],
    frames: [OnceLock<Option<Bytes>>; 4],
}

impl Delivery {
    /// Wraps an event for fan-out.
    pub fn new(event: Event) -> Arc<Self> {
        Self::with_direct(event, false)
    }

    /// Wraps an event for fan-out, saying whether it may be written
    /// straight to an idle connection (see [`Delivery::direct`]).
    pub fn with_direct(event: Event, direct: bool) -> Arc<Self> {
        Arc::new(Self {
            event,
            direct,
            encoded: Default::default(),
            frames: Default::default(),
        })
    }

    /// Wraps an event whose native JSON is already at hand (as it is when
    /// it arrives from another node), so it is not encoded again.
    pub fn with_native(event: Event, json: String) -> Arc<Self> {
        let d = Self {
            event,
            direct: false,
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
    /// How fan-out may write this connection's messages itself.
    direct: Option<Box<Lent>>,
    /// Fan-out began a frame it could not finish: the connection must
    /// write the rest.
    unfinished: bool,
}

/// What fan-out needs to write a tutorial connection's room messages
/// straight to its socket while the connection is idle: the socket, and
/// the connection's own check that a message is new.
#[derive(Debug)]
struct Lent {
    gate: Arc<Gate>,
    room: RoomName,
    encoding: Encoding,
    /// The highest id written (by either side).
    high: i64,
}

impl Lent {
    /// Writes `delivery` if it is a message of the room; `None` if it must
    /// be queued instead.
    fn try_write(&mut self, delivery: &Delivery) -> Option<Took> {
        let Event::Message(m) = &delivery.event else {
            return None;
        };
        if m.room != self.room {
            return None;
        }
        if m.id <= self.high {
            // Written already.
            return Some(Took::Nothing);
        }
        let Some(frame) = delivery.frame(self.encoding) else {
            return Some(Took::Nothing);
        };
        let took = match self.gate.try_write(&frame) {
            Direct::Written => Took::Whole,
            Direct::Begun => Took::Begun,
            Direct::Refused => return None,
        };
        self.high = m.id;
        Some(took)
    }
}

/// What fan-out did with a delivery it could write itself.
enum Took {
    /// Wrote it whole.
    Whole,
    /// Began it: the connection writes the rest.
    Begun,
    /// Nothing: the connection would not show it.
    Nothing,
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
    /// Written to the socket by the fan-out itself (or begun there, the
    /// rest left to the connection).
    Written,
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
                direct: None,
                unfinished: false,
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

    /// Queues `delivery` without waiting, or writes it at once if the
    /// connection has lent its socket ([`Outbox::allow_direct`],
    /// [`crate::ws::Io::lend`]) and nothing is queued before it; a full queue closes the connection as a slow
    /// consumer.
    pub fn push(&self, delivery: Arc<Delivery>) -> Pushed {
        if self.chat_only && !matches!(delivery.event, Event::Message(_) | Event::Dm(_)) {
            return Pushed::Skipped;
        }
        let pushed = {
            let mut state = self.shared.state.lock();
            if state.receiver_gone {
                return Pushed::Gone;
            }
            let idle = state.queue.is_empty() && state.close.is_none() && delivery.direct;
            let direct = match state.direct.as_mut() {
                Some(lent) if idle => lent.try_write(&delivery),
                _ => None,
            };
            match direct {
                // The connection need not wake.
                Some(Took::Whole) => return Pushed::Written,
                Some(Took::Nothing) => return Pushed::Skipped,
                Some(Took::Begun) => {
                    state.unfinished = true;
                    Pushed::Written
                }
                None if state.queue.len() >= state.capacity => {
                    state.close.get_or_insert(Close::SLOW);
                    Pushed::Overflow
                }
                None => {
                    state.queue.push_back(delivery);
                    Pushed::Queued
                }
            }
        };
        self.shared.waker.wake();
        pushed
    }

    /// Lets fan-out write the messages of `room` to this connection's
    /// socket through `gate` whenever it is lent, in `encoding`.
    pub fn allow_direct(&self, gate: Arc<Gate>, room: RoomName, encoding: Encoding) {
        self.shared.state.lock().direct = Some(Box::new(Lent {
            gate,
            room,
            encoding,
            high: 0,
        }));
    }

    /// The highest message id written of the room fan-out may write
    /// (see [`Outbox::allow_direct`]); `high` is what the connection wrote
    /// itself. Both sides then know the larger.
    pub fn sync_high(&self, high: &mut i64) {
        if let Some(lent) = self.shared.state.lock().direct.as_mut() {
            lent.high = lent.high.max(*high);
            *high = lent.high;
        }
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
    /// Fan-out left a frame half written: write the rest.
    Finish,
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
        if std::mem::take(&mut state.unfinished) {
            return Some(Next::Finish);
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
        // The gate holds the socket open.
        state.direct = None;
    }
}

/// Queue capacity kept once a burst has drained.
const SHRINK_ABOVE: usize = 16;

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::protocol::{PresenceChange, RoomMessage, UserName};
    use crate::ws::Io;

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

    /// A message of `room` with `id` and `body`.
    fn message(room: &RoomName, id: i64, body: String, direct: bool) -> Arc<Delivery> {
        Delivery::with_direct(
            Event::Message(RoomMessage {
                room: room.clone(),
                id,
                from: UserName::parse("ann").unwrap(),
                body,
                ts: 0,
                client_id: None,
            }),
            direct,
        )
    }

    /// A tutorial connection's outbox in `room`, its server end, and the
    /// client end of the socket.
    async fn lending(room: &RoomName) -> (Outbox, Inbox, Io, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let mut io = Io::from(accepted.unwrap().0);
        let (outbox, rx) = Outbox::new(8);
        let outbox = outbox.chat_only();
        outbox.allow_direct(io.gate().unwrap(), room.clone(), SEED);
        (outbox, rx, io, client.unwrap())
    }

    const SEED: Encoding = Encoding::Seed(Dialect::RoomJson);

    #[tokio::test]
    async fn fan_out_writes_a_lent_connections_new_room_messages_and_queues_the_rest() {
        let lobby = RoomName::parse("lobby").unwrap();
        let (outbox, mut rx, mut io, mut client) = lending(&lobby).await;
        let msg = |room, id, direct| message(room, id, format!("m{id}"), direct);

        // Not lent yet: queued.
        assert_eq!(outbox.push(msg(&lobby, 1, true)), Pushed::Queued);
        assert!(rx.try_next().is_some());
        assert!(io.lend());
        let first = msg(&lobby, 2, true);
        assert_eq!(outbox.push(first.clone()), Pushed::Written);
        assert!(rx.try_next().is_none(), "written, not queued");
        assert_eq!(
            outbox.push(msg(&lobby, 2, true)),
            Pushed::Skipped,
            "written already"
        );
        // The rest of a batch waits for the connection; so does what comes
        // behind it, and another room's message.
        assert_eq!(outbox.push(msg(&lobby, 3, false)), Pushed::Queued);
        assert_eq!(outbox.push(msg(&lobby, 4, true)), Pushed::Queued);
        let other = RoomName::parse("other").unwrap();
        assert_eq!(outbox.push(msg(&other, 1, true)), Pushed::Queued);
        let queued: Vec<i64> = std::iter::from_fn(|| rx.try_next())
            .map(|d| match &d.event {
                Event::Message(m) => m.id,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(queued, [3, 4, 1]);

        let mut high = 1;
        outbox.sync_high(&mut high);
        assert_eq!(high, 2, "the connection learns what fan-out wrote");
        let frame = first.frame(SEED).unwrap();
        let mut got = vec![0u8; frame.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, frame);
    }

    #[tokio::test]
    async fn a_message_fan_out_could_only_begin_wakes_the_connection_to_finish_it() {
        let lobby = RoomName::parse("lobby").unwrap();
        let (outbox, mut rx, mut io, _client) = lending(&lobby).await;
        assert!(io.lend());
        // Far more than the socket takes while the client reads nothing.
        let big = message(&lobby, 1, "x".repeat(32 << 20), true);
        assert_eq!(outbox.push(big), Pushed::Written);
        assert!(matches!(rx.next().now_or_never(), Some(Next::Finish)));
        assert_eq!(
            outbox.push(message(&lobby, 2, "next".into(), true)),
            Pushed::Queued,
            "not lent while the rest waits"
        );
    }
}
