"""The installer build: scripts/build_installer.sh (PyInstaller bundle, smoke tests, makensis) and the wheel's data.

Slow (a PyInstaller build, ~40 s, and an NSIS compile, ~1 min, plus tool installs on a fresh machine) and it writes
build/ and dist/ in the checkout: it runs only with LIFEBOAT_TEST_INSTALLER=1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "dist" / "lifeboat"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("LIFEBOAT_TEST_INSTALLER") != "1",
                       reason="slow installer build (PyInstaller + makensis, a few minutes): "
                              "set LIFEBOAT_TEST_INSTALLER=1 to run it"),
]


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def build() -> dict[str, str]:
    """Run the build script once; its SUMMARY line as a dict."""
    r = subprocess.run([str(ROOT / "scripts" / "build_installer.sh")], cwd=ROOT, capture_output=True, text=True,
                       timeout=1500)
    out = r.stdout + r.stderr
    assert r.returncode == 0, f"scripts/build_installer.sh failed ({r.returncode}):\n{_tail(out)}"
    summary = [line for line in r.stdout.splitlines() if line.startswith("SUMMARY ")]
    assert summary, f"no SUMMARY line:\n{_tail(out)}"
    print(summary[-1])
    return dict(kv.split("=", 1) for kv in summary[-1].split()[1:])


def _run(cmd: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    # Not the suite's PYTHON_KEYRING_BACKEND (conftest.py): it names keyrings.alt, which the bundle rightly lacks.
    base = {k: v for k, v in os.environ.items() if k != "PYTHON_KEYRING_BACKEND"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**base, "QT_QPA_PLATFORM": "offscreen", **env})


@pytest.mark.timeout(1800)
def test_cli_help(build: dict[str, str]) -> None:
    r = _run([str(BUNDLE / "lifeboat"), "--help"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "usage: lifeboat" in r.stdout


@pytest.mark.timeout(1800)
def test_console_help(build: dict[str, str]) -> None:
    r = _run([str(BUNDLE / "lifeboat-console"), "--help"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "usage: lifeboat-console" in r.stdout


@pytest.mark.timeout(1800)
def test_bundle_self_check(build: dict[str, str]) -> None:
    """Lazy imports, keyring entry points, resources and SVG icons, C speedups: installers/bundle_check.py."""
    r = _run([str(BUNDLE / "lifeboat")], LIFEBOAT_BUNDLE_CHECK="1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(frozen:" in r.stdout and "FAIL" not in r.stdout, r.stdout
    assert (BUNDLE / "_internal" / "resources" / "style.qss").is_file()


@pytest.mark.timeout(1800)
def test_windows_installer_compiled(build: dict[str, str]) -> None:
    installer = ROOT / build["installer"]
    assert build["version"] == VERSION
    assert installer.name.startswith(f"lifeboat-{VERSION}-setup"), installer
    data = installer.read_bytes()
    assert data[:2] == b"MZ", "not a Windows executable"
    assert b"NullsoftInst" in data, "no NSIS installer header"
    assert float(build["installer_mib"]) > 20, "the installer is too small to hold the bundle"
    # the script fails on a failed wine round trip; "skipped" when wine is not installed
    assert build["wine"] in {"passed", "skipped"}


def test_wheel_ships_resources(tmp_path: Path) -> None:
    """resources/ is package data: an installed (non-editable) Lifeboat finds its icons and stylesheet."""
    # Built from a copy: setuptools leaves build/lib in the source tree, and stale files there end up in later wheels.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("engine", "console", "ui", "resources"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
                        "-w", str(tmp_path / "wheel"), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = (tmp_path / "wheel").glob("lifeboat-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    icons = sorted((ROOT / "resources" / "icons").glob("*.svg"))
    expected = {"resources/style.qss"} | {f"resources/icons/{p.name}" for p in icons}
    assert expected <= names, sorted(expected - names)
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
                        "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    probe = ("import ui.theme as t; d = t.resources_dir(); "
             "print(t.__file__, d, (d / 'style.qss').is_file(), len(list((d / 'icons').glob('*.svg'))))")
    r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(target), "QT_QPA_PLATFORM": "offscreen"})
    assert r.returncode == 0, r.stdout + r.stderr
    theme_file, res_dir, qss, n_icons = r.stdout.split()
    assert Path(theme_file).is_relative_to(target), "imported the checkout's ui, not the installed one"
    assert Path(res_dir) == target / "resources" and qss == "True"
    assert int(n_icons) == len(icons)
