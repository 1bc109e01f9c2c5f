"""Unit tests of the fault-injecting proxy (tests/faultproxy.py) against small local servers."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from tests.faultproxy import FaultProxy


class EchoServer:
    """Echoes everything back; on EOF from the client it finishes echoing and closes (half-close aware)."""

    def __init__(self) -> None:
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.connections = 0
        self.received = 0
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        t = asyncio.current_task()
        assert t is not None
        self._tasks.add(t)
        self.connections += 1
        try:
            while data := await r.read(65536):
                self.received += len(data)
                w.write(data)
                await w.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            w.close()
            self._tasks.discard(t)

    async def stop(self) -> None:
        assert self.server
        self.server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.wait_closed()


class Firehose:
    """Sends as fast as the connection takes it; counts what the kernel accepted."""

    def __init__(self) -> None:
        self.sent = 0
        self.server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        t = asyncio.current_task()
        assert t is not None
        self._tasks.add(t)
        block = os.urandom(256 * 1024)
        try:
            while True:
                w.write(block)
                await w.drain()
                self.sent += len(block)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            w.close()
            self._tasks.discard(t)

    async def stop(self) -> None:
        assert self.server
        self.server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.server.wait_closed()


@pytest.fixture
async def echo():
    srv = EchoServer()
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def proxy(echo: EchoServer):
    p = FaultProxy("127.0.0.1", echo.port, seed=7)
    await p.start()
    yield p
    await p.stop()


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _roundtrip(r: asyncio.StreamReader, w: asyncio.StreamWriter, data: bytes, timeout: float = 5) -> bytes:
    w.write(data)
    await w.drain()
    return await asyncio.wait_for(r.readexactly(len(data)), timeout)


async def _closed_by_peer(r: asyncio.StreamReader, timeout: float = 2) -> bool:
    """True when the connection is closed or reset by the other end within ``timeout``."""
    try:
        return await asyncio.wait_for(r.read(1), timeout) == b""
    except ConnectionError:
        return True


async def test_forwards_both_ways_and_counts(echo: EchoServer, proxy: FaultProxy) -> None:
    r, w = await _connect(proxy.port)
    payload = os.urandom(3 * 1024 * 1024 + 17)
    w.write(payload)
    await w.drain()
    got = await asyncio.wait_for(r.readexactly(len(payload)), 10)
    assert got == payload
    assert proxy.bytes_up == len(payload) and proxy.bytes_down == len(payload)
    assert proxy.stats()["accepted"] == 1 and proxy.active == 1
    w.close()
    await proxy_idle(proxy)
    assert proxy.stats() == {"bytes_up": len(payload), "bytes_down": len(payload), "accepted": 1, "dropped": 0,
                             "cut": 0, "active": 0, "target_failures": 0}


async def proxy_idle(proxy: FaultProxy, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while proxy.active:
        assert time.monotonic() < deadline, "proxy connections did not close"
        await asyncio.sleep(0.01)


async def test_half_close_is_forwarded(echo: EchoServer, proxy: FaultProxy) -> None:
    r, w = await _connect(proxy.port)
    w.write(b"hello")
    w.write_eof()
    assert await asyncio.wait_for(r.read(), 5) == b"hello"   # echo, then EOF from the server through the proxy
    w.close()
    await proxy_idle(proxy)


async def test_delay_applies_to_both_directions(echo: EchoServer, proxy: FaultProxy) -> None:
    r, w = await _connect(proxy.port)
    t0 = time.monotonic()
    await _roundtrip(r, w, b"x")
    fast = time.monotonic() - t0
    proxy.delay(0.2)
    t0 = time.monotonic()
    assert await _roundtrip(r, w, b"ping") == b"ping"
    slow = time.monotonic() - t0
    assert slow >= 0.4 - 0.02, f"round trip {slow:.3f}s with 0.2 s each way"
    assert slow < 2.0
    # latency, not throughput: many chunks in flight together do not add up their delays
    data = os.urandom(1024 * 1024)
    t0 = time.monotonic()
    assert await _roundtrip(r, w, data, timeout=10) == data
    assert time.monotonic() - t0 < 3.0
    proxy.delay(0)
    t0 = time.monotonic()
    await _roundtrip(r, w, b"y")
    assert time.monotonic() - t0 < max(0.2, 10 * fast)
    w.close()


async def test_bandwidth_limit(echo: EchoServer, proxy: FaultProxy) -> None:
    r, w = await _connect(proxy.port)
    proxy.bandwidth(500_000)
    data = os.urandom(400_000)
    t0 = time.monotonic()
    assert await _roundtrip(r, w, data, timeout=10) == data
    took = time.monotonic() - t0
    # 400 kB each way at 500 kB/s per direction, pipelined: ~0.8 s (never below the one-way time)
    assert 0.7 <= took < 3.0, took
    proxy.bandwidth(None)
    t0 = time.monotonic()
    assert await _roundtrip(r, w, data, timeout=10) == data
    assert time.monotonic() - t0 < 0.5
    with pytest.raises(ValueError):
        proxy.bandwidth(0)
    w.close()


async def test_drop_closes_new_connections(echo: EchoServer, proxy: FaultProxy) -> None:
    r0, w0 = await _connect(proxy.port)          # open before drop(): unaffected
    proxy.drop(1.0)
    for _ in range(3):
        r, w = await _connect(proxy.port)
        assert await _closed_by_peer(r)
        w.close()
    assert proxy.dropped == 3
    assert await _roundtrip(r0, w0, b"still here") == b"still here"
    proxy.drop(0.5)
    outcomes = []
    for _ in range(40):
        r, w = await _connect(proxy.port)
        try:
            outcomes.append(await _roundtrip(r, w, b"?", timeout=2) == b"?")
        except (ConnectionError, asyncio.IncompleteReadError):
            outcomes.append(False)
        w.close()
    assert 5 < sum(outcomes) < 35, outcomes
    assert proxy.dropped == 3 + outcomes.count(False)
    proxy.drop(0)
    r, w = await _connect(proxy.port)
    assert await _roundtrip(r, w, b"ok") == b"ok"
    with pytest.raises(ValueError):
        proxy.drop(1.5)
    w.close()
    w0.close()


async def test_cut_resets_open_connections(echo: EchoServer, proxy: FaultProxy) -> None:
    conns = [await _connect(proxy.port) for _ in range(3)]
    for r, w in conns:
        assert await _roundtrip(r, w, b"a") == b"a"
    assert proxy.cut() == 3
    for r, w in conns:
        assert await _closed_by_peer(r)
        w.close()
    await proxy_idle(proxy)
    assert proxy.cut_count == 3
    r, w = await _connect(proxy.port)          # the proxy itself keeps working
    assert await _roundtrip(r, w, b"b") == b"b"
    w.close()
    assert echo.connections == 4


async def test_stall_until_resume_keeps_connections_open(echo: EchoServer, proxy: FaultProxy) -> None:
    r, w = await _connect(proxy.port)
    assert await _roundtrip(r, w, b"1") == b"1"
    proxy.stall(None)
    assert proxy.stalled
    w.write(b"2")
    await w.drain()
    pending = asyncio.ensure_future(r.readexactly(1))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(pending), 0.5)
    assert echo.received == 1 and proxy.active == 1
    r2, w2 = await _connect(proxy.port)         # a new connection is silent too
    w2.write(b"3")
    await asyncio.sleep(0.3)
    assert echo.received == 1
    proxy.resume()
    assert await asyncio.wait_for(pending, 5) == b"2"
    assert await asyncio.wait_for(r2.readexactly(1), 5) == b"3"
    w.close()
    w2.close()


async def test_timed_stall_ends_by_itself(echo: EchoServer, proxy: FaultProxy) -> None:
    r, w = await _connect(proxy.port)
    proxy.stall(0.4)
    t0 = time.monotonic()
    assert await _roundtrip(r, w, b"late") == b"late"
    assert 0.35 <= time.monotonic() - t0 < 3
    assert not proxy.stalled
    w.close()


async def test_stall_existing_only_is_a_half_dead_link(echo: EchoServer, proxy: FaultProxy) -> None:
    r, w = await _connect(proxy.port)
    assert await _roundtrip(r, w, b"1") == b"1"
    proxy.stall(None, existing_only=True)
    w.write(b"2")
    await asyncio.sleep(0.3)
    assert echo.received == 1
    r2, w2 = await _connect(proxy.port)          # new connections work
    assert await _roundtrip(r2, w2, b"new") == b"new"
    proxy.resume()
    assert await asyncio.wait_for(r.readexactly(1), 5) == b"2"
    w.close()
    w2.close()


async def test_stall_applies_backpressure_not_buffering() -> None:
    """A receiver that does not read (or a stalled link) must stop the sender: the proxy buffers a bounded amount."""
    hose = Firehose()
    port = await hose.start()
    proxy = FaultProxy("127.0.0.1", port, queue_chunks=4)
    await proxy.start()
    try:
        r, w = await _connect(proxy.port)        # never reads
        await asyncio.sleep(1.0)
        first = hose.sent
        await asyncio.sleep(0.5)
        assert hose.sent == first, "the sender was never pushed back"
        held = hose.sent - proxy.bytes_down
        assert held < 32 * 1024 * 1024, f"{held} bytes held between sender and receiver"
        # a stalled link pushes back the same way, and data flows again afterwards
        proxy.stall(None)
        await r.readexactly(1024 * 1024)         # drain what was already forwarded
        await asyncio.sleep(0.2)                 # a chunk taken just before the stall may still land
        before = proxy.bytes_down
        await asyncio.sleep(0.3)
        assert proxy.bytes_down == before
        proxy.resume()
        await asyncio.wait_for(r.readexactly(16 * 1024 * 1024), 10)
        w.close()
    finally:
        await proxy.stop()
        await hose.stop()


async def test_down_refuses_and_up_listens_again(echo: EchoServer, proxy: FaultProxy) -> None:
    r, w = await _connect(proxy.port)
    assert await _roundtrip(r, w, b"a") == b"a"
    port = proxy.port
    await proxy.down()
    assert proxy.is_down
    assert await _closed_by_peer(r)
    w.close()
    with pytest.raises(ConnectionRefusedError):
        await _connect(port)
    assert proxy.cut_count == 1
    await proxy.up()
    assert proxy.port == port
    r, w = await _connect(port)
    assert await _roundtrip(r, w, b"b") == b"b"
    w.close()


async def test_unreachable_target_closes_client() -> None:
    from tests.conftest import free_port
    proxy = FaultProxy("127.0.0.1", free_port())
    await proxy.start()
    try:
        r, w = await _connect(proxy.port)
        assert await _closed_by_peer(r)
        w.close()
        assert proxy.target_failures == 1
    finally:
        await proxy.stop()


async def test_stop_is_clean_with_traffic_and_stalls(echo: EchoServer) -> None:
    proxy = FaultProxy("127.0.0.1", echo.port)
    await proxy.start()
    conns = [await _connect(proxy.port) for _ in range(4)]
    for r, w in conns:
        w.write(os.urandom(200_000))
    proxy.delay(5)
    proxy.stall(None, existing_only=True)
    tasks_before = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    t0 = time.monotonic()
    await proxy.stop()
    assert time.monotonic() - t0 < 2
    assert proxy.active == 0
    for r, w in conns:
        assert await _closed_by_peer(r)
        w.close()
    with pytest.raises(ConnectionRefusedError):
        await _connect(proxy.port)
    await asyncio.sleep(0)
    leftover = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()} - tasks_before
    leftover |= {t for t in tasks_before if not t.done() and "FaultProxy" in repr(t.get_coro())}
    assert not leftover, leftover
