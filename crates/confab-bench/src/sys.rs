//! Process accounting: our own CPU time, another process's CPU time and RSS,
//! the host's steal time on the CPUs in use, the open-file limit and CPU
//! pinning. Linux only (reads `/proc`).

use std::time::Instant;

use rustix::process::Pid;
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};
use rustix::time::{clock_gettime, ClockId};

/// CPU time (user + system, all threads) consumed by this process, in seconds.
/// Same quantity as getrusage(RUSAGE_SELF) ru_utime + ru_stime.
pub fn own_cpu_secs() -> f64 {
    let t = clock_gettime(ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// utime + stime of process `pid` in seconds, from /proc/<pid>/stat.
pub fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Some((utime + stime) as f64 / hz as f64)
}

/// Resident set size of `pid` in KiB (VmRSS from /proc/<pid>/status).
pub fn proc_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Raise the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let lim = getrlimit(Resource::Nofile);
    let want = Rlimit {
        current: lim.maximum,
        maximum: lim.maximum,
    };
    if setrlimit(Resource::Nofile, want).is_ok() {
        return lim.maximum.unwrap_or(u64::MAX);
    }
    lim.current.unwrap_or(u64::MAX)
}

/// Pin the calling thread (and threads it spawns later) to the given CPUs.
pub fn pin_to(cpus: &[usize]) -> anyhow::Result<()> {
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c);
    }
    sched_setaffinity(None, &set).map_err(|e| anyhow::anyhow!("sched_setaffinity {cpus:?}: {e}"))
}

/// Steal ticks of every CPU (time the hypervisor ran something else
/// while that virtual CPU had work), indexed by CPU number, from
/// /proc/stat. On bare metal they stay at zero.
fn steal_ticks() -> Option<Vec<(usize, u64)>> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .filter_map(|l| l.strip_prefix("cpu"))
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .map(|l| {
            let mut f = l.split_whitespace();
            let cpu = f.next()?.parse().ok()?;
            // user nice system idle iowait irq softirq steal
            Some((cpu, f.nth(7)?.parse().ok()?))
        })
        .collect()
}

/// The CPUs that any of `pids` may run on (our own when `pids` is empty).
fn cpus_of(pids: &[u32]) -> Option<Vec<usize>> {
    let sets: Vec<CpuSet> = if pids.is_empty() {
        vec![sched_getaffinity(None).ok()?]
    } else {
        pids.iter()
            .map(|&p| sched_getaffinity(Some(Pid::from_raw(p as i32)?)).ok())
            .collect::<Option<_>>()?
    };
    Some(
        (0..CpuSet::MAX_CPU)
            .filter(|&c| sets.iter().any(|s| s.is_set(c)))
            .collect(),
    )
}

/// The steal ticks of a set of CPUs, summed.
fn steal_of(cpus: &[usize]) -> Option<u64> {
    let all = steal_ticks()?;
    Some(
        all.iter()
            .filter(|(c, _)| cpus.contains(c))
            .map(|&(_, t)| t)
            .sum(),
    )
}

/// Samples our own and the server's CPU time over a window, and the
/// host's steal time on the CPUs each side runs on.
pub struct CpuWindow {
    wall: Instant,
    own: f64,
    server: Option<f64>,
    server_pids: Vec<u32>,
    /// The server's CPUs and ours, with their steal ticks at the start.
    steal: [Option<(Vec<usize>, u64)>; 2],
}

/// Summed CPU seconds of several processes (None if any is unreadable or none given).
pub fn procs_cpu_secs(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| proc_cpu_secs(p)).sum()
}

/// Summed RSS of several processes in KiB.
pub fn procs_rss_kib(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| proc_rss_kib(p)).sum()
}

pub struct CpuUsage {
    pub wall_secs: f64,
    pub own_secs: f64,
    pub server_secs: Option<f64>,
    /// Steal time over the window as a percentage of the time of the
    /// server's CPUs and of ours: a step a busy neighbour disturbed.
    pub steal_pct: [Option<f64>; 2],
}

impl CpuUsage {
    /// The steal percentages as JSON: `{"server": .., "bench": ..}`.
    pub fn steal_json(&self) -> serde_json::Value {
        let [server, bench] = self.steal_pct;
        serde_json::json!({"server": server, "bench": bench})
    }

    /// The larger of the two sides' steal, if either is known.
    pub fn worst_steal_pct(&self) -> Option<f64> {
        self.steal_pct.into_iter().flatten().reduce(f64::max)
    }
}

impl CpuWindow {
    pub fn start(server_pids: &[u32]) -> Self {
        CpuWindow {
            wall: Instant::now(),
            own: own_cpu_secs(),
            server: procs_cpu_secs(server_pids),
            server_pids: server_pids.to_vec(),
            steal: Self::steal_now(server_pids),
        }
    }

    /// The server's side is unknown without its pids.
    fn steal_now(server_pids: &[u32]) -> [Option<(Vec<usize>, u64)>; 2] {
        let side = |pids: &[u32]| -> Option<(Vec<usize>, u64)> {
            let cpus = cpus_of(pids)?;
            let ticks = steal_of(&cpus)?;
            Some((cpus, ticks))
        };
        let server = (!server_pids.is_empty())
            .then(|| side(server_pids))
            .flatten();
        [server, side(&[])]
    }

    pub fn stop(&self) -> CpuUsage {
        let server = match (self.server, procs_cpu_secs(&self.server_pids)) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let wall_secs = self.wall.elapsed().as_secs_f64();
        let hz = rustix::param::clock_ticks_per_second().max(1) as f64;
        let steal_pct = self.steal.each_ref().map(|side| {
            let (cpus, start) = side.as_ref()?;
            let ticks = steal_of(cpus)?.saturating_sub(*start);
            Some(100.0 * ticks as f64 / (hz * wall_secs * cpus.len().max(1) as f64))
        });
        CpuUsage {
            wall_secs,
            own_secs: own_cpu_secs() - self.own,
            server_secs: server,
            steal_pct,
        }
    }
}
