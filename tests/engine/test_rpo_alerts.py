"""RPO is never under-reported (an appliance restart with the agent away, an agent killed, a stalled link, a skewed
agent clock), the alert store (one row per cause, flapping folded, acknowledged with who and when, kept across
restarts) and the event log of state and health transitions with their reasons. Real appliance and agents."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

import engine.agent.agent as agent_mod
import engine.agent.capture as capture_mod
from engine.api import AlertView, EmbeddedAppliance, EventView, MachineView
from engine.appliance.alerts import REOPEN_WINDOW, AlertStore
from engine.appliance.health_watch import CLEAR_AFTER
from engine.appliance.rpo import SILENT_AFTER, RpoHistory
from engine.appliance.state import StateDB
from engine.errors import NotFound
from engine.events import Alert, EventBus, MachineStatus
from tests.conftest import need_tool
from tests.engine.harness import Site, make_disk, run_tool
from tests.engine.test_network_faults import _point_to_proxy
from tests.faultproxy import FaultProxy


def _emb(app) -> EmbeddedAppliance:  # type: ignore[no-untyped-def]
    """The typed door (engine/api.py) over an appliance the harness started."""
    emb = EmbeddedAppliance.__new__(EmbeddedAppliance)
    emb.appliance = app
    return emb


async def _protected(site: Site, disk: Path, **policy: float) -> None:
    app = await site.start_appliance(**policy)
    await site.register()
    await app.protect("vm1")
    # Right after protect, before any agent: initial sync, no RPO, health from the sync state only.
    st = _emb(app).machine_status("vm1")
    assert st.state == "initial-sync" and not st.rpo_known and st.rpo_seconds == 0
    assert st.health == "warning" and st.health_reason.startswith("initial sync 0 %"), st
    await site.start_agent({"d0": disk})
    await site.wait_for(lambda: app.machine_status("vm1")["state"] == "protected", 60, "initial sync")
    await site.wait_for(lambda: app.machine_status("vm1")["rpo_known"], 20, "a first recovery point")


async def test_restart_with_agent_away_shows_true_rpo_and_critical_at_once(tmp_path: Path) -> None:
    disk = tmp_path / "d0.img"
    make_disk(disk, 2 << 20, seed=3)
    site = Site(tmp_path)
    try:
        await _protected(site, disk, rpo_threshold=2, crash_interval=0.5)
        app = site.app
        await site.wait_for(lambda: app.machine_status("vm1")["health"] == "ok", 10, "health ok")
        await asyncio.sleep(1.2)                  # a few RPO samples in the history
        await site.agent.stop()
        site.agent = None
        away = time.time()                        # the machine was last recoverable before this
        await app.stop()
        await asyncio.sleep(3.0)                  # the appliance is down 3 s, the agent stays away
        app = await site.start_appliance()
        st = _emb(app).machine_status("vm1")      # at once, before any scheduler tick
        assert st.rpo_known and not st.agent_connected
        assert st.rpo_seconds >= time.time() - away - 0.05, (st.rpo_seconds, time.time() - away)
        assert st.rpo_seconds > 3
        assert st.health == "critical" and "over the 2.0 s threshold" in st.health_reason, st
        assert st.last_heard is not None and st.last_heard <= away
        # the breach raises its alert on the first status tick
        await site.wait_for(lambda: any(a.id == "LB_RPO_BREACH:vm1" for a in _emb(app).alerts()), 5, "alert")
        # the RPO history from before the restart is served by the restarted appliance
        hist = _emb(app).rpo_history("vm1")
        assert hist and hist[0][0] < away and all(r >= 0 for _, r in hist)
    finally:
        await site.stop()


async def test_agent_killed_rpo_grows_breach_raises_one_alert_and_clears(tmp_path: Path) -> None:
    disk = tmp_path / "d0.img"
    make_disk(disk, 2 << 20, seed=4)
    site = Site(tmp_path)
    statuses: list[MachineStatus] = []
    try:
        await _protected(site, disk, rpo_threshold=1, crash_interval=0.5)
        app = site.app
        emb = _emb(app)
        emb.subscribe(lambda ev: statuses.append(ev) if isinstance(ev, MachineStatus) else None)
        await site.wait_for(lambda: statuses and statuses[-1].health == "ok", 10, "a status with health ok")
        await site.crash_agent()
        killed = time.time()
        await site.wait_for(lambda: any(a.id == "LB_RPO_BREACH:vm1" for a in emb.alerts()), 10, "breach alert")
        st = emb.machine_status("vm1")
        # grows from the last moment it was known recoverable: the last heartbeat before the kill (≤ 1 s before)
        assert time.time() - killed - 0.05 <= st.rpo_seconds <= time.time() - killed + 2.5
        assert st.health == "critical" and "RPO" in st.health_reason
        await asyncio.sleep(1.5)                   # more ticks while breached: still one alert
        breach = [a for a in emb.alerts(active_only=False) if a.code == "LB_RPO_BREACH"]
        assert len(breach) == 1 and breach[0].severity == "critical" and breach[0].subject == "vm1"
        assert breach[0].count == 1 and breach[0].active

        await site.start_agent({"d0": disk})       # the agent is back: RPO falls, the alert clears
        await site.wait_for(lambda: not [a for a in emb.alerts() if a.code == "LB_RPO_BREACH"], CLEAR_AFTER + 10,
                            "breach cleared")
        breach = [a for a in emb.alerts(active_only=False) if a.code == "LB_RPO_BREACH"]
        assert len(breach) == 1 and breach[0].cleared_at is not None and breach[0].cleared_at > breach[0].raised_at

        events = emb.events(since=killed)
        health = [e for e in events if e.kind == "health" and e.machine == "vm1"]
        assert health[0].data["from"] == "ok" and health[0].data["to"] == "critical"
        assert "RPO" in health[0].data["reason"]
        assert health[-1].data["to"] == "ok"
        assert [e.data["state"] for e in events if e.kind == "alert"] == ["raised", "cleared"]
        assert any(s.health == "critical" and s.health_reason and s.last_heard for s in statuses)
    finally:
        await site.stop()


async def test_stalled_link_rpo_grows(tmp_path: Path) -> None:
    disk = tmp_path / "d0.img"
    make_disk(disk, 2 << 20, seed=6)
    site = Site(tmp_path)
    proxy: FaultProxy | None = None
    try:
        app = await site.start_appliance(rpo_threshold=2, crash_interval=0.5)
        await site.register()
        assert app.data_address
        proxy = FaultProxy("127.0.0.1", app.data_address[1])
        await proxy.start()
        _point_to_proxy(site.agent_home, proxy.port)
        await app.protect("vm1")
        await site.start_agent({"d0": disk})
        await site.wait_for(lambda: app.machine_status("vm1")["rpo_known"], 60, "a first recovery point")
        await site.wait_for(lambda: app.machine_status("vm1")["health"] == "ok", 10, "health ok")
        proxy.stall(None)                          # the connection stays open; nothing gets through
        stalled = time.time()
        await asyncio.sleep(SILENT_AFTER + 1.5)
        st1 = app.machine_status("vm1")
        assert st1["agent_connected"]              # the appliance has not noticed the link is dead
        assert st1["rpo_seconds"] >= time.time() - stalled - 0.05 and st1["health"] == "critical", st1
        await asyncio.sleep(1.0)
        st2 = app.machine_status("vm1")
        assert st2["rpo_seconds"] >= st1["rpo_seconds"] + 0.9   # grows with the appliance's clock
        proxy.resume()
        await site.wait_for(lambda: app.machine_status("vm1")["rpo_seconds"] < 1, 30, "RPO back down")
    finally:
        if proxy:
            proxy.resume()
        await site.stop()
        if proxy:
            await proxy.stop()


class _SkewedTime:
    """The ``time`` module as the agent sees it with its wall clock ``skew`` seconds off (monotonic untouched)."""

    def __init__(self, skew: float) -> None:
        self.skew = skew

    def time(self) -> float:
        return time.time() + self.skew

    def time_ns(self) -> int:
        return time.time_ns() + int(self.skew * 1e9)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(time, name)


@pytest.mark.parametrize("skew", [-3600.0, 3600.0])
async def test_agent_clock_skew_does_not_change_rpo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    skew: float) -> None:
    """Writes held up by a slow link: the RPO is their age on the appliance's clock, whatever the agent's says
    (an hour behind used to read as an RPO of an hour; an hour ahead as 0)."""
    need_tool("qemu-io")
    monkeypatch.setattr(agent_mod, "time", _SkewedTime(skew))
    monkeypatch.setattr(capture_mod, "time", _SkewedTime(skew))
    disk = tmp_path / "d0.img"
    make_disk(disk, 4 << 20, seed=7, fill=0.1)
    site = Site(tmp_path)
    proxy: FaultProxy | None = None
    try:
        app = await site.start_appliance(crash_interval=0.5)
        await site.register()
        assert app.data_address
        proxy = FaultProxy("127.0.0.1", app.data_address[1])
        await proxy.start()
        _point_to_proxy(site.agent_home, proxy.port)
        await app.protect("vm1")
        await site.start_agent({"d0": disk})
        await site.wait_for(lambda: app.machine_status("vm1")["rpo_known"], 60, "a first recovery point")
        await site.wait_for(lambda: app.machine_status("vm1")["rpo_seconds"] == 0, 10, "caught up")
        proxy.bandwidth(400_000)
        peak = 0.0
        src = tmp_path / "random.bin"
        src.write_bytes(os.urandom(1 << 20))    # incompressible: the link, not zstd, sets the pace
        writer = asyncio.create_task(run_tool("qemu-io", "-f", "raw", f"{site.nbd_url}/d0", "-c",
                                              f"write -s {src} 0 1M"))
        started = time.time()
        rt = app.runtimes["vm1"]
        while not writer.done() or rt.vault.last_seq < site.agent.capture.seq:
            peak = max(peak, app.machine_status("vm1")["rpo_seconds"])
            assert time.time() - started < 60, "the held-up writes never reached the vault"
            await asyncio.sleep(0.1)
        await writer
        # ~1 MiB over 400 kB/s: about 2.5 s of writes pending at the peak, never an hour, never nothing
        assert 0.8 < peak < 20, peak
    finally:
        if proxy:
            proxy.resume()
        await site.stop()
        if proxy:
            await proxy.stop()


# the alert store on its own (fast) ------------------------------------------------------------------------------
def test_alert_store_folds_flapping_acknowledges_and_survives_reopen(tmp_path: Path) -> None:
    now = [1000.0]
    db = StateDB(tmp_path / "state.db")
    bus = EventBus()
    store = AlertStore(db, bus, clock=lambda: now[0])

    def emit(state: str, msg: str = "RPO of vm1 is 45 s") -> None:
        bus.emit(Alert("vm1", "LB_RPO_BREACH", msg, "check the agent", "critical", id="LB_RPO_BREACH:vm1",
                       state=state))
    for _ in range(50):                        # a machine flapping across its threshold, every few seconds
        emit("raised")
        now[0] += 2
        emit("raised")                         # raised again while active: no new occurrence
        now[0] += 3
        emit("cleared")
        now[0] += 5
    rows = store.list(active_only=False)
    assert len(rows) == 1 and rows[0]["count"] == 50 and rows[0]["cleared_at"] is not None
    emit("raised")
    assert len(store.list()) == 1 and store.list()[0]["count"] == 51
    now[0] += 30
    ack = store.acknowledge("LB_RPO_BREACH:vm1", "alice@console")
    assert ack["acknowledged_by"] == "alice@console" and ack["acknowledged_at"] == now[0]
    with pytest.raises(NotFound):
        store.acknowledge("LB_RPO_BREACH:nope", "alice")
    emit("cleared")
    now[0] += REOPEN_WINDOW + 1                # long after: a new occurrence gets its own row
    emit("raised", "RPO of vm1 is 60 s")
    # alerts of other parts, with their own ids and components
    bus.emit(Alert(None, "LB_VCENTER_UNREACHABLE", "vCenter vc1 is unreachable", "", "warning",
                   {"vcenter": "vc1.example"}, id="LB_VCENTER_UNREACHABLE:vc1.example", component="vcenter"))
    store.close()
    db.close()

    db = StateDB(tmp_path / "state.db")        # an appliance restart: the store reads what was kept
    store = AlertStore(db, EventBus())
    views = [AlertView.from_dict({**a, "future_key": 1}) for a in store.list(active_only=False)]
    assert [v.id for v in views] == ["LB_VCENTER_UNREACHABLE:vc1.example", "LB_RPO_BREACH:vm1",
                                     "LB_RPO_BREACH:vm1"]
    vc, new, old = views
    assert vc.component == "vcenter" and vc.subject == "vc1.example" and vc.active
    assert new.active and new.count == 1 and new.message.endswith("60 s") and new.acknowledged_at is None
    assert not old.active and old.count == 51 and old.acknowledged_by == "alice@console"
    assert store.active_ids() == {"LB_VCENTER_UNREACHABLE:vc1.example", "LB_RPO_BREACH:vm1"}
    kinds = [EventView.from_dict(e) for e in db.events(kind="alert")]
    assert len(kinds) == 2 * 51 + 2 and kinds[0].data["state"] == "raised"
    db.close()


def test_rpo_history_downsamples_and_is_bounded(tmp_path: Path) -> None:
    db = StateDB(tmp_path / "state.db")
    h = RpoHistory(db)
    t0 = 1_000_000.0
    for i in range(26 * 3600):                 # 26 hours of one sample a second
        h.note("vm1", float(i % 100), now=t0 + i)
        if i % 600 == 0:
            h.flush(now=t0 + i)
    end = t0 + 26 * 3600
    h.flush(now=end, final=True)
    rows = db.db.execute("SELECT COUNT(*) FROM rpo_history").fetchone()[0]
    assert rows <= 720 + 1500 + 150
    hist = h.history("vm1", now=end)
    assert hist[0][0] >= end - 25 * 3600 - 60
    recent = [t for t, _ in hist if t >= end - 3600]
    assert 700 <= len(recent) <= 722            # 5 s samples in the last hour
    old = [(t, r) for t, r in hist if t < end - 3600]
    assert 1400 <= len(old) <= 1500 and all(r >= 59 for _, r in old)   # the worst of each minute
    db.close()


def test_views_tolerate_unknown_and_missing_keys() -> None:
    m = MachineView.from_dict({"name": "vm1", "state": "initial-sync", "rpo_known": False, "health_reason": "x",
                               "sync_eta_seconds": 12, "last_heard": 5, "brand_new": True})
    assert not m.rpo_known and m.sync_eta_seconds == 12.0 and m.last_heard == 5.0
    assert MachineView.from_dict({"name": "vm1", "state": "protected"}).rpo_known
    ev = EventView.from_dict({"id": 3, "time": 1.5, "machine": None, "kind": "alert", "data": {"a": 1}, "z": 0})
    assert ev.kind == "alert" and ev.data == {"a": 1}
    a = AlertView.from_dict({"id": "LB_X", "extra": 1})
    assert a.id == "LB_X" and a.active and a.count == 1


async def test_cli_alerts_and_events(tmp_path: Path) -> None:
    """``lifeboat alerts list/ack`` and ``lifeboat events`` against a running appliance, in their own process."""
    import json
    disk = tmp_path / "d0.img"
    make_disk(disk, 2 << 20, seed=8)
    site = Site(tmp_path)

    async def lb(*args: str) -> str:
        return await run_tool(sys.executable, "-m", "engine.cli", *args, "--home", str(site.ahome))
    try:
        await _protected(site, disk, rpo_threshold=1, crash_interval=0.5)
        app = site.app
        await site.crash_agent()
        await site.wait_for(lambda: any(a["id"] == "LB_RPO_BREACH:vm1" for a in app.alerts_list()), 10, "alert")
        alerts = json.loads(await lb("alerts", "list", "--json"))
        ids = {a["id"] for a in alerts}
        assert {"LB_RPO_BREACH:vm1", "LB_VAULT_KEY_NOT_BACKED_UP"} <= ids
        text = await lb("alerts", "list")
        assert "LB_RPO_BREACH:vm1" in text and "what to do:" in text and "critical" in text
        acked = json.loads(await lb("alerts", "ack", "LB_RPO_BREACH:vm1", "--json"))
        assert acked["acknowledged_by"].startswith("lifeboat-admin (") and acked["acknowledged_at"] > 0
        assert "acknowledged" in await lb("alerts", "list", "--all")
        bad = await asyncio.create_subprocess_exec(sys.executable, "-m", "engine.cli", "alerts", "ack", "--home",
                                                   str(site.ahome), "LB_NOPE:vm9", stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE)
        out, err = await bad.communicate()
        assert bad.returncode != 0 and b"LB_NOT_FOUND" in err and b"Traceback" not in err + out
        events = json.loads(await lb("events", "--since", "10m", "--json"))
        kinds = {e["kind"] for e in events}
        assert {"protect", "state", "health", "alert", "alert-acknowledged"} <= kinds
        # the control API refuses malformed queries with a code naming the field, and serves the RPO history
        from engine.client import AdminClient
        from engine.errors import InvalidInput
        client = AdminClient(site.ahome)
        for path, field in (("/v1/events?limit=abc", "limit"), ("/v1/events?since=nan", "since"),
                            ("/v1/alerts?active=maybe", "active"), ("/v1/events?evil=1", "query"),
                            ("/v1/machines/vm1/rpo-history?since=-5", "since")):
            with pytest.raises(InvalidInput) as ei:
                await asyncio.to_thread(client.call, "GET", path)
            assert ei.value.details.get("field") == field, (path, ei.value.to_dict())
        with pytest.raises(InvalidInput):
            await asyncio.to_thread(client.call, "POST", "/v1/alerts/not%20an%20id/ack")
        hist = await asyncio.to_thread(client.rpo_history, "vm1")
        assert hist and all(len(x) == 2 for x in hist)
        text = await lb("events", "--since", "1h")
        assert "-> critical (RPO " in text and "-> protected" in text
    finally:
        await site.stop()


def test_appliance_alert_sources(tmp_path: Path) -> None:
    """vCenter unreachable raises and clears, a failed job raises, a certificate near its end raises, the vault key
    warning is raised at start: all kept by the store off the bus."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from engine.appliance.health_watch import ApplianceWatch
    from engine.events import JobChanged
    from engine.vsphere.events import VCenterStatus

    def cert(days: float) -> Path:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
        now = dt.datetime.now(dt.timezone.utc)
        c = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
             .serial_number(1).not_valid_before(now - dt.timedelta(days=1))
             .not_valid_after(now + dt.timedelta(days=days)).sign(key, hashes.SHA256()))
        p = tmp_path / f"{days}.crt"
        p.write_bytes(c.public_bytes(serialization.Encoding.PEM))
        return p
    db = StateDB(tmp_path / "state.db")
    bus = EventBus()
    store = AlertStore(db, bus)
    watch = ApplianceWatch(bus, certificates={"server": cert(10), "CA": cert(3650)})
    watch.start()
    bus.emit(VCenterStatus("vc1.example", "error", {"code": "LB_VCENTER_UNREACHABLE", "message": "refused"}))
    bus.emit(VCenterStatus("vc1.example", "error", {"code": "LB_VCENTER_UNREACHABLE", "message": "refused"}))
    bus.emit(JobChanged("abcdef012345", "test-failover", "vm1", "failed", job={
        "title": "Test failover of vm1", "error": {"code": "LB_EXPORT_REFUSED", "message": "folder not writable",
                                                   "advice": "Choose a writable folder."}}))
    by_id = {a["id"]: a for a in store.list()}
    assert set(by_id) == {"LB_VAULT_KEY_NOT_BACKED_UP", "LB_CERT_EXPIRING:server", "LB_VCENTER_UNREACHABLE:vc1.example",
                          "LB_JOB_FAILED:abcdef012345"}
    assert by_id["LB_CERT_EXPIRING:server"]["component"] == "certificate"
    assert by_id["LB_VCENTER_UNREACHABLE:vc1.example"]["subject"] == "vc1.example"
    assert by_id["LB_VCENTER_UNREACHABLE:vc1.example"]["count"] == 1
    job = by_id["LB_JOB_FAILED:abcdef012345"]
    assert job["subject"] == "vm1" and "folder not writable" in job["message"] and job["advice"] == "Choose a writable folder."
    assert by_id["LB_VAULT_KEY_NOT_BACKED_UP"]["component"] == "keyring"
    bus.emit(VCenterStatus("vc1.example", "connected"))
    assert "LB_VCENTER_UNREACHABLE:vc1.example" not in store.active_ids()
    watch.close()
    store.close()
    db.close()
