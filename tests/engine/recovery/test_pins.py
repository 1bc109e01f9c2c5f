"""A drill left running holds the machine's vault history from being folded, and says so (issue 13): the pin
(point, since when, bytes of history held back) in the machine's status; retention skipping the machine leaves an
event and an alert (once per drill, never silently); a drill older than the ``recovery.pin_alert_after`` setting
raises its own alert; both clear once the drill is cleaned up, and retention folds again. In process, with a real
agent, a real NBD client writing, and the local vault on 1 MiB journal segments (so history has segments to fold)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

from engine.appliance.appliance import init_home
from engine.policy import Policy
from engine.recovery.pins import DEFAULT_PIN_ALERT_AFTER, LEFT_RUNNING, PINNED, ConfigPinAlertAfter
from tests.conftest import free_port, need_tool
from tests.engine.harness import Site, make_disk, run_tool

MiB = 1 << 20


def _events(app, kind: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return [json.loads(d) for (d,) in app.db.db.execute("SELECT data FROM events WHERE kind=? ORDER BY rowid",
                                                        (kind,))]


def _active(app) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    return {a["id"]: a for a in app.alerts.list()}


async def _write(site: Site, rnd_file: Path, offset: int) -> int:
    await run_tool("qemu-io", "-f", "raw", f"{site.nbd_url}/d0", "-c",
                   f"write -s {rnd_file} {offset} {rnd_file.stat().st_size}")
    return await site.wait_caught_up()


async def test_a_drill_left_running_pins_history_and_says_so(tmp_path: Path) -> None:
    need_tool("qemu-io")
    site = Site(tmp_path)
    init_home(site.ahome, control_port=free_port(), data_port=free_port(), listen="127.0.0.1")
    cfg = json.loads((site.ahome / "appliance.json").read_text())
    cfg["vault"].update({"segment_bytes": MiB, "fold_batch_bytes": MiB})
    cfg["recovery"] = {"pin_alert_after": 4}   # shortened: the default is a day
    (site.ahome / "appliance.json").write_text(json.dumps(cfg))
    disk = tmp_path / "d0.img"
    make_disk(disk, 16 * MiB, seed=7)
    chunk = tmp_path / "chunk.bin"
    chunk.write_bytes(os.urandom(3 * MiB // 2))   # incompressible: each write fills more than a segment
    app = await site.start_appliance()
    try:
        app.set_policy(Policy("default", crash_interval=0.1, retention=2))
        await site.register()
        await site.start_agent({"d0": disk})
        await app.protect("vm1")
        await site.wait_for(lambda: app.machine_status("vm1")["state"] == "protected", 60, "initial sync")
        rt = app.runtimes["vm1"]
        assert app.machine_status("vm1")["history_pin"] is None
        seq = await _write(site, chunk, 0)
        await site.wait_for(lambda: any(p.seq >= seq for p in rt.vault.points()), 10, "a point")

        job = await app.recovery.test_failover("vm1", "latest", export_dir=None, nbd="127.0.0.1:0")
        drill_point = job.result["point"]["id"] if "point" in job.result else None
        pin = app.machine_status("vm1")["history_pin"]
        assert pin is not None and pin["kind"] == "drill" and pin["seq"] >= seq
        assert drill_point is None or pin["point"] == drill_point
        assert abs(pin["since"] - time.time()) < 30 and pin["owner"] == job.id
        assert "failover-cleanup" in pin["end_with"] and pin["alert_after"] == 4
        since = pin["since"]

        # more history while the drill runs; the first of it leaves the retention window
        await _write(site, chunk, 8 * MiB)
        await asyncio.sleep(2.5)
        seq = await _write(site, chunk, 4 * MiB)
        await site.wait_for(lambda: any(p.seq >= seq for p in rt.vault.points()), 10, "a point in the window")
        base = rt.vault.base_seq
        await app.retention.prune_all()
        assert rt.vault.base_seq == base   # not folded: the drill reads it
        [ev] = _events(app, "retention-held")
        assert ev["pin"] == "drill" and ev["owner"] == job.id and ev["held_bytes"] > 0, ev
        alerts = _active(app)
        assert f"{PINNED}:vm1" in alerts, alerts
        a = alerts[f"{PINNED}:vm1"]
        assert "Retention skipped vm1" in a["message"] and pin["point"] in a["message"]
        assert "failover-cleanup" in a["advice"]
        st = app.status()["machines"][0]["history_pin"]
        assert st["since"] == since and st["seconds"] >= 2.5 and st["held_bytes"] == app.pins.held_bytes("vm1"), st
        await app.retention.prune_all()
        assert len(_events(app, "retention-held")) == 1   # told once per drill, the alert stays raised

        # left running past the setting: its own alert
        assert f"{LEFT_RUNNING}:vm1" not in _active(app)
        await site.wait_for(lambda: time.time() - since > 4.2, 10, "the pin alert time")
        await site.wait_for(lambda: f"{LEFT_RUNNING}:vm1" in _active(app), 15, "the left-running alert (task)")
        lr = _active(app)[f"{LEFT_RUNNING}:vm1"]
        assert "test failover of vm1" in lr["message"] and "history" in lr["message"]
        assert lr["details"]["held_bytes"] > 0
        assert _events(app, "pin-left-running")[0]["owner"] == job.id

        # cleaned up: alerts clear, nothing pins, retention folds again
        await app.recovery.cleanup("vm1")
        assert app.machine_status("vm1")["history_pin"] is None
        app.pins.check()
        assert f"{PINNED}:vm1" not in _active(app) and f"{LEFT_RUNNING}:vm1" not in _active(app)
        seq = await _write(site, chunk, 0)   # a point inside the window: retention folds up to it
        await site.wait_for(lambda: any(p.seq >= seq for p in rt.vault.points()), 10, "a point in the window")
        await app.retention.prune_all()
        assert rt.vault.base_seq > base
    finally:
        await site.stop()


def test_pin_alert_setting(tmp_path: Path) -> None:
    cfg = tmp_path / "appliance.json"
    read = ConfigPinAlertAfter(cfg)
    assert read() == DEFAULT_PIN_ALERT_AFTER == 86400   # no file yet: the default
    cfg.write_text(json.dumps({"recovery": {"pin_alert_after": 7200}}))
    assert read() == 7200
    time.sleep(0.01)
    cfg.write_text(json.dumps({"recovery": {"pin_alert_after": "soon"}}))
    os.utime(cfg, (time.time() + 5, time.time() + 5))
    assert read() == 7200   # an unreadable value keeps the last good one


def test_cli_sets_the_pin_alert_time(tmp_path: Path) -> None:
    import sys
    home = tmp_path / "a"
    init_home(home, control_port=free_port(), data_port=free_port(), listen="127.0.0.1")
    cli = [sys.executable, "-m", "engine.cli", "appliance", "set", "--home", str(home)]
    r = subprocess.run(cli + ["--pin-alert-after", "2h", "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pin_alert_after"] == 7200
    assert json.loads((home / "appliance.json").read_text())["recovery"]["pin_alert_after"] == 7200
    r = subprocess.run(cli + ["--pin-alert-after", "soon"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "LB_INVALID_INPUT" in r.stderr

