//! The cluster broker: Redis pub/sub for fan-out, Redis hashes for
//! presence. `docs/cluster.md` explains the design; in short:
//!
//! * One publisher connection (a `ConnectionManager`, which reconnects by
//!   itself) and one subscriber connection owned by a task that applies
//!   subscribe/unsubscribe in call order and, after a reconnect,
//!   resubscribes every topic and catches up from the store.
//! * A node subscribes only to `<cluster>:room:<name>` and
//!   `<cluster>:user:<name>` channels it has local connections for.
//! * The payload is the event's native JSON, handed on without encoding
//!   it again.
//! * Receiving, [`Orderer`] hands messages on in id order: room ids are
//!   dense, so a gap is certain and is filled from the store; a direct
//!   message is checked against the store before it is handed on.
//! * Presence: per-node counts beside cluster-wide counts, changed by Lua
//!   scripts (atomic), with a heartbeat key per node; any node sweeps a
//!   dead node's users out and announces each departure once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Broker, BrokerError, Deliver, Result};
use crate::config::Settings;
use crate::outbox::{Delivery, Encoding};
use crate::protocol::codes::Close;
use crate::protocol::native::RoomInfo;
use crate::protocol::{Event, PresenceChange, RoomName, Topic, UserName};
use crate::store::{PageQuery, Store};

/// How long one Redis command may take before it counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a receiver waits for a missing room message to arrive from
/// Redis before it fetches it from the store.
const GAP_GRACE: Duration = Duration::from_millis(5);

/// Most messages fetched by one gap fill or catch-up query.
const FILL_PAGE: u32 = 500;

/// Where a node's connection numbers start: a million-wide block picked
/// by its id, so guests on different nodes get different names.
pub fn conn_base(node_id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    node_id.hash(&mut h);
    (h.finish() % 1_000_000 + 1) * 1_000_000
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// Counters of what went wrong or had to be repaired; logged as they
/// change, readable for tests and monitoring.
#[derive(Debug, Default)]
pub struct Stats {
    /// Publishes that failed (the event was delivered locally instead).
    pub publish_failed: AtomicU64,
    /// Frames received that could not be read.
    pub bad_frames: AtomicU64,
    /// Room gaps filled from the store.
    pub gaps_filled: AtomicU64,
    /// Room gaps given up on (the store did not answer).
    pub gaps_skipped: AtomicU64,
    /// Subscriber reconnects.
    pub reconnects: AtomicU64,
    /// Dead nodes swept out of presence by this node.
    pub nodes_swept: AtomicU64,
}

fn bump(counter: &AtomicU64) -> u64 {
    counter.fetch_add(1, Ordering::Relaxed) + 1
}

/// Fan-out and presence through Redis.
pub struct RedisBroker {
    inner: Arc<Inner>,
}

struct Inner {
    prefix: String,
    node: String,
    ttl: Duration,
    client: redis::Client,
    conn: ConnectionManager,
    cmds: mpsc::UnboundedSender<SubCmd>,
    orderer: Arc<Orderer>,
    /// This node's presence: connections per user per room. The truth
    /// Redis is brought back to after it restarts; the lock also orders
    /// presence commands against a restore.
    mirror: tokio::sync::Mutex<HashMap<RoomName, HashMap<UserName, usize>>>,
    stats: Stats,
    connected: AtomicBool,
    shutdown: CancellationToken,
    scripts: Scripts,
}

/// The `type` of a kick frame: not an event type, so no client sees one.
const KICK: &str = "kick";

/// What a node publishes on `<cluster>:user:<name>` to have the other
/// nodes close that user's connections.
#[derive(serde::Serialize, serde::Deserialize)]
struct KickFrame {
    #[serde(rename = "type")]
    kind: String,
    /// The node that sent it (and closed its own connections already).
    node: String,
    code: u16,
    reason: String,
}

enum SubCmd {
    Sub(String, oneshot::Sender<Result<()>>),
    Unsub(String),
}

struct Scripts {
    add: Script,
    remove: Script,
    sweep: Script,
    restore: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            add: Script::new(ADD_LUA),
            remove: Script::new(REMOVE_LUA),
            sweep: Script::new(SWEEP_LUA),
            restore: Script::new(RESTORE_LUA),
        }
    }
}

/// Counts one connection: returns the user's cluster-wide count there.
const ADD_LUA: &str = r"
local P, node, room, user = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
redis.call('HINCRBY', P..':np:'..node..':'..room, user, 1)
redis.call('SADD', P..':node-rooms:'..node, room)
redis.call('SADD', P..':rooms', room)
return redis.call('HINCRBY', P..':members:'..room, user, 1)
";

