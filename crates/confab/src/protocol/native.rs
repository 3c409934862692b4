//! The native protocol (`/socket`): JSON text frames with a `type` field.
//! `docs/protocol.md` is the reference; this file is its source of truth.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::codes::ErrorCode;
use super::names::{RoomName, UserName};
use super::{DirectMessage, RoomMessage};

/// A command from a client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Names the connection; must come first.
    Hello {
        /// Correlation id, echoed as `reply_to`.
        id: Option<String>,
        /// Display name, used when the server does not require tokens.
        name: Option<String>,
        /// A signed token (HS256) whose `sub` is the user name.
        token: Option<String>,
        /// Replay every direct message to or from this user with an id
        /// above this one (resume after a reconnect).
        dm_since: Option<i64>,
    },
    /// Joins a room.
    Join {
        /// Correlation id.
        id: Option<String>,
        /// The room.
        room: RoomName,
        /// Replay exactly the messages after this id, instead of the last N.
        since: Option<i64>,
    },
    /// Leaves a room.
    Leave {
        /// Correlation id.
        id: Option<String>,
        /// The room.
        room: RoomName,
    },
    /// Sends a message to a joined room.
    Send {
        /// Client-chosen id, echoed in the ack and the message.
        id: Option<String>,
        /// The room.
        room: RoomName,
        /// The text.
        body: String,
    },
    /// Sends a direct message.
    Dm {
        /// Client-chosen id, echoed in the ack and the message.
        id: Option<String>,
        /// The recipient.
        to: UserName,
        /// The text.
        body: String,
    },
    /// Says the user is (or stopped) typing in a room or to a user.
    Typing {
        /// The room.
        room: Option<RoomName>,
        /// Or the user.
        to: Option<UserName>,
        /// Typing now (default true).
        #[serde(default = "yes")]
        active: bool,
    },
    /// Fetches a page of room or direct-message history.
    History {
        /// Correlation id.
        id: Option<String>,
        /// The room's history...
        room: Option<RoomName>,
        /// ...or the conversation with this user.
        with: Option<UserName>,
        /// Messages with ids below this one (the newest of them).
        before: Option<i64>,
        /// Messages with ids above this one (the oldest of them).
        after: Option<i64>,
        /// At most this many (default 50, at most 500).
        limit: Option<u32>,
    },
    /// Lists the rooms with members on this server.
    Rooms {
        /// Correlation id.
        id: Option<String>,
    },
    /// Asks for a `pong`.
    Ping {
        /// Correlation id.
        id: Option<String>,
    },
}

fn yes() -> bool {
    true
}

/// The command types, for telling an unknown `type` from a bad field.
const COMMANDS: [&str; 9] = [
    "hello", "join", "leave", "send", "dm", "typing", "history", "rooms", "ping",
];

/// A frame that could not be read as a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The error code to answer with.
    pub code: ErrorCode,
    /// What was wrong, for people.
    pub message: String,
    /// The frame's `id`, if it had one.
    pub reply_to: Option<String>,
}

impl Command {
    /// Reads a text frame. The fast path is one serde pass; only a frame
    /// that fails it is looked at again to say precisely what is wrong.
    pub fn decode(text: &str) -> Result<Command, Rejected> {
        match serde_json::from_str::<Command>(text) {
            Ok(cmd) => Ok(cmd),
            Err(err) => Err(Self::classify(text, err)),
        }
    }

    fn classify(text: &str, err: serde_json::Error) -> Rejected {
        let reject = |code, message: String, reply_to| Rejected {
            code,
            message,
            reply_to,
        };
        let value: Value = match serde_json::from_str(text) {
            Ok(Value::Object(map)) => Value::Object(map),
            Ok(_) => {
                return reject(ErrorCode::Malformed, "frame is not a JSON object".into(), None)
            }
            Err(e) => return reject(ErrorCode::Malformed, format!("not JSON: {e}"), None),
        };
        let reply_to = value.get("id").and_then(Value::as_str).map(str::to_owned);
        let Some(kind) = value.get("type").and_then(Value::as_str) else {
            return reject(
                ErrorCode::Invalid,
                "missing field `type`".into(),
                reply_to,
            );
        };
        if !COMMANDS.contains(&kind) {
            return reject(
                ErrorCode::UnknownType,
                format!("unknown type `{kind}`"),
                reply_to,
            );
        }
        for (field, room) in [("room", true), ("to", false), ("with", false)] {
            if let Some(Value::String(s)) = value.get(field) {
                let bad = if room {
                    RoomName::parse(s).err()
                } else {
                    UserName::parse(s).err()
                };
                if let Some(e) = bad {
                    let code = if room {
                        ErrorCode::InvalidRoom
                    } else {
                        ErrorCode::InvalidUser
                    };
                    return reject(code, format!("`{field}`: {e}"), reply_to);
                }
            }
        }
        reject(ErrorCode::Invalid, err.to_string(), reply_to)
    }

    /// The command's correlation id.
    pub fn id(&self) -> Option<&str> {
        match self {
            Command::Hello { id, .. }
            | Command::Join { id, .. }
            | Command::Leave { id, .. }
            | Command::Send { id, .. }
            | Command::Dm { id, .. }
            | Command::History { id, .. }
            | Command::Rooms { id }
            | Command::Ping { id } => id.as_deref(),
            Command::Typing { .. } => None,
        }
    }
}

