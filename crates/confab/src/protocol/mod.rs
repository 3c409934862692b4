//! The wire: what travels between clients, nodes and the store.
//!
//! * [`names`]: validated room and user names.
//! * [`Event`]: what happens in a room or to a user. Its JSON form is both
//!   the native protocol's event frame and what the broker carries between
//!   nodes, so an event is encoded once.
//! * [`native`]: the native protocol's client frames and replies
//!   (`docs/protocol.md`).
//! * [`seed`]: the tutorial protocols' encodings.
//! * [`codes`]: error codes and close codes.

pub mod codes;
pub mod names;
pub mod native;
pub mod seed;

use serde::{Deserialize, Serialize};

pub use names::{RoomName, UserName};

/// The native protocol's version, sent in `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// A message in a room, as stored and as delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMessage {
    /// The room it was sent to.
    pub room: RoomName,
    /// Its id: unique in the room, increasing in delivery order.
    pub id: i64,
    /// Who sent it.
    pub from: UserName,
    /// The text.
    pub body: String,
    /// When the server stored it, in milliseconds since the Unix epoch.
    pub ts: i64,
    /// The id the sending client gave its `send` command, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// A direct message between two users, as stored and as delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectMessage {
    /// Its id: unique on the server, increasing in delivery order.
    pub id: i64,
    /// Who sent it.
    pub from: UserName,
    /// Who it is for.
    pub to: UserName,
    /// The text.
    pub body: String,
    /// When the server stored it, in milliseconds since the Unix epoch.
    pub ts: i64,
    /// The id the sending client gave its `dm` command, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// Whether a presence event is an arrival or a departure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceChange {
    /// The user's first connection joined the room.
    Join,
    /// The user's last connection left the room.
    Leave,
}

/// Something that happened, delivered to the members of a room or to the
/// connections of a user. Serialized, it is the native event frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A room message.
    Message(RoomMessage),
    /// A direct message.
    Dm(DirectMessage),
    /// A user arrived in or left a room.
    Presence {
        /// The room.
        room: RoomName,
        /// The user.
        user: UserName,
        /// Arrival or departure.
        event: PresenceChange,
    },
    /// A user started or stopped typing, in a room or to one user.
    Typing {
        /// The room, for room typing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<RoomName>,
        /// The recipient, for direct-message typing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<UserName>,
        /// Who is typing.
        from: UserName,
        /// Whether they are typing now.
        active: bool,
    },
}

/// Where an event goes: every member of a room, or every connection of a
/// user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// The members of a room.
    Room(RoomName),
    /// The connections of a user.
    User(UserName),
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
