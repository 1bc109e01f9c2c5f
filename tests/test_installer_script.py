"""The Windows installer's service part, checked here without Windows (fast; tests/test_installer.py builds the real
bundle and is slow): installers/lifeboat.nsi installs and starts the appliance service with a home under ProgramData
restricted to SYSTEM and Administrators, stops and removes it before an upgrade replaces the files and at uninstall;
every command it runs exists in the CLI's parser; makensis compiles it (warnings as errors) over a stand-in payload;
the PyInstaller spec bundles pywin32's service pieces."""

from __future__ import annotations

import re
import shlex
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from engine.cli import build_parser
from engine.service import cli as service_cli
from engine.service.windows import service_name

ROOT = Path(__file__).resolve().parent.parent
NSI = ROOT / "installers" / "lifeboat.nsi"
SPEC = ROOT / "installers" / "lifeboat.spec"
CLI_CALL = re.compile(r"""'"\$INSTDIR\\\$\{CLI_EXE\}" ([^']*)'""")


def _script() -> str:
    # NSIS line continuations joined, comments dropped: what makensis reads.
    lines = []
    for line in NSI.read_text().replace("\\\n", " ").splitlines():
        s = line.strip()
        if s and not s.startswith((";", "#")):
            lines.append(s)
    return "\n".join(lines)


def _sections(text: str) -> dict[str, str]:
    found = re.findall(r'^Section (/o )?"([^"]+)"[^\n]*\n(.*?)^SectionEnd', text, re.S | re.M)
    out = {name: body for _, name, body in found}
    out.update({f"{name} (optional)": "" for opt, name, _ in found if opt})
    return out


def _defines(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2).strip().strip("'\"")
            for m in re.finditer(r"^!define (\w+) (.+)$", text, re.M)}


def test_the_installer_installs_starts_and_removes_the_service() -> None:
    text = _script()
    sec = _sections(text)
    d = _defines(text)
    assert "Appliance service" in sec and "Appliance service (optional)" not in sec, "selected by default"
    svc, main, un = sec["Appliance service"], sec["${PRODUCT}"], sec["Uninstall"]

    # The home: under ProgramData ($APPDATA in the all-users context), made private before the service starts.
    assert d["DATA_DIR"] == r"$APPDATA\${PRODUCT}" and d["APPLIANCE_HOME"] == r"${DATA_DIR}\appliance"
    for body in (svc, main, un):   # $APPDATA is the user's own profile until then
        first_use = min(body.find(n) for n in ("${DATA_DIR}", "${APPLIANCE_HOME}") if n in body)
        assert -1 < body.find("SetShellVarContext all") < first_use, body[:120]
    acl = d["DATA_ACL"].split()
    assert acl[:2] == ["/inheritance:r", "/grant:r"], "nothing inherited from ProgramData (Users may read there)"
    grants = [a for a in acl if not a.startswith("/")]
    assert grants == ["*S-1-5-18:(OI)(CI)F", "*S-1-5-32-544:(OI)(CI)F"], "SYSTEM and Administrators only"
    icacls = svc.index('icacls.exe" "${DATA_DIR}" ${DATA_ACL}')
    install = svc.index("appliance install-service")
    assert icacls < install, "the folder is restricted before the home is made in it"
    assert re.search(r"\$\{If\} \$0 != 0\s+MessageBox[^\n]*\n\s*Abort", svc[icacls:install]), \
        "no service in a folder whose access could not be restricted"

    # Upgrade: the running service holds lifeboat.exe open; it is stopped and removed before the files change.
    assert main.index("appliance uninstall-service") < main.index("File /r")
    # Uninstall: the service goes first, then the program; the home is never deleted.
    assert un.index("appliance uninstall-service") < un.index(r'Delete "$INSTDIR\${CLI_EXE}"')
    assert "APPLIANCE_HOME" not in re.sub(r"'[^']*'", "", un) and "DATA_DIR" not in un
    assert not re.search(r"RMDir[^\n]*(APPDATA|DATA_DIR|APPLIANCE_HOME)", text)
    # `/S /NOSERVICE`: a silent console-only install leaves the service out.
    assert re.search(r'\$\{GetOptions\} \$R0 "/NOSERVICE" \$R1\s+\$\{IfNot\} \$\{Errors\}\s+SectionSetFlags '
                     r'\$\{SecService\} 0', text)
    assert re.search(r"Function \.onInit\n(?:(?!FunctionEnd).)*Call ServiceOption", text, re.S)


