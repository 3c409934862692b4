//! The REST API over real HTTP: every endpoint, its errors, and its
//! effect on connected WebSocket clients.

use std::time::Duration;

use confab::config::Overrides;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{settings_with, Client, TestServer};
use crate::http_client::{get, post, request, KEY};

fn with_key(o: Overrides) -> Overrides {
    Overrides {
        api_key: Some(KEY.parse().unwrap()),
        ..o
    }
}

async fn server() -> TestServer {
    TestServer::start(settings_with(with_key(Overrides::default()))).await
}

async fn publish(server: &TestServer, room: &str, from: &str, body: &str) -> Value {
    let path = format!("/api/v1/rooms/{room}/messages");
    let a = post(
        server.addr,
        &path,
        &json!({"from": from, "body": body}),
        &[],
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text());
    a.json()
}

#[tokio::test]
async fn the_openapi_document_and_docs_page_are_served() {
    let server = server().await;
    let doc = request(server.addr, "GET", "/api/openapi.json", &[], None).await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.header("content-type"), Some("application/json"));
    let doc = doc.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["paths"]["/api/v1/rooms/{room}/messages"]["post"].is_object());

    let page = request(server.addr, "GET", "/api/docs/", &[], None).await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("/api/docs/docs.js"));
    assert!(page
        .header("content-security-policy")
        .is_some_and(|c| c.contains("script-src 'self'")));
    let js = request(server.addr, "GET", "/api/docs/docs.js", &[], None).await;
    assert_eq!(js.status, 200);
    assert!(js.text().contains("/api/openapi.json"));
    assert!(!js.text().contains("innerHTML"));
    server.stop().await;
}

#[tokio::test]
async fn a_missing_or_wrong_key_is_refused_and_no_key_means_no_api() {
    let server = server().await;
    let none = request(server.addr, "GET", "/api/v1/rooms", &[], None).await;
    none.error(401, "unauthorized");
    assert!(none.header("www-authenticate").is_some());
    let wrong = request(
        server.addr,
        "GET",
        "/api/v1/rooms",
        &[("Authorization", "Bearer not-the-key-at-all")],
        None,
    )
    .await;
    wrong.error(401, "unauthorized");
    // Refused before the body is looked at.
    let publish = request(
        server.addr,
        "POST",
        "/api/v1/rooms/lobby/messages",
        &[("Content-Type", "application/json")],
        Some(br#"{"from":"x","body":"y"}"#),
    )
    .await;
    publish.error(401, "unauthorized");
    server.stop().await;

    let off = TestServer::start(settings_with(Overrides::default())).await;
    get(off.addr, "/api/v1/rooms")
        .await
        .error(401, "unauthorized");
    off.stop().await;
}

/// A REST publish is stored, reaches every member like a client's
/// message, and is what the history endpoint and a joiner's replay show.
#[tokio::test]
async fn a_rest_publish_reaches_the_room_and_its_history() {
    let server = server().await;
    let (mut alice, _) = server.member("alice", "lobby").await;
    let (mut bob, _) = server.member("bob", "lobby").await;
    let (mut carol, _) = server.member("carol", "kitchen").await;

    let sent = publish(&server, "lobby", "announcer", "deploy at noon").await;
    assert_eq!(sent["room"], "lobby");
    assert_eq!(sent["from"], "announcer");

    for c in [&mut alice, &mut bob] {
        let m = c.expect("message").await;
        assert_eq!(m["id"], sent["id"]);
        assert_eq!(m["ts"], sent["ts"]);
        assert_eq!(m["from"], "announcer");
        assert_eq!(m["body"], "deploy at noon");
    }
    carol.no_chat_for(Duration::from_millis(200)).await;

    alice.say("lobby", "ok", "a1").await;
    let page = get(server.addr, "/api/v1/rooms/lobby/messages").await;
    assert_eq!(page.status, 200);
    let page = page.json();
    assert_eq!(page["more"], false);
    let bodies = crate::common::bodies(&page["messages"]);
    assert_eq!(bodies, ["deploy at noon", "ok"]);
    // The same messages, field for field, as a joiner's replay.
    let (_, joined) = server.member("dave", "lobby").await;
    assert_eq!(joined["history"], page["messages"]);
    server.stop().await;
}

#[tokio::test]
async fn history_pages_before_and_after_an_id() {
    let server = server().await;
    for i in 1..=7 {
        publish(&server, "log", "bot", &i.to_string()).await;
    }
    let ids = |v: &Value| -> Vec<i64> {
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_i64().unwrap())
            .collect()
    };
    let newest = get(server.addr, "/api/v1/rooms/log/messages?limit=3")
        .await
        .json();
    assert_eq!(ids(&newest), [5, 6, 7]);
    assert_eq!(newest["more"], true);
    let older = get(server.addr, "/api/v1/rooms/log/messages?limit=3&before=5")
        .await
        .json();
    assert_eq!(ids(&older), [2, 3, 4]);
    let after = get(server.addr, "/api/v1/rooms/log/messages?after=5")
        .await
        .json();
    assert_eq!(ids(&after), [6, 7]);
    assert_eq!(after["more"], false);
    let between = get(server.addr, "/api/v1/rooms/log/messages?after=2&before=5")
        .await
        .json();
    assert_eq!(ids(&between), [3, 4]);
    assert_eq!(between["more"], false);
    server.stop().await;
}

