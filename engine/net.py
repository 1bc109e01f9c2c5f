"""One way out: every outbound connection the engine makes goes through this module.

Callers: the agent's replication link (``agent/link.py``: the TCP connection; its memory-BIO TLS stays in the link),
agent registration (``agent/register.py``: HTTPS), the admin client (``client.py``: HTTPS), the vSphere
connection (``vsphere/connect.py``: TCP/TLS probes, and the route pyVmomi's own HTTPS connections take), the e-mail
alerts (``mailer.py``: SMTP), the connectivity check (``egress_check.py``) and the Azure Blob vault
(``vault/azure/rest.py``: its HTTP(S) connections come from :func:`http_connection`, purpose ``"vault"``).

What it does:

- builds client TLS contexts: verification on (against the appliance's CA, a given CA or the system store),
  TLS 1.2 at least; the two unverified forms (registration before the CA is known, which pins it afterwards;
  vSphere's thumbprint pin and ``--insecure``) are explicit, separate functions;
- asks the egress policy (:class:`EgressPolicy`) for every connection, in :func:`route`, before any socket is made
  (and before any name is resolved): a destination off the allow-list is refused with :class:`EgressRefused`
  (``LB_EGRESS_REFUSED``) naming the host and the setting to change;
- opens TCP connections (:func:`open_connection`) straight or through an HTTP CONNECT proxy (basic auth, a bypass
  list), TLS connections (:func:`open_tls`) and HTTP(S) requests (:func:`https_request`, :class:`HTTPSConnection`,
  :class:`HTTPConnection`);
- paces uploads to the vault target (purpose ``"vault"``) through one shared :class:`RateLimiter`
  (:func:`upload_limiter`) whose rate the policy's bandwidth schedule gives at each moment.

Which connections are egress (leave the protected site) is the purpose's: :data:`EGRESS_PURPOSES` (``vault``,
``vsphere``, ``smtp``). The appliance's policy (built from its egress settings, ``engine/egress.py``) applies the
allow-list and the proxy to those only; the links inside the site (``replication``, ``register``, ``admin``: agents
and the CLI talking to the appliance) are never refused or proxied by it. Servers and listeners (control port, data
port, NBD exports, the agent's socket) do not come through here. ``tests/engine/test_net.py`` fails on a direct
outbound call anywhere else in ``engine/``.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar, overload

from .errors import EgressRefused, InvalidInput, ProxyAuthFailed, ProxyError

__all__ = ["EGRESS_PURPOSES", "EgressPolicy", "EgressRefused", "HTTPConnection", "HTTPSConnection", "HTTPSResponse",
           "LIMITED_PURPOSES", "Proxy", "RateLimiter", "Route", "azure_transport", "check_allow_entry",
           "client_context", "egress_policy", "entry_matches", "http_connection", "https_request", "lifeboat_cause",
           "open_connection", "open_tls", "open_tunnel",
           "route", "set_egress_policy", "system_context", "unverified_context", "upload_limiter"]

#: Oldest TLS version any outbound connection accepts.
MIN_TLS = ssl.TLSVersion.TLSv1_2
#: Connections that leave the protected site: the vault target (Azure), vCenters, the SMTP server.
EGRESS_PURPOSES = frozenset({"vault", "vsphere", "smtp"})
#: Connections whose uploads the bandwidth schedule paces (the traffic to the target).
LIMITED_PURPOSES = frozenset({"vault"})
#: Bytes handed to a socket per limiter reservation: small enough that a rate change applies within one slice.
PACE_SLICE = 16 * 1024
#: The largest CONNECT response head read from a proxy.
_MAX_PROXY_HEAD = 16 * 1024


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP CONNECT proxy; ``user``/``password`` for basic authentication (the password comes from the keyring
    and is never shown: not in ``repr``)."""

    host: str
    port: int
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def authorization(self) -> str | None:
        if not self.user:
            return None
        return "Basic " + base64.b64encode(f"{self.user}:{self.password or ''}".encode()).decode("ascii")


