"""A plan run's per-machine point choice and the plan editor's operations, in-process, without a boot: the run
pauses at a manual action before its first group, so the point each machine will boot is checked before any VM
starts (the libvirt recovery host is registered for real; nothing is defined on it). The CLI's
``plan run --point-of MACHINE=POINT`` goes through the control route to the same place."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import pytest

from engine.agent.register import register
from engine.errors import InvalidInput, LifeboatError
from engine.jobs import JobState
from tests.conftest import need_tool
from tests.engine.harness import Site, make_disk, sh
from tests.engine.test_cli import lb

MiB = 1 << 20


async def test_per_machine_point_is_resolved_before_the_run_and_edits(tmp_path: Path, recovery_host: str) -> None:
    need_tool("qemu-io")
    site = Site(tmp_path)
    app = await site.start_appliance(crash_interval=0.5)
    host = f"pp{os.getpid()}"
    try:
        await site.register("vm1")
        disk = tmp_path / "d0.img"
        make_disk(disk, 4 * MiB, seed=3)
        await site.start_agent({"d0": disk})
        await app.protect("vm1")
        await site.wait_for(lambda: app.machine_status("vm1")["state"] == "protected", 60, "vm1 protected")
        app.request_bookmark("vm1", "before")
        await site.wait_for(lambda: any(p.get("tag") == "before" for p in app.points("vm1")), 30, "the bookmark")
        tagged = next(p for p in app.points("vm1") if p.get("tag") == "before")
        n0 = len(app.points("vm1"))
        await sh("qemu-io", "-f", "raw", f"{site.nbd_url}/d0", "-c", "write -P 0x77 1M 64k")   # a later point
        await site.wait_for(lambda: len(app.points("vm1")) > n0, 30, "a later point")
        assert app.failover is not None and app.plans is not None
        await app.failover.add_host(host, "qemu", recovery_host, ["iso=isolated"])
        app.failover.settings("vm1", {"nics": {"eth0": "iso"}})
        plans = app.plans

        # the editor: add to a new group, move groups, remove machines, actions and groups
        plans.create("p")
        plans.add("p", 1, ["vm1"])
        assert app.control_address
        await asyncio.to_thread(register, tmp_path / "agent2", f"127.0.0.1:{app.control_address[1]}",
                                site.ahome / "passphrase.txt", "vm2")   # registered, not protected: the plan shows it is not runnable, by the field
        s = plans.add("p", 2, ["vm2"])
        assert not s["valid"] and s["problem"]["details"]["field"] == "groups[2].machines"
        s = plans.move_group("p", 2, 1)
        assert [g["machines"] for g in s["groups"]] == [["vm2"], ["vm1"]]
        with pytest.raises(InvalidInput) as ei:
            plans.move_group("p", 3, 1)
        assert ei.value.code == "LB_PLAN_INVALID" and ei.value.details["field"] == "group"
        s = plans.remove("p", ["vm2"])
        assert [g["machines"] for g in s["groups"]] == [[], ["vm1"]]
        assert s["problem"]["details"]["field"] == "groups[1].machines"   # an empty group is named
        with pytest.raises(InvalidInput) as ei:
            plans.remove("p", ["vm2"])
        assert ei.value.details["field"] == "machines"
        s = plans.remove_group("p", 1)
        assert [g["machines"] for g in s["groups"]] == [["vm1"]] and s["valid"]
        plans.action("p", 1, "before", manual="Check the network first")
        plans.action("p", 1, "after", manual="to be removed")
        s = plans.remove_action("p", 1, "after", 1)
        assert s["groups"][0]["after"] == [] and len(s["groups"][0]["before"]) == 1
        with pytest.raises(InvalidInput) as ei:
            plans.remove_action("p", 1, "after", 1)
        assert ei.value.details["field"] == "index"

        # per-machine points: refused before anything runs when wrong, naming points.MACHINE
        with pytest.raises(InvalidInput) as ei:
            await plans.run("p", host, test=True, points={"vm2": "latest"})
        assert ei.value.code == "LB_PLAN_INVALID" and ei.value.details["field"] == "points.vm2"
        with pytest.raises(LifeboatError) as ei2:
            await plans.run("p", host, test=True, points={"vm1": "tag:nosuch"})
        assert ei2.value.code == "LB_UNKNOWN_POINT" and ei2.value.details["field"] == "points.vm1"
        assert "vm1" in ei2.value.message and plans.show("p")["runs"] == []

        # the CLI form: --point-of MACHINE=POINT (a malformed one refused before any request; a wrong point by the
        # control route, with its code and what to do)
        H = ("--home", str(site.ahome))
        p = await asyncio.to_thread(lb, "plan", "run", *H, "p", "--host", host, "--test", "--point-of", "vm1",
                                    check=False)
        assert p.returncode != 0 and "LB_PLAN_INVALID" in p.stderr and "MACHINE=POINT" in p.stderr, p.stderr
        p = await asyncio.to_thread(lb, "plan", "run", *H, "p", "--host", host, "--test", "--point-of",
                                    "vm1=tag:nosuch", check=False)
        assert p.returncode != 0 and "LB_UNKNOWN_POINT" in p.stderr and "vm1" in p.stderr, p.stderr

        # a good one: the run pauses at the manual action, the machine's point is the bookmark's, not the latest
        p = await asyncio.to_thread(lb, "plan", "run", *H, "p", "--host", host, "--test", "--point-of",
                                    "vm1=tag:before", "--json")
        out = json.loads(p.stdout)
        assert out["job"]["state"] == "paused-for-operator" and out["job"]["result"]["points"]["vm1"]["tag"] == "before"
        job = app.jobs.get(out["job"]["id"]) if app.jobs else None
        assert job is not None and job.state == JobState.PAUSED
        assert job.message == "Check the network first"
        chosen = job.result["points"]["vm1"]
        latest = app.points("vm1")[-1]
        assert chosen["id"] == tagged["id"] and chosen["tag"] == "before" and latest["id"] != tagged["id"]
        assert app.failover.failover_of("vm1") is None   # nothing booted yet
        c = await plans.cancel("p")
        assert c["cancelled"] and c["removed"] == []
        assert job.state == JobState.CANCELLED
    finally:
        await site.stop()
        subprocess.run(["virsh", "-c", recovery_host, "net-destroy", f"lifeboat-{host}-iso"], capture_output=True)
