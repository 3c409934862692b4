//! Limits and bad input: a clear answer, nothing lost, others unaffected.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{settings, settings_with, Client, TestServer};
use crate::http_client::request;
use confab::config::Overrides;

/// A body over the message limit gets `too_large`, and the connection
/// stays open; a frame over the frame limit closes with 1009.
#[tokio::test]
async fn oversized_messages_are_refused_and_oversized_frames_close_1009() {
    let server = TestServer::start(settings()).await;
    let (mut c, _) = server.member("big", "lobby").await;

    let body = "x".repeat(16 * 1024 + 1);
    c.send_json(json!({"type": "send", "id": "b", "room": "lobby", "body": body}))
        .await;
    let err = c.expect("error").await;
    assert_eq!(
        (err["code"].as_str(), err["reply_to"].as_str()),
        (Some("too_large"), Some("b"))
    );
    c.say("lobby", "small is fine", "s").await;

    c.send_text(&"y".repeat(64 * 1024 + 1)).await;
    assert_eq!(c.closed().await, 1009);
}

/// A text frame that is not UTF-8 closes with 1007.
#[tokio::test]
async fn invalid_utf8_closes_1007() {
    let server = TestServer::start(settings()).await;
    let mut c = server.connect("/ws/chat/lobby/").await;

    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    let frame = Frame::from_payload(header, vec![0xff, 0xfe, 0x41].into());
    c.ws.send(Message::Frame(frame)).await.unwrap();

    assert_eq!(c.closed().await, 1007);
}

/// Past the rate limit: `rate_limited` errors; sustained flooding closes
/// with 1008. Another connection is unaffected.
#[tokio::test]
async fn flooding_is_refused_then_closed_while_others_carry_on() {
    let server = TestServer::start(settings_with(Overrides {
        rate_limit: Some(5),
        rate_burst: Some(5),
        ..Overrides::default()
    }))
    .await;
    let (mut flood, _) = server.member("flood", "lobby").await;
    let (mut calm, _) = server.member("calm", "lobby").await;

    for i in 0..40 {
        let cmd = json!({"type": "send", "id": format!("f{i}"), "room": "lobby", "body": "spam"});
        if flood.ws.send(Message::text(cmd.to_string())).await.is_err() {
            break;
        }
    }
    let mut acks = 0;
    let mut limited = 0;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(5), flood.ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                match v["type"].as_str().unwrap() {
                    "ack" => acks += 1,
                    "error" => {
                        assert_eq!(v["code"], "rate_limited");
                        assert!(v["reply_to"].as_str().unwrap().starts_with('f'));
                        assert_eq!(v["temporary"], true);
                        limited += 1;
                    }
                    _ => {}
                }
            }
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    // hello and join took two of the five burst tokens.
    assert!((2..=6).contains(&acks), "acks: {acks}");
    assert!(limited >= 10, "limited: {limited}");
    assert_eq!(code, 1008);

    // Drain flood's messages from calm's queue, then calm still works.
    calm.say("lobby", "still fine", "ok").await;
}

/// A client that does not read is closed alone once its queue overflows
/// (1013); a reading member receives every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_closed_alone_and_the_room_keeps_its_pace() {
    let server = TestServer::start(settings_with(Overrides {
        rate_limit: Some(0),
        outbound_queue: Some(64),
        ..Overrides::default()
    }))
    .await;
    // The slow client shrinks its receive buffer so the server's socket
    // backs up quickly; then it stops reading.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (ws, _) = tokio_tungstenite::client_async(server.url("/socket"), stream)
        .await
        .unwrap();
    let mut slow = Client { ws };
    slow.send_json(json!({"type": "hello", "name": "slow"}))
        .await;
    slow.expect("welcome").await;
    slow.join("lobby", None).await;
    let (mut fast, _) = server.member("fast", "lobby").await;
    let (mut sender, _) = server.member("sender", "lobby").await;

    let body = "z".repeat(8 * 1024);
    let total = 1500;
    // A well-behaved sender: at most 32 sends awaiting their ack.
    let send = async {
        let (mut sent, mut acked) = (0, 0);
        while acked < total {
            while sent < total && sent - acked < 32 {
                let cmd =
                    json!({"type": "send", "id": sent.to_string(), "room": "lobby", "body": body});
                sender
                    .ws
                    .send(Message::text(cmd.to_string()))
                    .await
                    .unwrap();
                sent += 1;
            }
            if sender.next_json().await["type"] == "ack" {
                acked += 1;
            }
        }
    };
    let receive = async {
        let mut got = 0;
        while got < total {
            let v = fast.next_json().await;
            if v["type"] == "message" && v["from"] == "sender" {
                got += 1;
            }
        }
        got
    };
    let ((), got) = tokio::join!(send, receive);

    assert_eq!(got, total);
    assert_eq!(slow.closed().await, 1013);
}

/// A server that pings every second.
async fn pinging_every_second() -> TestServer {
    TestServer::start(settings_with(Overrides {
        ping_interval: Some(1),
        ..Overrides::default()
    }))
    .await
}

