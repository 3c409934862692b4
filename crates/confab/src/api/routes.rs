//! The `/api/v1/` handlers. Each is annotated for the OpenAPI document,
//! which is generated from these annotations and the model types.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::collections::BTreeMap;

use super::error::{ApiCode, ApiError, ApiJson, ApiPath, ApiQuery};
use super::model::*;
use super::ApiState;
use crate::protocol::codes::Close;
use crate::protocol::{now_ms, RoomName, UserName};
use crate::store::idempotency::KeyClaim;
use crate::store::{Draft, PageQuery, Stored};

/// The header naming a publish, so a retry is not stored twice.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set to `true` on the answer to a publish whose key was seen before.
pub const REPLAYED: &str = "idempotent-replayed";
/// How long a key is remembered.
pub const KEY_TTL_MS: i64 = 24 * 3600 * 1000;
/// A claim older than this without a message was cut short.
const CLAIM_STALE_MS: i64 = 30_000;

fn room_name(s: &str) -> Result<RoomName, ApiError> {
    RoomName::parse(s).map_err(|e| ApiError::new(ApiCode::InvalidRoom, format!("room name: {e}")))
}

fn user_name(s: &str, what: &str) -> Result<UserName, ApiError> {
    UserName::parse(s).map_err(|e| ApiError::new(ApiCode::InvalidUser, format!("{what}: {e}")))
}

/// A name to send as or mint a token for: not a guest's.
fn own_name(s: &str, what: &str) -> Result<UserName, ApiError> {
    UserName::parse_own(s).map_err(|e| ApiError::new(ApiCode::InvalidUser, format!("{what}: {e}")))
}

fn limit(value: Option<i64>, default: u32, max: u32) -> Result<u32, ApiError> {
    match value {
        None => Ok(default),
        Some(n) if n >= 1 && n <= i64::from(max) => Ok(n as u32),
        Some(n) => Err(ApiError::invalid(format!(
            "`limit` must be between 1 and {max}, not {n}"
        ))),
    }
}

/// List rooms
///
/// Rooms with history or with users online, sorted by name, a page at a
/// time.
#[utoipa::path(
    get,
    path = "/api/v1/rooms",
    tag = "rooms",
    params(RoomsQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "A page of rooms", body = RoomList),
        (status = 400, description = "A bad `after` or `limit`", body = ApiError),
        (status = 401, description = "No or a wrong API key", body = ApiError),
        (status = 503, description = "The store or broker is unavailable", body = ApiError),
    )
)]
pub async fn list_rooms(
    State(st): State<ApiState>,
    ApiQuery(q): ApiQuery<RoomsQuery>,
) -> Result<Json<RoomList>, ApiError> {
    let limit = limit(q.limit, 100, 1000)? as usize;
    if let Some(after) = &q.after {
        if after.is_empty() || after.chars().count() > 64 {
            return Err(ApiError::invalid("`after` must be 1 to 64 characters"));
        }
    }
    let node = &st.node;
    let (heads, online) = tokio::join!(node.store.room_heads(), node.broker.rooms());
    let heads = heads.map_err(ApiError::unavailable)?;
    let online = online.map_err(ApiError::unavailable)?;
    let mut rooms: BTreeMap<String, RoomSummary> = BTreeMap::new();
    for (name, id, ts) in heads {
        rooms.insert(
            name.to_string(),
            RoomSummary {
                name: name.to_string(),
                users_online: 0,
                last_message_id: Some(id),
                last_message_ts: Some(ts),
            },
        );
    }
    for info in online {
        let name = info.name.to_string();
        rooms
            .entry(name.clone())
            .or_insert(RoomSummary {
                name,
                users_online: 0,
                last_message_id: None,
                last_message_ts: None,
            })
            .users_online = info.members;
    }
    let mut page: Vec<RoomSummary> = match &q.after {
        Some(after) => rooms
            .range::<String, _>((
                std::ops::Bound::Excluded(after.clone()),
                std::ops::Bound::Unbounded,
            ))
            .map(|(_, r)| r.clone())
            .take(limit + 1)
            .collect(),
        None => rooms.into_values().take(limit + 1).collect(),
    };
    let next = if page.len() > limit {
        page.truncate(limit);
        page.last().map(|r| r.name.clone())
    } else {
        None
    };
    Ok(Json(RoomList { rooms: page, next }))
}

