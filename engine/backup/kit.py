"""The recovery kit: what it takes to read the vault and rebuild the appliance when the appliance itself is lost.

A kit holds the appliance's secrets that exist nowhere else: the vault key (in the OS keyring), the backup key
(which seals the secrets inside configuration backups, engine/backup/archive.py) and the CA (certificate and private
key, so a rebuilt appliance speaks to the existing agents without re-registering them). It is sealed with a
passphrase of the operator's choosing: scrypt (N=2^17, r=8, p=1) derives an AES-256-GCM key; the header is the
associated data, so no byte of the kit can change unnoticed.

Binary layout (docs/FORMATS.md, "Recovery kit")::

    off  size  field
    0    4     magic b"LBKT"
    4    1     version (1)
    5    1     log2 N of scrypt
    6    1     scrypt r
    7    1     scrypt p
    8    16    salt
    24   12    GCM nonce
    36   n     ciphertext || 16-byte tag   (plaintext: UTF-8 JSON, see ``_payload``)

The kit file is printable text: a title, the appliance id, then the binary in numbered lines of base32 groups, each
line ending with its own CRC-32 (a mistyped line is named when the kit is typed back in), and a last line with the
binary's SHA-256 prefix. ``read_kit_text`` takes the file or text typed back, whitespace and case forgiven.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..errors import InvalidInput, LifeboatError
from ..fileio import atomic_write

__all__ = ["Kit", "seal", "unseal", "kit_text", "read_kit_text", "KitCorrupt", "KitPassphrase", "MIN_PASSPHRASE"]

MAGIC = b"LBKT"
VERSION = 1
HEAD = struct.Struct("<4sBBBB16s12s")
LOG2_N, R, P = 17, 8, 1
MIN_PASSPHRASE = 12
TITLE = "LIFEBOAT RECOVERY KIT"
GROUP, GROUPS_PER_LINE = 8, 6


class KitCorrupt(LifeboatError):
    code = "LB_KIT_CORRUPT"
    advice = ("The kit does not read back as it was written (a changed, missing or mistyped character). Use the "
              "original file or check the printed copy line by line: each line ends with its own checksum.")


class KitPassphrase(LifeboatError):
    code = "LB_KIT_PASSPHRASE"
    advice = "The passphrase does not open this kit. Type the passphrase chosen when the kit was saved."


@dataclass(frozen=True)
class Kit:
    appliance_id: str
    vault_key: bytes
    backup_key: bytes
    ca_cert_pem: bytes
    ca_key_pem: bytes
    created_at: float

    def _payload(self) -> bytes:
        return json.dumps({
            "format": 1, "appliance_id": self.appliance_id, "created_at": self.created_at,
            "vault_key": base64.b64encode(self.vault_key).decode(),
            "backup_key": base64.b64encode(self.backup_key).decode(),
            "ca_cert": self.ca_cert_pem.decode(), "ca_key": self.ca_key_pem.decode()}).encode()


def check_passphrase(passphrase: str) -> None:
    if len(passphrase) < MIN_PASSPHRASE:
        raise InvalidInput(f"the kit passphrase is {len(passphrase)} characters; at least {MIN_PASSPHRASE} are needed",
                           field="passphrase", advice="Choose a longer passphrase (a few words) and keep it apart "
                                                      "from the kit.")


def _key(passphrase: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    if not (10 <= log2_n <= 22 and 1 <= r <= 32 and 1 <= p <= 16):
        raise KitCorrupt(f"the kit names scrypt parameters out of range (N=2^{log2_n}, r={r}, p={p})")
    return Scrypt(salt=salt, length=32, n=1 << log2_n, r=r, p=p).derive(passphrase.encode())


def seal(kit: Kit, passphrase: str) -> bytes:
    check_passphrase(passphrase)
    salt, nonce = os.urandom(16), os.urandom(12)
    head = HEAD.pack(MAGIC, VERSION, LOG2_N, R, P, salt, nonce)
    return head + AESGCM(_key(passphrase, salt, LOG2_N, R, P)).encrypt(nonce, kit._payload(), head)


def unseal(blob: bytes, passphrase: str) -> Kit:
    if len(blob) < HEAD.size + 16 or blob[:4] != MAGIC:
        raise KitCorrupt("this is not a Lifeboat recovery kit (bad magic or too short)")
    magic, version, log2_n, r, p, salt, nonce = HEAD.unpack_from(blob)
    if version != VERSION:
        raise KitCorrupt(f"recovery kit version {version} is not known to this Lifeboat (it reads version {VERSION})",
                         advice="Import the kit with the Lifeboat version that wrote it, or a newer one.",
                         code="LB_KIT_VERSION")
    try:
        plain = AESGCM(_key(passphrase, salt, log2_n, r, p)).decrypt(nonce, blob[HEAD.size:], blob[:HEAD.size])
    except InvalidTag:
        # The text form's checksums already passed, so the bytes are the ones written: the passphrase is wrong.
        raise KitPassphrase("the passphrase does not open this recovery kit") from None
    d = json.loads(plain)
    return Kit(d["appliance_id"], base64.b64decode(d["vault_key"]), base64.b64decode(d["backup_key"]),
               d["ca_cert"].encode(), d["ca_key"].encode(), float(d["created_at"]))


def _crc(data: str) -> str:
    return f"{binascii.crc32(data.encode()) & 0xFFFFFFFF:08x}"[:6]


def kit_text(blob: bytes, appliance_id: str, created_at: float | None = None) -> str:
    """The printable form: numbered base32 lines, each with its CRC, and the SHA-256 prefix of the whole."""
    from hashlib import sha256
    b32 = base64.b32encode(blob).decode().rstrip("=")
    per_line = GROUP * GROUPS_PER_LINE
    lines = [TITLE, f"appliance {appliance_id}",
             "created   " + time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(created_at or time.time())),
             "Keep this kit and its passphrase apart. With both, anyone can read the vault.", ""]
    for i in range(0, len(b32), per_line):
        chunk = b32[i:i + per_line]
        groups = " ".join(chunk[j:j + GROUP] for j in range(0, len(chunk), GROUP))
        lines.append(f"{i // per_line + 1:03d}  {groups}  {_crc(chunk)}")
    lines += ["", f"sha256 {sha256(blob).hexdigest()[:16]}", ""]
    return "\n".join(lines)


_LINE = re.compile(r"^\s*(\d{1,4})\s+([A-Za-z2-7\s]+?)\s+([0-9a-fA-F]{6})\s*$")


def read_kit_text(text: str) -> bytes:
    """The binary kit from its printable form; a mistyped line is named."""
    from hashlib import sha256
    if TITLE not in text.upper():
        raise KitCorrupt("this is not a Lifeboat recovery kit (its title line is missing)")
    chunks: list[str] = []
    digest = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.lower().startswith("sha256 "):
            digest = line.split()[1].lower()
            continue
        m = _LINE.match(line)
        if not m:
            continue
        n, body, crc = int(m.group(1)), re.sub(r"\s+", "", m.group(2)).upper(), m.group(3).lower()
        if n != len(chunks) + 1:
            raise KitCorrupt(f"line {len(chunks) + 1:03d} of the kit is missing (found line {n:03d} next)")
        if _crc(body) != crc:
            raise KitCorrupt(f"line {n:03d} of the kit does not match its checksum {crc}")
        chunks.append(body)
    if not chunks or digest is None:
        raise KitCorrupt("the kit has no data lines or no sha256 line")
    b32 = "".join(chunks)
    try:
        blob = base64.b32decode(b32 + "=" * (-len(b32) % 8))
    except binascii.Error:
        raise KitCorrupt("the kit's lines do not decode") from None
    if sha256(blob).hexdigest()[:len(digest)] != digest or len(digest) < 16:
        raise KitCorrupt("the kit's lines do not add up to its sha256 line (a line is missing or changed)")
    return blob


def write_kit(path: Path, blob: bytes, appliance_id: str) -> None:
    """Write the printable kit (0600). An existing file is never overwritten: an old kit may be the only one."""
    if path.exists() or path.is_symlink():
        raise InvalidInput(f"{path} exists; a recovery kit never overwrites a file", field="out",
                           advice="Name a new file (keep the old kit until the new one is stored safely).")
    atomic_write(path, kit_text(blob, appliance_id).encode(), 0o600)


def read_kit(path: Path) -> bytes:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise InvalidInput(f"cannot read the recovery kit {path}: {exc.strerror}", field="kit",
                           advice="Name the kit file saved at setup (`lifeboat appliance export-kit`).") from None
    return read_kit_text(text)
