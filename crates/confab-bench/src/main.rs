//! confab-bench: a load generator for Confab and its peers.
//!
//! The receive path is a hand-written WebSocket client (see `ws`), so that one
//! core of load generation can absorb several hundred thousand deliveries per
//! second. By default everything runs on a single-threaded runtime.

mod conns;
mod fanout;
mod report;
mod sys;
mod ws;

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use fanout::{FanoutCfg, Proto, SweepCfg};

#[derive(Parser, Debug)]
#[command(
    name = "confab-bench",
    version,
    about = "Load generator for Confab and peers"
)]
struct Cli {
    /// Print one JSON object per line instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Runtime worker threads; 1 = a current-thread runtime (default).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// Pin the load generator to these CPUs (comma separated), e.g. `--cpu 1`.
    #[arg(long, global = true, value_delimiter = ',')]
    cpu: Vec<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One paced fan-out run: R rooms x M members, K publishers per room.
    Fanout {
        #[command(flatten)]
        f: FanoutArgs,
        /// A run during which the host stole more than this percentage of
        /// the server's or the bench's CPU time is reported as superseded
        /// and run again (up to twice; the last run counts); 0, the
        /// default, runs once.
        #[arg(long, default_value_t = 0.0)]
        max_steal: f64,
    },
    /// Raise the rate step by step, then narrow the knees; report the highest rate
    /// held at p99 <= 10/100 ms.
    Sweep {
        #[command(flatten)]
        f: FanoutArgs,
        /// First rate (messages sent per second, all publishers together).
        #[arg(long, default_value_t = 100.0)]
        start: f64,
        /// Multiply the rate by this much at each step.
        #[arg(long, default_value_t = 1.5)]
        factor: f64,
        /// Maximum number of steps.
        #[arg(long, default_value_t = 12)]
        steps: usize,
        /// Highest loss (percent) for a step to count as held.
        #[arg(long, default_value_t = 0.1)]
        max_loss: f64,
        /// Steps added per knee (p99 <= 10 ms, <= 100 ms) after the rising
        /// steps, each halving the gap around it (in log space).
        #[arg(long, default_value_t = 2)]
        refine: usize,
        /// Repeats per knee after refining: a knee's rate counts only if
        /// every step at it held, so a lucky step is tried again.
        #[arg(long, default_value_t = 2)]
        confirm: usize,
        /// A step that misses the 10 ms bound while the host stole more
        /// than this percentage of the server's or the bench's CPU time
        /// is marked disturbed and run again (up to twice); 0 turns that off.
        #[arg(long, default_value_t = 1.0)]
        max_steal: f64,
    },
    /// Open N idle connections; report connect rate, failures and server RSS per connection.
    Conns(ConnsArgs),
}

#[derive(Args, Debug, Clone)]
struct Target {
    /// Server address (loopback only). Several, comma separated, spread the
    /// members over a cluster (member i uses address i mod N).
    #[arg(long, default_value = "127.0.0.1:8000", value_delimiter = ',')]
    addr: Vec<String>,
    /// Wire protocol: `room` (/ws/chat/<room>/) or `native` (/socket).
    #[arg(long, value_enum, default_value_t = Proto::Room)]
    proto: Proto,
    /// Server process id(s), comma separated, for CPU time and RSS (from /proc).
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Free-form label carried into the output (e.g. the server's name).
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Args, Debug, Clone)]
struct FanoutArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Members per room (publishers included).
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// Publishers per room.
    #[arg(long, default_value_t = 10)]
    publishers: usize,
    /// Messages sent per second, all publishers together (deliveries = rate x members).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds to wait for stragglers after sending stops; what has not arrived then is lost.
    #[arg(long, default_value_t = 2.0)]
    grace: f64,
    /// Minimum length of each message string (padded with 'x').
    #[arg(long, default_value_t = 32)]
    size: usize,
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Read buffer per connection, bytes.
    #[arg(long, default_value_t = 32 * 1024)]
    read_buf: usize,
    /// Spread member sockets over 127.0.0.1..127.0.0.N.
    #[arg(long, default_value_t = 1)]
    src_addrs: usize,
    /// Turn TCP_QUICKACK off on member sockets (fewer ACKs sent by the bench).
    #[arg(long)]
    delayed_ack: bool,
}

