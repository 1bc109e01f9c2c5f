"""View models: in-place row updates (no resets) at 500 rows, transitions, ring buffers, bridge coalescing."""

from __future__ import annotations

import time

import numpy as np
from PySide6.QtCore import QSortFilterProxyModel, Qt

from console.bridge import Alert, EngineBridge, JobProgress, MachineStatus, PointCreated
from console.models import (HEALTH, NAME_ROLE, RPO, SORT_ROLE, MachineTableModel, Ring, RpoHistory)
from engine.api import ApplianceStatus
from engine.events import EventBus


def _status(i: int, rpo: float = 1.0, state: str = "protected", health: str = "ok") -> MachineStatus:
    return MachineStatus(f"vm{i:03d}", state, health, rpo, 1.0, time.time(), 1e6, 5e5)


def test_rows_update_in_place_with_one_data_changed(qapp) -> None:
    m = MachineTableModel()
    resets, inserted, changed = [], [], []
    m.modelReset.connect(lambda: resets.append(1))
    m.rowsInserted.connect(lambda _p, a, b: inserted.append((a, b)))
    m.dataChanged.connect(lambda tl, br, _roles=(): changed.append((tl.row(), br.row())))
    m.apply_statuses([_status(i) for i in range(500)])
    assert m.rowCount() == 500 and inserted == [(0, 499)] and changed == []
    t0 = time.perf_counter()
    for _ in range(20):
        transitions = m.apply_statuses([_status(i, rpo=2.0) for i in range(500)])
    per_batch = (time.perf_counter() - t0) / 20
    assert transitions == [] and resets == [] and len(changed) == 20 and changed[-1] == (0, 499)
    assert per_batch < 0.05, f"a 500-row batch took {per_batch * 1000:.1f} ms"
    assert m.index(3, RPO).data() == "2.0 s" and m.index(3, HEALTH).data() == "OK"
    tr = m.apply_statuses([_status(7, state="error", health="critical")])
    assert tr == [("vm007", "protected", "error")] and changed[-1] == (7, 7)
    assert m.health_counts()["critical"] == 1 and m.worst() is not None


def test_inventory_adds_registered_and_drops_gone(qapp) -> None:
    m = MachineTableModel()
    m.apply_statuses([_status(1)])
    m.set_inventory(ApplianceStatus.from_dict({"machines": [{"name": "vm001", "state": "protected", "health": "warning", "rpo_seconds": 20,
                                   "resync": {"required": True, "reason": "agent crash", "progress": None,
                                              "scheduled_for": None}}],
                     "registered": [{"name": "new", "protected": False}]}))
    assert m.names() == ["vm001", "new"]
    assert m.row("vm001").resync_text == "required" and m.row("new").protected is False
    assert m.index(1, RPO).data() == "—"
    m.set_inventory(ApplianceStatus(registered=("new",)))
    assert m.names() == ["new"]


def test_sorting_by_rpo_through_a_proxy(qapp) -> None:
    m = MachineTableModel()
    m.apply_statuses([_status(i, rpo=float(10 - i)) for i in range(5)])
    p = QSortFilterProxyModel()
    p.setSourceModel(m)
    p.setSortRole(SORT_ROLE)
    p.sort(RPO, Qt.SortOrder.AscendingOrder)
    assert [p.index(r, 0).data(NAME_ROLE) for r in range(5)] == ["vm004", "vm003", "vm002", "vm001", "vm000"]


def test_ring_and_history() -> None:
    r = Ring(4)
    for i in range(6):
        r.append(float(i), float(i * 10))
    t, v = r.series()
    assert list(t) == [2, 3, 4, 5] and list(v[:, 0]) == [20, 30, 40, 50]
    assert list(r.series(since=4)[0]) == [4, 5]
    h = RpoHistory(minutes=1)
    h.append("a", 1.0, 3.0)
    assert "a" in h and list(h.series("a")[1]) == [3.0] and len(h.series("b")[0]) == 0
    assert isinstance(h.series("a")[0], np.ndarray)


def test_bridge_coalesces_statuses_and_routes_events(qapp, qtbot) -> None:
    bus = EventBus()
    bridge = EngineBridge(flush_ms=20)
    bridge.attach(bus)
    got: dict[str, list] = {"batches": [], "points": [], "jobs": [], "alerts": [], "each": []}
    bridge.statuses.connect(got["batches"].append)
    bridge.machine_status.connect(got["each"].append)
    bridge.point_created.connect(got["points"].append)
    bridge.job_progress.connect(got["jobs"].append)
    bridge.alert.connect(got["alerts"].append)
    for rpo in (1.0, 2.0, 3.0):
        for i in range(3):
            bus.emit(_status(i, rpo))
    bus.emit(PointCreated("vm000", "c-1", "crash-consistent", time.time()))
    bus.emit(JobProgress("abc", "test-failover", "vm000", 0.5))
    bus.emit(Alert("vm000", "LB_STORAGE", "disk full", "free space"))
    with qtbot.waitSignal(bridge.statuses, timeout=2000):
        pass
    assert len(got["each"]) == 9
    assert len(got["batches"]) == 1 and sorted(e.rpo_seconds for e in got["batches"][0]) == [3.0, 3.0, 3.0]
    assert len(got["points"]) == len(got["jobs"]) == len(got["alerts"]) == 1
    bridge.detach()
    bus.emit(_status(1))
    assert len(got["each"]) == 9


def test_rpo_history_merge_fills_the_past_and_the_gaps_only() -> None:
    """An attached console's graph: the appliance's kept samples (5 s steps) go before the console's own and into a
    gap (the link was down), never on top of samples the console has."""
    h = RpoHistory(minutes=60)
    for t in (*range(100, 111), *range(140, 151)):   # own samples, 1 Hz, a 29 s gap between 110 and 140
        h.append("vm1", float(t), 1.0)
    kept = [(float(t), 9.0) for t in range(50, 201, 5)]
    added = h.merge("vm1", kept)
    t, v = h.series("vm1")
    assert list(t) == sorted(t) and len(t) == 22 + added
    assert [x for x, y in zip(t, v) if y == 9.0] == [*range(50, 100, 5), *range(115, 136, 5), *range(155, 201, 5)]
    assert h.merge("vm1", kept) == 0   # merging the same again adds nothing
    st = MachineTableModel()
    st.set_inventory(ApplianceStatus.from_dict({"machines": [{"name": "vm1", "state": "protected", "health": "ok",
                                                              "rpo_seconds": 2.0}]}))
    idx = st.index(0, HEALTH)
    assert st.data(idx) == "OK"
    st.set_stale(123.0)   # the link is lost: nothing reads as current
    assert st.data(idx) == "Unknown" and st.data(st.index(0, RPO)).startswith("? (was 2.0 s")
    st.set_stale(None)
    assert st.data(idx) == "OK"
