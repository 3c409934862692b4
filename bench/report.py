#!/usr/bin/env python3
"""Turn confab-bench JSON lines (from bench/compare) into docs/performance.md
and an SVG plot of p99 latency against offered load. Standard library only."""

import argparse
import os
import json
import math
from collections import defaultdict

SCENARIOS = {
    "S1": "1 room x 100 members, 10 publishers",
    "S2": "100 rooms x 10 members, 1 publisher each",
    "S3": "idle connections",
    "S4": "S1 with the members spread over two Confab nodes through Redis",
}
SERVER_NAMES = {
    "confab": "Confab",
    "confab2": "Confab x2 nodes (Redis broker)",
    "node": "Node ws",
    "django": "Django Channels (daphne + channels_redis)",
    "bare": "bare fan-out (reference)",
}
COLORS = {"confab": "#d62728", "confab2": "#ff7f0e", "node": "#1f77b4", "django": "#2ca02c",
          "bare": "#7f7f7f"}


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return rows


def split_label(row):
    parts = (row.get("label") or "").split()
    return (parts[0] if parts else "?"), (parts[1] if len(parts) > 1 else "?")


def fmt_int(x):
    if x is None:
        return "-"
    return f"{x:,.0f}"


def fmt_ms(x):
    if x is None:
        return "-"
    return f"{x:.2f}" if x < 100 else f"{x:,.0f}"


def held(step, max_loss, p99_max):
    if step.get("errors"):
        return False
    lat = step.get("latency_ms") or {}
    return step.get("loss_pct", 100) <= max_loss and lat.get("p99", 1e18) <= p99_max


def best(steps, p99_max, max_loss=0.1):
    """The knee: the highest offered load at which every step held (a load
    tried twice, held once and not the other time, does not count), as the
    worst of its steps (highest p99)."""
    at = {}
    for s in steps:
        at.setdefault(s["offered_deliveries_per_s"], []).append(s)
    ok = [load for load, ss in at.items() if all(held(s, max_loss, p99_max) for s in ss)]
    if not ok:
        return None
    return max(at[max(ok)], key=lambda s: (s.get("latency_ms") or {}).get("p99", 0))


def fmt_steal(step):
    """The host's steal over a step's window, server's CPU then the bench's."""
    st = step.get("host_steal_pct") or {}
    if st.get("server") is None and st.get("bench") is None:
        return "-"
    return ", ".join("-" if st.get(k) is None else f"{st[k]:.1f}" for k in ("server", "bench"))


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    if not n:
        return None
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def spread(xs, fmt):
    """The median of xs, and the range when there is more than one."""
    m = median(xs)
    if m is None:
        return "-"
    if len(xs) == 1:
        return fmt(m)
    return f"{fmt(m)} ({fmt(min(xs))}-{fmt(max(xs))})"


def fixed_figures(runs):
    """The rounds of one fixed load: their p50, p99 and max latency, server
    CPU per delivery, and the deliveries lost in all."""
    lat = [r.get("latency_ms") or {} for r in runs if r.get("latency_ms")]
    cpu = [(r.get("server") or {}).get("cpu_us_per_delivery") for r in runs]
    return {
        "p50": [l["p50"] for l in lat],
        "p99": [l["p99"] for l in lat],
        "max": [l["max"] for l in lat],
        "cpu": [c for c in cpu if c is not None],
        "lost": sum(r.get("lost", 0) for r in runs),
    }


def ratio(a, b):
    return a / b if a is not None and b else None


def idle(conns, server, count):
    """The server's idle-connection run at `count` connections, if measured."""
    for c in conns.get(server, []):
        if c.get("requested") == count and c.get("server_kib_per_conn") is not None:
            return c
    return None


