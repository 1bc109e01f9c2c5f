"""Drills as engine jobs on a real appliance: steps of NBD and export drills, cleanup as a job, the control API's
job routes (list, show, cancel, resume, bad input), the scheduler's tasks, and an export drill cut by an appliance
restart that shows as interrupted afterwards and is not run again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.appliance import recovery_service
from engine.client import AdminClient
from engine.errors import LifeboatError
from engine.events import JobChanged
from tests.conftest import need_tool
from tests.engine.harness import Site, make_disk, run_tool


async def test_drills_are_jobs_with_steps_and_survive_a_restart_as_history(tmp_path: Path, monkeypatch) -> None:
    need_tool("qemu-io")
    disk = tmp_path / "d0.img"
    make_disk(disk, 8 << 20, seed=5)
    site = Site(tmp_path)
    try:
        app = await site.start_appliance(crash_interval=0.2)
        assert list(app.scheduler.tasks) == ["machine-status", "resync-window", "scheduled-bookmarks", "retention",
                                             "rpo-history", "certificates", "vault-capacity", "history-pins",
                                             "config-backup", "network-settings", "egress-check"]
        assert app.scheduler.tasks["retention"].interval == 30 and app.scheduler.tasks["machine-status"].interval == 1
        assert app.scheduler.tasks["vault-capacity"].interval == 2
        changed: list[JobChanged] = []
        app.bus.subscribe(lambda e: changed.append(e) if isinstance(e, JobChanged) else None)
        await site.register()
        await site.start_agent({"d0": disk})
        await app.protect("vm1")
        await site.wait_for(lambda: app.machine_status("vm1")["state"] == "protected", 60, "initial sync")
        await run_tool("qemu-io", "-f", "raw", f"{site.nbd_url}/d0", "-c", "write -P 0x44 0 64k")
        await site.wait_caught_up()

        # An NBD drill returns served, as before, and is a succeeded job with its steps.
        job = await app.recovery.test_failover("vm1", "latest", export_dir=None, nbd="127.0.0.1:0")
        d = job.to_dict()
        assert d["finished"] and d["error"] is None and d["state"] == "succeeded" and d["result"]["nbd"]
        assert [(s["name"], s["state"]) for s in d["steps"]] == [
            ("resolve-point", "succeeded"), ("open-views", "succeeded"), ("serve-nbd", "succeeded")]
        cleaned = await app.recovery.cleanup("vm1")
        assert cleaned["cleaned"] == "vm1" and cleaned["removed"] == []
        cj = app.jobs.get(cleaned["job"])
        assert cj.kind == "failover-cleanup" and cj.state.value == "succeeded"
        assert [s.name for s in cj.steps] == ["stop-drill", "remove-images"]
        assert {e.state for e in changed if e.job_id == job.id} >= {"queued", "running", "succeeded"}

        # The control API lists, shows and refuses with stable codes.
        client = AdminClient(site.ahome)
        listed = await asyncio.to_thread(client.jobs, "vm1")
        assert [j["id"] for j in listed] == [job.id, cj.id]
        assert await asyncio.to_thread(client.jobs, None, active=True) == []
        shown = await asyncio.to_thread(client.job, job.id)
        for k in ("id", "operation", "machine", "progress", "finished", "error", "result", "steps", "state"):
            assert k in shown
        for call, code in ((lambda: client.cancel_job(job.id), "LB_JOB_FINISHED"),
                           (lambda: client.resume_job(job.id), "LB_JOB_NOT_PAUSED"),
                           (lambda: client.job("0123456789ab"), "LB_UNKNOWN_JOB"),
                           (lambda: client.job("../status"), "LB_INVALID_INPUT"),
                           (lambda: client.job("ABCDEF012345"), "LB_INVALID_INPUT"),
                           (lambda: client.call("GET", "/v1/jobs?machine=../x"), "LB_INVALID_NAME"),
                           (lambda: client.call("GET", "/v1/jobs?active=1&active=0"), "LB_INVALID_INPUT"),
                           (lambda: client.call("GET", "/v1/jobs?active=maybe"), "LB_INVALID_INPUT"),
                           (lambda: client.call("GET", "/v1/jobs?colour=red"), "LB_INVALID_INPUT")):
            with pytest.raises(LifeboatError) as ei:
                await asyncio.to_thread(call)
            assert ei.value.code == code

        # An export drill, slowed down, cut by an appliance stop: interrupted, and still so after the restart.
        monkeypatch.setattr(recovery_service, "EXPORT_CHUNK", 4096)
        gate = asyncio.Event()
        real_export = recovery_service.RecoveryService._export

        async def held_export(self, ctx, drill, disks):  # type: ignore[no-untyped-def]
            ctx.progress(0.01)
            await gate.wait()
            await real_export(self, ctx, drill, disks)
        monkeypatch.setattr(recovery_service.RecoveryService, "_export", held_export)
        ex = await app.recovery.test_failover("vm1", "latest", export_dir=str(tmp_path / "out"), nbd=None)
        assert ex.state.value == "running" and ex.step("export-disks").state.value == "running"
        assert (await asyncio.to_thread(client.jobs, "vm1", active=True))[0]["id"] == ex.id
        await site.agent.stop()
        site.agent = None
        await app.stop()
        assert ex.state.value == "interrupted" and ex.error["code"] == "LB_INTERRUPTED"
        app = await site.start_appliance()
        again = app.jobs.get(ex.id)
        assert again.state.value == "interrupted" and again.step("export-disks").state.value == "interrupted"
        assert again.step("open-views").state.value == "succeeded"
        assert not app.recovery.busy("vm1") and not (site.ahome / "drills" / "vm1").exists()
        assert [j.id for j in app.jobs.list("vm1")] == [job.id, cj.id, ex.id]
        assert app.jobs.running("vm1") is None
        # a new drill runs at once on the same machine (nothing old was re-run)
        gate.set()
        monkeypatch.setattr(recovery_service.RecoveryService, "_export", real_export)
        ex2 = await app.recovery.test_failover("vm1", "latest", export_dir=str(tmp_path / "out2"), nbd=None)
        await app.jobs.wait(ex2.id)
        assert ex2.state.value == "succeeded" and ex2.result["files"] and ex2.progress == 1.0

        # Cancelling an export through the API leaves the drill for cleanup; cleanup cancels a running export.
        monkeypatch.setattr(recovery_service.RecoveryService, "_export", held_export)
        gate.clear()
        await app.recovery.cleanup("vm1")
        ex3 = await app.recovery.test_failover("vm1", "latest", export_dir=str(tmp_path / "out3"), nbd=None)
        res = await app.recovery.cleanup("vm1")
        assert ex3.state.value == "cancelled" and ex3.error["code"] == "LB_CANCELLED" and res["cleaned"] == "vm1"
        ex4 = await app.recovery.test_failover("vm1", "latest", export_dir=str(tmp_path / "out4"), nbd=None)
        got = await asyncio.to_thread(client.cancel_job, ex4.id)
        assert got["state"] == "cancelled" and app.recovery.busy("vm1")
        await app.recovery.cleanup("vm1")
        assert not app.recovery.busy("vm1")
    finally:
        await site.stop()
