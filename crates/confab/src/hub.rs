//! The hub: which local connections are open, which are in which room and
//! belong to which user, and local fan-out. It never talks to another node
//! or the store: the broker hands it what arrives, the node tells it who
//! joins.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::outbox::{Delivery, Outbox, Pushed};
use crate::protocol::codes::Close;
use crate::protocol::{RoomName, Topic, UserName};

/// A connection's number on this node.
pub type ConnId = u64;

type Members = HashMap<ConnId, Outbox>;

/// Local registry and fan-out.
///
/// The state sits behind one `parking_lot::RwLock`: fan-out takes it for
/// reading and only does `try_send`s, which never wait, so the lock is
/// never held across an await or a slow client.
#[derive(Debug, Default)]
pub struct Hub {
    state: RwLock<State>,
    /// Every open connection, so that shutdown reaches each through its own
    /// outbox. Apart from `state`: it changes only as connections open and
    /// end, never during fan-out.
    open: Mutex<Open>,
    next_conn: AtomicU64,
}

/// Into how many groups the open connections are divided, by number, for
/// the heartbeat: each period, one group after another hears it
/// ([`Hub::beat`]), so that pings do not all go at once.
pub const BEAT_GROUPS: u64 = 16;

#[derive(Debug, Default)]
struct Open {
    /// By connection number modulo [`BEAT_GROUPS`].
    groups: [HashMap<ConnId, Outbox>; BEAT_GROUPS as usize],
    /// Set once the node is closing: connections opened after it are
    /// closed at once, for the same reason.
    closing: Option<Close>,
}

#[derive(Debug, Default)]
struct State {
    rooms: HashMap<RoomName, Members>,
    users: HashMap<UserName, Members>,
}

/// Counts of one fan-out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    /// Queued for a connection, or written to it at once.
    pub queued: usize,
    /// Dropped because a connection's queue was full (it is closed).
    pub overflowed: usize,
    /// Dropped because the connection had already ended.
    pub gone: usize,
}

impl Hub {
    /// A hub whose connection numbers start above `base`, so that guest
    /// names (`guest-<n>`) made on different nodes of a cluster differ.
    pub fn starting_at(base: u64) -> Hub {
        Hub {
            next_conn: AtomicU64::new(base),
            ..Hub::default()
        }
    }

