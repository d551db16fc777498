#!/usr/bin/env python3
"""Where a server's CPU goes under one load: system calls and io_uring events per echoed message,
and a `perf record` profile split into kernel and user space.

    python3 bench/profile.py --server iocp-uring --load 1k64 --client uring
    python3 bench/profile.py --server tokio-ct --load 64p4 --client poll --record

Pinned like the suite (server on CPU 0 with one worker, client on CPU 1). The client runs a 2 s
warm-up and a 6 s measured window; `perf stat` (tracepoint counts) and, with --record,
`perf record -e cpu-clock -g` attach to the server for 2 s each inside that window, one after the
other, so the profile's overhead does not touch the counts. Needs `perf` and tracepoints
(`/sys/kernel/tracing`); hardware counters are not needed. Uses the binaries of the last
`bench/run.py` build (target/bench/bin-*) unless --bindir is given.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import procs  # noqa: E402
from run import LOAD_BY_KEY, ROOT, SERVER_BY_KEY  # noqa: E402

EVENTS = [
    "raw_syscalls:sys_enter",
    "syscalls:sys_enter_io_uring_enter",
    "io_uring:io_uring_submit_req",
    "io_uring:io_uring_complete",
    "io_uring:io_uring_poll_arm",
    "io_uring:io_uring_queue_async_work",
    "io_uring:io_uring_task_add",
    "io_uring:io_uring_local_work_run",
    "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_enter_read",
    "syscalls:sys_enter_recvfrom",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_writev",
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_sendmsg",
    "syscalls:sys_enter_epoll_ctl",
    "sched:sched_switch",
    "net:net_dev_xmit",
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", default="iocp-uring", choices=sorted(SERVER_BY_KEY))
    p.add_argument("--load", default="1k64", choices=[k for k, v in LOAD_BY_KEY.items() if v.kind == "echo"])
    p.add_argument("--client", default="uring", choices=["uring", "poll"])
    p.add_argument("--record", action="store_true", help="also perf record -g, and print the top symbols")
    p.add_argument("--window", type=float, default=2.0)
    p.add_argument("--bindir", default=None)
    p.add_argument("--out", default=os.path.join(ROOT, "target", "bench", "profile"))
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    bindir = a.bindir or sorted(glob.glob(os.path.join(ROOT, "target", "bench", "bin-*")))[-1]
    server, load = SERVER_BY_KEY[a.server], LOAD_BY_KEY[a.load]
    os.makedirs(a.out, exist_ok=True)
    cmd = [os.path.join(bindir, server.binary), *server.args] + (["--workers", "1"] if server.workers_flag else [])
    warmup, duration = 2.0, 3 * a.window + 2.0
    srv = procs.start_server(cmd, 60, "0", None)
    result = {"server": a.server, "load": a.load, "client": a.client, "server_cmd": cmd}
    try:
        time.sleep(0.2)
        ccmd = [os.path.join(bindir, "iocp-load"), "echo", "--addr", srv.addr, "-c", str(load.conns),
                "--size", str(load.size), "--pipeline", str(load.pipeline), "--duration", f"{duration:g}s",
                "--warmup", f"{warmup:g}s", "--connect-rate", "20000", "--backend", a.client, "--json", "-q"]
        client = subprocess.Popen(["timeout", "-k", "5", "40", "taskset", "-c", "1", *ccmd],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(warmup + 0.7)
            # First a window with nothing attached: the CPU per message without tracing overhead.
            c0, b0, t0 = procs.task_cpu_ns(srv.pid), procs.machine_busy_ns()["cpu"], time.monotonic()
            time.sleep(a.window)
            c1, b1, t1 = procs.task_cpu_ns(srv.pid), procs.machine_busy_ns()["cpu"], time.monotonic()
            result["clean_window"] = {"server_cpu_s": (c1 - c0) / 1e9, "seconds": t1 - t0,
                                      "machine_busy_cores": (b1 - b0) / 1e9 / (t1 - t0)}
            stat_path = os.path.join(a.out, f"{a.server}-{a.load}-{a.client}.stat")
            t0 = procs.task_cpu_ns(srv.pid)
            subprocess.run(["timeout", "30", "perf", "stat", "-x", ",", "-o", stat_path, "-e", ",".join(EVENTS),
                            "-p", str(srv.pid), "--", "sleep", f"{a.window:g}"], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            result["server_cpu_s_in_stat_window"] = (procs.task_cpu_ns(srv.pid) - t0) / 1e9
            counts = parse_stat(stat_path)
            if a.record:
                data = os.path.join(a.out, f"{a.server}-{a.load}-{a.client}.perf.data")
                subprocess.run(["timeout", "30", "perf", "record", "-q", "-e", "cpu-clock", "-g", "-o", data,
                                "-p", str(srv.pid), "--", "sleep", f"{a.window:g}"], check=False,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                result["perf_data"] = data
            out, err = client.communicate(timeout=40)
        finally:
            if client.poll() is None:
                procs.stop_popen(client)
    finally:
        srv.stop()
    j = json.loads(out.strip().splitlines()[-1])
    rate = j["messages_per_s"]
    msgs = rate * a.window
    result.update(messages_per_s=rate, p99_us=j["latency_us"]["p99"], messages_in_window=msgs,
                  per_message={k: v / msgs for k, v in counts.items() if v},
                  server_us_per_msg_traced=result["server_cpu_s_in_stat_window"] * 1e6 / msgs,
                  server_us_per_msg=result["clean_window"]["server_cpu_s"] * 1e6
                  / (rate * result["clean_window"]["seconds"]))
    if a.record:
        result["profile"] = summarize(result["perf_data"])
    if a.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{a.server} / {a.load} / {a.client} client: {rate:,.0f} msg/s, p99 {j['latency_us']['p99']:,.0f} µs, "
              f"server {result['server_us_per_msg']:.2f} µs/msg (window without tracing; machine busy "
              f"{result['clean_window']['machine_busy_cores']:.2f} cores)")
        for k, v in sorted(result["per_message"].items(), key=lambda kv: -kv[1]):
            print(f"  {v:8.3f} per message  {k}")
        if a.record:
            prof = result["profile"]
            print(f"  profile: {prof['samples']} samples, kernel {prof['kernel']:.0%}, user {prof['user']:.0%}")
            for name, share in prof["top"]:
                print(f"  {share:6.1%}  {name}")
            inc = prof["inclusive"]
            tcp = inc.get("tcp_sendmsg", 0) + inc.get("tcp_recvmsg", 0)
            print(f"  tcp_sendmsg + tcp_recvmsg (inclusive): {tcp:.0%} = {tcp * result['server_us_per_msg']:.2f} µs/msg;"
                  f" the rest: {(1 - tcp) * result['server_us_per_msg']:.2f} µs/msg")
            for name, share in sorted(inc.items(), key=lambda kv: -kv[1]):
                print(f"  {share:6.1%}  incl. {name}")
            print("  by kernel area (self time):")
            for name, share in prof["areas"]:
                print(f"  {share:6.1%}  {name}")
    return 0


def parse_stat(path: str) -> dict[str, float]:
    counts = {}
    with open(path) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) > 2 and parts[2] in EVENTS:
                try:
                    counts[parts[2]] = float(parts[0])
                except ValueError:
                    counts[parts[2]] = 0.0
    return counts


AREAS = [
    ("io_uring", ("io_uring", "io_", "__io_", "io_poll", "io_recv", "io_send", "io_issue", "io_submit",
                  "io_req", "io_cqe", "io_fill", "io_buffer", "io_kbuf", "io_ring", "io_task", "tctx_")),
    ("epoll", ("ep_", "do_epoll", "__x64_sys_epoll", "epoll")),
    ("TCP/IP", ("tcp_", "__tcp", "ip_", "__ip", "inet_", "__inet", "ipv4_", "dst_", "raw_v4", "sk_", "__sk",
                "sock_", "__sock", "skb_", "__skb", "kfree_skb", "consume_skb", "alloc_skb", "__alloc_skb",
                "net_", "__net", "netif_", "__netif", "dev_", "__dev", "loopback", "process_backlog",
                "validate_xmit", "eth_", "release_sock", "lock_sock", "napi", "__napi", "security_sock",
                "bpf_", "nf_", "__copy_skb", "csum_", "tcp4_", "__kfree_skb", "skb", "lro", "gro", "rps",
                "__local_bh", "do_softirq", "__do_softirq", "handle_softirqs", "net_rx_action")),
    ("copy to/from user", ("copy_", "_copy_", "__copy", "rep_movs", "memcpy", "copyin", "copyout",
                           "simple_copy_to_iter", "skb_copy_datagram", "csum_and_copy")),
    ("syscall entry/exit", ("entry_SYSCALL", "do_syscall", "syscall_", "__x64_sys", "x64_sys_call",
                            "exit_to_user", "syscall_exit")),
    ("scheduler/wakeups", ("schedule", "__schedule", "try_to_wake", "ttwu", "wake_up", "__wake_up",
                           "autoremove_wake", "pick_next", "enqueue", "dequeue", "update_curr", "finish_task",
                           "psi_", "sched_", "hrtimer", "native_sched", "raw_spin", "_raw_spin")),
    ("memory (slab/page)", ("kmem_", "kmalloc", "__kmalloc", "kfree", "slab", "__slab", "page_", "__page",
                            "alloc_pages", "free_pages", "___slab", "memcg", "mod_memcg", "__mod_memcg",
                            "refill_obj", "obj_cgroup", "get_page", "put_page", "folio")),
]


def area_of(sym: str) -> str:
    for name, prefixes in AREAS:
        if sym.startswith(prefixes):
            return name
    return "other kernel"


def summarize(data: str) -> dict:
    """Self-time shares of the top symbols, and kernel vs user, from `perf report`."""
    rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "dso,sym", "--stdio",
                          "-g", "none", "--percent-limit", "0.01"], capture_output=True, text=True, timeout=120)
    top, kernel, user, areas = [], 0.0, 0.0, {}
    samples = 0
    for line in rep.stdout.splitlines():
        if line.startswith("# Samples:"):
            samples = line.split()[2]
        s = line.strip()
        if not s or s.startswith("#") or "%" not in s.split()[0]:
            continue
        parts = s.split(None, 2)
        share = float(parts[0].rstrip("%")) / 100
        dso, rest = parts[1], parts[2] if len(parts) > 2 else ""
        sym = rest.split("] ", 1)[1].strip() if "] " in rest else rest
        is_kernel = "[k]" in rest or dso.startswith("[kernel")
        if is_kernel:
            kernel += share
            a = area_of(sym)
            areas[a] = areas.get(a, 0.0) + share
        else:
            user += share
        if len(top) < 25:
            top.append((("[k] " if is_kernel else "[u] ") + sym, share))
    return {"samples": samples, "kernel": kernel, "user": user, "top": top,
            "areas": sorted(areas.items(), key=lambda kv: -kv[1]), "inclusive": inclusive(data)}


# Inclusive shares (self + callees) of the kernel functions that bound the TCP work of an echo:
# `tcp_sendmsg` holds the send path down to the loopback device and the peer's TCP input (run as
# softirq in the sender's context); `tcp_recvmsg` the copy out of the receive queue and its ACK.
INCLUSIVE = ["tcp_sendmsg", "tcp_recvmsg", "net_rx_action", "tcp_v4_rcv", "__io_run_local_work",
             "io_submit_sqes", "io_cqring_wait", "do_epoll_wait", "ep_poll", "schedule", "io_sendmsg", "io_send",
             "io_recv", "fget", "io_file_get_normal", "entry_SYSCALL_64_after_hwframe"]


def inclusive(data: str) -> dict[str, float]:
    rep = subprocess.run(["perf", "report", "-i", data, "--children", "--sort", "sym", "--stdio", "-g", "none",
                          "--percent-limit", "0.01"], capture_output=True, text=True, timeout=120)
    out = {}
    for line in rep.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].endswith("%") and parts[3] in INCLUSIVE:
            out[parts[3]] = float(parts[0].rstrip("%")) / 100
    return out


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        procs.cleanup_all()
