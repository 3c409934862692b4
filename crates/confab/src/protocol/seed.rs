//! The tutorial protocols, spoken verbatim beside the native one so the
//! Django Channels tutorials' clients work unchanged. They are thin
//! adapters: each maps onto the same hub, rooms and history.
//!
//! | path | dialect |
//! | --- | --- |
//! | `/chat/`, `/ws/` | [`Dialect::Text`]: plain text in, plain text out, global room |
//! | `/ws/chat/<room>/` | [`Dialect::RoomJson`]: `{"message": …}` in and out |
//! | `/ws/<username>/` | [`Dialect::UserJson`]: `{"message": …, "to_user": …}` |

use serde::Deserialize;
use serde_json::json;

use super::codes::ErrorCode;
use super::names::UserName;
use super::{DirectMessage, Event, RoomMessage};

/// How a tutorial connection reads and writes frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Seeds 000, 002 (`/ws/`) and 004: the frame is the message.
    Text,
    /// Seed 001 (the official Channels tutorial): `{"message": "..."}`.
    RoomJson,
    /// Seed 002's peer-to-peer step: `{"message": "...", "to_user": "bob"}`.
    UserJson,
}

/// What a tutorial client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Said {
    /// A message to the connection's room.
    Room(String),
    /// A direct message.
    Direct {
        /// The recipient.
        to: UserName,
        /// The text.
        body: String,
    },
}

#[derive(Deserialize)]
struct JsonIn {
    message: String,
    #[serde(default)]
    to_user: Option<String>,
}

/// A tutorial frame that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedError {
    /// The code.
    pub code: ErrorCode,
    /// What was wrong.
    pub detail: String,
}

impl SeedError {
    /// The JSON error frame for the JSON dialects. It has no `message` key,
    /// so a tutorial client never shows it as a chat line.
    pub fn encode(&self) -> String {
        json!({ "error": self.code, "detail": self.detail }).to_string()
    }
}

impl Dialect {
    /// Reads one text frame.
    pub fn decode(self, text: &str) -> Result<Said, SeedError> {
        if self == Dialect::Text {
            return Ok(Said::Room(text.to_owned()));
        }
        let bad = |code, detail: String| SeedError { code, detail };
        let frame: JsonIn = serde_json::from_str(text).map_err(|e| {
            let code = if serde_json::from_str::<serde_json::Value>(text).is_ok() {
                ErrorCode::Invalid
            } else {
                ErrorCode::Malformed
            };
            bad(code, e.to_string())
        })?;
        match (self, frame.to_user) {
            (Dialect::UserJson, Some(to)) => {
                let to = UserName::parse(&to)
                    .map_err(|e| bad(ErrorCode::InvalidUser, format!("`to_user`: {e}")))?;
                Ok(Said::Direct {
                    to,
                    body: frame.message,
                })
            }
            _ => Ok(Said::Room(frame.message)),
        }
    }

    /// The frame this dialect shows for `event`, or `None` if it has no
    /// way to show it (presence and typing exist only natively).
    pub fn encode(self, event: &Event) -> Option<String> {
        match (self, event) {
            (Dialect::Text, Event::Message(m)) => Some(m.body.clone()),
            (Dialect::RoomJson, Event::Message(m)) => Some(room_json(m)),
            (Dialect::UserJson, Event::Message(m)) => Some(
                json!({ "message": m.body, "from_user": m.from, "room": m.room, "id": m.id, "ts": m.ts })
                    .to_string(),
            ),
            (Dialect::UserJson, Event::Dm(d)) => Some(direct_json(d)),
            _ => None,
        }
    }
}

fn room_json(m: &RoomMessage) -> String {
    json!({ "message": m.body, "user": m.from, "id": m.id, "ts": m.ts }).to_string()
}

fn direct_json(d: &DirectMessage) -> String {
    json!({ "message": d.body, "to_user": d.to, "from_user": d.from, "id": d.id, "ts": d.ts })
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_dialects_read_the_tutorial_frames() {
        assert_eq!(
            Dialect::RoomJson.decode(r#"{"message":"hi","user":"x"}"#),
            Ok(Said::Room("hi".into()))
        );
        assert_eq!(
            Dialect::UserJson.decode(r#"{"message":"hi","to_user":"bob"}"#),
            Ok(Said::Direct {
                to: UserName::parse("bob").unwrap(),
                body: "hi".into()
            })
        );
        assert_eq!(
            Dialect::UserJson.decode(r#"{"message":"hi"}"#),
            Ok(Said::Room("hi".into()))
        );
        assert_eq!(Dialect::Text.decode("{x"), Ok(Said::Room("{x".into())));
        assert_eq!(
            Dialect::RoomJson.decode("{x").unwrap_err().code,
            ErrorCode::Malformed
        );
        assert_eq!(
            Dialect::RoomJson.decode(r#"{"msg":"hi"}"#).unwrap_err().code,
            ErrorCode::Invalid
        );
        assert!(!Dialect::RoomJson
            .decode("{x")
            .unwrap_err()
            .encode()
            .contains("\"message\""));
    }
}
