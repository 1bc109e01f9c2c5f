"""The live inventory of one endpoint: a worker thread on WaitForUpdatesEx, and the loop-side state it feeds.

``Watcher`` (worker thread) owns the pyVmomi session. It creates its own PropertyCollector, one ContainerView over
every type in ``discovery.SPECS`` and one filter; the first WaitForUpdatesEx answer is the full read (one pass,
possibly in truncated pages), every later answer holds only what changed. Answers are turned into plain ``Batch``
objects in the thread and handed to the loop with ``call_soon_threadsafe``: the loop never blocks on vSphere.

When vCenter says NotAuthenticated (session expired or terminated) the watcher logs in again at once. Filters die
with their session, so the new filter's first answer is a full read; ``InventoryState`` diffs it against what it
had, so consumers still see only the real changes.
"""

from __future__ import annotations

import http.client
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import LifeboatError
from .connect import Target, connect, disconnect
from .discovery import SPECS, Resolver, _wsdl, filter_spec, plain, vm_record
from .errors import VCenterUnreachable, VSphereError

log = logging.getLogger(__name__)

WAIT_SECONDS = 10  # one WaitForUpdatesEx round trip per 10 s on a quiet vCenter; stop() cancels it at once
MAX_BACKOFF = 60.0


@dataclass(slots=True)
class Batch:
    """One WaitForUpdatesEx answer as plain data."""
    generation: int  # bumps with every new session: a new full read starts
    full: bool  # part of a full read
    complete: bool  # the full read is done (last, non-truncated page)
    enter: dict[str, dict[str, Any]] = field(default_factory=dict)
    modify: dict[str, dict[str, Any]] = field(default_factory=dict)
    leave: list[str] = field(default_factory=list)
    reason: str = "initial"
    seconds: float = 0.0  # for a complete full read: how long it took
    received: float = 0.0  # perf_counter() when vSphere's answer arrived (latency breakdowns, bench/inventory.py)


def to_batch(upd: Any, generation: int, full: bool, reason: str) -> Batch:
    b = Batch(generation, full, full and not upd.truncated, reason=reason)
    for fs in upd.filterSet or []:
        for ou in fs.objectSet or []:
            moid = ou.obj._moId
            if ou.kind == "leave":
                b.leave.append(moid)
                continue
            changes = {ch.name: (plain(ch.name, ch.val) if ch.op in ("assign", "add") else None)
                       for ch in ou.changeSet or []}
            if ou.kind == "enter":
                b.enter[moid] = {"_type": ou.obj._wsdlName, **changes}
            else:
                b.modify.setdefault(moid, {}).update(changes)
    return b


