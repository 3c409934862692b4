//! Idempotency keys for publishes from the REST API: a key names one
//! publish, so a backend that retries (a timeout, a lost response) never
//! stores the message twice.
//!
//! A key is *claimed* in the store before the message is submitted (the
//! table's primary key makes one claimant win, across nodes too), then
//! *completed* with the stored message's id. A failed submit *releases*
//! it. A claim that never completes (the node died between the two) stays
//! unresolved until it expires: retries are refused rather than risking a
//! second copy, so a key means at most once.

/// What a publish with a key is aimed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyClaim {
    /// The key, as the client sent it.
    pub key: String,
    /// `room` or `user`.
    pub scope: &'static str,
    /// The room or recipient name.
    pub target: String,
    /// The sender name.
    pub sender: String,
    /// When it was claimed, in milliseconds since the Unix epoch.
    pub created_at: i64,
}

/// A key already claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// `room` or `user`.
    pub scope: String,
    /// The room or recipient name.
    pub target: String,
    /// The sender name.
    pub sender: String,
    /// The stored message's id, once the publish completed.
    pub message_id: Option<i64>,
    /// When it was claimed, in milliseconds since the Unix epoch.
    pub created_at: i64,
}
