"""The vault target, as the console shows and changes it: the "Add target" flow for Azure Blob (the first-run wizard
and the settings dialog) and the target's health on the dashboard. Qt-free, so it is tested without widgets too.

Test connection and Apply are the engine's own (``engine.api``: ``check_azure_target`` / ``set_azure_target`` for a
home whose appliance is not running yet, ``EmbeddedAppliance.test_vault_target`` / ``set_vault_target`` for the
running one), so they go out through the egress settings (allow-list, proxy) exactly as replication will. A refusal
is turned into a message next to the field at fault, with its ``LB_`` code and what to fix. The key or SAS token
is passed through to the engine, which keeps it in the OS keyring only; nothing here stores or logs it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.api import LifeboatError, TargetHealthView, check_azure_target, format_duration, set_azure_target

from .models import format_rate
from .network import EgressPlan, Outcome
from .quiet_thread import to_thread_quietly

#: the engine's error code → the form field it is about
FIELD_OF_CODE = {"LB_CLOUD_AUTH_FAILED": "secret", "LB_CONTAINER_MISSING": "container",
                 "LB_CLOUD_UNREACHABLE": "account_url", "LB_EGRESS_REFUSED": "account_url",
                 "LB_PROXY_AUTH": "account_url", "LB_PROXY_UNREACHABLE": "account_url"}
#: what to fix, when the engine's error carries no advice of its own
FIX = {"LB_CLOUD_AUTH_FAILED": "Check the account key, or the SAS token (it must allow read, write, delete and list "
                               "on the container, and must not have expired).",
       "LB_CONTAINER_MISSING": "Create the container in the storage account, or correct its name.",
       "LB_CLOUD_UNREACHABLE": "Check the account URL, and the proxy under Network and cloud.",
       "LB_EGRESS_REFUSED": "Add the account's host to the URL allow-list under Network and cloud.",
       "LB_PROXY_AUTH": "Correct the proxy's user or password under Network and cloud.",
       "LB_PROXY_UNREACHABLE": "Check the proxy's address under Network and cloud."}
#: a new home's test (the set-up wizard) goes out through its Outbound network page: these refusals are about that
#: page's fields, and are fixed there
NEW_HOME_FIELD_OF_CODE = {"LB_PROXY_AUTH": "proxy_password", "LB_PROXY_UNREACHABLE": "proxy_url",
                          "LB_PROXY_REFUSED": "proxy_url", "LB_EGRESS_REFUSED": "custom"}
NEW_HOME_FIX = {"LB_PROXY_AUTH": "Correct the proxy's user or password on the Outbound network page (Back).",
                "LB_PROXY_UNREACHABLE": "Check the proxy's address on the Outbound network page (Back).",
                "LB_PROXY_REFUSED": "The proxy refused the tunnel: check its rules, or the bypass list on the "
                                    "Outbound network page (Back).",
                "LB_EGRESS_REFUSED": "Add the account's host (or its private endpoint's IP address) to the "
                                     "allow-list on the Outbound network page (Back)."}
#: engine field names (``InvalidInput.details["field"]``) → the form's
FIELD_OF = {"account_url": "account_url", "container": "container", "secret": "secret"}


@dataclass(frozen=True, slots=True)
class AzureTarget:
    """An Azure Blob target as typed: account URL, container, ``auth`` "key" or "sas", and the secret (never
    shown in a repr)."""
    account_url: str
    container: str
    auth: str = "key"
    secret: str = field(default="", repr=False)

    def credential(self) -> dict[str, str | None]:
        return {"key": self.secret, "sas": None} if self.auth == "key" else {"key": None, "sas": self.secret}

    def describe(self) -> str:
        return (f"Azure Blob {self.account_url.rstrip('/')}, container {self.container} "
                f"({'account key' if self.auth == 'key' else 'SAS token'} in the OS keyring)")


def validate(t: AzureTarget) -> dict[str, str]:
    """Messages by field for what is plainly missing or malformed (the engine checks the rest)."""
    out: dict[str, str] = {}
    url = t.account_url.strip()
    if not url:
        out["account_url"] = "Enter the storage account's blob URL, e.g. https://ACCOUNT.blob.core.windows.net."
    elif not url.lower().startswith(("https://", "http://")):
        out["account_url"] = "Start the URL with https:// (http:// only for a local emulator)."
    if not t.container.strip():
        out["container"] = "Enter the container's name (3–63 lower-case letters, digits and hyphens)."
    if not t.secret.strip():
        out["secret"] = "Enter the account key or the SAS token."
    if t.auth not in ("key", "sas"):
        out["auth"] = "Choose an account key or a SAS token."
    return out


def outcome_of(exc: LifeboatError, *, new_home: bool = False) -> Outcome:
    """An engine refusal as a message (code, what happened, what to fix) and the field it is about. ``new_home``:
    the test went out through the wizard's Outbound network page, where proxy and allow-list refusals are fixed
    (their field is that page's, their message carries the code)."""
    if new_home and exc.code in NEW_HOME_FIELD_OF_CODE:
        fix = NEW_HOME_FIX[exc.code]
        text = f"{exc.code}: {exc.message} — {fix}"
        return Outcome(False, text, {NEW_HOME_FIELD_OF_CODE[exc.code]: f"{exc.code}: {exc.message}"})
    f = FIELD_OF.get(str((exc.details or {}).get("field") or "")) or FIELD_OF_CODE.get(exc.code)
    fix = exc.advice or FIX.get(exc.code, "")
    text = f"{exc.code}: {exc.message}" + (f" — {fix}" if fix else "")
    # the field says what to fix (short); the full message with its code is the page's
    return Outcome(False, text, {f: FIX.get(exc.code) or exc.message} if f else {})


def _checked(r: dict[str, Any]) -> str:
    return (f"Connection OK: {r.get('account_url')} answered, the credential was accepted and container "
            f"{r.get('container')} took a test write ({float(r.get('latency_ms') or 0):.0f} ms).")


async def test_new(t: AzureTarget, home: Path | None = None, egress: EgressPlan | None = None) -> Outcome:
    """Test connection for a home whose appliance does not run (the wizard): through ``egress`` (the Outbound
    network page as typed; None or empty: direct), else the egress settings of ``home``. Nothing is stored."""
    errs = validate(t)
    if errs:
        return Outcome(False, "Complete the highlighted fields.", errs)
    plan = egress if egress is not None and not egress.empty else None
    try:
        settings = plan.settings() if plan is not None else None
        r = await to_thread_quietly(check_azure_target, t.account_url.strip(), t.container.strip(),
                                    home=home, retry_for=8.0, egress=settings,
                                    proxy_password=plan.proxy_password or None if plan else None,
                                    **t.credential())
    except LifeboatError as exc:
        return outcome_of(exc, new_home=egress is not None)
    return Outcome(True, _checked(r) + (f" Through: {plan.describe()}." if plan else ""))


async def set_new(t: AzureTarget, home: Path) -> dict[str, Any]:
    """Store the target in ``home`` (not running): checked again first; raises the engine's error."""
    return await to_thread_quietly(set_azure_target, home, t.account_url.strip(), t.container.strip(),
                                   **t.credential())


class TargetModel:
    """Add target in the settings, over the console's facade (``EngineFacade``); ``available`` is False while the
    appliance is stopped (and for the synthetic facade)."""

    def __init__(self, facade: Any) -> None:
        self.facade = facade

    @property
    def available(self) -> bool:
        return bool(getattr(self.facade, "has_network", False))

    def current(self) -> dict[str, Any]:
        return dict(self.facade.vault_target())

    @staticmethod
    def describe(cur: dict[str, Any]) -> str:
        if cur.get("kind") == "azure":
            text = (f"Azure Blob {cur.get('account_url')}, container {cur.get('container')} "
                    f"({'account key' if cur.get('auth') == 'key' else 'SAS token'}: "
                    f"{'in the OS keyring' if cur.get('credential_present') else 'MISSING from the OS keyring'})")
        else:
            text = f"local folder {cur.get('path')}"
        if cur.get("in_use") and cur.get("in_use") != cur.get("kind"):
            text += f". The running appliance still replicates to its {cur['in_use']} vault until it restarts."
        return text

    @staticmethod
    def refusal(cur: dict[str, Any]) -> str | None:
        """Why the target cannot change now (machines are protected into the current one), or None."""
        names = list(cur.get("protected") or [])
        if not names:
            return None
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        return (f"The target cannot change: {len(names)} machine(s) are already protected into the current vault "
                f"({shown}). A machine's history cannot move between vaults; a new appliance home is needed to use "
                "another target.")

    async def test(self, t: AzureTarget) -> Outcome:
        errs = validate(t)
        if errs:
            return Outcome(False, "Complete the highlighted fields.", errs)
        try:
            r = await self.facade.test_vault_target(t.account_url.strip(), t.container.strip(), **t.credential())
        except LifeboatError as exc:
            return outcome_of(exc)
        return Outcome(True, _checked(r))

    async def apply(self, t: AzureTarget) -> Outcome:
        """The engine call ``lifeboat vault set`` makes (checked again there; nothing changed on a refusal)."""
        errs = validate(t)
        if errs:
            return Outcome(False, "Complete the highlighted fields.", errs)
        try:
            await self.facade.set_vault_target(t.account_url.strip(), t.container.strip(), **t.credential())
        except LifeboatError as exc:
            return outcome_of(exc)
        return Outcome(True, f"Saved: {t.describe()}. The appliance replicates to it from its next start.")


# the dashboard's target health -------------------------------------------------------------------------------------
STATE_HEALTH = {"ok": "ok", "idle": "", "unknown": "", "stalled": "warning", "throttled": "warning",
                "error": "critical"}
STATE_WORD = {"ok": "OK", "idle": "Idle", "unknown": "Unknown", "stalled": "Stalled", "throttled": "Throttled",
              "error": "Error"}


def _ago(t: float | None, now: float) -> str:
    if t is None:
        return ""
    return f"{format_duration(round(max(0.0, now - t)))} ago ({time.strftime('%H:%M:%S', time.localtime(t))})"


def health_rows(v: TargetHealthView, now: float | None = None) -> list[tuple[str, str]]:
    """(label, text) rows for the dashboard's target panel. Unknown stays unknown."""
    now = time.time() if now is None else now
    where = (f"Azure Blob {v.location}, container {v.container}" if v.kind == "azure"
             else f"{v.kind} {v.location or ''}".strip())
    last = (_ago(v.last_upload, now) if v.last_upload is not None
            else "unknown: nothing reached the target since the appliance started")
    backlog = f"{v.upload_backlog_records} record(s) not uploaded yet"
    if v.apply_backlog_records is not None:
        backlog += f"; {v.apply_backlog_records} uploaded but not yet applied to the page blobs"
    if v.throttled is None:
        throttled = "not applicable (local vault)"
    elif v.throttled:
        throttled = (f"yes: {v.throttle_events} × 429/503 (server busy) in the last {v.throttle_window:.0f} s, "
                     f"the last {_ago(v.last_throttle_time, now)}")
    else:
        throttled = f"no 429/503 in the last {v.throttle_window:.0f} s" + (
            f" (the last {_ago(v.last_throttle_time, now)})" if v.last_throttle_time else "")
    limit = "none (unlimited)" if v.rate_limit is None else f"{format_rate(v.rate_limit)} now (bandwidth schedule)"
    return [("Target", where), ("State", f"{STATE_WORD.get(v.state, v.state)}: {v.detail}"),
            ("Last upload", last), ("Backlog", backlog), ("Throttled", throttled), ("Upload limit", limit),
            ("Error", v.error or "none")]
