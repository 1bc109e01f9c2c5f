"""One way out: every outbound connection the engine makes goes through this module.

Callers: the agent's replication link (``agent/link.py``: the TCP connection; its memory-BIO TLS stays in the link),
agent registration (``agent/register.py``: HTTPS), the admin client (``client.py``: HTTPS) and the vSphere
connection (``vsphere/connect.py``: TCP/TLS probes, and the route pyVmomi's own HTTPS connections take), and the
Azure Blob vault (``vault/azure/rest.py``: its HTTP(S) connections come from :func:`http_connection`, purpose
``"azure"``).

What it does:

- builds client TLS contexts: verification on (against the appliance's CA, a given CA or the system store),
  TLS 1.2 at least; the two unverified forms (registration before the CA is known, which pins it afterwards;
  vSphere's thumbprint pin and ``--insecure``) are explicit, separate functions;
- asks the egress policy (:class:`EgressPolicy`) for every connection, in :func:`route`, before any socket is made;
- opens TCP connections (:func:`open_connection`), TLS connections (:func:`open_tls`) and HTTPS requests
  (:func:`https_request`, :class:`HTTPSConnection`).

The egress policy is where an outbound allow-list and a proxy will be enforced: today's default allows every
destination and uses no proxy. Servers and listeners (control port, data port, NBD exports, the agent's socket) do
not come through here. ``tests/engine/test_net.py`` fails on a direct outbound call anywhere else in ``engine/``.
"""

from __future__ import annotations

import fnmatch
import http.client
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, overload

from .errors import EgressRefused, InvalidInput

__all__ = ["EgressPolicy", "EgressRefused", "HTTPSConnection", "HTTPSResponse", "Route", "client_context",
           "egress_policy", "http_connection", "https_request", "open_connection", "open_tls", "route", "set_egress_policy",
           "system_context", "unverified_context"]

#: Oldest TLS version any outbound connection accepts.
MIN_TLS = ssl.TLSVersion.TLSv1_2


@dataclass(frozen=True, slots=True)
class Route:
    """How a connection goes out: straight to ``host:port``, or (later) through ``proxy`` (host, port)."""

    host: str
    port: int
    purpose: str
    proxy: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """Which destinations the engine may connect to, and through what.

    ``allow``: host patterns (``fnmatch``, e.g. ``"vcenter*.example.com"``, ``"10.0.*"``) optionally with
    ``:PORT``; None allows every destination (today's default). ``proxy``: reserved for an HTTP CONNECT proxy
    (host, port); None connects directly (today's default; a proxy is not implemented yet, so setting one is refused
    rather than silently ignored).
    """

    allow: tuple[str, ...] | None = None
    proxy: tuple[str, int] | None = None

    def route(self, host: str, port: int, purpose: str) -> Route:
        """The route for a connection to ``host:port`` made for ``purpose`` (``"replication"``, ``"register"``,
        ``"admin"``, ``"vsphere"``), or EgressRefused."""
        if self.allow is not None and not any(_matches(p, host, port) for p in self.allow):
            raise EgressRefused(f"outbound connection to {host}:{port} ({purpose}) is not allowed")
        if self.proxy is not None:
            raise NotImplementedError("outbound proxies are not supported yet")
        return Route(host, port, purpose)


def _matches(pattern: str, host: str, port: int) -> bool:
    pat_host, sep, pat_port = pattern.rpartition(":") if pattern.count(":") == 1 else (pattern, "", "")
    if sep and not fnmatch.fnmatch(str(port), pat_port):
        return False
    return fnmatch.fnmatch(host.lower(), (pat_host if sep else pattern).lower())


_policy = EgressPolicy()


def parse_address(text: str, default_port: int | None = None, *, any_port: bool = False,
                  what: str = "address") -> tuple[str, int]:
    """``HOST:PORT`` (or ``[v6]:PORT``; ``HOST`` alone when ``default_port`` is given) → ``(host, port)``.

    The one parser of addresses the operator types, for connecting and for listening (``any_port``: port 0 = any
    free port). Raises :class:`InvalidInput` naming ``what``.
    """
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if (not sep or "]" in port) and default_port is not None:   # no port, or a bare [v6] address
        host, port = text, str(default_port)
    host = host.strip("[]")
    low = 0 if any_port else 1
    if not host or " " in host or not port.isdigit() or not low <= int(port) < 65536:
        raise InvalidInput(f"{what} {text!r} is not HOST:PORT", field=what,
                           advice="Give a host name or address and a TCP port, e.g. 192.0.2.10:443.")
    return host, int(port)


def egress_policy() -> EgressPolicy:
    """The policy in force for this process."""
    return _policy


def set_egress_policy(policy: EgressPolicy) -> EgressPolicy:
    """Replace the policy in force; returns the previous one (so a caller or a test can put it back)."""
    global _policy
    old, _policy = _policy, policy
    return old


def route(host: str, port: int, purpose: str) -> Route:
    """Ask the egress policy about one connection: the single check every outbound connection passes."""
    return _policy.route(host, port, purpose)


