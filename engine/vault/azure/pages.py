"""Turning a batch of records into page-blob writes: 512-byte aligned, at most 4 MiB each, never overlapping.

A batch's records are first laid into an :class:`ExtentMap` (newest wins), so what reaches the page blob is the
batch's net effect. Zeroed and trimmed ranges become Clear Pages for the whole pages inside them; the bytes of a
range that start or end inside a page are written with that page's other bytes, read from the page blob first
(read-modify-write). Because the resulting operations never touch the same page twice, they may run in parallel,
and because each writes absolute content, applying a batch again after a crash gives the same page blob.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..replica import ExtentMap
from .rest import MAX_PUT_PAGE, PAGE

ZERO = "zero"


@dataclass(slots=True)
class Op:
    kind: str            # "put" or "clear"
    offset: int
    length: int
    data: bytes | bytearray | memoryview | None = None


def down(x: int) -> int:
    return x - x % PAGE


def up(x: int) -> int:
    return -(-x // PAGE) * PAGE


def plan(emap: ExtentMap, read: Callable[[int, int], bytes], max_put: int = MAX_PUT_PAGE) -> list[Op]:
    """Operations for the extents of ``emap`` (sources: ``bytes``-like data aligned with the extent's start,
    as ``(buffer, start)`` pairs, or ``ZERO``). ``read(offset, length)`` returns the page blob's current bytes of
    whole pages (for partial pages only)."""
    ops: list[Op] = []
    pieces: list[tuple[int, int, object]] = []   # (a, b, (buf, start) | ZERO), ZERO pieces here are sub-page
    for a, b, src in emap.items():
        if src == ZERO:
            za, zb = up(a), down(b)
            if za < zb:
                ops.extend(Op("clear", o, min(zb - o, 1 << 30)) for o in range(za, zb, 1 << 30))
                if a < za:
                    pieces.append((a, za, ZERO))
                if zb < b:
                    pieces.append((zb, b, ZERO))
            else:
                pieces.append((a, b, ZERO))
        else:
            pieces.append((a, b, src))
    pieces.sort(key=lambda p: p[0])
    run: list[tuple[int, int, object]] = []
    for p in pieces:
        if run and down(p[0]) >= up(run[-1][1]):
            ops.extend(_run_ops(run, read, max_put))
            run = []
        run.append(p)
    if run:
        ops.extend(_run_ops(run, read, max_put))
    return ops


def _run_ops(run: list[tuple[int, int, object]], read: Callable[[int, int], bytes], max_put: int) -> list[Op]:
    lo, hi = down(run[0][0]), up(run[-1][1])
    buf = bytearray(hi - lo)
    # the bytes of partial pages no piece covers come from the page blob as it is
    covered = lo
    gaps: list[tuple[int, int]] = []
    for a, b, _src in run:
        if a > covered:
            gaps.append((covered, a))
        covered = max(covered, b)
    if covered < hi:
        gaps.append((covered, hi))
    for ga, gb in gaps:
        pa, pb = down(ga), up(gb)
        old = read(pa, pb - pa)
        buf[ga - lo:gb - lo] = old[ga - pa:gb - pa]
    for a, b, src in run:
        if src == ZERO:
            buf[a - lo:b - lo] = bytes(b - a)
        else:
            data: Any = src[0]  # type: ignore[index]
            start: int = src[1]  # type: ignore[index]
            buf[a - lo:b - lo] = memoryview(data)[a - start:b - start]
    mv = memoryview(buf)
    return [Op("put", lo + o, min(max_put, len(buf) - o), mv[o:o + max_put]) for o in range(0, len(buf), max_put)]
