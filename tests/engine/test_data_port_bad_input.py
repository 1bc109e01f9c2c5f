"""Bad input on the process server's data port: each malformed frame or batch is refused with an ERROR frame,
changes nothing, and the role keeps serving the next connection."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine import pki
from engine.home import AgentHome
from engine.records import Kind, Record
from engine.wire import BATCH_HEAD, HEAD, MAGIC, Frame, frame_header, parse_json, read_frame, write_json
from tests.engine.harness import Site

DISKS = [{"index": 0, "name": "d0", "size": 1 << 20}]


async def _session(site: Site) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, dict]:
    h = AgentHome(site.agent_home)
    ctx = pki.client_context(h.ca_cert, h.cert, h.key)
    r, w = await asyncio.open_connection("127.0.0.1", site.app.data_address[1], ssl=ctx)
    write_json(w, Frame.HELLO, {"machine": "vm1", "disks": DISKS})
    kind, body = await read_frame(r)
    assert kind == Frame.WELCOME
    return r, w, parse_json(body)


def _batch(*recs: Record) -> bytes:
    body = BATCH_HEAD.pack(recs[-1].seq) + b"".join(r.encode() for r in recs)
    return frame_header(Frame.BATCH, len(body)) + body


async def _expect_error(r: asyncio.StreamReader) -> str:
    kind, body = await asyncio.wait_for(read_frame(r), 10)
    assert kind == Frame.ERROR, kind
    err = parse_json(body)
    assert err["code"] and err["message"] and err["advice"]
    return err["code"]


@pytest.mark.parametrize("case", ["bad-magic", "oversized", "beyond-disk", "unknown-disk", "out-of-order",
                                  "hash-mismatch", "bad-version", "unknown-frame", "not-json"])
async def test_bad_frames_are_refused_without_state_change(tmp_path: Path, case: str) -> None:
    site = Site(tmp_path)
    app = await site.start_appliance()
    try:
        await site.register("vm1")
        await app.protect("vm1")
        r, w, _ = await _session(site)
        rt = app.runtimes["vm1"]
        before = (rt.cache.last_seq, rt.cache.bytes)
        good = Record(Kind.WRITE, 0, 10, 1, 0, 4, b"abcd")
        if case == "bad-magic":
            w.write(b"XXXX" + bytes(8))
        elif case == "oversized":
            w.write(HEAD.pack(MAGIC, 1, Frame.BATCH, 0, 0xFFFFFFF0))
        elif case == "beyond-disk":
            w.write(_batch(good, Record(Kind.WRITE, 0, 11, 1, (1 << 20) - 2, 4, b"wxyz")))
        elif case == "unknown-disk":
            w.write(_batch(Record(Kind.ZERO, 7, 10, 1, 0, 4096)))
        elif case == "out-of-order":
            w.write(_batch(Record(Kind.WRITE, 0, 12, 1, 0, 4, b"abcd"), Record(Kind.WRITE, 0, 11, 1, 0, 4, b"abcd")))
        elif case == "hash-mismatch":
            rec = Record(Kind.WRITE, 0, 10, 1, 0, 4, b"abcd")
            raw = bytearray(_batch(rec))
            raw[-1] ^= 0x01   # one flipped bit in the payload after the source hashed it
            w.write(bytes(raw))
        elif case == "bad-version":
            w.write(HEAD.pack(MAGIC, 9, Frame.BATCH, 0, 0))
        elif case == "unknown-frame":
            w.write(HEAD.pack(MAGIC, 1, 99, 0, 0))
        elif case == "not-json":
            w.write(frame_header(Frame.HEARTBEAT, 3) + b"{{{")
        await w.drain()
        code = await _expect_error(r)
        assert code.startswith("LB_")
        w.close()
        assert (rt.cache.last_seq, rt.cache.bytes) == before, "a refused batch changed the cache"
        # The role still serves: a good batch from a new connection is acknowledged and durable.
        r, w, _ = await _session(site)
        w.write(_batch(good))
        await w.drain()
        kind, body = await read_frame(r)
        assert kind == Frame.ACK and parse_json(body)["last_seq"] == 10
        w.close()
        assert rt.cache.last_seq == 10
    finally:
        await site.stop()


async def test_unregistered_and_truncated(tmp_path: Path) -> None:
    site = Site(tmp_path)
    app = await site.start_appliance()
    try:
        await site.register("vm1")
        r, w, _ = await _session(site)
        w.write(HEAD.pack(MAGIC, 1, Frame.BATCH, 0, 100) + b"short")
        w.close()   # peer vanishes mid-frame: nothing to refuse, nothing changes
        await asyncio.sleep(0.2)
        r, w, _ = await _session(site)
        write_json(w, Frame.HEARTBEAT, {"oldest_pending_ns": 0})
        await w.drain()
        w.close()
        assert app.machine_row("vm1")["protected"] == 0
    finally:
        await site.stop()
