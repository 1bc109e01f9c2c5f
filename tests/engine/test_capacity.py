"""The vault's capacity policy on a small real filesystem (a size-limited tmpfs mounted for the test): history shrinks
under the size limit with an alert and every remaining point reads back byte-exact; a filesystem filled by another
program pauses replication with an alert, and after the filler is deleted replication resumes by itself with every
acknowledged write recovered byte-exact. Plus the settings: sizes, reserves, the schema migration, the CLI."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.appliance.state import SCHEMA_VERSION, StateDB
from engine.errors import InvalidInput, VaultFull, is_no_space
from engine.events import Alert
from engine.platform import disk_free
from engine.policy import Policy, parse_reserve, parse_size, reserve_bytes
from tests.conftest import need_tool
from tests.engine.harness import Site, make_disk, run_tool, sha256_file
from engine.appliance.appliance import init_home
from tests.conftest import free_port

MiB = 1 << 20


# -- a small real filesystem --------------------------------------------------------------------------------------
@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs mounted for the test (needs root and mount); skips with the reason when impossible."""
    mnt = tmp_path / "vaultfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a small tmpfs for the vault ({r.stderr.strip() or r.returncode}): "
                    "the capacity tests need root and mount")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _site_on(tmp_path: Path, fs: Path, **vault: object) -> Site:
    """A site whose vault lives on ``fs``, with 1 MiB journal segments and fold batches (a 48 MiB vault would
    otherwise be one segment) and the given vault settings."""
    site = Site(tmp_path)
    init_home(site.ahome, control_port=free_port(), data_port=free_port(), listen="127.0.0.1", vault=fs / "vault")
    cfg = json.loads((site.ahome / "appliance.json").read_text())
    cfg["vault"].update({"segment_bytes": MiB, "fold_batch_bytes": MiB, **vault})
    (site.ahome / "appliance.json").write_text(json.dumps(cfg))
    return site


def _alerts(app) -> list[Alert]:  # type: ignore[no-untyped-def]
    seen: list[Alert] = []
    app.bus.subscribe(lambda e: seen.append(e) if isinstance(e, Alert) else None)
    return seen


async def _write_round(site: Site, rnd: random.Random, size: int, n: int = 6) -> None:
    """``n`` writes of random (incompressible) bytes through the agent's export with a real NBD client."""
    cmds: list[str] = []
    for i in range(n):
        pattern = site.tmp / f"pattern{i}.bin"
        length = rnd.choice([65536, 131072, 262144])
        pattern.write_bytes(rnd.randbytes(length))
        off = rnd.randrange(0, size - 300_000) // 512 * 512
        cmds += ["-c", f"write -s {pattern} {off} {length}"]
    await run_tool("qemu-io", "-f", "raw", f"{site.nbd_url}/sys", *cmds)


async def _view_sha(mv, seq: int) -> str:  # type: ignore[no-untyped-def]
    view = await mv.open_view(seq, 0)
    try:
        h = hashlib.sha256()
        for off in range(0, view.size, 4 * MiB):
            h.update(await view.read(off, min(4 * MiB, view.size - off)))
        return h.hexdigest()
    finally:
        await view.close()


# (a) ---------------------------------------------------------------------------------------------------------------
async def test_history_shrinks_under_the_limit_and_every_point_stays_exact(tmp_path: Path, small_fs: Path) -> None:
    need_tool("qemu-io")
    rnd = random.Random(12)
    src = tmp_path / "sys.img"
    make_disk(src, 8 * MiB, seed=3)
    site = _site_on(tmp_path, small_fs, reserve="1M")
    try:
        app = await site.start_appliance(crash_interval=0.5, rpo_threshold=30)
        app.set_policy(Policy("default", crash_interval=0.5, history_limit=4 * MiB))
        alerts = _alerts(app)
        await site.register("vm1")
        await site.start_agent({"sys": src})
        await app.protect("vm1")
        await site.wait_for(lambda: app.machine_status("vm1")["state"] == "protected", 60, "initial sync")
        rt = app.runtimes["vm1"]
        mv = rt.vault
        first_base = mv.base_seq

        history: dict[int, str] = {}   # seq → sha256 of the source right after it
        for _ in range(14):            # ~14 × 1 MiB of writes: well past the 4 MiB limit
            await _write_round(site, rnd, 8 * MiB)
            seq = await site.wait_caught_up()
            history[seq] = sha256_file(src)
            await site.wait_for(lambda: any(p.seq == seq for p in mv.points()), 10, "crash point")

        # the capacity round (every 2 s) folds the oldest history until it fits
        await site.wait_for(lambda: mv.history_bytes() <= 4 * MiB, 15, "history within its limit")
        shrunk = [a for a in alerts if a.code == "LB_HISTORY_SHRUNK"]
        assert shrunk and shrunk[0].state == "raised" and shrunk[0].id == "LB_HISTORY_SHRUNK:vm1"
        assert shrunk[0].component == "vault" and shrunk[0].severity == "warning" and shrunk[0].machine == "vm1"
        assert " h of history" in shrunk[0].message and "history limit of 4M" in shrunk[0].message
        assert not [a for a in alerts if a.code == "LB_HISTORY_SHRUNK" and a.state == "cleared"]  # 24 h retention
        assert any(e["kind"] == "history-shrunk" for e in app.db.events())
        assert mv.base_seq > first_base
        assert app.gate.closed is False

        # every point still held reads back byte-exact; the oldest ones are gone
        kept = [p for p in mv.points() if p.seq in history]
        assert len(kept) >= 2 and min(history) < mv.base_seq
        for p in kept:
            assert await _view_sha(mv, p.seq) == history[p.seq], f"point {p.id} differs from the source"
        out = tmp_path / "export"          # and through a real drill export of the oldest point left
        job = await app.recovery.test_failover("vm1", kept[0].id, export_dir=str(out), nbd=None)
        await site.wait_for(lambda: app.recovery.job(job.id).finished, 60, "export")
        assert app.recovery.job(job.id).error is None
        assert sha256_file(out / "sys.img") == history[kept[0].seq]
        await app.recovery.cleanup("vm1")
        # a write is never refused for lack of history space
        await _write_round(site, rnd, 8 * MiB)
        await site.wait_caught_up()
        assert await _view_sha(mv, mv.last_seq) == sha256_file(src)
    finally:
        await site.stop()