/// Uncounts one connection: 1 if it was the user's last in the room.
const REMOVE_LUA: &str = r"
local P, node, room, user = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local np = P..':np:'..node..':'..room
local c = tonumber(redis.call('HGET', np, user) or '0')
if c <= 0 then return 0 end
if c == 1 then redis.call('HDEL', np, user) else redis.call('HINCRBY', np, user, -1) end
if redis.call('EXISTS', np) == 0 then redis.call('SREM', P..':node-rooms:'..node, room) end
local mk = P..':members:'..room
local n = redis.call('HINCRBY', mk, user, -1)
if n <= 0 then
  redis.call('HDEL', mk, user)
  if redis.call('EXISTS', mk) == 0 then redis.call('SREM', P..':rooms', room) end
  return 1
end
return 0
";

/// Removes a node whose heartbeat expired; returns room, user pairs that
/// left the cluster with it. Atomic, so one sweeper gets them.
const SWEEP_LUA: &str = r"
local P, id = ARGV[1], ARGV[2]
if redis.call('EXISTS', P..':alive:'..id) == 1 then return {} end
if redis.call('SREM', P..':nodes', id) == 0 then return {} end
local left = {}
local nr = P..':node-rooms:'..id
for _, room in ipairs(redis.call('SMEMBERS', nr)) do
  local np = P..':np:'..id..':'..room
  local kv = redis.call('HGETALL', np)
  local mk = P..':members:'..room
  for i = 1, #kv, 2 do
    local n = redis.call('HINCRBY', mk, kv[i], -tonumber(kv[i + 1]))
    if n <= 0 then
      redis.call('HDEL', mk, kv[i])
      table.insert(left, room)
      table.insert(left, kv[i])
    end
  end
  redis.call('DEL', np)
  if redis.call('EXISTS', mk) == 0 then redis.call('SREM', P..':rooms', room) end
end
redis.call('DEL', nr)
return left
";

/// Sets this node's presence to exactly ARGV[4..] (room, user, count
/// triples), adjusting cluster counts by the difference, and renews its
/// heartbeat. Idempotent. Returns room, user pairs that left.
const RESTORE_LUA: &str = r"
local P, id = ARGV[1], ARGV[2]
local want = {}
for i = 4, #ARGV, 3 do
  local r = ARGV[i]
  want[r] = want[r] or {}
  want[r][ARGV[i + 1]] = tonumber(ARGV[i + 2])
end
local nr = P..':node-rooms:'..id
local rooms = {}
for _, r in ipairs(redis.call('SMEMBERS', nr)) do rooms[r] = true end
for r, _ in pairs(want) do rooms[r] = true end
local left = {}
for r, _ in pairs(rooms) do
  local np = P..':np:'..id..':'..r
  local have = {}
  local kv = redis.call('HGETALL', np)
  for i = 1, #kv, 2 do have[kv[i]] = tonumber(kv[i + 1]) end
  local w = want[r] or {}
  local users = {}
  for u, _ in pairs(have) do users[u] = true end
  for u, _ in pairs(w) do users[u] = true end
  local mk = P..':members:'..r
  for u, _ in pairs(users) do
    local delta = (w[u] or 0) - (have[u] or 0)
    if delta ~= 0 then
      local n = redis.call('HINCRBY', mk, u, delta)
      if n <= 0 then
        redis.call('HDEL', mk, u)
        table.insert(left, r)
        table.insert(left, u)
      end
    end
  end
  redis.call('DEL', np)
  local any = false
  for u, c in pairs(w) do
    redis.call('HSET', np, u, c)
    any = true
  end
  if any then
    redis.call('SADD', nr, r)
    redis.call('SADD', P..':rooms', r)
  else
    redis.call('SREM', nr, r)
  end
  if redis.call('EXISTS', mk) == 0 then redis.call('SREM', P..':rooms', r) end
end
redis.call('SADD', P..':nodes', id)
redis.call('SET', P..':alive:'..id, '1', 'PX', ARGV[3])
return left
";

impl RedisBroker {
    /// Connects to the Redis at `settings.broker` and starts the
    /// subscriber and heartbeat tasks.
    pub async fn open(
        settings: &Settings,
        deliver: Arc<dyn Deliver>,
        store: Arc<dyn Store>,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(settings.broker.as_str())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = tokio::time::timeout(
            COMMAND_TIMEOUT * 3,
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| anyhow::anyhow!("timed out connecting to the broker"))??;
        let (cmds, cmd_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            prefix: settings.cluster_name.clone(),
            node: settings.node_id.clone(),
            ttl: settings.node_ttl,
            client,
            conn,
            cmds,
            orderer: Arc::new(Orderer {
                deliver,
                store,
                rooms: Mutex::default(),
                users: Mutex::default(),
                stats: Default::default(),
            }),
            mirror: Default::default(),
            stats: Stats::default(),
            connected: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            scripts: Scripts::new(),
        });
        // Register before serving, so the node's presence has a heartbeat.
        inner.heartbeat().await?;
        let (ready_tx, ready_rx) = oneshot::channel();
        tokio::spawn(inner.clone().subscriber(cmd_rx, ready_tx));
        let _ = tokio::time::timeout(COMMAND_TIMEOUT * 3, ready_rx).await;
        tokio::spawn(inner.clone().heartbeats());
        tracing::info!(node = %inner.node, cluster = %inner.prefix, "joined the cluster");
        Ok(Self { inner })
    }

    /// What went wrong or was repaired so far.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }
}