def targets(steps, fixed, conns):
    """The issue's targets, computed from this run: [(target, Confab, peers, met)].
    `fixed` maps (server, fixed load) to its `fixed_figures`."""
    out = []

    def knee(server, sc, bound):
        b = best(steps.get((server, sc), []), bound)
        return b["offered_deliveries_per_s"] if b else None

    for sc in ("S1", "S2"):
        c, n = knee("confab", sc, 10), knee("node", sc, 10)
        r = ratio(c, n)
        c100, n100 = knee("confab", sc, 100), knee("node", sc, 100)
        r100 = ratio(c100, n100)
        out.append((
            f"{sc} knee at p99 <= 10 ms: at least 3x Node's",
            f"{fmt_int(c) if c else 'none'} deliveries/s",
            f"Node {fmt_int(n) if n else 'none'}" + (f": **{r:.2f}x**" if r else "")
            + (f" (at p99 <= 100 ms: {fmt_int(c100)} against {fmt_int(n100)}, {r100:.2f}x)"
               if r100 else ""),
            "yes" if r and r >= 3 else "**no**",
        ))
    def med(server, sc, key):
        f = fixed.get((server, sc))
        return median(f[key]) if f else None

    c100k, n100k = med("confab", "S1@100k", "cpu"), med("node", "S1@100k", "cpu")
    d1k = med("django", "S1@1k", "cpu")
    met = c100k is not None and n100k is not None and c100k <= n100k and (d1k is None or c100k <= d1k / 50)
    out.append((
        "server CPU per delivery at S1 100,000/s: at most Node's, at most 1/50 of Django's",
        f"{c100k:.2f} us" if c100k is not None else "-",
        (f"Node {n100k:.2f} us ({ratio(c100k, n100k):.2f}x)" if n100k else "Node -")
        + (f"; Django {d1k:.1f} us at 1,000/s (1/{d1k / c100k:.0f})" if d1k and c100k else ""),
        "yes" if met else "**no**",
    ))
    for sc, load in (("S1@1k", "1,000"), ("S1@100k", "100,000")):
        c, n, d = med("confab", sc, "p99"), med("node", sc, "p99"), med("django", sc, "p99")
        met = c is not None and n is not None and c <= n and (d is None or c < d / 20)
        out.append((
            f"p99 at S1 {load}/s (median of the rounds): at most Node's"
            + (", under 1/20 of Django's" if sc == "S1@1k" else ""),
            f"{fmt_ms(c)} ms",
            f"Node {fmt_ms(n)} ms" + (f"; Django {fmt_ms(d)} ms (1/{d / c:.1f})" if d and c else ""),
            "yes" if met else "**no**",
        ))

    c10, n10 = idle(conns, "confab", 10000), idle(conns, "node", 10000)
    if c10 and n10:
        r = c10["server_kib_per_conn"] / n10["server_kib_per_conn"]
        out.append((
            "RSS per idle connection at 10,000: at most half of Node's",
            f"{c10['server_kib_per_conn']:.2f} KiB",
            f"Node {n10['server_kib_per_conn']:.2f} KiB ({r:.2f}x)",
            "yes" if r <= 0.5 else "**no**",
        ))
        r = c10["connects_per_s"] / n10["connects_per_s"]
        out.append((
            "connect rate at 10,000: at least Node's",
            f"{fmt_int(c10['connects_per_s'])}/s",
            f"Node {fmt_int(n10['connects_per_s'])}/s ({r:.2f}x)",
            "yes" if r >= 1 else "**no**",
        ))
    below = [s for (server, sc), st in steps.items() if server.startswith("confab")
             for s in st if held(s, float("inf"), 100) and not s.get("bench_saturated")]
    lost = sum(s.get("lost", 0) for s in below)
    dup = sum(s.get("duplicates", 0) for s in below)
    out.append((
        "zero loss below saturation",
        f"{lost} lost, {dup} duplicates in the {len(below)} Confab steps held at p99 <= 100 ms",
        "-",
        "yes" if lost == 0 and dup == 0 else "**no**",
    ))
    return out


