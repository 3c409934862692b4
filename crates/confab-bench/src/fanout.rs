//! `fanout` and `sweep`: R rooms x M members, K publishers per room, paced
//! sends stamped with their send time, every receiver records latency.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use memchr::memmem::Finder;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::sys::CpuWindow;
use crate::ws::{self, Conn, Masker};

/// Which wire protocol to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    /// Django Channels tutorial room protocol at /ws/chat/<room>/.
    Room,
    /// Confab native protocol at /socket (hello, join, send).
    Native,
}

impl Proto {
    pub fn path(self, room: &str) -> String {
        match self {
            Proto::Room => format!("/ws/chat/{room}/"),
            Proto::Native => "/socket".to_string(),
        }
    }
    /// Frames to send right after the upgrade (the native protocol's hello + join).
    pub fn join_frames(self, name: &str, room: &str) -> Vec<String> {
        match self {
            Proto::Room => Vec::new(),
            Proto::Native => vec![
                format!(r#"{{"type":"hello","name":"{name}"}}"#),
                format!(r#"{{"type":"join","room":"{room}"}}"#),
            ],
        }
    }
    fn key(self) -> &'static [u8] {
        match self {
            Proto::Room => b"\"message\"",
            Proto::Native => b"\"body\"",
        }
    }
    fn encode_msg(self, out: &mut Vec<u8>, room: &str, text: &[u8]) {
        match self {
            Proto::Room => out.extend_from_slice(b"{\"message\":\""),
            Proto::Native => {
                out.extend_from_slice(b"{\"type\":\"send\",\"room\":\"");
                out.extend_from_slice(room.as_bytes());
                out.extend_from_slice(b"\",\"body\":\"");
            }
        }
        out.extend_from_slice(text);
        out.extend_from_slice(b"\"}");
    }
}

#[derive(Clone, Debug)]
pub struct FanoutCfg {
    /// Server addresses; member i connects to addrs[i % len] (several = a cluster).
    pub addrs: Vec<SocketAddr>,
    pub proto: Proto,
    pub rooms: usize,
    pub members: usize,
    pub publishers: usize,
    /// Aggregate messages sent per second, over all publishers.
    pub rate: f64,
    pub duration: Duration,
    pub grace: Duration,
    /// Minimum length of the message string (padded).
    pub size: usize,
    pub server_pids: Vec<u32>,
    pub connect_concurrency: usize,
    pub read_buf: usize,
    /// Spread member sockets over this many 127.0.0.x source addresses.
    pub src_addrs: usize,
    /// CPUs available to the bench (for the saturation verdict).
    pub bench_cores: f64,
    /// Put member sockets in delayed-ACK mode (TCP_QUICKACK off): fewer ACKs
    /// for the load generator to send per delivery.
    pub delayed_ack: bool,
    pub label: String,
}

/// Monotonic nanoseconds since the start of the run, shared by senders and receivers.
#[derive(Clone, Copy)]
struct Clock(Instant);
impl Clock {
    #[inline]
    fn now_ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

#[derive(Default)]
struct Shared {
    delivered: AtomicU64,
    ready: AtomicU64,
    /// Set when we close the sockets ourselves: errors after that are ours.
    stopping: AtomicBool,
}

fn new_hist() -> Histogram<u64> {
    // microseconds, 1 us .. 100 s, 3 significant figures
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("histogram bounds")
}

fn new_conn_hist() -> Histogram<u32> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("histogram bounds")
}

struct Stamp {
    warm: bool,
    publisher: u64,
    seq: u64,
    ts_ns: u64,
}

#[inline]
fn parse_num(p: &[u8], i: &mut usize) -> Option<u64> {
    let start = *i;
    let mut v: u64 = 0;
    while *i < p.len() && p[*i].is_ascii_digit() {
        v = v.checked_mul(10)?.checked_add((p[*i] - b'0') as u64)?;
        *i += 1;
    }
    (*i > start).then_some(v)
}

/// Find `"<key>"` then `: "` and parse `[w]<pub>:<seq>:<ns>` by scanning bytes.
#[inline]
fn parse_stamp(p: &[u8], finder: &Finder<'_>) -> Option<Stamp> {
    let mut i = finder.find(p)? + finder.needle().len();
    while i < p.len() && matches!(p[i], b':' | b' ' | b'\t') {
        i += 1;
    }
    if p.get(i) != Some(&b'"') {
        return None;
    }
    i += 1;
    let warm = p.get(i) == Some(&b'w');
    if warm {
        i += 1;
    }
    let publisher = parse_num(p, &mut i)?;
    if p.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    let seq = parse_num(p, &mut i)?;
    if p.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    let ts_ns = parse_num(p, &mut i)?;
    Some(Stamp {
        warm,
        publisher,
        seq,
        ts_ns,
    })
}

/// Per-connection receive state and results.
struct RecvStats {
    hist: Histogram<u32>,
    /// unique messages received, per publisher of the room
    unique: Vec<u64>,
    seen: Vec<Vec<u64>>,
    warm_seen: Vec<bool>,
    warm_count: usize,
    dup: u64,
    foreign: u64,
    unparsed: u64,
    beyond: u64,
    last_recv_ns: u64,
    closed_by_server: bool,
    error: Option<String>,
}

const MAX_SEQ: u64 = 1 << 28;

impl RecvStats {
    fn new(npubs: usize) -> Self {
        RecvStats {
            hist: new_conn_hist(),
            unique: vec![0; npubs],
            seen: vec![Vec::new(); npubs],
            warm_seen: vec![false; npubs],
            warm_count: 0,
            dup: 0,
            foreign: 0,
            unparsed: 0,
            beyond: 0,
            last_recv_ns: 0,
            closed_by_server: false,
            error: None,
        }
    }
}

struct Receiver {
    conn: Arc<Conn>,
    buf: Vec<u8>,
    first_pub: u64,
    npubs: usize,
    proto: Proto,
    shared: Arc<Shared>,
    clock: Clock,
}

impl Receiver {
    async fn run(mut self) -> RecvStats {
        let finder = Finder::new(self.proto.key());
        let mut st = RecvStats::new(self.npubs);
        let mut frag: Vec<u8> = Vec::new();
        let mut frag_op = 0u8;
        let mut buf = std::mem::take(&mut self.buf);
        let mut start = 0usize;
        let mut end = buf.len();
        let cap = buf.capacity().max(4096);
        buf.resize(cap, 0);
        let mut now = self.clock.now_ns();
        let mut masker = Masker::new(now ^ 0x9E37_79B9_7F4A_7C15);
        'outer: loop {
            let mut new_unique = 0u64;
            // Parse every complete frame in buf[start..end].
            while let Some(head) = ws::parse_head(&buf[start..end]) {
                let total = head.header_len + head.payload_len;
                if end - start < total {
                    if total > buf.len() {
                        // A frame larger than the buffer: grow it.
                        buf.copy_within(start..end, 0);
                        end -= start;
                        start = 0;
                        buf.resize(total.next_power_of_two(), 0);
                    }
                    break;
                }
                let frame = &mut buf[start..start + total];
                ws::unmask(&head, frame);
                let payload = &frame[head.header_len..];
                match head.opcode {
                    ws::OP_CONT => {
                        frag.extend_from_slice(payload);
                        if head.fin {
                            if frag_op == ws::OP_TEXT {
                                new_unique += Self::on_text(&finder, &frag, now, &mut st, &self);
                            }
                            frag.clear();
                        }
                    }
                    op if !head.fin => {
                        frag_op = op;
                        frag.clear();
                        frag.extend_from_slice(payload);
                    }
                    ws::OP_TEXT => {
                        new_unique += Self::on_text(&finder, payload, now, &mut st, &self);
                    }
                    ws::OP_PING => {
                        let mut out = Vec::with_capacity(payload.len() + 8);
                        ws::encode_frame(&mut out, ws::OP_PONG, payload, masker.next_key());
                        start += total;
                        if let Err(e) = self.conn.write_all(&out).await {
                            st.error = Some(format!("pong: {e}"));
                            break 'outer;
                        }
                        continue;
                    }
                    ws::OP_CLOSE => {
                        st.closed_by_server = !self.shared.stopping.load(Ordering::Relaxed);
                        break 'outer;
                    }
                    _ => {}
                }
                start += total;
            }
            if new_unique > 0 {
                self.shared
                    .delivered
                    .fetch_add(new_unique, Ordering::Relaxed);
                st.last_recv_ns = now;
            }
            if start == end {
                start = 0;
                end = 0;
            } else if buf.len() - end < buf.len() / 4 {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
            }
            match self.conn.read(&mut buf[end..]).await {
                Ok(0) => {
                    st.closed_by_server = !self.shared.stopping.load(Ordering::Relaxed);
                    break;
                }
                Ok(n) => end += n,
                Err(e) => {
                    if !self.shared.stopping.load(Ordering::Relaxed) {
                        st.error = Some(e.to_string());
                    }
                    break;
                }
            }
            now = self.clock.now_ns();
        }
        st.seen = Vec::new();
        st
    }

