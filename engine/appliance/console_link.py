"""Consoles attached to a running appliance (docs/CONTRACT.md §7): the control API's side of the console link.

An attached console calls the same console API it would call in-process (``engine.api.EmbeddedAppliance``'s
methods), through three admin-only routes:

- ``POST /v1/console/call`` ``{"method", "args", "kwargs"}``: runs one public method of the target on the
  appliance's loop; the result (typed views) comes back in ``engine/rpc_codec.py``'s JSON, errors in the API's
  error shape;
- ``GET /v1/console/events``: the event bus as newline-delimited JSON, one event a line, and a heartbeat line every
  few seconds (the console notices a dead link by their absence). A console that cannot keep up (its queue full)
  is disconnected; it reconnects and reads the state afresh;
- ``POST /v1/console/stop`` ``{"reason"}``: stops the appliance (the service core drains), when the entry point that
  runs it allows that (``on_stop``); refused otherwise.

The target and its types are set by the entry point (``engine/service/core.py``) once the appliance runs, so this
part never imports the console API: ``engine.api`` sits above the composition root.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from typing import Any, Callable, Mapping

from aiohttp import web

from .. import rpc_codec
from ..errors import Conflict, InvalidInput, NotReady
from ..events import Event, EventBus
from .control_http import AdminCheck, read_json
from .request_body import json_response

log = logging.getLogger(__name__)

__all__ = ["ConsoleLink", "HEARTBEAT_SECONDS", "QUEUE_EVENTS"]

HEARTBEAT_SECONDS = 5.0
QUEUE_EVENTS = 20000
#: methods of the target never callable over the link (its lifecycle belongs to the entry point)
NOT_CALLABLE = frozenset({"start", "stop", "subscribe"})


class ConsoleLink:
    def __init__(self, bus: EventBus, require_admin: AdminCheck) -> None:
        self.bus = bus
        self.require_admin = require_admin
        self.target: Any = None
        self.types: Mapping[str, type] = {}
        self.on_stop: Callable[[str], None] | None = None
        self.streams = 0
        self.started = time.time()
        self._stream_tasks: set[asyncio.Task[Any]] = set()
        self.closing = False

    async def close(self) -> None:
        """End every event stream (the appliance is stopping: the control API's own stop waits for open requests,
        and a stream never ends by itself). Consoles see their link drop and retry."""
        self.closing = True
        for t in list(self._stream_tasks):
            t.cancel()
        if self._stream_tasks:
            await asyncio.wait(list(self._stream_tasks), timeout=5)

    def bind(self, target: Any, types: Mapping[str, type], *, on_stop: Callable[[str], None] | None = None) -> None:
        """Serve ``target``'s public methods; ``types``: the classes calls may carry; ``on_stop``: how to stop."""
        self.target, self.types, self.on_stop = target, dict(types), on_stop

    def methods(self) -> dict[str, str]:
        """What a console may call: name → ``async`` | ``sync`` (a method) | ``property`` (read its value)."""
        if self.target is None:
            return {}
        out = {}
        cls = type(self.target)
        for name in dir(cls):
            fn = inspect.getattr_static(cls, name)
            if name.startswith("_") or name in NOT_CALLABLE or isinstance(fn, (type, staticmethod, classmethod)):
                continue
            if isinstance(fn, property):
                out[name] = "property"
            elif callable(fn):
                out[name] = "async" if inspect.iscoroutinefunction(fn) else "sync"
        return out

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/console/hello", self._hello), web.post("/v1/console/call", self._call),
                web.get("/v1/console/events", self._events), web.post("/v1/console/stop", self._stop)]

    async def _hello(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        return json_response({"consoles": self.streams, "can_stop": self.on_stop is not None,
                              "served": self.target is not None, "since": self.started, "methods": self.methods()})

    async def _call(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        b = await read_json(request)
        if self.target is None:
            raise NotReady("this appliance does not serve consoles (it runs embedded in another program)",
                           advice="Attach to an appliance started with `lifeboat appliance run` or as a service.")
        name = b.text("method", required=True) or ""
        methods = self.methods()
        if name not in methods:
            raise InvalidInput(f"{name[:64]!r} is not a console call", field="method")
        args, kwargs = b.data.get("args") or [], b.data.get("kwargs") or {}
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise InvalidInput("args must be a list and kwargs an object", field="args")
        try:
            args, kwargs = rpc_codec.decode(args, self.types), rpc_codec.decode(kwargs, self.types)
        except rpc_codec.CodecError as exc:
            raise InvalidInput(f"{name}: {exc}", field="args") from None
        kind = methods[name]
        try:
            if kind == "property":
                result = getattr(self.target, name)
            elif kind == "async":
                result = await getattr(self.target, name)(*args, **kwargs)
            else:
                result = getattr(self.target, name)(*args, **kwargs)
        except TypeError as exc:
            if "argument" in str(exc):   # a wrong call (a console of another version), not a fault in the engine
                raise InvalidInput(f"{name}: {exc}", field="args") from None
            raise
        return web.Response(text=json.dumps({"result": rpc_codec.encode(result)}, allow_nan=False),
                            content_type="application/json")

    async def _events(self, request: web.Request) -> web.StreamResponse:
        self.require_admin(request)
        if self.closing:
            raise NotReady("the appliance is stopping")
        queue: asyncio.Queue[Event | None] = asyncio.Queue(QUEUE_EVENTS)

        def deliver(ev: Event) -> None:
            try:
                queue.put_nowait(ev)
            except asyncio.QueueFull:    # a console that cannot keep up: it reconnects and reads afresh
                queue._queue.clear()  # type: ignore[attr-defined]
                queue.put_nowait(None)

        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-store"})
        await resp.prepare(request)
        unsubscribe = self.bus.subscribe(deliver)
        self.streams += 1
        task = asyncio.current_task()
        if task is not None:
            self._stream_tasks.add(task)
        try:
            await resp.write(json.dumps({"__type__": "hello", "time": time.time()}).encode() + b"\n")
            while True:
                try:
                    ev = await asyncio.wait_for(queue.get(), HEARTBEAT_SECONDS)
                except TimeoutError:
                    await resp.write(json.dumps({"__type__": "heartbeat", "time": time.time()}).encode() + b"\n")
                    continue
                if ev is None:
                    log.warning("a console fell %d events behind; its stream is closed (it reconnects)",
                                QUEUE_EVENTS)
                    break
                try:
                    line = rpc_codec.dumps(ev)
                except (rpc_codec.CodecError, ValueError):
                    log.exception("event %s cannot be sent to consoles", type(ev).__name__)
                    continue
                await resp.write(line.encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            unsubscribe()
            self.streams -= 1
            if task is not None:
                self._stream_tasks.discard(task)
        return resp

    async def _stop(self, request: web.Request) -> web.Response:
        self.require_admin(request)
        b = await read_json(request)
        if self.on_stop is None:
            raise Conflict("this appliance cannot be stopped from a console (its program did not allow it)",
                           advice="Stop it where it runs (the service manager, or the process that embeds it).")
        reason = b.text("reason") or "stopped from a console"
        log.warning("appliance stop requested from a console: %s", reason)
        asyncio.get_running_loop().call_soon(self.on_stop, reason)
        return json_response({"stopping": True})