impl Inner {
    /// Runs a presence script (add or remove one connection of `user` in
    /// `room` for this node) and returns its answer.
    async fn presence_script(
        &self,
        script: &Script,
        room: &RoomName,
        user: &UserName,
    ) -> Result<i64> {
        let mut conn = self.conn.clone();
        script
            .prepare_invoke()
            .arg(&self.prefix)
            .arg(&self.node)
            .arg(room.as_str())
            .arg(user.as_str())
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)
    }

    fn channel(&self, topic: &Topic) -> String {
        match topic {
            Topic::Room(r) => format!("{}:room:{}", self.prefix, r),
            Topic::User(u) => format!("{}:user:{}", self.prefix, u),
        }
    }

    fn topic(&self, channel: &str) -> Option<Topic> {
        let rest = channel.strip_prefix(&self.prefix)?.strip_prefix(':')?;
        if let Some(room) = rest.strip_prefix("room:") {
            RoomName::parse(room).ok().map(Topic::Room)
        } else if let Some(user) = rest.strip_prefix("user:") {
            UserName::parse(user).ok().map(Topic::User)
        } else {
            None
        }
    }

    fn on_message(&self, msg: &redis::Msg) {
        if let Some((user, kick)) = self.kick_frame(msg) {
            if kick.node != self.node {
                let close = Close {
                    code: kick.code,
                    reason: Close::interned(&kick.reason),
                };
                self.orderer.deliver.kick(&user, close);
            }
            return;
        }
        let parsed = self.topic(msg.get_channel_name()).and_then(|topic| {
            let json = std::str::from_utf8(msg.get_payload_bytes()).ok()?;
            let event: Event = serde_json::from_str(json).ok()?;
            Some((topic, Delivery::with_native(event, json.to_owned())))
        });
        match parsed {
            Some((topic, delivery)) => self.orderer.receive(&topic, delivery),
            None => {
                let n = bump(&self.stats.bad_frames);
                tracing::warn!(
                    channel = msg.get_channel_name(),
                    total = n,
                    "unreadable frame from the broker"
                );
            }
        }
    }

    /// A kick on a user's channel, which is not an event for clients.
    fn kick_frame(&self, msg: &redis::Msg) -> Option<(UserName, KickFrame)> {
        let Some(Topic::User(user)) = self.topic(msg.get_channel_name()) else {
            return None;
        };
        let frame: KickFrame = serde_json::from_slice(msg.get_payload_bytes()).ok()?;
        (frame.kind == KICK).then_some((user, frame))
    }

    /// Owns the subscriber connection: applies commands in order,
    /// reconnects with backoff, resubscribes and catches up.
    async fn subscriber(
        self: Arc<Self>,
        mut cmds: mpsc::UnboundedReceiver<SubCmd>,
        ready: oneshot::Sender<()>,
    ) {
        let mut ready = Some(ready);
        let mut channels: HashSet<String> = HashSet::new();
        let mut backoff = Duration::from_millis(100);
        let mut first = true;
        'connect: loop {
            if self.shutdown.is_cancelled() {
                return;
            }
            let pubsub = match tokio::time::timeout(COMMAND_TIMEOUT, self.client.get_async_pubsub())
                .await
            {
                Ok(Ok(pubsub)) => pubsub,
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".into(),
                    };
                    tracing::warn!(error = %why, retry_in = ?backoff, "broker subscriber cannot connect");
                    // Meanwhile, subscriptions fail fast and are kept
                    // for when the connection is back.
                    let wait = tokio::time::sleep(backoff);
                    tokio::pin!(wait);
                    loop {
                        tokio::select! {
                            _ = &mut wait => break,
                            _ = self.shutdown.cancelled() => return,
                            cmd = cmds.recv() => match cmd {
                                None => return,
                                Some(SubCmd::Sub(ch, reply)) => {
                                    channels.insert(ch);
                                    let _ = reply.send(Err(unavailable("broker reconnecting")));
                                }
                                Some(SubCmd::Unsub(ch)) => {
                                    channels.remove(&ch);
                                }
                            },
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue 'connect;
                }
            };
            let (mut sink, mut stream) = pubsub.split();
            if !channels.is_empty() {
                let all: Vec<&String> = channels.iter().collect();
                match tokio::time::timeout(COMMAND_TIMEOUT, sink.subscribe(all)).await {
                    Ok(Ok(())) => {}
                    _ => {
                        tracing::warn!("resubscribing failed; reconnecting");
                        tokio::time::sleep(backoff).await;
                        continue 'connect;
                    }
                }
            }
            backoff = Duration::from_millis(100);
            self.connected.store(true, Ordering::Release);
            if first {
                first = false;
            } else {
                let n = bump(&self.stats.reconnects);
                tracing::info!(
                    channels = channels.len(),
                    reconnects = n,
                    "broker subscriber reconnected and resubscribed; catching up from the store"
                );
                let orderer = self.orderer.clone();
                tokio::spawn(async move { orderer.catch_up_all().await });
                // Redis may have restarted empty: put this node's presence
                // back now rather than at the next heartbeat.
                let this = self.clone();
                tokio::spawn(async move {
                    if let Err(err) = this.heartbeat().await {
                        tracing::warn!(error = %err, "heartbeat after reconnect failed");
                    }
                });
            }
            if let Some(ready) = ready.take() {
                let _ = ready.send(());
            }
            let mut ping = tokio::time::interval(Duration::from_secs(3));
            ping.tick().await;
            loop {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    cmd = cmds.recv() => match cmd {
                        None => return,
                        Some(SubCmd::Sub(ch, reply)) => {
                            let done = tokio::time::timeout(COMMAND_TIMEOUT, sink.subscribe(&ch)).await;
                            channels.insert(ch);
                            match done {
                                Ok(Ok(())) => { let _ = reply.send(Ok(())); }
                                Ok(Err(e)) => { let _ = reply.send(Err(unavailable(e))); break; }
                                Err(_) => { let _ = reply.send(Err(unavailable("subscribe timed out"))); break; }
                            }
                        }
                        Some(SubCmd::Unsub(ch)) => {
                            channels.remove(&ch);
                            let done = tokio::time::timeout(COMMAND_TIMEOUT, sink.unsubscribe(&ch)).await;
                            if !matches!(done, Ok(Ok(()))) {
                                break;
                            }
                        }
                    },
                    msg = stream.next() => match msg {
                        Some(msg) => self.on_message(&msg),
                        None => break,
                    },
                    _ = ping.tick() => {
                        let pong = tokio::time::timeout(COMMAND_TIMEOUT, sink.ping::<redis::Value>()).await;
                        if !matches!(pong, Ok(Ok(_))) {
                            break;
                        }
                    }
                }
            }
            self.connected.store(false, Ordering::Release);
            tracing::warn!("broker subscriber connection lost; reconnecting");
            continue 'connect;
        }
    }

    /// Renews this node's heartbeat; if it had lapsed (first start, Redis
    /// restarted or lost its data, or this node was cut off long enough to
    /// be swept), writes this node's presence back.
    async fn heartbeat(&self) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let alive = format!("{}:alive:{}", self.prefix, self.node);
        let ttl_ms = self.ttl.as_millis() as u64;
        let was: Option<String> = redis::cmd("SET")
            .arg(&alive)
            .arg("1")
            .arg("PX")
            .arg(ttl_ms)
            .arg("GET")
            .query_async(&mut conn)
            .await?;
        if was.is_none() {
            self.restore().await?;
        }
        Ok(())
    }

    async fn restore(&self) -> anyhow::Result<()> {
        let mirror = self.mirror.lock().await;
        let mut call = self.scripts.restore.prepare_invoke();
        call.arg(&self.prefix)
            .arg(&self.node)
            .arg(self.ttl.as_millis() as u64);
        let mut entries = 0;
        for (room, users) in mirror.iter() {
            for (user, count) in users {
                call.arg(room.as_str()).arg(user.as_str()).arg(*count);
                entries += 1;
            }
        }
        let mut conn = self.conn.clone();
        let left: Vec<String> = call.invoke_async(&mut conn).await?;
        drop(mirror);
        tracing::info!(entries, "presence of this node written to the broker");
        self.announce_left(left).await;
        Ok(())
    }

    /// Publishes a `leave` for each (room, user) pair in `flat`.
    async fn announce_left(&self, flat: Vec<String>) {
        for pair in flat.chunks(2) {
            let (Ok(room), Ok(user)) = (RoomName::parse(&pair[0]), UserName::parse(&pair[1]))
            else {
                continue;
            };
            let topic = Topic::Room(room.clone());
            let event = Event::Presence {
                room,
                user,
                event: PresenceChange::Leave,
            };
            let _ = self.publish(&topic, Delivery::new(event)).await;
        }
    }

    /// Heartbeat every third of the TTL; then sweeps dead nodes.
    async fn heartbeats(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.ttl / 3);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(err) = self.heartbeat().await {
                tracing::warn!(error = %err, "broker heartbeat failed");
                continue;
            }
            if let Err(err) = self.sweep().await {
                tracing::warn!(error = %err, "sweeping dead nodes failed");
            }
        }
    }

    async fn sweep(&self) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let nodes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{}:nodes", self.prefix))
            .query_async(&mut conn)
            .await?;
        for id in nodes.iter().filter(|id| **id != self.node) {
            let alive: bool = redis::cmd("EXISTS")
                .arg(format!("{}:alive:{}", self.prefix, id))
                .query_async(&mut conn)
                .await?;
            if alive {
                continue;
            }
            let left: Vec<String> = self
                .scripts
                .sweep
                .prepare_invoke()
                .arg(&self.prefix)
                .arg(id)
                .invoke_async(&mut conn)
                .await?;
            let n = bump(&self.stats.nodes_swept);
            tracing::warn!(node = %id, departures = left.len() / 2, swept = n, "removed a dead node's presence");
            self.announce_left(left).await;
        }
        Ok(())
    }

    async fn publish(&self, topic: &Topic, delivery: Arc<Delivery>) -> Result<()> {
        let json = delivery
            .encoded(Encoding::Native)
            .expect("native encoding shows every event");
        let mut conn = self.conn.clone();
        let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
            .arg(self.channel(topic))
            .arg(json.as_str())
            .query_async(&mut conn)
            .await;
        match sent {
            Ok(_) => Ok(()),
            Err(err) => {
                // This node's own members still get it, in order; other
                // nodes catch up from the store when their link is back.
                let n = bump(&self.stats.publish_failed);
                tracing::warn!(error = %err, ?topic, failed = n, "publish failed; delivered locally");
                self.orderer.receive(topic, delivery);
                Err(unavailable(err))
            }
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, topic: &Topic, delivery: Arc<Delivery>) -> Result<()> {
        self.inner.publish(topic, delivery).await
    }

    fn subscribe(&self, topic: &Topic) -> BoxFuture<'static, Result<()>> {
        let (tx, rx) = oneshot::channel();
        self.inner.orderer.start(topic);
        let sent = self
            .inner
            .cmds
            .send(SubCmd::Sub(self.inner.channel(topic), tx));
        let orderer = self.inner.orderer.clone();
        let topic = topic.clone();
        async move {
            sent.map_err(|_| unavailable("broker closed"))?;
            rx.await.map_err(|_| unavailable("broker closed"))??;
            orderer.init(&topic).await;
            Ok(())
        }
        .boxed()
    }

    fn unsubscribe(&self, topic: &Topic) {
        self.inner.orderer.stop(topic);
        let _ = self
            .inner
            .cmds
            .send(SubCmd::Unsub(self.inner.channel(topic)));
    }

    async fn presence_add(&self, room: &RoomName, user: &UserName) -> Result<bool> {
        let i = &self.inner;
        let mut mirror = i.mirror.lock().await;
        let n = i.presence_script(&i.scripts.add, room, user).await?;
        *mirror
            .entry(room.clone())
            .or_default()
            .entry(user.clone())
            .or_default() += 1;
        Ok(n == 1)
    }

    async fn presence_remove(&self, room: &RoomName, user: &UserName) -> Result<bool> {
        let i = &self.inner;
        let mut mirror = i.mirror.lock().await;
        if let Some(users) = mirror.get_mut(room) {
            if let Some(count) = users.get_mut(user) {
                *count -= 1;
                if *count == 0 {
                    users.remove(user);
                }
            }
            if users.is_empty() {
                mirror.remove(room);
            }
        }
        // The mirror changed whatever Redis says: a failed removal is
        // repaired by the next restore.
        let gone = i.presence_script(&i.scripts.remove, room, user).await?;
        Ok(gone == 1)
    }

    async fn presence(&self, room: &RoomName) -> Result<Vec<UserName>> {
        let mut conn = self.inner.conn.clone();
        let names: Vec<String> = redis::cmd("HKEYS")
            .arg(format!("{}:members:{}", self.inner.prefix, room))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut users: Vec<UserName> = names
            .iter()
            .filter_map(|n| UserName::parse(n).ok())
            .collect();
        users.sort();
        Ok(users)
    }

    async fn presence_counts(&self, room: &RoomName) -> Result<Vec<(UserName, usize)>> {
        let mut conn = self.inner.conn.clone();
        // The cluster-wide counts: the sum over nodes, kept by the scripts.
        let counts: Vec<(String, i64)> = redis::cmd("HGETALL")
            .arg(format!("{}:members:{}", self.inner.prefix, room))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut users: Vec<(UserName, usize)> = counts
            .into_iter()
            .filter_map(|(name, n)| {
                let n = usize::try_from(n).ok().filter(|n| *n > 0)?;
                Some((UserName::parse(&name).ok()?, n))
            })
            .collect();
        users.sort();
        Ok(users)
    }

    async fn kick(&self, user: &UserName, close: Close) -> Result<()> {
        let frame = KickFrame {
            kind: KICK.to_owned(),
            node: self.inner.node.clone(),
            code: close.code,
            reason: close.reason.to_owned(),
        };
        let json = serde_json::to_string(&frame).map_err(unavailable)?;
        let mut conn = self.inner.conn.clone();
        let _: i64 = redis::cmd("PUBLISH")
            .arg(self.inner.channel(&Topic::User(user.clone())))
            .arg(json)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn rooms(&self) -> Result<Vec<RoomInfo>> {
        let mut conn = self.inner.conn.clone();
        let p = &self.inner.prefix;
        let names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{p}:rooms"))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut pipe = redis::pipe();
        for name in &names {
            pipe.cmd("HLEN").arg(format!("{p}:members:{name}"));
        }
        let counts: Vec<usize> = if names.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut conn).await.map_err(unavailable)?
        };
        let mut rooms: Vec<RoomInfo> = names
            .iter()
            .zip(counts)
            .filter(|(_, members)| *members > 0)
            .filter_map(|(name, members)| {
                Some(RoomInfo {
                    name: RoomName::parse(name).ok()?,
                    members,
                })
            })
            .collect();
        rooms.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(rooms)
    }

    async fn ping(&self) -> Result<()> {
        let mut conn = self.inner.conn.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if !self.inner.connected.load(Ordering::Acquire) {
            return Err(unavailable("subscriber connection is down"));
        }
        Ok(())
    }

    async fn close(&self) {
        let i = &self.inner;
        i.shutdown.cancel();
        // Sessions have left by now; withdraw whatever is left and the
        // heartbeat, so the others need not wait for the sweep.
        i.mirror.lock().await.clear();
        if let Err(err) = i.restore().await {
            tracing::warn!(error = %err, "could not withdraw presence");
        }
        let mut conn = i.conn.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(format!("{}:alive:{}", i.prefix, i.node))
            .ignore()
            .cmd("SREM")
            .arg(format!("{}:nodes", i.prefix))
            .arg(&i.node)
            .ignore();
        let _: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
    }
}

