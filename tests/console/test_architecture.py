"""The layer contracts in pyproject.toml hold: engine imports no Qt/console/ui; ui reaches engine only via console."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_contracts_are_declared() -> None:
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    names = {c["name"] for c in cfg["contracts"]}
    assert {"engine imports no Qt, console or ui", "ui reaches the engine only through console"} <= names


def test_lint_imports() -> None:
    exe = Path(sys.executable).parent / "lint-imports"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "importlinter.cli"]
    res = subprocess.run([*cmd, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "broken" in res.stdout and " 0 broken" in res.stdout
