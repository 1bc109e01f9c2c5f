"""Test failover (drills) on the appliance: materialise a point as raw images, or serve it over NBD at once.

A drill never touches the replica or the journal: the NBD drill reads through a vault view and sends writes to a
scratch overlay under ``HOME/drills/MACHINE``; cleanup stops the server and removes the scratch data.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .. import platform
from ..errors import Conflict, InvalidInput, LifeboatError, NotFound, NotReady, UnknownPoint
from ..events import JobProgress
from ..nbd.server import NBDServer
from ..vault.base import DiskView, MachineVault, Point
from .overlay import OverlayBackend

if TYPE_CHECKING:
    from .appliance import Appliance

log = logging.getLogger(__name__)

EXPORT_CHUNK = 4 * 1024 * 1024


@dataclass
class Job:
    id: str
    operation: str
    machine: str | None
    progress: float = 0.0
    finished: bool = False
    error: dict[str, Any] | None = None
    result: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "operation": self.operation, "machine": self.machine, "progress": self.progress,
                "finished": self.finished, "error": self.error, "result": self.result}


def parse_time(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return t.timestamp()


async def resolve_point(mv: MachineVault, spec: str, is_consistent: Callable[[int], bool],
                        latest_time: float | None = None) -> Point:
    """latest | ID | tag:TAG | TIME (ISO 8601 or epoch seconds) → the point to recover.

    ``is_consistent(seq)`` says whether the replica at a seq is a faithful image of the source (not during
    initial replication or a resync): only such states are handed out.
    A TIME gives the disks as they were at that instant: after the last write captured at or before it.
    """
    consistent = is_consistent(mv.last_seq)
    pts = mv.points()
    if spec == "latest":
        if not pts:
            raise NotReady("the machine has no recovery point yet")
        if not consistent:
            return pts[-1]   # a resync is under way: the newest state is not one the source was in
        seq = mv.last_seq
        newest = pts[-1]
        if newest.seq == seq:
            return newest
        return Point(f"s-{seq}", seq, latest_time or newest.time, "crash-consistent", None)
    if spec.startswith("tag:"):
        tag = spec[4:]
        tagged = [p for p in pts if p.kind == "app-consistent" and p.tag == tag]
        if not tagged:
            raise UnknownPoint(f"no app-consistent point tagged {tag!r}")
        return tagged[-1]
    for p in pts:
        if p.id == spec:
            return p
    t = parse_time(spec)
    if t is not None and not spec.startswith(("c-", "a-")):
        found = await mv.seq_at_time(t)
        if found is not None and not is_consistent(found[0]) and pts and found[0] >= pts[0].seq:
            raise UnknownPoint(f"at {spec} the replica was being brought in line with the source (initial "
                               "replication or resync), so it holds no faithful state then",
                               advice="Choose a time before or after it; `lifeboat points` lists the points.")
        if found is None or not is_consistent(found[0]):
            start = dt.datetime.fromtimestamp(pts[0].time, dt.timezone.utc).isoformat() if pts else "nowhere"
            raise UnknownPoint(f"no recoverable state at {spec} (history starts {start})")
        seq, _ = found
        exact = [p for p in pts if p.seq == seq]
        return exact[0] if exact else Point(f"t-{seq}", seq, t, "crash-consistent", None)
    raise UnknownPoint(f"no recovery point {spec!r}")


class Drill:
    def __init__(self, machine: str, point: Point, scratch: Path) -> None:
        self.machine = machine
        self.point = point
        self.scratch = scratch
        self.views: list[DiskView] = []
        self.backends: list[OverlayBackend] = []
        self.server: NBDServer | None = None
        self.export_dir: str | None = None
        self.task: asyncio.Task | None = None
        self.files: list[str] = []

    async def close(self) -> None:
        if self.task and not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.server:
            await self.server.stop()
        for b in self.backends:
            b.close()
        for v in self.views:
            await v.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


class RecoveryService:
    def __init__(self, app: Appliance) -> None:
        self.app = app
        self.jobs: dict[str, Job] = {}
        self.drills: dict[str, Drill] = {}
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        # Scratch left by a drill of an earlier run (appliance killed) holds nothing worth keeping.
        shutil.rmtree(self.app.home.drills, ignore_errors=True)

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for d in list(self.drills.values()):
            await d.close()
        self.drills.clear()

    def busy(self, machine: str) -> bool:
        return machine in self.drills

    def job(self, job_id: str) -> Job:
        if job_id not in self.jobs:
            raise NotFound(f"no job {job_id!r}")
        return self.jobs[job_id]

    def _progress(self, job: Job, progress: float, message: str = "") -> None:
        job.progress = progress
        self.app.bus.emit(JobProgress(job.id, job.operation, job.machine, progress, job.finished, job.error, message))

    async def test_failover(self, machine: str, spec: str, *, export_dir: str | None, nbd: str | None) -> Job:
        if (export_dir is None) == (nbd is None):
            raise InvalidInput("choose exactly one of --export DIR or --nbd HOST:PORT")
        if machine in self.drills:
            raise Conflict(f"a drill of {machine!r} is already running",
                           advice=f"Clean it up first: `lifeboat failover-cleanup --home DIR {machine}`.")
        row = self.app.machine_row(machine)
        rt = self.app.runtimes.get(machine)
        if rt is None or not row["protected"]:
            raise NotReady(f"machine {machine!r} is not protected")
        point = await resolve_point(rt.vault, spec, lambda seq: self.app.is_consistent(machine, seq),
                                    rt.last_applied_ts if rt.last_applied_seq == rt.vault.last_seq else None)
        host, port = "", 0
        if nbd is not None:
            host, _, p = nbd.rpartition(":")
            if not host or not p.isdigit() or not 0 <= int(p) < 65536:
                raise InvalidInput(f"--nbd {nbd!r} is not HOST:PORT")
            port = int(p)
        if export_dir is not None and not os.path.isabs(export_dir):
            raise InvalidInput("--export needs an absolute folder path")
        drill = Drill(machine, point, self.app.home.drills / machine)
        self.drills[machine] = drill
        job = Job(uuid.uuid4().hex[:12], "test-failover", machine, result={"point": point.to_dict()})
        self.jobs[job.id] = job
        for old in [j for j in self.jobs.values() if j.finished][:-100]:  # keep recent history only
            del self.jobs[old.id]
        try:
            drill.scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
            disks = rt.vault.disks()
            for d in disks:
                drill.views.append(await rt.vault.open_view(point.seq, d.index))
            if nbd is not None:
                exports = {}
                for d, v in zip(disks, drill.views):
                    b = OverlayBackend(v, drill.scratch / f"{d.index}.overlay")
                    drill.backends.append(b)
                    exports[d.name] = b
                drill.server = NBDServer(exports, name=f"drill-{machine}")
                bound = await drill.server.start(host, port)
                job.result["nbd"] = f"{bound[0]}:{bound[1]}"
                job.result["exports"] = [d.name for d in disks]
                job.finished = True
                self._progress(job, 1.0, "drill served over NBD")
            else:
                drill.export_dir = export_dir
                t = asyncio.create_task(self._export(job, drill, disks, Path(export_dir)))  # type: ignore[arg-type]
                drill.task = t
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)
        except BaseException:
            self.drills.pop(machine, None)
            await drill.close()
            raise
        return job

    async def _export(self, job: Job, drill: Drill, disks: list, folder: Path) -> None:
        loop = asyncio.get_running_loop()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            total = sum(d.size for d in disks) or 1
            done = 0
            files = []
            for d, view in zip(disks, drill.views):
                path = folder / f"{d.name}.img"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                drill.files.append(str(path))
                try:
                    os.ftruncate(fd, d.size)
                    for off in range(0, d.size, EXPORT_CHUNK):
                        n = min(EXPORT_CHUNK, d.size - off)
                        data = await view.read(off, n)
                        if data.count(0) != len(data):  # keep zero runs sparse
                            await loop.run_in_executor(self.app.pool, platform.pwrite, fd, data, off)
                        done += n
                        self._progress(job, done / total)
                    await loop.run_in_executor(self.app.pool, os.fsync, fd)
                finally:
                    os.close(fd)
                files.append(str(path))
            job.result["files"] = files
        except LifeboatError as exc:
            job.error = exc.to_dict()
        except Exception as exc:
            log.exception("export failed")
            job.error = {"code": "LB_EXPORT_FAILED", "message": str(exc), "advice": "Check the target folder."}
        finally:
            job.finished = True
            self._progress(job, 1.0 if not job.error else job.progress)

    async def cleanup(self, machine: str) -> dict[str, Any]:
        self.app.machine_row(machine)
        drill = self.drills.pop(machine, None)
        if drill is None:
            raise NotFound(f"no drill of {machine!r} is running", advice="Nothing to clean up.")
        await drill.close()
        removed = []
        for f in drill.files:  # the images this drill exported (also when cut short)
            if os.path.exists(f):
                os.unlink(f)
                removed.append(f)
        return {"cleaned": machine, "point": drill.point.id, "removed": removed}
