"""The appliance's egress settings: the URL allow-list, the outbound proxy and the upload bandwidth schedule.

They are plain data (:class:`EgressSettings`), validated field by field (each error names its ``field``), stored as
schema-versioned JSON in ``state.db``'s ``meta`` table (key ``egress``) with a revision that grows at every save, and
turned into the process's :class:`engine.net.EgressPolicy` by :meth:`EgressSettings.policy`. Not secrets: the proxy
password lives in the OS keyring (``proxy-password/<appliance id>``, :mod:`engine.secrets`).

The allow-list governs the connections that leave the protected site (``net.EGRESS_PURPOSES``: the vault target,
vCenters, e-mail); with no preset and no custom entry it is *unrestricted* (what an appliance did before it had the
setting). Work hours apply every day, in the appliance's local time.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import urllib.parse
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Protocol

from . import net
from .errors import InvalidInput
from .policy import parse_window
from .secrets import delete_secret, get_secret, set_secret

__all__ = ["PRESETS", "BandwidthSchedule", "EgressSettings", "EgressStore", "MetaStore", "ProxySettings",
           "format_rate", "parse_rate", "proxy_password_name", "settings_from_form"]

SCHEMA = 1
META_KEY = "egress"

#: The seed's documented allow-lists (Azure Site Recovery's, for the commercial and the government clouds).
PRESETS: dict[str, tuple[str, ...]] = {
    "commercial": ("*.blob.core.windows.net", "login.microsoftonline.com",
                   "*.hypervrecoverymanager.windowsazure.com", "*.servicebus.windows.net"),
    "government": ("*.blob.core.usgovcloudapi.net", "login.microsoftonline.us",
                   "*.hypervrecoverymanager.windowsazure.com", "*.servicebus.usgovcloudapi.net"),
}


class MetaStore(Protocol):
    """What the settings need of ``state.db`` (``StateDB`` has it)."""

    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...


def proxy_password_name(appliance_id: str) -> str:
    return f"proxy-password/{appliance_id}"


# rates -------------------------------------------------------------------------------------------------------------
_RATE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?)(B|b|bit|bits|bps|Bps)?(?:/s|/sec|ps)?$")
_PREFIX = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_BPREFIX = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_rate(text: str | float | None, *, what: str = "rate") -> float | None:
    """'10MB/s' (decimal bytes), '8MiB/s' (binary), '100Mbit/s', '100Mb/s' or '100Mbps' (bits), 'unlimited' →
    bytes per second (None: unlimited). Raises InvalidInput naming ``what``."""
    if text is None:
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        t = str(text).strip().replace(" ", "")
        if t.lower() in ("unlimited", "none", "off", "0", ""):
            return None
        m = _RATE.match(t)
        if not m:
            raise InvalidInput(f"{what} {text!r} is not a rate", field=what,
                               advice="Use e.g. 10MB/s, 512KB/s, 8MiB/s or 100Mbit/s, or 'unlimited'.")
        number, prefix, binary, unit = float(m[1]), m[2].lower(), m[3], m[4] or "B"
        scale = _BPREFIX[prefix] if binary else _PREFIX[prefix]
        value = number * scale / (8 if unit in ("b", "bit", "bits", "bps") else 1)
    if value <= 0:
        return None
    if value < 1024:
        raise InvalidInput(f"{what} {text!r} is below 1 KiB/s: replication could not keep up with any change",
                           field=what, advice="Use at least 1KB/s, or 'unlimited'.")
    return value


def format_rate(rate: float | None) -> str:
    if rate is None:
        return "unlimited"
    for unit, size in (("GB/s", 1e9), ("MB/s", 1e6), ("KB/s", 1e3)):
        if rate >= size:
            v = rate / size
            return f"{v:g}{unit}" if v == round(v, 2) else f"{v:.2f}{unit}"
    return f"{rate:g}B/s"


# settings ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class BandwidthSchedule:
    """Upload rate to the target: ``work_rate`` during ``work_hours`` (``"08:00-18:00"``, every day, local time;
    may cross midnight), ``off_rate`` outside them; None = unlimited."""

    work_hours: str = "08:00-18:00"
    work_rate: float | None = None
    off_rate: float | None = None

    def validate(self) -> BandwidthSchedule:
        try:
            win = parse_window(self.work_hours)
        except InvalidInput as exc:
            raise InvalidInput(f"work hours {self.work_hours!r} are not HH:MM-HH:MM", field="work_hours",
                               advice="Use e.g. 08:00-18:00.") from exc
        if win is None:
            raise InvalidInput("work hours must be a time range", field="work_hours", advice="Use e.g. 08:00-18:00.")
        for name in ("work_rate", "off_rate"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or v < 1024):
                raise InvalidInput(f"{name.replace('_', ' ')} {v!r} is not a rate of at least 1 KiB/s", field=name,
                                   advice="Use e.g. 10MB/s, or 'unlimited'.")
        return self

    def in_work_hours(self, when: dt.datetime) -> bool:
        win = parse_window(self.work_hours)
        if win is None:
            return True
        start, end = win
        minute = when.hour * 60 + when.minute
        return start <= minute < end if start < end else (minute >= start or minute < end)

    def rate_at(self, when: dt.datetime) -> float | None:
        return self.work_rate if self.in_work_hours(when) else self.off_rate

    def rate_now(self) -> float | None:
        return self.rate_at(dt.datetime.now())

    @property
    def limited(self) -> bool:
        return self.work_rate is not None or self.off_rate is not None


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """An HTTP CONNECT proxy ``http://HOST:PORT``; ``user`` for basic auth (password in the keyring); ``bypass``:
    destinations reached directly (allow-list entry syntax)."""

    host: str
    port: int
    user: str | None = None
    bypass: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{h}:{self.port}"

    @classmethod
    def parse(cls, url: str, *, user: str | None = None, bypass: tuple[str, ...] | list[str] = ()) -> ProxySettings:
        """``http://HOST:PORT`` (or ``HOST:PORT``) → settings; raises InvalidInput with ``field``."""
        text = (url or "").strip()
        advice = "Give the proxy as http://HOST:PORT, e.g. http://proxy.corp.example:3128."
        if "://" not in text:
            text = "http://" + text
        u = urllib.parse.urlsplit(text)
        if u.scheme != "http":
            raise InvalidInput(f"proxy URL {url!r}: only http:// proxies (HTTP CONNECT) are supported",
                               field="proxy_url", advice=advice)
        if u.username or u.password:
            raise InvalidInput("the proxy URL must not carry a user or password", field="proxy_url",
                               advice="Give the user with --user and the password on standard input "
                                      "(--password-stdin): passwords stay out of settings and command lines.")
        try:
            port = u.port
        except ValueError:
            port = None
        if not u.hostname or port is None or u.path not in ("", "/") or u.query:
            raise InvalidInput(f"proxy URL {url!r} is not http://HOST:PORT", field="proxy_url", advice=advice)
        if user is not None and (not user.strip() or ":" in user or any(not c.isprintable() for c in user)):
            raise InvalidInput(f"proxy user {user!r} is not valid (empty, or holds ':' or control characters)",
                               field="proxy_user", advice="Give the user name the proxy expects.")
        by = tuple(net.check_allow_entry(b, what="bypass entry") for b in bypass if b.strip())
        return cls(u.hostname, port, user.strip() if user else None, by)


