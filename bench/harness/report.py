"""Medians, ratios, targets, and the Markdown of docs/benchmarks.md, from the saved results."""

from __future__ import annotations

import shlex
import statistics

BEGIN, END = "<!-- analysis:begin -->", "<!-- analysis:end -->"
SOAK_BEGIN, SOAK_END = "<!-- soak:begin -->", "<!-- soak:end -->"
METRICS_BEGIN, METRICS_END = "<!-- metrics:begin -->", "<!-- metrics:end -->"
ANALYSIS_PLACEHOLDER = "(No analysis written yet.)"
MODE_TITLE = {
    "pinned": "Pinned: server on CPU 0 (one worker), client on CPU 1 (one thread)",
    "unpinned": "Unpinned: default worker counts (2 on this machine), client one thread, no `taskset`",
}
CLIENT_TITLE = {"uring": "io_uring client", "poll": "epoll client"}
ECHO_METRICS = ["msgs_per_s", "p50_us", "p99_us", "p999_us", "server_us_per_msg", "server_us_per_msg_stat",
                "client_us_per_msg", "server_cores", "client_cores", "other_cores", "softirqd_cores"]
IDLE_METRICS = ["rss_start", "rss_before", "rss_held", "rss_per_conn", "other_cores"]


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class Table:
    """Runs grouped by cell (mode, load, client, server), with the median of every metric."""

    def __init__(self, data: dict):
        self.data = data
        self.cells: dict[tuple, list[dict]] = {}
        for r in data["runs"]:
            if "load" in r:
                if r.get("echoed") and r.get("server_cpu_ns") is not None and r.get("client_cpu_s") is not None:
                    # Both processes over the client's life, per echoed message: on loopback each side
                    # runs part of the other's TCP work, so this is the cost that cannot be shifted.
                    r["total_us_per_msg"] = (r["server_cpu_ns"] / 1e3 + r["client_cpu_s"] * 1e6) / r["echoed"]
                self.cells.setdefault((r["mode"], r["load"], r["client"], r["server"]), []).append(r)
        self.prealloc = [r for r in data["runs"] if r.get("kind") == "prealloc"]

    def runs(self, mode, load, client, server, ok_only=True):
        rs = [r for r in self.cells.get((mode, load, client, server), []) if not r.get("discarded")]
        if not ok_only:
            return rs
        rs = [r for r in rs if r.get("ok")]
        if load != "idle10k":
            # Runs that shared the machine with other work are left out when two clean ones remain.
            limit = self.data["settings"].get("max_other", 0.3)
            clean = [r for r in rs if r.get("other_cores", 0) <= limit]
            if len(clean) >= 2:
                return clean
        return rs

    def med(self, mode, load, client, server, metric):
        return median(r.get(metric) for r in self.runs(mode, load, client, server))

    def pratio(self, mode, load, client, mine, bases, metric, pick=max):
        """The median over repetitions of mine ÷ base, each repetition's runs paired (they ran
        seconds apart, so they shared the machine's state: the host's speed drifts by ±20 % on this
        VM, in both processes at once). `bases` is one server or several, combined per repetition
        with `pick` (the faster tokio for throughput: max; for latency: min). Falls back to the
        ratio of the medians when fewer than two repetitions pair up."""
        bases = [bases] if isinstance(bases, str) else bases

        def by_rep(server):
            return {r["rep"]: r.get(metric) for r in self.runs(mode, load, client, server)
                    if r.get(metric) is not None}

        m = by_rep(mine)
        bs = [by_rep(b) for b in bases]
        reps = sorted(set(m).intersection(*[set(b) for b in bs]))
        vals = [m[k] / pick(b[k] for b in bs) for k in reps if pick(b[k] for b in bs)]
        if len(vals) >= 2:
            return statistics.median(vals)
        base_meds = [self.med(mode, load, client, b, metric) for b in bases]
        base_meds = [x for x in base_meds if x is not None]
        return ratio(self.med(mode, load, client, mine, metric), pick(base_meds) if base_meds else None)

    def spread(self, mode, load, client, server, metric):
        v = [r[metric] for r in self.runs(mode, load, client, server) if r.get(metric) is not None]
        if len(v) < 2:
            return None
        mid = statistics.median(v)
        return (max(v) - min(v)) / mid if mid else None

    def modes(self):
        return [m for m in self.data["settings"]["modes"]]

    def clients_for(self, load):
        return self.data["settings"]["clients"] if load.kind == "echo" else [self.data["settings"]["idle_client"]]


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def f_int(x):
    return "–" if x is None else f"{x:,.0f}"


