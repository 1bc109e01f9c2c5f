"""Failover of protected machines to a recovery host, as engine jobs; recovery hosts and recovery settings.

``failover`` plans first (pure checks, nothing opened): the machine is protected and not failed over already, the
host is registered, the settings give a valid VM for the host's networks, the point resolves. Then the machine is
marked ``failed-over`` (replication for it stops: its agent is disconnected and refused) and a ``failover`` job
runs: open-views → serve-overlay (the point's vault views behind copy-on-write overlays, served over NBD on
loopback: engine/recovery/vault_disks.py, shared with drills) → config-drive (NoCloud ``cidata``) → start-vm
(define + start on the host) → wait-boot (the serial console shows the machine's boot pattern). A failed step
tears down what the job made and gives the machine back to protection; the serial log stays for reading.

``cancel`` (a ``failover-cancel`` job) stops and removes the VM, stops serving, discards the overlay and gives
the machine back to protection. Planned failover, change point, commit and recovery plans (issue 13) build on the
same pieces: a plan run is a composite job whose members are these steps.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..appliance.control_http import read_json
from ..appliance.request_body import Body, json_response
from ..errors import (AlreadyFailedOver, Conflict, FailoverCommitted, HypervisorError, InvalidInput, LifeboatError,
                      NotFound, NotReady, QuiesceTimeout, SourceUnreachable, UnknownPoint)
from ..jobs import Job, JobKind, JobManager, JobState, Plan, StepContext, StepSpec
from ..names import check_name, inside
from .config_drive import build_config_drive
from .hosts.base import DiskSpec, NicSpec, VMSpec, parse_network, wait_for_boot
from .hosts.libvirt import LibvirtHost, check_uri, domain_name
from ..vault.base import MachineVault, Point
from .commit import materialise
from .pins import Pin
from .image_backend import CommittedDisks
from .points import resolve_point
from .settings import RecoverySettings, nic_mac
from .store import RecoveryStore
from .vault_disks import PointDisks

if TYPE_CHECKING:
    from ..appliance.control_http import AdminCheck
    from ..appliance.machine_state import MachineState
    from ..appliance.pipeline import MachineRuntime
    from ..appliance.sync_cursor import SyncCursor

log = logging.getLogger(__name__)

FAILED_OVER = "failed-over"
#: Where a recovered VM's NBD disks are served: the recovery host is this machine (kind qemu, local URI).
SERVE_HOST = "127.0.0.1"
#: Planned failover: how long the quiesced source's final point may take to reach the vault.
QUIESCE_TIMEOUT = 120.0


class Failover:
    """A running failover: what it holds open."""

    def __init__(self, machine: str, host: LibvirtHost, folder: Path) -> None:
        self.machine = machine
        self.host = host
        self.folder = folder
        self.disks = PointDisks(folder / "overlay")
        self.vm_defined = False
        self.vm: VMSpec | None = None
        self.point: Point | None = None
        self.planned = False
        self.source_vm: dict[str, Any] | None = None   # the vSphere VM a planned failover powered off


class FailoverService:
    """Recovery hosts, recovery settings and failovers. Collaborators: ``folder`` (HOME/failovers), ``state`` (machine
    rows), ``store`` (the recovery tables), ``runtimes`` (each machine's vault and agent link), ``cursor``
    (consistent states), ``manager`` (jobs), ``require_admin`` (the control API's admin check)."""

    def __init__(self, folder: Path, *, state: MachineState, store: RecoveryStore,
                 runtimes: Mapping[str, MachineRuntime], cursor: SyncCursor, manager: JobManager,
                 require_admin: AdminCheck | Callable[[web.Request], None]) -> None:
        self.folder = folder
        self.state = state
        self.store = store
        self.runtimes = runtimes
        self.cursor = cursor
        self.manager = manager
        self.require_admin = require_admin
        self.active: dict[str, Failover] = {}
        #: The plan whose unfinished test run made a machine's failover (set by the appliance: PlanService).
        self.test_run_of: Callable[[str], str | None] = lambda machine: None
        #: How a machine's history pin is shown (set by the appliance: HistoryPins.view).
        self.pin_of: Callable[[str], dict[str, Any] | None] = lambda machine: None
        #: The vSphere VM a machine is matched to ({"vcenter", "moref", "vm_name", ...}) and how to power it off
        #: or on (set by the appliance: engine/vsphere/service.py). A planned failover of a matched machine
        #: powers its source VM off once the final point is in the vault.
        self.vm_link_of: Callable[[str], dict[str, Any] | None] = lambda machine: None
        self.source_power: Callable[[str, bool], Awaitable[dict[str, Any] | None]] | None = None
        #: committed failovers: their images, served over NBD (failback captures the VM's writes there)
        self.committed: dict[str, CommittedDisks] = {}

    async def start(self) -> None:
        self.folder.mkdir(mode=0o700, exist_ok=True)
        # A booted or committed failover of an earlier run is served again on the same address (its overlay is
        # durable, its images are files; the VM's NBD client reconnects: hosts/libvirt.py). Otherwise it lost its
        # NBD server with that process and its VM cannot go on: say so; the operator cancels it.
        for r in self.store.failovers():
            if r["state"] in ("booted", "committed") and r.get("nbd"):
                try:
                    await self._serve_again(r)
                    continue
                except (LifeboatError, OSError) as exc:
                    log.warning("cannot serve the recovered disks of %s again: %s", r["machine"], exc)
            if r["state"] in ("starting", "running", "booted", "committing", "committed", "failed") \
                    and r["machine"] not in self.active and r["machine"] not in self.committed:
                self.store.update_failover(r["machine"], state="interrupted",
                                           error={"code": "LB_INTERRUPTED", "message": "the appliance stopped while "
                                                  "the recovered VM depended on it", "advice": "Cancel the failover "
                                                  "and fail over again."})

    async def stop(self) -> None:
        for fo in list(self.active.values()):
            await fo.disks.close(keep=True)   # a real failover's overlay is production data: kept
        self.active.clear()
        for cd in list(self.committed.values()):
            await cd.close()
        self.committed.clear()

    async def _serve_again(self, r: dict[str, Any]) -> None:
        """After a restart: serve a booted failover's durable overlay (over its point's views) or a committed
        failover's images on the address its VM uses."""
        machine = r["machine"]
        h, _, port = str(r["nbd"]).rpartition(":")
        folder = inside(self.folder, machine)
        rt = self.runtimes.get(machine)
        if r["state"] == "committed":
            if rt is None:
                raise NotReady(f"machine {machine!r} has no vault runtime")
            names = [d.name for d in rt.vault.disks()]
            cd = CommittedDisks(names, {n: folder / "committed" / f"{n}.img" for n in names})
            await cd.serve(h, int(port), server_name=f"committed-{machine}")
            self.committed[machine] = cd
            return
        if rt is None or r["point"].get("seq") is None:
            raise NotReady(f"the failover of {machine!r} has no point to serve")
        fo = Failover(machine, self._host(r["host"]), folder)
        pt = r["point"]
        fo.point = Point(pt["id"], int(pt["seq"]), float(pt["time"]), pt["kind"], pt.get("tag"))
        await fo.disks.open_views(rt.vault, int(r["point"]["seq"]))
        await fo.disks.serve(h, int(port), server_name=f"failover-{machine}", what="the failover", durable=True,
                             reopen=True)
        fo.vm_defined = True
        self.active[machine] = fo

    def recovered_disks(self, machine: str) -> list[tuple[str, Any]] | None:
        """The recovered VM's disks as Lifeboat serves them (name, backend): the overlays of a booted failover,
        the images of a committed one; None when they are not served (failback, engine/recovery/failback.py)."""
        fo = self.active.get(machine)
        if fo is not None and fo.disks.backends:
            return list(zip(fo.disks.names, fo.disks.backends))
        cd = self.committed.get(machine)
        if cd is not None:
            return list(zip(cd.names, cd.backends))
        return None

    async def remove_recovered(self, machine: str) -> list[str]:
        """After failback: remove the recovered VM, stop serving its disks, delete its overlay and images."""
        r = self.store.failover(machine)
        if r is None:
            return []
        host = self._host(r["host"])
        await host.destroy(machine)
        fo = self.active.pop(machine, None)
        if fo is not None:
            await fo.disks.close()
        cd = self.committed.pop(machine, None)
        if cd is not None:
            await cd.close()
        folder = inside(self.folder, machine)
        removed = [str(folder)] if folder.exists() else []
        shutil.rmtree(folder, ignore_errors=True)
        self.store.drop_failover(machine)
        self.state.event("recovered-vm-removed", machine, host=r["host"])
        return [f"VM {domain_name(machine)} on {r['host']}", *removed]

    def busy(self, machine: str) -> bool:
        return machine in self.active

    def pins(self) -> list[Pin]:
        """Failovers not committed read their point through vault views: each holds the machine's history from
        being folded (engine/recovery/pins.py). A plan's test run says so (kind ``plan-test``)."""
        out = []
        for m, fo in list(self.active.items()):
            r = self.store.failover(m)
            if fo.point is None or r is None:
                continue
            plan = self.test_run_of(m)
            out.append(Pin(m, "plan-test" if plan else "failover", fo.point.id, fo.point.seq, r["started_at"],
                           r["job"] or "", f"lifeboat plan cleanup --home DIR {plan}" if plan else
                           f"lifeboat failover-cancel --home DIR {m}"))
        return out

    def _host(self, name: str) -> LibvirtHost:
        r = self.store.host(check_name(name, "host name"))
        return LibvirtHost(r["name"], r["uri"], {n.name: n for n in r["networks"]}, accel=r["accel"])

    # hosts -------------------------------------------------------------------------------------------------
    async def add_host(self, name: str, kind: str, uri: str, networks: list[str], accel: str = "tcg") -> dict[str, Any]:
        check_name(name, "host name")
        if kind != "qemu":
            raise InvalidInput(f"recovery host kind {kind!r} is not supported (qemu)", field="kind")
        nets = [parse_network(n) for n in networks]
        check_uri(uri)
        seen: set[str] = set()
        for n in nets:
            if n.name in seen:
                raise InvalidInput(f"network {n.name!r} is given twice", field="network")
            seen.add(n.name)
        host = LibvirtHost(name, uri, {n.name: n for n in nets}, accel=accel)
        about = await host.check()   # refused before anything is stored when the hypervisor cannot be reached
        self.store.add_host(name, kind, uri, accel, nets)
        self.state.event("recovery-host-added", None, host=name, uri=uri)
        return {**self._host_view(self.store.host(name)), "hypervisor": about}

    @staticmethod
    def _host_view(r: dict[str, Any]) -> dict[str, Any]:
        return {"name": r["name"], "kind": r["kind"], "uri": r["uri"], "accel": r["accel"],
                "networks": {n.name: n.to_text() for n in r["networks"]}, "added": r["added"]}

    def list_hosts(self) -> list[dict[str, Any]]:
        return [self._host_view(r) for r in self.store.hosts()]

    # settings ----------------------------------------------------------------------------------------------
    def settings(self, machine: str, changes: dict[str, Any] | None = None) -> dict[str, Any]:
        """The machine's recovery settings, after applying ``changes`` (validated as a whole, then stored)."""
        self.state.row(machine)
        current = self.store.settings(machine)
        if changes:
            merged = {**current, **{k: v for k, v in changes.items() if k not in ("nics", "ips")}}
            for k in ("nics", "ips"):
                if k in changes:
                    merged[k] = {**current.get(k, {}), **changes[k]}
            s = RecoverySettings.from_dict(merged)
            self.store.put_settings(machine, s.to_dict())
            self.state.event("recovery-settings", machine, **changes)
        return {"machine": machine, **RecoverySettings.from_dict(self.store.settings(machine)).to_dict()}

    # failover ----------------------------------------------------------------------------------------------
    async def failover(self, machine: str, host_name: str, spec: str = "latest", *, planned: bool = False,
                       networks: Mapping[str, str] | None = None, test: bool = False) -> Job:
        """Fail ``machine`` over to ``host_name`` at point ``spec`` (unplanned), or, ``planned``, at a final point
        taken after the running source was quiesced (RPO 0; ``spec`` is not used). Returns the job once booted.
        ``networks``: NIC → network overrides for this failover only (a recovery plan's test run maps every NIC to
        the host's isolated network: engine/recovery/plans.py). ``test``: a drill (a plan's test run): the source
        goes on replicating, nothing of it is touched; the machine shows ``failover-test`` until the VM is removed."""
        if test and planned:
            raise InvalidInput("a test failover cannot be planned: it never stops the source", field="planned")
        row = self.state.row(machine)
        existing = self.store.failover(machine)
        if existing is not None or row["state"] == FAILED_OVER or machine in self.active:
            where = existing["host"] if existing else "?"
            raise AlreadyFailedOver(f"machine {machine!r} is failed over already (to {where}); a second failover is "
                                    "refused")
        rt = self.runtimes.get(machine)
        if rt is None or not row["protected"]:
            raise NotReady(f"machine {machine!r} is not protected", advice="Protect it first (`lifeboat protect`).")
        host = self._host(host_name)
        if not host.local:
            raise InvalidInput(f"recovery host {host.name} is remote ({host.uri}); this version serves the recovered "
                               "disks on the appliance's loopback address, which only a local host can reach",
                               field="host", advice="Fail over to a host registered with a qemu:/// URI.")
        settings = RecoverySettings.from_dict(self.store.settings(machine))
        conn = rt.connection
        tag = f"planned-failover-{secrets.token_hex(4)}"
        if planned:
            if conn is None or row["state"] != "protected":
                raise SourceUnreachable(f"a planned failover of {machine!r} needs its agent connected and the machine "
                                        f"protected (it is {row['state']}, agent "
                                        f"{'connected' if conn is not None else 'not connected'})")
            point: Point | None = None
        else:
            point = await self._resolve(machine, spec)
        folder = inside(self.folder, machine)
        serial_log = folder / "serial.log"
        nics = [NicSpec(nic, (networks or {}).get(nic, net), nic_mac(machine, nic)) for nic, net in settings.nics.items()]
        disks = rt.vault.disks()
        vm = VMSpec(machine, cpus=settings.cpus, memory_mib=settings.memory_mib, firmware=settings.firmware,
                    disks=[DiskSpec(d.name) for d in disks], nics=nics, serial_log=serial_log)
        vm.validate(host.networks)   # a NIC on a network the host lacks is refused now, before anything runs
        if machine in self.active:   # another failover was planned while the point was resolved
            raise AlreadyFailedOver(f"machine {machine!r} is being failed over already")
        fo = self.active[machine] = Failover(machine, host, folder)
        fo.vm, fo.point, fo.planned = vm, point, planned
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, mode=0o700)
        started = time.time()
        pending = {"id": "pending", "seq": None, "time": None, "kind": "final", "tag": tag}
        self.store.put_failover({"machine": machine, "host": host.name,
                                 "kind": "test" if test else "planned" if planned else "unplanned",
                                 "state": "starting", "point": point.to_dict() if point else pending, "job": None,
                                 "vm": domain_name(machine), "serial_log": str(serial_log),
                                 "scratch": str(fo.disks.scratch), "nbd": None, "started_at": started,
                                 "booted_at": None, "boot_seconds": None, "error": None})
        if not planned and not test:
            self._stop_replication(machine)

        async def quiesce(ctx: StepContext) -> None:
            assert conn is not None
            conn.send_control({"quiesce": {"tag": tag}})
            ctx.note(f"source asked to refuse writes after a flush; final bookmark {tag}")

        async def final_point(ctx: StepContext) -> None:
            # The bookmark is the first record after the last write the source accepted: once it is in the vault,
            # so is everything the source captured (the vault applies records in seq order). RPO 0.
            loop_end = time.monotonic() + QUIESCE_TIMEOUT
            while True:
                if rt.connection is not conn:
                    raise SourceUnreachable(f"the source's link dropped while {machine} was quiescing; its writes "
                                            "are accepted again", advice="Fail over again (planned or unplanned).")
                try:
                    fo.point = await resolve_point(rt.vault, f"tag:{tag}", lambda seq: True, None)
                    break
                except UnknownPoint:
                    if time.monotonic() >= loop_end:
                        raise QuiesceTimeout(f"the final point of {machine} did not reach the vault within "
                                             f"{QUIESCE_TIMEOUT:g} s") from None
                    await asyncio.sleep(0.2)
            self.store.update_failover(machine, point=fo.point.to_dict())
            self._stop_replication(machine)   # before any other frame: nothing follows the final point
            ctx.result["point"] = fo.point.to_dict()
            ctx.note(f"final point {fo.point.id} (seq {fo.point.seq}) is in the vault; replication stopped")

        link = self.vm_link_of(machine) if planned and self.source_power is not None else None

        async def power_off_source(ctx: StepContext) -> None:
            # After the final point: everything the source wrote is in the vault. Powered off, it cannot go on
            # beside its recovered copy (split brain: same addresses, same services, diverging data).
            assert link is not None and self.source_power is not None
            vm_name = f"{link.get('vm_name') or link['moref']} on {link['vcenter']}"
            try:
                out = await self.source_power(machine, False)
            except LifeboatError as exc:
                raise LifeboatError(
                    f"the source VM {vm_name} of {machine} could not be powered off through vCenter: "
                    f"{exc.message}. The planned failover stopped there, so that the source and its recovered "
                    "copy never run side by side; nothing was failed over, and the source takes writes again "
                    "once its agent reconnects", code=exc.code,
                    advice=f"Fix the vCenter connection (`lifeboat vcenter list`) and fail over again, or power "
                           f"the source VM off by hand and fail over unplanned at the final point: `lifeboat "
                           f"failover --home DIR {machine} --host {host.name} --point tag:{tag}`.") from exc
            if out is None:
                ctx.note(f"{machine} is no longer matched to a vSphere VM: the agent's quiesce alone keeps the "
                         "source from writing")
                return
            fo.source_vm = out
            ctx.result["source_vm"] = out
            self.state.event("source-powered-off", machine, **out)
            ctx.note(f"source VM {vm_name} powered off ({out['was']} → {out['now']})")

        async def config_drive(ctx: StepContext) -> None:
            vm.config_drive = await build_config_drive(folder, machine, f"lifeboat-{machine}-{int(started)}",
                                                       settings)
            ctx.result["config_drive"] = str(vm.config_drive)

        open_views, serve, start_vm, wait_boot = self._boot_steps(fo, rt.vault, settings, started)
        head = [StepSpec("quiesce", "Quiesce the source (flush, then refuse writes)", quiesce, 0.0,
                         error_code="LB_SOURCE_UNREACHABLE"),
                StepSpec("final-point", "Wait until everything captured is in the vault; take the final point",
                         final_point, 0.1, error_code="LB_QUIESCE_TIMEOUT")] if planned else []
        if link is not None:
            head.append(StepSpec("power-off-source", f"Power the source VM {link.get('vm_name') or link['moref']} "
                                 f"off through vCenter {link['vcenter']}", power_off_source, 0.05,
                                 error_code="LB_VCENTER_UNREACHABLE"))
        plan = Plan.sequence(*head, open_views, serve,
                             StepSpec("config-drive", "Build the config drive (re-IP)", config_drive, 0.0,
                                      error_code="LB_STORAGE"), start_vm, wait_boot)
        if point is not None:
            plan.done.append(("resolve-point", f"Resolve point {spec!r} → {point.id}"))
        what = "planned, final point" if planned else spec
        try:
            job = self.manager.submit(JobKind.FAILOVER, machine, plan, title=f"Failover of {machine} to {host.name} "
                                      f"({what})", result={"point": point.to_dict() if point else None,
                                                           "host": host.name, "planned": planned})
        except BaseException:
            await self._teardown(fo, keep_log=True)
            raise
        self.store.update_failover(machine, job=job.id)
        await self.manager.wait(job.id)
        if job.state != JobState.SUCCEEDED:
            err = job.error or {}
            await self._teardown(fo, keep_log=True)
            if planned and rt.connection is conn and conn is not None:
                conn.send_control({"quiesce": False})   # the source goes on: it was not failed over
            exc = self.manager.exception(job.id)
            raise exc if isinstance(exc, LifeboatError) else LifeboatError(
                err.get("message", f"failover job {job.id} {job.state.value}"), code=err.get("code"),
                advice=err.get("advice"))
        if fo.point is not None:
            job.result["point"] = fo.point.to_dict()
        return job

    async def resolve(self, machine: str, spec: str) -> Point:
        """The point ``spec`` names for ``machine`` now (what a failover at ``spec`` would boot); nothing is opened."""
        if self.runtimes.get(machine) is None:
            raise NotReady(f"machine {machine!r} is not protected", advice="Protect it first (`lifeboat protect`).")
        return await self._resolve(machine, spec)

    async def _resolve(self, machine: str, spec: str) -> Point:
        rt = self.runtimes[machine]
        return await resolve_point(rt.vault, spec, lambda seq: self.cursor.is_consistent(machine, seq),
                                   rt.last_applied_ts if rt.last_applied_seq == rt.vault.last_seq else None)

    def _boot_steps(self, fo: Failover, vault: MachineVault, settings: RecoverySettings,
                    started: float) -> tuple[StepSpec, StepSpec, StepSpec, StepSpec]:
        """open-views → serve-overlay, start-vm → wait-boot at ``fo.point``: shared by failover and change point."""
        machine, host, vm = fo.machine, fo.host, fo.vm
        assert vm is not None and vm.serial_log is not None
        serial_log = vm.serial_log

        async def open_views(ctx: StepContext) -> None:
            assert fo.point is not None
            await fo.disks.open_views(vault, fo.point.seq)

        async def serve_overlay(ctx: StepContext) -> None:
            addr = await fo.disks.serve(SERVE_HOST, 0, server_name=f"failover-{machine}", what="the failover",
                                        durable=True)   # production data from the first write on
            self.store.update_failover(machine, nbd=f"{addr[0]}:{addr[1]}")
            ctx.result["nbd"] = f"{addr[0]}:{addr[1]}"

        async def start_vm(ctx: StepContext) -> None:
            assert fo.disks.address is not None
            h, p = fo.disks.address
            vm.disks = [DiskSpec(n, nbd_host=h, nbd_port=p, nbd_export=n) for n in fo.disks.names]
            await host.define(vm)
            fo.vm_defined = True
            await host.start(machine)
            self.store.update_failover(machine, state="running")
            ctx.note(f"VM {domain_name(machine)} started on {host.name}")

        async def wait_boot(ctx: StepContext) -> None:
            seconds, line = await wait_for_boot(serial_log, settings.boot_pattern, settings.boot_timeout, vm=machine,
                                                agent=lambda: host.agent_ping(machine))
            now = time.time()
            self.store.update_failover(machine, state="booted", booted_at=now, boot_seconds=round(now - started, 3))
            ctx.result["boot_seconds"] = round(now - started, 3)
            ctx.result["boot_line"] = line
            assert fo.point is not None
            self.state.event("failed-over", machine, host=host.name, point=fo.point.id,
                             boot_seconds=round(now - started, 3))

        return (StepSpec("open-views", "Open the point's disk views", open_views, 0.0),
                StepSpec("serve-overlay", "Serve the disks through a copy-on-write overlay", serve_overlay, 0.0),
                StepSpec("start-vm", f"Define and start the VM on {host.name}", start_vm, 0.2,
                         error_code="LB_HYPERVISOR"),
                StepSpec("wait-boot", "Wait until the guest has booted", wait_boot, 0.8, error_code="LB_BOOT_TIMEOUT"))

    def _live(self, machine: str, action: str) -> tuple[dict[str, Any], Failover]:
        """The failover row and its live state for change point / commit: refused when committed, interrupted, or
        while another job of it runs."""
        self.state.row(machine)
        r = self.store.failover(machine)
        if r is None:
            raise NotFound(f"machine {machine!r} is not failed over", advice=f"Nothing to {action}.",
                           code="LB_NOT_FAILED_OVER")
        if r["state"] in ("committing", "committed"):
            raise FailoverCommitted(f"the failover of {machine!r} is {r['state']}: cannot {action}")
        fo = self.active.get(machine)
        if fo is None or fo.vm is None or r["state"] == "interrupted":
            raise NotReady(f"the failover of {machine!r} is {r['state']}: it cannot {action}",
                           advice="Cancel it (`lifeboat failover-cancel`) and fail over again.", code="LB_INTERRUPTED")
        own = self.manager.jobs.get(r["job"] or "")
        if own is not None and not own.finished:
            raise Conflict(f"job {own.id} of {machine!r} ({own.kind}) is still running",
                           advice="Wait for it to finish (`lifeboat jobs`).")
        return r, fo

    async def _run(self, machine: str, job: Job) -> Job:
        self.store.update_failover(machine, job=job.id)
        await self.manager.wait(job.id)
        if job.state != JobState.SUCCEEDED:
            exc = self.manager.exception(job.id)
            err = job.error or {}
            raise exc if isinstance(exc, LifeboatError) else LifeboatError(
                err.get("message", f"job {job.id} {job.state.value}"), code=err.get("code"), advice=err.get("advice"))
        return job

    async def change_point(self, machine: str, spec: str) -> Job:
        """Before commit: restart the recovered VM from another point; its overlay (what it wrote) is discarded."""
        r, fo = self._live(machine, "change the point")
        point = await self._resolve(machine, spec)
        rt = self.runtimes[machine]
        settings = RecoverySettings.from_dict(self.store.settings(machine))
        previous = r["point"]["id"]
        started = time.time()

        async def stop_vm(ctx: StepContext) -> None:
            self.store.update_failover(machine, state="starting", booted_at=None, boot_seconds=None, nbd=None)
            await fo.host.destroy(machine)   # powered off: what the guest wrote is thrown away anyway
            fo.vm_defined = False
            await fo.disks.close()           # stops serving; removes the overlay
            fo.disks = PointDisks(fo.folder / "overlay")
            fo.point = point
            self.store.update_failover(machine, point=point.to_dict(), started_at=started)
            assert fo.vm is not None and fo.vm.serial_log is not None
            if fo.vm.serial_log.exists():
                fo.vm.serial_log.replace(fo.vm.serial_log.with_name("serial.previous.log"))
            ctx.note(f"VM stopped, overlay of point {previous} discarded")

        steps = self._boot_steps(fo, rt.vault, settings, started)
        plan = Plan.sequence(StepSpec("stop-vm", "Stop the VM and discard its overlay", stop_vm, 0.0,
                                      error_code="LB_HYPERVISOR"), *steps)
        plan.done.append(("resolve-point", f"Resolve point {spec!r} → {point.id}"))
        job = self.manager.submit(JobKind.FAILOVER_CHANGE_POINT, machine, plan,
                                  title=f"Change the point of {machine}: {previous} → {point.id}",
                                  result={"point": point.to_dict(), "previous": previous, "host": fo.host.name})
        try:
            await self._run(machine, job)
        except LifeboatError as exc:
            self.store.update_failover(machine, state="failed", error=exc.to_dict())
            raise
        self.state.event("failover-point-changed", machine, host=fo.host.name, point=point.id, previous=previous)
        return job

    async def commit(self, machine: str, *, stop_timeout: float = 60.0) -> Job:
        """Keep the recovered machine: copy overlay + vault view of every disk into a standalone image
        (``HOME/failovers/<machine>/committed/<disk>.img``, 0600) while the VM runs, then stop the VM (guest
        shutdown, power-off after ``stop_timeout``), copy what it wrote meanwhile, and start it on the images. The
        vault views and the overlay are released; no other point can be chosen any more."""
        r, fo = self._live(machine, "commit")
        if r["kind"] == "test":
            raise Conflict(f"the failover of {machine!r} is a test (a drill): it is cleaned up, never committed",
                           code="LB_TEST_RUN", advice="Clean it up (`lifeboat plan cleanup` / `failover-cancel`), then "
                                                      "run a real failover to keep a recovered machine.")
        if r["state"] != "booted":
            raise NotReady(f"the recovered VM of {machine!r} is {r['state']}, not booted",
                           advice="Commit once it has booted (`lifeboat vm list`), or change the point.")
        settings = RecoverySettings.from_dict(self.store.settings(machine))
        target = fo.folder / "committed"
        images = {n: target / f"{n}.img" for n in fo.disks.names}
        started = time.time()
        total = sum(b.size for b in fo.disks.backends) or 1
        vm = fo.vm
        assert vm is not None and vm.serial_log is not None
        serial_log = vm.serial_log

        async def copy(ctx: StepContext) -> None:
            self.store.update_failover(machine, state="committing")
            target.mkdir(mode=0o700, exist_ok=True)
            done = 0
            for name, b in zip(fo.disks.names, fo.disks.backends):
                b.track_changes()
                async for n in materialise(b, images[name], None):
                    done += n
                    ctx.progress(done / total, f"{name}: {done >> 20} of {total >> 20} MiB")
            ctx.result["images"] = {n: str(p) for n, p in images.items()}

        async def stop_vm(ctx: StepContext) -> None:
            await fo.host.stop(machine, timeout=stop_timeout)
            ctx.note("VM stopped")

        async def copy_changed(ctx: StepContext) -> None:
            blocks = 0
            for name, b in zip(fo.disks.names, fo.disks.backends):
                changed = b.take_changes()
                blocks += len(changed)
                async for _ in materialise(b, images[name], changed):
                    pass
            ctx.result["blocks_written_during_copy"] = blocks

        rt = self.runtimes.get(machine)
        cloud = rt.vault if rt is not None and rt.vault is not None and rt.vault.publishes_disks else None

        async def publish(ctx: StepContext) -> None:
            # the images are final here (the VM is stopped): each becomes a disk the vault's cloud can import
            assert cloud is not None
            out = {}
            for i, name in enumerate(fo.disks.names):
                ctx.progress(i / len(fo.disks.names), f"{name}: writing the VHD")
                out[name] = await cloud.publish_disk(name, images[name], {
                    "lbmachine": machine, "lbdisk": name, "lbpoint": str(r["point"]["id"])})
                ctx.note(f"{name}: VHD page blob {out[name]['blob']} ({out[name]['vhd_size'] >> 20} MiB)")
            ctx.result["vhd"] = out

        async def switch(ctx: StepContext) -> None:
            await fo.host.destroy(machine)
            # the images are served by Lifeboat (not opened by the hypervisor), so failback can capture the VM's
            # writes (engine/recovery/failback.py)
            cd = CommittedDisks(fo.disks.names, images)
            h, p = await cd.serve(SERVE_HOST, 0, server_name=f"committed-{machine}")
            self.committed[machine] = cd
            self.store.update_failover(machine, nbd=f"{h}:{p}")
            vm.disks = [DiskSpec(n, nbd_host=h, nbd_port=p, nbd_export=n) for n in fo.disks.names]
            if serial_log.exists():
                serial_log.replace(serial_log.with_name("serial.previous.log"))
            await fo.host.define(vm)
            await fo.host.start(machine)
            ctx.note(f"VM {domain_name(machine)} started on its committed images")

        async def wait_boot(ctx: StepContext) -> None:
            seconds, line = await wait_for_boot(serial_log, settings.boot_pattern, settings.boot_timeout, vm=machine,
                                                agent=lambda: fo.host.agent_ping(machine))
            ctx.result["boot_line"] = line

        async def release(ctx: StepContext) -> None:
            await fo.disks.close()   # the vault views, the NBD server and the overlay: no longer needed
            now = time.time()
            self.store.update_failover(machine, state="committed", booted_at=now,
                                       boot_seconds=round(now - started, 3))
            ctx.note("vault views and overlay released")

        plan = Plan.sequence(
            StepSpec("copy", "Copy overlay + point into standalone images (VM running)", copy, 0.7,
                     error_code="LB_STORAGE"),
            StepSpec("stop-vm", "Stop the VM", stop_vm, 0.05, error_code="LB_HYPERVISOR"),
            StepSpec("copy-changed", "Copy what the VM wrote during the copy", copy_changed, 0.05,
                     error_code="LB_STORAGE"),
            *([StepSpec("publish-vhd", "Write each disk as a VHD-ready page blob in the vault's container",
                        publish, 0.1, error_code="LB_STORAGE")] if cloud is not None else []),
            StepSpec("switch", "Start the VM on its committed images", switch, 0.05, error_code="LB_HYPERVISOR"),
            StepSpec("wait-boot", "Wait until the guest has booted", wait_boot, 0.15, error_code="LB_BOOT_TIMEOUT"),
            StepSpec("release", "Release the vault views and the overlay", release, 0.0))
        job = self.manager.submit(JobKind.FAILOVER_COMMIT, machine, plan, title=f"Commit the failover of {machine}",
                                  result={"point": r["point"], "host": fo.host.name})
        try:
            await self._run(machine, job)
        except LifeboatError as exc:
            self.store.update_failover(machine, state="failed", error=exc.to_dict())
            raise
        self.active.pop(machine, None)   # nothing of it is held open any more
        self.state.event("failover-committed", machine, host=fo.host.name, point=r["point"]["id"])
        return job

    def _stop_replication(self, machine: str) -> None:
        self.state.update(machine, state=FAILED_OVER)
        rt = self.runtimes.get(machine)
        if rt is not None and rt.connection is not None:
            rt.connection.close()   # the process server refuses it from now on (engine/appliance/process_server.py)

    async def _teardown(self, fo: Failover, *, keep_log: bool) -> None:
        """Remove what a failover made: the VM, the NBD server and overlay; the machine goes back to protection."""
        try:
            await fo.host.destroy(fo.machine)
        except HypervisorError:
            if fo.vm_defined:
                raise
        await fo.disks.close()
        if not keep_log:
            shutil.rmtree(fo.folder, ignore_errors=True)
        else:
            shutil.rmtree(fo.folder / "cidata", ignore_errors=True)
            (fo.folder / "cidata.iso").unlink(missing_ok=True)
        self.active.pop(fo.machine, None)
        self.store.drop_failover(fo.machine)
        row = self.state.row(fo.machine)
        if row["state"] == FAILED_OVER:
            self.state.update(fo.machine, state="protected" if row["protected"] else "unprotected")

    async def cancel(self, machine: str) -> dict[str, Any]:
        self.state.row(machine)
        r = self.store.failover(machine)
        if r is None:
            raise NotFound(f"machine {machine!r} is not failed over", advice="Nothing to cancel.",
                           code="LB_NOT_FAILED_OVER")
        if r["state"] in ("committing", "committed"):
            raise FailoverCommitted(f"the failover of {machine!r} is {r['state']}: the recovered machine is kept and "
                                    "is not cancelled", advice="Remove it on the recovery host by hand (`virsh "
                                    "destroy` and `undefine`) if it must go; failback is still to come.")
        fo = self.active.get(machine)
        if fo is None:   # an earlier run's failover: only the VM and the files are left
            fo = Failover(machine, self._host(r["host"]), inside(self.folder, machine))
        own = self.manager.jobs.get(r["job"] or "")
        if own is not None and not own.finished:
            await self.manager.cancel(own.id)

        source_vm = fo.source_vm

        async def remove(ctx: StepContext) -> None:
            await self._teardown(fo, keep_log=False)
            if source_vm is not None and self.source_power is not None:
                # the planned failover powered the source off: it runs again, and replication resumes with it
                try:
                    ctx.result["source_vm"] = await self.source_power(machine, True)
                    ctx.note(f"source VM {source_vm.get('vm')} powered on again")
                except LifeboatError as exc:
                    ctx.result["source_vm_error"] = exc.to_dict()
                    ctx.note(f"the source VM {source_vm.get('vm')} could not be powered on again "
                             f"({exc.code}: {exc.message}); power it on in vCenter")

        job = self.manager.submit(JobKind.FAILOVER_CANCEL, machine,
                                  Plan.sequence(StepSpec("remove-vm", "Stop and remove the VM, discard the overlay",
                                                         remove, error_code="LB_HYPERVISOR")),
                                  title=f"Cancel failover of {machine}", result={"machine": machine})
        await self.manager.wait(job.id)
        if job.state != JobState.SUCCEEDED:
            exc = self.manager.exception(job.id)
            raise exc if exc is not None else LifeboatError(f"cancel job {job.id} {job.state.value}")
        self.state.event("failover-cancelled", machine, host=r["host"], point=r["point"]["id"])
        out = {"machine": machine, "cancelled": True, "host": r["host"], "point": r["point"]["id"], "job": job.id}
        for k in ("source_vm", "source_vm_error"):
            if k in job.result:
                out[k] = job.result[k]
        return out

    async def vms(self) -> list[dict[str, Any]]:
        out = []
        for r in self.store.failovers():
            live = None
            try:
                live = (await self._host(r["host"]).state(r["machine"])).value
            except LifeboatError as exc:
                live = f"unknown ({exc.code})"
            out.append({"machine": r["machine"], "host": r["host"], "vm": r["vm"], "state": r["state"],
                        "vm_state": live, "point": r["point"]["id"], "point_time": r["point"].get("time"),
                        "serial_log": r["serial_log"], "started_at": r["started_at"], "booted_at": r["booted_at"],
                        "boot_seconds": r["boot_seconds"], "nbd": r["nbd"], "job": r["job"], "error": r["error"],
                        "kind": r["kind"], "committed": r["state"] == "committed", "pin": self.pin_of(r["machine"]),
                        "images": ({d.name: str(inside(self.folder, r["machine"]) / "committed" / f"{d.name}.img")
                                    for d in self.runtimes[r["machine"]].vault.disks()}
                                   if r["state"] == "committed" and r["machine"] in self.runtimes else None)})
        return out

    def failover_of(self, machine: str) -> dict[str, Any] | None:
        """What ``status`` shows of a failed-over machine (host, point, state)."""
        r = self.store.failover(machine)
        return None if r is None else {"host": r["host"], "point": r["point"]["id"], "state": r["state"],
                                       "booted_at": r["booted_at"], "kind": r["kind"]}

    # control API -------------------------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/hosts", self._h_add_host), web.get("/v1/hosts", self._h_hosts),
                web.get("/v1/machines/{name}/recovery-settings", self._h_settings),
                web.put("/v1/machines/{name}/recovery-settings", self._h_settings),
                web.post("/v1/machines/{name}/failover-vm", self._h_failover),
                web.post("/v1/machines/{name}/failover-cancel", self._h_cancel),
                web.post("/v1/machines/{name}/failover-change-point", self._h_change_point),
                web.post("/v1/machines/{name}/failover-commit", self._h_commit),
                web.get("/v1/vms", self._h_vms)]

    async def _body(self, request: web.Request) -> Body:
        self.require_admin(request)
        return await read_json(request)

    @staticmethod
    def _machine(request: web.Request) -> str:
        return check_name(request.match_info["name"], "machine name")

    async def _h_add_host(self, request: web.Request) -> web.Response:
        b = await self._body(request)
        nets = b.data.get("networks", [])
        if not isinstance(nets, list) or not all(isinstance(n, str) and len(n) <= 300 for n in nets) or len(nets) > 64:
            raise InvalidInput("field 'networks' must be a list of at most 64 NAME=KIND strings", field="networks")
        return json_response(await self.add_host(
            b.name("name", "host name", required=True) or "", b.text("kind", default="qemu", max_len=32) or "",
            b.text("uri", default="qemu:///system", max_len=512) or "", nets,
            accel=b.text("accel", default="tcg", max_len=8) or ""))

    async def _h_hosts(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        return json_response(self.list_hosts())

    async def _h_settings(self, request: web.Request) -> web.Response:
        machine = self._machine(request)
        if request.method == "GET":
            self.require_admin(request)
            return json_response(self.settings(machine))
        b = await self._body(request)
        changes: dict[str, Any] = {}
        for k in ("cpus", "memory_mib"):
            if b.data.get(k) is not None:
                v = b.data[k]
                if isinstance(v, bool) or not isinstance(v, int):
                    raise InvalidInput(f"field {k!r} must be an integer", field=k)
                changes[k] = v
        for k in ("nics", "ips"):
            v = b.data.get(k)
            if v is not None:
                if not isinstance(v, dict) or len(v) > 32 or not all(
                        isinstance(x, str) and isinstance(y, str) and len(y) <= 64 for x, y in v.items()):
                    raise InvalidInput(f"field {k!r} must map NIC names to strings", field=k)
                changes[k] = v
        if b.data.get("gateway") is not None:
            changes["gateway"] = b.text("gateway", max_len=64)
        if b.data.get("dns") is not None:
            dns = b.data["dns"]
            if not isinstance(dns, list) or len(dns) > 8 or not all(isinstance(x, str) and len(x) <= 64 for x in dns):
                raise InvalidInput("field 'dns' must be a list of at most 8 addresses", field="dns")
            changes["dns"] = dns
        if b.data.get("boot_pattern") is not None:
            changes["boot_pattern"] = b.text("boot_pattern", max_len=256)
        if b.data.get("firmware") is not None:
            changes["firmware"] = b.text("firmware", max_len=8)
        if b.data.get("boot_timeout") is not None:
            t = b.data["boot_timeout"]
            if isinstance(t, bool) or not isinstance(t, (int, float)):
                raise InvalidInput("field 'boot_timeout' must be a number of seconds", field="boot_timeout")
            changes["boot_timeout"] = float(t)
        return json_response(self.settings(machine, changes))

    async def _h_failover(self, request: web.Request) -> web.Response:
        b = await self._body(request)
        machine = self._machine(request)
        job = await self.failover(machine, b.name("host", "host name", required=True) or "",
                                  b.text("point", default="latest", max_len=256) or "latest",
                                  planned=b.boolean("planned", False))
        return await self._job_and_vm(job, machine)

    async def _job_and_vm(self, job: Job, machine: str) -> web.Response:
        return json_response({**job.to_dict(), "vm": next((v for v in await self.vms() if v["machine"] == machine),
                                                          None)})

    async def _h_change_point(self, request: web.Request) -> web.Response:
        b = await self._body(request)
        machine = self._machine(request)
        job = await self.change_point(machine, b.text("point", required=True, max_len=256) or "")
        return await self._job_and_vm(job, machine)

    async def _h_commit(self, request: web.Request) -> web.Response:
        b = await self._body(request)
        machine = self._machine(request)
        t = b.duration("stop_timeout")
        return await self._job_and_vm(await self.commit(machine, stop_timeout=60.0 if t is None else t), machine)

    async def _h_cancel(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        return json_response(await self.cancel(self._machine(request)))

    async def _h_vms(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        return json_response(await self.vms())

