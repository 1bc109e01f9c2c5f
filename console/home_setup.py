"""First-run setup without widgets: validate each answer, make the home in a hidden sibling folder, then commit it.

The wizard needs the connection passphrase before Finish (it is shown once, to copy or save), but must leave nothing
half-made when cancelled. So ``PendingHome.create`` initialises a complete home in ``.<name>.setup-XXXX`` next to the
chosen folder; ``commit`` writes the final ports, vault and listen address into it and renames it into place;
``discard`` removes it and its keyring entry. Validators return a message for the field, or None when it is fine.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from engine.api import (CertificateUntrusted, CertificateView, LifeboatError, LoginFailed,
                        check_vcenter_login as _login, configure_home, delete_vault_key, export_recovery_kit,
                        fetch_vcenter_certificate, init_home, is_initialised, InvalidInput,
                        KIT_MIN_PASSPHRASE as KIT_MIN_PASSPHRASE,   # re-exported for the wizard
                        parse_address)

from .network import EgressPlan
from .quiet_thread import to_thread_quietly
from .target import AzureTarget, set_new as set_azure_target

#: Shown whenever a vCenter presents another certificate than the one accepted or pinned before (issue 12).
INTERCEPTION_WARNING = ("The certificate changed: someone may be intercepting the connection, or the vCenter's "
                        "certificate was replaced. Check with its administrator before trusting it.")
#: The largest CA file the console reads (a PEM bundle of a few certificates is a few KiB).
MAX_CA_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class VCenterPlan:
    """A vCenter to register after the appliance starts: trusting ``thumbprint`` (the one the operator accepted)
    or, when ``ca_pem`` is set, the certificates that CA signed for this host."""
    host: str
    user: str
    password: str
    thumbprint: str
    ca_pem: str | None = None


@dataclass(frozen=True, slots=True)
class SetupPlan:
    """Everything the wizard collected."""
    home: Path
    vault: Path
    control_port: int
    data_port: int
    listen: str = "0.0.0.0"
    vcenter: VCenterPlan | None = None
    azure: AzureTarget | None = None     # the vault on Azure Blob instead of the local folder ``vault``
    egress: EgressPlan | None = None     # the Outbound network page (with ``azure`` only); None: direct


def validate_home(text: str) -> str | None:
    if not text.strip():
        return "Choose a folder for the appliance."
    p = Path(text).expanduser()
    if not p.is_absolute():
        return "Use an absolute path."
    if is_initialised(p):
        return "This folder is already an appliance home; start the console with --home to use it."
    if p.exists() and (not p.is_dir() or any(p.iterdir())):
        return "The folder exists and is not empty."
    parent = next((q for q in [p, *p.parents] if q.exists()), None)
    if parent is None or not os.access(parent, os.W_OK | os.X_OK):
        return f"Cannot create folders in {parent}."
    return None


def validate_vault(text: str, home: str) -> str | None:
    if not text.strip():
        return None  # the default: HOME/vault
    p = Path(text).expanduser()
    if not p.is_absolute():
        return "Use an absolute path."
    if p.exists() and not p.is_dir():
        return "This is a file, not a folder."
    parent = next((q for q in [p, *p.parents] if q.exists()), None)
    if parent is None or not os.access(parent, os.W_OK | os.X_OK):
        return f"Cannot write to {parent}."
    return None


def validate_port(text: str) -> str | None:
    t = text.strip()
    if not t.isdigit() or not 0 < int(t) < 65536:
        return "Enter a TCP port between 1 and 65535."
    return None


def port_in_use(host: str, port: int) -> bool:
    """True when ``port`` cannot be bound on ``host`` right now (another program listens there)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except PermissionError:
            return False  # a privileged port: the appliance may still get it (capabilities); not "in use"
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def validate_ports(control: str, data: str, listen: str) -> dict[str, str]:
    """Messages per field name ('control', 'data', 'listen')."""
    out: dict[str, str] = {}
    for key, text in (("control", control), ("data", data)):
        msg = validate_port(text)
        if msg is None and port_in_use(listen or "0.0.0.0", int(text)):
            msg = f"Port {int(text)} is already in use on {listen or '0.0.0.0'}."
        if msg:
            out[key] = msg
    if "control" not in out and "data" not in out and int(control) == int(data):
        out["data"] = "The data port must differ from the control port."
    try:
        socket.getaddrinfo(listen or "0.0.0.0", None, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError):
        out["listen"] = "Enter an IP address to listen on (0.0.0.0 for every interface)."
    return out


