#!/usr/bin/env python3
"""The chat across machines: one instance on the memory engine, one on Redis, two on one Redis, two
on a 3-master Redis Cluster — side by side in one run, interleaved.

    python3 bench/scaling.py              # 2 rounds, writes its section of docs/benchmarks.md
    python3 bench/scaling.py --rounds 3 --seconds 15 --no-doc

Each cell starts its own `redis-server` processes (free loopback ports, a temporary folder; the
cluster made with `redis-cli --cluster create`), its chat instances (`--workers 1`), and one
`iocp-load chat` (1,000 users in 100 rooms of 10, 64-byte messages, open loop) that spreads the
users over the instances so that every room has members on each, and checks that every member got
every message of its room in one order for the whole room. Reported per cell: notifies delivered per
second, p50/p99 from send to receipt, the chat servers' CPU per notify, Redis's CPU per notify.
Needs redis-server and redis-cli (Debian: redis-server, redis-tools). Python 3.11 standard library.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import doc, procs  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "target", "bench", "scaling-latest.json")
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
BEGIN, END = "<!-- scaling:begin -->", "<!-- scaling:end -->"
USERS, ROOMS, PASSWORD = 1000, 100, "load-pw"
CELLS = [
    ("1 instance, memory engine", 1, None),
    ("1 instance, Redis", 1, "single"),
    ("2 instances, one Redis", 2, "single"),
    ("2 instances, 3-master cluster", 2, "cluster"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def cli(port: int, *args: str) -> str:
    """`redis-cli -p PORT ARGS...`: what it printed ("" if it failed)."""
    try:
        return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True,
                              timeout=5).stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return ""


class Redis:
    """redis-server processes on free ports in a temporary folder, stopped by PID."""

    def __init__(self, kind: str):
        self.dir = tempfile.mkdtemp(prefix="iocp-redis-")
        self.nodes: list[tuple[subprocess.Popen, int]] = []
        count = 3 if kind == "cluster" else 1
        for i in range(count):
            port = free_port()
            # A cluster node also listens on port + 10000 (its bus): both must be free and valid.
            while kind == "cluster" and (port > 55000 or not port_free(port + 10000)):
                port = free_port()
            d = os.path.join(self.dir, str(i))
            os.makedirs(d)
            args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                    "--logfile", "redis.log"]
            if kind == "cluster":
                args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            p = subprocess.Popen(args, cwd=d, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            self.nodes.append((p, port))
        for _, port in self.nodes:
            deadline = time.monotonic() + 10
            while True:
                if cli(port, "PING") == "PONG":
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on {port} did not start")
                time.sleep(0.05)
        if kind == "cluster":
            subprocess.run(["timeout", "60", "redis-cli", "--cluster", "create",
                            *[f"127.0.0.1:{p}" for _, p in self.nodes], "--cluster-replicas", "0", "--cluster-yes"],
                           check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            deadline = time.monotonic() + 30
            for _, port in self.nodes:
                while "cluster_state:ok" not in cli(port, "CLUSTER", "INFO"):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the cluster did not become ok")
                    time.sleep(0.05)

    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{p}" for _, p in self.nodes]

    def cpu_ns(self) -> int:
        return sum(procs.stat_cpu_ns(p.pid) for p, _ in self.nodes)

    def stop(self) -> None:
        for p, _ in self.nodes:
            procs.stop_popen(p)
        shutil.rmtree(self.dir, ignore_errors=True)


def exited(pid: int) -> bool:
    """Whether `pid` has ended (a zombie not yet waited for counts), without reaping it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def redis_args(urls: list[str]) -> list[str]:
    return [x for u in urls for x in ("--redis", u)]


def add_accounts(server: str, urls: list[str]) -> None:
    """The load-test accounts in Redis: one light hash made by `users add`, copied to the others
    (the same password: one hash serves all), in a few big HSETs."""
    first = subprocess.run([server, "users", "add", "load0", "--hash-cost", "light", *redis_args(urls)],
                           input=PASSWORD + "\n", text=True, capture_output=True)
    if first.returncode != 0 and "exists" not in first.stderr:
        raise RuntimeError(first.stderr)
    cli = ["redis-cli", "-c", "-p", urls[0].rsplit(":", 1)[1]]
    hash_ = subprocess.run([*cli, "HGET", "iocp:accounts", "load0"], capture_output=True, text=True,
                           check=True).stdout.strip()
    for start in range(1, USERS, 250):
        pairs = [x for i in range(start, min(USERS, start + 250)) for x in (f"load{i}", hash_)]
        subprocess.run([*cli, "HSET", "iocp:accounts", *pairs], check=True, stdout=subprocess.DEVNULL)


