"""Torture run (issue 3): churn through the agent's export while SIGKILLing the agent and the appliance at random
moments, many more times than CI does; then every listed point is recovered and compared with the source's
recorded history (tests/engine/torture.py). Reports kills survived and bytes lost (must be 0).

Run: ``.venv/bin/python bench/torture.py [--kills 200] [--seed 7]``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_tmp, ensure_venv  # noqa: E402

ensure_venv()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    from tests.engine.torture import run_torture
    tmp = bench_tmp("torture")
    try:
        rep = asyncio.run(run_torture(tmp, kills=a.kills, seed=a.seed))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [("kills survived", f"{sum(rep.kills.values())} (agent {rep.kills['agent']}, "
                               f"appliance {rep.kills['appliance']})"),
            ("write steps", f"{rep.steps} ({rep.failed_steps} cut by a kill)"),
            ("bookmarks", str(rep.bookmarks)),
            ("points recovered and compared", str(rep.points_checked)),
            ("mismatches", str(len(rep.mismatches))),
            ("bytes lost", str(rep.bytes_lost)),
            ("duration", f"{rep.seconds:.0f} s")]
    for k, v in rows:
        print(f"  {k:<32} {v}")
    for m in rep.mismatches:
        print("  MISMATCH:", m)
    sys.exit(1 if rep.mismatches or rep.bytes_lost else 0)


if __name__ == "__main__":
    main()
