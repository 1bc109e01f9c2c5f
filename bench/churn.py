"""Sustained churn: RPO under a paced writer, the highest churn the pipeline holds, and per-role peak memory.

Setup: an appliance and an agent as separate processes (``lifeboat appliance run`` / ``agent run``), one sparse
disk (default 4 GiB, so the initial sync is instant), machine protected. A paced writer
(``bench/_nbd_writer.py`` under Debian's ``/usr/bin/python3`` with libnbd: random 64 KiB–1 MiB writes at random
offsets, half random / half text data, open-loop token-bucket pacing, QD 16) writes through the agent's export
while this script samples ``rpo_seconds`` from the status API (as ``lifeboat status --json``) every 0.5 s.

1. Sustained: ``--rate`` MB/s (default 50) for ``--duration`` s (default 60) → RPO p50 / p99 / max.
   Target: p99 ≤ 5 s.
2. Ramp: ``--steps`` (default 100,150,200,300 MB/s) for ``--step-duration`` s each (default 20), waiting for the
   pipeline to drain (RPO back to 0) between steps. A rate is *held* when the writer achieved ≥ 95% of it, RPO p99
   ≤ 10 s, and RPO is not growing (least-squares slope over the second half of the window ≤ 0.1 s/s). Stops at
   the first rate not held (``--all`` goes on). Target: ≥ 150 MB/s held on 2 cores.
3. Peak memory: VmHWM of each role process over the whole run. Target: ≤ 300 MB each.

The baseline measured in the same run is the writer against ``nbdkit file`` (same writer, same rates): what the
disk and client alone can do, so a rate the baseline cannot reach is not held against Lifeboat.

    .venv/bin/python bench/churn.py [--quick] [--rate 50] [--duration 60] [--steps 100,150,200,300] [--keep]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
import _profile as P

C.ensure_venv()

WRITER = [("/usr/bin/python3"), str(Path(__file__).resolve().parent / "_nbd_writer.py")]
P99_SUSTAINED, P99_STEP, SLOPE_MAX, MIN_ACHIEVED, MEM_MAX, HOLD_TARGET = 5.0, 10.0, 0.1, 0.95, 300e6, 150


def slope(pts: list[tuple[float, float]]) -> float:
    if len(pts) < 3:
        return 0.0
    n = len(pts)
    mx, my = sum(t for t, _ in pts) / n, sum(v for _, v in pts) / n
    den = sum((t - mx) ** 2 for t, _ in pts)
    return sum((t - mx) * (v - my) for t, v in pts) / den if den else 0.0


def write_phase(url: str, rate: float, seconds: float, site: C.Site | None, seed: int,
                profile: Path | None = None) -> dict:
    """Run the writer; with a site, sample RPO, cache size and role CPU meanwhile (and py-spy the roles)."""
    cmd = [*WRITER, "--uri", url, "--rate", str(rate), "--duration", str(seconds), "--seed", str(seed)]
    roles = site.roles() if site else []
    spies = [P.start_spy(p, profile.with_suffix(f".{p.name}")) for p in roles] if profile else []
    cpu0, t0 = [p.cpu() for p in roles], time.monotonic()
    w = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[float, float]] = []
    cache_max = rss_max = 0
    while w.poll() is None:
        if site:
            m = site.machine()
            samples.append((time.monotonic() - t0, float(m.get("rpo_seconds", 0.0))))
            cache_max = max(cache_max, m.get("cache_bytes", 0))
            rss_max = max([rss_max] + [p.rss() for p in roles])
            site.check_alive()
        time.sleep(0.5)
    out, err = w.communicate()
    wall = time.monotonic() - t0
    for sp in spies:
        P.stop(sp)
    if w.returncode != 0 or not out.strip():
        raise RuntimeError(f"writer failed ({w.returncode}) against {url}:\n{err[-3000:]}")
    res = json.loads(out.strip().splitlines()[-1])
    res["cpu"] = [(p.cpu() - c) / wall for p, c in zip(roles, cpu0)]
    if samples:
        rpos = [v for _, v in samples]
        half = [s for s in samples if s[0] >= seconds / 2]
        res.update(rpo_p50=C.pct(rpos, 50), rpo_p99=C.pct(rpos, 99), rpo_max=max(rpos), rpo_slope=slope(half),
                   rpo_last=rpos[-1], cache_max=cache_max, rss_max=rss_max, samples=len(samples))
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="15 s sustained, steps 100,150,200 of 8 s, 2 GiB disk")
    ap.add_argument("--rate", type=float, default=50.0, help="sustained phase MB/s")
    ap.add_argument("--duration", type=float, default=60.0, help="sustained phase seconds")
    ap.add_argument("--steps", default="100,150,200,300", help="ramp rates, MB/s")
    ap.add_argument("--step-duration", type=float, default=20.0)
    ap.add_argument("--all", action="store_true", help="run every step even after one is not held")
    ap.add_argument("--disk-gib", type=float, default=4.0)
    ap.add_argument("--profile", action="store_true", help="py-spy the roles in each step; print the last one")
    ap.add_argument("--no-baseline", action="store_true", help="skip the nbdkit runs")
    ap.add_argument("--tmp", help="parent folder for the run's files (default: system temp)")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.duration, a.steps, a.step_duration, a.disk_gib = min(a.duration, 15.0), "100,150,200", 8.0, 2.0
    C.need("nbdkit")
    steps = [float(s) for s in a.steps.split(",") if s]
    size = int(a.disk_gib * C.GiB)
    tmp = C.bench_tmp("churn", a.tmp)
    site = kit = None
    try:
        site = C.Site(tmp, C.make_sparse(tmp / "disk.img", size)).start()
        site.protect()
        site.wait_state("protected", 120)
        if not a.no_baseline:
            kit, kit_url = C.start_nbdkit(tmp, C.make_sparse(tmp / "nbdkit.img", size))
        print(f"appliance pid {site.app.pid}, agent pid {site.agent.pid}; protected; disk {a.disk_gib:g} GiB",
              flush=True)

        def baseline(rate: float, secs: float) -> str:
            if not kit:
                return "-"
            b = write_phase(kit_url, rate, secs, None, seed=2)
            return f"{b['achieved_mbps']:.0f}"

        print(f"sustained: {a.rate:g} MB/s for {a.duration:g}s ...", flush=True)
        s = write_phase(site.nbd_url, a.rate, a.duration, site, seed=1)
        s_drain = site.wait_caught_up()
        s_base = baseline(a.rate, min(a.duration, 10))
        sus_ok = s["rpo_p99"] <= P99_SUSTAINED and s["achieved_mbps"] >= MIN_ACHIEVED * a.rate
        print(C.table([[f"{a.rate:g}", s_base, s["achieved_mbps"], f"{s['rpo_p50']:.2f}", f"{s['rpo_p99']:.2f}",
                        f"{s['rpo_max']:.2f}", f"{s['lat_p99_ms']:.1f}", f"{s_drain:.1f}",
                        f"{s['cpu'][0]:.2f} / {s['cpu'][1]:.2f}", C.verdict(sus_ok)]],
                      ["target MB/s", "nbdkit MB/s", "lifeboat MB/s", "RPO p50 s", "RPO p99 s", "RPO max s",
                       "write p99 ms", "drain s", "CPU app/agent", "p99<=5s"]), flush=True)

        rows, held = [], 0.0
        for i, rate in enumerate(steps):
            print(f"step {rate:g} MB/s for {a.step_duration:g}s ...", flush=True)
            prof = tmp / f"step{i}.pyspy" if a.profile else None
            r = write_phase(site.nbd_url, rate, a.step_duration, site, seed=10 + i, profile=prof)
            try:
                drain = f"{site.wait_caught_up(timeout=max(120.0, 6 * a.step_duration)):.1f}"
            except TimeoutError as e:
                drain = f"> {max(120.0, 6 * a.step_duration):.0f} ({e})"
            base = baseline(rate, a.step_duration)
            ok = (r["achieved_mbps"] >= MIN_ACHIEVED * rate and r["rpo_p99"] <= P99_STEP
                  and r["rpo_slope"] <= SLOPE_MAX)
            held = max(held, rate) if ok else held
            rows.append([f"{rate:g}", base, r["achieved_mbps"], f"{r['rpo_p50']:.2f}", f"{r['rpo_p99']:.2f}",
                         f"{r['rpo_slope']:+.3f}", f"{r['lag_p99_s']:.2f}", f"{r['cache_max'] / C.MiB:.0f}",
                         f"{r['cpu'][0]:.2f} / {r['cpu'][1]:.2f}", drain, "held" if ok else "NOT held"])
            print(C.table(rows[-1:], HEAD), flush=True)
            if not ok and not a.all:
                break
            if drain.startswith(">"):
                break
        mem = {p.name: p.peak_rss() for p in site.roles()}
        if a.profile:
            for p in site.roles():
                print(f"\npy-spy {p.name} (pid {p.pid}) during the last step ({rows[-1][0]} MB/s):")
                print(P.spy_summary(prof.with_suffix(f".{p.name}"), a.step_duration))
        print(f"\nRamp ({a.step_duration:g}s per step; held = achieved >= {MIN_ACHIEVED:.0%} of target, RPO p99 <= "
              f"{P99_STEP:g}s, RPO slope <= {SLOPE_MAX} s/s over the second half):")
        print(C.table(rows, HEAD))
        print("\nSummary:")
        print(C.table([
            [f"RPO p99 at {a.rate:g} MB/s sustained ({a.duration:g}s)", f"{s['rpo_p99']:.2f} s", "<= 5 s",
             C.verdict(sus_ok)],
            ["highest churn held", f"{held:g} MB/s", f">= {HOLD_TARGET} MB/s", C.verdict(held >= HOLD_TARGET)],
            *[[f"peak RSS {n} (VmHWM)", f"{v / 1e6:.0f} MB", "<= 300 MB", C.verdict(v <= MEM_MAX)]
              for n, v in mem.items()],
        ], ["metric", "lifeboat", "target", "verdict"]))
        return 0 if sus_ok and held >= HOLD_TARGET and all(v <= MEM_MAX for v in mem.values()) else 1
    finally:
        C.finish(site, [kit] if kit else [], tmp, a.keep)


HEAD = ["target MB/s", "nbdkit MB/s", "lifeboat MB/s", "RPO p50 s", "RPO p99 s", "RPO slope s/s", "writer lag p99 s",
        "cache max MiB", "CPU app/agent", "drain s", "verdict"]

if __name__ == "__main__":
    sys.exit(main())
