//! Error codes (in `error` events) and WebSocket close codes, as data.
//! `docs/protocol.md` lists them; the web UI and the bench read the same
//! strings.

use serde::Serialize;

/// The `code` of an `error` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not JSON, or not a JSON object.
    Malformed,
    /// The `type` names no command.
    UnknownType,
    /// A field is missing or has the wrong type or value.
    Invalid,
    /// A room name is empty, too long or has forbidden characters.
    InvalidRoom,
    /// A user name is empty, too long, reserved or has forbidden characters.
    InvalidUser,
    /// A direct message to a user this server has never seen.
    UnknownUser,
    /// A message body over the size limit.
    TooLarge,
    /// More commands than the connection's rate limit allows.
    RateLimited,
    /// A command other than `hello` before `hello`.
    NotIdentified,
    /// A second `hello`.
    AlreadyIdentified,
    /// A missing, invalid or expired token.
    Unauthorized,
    /// Sending to, or leaving, a room the connection has not joined.
    NotMember,
    /// The store or broker cannot take the command now; retry later.
    Unavailable,
    /// A fault in the server.
    Internal,
}

impl ErrorCode {
    /// Whether retrying the same command later may succeed.
    pub fn temporary(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited | ErrorCode::Unavailable | ErrorCode::Internal
        )
    }
}

/// A WebSocket close code with the reason Confab gives for it. Reasons are
/// kept under 123 bytes, the room a close frame has for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    /// The close code.
    pub code: u16,
    /// The reason, for people.
    pub reason: &'static str,
}

/// Reasons given to kicks, kept for the life of the process because a
/// close code carries a `&'static str`. Bounded: past [`MAX_REASONS`]
/// distinct reasons, new ones fall back to the default.
static REASONS: parking_lot::Mutex<Option<std::collections::HashMap<String, &'static str>>> =
    parking_lot::Mutex::new(None);
const MAX_REASONS: usize = 256;

impl Close {
    /// `reason` as a `&'static str`, for a kick's close (see [`REASONS`]).
    pub fn interned(reason: &str) -> &'static str {
        let mut reasons = REASONS.lock();
        let reasons = reasons.get_or_insert_with(std::collections::HashMap::new);
        if let Some(r) = reasons.get(reason) {
            return r;
        }
        if reasons.len() >= MAX_REASONS {
            return Close::KICKED.reason;
        }
        let leaked: &'static str = Box::leak(reason.to_owned().into_boxed_str());
        reasons.insert(reason.to_owned(), leaked);
        leaked
    }

    /// The client asked to close (`close` on `/chat/`).
    pub const NORMAL: Close = Close {
        code: 1000,
        reason: "goodbye",
    };
    /// The server is shutting down; reconnect (to another node).
    pub const SHUTDOWN: Close = Close {
        code: 1001,
        reason: "server shutting down",
    };
    /// A text frame that is not UTF-8.
    pub const BAD_UTF8: Close = Close {
        code: 1007,
        reason: "text frame is not valid UTF-8",
    };
    /// Sustained flooding past the rate limit.
    pub const FLOOD: Close = Close {
        code: 1008,
        reason: "rate limit exceeded repeatedly",
    };
    /// No pong for too long.
    pub const HEARTBEAT: Close = Close {
        code: 1008,
        reason: "heartbeat timeout: no pong",
    };
    /// A bad token on `hello`.
    pub const UNAUTHORIZED: Close = Close {
        code: 1008,
        reason: "unauthorized",
    };
    /// A frame over the frame size limit.
    pub const TOO_BIG: Close = Close {
        code: 1009,
        reason: "frame too large",
    };
    /// A fault in the server.
    pub const INTERNAL: Close = Close {
        code: 1011,
        reason: "internal error",
    };
    /// The client reads too slowly: its outbound queue overflowed.
    pub const SLOW: Close = Close {
        code: 1013,
        reason: "slow consumer: outbound queue full",
    };
    /// An operator disconnected the user.
    pub const KICKED: Close = Close {
        code: 4000,
        reason: "disconnected by the server",
    };
}
