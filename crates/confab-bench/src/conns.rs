//! `conns`: open N idle connections, measure connect rate, failures and the
//! server's resident memory per idle connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::fanout::{src_ip, Proto};
use crate::sys::{procs_rss_kib, CpuWindow};
use crate::ws::{self, Conn, Masker};

#[derive(Clone, Debug)]
pub struct ConnsCfg {
    pub addr: SocketAddr,
    pub proto: Proto,
    pub count: usize,
    pub concurrency: usize,
    /// 0 = choose automatically (one source address per 5,000 connections).
    pub src_addrs: usize,
    pub rooms: usize,
    pub settle: Duration,
    pub hold: Duration,
    pub server_pids: Vec<u32>,
    pub label: String,
}

struct Idle {
    closed_by_server: Arc<AtomicU64>,
    stopping: Arc<AtomicBool>,
}

/// Keep a connection open: answer pings, notice server-side closes.
async fn idle_reader(conn: Arc<Conn>, idle: Idle) {
    let mut buf = vec![0u8; 2048];
    let mut end = 0usize;
    let mut masker = Masker::new(buf.as_ptr() as u64);
    'outer: loop {
        if end == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match conn.read(&mut buf[end..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => end += n,
        }
        let mut start = 0;
        while let Some(h) = ws::parse_head(&buf[start..end]) {
            let total = h.header_len + h.payload_len;
            if end - start < total {
                break;
            }
            match h.opcode {
                ws::OP_PING => {
                    let mut out = Vec::new();
                    let payload = buf[start + h.header_len..start + total].to_vec();
                    ws::encode_frame(&mut out, ws::OP_PONG, &payload, masker.next_key());
                    if conn.write_all(&out).await.is_err() {
                        break 'outer;
                    }
                }
                ws::OP_CLOSE => {
                    if !idle.stopping.load(Ordering::Relaxed) {
                        idle.closed_by_server.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
                _ => {}
            }
            start += total;
        }
        buf.copy_within(start..end, 0);
        end -= start;
    }
    if !idle.stopping.load(Ordering::Relaxed) {
        idle.closed_by_server.fetch_add(1, Ordering::Relaxed);
    }
}

/// After the hold: can a fresh client still join a room and get its own message back?
async fn echo_probe(cfg: &ConnsCfg, room: &str) -> anyhow::Result<f64> {
    let t = Instant::now();
    let (stream, mut left) = ws::connect(
        cfg.addr,
        None,
        &cfg.proto.path(room),
        Duration::from_secs(10),
    )
    .await?;
    let conn = Conn::new(stream);
    let mut masker = Masker::new(3);
    let mut out = Vec::new();
    for j in cfg.proto.join_frames("probe", room) {
        ws::encode_frame(&mut out, ws::OP_TEXT, j.as_bytes(), masker.next_key());
    }
    let mut msg = Vec::new();
    let marker = format!("probe{}", std::process::id());
    match cfg.proto {
        Proto::Room => msg.extend_from_slice(format!(r#"{{"message":"{marker}"}}"#).as_bytes()),
        Proto::Native => msg.extend_from_slice(
            format!(r#"{{"type":"send","room":"{room}","body":"{marker}"}}"#).as_bytes(),
        ),
    }
    // Send the message a few times: a room join may complete just after the upgrade.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut next_send = Instant::now();
    let mut buf = vec![0u8; 65536];
    loop {
        if Instant::now() >= next_send {
            let mut o = out.clone();
            ws::encode_frame(&mut o, ws::OP_TEXT, &msg, masker.next_key());
            out.clear();
            conn.write_all(&o).await?;
            next_send = Instant::now() + Duration::from_millis(500);
        }
        if memchr::memmem::find(&left, marker.as_bytes()).is_some() {
            return Ok(t.elapsed().as_secs_f64() * 1000.0);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("no echo within 5 s");
        }
        let wait = next_send.min(deadline) - Instant::now().min(next_send.min(deadline));
        if let Ok(r) = tokio::time::timeout(wait, conn.read(&mut buf)).await {
            let n = r?;
            if n == 0 {
                anyhow::bail!("closed by server");
            }
            left.extend_from_slice(&buf[..n]);
        }
    }
}

pub async fn run(cfg: &ConnsCfg) -> anyhow::Result<Value> {
    let src_addrs = if cfg.src_addrs == 0 {
        cfg.count / 5000 + 1
    } else {
        cfg.src_addrs
    };
    let nonce = std::process::id();
    let rooms: Vec<String> = (0..cfg.rooms.max(1))
        .map(|r| format!("idle{nonce:x}r{r}"))
        .collect();
    let rss_before = procs_rss_kib(&cfg.server_pids);
    let cpu = CpuWindow::start(&cfg.server_pids);
    let closed = Arc::new(AtomicU64::new(0));
    let stopping = Arc::new(AtomicBool::new(false));
    let sem = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(cfg.count);
    for i in 0..cfg.count {
        let sem = sem.clone();
        let room = rooms[i % rooms.len()].clone();
        let path = cfg.proto.path(&room);
        let joins = cfg.proto.join_frames(&format!("idle{i}"), &room);
        let addr = cfg.addr;
        let src = src_ip(i, src_addrs);
        let idle = Idle {
            closed_by_server: closed.clone(),
            stopping: stopping.clone(),
        };
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let t = Instant::now();
            let (stream, _left) = ws::connect(addr, src, &path, Duration::from_secs(15)).await?;
            let conn = Arc::new(Conn::new(stream));
            let mut out = Vec::new();
            let mut masker = Masker::new(i as u64 + 11);
            for j in joins {
                ws::encode_frame(&mut out, ws::OP_TEXT, j.as_bytes(), masker.next_key());
            }
            if !out.is_empty() {
                conn.write_all(&out).await?;
            }
            let us = t.elapsed().as_micros() as u64;
            tokio::spawn(idle_reader(conn.clone(), idle));
            Ok::<_, std::io::Error>((conn, us))
        }));
    }
    let mut conns = Vec::with_capacity(cfg.count);
    let mut hist: Histogram<u64> = Histogram::new_with_bounds(1, 100_000_000, 3)?;
    let mut failures = 0u64;
    let mut errors: std::collections::BTreeMap<String, u64> = Default::default();
    for h in handles {
        match h.await {
            Ok(Ok((c, us))) => {
                hist.saturating_record(us.max(1));
                conns.push(c);
            }
            Ok(Err(e)) => {
                failures += 1;
                *errors.entry(e.to_string()).or_default() += 1;
            }
            Err(e) => {
                failures += 1;
                *errors.entry(e.to_string()).or_default() += 1;
            }
        }
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    let ok = conns.len() as u64;
    tokio::time::sleep(cfg.settle).await;
    let rss_after = procs_rss_kib(&cfg.server_pids);
    let usage = cpu.stop();
    let hold_left = cfg.hold.saturating_sub(cfg.settle);
    tokio::time::sleep(hold_left).await;
    let closed_during_hold = closed.load(Ordering::Relaxed);
    let probe = echo_probe(cfg, &rooms[0]).await;
    stopping.store(true, Ordering::Relaxed);
    for c in &conns {
        c.shutdown();
    }
    drop(conns);
    let per_conn = match (rss_before, rss_after) {
        (Some(a), Some(b)) if ok > 0 => Some((b as f64 - a as f64) / ok as f64),
        _ => None,
    };
    let q = |x: f64| hist.value_at_quantile(x) as f64 / 1000.0;
    let mut errs: Vec<String> = errors.iter().map(|(e, n)| format!("{n} x {e}")).collect();
    if let Err(e) = &probe {
        errs.push(format!("echo probe after hold: {e}"));
    }
    if closed_during_hold > 0 {
        errs.push(format!(
            "{closed_during_hold} idle connections closed by the server"
        ));
    }
    Ok(json!({
        "kind": "conns",
        "label": cfg.label,
        "proto": format!("{:?}", cfg.proto).to_lowercase(),
        "requested": cfg.count,
        "connected": ok,
        "failed": failures,
        "closed_by_server": closed_during_hold,
        "src_addrs": src_addrs,
        "connect_s": connect_secs,
        "connects_per_s": ok as f64 / connect_secs,
        "connect_ms": {"p50": q(0.5), "p99": q(0.99), "max": hist.max() as f64 / 1000.0},
        "server_rss_before_kib": rss_before,
        "server_rss_after_kib": rss_after,
        "server_kib_per_conn": per_conn,
        "server_cpu_secs": usage.server_secs,
        "bench_cpu_secs": usage.own_secs,
        "host_steal_pct": usage.steal_json(),
        "echo_probe_ms": probe.as_ref().ok(),
        "errors": errs,
    }))
}
