//! History: replay on join, `since` resume (also across a restart), and
//! paging.

use serde_json::{json, Value};

use crate::common::{settings_with, TestServer};
use confab::config::Overrides;

fn file_store(dir: &tempfile::TempDir) -> confab::Settings {
    settings_with(Overrides {
        store: Some(format!("sqlite://{}/confab.db", dir.path().display())),
        history_replay: Some(5),
        ..Overrides::default()
    })
}

fn bodies(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_owned())
        .collect()
}

/// A join without `since` replays the last N; `history` pages back.
#[tokio::test]
async fn join_replays_the_last_messages_and_history_pages_back() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(file_store(&dir)).await;
    let (mut a, _) = server.member("a", "r").await;
    for i in 1..=8 {
        a.say("r", &format!("m{i}"), &format!("c{i}")).await;
    }

    let (mut b, joined) = server.member("b", "r").await;

    assert_eq!(bodies(&joined["history"]), ["m4", "m5", "m6", "m7", "m8"]);
    assert_eq!(joined["more"], true);
    let oldest = joined["history"][0]["id"].as_i64().unwrap();
    b.send_json(json!({"type": "history", "id": "h", "room": "r", "before": oldest, "limit": 2}))
        .await;
    let page = b.expect("history").await;
    assert_eq!(bodies(&page["messages"]), ["m2", "m3"]);
    assert_eq!(page["more"], true);
}

/// Resume with `since` after a server restart replays exactly what was
/// missed: no gap, no duplicate.
#[tokio::test]
async fn since_replays_exactly_the_missed_messages_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(file_store(&dir)).await;
    let (mut a, _) = server.member("a", "r").await;
    let (mut b, _) = server.member("b", "r").await;
    let mut seen = 0;
    for i in 1..=3 {
        a.say("r", &format!("before{i}"), &format!("x{i}")).await;
        seen = b.expect("message").await["id"].as_i64().unwrap();
    }
    drop(b);
    for i in 1..=4 {
        a.say("r", &format!("missed{i}"), &format!("y{i}")).await;
    }
    server.stop().await;

    let server = TestServer::start(file_store(&dir)).await;
    let mut b = server.native("b").await;
    let joined = b.join("r", Some(seen)).await;

    assert_eq!(
        bodies(&joined["history"]),
        ["missed1", "missed2", "missed3", "missed4"]
    );
    assert_eq!(joined["more"], false);
    let (mut a, _) = server.member("a", "r").await;
    a.say("r", "after restart", "z").await;
    let live = b.expect("message").await;
    assert_eq!(live["body"], "after restart");
    assert_eq!(live["id"].as_i64().unwrap(), seen + 5);
}

/// `dm_since` on hello replays exactly the direct messages after it, both
/// directions, across a restart; `history with` pages a conversation.
#[tokio::test]
async fn dm_since_resumes_direct_messages_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(file_store(&dir)).await;
    let mut alice = server.native("alice").await;
    let mut bob = server.native("bob").await;
    alice
        .send_json(json!({"type": "dm", "id": "1", "to": "bob", "body": "one"}))
        .await;
    let seen = bob.expect("dm").await["id"].as_i64().unwrap();
    drop(bob);
    alice
        .send_json(json!({"type": "dm", "id": "2", "to": "bob", "body": "two"}))
        .await;
    for kind in ["dm", "ack", "dm", "ack"] {
        alice.expect(kind).await;
    }
    server.stop().await;

    let server = TestServer::start(file_store(&dir)).await;
    let mut bob = server.connect("/socket").await;
    bob.send_json(json!({"type": "hello", "name": "bob", "dm_since": seen}))
        .await;
    bob.expect("welcome").await;
    let replayed = bob.expect("dm").await;
    assert_eq!(replayed["body"], "two");
    bob.send_json(json!({"type": "dm", "id": "3", "to": "alice", "body": "three"}))
        .await;
    bob.expect("dm").await;
    bob.expect("ack").await;

    bob.send_json(json!({"type": "history", "id": "h", "with": "alice"}))
        .await;
    let page = bob.expect("history").await;
    assert_eq!(bodies(&page["messages"]), ["one", "two", "three"]);
}

/// With `--history-keep`, a room keeps its newest messages, older ones are
/// deleted, and ids go on where they were.
#[tokio::test]
async fn a_room_keeps_only_its_newest_messages() {
    let server = TestServer::start(settings_with(Overrides {
        history_keep: Some(16),
        rate_limit: Some(0),
        ..Overrides::default()
    }))
    .await;
    let (mut a, _) = server.member("a", "r").await;
    for i in 1..=40 {
        a.say("r", &format!("m{i}"), &format!("c{i}")).await;
    }
    // What m40 pushed out is deleted with the next batch, or on its own
    // if no batch waits: either way, once this is stored, it is gone.
    a.join("other", None).await;
    a.say("other", "sync", "s").await;

    let mut b = server.native("b").await;
    let joined = b.join("r", Some(0)).await;
    let expected: Vec<String> = (25..=40).map(|i| format!("m{i}")).collect();
    assert_eq!(bodies(&joined["history"]), expected);
    assert_eq!(joined["more"], false);
    let (_, next) = a.say("r", "m41", "c41").await;
    assert_eq!(next["id"], 41);
}