    /// A new connection number.
    pub fn next_conn(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers an open connection. If the node is already closing, the
    /// connection is told to close at once.
    ///
    /// Shutdown is pushed through each connection's outbox ([`Hub::close_all`])
    /// rather than watched by each connection: a shared cancellation future
    /// polled on every wake-up of every connection takes a node-wide lock
    /// each time.
    pub fn open(&self, conn: ConnId, outbox: &Outbox) {
        let mut open = self.open.lock();
        match open.closing {
            Some(close) => outbox.kill(close),
            None => {
                open.group(conn).insert(conn, outbox.clone());
            }
        }
    }

    /// Forgets a connection that has ended.
    pub fn ended(&self, conn: ConnId) {
        self.open.lock().group(conn).remove(&conn);
    }

    /// Closes every open connection with `close`, and every one opened from
    /// now on; returns how many were open.
    pub fn close_all(&self, close: Close) -> usize {
        let mut open = self.open.lock();
        let close = *open.closing.get_or_insert(close);
        let all = || open.groups.iter().flat_map(HashMap::values);
        all().for_each(|o| o.kill(close));
        all().count()
    }

    /// Tells each open connection of `group` (below [`BEAT_GROUPS`]) that a
    /// heartbeat period has passed; returns how many.
    pub fn beat(&self, group: u64) -> usize {
        let mut open = self.open.lock();
        let group = open.group(group);
        group.values().for_each(Outbox::beat);
        group.len()
    }

    /// Adds a connection to a topic. `on_first` runs, under the lock, when
    /// it is the topic's first local connection: the node subscribes there,
    /// so subscriptions are issued in the order membership changes.
    pub fn add<R>(
        &self,
        topic: &Topic,
        conn: ConnId,
        outbox: Outbox,
        on_first: impl FnOnce() -> R,
    ) -> Option<R> {
        let mut state = self.state.write();
        let members = state.map_mut(topic);
        let first = members.is_empty();
        members.insert(conn, outbox);
        first.then(on_first)
    }

    /// Removes a connection from a topic. `on_last` runs, under the lock,
    /// when no local connection is left in it. Returns whether the
    /// connection was there.
    pub fn remove(&self, topic: &Topic, conn: ConnId, on_last: impl FnOnce()) -> bool {
        let mut state = self.state.write();
        let (was, emptied) = match topic {
            Topic::Room(r) => remove_member(&mut state.rooms, r, conn),
            Topic::User(u) => remove_member(&mut state.users, u, conn),
        };
        if emptied {
            on_last();
        }
        was
    }

    /// Queues `delivery` for every local connection of `topic`.
    pub fn deliver(&self, topic: &Topic, delivery: &Arc<Delivery>) -> Fanout {
        let state = self.state.read();
        let members = match topic {
            Topic::Room(r) => state.rooms.get(r),
            Topic::User(u) => state.users.get(u),
        };
        let mut fanout = Fanout::default();
        for outbox in members.into_iter().flat_map(|m| m.values()) {
            match outbox.push(delivery.clone()) {
                Pushed::Queued | Pushed::Written => fanout.queued += 1,
                Pushed::Overflow => fanout.overflowed += 1,
                Pushed::Gone => fanout.gone += 1,
                Pushed::Skipped => {}
            }
        }
        fanout
    }

    /// Closes every local connection of `user` with `close`; returns how
    /// many.
    pub fn kill_user(&self, user: &UserName, close: Close) -> usize {
        let state = self.state.read();
        let members = state.users.get(user);
        members
            .iter()
            .flat_map(|m| m.values())
            .for_each(|o| o.kill(close));
        members.map_or(0, HashMap::len)
    }

    /// How many local connections `topic` has.
    pub fn local_count(&self, topic: &Topic) -> usize {
        let state = self.state.read();
        match topic {
            Topic::Room(r) => state.rooms.get(r).map_or(0, HashMap::len),
            Topic::User(u) => state.users.get(u).map_or(0, HashMap::len),
        }
    }

    /// How many rooms and how many users have a local connection.
    pub fn sizes(&self) -> (usize, usize) {
        let state = self.state.read();
        (state.rooms.len(), state.users.len())
    }

    /// Every room and user with a local connection (what this node must
    /// be subscribed to).
    pub fn topics(&self) -> Vec<Topic> {
        let state = self.state.read();
        state
            .rooms
            .keys()
            .cloned()
            .map(Topic::Room)
            .chain(state.users.keys().cloned().map(Topic::User))
            .collect()
    }
}

impl Open {
    fn group(&mut self, conn: ConnId) -> &mut HashMap<ConnId, Outbox> {
        &mut self.groups[(conn % BEAT_GROUPS) as usize]
    }
}

impl State {
    fn map_mut(&mut self, topic: &Topic) -> &mut Members {
        match topic {
            Topic::Room(r) => self.rooms.entry(r.clone()).or_default(),
            Topic::User(u) => self.users.entry(u.clone()).or_default(),
        }
    }
}

/// Removes `conn` from `key`'s members, dropping the entry once empty.
/// Returns (it was there, it was the last).
fn remove_member<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Members>,
    key: &K,
    conn: ConnId,
) -> (bool, bool) {
    let Some(members) = map.get_mut(key) else {
        return (false, false);
    };
    let was = members.remove(&conn).is_some();
    let empty = members.is_empty();
    if empty {
        map.remove(key);
    }
    (was, was && empty)
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;
    use crate::outbox::Next;

    #[tokio::test]
    async fn a_heartbeat_reaches_the_open_connections_of_its_group_once() {
        let hub = Hub::default();
        let (first, mut first_rx) = Outbox::new(4);
        let (second, mut second_rx) = Outbox::new(4);
        let (third, mut third_rx) = Outbox::new(4);
        hub.open(1, &first);
        hub.open(2, &second);
        hub.open(1 + BEAT_GROUPS, &third);
        hub.ended(1 + BEAT_GROUPS);

        assert_eq!(hub.beat(1), 1);
        assert_eq!(hub.beat(1), 1);
        assert!(matches!(first_rx.next().await, Next::Beat));
        // Two ticks before the connection looked count as one; the other
        // group's turn has not come yet, and an ended connection hears none.
        assert!(first_rx.next().now_or_never().is_none());
        assert!(second_rx.next().now_or_never().is_none());
        assert!(third_rx.next().now_or_never().is_none());
        assert_eq!(hub.beat(2), 1);
        assert!(matches!(second_rx.next().await, Next::Beat));
    }

    #[tokio::test]
    async fn closing_all_reaches_open_connections_and_later_ones_but_not_ended_ones() {
        let hub = Hub::default();
        let (early, mut early_rx) = Outbox::new(4);
        let (gone, _gone_rx) = Outbox::new(4);
        hub.open(1, &early);
        hub.open(2, &gone);
        hub.ended(2);

        assert_eq!(hub.close_all(Close::SHUTDOWN), 1);
        let (late, mut late_rx) = Outbox::new(4);
        hub.open(3, &late);

        assert!(matches!(early_rx.next().await, Next::Close(c) if c == Close::SHUTDOWN));
        assert!(matches!(late_rx.next().await, Next::Close(c) if c == Close::SHUTDOWN));
        // A second reason does not replace the first, for later ones either.
        assert_eq!(hub.close_all(Close::INTERNAL), 1);
        let (later, mut later_rx) = Outbox::new(4);
        hub.open(4, &later);
        assert!(matches!(early_rx.next().await, Next::Close(c) if c == Close::SHUTDOWN));
        assert!(matches!(later_rx.next().await, Next::Close(c) if c == Close::SHUTDOWN));
    }
}
