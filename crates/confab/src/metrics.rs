//! Metrics: plain atomics, one set per node, rendered in the Prometheus
//! text format (0.0.4) at `/metrics`.
//!
//! Every counter on a hot path (a delivery, a stored message, a frame) is
//! one relaxed `fetch_add` on a field reached without a lookup: no global
//! registry, no label hashing, no lock. Labels are fixed enumerations
//! (protocol, close reason, error code, store operation), so each labelled
//! counter is an array slot. Histograms are arrays of atomic buckets.
//! Gauges that the node already knows (rooms, users online) are read at
//! scrape time instead of being kept up to date. `docs/operations.md`
//! lists every metric and says why this is hand-rolled.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use parking_lot::Mutex;

use crate::broker::{self, Broker};
use crate::node::Node;
use crate::outbox::Delivery;
use crate::protocol::codes::{Close, ErrorCode};
use crate::protocol::native::RoomInfo;
use crate::protocol::seed::Dialect;
use crate::protocol::{DirectMessage, RoomMessage, RoomName, Topic, UserName};
use crate::session::Kind;
use crate::store::idempotency::{KeyClaim, KeyRecord};
use crate::store::{self, Draft, PageQuery, Paged, Prune, Store, Stored};

/// The protocol a connection speaks, as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `/socket`.
    Native,
    /// `/chat/`, `/ws/`.
    Text,
    /// `/ws/chat/<room>/`.
    RoomJson,
    /// `/ws/<user>/`.
    UserJson,
    /// `/ws/echo/`.
    Echo,
}

const PROTOCOLS: [(Protocol, &str); 5] = [
    (Protocol::Native, "native"),
    (Protocol::Text, "text"),
    (Protocol::RoomJson, "room_json"),
    (Protocol::UserJson, "user_json"),
    (Protocol::Echo, "echo"),
];

impl Protocol {
    /// The protocol of a connection kind.
    pub fn of(kind: &Kind) -> Self {
        match kind {
            Kind::Native => Protocol::Native,
            Kind::Echo => Protocol::Echo,
            Kind::Seed { dialect, .. } => match dialect {
                Dialect::Text => Protocol::Text,
                Dialect::RoomJson => Protocol::RoomJson,
                Dialect::UserJson => Protocol::UserJson,
            },
        }
    }
}

/// Why a connection ended, as a label.
const DISCONNECTS: [&str; 12] = [
    "client",
    "goodbye",
    "shutdown",
    "bad_utf8",
    "rate_limit",
    "heartbeat",
    "unauthorized",
    "frame_too_large",
    "internal",
    "slow_consumer",
    "kicked",
    "other",
];

fn disconnect_slot(close: Option<&Close>) -> usize {
    let Some(close) = close else { return 0 };
    [
        Close::NORMAL,
        Close::SHUTDOWN,
        Close::BAD_UTF8,
        Close::FLOOD,
        Close::HEARTBEAT,
        Close::UNAUTHORIZED,
        Close::TOO_BIG,
        Close::INTERNAL,
        Close::SLOW,
    ]
    .iter()
    .position(|c| c == close)
    .map(|i| i + 1)
    .unwrap_or(if close.code == Close::KICKED.code {
        10
    } else {
        11
    })
}

/// Every error code, for labels. A code added later and missing here is
/// still counted, as `other`.
const CODES: [ErrorCode; 14] = [
    ErrorCode::Malformed,
    ErrorCode::UnknownType,
    ErrorCode::Invalid,
    ErrorCode::InvalidRoom,
    ErrorCode::InvalidUser,
    ErrorCode::UnknownUser,
    ErrorCode::TooLarge,
    ErrorCode::RateLimited,
    ErrorCode::NotIdentified,
    ErrorCode::AlreadyIdentified,
    ErrorCode::Unauthorized,
    ErrorCode::NotMember,
    ErrorCode::Unavailable,
    ErrorCode::Internal,
];
const CODE_SLOTS: usize = 32;

/// Why a delivery to one connection was dropped, as a label.
#[derive(Debug, Clone, Copy)]
pub enum Dropped {
    /// The connection's queue was full; it is closed as slow.
    SlowConsumer = 0,
    /// The connection had already ended.
    ConnectionGone = 1,
    /// Still queued when its connection closed.
    QueuedAtClose = 2,
}
const DROPPED: [&str; 3] = ["slow_consumer", "connection_gone", "queued_at_close"];

