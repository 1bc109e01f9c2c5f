"""What every vault backend checks of a record handed to ``MachineVault.append``, before anything is written."""

from __future__ import annotations

from ..errors import InvalidInput
from ..records import MAX_PAYLOAD, Kind
from .base import SealedRecord
from .journal import check_envelope
from .local_view import DATA_KINDS, ZERO_KINDS

RANGE_KINDS = DATA_KINDS + ZERO_KINDS


def check_record(sr: SealedRecord, prev: int, sizes: dict[int, int], grows: dict[int, int], key_id: int, *,
                 plain: bool = False) -> bytes:
    """Check one record of an append and return its packed header; raise InvalidInput naming what is wrong.

    Its seq follows ``prev``; its kind is known; a range lies inside its disk (``sizes``: disk index → size, where a
    RESIZE that grows a disk is recorded, in ``grows`` too, for the records after it); a payload is bounded, has its
    hash and comes in an envelope of this vault's key (``key_id``) -- or, with ``plain`` (a vault that ``takes_plain``),
    as plaintext of the header's length in ``extra["data"]``, sealed later by the vault; a record without payload
    carries no envelope."""
    r = sr.header
    where = f"record seq={r.seq} disk={r.disk}"
    if r.seq <= prev:
        raise InvalidInput(f"{where}: records must come in increasing seq order")
    try:
        kind = Kind(r.kind)
    except ValueError:
        raise InvalidInput(f"{where}: unknown kind {r.kind}") from None
    if kind in RANGE_KINDS or kind is Kind.RESIZE:
        if r.disk not in sizes:
            raise InvalidInput(f"{where}: disk {r.disk} is unknown (call ensure_disks first)")
        if kind in RANGE_KINDS and (r.offset < 0 or r.length < 0 or r.offset + r.length > sizes[r.disk]):
            raise InvalidInput(f"{where}: range [{r.offset}, +{r.length}) is beyond the disk's {sizes[r.disk]} bytes")
        if kind is Kind.RESIZE and r.length > sizes[r.disk]:
            sizes[r.disk] = grows[r.disk] = r.length
    if kind.has_payload:
        if r.length > MAX_PAYLOAD or r.hash == 0:
            raise InvalidInput(f"{where}: payload too large or its hash is missing")
        data = sr.extra.get("data") if plain and sr.extra and not sr.envelope else None
        if data is not None:
            if len(data) != r.length:
                raise InvalidInput(f"{where}: the plaintext's length does not match the header")
        else:
            bad = check_envelope(sr.envelope, key_id)
            if bad:
                raise InvalidInput(f"{where}: {bad}")
    elif sr.envelope:
        raise InvalidInput(f"{where}: a {kind.name} record carries no payload")
    try:
        return r.pack_header()
    except Exception:   # struct.error, or a field of the wrong type
        raise InvalidInput(f"{where}: a header field is out of range") from None
