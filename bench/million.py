#!/usr/bin/env python3
"""How many concurrent connections one `iocp-server echo` process on io_uring holds on this machine,
up to a million — and tokio current-thread beside it in the same run.

    python3 bench/million.py                    # target 1,000,000; writes its section of docs/benchmarks.md
    python3 bench/million.py --target 200000 --no-doc

1. **Limits.** The sysctls the run needs are raised for it (local port range, listen backlogs,
   fs.file-max, tcp_mem, the conntrack table) and restored afterwards; the script prints each
   change and checks at the end that every value is back. RLIMIT_NOFILE is raised to its hard
   limit only: raising the hard limit needs CAP_SYS_RESOURCE. Where it is low, the server's
   connections live in its workers' io_uring file tables (one per worker, each within the limit:
   no descriptor per connection), and the clients are several processes.
2. **Calibration.** A small run (40,000 connections) measures what one connection costs the machine
   (both sockets, kernel and user memory: the fall of MemAvailable; also slab and the TCP pages of
   /proc/net/sockstat, and the server's RSS). The target is cut to what fits under 80 % of the
   machine's memory, and the report says so, before any socket of the big run is opened. A guard
   stops the run if MemAvailable still falls below 15 %.
3. **The run.** One server, `--workers` enough for the file tables, `--max-sessions N`; client
   processes of `iocp-load idle --backend uring` (each under the descriptor limit, spread over
   127.0.0.1–127.0.0.32 as source addresses), all connecting at once at `--rate` in total. Once all
   are in: the server's CPU over 5 s of idleness. At the end of the hold every client sends a 64-byte
   ping on each of its connections and checks its echo: the ping round at full count.
4. **tokio** current-thread (`bench/baselines` `echo-tokio --runtime ct`) the same way, as far as it
   gets in the same memory budget and under the same limits.

Python 3.11 standard library only. Linux only (sysctls, /proc).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import doc, procs  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "target", "bench", "million-latest.json")
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
BEGIN, END = "<!-- million:begin -->", "<!-- million:end -->"
PER_PROCESS_MARGIN = 500  # descriptors a process needs besides its connections
CALIBRATION = 40_000
SOURCE_ADDRS = 32


# --- the machine ---------------------------------------------------------------------------------

def meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0]) * 1024
    return out


def sockstat() -> dict[str, int]:
    """TCP sockets in use, allocated, and the pages of TCP buffer memory."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                p = line.split()[1:]
                d = dict(zip(p[::2], (int(x) for x in p[1::2])))
                return {"inuse": d.get("inuse", 0), "alloc": d.get("alloc", 0), "mem_pages": d.get("mem", 0)}
    return {"inuse": 0, "alloc": 0, "mem_pages": 0}


def snapshot() -> dict:
    m = meminfo()
    return {"t": time.monotonic(), "available": m["MemAvailable"], "slab": m.get("Slab", 0),
            "sunreclaim": m.get("SUnreclaim", 0), **sockstat()}


class Sysctls:
    """Sysctls changed for the run and put back, by the same path, afterwards."""

    def __init__(self) -> None:
        self.saved: dict[str, str] = {}

    @staticmethod
    def path(name: str) -> str:
        return "/proc/sys/" + name.replace(".", "/")

    def get(self, name: str) -> str | None:
        try:
            with open(self.path(name)) as f:
                return " ".join(f.read().split())
        except OSError:
            return None

    def set(self, name: str, value: str) -> None:
        old = self.get(name)
        if old is None or old == value:
            return
        try:
            with open(self.path(name), "w") as f:
                f.write(value)
        except OSError as e:
            print(f"sysctl {name}: cannot set {value!r} ({e}); left at {old!r}", flush=True)
            return
        self.saved.setdefault(name, old)
        print(f"sysctl {name}: {old!r} -> {value!r}", flush=True)

    def restore(self) -> list[str]:
        """Puts every value back; returns the names that did not come back."""
        wrong = []
        for name, old in self.saved.items():
            try:
                with open(self.path(name), "w") as f:
                    f.write(old)
            except OSError:
                pass
            if self.get(name) != old:
                wrong.append(name)
            else:
                print(f"sysctl {name}: restored {old!r}", flush=True)
        return wrong


