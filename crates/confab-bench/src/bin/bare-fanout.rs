//! bare-fanout: the least a room server can do, as a reference for the
//! benchmark. It speaks the tutorial room protocol (`/ws/chat/<room>/`,
//! `{"message": ...}` to every member, sender included) on one thread, with
//! nothing a chat server needs besides: no history, no limits, no
//! heartbeat, no Origin check, no JSON validation (the value of
//! `"message"` is passed on as it came). What it does do is what the
//! fastest servers do: one event loop over epoll (mio), the frame made
//! once per message, frames for a socket gathered over one turn of the
//! loop and written in one `send` (uWebSockets' cork).
//!
//! `bench/compare` runs it beside the real servers, so that each run shows
//! what this host and this load generator allow at all: its figures are a
//! ceiling, not a peer to beat. Not for any other use.
//!
//! Usage: `bare-fanout [ADDR]` (default 127.0.0.1:8100).

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;

use base64::Engine;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use sha1::{Digest, Sha1};

const LISTENER: Token = Token(usize::MAX);
/// A request head or an unfinished frame longer than this ends the connection.
const MAX_IN: usize = 1 << 20;
/// A reader this far behind is closed (a slow consumer).
const MAX_OUT: usize = 4 << 20;
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
    out: Vec<u8>,
    /// Its room, once the upgrade is done.
    room: Option<usize>,
    /// In this turn's list of sockets to write.
    dirty: bool,
    /// Registered for writability (the kernel took only part of `out`).
    waiting: bool,
}

/// What one connection's input asks for.
enum Input {
    /// Frames to send to the connection's room.
    Messages(Vec<Vec<u8>>),
    /// The connection is done (EOF, error, close frame or bad input).
    Close,
}

struct Server {
    poll: Poll,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    rooms: HashMap<String, usize>,
    members: Vec<Vec<usize>>,
    dirty: Vec<usize>,
}

fn main() -> io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8100".into())
        .parse()
        .map_err(|e| io::Error::new(ErrorKind::InvalidInput, format!("address: {e}")))?;
    let mut listener = TcpListener::bind(addr)?;
    let poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("bare-fanout on {addr}");
    let mut server = Server {
        poll,
        conns: Vec::new(),
        free: Vec::new(),
        rooms: HashMap::new(),
        members: Vec::new(),
        dirty: Vec::new(),
    };
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = server.poll.poll(&mut events, None) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                server.accept(&listener)?;
                continue;
            }
            let id = event.token().0;
            if event.is_writable() {
                server.flush(id);
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                match server.read(id, &mut buf) {
                    Input::Messages(frames) => server.publish(id, &frames),
                    Input::Close => server.drop_conn(id),
                }
            }
        }
        // The cork: every socket written to in this turn, once.
        while let Some(id) = server.dirty.pop() {
            server.flush(id);
        }
    }
}

