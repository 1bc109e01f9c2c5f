"""The appliance's network settings part: egress (allow-list, proxy, bandwidth) and e-mail alerts.

- Applies the stored egress settings (``engine/egress.py``) to the process's outbound policy (``net``) at start and
  whenever their revision in ``state.db`` changes (:meth:`NetworkSettings.tick`, every 2 s: a ``lifeboat egress``
  command reaches a running appliance without a restart); puts the previous policy back at stop.
- Runs the connectivity check (``egress_check.py``) on demand and every :data:`CHECK_EVERY` seconds while endpoints
  are in use, raising ``LB_EGRESS_CHECK_FAILED`` while it fails (cleared when it passes).
- Owns the e-mail alerts (``mail_alerts.MailAlerts``) and the SMTP settings (``engine/mailer.py``).

The CLI uses the same functions on a home without a running appliance (the settings live in ``state.db``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from .. import net
from ..egress import EgressSettings, EgressStore, ProxySettings
from ..errors import LifeboatError
from ..events import Alert, EventBus
from ..mailer import SmtpSettings, SmtpStore, probe as smtp_probe, send_mail
from .egress_check import CheckReport, Endpoint, endpoints_in_use, run_check
from .mail_alerts import MailAlerts
from .state import StateDB

__all__ = ["CHECK_EVERY", "NetworkSettings", "proxy_test", "save_home_egress"]

log = logging.getLogger(__name__)

#: The appliance checks its endpoints this often (seconds) while any is in use.
CHECK_EVERY = 900.0


def _vcenter_targets(db: StateDB) -> list[Any]:
    from ..vsphere.store import VSphereStore
    store = VSphereStore(db.db)
    return [store.target(r) for r in store.endpoints()]


def proxy_test(proxy: net.Proxy, target: tuple[str, int] | None, *, timeout: float = 10.0) -> dict[str, Any]:
    """Open a CONNECT tunnel through ``proxy`` (unsaved settings) to ``target`` (an endpoint in use; the proxy's own
    address when there is none), nothing sent through it. Returns ``{"ok", "detail", "code"}``; ``ok`` is False only
    when the proxy is unreachable or refuses the credentials (a refused destination is the allow-list's or the
    proxy's rules' business, and is reported in ``detail``)."""
    host, port = target or (proxy.host, proxy.port)
    try:
        net.open_tunnel(proxy, host, port, timeout=timeout).close()
        return {"ok": True, "code": "", "detail": f"the proxy {proxy.address} opened a tunnel to {host}:{port}"}
    except LifeboatError as exc:
        if exc.code == "LB_PROXY_REFUSED":
            return {"ok": True, "code": exc.code,
                    "detail": f"the proxy {proxy.address} accepted the credentials but refused the tunnel: "
                              f"{exc.message}"}
        return {"ok": False, "code": exc.code, "detail": exc.message, "advice": exc.advice}


def save_home_egress(root: Path, settings: EgressSettings, proxy_password: str | None = None) -> EgressSettings:
    """Store egress settings in the home at ``root`` (``state.db``, the proxy password in the OS keyring) exactly
    as ``lifeboat egress ...`` does; an appliance started on that home later puts them in force at its start (a
    running one within 2 s). The set-up wizard's Finish writes its Outbound network page this way."""
    from ..home import ApplianceHome
    home = ApplianceHome(root)
    cfg = home.load_config()
    db = StateDB(home.db)
    try:
        return NetworkSettings(db, cfg["appliance_id"], cfg.get("vault") or {}).save(
            settings, proxy_password=proxy_password, keep_password=False)
    finally:
        db.close()


