"""The Azure vault alone: direct appends one at a time vs overlapped (issue 15).

1 GiB of 1 MiB SYNC records, handed in plain (``takes_plain``) in 16 MiB appends (``DIRECT_BATCH``), into a fresh
machine of an Azurite container: (a) each append awaited before the next, as the applier did before; (b) the next
append called while the previous one is in flight, at most 2 (``overlaps_appends``), as the applier does now.
Alternated in one sitting; no agent, process server or TLS: only the vault and Azurite share the machine.
``--delay-ms D``: through ``tests/faultproxy.py`` forwarding every chunk D ms late each way (a WAN's round trip).

    .venv/bin/python bench/azure_overlap_micro.py [--rounds 4] [--mib 1024] [--delay-ms 0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.records import Kind, Record  # noqa: E402
from engine.vault.azure.rest import AzureBlobClient, Credential  # noqa: E402
from engine.vault.azure.direct import DIRECT_BATCH  # noqa: E402
from engine.vault.azure.vault import AzureVault  # noqa: E402
from engine.vault.base import DiskInfo, SealedRecord  # noqa: E402
from tests.azurite import ACCOUNT, KEY, Azurite, azurite_missing  # noqa: E402
from tests.faultproxy import FaultProxy  # noqa: E402

MiB = 1024 * 1024


def batches(size: int, bufs: list[bytes]):
    out: list[SealedRecord] = []
    for seq, off in enumerate(range(0, size, MiB), 1):
        r = Record(Kind.SYNC, 0, seq, time.time_ns(), off, MiB, bufs[seq % len(bufs)])
        r.pack_header()   # the payload hash, as the agent computes it
        out.append(SealedRecord(Record(r.kind, 0, seq, r.ts_ns, off, MiB, b"", r.hash), b"", {"data": r.data}))
        if len(out) * MiB >= DIRECT_BATCH:
            yield out
            out = []
    if out:
        yield out


async def run(url: str, container: str, size: int, bufs: list[bytes], in_flight: int) -> float:
    client = AzureBlobClient(url, container, Credential(key=KEY), retry_for=30)
    v = AzureVault(client, bytes(range(32)))
    mv = await v.open_machine("m" + uuid.uuid4().hex[:8])
    await mv.ensure_disks([DiskInfo(0, "d0", size)])
    t0 = time.perf_counter()
    tasks: list[asyncio.Task] = []
    for b in batches(size, bufs):
        while sum(not t.done() for t in tasks) >= in_flight:
            await asyncio.wait([t for t in tasks if not t.done()], return_when=asyncio.FIRST_COMPLETED)
        tasks.append(asyncio.create_task(mv.append(b)))
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    dt = time.perf_counter() - t0
    assert mv.last_seq == size // MiB and mv.applied_seq == mv.last_seq
    await v.close()
    return dt


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    a = ap.parse_args()
    why = azurite_missing()
    if why:
        print(f"SKIP: {why}")
        return 2
    size = a.mib * MiB
    bufs = [os.urandom(MiB) for _ in range(32)]
    with tempfile.TemporaryDirectory(prefix="lifeboat-azmicro-") as tmp:
        az = Azurite(Path(tmp) / "azurite")
        az.start()
        proxy = None
        try:
            az.create_container("micro")
            url = az.url
            if a.delay_ms:
                proxy = FaultProxy("127.0.0.1", az.port)
                url = f"http://127.0.0.1:{await proxy.start()}/{ACCOUNT}"
                proxy.delay(a.delay_ms / 1000)
            got: dict[int, list[float]] = {1: [], 2: []}
            for i in range(a.rounds):
                for n in (1, 2):
                    dt = await run(url, "micro", size, bufs, n)
                    got[n].append(size / dt / 1e6)
                    print(f"round {i + 1}, {n} in flight: {dt:.2f} s, {size / dt / 1e6:.0f} MB/s "
                          f"(load {os.getloadavg()[0]:.1f})", flush=True)
            for n, label in ((1, "one at a time"), (2, "overlapped (2)")):
                mbps = got[n]
                print(f"{label}: median {statistics.median(mbps):.0f} MB/s, min {min(mbps):.0f}, max {max(mbps):.0f}")
        finally:
            if proxy is not None:
                await proxy.stop()
            az.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