    /// Handle one text message; returns 1 if it was a new (unique) delivery.
    #[inline]
    fn on_text(
        finder: &Finder<'_>,
        payload: &[u8],
        now: u64,
        st: &mut RecvStats,
        rx: &Receiver,
    ) -> u64 {
        let Some(s) = parse_stamp(payload, finder) else {
            st.unparsed += 1;
            return 0;
        };
        if s.publisher < rx.first_pub || s.publisher >= rx.first_pub + rx.npubs as u64 {
            st.foreign += 1;
            return 0;
        }
        let local = (s.publisher - rx.first_pub) as usize;
        if s.warm {
            if !st.warm_seen[local] {
                st.warm_seen[local] = true;
                st.warm_count += 1;
                if st.warm_count == rx.npubs {
                    rx.shared.ready.fetch_add(1, Ordering::Relaxed);
                }
            }
            return 0;
        }
        if s.seq >= MAX_SEQ {
            st.beyond += 1;
            return 0;
        }
        let bits = &mut st.seen[local];
        let word = (s.seq >> 6) as usize;
        if word >= bits.len() {
            bits.resize((word + 1).next_power_of_two(), 0);
        }
        let mask = 1u64 << (s.seq & 63);
        if bits[word] & mask != 0 {
            st.dup += 1;
            return 0;
        }
        bits[word] |= mask;
        st.unique[local] += 1;
        let lat_us = now.saturating_sub(s.ts_ns) / 1000;
        st.hist.saturating_record(lat_us.max(1));
        1
    }
}

