"""The layer contracts in pyproject.toml hold: engine imports no Qt/console/ui; ui reaches engine only via console;
console reaches engine only through engine.api (also checked here on the import statements themselves)."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_contracts_are_declared() -> None:
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    names = {c["name"] for c in cfg["contracts"]}
    assert {"engine imports no Qt, console or ui", "ui reaches the engine only through console",
            "console reaches the engine only through engine.api"} <= names


def _engine_imports(path: Path) -> list[tuple[int, str]]:
    """Every module under ``engine`` that a file imports (``import engine.x``, ``from engine.x import y``,
    ``from engine import x``), with its line; relative imports stay inside their own package."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "engine"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "engine":
                out += [(node.lineno, f"engine.{a.name}") for a in node.names]
            elif node.module.split(".")[0] == "engine":
                out.append((node.lineno, node.module))
    return out


def test_console_imports_only_engine_api() -> None:
    """The exhaustive import-linter list cannot name engine modules added later; this rule can."""
    bad = [f"{p.relative_to(REPO)}:{line}: {mod}" for p in sorted((REPO / "console").rglob("*.py"))
           for line, mod in _engine_imports(p) if mod != "engine.api"]
    assert not bad, "console/ may import only engine.api:\n" + "\n".join(bad)


def test_the_engine_import_rule_sees_every_form(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("import engine.vault.local\nfrom engine import policy\nfrom engine.errors import X\n"
                 "from engine.api import Y\nimport os\nfrom . import engine\n"
                 "def f():\n    from engine.home import ApplianceHome\n")
    assert [m for _, m in _engine_imports(f)] == ["engine.vault.local", "engine.policy", "engine.errors",
                                                  "engine.api", "engine.home"]


def test_import_linter_forbids_every_engine_module_but_api() -> None:
    """The contract's list covers every engine module and package that exists (kept exhaustive as engine grows)."""
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (c,) = [c for c in cfg["contracts"] if c["name"] == "console reaches the engine only through engine.api"]
    present = {f"engine.{p.stem if p.suffix else p.name}" for p in (REPO / "engine").iterdir()
               if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()}
    missing = sorted(present - {"engine.api"} - set(c["forbidden_modules"]))
    assert not missing, f"add {missing} to the contract's forbidden_modules in pyproject.toml"
    assert "engine.api" not in c["forbidden_modules"]


def test_lint_imports() -> None:
    exe = Path(sys.executable).parent / "lint-imports"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "importlinter.cli"]
    res = subprocess.run([*cmd, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "broken" in res.stdout and " 0 broken" in res.stdout
