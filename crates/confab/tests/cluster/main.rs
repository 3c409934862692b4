//! Cluster tests: two or three `confab` processes sharing Redis and
//! PostgreSQL. They need `CONFAB_TEST_REDIS_URL` and
//! `CONFAB_TEST_POSTGRES_URL`; without them each prints SKIP and passes.

#[path = "../server/common/mod.rs"]
mod common;
mod faults;
mod harness;
#[path = "../server/http_client.rs"]
mod http_client;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};

use common::Client;
use harness::{services, Cluster, TestDb};

/// A test's cluster: its own database and key prefix.
async fn setup(test: &str) -> Option<(Cluster, TestDb)> {
    let (redis, pg) = services(test)?;
    let db = TestDb::create(&pg).await;
    Some((Cluster::new(&redis, &db.url), db))
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect()
}

/// The next event of `kind` for which `pick` holds, skipping others.
/// An empty `kind` matches any type.
async fn wait_for(c: &mut Client, kind: &str, pick: impl Fn(&Value) -> bool) -> Value {
    loop {
        let v = c.next_json().await;
        if (kind.is_empty() || v["type"] == kind) && pick(&v) {
            return v;
        }
    }
}

#[tokio::test]
async fn a_room_message_reaches_members_on_another_node() {
    let Some((cluster, _db)) = setup("room_across_nodes").await else {
        return;
    };
    let (n1, n2) = (cluster.node("a").await, cluster.node("b").await);
    let mut alice = n1.member("alice", "lobby").await;
    let mut bob = n2.native("bob").await;
    let joined = bob.join("lobby", None).await;
    assert_eq!(joined["members"], json!(["alice", "bob"]));

    let (ack, _) = alice.say("lobby", "hello from node a", "c1").await;

    let got = bob.expect("message").await;
    assert_eq!(got["body"], "hello from node a");
    assert_eq!(got["id"], ack["msg_id"]);
    let (_, _) = bob.say("lobby", "and back", "c2").await;
    assert_eq!(alice.expect("message").await["body"], "and back");
}

#[tokio::test]
async fn a_direct_message_reaches_its_recipient_on_another_node() {
    let Some((cluster, _db)) = setup("dm_across_nodes").await else {
        return;
    };
    let (n1, n2) = (cluster.node("a").await, cluster.node("b").await);
    let mut alice = n1.native("alice").await;
    let mut bob = n2.native("bob").await;
    let mut bob_tab = n1.native("bob").await;

    alice
        .send_json(json!({"type": "dm", "id": "d1", "to": "bob", "body": "psst"}))
        .await;

    let dm = bob.expect("dm").await;
    assert_eq!(
        (dm["from"].as_str(), dm["body"].as_str()),
        (Some("alice"), Some("psst"))
    );
    assert_eq!(bob_tab.expect("dm").await["id"], dm["id"]);
    // The sender's own copy and ack arrive on its node too.
    let mut seen = HashSet::new();
    while seen.len() < 2 {
        let v = alice.next_json().await;
        seen.insert(v["type"].as_str().unwrap().to_owned());
    }
    assert!(seen.contains("ack") && seen.contains("dm"), "{seen:?}");
}