struct PubResult {
    lag: Histogram<u32>,
    error: Option<String>,
}

#[allow(clippy::too_many_arguments)]
async fn publisher(
    conn: Arc<Conn>,
    proto: Proto,
    room: String,
    id: u64,
    size: usize,
    t0: Instant,
    phase_ns: f64,
    period_ns: f64,
    end: Instant,
    clock: Clock,
    sent: Arc<AtomicU64>,
) -> PubResult {
    let mut lag = new_conn_hist();
    let mut masker = Masker::new(id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ clock.now_ns());
    let mut out = Vec::with_capacity(8192);
    let mut text = Vec::with_capacity(size + 64);
    let mut msg = Vec::with_capacity(size + 128);
    let mut k: u64 = 0;
    let deadline =
        |k: u64| t0 + Duration::from_nanos((phase_ns + k as f64 * period_ns).round() as u64);
    loop {
        let d = deadline(k);
        if d >= end {
            break;
        }
        if d > Instant::now() {
            tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await;
        }
        let now = Instant::now();
        let ts = clock.now_ns();
        out.clear();
        let mut n = 0;
        while n < 256 {
            let d = deadline(k);
            if d > now || d >= end {
                break;
            }
            lag.saturating_record((now.duration_since(d).as_micros() as u64).max(1));
            text.clear();
            use std::io::Write;
            let _ = write!(text, "{id}:{k}:{ts}");
            if text.len() < size {
                text.push(b':');
                text.resize(size, b'x');
            }
            msg.clear();
            proto.encode_msg(&mut msg, &room, &text);
            ws::encode_frame(&mut out, ws::OP_TEXT, &msg, masker.next_key());
            k += 1;
            n += 1;
        }
        if n == 0 {
            continue;
        }
        if let Err(e) = conn.write_all(&out).await {
            return PubResult {
                lag,
                error: Some(format!("send: {e}")),
            };
        }
        sent.store(k, Ordering::Relaxed);
    }
    PubResult { lag, error: None }
}

fn quantiles_ms(h: &Histogram<u64>) -> Value {
    let q = |x: f64| h.value_at_quantile(x) as f64 / 1000.0;
    json!({
        "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
        "max": h.max() as f64 / 1000.0, "mean": h.mean() / 1000.0,
    })
}

fn merge_into(total: &mut Histogram<u64>, h: &Histogram<u32>) {
    for v in h.iter_recorded() {
        total.saturating_record_n(v.value_iterated_to(), v.count_at_value() as u64);
    }
}

pub fn src_ip(i: usize, n: usize) -> Option<IpAddr> {
    if n <= 1 {
        return None;
    }
    let k = (i % n) as u32 + 1; // 127.0.0.1 .. 127.0.0.n (n <= 65k)
    Some(IpAddr::V4(Ipv4Addr::from(0x7F00_0000u32 + k)))
}

/// Connect `total` members; member i of room r is index r*members+i.
async fn connect_all(
    cfg: &FanoutCfg,
    rooms: &[String],
) -> anyhow::Result<Vec<(Arc<Conn>, Vec<u8>)>> {
    let sem = Arc::new(Semaphore::new(cfg.connect_concurrency.max(1)));
    let mut handles = Vec::with_capacity(cfg.rooms * cfg.members);
    for (r, room) in rooms.iter().enumerate() {
        for m in 0..cfg.members {
            let idx = r * cfg.members + m;
            let sem = sem.clone();
            let path = cfg.proto.path(room);
            let addr = cfg.addrs[idx % cfg.addrs.len()];
            let src = src_ip(idx, cfg.src_addrs);
            let joins = cfg.proto.join_frames(&format!("u{idx}"), room);
            let delayed_ack = cfg.delayed_ack;
            handles.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await;
                let (stream, left) = ws::connect(addr, src, &path, Duration::from_secs(15)).await?;
                if delayed_ack {
                    socket2::SockRef::from(&stream).set_tcp_quickack(false)?;
                }
                let conn = Conn::new(stream);
                let mut masker = Masker::new(idx as u64 + 7);
                let mut out = Vec::new();
                for j in joins {
                    ws::encode_frame(&mut out, ws::OP_TEXT, j.as_bytes(), masker.next_key());
                }
                if !out.is_empty() {
                    conn.write_all(&out).await?;
                }
                Ok::<_, std::io::Error>((Arc::new(conn), left))
            }));
        }
    }
    let mut conns = Vec::with_capacity(handles.len());
    let mut failures = 0;
    let mut first_err = None;
    for h in handles {
        match h.await {
            Ok(Ok(c)) => conns.push(c),
            Ok(Err(e)) => {
                failures += 1;
                first_err.get_or_insert(e.to_string());
            }
            Err(e) => {
                failures += 1;
                first_err.get_or_insert(e.to_string());
            }
        }
    }
    if failures > 0 {
        bail!(
            "{failures} of {} member connections failed (first error: {})",
            cfg.rooms * cfg.members,
            first_err.unwrap_or_default()
        );
    }
    Ok(conns)
}