/// Per-room and per-user receive state.
#[derive(Default)]
struct Seq {
    /// Rooms: the next id to hand on. Users: one past the highest
    /// direct-message id handed on. `None`: not known yet.
    next: Option<i64>,
    /// Waiting for the subscription's starting point.
    starting: bool,
    /// Arrived early, waiting for the ids before them.
    held: BTreeMap<i64, Arc<Delivery>>,
    /// A fill task is running.
    filling: bool,
}

/// Hands received events to the hub in id order, filling gaps from the
/// store. See the module docs and `docs/cluster.md`.
struct Orderer {
    deliver: Arc<dyn Deliver>,
    store: Arc<dyn Store>,
    rooms: Mutex<HashMap<RoomName, Seq>>,
    users: Mutex<HashMap<UserName, Seq>>,
    stats: Stats,
}

/// The most early arrivals held per topic before they are handed on
/// regardless.
const MAX_HELD: usize = 10_000;

impl Orderer {
    /// A subscription to `topic` is being made: hold its messages until
    /// [`Orderer::init`] knows where it starts.
    fn start(&self, topic: &Topic) {
        match topic {
            Topic::Room(room) => {
                let mut rooms = self.rooms.lock();
                let seq = rooms.entry(room.clone()).or_default();
                if seq.next.is_none() {
                    seq.starting = true;
                }
            }
            Topic::User(user) => {
                self.users.lock().entry(user.clone()).or_default();
            }
        }
    }