impl Server {
    fn accept(&mut self, listener: &TcpListener) -> io::Result<()> {
        loop {
            let (mut stream, _) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // Out of descriptors, say: refuse this one, keep serving.
                Err(_) => return Ok(()),
            };
            stream.set_nodelay(true)?;
            let id = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            self.poll
                .registry()
                .register(&mut stream, Token(id), Interest::READABLE)?;
            self.conns[id] = Some(Conn {
                stream,
                input: Vec::new(),
                out: Vec::new(),
                room: None,
                dirty: false,
                waiting: false,
            });
        }
    }

    /// Reads what the socket has and handles it.
    fn read(&mut self, id: usize, buf: &mut [u8]) -> Input {
        let Some(conn) = self.conns.get_mut(id).and_then(Option::as_mut) else {
            return Input::Messages(Vec::new());
        };
        loop {
            match conn.stream.read(buf) {
                Ok(0) => return Input::Close,
                Ok(n) => conn.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Input::Close,
            }
            if conn.input.len() > MAX_IN {
                return Input::Close;
            }
        }
        if conn.room.is_none() {
            let Some(room) = upgrade(conn) else {
                return if conn.input.len() > MAX_IN {
                    Input::Close
                } else {
                    Input::Messages(Vec::new())
                };
            };
            let Ok(room) = room else {
                return Input::Close;
            };
            let next = self.rooms.len();
            let room = *self.rooms.entry(room).or_insert(next);
            if room == self.members.len() {
                self.members.push(Vec::new());
            }
            self.members[room].push(id);
            conn.room = Some(room);
        }
        let conn = self.conns[id].as_mut().expect("read above");
        let input = frames(conn);
        // The 101, or a pong.
        let answer = !conn.out.is_empty();
        if answer {
            self.mark(id);
        }
        input
    }

    /// Queues each frame for every member of the sender's room.
    fn publish(&mut self, from: usize, frames: &[Vec<u8>]) {
        let Some(room) = self.conns[from].as_ref().and_then(|c| c.room) else {
            return;
        };
        for frame in frames {
            for i in 0..self.members[room].len() {
                let member = self.members[room][i];
                if let Some(conn) = self.conns[member].as_mut() {
                    conn.out.extend_from_slice(frame);
                    self.mark(member);
                }
            }
        }
    }

    fn mark(&mut self, id: usize) {
        if let Some(conn) = self.conns[id].as_mut() {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    /// Writes what the socket will take now; waits for writability if that
    /// is not everything.
    fn flush(&mut self, id: usize) {
        let Some(conn) = self.conns[id].as_mut() else {
            return;
        };
        conn.dirty = false;
        let mut written = 0;
        let mut failed = false;
        while written < conn.out.len() {
            match conn.stream.write(&conn.out[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        conn.out.drain(..written);
        if failed || conn.out.len() > MAX_OUT {
            self.drop_conn(id);
            return;
        }
        let waiting = !conn.out.is_empty();
        if waiting != conn.waiting {
            conn.waiting = waiting;
            let interest = if waiting {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if self
                .poll
                .registry()
                .reregister(&mut conn.stream, Token(id), interest)
                .is_err()
            {
                self.drop_conn(id);
            }
        }
    }

    fn drop_conn(&mut self, id: usize) {
        let Some(mut conn) = self.conns.get_mut(id).and_then(Option::take) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        if let Some(room) = conn.room {
            self.members[room].retain(|&m| m != id);
        }
        self.free.push(id);
    }
}

/// Answers the upgrade once the request head is in: `None` while it is
/// not, `Some(Err)` for a request that is not a room upgrade.
fn upgrade(conn: &mut Conn) -> Option<Result<String, ()>> {
    let end = conn.input.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&conn.input[..end]).into_owned();
    conn.input.drain(..end + 4);
    let path = head.split_whitespace().nth(1).unwrap_or("");
    let room = path
        .strip_prefix("/ws/chat/")
        .and_then(|r| r.strip_suffix('/'))
        .filter(|r| !r.is_empty() && !r.contains('/'));
    let key = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim())
    });
    let (Some(room), Some(key)) = (room, key) else {
        return Some(Err(()));
    };
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID);
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    conn.out.extend_from_slice(
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .as_bytes(),
    );
    Some(Ok(room.to_string()))
}

/// Takes every whole frame from the connection's input: text frames
/// become the frames to publish, a ping is answered, a close ends it.
fn frames(conn: &mut Conn) -> Input {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let input = &conn.input[at..];
        let Some((op, fin, header, len)) = frame_head(input) else {
            break;
        };
        if input.len() < header + len {
            break;
        }
        let mask = [
            input[header - 4],
            input[header - 3],
            input[header - 2],
            input[header - 1],
        ];
        let mut payload = input[header..header + len].to_vec();
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }
        at += header + len;
        match (op, fin) {
            (0x1, true) => {
                if let Some(frame) = room_frame(&payload) {
                    out.push(frame);
                }
            }
            (0x8, _) => return Input::Close,
            (0x9, _) => conn.out.extend_from_slice(&server_frame(0xA, &payload)),
            // Fragments and binary frames: not part of the room protocol.
            _ => {}
        }
    }
    conn.input.drain(..at);
    Input::Messages(out)
}

/// Opcode, FIN, header length and payload length of a masked client
/// frame, once its header is in.
fn frame_head(b: &[u8]) -> Option<(u8, bool, usize, usize)> {
    if b.len() < 2 {
        return None;
    }
    let (op, fin) = (b[0] & 0x0f, b[0] & 0x80 != 0);
    let (len, header) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
        127 if b.len() >= 10 => (
            u64::from_be_bytes(b[2..10].try_into().ok()?)
                .try_into()
                .ok()?,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    // Client frames are masked: four more bytes of key.
    Some((op, fin, header + 4, len))
}

/// `{"message": X}` for the `"message"` value of a sender's frame, taken
/// as it came (the load generator sends plain strings).
fn room_frame(payload: &[u8]) -> Option<Vec<u8>> {
    let key = payload.windows(9).position(|w| w == b"\"message\"")? + 9;
    let open = key + payload[key..].iter().position(|&b| b == b'"')?;
    let close = payload.iter().rposition(|&b| b == b'"')?;
    if close <= open {
        return None;
    }
    let mut body = Vec::with_capacity(close - open + 16);
    body.extend_from_slice(b"{\"message\": ");
    body.extend_from_slice(&payload[open..=close]);
    body.push(b'}');
    Some(server_frame(0x1, &body))
}

/// An unmasked server frame.
fn server_frame(op: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(0x80 | op);
    match payload.len() {
        n if n < 126 => frame.push(n as u8),
        n if n <= u16::MAX as usize => {
            frame.push(126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}
