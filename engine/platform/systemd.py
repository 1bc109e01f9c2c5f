"""The appliance as a systemd service (Linux): the unit file, and systemctl to enable, start, stop and ask.

The unit runs ``lifeboat appliance run --home HOME`` (engine/service/core.py): ``Restart=on-failure`` restarts a
crashed appliance; ``systemctl stop`` sends SIGTERM, on which the appliance drains its in-flight work (``TimeoutStop``
leaves it 90 s). Its standard error goes to the journal; the appliance also keeps a rotating log in its home.
Hardening: ``UMask=0077``, ``NoNewPrivileges``, ``ProtectSystem=full`` (``/usr``, ``/boot`` and ``/etc`` read-only),
``PrivateTmp``. Nothing secret is in the unit: the vault key stays in the keyring of the service's user.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

UNIT_DIR = Path("/etc/systemd/system")


def unit_name(appliance_id: str) -> str:
    return f"lifeboat-appliance-{appliance_id[:8]}.service"


def available() -> bool:
    """True when systemd runs this machine (the test ``sd_booted()`` makes) and ``systemctl`` is there."""
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def _quote(arg: str) -> str:
    """One ExecStart word: quoted when it holds a space, a quote or a backslash (systemd's own quoting rules)."""
    if arg and not any(c in arg for c in ' \t"\'\\$%;'):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$").replace("%", "%%") + '"'


def unit_text(*, command: list[str], home: Path, description: str, environment: dict[str, str]) -> str:
    env = "".join(f"Environment={_quote(f'{k}={v}')}\n" for k, v in sorted(environment.items()))
    return (
        "[Unit]\n"
        f"Description={description}\n"
        "Documentation=file://" + str(home) + "/appliance.log\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={' '.join(_quote(c) for c in command)}\n"
        f"WorkingDirectory={_quote(str(home))}\n"
        f"{env}"
        "Restart=on-failure\n"
        "RestartSec=5\n"
        "KillSignal=SIGTERM\n"
        "TimeoutStopSec=90\n"
        "UMask=0077\n"
        "NoNewPrivileges=yes\n"
        "ProtectSystem=full\n"
        "PrivateTmp=yes\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n")


def systemctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=timeout)


def verify(unit: Path) -> str:
    """``systemd-analyze verify``'s complaints about a unit file ('' when it has none, or the tool is missing)."""
    if shutil.which("systemd-analyze") is None:
        return ""
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60,
                       cwd=str(unit.parent))
    return (r.stdout + r.stderr).strip()


def show(unit: str) -> dict[str, str]:
    """``systemctl show`` of the unit's states (empty when systemd does not run here)."""
    if not available():
        return {}
    r = systemctl("show", unit, "--property=LoadState,ActiveState,SubState,UnitFileState,MainPID,NRestarts")
    return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