    fn stop(&self, topic: &Topic) {
        match topic {
            Topic::Room(r) => self.rooms.lock().remove(r),
            Topic::User(u) => self.users.lock().remove(u),
        };
    }

    /// The subscription is live: a room starts after its newest stored
    /// message (older ones are in the joiners' history), or at the oldest
    /// held arrival if that is earlier.
    async fn init(self: &Arc<Self>, topic: &Topic) {
        let Topic::Room(room) = topic else {
            return;
        };
        let head = self
            .store
            .room_page(
                room,
                PageQuery {
                    limit: 1,
                    ..PageQuery::default()
                },
            )
            .await
            .map(|p| p.items.last().map_or(0, |m| m.id));
        let mut rooms = self.rooms.lock();
        let Some(seq) = rooms.get_mut(room) else {
            return;
        };
        if !seq.starting {
            return;
        }
        seq.starting = false;
        let held_min = seq.held.keys().next().copied();
        seq.next = match (head, held_min) {
            (Ok(head), Some(min)) => Some((head + 1).min(min)),
            (Ok(head), None) => Some(head + 1),
            (Err(_), min) => min,
        };
        self.release(room, seq);
    }

    fn receive(self: &Arc<Self>, topic: &Topic, delivery: Arc<Delivery>) {
        match (topic, &delivery.event) {
            (Topic::Room(room), Event::Message(m)) if m.room == *room => {
                let id = m.id;
                self.receive_room(room, id, delivery)
            }
            (Topic::User(user), Event::Dm(d)) => {
                let id = d.id;
                self.receive_dm(user, id, delivery)
            }
            _ => self.deliver.deliver(topic, &delivery),
        }
    }