/// Why an upgrade was refused before the WebSocket opened, as a label.
#[derive(Debug, Clone, Copy)]
pub enum Refused {
    /// The Origin is not allowed.
    Origin = 0,
    /// `max_connections` reached.
    Capacity = 1,
    /// Shutdown has begun.
    Shutdown = 2,
}
const REFUSED: [&str; 3] = ["origin", "capacity", "shutdown"];

/// Histogram bucket bounds, in seconds (and in nanoseconds, to compare).
const BUCKETS: [f64; 15] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

/// A latency histogram: one atomic per bucket (the last is +Inf).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let secs = d.as_secs_f64();
        let slot = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[slot].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, count) in self.buckets.iter().enumerate() {
            cumulative += count.load(Relaxed);
            let le = BUCKETS.get(i).map_or("+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// Latency and errors of each operation of a store or broker.
#[derive(Debug)]
pub struct OpStats {
    names: &'static [&'static str],
    latency: Vec<Histogram>,
    errors: Vec<AtomicU64>,
}

impl OpStats {
    fn new(names: &'static [&'static str]) -> Self {
        Self {
            names,
            latency: names.iter().map(|_| Histogram::default()).collect(),
            errors: names.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }

    async fn timed<T, E>(
        &self,
        op: usize,
        fut: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let start = Instant::now();
        let result = fut.await;
        self.latency[op].observe(start.elapsed());
        if result.is_err() {
            self.errors[op].fetch_add(1, Relaxed);
        }
        result
    }
}

const STORE_OPS: [&str; 12] = [
    "append",
    "room_page",
    "dm_page",
    "dms_since",
    "undelivered_dms",
    "mark_delivered",
    "register_user",
    "user_exists",
    "room_heads",
    "ping",
    "idempotency",
    "prune",
];
const BROKER_OPS: [&str; 9] = [
    "publish",
    "subscribe",
    "presence_add",
    "presence_remove",
    "presence",
    "rooms",
    "ping",
    "presence_counts",
    "kick",
];

/// One node's metrics.
#[derive(Debug)]
pub struct Metrics {
    start: SystemTime,
    connections: [AtomicI64; 5],
    connections_opened: [AtomicU64; 5],
    received: [AtomicU64; 2],
    refused: [AtomicU64; CODE_SLOTS],
    messages_lost: AtomicU64,
    deliveries: AtomicU64,
    dropped: [AtomicU64; 3],
    disconnects: [AtomicU64; DISCONNECTS.len()],
    upgrades_refused: [AtomicU64; 3],
    /// The store's operations.
    pub store: OpStats,
    /// The broker's operations.
    pub broker: OpStats,
    api: Mutex<BTreeMap<(String, u16), u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            start: SystemTime::now(),
            connections: Default::default(),
            connections_opened: Default::default(),
            received: Default::default(),
            refused: Default::default(),
            messages_lost: AtomicU64::new(0),
            deliveries: AtomicU64::new(0),
            dropped: Default::default(),
            disconnects: Default::default(),
            upgrades_refused: Default::default(),
            store: OpStats::new(&STORE_OPS),
            broker: OpStats::new(&BROKER_OPS),
            api: Mutex::default(),
        }
    }
}

/// Counts one open connection until dropped.
pub struct ConnGuard {
    metrics: Arc<Metrics>,
    slot: usize,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.metrics.connections[self.slot].fetch_sub(1, Relaxed);
    }
}

fn slot_of(protocol: Protocol) -> usize {
    PROTOCOLS
        .iter()
        .position(|(p, _)| *p == protocol)
        .unwrap_or(0)
}

impl Metrics {
    /// Counts a connection of `kind` open until the guard drops.
    pub fn connection(self: &Arc<Self>, kind: &Kind) -> ConnGuard {
        let slot = slot_of(Protocol::of(kind));
        self.connections[slot].fetch_add(1, Relaxed);
        self.connections_opened[slot].fetch_add(1, Relaxed);
        ConnGuard {
            metrics: self.clone(),
            slot,
        }
    }