/// A client that never answers pings is closed after two missed pongs,
/// on the echo path too.
#[tokio::test]
async fn a_silent_client_is_closed_after_missed_pongs() {
    let server = pinging_every_second().await;
    let mut room = server.connect("/ws/chat/lobby/").await;
    let mut echo = server.connect("/ws/echo/").await;

    // Not polling the clients means their pongs are never sent.
    tokio::time::sleep(Duration::from_millis(3500)).await;

    assert_eq!(room.closed().await, 1008);
    assert_eq!(echo.closed().await, 1008);
}

/// A client that answers pings stays open however long it says nothing,
/// and hears one ping per interval.
#[tokio::test]
async fn a_client_that_answers_pings_stays_open() {
    let server = pinging_every_second().await;
    let mut quiet = server.connect("/ws/chat/lobby/").await;

    // Reading answers each ping (tungstenite replies by itself).
    let pings = quiet.silent_for(Duration::from_millis(4500)).await;
    assert!(
        (3..=5).contains(&pings),
        "{pings} pings in 4.5 s at a 1 s interval"
    );
    quiet.send_text(r#"{"message": "still here"}"#).await;
    assert_eq!(quiet.next_json().await["message"], "still here");
}

/// A client that starts a request head and never finishes it is
/// disconnected after `header_timeout` (slow-loris); a whole request
/// meanwhile is answered.
#[tokio::test]
async fn an_unfinished_request_head_is_disconnected() {
    let server = TestServer::start(settings_with(Overrides {
        header_timeout: Some(1),
        ..Overrides::default()
    }))
    .await;
    let started = std::time::Instant::now();
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: confab\r\n")
        .await
        .unwrap();

    let health = request(server.addr, "GET", "/healthz", &[], None).await;
    assert_eq!(health.status, 200);

    // Whatever the server says first, the connection must end: read to EOF.
    let mut said = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut said)).await;
    assert!(
        ended.is_ok(),
        "the half-sent request was still open after 5 s"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed after {:?}, before the timeout",
        started.elapsed()
    );
    assert!(
        !said.starts_with(b"HTTP/1.1 200"),
        "an unfinished request was answered: {}",
        String::from_utf8_lossy(&said)
    );
}

/// Upgrades from a foreign Origin are 403; same host, no Origin and
/// listed origins are allowed.
#[tokio::test]
async fn foreign_origins_are_forbidden() {
    let server = TestServer::start(settings_with(Overrides {
        allowed_origins: Some(vec!["https://app.example".into()]),
        ..Overrides::default()
    }))
    .await;
    let url = server.url("/socket");
    let own = format!("http://{}", server.addr);

    assert_eq!(
        Client::try_connect(&url, &[("origin", "http://evil.example")])
            .await
            .err(),
        Some(403)
    );
    assert!(Client::try_connect(&url, &[("origin", &own)]).await.is_ok());
    assert!(
        Client::try_connect(&url, &[("origin", "https://app.example")])
            .await
            .is_ok()
    );
    assert!(Client::try_connect(&url, &[]).await.is_ok());
}

/// Past `max_connections`, upgrades get 503; a closed one frees a place.
#[tokio::test]
async fn connections_past_the_limit_get_503() {
    let server = TestServer::start(settings_with(Overrides {
        max_connections: Some(2),
        ..Overrides::default()
    }))
    .await;
    let url = server.url("/ws/");
    let a = Client::try_connect(&url, &[]).await.unwrap();
    let _b = Client::try_connect(&url, &[]).await.unwrap();

    assert_eq!(Client::try_connect(&url, &[]).await.err(), Some(503));
    drop(a);
    let mut freed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if Client::try_connect(&url, &[]).await.is_ok() {
            freed = true;
            break;
        }
    }
    assert!(freed, "a closed connection frees its place");
}

/// A WebSocket path answers requests that are not valid upgrades with a
/// status that says why, and a valid upgrade on the same server still works.
#[tokio::test]
async fn bad_upgrade_requests_get_a_clear_status() {
    use crate::http_client::request;
    let server = TestServer::start(settings()).await;
    let upgrade = [("connection", "Upgrade"), ("upgrade", "websocket")];
    let key = ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");

    let plain = request(server.addr, "GET", "/socket", &[], None).await;
    assert_eq!(plain.status, 426, "{}", plain.text());
    let no_key = [upgrade[0], upgrade[1], ("sec-websocket-version", "13")];
    let answer = request(server.addr, "GET", "/ws/", &no_key, None).await;
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert!(answer.text().contains("Sec-WebSocket-Key"));
    let old = [upgrade[0], upgrade[1], key, ("sec-websocket-version", "8")];
    let answer = request(server.addr, "GET", "/ws/", &old, None).await;
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert!(answer.text().contains("13"));
    // `/chat/` serves its page to a plain GET.
    assert_eq!(
        request(server.addr, "GET", "/chat/", &[], None)
            .await
            .status,
        200
    );

    assert!(Client::try_connect(&server.url("/socket"), &[])
        .await
        .is_ok());
}
