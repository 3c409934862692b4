//! The tutorial protocols, verbatim, and their bridge to the native one.

use std::time::Duration;

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{settings, Client, TestServer};

/// Seeds 000 and 004: `/chat/` broadcasts a text frame to every
/// connection of the global room, the sender included.
#[tokio::test]
async fn chat_path_broadcasts_plain_text_to_everyone_including_the_sender() {
    let server = TestServer::start(settings()).await;
    let mut a = server.connect("/chat/").await;
    let mut b = server.connect("/chat/").await;

    a.send_text("hello, world").await;

    assert_eq!(a.next_text().await, "hello, world");
    assert_eq!(b.next_text().await, "hello, world");
}

/// Seed 004: `close` is broadcast, then the sender gets a goodbye and a
/// 1000 close; the others stay connected.
#[tokio::test]
async fn chat_close_command_broadcasts_then_says_goodbye_and_closes() {
    let server = TestServer::start(settings()).await;
    let mut a = server.connect("/chat/").await;
    let mut b = server.connect("/chat/").await;

    a.send_text("close").await;

    assert_eq!(a.next_text().await, "close");
    assert_eq!(a.next_text().await, confab::session::GOODBYE);
    assert_eq!(a.closed().await, 1000);
    assert_eq!(b.next_text().await, "close");
    b.send_text("still here").await;
    assert_eq!(b.next_text().await, "still here");
}

/// Seed 002's broadcast step: `/ws/` shares the global room with `/chat/`.
#[tokio::test]
async fn ws_path_and_chat_path_share_the_global_room() {
    let server = TestServer::start(settings()).await;
    let mut chat = server.connect("/chat/").await;
    let mut ws = server.connect("/ws/").await;

    ws.send_text("from /ws/").await;

    assert_eq!(chat.next_text().await, "from /ws/");
    assert_eq!(ws.next_text().await, "from /ws/");
}

/// Seed 001: `{"message": …}` reaches every connection of that room and
/// no other room.
#[tokio::test]
async fn room_json_reaches_its_room_only() {
    let server = TestServer::start(settings()).await;
    let mut a = server.connect("/ws/chat/lobby/").await;
    let mut b = server.connect("/ws/chat/lobby/").await;
    let mut other = server.connect("/ws/chat/kitchen/").await;

    a.send_json(json!({"message": "hi lobby", "user": "ignored"}))
        .await;

    for c in [&mut a, &mut b] {
        let v = c.next_json().await;
        assert_eq!(v["message"], "hi lobby");
    }
    other.silent_for(Duration::from_millis(300)).await;
}

/// Seed 001 behaviour for bad input: a JSON error with no `message` key,
/// and the connection stays usable.
#[tokio::test]
async fn room_json_reports_bad_frames_and_stays_open() {
    let server = TestServer::start(settings()).await;
    let mut a = server.connect("/ws/chat/lobby/").await;

    a.send_text("{oops").await;
    let err = a.next_json().await;
    assert_eq!(err["error"], "malformed");
    assert!(err.get("message").is_none());

    a.send_json(json!({"message": "after"})).await;
    assert_eq!(a.next_json().await["message"], "after");
}

/// Seed 002's peer-to-peer step: `to_user` reaches every connection of
/// that user and nobody else; without it, the global room.
#[tokio::test]
async fn user_path_delivers_to_user_only_and_broadcasts_without_to_user() {
    let server = TestServer::start(settings()).await;
    let mut alice = server.connect("/ws/alice/").await;
    let mut bob1 = server.connect("/ws/bob/").await;
    let mut bob2 = server.connect("/ws/bob/").await;
    let mut carol = server.connect("/ws/carol/").await;

    alice
        .send_json(json!({"message": "psst", "to_user": "bob"}))
        .await;

    for bob in [&mut bob1, &mut bob2] {
        let v = bob.next_json().await;
        assert_eq!(
            (v["message"].as_str(), v["to_user"].as_str()),
            (Some("psst"), Some("bob"))
        );
        assert_eq!(v["from_user"], "alice");
    }
    carol.silent_for(Duration::from_millis(300)).await;

    alice.send_json(json!({"message": "everyone"})).await;
    for c in [&mut alice, &mut bob1, &mut bob2, &mut carol] {
        assert_eq!(c.next_json().await["message"], "everyone");
    }
}