    /// A message was stored (and is being delivered).
    pub fn stored(&self, stored: &Stored) {
        let slot = match stored {
            Stored::Room(_) => 0,
            Stored::Direct(_) => 1,
        };
        self.received[slot].fetch_add(1, Relaxed);
    }

    /// A command was refused with `code`.
    pub fn refused(&self, code: ErrorCode) {
        let slot = (code as usize).min(CODE_SLOTS - 1);
        self.refused[slot].fetch_add(1, Relaxed);
    }

    /// A fan-out queued `queued` deliveries and dropped the rest.
    pub fn fanout(&self, fanout: crate::hub::Fanout) {
        if fanout.queued > 0 {
            self.deliveries.fetch_add(fanout.queued as u64, Relaxed);
        }
        if fanout.overflowed > 0 {
            self.dropped(Dropped::SlowConsumer, fanout.overflowed);
        }
        if fanout.gone > 0 {
            self.dropped(Dropped::ConnectionGone, fanout.gone);
        }
    }

    /// `n` deliveries were dropped for `why`.
    pub fn dropped(&self, why: Dropped, n: usize) {
        if n > 0 {
            self.dropped[why as usize].fetch_add(n as u64, Relaxed);
        }
    }

    /// A connection ended with `close` (`None`: the client went away).
    pub fn disconnected(&self, close: Option<&Close>) {
        self.disconnects[disconnect_slot(close)].fetch_add(1, Relaxed);
    }

    /// An upgrade was refused.
    pub fn upgrade_refused(&self, why: Refused) {
        self.upgrades_refused[why as usize].fetch_add(1, Relaxed);
    }

    /// A REST API request was answered.
    pub fn api_request(&self, operation: &str, status: u16) {
        *self
            .api
            .lock()
            .entry((operation.to_owned(), status))
            .or_default() += 1;
    }

    /// Wraps a store so each call is timed and its errors counted.
    pub fn instrument_store(self: &Arc<Self>, inner: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(TimedStore {
            inner,
            metrics: self.clone(),
        })
    }

    /// Wraps a broker so each call is timed and its errors counted.
    pub fn instrument_broker(self: &Arc<Self>, inner: Arc<dyn Broker>) -> Arc<dyn Broker> {
        Arc::new(TimedBroker {
            inner,
            metrics: self.clone(),
        })
    }

    /// The text exposition of everything, with `node`'s gauges.
    pub fn render(&self, node: &Node) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let o = &mut out;
        header(
            o,
            "confab_build_info",
            "gauge",
            "The running build; always 1.",
        );
        let _ = writeln!(
            o,
            "confab_build_info{{version=\"{}\",protocol_version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            crate::protocol::PROTOCOL_VERSION
        );
        let start = self
            .start
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        header(
            o,
            "confab_start_time_seconds",
            "gauge",
            "When this node started, in seconds since the Unix epoch.",
        );
        let _ = writeln!(o, "confab_start_time_seconds {start}");

        header(
            o,
            "confab_connections",
            "gauge",
            "Open WebSocket connections, by protocol.",
        );
        for (i, (_, name)) in PROTOCOLS.iter().enumerate() {
            let n = self.connections[i].load(Relaxed);
            let _ = writeln!(o, "confab_connections{{protocol=\"{name}\"}} {n}");
        }
        header(
            o,
            "confab_connections_opened_total",
            "counter",
            "WebSocket connections opened, by protocol.",
        );
        for (i, (_, name)) in PROTOCOLS.iter().enumerate() {
            let n = self.connections_opened[i].load(Relaxed);
            let _ = writeln!(
                o,
                "confab_connections_opened_total{{protocol=\"{name}\"}} {n}"
            );
        }
        gauge(
            o,
            "confab_connections_limit",
            "The most WebSocket connections this node accepts (max_connections).",
            node.settings.max_connections as f64,
        );
        let (rooms, users) = node.hub.sizes();
        gauge(
            o,
            "confab_rooms",
            "Rooms with at least one connection on this node.",
            rooms as f64,
        );
        gauge(
            o,
            "confab_users_online",
            "Named users with at least one connection on this node (guests are not counted).",
            users as f64,
        );