    fn receive_room(self: &Arc<Self>, room: &RoomName, id: i64, delivery: Arc<Delivery>) {
        let mut rooms = self.rooms.lock();
        let Some(seq) = rooms.get_mut(room) else {
            // Not subscribed here (any more): no local member to miss it.
            return self.deliver.deliver(&Topic::Room(room.clone()), &delivery);
        };
        match seq.next {
            None if !seq.starting => {
                seq.next = Some(id + 1);
                self.deliver.deliver(&Topic::Room(room.clone()), &delivery);
            }
            Some(next) if id < next => {}
            Some(next) if id == next => {
                seq.next = Some(id + 1);
                self.deliver.deliver(&Topic::Room(room.clone()), &delivery);
                self.release(room, seq);
            }
            _ => {
                seq.held.insert(id, delivery);
                self.release(room, seq);
            }
        }
    }

    /// Hands on what is contiguous; starts a fill for what is not.
    fn release(self: &Arc<Self>, room: &RoomName, seq: &mut Seq) {
        let topic = Topic::Room(room.clone());
        while let Some(next) = seq.next {
            let Some(delivery) = seq.held.remove(&next) else {
                break;
            };
            self.deliver.deliver(&topic, &delivery);
            seq.next = Some(next + 1);
        }
        if let Some(next) = seq.next {
            while seq.held.first_key_value().is_some_and(|(id, _)| *id < next) {
                seq.held.pop_first();
            }
        }
        if seq.held.len() > MAX_HELD {
            self.skip_gap(room, seq);
        }
        if !seq.held.is_empty() && !seq.filling && seq.next.is_some() {
            seq.filling = true;
            let this = self.clone();
            let room = room.clone();
            tokio::spawn(async move { this.fill_room(room).await });
        }
    }