class NetworkSettings:
    """The egress and e-mail settings of one appliance, applied to its process."""

    def __init__(self, db: StateDB, appliance_id: str, vault_cfg: dict[str, Any], bus: EventBus | None = None, *,
                 gather: float = 30.0) -> None:
        self.db = db
        self.bus = bus
        self.appliance_id = appliance_id
        self.vault_cfg = vault_cfg
        self.egress = EgressStore(db, appliance_id)
        self.smtp = SmtpStore(db, appliance_id)
        self._applied_rev: int | None = None
        self._previous: net.EgressPolicy | None = None
        self._smtp_cache: tuple[str | None, SmtpSettings | None, str | None] = (None, None, None)
        self.last_check: CheckReport | None = None
        self._checking = False
        self.mail = MailAlerts(bus, self.smtp_in_force, record=db.add_event, gather=gather) if bus else None

    # egress -------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Put this appliance's policy in force (keeping the one it replaces for :meth:`stop`)."""
        self._previous = net.egress_policy()
        self.apply()

    def stop(self) -> None:
        if self.mail:
            self.mail.close()
        if self._previous is not None:
            net.set_egress_policy(self._previous)
            self._previous = None

    def apply(self) -> None:
        rev = self.egress.revision()
        try:
            net.set_egress_policy(self.egress.policy())
        except LifeboatError as exc:   # keyring unreadable: keep the old policy, say so
            log.error("egress settings not applied: %s", exc)
            return
        self._applied_rev = rev
        log.info("egress settings revision %d in force", rev)

    async def tick(self) -> None:
        """Every 2 s: apply new settings; send a due alert digest."""
        if self.egress.revision() != self._applied_rev:
            self.apply()
        if self.mail:
            await self.mail.tick()

    def settings(self) -> EgressSettings:
        return self.egress.load()

    def save(self, settings: EgressSettings, *, proxy_password: str | None = None,
             keep_password: bool = True) -> EgressSettings:
        """Validate, store and put in force at once. ``proxy_password``: the new one (keyring); without one, the
        stored password stays when ``keep_password`` (and is removed when the proxy has no user)."""
        settings.validate()
        p = settings.proxy
        if p is None or not p.user:
            self.egress.set_proxy_password(None)
        elif proxy_password is not None:
            self.egress.set_proxy_password(proxy_password)
        elif not keep_password:
            self.egress.set_proxy_password(None)
        saved = self.egress.save(settings)
        if self._applied_rev is not None or self._previous is not None:
            self.apply()
        return saved

    def has_proxy_password(self) -> bool:
        return bool(self.egress.proxy_password())

    def endpoints(self) -> list[Endpoint]:
        return endpoints_in_use(self.vault_cfg, _vcenter_targets(self.db), self.smtp.load())

    def test_proxy(self, url: str, user: str | None, password: str | None,
                   bypass: tuple[str, ...] = ()) -> dict[str, Any]:
        """Try a proxy before saving it (the console's Test button; ``lifeboat egress proxy`` before it stores).
        ``password`` None with a user: the stored one."""
        ps = ProxySettings.parse(url, user=user or None, bypass=bypass)
        if ps.user and password is None:
            password = self.egress.proxy_password()
        eps = [e for e in self.endpoints() if not any(net.entry_matches(b, e.host, e.port) for b in ps.bypass)]
        target = (eps[0].host, eps[0].port) if eps else None
        return proxy_test(net.Proxy(ps.host, ps.port, ps.user, password), target)

    def check_now(self) -> CheckReport:
        """The connectivity check (blocking; a worker thread). Raises or clears LB_EGRESS_CHECK_FAILED."""
        report = run_check(self.endpoints())
        self.last_check = report
        self._alert(report)
        return report

    async def check(self) -> CheckReport:
        return await asyncio.to_thread(self.check_now)

    async def scheduled_check(self) -> None:
        if self._checking or not self.endpoints():
            return
        self._checking = True
        try:
            await self.check()
        finally:
            self._checking = False

    def _alert(self, report: CheckReport) -> None:
        if self.bus is None:
            return
        failed = report.failed()
        if failed:
            lines = []
            for r in failed:
                bad = next(h for h in r.hops if not h.ok)
                lines.append(f"{r.endpoint.name} {r.endpoint.host}:{r.endpoint.port}: {bad.hop} failed: {bad.detail}")
            first = next(h for h in failed[0].hops if not h.ok)
            self.bus.emit(Alert(None, "LB_EGRESS_CHECK_FAILED",
                                f"connectivity check: {len(failed)} of {len(report.results)} endpoints do not answer: "
                                + "; ".join(lines), first.advice or "Run `lifeboat egress check --home DIR`.",
                                "critical", {"subject": "egress", "endpoints": [r.to_dict() for r in failed]},
                                id="LB_EGRESS_CHECK_FAILED", component="egress"))
        else:
            self.bus.emit(Alert(None, "LB_EGRESS_CHECK_FAILED", "connectivity check: every endpoint answers", "",
                                "info", {"subject": "egress"}, id="LB_EGRESS_CHECK_FAILED", component="egress",
                                state="cleared"))

    # e-mail -------------------------------------------------------------------------------------------------
    def smtp_in_force(self) -> tuple[SmtpSettings | None, str | None]:
        """The SMTP settings and password (the keyring is read again only when the settings change)."""
        raw = self.db.get_meta("smtp")
        if raw != self._smtp_cache[0]:
            s = SmtpSettings.from_dict(json.loads(raw)) if raw else None
            self._smtp_cache = (raw, s, self.smtp.password() if s and s.user else None)
        return self._smtp_cache[1], self._smtp_cache[2]

    def smtp_settings(self) -> SmtpSettings | None:
        return self.smtp.load()

    def save_smtp(self, settings: SmtpSettings, password: str | None = None, *, check: bool = True) -> SmtpSettings:
        """Validate and store; with ``check``, refuse (nothing changed) when the server cannot be reached or refuses
        the login. ``password`` None with a user: the stored one."""
        settings.validate()
        if settings.user and password is None:
            password = self.smtp.password()
        if check:
            smtp_probe(settings, password)
        return self.smtp.save(settings, password)

    def send_test(self) -> str:
        """Send a test e-mail now with the stored settings (blocking); returns its Message-ID."""
        s = self.smtp.load()
        if s is None:
            from ..errors import InvalidInput
            raise InvalidInput("e-mail alerts are not set up", field="smtp",
                               advice="Set the SMTP server first: `lifeboat alerts smtp --home DIR --server HOST:PORT "
                                      "--to ADDR`.")
        pw = self.smtp.password() if s.user else None
        return send_mail(s, pw, "[Lifeboat] test e-mail",
                         "This is a test e-mail from the Lifeboat appliance.\n\nAlert e-mails will come from this "
                         f"address to {', '.join(s.recipients)}, at most one every {s.digest_seconds:g} s.\n")
