//! One WebSocket connection: a single task that reads commands, writes
//! queued events and replies, keeps the heartbeat and enforces the limits.
//!
//! The loop `select!`s over, in priority order: the connection's own
//! outbox, which carries the order to close (shutdown, slow consumer,
//! kick), the node's heartbeat tick, and queued events (written in one
//! flush per batch, so several frames cost one syscall); finished
//! acknowledgements (after the events, so a sender sees its message
//! before its ack); and the socket. Acks are awaited off the loop (in
//! `pending`), so a connection keeps receiving while its messages are
//! being stored.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesOrdered, StreamExt};
use futures_util::{FutureExt, SinkExt};
use tokio::time::Duration;

use crate::hub::ConnId;
use crate::limits::{RateLimiter, Verdict};
use crate::node::{ConnPermit, Node, Refusal};
use crate::outbox::{Delivery, Encoding, Inbox, Next, Outbox};
use crate::protocol::codes::{Close, ErrorCode};
use crate::protocol::native::{Command, Limits, Page, Reply};
use crate::protocol::seed::{Dialect, Said};
use crate::protocol::{Event, RoomName, Topic, UserName, PROTOCOL_VERSION};
use crate::store::{Draft, PageQuery, Stored};
use crate::ws::{CloseFrame, Handshake, Message, Socket as WebSocket};

/// Which protocol a connection speaks.
#[derive(Debug, Clone)]
pub enum Kind {
    /// The native protocol (`/socket`).
    Native,
    /// A tutorial protocol, bound to one room (and maybe a user).
    Seed {
        /// Frame format.
        dialect: Dialect,
        /// The room its plain messages go to.
        room: RoomName,
        /// The user named in the path (`/ws/<username>/`), if any.
        user: Option<UserName>,
        /// Whether the text `close` ends the connection (`/chat/`).
        close_command: bool,
    },
    /// `/ws/echo/`: every frame back, unchanged.
    Echo,
}

/// How many sends may await their acknowledgement at once; the socket is
/// not read while this many are in flight.
const MAX_PENDING: usize = 64;

/// How many queued events are written before one flush.
const WRITE_BATCH: usize = 64;

/// The most history messages one `history` command returns.
const MAX_PAGE: u32 = 500;

/// What the goodbye to a `/chat/` client that sent `close` says.
pub const GOODBYE: &str = "goodbye: closing this connection as you asked";

/// Sends awaiting their acknowledgement, answered in the order sent. Made
/// (and boxed) on the first send, so a connection that only listens
/// carries one pointer of it.
#[derive(Default)]
struct Pending(Option<Box<FuturesOrdered<BoxFuture<'static, Option<String>>>>>);

impl Pending {
    fn push_back(&mut self, ack: BoxFuture<'static, Option<String>>) {
        self.0.get_or_insert_with(Box::default).push_back(ack);
    }

    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |acks| acks.len())
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next answer in order; `None` when none is pending.
    async fn next(&mut self) -> Option<Option<String>> {
        match &mut self.0 {
            Some(acks) => acks.next().await,
            None => None,
        }
    }
}

/// A connection's rooms, each with the highest message id written to it:
/// a vector sorted by name. Most connections are in one room, which costs
/// one 24-byte allocation here where a hash map allocates a table of four
/// entries and their control bytes (128 bytes).
#[derive(Default)]
struct Joined(Vec<(RoomName, i64)>);

impl Joined {
    fn find(&self, room: &RoomName) -> Result<usize, usize> {
        self.0.binary_search_by(|(r, _)| r.cmp(room))
    }

    fn contains_key(&self, room: &RoomName) -> bool {
        self.find(room).is_ok()
    }

    fn get_mut(&mut self, room: &RoomName) -> Option<&mut i64> {
        let at = self.find(room).ok()?;
        Some(&mut self.0[at].1)
    }

    /// Joins `room` with `high` written, or sets its `high`.
    fn insert(&mut self, room: RoomName, high: i64) {
        match self.find(&room) {
            Ok(at) => self.0[at].1 = high,
            Err(at) => {
                if self.0.is_empty() {
                    // The first room: room for it alone (a vector's
                    // first growth would make room for four).
                    self.0.reserve_exact(1);
                }
                self.0.insert(at, (room, high));
            }
        }
    }

    /// Leaves `room`; whether it was joined.
    fn remove(&mut self, room: &RoomName) -> bool {
        self.find(room).map(|at| self.0.remove(at)).is_ok()
    }

