"""Static checks run with the suite: type checking of the engine (mypy) and pyflakes-level lint (ruff)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    if exe.exists():
        return str(exe)
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (it is in the dev extra: pip install -e '.[dev]')")
    return found


def test_engine_type_checks() -> None:
    r = subprocess.run([_tool("mypy"), "engine"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


def test_no_unused_imports_or_undefined_names() -> None:
    r = subprocess.run([_tool("ruff"), "check", "--select", "F", "engine", "console", "ui", "tests", "bench"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