    /// Gives up on the missing ids before the first held one.
    fn skip_gap(self: &Arc<Self>, room: &RoomName, seq: &mut Seq) {
        if let Some((first, _)) = seq.held.first_key_value() {
            let n = bump(&self.stats.gaps_skipped);
            tracing::warn!(%room, from = ?seq.next, to = first, skipped = n,
                "gap not filled; clients resume it from history");
            seq.next = Some(*first);
            let topic = Topic::Room(room.clone());
            while let Some(next) = seq.next {
                let Some(delivery) = seq.held.remove(&next) else {
                    break;
                };
                self.deliver.deliver(&topic, &delivery);
                seq.next = Some(next + 1);
            }
        }
    }

    /// Fetches a room's missing ids from the store (where they must be:
    /// an id is committed before the next is handed out).
    async fn fill_room(self: Arc<Self>, room: RoomName) {
        tokio::time::sleep(GAP_GRACE).await;
        let mut failures = 0;
        loop {
            let want = {
                let mut rooms = self.rooms.lock();
                let Some(seq) = rooms.get_mut(&room) else {
                    return;
                };
                match (seq.next, seq.held.first_key_value()) {
                    (Some(next), Some((first, _))) => (next, *first),
                    _ => {
                        seq.filling = false;
                        return;
                    }
                }
            };
            let (next, first) = want;
            let limit = u32::try_from(first - next)
                .unwrap_or(FILL_PAGE)
                .clamp(1, FILL_PAGE);
            let page = self
                .store
                .room_page(
                    &room,
                    PageQuery {
                        after: Some(next - 1),
                        limit,
                        ..PageQuery::default()
                    },
                )
                .await;
            let retry = {
                let mut rooms = self.rooms.lock();
                let Some(seq) = rooms.get_mut(&room) else {
                    return;
                };
                match page {
                    Ok(page) => {
                        let topic = Topic::Room(room.clone());
                        let mut filled = 0;
                        for m in page.items {
                            if Some(m.id) == seq.next {
                                seq.next = Some(m.id + 1);
                                self.deliver
                                    .deliver(&topic, &Delivery::new(Event::Message(m)));
                                filled += 1;
                            }
                        }
                        if filled > 0 {
                            bump(&self.stats.gaps_filled);
                            seq.filling = false;
                            self.release(&room, seq);
                            false
                        } else {
                            failures += 1;
                            tracing::warn!(%room, "gap not in the store yet");
                            failures < 3 || {
                                self.skip_gap(&room, seq);
                                seq.filling = false;
                                self.release(&room, seq);
                                false
                            }
                        }
                    }
                    Err(err) => {
                        failures += 1;
                        tracing::warn!(error = %err, %room, "gap fill failed");
                        if failures >= 3 {
                            self.skip_gap(&room, seq);
                            seq.filling = false;
                            self.release(&room, seq);
                            false
                        } else {
                            true
                        }
                    }
                }
            };
            if !retry {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A direct message: handed on in id order with any the store has
    /// between the last one handed on and it (DMs commit in id order, so
    /// those are all there).
    fn receive_dm(self: &Arc<Self>, user: &UserName, id: i64, delivery: Arc<Delivery>) {
        let mut users = self.users.lock();
        let Some(seq) = users.get_mut(user) else {
            return self.deliver.deliver(&Topic::User(user.clone()), &delivery);
        };
        match seq.next {
            None => {
                seq.next = Some(id + 1);
                self.deliver.deliver(&Topic::User(user.clone()), &delivery);
            }
            Some(next) if id < next => {}
            Some(_) => {
                seq.held.insert(id, delivery);
                if !seq.filling {
                    seq.filling = true;
                    let this = self.clone();
                    let user = user.clone();
                    tokio::spawn(async move { this.fill_user(user).await });
                }
            }
        }
    }

    async fn fill_user(self: Arc<Self>, user: UserName) {
        loop {
            let Some(next) = self.users.lock().get(&user).and_then(|s| s.next) else {
                return;
            };
            let page = self.store.dms_since(&user, next - 1, FILL_PAGE).await;
            let mut users = self.users.lock();
            let Some(seq) = users.get_mut(&user) else {
                return;
            };
            let topic = Topic::User(user.clone());
            let upto = seq.held.keys().next_back().copied().unwrap_or(0);
            let mut all: BTreeMap<i64, Arc<Delivery>> = std::mem::take(&mut seq.held);
            match page {
                Ok(page) => {
                    for d in page.items {
                        all.entry(d.id)
                            .or_insert_with(|| Delivery::new(Event::Dm(d)));
                    }
                }
                Err(err) => tracing::warn!(error = %err, %user, "direct-message check failed"),
            }
            // Everything up to the newest held one is known now.
            let mut later = all.split_off(&(upto + 1));
            for (id, delivery) in all {
                if seq.next.is_some_and(|n| id >= n) {
                    self.deliver.deliver(&topic, &delivery);
                    seq.next = Some(id + 1);
                }
            }
            // Fetched beyond it: committed, so also safe to hand on, but
            // anything that arrived meanwhile needs another look.
            if seq.held.is_empty() {
                for (id, delivery) in std::mem::take(&mut later) {
                    if seq.next.is_some_and(|n| id >= n) {
                        self.deliver.deliver(&topic, &delivery);
                        seq.next = Some(id + 1);
                    }
                }
            }
            seq.held.append(&mut later);
            if let Some(next) = seq.next {
                seq.held.retain(|id, _| *id >= next);
            }
            if seq.held.is_empty() {
                seq.filling = false;
                return;
            }
        }
    }

    /// After the subscriber reconnects: everything stored since what each
    /// topic last handed on.
    async fn catch_up_all(self: Arc<Self>) {
        let rooms: Vec<(RoomName, i64)> = self
            .rooms
            .lock()
            .iter()
            .filter_map(|(r, s)| Some((r.clone(), s.next?)))
            .collect();
        for (room, mut next) in rooms {
            loop {
                let page = self
                    .store
                    .room_page(
                        &room,
                        PageQuery {
                            after: Some(next - 1),
                            limit: FILL_PAGE,
                            ..PageQuery::default()
                        },
                    )
                    .await;
                let Ok(page) = page else {
                    tracing::warn!(%room, "catch-up failed; clients resume from history");
                    break;
                };
                let more = page.more;
                for m in page.items {
                    next = next.max(m.id + 1);
                    let id = m.id;
                    self.receive_room(&room, id, Delivery::new(Event::Message(m)));
                }
                if !more {
                    break;
                }
            }
        }
        let users: Vec<(UserName, i64)> = self
            .users
            .lock()
            .iter()
            .filter_map(|(u, s)| Some((u.clone(), s.next?)))
            .collect();
        for (user, next) in users {
            let Ok(page) = self.store.dms_since(&user, next - 1, FILL_PAGE).await else {
                continue;
            };
            let mut users = self.users.lock();
            let Some(seq) = users.get_mut(&user) else {
                continue;
            };
            let topic = Topic::User(user.clone());
            for d in page.items {
                if seq.next.is_some_and(|n| d.id >= n) && !seq.filling {
                    seq.next = Some(d.id + 1);
                    self.deliver.deliver(&topic, &Delivery::new(Event::Dm(d)));
                }
            }
        }
    }
}
