"""``lifeboat vault set`` / ``vault show``: choose the vault backend of an appliance home (``appliance.json``
``vault``), with the credential in the OS keyring.

Setting is allowed on an initialised home before the first machine is protected (a machine's history cannot move
between backends), and only after a live check of the target: account reachable through the egress settings,
credential accepted, container present and writable. Any failure leaves the home exactly as it was.

The same check without storing anything is :func:`check_azure_target` (the console's Test connection). Both go out
through the home's egress settings (allow-list, proxy): :func:`home_egress` puts them in force in a process that
runs no appliance (the CLI, the set-up wizard); inside a running appliance its own policy is already in force. The
set-up wizard tests before its home exists: it passes the settings as typed (``egress``, ``proxy_password``), put in
force for the check only by :func:`egress_in_force`.

:func:`target_health` is what the dashboard shows of the target: where it is, when data last reached it, what is
still on its way, whether it throttles (429/503 seen through :func:`watch_target`) and its error, if any. Anything
not known is reported as unknown (None), never as fine.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

from .. import net
from ..egress import EgressSettings
from ..errors import Conflict, InvalidInput
from ..home import ApplianceHome
from ..secrets import delete_secret, get_secret, set_secret
from ..vault.azure.rest import Credential, check_container_name, parse_account_url
from ..vault.azure.vault import check_connection, connect
from .state import StateDB

__all__ = ["THROTTLE_WINDOW", "TargetWatch", "azure_secret_name", "check_azure_target", "egress_in_force", "home_egress",
           "set_azure_vault", "show_vault", "target_health", "watch_target"]

#: a 429/503 answer within this many seconds makes the target "throttled"
THROTTLE_WINDOW = 60.0
#: an upload backlog with no upload for this long makes the target "stalled"
STALL_AFTER = 30.0


def azure_secret_name(appliance_id: str) -> str:
    return f"vault-azure/{appliance_id}"


def _credential(key: str | None, sas: str | None) -> tuple[Credential, str]:
    secret = (key if key is not None else sas or "").strip()
    if not secret:
        raise InvalidInput("no account key or SAS token was given", field="secret",
                           advice="Give the storage account's key or a SAS token for the container (on the command "
                                  "line: pipe it in, `... --key-stdin < keyfile`).")
    return (Credential(key=secret) if key is not None else Credential(sas=secret)), secret


@contextmanager
def egress_in_force(policy: net.EgressPolicy) -> Iterator[None]:
    """``policy`` in force in this process for the duration; the policy in force before is put back after. Only
    for a process that runs no appliance (the CLI, the set-up wizard): the policy is the process's."""
    old = net.set_egress_policy(policy)
    try:
        yield
    finally:
        net.set_egress_policy(old)


@contextmanager
def home_egress(root: Path) -> Iterator[None]:
    """The egress settings of the home at ``root`` (allow-list, proxy, its password from the keyring) in force in
    this process for the duration (:func:`egress_in_force`)."""
    from ..egress import EgressStore
    home = ApplianceHome(root)
    cfg = home.load_config()
    db = StateDB(home.db)
    try:
        policy = EgressStore(db, cfg["appliance_id"]).policy()
    finally:
        db.close()
    with egress_in_force(policy):
        yield


def check_azure_target(account_url: str, container: str, *, key: str | None = None, sas: str | None = None,
                       root: Path | None = None, retry_for: float = 15.0, egress: EgressSettings | None = None,
                       proxy_password: str | None = None) -> dict[str, Any]:
    """Check an Azure target without storing anything: the account answers through the egress settings (``egress``
    as typed, with ``proxy_password``; else those of the home at ``root``; else the ones in force in this process),
    the credential is accepted, the container exists and takes a write. Returns ``{"account_url", "container", "latency_ms"}``; raises InvalidInput (``field``:
    ``account_url``, ``container``, ``secret``), CloudAuthFailed, ContainerMissing, CloudUnreachable, EgressRefused,
    ProxyAuthFailed, ProxyError. Blocking (network): run it in a worker thread from an event loop."""
    try:
        parse_account_url(account_url)
    except InvalidInput as exc:
        raise InvalidInput(exc.message, field="account_url", advice=exc.advice) from None
    try:
        check_container_name(container)
    except InvalidInput as exc:
        raise InvalidInput(exc.message, field="container", advice=exc.advice) from None
    cred, _ = _credential(key, sas)
    scope: AbstractContextManager[None] = (
        egress_in_force(egress.policy(proxy_password)) if egress is not None
        else home_egress(root) if root is not None else nullcontext())
    with scope:
        client = connect(account_url, container, cred, retry_for=retry_for, timeout=10.0)
        try:
            return check_connection(client)
        finally:
            client.close()