def raise_limits(sysctls: Sysctls, n: int) -> None:
    mem = meminfo()["MemTotal"]
    sysctls.set("net.ipv4.ip_local_port_range", "1024 65535")
    sysctls.set("net.core.somaxconn", "65535")
    sysctls.set("net.ipv4.tcp_max_syn_backlog", "65535")
    files = int(sysctls.get("fs.file-max") or 0)
    if files < 3 * n:
        sysctls.set("fs.file-max", str(3 * n + 100_000))
    # tcp_mem is in pages; idle sockets hold almost none, but the defaults (a few % of memory)
    # would put a million sockets under memory pressure: allow up to 80 % of the machine.
    pages = int(mem * 0.8) // 4096
    sysctls.set("net.ipv4.tcp_mem", f"{pages // 2} {pages * 3 // 4} {pages}")
    conntrack = sysctls.get("net.netfilter.nf_conntrack_max")
    if conntrack is not None and int(conntrack) < 2 * n + 10_000:
        sysctls.set("net.netfilter.nf_conntrack_max", str(2 * n + 10_000))


def nofile() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# --- one run -------------------------------------------------------------------------------------

class Guard(threading.Thread):
    """Samples the machine every 200 ms; stops every process of the run if MemAvailable falls
    below the floor."""

    def __init__(self, floor: int) -> None:
        super().__init__(daemon=True)
        self.floor = floor
        self.stop_flag = threading.Event()
        self.tripped = False
        self.min_available = meminfo()["MemAvailable"]

    def run(self) -> None:
        while not self.stop_flag.wait(0.2):
            avail = meminfo()["MemAvailable"]
            self.min_available = min(self.min_available, avail)
            if avail < self.floor and not self.tripped:
                self.tripped = True
                print(f"memory guard: MemAvailable {avail / 2**30:.1f} GiB below the floor: stopping", flush=True)
                procs.cleanup_all()


