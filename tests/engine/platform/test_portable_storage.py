"""The storage layer (segment logs: the process server's cache and the agent's journal; padded appends; the vault's
journal and replica) with the portable implementation selected, as it runs where the POSIX calls do not exist:
the same tests pass, and the same scenario leaves the same bytes on disk as with the POSIX implementation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from engine.platform import ENV

ROOT = Path(__file__).resolve().parents[3]
#: Loaded first in the portable runs: strips the POSIX-only calls (no_posix_calls.py).
STRIP = "tests.engine.platform.no_posix_calls"
#: The tests of the storage layer. The Azure vault's tests are not among them: that vault keeps nothing on local storage
#: (no platform call in engine/vault/azure/), so re-running them here would only repeat ~100 s of HTTP to Azurite.
STORAGE_TESTS = ["tests/engine/vault/test_local_vault.py", "tests/engine/test_directio.py", "tests/engine/test_formats.py"]


def _env(portable: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.pop(ENV, None)
    if portable:
        env[ENV] = "portable"
    return env


def _scenario(folder: Path, *, portable: bool) -> dict:
    folder.mkdir()
    code = (f"import {STRIP}, runpy, sys; sys.argv = ['scenario', sys.argv[1]]; "
            "runpy.run_module('tests.engine.platform.storage_scenario', run_name='__main__')") if portable else \
        "import runpy, sys; sys.argv = ['scenario', sys.argv[1]]; " \
        "runpy.run_module('tests.engine.platform.storage_scenario', run_name='__main__')"
    r = subprocess.run([sys.executable, "-c", code, str(folder)], cwd=ROOT, env=_env(portable),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def test_same_bytes_on_disk_with_either_implementation(tmp_path: Path) -> None:
    native = _scenario(tmp_path / "posix", portable=False)
    portable = _scenario(tmp_path / "portable", portable=True)
    assert native["platform"] == "posix" and portable["platform"] == "portable"
    assert not any(portable["direct"])     # buffered appends only, padded the same way
    assert len(native["files"]) >= 8
    assert portable["files"] == native["files"]
    assert portable["readback"] == native["readback"]


def test_storage_tests_pass_with_the_portable_implementation() -> None:
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", STRIP, "-p", "no:cacheprovider", *STORAGE_TESTS],
                       cwd=ROOT, env=_env(True), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-8000:] + r.stderr[-4000:]
    assert " passed" in r.stdout and " failed" not in r.stdout
