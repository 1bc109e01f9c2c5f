"""The connectivity check: every outbound endpoint the appliance actually uses, probed hop by hop through the
configured path (``lifeboat egress check``, the console's Network and cloud page, and every 15 minutes by the
appliance, which raises ``LB_EGRESS_CHECK_FAILED`` while it fails).

Endpoints in use (:func:`endpoints_in_use`): the vault target when it is remote (``appliance.json``'s ``vault``
section with an ``account_url``: the Azure backend), every registered vCenter, the SMTP server of the e-mail
alerts. Hops, each with its result, latency and what to fix: ``allow-list`` (the policy's verdict: nothing leaves
when refused), ``dns`` (the target's name, or the proxy's when a proxy is used: the proxy resolves the target),
``tcp`` (to the target or the proxy), ``proxy`` (the CONNECT tunnel: authentication, the proxy's own reach),
``tls`` (handshake and certificate, with the same trust as the real client), then ``http`` (any HTTP answer
counts) or ``smtp`` (banner, EHLO, STARTTLS offered). The check sends no credentials to the endpoints and
changes nothing. Blocking: run it in a worker thread.
"""

from __future__ import annotations

import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import net
from ..errors import LifeboatError
from ..mailer import SmtpSettings

__all__ = ["Endpoint", "Hop", "EndpointResult", "CheckReport", "endpoints_in_use", "run_check"]

TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint in use: ``kind`` is ``https`` (vault), ``vsphere`` or ``smtp``."""

    name: str
    host: str
    port: int
    purpose: str
    kind: str
    context: Callable[[], ssl.SSLContext] | None = None
    starttls: bool = False


@dataclass(slots=True)
class Hop:
    hop: str
    ok: bool
    ms: float
    detail: str = ""
    advice: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"hop": self.hop, "ok": self.ok, "ms": round(self.ms, 1), "detail": self.detail, "advice": self.advice}


@dataclass(slots=True)
class EndpointResult:
    endpoint: Endpoint
    via: str
    hops: list[Hop] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.hops) and all(h.ok for h in self.hops)

    def to_dict(self) -> dict[str, Any]:
        e = self.endpoint
        return {"name": e.name, "host": e.host, "port": e.port, "purpose": e.purpose, "via": self.via,
                "ok": self.ok, "hops": [h.to_dict() for h in self.hops]}


@dataclass(slots=True)
class CheckReport:
    results: list[EndpointResult]
    proxy: str | None
    time: float

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def failed(self) -> list[EndpointResult]:
        return [r for r in self.results if not r.ok]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "time": self.time, "proxy": self.proxy, "endpoints": [r.to_dict() for r in self.results]}

    def text(self) -> str:
        if not self.results:
            return "no outbound endpoint is in use (no remote vault, vCenter or SMTP server configured): nothing to check"
        out = []
        for r in self.results:
            out.append(f"{'OK  ' if r.ok else 'FAIL'} {r.endpoint.name} {r.endpoint.host}:{r.endpoint.port} via {r.via}")
            for h in r.hops:
                out.append(f"     {h.hop:<10} {'ok' if h.ok else 'FAILED':<7} {h.ms:8.1f} ms  {h.detail}")
                if not h.ok and h.advice:
                    out.append(f"     {'':<10} fix: {h.advice}")
        out.append("all endpoints answer" if self.ok else f"{len(self.failed())} of {len(self.results)} endpoints fail")
        return "\n".join(out)


def endpoints_in_use(vault_cfg: dict[str, Any] | None, vcenters: list[Any], smtp: SmtpSettings | None) -> list[Endpoint]:
    """The endpoints the appliance uses. ``vcenters``: ``engine.vsphere.connect.Target``s."""
    out: list[Endpoint] = []
    v = vault_cfg or {}
    url = v.get("account_url")
    if url:
        u = urllib.parse.urlsplit(str(url))
        if u.hostname:
            ca_file = v.get("ca_file")

            def vault_ctx(ca: str | None = ca_file) -> ssl.SSLContext:
                if ca:
                    with open(ca, encoding="ascii") as f:
                        return net.system_context(f.read())
                return net.system_context()
            tls = u.scheme == "https"
            out.append(Endpoint(f"vault ({v.get('kind', 'remote')})", u.hostname, u.port or (443 if tls else 80),
                                "vault", "https" if tls else "http", vault_ctx if tls else None))
    from ..vsphere.connect import ssl_context
    for t in vcenters:
        def vc_ctx(t: Any = t) -> ssl.SSLContext:
            return ssl_context(t)
        out.append(Endpoint(f"vCenter {t.host}", t.host, t.port, "vsphere", "vsphere", vc_ctx))
    if smtp is not None:
        out.append(Endpoint("SMTP server", smtp.host, smtp.port, "smtp", "smtp", net.system_context, smtp.starttls))
    return out


def _advice(exc: BaseException, default: str) -> str:
    return exc.advice if isinstance(exc, LifeboatError) else default


def probe(e: Endpoint, timeout: float = TIMEOUT) -> EndpointResult:
    """Probe one endpoint hop by hop; stops at the first failed hop."""
    try:
        r = net.route(e.host, e.port, e.purpose)
    except LifeboatError as exc:
        res = EndpointResult(e, "refused")
        res.hops.append(Hop("allow-list", False, 0.0, exc.message, exc.advice))
        return res
    via = f"proxy {r.proxy.address}" if r.proxy else "direct"
    res = EndpointResult(e, via)
    res.hops.append(Hop("allow-list", True, 0.0, "allowed" if net.egress_policy().allow is not None
                        else "allowed (the allow-list is unrestricted)"))
    # DNS: the name the appliance itself resolves (the proxy resolves the target behind it).
    name, nport = (r.proxy.host, r.proxy.port) if r.proxy else (e.host, e.port)
    t0 = time.monotonic()
    try:
        infos = socket.getaddrinfo(name, nport, type=socket.SOCK_STREAM)
        addrs = sorted({str(i[4][0]) for i in infos})
        res.hops.append(Hop("dns", True, (time.monotonic() - t0) * 1000,
                            f"{name} → {', '.join(addrs[:4])}" + (" (the proxy's name)" if r.proxy else "")))
    except OSError as exc:
        res.hops.append(Hop("dns", False, (time.monotonic() - t0) * 1000, f"{name}: {exc}",
                            f"{name} does not resolve from the appliance: check the name and the appliance's DNS "
                            "servers." + (" (It is the proxy's name: check `lifeboat egress proxy --url`.)"
                                          if r.proxy else "")))
        return res
    steps: list[tuple[str, float, str]] = []
    t0 = time.monotonic()
    try:
        sock = net.open_connection(e.host, e.port, timeout=timeout, purpose=e.purpose,
                                   on_step=lambda s, secs, d: steps.append((s, secs, d)))
    except BaseException as exc:
        for s, secs, d in steps:
            res.hops.append(Hop(s, True, secs * 1000, d))
        took = (time.monotonic() - t0) * 1000 - sum(x[1] * 1000 for x in steps)
        code = getattr(exc, "code", "")
        if not steps:   # the TCP connection itself (to the target or the proxy)
            where = f"the proxy {r.proxy.address}" if r.proxy else f"{e.host}:{e.port}"
            res.hops.append(Hop("tcp", False, took, f"{where}: {getattr(exc, 'message', None) or exc}",
                                _advice(exc, f"Nothing accepts connections at {where}: check the address, that it "
                                             "runs, and the firewalls between the appliance and it.")))
        else:
            res.hops.append(Hop("proxy", False, took, f"{code + ': ' if code else ''}"
                                f"{getattr(exc, 'message', None) or exc}",
                                _advice(exc, "The proxy did not open the tunnel: check its access rules.")))
        if not isinstance(exc, Exception):
            raise
        return res
    for s, secs, d in steps:
        res.hops.append(Hop(s, True, secs * 1000, d))
    try:
        sock.settimeout(timeout)
        if e.kind == "smtp":
            _smtp_hops(sock, e, res)
        else:
            _https_hops(sock, e, res)
    finally:
        sock.close()
    return res


def _tls(sock: socket.socket, e: Endpoint, res: EndpointResult) -> ssl.SSLSocket | None:
    assert e.context is not None
    t0 = time.monotonic()
    try:
        ctx = e.context()
        tls = ctx.wrap_socket(sock, server_hostname=e.host)
        res.hops.append(Hop("tls", True, (time.monotonic() - t0) * 1000, f"{tls.version()}, certificate accepted"))
        return tls
    except (ssl.SSLError, OSError, LifeboatError) as exc:
        verify = isinstance(exc, ssl.SSLCertVerificationError) or "thumbprint" in str(exc)
        res.hops.append(Hop("tls", False, (time.monotonic() - t0) * 1000, str(getattr(exc, "message", None) or exc),
                            "The endpoint's certificate is not trusted: when a TLS-inspecting proxy or firewall is "
                            "in the path, add its CA to the appliance's system CA store (or bypass it for this "
                            "host); otherwise check the certificate and the host name." if verify else
                            "The TLS handshake failed: check that this port speaks TLS, and that nothing in the path "
                            "breaks TLS 1.2+."))
        return None


def _https_hops(sock: socket.socket, e: Endpoint, res: EndpointResult) -> None:
    conn: socket.socket = sock
    if e.kind in ("https", "vsphere"):
        tls = _tls(sock, e, res)
        if tls is None:
            return
        conn = tls
    t0 = time.monotonic()
    try:
        conn.sendall(f"HEAD / HTTP/1.1\r\nHost: {e.host}\r\nUser-Agent: lifeboat-check\r\nConnection: close\r\n\r\n"
                     .encode("latin-1"))
        line = conn.makefile("rb").readline(4096).decode("latin-1", "replace").strip()
        if not line.startswith("HTTP/"):
            raise OSError(f"not an HTTP answer: {line[:80]!r}" if line else "the connection closed without an answer")
        res.hops.append(Hop("http", True, (time.monotonic() - t0) * 1000, line))
    except OSError as exc:
        res.hops.append(Hop("http", False, (time.monotonic() - t0) * 1000, str(exc),
                            "The endpoint accepted the connection but gave no HTTP answer: check that the URL's port "
                            "is the service's, and the proxy's or firewall's logs."))


def _reply(f: Any) -> tuple[int, list[str]]:
    lines = []
    while True:
        raw = f.readline(4096)
        if not raw:
            raise OSError("the server closed the connection")
        text = raw.decode("latin-1", "replace").rstrip("\r\n")
        lines.append(text[4:])
        if len(text) < 4 or text[3] != "-":
            return int(text[:3]) if text[:3].isdigit() else 0, lines


def _smtp_hops(sock: socket.socket, e: Endpoint, res: EndpointResult) -> None:
    t0 = time.monotonic()
    try:
        f = sock.makefile("rb")
        code, banner = _reply(f)
        if code != 220:
            raise OSError(f"banner {code} {' '.join(banner)[:120]}")
        sock.sendall(b"EHLO lifeboat-check\r\n")
        code, caps = _reply(f)
        if code != 250:
            raise OSError(f"EHLO answered {code} {' '.join(caps)[:120]}")
        offers = {c.split(" ", 1)[0].upper() for c in caps[1:]}
        if e.starttls and "STARTTLS" not in offers:
            res.hops.append(Hop("smtp", False, (time.monotonic() - t0) * 1000, f"{banner[0][:80]}; no STARTTLS offered",
                                "The settings ask for STARTTLS but the server does not offer it: use its submission "
                                "port (usually 587)."))
            return
        res.hops.append(Hop("smtp", True, (time.monotonic() - t0) * 1000, f"{banner[0][:80]}"
                            + ("; STARTTLS offered" if "STARTTLS" in offers else "")))
        if e.starttls:
            sock.sendall(b"STARTTLS\r\n")
            code, _ = _reply(f)
            if code != 220:
                res.hops.append(Hop("tls", False, 0.0, f"STARTTLS answered {code}", "The server refused STARTTLS."))
                return
            tls = _tls(sock, e, res)
            if tls is not None:
                try:
                    tls.sendall(b"QUIT\r\n")
                except OSError:
                    pass
                tls.close()
            return
        sock.sendall(b"QUIT\r\n")
    except OSError as exc:
        res.hops.append(Hop("smtp", False, (time.monotonic() - t0) * 1000, str(exc),
                            "The server accepted the connection but did not speak SMTP: check the port."))


def run_check(endpoints: list[Endpoint], *, timeout: float = TIMEOUT) -> CheckReport:
    """Probe every endpoint (blocking). The report's ``ok`` is True only when every endpoint answers."""
    p = net.egress_policy().proxy
    return CheckReport([probe(e, timeout) for e in endpoints], p.address if p else None, time.time())
