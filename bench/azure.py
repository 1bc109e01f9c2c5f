"""Initial replication into the Azure Blob vault (Azurite) vs the azure-storage-blob SDK's own concurrent page upload.

* Lifeboat: appliance and agent as separate processes, the appliance's vault set to an Azurite container with
  ``lifeboat vault set --kind azure``; the clock starts at protect and stops (1) when the status says "protected"
  (every record durable in the cache logs) and (2) when the applier has written everything into the page blob
  (``meta.json`` ``applied_seq`` = the last logged seq): the replica is complete. (2) is the number compared.
* Ceiling (same run, same Azurite, one process): ``BlobClient.upload_blob(disk, blob_type="PageBlob",
  max_concurrency=8)``: the SDK reads the disk in 4 MiB chunks, skips all-zero ones and uploads the rest in parallel.

Throughput is the disk's size over the time (MB = 10^6 bytes). Target: Lifeboat ≥ 0.7× the SDK.

Then, on the same protected machine, **steady churn**: ``bench/churn.py``'s paced writer (random 64 KiB–1 MiB writes,
QD 16, through the agent's export) at ``--churn-rate`` MB/s (default 50) for ``--churn-seconds`` (default 60), RPO
sampled from the status every 0.5 s. Target: RPO p99 ≤ 5 s, the rate achieved (≥ 95 %).

    .venv/bin/python bench/azure.py [--quick] [--size-mib 2048] [--churn-seconds 60] [--churn-rate 50] [--verify]
                                    [--rounds 2] [--warm-gib 4] [--profile] [--perf] [--keep]

Each arm runs ``--rounds`` times, in ABBA order (SDK, Lifeboat, Lifeboat, SDK, SDK, Lifeboat, ...; each Lifeboat
arm a new appliance, agent and container), and each arm's best is compared (as ``capture.py`` does); the medians are
printed too. The same number of runs per arm keeps the best-of fair (until session 8 the SDK had one run more).
Each run also prints the cores each process used, Azurite's included: on a small machine Azurite shares the cores
with the SDK process in one arm and with the appliance and the agent in the other. Just before each arm
``--warm-gib`` of memory is touched and freed, so no arm starts on memory this kind of VM has handed back to its
host (``_common.warm_memory``; ``--warm-gib 0`` for the raw numbers).

``--profile`` / ``--perf``: py-spy / ``perf record -g`` of the appliance and the agent from protect to page blob
complete, summarised after the run (they perturb the timing: not ratio runs).

``--verify``: after the timed part, read the page blob back and compare its sha256 with the source disk's.

Needs Azurite (scripts/setup.sh: ``.tools/azurite``) and the SDK (``pip install -e '.[dev]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import _common as C

C.ensure_venv()

from churn import MIN_ACHIEVED, P99_SUSTAINED, write_phase  # noqa: E402
from initial_replication import build_disk, copy_sparse  # noqa: E402

from tests.azurite import KEY, Azurite, azurite_missing  # noqa: E402

# this file is named azure.py: drop its folder from the path so `import azure` finds the SDK, not this script
_here = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != Path(_here)]

TARGET = 0.7


def arm_order(rounds: int) -> list[str]:
    """The arms in ABBA order (sdk, lb, lb, sdk, sdk, lb, ...): each arm runs ``rounds`` times, so neither's best
    of its runs is favoured by having more of them, and a drift of the machine over the run hits both alike."""
    return [arm for i in range(rounds) for arm in (("sdk", "lb") if i % 2 == 0 else ("lb", "sdk"))]


def sdk_upload(url: str, container: str, disk: Path) -> float:
    from azure.storage.blob import BlobServiceClient
    svc = BlobServiceClient(account_url=url, credential={"account_name": "devstoreaccount1", "account_key": KEY},
                            api_version="2021-12-02")
    bc = svc.get_blob_client(container, f"sdk-{uuid.uuid4().hex[:8]}")
    t0 = time.perf_counter()
    with open(disk, "rb") as f:
        bc.upload_blob(f, blob_type="PageBlob", length=os.path.getsize(disk), max_concurrency=8)
    dt = time.perf_counter() - t0
    bc.delete_blob()
    return dt


def applied(url: str, container: str) -> tuple[int, int]:
    """(applied_seq, last logged seq) of vm1 in the container."""
    from engine.vault.azure.rest import AzureBlobClient, Credential
    c = AzureBlobClient(url, container, Credential(key=KEY), retry_for=5)
    try:
        meta = json.loads(c.get_blob("vm1/meta.json"))
        last = max((int(i.metadata.get("lastseq", 0)) for i in c.list_blobs("vm1/logs/")), default=0)
        return int(meta["applied_seq"]), last
    finally:
        c.close()


def page_blob_sha(url: str, container: str, size: int) -> str:
    """sha256 of vm1's disk 0 page blob, its first ``size`` bytes (read in 8 MiB ranges)."""
    import hashlib
    from engine.vault.azure.rest import AzureBlobClient, Credential
    c = AzureBlobClient(url, container, Credential(key=KEY), retry_for=30)
    h = hashlib.sha256()
    try:
        for off in range(0, size, 8 * C.MiB):
            n = min(8 * C.MiB, size - off)
            data = c.get_blob("vm1/disks/0", offset=off, length=n)
            if len(data) != n:
                raise RuntimeError(f"page blob read at {off}: {len(data)} of {n} bytes")
            h.update(data)
    finally:
        c.close()
    return h.hexdigest()


