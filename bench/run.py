#!/usr/bin/env python3
"""The benchmark suite: iocp-server beside tokio and plain mio, measured with iocp-load.

    python3 bench/run.py            # build, run the default matrix (3 repetitions), write docs/benchmarks.md
    python3 bench/run.py --quick    # 1 repetition, shorter runs: a smoke test of the suite
    python3 bench/run.py --big      # only the 100,000-connection check (added to the report)
    python3 bench/run.py --report   # rewrite docs/benchmarks.md from the last saved results
    python3 bench/run.py --metrics-ab --reps 5   # pinned echo cells, --metrics on vs off, interleaved

Python 3.11 standard library only. See bench/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import procs, report  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "target", "bench")
LATEST = os.path.join(RESULTS_DIR, "latest.json")
BIG_LATEST = os.path.join(RESULTS_DIR, "big-latest.json")
METRICS_LATEST = os.path.join(RESULTS_DIR, "metrics-ab-latest.json")
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
BUILD = ["cargo", "build", "--release", "-p", "iocp-server-app", "-p", "iocp-load", "-p", "iocp-baselines"]
BINARIES = ["iocp-server", "iocp-load", "echo-tokio", "echo-mio"]
SERVER_CPU, CLIENT_CPU = "0", "1"


@dataclass(frozen=True)
class Server:
    key: str
    label: str
    binary: str
    args: tuple[str, ...]
    workers_flag: bool  # takes --workers (set to 1 when pinned)
    iocp: bool = False


SERVERS = [
    Server("iocp-uring", "iocp-server io_uring", "iocp-server",
           ("echo", "--addr", "127.0.0.1:0", "--backend", "uring"), True, True),
    # Unpinned only: one worker, beside the client on two cores (pinned, iocp-uring is this already).
    Server("iocp-uring-1w", "iocp-server io_uring, 1 worker", "iocp-server",
           ("echo", "--addr", "127.0.0.1:0", "--backend", "uring", "--workers", "1"), False, True),
    Server("iocp-poll", "iocp-server poll (epoll)", "iocp-server",
           ("echo", "--addr", "127.0.0.1:0", "--backend", "poll"), True, True),
    Server("tokio-mt", "tokio multi-thread", "echo-tokio", ("--runtime", "mt", "--addr", "127.0.0.1:0"), True),
    Server("tokio-ct", "tokio current-thread", "echo-tokio", ("--runtime", "ct", "--addr", "127.0.0.1:0"), False),
    Server("mio", "plain mio (epoll)", "echo-mio", ("--addr", "127.0.0.1:0"), False),
]
# Not in the default matrix: iocp-uring with its metrics endpoint on, scraped during each run
# (`--metrics-ab` runs it beside iocp-uring).
METRICS_SERVER = Server("iocp-uring-metrics", "iocp-server io_uring, --metrics scraped", "iocp-server",
                        ("echo", "--addr", "127.0.0.1:0", "--backend", "uring", "--metrics", "127.0.0.1:0"),
                        True, True)
SERVER_BY_KEY = {s.key: s for s in SERVERS + [METRICS_SERVER]}


@dataclass(frozen=True)
class Load:
    key: str
    label: str
    kind: str  # "echo" or "idle"
    conns: int
    size: int = 0
    pipeline: int = 1


LOADS = [
    Load("64p4", "100 conns × 64 B, pipeline 4", "echo", 100, 64, 4),
    Load("1k64", "1,000 conns × 64 B", "echo", 1000, 64, 1),
    Load("50x4k", "50 conns × 4 KiB", "echo", 50, 4096, 1),
    Load("idle10k", "10,000 idle conns", "idle", 10000),
]
LOAD_BY_KEY = {x.key: x for x in LOADS}
CLIENTS = ["uring", "poll"]
MODES = ["pinned", "unpinned"]


class Scraper:
    """Scrapes a server's `/metrics` every `interval` seconds on a thread, as Prometheus would,
    from its start until `stop`. The address comes from the server's `metrics on` log line."""

    def __init__(self, srv: procs.Spawned, interval: float):
        m = None
        deadline = time.monotonic() + 5
        while m is None and time.monotonic() < deadline:
            m = procs.METRICS.search(procs.read_logs(srv.logdir))
            time.sleep(0.01)
        if m is None:
            raise RuntimeError("the server did not say `metrics on`")
        self.url = f"http://{m.group(1)}/metrics"
        self.interval = interval
        self.done = threading.Event()
        self.scrapes = self.errors = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    r.read()
                self.scrapes += 1
            except OSError:
                self.errors += 1
            self.done.wait(self.interval)

    def stop(self) -> tuple[int, int]:
        self.done.set()
        self.thread.join(10)
        return self.scrapes, self.errors


