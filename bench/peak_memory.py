"""Peak memory of a command and every process it starts, summed the way Slurm's jobacct_gather/linux sums a job.

    python -m bench.peak_memory [--interval 0.05] [--json OUT] -- COMMAND ...

Slurm (and a cgroup) charge a job for ALL its processes at once: the scoring step's Python plus its Java tools. The
`Maximum resident set size` of `/usr/bin/time -v` is the largest single process only, so it under-reports a
Python process with JVM children. This polls /proc every `interval` seconds (Slurm polls every 30 s by default; the
test cluster every 5 s), sums the resident set (the `rss` field of /proc/PID/stat, what jobacct_gather/linux reads)
over the command's process tree, and prints the peak of that sum, the peak of each process (named by its command
line: python, or java with its main class or jar), the exit code and the wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def _tree(root: int) -> list[int]:
    children = _children_map()
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def _rss_bytes(pid: int) -> int:
    try:
        return int((Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[21]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def describe_process(pid: int) -> str:
    """python, or java plus its main class / jar: enough to tell METEOR, the tokenizer and SPICE apart."""
    try:
        words = (Path(f"/proc/{pid}") / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return f"pid {pid}"
    words = [word for word in words if word]
    if not words:
        return f"pid {pid}"
    program = Path(words[0]).name
    if program == "java":
        if "-jar" in words:
            return f"java -jar {Path(words[words.index('-jar') + 1]).name}"
        main_class = next((w for w in words[1:] if not w.startswith("-") and "." in w and "/" not in w), "?")
        return f"java {main_class}"
    if program.startswith("python"):
        module = words[words.index("-m") + 1] if "-m" in words[:-1] else Path(words[1]).name if len(words) > 1 else ""
        return f"python {module}".strip()
    return program


def measure(command: list[str], interval: float = 0.05) -> dict[str, object]:
    started = time.monotonic()
    process = subprocess.Popen(command)
    peak_total, peak_at = 0, 0.0
    per_process: dict[str, int] = {}
    names: dict[int, str] = {}
    while process.poll() is None:
        total = 0
        for pid in _tree(process.pid):
            rss = _rss_bytes(pid)
            total += rss
            if pid not in names or names[pid].startswith("pid "):
                names[pid] = describe_process(pid)
            key = f"{names[pid]} (pid {pid})"
            per_process[key] = max(per_process.get(key, 0), rss)
        if total > peak_total:
            peak_total, peak_at = total, time.monotonic() - started
        time.sleep(interval)
    return {
        "command": command,
        "exit_code": process.returncode,
        "wall_s": round(time.monotonic() - started, 2),
        "peak_total_bytes": peak_total,
        "peak_total_at_s": round(peak_at, 2),
        "peak_per_process_bytes": dict(sorted(per_process.items(), key=lambda item: -item[1])),
        "interval_s": interval,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peak_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between two samples (default 0.05)")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    result = measure(command, args.interval)
    mb = 1 << 20
    print(f"exit {result['exit_code']}, {result['wall_s']} s", file=sys.stderr)
    peak, at = int(result["peak_total_bytes"]) / mb, result["peak_total_at_s"]  # type: ignore[call-overload]
    print(f"peak of the summed RSS: {peak:.0f} MiB at {at} s", file=sys.stderr)
    for name, peak in result["peak_per_process_bytes"].items():  # type: ignore[union-attr]
        if peak >= 4 * mb:
            print(f"  {peak / mb:7.0f} MiB  {name}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
