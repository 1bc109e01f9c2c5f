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

from ..base import Point
from ..replica import ExtentMap
from .rest import MAX_PUT_PAGE, PAGE

ZERO = "zero"


@dataclass(slots=True)
class Snap:
    """A snapshot of one disk's page blob: where views and points start (``lbseq`` in its metadata)."""
    seq: int
    snapshot: str            # the service's snapshot id (a timestamp)
    size: int
    point: Point | None      # None for the base and sync snapshots
    kind: str = "base"       # "base" (the empty disk), "sync" (the end of a direct run) or the point's kind


@dataclass(slots=True)
class Op:
    kind: str            # "put" or "clear"
    offset: int
    length: int
    data: bytes | bytearray | memoryview | list[memoryview] | None = None   # a list: sent one after the other


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
    if len(run) == 1 and run[0][2] != ZERO and run[0][0] == lo and run[0][1] == hi:
        # one whole-page piece (initial replication's 1 MiB records): write from its buffer, without a copy
        data: Any = run[0][2][0]  # type: ignore[index]
        start: int = run[0][2][1]  # type: ignore[index]
        whole = memoryview(data)[lo - start:hi - start]
        return [Op("put", lo + o, min(max_put, hi - lo - o), whole[o:o + max_put]) for o in range(0, hi - lo, max_put)]
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
            data = src[0]  # type: ignore[index]
            start = src[1]  # type: ignore[index]
            buf[a - lo:b - lo] = memoryview(data)[a - start:b - start]
    mv = memoryview(buf)
    return [Op("put", lo + o, min(max_put, len(buf) - o), mv[o:o + max_put]) for o in range(0, len(buf), max_put)]


def coalesce(ops: list[Op], max_put: int = MAX_PUT_PAGE) -> list[Op]:
    """Adjacent puts joined into requests of up to ``max_put`` bytes whose body is the list of their buffers (sent
    one after the other, never copied): initial replication's 1 MiB records go out as 4 MiB Put Page requests."""
    out: list[Op] = []
    for op in ops:
        prev = out[-1] if out else None
        if op.kind == "put" and prev is not None and prev.kind == "put" and op.data is not None \
                and prev.offset + prev.length == op.offset and prev.length + op.length <= max_put:
            parts = prev.data if isinstance(prev.data, list) else [memoryview(prev.data)]  # type: ignore[arg-type]
            parts.append(op.data if isinstance(op.data, memoryview) else memoryview(op.data))  # type: ignore[arg-type]
            out[-1] = Op("put", prev.offset, prev.length + op.length, parts)
        else:
            out.append(op)
    return out
