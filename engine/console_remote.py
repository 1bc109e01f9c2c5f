"""A console's side of the console link (docs/CONTRACT.md §7): the running appliance of a home, reached through its
control API with the admin certificate of that home, behind the same methods as an in-process appliance.

``RemoteAppliance(home, types)`` learns at ``start()`` which calls the appliance serves (``GET /v1/console/hello``)
and then answers them as attributes: a coroutine method of the console API is an ``async`` call here (the request
runs in a worker thread), a plain one a blocking call with a short timeout (the appliance is on this machine), a
property a read. Events arrive on one long-lived ``GET /v1/console/events`` read by a thread and are handed to the
subscribers on the caller's event loop, as an in-process bus would. When the link drops (the appliance restarted or
stopped) the subscribers get ``ApplianceLink("lost", why)``; the thread reconnects on its own (0.5 s, doubling to
5 s) and sends ``ApplianceLink("connected")``, after which a console reads the state afresh. ``stop()`` lets the
appliance go; it never stops it: that is ``stop_appliance(reason)``, an explicit request.

A locked appliance (its vault key is not in its keyring: engine/appliance/locked.py) refuses the console routes
with ``LB_KEYRING``. ``start(allow_locked=True)`` then attaches all the same, with ``locked`` holding the reason and
no calls served; the link says ``ApplianceLink("locked", message)`` whenever the appliance is found locked (at a
reconnect too: it restarted without its key) and ``connected`` once it serves consoles again (the kit imported, by
this console or any other client). ``reconnect_now()`` skips the wait before the next try (after an import).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from . import errors, net, rpc_codec
from .errors import ApplianceUnreachable, ProtocolError
from .events import ApplianceLink, Event
from .home import ApplianceHome

log = logging.getLogger(__name__)

__all__ = ["RemoteAppliance", "CALL_TIMEOUT"]

CALL_TIMEOUT = 30.0
#: an async call may wait for long work (a failover returns once its VM booted; boot_timeout defaults to 300 s)
ASYNC_CALL_TIMEOUT = 900.0
#: a stream silent this long is dead (the appliance sends a heartbeat every 5 s)
STREAM_SILENCE = 15.0
#: how often the link looks again at a locked appliance (another client may import the kit)
LOCKED_RETRY = 2.0


class _Locked(Exception):
    """The event stream was refused because the appliance is locked (the thread's own signal, never raised out)."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message", "the appliance is locked"))
        self.error = error


class RemoteAppliance:
    def __init__(self, home: Path, types: Mapping[str, type], *, timeout: float = CALL_TIMEOUT,
                 async_timeout: float = ASYNC_CALL_TIMEOUT) -> None:
        self.home = ApplianceHome(Path(home))
        self.cfg = self.home.load_config()
        self.port = int(self.cfg["control_port"])
        self.types = types
        self.timeout = timeout
        self.async_timeout = async_timeout
        self.ctx = net.client_context(self.home.ca_cert, self.home.admin_cert, self.home.admin_key)
        self.calls: dict[str, str] = {}
        self.hello: dict[str, Any] = {}
        self.connected = False
        #: the appliance's lock reason (``{"code": "LB_KEYRING", "message", "advice"}``) while it is locked, else None
        self.locked: dict[str, Any] | None = None
        self._lock_seen: dict[str, Any] | None = None   # the stream thread's latest finding, applied by _deliver
        self._subs: list[Callable[[Event], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()
        self._wake = threading.Event()   # set by stop() and reconnect_now(): the stream's wait ends at once
        self._thread: threading.Thread | None = None
        self._conn: net.HTTPSConnection | None = None
        self.appliance = None   # an in-process appliance has its engine object here; an attached one does not

    # plumbing ------------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        try:
            resp = net.https_request("127.0.0.1", self.port, method, path, context=self.ctx,
                                     timeout=timeout or self.timeout, purpose="admin",
                                     body=json.dumps(body or {}), headers={"Content-Type": "application/json"})
        except ConnectionRefusedError:
            raise ApplianceUnreachable(f"the appliance of {self.home.root} is not running (port {self.port})",
                                       advice="Start it (`lifeboat appliance run --home DIR`, or its service), "
                                              "then attach again.") from None
        except (OSError, ssl.SSLError, socket.timeout) as exc:
            raise ApplianceUnreachable(f"cannot talk to the appliance on port {self.port}: {exc}") from None
        try:
            data = json.loads(resp.body or b"null")
        except json.JSONDecodeError:
            raise ProtocolError("the appliance answered with something that is not JSON") from None
        if resp.status >= 400:
            err = (data or {}).get("error", {}) if isinstance(data, dict) else {}
            raise errors.from_dict(err, f"HTTP {resp.status}")
        return data

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One console call, blocking (the caller's thread)."""
        return self._call(method, args, kwargs, None)

    def _call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Any:
        data = self._request("POST", "/v1/console/call", {"method": method, "args": rpc_codec.encode(list(args)),
                                                          "kwargs": rpc_codec.encode(kwargs)}, timeout)
        return rpc_codec.decode(data.get("result"), self.types)

    def __getattr__(self, name: str) -> Any:
        kind = self.__dict__.get("calls", {}).get(name)
        if kind is None:
            raise AttributeError(f"the attached appliance serves no call {name!r}")
        if kind == "property":
            return self.call(name)
        if kind == "async":
            async def acall(*args: Any, **kwargs: Any) -> Any:
                def run() -> Any:   # a closure: a GUI loop's executor may log the callable (qasync at DEBUG), and
                    return self._call(name, args, kwargs, self.async_timeout)   # the arguments may hold a password
                return await asyncio.to_thread(run)
            acall.__name__ = name
            return acall

        def scall(*args: Any, **kwargs: Any) -> Any:
            return self.call(name, *args, **kwargs)
        scall.__name__ = name
        return scall

    # lifecycle -----------------------------------------------------------------------------------------------
    async def start(self, *, allow_locked: bool = False) -> None:
        """Attach: ApplianceUnreachable when nothing answers; NotReady when the appliance serves no consoles;
        KeyringError when it is locked, unless ``allow_locked`` (then ``locked`` says why, no call is served, and
        the link sends ``connected`` once it is unlocked)."""
        self._loop = asyncio.get_running_loop()
        try:
            hello = await asyncio.to_thread(self._hello)
        except errors.KeyringError as exc:
            lock = await asyncio.to_thread(self.lock_state)
            if lock is None:
                raise
            if not allow_locked:
                raise errors.KeyringError(str(lock.get("message") or exc.message),
                                          advice=lock.get("advice") or exc.advice) from None
            self.locked = self._lock_seen = lock
            self.connected = False
        else:
            self.hello, self.calls = hello, dict(hello.get("methods") or {})
            self.locked, self.connected = None, True
        self._stopping.clear()
        self._wake.clear()
        self._thread = threading.Thread(target=self._stream, name="lifeboat-console-link", daemon=True)
        self._thread.start()

    def _hello(self) -> dict[str, Any]:
        hello: dict[str, Any] = self._request("GET", "/v1/console/hello", None, 10.0)
        if not hello.get("served"):
            raise errors.NotReady("the appliance of this home runs embedded in another program and serves no "
                                  "console", advice="Close that program, or start the appliance as a service.")
        return hello

    def lock_state(self) -> dict[str, Any] | None:
        """Blocking: the appliance's lock reason when ``GET /v1/status`` says it is locked, else None."""
        try:
            st = self._request("GET", "/v1/status", None, 10.0)
        except errors.LifeboatError:
            return None
        if isinstance(st, dict) and st.get("state") == "locked":
            raw = st.get("error")
            err: dict[str, Any] = raw if isinstance(raw, dict) else {}
            return {"code": str(err.get("code") or "LB_KEYRING"),
                    "message": str(err.get("message") or "the appliance is locked"),
                    "advice": str(err.get("advice") or "Import the recovery kit into the running appliance.")}
        return None

    def reconnect_now(self) -> None:
        """Try the link again at once (a kit was just imported: the appliance is starting its roles)."""
        self._wake.set()

    async def stop(self) -> None:
        """Let go of the appliance (it goes on running)."""
        self._stopping.set()
        self._wake.set()
        conn = self._conn
        if conn is not None:
            try:
                conn.sock and conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
        self.connected = False

    async def __aenter__(self) -> RemoteAppliance:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def refresh_hello(self) -> dict[str, Any]:
        """Ask again what ``hello`` told at attach (``consoles`` attached now, this one included; ``can_stop``)."""
        self.hello = self._request("GET", "/v1/console/hello", None, 10.0)
        return self.hello

    def stop_appliance(self, reason: str) -> None:
        """Ask the appliance to stop (it drains, then exits); Conflict when its program does not allow it."""
        self._request("POST", "/v1/console/stop", {"reason": reason})

    def subscribe(self, fn: Callable[[Event], None]) -> Callable[[], None]:
        self._subs.append(fn)

        def unsubscribe() -> None:
            if fn in self._subs:
                self._subs.remove(fn)
        return unsubscribe

    # events --------------------------------------------------------------------------------------------------
    def _deliver(self, ev: Event) -> None:
        if isinstance(ev, ApplianceLink):   # the link's own state changes here, on the caller's loop thread
            self.connected = ev.state == "connected"
            self.locked = self._lock_seen if ev.state == "locked" else None
        for fn in list(self._subs):
            try:
                fn(ev)
            except Exception:
                log.exception("console subscriber failed on %s", type(ev).__name__)

    def _post(self, ev: Event) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._deliver, ev)

    def _stream(self) -> None:
        # state: what the subscribers were last told (connected, lost or locked); each change is sent once
        state = "locked" if self.locked is not None else "connected"
        delay = 0.5
        while not self._stopping.is_set():
            def opened() -> None:
                nonlocal state, delay
                if state != "connected":
                    self._reread_hello()
                    state, delay = "connected", 0.5
                    self._post(ApplianceLink("connected", "", time.time()))
            try:
                self._read_stream(on_open=opened)
                why: str | None = "the appliance closed the event stream"
                lock = None
            except _Locked as exc:
                why, lock = None, exc.error
            except (OSError, ssl.SSLError, ProtocolError, ValueError, http.client.HTTPException) as exc:
                why, lock = str(exc) or type(exc).__name__, None
            if self._stopping.is_set():
                break
            if lock is not None:
                if state != "locked" or (self._lock_seen or {}).get("message") != lock.get("message"):
                    state, self._lock_seen = "locked", lock
                    self._post(ApplianceLink("locked", str(lock.get("message")), time.time()))
                wait = LOCKED_RETRY
            else:
                if state != "lost":
                    state = "lost"
                    self._post(ApplianceLink("lost", why or "", time.time()))
                wait, delay = delay, min(delay * 2, 5.0)
            self._wake.wait(wait)
            self._wake.clear()
        self._post(ApplianceLink("stopped", "", time.time()))

    def _reread_hello(self) -> None:
        """On a (re)opened stream: the calls the appliance serves now (a restarted or just-unlocked appliance may
        serve others than at attach). The old list stays when the question fails; the next call says why."""
        try:
            hello = self._hello()
        except (errors.LifeboatError, OSError):
            return
        self.hello, self.calls = hello, dict(hello.get("methods") or {})

    def _read_stream(self, on_open: Callable[[], Any]) -> None:
        conn = net.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=STREAM_SILENCE, purpose="admin")
        self._conn = conn
        try:
            conn.connect()
            conn.request("GET", "/v1/console/events")
            resp = conn.getresponse()
            if resp.status != 200:
                lock = self.lock_state() if resp.status < 500 else None
                if lock is not None:
                    raise _Locked(lock)
                raise ProtocolError(f"the event stream was refused (HTTP {resp.status})")
            on_open()
            while not self._stopping.is_set():
                line = resp.readline()
                if not line:
                    return
                obj = json.loads(line)
                if isinstance(obj, dict) and obj.get("__type__") in ("hello", "heartbeat"):
                    continue
                try:
                    ev = rpc_codec.decode(obj, self.types)
                except rpc_codec.CodecError:
                    continue    # an event this console does not know (a newer appliance): skipped
                if isinstance(ev, Event):
                    self._post(ev)
        finally:
            self._conn = None
            conn.close()

