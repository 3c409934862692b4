//! Validated names: rooms and users are checked once, at the edge, and
//! the rest of the server never checks them again.

use std::fmt;
use std::sync::Arc;

/// The longest room or user name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing, or only white space.
    #[error("name is empty")]
    Empty,
    /// More than [`MAX_NAME_CHARS`] characters.
    #[error("name is longer than {MAX_NAME_CHARS} characters")]
    TooLong,
    /// A control character, a slash, or white space at either end.
    #[error("name contains a control character, a slash or surrounding white space")]
    BadChar,
    /// A name the server keeps for itself.
    #[error("name is reserved")]
    Reserved,
}

fn check(s: &str) -> Result<(), NameError> {
    if s.trim().is_empty() {
        return Err(NameError::Empty);
    }
    if s.chars().count() > MAX_NAME_CHARS {
        return Err(NameError::TooLong);
    }
    if s.trim() != s || s.chars().any(|c| c.is_control() || c == '/') {
        return Err(NameError::BadChar);
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $name::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A room name: 1 to 64 characters, no control characters or slashes.
    RoomName
);
name_type!(
    /// A user name: 1 to 64 characters, no control characters or slashes,
    /// and not one of the [`RESERVED_USERS`].
    UserName
);

/// User names that would collide with the tutorial paths (`/ws/chat/…`,
/// `/ws/echo/`), so `/ws/<username>/` can never mean one of them.
pub const RESERVED_USERS: [&str; 2] = ["chat", "echo"];

/// The prefix of the names the server gives anonymous tutorial
/// connections. Names are parsed alike wherever they come from (stored
/// messages, other nodes); the edges where a client names itself or a
/// correspondent refuse this prefix ([`UserName::is_guest`]).
pub const GUEST_PREFIX: &str = "guest-";

/// The room every tutorial broadcast path (`/chat/`, `/ws/`) talks to.
pub const GLOBAL_ROOM: &str = "global";

impl RoomName {
    /// Checks `s` and wraps it.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        check(s)?;
        Ok(Self(s.into()))
    }

    /// The global room.
    pub fn global() -> Self {
        Self(GLOBAL_ROOM.into())
    }
}

impl UserName {
    /// Checks `s` and wraps it.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        check(s)?;
        if RESERVED_USERS.contains(&s) {
            return Err(NameError::Reserved);
        }
        Ok(Self(s.into()))
    }

    /// A name the server gives an anonymous tutorial connection. Guests
    /// live as long as their connection: they are never registered as
    /// users, so nobody can send them direct messages, and a later guest
    /// given the same number (after a restart) inherits nothing.
    pub fn guest(n: u64) -> Self {
        Self(format!("{GUEST_PREFIX}{n}").into())
    }

    /// A name a client takes for itself (or sends as): any valid name but
    /// a guest's, which only the server gives out.
    pub fn parse_own(s: &str) -> Result<Self, NameError> {
        let name = Self::parse(s)?;
        if name.is_guest() {
            return Err(NameError::Reserved);
        }
        Ok(name)
    }

    /// Whether the server made this name for an anonymous connection.
    pub fn is_guest(&self) -> bool {
        self.0.starts_with(GUEST_PREFIX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_within_the_rules_are_accepted() {
        assert!(RoomName::parse("lobby").is_ok());
        assert!(RoomName::parse("café ☕ 聊天").is_ok());
        assert!(UserName::parse(&"a".repeat(MAX_NAME_CHARS)).is_ok());
    }

    #[test]
    fn empty_long_and_odd_names_are_rejected() {
        assert_eq!(RoomName::parse(""), Err(NameError::Empty));
        assert_eq!(RoomName::parse("   "), Err(NameError::Empty));
        assert_eq!(
            RoomName::parse(&"a".repeat(MAX_NAME_CHARS + 1)),
            Err(NameError::TooLong)
        );
        assert_eq!(RoomName::parse("a\u{7}b"), Err(NameError::BadChar));
        assert_eq!(RoomName::parse("a/b"), Err(NameError::BadChar));
        assert_eq!(RoomName::parse(" a"), Err(NameError::BadChar));
        assert_eq!(UserName::parse("echo"), Err(NameError::Reserved));
        assert_eq!(UserName::parse("chat"), Err(NameError::Reserved));
        assert!(UserName::parse("guest-7").unwrap().is_guest());
        assert_eq!(UserName::parse_own("guest-7"), Err(NameError::Reserved));
        assert!(UserName::parse_own("ann").is_ok());
        assert!(!UserName::parse("guesthouse").unwrap().is_guest());
        assert!(UserName::guest(7).is_guest());
        assert!(!UserName::parse("ann").unwrap().is_guest());
    }
}
