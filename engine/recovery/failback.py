"""Failback (issue 14): reprotect a failed-over machine (replicate the recovered VM back to the original site), fail
back with zero loss, and re-enable forward protection, each as an engine job.

**Reprotect.** The recovered VM's disks are served by Lifeboat (the durable NBD overlay before commit, the committed
image after it: engine/recovery/overlay.py, image_backend.py), so every write it makes passes here first. From
reprotect on, a :class:`ChangeMap` (engine/recovery/change_map.py) marks each write's 64 KiB blocks dirty, durably
(activity log before the write, map at each flush). The **master target** (engine/appliance/master_target.py)
receives: the original machine's agent, on its own disk files (``--to original``: the agent connects as usual and
the process server hands it to :meth:`FailbackService.serve` instead of refusing it), or new sparse disks at an
alternate location (``--to-disk NAME=PATH``, written by the appliance itself). Every block starts dirty: the *seed*
is a checksum compare of the whole disk (xxh3_128 per block on both sides, as the resync does) and only the blocks
that differ are sent; a new disk's holes hash as zeros, so unallocated and zero regions cost nothing. After the seed
the same loop keeps sending what the VM writes (compare, then the differing blocks), near-continuously.

**Acknowledged position.** Each batch of blocks has an id; the target writes it, ``fdatasync``s, records the id
durably, then acknowledges; only then do its blocks leave the map's *in flight* set (and the map is persisted). A
kill of either side or a cut link loses nothing: what was in flight is compared again on resume (a block already
written compares equal and is not sent twice), and a target that comes back with an older acknowledged id than the
sender recorded (it lost its disks) gets a full compare.

**Fail back.** Shut the recovered VM down (ACPI through libvirt, forced after the timeout), send everything left
(RPO 0), make the target durable and release it (the agent accepts writes again and journals a RESYNC_START first),
then the original machine starts. The original disks then equal the recovered VM's disks at shutdown, byte for byte.

**Re-enable.** Forward replication restarts: the machine is protected again; its agent is taken again and resyncs
(a checksum compare against the vault's newest state: only differing blocks are sent), the vault's history up to the
failover kept. ``--remove-recovered`` removes the recovered VM, its overlay and images.

The reverse loop itself (:class:`Reverse`, the targets, the seed's known hashes) is in ``reverse.py``; this module
runs it as the three stages' jobs.

Not atomic across batches: while reprotecting, the target is a mix of older and newer blocks; it is a consistent
image of the recovered machine only after fail back's final sync (its state ``failed-back``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..appliance.control_http import read_json
from ..appliance.master_target import (MasterTarget)
from ..appliance.request_body import Body, json_response
from ..errors import Conflict, InvalidInput, LifeboatError, NotFound, NotReady, SourceUnreachable
from ..fileio import atomic_write
from ..jobs import Job, JobKind, JobManager, JobState, Plan, StepContext, StepSpec
from ..names import check_name, inside
from ..waits import wait_event
from ..wire import Frame, write_json
from .overlay import OverlayBackend
from .reverse import (FAILED_BACK, FAILING_BACK, REPROTECTED, REPROTECTING, AgentTarget, KnownHashes, LocalTarget,
                      PointHashes, Reverse, TargetLost)

if TYPE_CHECKING:
    from ..appliance.control_http import AdminCheck
    from ..appliance.machine_state import MachineState
    from ..appliance.process_server import AgentConnection
    from ..appliance.resync import Resync
    from ..appliance.pipeline import MachineRuntime
    from .failover import FailoverService
    from .plans import PlanStore

log = logging.getLogger(__name__)

#: Re-enable: how long the agent may take to connect again.
AGENT_WAIT = 300.0



def parse_to_disks(items: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for it in items:
        name, sep, path = it.partition("=")
        if not sep or not path:
            raise InvalidInput(f"--to-disk {it!r} is not NAME=PATH", field="to_disk")
        check_name(name, "disk name")
        p = Path(path)
        if not p.is_absolute():
            raise InvalidInput(f"--to-disk {name}: {path} is not an absolute path", field="to_disk")
        if name in out:
            raise InvalidInput(f"disk {name!r} is given twice", field="to_disk")
        out[name] = p
    return out


class FailbackService:
    """Reprotect, fail back and re-enable (module docstring). Collaborators: ``failover`` (the recovered VMs, their
    served disks and hosts), ``state`` (machine rows), ``runtimes`` (forward replication), ``resync`` (re-enable's
    compare), ``plans`` (a plan's groups), ``manager`` (jobs), ``require_admin``."""

    def __init__(self, *, failover: FailoverService, state: MachineState, runtimes: Mapping[str, MachineRuntime],
                 resync: Resync, plans: PlanStore, manager: JobManager,
                 require_admin: AdminCheck | Callable[[web.Request], None]) -> None:
        self.failover = failover
        self.state = state
        self.runtimes = runtimes
        self.resync = resync
        self.plans = plans
        self.manager = manager
        self.require_admin = require_admin
        self.reverse: dict[str, Reverse] = {}
        self.records: dict[str, dict[str, Any]] = {}

    # persistence ------------------------------------------------------------------------------------------------
    def _folder(self, machine: str) -> Path:
        return inside(self.failover.folder, machine) / "reverse"

    def _load(self, machine: str) -> dict[str, Any] | None:
        if machine in self.records:
            return self.records[machine]
        try:
            st = json.loads((self._folder(machine) / "failback.json").read_text())
        except (OSError, ValueError):
            return None
        self.records[machine] = st
        return st

    def _save(self, machine: str) -> None:
        st = self.records.get(machine)
        if st is not None:
            folder = self._folder(machine)
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(folder / "failback.json", json.dumps(st).encode())

    def _set_state(self, machine: str, state: str, **fields: Any) -> None:
        st = self.records[machine]
        st["state"] = state
        st.update(fields)
        self._save(machine)
        self.state.event(f"failback-{state}", machine)

    async def start(self) -> None:
        """Resume the reverse replication of machines an earlier run was reprotecting (their source disks are
        served again by the failover service's start)."""
        if not self.failover.folder.exists():
            return
        for d in sorted(self.failover.folder.iterdir()):
            st = self._load(d.name) if (d / "reverse" / "failback.json").exists() else None
            if st is None or st["state"] not in (REPROTECTING, REPROTECTED, FAILING_BACK):
                continue
            if st["state"] == FAILING_BACK:   # interrupted: the operator runs failback again
                st["state"] = REPROTECTED if st.get("seeded") else REPROTECTING
            try:
                self._open_reverse(d.name, st)
            except LifeboatError as exc:
                st["error"] = exc.to_dict()
                self._save(d.name)

    async def stop(self) -> None:
        for rep in list(self.reverse.values()):
            await rep.stop()
            rep.changes.close()
            if rep.target is not None:
                rep.target.close()
        self.reverse.clear()

    def _open_reverse(self, machine: str, st: dict[str, Any]) -> Reverse:
        disks = self.failover.recovered_disks(machine)
        if disks is None:
            raise NotReady(f"the recovered disks of {machine!r} are not served (the failover is interrupted)",
                           code="LB_INTERRUPTED", advice="Cancel the failover and fail over again.")
        names = [n for n, _ in disks]
        rep = Reverse(machine, self._folder(machine), names, [b for _, b in disks], st,
                      lambda: self._save(machine), self._known(machine, [b for _, b in disks]))
        self.reverse[machine] = rep
        if st["target"]["kind"] == "disks":
            paths = {names.index(n): Path(p) for n, p in st["target"]["disks"].items()}
            rep.attach(LocalTarget(MasterTarget(paths, self._folder(machine))))
        rep.start()
        return rep

    def _known(self, machine: str, backends: list[Any]) -> list[KnownHashes | None]:
        """Per disk, where the seed may take checksums from the vault's block-hash index instead of reading
        (:class:`PointHashes`: a booted failover's overlays over views of this machine's vault)."""
        rt = self.runtimes.get(machine)
        out: list[KnownHashes | None] = []
        for b in backends:
            view = getattr(b, "view", None)
            seq, disk = getattr(view, "seq", None), getattr(view, "disk", None)
            if rt is not None and isinstance(b, OverlayBackend) and isinstance(seq, int) and isinstance(disk, int):
                out.append(PointHashes(b, rt, disk, seq))
            else:
                out.append(None)
        return out

    # what status shows --------------------------------------------------------------------------------------------
    def failback_of(self, machine: str) -> dict[str, Any] | None:
        st = self._load(machine)
        if st is None:
            return None
        rep = self.reverse.get(machine)
        if rep is not None:
            return rep.view()
        return {"state": st["state"], "direction": "reverse" if st["state"] != FAILED_BACK else None,
                "target": st["target"], "target_connected": False, "seeded": bool(st.get("seeded")),
                "progress": 1.0 if st["state"] == FAILED_BACK else 0.0, "eta_seconds": None, "rpo_seconds": 0.0,
                "blocks_pending": None, "bytes_compared": int(st.get("bytes_compared", 0)),
                "bytes_sent": int(st.get("bytes_sent", 0)), "data_bytes_sent": int(st.get("data_bytes_sent", 0)),
                "acked_batch": int(st.get("acked", 0)), "last_idle_at": st.get("last_idle_at"),
                "error": st.get("error")}

    # the process server's hook (the original site's agent as master target) -----------------------------------
    def wants(self, machine: str) -> bool:
        st = self._load(machine)
        rep = self.reverse.get(machine)
        return bool(st and st["target"]["kind"] == "original" and st["state"] in (REPROTECTING, REPROTECTED,
                                                                                  FAILING_BACK)
                    and rep is not None and not rep.releasing)

    async def serve(self, machine: str, conn: AgentConnection, hello: dict[str, Any]) -> None:
        rep = self.reverse[machine]
        theirs = {str(d.get("name")): (int(d.get("index", -1)), int(d.get("size", 0)))
                  for d in hello.get("disks", []) if isinstance(d, dict)}
        index, sizes = {}, {}
        for i, (name, src) in enumerate(zip(rep.names, rep.disks)):
            err: LifeboatError
            if name not in theirs:
                err = NotReady(f"the original site's agent of {machine!r} has no disk {name!r}",
                               code="LB_TARGET_MISMATCH", advice="Start the agent with the machine's disks.")
                rep.st["error"] = err.to_dict()
                rep.save()
                raise err
            idx, size = theirs[name]
            if size < src.size:
                err = InvalidInput(f"the original disk {name} ({size} bytes) is smaller than the recovered one "
                                   f"({src.size} bytes)", code="LB_TARGET_TOO_SMALL",
                                   advice="Grow the original disk to at least the recovered disk's size, or "
                                          "reprotect to a new disk (--to-disk NAME=PATH).")
                rep.st["error"] = err.to_dict()
                rep.save()
                raise err
            index[i], sizes[i] = idx, size
        write_json(conn.writer, Frame.WELCOME, {"reverse": {"session": rep.st["session"]}})
        target = AgentTarget(conn, index, sizes)
        target.session = rep.st["session"]
        target._expect(("open", rep.st["session"]))   # its first frame
        rep.attach(target)
        try:
            while True:
                kind, body = await asyncio.wait_for(conn.reader.read_frame(), 30.0)
                if kind == Frame.HEARTBEAT:
                    write_json(conn.writer, Frame.ACK, {"batch": 0, "last_seq": 0})
                elif kind in (Frame.MT_HASHES, Frame.MT_ACK):
                    target.on_frame(kind, bytes(body))
                else:
                    raise TargetLost(f"unexpected frame {kind.name} from the master target")
        except (ConnectionError, OSError, TimeoutError, asyncio.IncompleteReadError, LifeboatError) as exc:
            target.lost(exc)
            raise
        except asyncio.CancelledError:
            target.lost(ConnectionResetError("the appliance is stopping"))
            raise
        finally:
            if rep.target is target:
                rep.detach(target)

    # reprotect ----------------------------------------------------------------------------------------------------
    async def reprotect(self, machine: str, *, to: str = "original", to_disks: dict[str, Path] | None = None) -> Job:
        """Start replicating the recovered VM of ``machine`` back: to its original disks (``to='original'``, the
        agent on the original site) or to new disks (``to_disks``: disk name → a path that does not exist yet).
        Returns the job once the seed is done (state ``reprotected``); deltas go on after it."""
        self.state.row(machine)
        fo = self.failover.store.failover(machine)
        if fo is None:
            raise NotFound(f"machine {machine!r} is not failed over", code="LB_NOT_FAILED_OVER",
                           advice="Reprotect follows a failover (`lifeboat failover --host`).")
        if fo["state"] not in ("booted", "committed"):
            raise NotReady(f"the failover of {machine!r} is {fo['state']}: only a booted or committed recovered VM "
                           "can be reprotected", advice="Wait until it has booted (`lifeboat vm list`), or cancel "
                           "and fail over again.")
        st = self._load(machine)
        if st is not None and st["state"] in (REPROTECTING, REPROTECTED, FAILING_BACK):
            raise Conflict(f"machine {machine!r} is {st['state']} already", code="LB_ALREADY_REPROTECTED",
                           advice="Fail back (`lifeboat failback`) when the original site should take over.")
        if st is not None and st["state"] == FAILED_BACK:
            raise Conflict(f"machine {machine!r} is failed back", code="LB_FAILED_BACK",
                           advice="Re-enable protection (`lifeboat reenable`).")
        disks = self.failover.recovered_disks(machine)
        if disks is None:
            raise NotReady(f"the recovered disks of {machine!r} are not served", code="LB_INTERRUPTED",
                           advice="Cancel the failover and fail over again.")
        names = [n for n, _ in disks]
        target: dict[str, Any]
        if to_disks:
            unknown = sorted(set(to_disks) - set(names))
            missing = sorted(set(names) - set(to_disks))
            if unknown or missing:
                raise InvalidInput(f"--to-disk must name each of the machine's disks once ({', '.join(names)}); "
                                   + (f"unknown: {', '.join(unknown)}" if unknown else f"missing: {', '.join(missing)}"),
                                   field="to_disk")
            for n, p in to_disks.items():
                if p.exists() or p.is_symlink():
                    raise InvalidInput(f"{p} already exists: a new disk is never written over", field="to_disk",
                                       code="LB_TARGET_EXISTS",
                                       advice="Name a path that does not exist yet, or use --to original.")
                if not p.parent.is_dir():
                    raise InvalidInput(f"the folder of {p} does not exist", field="to_disk",
                                       advice="Create the folder (the alternate location) first.")
            target = {"kind": "disks", "disks": {n: str(p) for n, p in to_disks.items()}}
        elif to == "original":
            target = {"kind": "original", "disks": {}}
        else:
            raise InvalidInput(f"--to {to!r}: only 'original' (or --to-disk NAME=PATH)", field="to")
        folder = self._folder(machine)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, mode=0o700)
        st = self.records[machine] = {"state": REPROTECTING, "target": target, "session": secrets.token_hex(8),
                                      "host": fo["host"], "sent": 0, "acked": 0, "bytes_compared": 0, "bytes_sent": 0,
                                      "data_bytes_sent": 0, "seeded": False, "seed_blocks": 0,
                                      "created": time.time(), "error": None, "dirty_since": time.time()}
        self._save(machine)
        rep: Reverse | None = None

        async def open_target(ctx: StepContext) -> None:
            nonlocal rep
            rep = Reverse(machine, folder, names, [b for _, b in disks], st, lambda: self._save(machine),
                          self._known(machine, [b for _, b in disks]))
            rep.changes.mark_all()   # the seed: every block is compared once
            st["seed_blocks"] = rep.pending_blocks()
            self.reverse[machine] = rep
            if target["kind"] == "disks":
                sizes = {i: b.size for i, (_, b) in enumerate(disks)}
                mt = MasterTarget({names.index(n): Path(p) for n, p in target["disks"].items()}, folder,
                                  create=sizes)
                rep.attach(LocalTarget(mt))
                ctx.note(f"new disks created: {', '.join(target['disks'].values())}")
            rep.start()

        async def wait_target(ctx: StepContext) -> None:
            assert rep is not None
            if target["kind"] == "disks":
                return
            self._nudge_agent(machine)
            end = time.monotonic() + AGENT_WAIT
            while rep.target is None:
                if st.get("error") and st["error"].get("code") in ("LB_TARGET_TOO_SMALL", "LB_TARGET_MISMATCH"):
                    raise LifeboatError(st["error"]["message"], code=st["error"]["code"],
                                        advice=st["error"].get("advice"))
                if time.monotonic() > end:
                    raise SourceUnreachable(f"the original site's agent of {machine!r} did not connect within "
                                            f"{AGENT_WAIT:g} s", code="LB_ORIGINAL_UNREACHABLE",
                                            advice="Start the agent on the original machine's site (`lifeboat "
                                                   "agent run` with its disks), then reprotect again.")
                await asyncio.sleep(0.2)
            ctx.note("the original site's agent is connected as master target")

        async def seed(ctx: StepContext) -> None:
            assert rep is not None
            total = max(int(st["seed_blocks"]), 1)
            while not st.get("seeded"):
                if rep.task is None or rep.task.done():
                    raise LifeboatError("reverse replication stopped", code="LB_REVERSE_STOPPED")
                if st.get("error"):
                    ctx.note(f"retrying: {st['error'].get('message')}")
                pending = rep.pending_blocks()
                ctx.progress(max(0.0, 1 - pending / total),
                             f"compared {st['bytes_compared'] >> 20} MiB, sent {st['data_bytes_sent'] >> 20} MiB")
                # the loop sets ``idle`` when the seed is done (seeded first): no polling delay on top
                await wait_event(rep.idle, 0.2)
            self._set_state(machine, REPROTECTED)
            ctx.result.update({"bytes_compared": st["bytes_compared"], "bytes_sent": st["bytes_sent"],
                               "data_bytes_sent": st["data_bytes_sent"]})

        plan = Plan.sequence(
            StepSpec("open-target", "Open the target disks and start tracking the recovered VM's writes",
                     open_target, 0.0, error_code="LB_STORAGE"),
            StepSpec("wait-target", "Wait for the master target on the original site", wait_target, 0.0,
                     error_code="LB_ORIGINAL_UNREACHABLE"),
            StepSpec("seed", "Compare every block (checksums) and send those that differ", seed, 1.0,
                     error_code="LB_STORAGE"))
        job = self.manager.submit(JobKind.REPROTECT, machine, plan, title=f"Reprotect {machine} "
                                  f"({'original disks' if target['kind'] == 'original' else 'new disks'})",
                                  result={"target": target})
        await self.manager.wait(job.id)
        if job.state != JobState.SUCCEEDED:
            # nothing is lost: the recovered VM runs on; the reverse state is dropped, a retry starts over
            if rep is not None:
                await rep.stop()
                rep.detach_source()
                rep.changes.close()
                if rep.target is not None:
                    rep.target.close()
            self.reverse.pop(machine, None)
            self.records.pop(machine, None)
            shutil.rmtree(folder, ignore_errors=True)
            if target["kind"] == "disks" and st.get("created_disks", True):
                for p in target["disks"].values():
                    Path(p).unlink(missing_ok=True)
            raise self._job_error(job)
        self.state.event("reprotected", machine, target=target["kind"])
        return job

    def _nudge_agent(self, machine: str) -> None:
        """Nothing to do: a refused agent retries by itself (within 30 s, its backoff's ceiling)."""

    def _job_error(self, job: Job) -> LifeboatError:
        exc = self.manager.exception(job.id)
        if isinstance(exc, LifeboatError):
            return exc
        err = job.error or {}
        return LifeboatError(err.get("message", f"job {job.id} {job.state.value}"), code=err.get("code"),
                             advice=err.get("advice"))

    # failback ------------------------------------------------------------------------------------------------------
    async def failback(self, machine: str, *, shutdown_timeout: float = 120.0) -> Job:
        """Shut the recovered VM down, send what is left (RPO 0), make the target durable and release it; the
        original machine then starts on disks equal to the recovered VM's at shutdown."""
        self.state.row(machine)
        st = self._load(machine)
        if st is None or st["state"] == REPROTECTING:
            raise NotReady(f"machine {machine!r} is {st['state'] if st else 'not reprotected'}",
                           code="LB_NOT_REPROTECTED", advice="Reprotect it first (`lifeboat reprotect`) and wait "
                           "until it is reprotected (`lifeboat status`).")
        if st["state"] == FAILED_BACK:
            raise Conflict(f"machine {machine!r} is failed back already", code="LB_FAILED_BACK",
                           advice="Re-enable protection (`lifeboat reenable`).")
        rep = self.reverse.get(machine)
        if rep is None:
            raise NotReady(f"the reverse replication of {machine!r} is not running", code="LB_INTERRUPTED",
                           advice="See `lifeboat status`; reprotect again.")
        if rep.target is None:
            raise SourceUnreachable(f"the original site of {machine!r} is not connected", code="LB_ORIGINAL_UNREACHABLE",
                                    advice="Start the agent on the original site; fail back once status shows "
                                           "the target connected.")
        host = self.failover._host(st["host"])
        stopped = {"vm": False}

        async def shutdown(ctx: StepContext) -> None:
            self._set_state(machine, FAILING_BACK)
            t0 = time.monotonic()
            await host.stop(machine, timeout=shutdown_timeout)
            stopped["vm"] = True
            took = time.monotonic() - t0
            ctx.result["shutdown_seconds"] = round(took, 2)
            ctx.result["shutdown"] = "forced" if took >= shutdown_timeout else "clean"
            ctx.note(f"recovered VM stopped ({ctx.result['shutdown']}, {took:.1f} s)")

        async def final_sync(ctx: StepContext) -> None:
            for d in rep.disks:   # whatever the VM wrote is in the files; make the map's knowledge durable too
                flush = getattr(d, "flush", None)
                if flush is not None:
                    await flush()
            await rep.drained(ctx.progress)
            ctx.result.update({"bytes_compared": st["bytes_compared"], "bytes_sent": st["bytes_sent"],
                               "data_bytes_sent": st["data_bytes_sent"], "rpo_seconds": 0.0})

        async def release(ctx: StepContext) -> None:
            await rep.drained()
            target = rep.target
            if target is None:
                raise SourceUnreachable("the original site disconnected before the final flush",
                                        code="LB_ORIGINAL_UNREACHABLE", advice="Fail back again once it is back.")
            await rep.stop()
            rep.releasing = True
            try:
                await target.finish()
            except BaseException:
                rep.releasing = False
                rep.start()
                raise
            rep.detach_source()
            rep.changes.close()
            target.close()
            self.reverse.pop(machine, None)
            self._set_state(machine, FAILED_BACK, failed_back_at=time.time())
            ctx.note("target disks flushed and released: they equal the recovered VM's disks at shutdown")

        async def start_original(ctx: StepContext) -> None:
            if st["target"]["kind"] == "disks":
                ctx.note("the new disks are ready at " + ", ".join(st["target"]["disks"].values())
                         + ": attach them to the machine and start it")
                ctx.result["start"] = "operator"
                return
            link = self.failover.vm_link_of(machine)
            power = self.failover.source_power
            if link is None or power is None:
                ctx.note("the original machine's disks accept writes again: start the original machine")
                ctx.result["start"] = "operator"
                return
            # The data is home already (released above): a vCenter that cannot power the VM on fails nothing; the
            # step says so and the operator powers it on.
            try:
                out = await power(machine, True)
            except LifeboatError as exc:
                ctx.note(f"the original VM {link.get('vm_name') or link.get('moref')} could not be powered on through "
                         f"vCenter {link.get('vcenter')} ({exc.code}: {exc.message}): power it on in vCenter")
                ctx.result.update(start="operator", power_on_error=exc.to_dict())
                return
            if out is None:
                ctx.note("the original machine's disks accept writes again: start the original machine")
                ctx.result["start"] = "operator"
                return
            ctx.result.update(start="vcenter", original_vm=out)
            ctx.note(f"original VM {out.get('vm')} powered on through vCenter {out.get('vcenter')} "
                     f"({out.get('was')} → {out.get('now')})")

        plan = Plan.sequence(
            StepSpec("shutdown-vm", "Shut the recovered VM down (ACPI, forced after the timeout)", shutdown, 0.1,
                     error_code="LB_HYPERVISOR"),
            StepSpec("final-sync", "Send everything the recovered VM wrote (RPO 0)", final_sync, 0.8,
                     error_code="LB_ORIGINAL_UNREACHABLE"),
            StepSpec("flush-target", "Flush the target disks and release them", release, 0.1,
                     error_code="LB_ORIGINAL_UNREACHABLE"),
            StepSpec("start-original", "Start the original machine (a vCenter power-on when it is matched to a vSphere "
                     "VM)", start_original, 0.0))
        job = self.manager.submit(JobKind.FAILBACK, machine, plan, title=f"Fail back {machine}",
                                  result={"target": st["target"]})
        await self.manager.wait(job.id)
        if job.state != JobState.SUCCEEDED:
            if st["state"] == FAILING_BACK:   # not released: still reprotected; the recovered VM runs again
                self._set_state(machine, REPROTECTED)
                if stopped["vm"]:
                    try:
                        await host.start(machine)
                    except LifeboatError as exc:
                        log.warning("restarting the recovered VM of %s after a failed failback: %s", machine, exc)
            raise self._job_error(job)
        self.state.event("failed-back", machine, target=st["target"]["kind"])
        return job

    async def plan_failback(self, plan: str, *, shutdown_timeout: float = 120.0) -> dict[str, Any]:
        """Fail back every machine of a recovery plan, the plan's groups in reverse order (a group's machines in
        parallel); the first failure stops it (retry the command: machines already failed back are skipped)."""
        p = self.plans.plan(check_name(plan, "plan name"))
        out: list[dict[str, Any]] = []
        for n in range(len(p["groups"]), 0, -1):
            machines = [m for m in p["groups"][n - 1].get("machines", [])
                        if (self._load(m) or {}).get("state") != FAILED_BACK]
            jobs = await asyncio.gather(*(self.failback(m, shutdown_timeout=shutdown_timeout) for m in machines),
                                        return_exceptions=True)
            for m, j in zip(machines, jobs):
                if isinstance(j, BaseException):
                    err = j.to_dict() if isinstance(j, LifeboatError) else {"code": "LB_ERROR", "message": str(j)}
                    out.append({"group": n, "machine": m, "state": "failed", "error": err})
                else:
                    out.append({"group": n, "machine": m, "state": j.state.value, "job": j.id})
            if any(r["state"] == "failed" for r in out):
                first = next(r for r in out if r["state"] == "failed")
                raise LifeboatError(f"failback of plan {plan} stopped at group {n}: {first['machine']}: "
                                    f"{first['error'].get('message')}", code=first["error"].get("code"),
                                    advice="Fix the cause, then run `lifeboat plan failback` again.")
        return {"plan": plan, "groups": list(range(len(p["groups"]), 0, -1)), "machines": out}

    # re-enable -----------------------------------------------------------------------------------------------------
    async def reenable(self, machine: str, *, remove_recovered: bool = False,
                       wait: bool = True) -> dict[str, Any]:
        """Forward protection again (differences only); ``remove_recovered``: the recovered VM, its overlay and
        images go too. On a machine already re-enabled, ``remove_recovered`` removes what was kept."""
        row = self.state.row(machine)
        st = self._load(machine)
        if st is not None and st["state"] == "reenabled":
            if remove_recovered:
                return {"machine": machine, "removed": await self._remove_recovered(machine)}
            raise Conflict(f"machine {machine!r} is re-enabled already", code="LB_ALREADY_PROTECTED",
                           advice="Pass --remove-recovered to remove the recovered VM kept on the recovery host.")
        if st is None or st["state"] != FAILED_BACK:
            raise NotReady(f"machine {machine!r} is not failed back ({st['state'] if st else row['state']})",
                           code="LB_NOT_FAILED_BACK", advice="Reprotect and fail back first.")
        rt = self.runtimes.get(machine)
        if rt is None:
            raise NotReady(f"machine {machine!r} is not protected", advice="Protect it (`lifeboat protect`).")

        async def resume(ctx: StepContext) -> None:
            self.state.update(machine, state="protected")
            self.resync.request(machine, now=True, reason="re-enable after failback")
            ctx.note("forward replication resumed: the agent is taken again and compares every block")

        async def wait_agent(ctx: StepContext) -> None:
            end = time.monotonic() + AGENT_WAIT
            while rt.connection is None:
                if time.monotonic() > end:
                    raise SourceUnreachable(f"the agent of {machine!r} did not connect within {AGENT_WAIT:g} s",
                                            advice="Start the agent on the original machine; re-enable resumes "
                                                   "by itself when it connects (`lifeboat status`).")
                await asyncio.sleep(0.2)

        async def resync(ctx: StepContext) -> None:
            t0 = time.monotonic()
            while True:
                s = self.resync.status(machine)
                if not s["required"] and time.monotonic() - t0 > 1.0:
                    break
                ctx.progress(float(s.get("progress") or 0.0), "comparing with the vault's newest state")
                await asyncio.sleep(0.2)
            ctx.note("the vault holds the machine's current state: protected")

        async def remove(ctx: StepContext) -> None:
            if remove_recovered:
                ctx.result["removed"] = await self._remove_recovered(machine)
            else:
                ctx.note("the recovered VM, its overlay and images are kept; remove them with `lifeboat reenable "
                         "--remove-recovered`")

        steps = [StepSpec("resume-forward", "Protect the machine again (forward replication)", resume, 0.0)]
        if wait:
            steps += [StepSpec("wait-agent", "Wait for the agent", wait_agent, 0.0, error_code="LB_SOURCE_UNREACHABLE"),
                      StepSpec("resync", "Send only the blocks that differ from the vault's newest state", resync,
                               1.0, error_code="LB_STORAGE")]
        steps.append(StepSpec("remove-recovered", "Remove the recovered VM, overlay and images", remove, 0.0,
                              error_code="LB_HYPERVISOR"))
        job = self.manager.submit(JobKind.REENABLE, machine, Plan.sequence(*steps),
                                  title=f"Re-enable protection of {machine}", result={"remove_recovered": remove_recovered})
        await self.manager.wait(job.id)
        if job.state != JobState.SUCCEEDED:
            raise self._job_error(job)
        if machine in self.records:   # (with --remove-recovered the record went with the failover's folder)
            self._set_state(machine, "reenabled", reenabled_at=time.time())
        self.state.event("reenabled", machine)
        return {"machine": machine, "job": job.to_dict(), "state": self.state.row(machine)["state"]}

    async def _remove_recovered(self, machine: str) -> list[str]:
        removed = await self.failover.remove_recovered(machine)
        self.records.pop(machine, None)
        return removed

    # control API -----------------------------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/machines/{name}/reprotect", self._h_reprotect),
                web.post("/v1/machines/{name}/failback", self._h_failback),
                web.post("/v1/machines/{name}/reenable", self._h_reenable),
                web.get("/v1/machines/{name}/failback", self._h_show),
                web.post("/v1/plans/{name}/failback", self._h_plan_failback)]

    async def _body(self, request: web.Request) -> Body:
        self.require_admin(request)
        return await read_json(request)

    @staticmethod
    def _machine(request: web.Request) -> str:
        return check_name(request.match_info["name"], "machine name")

    async def _h_reprotect(self, request: web.Request) -> web.Response:
        b = await self._body(request)
        raw = b.data.get("to_disks") or []
        if not isinstance(raw, list) or len(raw) > 64 or not all(isinstance(x, str) and len(x) <= 4096 for x in raw):
            raise InvalidInput("field 'to_disks' must be a list of NAME=PATH strings", field="to_disks")
        job = await self.reprotect(self._machine(request), to=b.text("to", default="original", max_len=32) or "",
                                   to_disks=parse_to_disks(raw) or None)
        return json_response({**job.to_dict(), "failback": self.failback_of(self._machine(request))})

    async def _h_failback(self, request: web.Request) -> web.Response:
        b = await self._body(request)
        t = b.duration("shutdown_timeout")
        job = await self.failback(self._machine(request), shutdown_timeout=120.0 if t is None else t)
        return json_response({**job.to_dict(), "failback": self.failback_of(self._machine(request))})

    async def _h_reenable(self, request: web.Request) -> web.Response:
        b = await self._body(request)
        return json_response(await self.reenable(self._machine(request),
                                                 remove_recovered=b.boolean("remove_recovered", False)))

    async def _h_show(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        machine = self._machine(request)
        self.state.row(machine)
        return json_response({"machine": machine, "failback": self.failback_of(machine)})

    async def _h_plan_failback(self, request: web.Request) -> web.Response:
        b = await self._body(request)
        t = b.duration("shutdown_timeout")
        return json_response(await self.plan_failback(request.match_info["name"],
                                                      shutdown_timeout=120.0 if t is None else t))