def fmt_dur(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


class Bench:
    def __init__(self, args: argparse.Namespace, bindir: str):
        self.a = args
        self.bindir = bindir
        self.runs: list[dict] = []
        self.softirqd = find_ksoftirqd()
        self.waited = 0.0

    def bin(self, name: str) -> str:
        return os.path.join(self.bindir, name)

    # --- one run ------------------------------------------------------------------------------

    def server_cmd(self, server: Server, mode: str, extra: list[str] = ()) -> list[str]:
        cmd = [self.bin(server.binary), *server.args]
        if mode == "pinned" and server.workers_flag:
            cmd += ["--workers", "1"]
        return cmd + list(extra)

    def client_budget(self, load: Load) -> float:
        if load.kind == "echo":
            return load.conns / self.a.connect_rate + self.a.warmup + self.a.duration + 5 + 20
        return load.conns / self.a.idle_connect_rate + self.a.hold + 5 + 45

    def run_one(self, server: Server, mode: str, load: Load, client: str, rep: int) -> dict:
        pinned = mode == "pinned"
        extra = ["--max-sessions", str(self.a.idle_max_sessions)] if (server.iocp and load.kind == "idle") else []
        scmd = self.server_cmd(server, mode, extra)
        budget = self.client_budget(load)
        rec = {"server": server.key, "mode": mode, "load": load.key, "client": client, "rep": rep,
               "server_cmd": scmd, "time": dt.datetime.now().isoformat(timespec="seconds")}
        srv = procs.start_server(scmd, budget + 30, SERVER_CPU if pinned else None, self.a.nofile)
        try:
            time.sleep(0.2)
            rec["server_pid"] = srv.pid
            rec["rss_start"] = procs.rss_bytes(srv.pid)
            rec["server_threads"] = procs.threads(srv.pid)
            if load.kind == "echo":
                ccmd = [self.bin("iocp-load"), "echo", "--addr", srv.addr, "-c", str(load.conns),
                        "--size", str(load.size), "--pipeline", str(load.pipeline),
                        "--duration", fmt_dur(self.a.duration), "--warmup", fmt_dur(self.a.warmup),
                        "--connect-rate", str(self.a.connect_rate), "--backend", client, "--json", "-q"]
            else:
                ccmd = [self.bin("iocp-load"), "idle", "--addr", srv.addr, "-c", str(load.conns),
                        "--hold", fmt_dur(self.a.hold), "--server-pid", str(srv.pid), "--ping", "64",
                        "--connect-rate", str(self.a.idle_connect_rate), "--backend", client, "--json", "-q"]
            rec["client_cmd"] = ccmd
            scraper = Scraper(srv, self.a.scrape_interval) if "--metrics" in server.args else None
            soft0 = softirqd_ns(self.softirqd)
            w0 = procs.Window.take(srv.pid)
            res = procs.run_client(ccmd, budget, CLIENT_CPU if pinned else None, self.a.nofile)
            w1 = procs.Window.take(srv.pid)
            soft1 = softirqd_ns(self.softirqd)
            if scraper:
                rec["scrapes"], rec["scrape_errors"] = scraper.stop()
            rec["rss_end"] = procs.rss_bytes(srv.pid)
        finally:
            srv.stop()
        rec.update(measure(w0, w1, res, soft1 - soft0))
        rec["client_rc"] = res.returncode
        try:
            j = json.loads(res.stdout.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            j = None
        rec["client_json"] = j
        rec["ok"] = bool(j and j.get("ok")) and res.returncode == 0
        if not rec["ok"]:
            rec["client_stderr"] = res.stderr[-3000:]
            rec["server_log"] = srv.log[-3000:]
        if j and load.kind == "echo":
            n = j.get("verified_messages") or 0
            rec["msgs_per_s"] = j["messages_per_s"]
            rec["p50_us"] = j["latency_us"]["p50"]
            rec["p99_us"] = j["latency_us"]["p99"]
            rec["p999_us"] = j["latency_us"]["p99_9"]
            rec["echoed"] = n
            rec["server_us_per_msg"] = rec["server_cpu_ns"] / 1000 / n if n else None
            rec["server_us_per_msg_stat"] = rec["server_stat_ns"] / 1000 / n if n else None
            rec["client_us_per_msg"] = j["cpu"]["us_per_message"]
        elif j:
            r = j.get("server_rss") or {}
            rec["rss_before"] = r.get("before_bytes")
            rec["rss_held"] = r.get("after_bytes")
            rec["rss_per_conn"] = r.get("per_connection_bytes")
            rec["open_after_hold"] = j.get("open_after_hold")
            rec["pinged"] = (j.get("ping") or {}).get("echoed")
        return rec

    # --- the matrix --------------------------------------------------------------------------

    def cells(self) -> list[tuple[Server, str, Load, str]]:
        out = []
        for mode in self.a.modes:
            for load in self.a.loads:
                clients = self.a.clients if load.kind == "echo" else [self.a.idle_client]
                for client in clients:
                    for server in self.a.servers:
                        if server.key == "iocp-uring-1w" and (mode == "pinned" or load.kind != "echo"):
                            continue
                        out.append((server, mode, load, client))
        return out

    def matrix(self) -> None:
        cells = self.cells()
        total = len(cells) * self.a.reps
        est = sum(self.client_budget(c[2]) - (25 if c[2].kind == "echo" else 48) + 1.7 for c in cells) * self.a.reps
        say(f"matrix: {len(cells)} cells × {self.a.reps} repetitions = {total} runs, about {est / 60:.0f} min")
        t0 = time.monotonic()
        done = 0
        for rep in range(self.a.reps):
            if not self.a.metrics_ab:
                self.prealloc(rep)
            for server, mode, load, client in rotate(cells, rep):
                done += 1
                self.record(self.run_quiet(server, mode, load, client, rep), done, total, t0)
        self.rerun_noisy(t0)
        say(f"waited {self.waited:.0f} s in all for the machine to quieten; "
            f"{sum(1 for r in self.runs if r.get('discarded'))} runs discarded for other load")

    def run_quiet(self, server: Server, mode: str, load: Load, client: str, rep: int) -> dict:
        """One run, after waiting (a bounded time) for the shared machine to be quiet; run again
        when something else took more than --max-other cores meanwhile."""
        for attempt in range(self.a.retries + 1):
            if load.kind == "echo":
                self.wait_quiet()
            rec = self.run_one(server, mode, load, client, rep)
            rec["attempt"] = attempt
            noisy = load.kind == "echo" and rec["other_cores"] > self.a.max_other
            if rec.get("ok") and noisy and attempt < self.a.retries:
                rec["discarded"] = f"other load {rec['other_cores']:.2f} cores"
                self.runs.append(rec)
                say(f"    discarded ({rec['discarded']}): {short(rec)}")
                continue
            return rec
        return rec

    def wait_quiet(self) -> None:
        """Waits until the rest of the machine uses less than --quiet cores (measured over 0.5 s),
        at most --quiet-wait seconds per run and --quiet-budget seconds in all."""
        start = time.monotonic()
        while True:
            b0 = procs.machine_busy_ns()["cpu"]
            time.sleep(0.3)
            busy = (procs.machine_busy_ns()["cpu"] - b0) / 0.3e9
            waited = time.monotonic() - start
            if (busy < self.a.quiet or waited >= self.a.quiet_wait
                    or self.waited + waited >= self.a.quiet_budget):
                self.waited += waited
                return

    def record(self, rec: dict, done: int, total: int, t0: float) -> None:
        self.runs.append(rec)
        el = time.monotonic() - t0
        say(f"[{done}/{total} {el / 60:4.1f} min] {short(rec)}")

    def rerun_noisy(self, t0: float) -> None:
        budget = self.a.rerun_noisy
        if budget <= 0 or self.a.reps < 3:
            return
        noisy = []
        for (server, mode, load, client) in self.cells():
            rs = [r for r in self.runs if r.get("server") == server.key and r["mode"] == mode
                  and r["load"] == load.key and r["client"] == client and not r.get("discarded")]
            why = noise_reason(rs, load, self.a.max_other)
            if why:
                noisy.append((why[0], (server, mode, load, client), why[1]))
        noisy.sort(key=lambda x: -x[0])
        chosen = [(cell, why) for _, cell, why in noisy][:budget // 2]
        if not chosen:
            say("no noisy cell to run again")
            return
        # Keep the matrix order, so that the extra runs of neighbouring cells pair up (run seconds apart).
        order = {c: i for i, c in enumerate(self.cells())}
        chosen.sort(key=lambda cw: order[cw[0]])
        say(f"running 2 extra repetitions of {len(chosen)} noisy cells")
        done = 0
        for extra_rep in (self.a.reps, self.a.reps + 1):
            for (server, mode, load, client), why in chosen:
                rec = self.run_quiet(server, mode, load, client, extra_rep)
                rec["rerun_reason"] = why
                done += 1
                self.record(rec, done, 2 * len(chosen), t0)

    def prealloc(self, rep: int) -> None:
        """RSS at start with --max-sessions 100000 vs 1000 (one worker): the cost of one slot."""
        for backend in ("uring", "poll"):
            rss = {}
            for n in (1000, 100000):
                cmd = [self.bin("iocp-server"), "echo", "--addr", "127.0.0.1:0", "--backend", backend,
                       "--workers", "1", "--max-sessions", str(n)]
                srv = procs.start_server(cmd, 30, None, self.a.nofile)
                try:
                    time.sleep(0.3)
                    rss[n] = procs.rss_bytes(srv.pid)
                finally:
                    srv.stop()
            self.runs.append({"kind": "prealloc", "backend": backend, "rep": rep, "rss_1000": rss[1000],
                              "rss_100000": rss[100000], "per_slot": (rss[100000] - rss[1000]) / 99000,
                              "cmd": cmd[:-1] + ["1000|100000"]})
            say(f"prealloc {backend}: {rss[1000] / 2**20:.1f} MiB at 1,000 slots, {rss[100000] / 2**20:.1f} MiB "
                f"at 100,000: {(rss[100000] - rss[1000]) / 99000:.0f} B per slot")

    # --- the 100,000-connection check ----------------------------------------------------------

    def big(self) -> list[dict]:
        """The 100,000-connection check. One server process when RLIMIT_NOFILE can be raised for it;
        otherwise the evidence of why not, the most one process can hold under the hard limit, and
        the 100,000 split over several server processes (each with its own client)."""
        out = []
        n = self.a.big_conns
        why = procs.can_set_nofile(self.a.big_nofile)
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        if why:
            say(f"big: {why}")
        for key in self.a.big_servers:
            if why is None:
                out.append(self.big_run(key, [n], self.a.big_nofile, None))
                continue
            per = hard - 1000
            k = -(-n // per)
            shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
            if key == "iocp-uring":
                # Its connections live in the rings' file tables, each bounded by RLIMIT_NOFILE on
                # its own: one process with enough workers holds them all. The clients still need
                # a descriptor per connection, so there are several of them.
                workers = -(-n // (hard - 200))
                out.append(self.big_run(key, shares, None, why, one_server_workers=workers))
                continue
            # What one process can hold under the hard limit (minus descriptors it needs besides).
            one = hard - 200
            out.append(self.big_run(key, [one], None, why))
            out.append(self.big_run(key, shares, None, why))
        return out

    def big_run(self, key: str, shares: list[int], nofile: int | None, why: str | None,
                one_server_workers: int | None = None) -> dict:
        """One server process per share, each with its own client; or, with one_server_workers,
        one server process with that many workers and one client per share."""
        server = SERVER_BY_KEY[key]
        total = sum(shares)
        split = len(shares) > 1
        connect = max(shares) / (self.a.big_connect_rate / len(shares))
        budget = connect + self.a.big_hold + 90
        rec = {"kind": "big", "server": key, "processes": 1 if one_server_workers else len(shares),
               "workers": one_server_workers, "clients": len(shares), "shares": shares, "conns": total,
               "nofile": nofile or resource.getrlimit(resource.RLIMIT_NOFILE)[1], "nofile_denied": why,
               "time": dt.datetime.now().isoformat(timespec="seconds"),
               "sysctl": {k: sysctl(k) for k in ("net.ipv4.ip_local_port_range", "net.core.somaxconn",
                                                 "net.ipv4.tcp_max_syn_backlog", "fs.nr_open",
                                                 "fs.file-max", "net.ipv4.tcp_mem")},
               "mem_available_before": procs.mem_available()}
        servers, clients, results = [], [], []
        try:
            if one_server_workers:
                extra = ["--max-sessions", str(total), "--workers", str(one_server_workers)]
                srv = procs.start_server(self.server_cmd(server, "unpinned", extra), budget + 30, None, nofile)
                servers = [srv] * len(shares)
            else:
                for share in shares:
                    extra = ["--max-sessions", str(max(share, self.a.big_conns if not split else share))] \
                        if server.iocp else []
                    scmd = self.server_cmd(server, "unpinned", extra)
                    servers.append(procs.start_server(scmd, budget + 30, None, nofile))
            rec["server_cmd"] = servers[0].popen.args[4:]
            time.sleep(0.3)
            distinct = list({s.pid: s for s in servers}.values())
            rec["rss_start"] = sum(procs.rss_bytes(s.pid) for s in distinct)
            sampler = Sampler([s.pid for s in distinct])
            sampler.start()
            for s, share in zip(servers, shares):
                ccmd = [self.bin("iocp-load"), "idle", "--addr", s.addr, "-c", str(share),
                        "--hold", fmt_dur(self.a.big_hold), "--server-pid", str(s.pid), "--ping", "64",
                        "--connect-rate", str(self.a.big_connect_rate // len(shares)), "--threads", "2",
                        "--backend", "uring", "--json", "-q"]
                if split:
                    # Several clients share 127.0.0.1's 28,232 ports: spread each over 4 addresses.
                    # Clients of one server share its address too: spread over 8.
                    ccmd[-4:-4] = ["--source-addrs", "8" if one_server_workers else "4"]
                rec.setdefault("client_cmds", []).append(ccmd)
                clients.append(procs.spawn_client(ccmd, budget, None, nofile))
            for c in clients:
                results.append(procs.wait_client(c))
            sampler.stop()
            rec.update(sampler.summary())
        finally:
            for s in {s.pid: s for s in servers}.values():
                s.stop()
        rec["client_cmd"] = rec["client_cmds"][0]
        js = []
        for res in results:
            try:
                js.append(json.loads(res.stdout.strip().splitlines()[-1]))
            except (json.JSONDecodeError, IndexError):
                js.append(None)
        rec["client_json"] = js
        rec["client_rc"] = [r.returncode for r in results]
        rec["client_stderr"] = "\n".join(r.stderr[-1500:] for r in results if r.returncode)
        rec["server_log"] = "\n".join(s.log[-1500:] for s in {s.pid: s for s in servers}.values())
        rec["ok"] = all(j and j.get("ok") for j in js) and all(r.returncode == 0 for r in results)

        def add(f):
            vals = [f(j) for j in js if j]
            return sum(v for v in vals if v is not None) if vals else None

        rec.update(connected=add(lambda j: j.get("connected")),
                   open_after_hold=add(lambda j: j.get("open_after_hold")),
                   pinged=add(lambda j: (j.get("ping") or {}).get("echoed")),
                   ping_p99_us=max([((j.get("ping") or {}).get("latency_us") or {}).get("p99") or 0
                                    for j in js if j] or [0]),
                   rss_before=add(lambda j: (j.get("server_rss") or {}).get("before_bytes")),
                   rss_held=add(lambda j: (j.get("server_rss") or {}).get("after_bytes")))
        if one_server_workers:
            # Every client read the same server's RSS: before the first client connected, and
            # once the last one held all its connections.
            befores = [(j.get("server_rss") or {}).get("before_bytes") for j in js if j]
            afters = [(j.get("server_rss") or {}).get("after_bytes") for j in js if j]
            if befores and afters and None not in befores and None not in afters:
                rec.update(rss_before=min(befores), rss_held=max(afters))
        if rec["rss_held"] is not None and rec["open_after_hold"]:
            rec["rss_per_conn"] = (rec["rss_held"] - rec["rss_before"]) / rec["open_after_hold"]
        who = f"1 process, {one_server_workers} workers" if one_server_workers \
            else f"{len(shares)} process{'es' if split else ''}"
        say(f"big {key} ({who}, {total:,} connections): ok={rec['ok']} "
            f"connected={rec.get('connected')} held={rec.get('open_after_hold')} pinged={rec.get('pinged')} "
            f"rss {fmt_mib(rec.get('rss_before'))} -> {fmt_mib(rec.get('rss_held'))} "
            f"({rec.get('rss_per_conn') or 0:.0f} B/conn); MemAvailable fell by {fmt_mib(rec.get('mem_drop'))}, "
            f"TCP sockets in use max {rec.get('tcp_inuse_max')}")
        if not rec["ok"]:
            say(rec["client_stderr"][-1500:])
        return rec


class Sampler:
    """Samples MemAvailable and /proc/net/sockstat while the 100k run holds its connections."""

    def __init__(self, pids: list[int]):
        self.pids = pids
        self.samples: list[tuple[int, int, int, int]] = []
        self.base = procs.mem_available()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def start(self):
        self._t.start()

    def stop(self):
        self._stop.set()
        self._t.join()

    def _loop(self):
        while not self._stop.wait(0.5):
            try:
                inuse, mem = sockstat_tcp()
                rss = sum(procs.rss_bytes(p) for p in self.pids)
                self.samples.append((procs.mem_available(), inuse, mem, rss))
            except OSError:
                pass

    def summary(self) -> dict:
        if not self.samples:
            return {}
        return {"mem_drop": self.base - min(s[0] for s in self.samples),
                "tcp_inuse_max": max(s[1] for s in self.samples),
                "tcp_mem_pages_max": max(s[2] for s in self.samples),
                "rss_max": max(s[3] for s in self.samples)}


# --- helpers -----------------------------------------------------------------------------------

def measure(w0: procs.Window, w1: procs.Window, res: procs.ClientResult, softirqd: int) -> dict:
    wall = w1.t - w0.t
    server = w1.task_ns - w0.task_ns
    busy = w1.machine["cpu"] - w0.machine["cpu"]
    client = res.cpu_s * 1e9
    return {
        "window_s": wall,
        "server_cpu_ns": server,
        "server_stat_ns": w1.stat_ns - w0.stat_ns,
        "server_threads_end": w1.threads,
        "server_cores": server / 1e9 / wall,
        "client_cpu_s": res.cpu_s,
        "client_cores": client / 1e9 / wall,
        "softirqd_cores": softirqd / 1e9 / wall,
        # Everything else the machine did meanwhile (other people's builds and tests), in cores.
        "other_cores": max(0.0, (busy - server - client - softirqd) / 1e9 / wall),
        "cpu0_busy_cores": (w1.machine.get("cpu0", 0) - w0.machine.get("cpu0", 0)) / 1e9 / wall,
        "cpu1_busy_cores": (w1.machine.get("cpu1", 0) - w0.machine.get("cpu1", 0)) / 1e9 / wall,
    }


def noise_reason(rs: list[dict], load: Load, max_other: float) -> tuple[float, str] | None:
    if not rs:
        return None
    if any(not r.get("ok") for r in rs):
        return (10.0, "a run failed")
    if load.kind == "echo":
        clean = [r for r in rs if r.get("other_cores", 0) <= max_other]
        if len(clean) < 3:
            return (5.0 - len(clean), f"only {len(clean)} undisturbed runs")
        rs = clean
    other = max(r.get("other_cores", 0) for r in rs)
    if load.kind == "echo":
        v = [r["msgs_per_s"] for r in rs]
        spread = (max(v) - min(v)) / statistics.median(v)
        c = [r["server_us_per_msg"] for r in rs]
        cspread = (max(c) - min(c)) / statistics.median(c)
        worst = max(spread, cspread)
        if worst > 0.15 or other > 0.25:
            return (worst + other, f"spread {spread:.0%} msg/s, {cspread:.0%} CPU/msg, other load up to "
                                   f"{other:.2f} cores")
    return None


def rotate(cells: list, rep: int) -> list:
    """The cells in a different order each repetition (shifted, every other one reversed), so a
    slow drift of the shared machine does not always hit the same server."""
    if not cells:
        return cells
    k = (rep * 7) % len(cells)
    out = cells[k:] + cells[:k]
    return out if rep % 2 == 0 else out[::-1]


def find_ksoftirqd() -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/comm") as f:
                    if f.read().startswith("ksoftirqd/"):
                        out.append(int(d))
            except OSError:
                pass
    return out


def softirqd_ns(pids: list[int]) -> int:
    return sum(procs.task_cpu_ns(p) for p in pids)


def sockstat_tcp() -> tuple[int, int]:
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                p = line.split()
                d = dict(zip(p[1::2], p[2::2]))
                return int(d["inuse"]), int(d["mem"])
    return 0, 0


def sysctl(name: str) -> str:
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            return " ".join(f.read().split())
    except OSError:
        return "?"


def fmt_mib(b) -> str:
    return "?" if b is None else f"{b / 2**20:.1f} MiB"


def short(r: dict) -> str:
    s = f"{r['mode']:8} {r['load']:7} client={r['client']:5} {r['server']:10}"
    if not r.get("ok"):
        return s + f" FAILED rc={r.get('client_rc')}: {(r.get('client_stderr') or '')[-300:]!r}"
    if r["load"] == "idle10k":
        return s + (f" rss start {fmt_mib(r['rss_start'])}, {r['rss_per_conn']} B/conn; "
                    f"other {r['other_cores']:.2f}")
    return s + (f" {r['msgs_per_s']:>11,.0f} msg/s p99 {r['p99_us']:8.1f} µs  server {r['server_us_per_msg']:.3f} "
                f"µs/msg ({r['server_cores']:.2f} cores)  client {r['client_us_per_msg']:.3f} µs/msg  "
                f"other {r['other_cores']:.2f}")


def say(msg: str) -> None:
    print(msg, flush=True)


def machine_info() -> dict:
    def cmd(c):
        try:
            return subprocess.run(c, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"
    lscpu = dict(line.split(":", 1) for line in cmd(["lscpu"]).splitlines() if ":" in line)
    lscpu = {k.strip(): v.strip() for k, v in lscpu.items()}
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {
        "model": lscpu.get("Model name", "?"),
        "cpus": lscpu.get("CPU(s)", "?"),
        "cores_per_socket": lscpu.get("Core(s) per socket", "?"),
        "threads_per_core": lscpu.get("Thread(s) per core", "?"),
        "hypervisor": lscpu.get("Hypervisor vendor"),
        "family_model": f"family {lscpu.get('CPU family', '?')} model {lscpu.get('Model', '?')}",
        "mem_gib": mem_kb / 2**20,
        "kernel": cmd(["uname", "-r"]),
        "rustc": cmd(["rustc", "--version"]),
        "git": cmd(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]),
        "dirty": [line[3:] for line in cmd(["git", "-C", ROOT, "status", "--porcelain"]).splitlines()],
        "loadavg": open("/proc/loadavg").read().split()[:3],
        "sysctl": {k: sysctl(k) for k in ("net.ipv4.ip_local_port_range", "net.core.somaxconn",
                                          "net.ipv4.tcp_tw_reuse", "net.ipv4.tcp_max_syn_backlog")},
        "nofile": list(__import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)),
    }


def build_and_snapshot(skip_build: bool) -> str:
    """Builds the release binaries and copies them aside, so a rebuild by someone else mid-run
    does not change the programs under test."""
    if not skip_build:
        say("$ " + " ".join(BUILD))
        subprocess.run(BUILD, cwd=ROOT, check=True, timeout=1800)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    bindir = os.path.join(RESULTS_DIR, f"bin-{stamp}")
    os.makedirs(bindir, exist_ok=True)
    for b in BINARIES:
        shutil.copy2(os.path.join(ROOT, "target", "release", b), os.path.join(bindir, b))
    return bindir


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="1 repetition, 2 s measured after 0.5 s warm-up; writes target/bench/benchmarks-quick.md, "
                        "not the report")
    p.add_argument("--big", action="store_true", help="only the 100,000-connection check")
    p.add_argument("--report", action="store_true", help="only rewrite the report from the saved results")
    p.add_argument("--no-build", action="store_true", help="use target/release as it is")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--duration", type=float, default=4.0, help="seconds measured per echo run")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up before measuring")
    p.add_argument("--hold", type=float, default=1.0, help="seconds the idle connections are held")
    p.add_argument("--connect-rate", type=int, default=20000, help="connections opened per second (echo loads)")
    p.add_argument("--metrics-ab", action="store_true",
                   help="only the pinned echo cells of iocp-uring with --metrics off and on (scraped every "
                        "--scrape-interval), interleaved; writes its own section of the report")
    p.add_argument("--scrape-interval", type=float, default=1.0,
                   help="seconds between scrapes of a server run with --metrics")
    p.add_argument("--servers", default=",".join(s.key for s in SERVERS))
    p.add_argument("--loads", default=",".join(x.key for x in LOADS))
    p.add_argument("--clients", default=",".join(CLIENTS))
    p.add_argument("--idle-client", default="uring", help="client backend of the idle load")
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--idle-max-sessions", type=int, default=12000)
    p.add_argument("--rerun-noisy", type=int, default=16,
                   help="at most this many extra runs for cells whose repetitions disagree (0: none)")
    p.add_argument("--quiet", type=float, default=0.3,
                   help="before each run, wait until the rest of the machine uses less than this many cores")
    p.add_argument("--quiet-wait", type=float, default=15, help="...but at most this many seconds per run")
    p.add_argument("--quiet-budget", type=float, default=300, help="...and this many seconds in all")
    p.add_argument("--max-other", type=float, default=0.3,
                   help="run again (up to --retries times) when other load exceeded this many cores")
    p.add_argument("--retries", type=int, default=2)
    p.add_argument("--idle-connect-rate", type=int, default=5000,
                   help="connections opened per second by the idle load (the baselines listen with a "
                        "backlog of 128: faster, a short stall of the server drops SYNs, 1 s each)")
    p.add_argument("--nofile", type=int, default=None,
                   help="RLIMIT_NOFILE for the processes started (default: the hard limit as it is)")
    p.add_argument("--big-conns", type=int, default=100000)
    p.add_argument("--big-hold", type=float, default=10.0)
    p.add_argument("--big-connect-rate", type=int, default=10000)
    p.add_argument("--big-nofile", type=int, default=300000)
    p.add_argument("--big-servers", default="iocp-uring,iocp-poll")
    p.add_argument("--doc", default=DOC, help="where to write the report (default docs/benchmarks.md)")
    p.add_argument("--no-doc", action="store_true", help="do not write the report")
    a = p.parse_args(argv)
    a.latest = LATEST
    if a.quick:
        a.reps, a.duration, a.warmup, a.hold = 1, 2.0, 0.5, 1.0
        # A smoke test does not replace the suite's results or its report.
        a.latest = os.path.join(RESULTS_DIR, "quick-latest.json")
        if a.doc == DOC:
            a.doc = os.path.join(RESULTS_DIR, "benchmarks-quick.md")
    a.servers = [SERVER_BY_KEY[k] for k in a.servers.split(",")]
    a.loads = [LOAD_BY_KEY[k] for k in a.loads.split(",")]
    if a.metrics_ab:
        # Its own results: the matrix's and its report stay as they are.
        a.servers = [SERVER_BY_KEY["iocp-uring"], METRICS_SERVER]
        a.modes = "pinned"
        a.loads = [x for x in a.loads if x.kind == "echo"]
        a.latest = METRICS_LATEST
    a.clients = a.clients.split(",")
    a.modes = a.modes.split(",")
    a.big_servers = a.big_servers.split(",")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    if a.report:
        if a.metrics_ab:
            write_metrics_doc(a)
        else:
            write_doc(a)
        return 0

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    started = dt.datetime.now()
    try:
        bindir = build_and_snapshot(a.no_build)
        bench = Bench(a, bindir)
        info = machine_info()
        say(f"machine: {info['model']}, {info['cpus']} CPUs, {info['mem_gib']:.1f} GiB, kernel {info['kernel']}; "
            f"binaries copied to {bindir}")
        if a.big:
            t0 = time.monotonic()
            big = {"machine": info, "started": started.isoformat(timespec="seconds"),
                   "argv": sys.argv[1:], "runs": bench.big(), "minutes": (time.monotonic() - t0) / 60}
            save(BIG_LATEST, big)
        else:
            t0 = time.monotonic()
            try:
                bench.matrix()
            finally:
                data = {"machine": info, "started": started.isoformat(timespec="seconds"), "argv": sys.argv[1:],
                        "settings": settings(a), "runs": bench.runs, "minutes": (time.monotonic() - t0) / 60}
                path = os.path.join(RESULTS_DIR, f"results-{started:%Y%m%d-%H%M%S}.json")
                save(path, data)
                save(a.latest, data)
                say(f"results saved to {os.path.relpath(path, ROOT)} ({data['minutes']:.1f} min)")
    except KeyboardInterrupt as e:
        say(f"interrupted ({e}); stopping the processes started")
        return 130
    finally:
        procs.cleanup_all()
    if a.metrics_ab:
        print(report.metrics_section(load_json(a.latest)))
        if not a.no_doc:
            write_metrics_doc(a)
        return 0
    if not a.big:
        print(report.console(load_json(a.latest), SERVERS, LOADS))
    if not a.no_doc:
        write_doc(a)
    return 0


def settings(a: argparse.Namespace) -> dict:
    return {"reps": a.reps, "duration": a.duration, "warmup": a.warmup, "hold": a.hold,
            "connect_rate": a.connect_rate, "idle_connect_rate": a.idle_connect_rate,
            "quiet": a.quiet, "quiet_wait": a.quiet_wait, "quiet_budget": a.quiet_budget, "max_other": a.max_other, "retries": a.retries, "servers": [s.key for s in a.servers],
            "loads": [x.key for x in a.loads], "clients": a.clients, "idle_client": a.idle_client,
            "modes": a.modes, "idle_max_sessions": a.idle_max_sessions, "quick": a.quick,
            "server_cpu": SERVER_CPU, "client_cpu": CLIENT_CPU, "build": " ".join(BUILD),
            "scrape_interval": a.scrape_interval}


def save(path: str, data: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1)
    os.replace(path + ".tmp", path)


def load_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError:
        return None


def write_metrics_doc(a: argparse.Namespace) -> None:
    """Writes the metrics on/off section into the report, leaving the rest as it is."""
    data = load_json(a.latest)
    if data is None:
        say("no saved results of --metrics-ab")
        return
    old = open(a.doc).read() if os.path.exists(a.doc) else ""
    section = report.METRICS_BEGIN + "\n" + report.metrics_section(data) + "\n" + report.METRICS_END
    if report.METRICS_BEGIN in old and report.METRICS_END in old:
        head, rest = old.split(report.METRICS_BEGIN, 1)
        text = head + section + rest.split(report.METRICS_END, 1)[1]
    else:
        text = old.rstrip("\n") + "\n\n" + section + "\n"
    with open(a.doc, "w") as f:
        f.write(text)
    say(f"wrote the metrics section of {os.path.relpath(a.doc, ROOT)}")


def write_doc(a: argparse.Namespace) -> None:
    data = load_json(a.latest)
    if data is None:
        say("no saved results: run the matrix first")
        return
    old = open(a.doc).read() if os.path.exists(a.doc) else ""
    text = report.markdown(data, load_json(BIG_LATEST), SERVERS, LOADS, old)
    with open(a.doc, "w") as f:
        f.write(text)
    say(f"wrote {os.path.relpath(a.doc, ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