#[tokio::test]
async fn presence_counts_every_node_and_fires_once_per_user() {
    let Some((cluster, _db)) = setup("presence_across_nodes").await else {
        return;
    };
    let (n1, n2) = (cluster.node("a").await, cluster.node("b").await);
    let mut watcher = n1.member("watcher", "room").await;

    let carol1 = n1.member("carol", "room").await;
    let ev = wait_for(&mut watcher, "presence", |v| v["user"] == "carol").await;
    assert_eq!(
        (ev["user"].as_str(), ev["event"].as_str()),
        (Some("carol"), Some("join"))
    );

    // Carol again, on the other node: no second join.
    let mut carol2 = n2.native("carol").await;
    let joined = carol2.join("room", None).await;
    assert_eq!(joined["members"], json!(["carol", "watcher"]));
    carol2.send_json(json!({"type": "rooms", "id": "r"})).await;
    let rooms = carol2.expect("rooms").await;
    assert_eq!(rooms["rooms"], json!([{"name": "room", "members": 2}]));

    // One tab leaves: still there. The last leaves: one leave.
    drop(carol1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    carol2
        .send_json(json!({"type": "leave", "id": "l", "room": "room"}))
        .await;
    carol2.expect("left").await;
    let ev = wait_for(&mut watcher, "presence", |v| v["user"] == "carol").await;
    assert_eq!(
        (ev["user"].as_str(), ev["event"].as_str()),
        (Some("carol"), Some("leave"))
    );
    watcher.no_chat_for(Duration::from_millis(300)).await;
    let mut other = n2.native("dave").await;
    let joined = other.join("room", None).await;
    assert_eq!(joined["members"], json!(["dave", "watcher"]));
    // No stray presence for carol arrives after her single leave.
    while let Ok(v) = tokio::time::timeout(Duration::from_millis(300), watcher.next_json()).await {
        assert!(v["user"] != "carol", "second event for carol: {v}");
    }
}

/// Four senders on two nodes send at once; three readers, on both nodes,
/// see the same ids, dense and increasing.
#[tokio::test]
async fn concurrent_senders_on_different_nodes_are_seen_in_one_order() {
    let Some((cluster, _db)) = setup("ordering_across_nodes").await else {
        return;
    };
    let (n1, n2) = (cluster.node("a").await, cluster.node("b").await);
    const PER_SENDER: usize = 150;
    let mut readers = Vec::new();
    for (i, node) in [&n1, &n2, &n2].into_iter().enumerate() {
        let mut r = node.native(&format!("reader{i}")).await;
        r.join("race", None).await;
        readers.push(r);
    }
    let mut senders = Vec::new();
    for (i, node) in [&n1, &n1, &n2, &n2].into_iter().enumerate() {
        let mut s = node.native(&format!("sender{i}")).await;
        s.join("race", None).await;
        senders.push(s);
    }
    let total = PER_SENDER * senders.len();
    let sending = senders.into_iter().enumerate().map(|(i, mut s)| {
        tokio::spawn(async move {
            for k in 0..PER_SENDER {
                s.send_json(json!({"type": "send", "id": format!("s{i}-{k}"), "room": "race", "body": format!("{i}:{k}")}))
                    .await;
            }
            let mut acks = 0;
            while acks < PER_SENDER {
                let v = s.next_json().await;
                match v["type"].as_str() {
                    Some("ack") => acks += 1,
                    Some("error") => panic!("send refused: {v}"),
                    _ => {}
                }
            }
            s
        })
    });
    let reading = readers.into_iter().map(|mut r| {
        tokio::spawn(async move {
            let mut got = Vec::with_capacity(total);
            while got.len() < total {
                let v = r.next_json().await;
                if v["type"] == "message" {
                    got.push((
                        v["id"].as_i64().unwrap(),
                        v["body"].as_str().unwrap().to_owned(),
                    ));
                }
            }
            got
        })
    });
    let readers: Vec<_> = reading.collect();
    let senders: Vec<_> = sending.collect();
    for s in senders {
        s.await.unwrap();
    }
    let mut seen = Vec::new();
    for r in readers {
        seen.push(r.await.unwrap());
    }
    let expected: Vec<i64> = (1..=total as i64).collect();
    for got in &seen {
        let got_ids: Vec<i64> = got.iter().map(|(id, _)| *id).collect();
        assert_eq!(got_ids, expected, "ids dense and in order");
        assert_eq!(got, &seen[0], "every reader sees the same messages");
    }
    // Each sender's own messages keep their order.
    for i in 0..4 {
        let mine: Vec<usize> = seen[0]
            .iter()
            .filter_map(|(_, b)| {
                let (s, k) = b.split_once(':')?;
                (s == i.to_string()).then(|| k.parse().unwrap())
            })
            .collect();
        assert_eq!(mine, (0..PER_SENDER).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn a_client_resumes_on_another_node_with_exactly_what_it_missed() {
    let Some((cluster, _db)) = setup("resume_across_nodes").await else {
        return;
    };
    let (n1, n2) = (cluster.node("a").await, cluster.node("b").await);
    let mut alice = n1.member("alice", "r").await;
    let mut bob = n2.member("bob", "r").await;
    for i in 0..3 {
        alice
            .say("r", &format!("before{i}"), &format!("b{i}"))
            .await;
    }
    let mut last = 0;
    for _ in 0..3 {
        last = bob.expect("message").await["id"].as_i64().unwrap();
    }
    // A DM too, to resume with dm_since.
    alice
        .send_json(json!({"type": "dm", "id": "d0", "to": "bob", "body": "dm before"}))
        .await;
    let dm_seen = bob.expect("dm").await["id"].as_i64().unwrap();
    let mut pending = 2;
    while pending > 0 {
        let v = alice.next_json().await;
        if v["reply_to"] == "d0" || v["client_id"] == "d0" {
            pending -= 1;
        }
    }
    drop(bob);
    for i in 0..4 {
        alice
            .say("r", &format!("missed{i}"), &format!("m{i}"))
            .await;
    }
    alice
        .send_json(json!({"type": "dm", "id": "d1", "to": "bob", "body": "dm missed"}))
        .await;

    let mut bob = n1.native_with("bob", Some(dm_seen)).await;
    let dm = bob.expect("dm").await;
    assert_eq!(dm["body"], "dm missed");
    let joined = bob.join("r", Some(last)).await;
    let bodies = crate::common::bodies(&joined["history"]);
    assert_eq!(bodies, ["missed0", "missed1", "missed2", "missed3"]);
    assert_eq!(ids(&joined["history"])[0], last + 1);
    let mut pending = 2;
    while pending > 0 {
        let v = alice.next_json().await;
        if v["reply_to"] == "d1" || v["client_id"] == "d1" {
            pending -= 1;
        }
    }
    alice.say("r", "live", "l").await;
    assert_eq!(bob.expect("message").await["body"], "live");
}

#[tokio::test]
async fn tutorial_clients_on_two_nodes_share_a_room() {
    let Some((cluster, _db)) = setup("tutorial_across_nodes").await else {
        return;
    };
    let (n1, n2) = (cluster.node("a").await, cluster.node("b").await);
    let mut a = n1.connect("/ws/chat/lobby/").await;
    let mut b = n2.connect("/ws/chat/lobby/").await;
    let mut chat = n2.connect("/chat/").await;
    let mut native = n1.member("nat", "lobby").await;

    a.send_json(json!({"message": "hi from a"})).await;

    assert_eq!(a.next_json().await["message"], "hi from a");
    assert_eq!(native.expect("message").await["body"], "hi from a");
    b.send_json(json!({"message": "hi from b"})).await;
    let from_b = a.next_json().await;
    assert_eq!(from_b["message"], "hi from b");
    // Guests on different nodes get different names.
    let from_a = b.next_json().await;
    let from_b_there = b.next_json().await;
    assert_eq!(from_b_there["user"], from_b["user"]);
    assert_ne!(from_a["user"], from_b["user"]);

    let mut chat2 = n1.connect("/chat/").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    chat.send_text("global hello").await;
    assert_eq!(chat2.next_text().await, "global hello");
}

/// `GET /api/v1/rooms/{room}/presence` until its users are `want`.
async fn presence_becomes(node: &harness::Node, room: &str, want: Value) {
    let path = format!("/api/v1/rooms/{room}/presence");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let answer = http_client::get(node.addr(), &path).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        let got = answer.json();
        if got["users"] == want {
            assert_eq!(got["room"], room);
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "presence on {}: {got}, want {want}",
            node.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_api_counts_a_users_connections_on_every_node() {
    let Some((cluster, _db)) = setup("api_presence_counts").await else {
        return;
    };
    let (n1, n2) = (cluster.node("a").await, cluster.node("b").await);
    let carol1 = n1.member("carol", "room").await;
    let carol2 = n1.member("carol", "room").await;
    let mut carol3 = n2.member("carol", "room").await;
    let bob = n2.member("bob", "room").await;

    let all = json!([
        {"user": "bob", "connections": 1},
        {"user": "carol", "connections": 3},
    ]);
    presence_becomes(&n1, "room", all.clone()).await;
    presence_becomes(&n2, "room", all).await;

    // One of carol's connections on node a ends; her tab on b leaves.
    drop(carol1);
    carol3
        .send_json(json!({"type": "leave", "id": "l", "room": "room"}))
        .await;
    carol3.expect("left").await;
    let fewer = json!([
        {"user": "bob", "connections": 1},
        {"user": "carol", "connections": 1},
    ]);
    presence_becomes(&n2, "room", fewer.clone()).await;
    presence_becomes(&n1, "room", fewer).await;

    // Nobody left and no history: the room is unknown again.
    drop((carol2, bob));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let answer = http_client::get(n1.addr(), "/api/v1/rooms/room/presence").await;
        if answer.status == 404 {
            answer.error(404, "unknown_room");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", answer.text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_api_kick_closes_the_users_connections_on_every_node() {
    let Some((cluster, _db)) = setup("api_kick_across_nodes").await else {
        return;
    };
    let (n1, n2) = (cluster.node("a").await, cluster.node("b").await);
    let mut here = n1.native("mallory").await;
    let mut there1 = n2.native("mallory").await;
    let mut there2 = n2.member("mallory", "room").await;
    let mut bob = n2.member("bob", "room").await;

    let answer = http_client::post(
        n1.addr(),
        "/api/v1/users/mallory/disconnect",
        &json!({"reason": "spam"}),
        &[],
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.json(), json!({"user": "mallory", "connections": 1}));

    for c in [&mut here, &mut there1, &mut there2] {
        assert_eq!(c.closed().await, 4000);
    }
    // Others stay.
    let (_, echo) = bob.say("room", "still here", "s1").await;
    assert_eq!(echo["body"], "still here");
}
