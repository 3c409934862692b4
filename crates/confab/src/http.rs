//! HTTP: the routes, the WebSocket upgrades (the last point where headers
//! are seen: origin check and connection limit happen here) and health.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::metrics::Refused;
use crate::node::Node;
use crate::protocol::seed::Dialect;
use crate::protocol::{RoomName, UserName};
use crate::session::{self, Kind};
use crate::web;
use crate::ws::{NotUpgrade, Upgrade};

/// Every route.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/web/") }))
        .route("/web/", get(web::lobby))
        .route("/web/{room}/", get(web::page))
        .route("/assets/{file}", get(web::asset))
        .route("/socket", get(native))
        .route("/chat/", get(chat))
        .route("/ws/", get(global))
        .route("/ws/echo/", get(echo))
        .route("/ws/chat/{room}/", get(room))
        .route("/ws/{user}/", get(user))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(crate::metrics::serve))
        .nest("/api", crate::api::router(node.clone()))
        .with_state(node)
}

/// Whether a WebSocket may be opened from `headers`' Origin: none (not a
/// browser), the server's own host, or one of `allowed` (`*`: any).
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (origin.split_once("://"), host) {
        (Some((_, authority)), Some(host)) => authority.eq_ignore_ascii_case(host),
        _ => false,
    }
}

/// Checks the origin and takes a connection place, then hands the socket
/// to a session task tracked for shutdown.
fn upgrade(node: Arc<Node>, headers: &HeaderMap, ws: Upgrade, kind: Kind) -> Response {
    if !origin_allowed(headers, &node.settings.allowed_origins) {
        node.metrics.upgrade_refused(Refused::Origin);
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    if node.shutdown.is_cancelled() {
        node.metrics.upgrade_refused(Refused::Shutdown);
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let Some(permit) = node.admit() else {
        node.metrics.upgrade_refused(Refused::Capacity);
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response();
    };
    let s = &node.settings;
    let max = match kind {
        Kind::Echo => s.echo_max_bytes,
        _ => s.max_frame_bytes,
    };
    let (response, handshake) = ws.accept(max);
    tokio::spawn(
        node.tracker
            .clone()
            .track_future(session::run(node, handshake, kind, permit)),
    );
    response
}

fn not_found(what: &str, err: impl std::fmt::Display) -> Response {
    (StatusCode::NOT_FOUND, format!("invalid {what}: {err}\n")).into_response()
}

async fn native(State(node): State<Arc<Node>>, headers: HeaderMap, ws: Upgrade) -> Response {
    upgrade(node, &headers, ws, Kind::Native)
}

fn global_kind(close_command: bool) -> Kind {
    Kind::Seed {
        dialect: Dialect::Text,
        room: RoomName::global(),
        user: None,
        close_command,
    }
}

/// `/chat/`: the page for a plain GET, the global room for an upgrade.
async fn chat(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    ws: Result<Upgrade, NotUpgrade>,
) -> Response {
    match ws {
        Ok(ws) => upgrade(node, &headers, ws, global_kind(true)),
        Err(_) => web::page().await,
    }
}

async fn global(State(node): State<Arc<Node>>, headers: HeaderMap, ws: Upgrade) -> Response {
    upgrade(node, &headers, ws, global_kind(false))
}

async fn echo(State(node): State<Arc<Node>>, headers: HeaderMap, ws: Upgrade) -> Response {
    upgrade(node, &headers, ws, Kind::Echo)
}

async fn room(
    State(node): State<Arc<Node>>,
    Path(room): Path<String>,
    headers: HeaderMap,
    ws: Upgrade,
) -> Response {
    match RoomName::parse(&room) {
        Ok(room) => {
            let kind = Kind::Seed {
                dialect: Dialect::RoomJson,
                room,
                user: None,
                close_command: false,
            };
            upgrade(node, &headers, ws, kind)
        }
        Err(e) => not_found("room name", e),
    }
}

async fn user(
    State(node): State<Arc<Node>>,
    Path(user): Path<String>,
    headers: HeaderMap,
    ws: Upgrade,
) -> Response {
    match UserName::parse_own(&user) {
        Ok(user) => {
            let kind = Kind::Seed {
                dialect: Dialect::UserJson,
                room: RoomName::global(),
                user: Some(user),
                close_command: false,
            };
            upgrade(node, &headers, ws, kind)
        }
        Err(e) => not_found("user name", e),
    }
}

/// Ready when the store and broker answer and shutdown has not begun.
async fn ready(State(node): State<Arc<Node>>) -> Response {
    if node.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let (store, broker) = tokio::join!(node.store.ping(), node.broker.ping());
    match (store, broker) {
        (Ok(()), Ok(())) => "ready\n".into_response(),
        (Err(e), _) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
        (_, Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, host.parse().unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, o.parse().unwrap());
        }
        h
    }

    #[test]
    fn same_host_listed_and_absent_origins_are_allowed() {
        assert!(origin_allowed(&headers(None, "chat.example:8000"), &[]));
        assert!(origin_allowed(
            &headers(Some("http://chat.example:8000"), "chat.example:8000"),
            &[]
        ));
        let allowed = vec!["https://app.example".to_owned()];
        assert!(origin_allowed(
            &headers(Some("https://app.example"), "chat.example"),
            &allowed
        ));
    }

    #[test]
    fn other_origins_are_refused() {
        assert!(!origin_allowed(
            &headers(Some("http://evil.example"), "chat.example:8000"),
            &[]
        ));
        assert!(!origin_allowed(
            &headers(Some("null"), "chat.example:8000"),
            &[]
        ));
        assert!(!origin_allowed(
            &headers(Some("http://chat.example:8001"), "chat.example:8000"),
            &[]
        ));
    }
}