@dataclass(frozen=True, slots=True)
class EgressSettings:
    """The whole egress configuration (see the module doc). ``revision`` grows at every save."""

    presets: tuple[str, ...] = ()
    custom: tuple[str, ...] = ()
    proxy: ProxySettings | None = None
    bandwidth: BandwidthSchedule = field(default_factory=BandwidthSchedule)
    revision: int = 0

    @property
    def restricted(self) -> bool:
        return bool(self.presets or self.custom)

    def allow_list(self) -> tuple[str, ...] | None:
        """Every entry in force (presets first), or None when unrestricted."""
        if not self.restricted:
            return None
        out: list[str] = []
        for p in self.presets:
            out += [e for e in PRESETS[p] if e not in out]
        out += [e for e in self.custom if e not in out]
        return tuple(out)

    def validate(self) -> EgressSettings:
        for p in self.presets:
            if p not in PRESETS:
                raise InvalidInput(f"unknown allow-list preset {p!r}", field="preset",
                                   advice=f"Choose one of: {', '.join(PRESETS)}.")
        for e in self.custom:
            net.check_allow_entry(e)
        self.bandwidth.validate()
        return self

    def with_preset(self, name: str) -> EgressSettings:
        if name not in PRESETS:
            raise InvalidInput(f"unknown allow-list preset {name!r}", field="preset",
                               advice=f"Choose one of: {', '.join(PRESETS)}.")
        return replace(self, presets=self.presets if name in self.presets else (*self.presets, name))

    def adding(self, entry: str) -> EgressSettings:
        e = net.check_allow_entry(entry)
        return replace(self, custom=self.custom if e in self.custom else (*self.custom, e))

    def removing(self, entry: str) -> EgressSettings:
        """Remove a custom entry, or a preset by its name."""
        text = entry.strip().lower()
        if text in self.presets:
            return replace(self, presets=tuple(p for p in self.presets if p != text))
        e = net.check_allow_entry(entry)
        if e not in self.custom:
            raise InvalidInput(f"{entry!r} is not on the allow-list", field="remove",
                               advice="List the entries with `lifeboat egress show --home DIR`; a preset is removed "
                                      "by its name (commercial, government).")
        return replace(self, custom=tuple(c for c in self.custom if c != e))

    def policy(self, proxy_password: str | None = None) -> net.EgressPolicy:
        """The net policy these settings mean (``proxy_password`` from the keyring)."""
        p = self.proxy
        proxy = net.Proxy(p.host, p.port, p.user, proxy_password if p.user else None) if p else None
        sched = self.bandwidth
        rate: Callable[[], float | None] | None = sched.rate_now if sched.limited else None
        return net.EgressPolicy(allow=self.allow_list(), proxy=proxy, bypass=p.bypass if p else (),
                                applies_to=net.EGRESS_PURPOSES, upload_rate=rate)

    # wire / storage form -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        p = self.proxy
        b = self.bandwidth
        return {"schema": SCHEMA, "revision": self.revision, "presets": list(self.presets),
                "custom": list(self.custom), "restricted": self.restricted,
                "allow": list(self.allow_list() or []),
                "proxy": None if p is None else {"url": p.url, "host": p.host, "port": p.port, "user": p.user,
                                                 "bypass": list(p.bypass)},
                "bandwidth": {"work_hours": b.work_hours, "work_rate": b.work_rate, "off_rate": b.off_rate,
                              "work_rate_text": format_rate(b.work_rate), "off_rate_text": format_rate(b.off_rate)}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EgressSettings:
        p = d.get("proxy")
        b = d.get("bandwidth") or {}
        return cls(tuple(d.get("presets") or ()), tuple(d.get("custom") or ()),
                   None if not p else ProxySettings(str(p["host"]), int(p["port"]), p.get("user"),
                                                    tuple(p.get("bypass") or ())),
                   BandwidthSchedule(str(b.get("work_hours") or "08:00-18:00"), _opt(b.get("work_rate")),
                                     _opt(b.get("off_rate"))),
                   int(d.get("revision") or 0))


def settings_from_form(*, presets: list[str] | tuple[str, ...] = (), custom: list[str] | tuple[str, ...] = (),
                       proxy_url: str = "", proxy_user: str = "", bypass: list[str] | tuple[str, ...] = (),
                       work_hours: str = "08:00-18:00", work_rate: str | float | None = "unlimited",
                       off_rate: str | float | None = "unlimited", password_known: bool = True) -> EgressSettings:
    """The settings a form means, every field validated as typed (pure: nothing stored, nothing resolved).

    The one validation behind the console's Network and cloud page and the set-up wizard's Outbound network page:
    ``InvalidInput.details["field"]`` names the field at fault (``custom``, ``preset``, ``proxy_url``,
    ``proxy_user``, ``bypass entry``, ``proxy_password``, ``work_hours``, ``work_rate``, ``off_rate``). A proxy
    with a user needs a password: ``password_known`` says whether one is typed or already stored."""
    entries = []
    for e in custom:
        if e.strip():
            try:
                entries.append(net.check_allow_entry(e))
            except InvalidInput as exc:
                raise InvalidInput(exc.message, field="custom", advice=exc.advice) from None
    proxy = ProxySettings.parse(proxy_url, user=proxy_user.strip() or None,
                                bypass=[b for b in bypass if b.strip()]) if proxy_url.strip() else None
    if proxy is None and (proxy_user.strip() or any(b.strip() for b in bypass)):
        raise InvalidInput("a proxy user or bypass list was given without a proxy URL", field="proxy_url",
                           advice="Give the proxy as http://HOST:PORT, or clear the user and the bypass list.")
    bw = BandwidthSchedule(work_hours.strip(), parse_rate(work_rate, what="work_rate"),
                           parse_rate(off_rate, what="off_rate"))
    s = EgressSettings(tuple(presets), tuple(dict.fromkeys(entries)), proxy, bw).validate()
    if proxy is not None and proxy.user and not password_known:
        raise InvalidInput(f"no password for proxy user {proxy.user!r}", field="proxy_password",
                           advice="Type the proxy's password.")
    return s


def _opt(v: Any) -> float | None:
    return None if v is None else float(v)


class EgressStore:
    """Load and save :class:`EgressSettings` in ``state.db`` (``meta``), and the proxy password in the keyring."""

    def __init__(self, db: MetaStore, appliance_id: str) -> None:
        self.db = db
        self.appliance_id = appliance_id

    def revision(self) -> int:
        raw = self.db.get_meta(META_KEY)
        return int(json.loads(raw).get("revision") or 0) if raw else 0

    def load(self) -> EgressSettings:
        raw = self.db.get_meta(META_KEY)
        if not raw:
            return EgressSettings()
        d = json.loads(raw)
        if int(d.get("schema") or 1) > SCHEMA:
            raise InvalidInput("the egress settings were written by a newer Lifeboat", field="egress",
                               advice="Upgrade this Lifeboat to the version that wrote them.")
        return EgressSettings.from_dict(d)

    def save(self, settings: EgressSettings) -> EgressSettings:
        """Validate, bump the revision and store (a running appliance applies it within 2 s)."""
        s = replace(settings.validate(), revision=self.revision() + 1)
        d = s.to_dict()
        for k in ("restricted", "allow"):
            d.pop(k)
        d["bandwidth"] = {k: v for k, v in d["bandwidth"].items() if not k.endswith("_text")}
        self.db.set_meta(META_KEY, json.dumps(d, sort_keys=True))
        return s

    def proxy_password(self) -> str | None:
        return get_secret(proxy_password_name(self.appliance_id))

    def set_proxy_password(self, password: str | None) -> None:
        if password:
            set_secret(proxy_password_name(self.appliance_id), password)
        else:
            delete_secret(proxy_password_name(self.appliance_id))

    def policy(self) -> net.EgressPolicy:
        s = self.load()
        return s.policy(self.proxy_password() if s.proxy and s.proxy.user else None)
