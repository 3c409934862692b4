//! What operators see: `/metrics`, `/healthz`, `/readyz`, and the
//! `token` and `check-config` commands.

use std::process::Command;
use std::sync::Arc;

use confab::config::Overrides;
use serde_json::json;

use crate::common::{settings, settings_with, TestServer};
use crate::http_client::{post, request, KEY};

/// The value of one sample line (`name{labels} value`), or 0 if absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.parse().unwrap())
}

async fn metrics(server: &TestServer) -> String {
    let a = request(server.addr, "GET", "/metrics", &[], None).await;
    assert_eq!(a.status, 200);
    assert!(a
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
    a.text()
}

/// Every sample line is `name{labels} number` and every name has a TYPE.
fn well_formed(text: &str) {
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.insert(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let name = series.split('{').next().unwrap();
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| typed.contains(*b)))
            .unwrap_or(name);
        assert!(typed.contains(base), "no TYPE for {name}");
    }
}

#[tokio::test]
async fn metrics_count_connections_messages_deliveries_and_kicks() {
    let server = TestServer::start(settings_with(Overrides {
        api_key: Some(KEY.parse().unwrap()),
        ..Overrides::default()
    }))
    .await;
    let (mut alice, _) = server.member("alice", "lobby").await;
    let (mut bob, _) = server.member("bob", "lobby").await;
    let _tutorial = server.connect("/ws/chat/lobby/").await;
    alice.say("lobby", "hi", "1").await;
    bob.expect("message").await;
    let a = post(
        server.addr,
        "/api/v1/rooms/lobby/messages",
        &json!({"from": "bot", "body": "x"}),
        &[],
    )
    .await;
    assert_eq!(a.status, 201);
    bob.expect("message").await;

    let text = metrics(&server).await;
    well_formed(&text);
    assert_eq!(
        sample(
            &text,
            "confab_build_info{version=\"0.1.0\",protocol_version=\"1\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&text, "confab_connections{protocol=\"native\"}"),
        2.0
    );
    assert_eq!(
        sample(&text, "confab_connections{protocol=\"room_json\"}"),
        1.0
    );
    assert_eq!(sample(&text, "confab_rooms"), 1.0);
    // The tutorial connection is a guest: a connection, not a user.
    assert_eq!(sample(&text, "confab_users_online"), 2.0);
    assert_eq!(
        sample(&text, "confab_messages_received_total{kind=\"room\"}"),
        2.0
    );
    // Two messages to three connections (the tutorial one too).
    assert!(sample(&text, "confab_deliveries_total") >= 6.0);
    assert!(sample(&text, "confab_store_duration_seconds_count{op=\"append\"}") >= 1.0);
    assert!(
        sample(
            &text,
            "confab_broker_duration_seconds_count{op=\"publish\"}"
        ) >= 2.0
    );
    assert_eq!(
        sample(
            &text,
            "confab_api_requests_total{operation=\"POST /api/v1/rooms/{room}/messages\",status=\"201\"}"
        ),
        1.0
    );

    post(server.addr, "/api/v1/users/bob/disconnect", &json!({}), &[]).await;
    assert_eq!(bob.closed().await, 4000);
    drop((alice, bob));
    // A session counts until its socket is closed and cleaned up.
    let mut text = metrics(&server).await;
    for _ in 0..50 {
        if sample(&text, "confab_connections{protocol=\"native\"}") == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        text = metrics(&server).await;
    }
    assert_eq!(
        sample(&text, "confab_disconnects_total{reason=\"kicked\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "confab_disconnects_total{reason=\"client\"}"),
        1.0
    );
    assert_eq!(
        sample(&text, "confab_connections{protocol=\"native\"}"),
        0.0
    );
    server.stop().await;
}

#[tokio::test]
async fn rate_limit_refusals_and_disconnects_are_counted() {
    let server = TestServer::start(settings_with(Overrides {
        rate_limit: Some(1),
        rate_burst: Some(1),
        ..Overrides::default()
    }))
    .await;
    let mut flooder = server.native("flooder").await;
    for i in 0..20 {
        flooder
            .send_json(json!({"type": "ping", "id": i.to_string()}))
            .await;
    }
    assert_eq!(flooder.closed().await, 1008);
    let text = metrics(&server).await;
    assert_eq!(
        sample(&text, "confab_disconnects_total{reason=\"rate_limit\"}"),
        1.0
    );
    assert!(
        sample(
            &text,
            "confab_commands_refused_total{code=\"rate_limited\"}"
        ) >= 1.0
    );
    server.stop().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let server = TestServer::start(settings()).await;
    let health = request(server.addr, "GET", "/healthz", &[], None).await;
    assert_eq!(health.status, 200);
    let ready = request(server.addr, "GET", "/readyz", &[], None).await;
    assert_eq!(ready.status, 200);
    server.stop().await;
}

/// Readiness turns 503 the moment shutdown starts, while the node is
/// still answering, so a load balancer stops sending new clients.
#[tokio::test]
async fn readiness_fails_as_soon_as_shutdown_starts() {
    let node = confab::node::Node::start(settings()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = confab::http::router(Arc::clone(&node));
    let served = tokio::spawn(async move { axum::serve(listener, app).await });
    assert_eq!(request(addr, "GET", "/readyz", &[], None).await.status, 200);
    node.shutdown.cancel();
    let ready = request(addr, "GET", "/readyz", &[], None).await;
    assert_eq!(ready.status, 503);
    assert_eq!(
        request(addr, "GET", "/healthz", &[], None).await.status,
        200
    );
    served.abort();
    node.close().await;
}

fn confab(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(args)
        .env_remove("CONFAB_TOKEN_SECRET")
        .env_remove("CONFAB_API_KEY")
        .env_remove("CONFAB_CONFIG")
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_token_command_mints_a_token_the_server_accepts() {
    let secret = "a-token-secret-of-24-bytes";
    let out = confab(&[
        "token",
        "--user",
        "dora",
        "--ttl",
        "10m",
        "--token-secret",
        secret,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let server = TestServer::start(settings_with(Overrides {
        token_secret: Some(secret.parse().unwrap()),
        ..Overrides::default()
    }))
    .await;
    let mut c = server.connect("/socket").await;
    c.send_json(json!({"type": "hello", "token": token})).await;
    assert_eq!(c.expect("welcome").await["user"], "dora");
    server.stop().await;

    let refused = confab(&["token", "--user", "dora"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("token_secret"));
}

#[test]
fn check_config_prints_the_effective_settings_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("confab.toml");
    std::fs::write(
        &file,
        "max_connections = 500\ntoken_secret = \"file-secret-0123456789\"\napi_key = \"file-api-key-0123456789\"\ncors_origins = [\"https://app.example\"]\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let out = confab(&["check-config", "--config", path, "--rate-limit", "7"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("max_connections = 500"), "{text}");
    assert!(text.contains("rate_limit = 7"), "{text}");
    assert!(text.contains("token_secret = \"***\""), "{text}");
    assert!(text.contains("api_key = \"***\""), "{text}");
    assert!(!text.contains("file-secret") && !text.contains("file-api-key"));
    // The output is itself a valid config file.
    let reparsed = dir.path().join("effective.toml");
    std::fs::write(
        &reparsed,
        text.replace("\"***\"", "\"masked-but-long-enough\""),
    )
    .unwrap();
    let again = confab(&["check-config", "--config", reparsed.to_str().unwrap()]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    std::fs::write(&file, "max_conections = 5\n").unwrap();
    let bad = confab(&["check-config", "--config", path]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("max_conections"));
    std::fs::write(&file, "cors_origins = [\"app.example\"]\n").unwrap();
    assert!(!confab(&["check-config", "--config", path]).status.success());
}