# (b) ---------------------------------------------------------------------------------------------------------------
def _fill(fs: Path) -> Path:
    """Another program fills the filesystem to the last byte."""
    filler = fs / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (MiB, 4096):
            chunk = b"\xa5" * size
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


async def test_a_full_filesystem_pauses_and_resumes_with_every_acknowledged_write(tmp_path: Path,
                                                                                   small_fs: Path) -> None:
    need_tool("qemu-io")
    rnd = random.Random(7)
    src = tmp_path / "sys.img"
    make_disk(src, 8 * MiB, seed=5)
    site = _site_on(tmp_path, small_fs, reserve="1M")
    try:
        app = await site.start_appliance(crash_interval=0.5, rpo_threshold=30)
        alerts = _alerts(app)
        await site.register("vm1")
        agent = await site.start_agent({"sys": src})
        await app.protect("vm1")
        await site.wait_for(lambda: app.machine_status("vm1")["state"] == "protected", 60, "initial sync")
        rt = app.runtimes["vm1"]
        await _write_round(site, rnd, 8 * MiB)
        await site.wait_caught_up()

        filler = _fill(small_fs)
        assert disk_free(small_fs).free < MiB
        before = rt.vault.last_seq
        for _ in range(3):            # the guest's writes complete: the agent acknowledged them
            await _write_round(site, rnd, 8 * MiB)
        want = sha256_file(src)
        await site.wait_for(lambda: app.gate.closed, 15, "replication to pause")
        full = [a for a in alerts if a.code == "LB_VAULT_FULL"]
        assert full and full[0].state == "raised" and full[0].severity == "critical"
        assert full[0].component == "vault" and full[0].id == "LB_VAULT_FULL:vault"
        assert agent.capture.seq > rt.vault.last_seq >= before   # not in the vault: held by the agent and cache
        await _write_round(site, rnd, 8 * MiB)                   # still accepted while paused
        want = sha256_file(src)
        assert app.gate.closed and rt.task is not None and not rt.task.done()   # no role crashed
        st = app.machine_status("vm1")          # the operator is told: paused, and why
        assert st["state"] == "paused" and st["health"] in ("warning", "critical"), st
        assert "replication paused" in st["health_reason"], st

        filler.unlink()               # space returns: replication resumes by itself
        await site.wait_for(lambda: not app.gate.closed, 15, "replication to resume")
        last = await site.wait_caught_up(timeout=60)
        assert [a.state for a in alerts if a.code == "LB_VAULT_FULL"] == ["raised", "cleared"]
        kinds = [e["kind"] for e in app.db.events()]
        assert "vault-full" in kinds and "vault-resumed" in kinds
        assert rt.error is None and app.machine_status("vm1")["state"] == "protected"
        assert await _view_sha(rt.vault, last) == want, "the latest point lost acknowledged writes"
        await site.wait_for(lambda: any(p.seq == last for p in rt.vault.points()), 10, "crash point")
        out = tmp_path / "export"
        job = await app.recovery.test_failover("vm1", "latest", export_dir=str(out), nbd=None)
        await site.wait_for(lambda: app.recovery.job(job.id).finished, 60, "export")
        assert sha256_file(out / "sys.img") == want
        await app.recovery.cleanup("vm1")
    finally:
        await site.stop()