def run(bindir: str, kind: str, n: int, rate: float, hold_extra: float, per_process: int) -> dict:
    """`kind`: iocp (io_uring, one process, enough workers) or tokio (current-thread)."""
    load = os.path.join(bindir, "iocp-load")
    if kind == "iocp":
        workers = max(1, math.ceil(n / per_process))
        scmd = [os.path.join(bindir, "iocp-server"), "echo", "--addr", "127.0.0.1:0", "--backend", "uring",
                "--workers", str(workers), "--max-sessions", str(n), "--stats-interval", "1"]
    else:
        workers = 1
        scmd = [os.path.join(bindir, "echo-tokio"), "--addr", "127.0.0.1:0", "--runtime", "ct"]
    clients_n = max(1, math.ceil(n / per_process))
    shares = [n // clients_n + (1 if i < n % clients_n else 0) for i in range(clients_n)]
    connect_s = n / rate
    hold = connect_s + hold_extra
    rec = {"kind": kind, "target": n, "workers": workers, "clients": clients_n, "server_cmd": scmd,
           "rate": rate, "hold_s": hold}
    settle()
    before = snapshot()
    t_start = time.monotonic()
    srv = procs.start_server(scmd, hold + 300, None, None, ready_timeout=120)
    rec["startup_s"] = time.monotonic() - t_start
    rec["rss_start"] = procs.rss_bytes(srv.pid)
    floor = int(meminfo()["MemTotal"] * 0.15)
    guard = Guard(floor)
    guard.start()
    clients = []
    try:
        t0 = time.monotonic()
        for share in shares:
            ccmd = [load, "idle", "--addr", srv.addr, "-c", str(share), "--hold", f"{hold:.0f}s", "--ping", "64",
                    "--connect-rate", f"{rate / clients_n:.0f}", "--threads", "1", "--backend", "uring",
                    "--source-addrs", str(SOURCE_ADDRS), "--drain-timeout", "30s", "--json", "-q"]
            rec.setdefault("client_cmd", ccmd)
            clients.append(procs.spawn_client(ccmd, hold + 240, None, None))
        # All in: the server holds n connections (its own count, from its stats line; tokio's
        # from the sockets in use, both ends counted).
        held = 0
        while True:
            held = server_sessions(srv) if kind == "iocp" else (snapshot()["inuse"] - before["inuse"]) // 2
            if held >= n or guard.tripped or time.monotonic() - t0 > connect_s * 3 + 120 or \
                    any(procs_exited(c) for c in clients):
                break
            time.sleep(0.05)
        rec["all_in_s"] = time.monotonic() - t0
        rec["held_at_peak"] = held
        # Idle: the server's CPU over 5 s once all are in.
        time.sleep(1.0)
        w0 = procs.Window.take(srv.pid)
        time.sleep(5.0)
        w1 = procs.Window.take(srv.pid)
        rec["idle_cpu_pct"] = 100 * (w1.task_ns - w0.task_ns) / 1e9 / (w1.t - w0.t)
        held = snapshot()
        rec["rss_held"] = procs.rss_bytes(srv.pid)
        rec["client_rss_held"] = sum(procs.rss_bytes(pid) for pid in client_pids(clients))
        rec["mem"] = {"before": before, "held": held}
        results = [procs.wait_client(c) for c in clients]
    finally:
        guard.stop_flag.set()
        srv.stop()
        procs.cleanup_all()
    rec["guard_tripped"] = guard.tripped
    rec["min_available"] = guard.min_available
    js = []
    for r in results:
        try:
            js.append(json.loads(r.stdout.strip().splitlines()[-1]))
        except (json.JSONDecodeError, IndexError):
            js.append({"ok": False, "stderr": r.stderr[-800:]})
    rec["client_json"] = js
    rec["connected"] = sum(j.get("connected") or 0 for j in js)
    rec["open_after_hold"] = sum(j.get("open_after_hold") or 0 for j in js)
    rec["echoed"] = sum((j.get("ping") or {}).get("echoed") or 0 for j in js)
    lat = [(j.get("ping") or {}).get("latency_us") or {} for j in js]
    rec["ping_p50_us"] = sorted(x.get("p50", 0) for x in lat)[len(lat) // 2] if lat else None
    rec["ping_p99_us"] = max((x.get("p99", 0) for x in lat), default=None)
    rec["ok"] = all(j.get("ok") for j in js) and rec["echoed"] == n and not guard.tripped
    held_n = max(rec["open_after_hold"], 1)
    mem = rec["mem"]
    rec["per_conn"] = {
        "machine_bytes": (mem["before"]["available"] - mem["held"]["available"]) / held_n,
        "slab_bytes": (mem["held"]["slab"] - mem["before"]["slab"]) / held_n,
        "tcp_mem_bytes": (mem["held"]["mem_pages"] - mem["before"]["mem_pages"]) * 4096 / held_n,
        "server_rss_bytes": (rec["rss_held"] - rec["rss_start"]) / held_n,
        "client_rss_bytes": rec["client_rss_held"] / held_n,
    }
    rec["server_log_tail"] = srv.log[-1500:]
    print(f"{kind} {n:,}: ok={rec['ok']} connected={rec['connected']:,} held={rec['open_after_hold']:,} "
          f"echoed={rec['echoed']:,} all in after {rec['all_in_s']:.1f} s; idle CPU {rec['idle_cpu_pct']:.2f} %; "
          f"machine {rec['per_conn']['machine_bytes']:.0f} B/conn, server RSS {rec['per_conn']['server_rss_bytes']:.0f} "
          f"B/conn; ping p50 {rec['ping_p50_us']} µs p99 {rec['ping_p99_us']} µs", flush=True)
    if not rec["ok"]:
        for j in js:
            if not j.get("ok"):
                print(json.dumps(j)[:1500], flush=True)
                break
    return rec


BASELINE_INUSE = sockstat()["inuse"]


def settle(limit: float = 120.0) -> None:
    """Waits for the sockets and memory of an earlier run to be given back (the kernel frees a
    million sockets over some seconds): the measurements of the next one start from rest."""
    deadline = time.monotonic() + limit
    last = meminfo()["MemAvailable"]
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = meminfo()["MemAvailable"]
        if sockstat()["inuse"] <= BASELINE_INUSE + 1000 and abs(now - last) < 16 * 2**20:
            return
        last = now
    print("the machine did not settle: the measurements that follow are rougher", flush=True)


def server_sessions(srv: procs.Spawned) -> int:
    """The sessions open in the server's last stats line (`--stats-interval 1`)."""
    text = procs.read_logs(srv.logdir)
    at = text.rfind("sessions open ")
    if at < 0:
        return 0
    digits = text[at + len("sessions open "):].split()[0]
    return int(digits) if digits.isdigit() else 0


def procs_exited(c: procs.Client) -> bool:
    try:
        with open(f"/proc/{c.popen.pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def client_pids(clients) -> list[int]:
    out = []
    for c in clients:
        out.extend(procs.children(c.popen.pid) or [c.popen.pid])
    return out


# --- main ----------------------------------------------------------------------------------------

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", type=int, default=1_000_000)
    p.add_argument("--rate", type=float, default=20_000.0, help="connections opened per second, all clients")
    p.add_argument("--hold-extra", type=float, default=20.0, help="seconds held beyond the connecting time")
    p.add_argument("--budget", type=float, default=0.8, help="the share of the machine's memory not to pass")
    p.add_argument("--skip-tokio", action="store_true")
    p.add_argument("--no-build", action="store_true")
    p.add_argument("--no-doc", action="store_true")
    p.add_argument("--report", action="store_true", help="only rewrite the doc from the saved results")
    a = p.parse_args()
    if a.report:
        with open(RESULTS) as f:
            write_doc(json.load(f))
        return 0
    bindir = procs.release_copies(ROOT, ("iocp-server", "iocp-load"), not a.no_build, "iocp-million-bin-")
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "iocp-baselines", "--bin", "echo-tokio"], cwd=ROOT,
                       check=True)
    shutil.copy2(os.path.join(ROOT, "target", "release", "echo-tokio"), bindir)
    soft, hard = nofile()
    per_process = hard - PER_PROCESS_MARGIN
    results = {"started": dt.datetime.now().isoformat(timespec="seconds"), "commit": doc.git_commit(ROOT),
               "machine": doc.machine(), "target": a.target, "budget": a.budget, "nofile": [soft, hard],
               "runs": []}
    if hard < a.target:
        print(f"RLIMIT_NOFILE: {hard:,} (hard limit; raising it needs CAP_SYS_RESOURCE): one descriptor-bound "
              f"process holds at most ~{per_process:,} connections; the server's live in {math.ceil(a.target / per_process)} "
              f"io_uring file tables (one per worker), the clients are as many processes", flush=True)
    sysctls = Sysctls()
    wrong: list[str] = []
    try:
        raise_limits(sysctls, a.target)
        results["sysctls_changed"] = dict(sysctls.saved)
        # Calibration: what a connection costs the machine, before the big run opens anything.
        cal = run(bindir, "iocp", CALIBRATION, min(a.rate, 20_000), 5.0, per_process)
        results["calibration"] = cal
        per_conn = max(cal["per_conn"]["machine_bytes"], 1.0)
        total = meminfo()["MemTotal"]
        avail = meminfo()["MemAvailable"]
        usable = avail - (1 - a.budget) * total
        fits = int(usable / per_conn) // 1000 * 1000
        target = min(a.target, fits)
        results["ceiling"] = {"per_conn_bytes": per_conn, "mem_total": total, "mem_available": avail,
                              "fits": fits, "target": target,
                              "why": None if target == a.target else
                              f"{a.target:,} connections x {per_conn:.0f} B would pass {100 * a.budget:.0f} % "
                              f"of {total / 2**30:.1f} GiB"}
        print(f"calibration: {per_conn:.0f} B of the machine's memory per connection (both ends); "
              f"{fits:,} fit under {100 * a.budget:.0f} %: running {target:,}", flush=True)
        results["runs"].append(run(bindir, "iocp", target, a.rate, a.hold_extra, per_process))
        if not a.skip_tokio:
            # tokio: one descriptor per connection, in one process: the descriptor limit is its
            # ceiling here, whatever the memory.
            tokio_n = min(target, per_process)
            results["tokio_ceiling"] = (f"RLIMIT_NOFILE {hard:,}: one descriptor per connection in one process"
                                        if tokio_n < target else None)
            results["runs"].append(run(bindir, "tokio", tokio_n, min(a.rate, 20_000), a.hold_extra, per_process))
    finally:
        procs.cleanup_all()
        wrong = sysctls.restore()
        shutil.rmtree(bindir, ignore_errors=True)
    results["restored"] = not wrong
    print("every sysctl restored" if not wrong else f"NOT restored: {wrong}", flush=True)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=1)
    if not a.no_doc:
        write_doc(results)
    return 0 if all(r["ok"] for r in results["runs"]) and not wrong else 1


