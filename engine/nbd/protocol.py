"""NBD wire-protocol constants and struct layouts (fixed newstyle handshake, simple replies).

Everything here is big-endian ("network byte order") as the NBD specification
(github.com/NetworkBlockDevice/nbd, ``doc/proto.md``) requires. Only what Lifeboat's server speaks is defined,
plus the handful of option/command numbers it must recognise in order to refuse them properly.
"""

from __future__ import annotations

import errno
import struct
from typing import Final

# --- Handshake -------------------------------------------------------------------------------------------------

NBDMAGIC: Final = 0x4E42444D41474943        # "NBDMAGIC"
IHAVEOPT: Final = 0x49484156454F5054        # "IHAVEOPT": newstyle magic, also prefixes every client option
REPLY_MAGIC: Final = 0x3E889045565A9        # option-reply magic

# Server handshake flags (16 bits)
FLAG_FIXED_NEWSTYLE: Final = 1 << 0
FLAG_NO_ZEROES: Final = 1 << 1

# Client flags (32 bits)
FLAG_C_FIXED_NEWSTYLE: Final = 1 << 0
FLAG_C_NO_ZEROES: Final = 1 << 1
CLIENT_FLAGS_KNOWN: Final = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES

# Options
OPT_EXPORT_NAME: Final = 1
OPT_ABORT: Final = 2
OPT_LIST: Final = 3
OPT_PEEK_EXPORT: Final = 4
OPT_STARTTLS: Final = 5
OPT_INFO: Final = 6
OPT_GO: Final = 7
OPT_STRUCTURED_REPLY: Final = 8
OPT_LIST_META_CONTEXT: Final = 9
OPT_SET_META_CONTEXT: Final = 10
OPT_EXTENDED_HEADERS: Final = 11

# Option reply types
REP_ACK: Final = 1
REP_SERVER: Final = 2
REP_INFO: Final = 3
REP_META_CONTEXT: Final = 4
_REP_ERR: Final = 1 << 31
REP_ERR_UNSUP: Final = _REP_ERR + 1
REP_ERR_POLICY: Final = _REP_ERR + 2
REP_ERR_INVALID: Final = _REP_ERR + 3
REP_ERR_PLATFORM: Final = _REP_ERR + 4
REP_ERR_TLS_REQD: Final = _REP_ERR + 5
REP_ERR_UNKNOWN: Final = _REP_ERR + 6
REP_ERR_SHUTDOWN: Final = _REP_ERR + 7
REP_ERR_BLOCK_SIZE_REQD: Final = _REP_ERR + 8
REP_ERR_TOO_BIG: Final = _REP_ERR + 9

# NBD_REP_INFO information types
INFO_EXPORT: Final = 0
INFO_NAME: Final = 1
INFO_DESCRIPTION: Final = 2
INFO_BLOCK_SIZE: Final = 3

# Transmission flags (16 bits)
FLAG_HAS_FLAGS: Final = 1 << 0
FLAG_READ_ONLY: Final = 1 << 1
FLAG_SEND_FLUSH: Final = 1 << 2
FLAG_SEND_FUA: Final = 1 << 3
FLAG_ROTATIONAL: Final = 1 << 4
FLAG_SEND_TRIM: Final = 1 << 5
FLAG_SEND_WRITE_ZEROES: Final = 1 << 6
FLAG_SEND_DF: Final = 1 << 7
FLAG_CAN_MULTI_CONN: Final = 1 << 8
FLAG_SEND_RESIZE: Final = 1 << 9
FLAG_SEND_CACHE: Final = 1 << 10
FLAG_SEND_FAST_ZERO: Final = 1 << 11

# --- Transmission ----------------------------------------------------------------------------------------------

REQUEST_MAGIC: Final = 0x25609513
SIMPLE_REPLY_MAGIC: Final = 0x67446698

CMD_READ: Final = 0
CMD_WRITE: Final = 1
CMD_DISC: Final = 2
CMD_FLUSH: Final = 3
CMD_TRIM: Final = 4
CMD_CACHE: Final = 5
CMD_WRITE_ZEROES: Final = 6
CMD_BLOCK_STATUS: Final = 7
CMD_RESIZE: Final = 8