def f_us(x):
    if x is None:
        return "–"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 1 else f"{x:.3f}"


def f_x(x):
    return "–" if x is None else f"{x:.2f}×"


def f_mib(x):
    return "–" if x is None else f"{x / 2**20:.1f} MiB"


def md_table(head: list[str], rows: list[list[str]], align: str = "") -> str:
    align = align or "l" * len(head)
    sep = ["---:" if c == "r" else "---" for c in align]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# --- targets -----------------------------------------------------------------------------------

def targets(t: Table, big: dict | None, loads, mode: str) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) rows for one placement mode, iocp-server on io_uring."""
    out = []
    echo = [x for x in loads if x.kind == "echo" and x.key in t.data["settings"]["loads"]]
    srv = "iocp-uring"

    def verdict(ok):
        return "–" if ok is None else ("**met**" if ok else "**missed**")

    for client, limit in (("poll", 0.90), ("uring", 0.65)):
        for load in echo:
            r = t.pratio(mode, load.key, client, srv, "tokio-ct", "server_us_per_msg")
            out.append((f"server CPU/msg ≤ {limit:.2f} × tokio ct, {CLIENT_TITLE[client]}, {load.label}",
                        f"{f_us(t.med(mode, load.key, client, srv, 'server_us_per_msg'))} vs "
                        f"{f_us(t.med(mode, load.key, client, 'tokio-ct', 'server_us_per_msg'))} µs → {f_x(r)}",
                        verdict(None if r is None else r <= limit)))
    for load in echo:
        if load.key not in ("1k64", "50x4k"):
            continue
        for client in t.data["settings"]["clients"]:
            mine = t.med(mode, load.key, client, srv, "msgs_per_s")
            ct = t.med(mode, load.key, client, "tokio-ct", "msgs_per_s")
            mt = t.med(mode, load.key, client, "tokio-mt", "msgs_per_s")
            best = max([x for x in (ct, mt) if x is not None], default=None)
            r = t.pratio(mode, load.key, client, srv, ["tokio-ct", "tokio-mt"], "msgs_per_s", max)
            out.append((f"throughput ≥ 1.2 × tokio (the faster of ct, mt), {load.label}, {CLIENT_TITLE[client]}",
                        f"{f_int(mine)} vs {f_int(best)} msg/s → {f_x(r)}",
                        verdict(None if r is None else r >= 1.2)))
    for load in echo:
        for client in t.data["settings"]["clients"]:
            for s, note in ((srv, ""), ("iocp-uring-1w", " (iocp-server with 1 worker)")):
                mine = t.med(mode, load.key, client, s, "p99_us")
                if mine is None and s != srv:
                    continue
                ct = t.med(mode, load.key, client, "tokio-ct", "p99_us")
                mt = t.med(mode, load.key, client, "tokio-mt", "p99_us")
                r = t.pratio(mode, load.key, client, s, ["tokio-ct", "tokio-mt"], "p99_us", min)
                out.append((f"p99 ≤ tokio's (ct and mt), {load.label}, {CLIENT_TITLE[client]}{note}",
                            f"{f_us(mine)} vs ct {f_us(ct)}, mt {f_us(mt)} µs → {f_x(r)}",
                            verdict(None if r is None else r <= 1.0)))
    for s in ("iocp-uring", "iocp-poll"):
        for client in [t.data["settings"]["idle_client"]]:
            v = t.med(mode, "idle10k", client, s, "rss_per_conn")
            if v is not None:
                out.append((f"user-space memory per idle connection ≤ 512 B at 10,000 ({s})",
                            f"{v:,.0f} B", verdict(v <= 512)))
    if big and mode == "unpinned":
        for r in big["runs"]:
            held = r.get("open_after_hold")
            procs_n = r.get("processes", 1)
            where = "one process" if procs_n == 1 else f"{procs_n} processes"
            if r.get("workers"):
                where += f", {r['workers']} workers"
            ok = bool(r.get("ok")) and (held or 0) >= 100000
            v = verdict(ok and procs_n == 1)
            if ok and procs_n > 1:
                v = "**met by the machine, not by one process** (hard RLIMIT_NOFILE)"
            elif procs_n == 1 and r.get("nofile_denied") and not r.get("workers"):
                v = "**impossible here** (hard RLIMIT_NOFILE 20,000)"
            out.append((f"100,000 concurrent connections held ({r['server']}, `--big`, {where})",
                        f"{f_int(held)} held, {f_int(r.get('pinged'))} echoed a ping", v))
    return out


# --- console ----------------------------------------------------------------------------------

def console(data: dict | None, servers, loads) -> str:
    if not data:
        return "no results"
    t = Table(data)
    present = [s for s in servers if s.key in data["settings"]["servers"]]
    lines = []
    for mode in t.modes():
        lines.append(f"\n== {MODE_TITLE[mode]}")
        for load in loads:
            if load.key not in data["settings"]["loads"]:
                continue
            for client in t.clients_for(load):
                lines.append(f"-- {load.label}, {CLIENT_TITLE[client]}")
                for s in present:
                    if load.kind == "echo":
                        lines.append(
                            f"   {s.label:26} {f_int(t.med(mode, load.key, client, s.key, 'msgs_per_s')):>11} msg/s  "
                            f"p99 {f_us(t.med(mode, load.key, client, s.key, 'p99_us')):>7} µs  "
                            f"server {f_us(t.med(mode, load.key, client, s.key, 'server_us_per_msg')):>6} µs/msg")
                    else:
                        lines.append(
                            f"   {s.label:26} rss start {f_mib(t.med(mode, load.key, client, s.key, 'rss_start')):>10}  "
                            f"{f_int(t.med(mode, load.key, client, s.key, 'rss_per_conn')):>6} B/conn")
                if load.kind == "echo":
                    for mine in ("iocp-uring", "iocp-poll"):
                        for base in ("tokio-ct", "tokio-mt"):
                            lines.append(
                                f"   {mine} / {base}: throughput "
                                f"{f_x(t.pratio(mode, load.key, client, mine, base, 'msgs_per_s'))}"
                                f", CPU/msg {f_x(t.pratio(mode, load.key, client, mine, base, 'server_us_per_msg'))}"
                                f", p99 {f_x(t.pratio(mode, load.key, client, mine, base, 'p99_us'))}")
        lines.append(f"\n   targets ({mode}):")
        for name, measured, v in targets(t, None, loads, mode):
            lines.append(f"   {v.strip('*'):7} {name}: {measured}")
    return "\n".join(lines)


# --- markdown ---------------------------------------------------------------------------------

def markdown(data: dict, big: dict | None, servers, loads, old_doc: str) -> str:
    t = Table(data)
    st = data["settings"]
    m = data["machine"]
    present = [s for s in servers if s.key in st["servers"]]
    echo_loads = [x for x in loads if x.kind == "echo" and x.key in st["loads"]]
    out = []
    w = out.append
    w("# Benchmarks: iocp-server beside tokio and plain mio\n")
    w(f"Generated by `python3 bench/run.py{' ' + ' '.join(data['argv']) if data['argv'] else ''}` "
      f"on {data['started'].replace('T', ' ')} ({data['minutes']:.0f} minutes); "
      "one run of the suite, every number below comes from it"
      + (" (the 100,000-connection check from its own `--big` run, dated in its section)" if big else "")
      + ". How the suite works: [`bench/README.md`](../bench/README.md). "
      "Everything above the analysis section is rewritten by the script; the analysis is written by hand and "
      "kept when the script runs again, so check that it still matches the numbers.\n")

    w("## Machine\n")
    hv = f", {m['hypervisor']} guest" if m.get("hypervisor") else ""
    w(f"- CPU: {m['model']} ({m['family_model']}), {m['cpus']} CPUs "
      f"({m['cores_per_socket']} cores per socket, {m['threads_per_core']} thread per core{hv})")
    w(f"- Memory: {m['mem_gib']:.1f} GiB")
    w(f"- Kernel: `{m['kernel']}`; {m['rustc']}")
    dirty = m.get("dirty") or []
    w(f"- Source: commit `{m['git']}`" + (f" plus the uncommitted changes of the working tree at build time "
                                          f"({len(dirty)} files: other work in progress)" if dirty else ""))
    w(f"- Loopback only. Load average when the suite started: {' '.join(m['loadavg'])}. "
      "**The machine is shared**: other people's compiles and test suites run on it at times. "
      "Each run records the CPU the rest of the machine used meanwhile (\"other load\", see Noise below).")
    w(f"- Limits and sysctls: RLIMIT_NOFILE {m['nofile'][0]}/{m['nofile'][1]}; "
      + ", ".join(f"`{k}` = {v}" for k, v in m["sysctl"].items()) + "\n")

    w("## How it was run\n")
    w(f"- Build: `{st['build']}`; the binaries are copied aside before the first run, so a rebuild by "
      "someone else during the suite does not change what is measured.")
    w(f"- Each run starts a fresh server, loads it once, and stops it (SIGTERM). {st['reps']} repetitions of "
      "every cell, interleaved (the cell order is rotated every repetition); the tables give medians. "
      "Cells whose repetitions disagreed were run twice more (see Noise).")
    w(f"- Echo loads: {st['warmup']:g} s warm-up, then {st['duration']:g} s measured. "
      f"Echo connections are opened at {st['connect_rate']:,}/s before the warm-up. "
      f"Idle load: 10,000 connections opened at {st.get('idle_connect_rate', st['connect_rate']):,}/s, held {st['hold']:g} s, then one 64-byte "
      "ping echoed on each (proves every connection was being served).")
    w(f"- Placement. **Pinned**: server `taskset -c {st['server_cpu']}` with one worker "
      "(`--workers 1` for iocp-server and tokio mt; tokio ct and mio are single-threaded anyway), client "
      f"`taskset -c {st['client_cpu']}`, one client thread. **Unpinned**: no `taskset`, default worker counts "
      "(iocp-server and tokio mt: one per core = 2), one client thread.")
    w("- Every process runs under `timeout`; the script stops the ones it started by PID.\n")
    w("Commands (pinned variants; `ADDR` is what the server printed, `PID` the server's process):\n")
    w("```sh")
    shown = set()
    for r in data["runs"]:
        if "load" not in r or not r.get("server_cmd"):
            continue
        key = (r["server"], r["load"] == "idle10k")
        if r["mode"] != "pinned" or key in shown:
            continue
        shown.add(key)
        w(f"timeout -k 5 T taskset -c {st['server_cpu']} " + cmdline(r["server_cmd"]))
    clients_shown = set()
    for r in data["runs"]:
        if "client_cmd" not in r or r["mode"] != "pinned":
            continue
        key = (r["load"], r["client"])
        if key in clients_shown:
            continue
        clients_shown.add(key)
        c = [x if x != r["client_cmd"][r["client_cmd"].index("--addr") + 1] else "ADDR" for x in r["client_cmd"]]
        if "--server-pid" in c:
            c[c.index("--server-pid") + 1] = "PID"
        w(f"timeout -k 5 T taskset -c {st['client_cpu']} " + cmdline(c))
    for r in t.prealloc[:2]:
        w(cmdline(r["cmd"]) + "   # RSS at start, 1,000 vs 100,000 slots")
    w("```\n")
    w("What is measured:\n")
    w("- **msg/s** and **p99**: from the client (`iocp-load --json`): messages echoed and verified in the "
      "measured window, and the 99th percentile of the round-trip time of each message.")
    w("- **server CPU µs/msg**: the server's on-CPU time (the sum over its threads of "
      "`/proc/PID/task/*/schedstat` field 1, in ns) read just before the client starts and just after it exits, "
      "divided by every message the client had echoed and verified in that time (warm-up, measured window and "
      "drain: `verified_messages`), so the CPU window and the message count cover the same span. Connecting "
      "is inside the window too; it is small beside millions of messages. (`/proc/PID/stat` utime+stime gives "
      "the same within a few per cent and is kept in the raw results.) On loopback a sender also runs the "
      "receiving side's TCP processing (softirq in its own context), so each process's CPU contains part of its "
      "peer's receive path; `ksoftirqd` time is recorded separately and was negligible.")
    w("- **RSS per idle connection**: `iocp-load idle --server-pid` reads the server's VmRSS before connecting "
      "and at the end of the hold; (after − before) / connections. User-space memory only: kernel socket "
      "buffers are not in RSS. iocp-server runs this load with `--max-sessions "
      f"{st['idle_max_sessions']}`, so its session table (allocated at start) is in \"RSS at start\".\n")

    for mode in t.modes():
        w(f"## {MODE_TITLE[mode]}\n")
        head = ["load", "client"] + [s.label for s in present]
        for title, metric, fmt in (("Throughput (messages/s, higher is better)", "msgs_per_s", f_int),
                                   ("p99 round-trip latency (µs, lower is better)", "p99_us", f_us),
                                   ("Server CPU per echoed message (µs, lower is better)", "server_us_per_msg", f_us),
                                   ("Server + client CPU per echoed message (µs, lower is better)",
                                    "total_us_per_msg", f_us)):
            rows = []
            for load in echo_loads:
                for client in st["clients"]:
                    rows.append([load.label, CLIENT_TITLE[client]] +
                                [fmt(t.med(mode, load.key, client, s.key, metric)) for s in present])
            w(f"### {title}\n")
            w(md_table(head, rows, "ll" + "r" * len(present)) + "\n")
        w("### Ratios against tokio (iocp-server ÷ tokio; throughput > 1 and CPU, p99 < 1 are better)\n")
        rows = []
        mines = ["iocp-uring", "iocp-poll"]
        heads = ["io_uring ÷ tokio ct", "io_uring ÷ tokio mt", "poll ÷ tokio ct", "poll ÷ tokio mt"]
        if any(t.med(mode, x.key, c, "iocp-uring-1w", "msgs_per_s") is not None
               for x in echo_loads for c in st["clients"]):
            mines.append("iocp-uring-1w")
            heads += ["io_uring 1 worker ÷ tokio ct", "io_uring 1 worker ÷ tokio mt"]
        for load in echo_loads:
            for client in st["clients"]:
                row = [load.label, CLIENT_TITLE[client]]
                for mine in mines:
                    for base in ("tokio-ct", "tokio-mt"):
                        row.append(" / ".join(f_x(t.pratio(mode, load.key, client, mine, base, mt))
                                              for mt in ("msgs_per_s", "server_us_per_msg", "p99_us")))
                rows.append(row)
        w(md_table(["load", "client"] + heads, rows, "ll" + "r" * len(heads)))
        w("\nEach cell: throughput / server CPU per message / p99, each the median over the repetitions of the "
          "ratio within one repetition (the runs of one repetition ran seconds apart; see Noise).\n")
        w("### CPU in the measured window (cores busy, medians)\n")
        rows = []
        for load in echo_loads:
            for client in st["clients"]:
                rows.append([load.label, CLIENT_TITLE[client]] + [
                    f"{fc(t.med(mode, load.key, client, s.key, 'server_cores'))} + "
                    f"{fc(t.med(mode, load.key, client, s.key, 'client_cores'))}"
                    for s in present])
        w(md_table(head, rows, "ll" + "r" * len(present)))
        w("\nEach cell: server + client, over the client's whole life (connecting included: against the "
          "baselines, which listen with a backlog of 128, 1,000 fast connects can lose a SYN and wait 1 s, which "
          "lowers these averages without touching the per-message figures). When the server is below 1.0 while "
          "the client is near 1.0, the client is the bottleneck and the throughput comparison is partly a "
          "comparison of how the servers batch for that client.\n")

        idle = next((x for x in loads if x.kind == "idle" and x.key in st["loads"]), None)
        if idle:
            w(f"### {idle.label} ({CLIENT_TITLE[st['idle_client']]})\n")
            rows = []
            for s in present:
                c = st["idle_client"]
                rows.append([s.label, f_mib(t.med(mode, idle.key, c, s.key, "rss_start")),
                             f_mib(t.med(mode, idle.key, c, s.key, "rss_held")),
                             f_int(t.med(mode, idle.key, c, s.key, "rss_per_conn"))])
            w(md_table(["server", "RSS at start", "RSS with 10,000 held", "bytes per idle connection"], rows,
                       "lrrr") + "\n")

    if t.prealloc:
        w("## iocp-server's session table\n")
        rows = []
        for backend in ("uring", "poll"):
            rs = [r for r in t.prealloc if r["backend"] == backend]
            if rs:
                rows.append([backend, f_mib(median(r["rss_1000"] for r in rs)),
                             f_mib(median(r["rss_100000"] for r in rs)),
                             f"{median(r['per_slot'] for r in rs):,.0f}"])
        w(md_table(["backend", "RSS at start, --max-sessions 1000", "--max-sessions 100000", "bytes per slot"],
                   rows, "lrrr"))
        w("\nOne worker (`--workers 1`), RSS read 0.3 s after `listening on`; per slot = difference ÷ 99,000.\n")

    w("## Targets of the issue\n")
    w("iocp-server on io_uring against the same client in the same run. The pinned placement is the "
      "headline (each side has one core of its own, so CPU per message is not disturbed by the other side); "
      "the unpinned verdicts are given too. Each entry gives the two medians, then (→) the ratio used for the "
      "verdict: the median over the repetitions of the ratio within one repetition (for throughput against "
      "the faster tokio of that repetition, for p99 against the lower p99), so it need not equal the ratio "
      "of the two medians. With the run-to-run spread of this machine (see Noise) a ratio within about "
      "±0.08 of its limit is not a clear verdict either way.\n")
    rows = []
    tp = targets(t, big, loads, "pinned") if "pinned" in t.modes() else []
    tu = {name: (meas, v) for name, meas, v in targets(t, big, loads, "unpinned")} if "unpinned" in t.modes() else {}
    for name, meas, v in tp:
        u = tu.pop(name, ("–", "–"))
        rows.append([name, meas, v, u[0], u[1]])
    for name, (meas, v) in tu.items():
        rows.append([name, "–", "–", meas, v])
    w(md_table(["target", "pinned", "", "unpinned", ""], rows, "lrlrl") + "\n")

    if big:
        w("## 100,000 connections (`python3 bench/run.py --big`)\n")
        runs = big["runs"]
        denied = next((r.get("nofile_denied") for r in runs if r.get("nofile_denied")), None)
        w(f"Run {big['started'].replace('T', ' ')}, separately from the matrix, unpinned, io_uring clients "
          "(`iocp-load idle --threads 2`), 10 s hold, then a 64-byte ping echoed on every connection.\n")
        if denied:
            w("The hard `RLIMIT_NOFILE` here is 20,000, and the script's attempt to raise it for the "
              f"processes it starts is refused: {denied}. (`prlimit --nofile=300000:300000` and "
              "`ulimit -Hn 300000` fail the same way, `Operation not permitted`.)\n")
            w("- **iocp-server on io_uring holds the 100,000 in one process anyway**: each connection's "
              "socket lives in its worker ring's file table, not in the process's descriptor table, and the "
              "kernel bounds each ring's table by `RLIMIT_NOFILE` on its own — so the run gives the server "
              "enough workers that each table stays under 20,000. The load generator still needs a "
              "descriptor per connection, so the clients are several processes.\n")
            w("- **With the poll backend** (as with tokio or any readiness server) every connection is a "
              "descriptor: one process holds up to the limit (with `--max-sessions 100000`, so the full "
              "session table is allocated), and the 100,000 are shown split over several server processes, "
              "each with its own client, all open at the same time — what the machine holds, not one "
              "process.\n")
        else:
            w("Both processes get RLIMIT_NOFILE raised (`setrlimit` in the child; the machine's hard limit "
              "is 20,000).\n")
        w("The load generator spreads connections over 127.0.0.1–127.0.0.4 (`--source-addrs`), so "
          "`net.ipv4.ip_local_port_range` (28,232 ports) is enough; `net.core.somaxconn` only bounds the "
          "accept backlog. No sysctl is changed.\n")
        rows = []
        for r in runs:
            procs_s = str(r.get("processes", 1))
            if r.get("workers"):
                procs_s += f" ({r['workers']} workers, {r.get('clients')} clients)"
            rows.append([r["server"], procs_s, "yes" if r.get("ok") else "**no**",
                         f_int(r.get("connected")), f_int(r.get("open_after_hold")), f_int(r.get("pinged")),
                         f_us(r.get("ping_p99_us")), f_mib(r.get("rss_start")), f_mib(r.get("rss_held")),
                         "–" if r.get("rss_per_conn") is None else f"{r['rss_per_conn']:,.0f}",
                         f_mib(r.get("mem_drop")), f_int(r.get("tcp_inuse_max"))])
        w(md_table(["server", "processes", "ok", "connected", "held", "pings echoed", "ping p99 µs",
                    "RSS at start", "RSS held", "B/conn", "MemAvailable drop", "TCP sockets"], rows,
                   "lrlrrrrrrrrr"))
        w("\n```sh")
        for r in runs:
            shares = ", ".join(f"{x:,}" for x in r.get("shares", [r.get("conns")]))
            if r.get("workers"):
                w(f"# {r['server']}, one process with {r['workers']} workers; {r.get('clients')} clients × "
                  f"{shares} connections")
            else:
                w(f"# {r['server']}, {r.get('processes', 1)} process(es) × {shares} connections")
            w(f"timeout -k 5 T " + cmdline(r["server_cmd"]))
            c = list(r["client_cmd"])
            c[c.index("--addr") + 1] = "ADDR"
            c[c.index("--server-pid") + 1] = "PID"
            w(f"timeout -k 5 T " + cmdline(c))
        w("```\n")
        w("RSS columns add up the server processes; \"MemAvailable drop\" is the whole machine (servers, clients, "
          "the kernel's sockets for both ends); \"TCP sockets\" the most `/proc/net/sockstat` showed in use "
          "(both ends count).\n")

    w("## Noise\n")
    rows = []
    for (mode, load, client, server), all_rs in sorted(t.cells.items()):
        rs = [r for r in all_rs if not r.get("discarded")]
        discarded = len(all_rs) - len(rs)
        ok = [r for r in rs if r.get("ok")]
        failed = len(rs) - len(ok)
        used = t.runs(mode, load, client, server)
        left_out = len(ok) - len(used)
        if not ok:
            rows.append([mode, load, client, server, str(len(rs)), "–", "–", "–", f"{failed} failed"])
            continue
        if load == "idle10k" and not failed and not discarded:
            continue  # RSS per connection is a few bytes either way; its spread means nothing
        metric = "msgs_per_s" if load != "idle10k" else "rss_per_conn"
        sp = t.spread(mode, load, client, server, metric)
        cs = t.spread(mode, load, client, server, "server_us_per_msg") if load != "idle10k" else None
        other = max(r.get("other_cores", 0) for r in used)
        rerun = sum(1 for r in rs if "rerun_reason" in r)
        if (sp or 0) > 0.10 or (cs or 0) > 0.10 or other > 0.25 or failed or rerun or discarded or left_out:
            note = [f"{failed} failed"] if failed else []
            note += [f"{discarded} discarded and run again (other load)"] if discarded else []
            note += [f"{left_out} left out of the medians (other load)"] if left_out else []
            note += [f"{rerun} extra runs"] if rerun else []
            rows.append([mode, load, client, server, str(len(used)), pct(sp), pct(cs), f"{other:.2f}",
                         "; ".join(note)])
    total = len(t.cells)
    ndisc = sum(1 for rs in t.cells.values() for r in rs if r.get("discarded"))
    w(f"Before each echo run the script waits (at most {st.get('quiet_wait', 15):g} s per run, "
      f"{st.get('quiet_budget', 240):g} s in all) until the rest of "
      f"the machine uses less than {st.get('quiet', 0.3):g} of a core; an echo run during which other work took more "
      f"than {st.get('max_other', 0.3):g} of a core is discarded and run again (at most "
      f"{st.get('retries', 1)} times; {ndisc} runs were discarded). A run kept although it was disturbed is left "
      "out of the medians when two undisturbed runs of its cell remain; after the matrix, extra runs go to the "
      "cells with fewer than three undisturbed runs or whose runs disagree by more than 15 %. "
      "\"Other\" below is the largest CPU use, among the runs the medians come from, of everything but the "
      "server, the client and "
      "ksoftirqd (from `/proc/stat`), in cores.\n")
    w(f"Cells whose runs used for the medians differ by more than 10 % (max − min, over the median), that saw "
      f"more than 0.25 of a core of other load, that failed, or that needed extra runs: {len(rows)} of {total}. "
      "\"runs\" is the number of runs the medians come from.\n")
    if rows:
        w(md_table(["mode", "load", "client", "server", "runs", "msg/s spread", "CPU/msg spread", "other",
                    "note"], rows, "llllrrrrl") + "\n")
    fails = [r for rs in t.cells.values() for r in rs if not r.get("ok")]
    for r in fails[:5]:
        w(f"- failed: {r['mode']} {r['load']} {r['client']} {r['server']}: "
          f"`{' '.join((r.get('client_stderr') or '').split())[-300:]}`")
    w("")

    w(BEGIN)
    w(analysis(old_doc))
    w(END)
    # The sections of bench/soak.py and bench/timers.py are their own: kept as they are.
    for begin, end in ((SOAK_BEGIN, SOAK_END), ("<!-- timers:begin -->", "<!-- timers:end -->"),
                       (METRICS_BEGIN, METRICS_END)):
        if begin in old_doc and end in old_doc:
            w("")
            w(begin + old_doc.split(begin, 1)[1].split(end, 1)[0] + end)
    return "\n".join(out) + "\n"


def analysis(old_doc: str) -> str:
    if BEGIN in old_doc and END in old_doc:
        return old_doc.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")
    return ANALYSIS_PLACEHOLDER


def cmdline(c: list[str]) -> str:
    c = list(c)
    if c and "/" in c[0]:
        c[0] = c[0].rsplit("/", 1)[1]
    return shlex.join(c)


def fc(x):
    return "–" if x is None else f"{x:.2f}"


def pct(x):
    return "–" if x is None else f"{x:.0%}"


def metrics_section(data: dict | None) -> str:
    """The section of `bench/run.py --metrics-ab`: iocp-server's pinned echo cells with the metrics
    endpoint off and on (scraped), from one run in which the two were interleaved."""
    if not data:
        return "(no results of `bench/run.py --metrics-ab` yet)"
    m, st = data["machine"], data["settings"]
    runs = [r for r in data["runs"] if r.get("ok") and not r.get("discarded") and r.get("server_us_per_msg")]
    off_key, on_key = "iocp-uring", "iocp-uring-metrics"
    out = []
    w = out.append
    w("## The metrics endpoint on and off\n")
    argv = " ".join(data["argv"])
    w(f"`python3 bench/run.py {argv}` at {m['git']}, {data['started'].replace('T', ' ')} "
      f"({data['minutes']:.0f} minutes); {m['model']}, {m['cpus']} CPUs, kernel {m['kernel']}.\n")
    w(f"The pinned echo cells (server `taskset -c {st['server_cpu']}` with one worker, client `taskset -c "
      f"{st['client_cpu']}`), {st['reps']} repetitions, the two variants interleaved in each: "
      "`iocp-server echo --backend uring` as it is, and the same with `--metrics 127.0.0.1:0` while the "
      "bench scrapes `/metrics` every "
      f"{st.get('scrape_interval', 1.0):g} s (Prometheus scrapes every 15 s by default). The per-worker counters "
      "are kept in both: the endpoint only reads them. Server CPU per echoed message over the client's run "
      "(scrapes included); ratios are the median of the on ÷ off ratios within each repetition.\n")
    rows = []
    verdicts = []
    for load in st["loads"]:
        for client in st["clients"]:
            cell = [r for r in runs if r["load"] == load and r["client"] == client]
            off = [r for r in cell if r["server"] == off_key]
            on = [r for r in cell if r["server"] == on_key]
            if not off or not on:
                continue
            by_rep = {}
            for r in cell:
                by_rep.setdefault(r["rep"], {})[r["server"]] = r
            pairs = [(p[off_key], p[on_key]) for p in by_rep.values() if off_key in p and on_key in p]
            cpu_ratio = statistics.median(b["server_us_per_msg"] / a["server_us_per_msg"] for a, b in pairs) if pairs else None
            tput_ratio = statistics.median(b["msgs_per_s"] / a["msgs_per_s"] for a, b in pairs) if pairs else None

            def med(rs, k):
                return statistics.median(r[k] for r in rs)

            def spread(rs):
                v = [r["server_us_per_msg"] for r in rs]
                return (max(v) - min(v)) / statistics.median(v) if len(v) > 1 else None

            scrapes = [r.get("scrapes", 0) for r in on]
            noise = max(x for x in (spread(off), spread(on), 0.0) if x is not None)
            if cpu_ratio is not None:
                verdicts.append((f"{load}/{client}", cpu_ratio, noise))
            rows.append([load, client, f"{med(off, 'server_us_per_msg'):.3f}", f"{med(on, 'server_us_per_msg'):.3f}",
                         f"**{cpu_ratio:.3f}×**" if cpu_ratio else "–",
                         f"{med(off, 'msgs_per_s'):,.0f}", f"{med(on, 'msgs_per_s'):,.0f}",
                         f"{tput_ratio:.3f}×" if tput_ratio else "–",
                         pct(spread(off)), pct(spread(on)), f"{len(pairs)}",
                         f"{min(scrapes)}–{max(scrapes)}"])
    w(md_table(["load", "client", "off: µs/msg", "on: µs/msg", "CPU on ÷ off", "off: msg/s", "on: msg/s",
                "msg/s on ÷ off", "off spread", "on spread", "pairs", "scrapes per run"], rows,
               "llrrrrrrrrrr") + "\n")
    discarded = sum(1 for r in data["runs"] if r.get("discarded"))
    w("\"spread\" is max − min over the median of a variant's runs: the noise of this shared machine "
      f"({discarded} runs of this one were discarded and run again because other work took more than "
      f"{st['max_other']} of a core meanwhile). A ratio within the spread is no measurable difference.\n")
    outside = [f"{cell} ({ratio:.3f}× against a spread of {noise:.0%})" for cell, ratio, noise in verdicts
               if abs(ratio - 1) > noise]
    if verdicts and not outside:
        w(f"Every cell's CPU ratio is within the spread of its runs (ratios {min(v[1] for v in verdicts):.3f}× to "
          f"{max(v[1] for v in verdicts):.3f}×, median {statistics.median(v[1] for v in verdicts):.3f}×): "
          "no difference this machine can measure.\n")
    elif outside:
        w("Cells whose CPU ratio lies outside the spread of their runs: " + "; ".join(outside) + ".\n")
    return "\n".join(out)