/// Whether a room is known: it has history or someone in it.
async fn room_known(st: &ApiState, room: &RoomName) -> Result<bool, ApiError> {
    let node = &st.node;
    let any = PageQuery {
        limit: 1,
        ..PageQuery::default()
    };
    let (page, users) = tokio::join!(node.store.room_page(room, any), node.broker.presence(room));
    let page = page.map_err(ApiError::unavailable)?;
    let users = users.map_err(ApiError::unavailable)?;
    Ok(!page.items.is_empty() || !users.is_empty())
}

fn unknown_room(room: &RoomName) -> ApiError {
    ApiError::new(
        ApiCode::UnknownRoom,
        format!("room `{room}` has no history and nobody in it"),
    )
}

/// Get a room
///
/// Its users online and latest message.
#[utoipa::path(
    get,
    path = "/api/v1/rooms/{room}",
    tag = "rooms",
    params(("room" = String, Path, description = "The room's name", pattern = r"^[^\s/\x00-\x1f\x7f-\x9f](?:[^/\x00-\x1f\x7f-\x9f]{0,62}[^\s/\x00-\x1f\x7f-\x9f])?(?![\s\S])")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The room", body = RoomSummary),
        (status = 400, description = "A bad room name", body = ApiError),
        (status = 401, description = "No or a wrong API key", body = ApiError),
        (status = 404, description = "No history and nobody in it", body = ApiError),
        (status = 503, description = "The store or broker is unavailable", body = ApiError),
    )
)]
pub async fn get_room(
    State(st): State<ApiState>,
    ApiPath(room): ApiPath<String>,
) -> Result<Json<RoomSummary>, ApiError> {
    let room = room_name(&room)?;
    let node = &st.node;
    let newest = PageQuery {
        limit: 1,
        ..PageQuery::default()
    };
    let (page, users) = tokio::join!(
        node.store.room_page(&room, newest),
        node.broker.presence(&room)
    );
    let page = page.map_err(ApiError::unavailable)?;
    let users = users.map_err(ApiError::unavailable)?;
    if page.items.is_empty() && users.is_empty() {
        return Err(unknown_room(&room));
    }
    let last = page.items.last();
    Ok(Json(RoomSummary {
        name: room.to_string(),
        users_online: users.len(),
        last_message_id: last.map(|m| m.id),
        last_message_ts: last.map(|m| m.ts),
    }))
}

