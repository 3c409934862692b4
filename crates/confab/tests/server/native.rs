//! The native protocol: rooms, direct messages, presence, typing, errors.

use std::time::Duration;

use serde_json::json;

use crate::common::{settings, settings_with, TestServer};

/// A send is acknowledged with the server id, and every member (sender
/// included) gets the message; another room gets nothing.
#[tokio::test]
async fn a_room_message_reaches_members_only_and_is_acknowledged() {
    let server = TestServer::start(settings()).await;
    let (mut alice, _) = server.member("alice", "lobby").await;
    let (mut bob, _) = server.member("bob", "lobby").await;
    let (mut carol, _) = server.member("carol", "kitchen").await;

    let (ack, mine) = alice.say("lobby", "hello bob", "c1").await;

    assert_eq!(ack["msg_id"], mine["id"]);
    assert_eq!(ack["ts"], mine["ts"]);
    let got = bob.expect("message").await;
    assert_eq!(
        (got["from"].as_str(), got["body"].as_str()),
        (Some("alice"), Some("hello bob"))
    );
    assert_eq!(got["id"], mine["id"]);
    carol.no_chat_for(Duration::from_millis(300)).await;
}

/// Ids increase per room in delivery order.
#[tokio::test]
async fn message_ids_increase_in_delivery_order() {
    let server = TestServer::start(settings()).await;
    let (mut a, _) = server.member("a", "r").await;
    let (mut b, _) = server.member("b", "r").await;
    let (mut watcher, _) = server.member("w", "r").await;

    for i in 0..20 {
        let (c, id) = if i % 2 == 0 {
            (&mut a, "a")
        } else {
            (&mut b, "b")
        };
        c.send_json(
            json!({"type": "send", "id": format!("{id}{i}"), "room": "r", "body": i.to_string()}),
        )
        .await;
    }
    let mut last = 0;
    for _ in 0..20 {
        let m = watcher.expect("message").await;
        let id = m["id"].as_i64().unwrap();
        assert!(id > last, "{id} after {last}");
        last = id;
    }
}

/// A DM reaches every connection of the recipient and the sender's other
/// connections, and nobody else.
#[tokio::test]
async fn a_direct_message_reaches_both_users_tabs_and_nobody_else() {
    let server = TestServer::start(settings()).await;
    let mut alice1 = server.native("alice").await;
    let mut alice2 = server.native("alice").await;
    let mut bob1 = server.native("bob").await;
    let mut bob2 = server.native("bob").await;
    let mut eve = server.native("eve").await;

    alice1
        .send_json(json!({"type": "dm", "id": "d1", "to": "bob", "body": "secret"}))
        .await;

    let own = alice1.expect("dm").await;
    let ack = alice1.expect("ack").await;
    assert_eq!(own["id"], ack["msg_id"]);
    for c in [&mut bob1, &mut bob2, &mut alice2] {
        let dm = c.expect("dm").await;
        assert_eq!(
            (dm["from"].as_str(), dm["to"].as_str(), dm["body"].as_str()),
            (Some("alice"), Some("bob"), Some("secret"))
        );
        assert_eq!(dm["id"], ack["msg_id"]);
    }
    eve.no_chat_for(Duration::from_millis(300)).await;
}

/// A DM to a user who never connected is refused; one to an offline user
/// is stored and delivered when they connect.
#[tokio::test]
async fn direct_messages_to_offline_users_wait_and_unknown_users_are_refused() {
    let server = TestServer::start(settings()).await;
    drop(server.native("bob").await);
    let mut alice = server.native("alice").await;

    alice
        .send_json(json!({"type": "dm", "id": "x", "to": "nobody", "body": "?"}))
        .await;
    let err = alice.expect("error").await;
    assert_eq!(
        (err["code"].as_str(), err["reply_to"].as_str()),
        (Some("unknown_user"), Some("x"))
    );

    alice
        .send_json(json!({"type": "dm", "id": "d1", "to": "bob", "body": "while you were out"}))
        .await;
    alice.expect("dm").await;
    alice.expect("ack").await;

    let mut bob = server.native("bob").await;
    let dm = bob.expect("dm").await;
    assert_eq!(dm["body"], "while you were out");
    // Delivered once: a second connection does not get it again.
    let mut bob_again = server.native("bob").await;
    bob_again.silent_for(Duration::from_millis(300)).await;
}

/// Presence: the member list on join, and join/leave events once per
/// user, not per connection.
#[tokio::test]
async fn presence_events_fire_per_user_not_per_tab() {
    let server = TestServer::start(settings()).await;
    let (mut alice, joined) = server.member("alice", "lobby").await;
    assert_eq!(joined["members"], json!(["alice"]));
    let p = alice.next_json().await;
    assert_eq!(
        p,
        json!({"type": "presence", "room": "lobby", "user": "alice", "event": "join"})
    );

    let (bob1, joined) = server.member("bob", "lobby").await;
    assert_eq!(joined["members"], json!(["alice", "bob"]));
    assert_eq!(alice.next_json().await["user"], "bob");
    let (bob2, _) = server.member("bob", "lobby").await;
    alice.silent_for(Duration::from_millis(300)).await;

    drop(bob1);
    alice.silent_for(Duration::from_millis(300)).await;
    drop(bob2);
    let p = alice.next_json().await;
    assert_eq!(
        p,
        json!({"type": "presence", "room": "lobby", "user": "bob", "event": "leave"})
    );
}