def set_azure_vault(root: Path, account_url: str, container: str, *, key: str | None = None,
                    sas: str | None = None, retry_for: float = 15.0, egress: bool = True) -> dict[str, Any]:
    """Make the home's vault the Azure container; returns what ``show_vault`` shows. Raises InvalidInput (bad URL,
    name or credential form), Conflict (machines already protected), CloudAuthFailed / ContainerMissing /
    CloudUnreachable / EgressRefused (the check failed): nothing changed then. ``egress``: check through the
    home's egress settings (False: through the policy in force, i.e. inside the home's running appliance)."""
    home = ApplianceHome(root)
    cfg = home.load_config()
    parse_account_url(account_url)
    check_container_name(container)
    _, secret = _credential(key, sas)
    db = StateDB(home.db)
    try:
        protected = [m["name"] for m in db.machines() if m.get("protected")]
    finally:
        db.close()
    if protected:
        raise Conflict(f"machines are already protected into the current vault ({', '.join(protected[:5])})",
                       advice="The vault is chosen before the first machine is protected; a new appliance home "
                              "is needed to move to another vault.")
    check = check_azure_target(account_url, container, key=key, sas=sas, root=root if egress else None,
                               retry_for=retry_for)
    name = azure_secret_name(cfg["appliance_id"])
    old = get_secret(name)
    set_secret(name, secret)
    cfg = dict(cfg)
    vault = {k: v for k, v in (cfg.get("vault") or {}).items() if k == "reserve"}
    vault.update({"kind": "azure", "account_url": account_url.rstrip("/"), "container": container,
                  "auth": "key" if key is not None else "sas", "secret": name})
    cfg["vault"] = vault
    try:
        home.save_config(cfg)
    except BaseException:
        if old is None:
            delete_secret(name)
        else:
            set_secret(name, old)
        raise
    return {**show_vault(root), "check": check}


def show_vault(root: Path) -> dict[str, Any]:
    """The home's vault settings (never the credential: only where it is kept)."""
    v = dict(ApplianceHome(root).load_config().get("vault") or {})
    out: dict[str, Any] = {"kind": v.get("kind", "local")}
    if out["kind"] == "azure":
        out.update({"account_url": v.get("account_url"), "container": v.get("container"), "auth": v.get("auth"),
                    "credential": f"OS keyring: lifeboat / {v.get('secret')}",
                    "credential_present": bool(v.get("secret") and get_secret(str(v["secret"])))})
    else:
        out["path"] = v.get("path")
    if "reserve" in v:
        out["reserve"] = v["reserve"]
    return out


