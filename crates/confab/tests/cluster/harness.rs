//! Cluster harness: `confab` processes on 127.0.0.1 ports, a database per
//! test, a private `redis-server` for fault tests.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::Client;

/// Says why a test is skipped; under `CI=true` a skip is a failure.
pub fn skip(test: &str, why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} cannot be skipped in CI: {why}"
    );
    println!("SKIP {test}: {why}");
}

/// The shared services, or `None` (and a SKIP line) when unset.
pub fn services(test: &str) -> Option<(String, String)> {
    match (
        std::env::var("CONFAB_TEST_REDIS_URL"),
        std::env::var("CONFAB_TEST_POSTGRES_URL"),
    ) {
        (Ok(redis), Ok(pg)) => Some((redis, pg)),
        _ => {
            skip(
                test,
                "set CONFAB_TEST_REDIS_URL and CONFAB_TEST_POSTGRES_URL to run it",
            );
            None
        }
    }
}

/// Only PostgreSQL.
pub fn postgres(test: &str) -> Option<String> {
    match std::env::var("CONFAB_TEST_POSTGRES_URL") {
        Ok(pg) => Some(pg),
        Err(_) => {
            skip(test, "set CONFAB_TEST_POSTGRES_URL to run it");
            None
        }
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name no other test (or run) uses.
pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{tag}_{}_{}_{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        nanos % 1_000_000_000
    )
}

/// `base` with its database replaced by `db`.
pub fn with_database(base: &str, db: &str) -> String {
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, format!("?{q}")),
        None => (base, String::new()),
    };
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let path_start = head[scheme_end..]
        .find('/')
        .map_or(head.len(), |i| scheme_end + i);
    format!("{}/{db}{query}", &head[..path_start])
}

/// A database made for one test and dropped after it.
pub struct TestDb {
    pub url: String,
    admin: String,
    pub name: String,
}

impl TestDb {
    pub async fn create(admin: &str) -> TestDb {
        use sqlx::Connection;
        let name = unique("confab");
        let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        TestDb {
            url: with_database(admin, &name),
            admin: admin.to_owned(),
            name,
        }
    }

    /// Runs `sql` on the admin database.
    pub async fn admin(&self, sql: &str) {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.admin).await.unwrap();
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }

    /// Refuses new connections and ends the open ones: the store is down
    /// for this test's nodes only.
    pub async fn take_down(&self) {
        self.admin(&format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS false",
            self.name
        ))
        .await;
        self.admin(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
            self.name
        ))
        .await;
    }

    pub async fn bring_up(&self) {
        self.admin(&format!(
            "ALTER DATABASE {} WITH ALLOW_CONNECTIONS true",
            self.name
        ))
        .await;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn log_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{name}.log"))
}

/// A `confab` process.
pub struct Node {
    pub port: u16,
    pub name: String,
    child: Child,
}

/// What the nodes of one test share.
#[derive(Clone)]
pub struct Cluster {
    pub redis: String,
    pub store: String,
    pub name: String,
    pub ttl_secs: u64,
}

impl Cluster {
    pub fn new(redis: &str, store: &str) -> Cluster {
        Cluster {
            redis: redis.to_owned(),
            store: store.to_owned(),
            name: unique("c"),
            ttl_secs: 3,
        }
    }

    /// Starts a node and waits until it serves.
    pub async fn node(&self, tag: &str) -> Node {
        self.node_on(tag, free_port()).await
    }

    pub async fn node_on(&self, tag: &str, port: u16) -> Node {
        let name = format!("{}-{tag}", self.name);
        let log = std::fs::File::create(log_path(&name)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_confab"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "confab=info")
            .env("CONFAB_LISTEN", format!("127.0.0.1:{port}"))
            .env("CONFAB_STORE", &self.store)
            .env("CONFAB_BROKER", &self.redis)
            .env("CONFAB_CLUSTER_NAME", &self.name)
            .env("CONFAB_NODE_ID", &name)
            .env("CONFAB_NODE_TTL", self.ttl_secs.to_string())
            .env("CONFAB_RATE_LIMIT", "0")
            .env("CONFAB_API_KEY", crate::http_client::KEY)
            .env("CONFAB_SHUTDOWN_TIMEOUT", "3")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let node = Node { port, name, child };
        node.wait_ready().await;
        node
    }
}

impl Node {
    pub fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{}", self.port, path)
    }

    /// Where its HTTP API listens.
    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let _ = s
                    .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await;
                let mut buf = Vec::new();
                let _ = s.read_to_end(&mut buf).await;
                if buf.starts_with(b"HTTP/1.1 200") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {} not ready; see {}",
                self.name,
                log_path(&self.name).display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn connect(&self, path: &str) -> Client {
        Client::connect(&self.url(path)).await
    }

    /// A native client that said hello as `name`.
    pub async fn native(&self, name: &str) -> Client {
        self.native_with(name, None).await
    }

    /// A native client `name` that joined `room` (its `joined` reply read).
    pub async fn member(&self, name: &str, room: &str) -> Client {
        let mut c = self.native(name).await;
        c.join(room, None).await;
        c
    }

    pub async fn native_with(&self, name: &str, dm_since: Option<i64>) -> Client {
        let mut c = self.connect("/socket").await;
        let mut hello = json!({"type": "hello", "id": "h", "name": name});
        if let Some(since) = dm_since {
            hello["dm_since"] = json!(since);
        }
        c.send_json(hello).await;
        let welcome = c.expect("welcome").await;
        assert_eq!(welcome["user"], name);
        c
    }

    /// SIGKILL: no goodbye to anyone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `redis-server` of the test's own, on its own port.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub async fn start() -> PrivateRedis {
        let mut r = PrivateRedis {
            port: free_port(),
            child: None,
        };
        r.up().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub async fn up(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "private redis did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.down();
    }
}
