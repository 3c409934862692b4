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
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;
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

/// Limits and buffers of every socket. tungstenite hands each frame on to
/// [`Io`] as soon as it is made (`write_buffer_size` 0): its own buffer
/// never gives memory back, so a burst would leave every connection it
/// reached holding a batch's worth for good. Reads go into 256 bytes,
/// grown to a frame's length when one is longer.
fn config(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
        .read_buffer_size(256)
        .write_buffer_size(0)
        .max_write_buffer_size(2 * max_frame + 4 * 1024 * 1024)
}

/// Once this much waits in a socket's write buffer, it is written out
/// before more is taken.
const WRITE_HIGH: usize = 32 * 1024;

/// The transport under a WebSocket, with the socket's write buffer:
/// frames gather there until the batch is flushed (or [`WRITE_HIGH`] is
/// reached), so several frames cost one syscall, and once it is written
/// out the buffer is freed, so an idle connection holds none.
pub struct Io {
    transport: Transport,
    out: Out,
    /// Made once the connection lets fan-out write to it ([`Io::gate`]).
    gate: Option<Arc<Gate>>,
}

/// A socket's write side, lent to fan-out while the connection's task is
/// idle: a delivery for an idle connection is then written by the fan-out
/// itself, in one `send`, with no wake-up of the task. The task lends it
/// ([`Io::lend`]) only once it has written out everything it held, and
/// takes it back before it writes anything itself (every write through
/// [`Io`] does), so frames never interleave.
#[derive(Debug)]
pub struct Gate {
    tcp: Arc<TcpStream>,
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    /// Lent to the fan-out.
    lent: bool,
    /// The end of a frame the fan-out began but the socket did not take:
    /// it is written before anything else.
    rest: Option<Bytes>,
}

/// What [`Gate::try_write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direct {
    /// The whole frame was written.
    Written,
    /// The frame was begun; the socket is taken back from the fan-out and
    /// the connection's task must be told to write the rest.
    Begun,
    /// Nothing was written (not lent, or the socket was full or failed):
    /// the frame goes through the connection's queue.
    Refused,
}

impl Gate {
    /// Writes `frame` now if the socket is lent and takes it.
    pub fn try_write(&self, frame: &Bytes) -> Direct {
        let mut state = self.state.lock();
        if !state.lent {
            return Direct::Refused;
        }
        match self.tcp.try_write(frame) {
            Ok(n) if n == frame.len() => Direct::Written,
            Ok(n) if n > 0 => {
                state.lent = false;
                state.rest = Some(frame.slice(n..));
                Direct::Begun
            }
            // Full (`WouldBlock`), or failing: the task meets the error
            // on its own next read or write.
            _ => {
                state.lent = false;
                Direct::Refused
            }
        }
    }

    /// Takes the socket back; returns what the fan-out left unwritten.
    fn take_back(&self) -> Option<Bytes> {
        let mut state = self.state.lock();
        state.lent = false;
        state.rest.take()
    }
}

/// What waits to be written. A batch of one shared frame (the usual
/// case: one event for an idle connection) is written from the shared
/// bytes themselves; a second frame, or one tungstenite makes, gathers
/// them in a buffer of the connection's own.
#[derive(Debug)]
enum Out {
    Owned(Vec<u8>),
    Shared(Bytes),
}

impl Default for Out {
    fn default() -> Self {
        Out::Owned(Vec::new())
    }
}

impl Out {
    /// The bytes that wait.
    fn as_slice(&self) -> &[u8] {
        match self {
            Out::Owned(v) => v,
            Out::Shared(b) => b,
        }
    }

    fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffer to append to, made from the shared frame if one waits.
    fn owned(&mut self) -> &mut Vec<u8> {
        if let Out::Shared(b) = self {
            *self = Out::Owned(b.to_vec());
        }
        match self {
            Out::Owned(v) => v,
            Out::Shared(_) => unreachable!("made owned above"),
        }
    }
}