/// A room and how many users are in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    /// The room.
    pub name: RoomName,
    /// How many distinct users are in it.
    pub members: usize,
}

/// A page of history: room messages or direct messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Page {
    /// Room messages, oldest first.
    Room(Vec<RoomMessage>),
    /// Direct messages, oldest first.
    Direct(Vec<DirectMessage>),
}

/// The server's answer to one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// `hello` succeeded.
    Welcome {
        /// The command's id.
        reply_to: Option<String>,
        /// The name this connection now has.
        user: UserName,
        /// The protocol version.
        version: u32,
        /// The server's software and version.
        server: &'static str,
        /// The limits this connection is held to.
        limits: Limits,
    },
    /// `join` succeeded; history and members follow the state at join.
    Joined {
        /// The command's id.
        reply_to: Option<String>,
        /// The room.
        room: RoomName,
        /// The users in it now, this one included.
        members: Vec<UserName>,
        /// The replayed messages, oldest first.
        history: Vec<RoomMessage>,
        /// Whether older (or, with `since`, newer) messages were left out
        /// of `history`; fetch them with `history`.
        more: bool,
    },
    /// `leave` succeeded.
    Left {
        /// The command's id.
        reply_to: Option<String>,
        /// The room.
        room: RoomName,
    },
    /// A message was stored; its event follows (or went before).
    Ack {
        /// The command's id.
        reply_to: Option<String>,
        /// The message's server id.
        msg_id: i64,
        /// When it was stored.
        ts: i64,
    },
    /// A page of history.
    History {
        /// The command's id.
        reply_to: Option<String>,
        /// The room, for room history.
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<RoomName>,
        /// The other user, for direct-message history.
        #[serde(skip_serializing_if = "Option::is_none")]
        with: Option<UserName>,
        /// The messages, oldest first.
        messages: Page,
        /// Whether there are more in the direction asked.
        more: bool,
    },
    /// The rooms with members on this server.
    Rooms {
        /// The command's id.
        reply_to: Option<String>,
        /// The rooms, by name.
        rooms: Vec<RoomInfo>,
    },
    /// Answer to `ping`.
    Pong {
        /// The command's id.
        reply_to: Option<String>,
        /// The server's clock.
        ts: i64,
    },
    /// A command failed; the connection stays open.
    Error {
        /// The command's id, if it had one.
        reply_to: Option<String>,
        /// What kind of failure.
        code: ErrorCode,
        /// Whether the same command may succeed later.
        temporary: bool,
        /// What happened, for people.
        message: String,
    },
}

/// The limits a connection is held to, told in `welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Largest message body, in bytes.
    pub max_message_bytes: usize,
    /// Largest frame, in bytes.
    pub max_frame_bytes: usize,
    /// Commands per second (0: unlimited).
    pub rate_limit: u32,
    /// Burst allowance.
    pub rate_burst: u32,
}

impl Reply {
    /// An error reply.
    pub fn error(reply_to: Option<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        Reply::Error {
            reply_to,
            code,
            temporary: code.temporary(),
            message: message.into(),
        }
    }

    /// The JSON text of this reply.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("replies always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_send_frame_decodes_with_extra_fields_ignored() {
        let cmd = Command::decode(r#"{"type":"send","id":"c1","room":"lobby","body":"hi","x":1}"#)
            .unwrap();
        assert_eq!(
            cmd,
            Command::Send {
                id: Some("c1".into()),
                room: RoomName::parse("lobby").unwrap(),
                body: "hi".into()
            }
        );
    }

    #[test]
    fn bad_frames_are_classified_with_their_id() {
        let r = Command::decode("{not json").unwrap_err();
        assert_eq!(r.code, ErrorCode::Malformed);
        let r = Command::decode("[1]").unwrap_err();
        assert_eq!(r.code, ErrorCode::Malformed);
        let r = Command::decode(r#"{"type":"fly","id":"7"}"#).unwrap_err();
        assert_eq!((r.code, r.reply_to.as_deref()), (ErrorCode::UnknownType, Some("7")));
        let r = Command::decode(r#"{"type":"send","id":"8","room":"lobby"}"#).unwrap_err();
        assert_eq!((r.code, r.reply_to.as_deref()), (ErrorCode::Invalid, Some("8")));
        assert!(r.message.contains("body"), "{}", r.message);
        let r = Command::decode(r#"{"type":"join","room":""}"#).unwrap_err();
        assert_eq!(r.code, ErrorCode::InvalidRoom);
        let r = Command::decode(r#"{"type":"dm","to":"echo","body":"x"}"#).unwrap_err();
        assert_eq!(r.code, ErrorCode::InvalidUser);
        let r = Command::decode(r#"{"id":"9"}"#).unwrap_err();
        assert_eq!(r.code, ErrorCode::Invalid);
    }

    #[test]
    fn events_serialize_as_native_frames() {
        let ev = super::super::Event::Presence {
            room: RoomName::parse("lobby").unwrap(),
            user: UserName::parse("bob").unwrap(),
            event: super::super::PresenceChange::Join,
        };
        assert_eq!(
            serde_json::to_string(&ev).unwrap(),
            r#"{"type":"presence","room":"lobby","user":"bob","event":"join"}"#
        );
    }
}
