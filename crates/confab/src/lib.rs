//! Confab: a real-time chat server.
//!
//! # Layout
//!
//! * [`protocol`]: the wire: validated names, events, the native protocol
//!   and the tutorial dialects, error and close codes.
//! * [`session`]: one WebSocket connection: read loop, writes, limits,
//!   heartbeat.
//! * [`outbox`]: a connection's bounded queue and the shared, once-encoded
//!   [`outbox::Delivery`]; the slow-consumer policy.
//! * [`hub`]: local rooms and users, local fan-out.
//! * [`broker`]: cross-node fan-out and presence (`memory`, `redis`).
//! * [`store`]: history (`sqlite`, `postgres`).
//! * [`sequencer`]: store → publish → acknowledge, batched.
//! * [`node`]: this server; owns the above and keeps them in step.
//! * [`http`], [`web`]: routes, upgrades, pages.
//! * [`config`], [`auth`], [`limits`], [`server`]: settings, tokens,
//!   rate limits, running and shutting down.
//! * [`api`]: the REST API for operators and backends, its OpenAPI
//!   document and docs page; [`metrics`]: `/metrics`; [`ops`]: the
//!   `token` and `check-config` commands.

pub mod api;
pub mod auth;
pub mod broker;
pub mod config;
pub mod http;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod ops;
pub mod outbox;
pub mod protocol;
pub mod sequencer;
pub mod server;
pub mod session;
pub mod store;
pub mod web;
pub mod ws;

pub use config::Settings;
pub use server::{run, serve};
