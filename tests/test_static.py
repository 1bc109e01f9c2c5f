"""Static checks run with the suite: type checking of the engine (mypy, also as on Windows), pyflakes-level lint
(ruff) and the OS boundary (no engine module outside engine/platform makes an OS-specific call)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
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


def test_engine_type_checks_for_windows() -> None:
    """Windows cannot run here: its code paths (engine/platform/windows.py, the Windows service in
    engine/platform/windows_service.py and engine/service/, and every caller) are type-checked as if on win32 (a
    separate cache: the platform is part of mypy's cache key). pywin32 itself installs only on Windows: its stubs
    (types-pywin32, dev extra) are what make its calls checked; without them ``ignore_missing_imports`` would turn
    every pywin32 name into Any and this check into a formality."""
    from importlib import metadata
    try:
        metadata.distribution("types-pywin32")
    except metadata.PackageNotFoundError:
        pytest.fail("types-pywin32 is not installed (dev extra: pip install -e '.[dev]'): without it the Windows "
                    "service's pywin32 calls are not type-checked")
    r = subprocess.run([_tool("mypy"), "--platform", "win32", "--cache-dir", ".mypy_cache/win32", "engine"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr


def test_os_specific_calls_only_in_engine_platform() -> None:
    """ruff's banned-api rule (the list is in pyproject.toml; engine/platform is exempt)."""
    r = subprocess.run([_tool("ruff"), "check", "--select", "TID251", "engine"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_os_specific_names_not_looked_up_by_string() -> None:
    """What ruff cannot see: ``getattr(os, "O_DIRECT", 0)`` / ``hasattr(os, "fdatasync")`` on a banned name."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        banned = set(tomllib.load(f)["tool"]["ruff"]["lint"]["flake8-tidy-imports"]["banned-api"])
    found = []
    for path in sorted((ROOT / "engine").rglob("*.py")):
        if (ROOT / "engine" / "platform") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2
                    and isinstance(node.args[0], ast.Name) and isinstance(node.args[1], ast.Constant)
                    and f"{node.args[0].id}.{node.args[1].value}" in banned):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.args[0].id}.{node.args[1].value}")
    assert not found, "OS-specific names outside engine/platform:\n" + "\n".join(found)


def test_no_unused_imports_or_undefined_names() -> None:
    r = subprocess.run([_tool("ruff"), "check", "--select", "F", "engine", "console", "ui", "tests", "bench"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