def parse_host_port(text: str, default_port: int = 443) -> tuple[str, int] | None:
    """``HOST[:PORT]`` → (host, port), or None when it is not an address (the engine's one parser)."""
    try:
        return parse_address(text, default_port if default_port > 0 else None)
    except InvalidInput:
        return None


async def fetch_certificate(host: str, port: int = 443, *, ca_pem: str | None = None,
                            timeout: float = 10.0) -> CertificateView:
    """The certificate a TLS server presents (subject, issuer, validity, SHA-256), read through the engine without
    trusting it; with ``ca_pem``, also whether that CA vouches for it. Raises ``LifeboatError`` (unreachable, bad
    CA file)."""
    return await asyncio.to_thread(fetch_vcenter_certificate, host, port, ca_pem=ca_pem, timeout=timeout)


async def fetch_thumbprint(host: str, port: int = 443, timeout: float = 10.0) -> str:
    """SHA-256 thumbprint (AA:BB:…) of the certificate a TLS server presents. Not verified: the operator accepts it."""
    return (await fetch_certificate(host, port, timeout=timeout)).sha256


def validity_text(cert: CertificateView, now: float | None = None) -> tuple[str, str | None]:
    """("from … to …", a problem or None): "expired …" or "not valid yet …" by this computer's clock."""
    fmt = "%Y-%m-%d %H:%M UTC"
    span = f"from {time.strftime(fmt, time.gmtime(cert.not_before))} to {time.strftime(fmt, time.gmtime(cert.not_after))}"
    now = time.time() if now is None else now
    if now > cert.not_after:
        return span, f"Expired {(now - cert.not_after) / 86400:.0f} day(s) ago: vCenter needs a new certificate."
    if now < cert.not_before:
        return span, ("Not valid yet (starts in the future): check this computer's clock and the vCenter's "
                      "certificate.")
    return span, None


def read_ca_file(text: str) -> tuple[str | None, str | None]:
    """(PEM text, None) for a readable PEM CA certificate file, else (None, why): the console's ``--ca FILE``."""
    if not text.strip():
        return None, "Choose the CA certificate file (PEM)."
    p = Path(text.strip()).expanduser()
    try:
        if p.stat().st_size > MAX_CA_BYTES:
            return None, f"{p} is larger than {MAX_CA_BYTES // 1024} KiB: not a CA certificate."
        pem = p.read_text("ascii")
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"Cannot read {p}: {getattr(exc, 'strerror', None) or exc}."
    if "-----BEGIN CERTIFICATE-----" not in pem:
        return None, f"{p} holds no PEM certificate (-----BEGIN CERTIFICATE-----)."
    return pem, None


def changed_certificate_message(address: str, seen: str, expected: str) -> str:
    """The full text shown when ``address`` presents ``seen`` where ``expected`` was accepted or pinned."""
    return (f"{INTERCEPTION_WARNING} {address} now presents SHA-256 {seen}; the one accepted before was "
            f"{expected}.")


async def check_vcenter_login(address: str, user: str, password: str, thumbprint: str,
                              timeout: float = 30.0, *, ca_pem: str | None = None) -> dict[str, str]:
    """Log in to the vCenter at ``address`` trusting exactly ``thumbprint`` (or the CA ``ca_pem``), then log out;
    nothing is stored.

    Returns messages per field ('host', 'password', 'thumb'), empty when vCenter accepted the login: the wizard
    checks before it moves on, so a wrong password is shown next to its field instead of failing after Finish.
    A certificate other than the accepted one gives the possible-interception warning under 'thumb', and its
    thumbprint under 'seen'."""
    hp = parse_host_port(address)
    if hp is None:
        return {"host": "Enter HOST or HOST:PORT."}
    try:
        await to_thread_quietly(_login, hp[0], hp[1], user, password, thumbprint, ca_pem=ca_pem, timeout=timeout)
    except LoginFailed:
        return {"password": "The vCenter refused the login: check the user name and password."}
    except CertificateUntrusted as exc:
        seen = str(exc.details.get("thumbprint") or "")
        if ca_pem:
            return {"thumb": f"The CA does not vouch for this vCenter's certificate: {exc.message}."}
        if seen and seen != thumbprint:
            return {"thumb": changed_certificate_message(f"{hp[0]}:{hp[1]}", seen, thumbprint), "seen": seen}
        return {"thumb": f"The certificate is not the one accepted ({exc.message}): get it again and check it."}
    except LifeboatError as exc:  # unreachable, TLS handshake, not a vSphere endpoint, a bad CA file
        return {"host": exc.message[:1].upper() + exc.message[1:].rstrip(".") + "."}
    return {}


