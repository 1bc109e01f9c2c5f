"""Two revisions of Lifeboat side by side, in one run: the same benchmarks on a base revision and on this checkout,
alternating, each with its own same-run baseline, then one table of each bench's headline ratio and new / base.

Used to show that a restructuring costs nothing (issue 11: "the benches no worse than before the change, side by
side in one run"). The base revision is checked out into a temporary git worktree that shares this checkout's
``.venv`` (its roles import the base revision's engine: the bench scripts start them with ``cwd`` = their checkout).

    .venv/bin/python bench/revisions.py --base 3fdca0b                # capture, initial, churn (quick), resync
    .venv/bin/python bench/revisions.py --base 3fdca0b --rounds 2 --benches capture,resync

A headline is a ratio against the bench's own baseline of that run (nbdkit, the raw pipeline, rsync, ...), so the
two revisions are compared on ratios, which the machine's noise moves far less than absolute numbers.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, VENV_PY, ensure_venv, table

# bench → (arguments, [(headline, regex on stdout, higher is better)])
BENCHES: dict[str, tuple[list[str], list[tuple[str, str, bool]]]] = {
    "capture": (["bench/capture.py", "--quick"], [
        ("nbdcopy vs nbdkit (x)", r"\| nbdcopy --flush \(MB/s\)\s*\|[^|]*\|[^|]*\|\s*([\d.]+)x", True),
        ("4K QD32 vs nbdkit (x)", r"\| 4 KiB random writes QD32 \(IOPS\)\s*\|[^|]*\|[^|]*\|\s*([\d.]+)x", True),
        # absolute numbers too: on a loaded machine the nbdkit baseline itself swings, and with it the ratio
        ("lifeboat nbdcopy (MB/s)", r"lifeboat\s+nbdcopy\s+([\d.]+) MB/s", True),
        ("lifeboat 4K QD32 (IOPS)", r"lifeboat\s+nbdcopy\s+[\d.]+ MB/s\s+4K QD32\s+([\d,]+) IOPS", True)]),
    "initial": (["bench/initial_replication.py", "--quick"], [
        ("initial sync vs ceiling (x)", r"lifeboat protect -> protected.*?\|\s*([\d.]+)x \(target", True)]),
    "churn": (["bench/churn.py", "--quick"], [
        ("RPO p99 at 50 MB/s (s)", r"\| RPO p99 at [^|]*\|\s*([\d.]+) s", False),
        ("highest churn held (MB/s)", r"\| highest churn held\s*\|\s*([\d.]+) MB/s", True)]),
    "resync": (["bench/resync.py", "--size-mib", "512", "--sparse-gib", "8"], [
        ("resync time vs rsync (x)", r"ratio lifeboat / rsync\s+time ([\d.]+)", False),
        ("crash resync time vs full compare (x)", r"^\s*ratio\s+time ([\d.]+)", False),
        # absolute times too: both baselines move on a shared machine, and the full compare is Lifeboat's own code
        ("lifeboat resync --now (s)", r"lifeboat resync --now\s+([\d.]+) s", False),
        ("resync after a crash (s)", r"resync after crash \(activity-log extents\)\s+([\d.]+) s", False),
        ("full-disk compare (s)", r"baseline: full-disk compare\s+([\d.]+) s", False)]),
}


def checkout(rev: str, where: Path) -> Path:
    path = where / f"base-{rev[:12]}"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(path), rev], check=True,
                   capture_output=True)
    (path / ".venv").symlink_to(REPO / ".venv")
    if (REPO / ".cache").exists():
        (path / ".cache").symlink_to(REPO / ".cache")
    return path


def run(tree: Path, args: list[str], log: Path) -> str:
    t = time.monotonic()
    p = subprocess.run([str(VENV_PY), *args], cwd=tree, capture_output=True, text=True, timeout=1800)
    log.write_text(p.stdout + "\n--- stderr ---\n" + p.stderr)
    print(f"    {tree.name:<20} {' '.join(args):<45} {time.monotonic() - t:6.1f} s  (exit {p.returncode})",
          flush=True)
    return p.stdout


def main() -> int:
    ensure_venv()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="git revision to compare against (e.g. the commit before a change)")
    ap.add_argument("--benches", default="capture,initial,churn,resync")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds per bench (the best of each is kept)")
    ap.add_argument("--logs", help="keep every run's output in this folder")
    a = ap.parse_args()
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", a.base], capture_output=True, text=True,
                         check=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    work = Path(tempfile.mkdtemp(prefix="lifeboat-revisions-"))
    logs = Path(a.logs) if a.logs else work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    base = checkout(rev, work)
    trees = {"base": base, "new": REPO}
    rows = []
    try:
        for name in a.benches.split(","):
            args, metrics = BENCHES[name]
            found: dict[str, dict[str, list[float]]] = {"base": {}, "new": {}}
            print(f"{name}:", flush=True)
            for r in range(a.rounds):
                for side in (("base", "new") if r % 2 == 0 else ("new", "base")):
                    out = run(trees[side], args, logs / f"{name}-{side}-{r}.log")
                    for label, rx, _ in metrics:
                        m = re.search(rx, out, re.M)
                        if m:
                            found[side].setdefault(label, []).append(float(m.group(1).replace(",", "")))
            for label, _, higher in metrics:
                pick = max if higher else min
                b = pick(found["base"].get(label, [float("nan")]))
                n = pick(found["new"].get(label, [float("nan")]))
                change = n / b if b == b and n == n and b else float("nan")
                better = (change >= 1) if higher else (change <= 1)
                rows.append([name, label, f"{b:g}", f"{n:g}", f"{change:.2f}",
                             "higher" if higher else "lower", "ok" if better else ("~" if abs(change - 1) < 0.1
                                                                                   else "WORSE")])
        print(f"\nbase {rev[:10]} vs new {head} (best of {a.rounds}; ratios are each run's own baseline):")
        print(table(rows, ["bench", "headline", "base", "new", "new / base", "better", "verdict"]))
        print(f"logs: {logs}")
        return 0
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], capture_output=True)
        if not a.logs:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
