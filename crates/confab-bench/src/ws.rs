//! A deliberately minimal WebSocket client: hand-written HTTP upgrade, masked
//! client frames, and a zero-copy parser for (unmasked) server frames.
//! Only what a load generator needs; no extensions, no validation beyond that.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex;

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Open a TCP connection (optionally from a given local address) and perform
/// the WebSocket upgrade. Returns the stream and any bytes the server sent
/// after the 101 response.
pub async fn connect(
    addr: SocketAddr,
    src: Option<IpAddr>,
    path: &str,
    timeout: Duration,
) -> io::Result<(TcpStream, Vec<u8>)> {
    tokio::time::timeout(timeout, connect_inner(addr, src, path))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect/upgrade timed out"))?
}

async fn connect_inner(
    addr: SocketAddr,
    src: Option<IpAddr>,
    path: &str,
) -> io::Result<(TcpStream, Vec<u8>)> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = src {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = sock.connect(addr).await?;
    stream.set_nodelay(true)?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://{addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    write_all_stream(&stream, req.as_bytes()).await?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if len == buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "upgrade response too large",
            ));
        }
        stream.readable().await?;
        match stream.try_read(&mut buf[len..]) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed during upgrade",
                ))
            }
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
        if let Some(end) = memchr::memmem::find(&buf[..len], b"\r\n\r\n") {
            let head = &buf[..end];
            if !(head.starts_with(b"HTTP/1.1 101") || head.starts_with(b"HTTP/1.0 101")) {
                let line = head.split(|&b| b == b'\r').next().unwrap_or(b"");
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("upgrade refused: {}", String::from_utf8_lossy(line)),
                ));
            }
            let leftover = buf[end + 4..len].to_vec();
            return Ok((stream, leftover));
        }
    }
}

async fn write_all_stream(stream: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match stream.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A connection shared between its reader task and a writer (publisher).
/// Writes are serialised so a pong can never interleave with a partial frame.
pub struct Conn {
    pub stream: TcpStream,
    wlock: Mutex<()>,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Self {
        Conn {
            stream,
            wlock: Mutex::new(()),
        }
    }

    pub async fn write_all(&self, data: &[u8]) -> io::Result<()> {
        let _guard = self.wlock.lock().await;
        write_all_stream(&self.stream, data).await
    }

    /// Read what is available into `buf`; Ok(0) means EOF.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.stream.try_read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.stream.readable().await?,
                Err(e) => return Err(e),
            }
        }
    }

    /// Abruptly end the connection: the reader wakes with EOF, and the
    /// close that follows resets the connection instead of leaving it in
    /// TIME_WAIT (no FIN is sent first, so the server's cannot arrive
    /// before it). Tens of thousands of TIME_WAIT sockets from earlier runs
    /// made connects from the same source addresses slow: ~16,000 a second
    /// fell to ~400 on the fifth back-to-back `conns --count 10000`.
    pub fn shutdown(&self) {
        let sock = socket2::SockRef::from(&self.stream);
        let _ = sock.set_linger(Some(Duration::ZERO));
        let _ = sock.shutdown(std::net::Shutdown::Read);
    }
}

/// Cheap PRNG for masking keys (xorshift64*); masking keys need not be
/// cryptographic for a load generator.
pub struct Masker(u64);

impl Masker {
    pub fn new(seed: u64) -> Self {
        Masker(seed | 1)
    }
    pub fn next_key(&mut self) -> [u8; 4] {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32).to_le_bytes()[..4]
            .try_into()
            .unwrap_or([1, 2, 3, 4])
    }
}

/// Append one masked client frame (FIN set) to `out`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// A parsed server frame header.
pub struct FrameHead {
    pub fin: bool,
    pub opcode: u8,
    pub header_len: usize,
    pub payload_len: usize,
    pub masked: bool,
}

/// Parse a frame header at the start of `buf`; None if more bytes are needed.
#[inline]
pub fn parse_head(buf: &[u8]) -> Option<FrameHead> {
    if buf.len() < 2 {
        return None;
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let masked = b1 & 0x80 != 0;
    let (mut header_len, payload_len) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (4, u16::from_be_bytes([buf[2], buf[3]]) as usize)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (10, u64::from_be_bytes(b) as usize)
        }
        n => (2, n as usize),
    };
    if masked {
        header_len += 4;
    }
    Some(FrameHead {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0F,
        header_len,
        payload_len,
        masked,
    })
}

/// Unmask in place (only if a server wrongly masks its frames).
pub fn unmask(head: &FrameHead, frame: &mut [u8]) {
    if !head.masked {
        return;
    }
    let k = head.header_len - 4;
    let key = [frame[k], frame[k + 1], frame[k + 2], frame[k + 3]];
    for (i, b) in frame[head.header_len..].iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_parse_roundtrip() {
        for len in [0usize, 5, 125, 126, 1000, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut out = Vec::new();
            encode_frame(&mut out, OP_TEXT, &payload, [9, 8, 7, 6]);
            let head = parse_head(&out).expect("complete header");
            assert_eq!(head.payload_len, len);
            assert!(head.masked && head.fin);
            assert_eq!(head.opcode, OP_TEXT);
            unmask(&head, &mut out);
            assert_eq!(&out[head.header_len..], &payload[..]);
        }
    }

    #[test]
    fn incomplete_header() {
        assert!(parse_head(&[0x81]).is_none());
        assert!(parse_head(&[0x81, 126, 0]).is_none());
        assert!(parse_head(&[0x81, 127, 0, 0, 0]).is_none());
    }
}
