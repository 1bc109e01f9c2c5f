"""Test failover (drills) on the appliance: materialise a point as raw images, or serve it over NBD at once.

A drill never touches the replica or the journal: the NBD drill reads through a vault view and sends writes to a
scratch overlay under ``HOME/drills/MACHINE``; cleanup stops the server and removes the scratch data.

Both are engine jobs (engine/jobs) on the machine's queue. ``test_failover`` validates and resolves the point first
(nothing is opened while planning), then submits a ``test-failover`` job: resolve-point (done while planning),
open-views, then serve-nbd or export-disks. It returns as it always did: an NBD drill once it is served, an export
drill once its views are open (the export runs on as the job). ``cleanup`` is a ``failover-cleanup`` job; it first
cancels the drill's own job if that is still exporting. A drill outlives its job: it stays until cleaned up.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import time
from collections.abc import Mapping
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import platform
from ..errors import (Conflict, InvalidInput, LifeboatError, NotFound, NotReady, StorageError)
from ..jobs import Job, JobKind, JobManager, JobState, Plan, StepContext, StepSpec, StepState
from ..names import inside
from ..net import parse_address
from ..recovery.pins import Pin
from ..recovery.vault_disks import PointDisks
from ..recovery.points import parse_time, resolve_point  # noqa: F401  (parse_time: re-exported)
from ..vault.base import DiskView, Point
from .export_target import ExportTarget

if TYPE_CHECKING:
    from .machine_state import MachineState
    from .pipeline import MachineRuntime
    from .sync_cursor import SyncCursor

log = logging.getLogger(__name__)

EXPORT_CHUNK = 4 * 1024 * 1024


class Drill:
    def __init__(self, machine: str, point: Point, scratch: Path) -> None:
        self.machine = machine
        self.point = point
        self.scratch = scratch
        self.disks = PointDisks(scratch)   # views, overlays and the NBD server (engine/recovery/vault_disks.py)
        self.export: ExportTarget | None = None
        self.job_id: str | None = None
        self.files: list[str] = []
        self.started = time.time()

    @property
    def views(self) -> list[DiskView]:
        return self.disks.views

    async def close(self) -> None:
        await self.disks.close()   # idempotent: a failing step and a cleanup may both close it


def _job_error(job: Job, exc: BaseException | None) -> BaseException:
    """What an in-process caller sees when the job it waited for did not succeed."""
    if exc is not None:
        return exc
    e = job.error or {}
    return LifeboatError(e.get("message", f"job {job.id} {job.state.value}"), code=e.get("code"),
                         advice=e.get("advice"))


class RecoveryService:
    """Drills of protected machines, as jobs. Collaborators: ``drills_dir`` (scratch space), ``state`` (rows),
    ``runtimes`` (each machine's vault), ``cursor`` (which states are consistent), ``manager`` (the job manager)
    and ``pool`` (image writes)."""

    def __init__(self, drills_dir: Path, *, state: MachineState, runtimes: Mapping[str, MachineRuntime],
                 cursor: SyncCursor, manager: JobManager, pool: Executor) -> None:
        self.drills_dir = drills_dir
        self.state = state
        self.runtimes = runtimes
        self.cursor = cursor
        self.manager = manager
        self.pool = pool
        self.drills: dict[str, Drill] = {}
        self._closing: set[str] = set()

    @property
    def jobs(self) -> dict[str, Job]:
        return self.manager.jobs

    async def start(self) -> None:
        # Scratch left by a drill of an earlier run (appliance killed) holds nothing worth keeping; its job was
        # marked interrupted by the job manager.
        shutil.rmtree(self.drills_dir, ignore_errors=True)
        self.drills_dir.mkdir(mode=0o700, exist_ok=True)

    async def stop(self) -> None:
        for d in list(self.drills.values()):
            await d.close()
            if d.export:
                d.export.close()   # the exported images stay: they are the drill's result
        self.drills.clear()

    def busy(self, machine: str) -> bool:
        return machine in self.drills or machine in self._closing

    def pins(self) -> list[Pin]:
        """The drills left running: each holds its machine's history from being folded (engine/recovery/pins.py)."""
        return [Pin(d.machine, "drill", d.point.id, d.point.seq, d.started, d.job_id or "",
                    f"lifeboat failover-cleanup --home DIR {d.machine}") for d in list(self.drills.values())]

    def job(self, job_id: str) -> Job:
        return self.manager.get(job_id)

    async def _drop(self, drill: Drill) -> None:
        """A drill whose setup failed: nothing of it stays (the export folder only if Lifeboat made it)."""
        if self.drills.get(drill.machine) is drill:
            del self.drills[drill.machine]
        await drill.close()
        if drill.export:
            drill.export.cleanup()

    async def test_failover(self, machine: str, spec: str, *, export_dir: str | None, nbd: str | None) -> Job:
        # plan: validate and resolve the point; nothing is opened or written yet
        if (export_dir is None) == (nbd is None):
            raise InvalidInput("choose exactly one of --export DIR or --nbd HOST:PORT")
        if machine in self.drills:
            raise Conflict(f"a drill of {machine!r} is already running",
                           advice=f"Clean it up first: `lifeboat failover-cleanup --home DIR {machine}`.")
        row = self.state.row(machine)
        rt = self.runtimes.get(machine)
        if rt is None or not row["protected"]:
            raise NotReady(f"machine {machine!r} is not protected")
        point = await resolve_point(rt.vault, spec, lambda seq: self.cursor.is_consistent(machine, seq),
                                    rt.last_applied_ts if rt.last_applied_seq == rt.vault.last_seq else None)
        host, port = "", 0
        if nbd is not None:
            host, port = parse_address(nbd, any_port=True, what="nbd")
        if export_dir is not None and not os.path.isabs(export_dir):
            raise InvalidInput("--export needs an absolute folder path", field="export_dir")
        if machine in self.drills:   # another drill was planned while the point was resolved
            raise Conflict(f"a drill of {machine!r} is already running",
                           advice=f"Clean it up first: `lifeboat failover-cleanup --home DIR {machine}`.")
        drill = Drill(machine, point, inside(self.drills_dir, machine))
        if export_dir is not None:   # checked (or created) now, so a refusal reaches the operator at once
            drill.export = ExportTarget.prepare(Path(export_dir))
        self.drills[machine] = drill
        disks = rt.vault.disks()
        vault = rt.vault

        async def open_views(ctx: StepContext) -> None:
            try:
                await drill.disks.open_views(vault, point.seq)
            except BaseException:
                await self._drop(drill)
                raise

        async def serve_nbd(ctx: StepContext) -> None:
            try:
                bound = await drill.disks.serve(host, port, server_name=f"drill-{machine}", what="the drill")
            except BaseException:
                await self._drop(drill)
                raise
            ctx.result["nbd"] = f"{bound[0]}:{bound[1]}"
            ctx.result["exports"] = [d.name for d in disks]
            ctx.note("drill served over NBD")

        async def export_disks(ctx: StepContext) -> None:
            try:
                await self._export(ctx, drill, disks)
            except Exception:   # a failed export cleans itself up: no drill left running, no partial images
                await self._drop(drill)
                raise

        last = (StepSpec("serve-nbd", "Serve the disks over NBD", serve_nbd, 0.0) if nbd is not None else
                StepSpec("export-disks", "Export the disks as raw images", export_disks, 1.0,
                         error_code="LB_EXPORT_FAILED", advice="Check the target folder."))
        plan = Plan.sequence(StepSpec("open-views", "Open the point's disk views", open_views, 0.0), last)
        plan.done.append(("resolve-point", f"Resolve point {spec!r} → {point.id}"))
        try:
            job = self.manager.submit(JobKind.TEST_FAILOVER, machine, plan,
                                      title=f"Test failover of {machine} ({spec})", result={"point": point.to_dict()})
        except BaseException:
            await self._drop(drill)
            raise
        drill.job_id = job.id
        # Return when the drill is usable, as before the job layer: served (NBD) or its views open (export).
        await self.manager.wait(job.id, None if nbd is not None else
                                lambda j: j.step("export-disks").state != StepState.PENDING)
        if job.state in (JobState.FAILED, JobState.CANCELLED, JobState.INTERRUPTED) and (
                nbd is not None or job.step("export-disks").state == StepState.SKIPPED):
            raise _job_error(job, self.manager.exception(job.id))
        return job

    async def _export(self, ctx: StepContext, drill: Drill, disks: list) -> None:
        loop = asyncio.get_running_loop()
        target = drill.export
        assert target is not None
        total = sum(d.size for d in disks) or 1
        done = 0
        files = []
        for d, view in zip(disks, drill.views):
            fd, path = target.create(d.name)
            drill.files.append(path)
            try:
                os.ftruncate(fd, d.size)
                for off in range(0, d.size, EXPORT_CHUNK):
                    n = min(EXPORT_CHUNK, d.size - off)
                    data = await view.read(off, n)
                    if data.count(0) != len(data):  # keep zero runs sparse
                        mv, pos = memoryview(data), 0
                        while pos < n:   # a short write (a filesystem filling up) is not the end of the chunk
                            w = await loop.run_in_executor(self.pool, platform.pwrite, fd, mv[pos:], off + pos)
                            if w <= 0:
                                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                            pos += w
                    done += n
                    ctx.progress(done / total)
                await loop.run_in_executor(self.pool, os.fsync, fd)
            except OSError as exc:   # full, read-only, gone: the operator's to fix, not a bug
                raise StorageError(f"cannot write the drill image of disk {d.name} to {path}: "
                                   f"{exc.strerror or exc}",
                                   advice=f"Choose a folder on a filesystem with {d.size} bytes free per disk (or "
                                          "free space there) and start the drill again; the failed drill and its "
                                          "partial images were removed.", field="export_dir") from None
            finally:
                target.finish(fd, path)
            files.append(path)
        ctx.result["files"] = files

    async def cleanup(self, machine: str) -> dict[str, Any]:
        self.state.row(machine)
        drill = self.drills.pop(machine, None)
        if drill is None:
            raise NotFound(f"no drill of {machine!r} is running", advice="Nothing to clean up.")
        self._closing.add(machine)
        try:
            own = self.manager.jobs.get(drill.job_id or "")
            if own is not None and not own.finished:   # an export still writing ends first (its slot frees)
                await self.manager.cancel(own.id)

            async def stop_drill(ctx: StepContext) -> None:
                await drill.close()

            async def remove_images(ctx: StepContext) -> None:
                # the images this drill exported (also when cut short), identified by inode: never a file by name
                ctx.result["removed"] = drill.export.cleanup() if drill.export else []

            job = self.manager.submit(
                JobKind.FAILOVER_CLEANUP, machine,
                Plan.sequence(StepSpec("stop-drill", "Stop the drill and remove its scratch data", stop_drill),
                              StepSpec("remove-images", "Remove the exported images", remove_images)),
                title=f"Clean up drill of {machine}", result={"cleaned": machine, "point": drill.point.id})
            await self.manager.wait(job.id)
        finally:
            self._closing.discard(machine)
        if job.state != JobState.SUCCEEDED:
            raise _job_error(job, self.manager.exception(job.id))
        return {"cleaned": machine, "point": drill.point.id, "removed": job.result.get("removed", []),
                "job": job.id}