static RUN_SEQ: AtomicU64 = AtomicU64::new(0);

/// One fan-out run. Returns a JSON object with all figures.
pub async fn run(cfg: &FanoutCfg) -> anyhow::Result<Value> {
    if cfg.publishers == 0 || cfg.publishers > cfg.members {
        bail!("publishers per room must be in 1..=members");
    }
    if cfg.rate <= 0.0 {
        bail!("rate must be > 0");
    }
    let run_no = RUN_SEQ.fetch_add(1, Ordering::Relaxed);
    let nonce = (std::process::id() as u64) << 16
        | (Instant::now().elapsed().as_nanos() as u64 & 0xFF)
        | run_no << 8;
    let rooms: Vec<String> = (0..cfg.rooms).map(|r| format!("b{nonce:x}r{r}")).collect();
    let total_members = cfg.rooms * cfg.members;
    let total_pubs = cfg.rooms * cfg.publishers;

    let t_connect = Instant::now();
    let conns = connect_all(cfg, &rooms)
        .await
        .context("connecting members")?;
    let connect_secs = t_connect.elapsed().as_secs_f64();

    let clock = Clock(Instant::now());
    let shared = Arc::new(Shared::default());
    let mut receivers = Vec::with_capacity(total_members);
    let mut all_conns = Vec::with_capacity(total_members);
    for (idx, (conn, leftover)) in conns.into_iter().enumerate() {
        let r = idx / cfg.members;
        let mut buf = Vec::with_capacity(cfg.read_buf.max(leftover.len()));
        buf.extend_from_slice(&leftover);
        let rx = Receiver {
            conn: conn.clone(),
            buf,
            first_pub: (r * cfg.publishers) as u64,
            npubs: cfg.publishers,
            proto: cfg.proto,
            shared: shared.clone(),
            clock,
        };
        receivers.push(tokio::spawn(rx.run()));
        all_conns.push(conn);
    }
    let pub_conn = |g: usize| {
        let r = g / cfg.publishers;
        let k = g % cfg.publishers;
        all_conns[r * cfg.members + k].clone()
    };

    // Readiness: every publisher sends a warm-up message until every member has
    // seen one from each publisher of its room (proves every member is joined).
    let ready_deadline = Instant::now() + Duration::from_secs(20);
    let mut masker = Masker::new(nonce);
    let mut ready_ok = false;
    'rounds: for round in 0u64.. {
        for g in 0..total_pubs {
            let room = &rooms[g / cfg.publishers];
            let mut msg = Vec::new();
            cfg.proto
                .encode_msg(&mut msg, room, format!("w{g}:{round}:0").as_bytes());
            let mut out = Vec::new();
            ws::encode_frame(&mut out, ws::OP_TEXT, &msg, masker.next_key());
            pub_conn(g)
                .write_all(&out)
                .await
                .context("sending warm-up")?;
        }
        let round_end = Instant::now() + Duration::from_millis(1000);
        while Instant::now() < round_end {
            if shared.ready.load(Ordering::Relaxed) as usize >= total_members {
                ready_ok = true;
                break 'rounds;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if Instant::now() > ready_deadline {
            break;
        }
    }
    if !ready_ok {
        for c in &all_conns {
            c.shutdown();
        }
        bail!(
            "only {} of {total_members} members received warm-up messages from every publisher of their room",
            shared.ready.load(Ordering::Relaxed)
        );
    }
    tokio::time::sleep(Duration::from_millis(50)).await;

    // Measured window.
    let period_ns = total_pubs as f64 * 1e9 / cfg.rate;
    let t0 = Instant::now() + Duration::from_millis(5);
    let end = t0 + cfg.duration;
    let cpu = CpuWindow::start(&cfg.server_pids);
    let mut pubs = Vec::with_capacity(total_pubs);
    let mut sent_counters = Vec::with_capacity(total_pubs);
    for g in 0..total_pubs {
        let sent = Arc::new(AtomicU64::new(0));
        sent_counters.push(sent.clone());
        pubs.push(tokio::spawn(publisher(
            pub_conn(g),
            cfg.proto,
            rooms[g / cfg.publishers].clone(),
            g as u64,
            cfg.size,
            t0,
            g as f64 * period_ns / total_pubs as f64,
            period_ns,
            end,
            clock,
            sent,
        )));
    }
    let mut lag = new_hist();
    let mut errors: Vec<String> = Vec::new();
    let pub_deadline = end + cfg.grace + Duration::from_secs(5);
    for p in pubs {
        let left = pub_deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, p).await {
            Ok(Ok(r)) => {
                merge_into(&mut lag, &r.lag);
                if let Some(e) = r.error {
                    errors.push(e);
                }
            }
            Ok(Err(e)) => errors.push(format!("publisher task: {e}")),
            Err(_) => errors.push("publisher stuck writing (server not reading)".into()),
        }
    }
    let send_end = Instant::now();
    let sent: Vec<u64> = sent_counters
        .iter()
        .map(|s| s.load(Ordering::Relaxed))
        .collect();
    let total_sent: u64 = sent.iter().sum();
    let expected = total_sent * cfg.members as u64;
    let drain_deadline = send_end + cfg.grace;
    while shared.delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let usage = cpu.stop();

    shared.stopping.store(true, Ordering::Relaxed);
    for c in &all_conns {
        c.shutdown();
    }
    let mut hist = new_hist();
    let (mut unique, mut dup, mut foreign, mut unparsed, mut beyond) = (0u64, 0u64, 0, 0, 0);
    let mut lost = 0u64;
    let mut last_recv_ns = 0u64;
    let mut closed = 0u64;
    let mut rx_errors = std::collections::BTreeMap::new();
    for (idx, h) in receivers.into_iter().enumerate() {
        let r = idx / cfg.members;
        match tokio::time::timeout(Duration::from_secs(10), h).await {
            Ok(Ok(st)) => {
                merge_into(&mut hist, &st.hist);
                for (k, &u) in st.unique.iter().enumerate() {
                    let s = sent[r * cfg.publishers + k];
                    unique += u.min(s);
                    beyond += u.saturating_sub(s);
                    lost += s.saturating_sub(u);
                }
                dup += st.dup;
                foreign += st.foreign;
                unparsed += st.unparsed;
                beyond += st.beyond;
                last_recv_ns = last_recv_ns.max(st.last_recv_ns);
                closed += st.closed_by_server as u64;
                if let Some(e) = st.error {
                    *rx_errors.entry(e).or_insert(0u64) += 1;
                }
            }
            Ok(Err(e)) => errors.push(format!("receiver task: {e}")),
            Err(_) => errors.push("receiver did not stop".into()),
        }
    }
    for (e, n) in rx_errors {
        errors.push(format!("{n} receivers: {e}"));
    }
    if closed > 0 {
        errors.push(format!("{closed} connections closed by the server"));
    }
    if foreign > 0 {
        errors.push(format!("{foreign} messages delivered to the wrong room"));
    }

    let dur = cfg.duration.as_secs_f64();
    let t0_ns = t0.duration_since(clock.0).as_nanos() as u64;
    let deliver_secs = (last_recv_ns.saturating_sub(t0_ns) as f64 * 1e-9).max(dur);
    let offered_dps = cfg.rate * cfg.members as f64;
    let delivered_dps = unique as f64 / deliver_secs;
    let loss_pct = if expected > 0 {
        100.0 * lost as f64 / expected as f64
    } else {
        0.0
    };
    let bench_util = usage.own_secs / usage.wall_secs;
    let saturated = bench_util > 0.9 * cfg.bench_cores;
    let server = usage.server_secs.map(|s| {
        json!({
            "cpu_secs": s,
            "cpu_util": s / usage.wall_secs,
            "cpu_us_per_delivery": if unique > 0 { s * 1e6 / unique as f64 } else { 0.0 },
            "rss_kib": crate::sys::procs_rss_kib(&cfg.server_pids),
        })
    });
    Ok(json!({
        "kind": "fanout",
        "label": cfg.label,
        "proto": format!("{:?}", cfg.proto).to_lowercase(),
        "servers": cfg.addrs.len(),
        "rooms": cfg.rooms, "members": cfg.members, "publishers": cfg.publishers,
        "rate": cfg.rate, "duration_s": dur, "size": cfg.size,
        "connect_s": connect_secs,
        "sent": total_sent,
        "sent_per_s": total_sent as f64 / dur,
        "offered_deliveries_per_s": offered_dps,
        "delivered_per_s": delivered_dps,
        "expected": expected, "delivered": unique, "lost": lost, "loss_pct": loss_pct,
        "duplicates": dup, "foreign": foreign, "unparsed": unparsed, "unexpected": beyond,
        "latency_ms": quantiles_ms(&hist),
        "send_lag_ms": quantiles_ms(&lag),
        "window_s": usage.wall_secs,
        "server": server,
        "bench_cpu_secs": usage.own_secs,
        "bench_cpu_util": bench_util,
        "bench_saturated": saturated,
        "host_steal_pct": usage.steal_json(),
        "host_steal_max_pct": usage.worst_steal_pct(),
        "errors": errors,
    }))
}

