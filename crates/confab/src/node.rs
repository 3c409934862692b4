//! The node: this server process. It owns the hub, broker, store and
//! sequencer, and is the only thing sessions talk to, as centrifuge's
//! `Node` is. Sessions ask; the node keeps hub membership, broker
//! subscriptions and presence in step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{self, Broker, BrokerError, Deliver};
use crate::config::Settings;
use crate::hub::{ConnId, Hub, BEAT_GROUPS};
use crate::metrics::Metrics;
use crate::outbox::{Delivery, Outbox};
use crate::protocol::codes::{Close, ErrorCode};
use crate::protocol::{Event, PresenceChange, RoomMessage, RoomName, Topic, UserName};
use crate::sequencer::{Retention, Sequencer};
use crate::store::{self, Draft, PageQuery, Store, StoreError, Stored};

/// A failure a client is told about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// The error code.
    pub code: ErrorCode,
    /// What happened.
    pub message: String,
}

impl Refusal {
    /// A refusal with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal::new(ErrorCode::Unavailable, e.to_string())
    }
}

impl From<BrokerError> for Refusal {
    fn from(e: BrokerError) -> Self {
        Refusal::new(ErrorCode::Unavailable, e.to_string())
    }
}

/// What a join returns: the room's state when the connection joined.
#[derive(Debug, Clone)]
pub struct Joined {
    /// Users in the room.
    pub members: Vec<UserName>,
    /// Replayed messages, oldest first.
    pub history: Vec<RoomMessage>,
    /// Whether the replay left messages out.
    pub more: bool,
}

/// The most messages one `since` replay returns; beyond it the client
/// pages with `history`.
pub const MAX_REPLAY: u32 = 1000;

/// This server.
pub struct Node {
    /// The settings it runs with.
    pub settings: Settings,
    /// Local connections.
    pub hub: Arc<Hub>,
    /// Cross-node fan-out and presence.
    pub broker: Arc<dyn Broker>,
    /// History.
    pub store: Arc<dyn Store>,
    sequencer: Mutex<Option<Sequencer>>,
    sequencer_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    receipts: Arc<Receipts>,
    /// Cancelled when shutdown starts: the hub then closes every session
    /// with 1001 ([`Hub::close_all`]).
    pub shutdown: CancellationToken,
    /// Every session task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    connections: AtomicUsize,
    /// Counters, gauges and histograms for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Fan-out writes a delivery to an idle tutorial connection itself
    /// rather than waking the connection's task. Only on a runtime of one
    /// worker thread: there a wake-up is pure cost, while with several the
    /// woken tasks spread the writes over the workers, and writing them
    /// all from the fan-out's one thread would not.
    pub direct_writes: bool,
}

/// Hands broker deliveries to the hub, and notes which direct messages
/// reached a connection of their recipient.
struct LocalDelivery {
    hub: Arc<Hub>,
    receipts: Arc<Receipts>,
    metrics: Arc<Metrics>,
}

impl Deliver for LocalDelivery {
    fn deliver(&self, topic: &Topic, delivery: &Arc<Delivery>) {
        let fanout = self.hub.deliver(topic, delivery);
        self.metrics.fanout(fanout);
        if let (Topic::User(user), Event::Dm(dm)) = (topic, &delivery.event) {
            if *user == dm.to && fanout.queued > 0 {
                self.receipts.note(user, dm.id);
            }
        }
    }

    fn kick(&self, user: &UserName, close: Close) {
        let n = self.hub.kill_user(user, close);
        tracing::info!(%user, connections = n, reason = close.reason, "user disconnected by another node");
    }
}

/// The highest direct-message id delivered per user, written to the store
/// in the background and coalesced, so offline delivery knows where each
/// user's undelivered messages start.
#[derive(Default)]
struct Receipts {
    pending: Mutex<HashMap<UserName, i64>>,
    wake: Notify,
}

impl Receipts {
    fn note(&self, user: &UserName, id: i64) {
        let mut pending = self.pending.lock();
        let high = pending.entry(user.clone()).or_default();
        *high = (*high).max(id);
        drop(pending);
        self.wake.notify_one();
    }

    async fn flush(&self, store: &dyn Store) {
        let batch = std::mem::take(&mut *self.pending.lock());
        for (user, id) in batch {
            if let Err(err) = store.mark_delivered(&user, id).await {
                tracing::warn!(error = %err, %user, "could not record delivery");
            }
        }
    }
}

