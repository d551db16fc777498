"""Starting, measuring and stopping the processes of one benchmark run.

Every process is started under `timeout` (so a hung run ends by itself) and remembered by PID;
`Spawned.stop` and `cleanup_all` end exactly those PIDs, never anything found by name: other
people run servers on the same machine.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

ANSI = re.compile(r"\x1b\[[0-9;]*m")
LISTENING = re.compile(r"listening on (\d+\.\d+\.\d+\.\d+:\d+)")
METRICS = re.compile(r"metrics on http://(\d+\.\d+\.\d+\.\d+:\d+)/metrics")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Every `timeout` process this harness started and has not reaped yet: pid -> Popen.
_LIVE: dict[int, subprocess.Popen] = {}


def nofile_preexec(limit: int | None):
    """A `preexec_fn` that sets RLIMIT_NOFILE (soft and hard) of the child, as root may."""
    if limit is None:
        return None

    def apply():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


def wrap(cmd: list[str], seconds: float, cpus: str | None) -> list[str]:
    """`timeout -k 5 S [taskset -c CPUS] cmd...`."""
    out = ["timeout", "-k", "5", f"{seconds:.0f}"]
    if cpus is not None:
        out += ["taskset", "-c", cpus]
    return out + cmd


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


@dataclass
class Spawned:
    """A server started under `timeout`: the `timeout` process and the server under it."""

    popen: subprocess.Popen
    pid: int  # the server itself (the child of `timeout`)
    addr: str
    logdir: str
    log: str = field(default="")

    def stop(self) -> None:
        """SIGTERM the server (graceful shutdown), then SIGKILL what is left, by PID."""
        stop_popen(self.popen, self.pid)
        try:
            with open(os.path.join(self.logdir, "out")) as a, open(os.path.join(self.logdir, "err")) as b:
                self.log = ANSI.sub("", a.read() + b.read())
        except OSError:
            pass


def stop_popen(popen: subprocess.Popen, inner: int | None = None, grace: float = 6.0) -> None:
    if popen.poll() is None:
        for pid in ([inner] if inner else []) + [popen.pid]:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            popen.wait(grace)
        except subprocess.TimeoutExpired:
            for pid in ([inner] if inner else []) + [popen.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            popen.wait(10)
    _LIVE.pop(popen.pid, None)


def cleanup_all() -> None:
    """Ends every process this harness started and has not reaped (try/finally, signals)."""
    for pid, popen in list(_LIVE.items()):
        inner = children(pid)
        stop_popen(popen, inner[0] if inner else None, grace=3.0)


def start_server(cmd: list[str], seconds: float, cpus: str | None, nofile: int | None,
                 ready_timeout: float = 15.0) -> Spawned:
    """Starts a server, waits for its `listening on ADDR` line (stdout or stderr)."""
    logdir = tempfile.mkdtemp(prefix="iocp-bench-")
    out = open(os.path.join(logdir, "out"), "wb")
    err = open(os.path.join(logdir, "err"), "wb")
    env = dict(os.environ, NO_COLOR="1")
    env.pop("RUST_LOG", None)
    popen = subprocess.Popen(wrap(cmd, seconds, cpus), stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                             env=env, preexec_fn=nofile_preexec(nofile))
    out.close()
    err.close()
    _LIVE[popen.pid] = popen
    deadline = time.monotonic() + ready_timeout
    try:
        while time.monotonic() < deadline:
            if popen.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited with {popen.returncode}: {read_logs(logdir)[-2000:]}")
            m = LISTENING.search(read_logs(logdir))
            kids = children(popen.pid)
            if m and kids:
                return Spawned(popen, kids[0], m.group(1), logdir)
            time.sleep(0.02)
        raise RuntimeError(f"{cmd[0]} did not say `listening on` within {ready_timeout} s")
    except BaseException:
        stop_popen(popen, (children(popen.pid) or [None])[0])
        raise


def read_logs(logdir: str) -> str:
    text = ""
    for name in ("out", "err"):
        try:
            with open(os.path.join(logdir, name), "rb") as f:
                text += f.read().decode(errors="replace")
        except OSError:
            pass
    return ANSI.sub("", text)


@dataclass
class ClientResult:
    returncode: int
    stdout: str
    stderr: str
    cpu_s: float  # user + sys of the client (and the `timeout` around it), from wait4
    wall_s: float


@dataclass
class Client:
    """A load generator started under `timeout`, not yet waited for."""

    popen: subprocess.Popen
    out: object
    err: object
    t0: float


def spawn_client(cmd: list[str], seconds: float, cpus: str | None, nofile: int | None) -> Client:
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    t0 = time.monotonic()
    popen = subprocess.Popen(wrap(cmd, seconds, cpus), stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                             preexec_fn=nofile_preexec(nofile))
    _LIVE[popen.pid] = popen
    return Client(popen, out, err, t0)


def wait_client(c: Client) -> ClientResult:
    """Waits for the client (bounded by its `timeout`); its CPU time comes from `wait4`'s rusage."""
    try:
        _, status, ru = os.wait4(c.popen.pid, 0)
    except BaseException:
        stop_popen(c.popen, (children(c.popen.pid) or [None])[0])
        raise
    c.popen.returncode = os.waitstatus_to_exitcode(status)
    _LIVE.pop(c.popen.pid, None)
    wall = time.monotonic() - c.t0
    c.out.seek(0)
    c.err.seek(0)
    res = ClientResult(c.popen.returncode, c.out.read().decode(errors="replace"),
                       ANSI.sub("", c.err.read().decode(errors="replace")), ru.ru_utime + ru.ru_stime, wall)
    c.out.close()
    c.err.close()
    return res


