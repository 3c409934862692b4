//! Configuration: one [`Settings`], from flags, then environment
//! variables, then a TOML file, then defaults (each beats the next).
//!
//! Flags and variables are declared once, in [`Overrides`], which is also
//! the TOML file's schema, so the three ways cannot drift apart.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};

/// A secret: shown as `***` in `Debug` and logs.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Every setting, each optional: given by a flag, an environment variable
/// or the TOML file (same key as the flag, with `_` for `-`).
#[derive(Debug, Default, Clone, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// Address to listen on [default: 127.0.0.1:8000]
    #[arg(long, env = "CONFAB_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// History store: sqlite://PATH, sqlite::memory: or postgres://USER@HOST/DB [default: sqlite://confab-data/confab.db]
    #[arg(long, env = "CONFAB_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// Fan-out and presence broker: memory or redis://HOST:PORT/ [default: memory]
    #[arg(long, env = "CONFAB_BROKER", value_name = "URL")]
    pub broker: Option<String>,
    /// Origins allowed to open WebSockets besides the server's own host
    /// (repeat, or comma-separate; `*` allows any) [default: none]
    #[arg(
        long = "allowed-origin",
        env = "CONFAB_ALLOWED_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGIN"
    )]
    pub allowed_origins: Option<Vec<String>>,
    /// Most WebSocket connections at once; more get 503 [default: 10000]
    #[arg(long, env = "CONFAB_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Largest message text, in bytes; larger gets `too_large` [default: 16384]
    #[arg(long, env = "CONFAB_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Largest WebSocket frame or message, in bytes; larger closes with 1009 [default: 65536]
    #[arg(long, env = "CONFAB_MAX_FRAME_BYTES", value_name = "BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Largest message on the echo path /ws/echo/, in bytes [default: 16777216]
    #[arg(long, env = "CONFAB_ECHO_MAX_BYTES", value_name = "BYTES")]
    pub echo_max_bytes: Option<usize>,
    /// Messages per second per connection; 0 turns the limit off [default: 20]
    #[arg(long, env = "CONFAB_RATE_LIMIT", value_name = "N")]
    pub rate_limit: Option<u32>,
    /// Burst above the rate limit [default: 40]
    #[arg(long, env = "CONFAB_RATE_BURST", value_name = "N")]
    pub rate_burst: Option<u32>,
    /// Events queued per connection before it is closed as slow [default: 1024]
    #[arg(long, env = "CONFAB_OUTBOUND_QUEUE", value_name = "N")]
    pub outbound_queue: Option<usize>,
    /// Seconds between pings; 2 missed pongs close the connection [default: 20]
    #[arg(long, env = "CONFAB_PING_INTERVAL", value_name = "SECS")]
    pub ping_interval: Option<u64>,
    /// Messages replayed on join without `since` [default: 50]
    #[arg(long, env = "CONFAB_HISTORY_REPLAY", value_name = "N")]
    pub history_replay: Option<u32>,
    /// Newest messages kept per room and per recipient of direct messages; older ones are deleted; 0 keeps all [default: 0, or 10000 with sqlite::memory:]
    #[arg(long, env = "CONFAB_HISTORY_KEEP", value_name = "N")]
    pub history_keep: Option<u32>,
    /// HS256 secret; when set, clients must present a token whose `sub` is their name [default: none]
    #[arg(
        long,
        env = "CONFAB_TOKEN_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub token_secret: Option<Secret>,
    /// Log format [default: text]
    #[arg(long, env = "CONFAB_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Seconds to wait for connections to close on shutdown [default: 10]
    #[arg(long, env = "CONFAB_SHUTDOWN_TIMEOUT", value_name = "SECS")]
    pub shutdown_timeout: Option<u64>,
    /// Seconds a client has to send its request head before it is disconnected (slow-loris) [default: 10]
    #[arg(long, env = "CONFAB_HEADER_TIMEOUT", value_name = "SECS")]
    pub header_timeout: Option<u64>,
    /// This node's name in a cluster; unique per running process [default: random]
    #[arg(long, env = "CONFAB_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
    /// Seconds after which a silent node's users leave its rooms (cluster presence) [default: 15]
    #[arg(long, env = "CONFAB_NODE_TTL", value_name = "SECS")]
    pub node_ttl: Option<u64>,
    /// Prefix of every Redis key and channel; nodes of one cluster share it [default: confab]
    #[arg(long, env = "CONFAB_CLUSTER_NAME", value_name = "NAME")]
    pub cluster_name: Option<String>,
    /// Bearer key for the REST API under /api/v1/ (at least 16 bytes); without one the API answers 401 [default: none]
    #[arg(
        long,
        env = "CONFAB_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub api_key: Option<Secret>,
    /// Origins allowed to call the REST API from a browser (CORS; repeat, or comma-separate; `*` allows any) [default: none]
    #[arg(
        long = "cors-origin",
        env = "CONFAB_CORS_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGIN"
    )]
    pub cors_origins: Option<Vec<String>>,
}