CMD_NAMES: Final = {CMD_READ: "READ", CMD_WRITE: "WRITE", CMD_DISC: "DISC", CMD_FLUSH: "FLUSH", CMD_TRIM: "TRIM",
                    CMD_CACHE: "CACHE", CMD_WRITE_ZEROES: "WRITE_ZEROES", CMD_BLOCK_STATUS: "BLOCK_STATUS",
                    CMD_RESIZE: "RESIZE"}

# Command flags (16 bits)
CMD_FLAG_FUA: Final = 1 << 0
CMD_FLAG_NO_HOLE: Final = 1 << 1
CMD_FLAG_DF: Final = 1 << 2
CMD_FLAG_REQ_ONE: Final = 1 << 3
CMD_FLAG_FAST_ZERO: Final = 1 << 4
CMD_FLAG_PAYLOAD_LEN: Final = 1 << 5

# Error values allowed on the wire. They happen to equal Linux errno numbers, but the spec fixes the numbers, so
# they are spelt out rather than taken from the host's errno module.
NBD_EPERM: Final = 1
NBD_EIO: Final = 5
NBD_ENOMEM: Final = 12
NBD_EINVAL: Final = 22
NBD_ENOSPC: Final = 28
NBD_EOVERFLOW: Final = 75
NBD_ENOTSUP: Final = 95
NBD_ESHUTDOWN: Final = 108

# Host errno -> NBD error. Anything not listed becomes EIO. EDQUOT/EFBIG -> ENOSPC is what the spec asks for.
_ERRNO_TO_NBD: Final[dict[int, int]] = {
    errno.EPERM: NBD_EPERM, errno.EACCES: NBD_EPERM, errno.EROFS: NBD_EPERM,
    errno.EIO: NBD_EIO,
    errno.ENOMEM: NBD_ENOMEM,
    errno.EINVAL: NBD_EINVAL,
    errno.ENOSPC: NBD_ENOSPC, errno.EDQUOT: NBD_ENOSPC, errno.EFBIG: NBD_ENOSPC,
    errno.EOVERFLOW: NBD_EOVERFLOW,
    errno.ENOTSUP: NBD_ENOTSUP, errno.EOPNOTSUPP: NBD_ENOTSUP,
    errno.ESHUTDOWN: NBD_ESHUTDOWN,
}


def nbd_errno(host_errno: int | None) -> int:
    """Map a host ``errno`` value to one of the error values the NBD spec allows (default EIO)."""
    if host_errno is None:
        return NBD_EIO
    return _ERRNO_TO_NBD.get(host_errno, NBD_EIO)


# --- Struct layouts --------------------------------------------------------------------------------------------

#: S: NBDMAGIC, IHAVEOPT, handshake flags
HANDSHAKE: Final = struct.Struct(">QQH")
#: C: client flags
CLIENT_FLAGS: Final = struct.Struct(">I")
#: C: IHAVEOPT, option, data length
OPTION_HEADER: Final = struct.Struct(">QII")
#: S: reply magic, option, reply type, data length
OPTION_REPLY: Final = struct.Struct(">QIII")
#: S (after NBD_OPT_EXPORT_NAME): export size, transmission flags (then 124 zero bytes unless NO_ZEROES)
EXPORT_NAME_REPLY: Final = struct.Struct(">QH")
EXPORT_NAME_PAD: Final = bytes(124)
#: NBD_REP_INFO payload for NBD_INFO_EXPORT: type, size, transmission flags
INFO_EXPORT_PAYLOAD: Final = struct.Struct(">HQH")
#: NBD_REP_INFO payload for NBD_INFO_BLOCK_SIZE: type, minimum, preferred, maximum
INFO_BLOCK_SIZE_PAYLOAD: Final = struct.Struct(">HIII")
#: C: request magic, command flags, type, handle, offset, length (28 bytes)
REQUEST: Final = struct.Struct(">IHHQQI")
#: S: simple reply magic, error, handle (16 bytes)
SIMPLE_REPLY: Final = struct.Struct(">IIQ")

#: Longest string (export name, error message) the spec allows.
MAX_STRING: Final = 4096