def run_client(cmd: list[str], seconds: float, cpus: str | None, nofile: int | None) -> ClientResult:
    """Runs the load generator to completion."""
    return wait_client(spawn_client(cmd, seconds, cpus, nofile))


def can_set_nofile(limit: int) -> str | None:
    """None if a child may have RLIMIT_NOFILE `limit`, else why not (the error, the capabilities)."""
    try:
        subprocess.run(["true"], preexec_fn=nofile_preexec(limit), check=True)
        return None
    except (subprocess.SubprocessError, OSError) as e:
        cap = "?"
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    cap = line.split()[1]
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        has = bool(int(cap, 16) >> 24 & 1) if cap != "?" else None
        return (f"setrlimit(RLIMIT_NOFILE, {limit}) in the child failed with EPERM: the hard "
                f"limit is {hard} and this root lacks CAP_SYS_RESOURCE (CapEff {cap}, bit 24 "
                f"{'set' if has else 'clear'}), which raising a hard limit needs")


# --- measurements ------------------------------------------------------------------------------

def task_cpu_ns(pid: int) -> int:
    """Sum over the live threads of /proc/PID/task/*/schedstat's first field (ns on CPU)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # the thread ended between listdir and open
    return total


def stat_cpu_ns(pid: int) -> int:
    """utime + stime of /proc/PID/stat (fields 14 and 15, clock ticks; ended threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // CLK_TCK


def threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def machine_busy_ns() -> dict[str, int]:
    """Busy time (user+nice+system+irq+softirq+steal) per CPU line of /proc/stat, in ns."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu"):
                break
            p = line.split()
            v = [int(x) for x in p[1:9]]
            busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
            out[p[0]] = busy * 1_000_000_000 // CLK_TCK
    return out


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class Window:
    """CPU counters of a server and of the machine at one instant."""

    t: float
    task_ns: int
    stat_ns: int
    threads: int
    machine: dict[str, int]

    @staticmethod
    def take(pid: int) -> "Window":
        return Window(time.monotonic(), task_cpu_ns(pid), stat_cpu_ns(pid), threads(pid), machine_busy_ns())


def release_copies(root: str, names: tuple[str, ...], build: bool, prefix: str) -> str:
    """Builds the release binaries (unless `build` is false) and copies `names` into a new
    temporary folder, returned: a build during a long run then cannot change them midway."""
    if build:
        subprocess.run(["cargo", "build", "--release", "-p", "iocp-server-app", "-p", "iocp-load"], cwd=root,
                       check=True)
    bindir = tempfile.mkdtemp(prefix=prefix)
    for name in names:
        shutil.copy2(os.path.join(root, "target", "release", name), bindir)
    return bindir
