//! The broker: fan-out across nodes, and presence. A node publishes every
//! event through its broker and receives, through [`Deliver`], the events
//! of the topics it is subscribed to (its own included).
//!
//! * [`memory`]: one process; publish is a direct call into the hub.
//! * [`redis`]: a cluster of nodes sharing a Redis (`docs/cluster.md`).
//!
//! Contract, which every implementation keeps:
//! * `publish` delivers to every node subscribed to the topic at that
//!   moment, at most once, in publish order per publisher.
//! * `subscribe`/`unsubscribe` are called, in membership order, when a
//!   topic gets its first local connection and loses its last. They do not
//!   block: `subscribe` returns a future that resolves once the
//!   subscription is live, so a joiner can fetch history after it and
//!   miss nothing.
//! * presence counts connections per (room, user) across all nodes;
//!   `presence_add` says whether the user just arrived (its first
//!   connection anywhere), `presence_remove` whether it just left.

pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::BoxFuture;

use crate::outbox::Delivery;
use crate::protocol::codes::Close;
use crate::protocol::native::RoomInfo;
use crate::protocol::{RoomName, Topic, UserName};

/// A broker failure: the cluster engine cannot be reached.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// Unreachable or refusing.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// Result alias for broker calls.
pub type Result<T> = std::result::Result<T, BrokerError>;

/// Where a broker hands the events it receives for this node.
pub trait Deliver: Send + Sync + 'static {
    /// Delivers `delivery` to this node's connections of `topic`.
    fn deliver(&self, topic: &Topic, delivery: &Arc<Delivery>);
    /// Closes this node's connections of `user` with `close`: a kick
    /// another node received.
    fn kick(&self, user: &UserName, close: Close);
}

/// Cross-node fan-out and presence.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Sends `delivery` to every node subscribed to `topic`.
    async fn publish(&self, topic: &Topic, delivery: Arc<Delivery>) -> Result<()>;
    /// Starts receiving `topic`; the future resolves once that is live.
    fn subscribe(&self, topic: &Topic) -> BoxFuture<'static, Result<()>>;
    /// Stops receiving `topic`.
    fn unsubscribe(&self, topic: &Topic);
    /// Counts one more connection of `user` in `room`; true if it is the
    /// user's first there, cluster-wide.
    async fn presence_add(&self, room: &RoomName, user: &UserName) -> Result<bool>;
    /// Counts one connection fewer; true if it was the user's last there.
    async fn presence_remove(&self, room: &RoomName, user: &UserName) -> Result<bool>;
    /// The users in `room`, by name.
    async fn presence(&self, room: &RoomName) -> Result<Vec<UserName>>;
    /// The users in `room`, by name, each with its number of connections
    /// there, cluster-wide.
    async fn presence_counts(&self, room: &RoomName) -> Result<Vec<(UserName, usize)>>;
    /// Has every other node close its connections of `user` with `close`
    /// (the caller closes this node's). Best effort, like `publish`: only
    /// nodes with a connection of `user` at that moment act on it.
    async fn kick(&self, user: &UserName, close: Close) -> Result<()>;
    /// The rooms with users in them, by name, with how many.
    async fn rooms(&self) -> Result<Vec<RoomInfo>>;
    /// Checks that the broker answers.
    async fn ping(&self) -> Result<()>;
    /// Releases connections and withdraws this node's presence.
    async fn close(&self);
}

/// Opens a single-node broker a URL names: `memory`.
pub async fn open(url: &str, deliver: Arc<dyn Deliver>) -> anyhow::Result<Arc<dyn Broker>> {
    match url {
        "memory" | "memory://" => Ok(Arc::new(memory::MemoryBroker::new(deliver))),
        other => anyhow::bail!("unsupported broker URL `{}`", crate::store::redact(other)),
    }
}

/// Opens the broker `settings.broker` names: `memory`, or
/// `redis://HOST:PORT/` for a cluster, whose receivers fill gaps from
/// `store`.
pub async fn connect(
    settings: &crate::config::Settings,
    deliver: Arc<dyn Deliver>,
    store: Arc<dyn crate::store::Store>,
) -> anyhow::Result<Arc<dyn Broker>> {
    let url = settings.broker.as_str();
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        Ok(Arc::new(
            self::redis::RedisBroker::open(settings, deliver, store).await?,
        ))
    } else {
        open(url, deliver).await
    }
}