    /// Leaves every room, returning them.
    fn take(&mut self) -> Vec<(RoomName, i64)> {
        std::mem::take(&mut self.0)
    }
}

enum Flow {
    Continue,
    Close(Close),
    /// `close` on `/chat/`: write what is queued, say goodbye, close.
    Goodbye,
}

/// Opens the socket and runs the connection to its end.
///
/// The returned future is what every idle connection's task holds, so it
/// is kept small: its arguments go into one box, emptied as the connection
/// opens (an argument of an `async fn` keeps a slot for the task's whole
/// life), opening runs in a boxed future of its own, and so does whatever
/// else runs rarely.
pub fn run(
    node: Arc<Node>,
    handshake: Handshake,
    kind: Kind,
    permit: ConnPermit,
) -> impl std::future::Future<Output = ()> + Send {
    connection(Box::new(Start {
        node,
        handshake,
        kind,
        permit,
    }))
}

/// What a connection's task starts from.
struct Start {
    node: Arc<Node>,
    handshake: Handshake,
    kind: Kind,
    permit: ConnPermit,
}

/// A connection opened and bound, with what must live as long as it.
struct Opened {
    socket: WebSocket,
    session: Session,
    rx: Inbox,
    /// Whether binding it (a tutorial connection to its room) went well.
    started: Result<(), Close>,
    counted: crate::metrics::ConnGuard,
    permit: ConnPermit,
}

async fn connection(start: Box<Start>) {
    let Some(Opened {
        mut socket,
        mut session,
        mut rx,
        started,
        counted: _counted,
        permit: _permit,
    }) = Box::pin(open(start)).await
    else {
        return;
    };
    let close = match started {
        Ok(()) => session.run(&mut socket, &mut rx).await,
        Err(close) => Some(close),
    };
    let metrics = &session.node.metrics;
    metrics.disconnected(close.as_ref());
    metrics.dropped(crate::metrics::Dropped::QueuedAtClose, rx.len());
    Box::pin(session.cleanup()).await;
    if let Some(close) = close {
        Box::pin(close_socket(&mut socket, close)).await;
    }
}

/// Finishes the handshake and binds the connection; `None` once it is
/// over already (the client left first, or an echo connection ran here).
async fn open(start: Box<Start>) -> Option<Opened> {
    let Start {
        node,
        handshake,
        kind,
        permit,
    } = *start;
    let mut socket = handshake.open().await?;
    let counted = node.metrics.connection(&kind);
    if let Kind::Echo = kind {
        echo(node, socket).await;
        return None;
    }
    let (outbox, rx) = Outbox::new(node.settings.outbound_queue);
    let outbox = match kind {
        Kind::Seed { .. } => outbox.chat_only(),
        _ => outbox,
    };
    let conn = node.hub.next_conn();
    node.hub.open(conn, &outbox);
    let mut session = Session {
        limiter: RateLimiter::new(node.settings.rate()),
        node,
        conn,
        outbox,
        encoding: Encoding::Native,
        user: None,
        rooms: Joined::default(),
        dm_high: 0,
        seed: None,
        lending: Lending::Never,
    };
    let started = session.start(&mut socket, kind).await;
    Some(Opened {
        socket,
        session,
        rx,
        started,
        counted,
        permit,
    })
}

struct SeedState {
    dialect: Dialect,
    room: RoomName,
    close_command: bool,
}

struct Session {
    node: Arc<Node>,
    conn: ConnId,
    outbox: Outbox,
    encoding: Encoding,
    user: Option<UserName>,
    /// Joined rooms, each with the highest message id written, so a
    /// message that both a replay and the live queue carry is written once.
    rooms: Joined,
    /// The highest direct-message id written, for the same reason.
    dm_high: i64,
    limiter: RateLimiter,
    seed: Option<SeedState>,
    /// Whether fan-out may write this connection's room messages itself
    /// while it is idle ([`Outbox::allow_direct`]).
    lending: Lending,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lending {
    /// Never: every event is queued.
    Never,
    /// From the end of the first batch written.
    Later,
    /// Whenever everything queued is written.
    Allowed,
}

impl Session {
    /// Binds a tutorial connection to its user and room.
    async fn start(&mut self, socket: &mut WebSocket, kind: Kind) -> Result<(), Close> {
        let Kind::Seed {
            dialect,
            room,
            user,
            close_command,
        } = kind
        else {
            return Ok(());
        };
        self.encoding = Encoding::Seed(dialect);
        let user = user.unwrap_or_else(|| UserName::guest(self.conn));
        let joined = async {
            self.node
                .identify(self.conn, &user, self.outbox.clone())
                .await?;
            self.user = Some(user.clone());
            self.node
                .enter(self.conn, &room, &user, self.outbox.clone())
                .await
        }
        .await;
        if let Err(refusal) = joined {
            let _ = write(socket, seed_error(dialect, &refusal)).await;
            return Err(Close::INTERNAL);
        }
        // A tutorial client gets no replay: only what is said from now on.
        self.rooms.insert(room.clone(), 0);
        // Its room's messages need no filter but their ids, so fan-out
        // may write them itself while the connection is idle, once it has
        // been sent one (an idle connection that is never sent anything
        // carries nothing for it).
        if self.node.direct_writes {
            self.lending = Lending::Later;
        }
        self.seed = Some(SeedState {
            dialect,
            room,
            close_command,
        });
        Ok(())
    }