/// Seed 001's first step: `/ws/echo/` returns every frame unchanged.
#[tokio::test]
async fn echo_returns_text_and_binary_frames_unchanged() {
    use futures_util::{SinkExt, StreamExt};
    let server = TestServer::start(settings()).await;
    let mut c = server.connect("/ws/echo/").await;

    c.ws.send(Message::text("héllo")).await.unwrap();
    c.ws.send(Message::binary(vec![0u8, 255, 7])).await.unwrap();

    assert_eq!(c.ws.next().await.unwrap().unwrap(), Message::text("héllo"));
    assert_eq!(
        c.ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 255, 7])
    );
}

/// One hub under every protocol: a tutorial client and a native client in
/// `lobby` hear each other, and both messages are in the history.
#[tokio::test]
async fn tutorial_and_native_clients_share_a_room_and_its_history() {
    let server = TestServer::start(settings()).await;
    let mut tutorial = server.connect("/ws/chat/lobby/").await;
    let (mut native, _) = server.member("nadia", "lobby").await;

    tutorial
        .send_json(json!({"message": "from the tutorial"}))
        .await;
    let m = native.expect("message").await;
    assert_eq!(m["body"], "from the tutorial");
    assert!(m["from"].as_str().unwrap().starts_with("guest-"));
    assert_eq!(tutorial.next_json().await["message"], "from the tutorial");

    native.say("lobby", "from native", "n1").await;
    assert_eq!(tutorial.next_json().await["message"], "from native");

    let mut late = server.native("lars").await;
    let joined = late.join("lobby", None).await;
    let bodies = crate::common::bodies(&joined["history"]);
    assert_eq!(bodies, ["from the tutorial", "from native"]);
}

/// Plain-text clients of the global room hear native messages there.
#[tokio::test]
async fn native_messages_to_global_reach_plain_text_clients() {
    let server = TestServer::start(settings()).await;
    let mut chat = server.connect("/chat/").await;
    let (mut native, _) = server.member("nadia", "global").await;

    native.say("global", "hi plain text", "g1").await;

    assert_eq!(chat.next_text().await, "hi plain text");
}

/// A native DM reaches a tutorial `/ws/<username>/` client.
#[tokio::test]
async fn native_dm_reaches_a_tutorial_user() {
    let server = TestServer::start(settings()).await;
    let mut bob = server.connect("/ws/bob/").await;
    let mut alice = server.native("alice").await;
    // bob's registration happens as his socket opens; wait for it.
    tokio::time::sleep(Duration::from_millis(100)).await;

    alice
        .send_json(json!({"type": "dm", "id": "d1", "to": "bob", "body": "yo"}))
        .await;

    let v: Value = bob.next_json().await;
    assert_eq!(
        (v["message"].as_str(), v["from_user"].as_str()),
        (Some("yo"), Some("alice"))
    );
}

/// Invalid names in tutorial paths are 404s, before any upgrade.
#[tokio::test]
async fn invalid_names_in_tutorial_paths_are_not_found() {
    let server = TestServer::start(settings()).await;
    let long = "x".repeat(65);
    for path in [
        format!("/ws/chat/{long}/"),
        "/ws/chat/a%07b/".into(),
        format!("/ws/{long}/"),
        "/ws/chat/".into(),
    ] {
        let got = Client::try_connect(&server.url(&path), &[]).await.err();
        assert_eq!(got, Some(404), "{path}");
    }
}

