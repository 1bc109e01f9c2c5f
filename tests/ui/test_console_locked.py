"""A console attached to a locked appliance (issue 16), offscreen, with real processes and real kit files:

- the appliance runs as its own process with a keyring of its own (another ``XDG_DATA_HOME``, as a service under
  another account) that lacks its vault key: it starts locked;
- the console attaches and shows the locked page (never the dashboard, never "OK" in the tray's health), with
  Import recovery kit…; another appliance's kit is LB_KIT_MISMATCH at the file field, a wrong passphrase
  LB_KIT_PASSPHRASE at the passphrase field, nothing written to the appliance's keyring either time; the right kit
  unlocks it and the console shows the dashboard of the unlocked appliance;
- Settings' Back up now and Export recovery kit… go through the running appliance (the console's own keyring lacks
  the key), with progress and the appliance's errors;
- the appliance restarted without its key: the attached console goes to the locked page by itself, and back to the
  dashboard when another client (``lifeboat appliance import-kit``) unlocks it;
- no passphrase in the console's log records, its settings file, or the appliance's log and database.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal as signals
import subprocess
import sys
import time
from pathlib import Path

import pytest

from console.app import ConsoleController
from console.jobs import FAILED
from engine.api import export_recovery_kit
from engine.appliance.appliance import init_home
from engine.backup.kit import read_kit, unseal
from engine.home import ApplianceHome
from engine.secrets import delete_secret, get_secret, vault_key_name
from tests.conftest import free_port
from tests.ui.helpers import signal, until
from ui.kit_dialogs import LOCKED_TEXT, ExportKitDialog, ImportKitDialog
from ui.main_window import MainWindow
from ui.tray import HealthTray

pytestmark = pytest.mark.blocking_threshold(3.0)   # as tests/ui/test_console_attach.py: local HTTPS on the GUI thread

REPO = Path(__file__).resolve().parents[2]
PASS = "correct horse battery staple"
WRONG = "a wrong passphrase, quite long"
EXPORT_PASS = "another passphrase for the exported kit"


def _env(keyring_dir: Path) -> dict[str, str]:
    env = dict(os.environ)   # PYTHON_KEYRING_BACKEND of the test; its own keyring folder (another account's)
    env["XDG_DATA_HOME"] = str(keyring_dir)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _secret_in(env: dict[str, str], name: str) -> str | None:
    """A keyring entry as the account of ``env`` sees it (another process: keyring backends cache)."""
    code = "import sys; from engine.secrets import get_secret; v = get_secret(sys.argv[1]); print(v or '')"
    r = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True, timeout=60, env=env,
                       check=False, cwd=REPO)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip() or None


def _delete_secret_in(env: dict[str, str], name: str) -> None:
    code = "import sys; from engine.secrets import delete_secret; delete_secret(sys.argv[1])"
    r = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True, timeout=60, env=env,
                       check=False, cwd=REPO)
    assert r.returncode == 0, r.stderr


async def _run_appliance(home: Path, env: dict[str, str], first: bytes) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "engine.cli", "appliance", "run", "--home",
                                                str(home), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, cwd=REPO, env=env)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert line.startswith(first), line + (await proc.stderr.read() if proc.stderr else b"")
    return proc


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signals.SIGTERM)
        await asyncio.wait_for(proc.wait(), 90)


async def _import(win: MainWindow, kit: Path, passphrase: str) -> ImportKitDialog:
    dlg = win.open_import_kit()
    dlg.path.setText(str(kit))
    dlg.passphrase.setText(passphrase)
    task = dlg.start_import()
    assert task is not None and not dlg.cancel_btn.isEnabled() and dlg.progress.isVisibleTo(dlg)
    await asyncio.wait_for(task, 180)
    return dlg


@pytest.mark.timeout(420)
async def test_console_unlocks_a_locked_appliance_with_its_kit(qtbot, tmp_path: Path, screenshot, console_settings,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    root = tmp_path / "appliance"
    init_home(root, control_port=free_port(), data_port=free_port(), listen="127.0.0.1", vault=tmp_path / "vault")
    aid = ApplianceHome(root).load_config()["appliance_id"]
    key_b64 = get_secret(vault_key_name(aid))
    assert key_b64
    kit = export_recovery_kit(root, tmp_path / "kit.txt", PASS)
    other = tmp_path / "other"
    init_home(other, control_port=free_port(), data_port=free_port(), listen="127.0.0.1", vault=tmp_path / "vault2")
    other_kit = export_recovery_kit(other, tmp_path / "other-kit.txt", PASS)
    # The console's account does not hold the key: everything it does with the key goes through the appliance.
    delete_secret(vault_key_name(aid))
    assert get_secret(vault_key_name(aid)) is None
    service = _env(tmp_path / "service-keyring")   # the account that runs the appliance: its keyring is empty
    app = await _run_appliance(root, service, b"appliance locked")
    console_settings.set("ui/close_notice_shown", True)   # closing the console at the end asks nothing
    ctrl = ConsoleController(root, console_settings, mode="attach")
    tray: HealthTray | None = None
    try:
        # 1. Attached to a locked appliance: the locked page instead of every page, critical health.
        started = signal(ctrl.started, timeout=60, what="the main window")
        ctrl.begin()
        await started
        win, ctx = ctrl.window, ctrl.ctx
        assert isinstance(win, MainWindow)
        win.resize(1000, 700)
        win.show()
        assert ctrl.facade.attached and ctx.locked is not None and ctx.locked["code"] == "LB_KEYRING"
        assert win.locked and win.locked_page.isVisible() and not win.stack.isVisible() and not win.nav.isEnabled()
        assert win.locked_page.text.text() == LOCKED_TEXT
        assert "its vault key is not in this machine's keyring" in LOCKED_TEXT
        assert "LB_KEYRING" in win.locked_page.reason.text() and not win.link_banner.isVisible()
        assert "locked" in win.appliance_label.text()
        health, why = ctx.overall_health()
        assert health == "critical" and "locked" in why
        tray = HealthTray(ctx, win.reopen, win.quit_console)
        assert tray.health == "critical" and "locked" in tray.icon.toolTip() and "OK" not in tray.icon.toolTip()
        assert not ctx.notes.crashes
        screenshot(win, "locked-1-locked-page")

        # 2. Another appliance's kit: LB_KIT_MISMATCH at the file; the appliance's keyring unchanged.
        keyring_file = next((tmp_path / "service-keyring").rglob("keyring_pass.cfg"), None)
        before = keyring_file.read_bytes() if keyring_file else None
        dlg = await _import(win, other_kit, PASS)
        assert dlg.isVisible() and "LB_KIT_MISMATCH" in dlg.f_path.error and not dlg.f_pass.error
        assert "another appliance" in dlg.f_path.error
        assert win.locked and ctx.locked is not None
        screenshot(dlg, "locked-2-kit-of-another-appliance")

        # 3. The right kit, a wrong passphrase: LB_KIT_PASSPHRASE at the passphrase field.
        dlg.path.setText(str(kit))
        dlg.passphrase.setText(WRONG)
        await asyncio.wait_for(dlg.start_import(), 180)   # type: ignore[arg-type]
        assert dlg.isVisible() and "LB_KIT_PASSPHRASE" in dlg.f_pass.error and not dlg.f_path.error
        assert dlg.import_btn.isEnabled() and dlg.cancel_btn.isEnabled()
        screenshot(dlg, "locked-3-wrong-passphrase")
        after = next((tmp_path / "service-keyring").rglob("keyring_pass.cfg"), None)
        assert (after.read_bytes() if after else None) == before, "a refused kit changed the appliance's keyring"
        assert await asyncio.to_thread(lambda: _secret_in(service, vault_key_name(aid)) is None)

        # 4. The right passphrase: the appliance is unlocked and the console shows its dashboard.
        unlocked = signal(ctx.lock_changed, lambda lock: lock is None, 120, "unlocked")
        dlg.passphrase.setText(PASS)
        t0 = time.monotonic()
        await asyncio.wait_for(dlg.start_import(), 180)   # type: ignore[arg-type]
        await unlocked
        print(f"\nimport → dashboard: {time.monotonic() - t0:.2f} s")
        await until(lambda: win.import_dialog is None, 10, "the import dialog closed")
        assert ctx.locked is None and ctx.link_up and not win.locked and win.stack.isVisible() and win.nav.isEnabled()
        assert win.stack.currentWidget() is win.pages["dashboard"]
        assert "Attached to the appliance" in win.appliance_label.text()
        st = await asyncio.to_thread(ctrl.facade.status)   # a real call to the unlocked appliance
        assert st is not None
        health, _why = ctx.overall_health()
        assert health != "critical" or "locked" not in _why
        assert tray.health == health
        # compared in the thread: a secret as a worker's result would be in qasync's DEBUG records
        assert await asyncio.to_thread(lambda: _secret_in(service, vault_key_name(aid)) == key_b64)
        assert get_secret(vault_key_name(aid)) is None   # the console's account still lacks it
        screenshot(win, "locked-4-unlocked-dashboard")

        # 5. Settings: Back up now, through the appliance, with progress.
        settings = win.show_page("settings")
        assert settings.backup_btn.isEnabled() and settings.export_btn.isEnabled()
        task = settings.back_up_now()
        assert task is not None
        await until(lambda: settings.progress.isVisibleTo(settings), 10, "the backup's progress")
        assert not settings.backup_btn.isEnabled()
        await asyncio.wait_for(task, 300)
        text = settings.recovery_status.text()
        assert text.startswith("Backed up: ") and "and in the vault" in text, text
        backups = list((root / "backups").glob("*"))
        assert backups and list((tmp_path / "vault" / ".appliance-backups").glob("*"))
        assert any(j.title == "Back up the appliance's configuration" and j.state == "finished"
                   for j in ctx.jobs.jobs)
        screenshot(win, "locked-5-settings-backed-up")

        # 6. Export recovery kit…: the local checks at their fields, then sealed by the appliance.
        edlg = settings.open_export_kit()
        assert isinstance(edlg, ExportKitDialog)
        edlg.passphrase.setText("short")
        assert "at least" in edlg.f_pass.error and not edlg.save_btn.isEnabled()
        edlg.passphrase.setText(EXPORT_PASS)
        edlg.repeat.setText(EXPORT_PASS)
        edlg.path.setText(str(kit))   # exists: never overwritten
        assert "exists" in edlg.f_path.error and not edlg.save_btn.isEnabled()
        out = tmp_path / "exported-kit.txt"
        edlg.path.setText(str(out))
        assert edlg.save_btn.isEnabled()
        screenshot(edlg, "locked-6-export-kit")
        task = edlg.start_export()
        assert task is not None
        await asyncio.wait_for(task, 180)
        await until(lambda: settings.export_dialog is None, 10, "the export dialog closed")
        assert out.exists() and os.stat(out).st_mode & 0o777 == 0o600
        assert unseal(read_kit(out), EXPORT_PASS).appliance_id == aid
        assert "Recovery kit saved to" in settings.recovery_status.text()
        # The appliance's own refusal comes back as itself: a failed job and an error notification.
        with pytest.raises(Exception) as refused:
            await ctx.keys.export_kit(tmp_path / "short.txt", "short")
        assert getattr(refused.value, "code", "") == "LB_INVALID_INPUT"
        job = ctx.jobs.jobs[-1]
        assert job.title == "Export the recovery kit" and job.state == FAILED and "LB_INVALID_INPUT" in job.error
        assert not (tmp_path / "short.txt").exists()

        # 7. The appliance restarted without its key: the attached console goes to the locked page by itself.
        await _stop(app)
        await asyncio.to_thread(_delete_secret_in, service, vault_key_name(aid))
        relocked = signal(ctx.lock_changed, lambda lock: lock is not None, 60, "locked again")
        app = await _run_appliance(root, service, b"appliance locked")
        t0 = time.monotonic()
        await relocked
        print(f"locked appliance answering → locked page: {time.monotonic() - t0:.2f} s")
        assert win.locked and not settings.backup_btn.isEnabled() and ctx.overall_health()[0] == "critical"
        assert tray.health == "critical"

        # ... and back to the dashboard when another client imports the kit.
        back = signal(ctx.lock_changed, lambda lock: lock is None, 120, "unlocked by the command line")
        def import_kit_cli() -> subprocess.CompletedProcess[str]:   # a closure: the passphrase is in no log record
            return subprocess.run([sys.executable, "-m", "engine.cli", "appliance", "import-kit", "--home", str(root),
                                   "--kit", str(kit), "--passphrase-stdin"], input=PASS + "\n", capture_output=True,
                                  text=True, timeout=180, env=_env(tmp_path / "operator-keyring"), cwd=REPO,
                                  check=False)
        r = await asyncio.to_thread(import_kit_cli)
        assert r.returncode == 0, r.stderr
        t0 = time.monotonic()
        await back
        print(f"unlocked by the command line → dashboard: {time.monotonic() - t0:.2f} s")
        await until(lambda: ctx.link_up, 30, "the link up again")
        assert not win.locked and win.stack.currentWidget() is win.pages["dashboard"]
        assert not ctx.notes.crashes, ctx.notes.crashes
    finally:
        if tray is not None:
            tray.close()
            tray.deleteLater()
        if ctrl.window is not None:
            finished = signal(ctrl.finished, timeout=30, what="the console closed")
            ctrl.window.quit_console()   # type: ignore[attr-defined]
            await finished
        await _stop(app)

    # No passphrase anywhere it could leak: the console's log records, its settings, the appliance's log and state.
    console_settings.save()
    leaks = [PASS, WRONG, EXPORT_PASS, key_b64]
    for secret in leaks:
        assert secret not in caplog.text, [r.getMessage()[:300] for r in caplog.records if secret in r.getMessage()]
        assert secret.encode() not in Path(console_settings.path).read_bytes()
        for f in [root / "appliance.log", *root.glob("state.db*")]:
            assert secret.encode() not in f.read_bytes(), f"a secret is in {f.name}"
    logged = " ".join(str(e) for e in ctx.log.entries()) + " ".join(n.title + n.advice for n in ctx.notes.history)
    assert "recovery kit kit.txt imported" in logged
    assert not any(s in logged for s in leaks)