class Watcher:
    """Keeps one endpoint's filter alive in a daemon thread until ``stop()``."""

    def __init__(self, target: Target, password: Callable[[], str], deliver: Callable[[Batch], None],
                 status: Callable[[str, dict[str, Any] | None, int], None], wait_seconds: int = WAIT_SECONDS) -> None:
        self.target = target
        self._password = password  # read again at each login: an updated password is picked up
        self._deliver = deliver
        self._status = status
        self.wait_seconds = wait_seconds
        self.renewals = 0
        self._stop = threading.Event()
        self._pc: Any = None
        self._thread = threading.Thread(target=self._run, name=f"vsphere-{target.host}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Blocking (call via asyncio.to_thread): cancel the pending wait and join the thread."""
        self._stop.set()
        pc = self._pc
        if pc is not None:
            try:
                pc.CancelWaitForUpdates()
            except Exception:  # already gone with its session: the wait returns by itself
                pass
        self._thread.join(timeout)

    def _run(self) -> None:
        from pyVmomi import vim, vmodl
        generation, reason, backoff, last_renewal = 0, "initial", 1.0, 0.0
        while not self._stop.is_set():
            si = None
            try:
                self._status("connecting", None, self.renewals)
                si, _ = connect(self.target, self._password())
                if self.target.trust == "insecure":
                    log.warning("vCenter %s: TLS certificate NOT verified (--insecure): the connection can be "
                                "intercepted", self.target.address)
                self._status("connected", None, self.renewals)
                generation += 1
                self._watch(si, generation, reason)
                backoff = 1.0
            except vim.fault.NotAuthenticated:
                # The session expired or was terminated: log in again now; the new filter re-reads, and the
                # loop side diffs, so nothing is lost or reported twice.
                self.renewals += 1
                reason = "session-renewed"
                log.info("vCenter %s: session no longer valid, logging in again", self.target.address)
                if time.monotonic() - last_renewal < 5.0:  # sessions dying at once: do not spin on logins
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                last_renewal = time.monotonic()
                continue
            except LifeboatError as exc:
                self._fail(exc)
            except (OSError, http.client.HTTPException) as exc:  # sockets, TLS, HTTP: the endpoint went away
                if self._stop.is_set():
                    break
                self._fail(VCenterUnreachable(f"lost the connection to {self.target.address}: {exc}"))
            except vmodl.MethodFault as exc:
                self._fail(VSphereError(f"{self.target.address}: {getattr(exc, 'msg', None) or type(exc).__name__}"))
            except Exception as exc:  # a bug: keep the traceback, keep the thread alive and retry
                log.exception("vCenter %s: inventory watcher failed", self.target.address)
                self._fail(VSphereError(f"{self.target.address}: internal error {exc!r}"))
            finally:
                if si is not None:
                    disconnect(si)
                self._pc = None
            if self._stop.is_set():
                break
            reason = "reconnected"
            self._stop.wait(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _fail(self, exc: LifeboatError) -> None:
        log.warning("vCenter %s: %s", self.target.address, exc)
        self._status("error", exc.to_dict(), self.renewals)

    def _watch(self, si: Any, generation: int, reason: str) -> None:
        from pyVmomi import vmodl
        content = si.content
        pc = content.propertyCollector.CreatePropertyCollector()
        self._pc = pc
        view = content.viewManager.CreateContainerView(content.rootFolder, [_wsdl(t) for t in SPECS], True)
        pc.CreateFilter(filter_spec(view, list(SPECS)), partialUpdates=False)
        opts = vmodl.query.PropertyCollector.WaitOptions(  # type: ignore[no-untyped-call]
            maxWaitSeconds=self.wait_seconds)
        version, full, t0, announced_empty = "", True, time.perf_counter(), False
        while not self._stop.is_set():
            try:
                upd = pc.WaitForUpdatesEx(version, opts)
            except vmodl.fault.RequestCanceled:
                return  # stop() cancelled the wait
            received = time.perf_counter()
            if upd is None:  # maxWaitSeconds passed with no change
                if full and version == "" and not announced_empty:
                    # An empty endpoint may answer the initial read with nothing: report it synced (and empty).
                    announced_empty = True
                    self._deliver(Batch(generation, True, True, reason=reason, seconds=time.perf_counter() - t0))
                continue
            version = upd.version
            batch = to_batch(upd, generation, full, reason)
            batch.received = received
            if batch.complete:
                batch.seconds = time.perf_counter() - t0
                full = False
            self._deliver(batch)


@dataclass(slots=True)
class Delta:
    """What a batch changed, as VM records (before, after), for events, matching and resize detection."""
    full: bool = False
    first: bool = False
    reason: str = ""
    seconds: float = 0.0
    added: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    updated: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)


class InventoryState:
    """One endpoint's objects (plain) and VM records. Loop thread only."""

    def __init__(self, vcenter: str) -> None:
        self.vcenter = vcenter
        self.objects: dict[str, dict[str, Any]] = {}
        self.vms: dict[str, dict[str, Any]] = {}  # moref → record (cached; rebuilt when names may have moved)
        self.synced = False
        self.full_reads = 0
        self.incremental_updates = 0
        self.last_change: float | None = None
        self._pending: dict[str, dict[str, Any]] | None = None
        self._pending_gen = -1

    def _records(self) -> dict[str, dict[str, Any]]:
        r = Resolver(self.objects)
        return {m: vm_record(m, p, r, self.vcenter) for m, p in self.objects.items() if p["_type"] == "VirtualMachine"}

    def apply(self, b: Batch) -> Delta | None:
        """Merge one batch; returns the delta once something is complete (None while a full read is paged)."""
        self.last_change = time.time()
        if b.full:
            if self._pending is None or b.generation != self._pending_gen:
                self._pending, self._pending_gen = {}, b.generation
            self._pending.update(b.enter)
            if not b.complete:
                return None
            first = not self.synced
            old = self.vms
            self.objects, self._pending = self._pending, None
            self.vms = self._records()
            self.synced = True
            self.full_reads += 1
            d = Delta(full=True, first=first, reason=b.reason, seconds=b.seconds)
            if not first:
                d.added = [v for m, v in self.vms.items() if m not in old]
                d.removed = [v for m, v in old.items() if m not in self.vms]
                d.updated = [(old[m], v) for m, v in self.vms.items() if m in old and old[m] != v]
            return d
        self.incremental_updates += 1
        d = Delta(reason="update")
        names_moved = False
        for moid, props in b.enter.items():
            self.objects[moid] = props
            names_moved |= props["_type"] != "VirtualMachine"
        for moid, ch in b.modify.items():
            obj = self.objects.get(moid)
            if obj is None:
                continue  # an update for an object we never saw entering: ignore, the next full read has it
            obj.update(ch)
            names_moved |= obj["_type"] != "VirtualMachine"
        gone = [self.objects.pop(m) for m in b.leave if m in self.objects]
        names_moved |= any(p["_type"] != "VirtualMachine" for p in gone)
        old = self.vms
        if names_moved:  # a host, datastore or network changed: names in many records may have moved
            self.vms = self._records()
            touched = set(old) | set(self.vms)
        else:
            r = Resolver(self.objects)
            self.vms = dict(old)
            touched = {m for m in (*b.enter, *b.modify, *b.leave)
                       if m in old or self.objects.get(m, {}).get("_type") == "VirtualMachine"}
            for m in touched:
                p = self.objects.get(m)
                if p is not None and p["_type"] == "VirtualMachine":
                    self.vms[m] = vm_record(m, p, r, self.vcenter)
                else:
                    self.vms.pop(m, None)
        for m in touched:
            before, after = old.get(m), self.vms.get(m)
            if before is None and after is not None:
                d.added.append(after)
            elif after is None and before is not None:
                d.removed.append(before)
            elif before is not None and after is not None and before != after:
                d.updated.append((before, after))
        return d
