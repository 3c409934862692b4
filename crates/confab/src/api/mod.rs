//! The REST API for operators and backends, under `/api/`:
//!
//! * `/api/v1/…`: rooms, history, presence, publish, direct messages,
//!   disconnects and tokens, behind `Authorization: Bearer <api_key>`.
//! * `/api/openapi.json`: the OpenAPI document, generated from the
//!   handlers' annotations ([`routes`]) and types ([`model`]).
//! * `/api/docs/`: a page that renders that document, from assets
//!   embedded in the binary.
//!
//! Every failure is an [`error::ApiError`]. CORS applies to `/api/` only,
//! for the origins in `cors_origins`. `docs/api.md` is the guide.

pub mod error;
pub mod model;
pub mod routes;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::node::Node;
use error::{ApiCode, ApiError};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The node.
    pub node: Arc<Node>,
    last_prune: Arc<AtomicI64>,
}

impl ApiState {
    /// Forgets expired idempotency keys, at most once a minute.
    async fn prune_keys(&self) {
        let now = crate::protocol::now_ms();
        let last = self.last_prune.load(Ordering::Relaxed);
        if now - last < 60_000
            || self
                .last_prune
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        if let Err(err) = self.node.store.prune_keys(now - routes::KEY_TTL_MS).await {
            tracing::warn!(error = %err, "could not prune idempotency keys");
        }
    }
}

/// The OpenAPI document's root.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Confab REST API",
        description = "Operate a Confab chat server and publish into it from a backend. \
            Every `/api/v1/` call needs `Authorization: Bearer <api_key>`. \
            Every failure is `{\"code\", \"message\"}` with the HTTP status its code implies.",
        license(name = "MIT", identifier = "MIT")
    ),
    paths(
        routes::list_rooms,
        routes::get_room,
        routes::history,
        routes::presence,
        routes::publish_room,
        routes::publish_dm,
        routes::disconnect,
        routes::mint_token,
    ),
    components(schemas(error::ApiCode)),
    modifiers(&BearerKey),
    tags(
        (name = "rooms", description = "Rooms, their history and presence"),
        (name = "publish", description = "Messages from a backend, delivered like a client's"),
        (name = "users", description = "Disconnects and connection tokens"),
    )
)]
pub struct ApiDoc;

struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The server's `api_key`"))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document as JSON, made once.
pub fn openapi_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    })
}

/// Checks `cors_origins`: each `*` or an origin such as
/// `https://app.example` or `http://localhost:3000`.
pub fn check_cors_origins(origins: &[String]) -> anyhow::Result<()> {
    for origin in origins {
        if origin == "*" {
            continue;
        }
        let ok = origin.split_once("://").is_some_and(|(scheme, host)| {
            matches!(scheme, "http" | "https")
                && !host.is_empty()
                && !host.contains('/')
                && !host.contains(char::is_whitespace)
        }) && HeaderValue::from_str(origin).is_ok();
        anyhow::ensure!(
            ok,
            "cors_origins: `{origin}` is not `*` or an origin such as https://app.example"
        );
    }
    Ok(())
}

fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static(routes::IDEMPOTENCY_KEY),
            ])
            .expose_headers([header::HeaderName::from_static(routes::REPLAYED)])
            .max_age(Duration::from_secs(600)),
    )
}

