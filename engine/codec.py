"""Sealing: compress, then encrypt and authenticate a payload (borg's two layers: compressor table + key).

Envelope layout (little-endian, see docs/FORMATS.md):

=====  ====  ==============================================
off    size  field
=====  ====  ==============================================
0      4     magic ``b"LBE1"``
4      1     envelope version (1)
5      1     compressor id (0 none, 1 zstd)
6      1     cipher id (1 AES-256-GCM)
7      1     reserved, zero
8      4     key id (u32): which vault key sealed it
12     12    GCM nonce (random)
24     4     ciphertext length incl. 16-byte tag (u32)
28     n     ciphertext || tag
=====  ====  ==============================================

The associated data is the caller's context (for records, the 56-byte record header), so an envelope cannot be
moved to another record, disk or offset without failing authentication.
"""

from __future__ import annotations

import os
import struct
import threading

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .buffers import new_buffer
from .errors import IntegrityError, ProtocolError

MAGIC = b"LBE1"
VERSION = 1
HEAD = struct.Struct("<4sBBBxI12sI")
HEAD_SIZE = HEAD.size  # 28
COMP_NONE = 0
COMP_ZSTD = 1
CIPHER_AES256GCM = 1
TAG_SIZE = 16
#: Payloads from this size on are sampled before zstd runs over them (Sealer.compress).
SAMPLE_FROM = 64 * 1024


class Sealer:
    """Thread-safe sealer/opener for one key. zstd and AES-GCM release the GIL, so callers run it in a pool."""

    def __init__(self, key: bytes, key_id: int = 1, level: int = 1) -> None:
        if len(key) != 32:
            raise ValueError("vault key must be 32 bytes")
        self._aead = AESGCM(key)
        self.key_id = key_id
        self.level = level
        self._local = threading.local()

    def _cctx(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = zstandard.ZstdCompressor(level=self.level)
        return c

    def _dctx(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "d", None)
        if d is None:
            d = self._local.d = zstandard.ZstdDecompressor()
        return d

    def compress(self, payload: bytes | memoryview) -> bytes | None:
        """zstd of ``payload``, or None when it would not shrink (stored as is then).

        Large payloads are first sampled: four 4 KiB pieces spread over it are compressed together, and when
        they shrink by less than 3 % the payload is taken as incompressible without compressing it (random or
        already compressed or encrypted data costs a sixteenth of a zstd pass instead of a whole one, like
        btrfs's heuristic). A wrong guess only costs some compression, never a byte of data."""
        n = len(payload)
        if not n:
            return None
        c = self._cctx()
        if n >= SAMPLE_FROM:
            mv = memoryview(payload)
            step = n // 4
            sample = b"".join(mv[i * step:i * step + 4096] for i in range(4))
            if len(c.compress(sample)) >= len(sample) * 0.97:
                return None
        body = c.compress(payload)
        return body if len(body) < n else None

    def seal(self, payload: bytes | memoryview, aad: bytes) -> bytes | bytearray:
        """The envelope of ``payload``, built in one buffer: the ciphertext is encrypted straight after the header,
        and a payload that does not compress is encrypted from where it lies, so neither is copied again."""
        comp = COMP_ZSTD
        body: bytes | memoryview | None = self.compress(payload)
        if body is None:  # incompressible (or empty): store as is
            body, comp = payload, COMP_NONE
        nonce = os.urandom(12)
        ctlen = len(body) + TAG_SIZE
        if not hasattr(self._aead, "encrypt_into"):   # cryptography < 44
            ct = self._aead.encrypt(nonce, bytes(body), aad)
            return HEAD.pack(MAGIC, VERSION, comp, CIPHER_AES256GCM, self.key_id, nonce, len(ct)) + ct
        env = new_buffer(HEAD_SIZE + ctlen)   # every byte is written below: header, ciphertext, tag
        HEAD.pack_into(env, 0, MAGIC, VERSION, comp, CIPHER_AES256GCM, self.key_id, nonce, ctlen)
        self._aead.encrypt_into(nonce, body, aad, memoryview(env)[HEAD_SIZE:])
        return env

    def open(self, env: bytes | memoryview, aad: bytes, *, max_size: int = 64 * 1024 * 1024) -> bytes:
        if len(env) < HEAD_SIZE:
            raise ProtocolError("short envelope")
        magic, ver, comp, cipher, key_id, nonce, ctlen = HEAD.unpack_from(env)
        if magic != MAGIC or ver != VERSION or cipher != CIPHER_AES256GCM:
            raise IntegrityError("bad envelope header")
        if key_id != self.key_id:
            raise IntegrityError(f"envelope sealed with key {key_id}, have {self.key_id}")
        if HEAD_SIZE + ctlen != len(env):
            raise IntegrityError("envelope length mismatch")
        try:
            body = self._aead.decrypt(nonce, bytes(env[HEAD_SIZE:]), aad)
        except InvalidTag:
            raise IntegrityError("envelope failed authentication (data corrupted or tampered)") from None
        if comp == COMP_NONE:
            return body
        if comp == COMP_ZSTD:
            return self._dctx().decompress(body, max_output_size=max_size) if body else b""
        raise IntegrityError(f"unknown compressor id {comp}")