# (c) ---------------------------------------------------------------------------------------------------------------
async def test_the_free_space_reserve_folds_the_oldest_history_and_warns(tmp_path: Path, small_fs: Path) -> None:
    """No history limit at all: the vault filesystem's reserve alone shrinks the history (oldest first), warns that
    space is low, and every point still held reads back byte-exact."""
    need_tool("qemu-io")
    rnd = random.Random(21)
    src = tmp_path / "sys.img"
    make_disk(src, 8 * MiB, seed=9)
    site = _site_on(tmp_path, small_fs, reserve="30M")     # of a 48 MiB filesystem
    try:
        app = await site.start_appliance(crash_interval=0.5, rpo_threshold=30)
        alerts = _alerts(app)
        await site.register("vm1")
        await site.start_agent({"sys": src})
        await app.protect("vm1")
        await site.wait_for(lambda: app.machine_status("vm1")["state"] == "protected", 60, "initial sync")
        mv = app.runtimes["vm1"].vault
        first_base = mv.base_seq
        history: dict[int, str] = {}
        for _ in range(40):            # write until the reserve is reached and history has been folded for it
            await _write_round(site, rnd, 8 * MiB)
            seq = await site.wait_caught_up()
            history[seq] = sha256_file(src)
            await site.wait_for(lambda: any(p.seq == seq for p in mv.points()), 10, "crash point")
            if any(a.code == "LB_HISTORY_SHRUNK" for a in alerts) and mv.base_seq > first_base:
                break
        shrunk = [a for a in alerts if a.code == "LB_HISTORY_SHRUNK"]
        assert shrunk and shrunk[0].state == "raised" and shrunk[0].machine == "vm1", [a.code for a in alerts]
        assert "reserve" in shrunk[0].message
        low = [a for a in alerts if a.code == "LB_VAULT_SPACE_LOW"]
        assert low and low[0].state == "raised" and low[0].component == "vault" and low[0].severity == "warning"
        assert mv.base_seq > first_base and app.gate.closed is False   # folded, not paused
        kept = [p for p in mv.points() if p.seq in history]
        assert kept and min(history) < mv.base_seq
        for p in kept[:1] + kept[-1:]:
            assert await _view_sha(mv, p.seq) == history[p.seq], f"point {p.id} differs from the source"
    finally:
        await site.stop()


# settings ----------------------------------------------------------------------------------------------------------
def test_sizes_and_reserves_parse() -> None:
    assert parse_size("50G") == 50 << 30 and parse_size("512m") == 512 << 20 and parse_size("2TiB") == 2 << 40
    assert parse_size(0) == 0 and parse_size("1.5K") == 1536
    for bad in ("-1G", "lots", "1Q", True, float("nan")):
        with pytest.raises(InvalidInput):
            parse_size(bad)  # type: ignore[arg-type]
    assert parse_reserve("5%") == "5%" and parse_reserve("10G") == str(10 << 30)
    assert reserve_bytes("5%", 1000) == 50 and reserve_bytes("4096", 10) == 4096
    with pytest.raises(InvalidInput):
        parse_reserve("80%")
    with pytest.raises(InvalidInput):
        Policy("p", history_limit=1000).validate()     # below 1 MiB: a typo, not a limit
    assert Policy("p", history_limit="50G").validate().history_limit == 50 << 30  # type: ignore[arg-type]
    assert is_no_space(VaultFull("x")) and is_no_space(OSError(errno.ENOSPC, "full"))
    assert not is_no_space(OSError(errno.EIO, "io"))


def test_schema_4_database_gains_the_history_limit(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "state.db")
    db.executescript("""CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '4');
        CREATE TABLE policies (name TEXT PRIMARY KEY, rpo_threshold REAL NOT NULL, retention REAL NOT NULL,
            app_consistent REAL NOT NULL, crash_interval REAL NOT NULL, resync_window TEXT NOT NULL DEFAULT '22:00-06:00');
        INSERT INTO policies VALUES ('gold', 15, 7200, 600, 5, 'always');""")
    db.commit()
    db.close()
    s = StateDB(tmp_path / "state.db")
    try:
        assert s.get_meta("schema_version") == str(SCHEMA_VERSION)
        gold = s.policy("gold")
        assert (gold.rpo_threshold, gold.resync_window, gold.history_limit) == (15, "always", 0)
        gold.history_limit = 50 << 30
        s.put_policy(gold)
        assert s.policy("gold").history_limit == 50 << 30
    finally:
        s.close()


def test_cli_appliance_set_vault_reserve(tmp_path: Path) -> None:
    home = tmp_path / "app"
    init_home(home, control_port=free_port(), data_port=free_port(), listen="127.0.0.1")
    cli = [sys.executable, "-m", "engine.cli", "appliance", "set", "--home", str(home)]
    r = subprocess.run(cli + ["--vault-reserve", "10G", "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"vault_reserve": str(10 << 30), "pin_alert_after": 86400.0}
    assert json.loads((home / "appliance.json").read_text())["vault"]["reserve"] == str(10 << 30)
    r = subprocess.run(cli + ["--vault-reserve", "lots"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "LB_INVALID_INPUT" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(cli + ["--vault-reserve", "7%"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "vault reserve 7%" in r.stdout
