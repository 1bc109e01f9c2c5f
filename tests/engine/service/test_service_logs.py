"""The service's logs: the rotating file in the home (size-limited, a bounded number kept, every file 0600 whatever
the umask) and standard error as the journal reads it (systemd's JOURNAL_STREAM names the stream: INFO and up, each
line with its syslog priority)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from engine.appliance.appliance import init_home
from engine.service import core
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[3]


def _home(tmp: Path) -> Path:
    root = tmp / "home"
    init_home(root, control_port=free_port(), data_port=free_port(), listen="127.0.0.1", vault=tmp / "vault")
    return root


def test_the_log_file_rotates_stays_bounded_and_private(tmp_path: Path) -> None:
    home = _home(tmp_path)
    # In a child process: setup_logging changes the root logger, and the umask is the service manager's usual 022.
    script = textwrap.dedent(f"""
        import logging, os
        from pathlib import Path
        from engine.home import ApplianceHome
        from engine.service.core import setup_logging
        os.umask(0o022)
        setup_logging(ApplianceHome(Path({str(home)!r})), max_bytes=64 * 1024, backups=3)
        log = logging.getLogger("lifeboat.test")
        for i in range(4000):
            log.info("record %05d %s", i, "x" * 200)
        log.info("the last record")
    """)
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    files = sorted(p.name for p in home.iterdir() if p.name.startswith("appliance.log"))
    assert files == ["appliance.log", "appliance.log.1", "appliance.log.2", "appliance.log.3"], files
    for name in files:
        p = home / name
        assert os.stat(p).st_mode & 0o777 == 0o600, (name, oct(os.stat(p).st_mode))
        assert p.stat().st_size <= 64 * 1024, (name, p.stat().st_size)
    assert "the last record" in (home / "appliance.log").read_text()
    assert "record 03999" in (home / "appliance.log").read_text() + (home / "appliance.log.1").read_text()
    # ~900 KiB were logged, 256 KiB are kept: the oldest records are gone, not the newest.
    assert "record 00000 " not in "".join((home / n).read_text() for n in files)
    # What the service itself uses.
    assert (core.LOG_BYTES, core.LOG_FILES) == (10 << 20, 5)


def test_a_wider_log_left_by_an_older_version_is_tightened(tmp_path: Path) -> None:
    home = _home(tmp_path)
    (home / "appliance.log").write_text("old\n")
    os.chmod(home / "appliance.log", 0o644)
    script = ("from pathlib import Path; from engine.home import ApplianceHome; "
              "from engine.service.core import setup_logging; "
              f"setup_logging(ApplianceHome(Path({str(home)!r}))); import logging; logging.getLogger('x').info('new')")
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert os.stat(home / "appliance.log").st_mode & 0o777 == 0o600
    assert (home / "appliance.log").read_text().startswith("old\n")


def test_under_systemd_standard_error_is_the_journal_with_priorities(tmp_path: Path) -> None:
    """systemd connects a service's standard error to the journal and says so in JOURNAL_STREAM (its device and
    inode): the appliance then logs INFO there too, each line prefixed with its syslog priority."""
    home = _home(tmp_path)
    err = tmp_path / "stderr"
    with open(err, "wb") as f:
        st = os.fstat(f.fileno())
        proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "appliance", "run", "--home", str(home)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=f, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT),
                                     "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("appliance running"), (line, err.read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = err.read_text().splitlines()
    assert any(ln.startswith("<6>lifeboat.service: appliance running") for ln in lines), lines
    assert any(ln.startswith("<6>lifeboat.service: appliance stopped cleanly") for ln in lines), lines
    assert all(ln[:1] == "<" and ln[2:3] == ">" for ln in lines if ln), [ln for ln in lines if ln[:1] != "<"]
    # The same records in the file, with its own time stamps.
    text = (home / "appliance.log").read_text()
    assert " INFO lifeboat.service: appliance stopped cleanly" in text


def test_in_a_terminal_standard_error_stays_quiet(tmp_path: Path) -> None:
    """Without JOURNAL_STREAM (or with one naming another stream) INFO goes to the file only."""
    home = _home(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "appliance", "run", "--home", str(home)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "JOURNAL_STREAM": "1:1"})
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("appliance running")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "appliance running" not in stderr and "<6>" not in stderr, stderr
    assert "stopped cleanly" in (home / "appliance.log").read_text()
