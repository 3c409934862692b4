//! Lifecycle: graceful shutdown, and the binary's configuration sources.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{settings_with, Client, TestServer};
use confab::config::Overrides;

/// Shutdown closes every client with 1001 (one in a room, a tutorial one,
/// and one that has not even said hello), and what was acknowledged is in
/// the store afterwards.
#[tokio::test]
async fn shutdown_closes_clients_with_1001_and_keeps_acknowledged_messages() {
    let dir = tempfile::tempdir().unwrap();
    let settings = || {
        settings_with(Overrides {
            store: Some(format!("sqlite://{}/c.db", dir.path().display())),
            ..Overrides::default()
        })
    };
    let server = TestServer::start(settings()).await;
    let (mut a, _) = server.member("a", "r").await;
    let mut plain = server.connect("/chat/").await;
    let mut silent = server.connect("/socket").await;
    let (ack, _) = a.say("r", "keep me", "k").await;

    let started = Instant::now();
    let stopping = tokio::spawn(server.stop());
    assert_eq!(a.closed().await, 1001);
    assert_eq!(plain.closed().await, 1001);
    assert_eq!(silent.closed().await, 1001);
    stopping.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));

    let server = TestServer::start(settings()).await;
    let (_, joined) = server.member("b", "r").await;
    assert_eq!(joined["history"][0]["id"], ack["msg_id"]);
    assert_eq!(joined["history"][0]["body"], "keep me");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The binary reads a TOML file, then environment, then flags (each
/// beating the one before), serves, and exits 0 on SIGTERM.
#[tokio::test]
async fn the_binary_layers_file_env_and_flags_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (file_port, env_port, flag_port) = (free_port(), free_port(), free_port());
    let config = dir.path().join("confab.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{file_port}\"\nstore = \"sqlite://{}/from-file.db\"\nmax_connections = 7\n",
            dir.path().display()
        ),
    )
    .unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", &format!("127.0.0.1:{flag_port}")])
        .env("CONFAB_LISTEN", format!("127.0.0.1:{env_port}"))
        .env("CONFAB_RATE_LIMIT", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    // It says it listens once its store is open; whatever it said before
    // (an error it exits with) is shown if it never does.
    let mut said = Vec::new();
    let listening = loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("confab listening") => break line,
            Some(Ok(line)) => said.push(line),
            _ => panic!("the binary never said it listens:\n{}", said.join("\n")),
        }
    };
    assert!(
        listening.contains(&format!("127.0.0.1:{flag_port}")),
        "{listening}"
    );

    let mut c = Client::connect(&format!("ws://127.0.0.1:{flag_port}/socket")).await;
    c.send_json(serde_json::json!({"type": "hello", "name": "cfg"}))
        .await;
    let welcome = c.expect("welcome").await;
    assert_eq!(welcome["limits"]["rate_limit"], 3);
    assert!(dir.path().join("from-file.db").exists());

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(c.closed().await, 1001);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

/// `confab serve --help` documents every setting with its variable.
#[test]
fn serve_help_names_every_setting_and_its_environment_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_confab"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for (flag, env) in [
        ("--listen", "CONFAB_LISTEN"),
        ("--store", "CONFAB_STORE"),
        ("--broker", "CONFAB_BROKER"),
        ("--config", "CONFAB_CONFIG"),
        ("--rate-limit", "CONFAB_RATE_LIMIT"),
        ("--rate-burst", "CONFAB_RATE_BURST"),
        ("--allowed-origin", "CONFAB_ALLOWED_ORIGINS"),
        ("--max-connections", "CONFAB_MAX_CONNECTIONS"),
    ] {
        assert!(
            help.contains(flag) && help.contains(env),
            "{flag} / {env} missing:\n{help}"
        );
    }
}
