"""Configuration backup and restore of the appliance itself (its state, certificates, settings and secrets).

A backup is one sealed file (docs/FORMATS.md, "Configuration backup")::

    off  size  field
    0    4     magic b"LBBK"
    4    1     format version (1)
    5    3     reserved, zero
    8    4     header length h (u32, little-endian)
    12   h     header: UTF-8 JSON {"appliance_id", "created_at", "lifeboat_version", "kind", "name"}
    12+h 12    GCM nonce
    24+h n     AES-256-GCM(backup key, zstd(tar of the members)) || 16-byte tag; associated data: bytes 0 .. 12+h

Everything after the header is encrypted and authenticated with the **backup key**, a random key kept in the OS
keyring and in the recovery kit (engine/backup/kit.py): a backup never holds a secret in the clear, and one flipped
byte anywhere makes it refuse to restore. The header alone is readable without the key, so backups can be listed
and a backup from a newer Lifeboat is named as such.

Members of the tar: ``manifest.json``; ``state.db`` (SQLite's online backup: consistent while the appliance runs);
``appliance.json``; the certificates ``pki/ca.crt``, ``pki/server.crt``, ``pki/admin.crt``; ``secrets.json`` holding
the private keys, the registration passphrase and the keyring entries the appliance uses (vCenter passwords, and any
name listed in state.db's ``meta.secret_names``). The vault key is not in a backup: it is in the kit.

A restore goes into a new, empty home: it is built beside it and renamed into place only once every member has been
checked, so a failed restore leaves nothing half-made. The restored appliance asks every protected machine for a
checksum resync at its first connection: records the lost appliance had acknowledged but not yet stored in the vault
are found and sent again (only the blocks that differ).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import sqlite3
import struct
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .. import __version__
from ..errors import Conflict, InvalidInput, KeyringError, LifeboatError, NotFound
from ..fileio import atomic_write, make_private_dir
from ..home import ApplianceHome
from ..secrets import get_secret, set_secret, vault_key_name
from .kit import Kit

__all__ = ["BackupInfo", "backup_key_name", "ensure_backup_key", "take", "save", "list_backups", "read_header",
           "open_backup", "restore", "install_kit", "pending_restore", "BackupCorrupt", "KEEP", "RESTORED_META"]

MAGIC = b"LBBK"
VERSION = 1
HEAD = struct.Struct("<4sB3xI")
KEEP = 14                    # backups kept in the home and in the vault; older ones are removed
MAX_HEADER = 64 * 1024
#: state.db meta key set by a restore: the appliance asks every machine for a resync at its first start
RESTORED_META = "restored_from_backup"
CERTS = ("pki/ca.crt", "pki/server.crt", "pki/admin.crt")
SECRET_FILES = ("pki/ca.key", "pki/server.key", "pki/admin.key", "passphrase.txt")


class BackupCorrupt(LifeboatError):
    code = "LB_BACKUP_CORRUPT"
    advice = ("This backup does not read back as it was written (changed or truncated), or it was sealed for "
              "another appliance's kit. Use another backup (`lifeboat appliance backup list`) or the vault's copy.")


class BackupVersion(LifeboatError):
    code = "LB_BACKUP_VERSION"
    advice = "Restore it with the Lifeboat version that wrote it, or a newer one."


@dataclass(frozen=True)
class BackupInfo:
    name: str
    appliance_id: str
    created_at: float
    lifeboat_version: str
    kind: str
    size: int
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "appliance_id": self.appliance_id, "created_at": self.created_at,
                "lifeboat_version": self.lifeboat_version, "kind": self.kind, "size": self.size, "path": self.path}


def backup_key_name(appliance_id: str) -> str:
    return f"backup-key/{appliance_id}"


def ensure_backup_key(appliance_id: str) -> bytes:
    """The appliance's backup key from the keyring, made on first use (the recovery kit carries it)."""
    val = get_secret(backup_key_name(appliance_id))
    if val:
        return base64.b64decode(val)
    key = os.urandom(32)
    set_secret(backup_key_name(appliance_id), base64.b64encode(key).decode())
    return key


def _name(appliance_id: str, t: float) -> str:
    ms = int(t * 1000) % 1000
    return f"lifeboat-{appliance_id[:8]}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(t))}{ms:03d}Z.lbbk"