def cell(bindir: str, label: str, instances: int, engine: str | None, seconds: float, rate: float,
         server: str | None = None) -> dict:
    server = server or os.path.join(bindir, "iocp-server")
    load = os.path.join(bindir, "iocp-load")
    redis = Redis(engine) if engine else None
    tmp = tempfile.mkdtemp(prefix="iocp-scaling-")
    servers = []
    try:
        common = ["chat", "--addr", "127.0.0.1:0", "--workers", "1", "--rooms", str(ROOMS), "--room-capacity", "10",
                  "--login-addr-pending", "1000", "--login-addr-failures", "100000"]
        if redis:
            add_accounts(server, redis.urls())
            extra = ["--engine", "redis", *redis_args(redis.urls())]
        else:
            extra = ["--db", os.path.join(tmp, "accounts.redb")]
        for _ in range(instances):
            servers.append(procs.start_server([server, *common, *extra], seconds + 180, None, None))
        lcmd = [load, "chat", *[x for s in servers for x in ("--addr", s.addr)], "--users", str(USERS),
                "--rooms", str(ROOMS), "--rate", str(rate), "--duration", f"{seconds:.0f}s", "--message-size", "64",
                "--password", PASSWORD]
        if not redis:
            lcmd += ["--db", os.path.join(tmp, "accounts.redb")]
        client = procs.spawn_client(lcmd, seconds + 120, None, None)
        # The measurement window: the chat phase (set-up excluded), from the client's line.
        deadline = time.monotonic() + 120
        while b"chatting for" not in os.pread(client.err.fileno(), 1 << 16, 0):
            if exited(client.popen.pid) or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        w0 = [procs.Window.take(s.pid) for s in servers]
        r0 = redis.cpu_ns() if redis else 0
        t0 = time.monotonic()
        res = procs.wait_client(client)
        t1 = time.monotonic()
        w1 = [procs.Window.take(s.pid) for s in servers]
        r1 = redis.cpu_ns() if redis else 0
    finally:
        for s in servers:
            s.stop()
        if redis:
            redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    out = res.stdout
    m = re.search(r"(\d+) of (\d+) notifies delivered = (\d+) delivered/s", out)
    lat = re.search(r"p50 ([\d.]+) ms\s+p99 ([\d.]+) ms", out)
    delivered = int(m.group(1)) if m else 0
    server_cpu = sum(b.task_ns - a.task_ns for a, b in zip(w0, w1))
    return {"label": label, "load_cmd": lcmd, "ok": res.returncode == 0 and "verified:" in out,
            "output": out.strip(), "delivered": delivered, "notifies_per_s": int(m.group(3)) if m else 0,
            "p50_ms": float(lat.group(1)) if lat else None, "p99_ms": float(lat.group(2)) if lat else None,
            "server_us_per_notify": server_cpu / 1e3 / max(delivered, 1),
            "redis_us_per_notify": (r1 - r0) / 1e3 / max(delivered, 1) if redis else None,
            "window_s": t1 - t0}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=4.0, help="messages per second per user")
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--no-doc", action="store_true")
    p.add_argument("--report", action="store_true", help="only rewrite the doc from the saved results")
    p.add_argument("--baseline", metavar="SERVER",
                   help="another iocp-server binary (e.g. an older commit's) for an extra memory-engine cell, "
                        "to compare the two builds in the same run; results only, no doc")
    p.add_argument("--memory-only", action="store_true", help="only the memory-engine cells (no Redis needed)")
    a = p.parse_args()
    if a.report:
        with open(RESULTS) as f:
            write_doc(json.load(f))
        return 0
    cells = [(label, n, engine, None) for label, n, engine in CELLS]
    if a.memory_only:
        cells = [c for c in cells if c[2] is None]
        a.no_doc = True
    if a.baseline:
        cells.insert(1, ("1 instance, memory engine, baseline binary", 1, None, os.path.abspath(a.baseline)))
        a.no_doc = True
    for tool in ("redis-server", "redis-cli"):
        if not shutil.which(tool):
            print(f"{tool} is needed (apt-get install redis-server redis-tools)", file=sys.stderr)
            return 2
    bindir = procs.release_copies(ROOT, ("iocp-server", "iocp-load"), not a.no_build, "iocp-scaling-bin-")
    results = {"started": dt.datetime.now().isoformat(timespec="seconds"), "commit": doc.git_commit(ROOT),
               "machine": doc.machine(), "seconds": a.seconds, "rate": a.rate, "runs": []}
    try:
        for rnd in range(a.rounds):
            for label, instances, engine, server in cells:
                r = cell(bindir, label, instances, engine, a.seconds, a.rate, server)
                r["round"] = rnd
                results["runs"].append(r)
                redis_cost = f", Redis {r['redis_us_per_notify']:.2f} µs/notify" if r["redis_us_per_notify"] else ""
                print(f"round {rnd} {label}: {r['notifies_per_s']:,} notifies/s, p99 {r['p99_ms']} ms, "
                      f"servers {r['server_us_per_notify']:.2f} µs/notify{redis_cost}, ok {r['ok']}", flush=True)
                if not r["ok"]:
                    print(r["output"], flush=True)
    finally:
        procs.cleanup_all()
        shutil.rmtree(bindir, ignore_errors=True)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=1)
    if not a.no_doc:
        write_doc(results)
    return 0 if all(r["ok"] for r in results["runs"]) else 1


