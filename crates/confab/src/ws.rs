//! WebSocket upgrades, served on the connection's own TCP stream.
//!
//! Under `axum::serve` and its `WebSocketUpgrade`, every socket stayed
//! behind hyper's boxed upgrade wrapper and hyper-util's private I/O type.
//! Confab serves HTTP/1 itself ([`crate::server`]), so
//! after the 101 it takes the `TcpStream` back out of hyper and hands it
//! to tungstenite directly: an idle connection then holds the socket, the
//! protocol state and its small read buffer, nothing of the handshake.
//! Measured in docs/performance.md ("Where the memory goes").

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::{Role, WebSocketConfig};

pub use tungstenite::protocol::CloseFrame;
pub use tungstenite::{Error, Message, Utf8Bytes};

/// An open WebSocket.
pub type Socket = WebSocketStream<Io>;

/// A valid WebSocket upgrade request, ready to be answered with 101.
pub struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Why a request is not a WebSocket upgrade.
#[derive(Debug)]
pub struct NotUpgrade(StatusCode, &'static str);

impl IntoResponse for NotUpgrade {
    fn into_response(self) -> Response {
        (self.0, format!("{}\n", self.1)).into_response()
    }
}

fn header_has(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = NotUpgrade;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let h = &parts.headers;
        if parts.method != Method::GET {
            return Err(NotUpgrade(
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket upgrade is a GET",
            ));
        }
        if !header_has(h, header::CONNECTION, "upgrade")
            || !header_has(h, header::UPGRADE, "websocket")
        {
            return Err(NotUpgrade(
                StatusCode::UPGRADE_REQUIRED,
                "this path speaks WebSocket: send Connection: upgrade and Upgrade: websocket",
            ));
        }
        if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
            return Err(NotUpgrade(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Version must be 13",
            ));
        }
        let key = h.get(header::SEC_WEBSOCKET_KEY).cloned().ok_or(NotUpgrade(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Key is missing",
        ))?;
        let on_upgrade = parts.extensions.remove::<OnUpgrade>().ok_or(NotUpgrade(
            StatusCode::UPGRADE_REQUIRED,
            "this connection cannot be upgraded",
        ))?;
        Ok(Self { key, on_upgrade })
    }
}

impl Upgrade {
    /// The 101 answer, and the handshake to finish on the connection's
    /// own task once hyper has sent it. Frames and messages are limited to
    /// `max_frame` bytes.
    pub fn accept(self, max_frame: usize) -> (Response, Handshake) {
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let response = (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
                (
                    header::SEC_WEBSOCKET_ACCEPT,
                    HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
                ),
            ],
        )
            .into_response();
        let handshake = Handshake {
            on_upgrade: self.on_upgrade,
            max_frame,
        };
        (response, handshake)
    }
}

/// An accepted upgrade whose socket is not open yet. Small on purpose: it
/// is the argument of the connection's task, and kept for its lifetime.
pub struct Handshake {
    on_upgrade: OnUpgrade,
    max_frame: usize,
}

impl Handshake {
    /// Waits for hyper to hand the connection over and opens the WebSocket
    /// on it; `None` if the client went away first.
    pub async fn open(self) -> Option<Socket> {
        let upgraded = match self.on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => {
                tracing::debug!(error = %err, "upgrade failed");
                return None;
            }
        };
        let config = config(self.max_frame);
        Some(WebSocketStream::from_raw_socket(Io::from(upgraded), Role::Server, Some(config)).await)
    }
}

/// Limits and buffers of every socket. Frames queued with `feed` gather in
/// the write buffer until it holds 32 KiB or the batch is flushed: several
/// frames, one syscall; a connection that never writes never allocates it.
/// Reads go into 256 bytes, grown to a frame's length when one is longer.
fn config(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
        .read_buffer_size(256)
        .write_buffer_size(32 * 1024)
        .max_write_buffer_size(2 * max_frame + 4 * 1024 * 1024)
}

/// The transport under a WebSocket: the TCP stream itself, with any bytes
/// hyper read past the handshake replayed first; or, for a transport the
/// server did not make itself, hyper's upgrade wrapper.
pub enum Io {
    /// The accepted TCP stream.
    Tcp {
        /// Bytes read with the handshake that belong to the WebSocket
        /// (boxed: almost always there are none).
        pre: Option<Box<Bytes>>,
        /// The stream.
        tcp: TcpStream,
    },
    /// Any other transport.
    Upgraded(Box<TokioIo<Upgraded>>),
}

impl From<Upgraded> for Io {
    fn from(upgraded: Upgraded) -> Self {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => Io::Tcp {
                pre: (!parts.read_buf.is_empty()).then(|| Box::new(parts.read_buf)),
                tcp: parts.io.into_inner(),
            },
            Err(upgraded) => Io::Upgraded(Box::new(TokioIo::new(upgraded))),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp { pre, tcp } => {
                if let Some(bytes) = pre {
                    let n = bytes.len().min(buf.remaining());
                    buf.put_slice(&bytes[..n]);
                    bytes.advance(n);
                    if bytes.is_empty() {
                        *pre = None;
                    }
                    return Poll::Ready(Ok(()));
                }
                Pin::new(tcp).poll_read(cx, buf)
            }
            Io::Upgraded(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp { tcp, .. } => Pin::new(tcp).poll_write(cx, buf),
            Io::Upgraded(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp { tcp, .. } => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Io::Upgraded(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp { tcp, .. } => tcp.is_write_vectored(),
            Io::Upgraded(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp { tcp, .. } => Pin::new(tcp).poll_flush(cx),
            Io::Upgraded(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp { tcp, .. } => Pin::new(tcp).poll_shutdown(cx),
            Io::Upgraded(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}
