//! What the API sends and takes. These mirror the wire types of
//! `protocol` but are the API's own, so the API's contract (and its
//! OpenAPI document) changes only when this file does.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::protocol::{DirectMessage, RoomMessage};

/// The `pattern` of every room name in the OpenAPI document (the
/// attributes need literals; a test checks they match). A room or user
/// name: 1 to 64 characters, no control characters or
/// slashes, no white space at either end. (User names `chat` and `echo`
/// are reserved.) `(?![\s\S])` ends it: unlike `$`, it means the end of
/// the string in every regex dialect (Python's `$` also matches before a
/// final newline).
pub const NAME_PATTERN: &str =
    r"^[^\s/\x00-\x1f\x7f-\x9f](?:[^/\x00-\x1f\x7f-\x9f]{0,62}[^\s/\x00-\x1f\x7f-\x9f])?(?![\s\S])";

/// A user name: a [`NAME_PATTERN`] other than `chat` and `echo`.
pub const USER_PATTERN: &str = r"^(?!(?:chat|echo)(?![\s\S]))[^\s/\x00-\x1f\x7f-\x9f](?:[^/\x00-\x1f\x7f-\x9f]{0,62}[^\s/\x00-\x1f\x7f-\x9f])?(?![\s\S])";

/// A message in a room, as stored and as delivered over WebSocket.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = RoomMessage)]
pub struct ApiRoomMessage {
    /// The room.
    pub room: String,
    /// Unique in the room, increasing in delivery order.
    pub id: i64,
    /// The sender.
    pub from: String,
    /// The text.
    pub body: String,
    /// When the server stored it, in milliseconds since the Unix epoch.
    pub ts: i64,
    /// The id the sending client gave it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

impl From<RoomMessage> for ApiRoomMessage {
    fn from(m: RoomMessage) -> Self {
        Self {
            room: m.room.to_string(),
            id: m.id,
            from: m.from.to_string(),
            body: m.body,
            ts: m.ts,
            client_id: m.client_id,
        }
    }
}

/// A direct message, as stored and as delivered over WebSocket.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = DirectMessage)]
pub struct ApiDirectMessage {
    /// Unique on the server, increasing in delivery order.
    pub id: i64,
    /// The sender.
    pub from: String,
    /// The recipient.
    pub to: String,
    /// The text.
    pub body: String,
    /// When the server stored it, in milliseconds since the Unix epoch.
    pub ts: i64,
    /// The id the sending client gave it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

impl From<DirectMessage> for ApiDirectMessage {
    fn from(d: DirectMessage) -> Self {
        Self {
            id: d.id,
            from: d.from.to_string(),
            to: d.to.to_string(),
            body: d.body,
            ts: d.ts,
            client_id: d.client_id,
        }
    }
}

/// A room: who is in it and its latest message.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RoomSummary {
    /// The room's name.
    pub name: String,
    /// Distinct users connected to it now.
    pub users_online: usize,
    /// The id of its latest message; null if it has none.
    pub last_message_id: Option<i64>,
    /// When its latest message was stored (ms since the Unix epoch); null
    /// if it has none.
    pub last_message_ts: Option<i64>,
}

/// A page of rooms, by name.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RoomList {
    /// Rooms with history or users, sorted by name.
    pub rooms: Vec<RoomSummary>,
    /// Pass as `after` for the next page; null on the last page.
    pub next: Option<String>,
}

/// Paging of the room list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RoomsQuery {
    /// Only rooms whose names sort after this one (the `next` of the
    /// previous page).
    #[param(min_length = 1, max_length = 64)]
    pub after: Option<String>,
    /// At most this many rooms (1 to 1000; default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// Which page of a room's history. Without `before` or `after`, the
/// newest messages.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only messages with ids below this one (the newest of them).
    #[param(minimum = 1)]
    pub before: Option<i64>,
    /// Only messages with ids above this one (the oldest of them).
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// At most this many messages (1 to 500; default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

/// A page of a room's history, oldest first: the messages a WebSocket
/// client's `history` or `join` would get.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MessagePage {
    /// The room.
    pub room: String,
    /// The messages, oldest first.
    pub messages: Vec<ApiRoomMessage>,
    /// Whether more lie beyond this page in the direction asked.
    pub more: bool,
}

/// One user in a room.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PresentUser {
    /// The user.
    pub user: String,
    /// How many of the user's connections are in the room.
    pub connections: usize,
}

/// Who is in a room now.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Presence {
    /// The room.
    pub room: String,
    /// Its users, by name.
    pub users: Vec<PresentUser>,
}

/// A message to publish.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    /// Who it is from, as clients will see it: any valid user name (it
    /// need not have connected).
    #[schema(
        pattern = r"^(?!(?:chat|echo)(?![\s\S]))[^\s/\x00-\x1f\x7f-\x9f](?:[^/\x00-\x1f\x7f-\x9f]{0,62}[^\s/\x00-\x1f\x7f-\x9f])?(?![\s\S])"
    )]
    pub from: String,
    /// The text, at most `max_message_bytes` bytes of UTF-8 (16 KiB by
    /// default); longer gets 413.
    pub body: String,
}

/// Why a user is disconnected.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisconnectRequest {
    /// The reason the clients see in the close frame (at most 120
    /// characters, no control characters; cut to the 123 bytes a close
    /// frame holds); default "disconnected by the server".
    #[schema(max_length = 120, pattern = r"^[^\x00-\x1f\x7f-\x9f]*(?![\s\S])")]
    pub reason: Option<String>,
}

/// What a disconnect did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Disconnected {
    /// The user.
    pub user: String,
    /// How many of its connections on this node were closed (code 4000).
    pub connections: usize,
}

/// A connection token to mint.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The user the token names (its `sub`).
    #[schema(
        pattern = r"^(?!(?:chat|echo)(?![\s\S]))[^\s/\x00-\x1f\x7f-\x9f](?:[^/\x00-\x1f\x7f-\x9f]{0,62}[^\s/\x00-\x1f\x7f-\x9f])?(?![\s\S])"
    )]
    pub user: String,
    /// Seconds it stays valid (1 to 31536000; default 3600).
    #[schema(minimum = 1, maximum = 31_536_000)]
    #[serde(default, deserialize_with = "whole_number")]
    pub ttl_seconds: Option<i64>,
}

/// A minted connection token: pass it in the WebSocket `hello`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Token {
    /// The HS256 token.
    pub token: String,
    /// The user it names.
    pub user: String,
    /// When it expires, in seconds since the Unix epoch.
    pub expires_at: u64,
}

/// An optional integer that JSON may write as `3600` or `3600.0` (JSON
/// Schema counts both as integers).
fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    let n: Option<serde_json::Number> = Option::deserialize(d)?;
    let Some(n) = n else { return Ok(None) };
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
        _ => Err(serde::de::Error::custom(format!(
            "expected a whole number, not {n}"
        ))),
    }
}