#[tokio::test]
async fn bad_paging_values_and_names_are_400s() {
    let server = server().await;
    publish(&server, "lobby", "bot", "hi").await;
    for query in [
        "limit=0",
        "limit=501",
        "limit=abc",
        "limit=",
        "before=0",
        "after=-1",
        "before=1.5",
    ] {
        get(
            server.addr,
            &format!("/api/v1/rooms/lobby/messages?{query}"),
        )
        .await
        .error(400, "invalid");
    }
    for query in ["limit=0", "limit=1001", "limit=x"] {
        get(server.addr, &format!("/api/v1/rooms?{query}"))
            .await
            .error(400, "invalid");
    }
    // `a/b` (escaped), white space at the end, a control character.
    for room in ["a%2Fb", "x%20", "a%07b"] {
        get(server.addr, &format!("/api/v1/rooms/{room}/messages"))
            .await
            .error(400, "invalid_room");
    }
    let path = "/api/v1/rooms/lobby/messages";
    post(
        server.addr,
        path,
        &json!({"from": "echo", "body": "x"}),
        &[],
    )
    .await
    .error(400, "invalid_user");
    post(server.addr, path, &json!({"body": "x"}), &[])
        .await
        .error(400, "invalid");
    post(
        server.addr,
        path,
        &json!({"from": "a", "body": "x", "extra": 1}),
        &[],
    )
    .await
    .error(400, "invalid");
    let auth = format!("Bearer {KEY}");
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    request(server.addr, "POST", path, &headers, Some(b"{not json"))
        .await
        .error(400, "invalid");
    request(
        server.addr,
        "POST",
        path,
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "text/plain"),
        ],
        Some(b"hello"),
    )
    .await
    .error(415, "unsupported_media_type");
    post(
        server.addr,
        path,
        &json!({"from": "a", "body": "x"}),
        &[("Idempotency-Key", "")],
    )
    .await
    .error(400, "invalid");
    server.stop().await;
}

#[tokio::test]
async fn unknown_rooms_users_and_endpoints_are_404s() {
    let server = server().await;
    get(server.addr, "/api/v1/rooms/nowhere")
        .await
        .error(404, "unknown_room");
    get(server.addr, "/api/v1/rooms/nowhere/messages")
        .await
        .error(404, "unknown_room");
    get(server.addr, "/api/v1/rooms/nowhere/presence")
        .await
        .error(404, "unknown_room");
    post(
        server.addr,
        "/api/v1/users/ghost/messages",
        &json!({"from": "bot", "body": "hi"}),
        &[],
    )
    .await
    .error(404, "unknown_user");
    get(server.addr, "/api/v1/nothing-here")
        .await
        .error(404, "not_found");
    get(server.addr, "/api/v2/rooms")
        .await
        .error(404, "not_found");
    let auth = format!("Bearer {KEY}");
    request(
        server.addr,
        "DELETE",
        "/api/v1/rooms",
        &[("Authorization", &auth)],
        None,
    )
    .await
    .error(405, "method_not_allowed");
    // Outside /api/ the chat's own routes are untouched.
    let page = request(server.addr, "GET", "/web/", &[], None).await;
    assert_eq!(page.status, 200);
    server.stop().await;
}

#[tokio::test]
async fn oversized_messages_and_bodies_are_413s() {
    let server = TestServer::start(settings_with(with_key(Overrides {
        max_message_bytes: Some(1000),
        max_frame_bytes: Some(4000),
        ..Overrides::default()
    })))
    .await;
    let path = "/api/v1/rooms/lobby/messages";
    let too_long = "x".repeat(1001);
    post(
        server.addr,
        path,
        &json!({"from": "a", "body": too_long}),
        &[],
    )
    .await
    .error(413, "too_large");
    let just_right = "x".repeat(1000);
    let ok = post(
        server.addr,
        path,
        &json!({"from": "a", "body": just_right}),
        &[],
    )
    .await;
    assert_eq!(ok.status, 201);
    // A body far past any message: refused before it is parsed.
    let huge = json!({"from": "a", "body": "y".repeat(200_000)});
    post(server.addr, path, &huge, &[])
        .await
        .error(413, "too_large");
    let kick = json!({"reason": "z".repeat(200_000)});
    post(server.addr, "/api/v1/users/a/disconnect", &kick, &[])
        .await
        .error(413, "too_large");
    // Nothing of the refused ones was stored.
    let page = get(server.addr, "/api/v1/rooms/lobby/messages")
        .await
        .json();
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
    server.stop().await;
}