def test_every_command_the_installer_runs_exists() -> None:
    calls = CLI_CALL.findall(_script())
    assert len(calls) == 3, calls   # upgrade stop, install, uninstall
    parser = build_parser()
    fns = []
    for call in calls:
        argv = shlex.split(call.replace("${APPLIANCE_HOME}", r"C:\ProgramData\Lifeboat\appliance"), posix=True)
        a = parser.parse_args(argv)   # argparse exits on an unknown command or option
        assert a.home == r"C:\ProgramData\Lifeboat\appliance"
        fns.append(a.fn)
        if a.fn is service_cli.cmd_install:
            assert a.init, "the installer's home does not exist yet: the service initialises it"
    assert fns.count(service_cli.cmd_install) == 1 and fns.count(service_cli.cmd_uninstall) == 2
    # And what install-service registers with the service manager parses to the service host.
    home = Path("/ProgramData/Lifeboat/appliance")
    cmd = service_cli.windows_command(home, init=True)
    i = cmd.index("appliance")
    a = parser.parse_args(cmd[i:])
    assert a.fn is service_cli.cmd_host and a.init and Path(a.home) == home


def test_one_service_per_home_named_before_the_home_exists() -> None:
    a = service_name(Path(r"C:\ProgramData\Lifeboat\appliance"))
    assert re.fullmatch(r"LifeboatAppliance-[0-9a-f]{8}", a)
    assert service_name(Path(r"C:\PROGRAMDATA\Lifeboat\Appliance")) == a   # Windows paths ignore case
    assert service_name(Path(r"C:\ProgramData\Lifeboat\appliance\\")) == a
    assert service_name(Path(r"D:\Lifeboat\appliance")) != a


def test_the_spec_bundles_the_windows_service_pieces() -> None:
    """The frozen lifeboat.exe must be able to run as the service: pywin32's pieces are imported inside functions,
    so the spec lists them (on Windows builds; installers/bundle_check.py imports them in the frozen program)."""
    text = SPEC.read_text()
    m = re.search(r'\*\(\[("engine\.platform\.windows_service".*?)\] if sys\.platform == "win32" else \[\]\)', text,
                  re.S)
    assert m, "no Windows-only hidden imports for the service"
    names = set(re.findall(r'"([\w.]+)"', m.group(1)))
    assert {"win32serviceutil", "win32service", "servicemanager", "pywintypes", "win32evtlog", "win32evtlogutil",
            "win32timezone"} <= names, names
    check = (ROOT / "installers" / "bundle_check.py").read_text()
    assert "def windows_service_pieces" in check


def _ico(path: Path) -> None:
    """A 16×16 32-bit icon (makensis -WX warns without one)."""
    w = h = 16
    pixels, mask = b"\x80\x40\x20\xff" * (w * h), b"\x00" * (4 * h)
    img = struct.pack("<IiiHHIIiiII", 40, w, h * 2, 1, 32, 0, len(pixels) + len(mask), 0, 0, 0, 0) + pixels + mask
    path.write_bytes(struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", w, h, 0, 0, 1, 32, len(img), 22) + img)


def test_makensis_compiles_the_script(tmp_path: Path) -> None:
    makensis = shutil.which("makensis")
    if makensis is None:
        pytest.skip("makensis is not installed (Debian: apt-get install nsis; scripts/setup.sh installs it)")
    dist = tmp_path / "dist"
    (dist / "_internal").mkdir(parents=True)
    (dist / "_internal" / "base_library.zip").write_bytes(b"stand-in")
    (dist / "lifeboat").write_bytes(b"stand-in")
    _ico(tmp_path / "lifeboat.ico")
    out = tmp_path / "lifeboat-script-check-installer.exe"
    r = subprocess.run([makensis, "-WX", "-V2", "-DALLOW_NON_WINDOWS_PAYLOAD", "-DCOMPRESSOR=zlib",
                        f"-DDIST_DIR={dist}", f"-DICON={tmp_path / 'lifeboat.ico'}", f"-DOUT_FILE={out}",
                        str(NSI)], cwd=NSI.parent, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    data = out.read_bytes()
    assert data[:2] == b"MZ" and b"NullsoftInst" in data
