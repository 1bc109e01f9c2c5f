"""py-spy helpers of the benchmarks' ``--profile`` flags (``.venv/bin/pip install py-spy``)."""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

from _common import REPO, Proc

PYSPY = REPO / ".venv" / "bin" / "py-spy"


def start_spy(p: Proc, out: Path, rate: int = 250) -> subprocess.Popen | None:
    """Sample a role's Python stacks per thread (wall clock, --idle) until stop(); None without py-spy."""
    exe = str(PYSPY) if PYSPY.exists() else shutil.which("py-spy")
    if not exe:
        print("!! py-spy is not installed: .venv/bin/pip install py-spy")
        return None
    return subprocess.Popen([exe, "record", "-p", str(p.pid), "-r", str(rate), "--threads", "--idle", "--nonblocking",
                             "-f", "raw", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(recorder: subprocess.Popen | None, timeout: float = 60) -> None:
    """Stop a recorder of start_spy or start_perf (SIGINT makes it write its output), killing it after
    ``timeout``."""
    if recorder is not None:
        recorder.send_signal(signal.SIGINT)
        try:
            recorder.wait(timeout)
        except subprocess.TimeoutExpired:
            recorder.kill()


IDLE_LEAVES = ("_worker (concurrent/futures/thread.py:81)", "EpollSelector.select", "Condition.wait", "Event.wait")


def spy_summary(path: Path, seconds: float, rate: int = 250, top: int = 25) -> str:
    """Per-thread busy share (wall clock, I/O waits included; waiting for work excluded), then the top functions
    by own (self) and inclusive samples among the busy ones."""
    import collections
    import re
    if not path.exists():
        return f"(no profile written at {path})"
    own, incl, busy, idle = (collections.Counter() for _ in range(4))
    names: dict[str, str] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        n = int(n)
        parts = stack.split(";")
        thread = next((f for f in parts if f.startswith("thread ")), "thread ?")
        frames = [re.sub(r" \((?:.*/)?([^/]+/[^/]+):(\d+)\)$", r" (\1:\2)", f) for f in parts
                  if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        role = "pool worker" if any("_worker" in f for f in frames[:8]) else \
            "event loop" if any("run_forever" in f for f in frames) else "other"
        key = thread.split(")")[0] + ")"           # "thread (TID" + ")": py-spy names threads only sometimes
        names[key] = max(names.get(key, ""), f"{thread} {role}", key=len)
        if any(frames[-1].startswith(i.split(" (")[0]) and (" (" not in i or i.split(" (")[1][:-1] in stack)
               for i in IDLE_LEAVES):
            idle[key] += n
            continue
        busy[key] += n
        total += n
        own[frames[-1]] += n
        for f in {re.sub(r":\d+\)$", ")", f) for f in frames}:
            incl[f] += n
    if not total:
        return "(no samples)"
    out = [f"  wall-clock samples at {rate} Hz over ~{seconds:.1f}s; share of each thread's samples busy (running "
           "or blocked in I/O; the rest is waiting for work):"]
    out += [f"    {c / (c + idle[t]) * 100:5.1f}%  {names[t]}" for t, c in busy.most_common(8) if c + idle[t] >= 20]
    out.append("  top own (self) time, % of busy samples:")
    out += [f"    {c / total * 100:5.1f}%  {f}" for f, c in own.most_common(top)]
    boring = ("runpy", "cli.py", "runners.py", "base_events.py", "events.py", "threading.py", "thread.py")
    out.append("  top inclusive time (framework frames left out), % of busy samples:")
    out += [f"    {c / total * 100:5.1f}%  {f}" for f, c in incl.most_common(60)
            if not any(b in f for b in boring)][:top]
    return "\n".join(out)


def start_perf(procs: list[Proc], out: Path, freq: int = 999) -> subprocess.Popen | None:
    """``perf record -g`` of the given roles (all their threads) until stop(); None without perf."""
    exe = shutil.which("perf")
    if not exe:
        print("!! perf is not installed (Debian: linux-perf)")
        return None
    pids = ",".join(str(p.pid) for p in procs)
    return subprocess.Popen([exe, "record", "-F", str(freq), "-g", "-p", pids, "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def perf_summary(path: Path, nbytes: int, top: int = 22) -> str:
    """Where the recorded roles' CPU went, per thread and per symbol, as CPU milliseconds per MB written
    (``nbytes`` is what the recorded run wrote); system calls by their kernel entry point, inclusive."""
    if not path.exists():
        return "(no perf data)"

    def report(first: str, fields: str, *args: str) -> list[tuple[float, str]]:
        """(samples, name) rows; ``first`` is "sample", or "overhead_children" (a percentage of ``total``)."""
        res = subprocess.run(["perf", "report", "-i", str(path), "--stdio", "-g", "none", "--percent-limit", "0.3",
                              "-F", f"{first},{fields}", *args], capture_output=True, text=True)
        rows = []
        for ln in res.stdout.splitlines():
            parts = ln.split(None, 1)
            if len(parts) != 2 or ln.startswith("#"):
                continue
            try:
                n = float(parts[0].rstrip("%"))
            except ValueError:
                continue
            rows.append((n * total / 100 if parts[0].endswith("%") else n, parts[1].strip()))
        return rows

    total = 0
    threads = report("sample", "pid", "--no-children", "--sort", "pid")
    total = sum(n for n, _ in threads)
    if not total:
        return "(no samples)"
    mb = nbytes / 1e6
    freq = 999.0
    per_mb = lambda n: n / freq * 1000 / mb   # noqa: E731 -- CPU ms per MB
    out = [f"CPU ms per MB by thread ({total} samples at {freq:.0f} Hz, {total / freq:.2f} CPU s):"]
    out += [f"  {per_mb(n):6.3f}  {name}" for n, name in threads]
    out.append("top symbols, own time (CPU ms per MB):")
    own = sorted(report("sample", "pid,dso,sym", "--no-children", "--sort", "pid,dso,sym"), reverse=True)
    out += [f"  {per_mb(n):6.3f}  {name}" for n, name in own[:top]]
    calls = [(n, name) for n, name in report("overhead_children", "pid,sym", "--children",
                                                    "--sort", "pid,sym")
             if "__x64_sys_" in name or "page_fault" in name]
    out.append("system calls and page faults, inclusive (CPU ms per MB):")
    out += [f"  {per_mb(n):6.3f}  {name}" for n, name in sorted(calls, reverse=True)[:top]]
    return "\n".join(out)
