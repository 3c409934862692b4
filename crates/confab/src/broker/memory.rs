//! The in-process broker: one node, so publishing is handing the event to
//! the hub, and presence is a counted map.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use parking_lot::Mutex;

use super::{Broker, Deliver, Result};
use crate::outbox::Delivery;
use crate::protocol::codes::Close;
use crate::protocol::native::RoomInfo;
use crate::protocol::{RoomName, Topic, UserName};

/// Fan-out and presence within this process.
pub struct MemoryBroker {
    deliver: Arc<dyn Deliver>,
    /// Connections per user per room. Sorted so member lists come out in
    /// a stable order.
    presence: Mutex<HashMap<RoomName, BTreeMap<UserName, usize>>>,
}

impl MemoryBroker {
    /// A broker that hands every event to `deliver`.
    pub fn new(deliver: Arc<dyn Deliver>) -> Self {
        Self {
            deliver,
            presence: Mutex::default(),
        }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, topic: &Topic, delivery: Arc<Delivery>) -> Result<()> {
        self.deliver.deliver(topic, &delivery);
        Ok(())
    }

    fn subscribe(&self, _topic: &Topic) -> BoxFuture<'static, Result<()>> {
        async { Ok(()) }.boxed()
    }

    fn unsubscribe(&self, _topic: &Topic) {}

    async fn presence_add(&self, room: &RoomName, user: &UserName) -> Result<bool> {
        let mut presence = self.presence.lock();
        let count = presence
            .entry(room.clone())
            .or_default()
            .entry(user.clone())
            .or_default();
        *count += 1;
        Ok(*count == 1)
    }

    async fn presence_remove(&self, room: &RoomName, user: &UserName) -> Result<bool> {
        let mut presence = self.presence.lock();
        let Some(users) = presence.get_mut(room) else {
            return Ok(false);
        };
        let Some(count) = users.get_mut(user) else {
            return Ok(false);
        };
        *count -= 1;
        let gone = *count == 0;
        if gone {
            users.remove(user);
            if users.is_empty() {
                presence.remove(room);
            }
        }
        Ok(gone)
    }

    async fn presence(&self, room: &RoomName) -> Result<Vec<UserName>> {
        let presence = self.presence.lock();
        Ok(presence
            .get(room)
            .map(|users| users.keys().cloned().collect())
            .unwrap_or_default())
    }

    async fn presence_counts(&self, room: &RoomName) -> Result<Vec<(UserName, usize)>> {
        let presence = self.presence.lock();
        Ok(presence
            .get(room)
            .map(|users| users.iter().map(|(u, n)| (u.clone(), *n)).collect())
            .unwrap_or_default())
    }

    async fn kick(&self, _user: &UserName, _close: Close) -> Result<()> {
        // One node: the caller has closed every connection already.
        Ok(())
    }

    async fn rooms(&self) -> Result<Vec<RoomInfo>> {
        let presence = self.presence.lock();
        let mut rooms: Vec<RoomInfo> = presence
            .iter()
            .map(|(name, users)| RoomInfo {
                name: name.clone(),
                members: users.len(),
            })
            .collect();
        rooms.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(rooms)
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    async fn close(&self) {}
}
