"""The "Network and cloud" page's view model: the egress settings (allow-list presets and custom entries, proxy,
bandwidth schedule), the connectivity check and the e-mail alert settings, as plain data and per-field messages.

The engine validates (``engine.api.EmbeddedAppliance.save_egress`` / ``save_smtp``): a refusal names its field, which
this model maps to the form's field so the page shows the message next to it. Passwords are passed through to the
engine (the OS keyring) and never kept here. Qt-free, so it is tested without widgets too.

:class:`EgressPlan` is the same allow-list and proxy for a home whose appliance does not run yet (the set-up
wizard's Outbound network page): validated by the same engine function (``engine.api.egress_from_form``), tried
with ``engine.api.try_proxy``, used for the wizard's Azure Test connection, and written into the new home at Finish
(``engine.api.set_home_egress``: the proxy password to the OS keyring only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.api import EgressSettings, LifeboatError, egress_from_form, set_home_egress, try_proxy

from .quiet_thread import to_thread_quietly

#: engine field name → the form's field
FIELD_OF = {"custom": "custom", "allow-list entry": "custom", "preset": "presets", "proxy_url": "proxy_url",
            "proxy_user": "proxy_user", "proxy_password": "proxy_password", "bypass entry": "bypass",
            "work_hours": "work_hours", "work_rate": "work_rate", "off_rate": "off_rate", "server": "smtp_server",
            "to": "smtp_to", "from": "smtp_from", "user": "smtp_user", "starttls": "smtp_starttls",
            "password": "smtp_password"}


@dataclass
class Outcome:
    """What an action did: ``ok``, a message for the page, and messages by form field."""
    ok: bool
    message: str = ""
    errors: dict[str, str] = field(default_factory=dict)


def _outcome(exc: LifeboatError, fallback_field: str | None = None) -> Outcome:
    f = FIELD_OF.get(str((exc.details or {}).get("field") or ""), fallback_field)
    text = f"{exc.message} — {exc.advice}" if exc.advice else exc.message
    return Outcome(False, f"{exc.code}: {text}", {f: exc.message} if f else {})


def split_list(text: str) -> list[str]:
    """Entries typed one per line or separated by commas."""
    return [e.strip() for line in text.splitlines() for e in line.split(",") if e.strip()]


def proxy_outcome(r: dict[str, Any]) -> Outcome:
    """A proxy test's result (``{"ok", "code", "detail", "advice"}``) as a message, and the field it is about: a
    refused password at the password, anything else at the proxy URL."""
    if r.get("ok"):
        return Outcome(True, f"Proxy OK: {r['detail']}")
    f = "proxy_password" if r.get("code") == "LB_PROXY_AUTH" else "proxy_url"
    return Outcome(False, f"{r.get('code')}: {r.get('detail')}", {f: f"{r.get('code')}: {r.get('detail')}"})


@dataclass(frozen=True, slots=True)
class EgressPlan:
    """The URL allow-list and proxy typed for a new home (the set-up wizard's Outbound network page). The proxy
    password is held only until Finish hands it to the engine, which keeps it in the OS keyring (never in a
    ``repr``)."""
    presets: tuple[str, ...] = ()
    custom: tuple[str, ...] = ()
    proxy_url: str = ""
    proxy_user: str = ""
    proxy_password: str = field(default="", repr=False)
    bypass: tuple[str, ...] = ()

    @classmethod
    def from_form(cls, form: dict[str, Any]) -> EgressPlan:
        """``form`` as the Network and cloud page's (presets list; custom and bypass as typed)."""
        return cls(tuple(form.get("presets") or ()), tuple(split_list(form.get("custom", ""))),
                   str(form.get("proxy_url", "")).strip(), str(form.get("proxy_user", "")).strip(),
                   str(form.get("proxy_password") or ""), tuple(split_list(form.get("bypass", ""))))

    @property
    def empty(self) -> bool:
        """Nothing set: the appliance connects directly, to any host (a new home's default)."""
        return not (self.presets or self.custom or self.proxy_url)

    def settings(self) -> EgressSettings:
        """The engine's settings (InvalidInput naming the field when something is malformed)."""
        return egress_from_form(presets=self.presets, custom=self.custom, proxy_url=self.proxy_url,
                                proxy_user=self.proxy_user, bypass=self.bypass,
                                password_known=bool(self.proxy_password))

    def errors(self) -> dict[str, str]:
        """Messages by form field (the engine stops at the first field at fault); empty when valid."""
        try:
            self.settings()
        except LifeboatError as exc:
            return _outcome(exc).errors or {"proxy_url": exc.message}
        return {}

    def describe(self) -> str:
        if self.empty:
            return "direct (no proxy), any host"
        allow = [f"{p} preset" for p in self.presets] + list(self.custom)
        parts = [f"allow-list: {', '.join(allow)}" if allow else "allow-list: any host"]
        if self.proxy_url:
            parts.append(f"proxy {self.proxy_url}" + (f" as {self.proxy_user} (password: OS keyring only)"
                                                      if self.proxy_user else "")
                         + (f", bypass {', '.join(self.bypass)}" if self.bypass else ""))
        else:
            parts.append("no proxy")
        return "; ".join(parts)

    async def try_proxy(self, target: tuple[str, int] | None = None) -> Outcome:
        """The proxy's Test button for a new home: a tunnel through it (nothing stored)."""
        if not self.proxy_url:
            return Outcome(False, "Enter the proxy's URL first.", {"proxy_url": "Enter http://HOST:PORT."})
        try:
            r = await to_thread_quietly(try_proxy, self.proxy_url, self.proxy_user, self.proxy_password or None,
                                        self.bypass, target)
        except LifeboatError as exc:
            return _outcome(exc, "proxy_url")
        return proxy_outcome(r)

    async def write(self, home: Path) -> dict[str, Any]:
        """Store in ``home`` as ``lifeboat egress ...`` does (the password to the keyring only)."""
        return await to_thread_quietly(set_home_egress, home, self.settings(), self.proxy_password or None)


class NetworkSettingsModel:
    """Over the console's facade (``EngineFacade``); ``available`` is False while the appliance is stopped or the
    facade has no network settings (the synthetic one)."""

    def __init__(self, facade: Any) -> None:
        self.facade = facade

    @property
    def available(self) -> bool:
        return bool(getattr(self.facade, "has_network", False))

    def egress(self) -> dict[str, Any]:
        return self.facade.egress_settings()

    def smtp(self) -> dict[str, Any] | None:
        return self.facade.smtp_settings()

    def save_egress(self, form: dict[str, Any]) -> Outcome:
        """``form``: presets (list), custom, proxy_url, proxy_user, proxy_password, bypass, work_hours, work_rate,
        off_rate (texts as typed)."""
        try:
            self.facade.save_egress(
                presets=list(form.get("presets") or []), custom=split_list(form.get("custom", "")),
                proxy_url=form.get("proxy_url", ""), proxy_user=form.get("proxy_user", ""),
                proxy_password=form.get("proxy_password") or None, bypass=split_list(form.get("bypass", "")),
                work_hours=form.get("work_hours", "08:00-18:00"), work_rate=form.get("work_rate", "unlimited"),
                off_rate=form.get("off_rate", "unlimited"))
        except LifeboatError as exc:
            return _outcome(exc)
        return Outcome(True, "Saved: in force now (no restart).")

    async def test_proxy(self, form: dict[str, Any]) -> Outcome:
        if not str(form.get("proxy_url", "")).strip():
            return Outcome(False, "Enter the proxy's URL first.", {"proxy_url": "Enter http://HOST:PORT."})
        try:
            r = await self.facade.test_proxy(form.get("proxy_url", ""), form.get("proxy_user", ""),
                                             form.get("proxy_password") or None, split_list(form.get("bypass", "")))
        except LifeboatError as exc:
            return _outcome(exc, "proxy_url")
        return proxy_outcome(r)

    async def check(self) -> tuple[Outcome, dict[str, Any] | None]:
        try:
            rep = await self.facade.egress_check()
        except LifeboatError as exc:
            return _outcome(exc), None
        if not rep["endpoints"]:
            return Outcome(True, "No outbound endpoint in use yet (no remote vault, vCenter or SMTP server)."), rep
        bad = [e for e in rep["endpoints"] if not e["ok"]]
        return Outcome(not bad, "Every endpoint answers." if not bad else
                       f"{len(bad)} of {len(rep['endpoints'])} endpoints do not answer."), rep

    async def save_smtp(self, form: dict[str, Any]) -> Outcome:
        try:
            await self.facade.save_smtp(server=form.get("smtp_server", ""), to=form.get("smtp_to", ""),
                                        starttls=bool(form.get("smtp_starttls")), user=form.get("smtp_user", ""),
                                        password=form.get("smtp_password") or None,
                                        sender=form.get("smtp_from", ""))
        except LifeboatError as exc:
            return _outcome(exc, "smtp_server")
        return Outcome(True, "E-mail settings saved (the server answered).")

    async def send_test(self) -> Outcome:
        try:
            mid = await self.facade.send_test_email()
        except LifeboatError as exc:
            return _outcome(exc)
        return Outcome(True, f"Test e-mail sent ({mid}).")