@dataclass(frozen=True, slots=True)
class Route:
    """How a connection goes out: straight to ``host:port``, or through ``proxy`` (CONNECT to ``host:port``)."""

    host: str
    port: int
    purpose: str
    proxy: Proxy | None = None


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """Which destinations the engine may connect to, through what, and how fast it may upload.

    ``allow``: allow-list entries (:func:`check_allow_entry`: host names, ``*.domain`` wildcards in the leftmost
    label, IP addresses or networks, each optionally ``:PORT`` or ``:*``); None allows every destination.
    ``applies_to``: the purposes the allow-list and the proxy govern (None: every purpose; the appliance's policy
    uses :data:`EGRESS_PURPOSES`). ``proxy``: an HTTP CONNECT proxy; ``bypass``: destinations reached directly
    (same entry syntax). ``upload_rate``: bytes per second allowed now for :data:`LIMITED_PURPOSES` uploads (None
    or returning None: unlimited); read at every reservation, so a new schedule applies at once. ``setting``: what
    an operator changes to allow a refused host (named in the error).
    """

    allow: tuple[str, ...] | None = None
    proxy: Proxy | None = None
    bypass: tuple[str, ...] = ()
    applies_to: frozenset[str] | None = None
    upload_rate: Callable[[], float | None] | None = None
    setting: str = "`lifeboat egress allow --home DIR --add HOST` (or the console's Network and cloud page)"

    def governs(self, purpose: str) -> bool:
        return self.applies_to is None or purpose in self.applies_to

    def route(self, host: str, port: int, purpose: str) -> Route:
        """The route for a connection to ``host:port`` made for ``purpose`` (``"replication"``, ``"register"``,
        ``"admin"``, ``"vsphere"``, ``"vault"``, ``"smtp"``), or EgressRefused. Resolves nothing."""
        if not self.governs(purpose):
            return Route(host, port, purpose)
        if self.allow is not None and not any(entry_matches(p, host, port) for p in self.allow):
            raise EgressRefused(
                f"outbound connection to {host}:{port} ({purpose}) refused: {host} is not on the appliance's URL "
                "allow-list", advice=f"If {host} is a destination the appliance should reach, add it to the "
                f"allow-list: {self.setting.replace('HOST', host)}.", host=host, port=port, purpose=purpose)
        if self.proxy is not None and not any(entry_matches(p, host, port) for p in self.bypass):
            return Route(host, port, purpose, self.proxy)
        return Route(host, port, purpose)


# allow-list entries ------------------------------------------------------------------------------------------------
def _split_entry(entry: str) -> tuple[str, str | None]:
    """``host[:port]`` / ``[v6][:port]`` / a bare v6 address or network → (host, port text or None)."""
    e = entry.strip()
    if e.startswith("["):
        host, _, rest = e[1:].partition("]")
        return host, (rest[1:] if rest.startswith(":") else None)
    if e.count(":") == 1:
        host, _, port = e.partition(":")
        return host, port
    return e, None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def entry_matches(entry: str, host: str, port: int) -> bool:
    """Whether allow-list (or bypass) ``entry`` covers ``host:port``. Names match names and addresses match
    addresses: nothing is resolved (the check happens before any packet leaves)."""
    pat, pport = _split_entry(entry)
    if pport not in (None, "*", "") and pport != str(port):
        return False
    pat = pat.lower().rstrip(".")
    h = host.lower().rstrip(".").strip("[]")
    addr = _ip(h)
    if "/" in pat:
        try:
            return addr is not None and addr in ipaddress.ip_network(pat, strict=False)
        except ValueError:
            return False
    pat_addr = _ip(pat)
    if pat_addr is not None:
        return addr is not None and addr == pat_addr
    if addr is not None:
        return False
    if pat.startswith("*."):
        suffix = pat[1:]
        return h.endswith(suffix) and len(h) > len(suffix) and "." not in h[: -len(suffix)]
    return h == pat


_LABEL_OK = set("abcdefghijklmnopqrstuvwxyz0123456789-_")


