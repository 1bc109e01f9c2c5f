"""The failover service without a boot: planning refusals, and a failover an earlier run left behind (its NBD server
died with that process) shown as interrupted and cancelled cleanly against the real libvirt host."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from engine.appliance.machine_state import MachineState
from engine.appliance.state import StateDB
from engine.errors import AlreadyFailedOver, InvalidInput, NotFound, NotReady
from engine.jobs import JobManager, JobStore
from engine.recovery.failover import FailoverService
from engine.recovery.store import RecoveryStore


def _service(tmp_path: Path) -> tuple[StateDB, FailoverService, JobManager]:
    db = StateDB(tmp_path / "state.db")
    manager = JobManager(JobStore(db.db))
    svc = FailoverService(tmp_path / "failovers", state=MachineState(db), store=RecoveryStore(db.db), runtimes={},
                          cursor=None, manager=manager, require_admin=lambda r: None)  # type: ignore[arg-type]
    return db, svc, manager


async def test_planning_refusals(tmp_path: Path) -> None:
    db, svc, manager = _service(tmp_path)
    await manager.start()
    await svc.start()
    try:
        db.add_machine("web1", 1)
        with pytest.raises(InvalidInput, match="not supported"):
            await svc.add_host("h1", "xen", "qemu:///system", [])
        with pytest.raises(InvalidInput, match="URI"):
            await svc.add_host("h1", "qemu", "http://x/", [])
        with pytest.raises(InvalidInput, match="twice"):
            await svc.add_host("h1", "qemu", "qemu:///system", ["a=user", "a=isolated"])
        with pytest.raises(NotReady, match="not protected"):
            await svc.failover("web1", "h1", "latest")
        with pytest.raises(NotFound) as e:
            await svc.cancel("web1")
        assert e.value.code == "LB_NOT_FAILED_OVER"
        s = svc.settings("web1", {"nics": {"eth0": "lan"}, "ips": {"eth0": "10.1.0.5/16"}})
        s = svc.settings("web1", {"nics": {"eth1": "dmz"}, "cpus": 2})   # NICs merge per NIC
        assert s["nics"] == {"eth0": "lan", "eth1": "dmz"} and s["cpus"] == 2 and s["ips"] == {"eth0": "10.1.0.5/16"}
        with pytest.raises(InvalidInput):
            svc.settings("web1", {"ips": {"eth7": "10.0.0.1/8"}})
        assert svc.settings("web1")["cpus"] == 2   # a refused change stores nothing
    finally:
        await svc.stop()
        await manager.stop()
        db.close()


async def test_a_failover_left_by_an_earlier_run_is_interrupted_and_cancels(tmp_path: Path,
                                                                           recovery_host: str) -> None:
    db, svc, manager = _service(tmp_path)
    await manager.start()
    host = f"rs{int(time.time() * 1000) % 10**8}"
    try:
        db.add_machine("web1", 1)
        added = await svc.add_host(host, "qemu", recovery_host, ["lan=isolated"])
        assert added["networks"] == {"lan": "isolated"} and svc.list_hosts()[0]["name"] == host
        folder = tmp_path / "failovers" / "web1"
        (folder / "overlay").mkdir(parents=True)
        (folder / "overlay" / "d0.overlay").write_bytes(b"x")
        svc.store.put_failover({"machine": "web1", "host": host, "kind": "unplanned", "state": "booted",
                                "point": {"id": "a-1", "seq": 1, "time": 1.0, "kind": "app-consistent", "tag": "t"},
                                "job": None, "vm": "lifeboat-web1", "serial_log": str(folder / "serial.log"),
                                "scratch": str(folder / "overlay"), "nbd": "127.0.0.1:1", "started_at": 1.0,
                                "booted_at": 2.0, "boot_seconds": 1.0, "error": None})
        db.update_machine("web1", state="failed-over", protected=1)
        await svc.start()   # a new run: the NBD server of that failover is gone
        [vm] = await svc.vms()
        assert vm["state"] == "interrupted" and vm["error"]["code"] == "LB_INTERRUPTED"
        assert vm["vm_state"] == "missing"   # asked of the real hypervisor
        assert svc.failover_of("web1") == {"host": host, "point": "a-1", "state": "interrupted", "booted_at": 2.0,
                                           "kind": "unplanned"}
        with pytest.raises(AlreadyFailedOver):
            await svc.failover("web1", host, "latest")
        out = await svc.cancel("web1")
        assert out["cancelled"] and await svc.vms() == [] and not folder.exists()
        assert db.machine("web1")["state"] == "protected"
    finally:
        await svc.stop()
        await manager.stop()
        db.close()
        subprocess.run(["virsh", "-c", recovery_host, "net-destroy", f"lifeboat-{host}-lan"], capture_output=True)
