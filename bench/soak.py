#!/usr/bin/env python3
"""The soak: many connections, open loop, mixed message sizes, every byte verified, for minutes.

    python3 bench/soak.py                    # 10 minutes for each of the 4 combinations, writes docs/benchmarks.md
    python3 bench/soak.py --minutes 1        # shorter
    python3 bench/soak.py --combos uring/poll # server io_uring, client poll only
    python3 bench/soak.py --report           # rewrite the soak section from the last saved results

For each combination of server backend and client backend (io_uring, poll), one `iocp-server echo`
and one `iocp-load echo` run side by side for the whole time: 10,000 connections, an offered load
of 20,000 messages/s, up to 4 in flight per connection, each message 20 to 4,096 bytes (its size a
function of its connection and sequence number, so the client checks every byte of every echo).
The server's resident memory is sampled every 10 s. A combination passes when the client exits 0
(no wrong, lost or reordered byte, no connection closed by the server, no failed connect) and the
server's memory does not grow over the second half of the run by 5 % or more (a leak grows all
along; queues and buffers reach their high-water mark in the first minutes and stay there).
A run of some combinations replaces those in the saved results and keeps the others.

Python 3.11 standard library only. Processes are started under `timeout` and stopped by PID.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import doc, procs  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "target", "bench", "soak-latest.json")
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"
COMBOS = ["uring/uring", "uring/poll", "poll/uring", "poll/poll"]
SAMPLE_S = 10.0
RSS_GROWTH_LIMIT = 0.05


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="length of each combination's run")
    p.add_argument("--combos", default=",".join(COMBOS), help="server/client backends, comma-separated")
    p.add_argument("--connections", type=int, default=10_000)
    p.add_argument("--rate", type=float, default=20_000.0, help="offered messages/s, all connections")
    p.add_argument("--pipeline", type=int, default=4)
    p.add_argument("--size", type=int, default=20)
    p.add_argument("--size-max", type=int, default=4096)
    p.add_argument("--connect-rate", type=float, default=5_000.0)
    p.add_argument("--no-build", action="store_true", help="use the release binaries as they are")
    p.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    p.add_argument("--report", action="store_true", help="only rewrite the doc from the saved results")
    a = p.parse_args()

    if a.report:
        with open(RESULTS) as f:
            write_doc(json.load(f))
        return 0
    combos = [c.strip() for c in a.combos.split(",") if c.strip()]
    for c in combos:
        if c not in COMBOS:
            p.error(f"unknown combination {c!r} (one of {', '.join(COMBOS)})")
    bindir = procs.release_copies(ROOT, ("iocp-server", "iocp-load"), not a.no_build, "iocp-soak-bin-")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = {"started": dt.datetime.now().isoformat(timespec="seconds"), "machine": doc.machine(),
               "settings": {k: getattr(a, k) for k in ("minutes", "connections", "rate", "pipeline", "size",
                                                       "size_max", "connect_rate")},
               "commit": doc.git_commit(ROOT), "runs": []}
    try:
        for combo in combos:
            r = run_combo(a, bindir, combo)
            results["runs"].append(r)
            print(summary_line(r), flush=True)
    finally:
        procs.cleanup_all()
        shutil.rmtree(bindir, ignore_errors=True)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    try:
        with open(RESULTS) as f:
            old = json.load(f)
        rerun = {r["combo"] for r in results["runs"]}
        kept = [r for r in old.get("runs", []) if r["combo"] not in rerun]
        results["runs"] = sorted(kept + results["runs"], key=lambda r: COMBOS.index(r["combo"]))
        results["earlier"] = sorted({r.get("time", "")[:16] for r in kept})
    except (OSError, ValueError, KeyError):
        pass
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=1)
    if not a.no_doc:
        write_doc(results)
    return 0 if all(r["ok"] for r in results["runs"]) else 1


def run_combo(a, bindir: str, combo: str) -> dict:
    server_backend, client_backend = combo.split("/")
    seconds = a.minutes * 60
    scmd = [os.path.join(bindir, "iocp-server"), "echo", "--addr", "127.0.0.1:0", "--backend", server_backend,
            "--max-sessions", str(a.connections + 2000)]
    connect_s = a.connections / a.connect_rate
    budget = seconds + connect_s + 60
    srv = procs.start_server(scmd, budget + 30, None, None)
    rec = {"combo": combo, "server_cmd": scmd, "time": dt.datetime.now().isoformat(timespec="seconds"),
           "commit": doc.git_commit(ROOT)}
    samples: list[tuple[float, int]] = []
    try:
        ccmd = [os.path.join(bindir, "iocp-load"), "echo", "--addr", srv.addr, "-c", str(a.connections),
                "--rate", str(a.rate), "--pipeline", str(a.pipeline), "--size", str(a.size),
                "--size-max", str(a.size_max), "--duration", f"{seconds:.0f}s", "--warmup", "5s",
                "--connect-rate", str(a.connect_rate), "--backend", client_backend, "--json", "-q"]
        rec["client_cmd"] = ccmd
        t0 = time.monotonic()
        client = procs.spawn_client(ccmd, budget, None, None)
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                try:
                    samples.append((time.monotonic() - t0, procs.rss_bytes(srv.pid)))
                except OSError:
                    return
                stop.wait(SAMPLE_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        res = procs.wait_client(client)
        stop.set()
        sampler.join()
        rec["server_cpu_s"] = procs.stat_cpu_ns(srv.pid) / 1e9
    finally:
        srv.stop()
    rec["client_rc"] = res.returncode
    rec["wall_s"] = res.wall_s
    try:
        j = json.loads(res.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        j = None
    rec["client"] = j
    rec["rss"] = samples
    # Memory: after a minute of load (connections open, buffers and queues at their working
    # size), at half time, and at the end; flat means no growth over the second half.
    settle = connect_s + min(60, seconds / 3)
    after = [rss for t, rss in samples if t >= settle] or [rss for _, rss in samples]
    half = [rss for t, rss in samples if t >= connect_s + seconds / 2] or after
    rec["rss_settled"] = after[0] if after else 0
    rec["rss_half"] = half[0] if half else 0
    rec["rss_end"] = after[-1] if after else 0
    rec["rss_max"] = max((rss for _, rss in samples), default=0)
    growth = (rec["rss_end"] - rec["rss_half"]) / max(rec["rss_half"], 1)
    rec["rss_growth"] = growth
    rec["server_log_tail"] = srv.log[-3000:]
    rec["ok"] = bool(j and j.get("ok")) and res.returncode == 0 and growth < RSS_GROWTH_LIMIT
    if not rec["ok"]:
        rec["client_stderr"] = res.stderr[-3000:]
    return rec


def summary_line(r: dict) -> str:
    j = r.get("client") or {}
    lat = j.get("latency_us") or {}
    return (f"soak {r['combo']}: {'ok' if r['ok'] else 'FAILED'}; {j.get('verified_messages', 0):,} messages "
            f"({j.get('verified_bytes', 0):,} bytes) verified, {j.get('verify_errors', '?')} verification errors, "
            f"{j.get('lost_messages', '?')} lost, {j.get('closed_by_server', '?')} closed by the server; "
            f"p99 {fmt_us(lat.get('p99'))} µs; server RSS {mib(r['rss_settled'])} → {mib(r.get('rss_half', 0))} → "
            f"{mib(r['rss_end'])} MiB ({100 * r['rss_growth']:+.1f} % over the second half)")


def fmt_us(x) -> str:
    return "?" if x is None else f"{x:,.0f}"


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f}"


def write_doc(results: dict) -> None:
    s = results["settings"]
    lines = [BEGIN, "## Soak", "",
             f"`python3 bench/soak.py --minutes {s['minutes']:g}`; {results['machine']}. Each row says the commit "
             "and time it ran at (a rerun of some rows keeps the others).", "",
             f"Each row: one `iocp-server echo` (defaults, `--max-sessions {s['connections'] + 2000}`) and one "
             f"`iocp-load echo` unpinned on the same 2 cores for {s['minutes']:g} minutes: "
             f"{s['connections']:,} connections, open loop at {s['rate']:,.0f} messages/s offered, at most "
             f"{s['pipeline']} in flight per connection, each message {s['size']}–{s['size_max']:,} bytes "
             "(mixed, each size known to the checker), every byte of every echo verified. Server RSS sampled "
             f"every {SAMPLE_S:.0f} s: after a minute of load, at half time and at the end; \"growth\" is over the "
             "second half (a leak grows all along; queues and buffers reach their high-water mark early). p50/p99 are "
             "from when each message was due (open loop).",
             "",
             "| server / client | run at | result | messages verified | bytes verified | msg/s | verification errors | "
             "lost | closed by server | p50 µs | p99 µs | RSS 1 min → half → end (max) MiB | growth |",
             "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in results["runs"]:
        j = r.get("client") or {}
        lat = j.get("latency_us") or {}
        lines.append(
            f"| {r['combo']} | {r.get('commit', '?')}, {r.get('time', '?')[:16]} | {'ok' if r['ok'] else '**failed**'} | "
            f"{j.get('verified_messages', 0):,} | "
            f"{j.get('verified_bytes', 0):,} | {j.get('messages_per_s', 0):,.0f} | {j.get('verify_errors', '?')} | "
            f"{j.get('lost_messages', '?')} | {j.get('closed_by_server', '?')} | {fmt_us(lat.get('p50'))} | "
            f"{fmt_us(lat.get('p99'))} | {mib(r['rss_settled'])} → {mib(r.get('rss_half', 0))} → {mib(r['rss_end'])} "
            f"({mib(r['rss_max'])}) | "
            f"{100 * r['rss_growth']:+.1f} % |")
    lines += ["", "Commands of the first row (the others differ in `--backend`):", "",
              "```", " ".join(os.path.basename(c) if i == 0 else c for i, c in enumerate(results["runs"][0]["server_cmd"])),
              " ".join(os.path.basename(c) if i == 0 else c for i, c in enumerate(results["runs"][0]["client_cmd"])),
              "```", END]
    block = "\n".join(lines)
    doc.put_section(DOC, BEGIN, END, block)
    print(f"wrote the soak section of {os.path.relpath(DOC, ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