def check_allow_entry(entry: str, *, what: str = "allow-list entry") -> str:
    """Validate one allow-list or bypass entry; returns it normalised (lower case, no trailing dot).

    Accepted: a host name (``login.microsoftonline.com``), a wildcard in the leftmost label only
    (``*.blob.core.windows.net``: one label), an IP address (``127.0.0.1``, ``2001:db8::1``) or network
    (``10.0.0.0/8``), each optionally followed by ``:PORT``. Raises :class:`InvalidInput` naming ``what``."""
    raw = entry.strip()
    advice = ("Give a host name (login.microsoftonline.com), a wildcard in the leftmost label only "
              "(*.blob.core.windows.net), an IP address (127.0.0.1) or network (10.0.0.0/8), optionally :PORT.")
    host, port = _split_entry(raw)
    if port is not None and port != "*" and not (port.isdigit() and 0 < int(port) < 65536):
        raise InvalidInput(f"{what} {raw!r}: the port {port!r} is not 1-65535", field=what, advice=advice)
    h = host.lower().rstrip(".")
    if not h:
        raise InvalidInput(f"{what} is empty", field=what, advice=advice)
    if "/" in h:
        try:
            ipaddress.ip_network(h, strict=False)
        except ValueError:
            raise InvalidInput(f"{what} {raw!r} is not an IP network", field=what, advice=advice) from None
    elif _ip(h) is None:
        labels = h.split(".")
        wild = labels[0] == "*"
        if any("*" in lab for lab in labels[1:]) or ("*" in labels[0] and not wild):
            raise InvalidInput(f"{what} {raw!r}: a wildcard is allowed only as the whole leftmost label "
                               "(*.example.com)", field=what, advice=advice)
        if wild and len(labels) < 3:
            raise InvalidInput(f"{what} {raw!r}: a wildcard needs a domain of at least two labels after it "
                               "(*.example.com), not a top-level domain", field=what, advice=advice)
        for lab in labels[1:] if wild else labels:
            if not lab or len(lab) > 63 or not set(lab) <= _LABEL_OK or lab.startswith("-") or lab.endswith("-"):
                raise InvalidInput(f"{what} {raw!r} is not a valid host name", field=what, advice=advice)
    return f"{h}:{port}" if port is not None and ":" not in h else (f"[{h}]:{port}" if port is not None else h)


