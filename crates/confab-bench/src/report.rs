//! Human-readable rendering of the JSON results.

use std::fmt::Write;

use serde_json::Value;

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn errors(out: &mut String, v: &Value) {
    if let Some(errs) = v["errors"].as_array() {
        for e in errs {
            let _ = writeln!(out, "  ERROR        {}", e.as_str().unwrap_or_default());
        }
    }
}

pub fn table(v: &Value) -> String {
    let mut o = String::new();
    let label = v["label"].as_str().unwrap_or_default();
    match v["kind"].as_str().unwrap_or_default() {
        "fanout" => {
            let _ = writeln!(
                o,
                "fanout {label} rooms={} members={} publishers/room={} rate={}/s",
                v["rooms"], v["members"], v["publishers"], v["rate"]
            );
            if v["latency_ms"].is_null() {
                errors(&mut o, v);
                return o;
            }
            let _ = writeln!(
                o,
                "  deliveries/s offered {:.0}  delivered {:.0}   (sent {} msgs, {:.0}/s)",
                f(&v["offered_deliveries_per_s"]),
                f(&v["delivered_per_s"]),
                v["sent"],
                f(&v["sent_per_s"])
            );
            let _ = writeln!(
                o,
                "  deliveries   expected {}  delivered {}  lost {} ({:.3}%)  duplicates {}",
                v["expected"],
                v["delivered"],
                v["lost"],
                f(&v["loss_pct"]),
                v["duplicates"]
            );
            let l = &v["latency_ms"];
            let _ = writeln!(
                o,
                "  latency ms   p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
                f(&l["p50"]),
                f(&l["p90"]),
                f(&l["p99"]),
                f(&l["p999"]),
                f(&l["max"])
            );
            let s = &v["send_lag_ms"];
            let _ = writeln!(
                o,
                "  send lag ms  p99 {:.3}  max {:.3}",
                f(&s["p99"]),
                f(&s["max"])
            );
            if !v["server"].is_null() {
                let sv = &v["server"];
                let _ = writeln!(
                    o,
                    "  server cpu   {:.2} s over {:.2} s ({:.0}% of a core), {:.3} us/delivery, rss {} KiB",
                    f(&sv["cpu_secs"]),
                    f(&v["window_s"]),
                    100.0 * f(&sv["cpu_util"]),
                    f(&sv["cpu_us_per_delivery"]),
                    sv["rss_kib"]
                );
            }
            let _ = writeln!(
                o,
                "  bench cpu    {:.2} s ({:.0}% of a core){}",
                f(&v["bench_cpu_secs"]),
                100.0 * f(&v["bench_cpu_util"]),
                if v["bench_saturated"].as_bool() == Some(true) {
                    "  ** bench saturated: figures are a lower bound **"
                } else {
                    ""
                }
            );
        }
        "sweep" => {
            let _ = writeln!(
                o,
                "sweep {label} rooms={} members={} publishers/room={} ({} steps)",
                v["rooms"], v["members"], v["publishers"], v["steps"]
            );
            for (name, key) in [
                ("p99<=10ms ", "best_p99_10ms"),
                ("p99<=100ms", "best_p99_100ms"),
            ] {
                let b = &v[key];
                if b.is_null() {
                    let _ = writeln!(o, "  best {name}  none held");
                } else {
                    let _ = writeln!(
                        o,
                        "  best {name}  {:.0} msgs/s = {:.0} deliveries/s offered ({:.0} delivered), p99 {:.3} ms, loss {:.3}% (worst of {} runs)",
                        f(&b["rate"]),
                        f(&b["offered_deliveries_per_s"]),
                        f(&b["delivered_per_s"]),
                        f(&b["p99_ms"]),
                        f(&b["loss_pct"]),
                        b["runs"]
                    );
                }
            }
        }
        "conns" => {
            let _ = writeln!(
                o,
                "conns {label} requested={} connected={} failed={} (from {} source addresses)",
                v["requested"], v["connected"], v["failed"], v["src_addrs"]
            );
            let c = &v["connect_ms"];
            let _ = writeln!(
                o,
                "  connect      {:.0}/s over {:.2} s; ms p50 {:.2} p99 {:.2} max {:.2}",
                f(&v["connects_per_s"]),
                f(&v["connect_s"]),
                f(&c["p50"]),
                f(&c["p99"]),
                f(&c["max"])
            );
            let _ = writeln!(
                o,
                "  server rss   {} -> {} KiB: {:.2} KiB per idle connection",
                v["server_rss_before_kib"],
                v["server_rss_after_kib"],
                f(&v["server_kib_per_conn"])
            );
            let _ = writeln!(
                o,
                "  after hold   {} closed by server; echo probe {} ms",
                v["closed_by_server"], v["echo_probe_ms"]
            );
        }
        _ => {}
    }
    errors(&mut o, v);
    o
}
