"""A committed disk as a VHD-ready page blob: the format Azure's managed-disk import takes (docs/FORMATS.md §5.7).

A *fixed* VHD is the raw disk followed by a 512-byte footer. Azure wants the virtual size to be a whole number of
MiB, so the data is rounded up to 1 MiB (the padding reads as zeros: a page blob's unwritten pages are zeros) and the
blob is that size + 512 bytes. Every footer field is big-endian; the checksum is the one's complement of the sum of
the footer's bytes with the checksum field taken as zero.
"""

from __future__ import annotations

import datetime as dt
import struct
import uuid
from dataclasses import dataclass

FOOTER_SIZE = 512
COOKIE = b"conectix"
FEATURES = 0x00000002                 # "reserved" bit, always set
FORMAT_VERSION = 0x00010000
FIXED_DATA_OFFSET = 0xFFFFFFFFFFFFFFFF  # a fixed disk has no dynamic header
#: Readers choose how to size a VHD by its creator: for "win " (Hyper-V) the size is the footer's current size, for
#: Virtual PC-era creators (and unknown ones, in qemu) it is the CHS geometry, which is smaller than a whole-MiB size.
#: The size we mean is the current size, as Hyper-V and Azure read it: say so the way readers understand.
CREATOR_APP = b"win "
CREATOR_VERSION = 0x00010000
CREATOR_HOST_OS = 0x5769326B          # "Wi2k", what Azure's own tools write
DISK_TYPE_FIXED = 2
ALIGN = 1024 * 1024
#: seconds between the Unix epoch and the VHD epoch (2000-01-01 00:00:00 UTC)
VHD_EPOCH = int(dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc).timestamp())

#: cookie, features, version, data offset, timestamp, creator app, creator version, creator host OS,
#: original size, current size, cylinders, heads, sectors per track, disk type, checksum, unique id, saved state
FOOTER = struct.Struct(">8sIIQI4sIIQQHBBII16sB")
CHECKSUM_AT = 64


def vhd_data_size(size: int) -> int:
    """The VHD's virtual size for a disk of ``size`` bytes: rounded up to 1 MiB (at least 1 MiB)."""
    return max(ALIGN, -(-size // ALIGN) * ALIGN)


def geometry(size: int) -> tuple[int, int, int]:
    """(cylinders, heads, sectors per track) of the VHD specification's CHS algorithm for ``size`` bytes."""
    total = min(size // 512, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = total // spt
    else:
        spt = 17
        cth = total // spt
        heads = max(4, (cth + 1023) // 1024)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = total // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = total // spt
    return cth // heads, heads, spt


def checksum(footer: bytes | bytearray) -> int:
    """One's complement of the byte sum, the checksum field (bytes 64..67) counted as zero."""
    total = sum(footer[:CHECKSUM_AT]) + sum(footer[CHECKSUM_AT + 4:FOOTER_SIZE])
    return ~total & 0xFFFFFFFF


def footer(size: int, *, unique_id: bytes | None = None, when: float | None = None) -> bytes:
    """The 512-byte footer of a fixed VHD whose virtual size is ``size`` (a multiple of 1 MiB)."""
    if size <= 0 or size % ALIGN:
        raise ValueError(f"a VHD's size must be a positive multiple of 1 MiB, got {size}")
    c, h, s = geometry(size)
    ts = int((when if when is not None else dt.datetime.now(dt.timezone.utc).timestamp()) - VHD_EPOCH)
    uid = unique_id if unique_id is not None else uuid.uuid4().bytes
    body = bytearray(FOOTER_SIZE)
    FOOTER.pack_into(body, 0, COOKIE, FEATURES, FORMAT_VERSION, FIXED_DATA_OFFSET, max(0, ts) & 0xFFFFFFFF,
                     CREATOR_APP, CREATOR_VERSION, CREATOR_HOST_OS, size, size, c, h, s, DISK_TYPE_FIXED, 0, uid, 0)
    struct.pack_into(">I", body, CHECKSUM_AT, checksum(body))
    return bytes(body)


@dataclass(frozen=True, slots=True)
class Footer:
    cookie: bytes
    features: int
    format_version: int
    data_offset: int
    timestamp: int
    creator_app: bytes
    creator_version: int
    creator_host_os: int
    original_size: int
    current_size: int
    cylinders: int
    heads: int
    sectors_per_track: int
    disk_type: int
    checksum: int
    unique_id: bytes
    saved_state: int
    reserved_zero: bool


def parse_footer(data: bytes | bytearray) -> Footer:
    """Every field of a footer (no check: the caller compares)."""
    if len(data) != FOOTER_SIZE:
        raise ValueError(f"a VHD footer is {FOOTER_SIZE} bytes, got {len(data)}")
    (cookie, features, version, offset, ts, app, app_version, host_os, original, current, cylinders, heads, spt,
     disk_type, check, uid, saved) = FOOTER.unpack_from(data)
    return Footer(cookie, features, version, offset, ts, app, app_version, host_os, original, current, cylinders,
                  heads, spt, disk_type, check, uid, saved, reserved_zero=not any(data[FOOTER.size:]))
