"""Real servers for the egress tests: an HTTPS server (aiohttp, a test CA), a forward proxy (Debian's tinyproxy with
basic authentication, its own config and log) and an SMTP server (aiosmtpd, STARTTLS and AUTH). Each is started by
a fixture on a free port and stopped at the end; a missing tool makes the test skip with the reason."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import free_port

PROXY_USER, PROXY_PASSWORD = "lbproxy", "corr3ct-horse"
SMTP_USER, SMTP_PASSWORD = "alerts", "sm7p-secret"


@pytest.fixture(name="egress_pki")
def egress_pki_fixture(tmp_path: Path) -> dict[str, Path]:
    """A test CA and a server certificate for 127.0.0.1 / localhost signed by it."""
    from engine import pki
    d = tmp_path / "egress-pki"
    d.mkdir()
    ca = pki.CA.create("egress test CA")
    ca.save(d / "ca.pem", d / "ca.key")
    key = pki.new_key()
    cert = ca.issue(key.public_key(), "endpoint.test", server=True, hosts=["127.0.0.1", "localhost"])
    (d / "server.pem").write_bytes(pki.cert_pem(cert))
    (d / "server.key").write_bytes(pki.key_pem(key))
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}


# HTTPS ---------------------------------------------------------------------------------------------------------------
@dataclass
class HttpsServer:
    """aiohttp on its own thread and loop. ``received``: (monotonic time, total body bytes) samples of uploads;
    ``blocks``: PUT /block/N bodies by N (how often each arrived); ``requests``: every request line seen."""
    port: int
    ca: Path
    received: list[tuple[float, int]] = field(default_factory=list)
    total: int = 0
    blocks: dict[int, int] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    connections: int = 0
    _loop: Any = None
    _runner: Any = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def upload_rate(self, t0: float, t1: float) -> float:
        """Bytes per second received between monotonic times t0 and t1 (from the samples)."""
        with self._lock:
            s = list(self.received)
        before = max((b for t, b in s if t <= t0), default=0)
        upto = max((b for t, b in s if t <= t1), default=0)
        return (upto - before) / (t1 - t0)

    def start(self, cert: Path, key: Path) -> None:
        from aiohttp import web

        async def root(request: web.Request) -> web.Response:
            self.requests.append(f"{request.method} {request.path}")
            return web.Response(text="lifeboat test endpoint\n")

        async def upload(request: web.Request) -> web.Response:
            self.requests.append(f"{request.method} {request.path}")
            n = 0
            async for chunk in request.content.iter_any():
                n += len(chunk)
                with self._lock:
                    self.total += len(chunk)
                    self.received.append((time.monotonic(), self.total))
            return web.json_response({"bytes": n})

        async def block(request: web.Request) -> web.Response:
            self.requests.append(f"{request.method} {request.path}")
            body = await request.read()
            i = int(request.match_info["n"])
            if body != block_body(i):
                return web.Response(status=400, text="wrong body")
            self.blocks[i] = self.blocks.get(i, 0) + 1
            return web.Response(status=201)


        ready = threading.Event()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            app = web.Application(client_max_size=1 << 30)
            app.router.add_route("*", "/", root)
            app.router.add_put("/upload", upload)
            app.router.add_put("/block/{n}", block)
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(cert), str(key))
            self._runner = web.AppRunner(app)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=ctx)
            loop.run_until_complete(site.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()
        self._thread = threading.Thread(target=run, daemon=True, name="https-test-server")
        self._thread.start()
        assert ready.wait(15), "the HTTPS test server did not start"

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(15)


def block_body(i: int) -> bytes:
    return (f"block {i:06d} ".encode() * 4096)[:65536]


@pytest.fixture(name="https_server")
def https_server_fixture(egress_pki: dict[str, Path]) -> Iterator[HttpsServer]:
    pytest.importorskip("aiohttp")
    srv = HttpsServer(free_port(), egress_pki["ca"])
    srv.start(egress_pki["cert"], egress_pki["key"])
    yield srv
    srv.stop()


# tinyproxy -----------------------------------------------------------------------------------------------------------
@dataclass
class Tinyproxy:
    port: int
    conf: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(["tinyproxy", "-d", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"tinyproxy exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
                time.sleep(0.05)
        raise RuntimeError("tinyproxy did not listen within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def connects(self, target: str) -> int:
        """How many CONNECT requests for ``target`` (``HOST:PORT``) the proxy logged."""
        if not self.log.exists():
            return 0
        return sum(1 for line in self.log.read_text(errors="replace").splitlines()
                   if "Request (file descriptor" in line and f"CONNECT {target} " in line)


@pytest.fixture(name="tinyproxy")
def tinyproxy_fixture(tmp_path: Path) -> Iterator[Tinyproxy]:
    """tinyproxy with basic authentication (PROXY_USER / PROXY_PASSWORD) on a free port, its log in tmp_path."""
    if not shutil.which("tinyproxy"):
        pytest.skip("tinyproxy is not installed (scripts/setup.sh installs it)")
    d = tmp_path / "tinyproxy"
    d.mkdir()
    port = free_port()
    conf, log = d / "tinyproxy.conf", d / "tinyproxy.log"
    conf.write_text(f'Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile "{log}"\nLogLevel Connect\n'
                    f"MaxClients 50\nAllow 127.0.0.1\nBasicAuth {PROXY_USER} {PROXY_PASSWORD}\n"
                    "DisableViaHeader Yes\n")
    tp = Tinyproxy(port, conf, log)
    tp.start()
    yield tp
    tp.stop()


# SMTP ----------------------------------------------------------------------------------------------------------------
@dataclass
class SmtpServer:
    port: int
    messages: list[Any] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    controller: Any = None

    def wait_messages(self, n: int, timeout: float = 30.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.messages


def _smtp(egress_pki: dict[str, Path] | None) -> Iterator[SmtpServer]:
    aiosmtpd = pytest.importorskip("aiosmtpd", reason="aiosmtpd is a dev dependency (pyproject [dev])")
    from email import message_from_bytes

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword
    assert aiosmtpd
    srv = SmtpServer(free_port())

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            srv.messages.append(message_from_bytes(envelope.content))
            return "250 OK"

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == SMTP_USER \
            and auth_data.password.decode() == SMTP_PASSWORD
        if ok:
            srv.logins.append(SMTP_USER)
        return AuthResult(success=ok, handled=False)   # handled=False: the server answers 535 itself

    kw: dict[str, Any] = {}
    if egress_pki is not None:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(egress_pki["cert"]), str(egress_pki["key"]))
        kw = {"tls_context": ctx, "require_starttls": True, "authenticator": authenticator,
              "auth_require_tls": True}
    c = Controller(Handler(), hostname="127.0.0.1", port=srv.port, ready_timeout=15, **kw)
    c.start()
    srv.controller = c
    yield srv
    c.stop()


@pytest.fixture(name="smtp_server")
def smtp_server_fixture() -> Iterator[SmtpServer]:
    """A plain SMTP relay (no TLS, no login)."""
    yield from _smtp(None)


@pytest.fixture(name="smtp_tls_server")
def smtp_tls_server_fixture(egress_pki: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpServer]:
    """STARTTLS required, AUTH (SMTP_USER / SMTP_PASSWORD) after it; the test CA trusted through SSL_CERT_FILE."""
    monkeypatch.setenv("SSL_CERT_FILE", str(egress_pki["ca"]))
    yield from _smtp(egress_pki)


__all__ = ["HttpsServer", "PROXY_PASSWORD", "PROXY_USER", "SMTP_PASSWORD", "SMTP_USER", "SmtpServer", "Tinyproxy",
           "block_body", "egress_pki_fixture", "https_server_fixture", "smtp_server_fixture",
           "smtp_tls_server_fixture", "tinyproxy_fixture"]