    async fn run(&mut self, socket: &mut WebSocket, rx: &mut Inbox) -> Option<Close> {
        let mut heartbeat = Heartbeat::default();
        let mut pending = Pending::default();
        loop {
            tokio::select! {
                biased;
                next = rx.next() => match next {
                    Next::Close(close) => {
                        if close == Close::SHUTDOWN {
                            Box::pin(finish_pending(socket, &mut pending)).await;
                        }
                        return Some(close);
                    }
                    Next::Delivery(first) => {
                        if self.write_deliveries(socket, Some(first), rx).await.is_err() {
                            return None;
                        }
                    }
                    Next::Finish => {
                        if self.write_deliveries(socket, None, rx).await.is_err() {
                            return None;
                        }
                    }
                    // Boxed, as the reply below: inline, either would widen
                    // every connection's task (`run`).
                    Next::Beat => {
                        if let Err(close) = Box::pin(heartbeat.beat(socket)).await {
                            return close;
                        }
                    }
                },
                Some(reply) = pending.next(), if !pending.is_empty() => {
                    if let Some(text) = reply {
                        if Box::pin(write(socket, Message::Text(text.into()))).await.is_err() {
                            return None;
                        }
                    }
                }
                msg = socket.next(), if pending.len() < MAX_PENDING => {
                    heartbeat.heard();
                    let flow = match msg {
                        None => return None,
                        Some(Err(err)) => return close_for(err),
                        // Boxed: handling a command needs a large future
                        // for a moment; inline, every idle connection's
                        // task would carry its size.
                        Some(Ok(Message::Text(text))) => Box::pin(self.on_text(socket, &text, &mut pending)).await,
                        Some(Ok(Message::Binary(_))) => Box::pin(self.on_binary(socket)).await,
                        Some(Ok(Message::Close(_))) => {
                            Box::pin(answer_close(socket)).await;
                            return None;
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Flow::Continue,
                    };
                    match flow {
                        Flow::Continue => {}
                        Flow::Close(close) => {
                            Box::pin(finish_pending(socket, &mut pending)).await;
                            return Some(close);
                        }
                        Flow::Goodbye => {
                            Box::pin(self.goodbye(socket, rx)).await;
                            return Some(Close::NORMAL);
                        }
                    }
                }
            }
        }
    }

    /// `close` on `/chat/`: the broadcast of `close` is queued for this
    /// connection too, so write it before the goodbye.
    async fn goodbye(&mut self, socket: &mut WebSocket, rx: &mut Inbox) {
        while let Some(first) = rx.try_next() {
            if self
                .write_deliveries(socket, Some(first), rx)
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = write(socket, Message::Text(GOODBYE.into())).await;
    }

    /// Writes `first` and whatever else is queued (up to a batch), then
    /// flushes once. The frames are the deliveries' own, shared with every
    /// connection they go to: they are queued under tungstenite, on the
    /// socket's [`Io`](crate::ws::Io), once tungstenite has written out
    /// whatever it held (a pong), so that frames never interleave.
    ///
    /// A tutorial connection takes its socket back from fan-out first
    /// (with whatever frame fan-out left half written), and lends it again
    /// once everything is written.
    async fn write_deliveries(
        &mut self,
        socket: &mut WebSocket,
        first: Option<Arc<Delivery>>,
        rx: &mut Inbox,
    ) -> Result<(), crate::ws::Error> {
        socket.get_mut().take_back();
        self.sync_high();
        socket.flush().await?;
        let mut next = first.or_else(|| rx.try_next());
        let mut written = 0;
        while let Some(delivery) = next.take() {
            // Room before the frame is taken, so that no frame waits in
            // this future: it is part of every connection's task (`run`).
            let io = socket.get_mut();
            std::future::poll_fn(|cx| io.poll_room(cx)).await?;
            if let Some(frame) = self.frame_for(&delivery) {
                io.queue(frame);
                written += 1;
            }
            if written < WRITE_BATCH {
                next = rx.try_next();
            }
        }
        socket.flush().await?;
        if rx.is_empty() {
            self.lend(socket);
        }
        Ok(())
    }

    /// Lends the socket to fan-out, if this connection does
    /// ([`Lending`]), now that everything it held is written.
    fn lend(&mut self, socket: &mut WebSocket) {
        if self.lending == Lending::Later {
            let room = self.seed.as_ref().map(|seed| seed.room.clone());
            if let (Some(gate), Some(room)) = (socket.get_mut().gate(), room) {
                self.outbox.allow_direct(gate, room, self.encoding);
                self.lending = Lending::Allowed;
            }
        }
        if self.lending == Lending::Allowed {
            self.sync_high();
            socket.get_mut().lend();
        }
    }

    /// Agrees with fan-out on the highest id written of the tutorial
    /// room, when fan-out may write there.
    fn sync_high(&mut self) {
        if self.lending != Lending::Allowed {
            return;
        }
        let room = self.seed.as_ref().map(|seed| &seed.room);
        if let Some(high) = room.and_then(|room| self.rooms.get_mut(room)) {
            self.outbox.sync_high(high);
        }
    }

    /// The frame for a delivery, or `None` if this connection should not
    /// see it (already written, a room it left, its own typing).
    fn frame_for(&mut self, delivery: &Delivery) -> Option<Bytes> {
        let wanted = match &delivery.event {
            Event::Message(m) => match self.rooms.get_mut(&m.room) {
                Some(high) if m.id > *high => {
                    *high = m.id;
                    true
                }
                _ => false,
            },
            Event::Dm(d) => {
                let new = d.id > self.dm_high;
                self.dm_high = self.dm_high.max(d.id);
                // The tutorial's peer-to-peer step delivers to the
                // recipient only; native senders see their DMs on every tab.
                let own_copy = self.user.as_ref() == Some(&d.from) && d.from != d.to;
                new && !(own_copy && self.encoding == Encoding::Seed(Dialect::UserJson))
            }
            Event::Presence { room, .. } => self.rooms.contains_key(room),
            Event::Typing { from, .. } => self.user.as_ref() != Some(from),
        };
        if wanted {
            delivery.frame(self.encoding)
        } else {
            None
        }
    }

    async fn on_binary(&mut self, socket: &mut WebSocket) -> Flow {
        let text = match &self.seed {
            Some(seed) if seed.dialect == Dialect::Text => None,
            Some(seed) => Some(seed_error(
                seed.dialect,
                &Refusal::new(ErrorCode::Malformed, "binary frames are not supported"),
            )),
            None => Some(reply_frame(&Reply::error(
                None,
                ErrorCode::Malformed,
                "binary frames are not supported; send JSON text",
            ))),
        };
        if let Some(msg) = text {
            if write(socket, msg).await.is_err() {
                return Flow::Close(Close::INTERNAL);
            }
        }
        Flow::Continue
    }

    async fn on_text(&mut self, socket: &mut WebSocket, text: &str, pending: &mut Pending) -> Flow {
        match self.limiter.check(self.node.settings.rate()) {
            Verdict::Allow => {}
            Verdict::Abuse => return Flow::Close(Close::FLOOD),
            Verdict::Reject => {
                let refusal = Refusal::new(ErrorCode::RateLimited, "too many messages: slow down");
                let reply_to = crate::protocol::native::frame_id(text);
                let _ = self.refuse(socket, reply_to, refusal).await;
                return Flow::Continue;
            }
        }
        if self.seed.is_some() {
            return self.on_seed_text(socket, text, pending).await;
        }
        match Command::decode(text) {
            Ok(cmd) => self.on_command(socket, cmd, pending).await,
            Err(rejected) => {
                let refusal = Refusal::new(rejected.code, rejected.message);
                let _ = self.refuse(socket, rejected.reply_to, refusal).await;
                Flow::Continue
            }
        }
    }

    /// Answers a refused command, in the connection's own dialect.
    async fn refuse(
        &self,
        socket: &mut WebSocket,
        reply_to: Option<String>,
        refusal: Refusal,
    ) -> Result<(), crate::ws::Error> {
        self.node.metrics.refused(refusal.code);
        let msg = match &self.seed {
            Some(seed) => seed_error(seed.dialect, &refusal),
            None => reply_frame(&Reply::error(reply_to, refusal.code, refusal.message)),
        };
        write(socket, msg).await
    }

    fn check_body(&self, body: &str) -> Result<(), Refusal> {
        let max = self.node.settings.max_message_bytes;
        if body.len() > max {
            return Err(Refusal::new(
                ErrorCode::TooLarge,
                format!("message is {} bytes; the limit is {max}", body.len()),
            ));
        }
        Ok(())
    }

    async fn on_seed_text(
        &mut self,
        socket: &mut WebSocket,
        text: &str,
        pending: &mut Pending,
    ) -> Flow {
        let seed = self.seed.as_ref().expect("a seed session");
        let (dialect, close_command) = (seed.dialect, seed.close_command);
        let user = self.user.clone().expect("seed sessions have a user");
        let said = match dialect.decode(text) {
            Ok(said) => said,
            Err(err) => {
                let _ = write(socket, Message::Text(err.encode().into())).await;
                return Flow::Continue;
            }
        };
        let draft = match said {
            Said::Room(body) => Draft::Room {
                room: seed.room.clone(),
                from: user,
                body,
                client_id: None,
            },
            Said::Direct { to, body } => {
                if let Err(refusal) = self.node.check_recipient(&to).await {
                    let _ = self.refuse(socket, None, refusal).await;
                    return Flow::Continue;
                }
                Draft::Direct {
                    from: user,
                    to,
                    body,
                    client_id: None,
                }
            }
        };
        let body = match &draft {
            Draft::Room { body, .. } | Draft::Direct { body, .. } => body,
        };
        if let Err(refusal) = self.check_body(body) {
            let _ = self.refuse(socket, None, refusal).await;
            return Flow::Continue;
        }
        if close_command && text == "close" {
            // Broadcast first (the tutorial does), then say goodbye.
            let result = self.node.submit(draft).await;
            if let Err(refusal) = result {
                let _ = self.refuse(socket, None, refusal).await;
            }
            return Flow::Goodbye;
        }
        let node = self.node.clone();
        pending.push_back(
            async move {
                match node.submit(draft).await {
                    Ok(_) => None,
                    Err(refusal) => Some(match seed_error(dialect, &refusal) {
                        Message::Text(t) => t.to_string(),
                        _ => unreachable!("seed errors are text"),
                    }),
                }
            }
            .boxed(),
        );
        Flow::Continue
    }

    async fn on_command(
        &mut self,
        socket: &mut WebSocket,
        cmd: Command,
        pending: &mut Pending,
    ) -> Flow {
        let reply_to = cmd.id().map(str::to_owned);
        let Some(user) = self.user.clone() else {
            return match cmd {
                Command::Hello {
                    id,
                    name,
                    token,
                    dm_since,
                } => self.hello(socket, id, name, token, dm_since).await,
                _ => {
                    let refusal = Refusal::new(ErrorCode::NotIdentified, "send `hello` first");
                    let _ = self.refuse(socket, reply_to, refusal).await;
                    Flow::Continue
                }
            };
        };
        let result = match cmd {
            Command::Hello { .. } => Err(Refusal::new(
                ErrorCode::AlreadyIdentified,
                format!("this connection is already `{user}`"),
            )),
            Command::Join { id, room, since } => {
                return self.join(socket, id, room, &user, since).await;
            }
            Command::Leave { id, room } => {
                if self.rooms.remove(&room) {
                    self.node.leave(self.conn, &room, &user).await;
                    Ok(Reply::Left { reply_to: id, room })
                } else {
                    Err(not_member(&room))
                }
            }
            Command::Send { id, room, body } => {
                if !self.rooms.contains_key(&room) {
                    Err(not_member(&room))
                } else {
                    match self.check_body(&body) {
                        Ok(()) => {
                            let draft = Draft::Room {
                                room,
                                from: user,
                                body,
                                client_id: id.clone(),
                            };
                            self.submit(draft, id, pending);
                            return Flow::Continue;
                        }
                        Err(refusal) => Err(refusal),
                    }
                }
            }
            Command::Dm { id, to, body } => match self.check_body(&body) {
                Ok(()) => {
                    let node = self.node.clone();
                    let draft = Draft::Direct {
                        from: user,
                        to,
                        body,
                        client_id: id.clone(),
                    };
                    pending.push_back(
                        async move {
                            if let Draft::Direct { to, .. } = &draft {
                                if let Err(refusal) = node.check_recipient(to).await {
                                    node.metrics.refused(refusal.code);
                                    return Some(
                                        Reply::error(id, refusal.code, refusal.message).encode(),
                                    );
                                }
                            }
                            Some(ack(id, node.submit(draft).await))
                        }
                        .boxed(),
                    );
                    return Flow::Continue;
                }
                Err(refusal) => Err(refusal),
            },
            Command::Typing { room, to, active } => {
                let topic = match (&room, &to) {
                    (Some(room), None) if self.rooms.contains_key(room) => {
                        Ok(Topic::Room(room.clone()))
                    }
                    (Some(room), None) => Err(not_member(room)),
                    (None, Some(to)) => Ok(Topic::User(to.clone())),
                    _ => Err(Refusal::new(
                        ErrorCode::Invalid,
                        "give exactly one of `room` and `to`",
                    )),
                };
                match topic {
                    Ok(topic) => {
                        let event = Event::Typing {
                            room,
                            to,
                            from: user,
                            active,
                        };
                        self.node.publish(topic, event).await;
                        return Flow::Continue;
                    }
                    Err(refusal) => Err(refusal),
                }
            }
            Command::History {
                id,
                room,
                with,
                before,
                after,
                limit,
            } => {
                self.history(
                    id,
                    room,
                    with,
                    &user,
                    PageQuery {
                        before,
                        after,
                        limit: limit.unwrap_or(50).clamp(1, MAX_PAGE),
                    },
                )
                .await
            }
            Command::Rooms { id } => self
                .node
                .broker
                .rooms()
                .await
                .map(|rooms| Reply::Rooms {
                    reply_to: id,
                    rooms,
                })
                .map_err(Refusal::from),
            Command::Ping { id } => Ok(Reply::Pong {
                reply_to: id,
                ts: crate::protocol::now_ms(),
            }),
        };
        let sent = match result {
            Ok(reply) => write(socket, reply_frame(&reply)).await,
            Err(refusal) => self.refuse(socket, reply_to, refusal).await,
        };
        match sent {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close(Close::INTERNAL),
        }
    }

    fn submit(&self, draft: Draft, id: Option<String>, pending: &mut Pending) {
        let node = self.node.clone();
        pending.push_back(async move { Some(ack(id, node.submit(draft).await)) }.boxed());
    }

    async fn hello(
        &mut self,
        socket: &mut WebSocket,
        id: Option<String>,
        name: Option<String>,
        token: Option<String>,
        dm_since: Option<i64>,
    ) -> Flow {
        let user =
            match crate::auth::identify(&self.node.settings, name.as_deref(), token.as_deref()) {
                Ok(user) => user,
                Err(refusal) => {
                    let code = refusal.code;
                    let _ = self.refuse(socket, id, refusal).await;
                    return match code {
                        ErrorCode::Unauthorized => Flow::Close(Close::UNAUTHORIZED),
                        _ => Flow::Continue,
                    };
                }
            };
        if let Err(refusal) = self
            .node
            .identify(self.conn, &user, self.outbox.clone())
            .await
        {
            let _ = self.refuse(socket, id, refusal).await;
            return Flow::Continue;
        }
        self.user = Some(user.clone());
        let s = &self.node.settings;
        let welcome = Reply::Welcome {
            reply_to: id,
            user: user.clone(),
            version: PROTOCOL_VERSION,
            server: concat!("confab/", env!("CARGO_PKG_VERSION")),
            limits: Limits {
                max_message_bytes: s.max_message_bytes,
                max_frame_bytes: s.max_frame_bytes,
                rate_limit: s.rate_limit,
                rate_burst: s.rate_burst,
            },
        };
        if write(socket, reply_frame(&welcome)).await.is_err() {
            return Flow::Close(Close::INTERNAL);
        }
        // Direct messages missed while away: exactly those after
        // `dm_since`, or else those never delivered to any connection.
        let store = &self.node.store;
        let missed = match dm_since {
            Some(since) => store
                .dms_since(&user, since, crate::node::MAX_REPLAY)
                .await
                .map(|page| page.items),
            None => store.undelivered_dms(&user, crate::node::MAX_REPLAY).await,
        };
        match missed {
            Ok(missed) => {
                let to_me = missed.iter().filter(|d| d.to == user).map(|d| d.id).max();
                for dm in missed {
                    self.dm_high = self.dm_high.max(dm.id);
                    let frame = Delivery::new(Event::Dm(dm)).encoded(Encoding::Native);
                    if let Some(frame) = frame {
                        if socket.feed(Message::Text(frame)).await.is_err() {
                            return Flow::Close(Close::INTERNAL);
                        }
                    }
                }
                let _ = socket.flush().await;
                if let Some(high) = to_me {
                    if let Err(err) = store.mark_delivered(&user, high).await {
                        tracing::warn!(error = %err, %user, "could not record delivery");
                    }
                }
            }
            Err(err) => {
                let refusal = Refusal::from(err);
                let _ = self.refuse(socket, None, refusal).await;
            }
        }
        Flow::Continue
    }

    async fn join(
        &mut self,
        socket: &mut WebSocket,
        id: Option<String>,
        room: RoomName,
        user: &UserName,
        since: Option<i64>,
    ) -> Flow {
        if self.rooms.contains_key(&room) {
            // Joining twice replays like a first join, without a second
            // membership.
            self.node.leave(self.conn, &room, user).await;
            self.rooms.remove(&room);
        }
        let reply = match self
            .node
            .join(self.conn, &room, user, self.outbox.clone(), since)
            .await
        {
            Ok(joined) => {
                let high = joined.history.last().map(|m| m.id).or(since).unwrap_or(0);
                self.rooms.insert(room.clone(), high);
                reply_frame(&Reply::Joined {
                    reply_to: id,
                    room,
                    members: joined.members,
                    history: joined.history,
                    more: joined.more,
                })
            }
            Err(refusal) => reply_frame(&Reply::error(id, refusal.code, refusal.message)),
        };
        match write(socket, reply).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close(Close::INTERNAL),
        }
    }

    async fn history(
        &self,
        id: Option<String>,
        room: Option<RoomName>,
        with: Option<UserName>,
        user: &UserName,
        query: PageQuery,
    ) -> Result<Reply, Refusal> {
        let store = &self.node.store;
        match (room, with) {
            (Some(room), None) => {
                let page = store.room_page(&room, query).await?;
                Ok(Reply::History {
                    reply_to: id,
                    room: Some(room),
                    with: None,
                    messages: Page::Room(page.items),
                    more: page.more,
                })
            }
            (None, Some(with)) => {
                let page = store.dm_page(user, &with, query).await?;
                Ok(Reply::History {
                    reply_to: id,
                    room: None,
                    with: Some(with),
                    messages: Page::Direct(page.items),
                    more: page.more,
                })
            }
            _ => Err(Refusal::new(
                ErrorCode::Invalid,
                "give exactly one of `room` and `with`",
            )),
        }
    }

    /// Leaves every room, unregisters the user and the connection.
    async fn cleanup(&mut self) {
        self.node.hub.ended(self.conn);
        let Some(user) = self.user.take() else {
            return;
        };
        for (room, _) in self.rooms.take() {
            self.node.leave(self.conn, &room, &user).await;
        }
        self.node.forget(self.conn, &user);
    }
}

/// Before a close the connection chose (shutdown, abuse): write the
/// answers to sends already under way, so a stored message is acked.
/// Bounded, so a stuck store cannot hold the close.
async fn finish_pending(socket: &mut WebSocket, pending: &mut Pending) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(reply) = pending.next().await {
            if let Some(text) = reply {
                if socket.feed(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let _ = socket.flush().await;
}

fn not_member(room: &RoomName) -> Refusal {
    Refusal::new(ErrorCode::NotMember, format!("join `{room}` first"))
}

/// The answer to a send: an ack, or why it was not stored.
fn ack(reply_to: Option<String>, result: Result<Stored, Refusal>) -> String {
    match result {
        Ok(stored) => {
            let (msg_id, ts) = stored.id_ts();
            Reply::Ack {
                reply_to,
                msg_id,
                ts,
            }
            .encode()
        }
        Err(refusal) => Reply::error(reply_to, refusal.code, refusal.message).encode(),
    }
}

fn reply_frame(reply: &Reply) -> Message {
    Message::Text(reply.encode().into())
}

/// An error in a tutorial dialect: JSON for the JSON dialects, a plain
/// line for the text one.
fn seed_error(dialect: Dialect, refusal: &Refusal) -> Message {
    let err = crate::protocol::seed::SeedError {
        code: refusal.code,
        detail: refusal.message.clone(),
    };
    let text = match dialect {
        Dialect::Text => format!("error: {}", refusal.message),
        _ => err.encode(),
    };
    Message::Text(text.into())
}

async fn write(socket: &mut WebSocket, msg: Message) -> Result<(), crate::ws::Error> {
    socket.send(msg).await
}

/// The close code for a read error, if the peer can still be told.
fn close_for(err: crate::ws::Error) -> Option<Close> {
    match err {
        tungstenite::Error::Capacity(_) => Some(Close::TOO_BIG),
        tungstenite::Error::Utf8(_) => Some(Close::BAD_UTF8),
        _ => None,
    }
}

/// Sends a close frame and waits, briefly, for the peer's, so the close
/// frame is not lost to a reset.
async fn close_socket(socket: &mut WebSocket, close: Close) {
    let frame = CloseFrame {
        code: close.code.into(),
        reason: close.reason.into(),
    };
    if socket.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}

/// After the peer's close frame: the library has queued the answering
/// close frame; reading on sends it and sees the stream end.
async fn answer_close(socket: &mut WebSocket) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}

/// A connection's side of the heartbeat. The ticks come through its inbox
/// from the node's one timer (`Next::Beat`): a timer of its own would make
/// every idle connection larger, and be polled on every wake-up.
#[derive(Default)]
struct Heartbeat {
    /// Ticks since the client last sent anything.
    missed: u32,
}

impl Heartbeat {
    /// A tick: pings, or, once two pings went unanswered, gives the reason
    /// to close (`Err(None)`: the socket failed).
    async fn beat(&mut self, socket: &mut WebSocket) -> Result<(), Option<Close>> {
        if self.missed >= 2 {
            return Err(Some(Close::HEARTBEAT));
        }
        self.missed += 1;
        write(socket, Message::Ping(Default::default()))
            .await
            .map_err(|_| None)
    }

    /// The client sent a frame: it is alive.
    fn heard(&mut self) {
        self.missed = 0;
    }
}

/// `/ws/echo/`: each text or binary frame back as it came. The frame
/// limits still apply (as `echo_max_bytes`); the message rate limit does
/// not, since the echo stores and fans out nothing. Shutdown and the
/// heartbeat reach it through an outbox, as they reach every connection;
/// nothing else is ever queued there.
async fn echo(node: Arc<Node>, mut socket: WebSocket) {
    let (outbox, mut rx) = Outbox::new(1);
    let conn = node.hub.next_conn();
    node.hub.open(conn, &outbox);
    let mut heartbeat = Heartbeat::default();
    let close = loop {
        tokio::select! {
            biased;
            next = rx.next() => match next {
                Next::Close(close) => break Some(close),
                Next::Beat => {
                    if let Err(close) = heartbeat.beat(&mut socket).await {
                        break close;
                    }
                }
                // Nothing is queued or lent here.
                Next::Delivery(_) | Next::Finish => {}
            },
            msg = socket.next() => {
                heartbeat.heard();
                match msg {
                    Some(Ok(msg @ (Message::Text(_) | Message::Binary(_)))) => {
                        if socket.send(msg).await.is_err() {
                            break None;
                        }
                    }
                    Some(Ok(Message::Close(_))) => {
                        answer_close(&mut socket).await;
                        break None;
                    }
                    None => break None,
                    Some(Ok(_)) => {}
                    Some(Err(err)) => break close_for(err),
                }
            }
        }
    };
    node.hub.ended(conn);
    if let Some(close) = close {
        close_socket(&mut socket, close).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_rooms_are_found_by_name_whatever_the_order_they_came_in() {
        let name = |s: &str| RoomName::parse(s).unwrap();
        let mut rooms = Joined::default();
        for (room, high) in [("m", 1), ("a", 2), ("z", 3), ("b", 4)] {
            rooms.insert(name(room), high);
        }
        rooms.insert(name("a"), 5);
        *rooms.get_mut(&name("z")).unwrap() += 1;

        assert!(rooms.remove(&name("m")));
        assert!(!rooms.remove(&name("m")));
        assert!(!rooms.contains_key(&name("c")));
        assert!(rooms.get_mut(&name("c")).is_none());
        let left: Vec<(String, i64)> = rooms
            .take()
            .into_iter()
            .map(|(r, high)| (r.to_string(), high))
            .collect();
        assert_eq!(left, [("a".into(), 5), ("b".into(), 4), ("z".into(), 4)]);
        assert!(!rooms.contains_key(&name("a")));
    }
}