#[derive(Clone, Debug)]
pub struct SweepCfg {
    pub start: f64,
    pub factor: f64,
    pub max_steps: usize,
    pub max_loss_pct: f64,
    /// Extra steps per latency bound, each halving (in log space) the gap
    /// between the highest rate held within the bound and the lowest rate
    /// above it that was not.
    pub refine: usize,
    /// Repeats per latency bound, after refining, of the step that sets
    /// the knee: a rate counts only if every step at it held.
    pub confirm: usize,
    /// Host steal (percent of a side's CPU time) above which a step that
    /// missed the 10 ms bound is run again; 0 for never.
    pub max_steal_pct: f64,
}

/// How many times a disturbed step is run again before its last run
/// counts as it is.
const DISTURBED_RERUNS: usize = 2;

/// Whether a step missed the tighter bound while the host stole more of
/// either side's CPU time than `sw` allows: then it says more about the
/// host than about the server.
fn disturbed_miss(outcome: &Outcome, steal_pct: f64, sw: &SweepCfg) -> bool {
    disturbed(steal_pct, sw.max_steal_pct) && !outcome.held(BOUNDS_MS[0])
}

/// Whether the host stole more than `max_steal_pct` of either side's CPU
/// time over a step's window (0: no limit).
pub fn disturbed(steal_pct: f64, max_steal_pct: f64) -> bool {
    max_steal_pct > 0.0 && steal_pct > max_steal_pct
}