/// A room's history
///
/// A page of messages, oldest first: the newest ones, those `before` an
/// id, those `after` one, or, with both, the oldest of those between.
/// The same messages WebSocket clients get on `join` and `history`.
#[utoipa::path(
    get,
    path = "/api/v1/rooms/{room}/messages",
    tag = "rooms",
    params(
        ("room" = String, Path, description = "The room's name", pattern = r"^[^\s/\x00-\x1f\x7f-\x9f](?:[^/\x00-\x1f\x7f-\x9f]{0,62}[^\s/\x00-\x1f\x7f-\x9f])?(?![\s\S])"),
        HistoryQuery
    ),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "A page of history", body = MessagePage),
        (status = 400, description = "A bad room name or paging values", body = ApiError),
        (status = 401, description = "No or a wrong API key", body = ApiError),
        (status = 404, description = "No history and nobody in it", body = ApiError),
        (status = 503, description = "The store is unavailable", body = ApiError),
    )
)]
pub async fn history(
    State(st): State<ApiState>,
    ApiPath(room): ApiPath<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<MessagePage>, ApiError> {
    let room = room_name(&room)?;
    let limit = limit(q.limit, 50, 500)?;
    if let Some(before) = q.before.filter(|b| *b < 1) {
        return Err(ApiError::invalid(format!(
            "`before` must be at least 1, not {before}"
        )));
    }
    if let Some(after) = q.after.filter(|a| *a < 0) {
        return Err(ApiError::invalid(format!(
            "`after` must be at least 0, not {after}"
        )));
    }
    let query = PageQuery {
        before: q.before,
        after: q.after,
        limit,
    };
    let mut page = st
        .node
        .store
        .room_page(&room, query)
        .await
        .map_err(ApiError::unavailable)?;
    // With both bounds the store pages up from `after`; cut at `before`.
    if let (Some(before), Some(_)) = (q.before, q.after) {
        if page.items.iter().any(|m| m.id >= before) {
            page.items.retain(|m| m.id < before);
            page.more = false;
        }
    }
    if page.items.is_empty() && !room_known(&st, &room).await? {
        return Err(unknown_room(&room));
    }
    Ok(Json(MessagePage {
        room: room.to_string(),
        messages: page.items.into_iter().map(Into::into).collect(),
        more: page.more,
    }))
}

/// A room's presence
///
/// Who is in the room now, with how many connections each.
#[utoipa::path(
    get,
    path = "/api/v1/rooms/{room}/presence",
    tag = "rooms",
    params(("room" = String, Path, description = "The room's name", pattern = r"^[^\s/\x00-\x1f\x7f-\x9f](?:[^/\x00-\x1f\x7f-\x9f]{0,62}[^\s/\x00-\x1f\x7f-\x9f])?(?![\s\S])")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The room's users", body = Presence),
        (status = 400, description = "A bad room name", body = ApiError),
        (status = 401, description = "No or a wrong API key", body = ApiError),
        (status = 404, description = "No history and nobody in it", body = ApiError),
        (status = 503, description = "The store or broker is unavailable", body = ApiError),
    )
)]
pub async fn presence(
    State(st): State<ApiState>,
    ApiPath(room): ApiPath<String>,
) -> Result<Json<Presence>, ApiError> {
    let room = room_name(&room)?;
    let users = st
        .node
        .broker
        .presence_counts(&room)
        .await
        .map_err(ApiError::unavailable)?;
    if users.is_empty() && !room_known(&st, &room).await? {
        return Err(unknown_room(&room));
    }
    Ok(Json(Presence {
        room: room.to_string(),
        users: users
            .into_iter()
            .map(|(user, connections)| PresentUser {
                user: user.to_string(),
                connections,
            })
            .collect(),
    }))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::invalid("`Idempotency-Key` must be 1 to 255 visible ASCII characters")
        })?;
    Ok(Some(key.to_owned()))
}

fn check_body(st: &ApiState, body: &str) -> Result<(), ApiError> {
    let max = st.node.settings.max_message_bytes;
    if body.len() > max {
        return Err(ApiError::new(
            ApiCode::TooLarge,
            format!("message is {} bytes; the limit is {max}", body.len()),
        ));
    }
    Ok(())
}