# bandwidth ---------------------------------------------------------------------------------------------------------
class RateLimiter:
    """Paces bytes to ``rate()`` bytes per second (None: unlimited), shared by every thread and coroutine.

    Each caller reserves its bytes before sending them: the reservation returns how long to wait so the bytes
    start no earlier than the link's schedule allows (a virtual clock advanced by ``n / rate`` per reservation).
    Idle time earns no credit, so there is no burst beyond one slice: over any window longer than a few slices
    the rate holds to within a slice's share. ``rate`` is read at every reservation: a new limit applies to the
    next slice, without a restart.
    """

    def __init__(self, rate: Callable[[], float | None] | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate or (lambda: None)
        self.clock = clock
        self._lock = threading.Lock()
        self._free_at = 0.0
        self.throttled_seconds = 0.0   # total time callers waited (the "throttled" figure)

    def current_rate(self) -> float | None:
        r = self.rate()
        return None if r is None or r <= 0 else float(r)

    def reserve(self, n: int) -> float:
        """Reserve ``n`` bytes; returns the seconds to wait before sending them (0 when unlimited)."""
        rate = self.current_rate()
        with self._lock:
            now = self.clock()
            if rate is None:
                self._free_at = now
                return 0.0
            start = max(self._free_at, now)
            self._free_at = start + n / rate
            wait = start - now
            self.throttled_seconds += wait
            return wait

    def acquire(self, n: int) -> None:
        """Blocking: wait until ``n`` bytes may go (call from a worker thread, never on an event loop)."""
        wait = self.reserve(n)
        if wait > 0:
            time.sleep(wait)

    async def acquire_async(self, n: int) -> None:
        """The coroutine form of :meth:`acquire`."""
        import asyncio
        wait = self.reserve(n)
        if wait > 0:
            await asyncio.sleep(wait)


_policy = EgressPolicy()
_upload_limiter = RateLimiter(lambda: _policy.upload_rate() if _policy.upload_rate is not None else None)


def upload_limiter() -> RateLimiter:
    """The one limiter of uploads to the vault target; its rate follows the policy in force."""
    return _upload_limiter


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
    """Replace the policy in force (at once, for every next connection); returns the previous one (so a caller or
    a test can put it back)."""
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
#: ``on_step(step, seconds, detail)``: told when the TCP connection (``"tcp"``) and the proxy's tunnel (``"proxy"``)
#: are up, with how long each took (the connectivity check reports them hop by hop).
StepHook = Callable[[str, float, str], None]


def open_connection(host: str, port: int, *, timeout: float | None, purpose: str,
                    on_step: StepHook | None = None) -> socket.socket:
    """A connected TCP socket to ``host:port`` (blocking; bounded by ``timeout``), after the egress check: straight,
    or a tunnel through the policy's CONNECT proxy (the proxy resolves ``host``; the appliance does not).

    Raises EgressRefused before any packet; ProxyError / ProxyAuthFailed for the proxy's part; otherwise what
    ``socket.create_connection`` raises (OSError, socket.gaierror, TimeoutError)."""
    r = route(host, port, purpose)
    if r.proxy is None:
        t0 = time.monotonic()
        sock = socket.create_connection((r.host, r.port), timeout=timeout)
        if on_step:
            on_step("tcp", time.monotonic() - t0, f"{r.host}:{r.port}")
        return sock
    return _tunnel(r.proxy, host, port, timeout, on_step)


def open_tunnel(proxy: Proxy, host: str, port: int, *, timeout: float | None) -> socket.socket:
    """A CONNECT tunnel through ``proxy`` to ``host:port`` without asking the policy (a proxy being tried before
    it is saved: the console's Test button). ProxyError / ProxyAuthFailed as :func:`open_connection`."""
    return _tunnel(proxy, host, port, timeout, None)


def _tunnel(proxy: Proxy, host: str, port: int, timeout: float | None, on_step: StepHook | None) -> socket.socket:
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    t0 = time.monotonic()
    try:
        sock = socket.create_connection((proxy.host, proxy.port), timeout=timeout)
    except OSError as exc:
        raise ProxyError(f"cannot reach the proxy {proxy.address} (for {target}): {exc.strerror or exc}",
                         code="LB_PROXY_UNREACHABLE", proxy=proxy.address, target=target) from None
    if on_step:
        on_step("tcp", time.monotonic() - t0, f"proxy {proxy.address}")
    t0 = time.monotonic()
    try:
        head = [f"CONNECT {target} HTTP/1.1", f"Host: {target}", "User-Agent: lifeboat"]
        auth = proxy.authorization()
        if auth:
            head.append(f"Proxy-Authorization: {auth}")
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        # Byte by byte up to the blank line: what follows belongs to the tunnelled protocol (an SMTP banner may come
        # right after the proxy's answer) and must stay in the socket.
        buf = bytearray()
        while not buf.endswith(b"\r\n\r\n"):
            b = sock.recv(1)
            if not b:
                raise ProxyError(f"the proxy {proxy.address} closed the connection before answering CONNECT "
                                 f"{target}", code="LB_PROXY_REFUSED", proxy=proxy.address, target=target)
            buf += b
            if len(buf) > _MAX_PROXY_HEAD:
                raise ProxyError(f"the proxy {proxy.address} sent an oversized answer to CONNECT {target}",
                                 code="LB_PROXY_REFUSED", proxy=proxy.address, target=target)
        status_line = bytes(buf).split(b"\r\n", 1)[0].decode("latin-1", "replace")
        parts = status_line.split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if 200 <= status < 300:
            if on_step:
                on_step("proxy", time.monotonic() - t0, f"CONNECT {target}: {status_line}")
            return sock
        if status in (401, 407):
            raise ProxyAuthFailed(
                f"the proxy {proxy.address} refused CONNECT {target}: {status_line!r} "
                + ("(it asks for a user and password; none is set)" if not proxy.user
                   else f"(user {proxy.user!r}: wrong user or password)"),
                proxy=proxy.address, target=target, status=status)
        raise ProxyError(f"the proxy {proxy.address} refused CONNECT {target}: {status_line!r}",
                         code="LB_PROXY_REFUSED", proxy=proxy.address, target=target, status=status)
    except BaseException as exc:
        sock.close()
        if isinstance(exc, (TimeoutError, socket.timeout)):
            raise ProxyError(f"the proxy {proxy.address} did not answer CONNECT {target} in time",
                             code="LB_PROXY_UNREACHABLE", proxy=proxy.address, target=target) from None
        raise


def open_tls(host: str, port: int, ctx: ssl.SSLContext, *, timeout: float | None, purpose: str,
             server_hostname: str | None = None) -> ssl.SSLSocket:
    """A TLS connection (handshake done) to ``host:port`` with ``ctx``. The caller closes it."""
    raw = open_connection(host, port, timeout=timeout, purpose=purpose)
    try:
        return ctx.wrap_socket(raw, server_hostname=server_hostname or host)
    except BaseException:
        raw.close()
        raise


def _paced_send(conn: http.client.HTTPConnection, data: Any, send: Callable[[Any], None]) -> None:
    """http.client's ``send`` with :data:`LIMITED_PURPOSES` uploads paced by :func:`upload_limiter`."""
    lim = _upload_limiter
    if getattr(conn, "purpose", "") not in LIMITED_PURPOSES or lim.current_rate() is None:
        send(data)
        return
    if isinstance(data, (bytes, bytearray, memoryview)):
        chunks: Iterable[Any] = (memoryview(data)[i:i + PACE_SLICE] for i in range(0, len(data), PACE_SLICE))
    elif hasattr(data, "read"):
        chunks = iter(lambda: data.read(PACE_SLICE), b"")
    else:
        chunks = data
    for chunk in chunks:
        if isinstance(chunk, str):
            chunk = chunk.encode("iso-8859-1")
        for i in range(0, len(chunk), PACE_SLICE):
            piece = chunk[i:i + PACE_SLICE]
            lim.acquire(len(piece))
            send(piece)


class HTTPSConnection(http.client.HTTPSConnection):
    """``http.client.HTTPSConnection`` whose TCP connection is made by :func:`open_connection` (egress policy,
    proxy) and whose uploads are paced when ``purpose`` is in :data:`LIMITED_PURPOSES`."""

    def __init__(self, host: str, port: int, *, context: ssl.SSLContext, timeout: float | None, purpose: str) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self.purpose = purpose

        def create(address: tuple[str, int], timeout: Any = None, source_address: Any = None) -> socket.socket:
            return open_connection(address[0], address[1], timeout=timeout, purpose=purpose)
        self._create_connection = create

    def send(self, data: Any) -> None:
        _paced_send(self, data, super().send)


class HTTPConnection(http.client.HTTPConnection):
    """Plain HTTP (an emulator on the site, e.g. Azurite in tests) made the same way as :class:`HTTPSConnection`."""

    def __init__(self, host: str, port: int, *, timeout: float | None, purpose: str) -> None:
        super().__init__(host, port, timeout=timeout)
        self.purpose = purpose

        def create(address: tuple[str, int], timeout: Any = None, source_address: Any = None) -> socket.socket:
            return open_connection(address[0], address[1], timeout=timeout, purpose=purpose)
        self._create_connection = create

    def send(self, data: Any) -> None:
        _paced_send(self, data, super().send)


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


def azure_transport(purpose: str = "vault", *, context: ssl.SSLContext | None = None,
                    timeout: float = 60.0) -> Any:
    """An ``azure.core`` sync ``HttpTransport`` whose every request goes out through this module: the allow-list
    check, the proxy (CONNECT, basic auth), and the upload pacing of ``purpose``. Give it to any azure SDK client:
    ``BlobServiceClient(url, credential=..., transport=net.azure_transport())``. ``context``: the TLS context
    (default: :func:`system_context`). The environment's proxy variables are ignored (the egress settings rule).

    It is azure-core's own ``RequestsTransport`` (the SDK's default) over a requests session whose connection pools
    make their sockets with :func:`open_connection` and send through :func:`_paced_send`. A refusal by the policy or
    the proxy reaches the SDK as a connection error; :func:`lifeboat_cause` finds the ``LB_...`` error in it."""
    cls = _azure_transport_class()
    return cls(purpose=purpose, context=context or system_context(), timeout=timeout)


def lifeboat_cause(exc: BaseException | None) -> BaseException | None:
    """The first Lifeboat error (an ``LB_...`` code: EgressRefused, ProxyAuthFailed, ProxyError) in ``exc``'s chain
    of causes, or None: how a caller of an SDK that wraps connection errors tells the operator what to change."""
    from .errors import LifeboatError
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, LifeboatError):
            return exc
        inner = getattr(exc, "inner_exception", None)
        exc, seen = (inner if isinstance(inner, BaseException) else None) or exc.__cause__ or exc.__context__, seen + 1
    return None