        header(
            o,
            "confab_messages_received_total",
            "counter",
            "Messages stored and handed to fan-out (from clients and the API), by kind.",
        );
        for (i, kind) in ["room", "direct"].iter().enumerate() {
            let n = self.received[i].load(Relaxed);
            let _ = writeln!(o, "confab_messages_received_total{{kind=\"{kind}\"}} {n}");
        }
        header(
            o,
            "confab_commands_refused_total",
            "counter",
            "Client commands refused with an error, by code (rate_limited, too_large, unavailable...).",
        );
        for (slot, count) in self.refused.iter().enumerate() {
            let known = CODES.iter().find(|c| **c as usize == slot);
            let n = count.load(Relaxed);
            let name = match known {
                Some(code) => code_name(*code),
                None if n > 0 => "other".into(),
                None => continue,
            };
            let _ = writeln!(o, "confab_commands_refused_total{{code=\"{name}\"}} {n}");
        }
        counter(
            o,
            "confab_messages_lost_total",
            "Messages not stored because the store failed (their senders got `unavailable`).",
            self.messages_lost.load(Relaxed),
        );
        counter(
            o,
            "confab_deliveries_total",
            "Events queued for a connection or written to it at once (one per event per recipient connection).",
            self.deliveries.load(Relaxed),
        );
        header(
            o,
            "confab_deliveries_dropped_total",
            "counter",
            "Events not written to a connection, by reason.",
        );
        for (i, reason) in DROPPED.iter().enumerate() {
            let n = self.dropped[i].load(Relaxed);
            let _ = writeln!(
                o,
                "confab_deliveries_dropped_total{{reason=\"{reason}\"}} {n}"
            );
        }
        header(
            o,
            "confab_disconnects_total",
            "counter",
            "WebSocket connections ended, by reason (slow_consumer, rate_limit, kicked, client...).",
        );
        for (i, reason) in DISCONNECTS.iter().enumerate() {
            let n = self.disconnects[i].load(Relaxed);
            let _ = writeln!(o, "confab_disconnects_total{{reason=\"{reason}\"}} {n}");
        }
        header(
            o,
            "confab_upgrades_refused_total",
            "counter",
            "WebSocket upgrades refused before opening, by reason.",
        );
        for (i, reason) in REFUSED.iter().enumerate() {
            let n = self.upgrades_refused[i].load(Relaxed);
            let _ = writeln!(
                o,
                "confab_upgrades_refused_total{{reason=\"{reason}\"}} {n}"
            );
        }

        ops(o, "confab_store", "history store", &self.store);
        ops(o, "confab_broker", "broker", &self.broker);

        header(
            o,
            "confab_api_requests_total",
            "counter",
            "REST API requests answered, by operation and HTTP status.",
        );
        for ((op, status), n) in self.api.lock().iter() {
            let _ = writeln!(
                o,
                "confab_api_requests_total{{operation=\"{op}\",status=\"{status}\"}} {n}"
            );
        }
        process(o);
        out
    }
}