/// The routes under `/api` (to be nested there).
pub fn router<S: Clone + Send + Sync + 'static>(node: Arc<Node>) -> Router<S> {
    let st = ApiState {
        node: node.clone(),
        last_prune: Arc::new(AtomicI64::new(0)),
    };
    // A message of the largest size, each byte escaped in JSON, and room
    // for the rest.
    let body_limit = node.settings.max_message_bytes.saturating_mul(6) + 4096;
    let v1 = Router::new()
        .route("/rooms", get(routes::list_rooms))
        .route("/rooms/{room}", get(routes::get_room))
        .route(
            "/rooms/{room}/messages",
            get(routes::history).post(routes::publish_room),
        )
        .route("/rooms/{room}/presence", get(routes::presence))
        .route("/users/{user}/messages", post(routes::publish_dm))
        .route("/users/{user}/disconnect", post(routes::disconnect))
        .route("/tokens", post(routes::mint_token))
        .route_layer(middleware::from_fn_with_state(st.clone(), authorize))
        .layer(DefaultBodyLimit::max(body_limit));
    let mut api = Router::new()
        .nest("/v1", v1)
        .route("/openapi.json", get(openapi))
        .route("/docs", get(|| async { Redirect::permanent("/api/docs/") }))
        .route("/docs/", get(docs_page))
        .route("/docs/docs.js", get(docs_js))
        .route("/docs/docs.css", get(docs_css))
        .fallback(|| async { ApiError::new(ApiCode::NotFound, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ApiCode::MethodNotAllowed,
                "this endpoint does not take that method",
            )
        })
        .layer(middleware::from_fn_with_state(st.clone(), count))
        .with_state(st);
    if let Some(cors) = cors(&node.settings.cors_origins) {
        api = api.layer(cors);
    }
    api
}

/// Checks the bearer key, in constant time.
async fn authorize(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    let Some(key) = &st.node.settings.api_key else {
        return ApiError::new(
            ApiCode::Unauthorized,
            "the REST API is off: this server has no api_key",
        )
        .into_response();
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match given {
        Some(given) if same(given.as_bytes(), key.expose().as_bytes()) => next.run(req).await,
        Some(_) => ApiError::new(ApiCode::Unauthorized, "wrong API key").into_response(),
        None => ApiError::new(
            ApiCode::Unauthorized,
            "send `Authorization: Bearer <api_key>`",
        )
        .into_response(),
    }
}

/// Compares two secrets without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts every answer by operation and status.
async fn count(State(st): State<ApiState>, req: Request, next: Next) -> Response {
    let operation = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| format!("{} {}", req.method(), p.as_str()))
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(req).await;
    st.node
        .metrics
        .api_request(&operation, response.status().as_u16());
    response
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

async fn docs_page() -> Response {
    (
        [(header::CONTENT_SECURITY_POLICY, crate::web::CSP)],
        Html(include_str!("docs/index.html")),
    )
        .into_response()
}

async fn docs_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("docs/docs.js"),
    )
        .into_response()
}

async fn docs_css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("docs/docs.css"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_every_operation_and_the_bearer_scheme() {
        let doc: serde_json::Value = serde_json::from_str(openapi_json()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for path in [
            "/api/v1/rooms",
            "/api/v1/rooms/{room}",
            "/api/v1/rooms/{room}/messages",
            "/api/v1/rooms/{room}/presence",
            "/api/v1/users/{user}/messages",
            "/api/v1/users/{user}/disconnect",
            "/api/v1/tokens",
        ] {
            assert!(paths.contains_key(path), "{path} missing");
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["api_key"]["scheme"],
            "bearer"
        );
    }

    #[test]
    fn every_name_in_the_document_has_the_name_pattern() {
        let doc: serde_json::Value = serde_json::from_str(openapi_json()).unwrap();
        let mut seen = 0;
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                for p in op["parameters"].as_array().into_iter().flatten() {
                    let want = match p["name"].as_str() {
                        Some("room") => model::NAME_PATTERN,
                        Some("user") => model::USER_PATTERN,
                        _ => continue,
                    };
                    assert_eq!(p["schema"]["pattern"], want, "{p}");
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, 6);
        let schemas = &doc["components"]["schemas"];
        assert_eq!(
            schemas["PublishRequest"]["properties"]["from"]["pattern"],
            model::USER_PATTERN
        );
        assert_eq!(
            schemas["TokenRequest"]["properties"]["user"]["pattern"],
            model::USER_PATTERN
        );
    }

    #[test]
    fn cors_origins_are_checked() {
        assert!(check_cors_origins(&["*".into(), "https://app.example".into()]).is_ok());
        assert!(check_cors_origins(&["http://localhost:3000".into()]).is_ok());
        assert!(check_cors_origins(&["app.example".into()]).is_err());
        assert!(check_cors_origins(&["https://app.example/path".into()]).is_err());
    }

    #[test]
    fn keys_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
