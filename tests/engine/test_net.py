"""One way out: every outbound connection of the engine goes through engine/net.py (TLS settings, egress policy)."""

from __future__ import annotations

import ast
import socket
import ssl
from pathlib import Path

import pytest

from engine import net
from engine.errors import EgressRefused

ENGINE = Path(__file__).resolve().parents[2] / "engine"

#: Calls that open (or prepare) an outbound connection. Servers and listeners are not here.
OUTBOUND = {
    "socket.create_connection", "create_connection",
    "asyncio.open_connection", "open_connection",
    "loop.create_connection", "create_connection",
    "http.client.HTTPSConnection", "http.client.HTTPConnection", "HTTPSConnection", "HTTPConnection",
    "urllib.request.urlopen", "urlopen", "aiohttp.ClientSession", "ClientSession",
    "ssl.create_default_context", "ssl.SSLContext",
}
OUTBOUND_MODULES = {"urllib.request", "requests", "httpx", "aiohttp.client"}
#: Connections that are not egress, by (file, call), with why. Keep this short.
NOT_EGRESS = {
    # the portable implementation of the agent's local control channel (agent.sock's stand-in where there are no
    # Unix sockets): a loopback connection to a listener of the same host, found through a 0600 file
    ("engine/platform/base.py", "socket.create_connection"),
}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _server_context(call: ast.Call) -> bool:
    """``ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, ...)`` is a server's context (pki.server_context)."""
    args = list(call.args) + [k.value for k in call.keywords if k.arg == "purpose"]
    return any(_dotted(a).endswith("Purpose.CLIENT_AUTH") for a in args)


def _direct_outbound(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _dotted(node.func)
            short = name.rsplit(".", 1)[-1]
            if (name in OUTBOUND or (short in {"create_connection", "open_connection", "HTTPSConnection",
                                               "urlopen", "ClientSession"} and not name.startswith("net."))) \
                    and not _server_context(node):
                if name.startswith("net.") or name == "super().__init__":
                    continue
                found.append(f"{path.relative_to(ENGINE.parent)}:{node.lineno}: {name}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{path.relative_to(ENGINE.parent)}:{node.lineno}: import {m}" for m in mods
                      if m in OUTBOUND_MODULES]
    return found


def test_no_outbound_connection_bypasses_net() -> None:
    offenders = [hit for p in sorted(ENGINE.rglob("*.py")) if p != ENGINE / "net.py" for hit in _direct_outbound(p)
                 if (hit.split(":", 1)[0], hit.rsplit(": ", 1)[1]) not in NOT_EGRESS]
    assert offenders == [], "outbound connections must go through engine/net.py:\n" + "\n".join(offenders)


def test_the_scan_finds_direct_calls(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import socket, ssl, http.client, asyncio\n"
                   "socket.create_connection(('h', 1))\n"
                   "http.client.HTTPSConnection('h')\n"
                   "ssl.create_default_context()\n"
                   "asyncio.open_connection('h', 1)\n"
                   "ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)\n")
    global ENGINE
    saved, ENGINE = ENGINE, tmp_path
    try:
        hits = _direct_outbound(bad)
    finally:
        ENGINE = saved
    assert [h.rsplit(": ", 1)[1] for h in hits] == ["socket.create_connection", "http.client.HTTPSConnection",
                                                   "ssl.create_default_context", "asyncio.open_connection"]


def test_default_policy_allows_everything_without_proxy() -> None:
    r = net.route("example.com", 443, "admin")
    assert (r.host, r.port, r.proxy) == ("example.com", 443, None)


@pytest.fixture
def allow_only_localhost():  # type: ignore[no-untyped-def]
    old = net.set_egress_policy(net.EgressPolicy(allow=("localhost", "127.0.0.1:*")))
    yield
    net.set_egress_policy(old)


def test_allow_list_is_enforced_before_any_socket(allow_only_localhost, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    def no_socket(*a, **k):  # type: ignore[no-untyped-def]
        raise AssertionError("a socket was opened for a refused destination")
    monkeypatch.setattr(socket, "create_connection", no_socket)
    with pytest.raises(EgressRefused):
        net.open_connection("vcenter.example.com", 443, timeout=1, purpose="vsphere")
    with pytest.raises(EgressRefused):
        net.https_request("10.1.2.3", 443, "GET", "/", context=net.unverified_context(), timeout=1, purpose="admin")
    assert net.route("127.0.0.1", 9443, "replication").host == "127.0.0.1"


def test_client_contexts_verify_and_need_tls12(tmp_path: Path) -> None:
    from engine import pki
    ca = pki.CA.create("test CA")
    ca.save(tmp_path / "ca.pem", tmp_path / "ca.key")
    ctx = net.client_context(tmp_path / "ca.pem")
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    sys_ctx = net.system_context()
    assert sys_ctx.verify_mode == ssl.CERT_REQUIRED and sys_ctx.check_hostname
    assert sys_ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert net.unverified_context().minimum_version >= ssl.TLSVersion.TLSv1_2
    assert pki.client_context is net.client_context
