"""Azurite (the Azure Storage emulator, blob service only) for tests and benches, and a small HTTP fault proxy.

``scripts/setup.sh`` installs Azurite with npm into ``.tools/azurite``. :class:`Azurite` starts ``azurite-blob`` on a
free port with its own folder and stops it with SIGTERM (SIGKILL loses acknowledged writes: Azurite flushes its
metadata every few seconds). :class:`HTTPFaultProxy` sits in front of it and answers chosen requests with
503/429 + ``Retry-After`` — before forwarding them, or after forwarding them (the write happened, the answer is lost).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
AZURITE = ROOT / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
#: Azurite's documented development key (public, not a secret)
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def azurite_missing() -> str | None:
    """Why Azurite cannot run here (None when it can)."""
    if not AZURITE.exists():
        return f"Azurite is not installed ({AZURITE}); scripts/setup.sh installs it with npm"
    return None


class Azurite:
    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location", str(self.folder),
             "--silent", "--disableTelemetry", "--skipApiVersionCheck", "--loose"],
            stdout=subprocess.DEVNULL, stderr=open(self.folder / "azurite.err", "ab"), start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"azurite did not start: {(self.folder / 'azurite.err').read_text()[-2000:]}")
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM (Azurite flushes its metadata); SIGKILL only if it does not exit within 20 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def create_container(self, name: str) -> None:
        from engine.vault.azure.rest import AzureBlobClient, Credential
        c = AzureBlobClient(self.url, name, Credential(key=KEY), retry_for=10)
        c.create_container()
        c.close()


class HTTPFaultProxy:
    """A real HTTP/1.1 reverse proxy (asyncio) in front of Azurite that injects throttling answers.

    ``fail(rate, status=503, retry_after=1, after=False, methods=("PUT",), match=None)``: that share of matching
    requests (``match``: a test on the request line, e.g. one blob's Put Page requests) is answered with ``status``
    and ``Retry-After``; with ``after`` the request is forwarded first and its real answer replaced (the write
    happened, the client does not know it). ``injected`` counts the faults sent.
    """

    def __init__(self, target_port: int, seed: int = 7) -> None:
        self.target_port = target_port
        self.port = 0
        self.rate = 0.0
        self.status = 503
        self.retry_after: str | None = "1"
        self.after = False
        self.methods: tuple[str, ...] = ("PUT",)
        self.match: Callable[[str], bool] | None = None
        self.injected = 0
        self.requests = 0
        self._rnd = random.Random(seed)
        self._server: asyncio.base_events.Server | None = None

    def fail(self, rate: float, *, status: int = 503, retry_after: str | None = "1", after: bool = False,
             methods: tuple[str, ...] = ("PUT",), match: Callable[[str], bool] | None = None) -> None:
        self.rate, self.status, self.retry_after, self.after, self.methods = rate, status, retry_after, after, methods
        self.match = match

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()

    async def _read_message(self, r: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes] | None:
        head = await r.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        hdrs = {}
        for ln in lines[1:]:
            if ":" in ln:
                k, v = ln.split(":", 1)
                hdrs[k.strip().lower()] = v.strip()
        body = b""
        if "content-length" in hdrs:
            body = await r.readexactly(int(hdrs["content-length"]))
        elif hdrs.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await r.readuntil(b"\r\n")).strip(), 16)
                chunk = await r.readexactly(size + 2)
                body += chunk[:-2]
                if size == 0:
                    break
            hdrs.pop("transfer-encoding")
            hdrs["content-length"] = str(len(body))
            head = "\r\n".join([lines[0]] + [f"{k}: {v}" for k, v in hdrs.items()]).encode() + b"\r\n\r\n"
        return head, hdrs, body

    def _fault(self) -> bytes:
        self.injected += 1
        extra = f"Retry-After: {self.retry_after}\r\n" if self.retry_after is not None else ""
        body = b"<?xml version=\"1.0\"?><Error><Code>ServerBusy</Code></Error>"
        return (f"HTTP/1.1 {self.status} Busy\r\n{extra}x-ms-error-code: ServerBusy\r\nContent-Length: {len(body)}"
                f"\r\n\r\n").encode() + body

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur = uw = None
        try:
            while True:
                try:
                    msg = await self._read_message(cr)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                assert msg is not None
                head, _h, body = msg
                method = head.split(b" ", 1)[0].decode()
                self.requests += 1
                hit = method in self.methods and self._rnd.random() < self.rate \
                    and (self.match is None or self.match(head.split(b"\r\n", 1)[0].decode("latin-1")))
                if hit and not self.after:
                    cw.write(self._fault())
                    await cw.drain()
                    continue
                if uw is None:
                    ur, uw = await asyncio.open_connection("127.0.0.1", self.target_port)
                uw.write(head + body)
                await uw.drain()
                assert ur is not None
                rhead, rh, rbody = await self._read_message(ur)  # type: ignore[misc]
                if method == "HEAD":
                    rbody = b""
                cw.write(self._fault() if hit else rhead + rbody)
                await cw.drain()
        finally:
            for w in (cw, uw):
                if w is not None:
                    w.close()
