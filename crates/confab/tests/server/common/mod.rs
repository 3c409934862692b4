//! Test harness: a real server on 127.0.0.1:0 and a small WebSocket client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use confab::config::{Overrides, Settings};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for one expected frame.
pub const WAIT: Duration = Duration::from_secs(5);

/// Settings for tests: an in-memory store, no rate limit surprises.
pub fn settings() -> Settings {
    settings_with(Overrides::default())
}

/// Test settings with some fields set.
pub fn settings_with(o: Overrides) -> Settings {
    let base = Overrides {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        store: Some("sqlite::memory:".into()),
        ..Overrides::default()
    };
    Settings::from_overrides(o.or(base)).unwrap()
}

/// A running server.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    /// Starts a server with `settings` on a free port.
    pub async fn start(settings: Settings) -> TestServer {
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(confab::run(listener, settings, async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            stop: Some(stop),
            handle,
        }
    }

    /// `ws://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// `http://addr{path}`.
    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Connects to `path`.
    pub async fn connect(&self, path: &str) -> Client {
        Client::connect(&self.url(path)).await
    }

    /// A native client that said hello as `name`.
    pub async fn native(&self, name: &str) -> Client {
        let mut c = self.connect("/socket").await;
        c.send_json(json!({"type": "hello", "id": "h", "name": name}))
            .await;
        let welcome = c.expect("welcome").await;
        assert_eq!(welcome["user"], name);
        c
    }

    /// A native client `name` that joined `room`.
    pub async fn member(&self, name: &str, room: &str) -> (Client, Value) {
        let mut c = self.native(name).await;
        let joined = c.join(room, None).await;
        (c, joined)
    }

    /// Signals shutdown and waits for the server to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), &mut self.handle)
            .await
            .expect("server stops in time")
            .unwrap()
            .unwrap();
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client with helpers that fail the test on timeout.
pub struct Client {
    pub ws: Ws,
}

impl Client {
    /// Connects, failing the test if it cannot.
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        Client { ws }
    }

    /// Connects with extra headers; returns the HTTP status on refusal.
    pub async fn try_connect(url: &str, headers: &[(&str, &str)]) -> Result<Client, u16> {
        let mut req = url.into_client_request().unwrap();
        for (k, v) in headers {
            req.headers_mut()
                .insert(k.parse::<http::HeaderName>().unwrap(), v.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(Client { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("connect failed: {e}"),
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    /// The next text frame (pings are answered and skipped).
    pub async fn next_text(&mut self) -> String {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("connection open")
                .expect("frame ok");
            match msg {
                Message::Text(t) => return t.to_string(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected text, got {other:?}"),
            }
        }
    }

    /// The next text frame as JSON.
    pub async fn next_json(&mut self) -> Value {
        let text = self.next_text().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// The next JSON frame of `type`, skipping presence and typing events
    /// (which tests check on purpose elsewhere).
    pub async fn expect(&mut self, kind: &str) -> Value {
        loop {
            let v = self.next_json().await;
            if v["type"] == kind {
                return v;
            }
            if v["type"] == "presence" || v["type"] == "typing" {
                continue;
            }
            panic!("expected `{kind}`, got {v}");
        }
    }

    /// Joins `room`, returning `joined`.
    pub async fn join(&mut self, room: &str, since: Option<i64>) -> Value {
        let mut cmd = json!({"type": "join", "id": format!("j-{room}"), "room": room});
        if let Some(since) = since {
            cmd["since"] = json!(since);
        }
        self.send_json(cmd).await;
        self.expect("joined").await
    }

    /// Sends to `room` and returns (ack, own message event) in whichever
    /// order they come.
    pub async fn say(&mut self, room: &str, body: &str, id: &str) -> (Value, Value) {
        self.send_json(json!({"type": "send", "id": id, "room": room, "body": body}))
            .await;
        let (mut ack, mut msg) = (None, None);
        while ack.is_none() || msg.is_none() {
            let v = self.next_json().await;
            match v["type"].as_str() {
                Some("ack") if v["reply_to"] == id => ack = Some(v),
                Some("message") if v["client_id"] == id => msg = Some(v),
                Some("presence" | "typing" | "message") => {}
                _ => panic!("unexpected while sending: {v}"),
            }
        }
        (ack.unwrap(), msg.unwrap())
    }

    /// Waits for the close frame; returns its code.
    pub async fn closed(&mut self) -> u16 {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(15), self.ws.next())
                .await
                .expect("close in time");
            match msg {
                Some(Ok(Message::Close(Some(CloseFrame { code, .. })))) => return u16::from(code),
                Some(Ok(Message::Close(None))) => return 1005,
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("error instead of close frame: {e}"),
                None => panic!("stream ended without a close frame"),
            }
        }
    }

    /// Asserts no message, DM or reply arrives for `dur` (presence and
    /// typing events may).
    pub async fn no_chat_for(&mut self, dur: Duration) {
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    assert!(
                        v["type"] == "presence" || v["type"] == "typing",
                        "expected no chat, got {v}"
                    );
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected no chat, got {other:?}"),
            }
        }
    }

    /// Asserts nothing arrives (but pings, answered) for `dur`; returns
    /// how many pings came.
    pub async fn silent_for(&mut self, dur: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + dur;
        let mut pings = 0;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return pings,
                Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
                Ok(Some(Ok(Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }
}

/// The `body` of each message in a JSON array of messages (a join's
/// `history`, a history page's `messages`), in order.
pub fn bodies(messages: &Value) -> Vec<&str> {
    messages
        .as_array()
        .expect("an array of messages")
        .iter()
        .map(|m| m["body"].as_str().expect("a message body"))
        .collect()
}