def write_doc(results: dict) -> None:
    by: dict[str, list[dict]] = {}
    for r in results["runs"]:
        by.setdefault(r["label"], []).append(r)

    def med(label: str, key: str) -> float | None:
        xs = [x[key] for x in by[label] if x[key] is not None]
        return statistics.median(xs) if xs else None

    lines = [BEGIN, "## The chat on several instances (Redis)", "",
             f"`python3 bench/scaling.py` at {results['commit']}, {results['started']}; {results['machine']}. "
             f"{len(next(iter(by.values())))} rounds, the cells interleaved; medians.", "",
             f"`iocp-load chat --users {USERS} --rooms {ROOMS} --rate {results['rate']:g} --message-size 64 "
             f"--duration {results['seconds']:.0f}s` with one `--addr` per instance (users spread so that every room "
             "of 10 has members on each instance; every member must get every message of its room, in one order "
             "for the whole room). Instances: `iocp-server chat --workers 1 --rooms 100`; Redis 7 from Debian, "
             "no persistence; all processes share the machine's 2 cores, so the CPU per notify is the figure "
             "to compare, not the rate (the load is open loop: every cell is offered the same messages).", "",
             "| cell | notifies/s | p50 ms | p99 ms | chat servers' CPU µs per notify | Redis CPU µs per notify | all verified |",
             "|---|--:|--:|--:|--:|--:|---|"]
    base = med(CELLS[0][0], "server_us_per_notify") or 1.0
    for label, _, _ in CELLS:
        if label not in by:
            continue
        redis_cost = med(label, "redis_us_per_notify")
        lines.append(
            f"| {label} | {med(label, 'notifies_per_s'):,.0f} | {med(label, 'p50_ms'):.2f} | {med(label, 'p99_ms'):.2f} "
            f"| {med(label, 'server_us_per_notify'):.2f} ({med(label, 'server_us_per_notify') / base:.1f}×) "
            f"| {'—' if redis_cost is None else f'{redis_cost:.2f}'} "
            f"| {'yes' if all(x['ok'] for x in by[label]) else 'NO'} |")
    lines += ["", "A notify is one chat message delivered to one member. On the memory engine the message is "
              "fanned out in-process; on Redis each message is one `EVALSHA` (the room's counter and "
              "`SPUBLISH` in one script) and comes back to every instance with members in the room, which "
              "fans it out to its own. What Redis adds per notify is the script, the publish and the "
              "subscriber's delivery, shared by the room's 10 members.", "", END]
    block = "\n".join(lines)
    doc.put_section(DOC, BEGIN, END, block)


if __name__ == "__main__":
    sys.exit(main())
