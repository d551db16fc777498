"""What the benchmark scripts share when they report: the machine, the commit, and their own
marked section of docs/benchmarks.md (`<!-- name:begin -->` ... `<!-- name:end -->`), replaced in
place so that the other sections are kept."""

from __future__ import annotations

import os
import platform
import subprocess


def machine() -> str:
    """`CPU model, N cores, kernel X`."""
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, kernel {platform.release()}"


def git_commit(root: str) -> str:
    """The short hash of HEAD in `root`, or `?`."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (subprocess.SubprocessError, OSError):
        return "?"


def put_section(path: str, begin: str, end: str, block: str) -> None:
    """Replaces the text from `begin` to `end` in the file at `path` with `block` (which carries
    both markers), or appends `block` if the markers are not there yet."""
    doc = open(path).read() if os.path.exists(path) else ""
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        doc = head + block + rest.split(end, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(doc)