def _keyring_names(db: sqlite3.Connection) -> list[str]:
    """The keyring entries the appliance uses, read from its state: vCenter passwords and ``meta.secret_names``."""
    names: list[str] = []
    try:
        names += [f"vcenter/{h}" for (h,) in db.execute("SELECT host FROM vsphere_endpoints")]
    except sqlite3.Error:
        pass    # no vCenter was ever registered: the table does not exist
    row = db.execute("SELECT value FROM meta WHERE key = 'secret_names'").fetchone()
    if row:
        try:
            names += [n for n in json.loads(row[0]) if isinstance(n, str)]
        except ValueError:
            pass
    return sorted(set(names))


def _db_snapshot(db_path: Path, out: Path) -> None:
    """SQLite's online backup (consistent while the appliance writes; a file copy would not be)."""
    src = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(out)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o600, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def take(home: ApplianceHome, *, kind: str = "manual", now: float | None = None) -> tuple[str, bytes]:
    """A sealed backup of ``home``: (file name, bytes). Works while the appliance runs."""
    cfg = home.load_config()
    appliance_id = cfg["appliance_id"]
    key = ensure_backup_key(appliance_id)
    t = time.time() if now is None else now
    with tempfile.TemporaryDirectory(prefix="lifeboat-backup-") as tmp:
        snap = Path(tmp) / "state.db"
        _db_snapshot(home.db, snap)
        db = sqlite3.connect(snap)
        try:
            names = _keyring_names(db)
        finally:
            db.close()
        state = snap.read_bytes()
    secrets: dict[str, Any] = {"files": {}, "keyring": {}}
    for rel in SECRET_FILES:
        p = home.root / rel
        if p.exists():
            secrets["files"][rel] = p.read_text()
    for n in names:
        v = get_secret(n)
        if v is not None:
            secrets["keyring"][n] = v
    members: dict[str, bytes] = {"state.db": state, "appliance.json": home.config.read_bytes(),
                                 "secrets.json": json.dumps(secrets).encode()}
    for rel in CERTS:
        members[rel] = (home.root / rel).read_bytes()
    manifest = {"format": VERSION, "appliance_id": appliance_id, "created_at": t, "lifeboat_version": __version__,
                "kind": kind, "members": {n: hashlib.sha256(d).hexdigest() for n, d in members.items()}}
    members = {"manifest.json": json.dumps(manifest, indent=1).encode(), **members}
    name = _name(appliance_id, t)
    header = json.dumps({"appliance_id": appliance_id, "created_at": t, "lifeboat_version": __version__,
                         "kind": kind, "name": name}).encode()
    aad = HEAD.pack(MAGIC, VERSION, len(header)) + header
    nonce = os.urandom(12)
    body = zstandard.ZstdCompressor(level=3).compress(_tar(members))
    return name, aad + nonce + AESGCM(key).encrypt(nonce, body, aad)


def read_header(data: bytes) -> dict[str, Any]:
    """The clear header of a backup; BackupCorrupt if it is not one, BackupVersion if a newer Lifeboat wrote it."""
    if len(data) < HEAD.size or data[:4] != MAGIC:
        raise BackupCorrupt("this is not a Lifeboat configuration backup (bad magic or too short)")
    _, version, hlen = HEAD.unpack_from(data)
    if version > VERSION:
        raise BackupVersion(f"this backup was written by a newer Lifeboat (backup format {version}; this version "
                            f"reads format {VERSION})")
    if version != VERSION or hlen > MAX_HEADER or len(data) < HEAD.size + hlen + 12 + 16:
        raise BackupCorrupt("the backup's header is damaged or the file is truncated")
    try:
        h = json.loads(data[HEAD.size:HEAD.size + hlen])
        if not isinstance(h, dict) or not isinstance(h.get("appliance_id"), str):
            raise ValueError
    except ValueError:
        raise BackupCorrupt("the backup's header is damaged") from None
    return h