# target health --------------------------------------------------------------------------------------------------
class TargetWatch:
    """What the appliance has seen of its vault target this run: the 429/503 answers its client met (the Azure
    client's ``on_throttle``, called from its I/O threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._throttles: deque[tuple[float, int, float]] = deque(maxlen=4096)   # (wall time, status, delay)
        self.total = 0

    def on_throttle(self, status: int, delay: float) -> None:
        with self._lock:
            self._throttles.append((time.time(), int(status), float(delay)))
            self.total += 1

    def recent(self, window: float = THROTTLE_WINDOW) -> list[tuple[float, int, float]]:
        since = time.time() - window
        with self._lock:
            return [t for t in self._throttles if t[0] >= since]

    def last(self) -> tuple[float, int, float] | None:
        with self._lock:
            return self._throttles[-1] if self._throttles else None


_watches: weakref.WeakKeyDictionary[Any, TargetWatch] = weakref.WeakKeyDictionary()
_watch_lock = threading.Lock()


def watch_target(vault: Any) -> TargetWatch | None:
    """The watch of ``vault`` (made, and hooked into its client's ``on_throttle``, on the first call); None for a
    backend without a remote client (the local vault: nothing throttles it)."""
    client = getattr(vault, "client", None)
    if vault is None or client is None or not hasattr(client, "on_throttle"):
        return None
    with _watch_lock:
        w = _watches.get(vault)
        if w is None:
            w = _watches[vault] = TargetWatch()
            before = client.on_throttle

            def hook(status: int, delay: float, w: TargetWatch = w, before: Any = before) -> None:
                w.on_throttle(status, delay)
                if before is not None:
                    before(status, delay)
            client.on_throttle = hook
        return w


def target_health(appliance: Any, *, now: float | None = None) -> dict[str, Any]:
    """The vault target's health as the dashboard shows it (docs/CONTRACT.md, "Target health"): ``kind``,
    ``location`` (account URL or folder), ``container``, ``state`` (``ok`` | ``idle`` | ``unknown`` | ``stalled`` |
    ``throttled`` | ``error``), ``detail`` (one line saying why), ``last_upload`` (wall time the target last
    acknowledged records, this run; None: none seen), ``upload_backlog_records`` (received from agents, not yet at
    the target), ``apply_backlog_records`` (at the target, not yet in its page blobs; None for a local vault),
    ``throttled`` (a 429/503 in the last ``throttle_window`` seconds; None where it cannot happen),
    ``throttle_events`` (that many), ``last_throttle`` ({time, status, delay} or None), ``rate_limit`` (bytes/s
    the bandwidth schedule allows now; None: unlimited), ``error`` (the first machine's upload error, or the
    failed connectivity check of the target), ``machines`` (the same per protected machine)."""
    now = time.time() if now is None else now
    cfg = dict(getattr(appliance, "cfg", {}).get("vault") or {})
    kind = str(cfg.get("kind", "local"))
    out: dict[str, Any] = {"kind": kind, "location": cfg.get("account_url") if kind != "local" else cfg.get("path"),
                           "container": cfg.get("container"), "time": now, "last_upload": None,
                           "upload_backlog_records": 0, "apply_backlog_records": None, "throttled": None,
                           "throttle_window": THROTTLE_WINDOW, "throttle_events": 0, "last_throttle": None,
                           "rate_limit": None, "error": None, "machines": []}
    vault = getattr(appliance, "vault", None)
    if vault is None:
        return {**out, "state": "unknown", "detail": "the appliance is not running"}
    watch = watch_target(vault)
    if watch is not None:
        recent = watch.recent()
        last = watch.last()
        out.update(throttled=bool(recent), throttle_events=len(recent),
                   last_throttle={"time": last[0], "status": last[1], "delay": last[2]} if last else None)
    rate = net.egress_policy().upload_rate
    out["rate_limit"] = rate() if rate is not None else None
    machines = []
    for name, rt in sorted(dict(getattr(appliance, "runtimes", {}) or {}).items()):
        uploaded = int(rt.vault.last_seq)
        applied = getattr(rt.vault, "applied_seq", None)
        machines.append({"name": name, "last_upload": getattr(rt, "last_upload", None),
                         "upload_backlog_records": max(0, int(rt.cache.last_seq) - uploaded),
                         "apply_backlog_records": None if applied is None else max(0, uploaded - int(applied)),
                         "error": rt.error})
    out["machines"] = machines
    uploads = [m["last_upload"] for m in machines if m["last_upload"] is not None]
    out["last_upload"] = max(uploads) if uploads else None
    out["upload_backlog_records"] = sum(m["upload_backlog_records"] for m in machines)
    if kind != "local":
        out["apply_backlog_records"] = sum(m["apply_backlog_records"] or 0 for m in machines)
    errors = [f"{m['name']}: {m['error']}" for m in machines if m["error"]]
    network = getattr(appliance, "network", None)
    check = getattr(network, "last_check", None)
    if check is not None:
        for r in check.results:
            if r.endpoint.purpose == "vault" and not r.ok:
                bad = next((h for h in r.hops if not h.ok), None)
                errors.append(f"connectivity check at {time.strftime('%H:%M:%S', time.localtime(check.time))}: "
                              + (f"{bad.hop} failed: {bad.detail}" if bad else "no answer"))
    out["error"] = errors[0] if errors else None
    backlog = out["upload_backlog_records"]
    if errors:
        state, detail = "error", errors[0]
    elif out["throttled"]:
        state, detail = "throttled", (f"the target answered {out['throttle_events']} request(s) with 429/503 "
                                      f"(server busy) in the last {THROTTLE_WINDOW:.0f} s; uploads are retried")
    elif not machines:
        state, detail = "idle", "no protected machine replicates to the target yet"
    elif backlog and (out["last_upload"] is None or now - out["last_upload"] > STALL_AFTER):
        state, detail = "stalled", (f"{backlog} record(s) wait to be uploaded and nothing reached the target "
                                    + ("since the appliance started" if out["last_upload"] is None
                                       else f"for {now - out['last_upload']:.0f} s"))
    elif out["last_upload"] is None:
        state, detail = "unknown", "no upload since the appliance started"
    else:
        state, detail = "ok", "uploads reach the target"
    return {**out, "state": state, "detail": detail}