def against_reference(steps):
    """Rows of the reference table: for S1 and S2, the bare fan-out's knee
    at p99 <= 10 ms, each server's knee as a share of it, where 3x Node's
    knee falls against it, and the server CPU per delivery of Confab and
    the reference (the median of their steps there) at the highest offered
    load both held at p99 <= 10 ms: below saturation, where frames do not
    yet share writes."""
    rows = []
    for sc in ("S1", "S2"):
        ref = best(steps.get(("bare", sc), []), 10)
        if not ref:
            continue
        r = ref["offered_deliveries_per_s"]
        knees = {}
        for server in ("confab", "node", "django"):
            b = best(steps.get((server, sc), []), 10)
            knees[server] = b["offered_deliveries_per_s"] if b else None
        shares = "; ".join(
            f"{SERVER_NAMES[server].split(' (')[0]} {fmt_int(k) if k else 'none'}"
            + (f" ({100 * k / r:.0f}%)" if k else "")
            for server, k in knees.items() if (server, sc) in steps)
        three = 3 * knees["node"] if knees.get("node") else None
        where = (f"{fmt_int(three)}: {three / r:.2f}x the reference's" if three else "-")
        def held_at(server):
            """Server CPU per delivery of the steps held at p99 <= 10 ms, by load."""
            at = defaultdict(list)
            for s in steps.get((server, sc), []):
                us = (s.get("server") or {}).get("cpu_us_per_delivery")
                if held(s, 0.1, 10) and us:
                    at[s["offered_deliveries_per_s"]].append(us)
            return at
        mine, theirs = held_at("confab"), held_at("bare")
        common = sorted(set(mine) & set(theirs))
        cpu = "-"
        if common:
            at = common[-1]
            cu, bu = median(mine[at]), median(theirs[at])
            cpu = f"{cu:.2f} against {bu:.2f} us ({cu / bu:.2f}x) at {fmt_int(at)}/s"
        rows.append((sc, fmt_int(r) + (" (bench saturated)" if ref.get("bench_saturated") else ""),
                     shares, where, cpu))
    return rows