def open_backup(data: bytes, backup_key: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(header, members) of a backup, every member checked against the manifest."""
    h = read_header(data)
    hlen = HEAD.unpack_from(data)[2]
    aad_end = HEAD.size + hlen
    try:
        body = AESGCM(backup_key).decrypt(data[aad_end:aad_end + 12], data[aad_end + 12:], data[:aad_end])
        raw = zstandard.ZstdDecompressor().decompress(body, max_output_size=1 << 34)
        members: dict[str, bytes] = {}
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for m in tar.getmembers():
                f = tar.extractfile(m)
                if f is None or m.name in members:
                    raise BackupCorrupt(f"the backup's member {m.name!r} is not a single file")
                members[m.name] = f.read()
    except InvalidTag:
        raise BackupCorrupt("the backup does not authenticate: it was changed after it was written, or it belongs "
                            "to another appliance's kit") from None
    except (tarfile.TarError, zstandard.ZstdError) as exc:
        raise BackupCorrupt(f"the backup's contents do not unpack: {exc}") from None
    manifest = json.loads(members.pop("manifest.json", b"{}") or b"{}")
    want = manifest.get("members", {})
    if set(want) != set(members) or any(hashlib.sha256(members[n]).hexdigest() != want[n] for n in want):
        raise BackupCorrupt("the backup's members do not match its manifest")
    if manifest.get("appliance_id") != h["appliance_id"]:
        raise BackupCorrupt("the backup's manifest names another appliance than its header")
    return h, members


def save(home: ApplianceHome, name: str, data: bytes, *, keep: int = KEEP) -> Path:
    """Keep a backup in ``HOME/backups/`` (0700 folder, 0600 file); the oldest beyond ``keep`` are removed."""
    folder = home.root / "backups"
    make_private_dir(folder)
    path = folder / name
    atomic_write(path, data, 0o600)
    for old in sorted(p for p in folder.iterdir() if p.suffix == ".lbbk")[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_backups(home: ApplianceHome) -> list[BackupInfo]:
    folder = home.root / "backups"
    out: list[BackupInfo] = []
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.suffix != ".lbbk":
                continue
            try:
                with open(p, "rb") as f:
                    h = read_header(f.read(HEAD.size + MAX_HEADER + 28))
            except LifeboatError:
                continue
            out.append(BackupInfo(p.name, h["appliance_id"], float(h.get("created_at", 0)),
                                  str(h.get("lifeboat_version", "?")), str(h.get("kind", "?")), p.stat().st_size,
                                  str(p)))
    return out


def restore(root: Path, data: bytes, kit: Kit, *, vault_path: Path | None = None,
            keyring: bool = True) -> dict[str, Any]:
    """Rebuild an appliance home at ``root`` (new or empty) from a backup, with the recovery kit's keys.
    Nothing is written unless every check passes; the keyring is written last, after the home is in place.

    ``keyring=False`` (a home another account will run, e.g. a Windows service as LocalSystem): this account's
    keyring is not touched. The backup itself (sealed) is kept in ``HOME/backups/`` and state.db's
    ``restored_from_backup`` says ``keyring_pending``: when the kit is imported into the running, locked appliance
    (``install_kit``), the appliance puts the vault key, the backup key and the backup's keyring entries into its own
    keyring."""
    h = read_header(data)
    if h["appliance_id"] != kit.appliance_id:
        raise BackupCorrupt(f"the backup is of appliance {h['appliance_id'][:8]}…, the kit of "
                            f"{kit.appliance_id[:8]}…", code="LB_KIT_MISMATCH",
                            advice="Use the recovery kit saved for the appliance this backup comes from.")
    header, members = open_backup(data, kit.backup_key)
    if root.exists() and (not root.is_dir() or root.is_symlink() or any(root.iterdir())):
        raise Conflict(f"{root} exists and is not empty; a restore builds a new home",
                       advice="Name a new folder (or an empty one) for the restored appliance.")
    cfg = json.loads(members["appliance.json"])
    if vault_path is not None:
        if cfg.get("vault", {}).get("kind") != "local":
            raise InvalidInput("--from-vault names a folder, but this appliance's vault is not a local one")
        cfg["vault"]["path"] = str(vault_path.resolve())
    secrets = json.loads(members["secrets.json"])
    stage = root.parent / f".{root.name}.restoring-{uuid.uuid4().hex[:8]}"
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        make_private_dir(stage)
        make_private_dir(stage / "pki")
        for rel in CERTS:
            atomic_write(stage / rel, members[rel], 0o600)
        for rel, text in secrets.get("files", {}).items():
            if rel not in SECRET_FILES:
                raise BackupCorrupt(f"the backup names an unexpected secret file {rel!r}")
            atomic_write(stage / rel, text.encode(), 0o600)
        atomic_write(stage / "state.db", members["state.db"], 0o600)
        db = sqlite3.connect(stage / "state.db")
        try:
            info: dict[str, Any] = {"name": header.get("name"), "created_at": header.get("created_at"),
                                    "restored_at": time.time()}
            if not keyring:
                info["keyring_pending"] = True
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (RESTORED_META, json.dumps(info)))
            db.commit()
        finally:
            db.close()
        atomic_write(stage / "appliance.json", json.dumps(cfg, indent=2).encode(), 0o600)
        if not keyring:   # sealed: the appliance opens it with the kit's backup key when the kit is imported
            make_private_dir(stage / "backups")
            atomic_write(stage / "backups" / _backup_file_name(header), data, 0o600)
        if root.exists():
            root.rmdir()
        os.replace(stage, root)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    done = {"home": str(root), "appliance_id": kit.appliance_id, "backup": header.get("name"),
            "backup_created_at": header.get("created_at"), "vault": cfg.get("vault", {}),
            "keyring": "this account" if keyring else "pending"}
    if not keyring:
        return done
    try:
        set_secret(vault_key_name(kit.appliance_id), base64.b64encode(kit.vault_key).decode())
        set_secret(backup_key_name(kit.appliance_id), base64.b64encode(kit.backup_key).decode())
        for n, v in secrets.get("keyring", {}).items():
            set_secret(n, v)
    except KeyringError:
        shutil.rmtree(root, ignore_errors=True)   # an appliance that cannot read its vault is not restored
        raise
    return done


def _backup_file_name(header: dict[str, Any]) -> str:
    """The backup's own name when it is a plain file name (it is read from the header: never a path)."""
    name = str(header.get("name") or "")
    if not name or "/" in name or "\\" in name or name.startswith(".") or not name.endswith(".lbbk"):
        raise BackupCorrupt("the backup's header names no valid file name")
    return name


def kit_from_home(home: ApplianceHome) -> Kit:
    """The recovery kit's contents from a running appliance's home and keyring."""
    from ..secrets import load_vault_key
    cfg = home.load_config()
    aid = cfg["appliance_id"]
    if not home.ca_key.exists():
        raise NotFound(f"the CA key {home.ca_key} is missing", advice="Export the kit from the appliance's home.")
    return Kit(aid, load_vault_key(aid), ensure_backup_key(aid), home.ca_cert.read_bytes(), home.ca_key.read_bytes(),
               time.time())


def install_kit(home: ApplianceHome, kit: Kit) -> dict[str, Any]:
    """Put a kit's keys into this machine's keyring for the appliance of ``home`` (the same appliance only). A
    different vault key already there is never overwritten: one of the two would be wrong."""
    aid = home.load_config()["appliance_id"]
    if aid != kit.appliance_id:
        raise Conflict(f"the kit is of appliance {kit.appliance_id[:8]}…, this home is appliance {aid[:8]}…",
                       code="LB_KIT_MISMATCH", advice="Import the kit saved for this appliance.")
    for name, key in ((vault_key_name(aid), kit.vault_key), (backup_key_name(aid), kit.backup_key)):
        have = get_secret(name)
        if have and base64.b64decode(have) != key:
            raise Conflict(f"the keyring already holds another key {name!r} for this appliance",
                           code="LB_KIT_MISMATCH", advice="Check which kit belongs to this appliance; remove the "
                                                          "wrong keyring entry only if you are sure.")
    restored = pending_restore(home)
    entries: dict[str, str] = {}
    if restored is not None:   # opened before anything is written: a kit that does not open it changes nothing
        _, members = open_backup((home.root / "backups" / _backup_file_name(restored)).read_bytes(), kit.backup_key)
        entries = {str(n): str(v) for n, v in json.loads(members["secrets.json"]).get("keyring", {}).items()}
    for name, key in ((vault_key_name(aid), kit.vault_key), (backup_key_name(aid), kit.backup_key)):
        set_secret(name, base64.b64encode(key).decode())
    for n, v in entries.items():
        set_secret(n, v)
    if restored is not None:
        restored.pop("keyring_pending", None)
        restored["keyring_installed"] = sorted(entries)
        _set_meta(home, RESTORED_META, json.dumps(restored))
    return {"appliance_id": aid, "keys": [vault_key_name(aid), backup_key_name(aid)],
            "restored_entries": sorted(entries)}


def pending_restore(home: ApplianceHome) -> dict[str, Any] | None:
    """state.db's ``restored_from_backup`` when a ``restore --service`` left the keyring entries to the appliance's
    account (the kit not yet imported), else None."""
    if not home.db.exists():
        return None
    db = sqlite3.connect(f"file:{home.db}?mode=rw", uri=True, timeout=30)
    try:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (RESTORED_META,)).fetchone()
    except sqlite3.Error:
        return None
    finally:
        db.close()
    info = json.loads(row[0]) if row else None
    return info if isinstance(info, dict) and info.get("keyring_pending") else None


def _set_meta(home: ApplianceHome, key: str, value: str) -> None:
    db = sqlite3.connect(home.db, timeout=30)
    try:
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))
        db.commit()
    finally:
        db.close()