/// A whole text frame from server to client (final, unmasked), made once
/// and written as it is to every connection it goes to.
pub fn text_frame(text: &str) -> Bytes {
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    let len = text.len() as u64;
    let mut frame = Vec::with_capacity(header.len(len) + text.len());
    header
        .format(len, &mut frame)
        .expect("writing to a vector does not fail");
    frame.extend_from_slice(text.as_bytes());
    frame.into()
}

/// The TCP stream itself, with any bytes hyper read past the handshake
/// replayed first; or, for a transport the server did not make itself,
/// hyper's upgrade wrapper.
enum Transport {
    /// The accepted TCP stream.
    Tcp {
        /// Bytes read with the handshake that belong to the WebSocket
        /// (boxed: almost always there are none).
        pre: Option<Box<Bytes>>,
        /// The stream, shared with the [`Gate`] once there is one.
        tcp: Arc<TcpStream>,
    },
    /// Any other transport.
    Upgraded(Box<TokioIo<Upgraded>>),
}

impl From<Upgraded> for Io {
    fn from(upgraded: Upgraded) -> Self {
        let transport = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => Transport::Tcp {
                pre: (!parts.read_buf.is_empty()).then(|| Box::new(parts.read_buf)),
                tcp: Arc::new(parts.io.into_inner()),
            },
            Err(upgraded) => Transport::Upgraded(Box::new(TokioIo::new(upgraded))),
        };
        Io {
            transport,
            out: Out::default(),
            gate: None,
        }
    }
}

impl From<TcpStream> for Io {
    /// A transport of the server's own making: the stream, nothing read.
    fn from(tcp: TcpStream) -> Self {
        Io {
            transport: Transport::Tcp {
                pre: None,
                tcp: Arc::new(tcp),
            },
            out: Out::default(),
            gate: None,
        }
    }
}

impl Io {
    /// The gate through which fan-out may write to this socket, made on
    /// first use; `None` if the transport is not a plain TCP stream.
    pub fn gate(&mut self) -> Option<Arc<Gate>> {
        let Transport::Tcp { tcp, .. } = &self.transport else {
            return None;
        };
        let gate = self.gate.get_or_insert_with(|| {
            Arc::new(Gate {
                tcp: tcp.clone(),
                state: Mutex::default(),
            })
        });
        Some(gate.clone())
    }

    /// Lends the socket to fan-out, if nothing waits to be written here
    /// (the WebSocket above must hold nothing either: it is flushed
    /// first). Returns whether it is lent.
    pub fn lend(&mut self) -> bool {
        let Some(gate) = &self.gate else {
            return false;
        };
        if !self.out.is_empty() {
            return false;
        }
        let mut state = gate.state.lock();
        state.lent = state.rest.is_none();
        state.lent
    }

    /// Takes the socket back from fan-out before anything is written
    /// here; what the fan-out left unwritten goes first. While the socket
    /// is lent, nothing waits here, so there is no lock to take otherwise.
    pub fn take_back(&mut self) {
        if self.out.is_empty() {
            if let Some(rest) = self.gate.as_ref().and_then(|g| g.take_back()) {
                self.out = Out::Shared(rest);
            }
        }
    }