/// The host's steal over a step's window: the higher of the server's
/// CPUs' and the bench's, in percent.
pub fn steal_of(res: &Value) -> f64 {
    res["host_steal_max_pct"].as_f64().unwrap_or(0.0)
}

/// Runs `cfg` until the host leaves a run alone: a run that `spoiled`
/// says the host disturbed is handed to `on_run` with `"superseded":
/// true` and run again, up to [`DISTURBED_RERUNS`] times, and the last run
/// counts as it is. Returns that run and how many went before it.
pub async fn run_undisturbed(
    cfg: &FanoutCfg,
    spoiled: impl Fn(&Value) -> bool,
    mut on_run: impl FnMut(&Value),
) -> anyhow::Result<(Value, usize)> {
    let mut reruns = 0;
    loop {
        let mut res = run(cfg).await?;
        let rerun = reruns < DISTURBED_RERUNS && spoiled(&res);
        res["superseded"] = json!(rerun);
        on_run(&res);
        if !rerun {
            return Ok((res, reruns));
        }
        reruns += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Picks the next rate to try for a bound, if any.
type Pick = fn(&[Outcome], f64) -> Option<f64>;

/// The latency bounds a sweep reports a knee for, in ms.
const BOUNDS_MS: [f64; 2] = [10.0, 100.0];

/// What one step showed, as far as the knees go.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Outcome {
    rate: f64,
    /// Loss within the limit and no errors.
    clean: bool,
    p99_ms: f64,
}

impl Outcome {
    fn held(&self, bound_ms: f64) -> bool {
        self.clean && self.p99_ms <= bound_ms
    }
}

/// The knee at `bound_ms`: the highest rate at which every step held (a
/// rate tried twice, once held and once not, does not count).
fn knee(outcomes: &[Outcome], bound_ms: f64) -> Option<f64> {
    let at = |rate: f64| outcomes.iter().filter(move |o| o.rate == rate);
    outcomes
        .iter()
        .map(|o| o.rate)
        .filter(|&rate| at(rate).all(|o| o.held(bound_ms)))
        .reduce(f64::max)
}

/// The next rate to repeat so that the knee at `bound_ms` rests on two
/// steps: the knee itself while it has only one.
fn unconfirmed(outcomes: &[Outcome], bound_ms: f64) -> Option<f64> {
    let rate = knee(outcomes, bound_ms)?;
    (outcomes.iter().filter(|o| o.rate == rate).count() < 2).then_some(rate)
}

/// The knee at `bound_ms` lies between [`knee`] and the lowest rate above
/// it that was not held: that pair, if both exist.
fn bracket(outcomes: &[Outcome], bound_ms: f64) -> Option<(f64, f64)> {
    let lo = knee(outcomes, bound_ms)?;
    let hi = outcomes
        .iter()
        .filter(|o| o.rate > lo && !o.held(bound_ms))
        .map(|o| o.rate)
        .reduce(f64::min)?;
    Some((lo, hi))
}

/// The next rate to try to narrow the knee at `bound_ms`: the geometric
/// middle of its bracket, unless the bracket is already within 2%.
fn probe(outcomes: &[Outcome], bound_ms: f64) -> Option<f64> {
    let (lo, hi) = bracket(outcomes, bound_ms)?;
    (hi / lo > 1.02).then(|| (lo * hi).sqrt())
}

/// Raise the rate geometrically until p99 > 100 ms or loss is too high,
/// then narrow each knee with `refine` steps between the rates around it.
pub async fn sweep(
    cfg: &FanoutCfg,
    sw: &SweepCfg,
    mut on_step: impl FnMut(&Value),
) -> anyhow::Result<Value> {
    let mut outcomes: Vec<Outcome> = Vec::new();
    // Each outcome's summary, for the knees reported at the end.
    let mut summaries: Vec<Value> = Vec::new();
    let mut steps = 0;
    let mut disturbed = 0;
    // One step at `rate`; `None` when the run itself failed (the error is
    // reported as a step and the sweep ends). A step that missed the
    // tighter bound while the host stole CPU time from either side is
    // reported with `"superseded": true` and run again: one busy
    // neighbour must not set a knee, for any server.
    let outcome_of = |rate: f64, res: &Value| Outcome {
        rate,
        clean: res["loss_pct"].as_f64().unwrap_or(100.0) <= sw.max_loss_pct
            && res["errors"].as_array().is_none_or(|e| e.is_empty()),
        p99_ms: res["latency_ms"]["p99"].as_f64().unwrap_or(f64::MAX),
    };
    let mut step = async |rate: f64| -> Option<(Outcome, Value)> {
        let mut c = cfg.clone();
        c.rate = rate;
        let spoiled = |res: &Value| disturbed_miss(&outcome_of(rate, res), steal_of(res), sw);
        let (res, reruns) = match run_undisturbed(&c, spoiled, &mut on_step).await {
            Ok(done) => done,
            Err(e) => {
                steps += 1;
                on_step(&json!({"kind": "fanout", "label": cfg.label, "rate": rate,
                                "offered_deliveries_per_s": rate * cfg.members as f64,
                                "errors": [format!("{e:#}")]}));
                return None;
            }
        };
        steps += 1 + reruns;
        disturbed += reruns;
        let outcome = outcome_of(rate, &res);
        let summary = json!({
            "rate": rate,
            "offered_deliveries_per_s": res["offered_deliveries_per_s"],
            "delivered_per_s": res["delivered_per_s"],
            "p99_ms": outcome.p99_ms, "loss_pct": res["loss_pct"],
            "bench_saturated": res["bench_saturated"],
            "host_steal_pct": res["host_steal_pct"],
        });
        // Give the server a moment to settle between steps.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Some((outcome, summary))
    };

    let mut rate = sw.start;
    let mut retried = false;
    let mut failed = false;
    for _ in 0..sw.max_steps {
        let Some((outcome, summary)) = step(rate).await else {
            failed = true;
            break;
        };
        outcomes.push(outcome);
        summaries.push(summary);
        if !outcome.held(BOUNDS_MS[1]) {
            // One retry of a failed step, so that a warm-up hiccup (a JIT, a
            // first garbage collection) does not end the sweep.
            if retried {
                break;
            }
            retried = true;
            continue;
        }
        retried = false;
        rate *= sw.factor;
    }
    // Then, per bound, up to `refine` steps that narrow each knee and up
    // to `confirm` repeats of the step that sets it: on a noisy host one
    // lucky step can set a knee, so a rate counts only if every step at it
    // held, and when a repeat fails the next rate down is repeated in turn.
    let phases: [(usize, Pick); 2] = [(sw.refine, probe), (sw.confirm, unconfirmed)];
    let mut added = [0usize; 2];
    if !failed {
        'phases: for ((n, pick), count) in phases.into_iter().zip(&mut added) {
            for bound in BOUNDS_MS {
                for _ in 0..n {
                    let Some(rate) = pick(&outcomes, bound) else {
                        break;
                    };
                    let Some((outcome, summary)) = step(rate).await else {
                        break 'phases;
                    };
                    outcomes.push(outcome);
                    summaries.push(summary);
                    *count += 1;
                }
            }
        }
    }
    let [refined, confirmed] = added;
    // Each knee, with the worst of its steps and how many there were.
    let [best10, best100] = BOUNDS_MS.map(|bound| {
        let rate = knee(&outcomes, bound)?;
        let at: Vec<_> = outcomes
            .iter()
            .zip(&summaries)
            .filter(|(o, _)| o.rate == rate)
            .collect();
        let (_, worst) = at
            .iter()
            .max_by(|(a, _), (b, _)| a.p99_ms.total_cmp(&b.p99_ms))?;
        let mut summary = (*worst).clone();
        summary["runs"] = json!(at.len());
        Some(summary)
    });
    Ok(json!({
        "kind": "sweep",
        "label": cfg.label,
        "rooms": cfg.rooms, "members": cfg.members, "publishers": cfg.publishers,
        "max_loss_pct": sw.max_loss_pct,
        "best_p99_10ms": best10,
        "best_p99_100ms": best100,
        "steps": steps,
        "refined": refined,
        "confirmed": confirmed,
        "disturbed": disturbed,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_parsing_tolerates_spacing_and_extra_fields() {
        let f = Finder::new(Proto::Room.key());
        let s = parse_stamp(br#"{"message": "12:34:5678:xxxx", "user": "a"}"#, &f).unwrap();
        assert_eq!((s.publisher, s.seq, s.ts_ns, s.warm), (12, 34, 5678, false));
        let s = parse_stamp(br#"{"id":3,"message":"w7:0:0"}"#, &f).unwrap();
        assert!(s.warm && s.publisher == 7);
        assert!(parse_stamp(br#"{"message":"hello"}"#, &f).is_none());
        let f = Finder::new(Proto::Native.key());
        let s = parse_stamp(
            br#"{"type":"message","room":"r","id":9,"from":"u1","body":"1:2:3","ts":5}"#,
            &f,
        )
        .unwrap();
        assert_eq!((s.publisher, s.seq, s.ts_ns), (1, 2, 3));
    }

    fn outcome(rate: f64, p99_ms: f64) -> Outcome {
        Outcome {
            rate,
            clean: true,
            p99_ms,
        }
    }

    #[test]
    fn a_knee_is_bracketed_by_the_highest_rate_held_and_the_next_one_not() {
        let steps = [
            outcome(100.0, 2.0),
            outcome(160.0, 12.0),
            // Noise: held again above a failure. The bracket starts here.
            outcome(256.0, 9.0),
            outcome(409.6, 40.0),
            outcome(655.4, 150.0),
        ];
        assert_eq!(bracket(&steps, 10.0), Some((256.0, 409.6)));
        assert_eq!(bracket(&steps, 100.0), Some((409.6, 655.4)));
        let mid = probe(&steps, 10.0).unwrap();
        assert!((mid - (256.0f64 * 409.6).sqrt()).abs() < 1e-9);
    }

    #[test]
    fn only_a_miss_under_steal_above_the_limit_is_disturbed() {
        let sw = SweepCfg {
            start: 100.0,
            factor: 1.5,
            max_steps: 10,
            max_loss_pct: 0.1,
            refine: 0,
            confirm: 0,
            max_steal_pct: 1.0,
        };
        let step = |p99_ms, clean| Outcome {
            rate: 100.0,
            clean,
            p99_ms,
        };
        assert!(disturbed_miss(&step(12.0, true), 2.5, &sw));
        assert!(disturbed_miss(&step(3.0, false), 2.5, &sw));
        // Held despite the steal: it counts as it is.
        assert!(!disturbed_miss(&step(9.0, true), 2.5, &sw));
        // Missed with the host quiet: the server's own miss.
        assert!(!disturbed_miss(&step(12.0, true), 0.5, &sw));
        let off = SweepCfg {
            max_steal_pct: 0.0,
            ..sw
        };
        assert!(!disturbed_miss(&step(12.0, true), 50.0, &off));
    }

    #[test]
    fn a_rate_counts_for_a_knee_only_if_every_step_at_it_held() {
        let mut steps = vec![
            outcome(100.0, 2.0),
            outcome(160.0, 8.0),
            outcome(256.0, 30.0),
        ];
        assert_eq!(knee(&steps, 10.0), Some(160.0));
        assert_eq!(unconfirmed(&steps, 10.0), Some(160.0));
        // Its repeat fails: the knee falls to the rate below, which then
        // needs a repeat of its own.
        steps.push(outcome(160.0, 14.0));
        assert_eq!(knee(&steps, 10.0), Some(100.0));
        assert_eq!(bracket(&steps, 10.0), Some((100.0, 160.0)));
        assert_eq!(unconfirmed(&steps, 10.0), Some(100.0));
        steps.push(outcome(100.0, 3.0));
        assert_eq!(unconfirmed(&steps, 10.0), None);
        // The 100 ms bound is untouched by the 10 ms repeats.
        assert_eq!(knee(&steps, 100.0), Some(256.0));
    }

    #[test]
    fn a_lossy_step_is_not_held_whatever_its_latency() {
        let mut lossy = outcome(200.0, 1.0);
        lossy.clean = false;
        let steps = [outcome(100.0, 1.0), lossy];
        assert_eq!(bracket(&steps, 10.0), Some((100.0, 200.0)));
    }

    #[test]
    fn no_probe_without_both_ends_or_once_the_gap_is_small() {
        // Nothing held, or nothing failed above: no bracket.
        assert_eq!(probe(&[outcome(100.0, 50.0)], 10.0), None);
        assert_eq!(
            probe(&[outcome(100.0, 1.0), outcome(160.0, 2.0)], 10.0),
            None
        );
        // Within 2%: narrow enough.
        assert_eq!(
            probe(&[outcome(100.0, 1.0), outcome(101.5, 20.0)], 10.0),
            None
        );
    }

    #[test]
    fn encode_room_and_native() {
        let mut v = Vec::new();
        Proto::Room.encode_msg(&mut v, "r1", b"1:2:3");
        assert_eq!(v, br#"{"message":"1:2:3"}"#);
        v.clear();
        Proto::Native.encode_msg(&mut v, "r1", b"1:2:3");
        assert_eq!(v, br#"{"type":"send","room":"r1","body":"1:2:3"}"#);
    }
}
