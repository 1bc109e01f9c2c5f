"""The appliance is a composition root, not a hub: no engine module reaches back into it.

``engine/appliance/appliance.py`` builds and wires the parts; the parts get narrow collaborators (machine state,
sync cursor, resync, runtimes, bus, pool). Only the entry points may import it: the CLI, the demo and engine/api.py
(the console's one door into the engine). TYPE_CHECKING imports count too: a part typed against
``Appliance`` is a part that will reach into it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "engine"
ROOT_MODULE = "engine.appliance.appliance"
# entry points: the CLI, the demo, the console's door, and the service core (what systemd / Windows start)
ALLOWED = {"engine.cli", "engine.demo", "engine.api", "engine.service.core", ROOT_MODULE}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ENGINE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; ``from X import y`` yields X and X.y)."""
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names)
    return out


def test_only_entry_points_import_the_composition_root() -> None:
    offenders = sorted(_module_name(p) for p in ENGINE.rglob("*.py")
                       if _module_name(p) not in ALLOWED and ROOT_MODULE in _imports(p))
    assert offenders == [], f"these engine modules import {ROOT_MODULE} (give them collaborators instead)"


def test_the_scan_sees_the_entry_points_imports() -> None:
    # the scanner itself: the two allowed importers are found importing it
    assert ROOT_MODULE in _imports(ENGINE / "cli.py")
    assert ROOT_MODULE in _imports(ENGINE / "demo.py")


def test_no_part_holds_an_appliance_back_pointer() -> None:
    """No ``self.app`` attribute in the parts the appliance wires (they got collaborators instead)."""
    parts = ["appliance/control.py", "appliance/pipeline.py", "appliance/process_server.py",
             "appliance/recovery_service.py", "appliance/machines.py", "appliance/machine_state.py", "appliance/resync.py",
             "appliance/sync_cursor.py", "appliance/runtimes.py", "appliance/retention.py", "appliance/bookmarks.py",
             "vsphere/service.py", "vsphere/matching.py", "appliance/scheduled_tasks.py"]
    reach = re.compile(r"\bself\.app\b|\bapp: Appliance\b")
    found = [p for p in parts if reach.search((ENGINE / p).read_text())]
    assert found == []