    /// Writes the buffer out; frees it once it is all written.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.take_back();
        while !self.out.is_empty() {
            let out = self.out.as_slice();
            let n = std::task::ready!(Pin::new(&mut self.transport).poll_write(cx, out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            match &mut self.out {
                Out::Owned(v) => {
                    v.drain(..n);
                }
                Out::Shared(b) => b.advance(n),
            }
        }
        // Freed rather than kept: an allocation per flushed batch costs
        // less than every idle connection holding its last batch's size.
        self.out = Out::default();
        Poll::Ready(Ok(()))
    }

    /// Ready once there is room for another frame: the buffer is written
    /// out first if it holds [`WRITE_HIGH`] or more.
    pub fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.out.len() >= WRITE_HIGH {
            std::task::ready!(self.poll_write_out(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Queues a whole frame made by [`text_frame`], to go with the next
    /// flush. Only between whole frames: the WebSocket above must hold
    /// nothing unwritten (it is flushed first).
    pub fn queue(&mut self, frame: Bytes) {
        self.take_back();
        if self.out.is_empty() {
            self.out = Out::Shared(frame);
        } else {
            self.out.owned().extend_from_slice(&frame);
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().transport).poll_read(cx, buf)
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let io = self.get_mut();
        io.take_back();
        if io.out.len() >= WRITE_HIGH {
            std::task::ready!(io.poll_write_out(cx))?;
        }
        if io.out.is_empty() && buf.len() >= WRITE_HIGH {
            // A large frame goes straight out, not copied first.
            return Pin::new(&mut io.transport).poll_write(cx, buf);
        }
        io.out.owned().extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let io = self.get_mut();
        std::task::ready!(io.poll_write_out(cx))?;
        Pin::new(&mut io.transport).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let io = self.get_mut();
        std::task::ready!(io.poll_write_out(cx))?;
        Pin::new(&mut io.transport).poll_shutdown(cx)
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp { pre, tcp } => {
                if let Some(bytes) = pre {
                    let n = bytes.len().min(buf.remaining());
                    buf.put_slice(&bytes[..n]);
                    bytes.advance(n);
                    if bytes.is_empty() {
                        *pre = None;
                    }
                    return Poll::Ready(Ok(()));
                }
                loop {
                    std::task::ready!(tcp.poll_read_ready(cx))?;
                    match tcp.try_read(buf.initialize_unfilled()) {
                        Ok(n) => {
                            buf.advance(n);
                            return Poll::Ready(Ok(()));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
            }
            Transport::Upgraded(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp { tcp, .. } => loop {
                std::task::ready!(tcp.poll_write_ready(cx))?;
                match tcp.try_write(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    done => return Poll::Ready(done),
                }
            },
            Transport::Upgraded(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp { .. } => Poll::Ready(Ok(())),
            Transport::Upgraded(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp { tcp, .. } => {
                Poll::Ready(socket2::SockRef::from(&**tcp).shutdown(std::net::Shutdown::Write))
            }
            Transport::Upgraded(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A connected pair: the server's end as an [`Io`], and the client.
    async fn pair() -> (Io, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (Io::from(accepted.unwrap().0), client.unwrap())
    }

    /// Whether `io` holds no buffer at all.
    fn freed(io: &Io) -> bool {
        matches!(&io.out, Out::Owned(v) if v.capacity() == 0)
    }

    #[tokio::test]
    async fn frames_gather_until_the_flush_and_the_buffer_is_freed_once_written() {
        let (mut io, mut client) = pair().await;
        io.write_all(b"one").await.unwrap();
        io.write_all(b"two").await.unwrap();
        assert_eq!(
            io.out.as_slice(),
            b"onetwo",
            "nothing is written before the flush"
        );

        io.flush().await.unwrap();
        assert!(freed(&io));
        let mut got = [0u8; 6];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"onetwo");
    }

    #[tokio::test]
    async fn a_full_buffer_is_written_out_before_more_is_taken() {
        let (mut io, mut client) = pair().await;
        let big = vec![7u8; WRITE_HIGH];
        io.write_all(b"head").await.unwrap();
        io.write_all(&big).await.unwrap();
        assert_eq!(io.out.len(), WRITE_HIGH + 4);
        io.write_all(b"tail").await.unwrap();
        assert_eq!(io.out.as_slice(), b"tail", "the full buffer went out first");
        // A large frame with nothing buffered goes straight out.
        io.flush().await.unwrap();
        io.write_all(&big).await.unwrap();
        assert!(io.out.len() < big.len(), "the large frame was copied first");
        io.flush().await.unwrap();
        assert!(freed(&io));

        let mut got = vec![0u8; 2 * WRITE_HIGH + 8];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..4], b"head");
        assert!(got[4..4 + WRITE_HIGH].iter().all(|&b| b == 7));
        assert_eq!(&got[4 + WRITE_HIGH..8 + WRITE_HIGH], b"tail");
        assert!(got[8 + WRITE_HIGH..].iter().all(|&b| b == 7));
    }

    #[tokio::test]
    async fn a_text_frame_reads_back_as_its_text_at_every_length_encoding() {
        let (mut io, client) = pair().await;
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        // Lengths in the 7-bit, 16-bit and 64-bit forms, at their edges.
        for (len, head) in [(0, 2), (125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let text = "é".repeat(len / 2) + &"x".repeat(len % 2);
            let frame = text_frame(&text);
            assert_eq!(frame.len(), head + len, "header of a {len}-byte text");
            std::future::poll_fn(|cx| io.poll_room(cx)).await.unwrap();
            io.queue(frame);
            io.flush().await.unwrap();
            let got = futures_util::StreamExt::next(&mut client)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got, Message::Text(text.into()));
        }
    }

    #[tokio::test]
    async fn a_lone_shared_frame_is_not_copied_and_later_writes_follow_it_in_order() {
        let (mut io, mut client) = pair().await;
        let first = text_frame("one");
        io.queue(first.clone());
        assert!(
            matches!(&io.out, Out::Shared(b) if b.as_ptr() == first.as_ptr()),
            "a lone frame waits as the shared bytes themselves"
        );
        // tungstenite's own write (a pong, say), then another shared frame.
        io.write_all(b"pong").await.unwrap();
        io.queue(text_frame("two"));
        io.flush().await.unwrap();
        assert!(freed(&io));

        let mut expected = first.to_vec();
        expected.extend_from_slice(b"pong");
        expected.extend_from_slice(&text_frame("two"));
        let mut got = vec![0u8; expected.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn a_lent_socket_takes_whole_frames_until_any_write_here_takes_it_back() {
        let (mut io, mut client) = pair().await;
        let gate = io.gate().unwrap();
        assert_eq!(gate.try_write(&text_frame("early")), Direct::Refused);
        io.queue(text_frame("one"));
        assert!(!io.lend(), "not lent while a frame waits here");
        io.flush().await.unwrap();

        assert!(io.lend());
        assert_eq!(gate.try_write(&text_frame("two")), Direct::Written);
        // tungstenite's own write (a pong, say) takes it back.
        io.write_all(b"pong").await.unwrap();
        assert_eq!(gate.try_write(&text_frame("late")), Direct::Refused);
        io.flush().await.unwrap();

        let mut expected = text_frame("one").to_vec();
        expected.extend_from_slice(&text_frame("two"));
        expected.extend_from_slice(b"pong");
        let mut got = vec![0u8; expected.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn a_frame_fan_out_began_is_finished_before_anything_else() {
        let (mut io, client) = pair().await;
        let unlimited = WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None);
        let mut client =
            WebSocketStream::from_raw_socket(client, Role::Client, Some(unlimited)).await;
        let gate = io.gate().unwrap();
        assert!(io.lend());
        // Far more than the socket takes while the client reads nothing.
        let big = "x".repeat(32 << 20);
        assert_eq!(gate.try_write(&text_frame(&big)), Direct::Begun);
        assert_eq!(gate.try_write(&text_frame("behind")), Direct::Refused);
        assert!(!io.lend(), "not lent again while the rest waits");

        io.queue(text_frame("after"));
        let read = async {
            let mut got = Vec::new();
            for _ in 0..2 {
                let msg = futures_util::StreamExt::next(&mut client).await;
                got.push(msg.unwrap().unwrap());
            }
            got
        };
        let both = async { tokio::join!(io.flush(), read) };
        let (flushed, got) = tokio::time::timeout(Duration::from_secs(10), both)
            .await
            .expect("the rest and the next frame arrive");
        flushed.unwrap();
        assert_eq!(
            got,
            [Message::Text(big.into()), Message::Text("after".into())]
        );
        assert!(io.lend(), "lent again once all is written");
    }
}