/// The answer to a publish: 201 and the message, marked when replayed.
fn published<T: serde::Serialize>(message: T, replayed: bool) -> Response {
    let mut response = (StatusCode::CREATED, Json(message)).into_response();
    if replayed {
        response
            .headers_mut()
            .insert(REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

/// Publish to a room
///
/// Stores the message and delivers it to the room's members exactly as
/// if a client had sent it. With an `Idempotency-Key`, a retry returns
/// the first publish's message (marked `Idempotent-Replayed: true`)
/// instead of storing another.
#[utoipa::path(
    post,
    path = "/api/v1/rooms/{room}/messages",
    tag = "publish",
    params(
        ("room" = String, Path, description = "The room's name (created by its first message)", pattern = r"^[^\s/\x00-\x1f\x7f-\x9f](?:[^/\x00-\x1f\x7f-\x9f]{0,62}[^\s/\x00-\x1f\x7f-\x9f])?(?![\s\S])"),
        ("Idempotency-Key" = Option<String>, Header, description = "Names this publish (1 to 255 visible ASCII characters), remembered for 24 hours", pattern = r"^[\x21-\x7e]{1,255}(?![\s\S])"),
    ),
    request_body = PublishRequest,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Stored and delivered", body = ApiRoomMessage,
            headers(("Idempotent-Replayed" = String, description = "`true` when the key was seen before"))),
        (status = 400, description = "A bad room name, sender or body", body = ApiError),
        (status = 401, description = "No or a wrong API key", body = ApiError),
        (status = 409, description = "A publish with this key has not completed, or the key was used for a different publish", body = ApiError),
        (status = 413, description = "The message or the request is too large", body = ApiError),
        (status = 415, description = "The body is not JSON", body = ApiError),
        (status = 503, description = "The store is unavailable or the server is shutting down", body = ApiError),
    )
)]
pub async fn publish_room(
    State(st): State<ApiState>,
    ApiPath(room): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PublishRequest>,
) -> Result<Response, ApiError> {
    let room = room_name(&room)?;
    let from = own_name(&req.from, "`from`")?;
    check_body(&st, &req.body)?;
    let key = idempotency_key(&headers)?;
    let draft = Draft::Room {
        room,
        from,
        body: req.body,
        client_id: None,
    };
    let (stored, replayed) = submit_once(&st, draft, key).await?;
    match stored {
        Stored::Room(m) => Ok(published(ApiRoomMessage::from(m), replayed)),
        Stored::Direct(_) => Err(ApiError::new(ApiCode::Internal, "internal error")),
    }
}

/// Send a direct message
///
/// Stores the message and delivers it to every connection of the
/// recipient (and of the sender, if connected), as a client's `dm`
/// would. The recipient must have connected once. Takes an
/// `Idempotency-Key` like a room publish.
#[utoipa::path(
    post,
    path = "/api/v1/users/{user}/messages",
    tag = "publish",
    params(
        ("user" = String, Path, description = "The recipient", pattern = r"^(?!(?:chat|echo)(?![\s\S]))[^\s/\x00-\x1f\x7f-\x9f](?:[^/\x00-\x1f\x7f-\x9f]{0,62}[^\s/\x00-\x1f\x7f-\x9f])?(?![\s\S])"),
        ("Idempotency-Key" = Option<String>, Header, description = "Names this publish (1 to 255 visible ASCII characters), remembered for 24 hours", pattern = r"^[\x21-\x7e]{1,255}(?![\s\S])"),
    ),
    request_body = PublishRequest,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Stored and delivered", body = ApiDirectMessage,
            headers(("Idempotent-Replayed" = String, description = "`true` when the key was seen before"))),
        (status = 400, description = "A bad user name, sender or body", body = ApiError),
        (status = 401, description = "No or a wrong API key", body = ApiError),
        (status = 404, description = "The recipient has never connected", body = ApiError),
        (status = 409, description = "A publish with this key has not completed, or the key was used for a different publish", body = ApiError),
        (status = 413, description = "The message or the request is too large", body = ApiError),
        (status = 415, description = "The body is not JSON", body = ApiError),
        (status = 503, description = "The store is unavailable or the server is shutting down", body = ApiError),
    )
)]
pub async fn publish_dm(
    State(st): State<ApiState>,
    ApiPath(user): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PublishRequest>,
) -> Result<Response, ApiError> {
    let to = user_name(&user, "user name")?;
    let from = own_name(&req.from, "`from`")?;
    check_body(&st, &req.body)?;
    let key = idempotency_key(&headers)?;
    st.node.check_recipient(&to).await?;
    let draft = Draft::Direct {
        from,
        to,
        body: req.body,
        client_id: None,
    };
    let (stored, replayed) = submit_once(&st, draft, key).await?;
    match stored {
        Stored::Direct(d) => Ok(published(ApiDirectMessage::from(d), replayed)),
        Stored::Room(_) => Err(ApiError::new(ApiCode::Internal, "internal error")),
    }
}