/// A retried publish with the same key is answered with the first
/// message and stored once; the same key for another message is refused.
#[tokio::test]
async fn an_idempotency_key_stores_a_retried_publish_once() {
    let server = server().await;
    let (mut alice, _) = server.member("alice", "lobby").await;
    let path = "/api/v1/rooms/lobby/messages";
    let body = json!({"from": "billing", "body": "invoice #7 paid"});
    let key = [("Idempotency-Key", "invoice-7-paid")];

    let first = post(server.addr, path, &body, &key).await;
    assert_eq!(first.status, 201);
    assert_eq!(first.header("idempotent-replayed"), None);
    let retry = post(server.addr, path, &body, &key).await;
    assert_eq!(retry.status, 201);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.json(), first.json());

    let m = alice.expect("message").await;
    assert_eq!(m["id"], first.json()["id"]);
    alice.no_chat_for(Duration::from_millis(300)).await;
    let page = get(server.addr, "/api/v1/rooms/lobby/messages")
        .await
        .json();
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);

    let other = json!({"from": "billing", "body": "something else"});
    post(server.addr, path, &other, &key)
        .await
        .error(409, "idempotency_mismatch");
    post(server.addr, "/api/v1/rooms/elsewhere/messages", &body, &key)
        .await
        .error(409, "idempotency_mismatch");
    // Concurrent retries still store one message.
    let key2 = [("Idempotency-Key", "burst")];
    let answers =
        futures_util::future::join_all((0..8).map(|_| post(server.addr, path, &body, &key2))).await;
    let ids: std::collections::BTreeSet<String> = answers
        .iter()
        .filter(|a| a.status == 201)
        .map(|a| a.json()["id"].to_string())
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    for a in answers.iter().filter(|a| a.status != 201) {
        a.error(409, "idempotency_in_progress");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_rest_direct_message_reaches_every_connection_of_the_user() {
    let server = server().await;
    let mut bob1 = server.native("bob").await;
    let mut bob2 = server.native("bob").await;
    let mut eve = server.native("eve").await;
    let a = post(
        server.addr,
        "/api/v1/users/bob/messages",
        &json!({"from": "support", "body": "your ticket is closed"}),
        &[("Idempotency-Key", "t-1")],
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text());
    let sent = a.json();
    assert_eq!(
        (sent["from"].as_str(), sent["to"].as_str()),
        (Some("support"), Some("bob"))
    );
    for c in [&mut bob1, &mut bob2] {
        let dm = c.expect("dm").await;
        assert_eq!(dm["id"], sent["id"]);
        assert_eq!(dm["body"], "your ticket is closed");
    }
    eve.no_chat_for(Duration::from_millis(200)).await;
    server.stop().await;
}

#[tokio::test]
async fn presence_counts_connections_and_rooms_are_listed_in_pages() {
    let server = server().await;
    let (_a1, _) = server.member("alice", "lobby").await;
    let (_a2, _) = server.member("alice", "lobby").await;
    let (_b, _) = server.member("bob", "lobby").await;
    let presence = get(server.addr, "/api/v1/rooms/lobby/presence").await;
    assert_eq!(presence.status, 200);
    assert_eq!(
        presence.json(),
        json!({"room": "lobby", "users": [
            {"user": "alice", "connections": 2},
            {"user": "bob", "connections": 1},
        ]})
    );
    for room in ["r1", "r2", "r3", "r4"] {
        publish(&server, room, "bot", "hi").await;
    }
    let room = get(server.addr, "/api/v1/rooms/lobby").await.json();
    assert_eq!(room["users_online"], 2);
    assert_eq!(room["last_message_id"], Value::Null);
    let mut names = Vec::new();
    let mut path = "/api/v1/rooms?limit=2".to_owned();
    loop {
        let page = get(server.addr, &path).await;
        assert_eq!(page.status, 200, "{}", page.text());
        let page = page.json();
        for r in page["rooms"].as_array().unwrap() {
            names.push(r["name"].as_str().unwrap().to_owned());
            if r["name"] == "r3" {
                assert_eq!(r["last_message_id"], 1);
                assert!(r["last_message_ts"].as_i64().unwrap() > 0);
            }
            if r["name"] == "lobby" {
                assert_eq!(r["users_online"], 2);
            }
        }
        match page["next"].as_str() {
            Some(next) => path = format!("/api/v1/rooms?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(names, ["lobby", "r1", "r2", "r3", "r4"]);
    server.stop().await;
}

async fn close_frame(c: &mut Client) -> (u16, String) {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), c.ws.next())
            .await
            .expect("close in time");
        match msg {
            Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                return (u16::from(code), reason.to_string())
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// A kick closes every connection of the user, on every protocol, with
/// 4000 and the reason given; other users stay.
#[tokio::test]
async fn a_kick_closes_the_users_sockets_with_the_reason() {
    let server = server().await;
    let (mut mallory1, _) = server.member("mallory", "lobby").await;
    let mut mallory2 = server.connect("/ws/mallory/").await;
    let (mut alice, _) = server.member("alice", "lobby").await;
    // Wait until the tutorial connection is registered.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let a = post(
        server.addr,
        "/api/v1/users/mallory/disconnect",
        &json!({"reason": "spam: see the rules"}),
        &[],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json(), json!({"user": "mallory", "connections": 2}));
    for c in [&mut mallory1, &mut mallory2] {
        assert_eq!(
            close_frame(c).await,
            (4000, "spam: see the rules".to_owned())
        );
    }
    alice.say("lobby", "still here", "s").await;

    // Without a body: the default reason. Nobody connected: zero.
    let (mut again, _) = server.member("mallory", "lobby").await;
    let auth = format!("Bearer {KEY}");
    let a = request(
        server.addr,
        "POST",
        "/api/v1/users/mallory/disconnect",
        &[("Authorization", &auth)],
        Some(b""),
    )
    .await;
    assert_eq!(a.json()["connections"], 1);
    assert_eq!(
        close_frame(&mut again).await,
        (4000, "disconnected by the server".to_owned())
    );
    let none = post(
        server.addr,
        "/api/v1/users/nobody/disconnect",
        &json!({}),
        &[],
    )
    .await;
    assert_eq!(none.json()["connections"], 0);
    post(
        server.addr,
        "/api/v1/users/x/disconnect",
        &json!({"reason": "a\nb"}),
        &[],
    )
    .await
    .error(400, "invalid");
    server.stop().await;
}

#[tokio::test]
async fn tokens_are_minted_for_the_configured_secret() {
    let secret = "a-token-secret-of-24-bytes";
    let server = TestServer::start(settings_with(with_key(Overrides {
        token_secret: Some(secret.parse().unwrap()),
        ..Overrides::default()
    })))
    .await;
    let a = post(
        server.addr,
        "/api/v1/tokens",
        &json!({"user": "carol", "ttl_seconds": 60}),
        &[],
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text());
    let token = a.json()["token"].as_str().unwrap().to_owned();
    let mut c = server.connect("/socket").await;
    c.send_json(json!({"type": "hello", "token": token})).await;
    assert_eq!(c.expect("welcome").await["user"], "carol");
    post(
        server.addr,
        "/api/v1/tokens",
        &json!({"user": "c", "ttl_seconds": 0}),
        &[],
    )
    .await
    .error(400, "invalid");
    server.stop().await;

    let plain = server_without_secret().await;
    post(plain.addr, "/api/v1/tokens", &json!({"user": "carol"}), &[])
        .await
        .error(409, "not_configured");
    plain.stop().await;
}

async fn server_without_secret() -> TestServer {
    server().await
}

#[tokio::test]
async fn cors_allows_only_the_configured_origins_and_only_on_the_api() {
    let preflight = |origin: &'static str| {
        [
            ("Origin", origin),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization,content-type",
            ),
        ]
    };
    let server = TestServer::start(settings_with(with_key(Overrides {
        cors_origins: Some(vec!["https://app.example".into()]),
        ..Overrides::default()
    })))
    .await;
    let ok = request(
        server.addr,
        "OPTIONS",
        "/api/v1/rooms/lobby/messages",
        &preflight("https://app.example"),
        None,
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(ok
        .header("access-control-allow-headers")
        .is_some_and(|h| h.contains("authorization")));
    let auth = format!("Bearer {KEY}");
    let simple = request(
        server.addr,
        "GET",
        "/api/v1/rooms",
        &[("Origin", "https://app.example"), ("Authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(simple.status, 200);
    assert_eq!(
        simple.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    let evil = request(
        server.addr,
        "OPTIONS",
        "/api/v1/rooms",
        &preflight("https://evil.example"),
        None,
    )
    .await;
    assert_eq!(evil.header("access-control-allow-origin"), None);
    let outside = request(
        server.addr,
        "GET",
        "/healthz",
        &[("Origin", "https://app.example")],
        None,
    )
    .await;
    assert_eq!(outside.header("access-control-allow-origin"), None);
    server.stop().await;

    // The default: no cross-origin access at all.
    let closed = server_without_secret().await;
    let none = request(
        closed.addr,
        "OPTIONS",
        "/api/v1/rooms",
        &preflight("https://app.example"),
        None,
    )
    .await;
    assert_eq!(none.header("access-control-allow-origin"), None);
    closed.stop().await;
}
