//! The API's one error shape, `{"code": ..., "message": ...}`, and the
//! extractors that turn every rejection into it.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::ToSchema;

use crate::node::Refusal;
use crate::protocol::codes::ErrorCode;

/// What went wrong, for programs. Each code has one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApiCode {
    /// 400: a parameter or field is missing, malformed or out of range.
    Invalid,
    /// 400: a room name breaks the naming rules.
    InvalidRoom,
    /// 400: a user name breaks the naming rules.
    InvalidUser,
    /// 401: no API key, a wrong one, or the API is off (no key configured).
    Unauthorized,
    /// 404: no such endpoint.
    NotFound,
    /// 404: the room has no history and nobody in it.
    UnknownRoom,
    /// 404: the user has never connected.
    UnknownUser,
    /// 405: the endpoint does not take this method.
    MethodNotAllowed,
    /// 409: a publish with this idempotency key has not completed.
    IdempotencyInProgress,
    /// 409: the idempotency key was used for a different publish.
    IdempotencyMismatch,
    /// 409: the server has no `token_secret`, so it cannot mint tokens.
    NotConfigured,
    /// 413: the request body or the message text is too large.
    TooLarge,
    /// 415: the body is not `application/json`.
    UnsupportedMediaType,
    /// 500: a fault in the server.
    Internal,
    /// 503: the store or broker cannot answer now, or the server is
    /// shutting down; retry later.
    Unavailable,
}

impl ApiCode {
    /// The HTTP status that goes with the code.
    pub fn status(self) -> StatusCode {
        match self {
            ApiCode::Invalid | ApiCode::InvalidRoom | ApiCode::InvalidUser => {
                StatusCode::BAD_REQUEST
            }
            ApiCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiCode::NotFound | ApiCode::UnknownRoom | ApiCode::UnknownUser => {
                StatusCode::NOT_FOUND
            }
            ApiCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiCode::IdempotencyInProgress
            | ApiCode::IdempotencyMismatch
            | ApiCode::NotConfigured => StatusCode::CONFLICT,
            ApiCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ApiCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Every failure: a code for programs and a message for people. The
/// message never carries internal detail (database errors, paths).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ApiError {
    /// What went wrong.
    pub code: ApiCode,
    /// What went wrong, for people.
    pub message: String,
}

impl ApiError {
    /// An error with `code`.
    pub fn new(code: ApiCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `invalid`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ApiCode::Invalid, message)
    }

    /// `unavailable`, after logging the cause, which is not shown.
    pub fn unavailable(cause: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, "API request failed: backend unavailable");
        Self::new(
            ApiCode::Unavailable,
            "the server cannot answer now; retry later",
        )
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r.code {
            ErrorCode::Unavailable => ApiError::unavailable(r.message),
            ErrorCode::UnknownUser => ApiError::new(ApiCode::UnknownUser, r.message),
            ErrorCode::TooLarge => ApiError::new(ApiCode::TooLarge, r.message),
            ErrorCode::InvalidRoom => ApiError::new(ApiCode::InvalidRoom, r.message),
            ErrorCode::InvalidUser => ApiError::new(ApiCode::InvalidUser, r.message),
            ErrorCode::Invalid => ApiError::invalid(r.message),
            other => {
                tracing::warn!(code = ?other, message = %r.message, "API request refused");
                ApiError::new(ApiCode::Internal, "internal error")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.code.status();
        let mut response = (status, Json(self)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"confab\""),
            );
        }
        response
    }
}

/// A rejection's status as an error code, keeping axum's message (it
/// describes the request, not the server).
fn rejected(status: StatusCode, text: String) -> ApiError {
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiCode::TooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiCode::UnsupportedMediaType,
        s if s.is_server_error() => return ApiError::unavailable(text),
        _ => ApiCode::Invalid,
    };
    let message = match code {
        ApiCode::TooLarge => "the request body is too large".to_owned(),
        ApiCode::UnsupportedMediaType => "send the body as `application/json`".to_owned(),
        _ => text,
    };
    ApiError::new(code, message)
}

/// A JSON body; rejections become [`ApiError`]s.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Json::<T>::from_request(req, state)
            .await
            .map(|j| ApiJson(j.0))
            .map_err(|e: JsonRejection| rejected(e.status(), e.body_text()))
    }
}

/// Query parameters; rejections become [`ApiError`]s.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| rejected(e.status(), e.body_text()))
    }
}

/// Path parameters; rejections become [`ApiError`]s.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| rejected(e.status(), e.body_text()))
    }
}
