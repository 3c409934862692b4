//! Faults: Redis restarts, PostgreSQL goes away, a node is SIGKILLed.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{postgres, services, Cluster, PrivateRedis, TestDb};
use crate::wait_for;

/// Redis restarts (losing all its data): nodes reconnect, resubscribe and
/// rebuild presence by themselves; a message acknowledged while Redis was
/// down is stored, reaches its node's own members at once and the other
/// node's after the reconnect; nothing acknowledged is lost.
#[tokio::test]
async fn nodes_ride_out_a_redis_restart_and_lose_no_acknowledged_message() {
    let Some(pg) = postgres("redis_restart") else {
        return;
    };
    if std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        crate::harness::skip("redis_restart", "no redis-server on PATH");
        return;
    }
    let db = TestDb::create(&pg).await;
    let mut redis = PrivateRedis::start().await;
    let cluster = Cluster::new(&redis.url(), &db.url);
    let (n1, n2) = (cluster.node("a").await, cluster.node("b").await);
    let mut alice = n1.member("alice", "r").await;
    let mut alice_here = n1.member("alice2", "r").await;
    let mut bob = n2.member("bob", "r").await;
    alice.say("r", "before", "c0").await;
    assert_eq!(bob.expect("message").await["body"], "before");
    let mut carol = n2.native("carol").await;

    redis.down();
    // While Redis is away: a send is stored and acknowledged; the sender's
    // node delivers it to its own members.
    let (ack, _) = alice.say("r", "during", "c1").await;
    assert!(ack["msg_id"].as_i64().unwrap() > 0);
    wait_for(&mut alice_here, "message", |v| v["body"] == "during").await;
    // A join needs the broker: refused as unavailable, not hung.
    carol
        .send_json(json!({"type": "join", "id": "j", "room": "r"}))
        .await;
    let refused = carol.next_json().await;
    assert_eq!(refused["code"], "unavailable", "{refused}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.up().await;

    // Bob gets the message he missed, without asking.
    let got = tokio::time::timeout(Duration::from_secs(15), bob.expect("message"))
        .await
        .expect("caught up after the reconnect");
    assert_eq!(got["body"], "during");
    assert_eq!(got["id"], ack["msg_id"]);
    // And the cluster works as before: presence rebuilt, delivery both
    // ways.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        carol
            .send_json(json!({"type": "join", "id": "j", "room": "r"}))
            .await;
        let v = carol.next_json().await;
        if v["type"] == "joined" && v["members"] == json!(["alice", "alice2", "bob", "carol"]) {
            break;
        }
        assert!(Instant::now() < deadline, "presence not rebuilt: {v}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    bob.say("r", "after", "c2").await;
    assert_eq!(
        wait_for(&mut alice, "message", |_| true).await["body"],
        "after"
    );
}

/// PostgreSQL unavailable: a send is answered `unavailable`, never acked;
/// once it is back, sends are stored and delivered again.
#[tokio::test]
async fn sends_fail_as_unavailable_while_postgres_is_down() {
    let Some((redis, pg)) = services("postgres_down") else {
        return;
    };
    let db = TestDb::create(&pg).await;
    let cluster = Cluster::new(&redis, &db.url);
    let (n1, n2) = (cluster.node("a").await, cluster.node("b").await);
    let mut alice = n1.member("alice", "r").await;
    let mut bob = n2.member("bob", "r").await;

    db.take_down().await;
    alice
        .send_json(json!({"type": "send", "id": "x", "room": "r", "body": "lost?"}))
        .await;
    let reply = tokio::time::timeout(Duration::from_secs(10), alice.expect("error"))
        .await
        .expect("an answer in bounded time");
    assert_eq!(reply["code"], "unavailable");
    assert_eq!(reply["reply_to"], "x");
    bob.no_chat_for(Duration::from_millis(300)).await;

    db.bring_up().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in 0.. {
        let id = format!("y{n}");
        alice
            .send_json(json!({"type": "send", "id": id, "room": "r", "body": "back"}))
            .await;
        let v = wait_for(&mut alice, "", |v| v["reply_to"] == id.as_str()).await;
        if v["type"] == "ack" {
            break;
        }
        assert_eq!(v["code"], "unavailable", "{v}");
        assert!(Instant::now() < deadline, "store never came back");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let msg = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let v = bob.next_json().await;
            if v["type"] == "message" {
                return v;
            }
        }
    })
    .await
    .expect("delivered once the store is back");
    assert_eq!(msg["body"], "back");
    // Nothing unstored was ever delivered: history holds just that one.
    bob.send_json(json!({"type": "history", "id": "h", "room": "r"}))
        .await;
    let page = bob.expect("history").await;
    let bodies = crate::common::bodies(&page["messages"]);
    assert!(!bodies.contains(&"lost?"), "{bodies:?}");
}

/// A node killed with SIGKILL: its users leave the others' member lists
/// within the TTL (one leave each), and its clients resume on another
/// node with no gap.
#[tokio::test]
async fn a_killed_nodes_clients_resume_elsewhere_and_its_users_leave_once() {
    let Some((redis, pg)) = services("node_killed") else {
        return;
    };
    let db = TestDb::create(&pg).await;
    let cluster = Cluster::new(&redis, &db.url);
    let (mut n1, n2) = (cluster.node("a").await, cluster.node("b").await);
    let mut alice = n1.member("alice", "r").await;
    let mut watcher = n2.member("watcher", "r").await;
    let mut bob = n2.member("bob", "r").await;
    alice.say("r", "m1", "a1").await;
    wait_for(&mut watcher, "message", |_| true).await;
    // Alice's last seen id, from her own copy.
    alice
        .send_json(json!({"type": "history", "id": "h", "room": "r", "limit": 1}))
        .await;
    let alice_last = wait_for(&mut alice, "history", |_| true).await["messages"][0]["id"]
        .as_i64()
        .unwrap();

    let killed = Instant::now();
    n1.kill();
    // Meanwhile the room goes on.
    for i in 0..3 {
        bob.say("r", &format!("while-away{i}"), &format!("w{i}"))
            .await;
    }
    let ev = tokio::time::timeout(
        Duration::from_secs(cluster.ttl_secs * 3),
        wait_for(&mut watcher, "presence", |v| v["user"] == "alice"),
    )
    .await
    .expect("alice leaves within the TTL bound");
    assert_eq!(ev["event"], "leave");
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(cluster.ttl_secs * 2 + 1),
        "{took:?}"
    );

    let mut alice = n2.native("alice").await;
    let joined = alice.join("r", Some(alice_last)).await;
    let bodies = crate::common::bodies(&joined["history"]);
    assert_eq!(bodies, ["while-away0", "while-away1", "while-away2"]);
    // She comes back: one join, and no second leave.
    let ev = wait_for(&mut watcher, "presence", |v| v["user"] == "alice").await;
    assert_eq!(ev["event"], "join");
    tokio::time::sleep(Duration::from_secs(cluster.ttl_secs)).await;
    watcher.no_chat_for(Duration::from_millis(200)).await;
    bob.send_json(json!({"type": "rooms", "id": "r"})).await;
    let rooms = bob.expect("rooms").await;
    assert_eq!(rooms["rooms"], json!([{"name": "r", "members": 3}]));
}