# TLS contexts ------------------------------------------------------------------------------------------------------
def client_context(ca: Path | None, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """Client context for the appliance's own services (data and control ports): verifies the server against the
    appliance CA ``ca``; presents ``cert``/``key`` when given (mutual TLS). With ``ca`` None (registration only) the
    chain is not checked here: the caller pins the CA afterwards (see agent/register.py)."""
    if ca is None:
        ctx = unverified_context()
    else:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
        ctx.check_hostname = False  # identity is the CA pin: the appliance may be reached by any address
        ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.minimum_version = MIN_TLS
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def system_context(ca_pem: str | None = None) -> ssl.SSLContext:
    """Verifying client context with host-name checks: the OS CA store, or only the PEM CA ``ca_pem``
    (ssl.SSLError when it is not PEM)."""
    ctx = ssl.create_default_context(cadata=ca_pem) if ca_pem else ssl.create_default_context()
    ctx.minimum_version = MIN_TLS
    return ctx


_C = TypeVar("_C", bound=ssl.SSLContext)


@overload
def unverified_context() -> ssl.SSLContext: ...
@overload
def unverified_context(cls: type[_C]) -> _C: ...


def unverified_context(cls: type[ssl.SSLContext] = ssl.SSLContext) -> ssl.SSLContext:
    """A client context that does not verify the server: only for callers that check the peer themselves
    (a pinned CA or thumbprint), or for vSphere's explicit ``--insecure``. ``cls`` may be a subclass that checks."""
    ctx = cls(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = MIN_TLS
    return ctx


# connections -------------------------------------------------------------------------------------------------------
def open_connection(host: str, port: int, *, timeout: float | None, purpose: str) -> socket.socket:
    """A connected TCP socket to ``host:port`` (blocking; bounded by ``timeout``), after the egress check.

    Raises what ``socket.create_connection`` raises (OSError, socket.gaierror, TimeoutError) or EgressRefused."""
    r = route(host, port, purpose)
    return socket.create_connection((r.host, r.port), timeout=timeout)


def open_tls(host: str, port: int, ctx: ssl.SSLContext, *, timeout: float | None, purpose: str,
             server_hostname: str | None = None) -> ssl.SSLSocket:
    """A TLS connection (handshake done) to ``host:port`` with ``ctx``. The caller closes it."""
    raw = open_connection(host, port, timeout=timeout, purpose=purpose)
    try:
        return ctx.wrap_socket(raw, server_hostname=server_hostname or host)
    except BaseException:
        raw.close()
        raise


class HTTPSConnection(http.client.HTTPSConnection):
    """``http.client.HTTPSConnection`` whose TCP connection is made by :func:`open_connection` (egress policy)."""

    def __init__(self, host: str, port: int, *, context: ssl.SSLContext, timeout: float, purpose: str) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self.purpose = purpose

        def create(address: tuple[str, int], timeout: Any = None, source_address: Any = None) -> socket.socket:
            return open_connection(address[0], address[1], timeout=timeout, purpose=purpose)
        self._create_connection = create


class HTTPConnection(http.client.HTTPConnection):
    """``http.client.HTTPConnection`` (plain HTTP: a storage emulator, a private endpoint) whose TCP connection is
    made by :func:`open_connection` (egress policy)."""

    def __init__(self, host: str, port: int, *, timeout: float, purpose: str) -> None:
        super().__init__(host, port, timeout=timeout)
        self.purpose = purpose

        def create(address: tuple[str, int], timeout: Any = None, source_address: Any = None) -> socket.socket:
            return open_connection(address[0], address[1], timeout=timeout, purpose=purpose)
        self._create_connection = create


def http_connection(scheme: str, host: str, port: int, *, timeout: float, purpose: str,
                    context: ssl.SSLContext | None = None) -> http.client.HTTPConnection:
    """The one transport for HTTP clients that keep their connections (the Azure Blob vault): an ``http.client``
    connection to ``host:port`` for ``scheme`` ``"https"`` (verified with ``context``, default the system store)
    or ``"http"``, whose socket is made through the egress policy. Not connected yet; the caller reuses and closes
    it. The egress policy's proxy and bandwidth settings hook in here."""
    if scheme == "https":
        return HTTPSConnection(host, port, context=context or system_context(), timeout=timeout, purpose=purpose)
    if scheme == "http":
        return HTTPConnection(host, port, timeout=timeout, purpose=purpose)
    raise InvalidInput(f"unsupported URL scheme {scheme!r} (http or https)")


@dataclass(frozen=True, slots=True)
class HTTPSResponse:
    status: int
    body: bytes
    peer_cert_der: bytes | None   # the server's certificate as seen in the handshake


def https_request(host: str, port: int, method: str, path: str, *, context: ssl.SSLContext, timeout: float,
                  purpose: str, body: bytes | str | None = None,
                  headers: dict[str, str] | None = None) -> HTTPSResponse:
    """One HTTPS request (blocking). Network and TLS failures raise as OSError / ssl.SSLError / TimeoutError."""
    conn = HTTPSConnection(host, port, context=context, timeout=timeout, purpose=purpose)
    try:
        conn.connect()
        der = conn.sock.getpeercert(binary_form=True) if conn.sock else None   # before a close can drop it
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return HTTPSResponse(resp.status, resp.read(), der)
    finally:
        conn.close()
