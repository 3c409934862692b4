//! The web chat app: its pages and assets, embedded in the binary.
//!
//! Two HTML pages (the lobby and the room) and the modules and style
//! sheet they load from `/assets/`. Nothing is fetched from another host,
//! and every response carries the [`CSP`], which forbids inline script.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The Content-Security-Policy of every page: no inline script, nothing
/// from another host.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// The assets served under `/assets/`: name, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    ("app.css", CSS, include_bytes!("../web/app.css")),
    ("dom.js", JS, include_bytes!("../web/dom.js")),
    ("connection.js", JS, include_bytes!("../web/connection.js")),
    ("names.js", JS, include_bytes!("../web/names.js")),
    ("lobby.js", JS, include_bytes!("../web/lobby.js")),
    ("room.js", JS, include_bytes!("../web/room.js")),
    ("icon.svg", SVG, include_bytes!("../web/icon.svg")),
];

/// A response with the headers every page and asset gets.
fn respond(content_type: &'static str, body: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// The lobby (`/web/`): pick a name and a room.
pub async fn lobby() -> Response {
    respond(HTML, include_bytes!("../web/lobby.html"))
}

/// A room's page (`/web/<room>/`, and `/chat/` for the global room).
pub async fn page() -> Response {
    respond(HTML, include_bytes!("../web/room.html"))
}

/// One of the [`ASSETS`], or 404.
pub async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => respond(content_type, body),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_never_build_html_from_strings() {
        let pages: [&[u8]; 2] = [
            include_bytes!("../web/lobby.html"),
            include_bytes!("../web/room.html"),
        ];
        let all = ASSETS.iter().map(|(_, _, b)| *b).chain(pages);
        for body in all {
            let text = std::str::from_utf8(body).unwrap();
            for banned in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
            ] {
                assert!(!text.contains(banned), "an asset uses {banned}");
            }
            assert!(!text.contains("style=\""), "an asset has an inline style");
        }
    }

    #[tokio::test]
    async fn assets_have_their_content_types_and_the_csp() {
        let res = asset(Path("room.js".into())).await;
        assert_eq!(res.headers()[header::CONTENT_TYPE], JS);
        assert_eq!(res.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        let res = asset(Path("nope.js".into())).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
}