/// Submits `draft` through the node's sequencer (stored, then
/// delivered), at most once per idempotency key. Runs in its own task, so
/// a client that hangs up mid-request does not leave a claim behind.
/// Returns the message and whether it was stored before.
async fn submit_once(
    st: &ApiState,
    draft: Draft,
    key: Option<String>,
) -> Result<(Stored, bool), ApiError> {
    let st = st.clone();
    tokio::spawn(async move {
        let node = &st.node;
        let Some(key) = key else {
            return Ok((node.submit(draft).await?, false));
        };
        st.prune_keys().await;
        let (scope, target, sender, body) = match &draft {
            Draft::Room {
                room, from, body, ..
            } => ("room", room.to_string(), from.to_string(), body.clone()),
            Draft::Direct { from, to, body, .. } => {
                ("user", to.to_string(), from.to_string(), body.clone())
            }
        };
        let claim = KeyClaim {
            key: key.clone(),
            scope,
            target,
            sender,
            created_at: now_ms(),
        };
        let earlier = node
            .store
            .claim_key(&claim)
            .await
            .map_err(ApiError::unavailable)?;
        let Some(earlier) = earlier else {
            return match node.submit(draft).await {
                Ok(stored) => {
                    let (id, _) = stored.id_ts();
                    if let Err(err) = node.store.complete_key(&key, id).await {
                        tracing::warn!(error = %err, "idempotency key not completed");
                    }
                    Ok((stored, false))
                }
                Err(refusal) => {
                    if let Err(err) = node.store.release_key(&key).await {
                        tracing::warn!(error = %err, "idempotency key not released");
                    }
                    Err(refusal.into())
                }
            };
        };
        let mismatch = || {
            ApiError::new(
                ApiCode::IdempotencyMismatch,
                "this Idempotency-Key was used for a different publish",
            )
        };
        if (earlier.scope.as_str(), &earlier.target, &earlier.sender)
            != (claim.scope, &claim.target, &claim.sender)
        {
            return Err(mismatch());
        }
        let Some(id) = earlier.message_id else {
            let message = if now_ms() - earlier.created_at < CLAIM_STALE_MS {
                "a publish with this Idempotency-Key is under way; retry shortly"
            } else {
                "a publish with this Idempotency-Key did not complete; look for it in the \
                 history before publishing again with a new key"
            };
            return Err(ApiError::new(ApiCode::IdempotencyInProgress, message));
        };
        let stored = find_stored(&st, &draft, id).await?;
        let same = match &stored {
            Stored::Room(m) => m.body == body,
            Stored::Direct(d) => d.body == body,
        };
        if same {
            Ok((stored, true))
        } else {
            Err(mismatch())
        }
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "publish task failed");
        ApiError::new(ApiCode::Internal, "internal error")
    })?
}

/// The stored message with `id` in the conversation or room `draft` is
/// aimed at.
async fn find_stored(st: &ApiState, draft: &Draft, id: i64) -> Result<Stored, ApiError> {
    let store = &st.node.store;
    let q = PageQuery {
        before: Some(id.saturating_add(1)),
        after: None,
        limit: 1,
    };
    let found = match draft {
        Draft::Room { room, .. } => store
            .room_page(room, q)
            .await
            .map_err(ApiError::unavailable)?
            .items
            .pop()
            .filter(|m| m.id == id)
            .map(Stored::Room),
        Draft::Direct { from, to, .. } => store
            .dm_page(from, to, q)
            .await
            .map_err(ApiError::unavailable)?
            .items
            .pop()
            .filter(|d| d.id == id)
            .map(Stored::Direct),
    };
    found.ok_or_else(|| {
        tracing::error!(id, "message of a completed idempotency key not found");
        ApiError::new(ApiCode::Internal, "internal error")
    })
}

