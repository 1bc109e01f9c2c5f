"""``lifeboat egress show|allow|proxy|bandwidth|check`` and ``lifeboat alerts smtp|test``.

They work on the appliance home directly (the settings live in ``state.db``, the passwords in the OS keyring), with
or without a running appliance: a running one applies a change within 2 s. Passwords are read from standard input
(``--password-stdin``), never from the command line. A change that fails its check (a proxy that refuses the
credentials, an SMTP server that cannot be reached) changes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from . import net
from .egress import EgressSettings, ProxySettings, format_rate, parse_rate
from .errors import InvalidInput, LifeboatError
from .policy import parse_duration

__all__ = ["add_alert_subcommands", "add_subcommands"]


@contextmanager
def _network(a: argparse.Namespace) -> Iterator[Any]:
    from .appliance.network import NetworkSettings
    from .appliance.state import StateDB
    from .home import ApplianceHome
    h = ApplianceHome(Path(a.home))
    cfg = h.load_config()
    db = StateDB(h.db)
    try:
        yield NetworkSettings(db, cfg["appliance_id"], cfg.get("vault") or {})
    finally:
        db.close()


def _out(obj: Any, a: argparse.Namespace, text: str) -> None:
    if getattr(a, "json", False):
        json.dump(obj, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(text)


def _password_stdin(what: str) -> str:
    line = sys.stdin.readline()
    pw = line[:-1] if line.endswith("\n") else line
    if pw.endswith("\r"):
        pw = pw[:-1]
    if not pw:
        raise InvalidInput(f"no {what} on standard input", field="password",
                           advice=f"Pipe the {what} in: `printf %s \"$PW\" | lifeboat ... --password-stdin`.")
    return pw


def _view(net_settings: Any) -> dict[str, Any]:
    s = net_settings.settings()
    d = s.to_dict()
    if d["proxy"] is not None:
        d["proxy"]["password_set"] = net_settings.has_proxy_password() if s.proxy and s.proxy.user else False
    return d


def _text(d: dict[str, Any]) -> str:
    lines = []
    if d["restricted"]:
        lines.append(f"allow-list: restricted ({len(d['allow'])} entries)")
        for p in d["presets"]:
            lines.append(f"  preset {p}")
        for c in d["custom"]:
            lines.append(f"  custom {c}")
    else:
        lines.append("allow-list: unrestricted (no preset or entry: the vault target, vCenters and the SMTP server may "
                     "be any host); restrict it with `lifeboat egress allow --preset commercial`")
    p = d["proxy"]
    if p is None:
        lines.append("proxy: none (direct connections)")
    else:
        auth = f", user {p['user']} (password {'in the keyring' if p.get('password_set') else 'NOT SET'})" \
            if p["user"] else ", no authentication"
        lines.append(f"proxy: {p['url']}{auth}; bypass: {', '.join(p['bypass']) or 'none'}")
    b = d["bandwidth"]
    lines.append(f"bandwidth to the target: {b['work_rate_text']} during work hours {b['work_hours']}, "
                 f"{b['off_rate_text']} outside them")
    lines.append(f"(settings revision {d['revision']}; they apply to the vault target, vCenters and e-mail, not to "
                 "agents)")
    return "\n".join(lines)


# egress ------------------------------------------------------------------------------------------------------------
def cmd_show(a: argparse.Namespace) -> int:
    with _network(a) as n:
        d = _view(n)
    _out(d, a, _text(d))
    return 0


def cmd_allow(a: argparse.Namespace) -> int:
    with _network(a) as n:
        s: EgressSettings = n.settings()
        if a.preset:
            s = s.with_preset(a.preset)
        elif a.add:
            s = s.adding(a.add)
        else:
            s = s.removing(a.remove)
        n.save(s)
        d = _view(n)
    _out(d, a, _text(d))
    return 0


def cmd_proxy(a: argparse.Namespace) -> int:
    with _network(a) as n:
        s: EgressSettings = n.settings()
        if a.none:
            if a.user or a.password_stdin or a.bypass:
                raise InvalidInput("--none takes no --user, --password-stdin or --bypass", field="proxy_url")
            from dataclasses import replace
            n.save(replace(s, proxy=None))
        else:
            if a.password_stdin and not a.user:
                raise InvalidInput("--password-stdin needs --user", field="proxy_user")
            bypass = tuple(b for b in (a.bypass or "").split(",") if b.strip())
            ps = ProxySettings.parse(a.url, user=a.user, bypass=bypass)
            pw = _password_stdin("proxy password") if a.password_stdin else None
            if ps.user and pw is None and not n.has_proxy_password():
                raise InvalidInput(f"no password for proxy user {ps.user!r}", field="proxy_password",
                                   advice="Give it on standard input with --password-stdin.")
            if not a.no_check:
                res = n.test_proxy(ps.url, ps.user, pw, ps.bypass)
                if not res["ok"]:
                    err = LifeboatError(res["detail"], code=res["code"], advice=res.get("advice"))
                    err.advice = (err.advice + " Nothing was changed (--no-check stores the proxy without "
                                  "trying it).")
                    raise err
            from dataclasses import replace
            n.save(replace(s, proxy=ps), proxy_password=pw)
        d = _view(n)
    _out(d, a, _text(d))
    return 0


def cmd_bandwidth(a: argparse.Namespace) -> int:
    with _network(a) as n:
        s: EgressSettings = n.settings()
        b = s.bandwidth
        from dataclasses import replace
        if a.work_hours is not None:
            b = replace(b, work_hours=a.work_hours.strip())
        if a.work_rate is not None:
            b = replace(b, work_rate=parse_rate(a.work_rate, what="work_rate"))
        if a.off_rate is not None:
            b = replace(b, off_rate=parse_rate(a.off_rate, what="off_rate"))
        if b != s.bandwidth:
            n.save(replace(s, bandwidth=b))
        d = _view(n)
        now = format_rate(n.settings().bandwidth.rate_now())
    b2 = d["bandwidth"]
    _out(b2, a, f"bandwidth to the target: {b2['work_rate_text']} during work hours {b2['work_hours']}, "
         f"{b2['off_rate_text']} outside them (now: {now})")
    return 0


def cmd_check(a: argparse.Namespace) -> int:
    with _network(a) as n:
        old = net.set_egress_policy(n.egress.policy())   # this process connects as the appliance would
        try:
            report = n.check_now()
        finally:
            net.set_egress_policy(old)
    _out(report.to_dict(), a, report.text())
    return 0 if report.ok else 1


def add_subcommands(sub: Any) -> None:
    def home(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--home", required=True, help="the appliance's home folder")
        sp.add_argument("--json", action="store_true", help="one JSON document on stdout")

    eg = sub.add_parser("egress", help="what leaves the appliance: URL allow-list, proxy, bandwidth, connectivity "
                                       "check").add_subparsers(dest="sub", required=True)
    s = eg.add_parser("show", help="the egress settings"); home(s); s.set_defaults(fn=cmd_show)
    s = eg.add_parser("allow", help="the URL allow-list: a preset, or add/remove an entry"); home(s)
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", choices=("commercial", "government"), help="add a documented Azure allow-list")
    g.add_argument("--add", metavar="PATTERN", help="host, *.domain (leftmost label), IP address or network[:PORT]")
    g.add_argument("--remove", metavar="PATTERN", help="a custom entry, or a preset's name")
    s.set_defaults(fn=cmd_allow)
    s = eg.add_parser("proxy", help="the HTTP CONNECT proxy (checked before it is stored)"); home(s)
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--url", metavar="http://HOST:PORT")
    g.add_argument("--none", action="store_true", help="connect directly")
    s.add_argument("--user", help="basic authentication user (the password from --password-stdin)")
    s.add_argument("--password-stdin", action="store_true", help="read the proxy password from standard input")
    s.add_argument("--bypass", metavar="H,...", help="destinations reached directly (allow-list entry syntax)")
    s.add_argument("--no-check", action="store_true", help="store without trying the proxy")
    s.set_defaults(fn=cmd_proxy)
    s = eg.add_parser("bandwidth", help="the upload rate to the target, by work hours (shown when given none)")
    home(s)
    s.add_argument("--work-hours", metavar="HH:MM-HH:MM", help="every day, local time (default 08:00-18:00)")
    s.add_argument("--work-rate", metavar="RATE", help="e.g. 10MB/s, 100Mbit/s or unlimited")
    s.add_argument("--off-rate", metavar="RATE", help="outside work hours, e.g. unlimited")
    s.set_defaults(fn=cmd_bandwidth)
    s = eg.add_parser("check", help="probe every endpoint in use hop by hop (exit 0 only when all answer)")
    home(s); s.set_defaults(fn=cmd_check)


# e-mail alerts -----------------------------------------------------------------------------------------------------
def cmd_smtp(a: argparse.Namespace) -> int:
    from .mailer import SmtpSettings
    with _network(a) as n:
        if a.password_stdin and not a.user:
            raise InvalidInput("--password-stdin needs --user", field="user")
        digest = parse_duration(a.digest, what="digest") if a.digest else 600.0
        s = SmtpSettings.parse(a.server, a.to, starttls=a.starttls, user=a.user, sender=a.sender,
                               digest_seconds=digest)
        pw = _password_stdin("SMTP password") if a.password_stdin else None
        if s.user and pw is None and not n.smtp.password():
            raise InvalidInput(f"no password for SMTP user {s.user!r}", field="password",
                               advice="Give it on standard input with --password-stdin.")
        saved = n.save_smtp(s, pw, check=not a.no_check)
    d = saved.to_dict()
    _out(d, a, f"alert e-mails: {d['server']}{' STARTTLS' if d['starttls'] else ''}"
               f"{', user ' + d['user'] if d['user'] else ''} → {', '.join(d['to'])} (from {d['from']}, at most one "
               f"every {d['digest_seconds']:g} s); try it: `lifeboat alerts test --home {a.home}`")
    return 0


def cmd_test(a: argparse.Namespace) -> int:
    with _network(a) as n:
        old = net.set_egress_policy(n.egress.policy())
        try:
            mid = n.send_test()
            s = n.smtp_settings()
        finally:
            net.set_egress_policy(old)
    assert s is not None
    _out({"sent": True, "message_id": mid, "to": list(s.recipients)}, a,
         f"test e-mail sent to {', '.join(s.recipients)} through {s.host}:{s.port} ({mid})")
    return 0


def add_alert_subcommands(al: Any) -> None:
    """``alerts smtp`` and ``alerts test`` beside ``alerts list|ack`` (engine/cli.py)."""
    def home(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--home", required=True, help="the appliance's home folder")
        sp.add_argument("--json", action="store_true", help="one JSON document on stdout")

    s = al.add_parser("smtp", help="e-mail the alerts (checked before it is stored)"); home(s)
    s.add_argument("--server", required=True, metavar="HOST:PORT")
    s.add_argument("--starttls", action="store_true", help="STARTTLS before anything else (needed for --user)")
    s.add_argument("--user", help="SMTP login (the password from --password-stdin)")
    s.add_argument("--password-stdin", action="store_true", help="read the SMTP password from standard input")
    s.add_argument("--to", required=True, metavar="ADDR[,ADDR]")
    s.add_argument("--from", dest="sender", metavar="ADDR", help="sender address (default lifeboat@HOSTNAME)")
    s.add_argument("--digest", metavar="DURATION", help="at most one e-mail per this long (default 10m)")
    s.add_argument("--no-check", action="store_true", help="store without connecting to the server")
    s.set_defaults(fn=cmd_smtp)
    s = al.add_parser("test", help="send a test e-mail now"); home(s); s.set_defaults(fn=cmd_test)