class PendingHome:
    """An initialised home in a hidden temporary sibling folder, until ``commit`` or ``discard``."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.passphrase: str = ""
        self.appliance_id: str = ""
        self._made: list[Path] = []  # parent folders create() made, removed again by discard()
        self.kit_path: Path | None = None   # where the recovery kit was saved (the wizard needs one)
        self._egress_written = False        # a Finish that failed later wrote egress settings: undo if dropped

    async def create(self, near: Path) -> str:
        """Initialise a home next to ``near`` (the folder the operator chose) and return its passphrase."""
        if self.path is not None:
            return self.passphrase
        near = near.expanduser()
        target_parent = near.parent
        self._made = [q for q in [target_parent, *target_parent.parents] if not q.exists()]
        await asyncio.to_thread(target_parent.mkdir, parents=True, exist_ok=True)
        tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=f".{near.name}.setup-", dir=target_parent))
        try:
            # Ports are placeholders: commit writes the final ones (certificates do not depend on them).
            cfg = await asyncio.to_thread(init_home, tmp, control_port=1, data_port=2)
        except BaseException:
            self.path = tmp
            await self.discard()
            raise
        self.path, self.appliance_id = tmp, cfg["appliance_id"]
        self.passphrase = (tmp / "passphrase.txt").read_text().strip()
        return self.passphrase

    async def save_kit(self, out: Path, passphrase: str) -> Path:
        """Write the new appliance's recovery kit to ``out`` (InvalidInput: short passphrase, existing file)."""
        assert self.path is not None, "create() first"
        self.kit_path = await to_thread_quietly(export_recovery_kit, self.path, out, passphrase)
        return self.kit_path

    async def commit(self, plan: SetupPlan) -> Path:
        """Write the plan's configuration and move the home into place. Raises if the target appeared meanwhile."""
        assert self.path is not None, "create() first"
        src = self.path
        await asyncio.to_thread(configure_home, src, control_port=plan.control_port, data_port=plan.data_port,
                                listen=plan.listen, vault=plan.vault)
        # the egress settings first: the target is checked through them, and the appliance starts with them
        if plan.egress is not None and not plan.egress.empty:
            await plan.egress.write(src)
            self._egress_written = True
        elif self._egress_written:
            await EgressPlan().write(src)
            self._egress_written = False
        if plan.azure is not None:   # checked again, then stored (credential in the keyring); a refusal raises
            await set_azure_target(plan.azure, src)
        await asyncio.to_thread(_move_into_place, src, plan.home.expanduser())
        self.path, self._made, self._egress_written = None, [], False
        return plan.home

    async def discard(self) -> None:
        """Remove the temporary home and its vault key: nothing half-made stays behind."""
        path, self.path = self.path, None
        if path is None:
            return
        await asyncio.to_thread(shutil.rmtree, path, True)
        for folder in self._made:  # innermost first
            try:
                folder.rmdir()
            except OSError:
                break
        self._made = []
        if self.appliance_id:
            await asyncio.to_thread(delete_vault_key, self.appliance_id)
        self.passphrase = ""


def _move_into_place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        if any(dst.iterdir()):
            raise FileExistsError(errno.EEXIST, "the appliance folder is no longer empty", str(dst))
        dst.rmdir()
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.copytree(src, dst, symlinks=True)  # another filesystem: copy, then drop the temporary one
        shutil.rmtree(src, ignore_errors=True)


def vsphere_available() -> bool:
    """Whether the engine has vCenter support: it always has since issue 4 (kept for the wizard's vCenter page)."""
    return True


def default_control_port() -> int:
    """443 as in ASR when we may bind it, else 8443 (an unprivileged user cannot bind below 1024 on Linux)."""
    geteuid = getattr(os, "geteuid", None)
    return 443 if geteuid is None or geteuid() == 0 else 8443