def svg_plot(series_by_panel, path):
    """series_by_panel: [(title, {server: [(x_deliveries, y_p99_ms, saturated)]})]"""
    pw, ph, ml, mr, mt, mb = 430, 320, 60, 15, 30, 45
    width = pw * len(series_by_panel)
    height = ph + 60
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for i, (title, series) in enumerate(series_by_panel):
        ox = i * pw
        pts = [p for s in series.values() for p in s if p[0] > 0 and p[1] > 0]
        if not pts:
            continue
        x0 = math.floor(math.log10(min(p[0] for p in pts)))
        x1 = math.ceil(math.log10(max(p[0] for p in pts)))
        y0 = math.floor(math.log10(max(min(p[1] for p in pts), 0.01)))
        y1 = max(math.ceil(math.log10(max(p[1] for p in pts))), 3)
        x1 = max(x1, x0 + 1)
        y1 = max(y1, y0 + 1)
        w, h = pw - ml - mr, ph - mt - mb

        def sx(x):
            return ox + ml + (math.log10(x) - x0) / (x1 - x0) * w

        def sy(y):
            y = min(max(y, 10**y0), 10**y1)
            return mt + h - (math.log10(y) - y0) / (y1 - y0) * h

        out.append(f'<text x="{ox + ml + w / 2}" y="18" text-anchor="middle" '
                   f'font-weight="bold">{title}</text>')
        out.append(f'<rect x="{ox + ml}" y="{mt}" width="{w}" height="{h}" '
                   f'fill="none" stroke="#333"/>')
        for e in range(x0, x1 + 1):
            x = sx(10**e)
            out.append(f'<line x1="{x}" y1="{mt}" x2="{x}" y2="{mt + h}" stroke="#ddd"/>')
            out.append(f'<text x="{x}" y="{mt + h + 14}" text-anchor="middle">1e{e}</text>')
        for e in range(y0, y1 + 1):
            y = sy(10**e)
            out.append(f'<line x1="{ox + ml}" y1="{y}" x2="{ox + ml + w}" y2="{y}" stroke="#ddd"/>')
            label = f"{10**e:g}"
            out.append(f'<text x="{ox + ml - 4}" y="{y + 4}" text-anchor="end">{label}</text>')
        for limit in (10, 100):
            if 10**y0 <= limit <= 10**y1:
                y = sy(limit)
                out.append(f'<line x1="{ox + ml}" y1="{y}" x2="{ox + ml + w}" y2="{y}" '
                           f'stroke="#888" stroke-dasharray="4,3"/>')
        out.append(f'<text x="{ox + ml + w / 2}" y="{mt + h + 32}" text-anchor="middle">'
                   f'offered deliveries/s (log)</text>')
        out.append(f'<text transform="translate({ox + 14},{mt + h / 2}) rotate(-90)" '
                   f'text-anchor="middle">p99 latency, ms (log)</text>')
        ly = mt + 10
        for server, pts in series.items():
            pts = sorted(p for p in pts if p[0] > 0 and p[1] > 0)
            if not pts:
                continue
            color = COLORS.get(server, "#555")
            d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y, _ in pts)
            out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2"/>')
            for x, y, sat in pts:
                fill = "white" if sat else color
                out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" '
                           f'fill="{fill}" stroke="{color}"/>')
            out.append(f'<rect x="{ox + ml + 8}" y="{ly - 8}" width="10" height="3" fill="{color}"/>')
            out.append(f'<text x="{ox + ml + 22}" y="{ly - 4}">'
                       f'{SERVER_NAMES.get(server, server).split(" (")[0]}</text>')
            ly += 14
    out.append(f'<text x="8" y="{height - 8}" fill="#555">Hollow points: the load generator '
               f'was saturated (figures are a lower bound). Dashed: 10 ms and 100 ms.</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--commands", required=True)
    ap.add_argument("--meta", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--svg", required=True)
    ap.add_argument("--svg-link", default="../bench/results/p99-vs-load.svg")
    a = ap.parse_args()

    rows = load(a.results)
    meta = json.load(open(a.meta))
    commands = [c.rstrip("\n") for c in open(a.commands)]

    steps = defaultdict(list)  # (server, scenario) -> fanout steps that count
    listed = defaultdict(list)  # the same, with the disturbed steps run again
    conns = defaultdict(list)
    servers = []
    for r in rows:
        server, sc = split_label(r)
        if server not in servers:
            servers.append(server)
        if r.get("kind") == "fanout":
            listed[(server, sc)].append(r)
            if not r.get("superseded"):
                steps[(server, sc)].append(r)
        elif r.get("kind") == "conns":
            conns[server].append(r)

    L = []
    L.append("# Performance")
    L.append("")
    L.append("Confab against two servers of the same chat room protocol (the Django Channels "
             "tutorial protocol: `ws://HOST/ws/chat/<room>/`, `{\"message\": ...}` to every "
             "member of the room, sender included):")
    L.append("")
    L.append("- **Node ws**: a 40-line room server on Node.js and the `ws` package "
             "(`bench/peers/node-ws/server.js`).")
    L.append("- **Django Channels**: the official tutorial's `ChatConsumer` (room group "
             "broadcast) under daphne with `channels_redis` on the local Redis "
             "(`bench/peers/django_chat/`).")
    L.append("- **bare fan-out**, a reference rather than a peer: one epoll loop (mio) that "
             "writes each frame to every member of its room, the frames of one turn of the "
             "loop gathered per socket, and does nothing else: no history, no limits, no "
             "heartbeat (`crates/confab-bench/src/bin/bare-fanout.rs`). What it holds is what "
             "this host and this load generator allow at all.")
    L.append("")
    L.append("Every figure on this page was produced by `bench/compare`"
             + (" **in `--quick` mode (very short runs: indicative only)**" if meta.get("quick") else "")
             + ", which sets up the peers from the package registries, builds Confab and "
             "`confab-bench` in release mode, pins each server to CPU "
             f"{meta['server_cpu']} and the load generator to CPU {meta['load_cpu']}, "
             "and runs the same scenarios against each server in turn.")
    L.append("")
    L.append("## How it is measured")
    L.append("")
    L.append("`confab-bench` (crate `confab-bench`) is a load generator with a hand-written "
             "WebSocket client on a single-threaded runtime: it stamps every message with its "
             "send time, paces the publishers against absolute deadlines, and every receiving "
             "connection records the latency of every delivery in its own HDR histogram. A "
             "delivery that has not arrived within the grace period "
             f"({meta['grace']} s) after sending stops is lost. A `sweep` raises the send rate "
             f"by x{meta['factor']} per step ({meta['duration']} s of sending per step) until "
             "p99 exceeds 100 ms or loss exceeds 0.1%, then narrows each knee (p99 <= 10 ms "
             "and <= 100 ms) with steps at the geometric middle of the highest rate held and "
             "the lowest rate above it that was not, then repeats the step that sets each knee "
             f"(up to {meta.get('confirm', 0)} repeats per knee): a rate counts only if every "
             "step at it held, so when a repeat fails the knee falls to the next rate down, "
             "which is repeated in turn. \"Held\" means p99 within the bound and "
             "loss at most 0.1%. Server CPU is read from `/proc/<pid>/stat` over the window; "
             "server memory from `/proc/<pid>/status` (VmRSS). When the load generator itself "
             "used more than 90% of its core, the step is marked *bench saturated*: the "
             "server could do at least that much. The host's steal time (`/proc/stat`: the "
             "hypervisor running another guest while a CPU of this one had work) is read "
             "over each window for the server's CPU and the bench's; a sweep step that "
             f"missed p99 <= 10 ms while either lost more than {meta.get('max_steal', 1):g}% "
             "of its time that way is *disturbed*: it is listed below but run again, up "
             "to twice, and the last run counts, for every server alike.")
    L.append("")

    # ---- fan-out summary
    L.append("## Fan-out: highest load held")
    L.append("")
    L.append("Deliveries per second (a message sent to a room of M members is M deliveries).")
    L.append("")
    L.append("| scenario | server | held at p99 <= 10 ms | held at p99 <= 100 ms | p99 there (ms) "
             "| server CPU us/delivery there | server CPU there | bench saturated there |")
    L.append("|---|---|---:|---:|---:|---:|---:|---|")
    best100 = {}
    for sc in ("S1", "S2", "S4"):
        for server in servers:
            st = steps.get((server, sc))
            if not st:
                continue
            b10 = best(st, 10)
            b100 = best(st, 100)
            best100[(server, sc)] = b100
            srv = (b100 or {}).get("server") or {}
            sat = bool((b100 or {}).get("bench_saturated"))
            L.append(
                f"| {sc} | {SERVER_NAMES.get(server, server)} "
                f"| {fmt_int(b10['offered_deliveries_per_s']) if b10 else 'none'} "
                f"| {fmt_int(b100['offered_deliveries_per_s']) if b100 else 'none'} "
                f"| {fmt_ms(b100['latency_ms']['p99']) if b100 else '-'} "
                + (f"| {srv['cpu_us_per_delivery']:.2f} | {100 * srv['cpu_util']:.0f}% "
                   if srv else "| - | - ")
                + f"| {'yes' if sat else 'no'} |"
            )
    L.append("")
    # ratios
    ratio_lines = []
    for sc in ("S1", "S2"):
        c = best100.get(("confab", sc))
        for peer in ("node", "django"):
            p = best100.get((peer, sc))
            if c and p:
                r = ratio(c["offered_deliveries_per_s"], p["offered_deliveries_per_s"])
                cu = (c.get("server") or {}).get("cpu_us_per_delivery")
                pu = (p.get("server") or {}).get("cpu_us_per_delivery")
                cpu = (f"; server CPU per delivery {cu:.2f} us against {pu:.2f} us"
                       if cu and pu else "")
                shown = f"{r:,.0f}" if r >= 10 else f"{r:.2g}"
                ratio_lines.append(f"- {sc}: Confab holds **{shown}x** the load of "
                                   f"{SERVER_NAMES[peer].split(' (')[0]} at p99 <= 100 ms{cpu}.")
    if ratio_lines:
        L.append("Ratios (Confab / peer):")
        L.append("")
        L.extend(ratio_lines)
        L.append("")
    elif "confab" not in servers:
        L.append("No Confab figures in this run, so no ratios.")
        L.append("")
    # A paced send that goes out late, while neither the server nor the bench
    # is near a full core and the host left the bench alone: the publishers
    # share the bench's one thread with its readers, so they run late when
    # the server releases many deliveries at once, and the deliveries read
    # late in such a burst have waited in the bench as well as in the
    # server. (A publisher's write does not block there: the socket buffers
    # between it and the server hold far more than a stall's worth of its
    # messages.) Saturated steps lag anyway, so they are left out.
    max_steal = meta.get("max_steal", 1)
    for (server, sc), st in sorted(listed.items()):
        lagging = [s for s in st if s.get("send_lag_ms") and s["send_lag_ms"]["p99"] > 20
                   and (s.get("server") or {}).get("cpu_util", 1) < 0.9
                   and not s.get("bench_saturated")
                   and ((s.get("host_steal_pct") or {}).get("bench") or 0) <= max_steal]
        if lagging:
            worst = max(lagging, key=lambda s: s["send_lag_ms"]["p99"])
            L.append(f"Note on {SERVER_NAMES.get(server, server)} {sc}: in {len(lagging)} "
                     f"step(s) below saturation the publishers' paced sends went out late "
                     f"(send lag p99 up to {worst['send_lag_ms']['p99']:.0f} ms at "
                     f"{fmt_int(worst['offered_deliveries_per_s'])} deliveries/s). The "
                     "publishers share the bench's one thread with its readers, so they run "
                     "late when the server releases many deliveries at once; the deliveries "
                     "read late in such a burst waited in the bench as well as in the server.")
            L.append("")
    reran = [f"{SERVER_NAMES.get(server, server).split(' (')[0]} {sc}: {n}"
             for (server, sc), st in sorted(listed.items())
             if (n := sum(1 for s in st if s.get("superseded")))]
    L.append("Steps disturbed by the host and run again (see \"How it is measured\"): "
             + ("; ".join(reran) if reran else "none") + ".")
    L.append("")
    svg_name = a.svg_link
    L.append(f"![p99 latency against offered load]({svg_name})")
    L.append("")

    # ---- fixed loads
    fixed = {k: fixed_figures(v) for k, v in steps.items() if k[1] in ("S1@1k", "S1@100k")}
    fixed_rows = []
    for server in servers:
        for sc, rate_label in (("S1@1k", "1,000"), ("S1@100k", "100,000")):
            f = fixed.get((server, sc))
            if not f:
                continue
            fixed_rows.append(
                f"| {SERVER_NAMES.get(server, server)} | {rate_label} | {len(steps[(server, sc)])} "
                f"| {f['lost']} | {spread(f['p50'], fmt_ms)} | {spread(f['p99'], fmt_ms)} "
                f"| {spread(f['max'], fmt_ms)} | {spread(f['cpu'], lambda x: f'{x:.2f}')} |")
    if fixed_rows:
        L.append("## Latency at fixed loads (S1)")
        L.append("")
        L.append("S1 (1 room x 100 members, 10 publishers) held at 1,000 and at 100,000 "
                 "deliveries/s, each on its own after a second of warm-up traffic (Django "
                 "only at 1,000: it holds a few hundred). These run in rounds that take the "
                 "servers in turn, each round starting every server afresh, so that a slow "
                 "minute of this shared machine does not fall on one server alone; a round "
                 "during which the host stole more than "
                 f"{meta.get('max_steal', 1):g}% of the server's or the bench's CPU time is "
                 "run again, up to twice, the last try counting as it is (a single stolen "
                 "slice of a few milliseconds sets the p99 of a step at 1,000 deliveries/s, "
                 "where the slowest 1% is one message's fan-out). Each figure is the median "
                 "of the rounds, with their range in brackets.")
        L.append("")
        L.append("| server | offered deliv/s | rounds | lost | p50 ms | p99 ms | max ms "
                 "| server CPU us/deliv |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        L.extend(fixed_rows)
        L.append("")

    # ---- the targets, computed
    if "confab" in servers:
        L.append("## Against the targets (computed from this run)")
        L.append("")
        L.append("| target | Confab | peers | met |")
        L.append("|---|---|---|---|")
        for t in targets(steps, fixed, conns):
            L.append("| " + " | ".join(t) + " |")
        L.append("")
    ref_rows = against_reference(steps)
    if ref_rows:
        L.append("## Against the reference (computed from this run)")
        L.append("")
        L.append("Each server's knee at p99 <= 10 ms as a share of the bare fan-out's, "
                 "measured in the same run by the same load generator: the reference "
                 "writes each frame and does nothing else, so no server that does more "
                 "can be expected past it here.")
        L.append("")
        L.append("| scenario | reference knee at p99 <= 10 ms | servers' knees (share of the "
                 "reference's) | 3x Node's knee | server CPU per delivery, Confab against "
                 "the reference, at the highest load both held at p99 <= 10 ms |")
        L.append("|---|---:|---|---|---|")
        for row in ref_rows:
            L.append("| " + " | ".join(row) + " |")
        L.append("")
        c, b = idle(conns, "confab", 10000), idle(conns, "bare", 10000)
        if c and b:
            L.append(f"Idle connections (S3, 10,000): Confab holds "
                     f"{c['server_kib_per_conn']:.2f} KiB each against the reference's "
                     f"{b['server_kib_per_conn']:.2f} "
                     f"({c['server_kib_per_conn'] / b['server_kib_per_conn']:.1f}x: a task, "
                     "its state and its registrations, where the reference keeps a socket "
                     "and two small buffers), and connects "
                     f"{fmt_int(c['connects_per_s'])} a second against its "
                     f"{fmt_int(b['connects_per_s'])}.")
            L.append("")

    # ---- per-step detail
    L.append("<details><summary>Every step</summary>")
    L.append("")
    L.append("| scenario | server | offered deliv/s | delivered/s | loss % | dup | p50 ms | p99 ms "
             "| p99.9 ms | max ms | server CPU us/deliv | bench CPU | host steal % server, bench "
             "| errors |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for (server, sc), st in sorted(listed.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        for s in st:
            lat = s.get("latency_ms") or {}
            srv = s.get("server") or {}
            errs = "; ".join(s.get("errors") or [])[:120]
            if s.get("superseded"):
                errs = "disturbed: run again" + (f"; {errs}" if errs else "")
            L.append(
                f"| {sc} | {server} | {fmt_int(s.get('offered_deliveries_per_s'))} "
                f"| {fmt_int(s.get('delivered_per_s'))} | {s.get('loss_pct', float('nan')):.3f} "
                f"| {s.get('duplicates', '-')} | {fmt_ms(lat.get('p50'))} | {fmt_ms(lat.get('p99'))} "
                f"| {fmt_ms(lat.get('p999'))} | {fmt_ms(lat.get('max'))} "
                f"| {srv.get('cpu_us_per_delivery', 0):.2f} "
                f"| {100 * s.get('bench_cpu_util', 0):.0f}%{' (saturated)' if s.get('bench_saturated') else ''} "
                f"| {fmt_steal(s)} | {errs} |"
            )
    L.append("")
    L.append("</details>")
    L.append("")

    # ---- idle connections
    L.append("## S3: idle connections")
    L.append("")
    L.append("| server | requested | connected | failed | connects/s | server RSS before -> after "
             "(MiB) | KiB per idle connection | new client echo after hold (ms) | errors |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for server in servers:
        for c in conns.get(server, []):
            before = c.get("server_rss_before_kib") or 0
            after = c.get("server_rss_after_kib") or 0
            per = c.get("server_kib_per_conn")
            echo = c.get("echo_probe_ms")
            errs = "; ".join(c.get("errors") or [])[:160]
            L.append(
                f"| {SERVER_NAMES.get(server, server)} | {fmt_int(c['requested'])} "
                f"| {fmt_int(c['connected'])} | {fmt_int(c['failed'])} "
                f"| {fmt_int(c['connects_per_s'])} | {before / 1024:.0f} -> {after / 1024:.0f} "
                f"| {per:.1f} | {fmt_ms(echo)} | {errs} |"
                if per is not None else
                f"| {SERVER_NAMES.get(server, server)} | {fmt_int(c['requested'])} "
                f"| {fmt_int(c['connected'])} | {fmt_int(c['failed'])} | - | - | - | - | {errs} |"
            )
    if "django" in servers:
        L.append("")
        L.append("Django is given fewer connections: it accepts them far more slowly, and the "
                 "whole comparison has to finish in reasonable time.")
    L.append("")

    # ---- the load generator's own limits
    L.append("## The load generator's own ceiling")
    L.append("")
    sat_rows = [s for st in steps.values() for s in st
                if s.get("bench_saturated") and s.get("delivered")]
    if sat_rows:
        top = max(sat_rows, key=lambda s: s["delivered_per_s"])
        us = top["bench_cpu_secs"] * 1e6 / top["delivered"]
        L.append(f"The load generator saturated its core in some steps (highest: "
                 f"{fmt_int(top['delivered_per_s'])} deliveries/s delivered, "
                 f"{us:.2f} us of bench CPU per delivery, label `{top['label']}`). "
                 "Those steps and everything above them measure the bench, not the server.")
    else:
        L.append("The load generator never used more than 90% of its core in this run.")
    L.append("")
    L.append("Profiling `confab-bench` under load (`perf record`) shows most of its CPU in the "
             "kernel: one `recv` per TCP segment, the ACK it sends, and on loopback the "
             "server socket's handling of that ACK. Its own code (frame parsing, stamp "
             "scanning, histogram, duplicate bitmap) costs about 0.2 us per delivery. So its "
             "ceiling depends on how many frames the server packs per segment: in S1 a "
             "server that coalesces lets it take a whole batch per `recv`, while in S2 "
             "nearly every frame is its own segment and costs the bench 8-10 us of its "
             "core (36-42% of it against the reference at 42,950 deliveries/s), which "
             "caps what S2 can show on one core of this host (see \"S2 "
             "against the reference\" below). "
             "`--delayed-ack` turns TCP_QUICKACK off on the bench's sockets, which Linux "
             "turns back on at the first delayed-ACK timeout; in S2 it changed nothing "
             "measurable. It also changes what is measured (a server that leaves Nagle's "
             "algorithm on waits for those delayed ACKs), and it is off in every figure "
             "on this page.")
    L.append("")
    L.append("## Running the tools by hand")
    L.append("")
    L.append("```sh")
    L.append("cargo build --release -p confab -p confab-bench")
    L.append("target/release/confab serve --listen 127.0.0.1:8000 --store sqlite::memory: "
             "--rate-limit 0 --max-connections 30000 &")
    L.append("# one paced run: 1 room x 100 members, 10 publishers, 2,000 msgs/s = 200,000 deliveries/s")
    L.append("target/release/confab-bench --cpu 1 fanout --server-pid $! --rooms 1 --members 100 "
             "--publishers 10 --rate 2000 --duration 5")
    L.append("# the same with rising rates; --json for JSON lines")
    L.append("target/release/confab-bench --cpu 1 sweep --server-pid $! --start 100 --factor 1.6")
    L.append("# idle connections and server memory per connection")
    L.append("target/release/confab-bench conns --server-pid $! --count 10000")
    L.append("# native protocol (/socket) instead of the room protocol")
    L.append("target/release/confab-bench fanout --proto native --rate 500")
    L.append("bench/smoke            # CI smoke test (< 1 min once built)")
    L.append("bench/compare --quick  # everything above against the peers and the reference, briefly")
    L.append("```")
    L.append("")

    notes = [n for n in meta.get("notes", []) if n]
    if notes:
        L.append("## Not measured in this run")
        L.append("")
        for n in notes:
            L.append(f"- {n}")
        L.append("")

    # ---- hand-written analysis of the run (targets, optimisation log)
    analysis = os.path.join(os.path.dirname(os.path.abspath(__file__)), "analysis.md")
    if os.path.exists(analysis):
        L.extend(open(analysis).read().rstrip("\n").split("\n"))
        L.append("")

    # ---- environment and commands
    L.append("## Versions and machine")
    L.append("")
    L.append(f"- Confab commit `{meta['commit']}`, {meta['rustc']}")
    L.append(f"- Node {meta['node']}, ws {meta['ws']}")
    L.append(f"- Python packages: {meta['python_packages'].strip() or '-'}")
    L.append(f"- Redis {meta['redis']}")
    L.append(f"- Linux {meta['kernel']}, {meta['cpu']}, {meta['cores']} cores; servers on CPU "
             f"{meta['server_cpu']}, load generator on CPU {meta['load_cpu']} (loopback only)")
    L.append("")
    L.append("## Exact commands")
    L.append("")
    L.append("Reproduce everything with `bench/compare` (add `--quick` for a short run). "
             "It ran:")
    L.append("")
    L.append("```sh")
    L.extend(commands)
    L.append("```")
    L.append("")

    with open(a.out, "w") as f:
        f.write("\n".join(L))

    panels = []
    for sc, title in (("S1", "S1 (and S4): 1 room x 100"), ("S2", "S2: 100 rooms x 10")):
        series = {}
        for (server, s2), st in steps.items():
            if s2 == sc or (sc == "S1" and s2 == "S4"):
                series[server] = [
                    (s["offered_deliveries_per_s"], s["latency_ms"]["p99"], bool(s.get("bench_saturated")))
                    for s in st if s.get("latency_ms")
                ]
        panels.append((title, series))
    svg_plot(panels, a.svg)


if __name__ == "__main__":
    main()