#[derive(Args, Debug, Clone)]
struct ConnsArgs {
    #[command(flatten)]
    target: Target,
    /// Number of idle connections to open.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Source addresses 127.0.0.1..N (0 = one per 5,000 connections).
    #[arg(long, default_value_t = 0)]
    src_addrs: usize,
    /// Spread the connections over this many rooms.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Seconds to wait after connecting before reading the server's RSS.
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
    /// Seconds to hold the connections open in all (at least `settle`).
    #[arg(long, default_value_t = 2.0)]
    hold: f64,
}

fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    let a = addr
        .to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("no address for {addr}"))?;
    if !a.ip().is_loopback() {
        bail!("refusing to load a non-loopback address ({a}); this tool is for local benchmarks");
    }
    Ok(a)
}

fn secs(s: f64) -> anyhow::Result<Duration> {
    if !(0.0..=3600.0).contains(&s) {
        bail!("durations are bounded to 0..3600 s (got {s})");
    }
    Ok(Duration::from_secs_f64(s))
}

fn fanout_cfg(f: &FanoutArgs, bench_cores: f64) -> anyhow::Result<FanoutCfg> {
    Ok(FanoutCfg {
        addrs: f
            .target
            .addr
            .iter()
            .map(|a| resolve(a))
            .collect::<anyhow::Result<_>>()?,
        proto: f.target.proto,
        rooms: f.rooms,
        members: f.members,
        publishers: f.publishers,
        rate: f.rate,
        duration: secs(f.duration)?,
        grace: secs(f.grace)?,
        size: f.size,
        server_pids: f.target.server_pid.clone(),
        connect_concurrency: f.connect_concurrency,
        read_buf: f.read_buf,
        src_addrs: f.src_addrs,
        bench_cores,
        delayed_ack: f.delayed_ack,
        label: f.target.label.clone(),
    })
}

fn emit(json: bool, v: &Value) {
    if json {
        println!("{v}");
    } else {
        print!("{}", report::table(v));
    }
}

fn has_errors(v: &Value) -> bool {
    v["errors"].as_array().is_some_and(|e| !e.is_empty())
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    let cores = cli.threads.max(1) as f64;
    match &cli.cmd {
        Cmd::Fanout { f, max_steal } => {
            let cfg = fanout_cfg(f, cores)?;
            let json = cli.json;
            let spoiled = |res: &Value| fanout::disturbed(fanout::steal_of(res), *max_steal);
            let (v, _) = fanout::run_undisturbed(&cfg, spoiled, |run| emit(json, run)).await?;
            Ok(!has_errors(&v))
        }
        Cmd::Sweep {
            f,
            start,
            factor,
            steps,
            max_loss,
            refine,
            confirm,
            max_steal,
        } => {
            let cfg = fanout_cfg(f, cores)?;
            if *factor <= 1.0 {
                bail!("--factor must be > 1");
            }
            let sw = SweepCfg {
                start: *start,
                factor: *factor,
                max_steps: (*steps).min(40),
                max_loss_pct: *max_loss,
                refine: (*refine).min(8),
                confirm: (*confirm).min(8),
                max_steal_pct: *max_steal,
            };
            let json = cli.json;
            let v = fanout::sweep(&cfg, &sw, |step| emit(json, step)).await?;
            emit(json, &v);
            Ok(true)
        }
        Cmd::Conns(c) => {
            let limit = sys::raise_nofile();
            if (c.count as u64) + 64 > limit {
                eprintln!(
                    "warning: open-file limit is {limit}; {} connections will not all fit",
                    c.count
                );
            }
            let cfg = conns::ConnsCfg {
                addr: resolve(&c.target.addr[0])?,
                proto: c.target.proto,
                count: c.count,
                concurrency: c.concurrency,
                src_addrs: c.src_addrs,
                rooms: c.rooms,
                settle: secs(c.settle)?,
                hold: secs(c.hold)?,
                server_pids: c.target.server_pid.clone(),
                label: c.target.label.clone(),
            };
            let v = conns::run(&cfg).await?;
            emit(cli.json, &v);
            Ok(!has_errors(&v))
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    sys::raise_nofile();
    if !cli.cpu.is_empty() {
        if let Err(e) = sys::pin_to(&cli.cpu) {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    }
    let rt = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: building runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let json = cli.json;
    match rt.block_on(run(cli)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"kind": "error", "errors": [format!("{e:#}")]})
                );
            }
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