/// The effective settings. Serialized (secrets masked) they are a TOML
/// file with the same keys as [`Overrides`].
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// History store URL.
    pub store: String,
    /// Broker URL.
    pub broker: String,
    /// Extra allowed WebSocket origins.
    pub allowed_origins: Vec<String>,
    /// Most connections at once.
    pub max_connections: usize,
    /// Largest message text.
    pub max_message_bytes: usize,
    /// Largest frame.
    pub max_frame_bytes: usize,
    /// Largest echo message.
    pub echo_max_bytes: usize,
    /// Messages per second per connection (0: off).
    pub rate_limit: u32,
    /// Burst allowance.
    pub rate_burst: u32,
    /// Per-connection outbound queue.
    pub outbound_queue: usize,
    /// Time between pings.
    #[serde(serialize_with = "as_secs")]
    pub ping_interval: Duration,
    /// Messages replayed on join.
    pub history_replay: u32,
    /// Newest messages kept per room and per recipient (0: all).
    pub history_keep: u32,
    /// Token secret, if tokens are required.
    pub token_secret: Option<Secret>,
    /// Log format.
    pub log_format: LogFormat,
    /// Shutdown deadline.
    #[serde(serialize_with = "as_secs")]
    pub shutdown_timeout: Duration,
    /// How long a client may take to send its request head.
    #[serde(serialize_with = "as_secs")]
    pub header_timeout: Duration,
    /// This node's name in a cluster.
    pub node_id: String,
    /// How long a node may stay silent before its presence is removed.
    #[serde(serialize_with = "as_secs")]
    pub node_ttl: Duration,
    /// Prefix of Redis keys and channels.
    pub cluster_name: String,
    /// REST API key, if the API is on.
    pub api_key: Option<Secret>,
    /// Origins allowed to call the REST API cross-origin.
    pub cors_origins: Vec<String>,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

impl Default for Settings {
    fn default() -> Self {
        Self::from_overrides(Overrides::default()).expect("defaults are valid")
    }
}

macro_rules! merge {
    ($a:ident, $b:ident, $($field:ident),*) => {
        Overrides { $($field: $a.$field.or($b.$field)),* }
    };
}

impl Overrides {
    /// Fills what `self` leaves unset from `other`.
    pub fn or(self, other: Overrides) -> Overrides {
        merge!(
            self,
            other,
            listen,
            store,
            broker,
            allowed_origins,
            max_connections,
            max_message_bytes,
            max_frame_bytes,
            echo_max_bytes,
            rate_limit,
            rate_burst,
            outbound_queue,
            ping_interval,
            history_replay,
            history_keep,
            token_secret,
            log_format,
            shutdown_timeout,
            header_timeout,
            node_id,
            node_ttl,
            cluster_name,
            api_key,
            cors_origins
        )
    }

    /// Reads a TOML file.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Overrides> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }
}

impl Settings {
    /// The rate every connection may send at.
    pub fn rate(&self) -> crate::limits::Rate {
        crate::limits::Rate {
            per_second: self.rate_limit,
            burst: self.rate_burst,
        }
    }

    /// Flags and variables (`cli`), then the file they name, then defaults.
    pub fn load(cli: Overrides, file: Option<&PathBuf>) -> anyhow::Result<Settings> {
        let file = match file {
            Some(path) => Overrides::from_file(path)?,
            None => Overrides::default(),
        };
        Self::from_overrides(cli.or(file))
    }