_transport_cls: Any = None


def _azure_transport_class() -> Any:
    """Built once, on first use: azure-core, requests and urllib3 are imported only by a process that uses Azure."""
    global _transport_cls
    if _transport_cls is not None:
        return _transport_cls
    import requests  # noqa: F401  (azure-core's dependency)
    import urllib3
    from azure.core.pipeline.transport import RequestsTransport
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection as U3HTTP, HTTPSConnection as U3HTTPS
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
    from urllib3.exceptions import NewConnectionError

    def conn_class(base: Any, purpose: str) -> Any:
        class Conn(base):  # type: ignore[misc, valid-type]
            def _new_conn(self) -> socket.socket:
                t = self.timeout if isinstance(self.timeout, (int, float)) else None
                try:
                    sock = open_connection(self._dns_host, self.port, timeout=t, purpose=purpose)
                except (EgressRefused, ProxyAuthFailed, ProxyError) as exc:
                    # a connection error to urllib3 (the SDK's ServiceRequestError), with ours as its cause
                    raise NewConnectionError(self, str(exc)) from exc
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock

            def send(self, data: Any) -> None:
                _paced_send(self, data, super().send)
        Conn.purpose = purpose
        return Conn

    class Adapter(HTTPAdapter):
        def __init__(self, purpose: str, context: ssl.SSLContext, **kw: Any) -> None:
            self._lb = (purpose, context)
            super().__init__(**kw)

        def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **kw: Any) -> None:
            purpose, ctx = self._lb
            http_pool = type("Pool", (HTTPConnectionPool,), {"ConnectionCls": conn_class(U3HTTP, purpose)})
            https_pool = type("Pool", (HTTPSConnectionPool,), {"ConnectionCls": conn_class(U3HTTPS, purpose)})
            self.poolmanager = urllib3.PoolManager(num_pools=connections, maxsize=maxsize, block=block,
                                                   ssl_context=ctx, **kw)
            self.poolmanager.pool_classes_by_scheme = {"http": http_pool, "https": https_pool}

    class EgressTransport(RequestsTransport):  # type: ignore[misc]
        """azure-core's RequestsTransport whose connections are Lifeboat's (see :func:`azure_transport`)."""

        def __init__(self, *, purpose: str, context: ssl.SSLContext, timeout: float) -> None:
            super().__init__(use_env_settings=False, connection_timeout=timeout, read_timeout=timeout)
            self._lb = (purpose, context)

        def _init_session(self, session: Any) -> None:
            session.trust_env = False
            retries = urllib3.util.Retry(total=False, redirect=False, raise_on_status=False)
            adapter = Adapter(*self._lb, max_retries=retries)
            for p in ("http://", "https://"):
                session.mount(p, adapter)

    _transport_cls = EgressTransport
    return _transport_cls