fn code_name(code: ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "other".into())
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    header(out, name, "gauge", help);
    let _ = writeln!(out, "{name} {value}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

fn ops(out: &mut String, prefix: &str, what: &str, stats: &OpStats) {
    let name = format!("{prefix}_duration_seconds");
    header(
        out,
        &name,
        "histogram",
        &format!("Time the {what} took per call, by operation."),
    );
    for (i, op) in stats.names.iter().enumerate() {
        stats.latency[i].render(out, &name, &format!("op=\"{op}\""));
    }
    let name = format!("{prefix}_errors_total");
    header(
        out,
        &name,
        "counter",
        &format!("Calls the {what} failed, by operation."),
    );
    for (i, op) in stats.names.iter().enumerate() {
        let n = stats.errors[i].load(Relaxed);
        let _ = writeln!(out, "{name}{{op=\"{op}\"}} {n}");
    }
}

/// Process metrics, as the official clients name them (Linux only).
fn process(out: &mut String) {
    #[cfg(target_os = "linux")]
    {
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command (which may hold spaces) start at 3.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok());
            // utime, stime (fields 14, 15) in clock ticks; rss (24) in pages.
            // Ticks are 100 a second and pages 4 KiB on every Linux
            // platform this builds for.
            if let (Some(u), Some(s)) = (num(14), num(15)) {
                counter_f(
                    out,
                    "process_cpu_seconds_total",
                    "CPU time used.",
                    (u + s) / 100.0,
                );
            }
            if let Some(rss) = num(24) {
                gauge(
                    out,
                    "process_resident_memory_bytes",
                    "Resident memory.",
                    rss * 4096.0,
                );
            }
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            gauge(
                out,
                "process_open_fds",
                "Open file descriptors.",
                dir.count() as f64,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = out;
}

fn counter_f(out: &mut String, name: &str, help: &str, value: f64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

/// `GET /metrics`.
pub async fn serve(State(node): State<Arc<Node>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        node.metrics.render(&node),
    )
        .into_response()
}

/// A store that times every call.
struct TimedStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

#[async_trait]
impl Store for TimedStore {
    async fn append(&self, batch: &[Draft], prune: &Prune) -> store::Result<Vec<Stored>> {
        // A prune that no batch carried is timed apart.
        let op = if batch.is_empty() { 11 } else { 0 };
        let result = self
            .metrics
            .store
            .timed(op, self.inner.append(batch, prune))
            .await;
        // A batch that fails with a prune is tried again without it (the
        // sequencer does), so only a failure without one loses messages.
        if result.is_err() && prune.is_empty() {
            self.metrics
                .messages_lost
                .fetch_add(batch.len() as u64, Relaxed);
        }
        result
    }
    async fn room_page(&self, room: &RoomName, q: PageQuery) -> store::Result<Paged<RoomMessage>> {
        self.metrics
            .store
            .timed(1, self.inner.room_page(room, q))
            .await
    }
    async fn dm_page(
        &self,
        a: &UserName,
        b: &UserName,
        q: PageQuery,
    ) -> store::Result<Paged<DirectMessage>> {
        self.metrics
            .store
            .timed(2, self.inner.dm_page(a, b, q))
            .await
    }
    async fn dms_since(
        &self,
        user: &UserName,
        after: i64,
        limit: u32,
    ) -> store::Result<Paged<DirectMessage>> {
        let fut = self.inner.dms_since(user, after, limit);
        self.metrics.store.timed(3, fut).await
    }
    async fn undelivered_dms(
        &self,
        user: &UserName,
        limit: u32,
    ) -> store::Result<Vec<DirectMessage>> {
        let fut = self.inner.undelivered_dms(user, limit);
        self.metrics.store.timed(4, fut).await
    }
    async fn mark_delivered(&self, user: &UserName, id: i64) -> store::Result<()> {
        let fut = self.inner.mark_delivered(user, id);
        self.metrics.store.timed(5, fut).await
    }
    async fn register_user(&self, user: &UserName) -> store::Result<()> {
        self.metrics
            .store
            .timed(6, self.inner.register_user(user))
            .await
    }
    async fn user_exists(&self, user: &UserName) -> store::Result<bool> {
        self.metrics
            .store
            .timed(7, self.inner.user_exists(user))
            .await
    }
    async fn room_heads(&self) -> store::Result<Vec<(RoomName, i64, i64)>> {
        self.metrics.store.timed(8, self.inner.room_heads()).await
    }
    async fn ping(&self) -> store::Result<()> {
        self.metrics.store.timed(9, self.inner.ping()).await
    }
    async fn claim_key(&self, claim: &KeyClaim) -> store::Result<Option<KeyRecord>> {
        self.metrics
            .store
            .timed(10, self.inner.claim_key(claim))
            .await
    }
    async fn complete_key(&self, key: &str, message_id: i64) -> store::Result<()> {
        let fut = self.inner.complete_key(key, message_id);
        self.metrics.store.timed(10, fut).await
    }
    async fn release_key(&self, key: &str) -> store::Result<()> {
        self.metrics
            .store
            .timed(10, self.inner.release_key(key))
            .await
    }
    async fn prune_keys(&self, before_ms: i64) -> store::Result<u64> {
        self.metrics
            .store
            .timed(10, self.inner.prune_keys(before_ms))
            .await
    }
    async fn close(&self) {
        self.inner.close().await
    }
}

/// A broker that times every call.
struct TimedBroker {
    inner: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
}

#[async_trait]
impl Broker for TimedBroker {
    async fn publish(&self, topic: &Topic, delivery: Arc<Delivery>) -> broker::Result<()> {
        let fut = self.inner.publish(topic, delivery);
        self.metrics.broker.timed(0, fut).await
    }
    fn subscribe(&self, topic: &Topic) -> BoxFuture<'static, broker::Result<()>> {
        let fut = self.inner.subscribe(topic);
        let metrics = self.metrics.clone();
        async move { metrics.broker.timed(1, fut).await }.boxed()
    }
    fn unsubscribe(&self, topic: &Topic) {
        self.inner.unsubscribe(topic)
    }
    async fn presence_add(&self, room: &RoomName, user: &UserName) -> broker::Result<bool> {
        let fut = self.inner.presence_add(room, user);
        self.metrics.broker.timed(2, fut).await
    }
    async fn presence_remove(&self, room: &RoomName, user: &UserName) -> broker::Result<bool> {
        let fut = self.inner.presence_remove(room, user);
        self.metrics.broker.timed(3, fut).await
    }
    async fn presence(&self, room: &RoomName) -> broker::Result<Vec<UserName>> {
        self.metrics
            .broker
            .timed(4, self.inner.presence(room))
            .await
    }
    async fn presence_counts(&self, room: &RoomName) -> broker::Result<Vec<(UserName, usize)>> {
        let fut = self.inner.presence_counts(room);
        self.metrics.broker.timed(7, fut).await
    }
    async fn kick(&self, user: &UserName, close: Close) -> broker::Result<()> {
        self.metrics
            .broker
            .timed(8, self.inner.kick(user, close))
            .await
    }
    async fn rooms(&self) -> broker::Result<Vec<RoomInfo>> {
        self.metrics.broker.timed(5, self.inner.rooms()).await
    }
    async fn ping(&self) -> broker::Result<()> {
        self.metrics.broker.timed(6, self.inner.ping()).await
    }
    async fn close(&self) {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_everything() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(30));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(10));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "op=\"a\"");
        assert!(out.contains("x_seconds_bucket{op=\"a\",le=\"0.00005\"} 1\n"));
        assert!(out.contains("x_seconds_bucket{op=\"a\",le=\"0.005\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{op=\"a\",le=\"2.5\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{op=\"a\",le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_seconds_count{op=\"a\"} 3\n"));
    }

    #[test]
    fn close_reasons_map_to_labels() {
        let label = |c: Option<&Close>| DISCONNECTS[disconnect_slot(c)];
        assert_eq!(label(None), "client");
        assert_eq!(label(Some(&Close::SLOW)), "slow_consumer");
        assert_eq!(label(Some(&Close::FLOOD)), "rate_limit");
        assert_eq!(label(Some(&Close::HEARTBEAT)), "heartbeat");
        let kick = Close {
            code: 4000,
            reason: "bye",
        };
        assert_eq!(label(Some(&kick)), "kicked");
    }

    #[test]
    fn a_full_queue_and_a_closed_connection_count_as_drops() {
        use crate::hub::Hub;
        use crate::outbox::Outbox;
        use crate::protocol::{Event, PresenceChange};

        let metrics = Metrics::default();
        let hub = Hub::default();
        let room = RoomName::parse("r").unwrap();
        let topic = Topic::Room(room.clone());
        let (slow, _slow_rx) = Outbox::new(1);
        let (gone, gone_rx) = Outbox::new(8);
        hub.add(&topic, 1, slow, || ());
        hub.add(&topic, 2, gone, || ());
        drop(gone_rx);
        let event = Event::Presence {
            room,
            user: UserName::parse("u").unwrap(),
            event: PresenceChange::Join,
        };
        for _ in 0..3 {
            metrics.fanout(hub.deliver(&topic, &Delivery::new(event.clone())));
        }
        assert_eq!(metrics.deliveries.load(Relaxed), 1);
        assert_eq!(
            metrics.dropped[Dropped::SlowConsumer as usize].load(Relaxed),
            2
        );
        assert_eq!(
            metrics.dropped[Dropped::ConnectionGone as usize].load(Relaxed),
            3
        );
    }

    #[test]
    fn every_error_code_has_its_own_slot() {
        let mut slots: Vec<usize> = CODES.iter().map(|c| *c as usize).collect();
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), CODES.len());
        assert!(slots.iter().all(|s| *s < CODE_SLOTS));
        assert_eq!(code_name(ErrorCode::RateLimited), "rate_limited");
    }
}