    /// Applies defaults and checks the result.
    pub fn from_overrides(o: Overrides) -> anyhow::Result<Settings> {
        let store = o
            .store
            .unwrap_or_else(|| "sqlite://confab-data/confab.db".into());
        // A store in memory is bounded by default: it holds every message
        // in the process, and nothing of it outlives the process anyway.
        let history_keep = o
            .history_keep
            .unwrap_or(if crate::store::in_memory(&store) {
                10_000
            } else {
                0
            });
        let s = Settings {
            listen: o
                .listen
                .unwrap_or_else(|| "127.0.0.1:8000".parse().expect("valid")),
            store,
            broker: o.broker.unwrap_or_else(|| "memory".into()),
            allowed_origins: o.allowed_origins.unwrap_or_default(),
            max_connections: o.max_connections.unwrap_or(10_000),
            max_message_bytes: o.max_message_bytes.unwrap_or(16 * 1024),
            max_frame_bytes: o.max_frame_bytes.unwrap_or(64 * 1024),
            echo_max_bytes: o.echo_max_bytes.unwrap_or(16 * 1024 * 1024),
            rate_limit: o.rate_limit.unwrap_or(20),
            rate_burst: o.rate_burst.unwrap_or(40),
            outbound_queue: o.outbound_queue.unwrap_or(1024),
            ping_interval: Duration::from_secs(o.ping_interval.unwrap_or(20)),
            history_replay: o.history_replay.unwrap_or(50),
            history_keep,
            token_secret: o.token_secret,
            log_format: o.log_format.unwrap_or(LogFormat::Text),
            shutdown_timeout: Duration::from_secs(o.shutdown_timeout.unwrap_or(10)),
            header_timeout: Duration::from_secs(o.header_timeout.unwrap_or(10)),
            node_id: o.node_id.unwrap_or_else(random_node_id),
            node_ttl: Duration::from_secs(o.node_ttl.unwrap_or(15)),
            cluster_name: o.cluster_name.unwrap_or_else(|| "confab".into()),
            api_key: o.api_key,
            cors_origins: o.cors_origins.unwrap_or_default(),
        };
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.max_connections > 0,
            "max_connections must be at least 1"
        );
        anyhow::ensure!(self.outbound_queue > 0, "outbound_queue must be at least 1");
        anyhow::ensure!(
            self.max_message_bytes < self.max_frame_bytes,
            "max_message_bytes must be below max_frame_bytes, so an oversized message gets an error, not a close"
        );
        anyhow::ensure!(
            !self.ping_interval.is_zero(),
            "ping_interval must be at least 1 second"
        );
        anyhow::ensure!(
            !self.header_timeout.is_zero(),
            "header_timeout must be at least 1 second"
        );
        anyhow::ensure!(
            self.rate_limit == 0 || self.rate_burst >= 1,
            "rate_burst must be at least 1"
        );
        // Nodes of a cluster draw message ids from one store; with a store
        // each, ids would collide and receivers would drop messages as
        // already seen.
        anyhow::ensure!(
            self.broker.starts_with("memory") || self.store.starts_with("postgres"),
            "a cluster broker (`{}`) needs a store every node shares: use --store postgres://…",
            crate::store::redact(&self.broker)
        );
        for (what, value) in [
            ("node_id", &self.node_id),
            ("cluster_name", &self.cluster_name),
        ] {
            anyhow::ensure!(
                !value.is_empty()
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'),
                "{what} must be letters, digits, `-`, `_` or `.`"
            );
        }
        anyhow::ensure!(
            self.node_ttl >= Duration::from_secs(2),
            "node_ttl must be at least 2 seconds"
        );
        if let Some(secret) = &self.token_secret {
            anyhow::ensure!(
                secret.expose().len() >= 16,
                "token_secret must be at least 16 bytes"
            );
        }
        if let Some(key) = &self.api_key {
            anyhow::ensure!(
                key.expose().len() >= 16,
                "api_key must be at least 16 bytes"
            );
        }
        crate::api::check_cors_origins(&self.cors_origins)?;
        Ok(())
    }
}

/// A node name unlikely to repeat: process id and start time.
fn random_node_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("n{:x}-{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let file: Overrides = toml::from_str(
            "listen = \"127.0.0.1:9000\"\nrate_limit = 5\nstore = \"sqlite::memory:\"",
        )
        .unwrap();
        let cli = Overrides {
            rate_limit: Some(7),
            ..Overrides::default()
        };
        let s = Settings::from_overrides(cli.or(file)).unwrap();
        assert_eq!(s.rate_limit, 7);
        assert_eq!(s.listen.port(), 9000);
        assert_eq!(s.store, "sqlite::memory:");
        assert_eq!(s.rate_burst, 40);
    }

    #[test]
    fn a_store_in_memory_keeps_a_bounded_history_unless_told_otherwise() {
        let with = |store: &str, keep: Option<u32>| {
            Settings::from_overrides(Overrides {
                store: Some(store.into()),
                history_keep: keep,
                ..Overrides::default()
            })
            .unwrap()
            .history_keep
        };
        assert_eq!(with("sqlite::memory:", None), 10_000);
        assert_eq!(with("sqlite::memory:", Some(0)), 0);
        assert_eq!(with("sqlite://data/chat.db", None), 0);
        assert_eq!(with("sqlite://data/chat.db", Some(500)), 500);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<Overrides>("listn = \"x\"").is_err());
        let bad = Overrides {
            max_message_bytes: Some(100_000),
            ..Overrides::default()
        };
        assert!(Settings::from_overrides(bad).is_err());
    }

    #[test]
    fn a_cluster_broker_with_a_private_store_is_refused() {
        let cluster = |store: &str| {
            Settings::from_overrides(Overrides {
                broker: Some("redis://127.0.0.1:6379/".into()),
                store: Some(store.into()),
                ..Overrides::default()
            })
        };
        assert!(cluster("sqlite::memory:").is_err());
        assert!(cluster("postgres://db/chat").is_ok());
    }

    #[test]
    fn secrets_never_print() {
        let s = Settings::from_overrides(Overrides {
            token_secret: Some("a-very-long-secret-value".parse().unwrap()),
            ..Overrides::default()
        })
        .unwrap();
        assert!(!format!("{s:?}").contains("a-very-long"));
    }
}