def file_sha(path: Path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * C.MiB):
            h.update(chunk)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="512 MiB disk")
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "lifeboat-bench-cache"))
    ap.add_argument("--tmp")
    ap.add_argument("--churn-rate", type=float, default=50.0, help="MB/s of the churn phase")
    ap.add_argument("--churn-seconds", type=float, default=60.0, help="seconds of the churn phase (0: none)")
    ap.add_argument("--verify", action="store_true",
                    help="after the timed part, compare the page blob's sha256 with the source disk's")
    ap.add_argument("--azurite-storage", metavar="DIR",
                    help="Azurite's folder under DIR (e.g. /dev/shm) instead of beside the appliance: a real account's "
                         "storage is not on the appliance's disk, so its writes do not compete with the cache's fsyncs")
    ap.add_argument("--profile", action="store_true",
                    help="py-spy (on-CPU samples, not idle) the appliance and the agent from protect to page blob "
                         "complete; prints the top functions of each (perturbs the timing: not a ratio run)")
    ap.add_argument("--perf", action="store_true",
                    help="perf record -g the appliance and the agent over the same span; CPU ms per MB by thread and "
                         "symbol (needs perf)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="runs of each arm, in ABBA order (SDK, Lifeboat, Lifeboat, SDK, ...); each arm's best is "
                         "compared, as capture.py does")
    ap.add_argument("--warm-gib", type=float, default=4.0,
                    help="touch and free this much memory just before each timed arm (0: off), so no arm starts on "
                         "memory the VM's balloon gave back to the host (see _common.warm_memory)")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    why = azurite_missing()
    if why:
        print(f"SKIP: {why}")
        return 2
    if a.quick:
        a.size_mib = 512
        a.churn_seconds = min(a.churn_seconds, 15.0)
    size = a.size_mib * C.MiB
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)
    master = cache / f"mixed-v1-{a.size_mib}m.img"
    if not master.exists():
        print(f"building the {a.size_mib} MiB mixed disk in {master} (once) ...", flush=True)
        build_disk(master, size)
    tmp = C.bench_tmp("azure", a.tmp)
    az_dir = Path(tempfile.mkdtemp(prefix="lifeboat-azurite-", dir=a.azurite_storage)) if a.azurite_storage \
        else tmp / "azurite"
    print(f"Azurite's storage: {az_dir}", flush=True)
    az = Azurite(az_dir)
    az.start()
    site = None
    try:
        disk = tmp / "disk.img"
        copy_sparse(master, disk)
        alloc = os.stat(disk).st_blocks * 512
        print(f"disk {size / C.MiB:.0f} MiB, {alloc / C.MiB:.0f} MiB allocated; {a.rounds} rounds "
              f"({', '.join(arm_order(a.rounds))}), memory warmed {a.warm_gib:g} GiB before each arm", flush=True)
        sdk_container = "sdk" + uuid.uuid4().hex[:8]
        az.create_container(sdk_container)

        def settle() -> float | None:
            """Before each arm: what the previous arm left dirty in the page cache (Azurite's blobs) is written
            out first, so no arm pays for another's writeback; then the memory is warmed."""
            os.sync()
            return C.warm_memory(a.warm_gib)

        def az_cpu() -> float:
            """Azurite's CPU seconds so far (user + system): what each arm leaves Azurite of the machine's cores."""
            assert az.proc is not None
            return C.pid_cpu(az.proc.pid)

        def sdk_arm() -> dict:
            w = settle()
            me0, az0 = C.self_cpu(), az_cpu()
            s = sdk_upload(az.url, sdk_container, disk)
            run = {"s": s, "cpu": ((C.self_cpu() - me0) / s, (az_cpu() - az0) / s)}
            print(f"  SDK {s:.2f}s (SDK process {run['cpu'][0]:.2f} / Azurite {run['cpu'][1]:.2f} cores)"
                  + (f" (warmed in {w:.1f}s)" if w is not None else ""), flush=True)
            return run

        def lifeboat_arm(i: int, first: bool) -> dict:
            container = "bench" + uuid.uuid4().hex[:8]
            az.create_container(container)

            def vault_setup(site: C.Site) -> None:
                r = subprocess.run([*C.LIFEBOAT, "vault", "set", "--home", str(site.ahome), "--kind", "azure",
                                    "--account-url", az.url, "--container", container, "--key-stdin"],
                                   input=KEY + "\n", capture_output=True, text=True, cwd=C.REPO, timeout=60)
                if r.returncode:
                    raise RuntimeError(f"vault set failed: {r.stderr}")

            site = C.Site(tmp / f"round{i}", disk, vault_setup=vault_setup)
            site.tmp.mkdir()
            run: dict = {"site": site, "container": container}
            try:
                site.start()
                roles = site.roles()
                spies = []
                if a.profile and first:
                    import _profile as P
                    exe = str(P.PYSPY)
                    for p in roles:
                        out = tmp / f"spy-{p.name}.txt"
                        spies.append((p, out, subprocess.Popen(
                            [exe, "record", "-p", str(p.pid), "-r", "100", "--threads", "--nonblocking", "-f", "raw",
                             "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
                    time.sleep(1.0)
                perf = None
                if a.perf and first:
                    import _profile as P
                    perf = P.start_perf(roles, tmp / "perf.data")
                    time.sleep(1.0)
                w = settle()
                cpu0 = [p.cpu() for p in roles] + [az_cpu()]
                t0 = time.monotonic()
                site.protect()
                t1 = site.wait_state("protected", 3600)
                run["prot_s"] = t1 - t0
                while True:
                    done, last = applied(az.url, container)
                    if last and done >= last:
                        break
                    time.sleep(0.2)
                lb_s = run["lb_s"] = time.monotonic() - t0
                run["cpu"] = [(now - c) / lb_s for now, c in zip([p.cpu() for p in roles] + [az_cpu()], cpu0)]
                if perf is not None:
                    P.stop(perf, timeout=300)
                    print(f"\nperf of the appliance and the agent:\n{P.perf_summary(tmp / 'perf.data', size, top=40)}",
                          flush=True)
                for p, out, rec in spies:
                    P.stop(rec)
                    print(f"\npy-spy of the {p.name} ({out}):\n{P.spy_summary(out, lb_s, rate=100, top=30)}",
                          flush=True)
                m = site.machine()
                run["rss"] = (site.app.peak_rss(), site.agent.peak_rss())
                print(f"  Lifeboat {lb_s:.2f}s (protected after {run['prot_s']:.2f}s; appliance {run['cpu'][0]:.2f} / "
                      f"agent {run['cpu'][1]:.2f} / Azurite {run['cpu'][2]:.2f} cores; "
                      f"peak RSS {run['rss'][0] / 1e6:.0f} / {run['rss'][1] / 1e6:.0f} MB; "
                      f"state {m.get('state')}, points {m.get('points')}, error {m.get('error')})"
                      + (f" (warmed in {w:.1f}s)" if w is not None else ""), flush=True)
                if a.verify:
                    t = time.monotonic()
                    want, got = file_sha(disk), page_blob_sha(az.url, container, size)
                    run["verify"] = want == got
                    print(f"  verify: page blob sha256 {got[:16]}..., source disk {want[:16]}... "
                          f"({time.monotonic() - t:.1f}s) {C.verdict(run['verify'])}", flush=True)
            except BaseException:
                C.finish(site)
                raise
            return run

        sdk_all: list[dict] = []
        lb_runs: list[dict] = []
        for arm in arm_order(a.rounds):
            if arm == "sdk":
                sdk_all.append(sdk_arm())
                continue
            if site is not None:     # the previous round's roles; the last round's stay for the churn
                C.finish(site)
                site = None
            lb_runs.append(lifeboat_arm(len(lb_runs) + 1, first=not lb_runs))
            site = lb_runs[-1]["site"]
        sdk_runs = [r["s"] for r in sdk_all]
        sdk_best = min(sdk_all, key=lambda r: r["s"])
        best = min(lb_runs, key=lambda r: r["lb_s"])
        sdk_s, lb_s = sdk_best["s"], best["lb_s"]
        lb_mbps, sdk_mbps = size / lb_s / 1e6, size / sdk_s / 1e6
        ratio = lb_mbps / sdk_mbps
        med_ratio = statistics.median(sdk_runs) / statistics.median(r["lb_s"] for r in lb_runs)
        print(f"\nInitial replication of a {a.size_mib} MiB mixed disk ({alloc / C.MiB:.0f} MiB allocated) "
              f"into Azurite, best of each arm over {a.rounds} runs each (ABBA order):")
        print(C.table([
            ["SDK upload_blob PageBlob, max_concurrency=8", f"{sdk_s:.2f}", sdk_mbps,
             "runs " + " / ".join(f"{s:.2f}s" for s in sdk_runs),
             f"SDK process {sdk_best['cpu'][0]:.2f} / Azurite {sdk_best['cpu'][1]:.2f} cores", ""],
            ["lifeboat protect -> protected (cache logs)", f"{best['prot_s']:.2f}", size / best["prot_s"] / 1e6,
             "", "", ""],
            ["lifeboat protect -> page blob complete", f"{lb_s:.2f}", lb_mbps,
             "runs " + " / ".join(f"{r['lb_s']:.2f}s" for r in lb_runs),
             f"appliance {best['cpu'][0]:.2f} / agent {best['cpu'][1]:.2f} / Azurite {best['cpu'][2]:.2f} cores",
             f"{ratio:.2f}x (target >= {TARGET}x) {C.verdict(ratio >= TARGET)}"],
        ], ["pipeline", "seconds", "MB/s (disk size)", "note", "CPU", "ratio"]))
        print(f"median of each arm: {med_ratio:.2f}x")
        verify_ok = all(r.get("verify", True) for r in lb_runs)
        churn_ok = True
        if a.churn_seconds > 0:
            print(f"\nchurn: {a.churn_rate:g} MB/s for {a.churn_seconds:g}s into the Azure vault ...", flush=True)
            r = write_phase(site.nbd_url, a.churn_rate, a.churn_seconds, site, seed=1)
            drain = site.wait_caught_up()
            churn_ok = r["rpo_p99"] <= P99_SUSTAINED and r["achieved_mbps"] >= MIN_ACHIEVED * a.churn_rate
            m = site.machine()
            print(C.table([[f"{a.churn_rate:g}", r["achieved_mbps"], f"{r['rpo_p50']:.2f}", f"{r['rpo_p99']:.2f}",
                            f"{r['rpo_max']:.2f}", f"{r['lat_p99_ms']:.1f}", f"{drain:.1f}",
                            f"{r['cpu'][0]:.2f} / {r['cpu'][1]:.2f}", f"{r['rss_max'] / 1e6:.0f}",
                            C.verdict(churn_ok)]],
                          ["target MB/s", "lifeboat MB/s", "RPO p50 s", "RPO p99 s", "RPO max s", "write p99 ms",
                           "drain s", "CPU app/agent", "RSS max MB", "p99<=5s"]))
            print(f"points {m.get('points')}, error {m.get('error')}")
        return 0 if ratio >= TARGET and churn_ok and verify_ok else 1
    finally:
        C.finish(site, [], tmp, a.keep)
        az.stop()
        if a.azurite_storage and not a.keep:
            shutil.rmtree(az_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
