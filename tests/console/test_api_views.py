"""engine.api's typed views: built from the engine's dicts, tolerant of additions (CONTRACT.md §5)."""

from __future__ import annotations

import dataclasses

import pytest

from engine.api import (ApplianceStatus, CleanupView, DiskView, DrillView, JobView, MachineView, PointView, Policy,
                        ResyncView, RevokedView)

FULL = {
    "name": "vm1", "state": "protected", "rpo_seconds": 1.5, "health": "ok", "policy": "gold", "rpo_threshold": 15.0,
    "sync_progress": 1.0, "agent_connected": True,
    "last_point": {"id": "c-7", "seq": 7, "time": 1000.0, "kind": "crash-consistent", "tag": None},
    "points": 7, "error": None, "agent_error": {"code": "LB_LINK_DOWN", "message": "link down"},
    "churn_bytes_per_s": 10.0, "upload_bytes_per_s": 5.0, "cache_bytes": 4096,
    "resync": {"required": True, "reason": "agent crash", "progress": 0.5, "scheduled_for": None, "running": True,
               "blocks_pending": 3, "eta_seconds": 2.0, "last_done": 900.0, "error": None},
    "disks": [{"index": 0, "name": "sys", "size": 100, "synced": False, "sync_cursor": 40}],
}


def test_machine_view_reads_every_field() -> None:
    m = MachineView.from_dict(FULL)
    assert (m.name, m.state, m.health, m.policy, m.rpo_seconds, m.rpo_threshold) == ("vm1", "protected", "ok",
                                                                                      "gold", 1.5, 15.0)
    assert m.last_point == PointView("c-7", 7, 1000.0, "crash-consistent") and m.last_point_time == 1000.0
    assert m.points == 7 and m.agent_connected and m.cache_bytes == 4096 and m.error is None
    assert m.agent_error == "LB_LINK_DOWN: link down"
    assert m.disks == (DiskView(0, "sys", 100, False, 40),) and m.disks[0].sync_fraction == 0.4
    assert m.resync == ResyncView(True, "agent crash", 0.5, None, True, 3, 2.0, 900.0, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.state = "error"  # type: ignore[misc]


def test_unknown_keys_are_ignored_everywhere() -> None:
    extra = {"future_field": [1, 2], "another": {"x": 1}}
    d = {**FULL, **extra, "resync": {**FULL["resync"], **extra}, "last_point": {**FULL["last_point"], **extra},
         "disks": [{**FULL["disks"][0], **extra}]}
    assert MachineView.from_dict(d) == MachineView.from_dict(FULL)
    st = ApplianceStatus.from_dict({"machines": [d], "registered": [{"name": "new", "protected": False, **extra}],
                                    "revoked": [{"name": "old", "revoked_at": 5.0, "revoked_by": "op@host",
                                                 "protected": True, **extra}],
                                    "control_port": 8443, "data_port": 9443, **extra})
    assert st.registered == ("new",) and st.revoked == (RevokedView("old", 5.0, "op@host", True),)
    assert (st.control_port, st.data_port) == (8443, 9443) and st.machine("vm1") == MachineView.from_dict(FULL)
    assert st.machine("nope") is None
    assert PointView.from_dict({"id": "a-1", "seq": 1, "time": 2.0, "kind": "app-consistent", "tag": "t", **extra}) \
        == PointView("a-1", 1, 2.0, "app-consistent", "t")


def test_missing_optional_keys_take_defaults() -> None:
    m = MachineView.from_dict({"name": "vm2", "state": "initial-sync"})
    assert m == MachineView("vm2", "initial-sync")
    assert (m.health, m.rpo_seconds, m.policy, m.sync_progress, m.last_point, m.points) == ("ok", 0.0, "default",
                                                                                            None, None, 0)
    assert m.disks == () and m.resync == ResyncView() and not m.resync.required and m.resync.progress == 1.0
    assert ApplianceStatus.from_dict({}) == ApplianceStatus()
    assert ApplianceStatus.from_dict({"machines": [], "registered": []}).revoked == ()  # an engine before "revoked"
    # a resync object with nulls (an engine that had no figure yet)
    assert ResyncView.from_dict({"required": True, "progress": None, "blocks_pending": None}).progress == 0.0
    assert RevokedView.from_dict({"name": "x"}) == RevokedView("x")


def test_required_keys_still_required() -> None:
    with pytest.raises(KeyError):
        MachineView.from_dict({"state": "protected"})
    with pytest.raises(KeyError):
        PointView.from_dict({"seq": 1})


def test_error_objects_and_strings_read_as_text() -> None:
    assert MachineView.from_dict({"name": "a", "state": "error", "error": "cache read failed"}).error \
        == "cache read failed"
    assert MachineView.from_dict({"name": "a", "state": "error",
                                  "error": {"code": "LB_STORAGE", "message": "disk full"}}).error == "LB_STORAGE: disk full"


def test_jobs_drills_and_cleanups() -> None:
    job = JobView.from_dict({"id": "abc", "operation": "test-failover", "machine": "vm1", "progress": 1.0,
                             "finished": True, "error": None, "new": 1,
                             "result": {"point": {"id": "c-3"}, "nbd": "127.0.0.1:10809", "exports": ["sys"]}})
    assert DrillView.from_job(job, "latest") == DrillView("abc", True, "c-3", "127.0.0.1:10809", ("sys",))
    assert (job.kind, job.state) == ("test-failover", "")  # an engine before engine/jobs: "operation" only
    running = JobView.from_dict({"id": "def", "operation": "test-failover", "kind": "test-failover",
                                 "state": "running", "title": "Test failover of vm1", "steps": [{"name": "x"}]})
    assert (running.kind, running.state, running.title) == ("test-failover", "running", "Test failover of vm1")
    assert DrillView.from_job(running, "c-1", "/x") == DrillView("def", False, "c-1", export_dir="/x")
    assert CleanupView.from_dict({"cleaned": "vm1", "point": "c-3", "removed": ["/x/sys.img"], "new": 2}) \
        == CleanupView("vm1", "c-3", ("/x/sys.img",))
    assert CleanupView.from_dict({"cleaned": "vm1", "point": "c-3", "removed": [], "job": "j1"}).job == "j1"


def test_policy_is_the_engines_one_type() -> None:
    import console.engine_facade as facade
    assert facade.Policy is Policy and not hasattr(facade, "PolicySpec")
    p = Policy("gold", rpo_threshold=15.0)
    assert facade.validate_policy(p) == p and facade.validate_policy(p) is not p


async def test_open_appliance_answers_with_typed_views(tmp_path) -> None:
    """The door itself: a real appliance started through engine.api answers with the views, not dicts."""
    import asyncio

    from engine.api import UnknownMachine, init_home, is_initialised, open_appliance
    from tests.conftest import free_port

    home = tmp_path / "home"
    assert not is_initialised(home)
    await asyncio.to_thread(init_home, home, control_port=free_port(), data_port=free_port(), listen="127.0.0.1")
    assert is_initialised(home)
    emb = await open_appliance(home)
    try:
        st = emb.status()
        assert isinstance(st, ApplianceStatus) and st.machines == () and st.registered == () and st.revoked == ()
        assert st.control_port == int(emb.addresses["control"].rsplit(":", 1)[1])
        assert [p.name for p in emb.policies()] == ["default"] and isinstance(emb.policies()[0], Policy)
        saved = emb.set_policy(Policy("gold", rpo_threshold=15.0))
        assert emb.policies()[1] == saved and emb.jobs() == [] and not emb.drill_active("vm1")
        with pytest.raises(UnknownMachine):
            emb.machine_status("vm1")
    finally:
        await emb.stop()