/// Guests (anonymous tutorial connections) are nobody's correspondent: no
/// client can take a `guest-` name, and a DM to a guest is refused, so a
/// later guest given the same number inherits nothing. Their messages are
/// history like anyone's.
#[tokio::test]
async fn guest_names_are_the_servers_and_guests_get_no_direct_messages() {
    let server = TestServer::start(settings()).await;
    let mut tutorial = server.connect("/ws/chat/lobby/").await;
    let (mut native, _) = server.member("nadia", "lobby").await;
    tutorial.send_json(json!({"message": "hello"})).await;
    let guest = native.expect("message").await["from"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(guest.starts_with("guest-"));

    native
        .send_json(json!({"type": "dm", "id": "g", "to": guest, "body": "psst"}))
        .await;
    let err = native.expect("error").await;
    assert_eq!(err["code"], "unknown_user");
    assert_eq!(err["reply_to"], "g");

    let mut impostor = server.connect("/socket").await;
    impostor
        .send_json(json!({"type": "hello", "id": "h", "name": guest}))
        .await;
    let err = impostor.expect("error").await;
    assert_eq!(err["code"], "invalid_user");
    assert_eq!(
        Client::try_connect(&server.url(&format!("/ws/{guest}/")), &[])
            .await
            .err(),
        Some(404)
    );
}

/// Deliveries are written as shared frames beneath tungstenite, which
/// writes its own (pongs) on the same socket: pings sent while a stream of
/// messages is being written are each answered, and every frame arrives
/// whole and in order.
#[tokio::test]
async fn pings_amid_a_stream_of_messages_are_answered_and_no_frame_is_torn() {
    use futures_util::{SinkExt, StreamExt};

    let server = TestServer::start(crate::common::settings_with(confab::config::Overrides {
        rate_limit: Some(0),
        ..Default::default()
    }))
    .await;
    let sender = server.connect("/ws/chat/lobby/").await;
    let mut reader = server.connect("/ws/chat/lobby/").await;
    const MESSAGES: usize = 400;
    // Long enough that a batch of queued frames can pass the socket's
    // 32 KiB write buffer mark and go out in more than one write.
    let body = "x".repeat(1000);

    // The sender gets its own messages too: drain them as it goes.
    let (mut tx, mut rx) = sender.ws.split();
    let say = async {
        for i in 0..MESSAGES {
            let text = json!({"message": format!("{i} {body}")}).to_string();
            tx.send(Message::text(text)).await.unwrap();
        }
    };
    let drain = async {
        for _ in 0..MESSAGES {
            rx.next().await.expect("connection open").expect("frame ok");
        }
    };
    let read = async {
        let (mut got, mut pings, mut pongs) = (Vec::new(), 0u32, Vec::new());
        while got.len() < MESSAGES || pongs.len() < pings as usize {
            if got.len() % 8 == 0 && pings as usize <= got.len() / 8 {
                reader
                    .ws
                    .send(Message::Ping(pings.to_be_bytes().to_vec().into()))
                    .await
                    .unwrap();
                pings += 1;
            }
            let msg = tokio::time::timeout(crate::common::WAIT, reader.ws.next())
                .await
                .expect("a frame in time")
                .expect("connection open")
                .expect("a whole, valid frame");
            match msg {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).expect("a whole JSON message");
                    let text = v["message"].as_str().unwrap().to_owned();
                    got.push(text.split(' ').next().unwrap().parse::<usize>().unwrap());
                }
                Message::Pong(p) => pongs.push(u32::from_be_bytes(p[..].try_into().unwrap())),
                other => panic!("unexpected {other:?}"),
            }
        }
        (got, pings, pongs)
    };
    let ((), (), (got, pings, pongs)) = tokio::join!(say, drain, read);

    assert_eq!(
        got,
        (0..MESSAGES).collect::<Vec<_>>(),
        "every message, in order"
    );
    assert!(pings > 10, "pings were sent while messages flowed");
    assert_eq!(
        pongs,
        (0..pings).collect::<Vec<_>>(),
        "every ping answered, in order"
    );
}

/// On a runtime of one worker, the fan-out writes a message straight to
/// an idle tutorial connection; once that connection's socket is full, a
/// frame is left half written and the rest must follow, whole and before
/// anything else.
#[tokio::test]
async fn a_listener_that_stops_reading_gets_every_message_whole_and_in_order_after() {
    listener_that_stops_reading().await;
}

/// With several workers every delivery goes through the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_stops_reading_gets_every_message_on_several_workers_too() {
    listener_that_stops_reading().await;
}

async fn listener_that_stops_reading() {
    let server = TestServer::start(crate::common::settings_with(confab::config::Overrides {
        rate_limit: Some(0),
        max_message_bytes: Some(60_000),
        ..Default::default()
    }))
    .await;
    let mut sender = server.connect("/ws/chat/lobby/").await;
    let mut reader = server.connect("/ws/chat/lobby/").await;
    // About 20 MB: far more than the sockets between them hold.
    const MESSAGES: usize = 400;
    let body = "y".repeat(50_000);
    let number = |v: Value| -> usize {
        let text = v["message"].as_str().expect("a whole tutorial message");
        text.split(' ').next().unwrap().parse().unwrap()
    };

    // One at a time, so that each is a batch of its own and the reader,
    // which reads nothing yet, is written to by the fan-out.
    for i in 0..MESSAGES {
        sender
            .send_json(json!({"message": format!("{i} {body}")}))
            .await;
        assert_eq!(number(sender.next_json().await), i);
    }
    let mut got = Vec::new();
    for _ in 0..MESSAGES {
        got.push(number(reader.next_json().await));
    }
    assert_eq!(
        got,
        (0..MESSAGES).collect::<Vec<_>>(),
        "every message, in order"
    );
}