/// Disconnect a user
///
/// Closes every connection of the user, on every node, with close code
/// 4000 and the given reason. Clients should not reconnect on their own.
/// The body is optional. `connections` counts those on the node that
/// answers; the other nodes close theirs as the broker brings them the kick.
#[utoipa::path(
    post,
    path = "/api/v1/users/{user}/disconnect",
    tag = "users",
    params(("user" = String, Path, description = "The user", pattern = r"^(?!(?:chat|echo)(?![\s\S]))[^\s/\x00-\x1f\x7f-\x9f](?:[^/\x00-\x1f\x7f-\x9f]{0,62}[^\s/\x00-\x1f\x7f-\x9f])?(?![\s\S])")),
    request_body(content = Option<DisconnectRequest>, description = "The reason, optional"),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The user's connections were closed", body = Disconnected),
        (status = 400, description = "A bad user name or reason", body = ApiError),
        (status = 401, description = "No or a wrong API key", body = ApiError),
        (status = 413, description = "The request is too large", body = ApiError),
        (status = 415, description = "The body is not JSON", body = ApiError),
        (status = 503, description = "The broker is unavailable (this node's connections are closed)", body = ApiError),
    )
)]
pub async fn disconnect(
    State(st): State<ApiState>,
    ApiPath(user): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Disconnected>, ApiError> {
    let user = user_name(&user, "user name")?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(ApiCode::TooLarge, "the request body is too large")
        } else {
            ApiError::invalid(e.body_text())
        }
    })?;
    let req = if body.iter().all(u8::is_ascii_whitespace) {
        DisconnectRequest::default()
    } else {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/json"));
        if !json {
            return Err(ApiError::new(
                ApiCode::UnsupportedMediaType,
                "send the body as `application/json`",
            ));
        }
        serde_json::from_slice::<Option<DisconnectRequest>>(&body)
            .map_err(|e| ApiError::invalid(format!("body: {e}")))?
            .unwrap_or_default()
    };
    let close = match req.reason.as_deref() {
        None => Close::KICKED,
        Some(reason) => {
            if reason.chars().count() > 120 || reason.chars().any(char::is_control) {
                return Err(ApiError::invalid(
                    "`reason` must be at most 120 characters, without control characters",
                ));
            }
            // A close frame has room for 123 bytes of reason.
            let mut end = reason.len().min(123);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            Close {
                code: Close::KICKED.code,
                reason: Close::interned(&reason[..end]),
            }
        }
    };
    let connections = st.node.hub.kill_user(&user, close);
    // Other nodes close theirs when the broker brings them the kick.
    st.node
        .broker
        .kick(&user, close)
        .await
        .map_err(ApiError::unavailable)?;
    tracing::info!(%user, connections, reason = close.reason, "user disconnected through the API");
    Ok(Json(Disconnected {
        user: user.to_string(),
        connections,
    }))
}

/// Mint a connection token
///
/// A token for the server's `token_secret`, as `confab token` mints: give
/// it to a client for its WebSocket `hello`.
#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "users",
    request_body = TokenRequest,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "The token", body = Token),
        (status = 400, description = "A bad user name or lifetime", body = ApiError),
        (status = 401, description = "No or a wrong API key", body = ApiError),
        (status = 409, description = "The server has no token_secret", body = ApiError),
        (status = 413, description = "The request is too large", body = ApiError),
        (status = 415, description = "The body is not JSON", body = ApiError),
    )
)]
pub async fn mint_token(
    State(st): State<ApiState>,
    ApiJson(req): ApiJson<TokenRequest>,
) -> Result<Response, ApiError> {
    let user = own_name(&req.user, "`user`")?;
    let ttl = req.ttl_seconds.unwrap_or(3600);
    if !(1..=31_536_000).contains(&ttl) {
        return Err(ApiError::invalid(
            "`ttl_seconds` must be between 1 and 31536000",
        ));
    }
    let Some(secret) = &st.node.settings.token_secret else {
        return Err(ApiError::new(
            ApiCode::NotConfigured,
            "this server has no token_secret, so clients need no token",
        ));
    };
    let token = crate::auth::mint(secret, &user, ttl as u64).map_err(|e| {
        tracing::error!(error = %e, "minting a token failed");
        ApiError::new(ApiCode::Internal, "internal error")
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let token = Token {
        token,
        user: user.to_string(),
        expires_at: now + ttl as u64,
    };
    Ok((StatusCode::CREATED, Json(token)).into_response())
}
