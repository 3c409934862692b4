//! The pages, embedded in the binary.

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

/// The Content-Security-Policy of every page: no inline script, nothing
/// from another host.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The chat app's page.
pub async fn page() -> Response {
    (
        [(header::CONTENT_SECURITY_POLICY, CSP)],
        Html(include_str!("../web/placeholder.html")),
    )
        .into_response()
}