/// Typing reaches the other members, not the typist.
#[tokio::test]
async fn typing_reaches_others_but_not_the_typist() {
    let server = TestServer::start(settings()).await;
    let (mut alice, _) = server.member("alice", "lobby").await;
    let (mut bob, _) = server.member("bob", "lobby").await;
    alice.next_json().await; // bob's join

    alice
        .send_json(json!({"type": "typing", "room": "lobby", "active": true}))
        .await;

    let t = loop {
        let v = bob.next_json().await;
        if v["type"] == "typing" {
            break v;
        }
    };
    assert_eq!(
        t,
        json!({"type": "typing", "room": "lobby", "from": "alice", "active": true})
    );
    alice.send_json(json!({"type": "ping", "id": "p"})).await;
    loop {
        let v = alice.next_json().await;
        assert_ne!(v["type"], "typing", "the typist saw its own typing");
        if v["type"] == "pong" {
            break;
        }
    }
}

/// Leave stops delivery; sending to a room not joined is `not_member`.
#[tokio::test]
async fn after_leaving_a_room_nothing_arrives_and_sending_is_refused() {
    let server = TestServer::start(settings()).await;
    let (mut alice, _) = server.member("alice", "lobby").await;
    let (mut bob, _) = server.member("bob", "lobby").await;

    bob.send_json(json!({"type": "leave", "id": "l", "room": "lobby"}))
        .await;
    assert_eq!(bob.expect("left").await["room"], "lobby");
    alice.say("lobby", "gone?", "1").await;
    bob.no_chat_for(Duration::from_millis(300)).await;

    bob.send_json(json!({"type": "send", "id": "s", "room": "lobby", "body": "x"}))
        .await;
    let err = bob.expect("error").await;
    assert_eq!(err["code"], "not_member");
}

/// Every malformed input gets an error with a code and the connection
/// keeps working.
#[tokio::test]
async fn malformed_frames_get_coded_errors_and_the_connection_stays_open() {
    let server = TestServer::start(settings()).await;
    let mut c = server.connect("/socket").await;

    c.send_json(json!({"type": "join", "id": "early", "room": "lobby"}))
        .await;
    assert_eq!(c.expect("error").await["code"], "not_identified");

    let mut c = server.native("ann").await;
    let cases = [
        ("{nope", "malformed", None),
        ("[1,2]", "malformed", None),
        (r#"{"type":"dance","id":"1"}"#, "unknown_type", Some("1")),
        (
            r#"{"type":"send","id":"2","room":"lobby"}"#,
            "invalid",
            Some("2"),
        ),
        (
            r#"{"type":"join","id":"3","room":""}"#,
            "invalid_room",
            Some("3"),
        ),
        (
            r#"{"type":"join","id":"4","room":"bell\u0007"}"#,
            "invalid_room",
            Some("4"),
        ),
        (
            r#"{"type":"dm","id":"5","to":"echo","body":"x"}"#,
            "invalid_user",
            Some("5"),
        ),
        (
            r#"{"type":"hello","id":"6","name":"again"}"#,
            "already_identified",
            Some("6"),
        ),
        (r#"{"type":"history","id":"7"}"#, "invalid", Some("7")),
    ];
    for (frame, code, reply_to) in cases {
        c.send_text(frame).await;
        let err = c.expect("error").await;
        assert_eq!(err["code"], code, "{frame}");
        assert_eq!(err["reply_to"].as_str(), reply_to, "{frame}");
        assert!(!err["message"].as_str().unwrap().is_empty());
    }
    c.send_json(json!({"type": "ping", "id": "p"})).await;
    assert_eq!(c.expect("pong").await["reply_to"], "p");
}

/// The `rooms` command lists rooms with their user counts.
#[tokio::test]
async fn rooms_lists_active_rooms_with_user_counts() {
    let server = TestServer::start(settings()).await;
    let (mut a, _) = server.member("a", "lobby").await;
    let _b = server.member("b", "lobby").await;
    let _c = server.member("c", "kitchen").await;

    a.send_json(json!({"type": "rooms", "id": "r"})).await;
    let rooms = a.expect("rooms").await;
    assert_eq!(
        rooms["rooms"],
        json!([{"name": "kitchen", "members": 1}, {"name": "lobby", "members": 2}])
    );
}

/// With a token secret, only a valid token names the user.
#[tokio::test]
async fn with_a_token_secret_hello_needs_a_valid_token() {
    let secret = "a-test-secret-of-some-length";
    let server = TestServer::start(settings_with(confab::config::Overrides {
        token_secret: Some(secret.parse().unwrap()),
        ..Default::default()
    }))
    .await;
    let token = confab::auth::mint(
        &secret.parse().unwrap(),
        &confab::protocol::UserName::parse("tina").unwrap(),
        60,
    )
    .unwrap();

    let mut ok = server.connect("/socket").await;
    ok.send_json(json!({"type": "hello", "name": "mallory", "token": token}))
        .await;
    assert_eq!(ok.expect("welcome").await["user"], "tina");

    let mut bad = server.connect("/socket").await;
    bad.send_json(json!({"type": "hello", "name": "mallory", "token": "forged"}))
        .await;
    assert_eq!(bad.expect("error").await["code"], "unauthorized");
    assert_eq!(bad.closed().await, 1008);
}