def write_doc(results: dict) -> None:
    mib = lambda b: f"{b / 2**20:,.0f} MiB"  # noqa: E731
    ceiling = results["ceiling"]
    lines = [BEGIN, "## One million connections", "",
             f"`python3 bench/million.py` at {results['commit']}, {results['started']}; {results['machine']}; "
             f"{ceiling['mem_total'] / 2**30:.1f} GiB. RLIMIT_NOFILE {results['nofile'][1]:,} (hard; this root lacks "
             "CAP_SYS_RESOURCE to raise it), so the server's connections live in its workers' io_uring file tables "
             "(one per worker, each under the limit) and the clients are several processes.", "",
             f"Calibration ({CALIBRATION:,} connections): **{ceiling['per_conn_bytes']:,.0f} bytes of the machine's "
             f"memory per connection** (both sockets, kernel and user: the fall of MemAvailable). Under "
             f"{100 * results['budget']:.0f} % of the machine that allows {ceiling['fits']:,}; "
             + (f"the target, {results['target']:,}, fits." if not ceiling["why"] else
                f"the run stopped at that ceiling: {ceiling['why']}."), "",
             "| | connections held | echoed a ping | all in after | accept rate | server RSS per connection "
             "| machine memory per connection | slab per connection | server CPU while idle | ping round p50 / p99 |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in results["runs"]:
        pc = r["per_conn"]
        name = {"iocp": f"iocp-server, io_uring, {r['workers']} workers",
                "tokio": "tokio current-thread"}[r["kind"]]
        lines.append(
            f"| {name} | {r['open_after_hold']:,} of {r['target']:,} | {r['echoed']:,} | {r['all_in_s']:.1f} s "
            f"| {r['open_after_hold'] / max(r['all_in_s'], 1e-9):,.0f}/s | {pc['server_rss_bytes']:.0f} B "
            f"| {pc['machine_bytes']:,.0f} B | {pc['slab_bytes']:,.0f} B | {r['idle_cpu_pct']:.2f} % "
            f"| {(r['ping_p50_us'] or 0) / 1e3:.1f} / {(r['ping_p99_us'] or 0) / 1e3:.1f} ms |")
    iocp = next((r for r in results["runs"] if r["kind"] == "iocp"), None)
    if iocp:
        lines += ["", f"How to read it. *All in after*: from the clients' start until the server counted every "
                  f"session (its stats line, once a second); the clients open {iocp['rate']:,.0f} connections a "
                  "second in all, so the accept rate is theirs, not the server's ceiling. *Machine memory*: the fall "
                  "of MemAvailable, both sockets of each connection, kernel and user; *slab* is the growth of the "
                  "kernel's slab caches, part of which MemAvailable counts as reclaimable. *Server RSS*: what the "
                  "server process itself grew by — its session table is allocated at start "
                  f"({iocp['rss_start'] / 2**20:,.0f} MiB for {iocp['target']:,} slots and {iocp['workers']} rings), "
                  "so a connection adds almost nothing. *Ping round*: every client sends its 64-byte pings on all of "
                  "its connections at once and checks each echo; with the 52 client processes on the same 2 cores, "
                  "the round is a queue, and its percentiles are how long the queue took to drain, not one "
                  "ping's latency on a quiet server."]
    if results.get("tokio_ceiling"):
        lines += ["", f"tokio's ceiling here: {results['tokio_ceiling']} (its server RSS per connection is the "
                  "figure to compare)."]
    changed = results.get("sysctls_changed") or {}
    lines += ["", "Sysctls raised for the run and restored after it (" +
              ("all restored" if results.get("restored") else "**not all restored**") + "): " +
              (", ".join(f"`{k}` (was `{v}`)" for k, v in changed.items()) or "none") + ".", "",
              "Commands (the clients differ in `-c`):", "", "```",
              " ".join(os.path.basename(x) if i == 0 else x for i, x in enumerate(results["runs"][0]["server_cmd"])),
              " ".join(os.path.basename(x) if i == 0 else x for i, x in enumerate(results["runs"][0]["client_cmd"])),
              "```", "", END]
    doc.put_section(DOC, BEGIN, END, "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