/// Holds one of the `max_connections` places until dropped.
pub struct ConnPermit {
    node: Arc<Node>,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.node.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Node {
    /// Opens the store and broker the settings name and starts the
    /// sequencer.
    pub async fn start(settings: Settings) -> anyhow::Result<Arc<Node>> {
        let metrics = Arc::new(Metrics::default());
        let store = metrics.instrument_store(store::open(&settings.store).await?);
        let hub = Arc::new(match settings.broker.as_str() {
            "memory" | "memory://" => Hub::default(),
            _ => Hub::starting_at(broker::redis::conn_base(&settings.node_id)),
        });
        let receipts = Arc::new(Receipts::default());
        let deliver = Arc::new(LocalDelivery {
            hub: hub.clone(),
            receipts: receipts.clone(),
            metrics: metrics.clone(),
        });
        let broker =
            metrics.instrument_broker(broker::connect(&settings, deliver, store.clone()).await?);
        let counted = metrics.clone();
        let (sequencer, sequencer_task) = Sequencer::start(
            store.clone(),
            broker.clone(),
            Retention::keep(settings.history_keep),
            move |s| counted.stored(s),
        );
        let node = Arc::new(Node {
            settings,
            hub,
            broker,
            store,
            sequencer: Mutex::new(Some(sequencer)),
            sequencer_task: Mutex::new(Some(sequencer_task)),
            receipts,
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            connections: AtomicUsize::new(0),
            metrics,
            direct_writes: tokio::runtime::Handle::current().metrics().num_workers() == 1,
        });
        // However shutdown starts, every connection hears it through its
        // own outbox and closes with 1001.
        let (hub, shutdown) = (node.hub.clone(), node.shutdown.clone());
        node.tracker.spawn(async move {
            shutdown.cancelled().await;
            hub.close_all(Close::SHUTDOWN);
        });
        // One timer for every connection's heartbeat, rather than one in
        // each: it ticks one group of connections at a time.
        let (hub, shutdown) = (node.hub.clone(), node.shutdown.clone());
        let period = node.settings.ping_interval / BEAT_GROUPS as u32;
        node.tracker.spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for group in (0..BEAT_GROUPS).cycle() {
                tokio::select! {
                    _ = ticks.tick() => {
                        hub.beat(group);
                    }
                    _ = shutdown.cancelled() => break,
                }
            }
        });
        let receipts_node = node.clone();
        node.tracker.spawn(async move {
            let n = &receipts_node;
            loop {
                tokio::select! {
                    _ = n.receipts.wake.notified() => n.receipts.flush(&*n.store).await,
                    _ = n.shutdown.cancelled() => break,
                }
            }
        });
        Ok(node)
    }

    /// Takes a connection place, or `None` at `max_connections`.
    pub fn admit(self: &Arc<Self>) -> Option<ConnPermit> {
        let max = self.settings.max_connections;
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnPermit { node: self.clone() })
    }

    /// How many WebSocket connections are open.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Adds `conn` to `topic`, subscribing this node when it is the first
    /// local member, and waits until the subscription is live.
    async fn attach(&self, topic: Topic, conn: ConnId, outbox: Outbox) -> Result<(), Refusal> {
        let ready = self
            .hub
            .add(&topic, conn, outbox, || self.broker.subscribe(&topic));
        if let Some(ready) = ready {
            if let Err(err) = ready.await {
                self.detach(&topic, conn);
                return Err(err.into());
            }
        }
        Ok(())
    }

    fn detach(&self, topic: &Topic, conn: ConnId) -> bool {
        self.hub
            .remove(topic, conn, || self.broker.unsubscribe(topic))
    }

    /// Registers the user of a new connection: it receives the user's
    /// direct messages from now on.
    pub async fn identify(
        &self,
        conn: ConnId,
        user: &UserName,
        outbox: Outbox,
    ) -> Result<(), Refusal> {
        // A guest is nobody's correspondent: no direct message or typing
        // can be sent to it, and no kick can name it. Registering it would
        // only grow the users table by a row per anonymous connection, and
        // its own topic would cost a hub entry per connection and, in a
        // cluster, a Redis subscription each.
        if user.is_guest() {
            return Ok(());
        }
        self.store.register_user(user).await?;
        self.attach(Topic::User(user.clone()), conn, outbox).await
    }

    /// Unregisters a connection's user.
    pub fn forget(&self, conn: ConnId, user: &UserName) {
        if !user.is_guest() {
            self.detach(&Topic::User(user.clone()), conn);
        }
    }

    /// Joins `conn` to `room`: it receives the room's events from now on,
    /// and gets the members and the messages it missed (after `since`) or
    /// the last few.
    pub async fn join(
        &self,
        conn: ConnId,
        room: &RoomName,
        user: &UserName,
        outbox: Outbox,
        since: Option<i64>,
    ) -> Result<Joined, Refusal> {
        self.enter(conn, room, user, outbox).await?;
        let query = match since {
            Some(after) => PageQuery {
                after: Some(after),
                limit: MAX_REPLAY,
                ..PageQuery::default()
            },
            None => PageQuery {
                limit: self.settings.history_replay,
                ..PageQuery::default()
            },
        };
        let (members, page) = tokio::join!(
            self.broker.presence(room),
            self.store.room_page(room, query)
        );
        let page = match page {
            Ok(page) => page,
            Err(err) => {
                self.leave(conn, room, user).await;
                return Err(err.into());
            }
        };
        Ok(Joined {
            members: members.unwrap_or_else(|_| vec![user.clone()]),
            history: page.items,
            more: page.more,
        })
    }

    /// Puts `conn` in `room` and announces the user if it just arrived:
    /// all a tutorial connection needs, which gets no member list and no
    /// replay (so its join costs no query).
    pub async fn enter(
        &self,
        conn: ConnId,
        room: &RoomName,
        user: &UserName,
        outbox: Outbox,
    ) -> Result<(), Refusal> {
        let topic = Topic::Room(room.clone());
        self.attach(topic.clone(), conn, outbox).await?;
        let arrived = match self.broker.presence_add(room, user).await {
            Ok(arrived) => arrived,
            Err(err) => {
                self.detach(&topic, conn);
                return Err(err.into());
            }
        };
        if arrived {
            self.announce(room, user, PresenceChange::Join).await;
        }
        Ok(())
    }

    /// Takes `conn` out of `room`; returns whether it was in it.
    pub async fn leave(&self, conn: ConnId, room: &RoomName, user: &UserName) -> bool {
        if !self.detach(&Topic::Room(room.clone()), conn) {
            return false;
        }
        match self.broker.presence_remove(room, user).await {
            Ok(true) => self.announce(room, user, PresenceChange::Leave).await,
            Ok(false) => {}
            Err(err) => tracing::warn!(error = %err, %room, %user, "presence not updated"),
        }
        true
    }

    async fn announce(&self, room: &RoomName, user: &UserName, event: PresenceChange) {
        let event = Event::Presence {
            room: room.clone(),
            user: user.clone(),
            event,
        };
        self.publish(Topic::Room(room.clone()), event).await;
    }

    /// Publishes an event that is not stored (presence, typing). Best
    /// effort: a failure is logged.
    pub async fn publish(&self, topic: Topic, event: Event) {
        if let Err(err) = self.broker.publish(&topic, Delivery::new(event)).await {
            tracing::warn!(error = %err, ?topic, "publish failed");
        }
    }

    /// Stores, delivers and returns a message.
    pub async fn submit(&self, draft: Draft) -> Result<Stored, Refusal> {
        let sequencer = self.sequencer.lock().clone();
        let sequencer = sequencer
            .ok_or_else(|| Refusal::new(ErrorCode::Unavailable, "server is shutting down"))?;
        let stored = sequencer.submit(draft).await.map_err(Refusal::from);
        if let Err(refusal) = &stored {
            self.metrics.refused(refusal.code);
        }
        stored
    }

    /// Checks that `to` may receive a direct message.
    pub async fn check_recipient(&self, to: &UserName) -> Result<(), Refusal> {
        if to.is_guest() {
            return Err(Refusal::new(
                ErrorCode::UnknownUser,
                format!("`{to}` is an anonymous connection: it cannot receive direct messages"),
            ));
        }
        if self.store.user_exists(to).await? {
            Ok(())
        } else {
            Err(Refusal::new(
                ErrorCode::UnknownUser,
                format!("no user `{to}` has ever connected"),
            ))
        }
    }

    /// After every session has ended: drains the sequencer, records
    /// deliveries, and closes the broker and store.
    pub async fn close(&self) {
        self.sequencer.lock().take();
        let task = self.sequencer_task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.receipts.flush(&*self.store).await;
        self.broker.close().await;
        self.store.close().await;
    }
}
