"""What the replication link's mutual TLS costs on its own, per MB, on this machine: the floor under
``capture.py``'s Lifeboat numbers, next to the nbdkit baseline's whole cost (about 0.4 CPU ms per MB there).

Two processes on loopback, with the project's own certificates (``engine.pki``, the same contexts as the roles):

* the sender is the agent's :class:`~engine.agent.link.Link` (TLS over memory BIOs in its own thread), sending
  ``--mib`` MiB in 1 MiB frames;
* the receiver is either an asyncio SSL server with a ``BufferedProtocol`` (what the process server uses), or a
  plain thread over memory BIOs (64 KiB ``recv`` calls), for comparison.

Each side's CPU (user + system, from ``getrusage``) is divided by the MB moved. The cipher negotiated is printed.

    .venv/bin/python bench/tls_link.py [--mib 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

C.ensure_venv()

from engine import pki  # noqa: E402
from engine.agent.link import bio_handshake  # noqa: E402

FRAME = 1 << 20


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def make_pki(d: Path) -> None:
    ca = pki.CA.create("bench CA")
    ca.save(d / "ca.pem", d / "ca.key")
    for name, server in (("server", True), ("client", False)):
        key = pki.new_key()
        cert = ca.issue(key.public_key(), name, server=server, hosts=["127.0.0.1"])
        (d / f"{name}.pem").write_bytes(pki.cert_pem(cert))
        pki.write_private(d / f"{name}.key", pki.key_pem(key))


def sender(d: Path, port: int, total: int) -> None:
    from engine.agent.link import Link
    from engine.wire import Frame

    async def go() -> dict:
        ctx = pki.client_context(d / "ca.pem", d / "client.pem", d / "client.key")
        link = await Link.open("127.0.0.1", port, ctx, 10.0)
        c0 = _cpu()
        data = os.urandom(FRAME)
        for _ in range(total // FRAME):
            link.write_frame(Frame.BATCH, data)
            if link.queued > 8 * FRAME:
                await link.drain()
        while link.unsent():
            await asyncio.sleep(0.001)
        out = {"cpu": _cpu() - c0, "cipher": link.tls.cipher()[0]}
        link.close()
        return out

    print(json.dumps(asyncio.run(go())), flush=True)


def receive_asyncio(d: Path, total: int) -> tuple[float, float, dict]:
    class Counter(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.buf = memoryview(bytearray(256 * 1024))
            self.n = 0

        def get_buffer(self, sizehint: int) -> memoryview:
            return self.buf

        def buffer_updated(self, nbytes: int) -> None:
            self.n += nbytes
            if self.n >= total and not done.done():
                done.set_result(time.monotonic())

        def connection_lost(self, exc: Exception | None) -> None:
            if not done.done():
                done.set_result(time.monotonic())

    async def go() -> tuple[float, float, dict]:
        global done
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        ctx = pki.server_context(d / "server.pem", d / "server.key", d / "ca.pem", require_client=True)
        srv = await loop.create_server(Counter, "127.0.0.1", 0, ssl=ctx)
        port = srv.sockets[0].getsockname()[1]
        p = subprocess.Popen([sys.executable, __file__, "--send", str(d), str(port), str(total)],
                             stdout=subprocess.PIPE, text=True)
        c0, t0 = _cpu(), time.monotonic()
        t1 = await done
        cpu = _cpu() - c0
        out = await loop.run_in_executor(None, p.communicate)
        srv.close()
        return t1 - t0, cpu, json.loads(out[0])

    return asyncio.run(go())


def receive_bio(d: Path, total: int) -> tuple[float, float, dict]:
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen()
    port = ls.getsockname()[1]
    p = subprocess.Popen([sys.executable, __file__, "--send", str(d), str(port), str(total)],
                         stdout=subprocess.PIPE, text=True)
    s, _ = ls.accept()
    ls.close()
    bio_in, bio_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    ctx = pki.server_context(d / "server.pem", d / "server.key", d / "ca.pem", require_client=True)
    tls = ctx.wrap_bio(bio_in, bio_out, server_side=True)
    bio_handshake(s, tls, bio_in, bio_out)
    buf = bytearray(4 << 20)
    n = 0
    c0, t0 = _cpu(), time.monotonic()
    while n < total:
        data = s.recv(65536)
        if not data:
            break
        bio_in.write(data)
        while True:
            try:
                k = tls.read(len(buf), buf)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
            if not k:
                break
            n += k
        if bio_out.pending:
            s.sendall(bio_out.read())
    secs, cpu = time.monotonic() - t0, _cpu() - c0
    out = p.communicate()[0]
    s.close()
    return secs, cpu, json.loads(out)


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--send":
        sender(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    tmp = C.bench_tmp("tls", None)
    total = a.mib * C.MiB
    mb = total / 1e6
    rows = []
    try:
        make_pki(tmp)
        best: dict[str, tuple[float, float, float]] = {}
        cipher = "?"
        for _ in range(a.reps):
            for name, fn in (("asyncio SSL (process server)", receive_asyncio), ("memory-BIO thread", receive_bio)):
                secs, cpu, snd = fn(tmp, total)
                cipher = snd["cipher"]
                cur = (mb / secs, snd["cpu"] * 1000 / mb, cpu * 1000 / mb)
                if name not in best or cur[0] > best[name][0]:
                    best[name] = cur
        for name, (mbps, s_ms, r_ms) in best.items():
            rows.append([name, f"{mbps:,.0f}", f"{s_ms:.3f}", f"{r_ms:.3f}", f"{s_ms + r_ms:.3f}"])
    finally:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nMutual TLS over loopback, {a.mib} MiB in 1 MiB frames, best of {a.reps} ({cipher}); "
          f"sender: the agent's Link:")
    print(C.table(rows, ["receiver", "MB/s", "sender CPU ms/MB", "receiver CPU ms/MB", "both ms/MB"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
