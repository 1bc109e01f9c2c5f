"""The portable implementation: only what every CPython offers on every operating system.

It is the fallback the other implementations start from (``posix.py`` and ``windows.py`` import what they do not
override from here) and, selected with ``LIFEBOAT_PLATFORM=portable``, a whole implementation of its own, so the
storage layer's tests can run on Linux without any POSIX-only call. Each function says what it gives up:

- positioned reads and writes are a seek and a read/write under one process-wide lock (the descriptor's position
  moves; the engine never relies on it for these descriptors);
- ``fdatasync`` is ``fsync`` (it syncs metadata too: slower, never less durable);
- no unbuffered I/O: :func:`open_direct` returns ``None`` and appends go through the page cache, padded the same
  way, so the on-disk format does not change (``engine/directio.py``);
- directory fsync is a no-op (no portable way to open a directory);
- file locks exclude other holders in this process only;
- the kernel's unsent byte count is unknown (``0``);
- the agent's control channel is a loopback TCP socket whose port and token are in a mode-0600 file;
- stop signals are plain ``signal.signal`` handlers.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import json
import mmap
import os
import secrets
import select
import shutil
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["POLLIN", "POLLOUT", "ControlHandler", "Poller", "anonymous_map", "connect_control", "fallocate",
           "fdatasync", "fsync_dir", "map_readonly", "new_buffer", "new_poller", "open_direct", "pread", "pwrite",
           "on_terminate", "serve_control", "try_lock", "tune_malloc", "unlock", "unsent_bytes", "writev",
           "open_folder", "create_in", "lstat_in", "unlink_in", "DiskSpace", "disk_free", "run_tool", "user_ids",
           "open_private", "pid_alive"]

ControlHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

# -- files in a folder held open (exports into folders others can write: engine/appliance/export_target.py) --------
# Portable: no descriptor for a folder, so names are resolved from the folder's path each time; O_EXCL still refuses
# an existing file or link (CreateFile's CREATE_NEW on Windows), which is what keeps an export from writing through.

def open_folder(path: os.PathLike[str] | str) -> int | None:
    """A descriptor of the folder ``path`` itself (never of a link's target), or None where the OS has none."""
    return None


def create_in(folder_fd: int | None, folder: Path, name: str, mode: int) -> int:
    """Create ``folder/name`` exclusively for writing (``FileExistsError`` if anything, a link too, is there)."""
    return os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), mode)


def open_private(path: Path, *, create: bool) -> int:
    """Open ``path`` read-write, 0600, never through a link at its last component (refused); ``create`` creates or
    truncates it. Portable: the link is checked before opening (no O_NOFOLLOW)."""
    if os.path.islink(path):
        raise OSError(errno.ELOOP, "refusing to open through a symbolic link", str(path))
    flags = os.O_RDWR | getattr(os, "O_BINARY", 0) | ((os.O_CREAT | os.O_TRUNC) if create else 0)
    return os.open(path, flags, 0o600)


def lstat_in(folder_fd: int | None, folder: Path, name: str) -> os.stat_result:
    return os.lstat(folder / name)


def unlink_in(folder_fd: int | None, folder: Path, name: str) -> None:
    os.unlink(folder / name)


# -- positioned I/O -----------------------------------------------------------------------------------------------

_seek_lock = threading.Lock()


def pread(fd: int, length: int, offset: int, /) -> bytes:
    """Up to ``length`` bytes at ``offset`` (fewer only at the end of the file)."""
    with _seek_lock:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, length)


def pwrite(fd: int, buffer: ReadableBuffer, offset: int, /) -> int:
    """Write ``buffer`` at ``offset``; returns the bytes written (may be fewer, like ``os.pwrite``)."""
    with _seek_lock:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.write(fd, buffer)


def writev(fd: int, buffers: Sequence[ReadableBuffer], /) -> int:
    """Write ``buffers`` back to back at the descriptor's position; returns the bytes written (stops at the first
    short write, like a short ``writev``)."""
    n = 0
    for b in buffers:
        want = memoryview(b).nbytes
        got = os.write(fd, b)
        n += got
        if got != want:
            break
    return n


def fdatasync(fd: int, /) -> None:
    """Make ``fd``'s data durable (here: data and metadata, ``fsync``)."""
    os.fsync(fd)


def open_direct(path: str) -> int | None:
    """A second, write-only descriptor on ``path`` that bypasses the OS cache, or ``None`` where there is none
    (callers then write through the ordinary descriptor; the bytes on disk are the same)."""
    return None


def fsync_dir(path: os.PathLike[str] | str) -> None:
    """Make a directory's entries (created, renamed, deleted files) durable. No portable way: a no-op."""


def fallocate(fd: int, mode: int, offset: int, length: int) -> bool:
    """Linux ``fallocate(2)`` with mode flags (``engine/fileio.py``): ``True`` done, ``False`` unsupported (the
    caller writes zeros instead); raises ``OSError`` on real errors. Here: always unsupported."""
    return False


class DiskSpace(NamedTuple):
    """A filesystem's size and the bytes an unprivileged writer may still use (the vault's capacity policy)."""
    total: int
    free: int


def disk_free(path: os.PathLike[str] | str) -> DiskSpace:
    """Size and free bytes of the filesystem holding ``path`` (``shutil.disk_usage``: every system has it)."""
    u = shutil.disk_usage(path)
    return DiskSpace(u.total, u.free)


# -- locks --------------------------------------------------------------------------------------------------------

_locks: dict[tuple[int, int], int] = {}
_locks_guard = threading.Lock()


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def try_lock(fd: int) -> bool:
    """Take an exclusive lock on the open file ``fd`` without waiting: ``False`` if someone else holds it.
    Release with :func:`unlock` before closing ``fd``. Here: other holders in this process only."""
    key = _identity(fd)
    with _locks_guard:
        if key in _locks:
            return False
        _locks[key] = fd
        return True


def unlock(fd: int) -> None:
    """Release the lock :func:`try_lock` took on ``fd`` (a no-op if it holds none)."""
    key = _identity(fd)
    with _locks_guard:
        if _locks.get(key) == fd:
            del _locks[key]


# -- sockets ------------------------------------------------------------------------------------------------------

def unsent_bytes(fd: int) -> int:
    """Bytes a connected TCP socket has handed to the kernel that the peer has not acknowledged yet; ``0`` when
    the platform cannot tell."""
    return 0


POLLIN = 1
POLLOUT = 4


class Poller(Protocol):
    """The part of ``select.poll`` the engine uses (file descriptors given as ints)."""

    def register(self, fd: int, eventmask: int = ..., /) -> None: ...
    def modify(self, fd: int, eventmask: int, /) -> None: ...
    def poll(self, timeout: float | None = ..., /) -> list[tuple[int, int]]: ...


class SelectPoller:
    """``select.poll`` over ``select.select`` (on Windows, sockets only: the engine polls nothing else)."""

    def __init__(self) -> None:
        self._masks: dict[int, int] = {}

    def register(self, fd: int, eventmask: int = POLLIN | POLLOUT, /) -> None:
        self._masks[fd] = eventmask

    def modify(self, fd: int, eventmask: int, /) -> None:
        if fd not in self._masks:
            raise FileNotFoundError(errno.ENOENT, "not registered")
        self._masks[fd] = eventmask

    def poll(self, timeout: float | None = None, /) -> list[tuple[int, int]]:
        """Like ``select.poll().poll``: ``timeout`` in milliseconds, ``None`` or negative waits forever."""
        wait = None if timeout is None or timeout < 0 else timeout / 1000
        rl = [fd for fd, m in self._masks.items() if m & POLLIN]
        wl = [fd for fd, m in self._masks.items() if m & POLLOUT]
        r, w, _ = select.select(rl, wl, [], wait)
        ev: dict[int, int] = {}
        for fd in r:
            ev[fd] = ev.get(fd, 0) | POLLIN
        for fd in w:
            ev[fd] = ev.get(fd, 0) | POLLOUT
        return list(ev.items())


def new_poller() -> Poller:
    return SelectPoller()


# -- memory -------------------------------------------------------------------------------------------------------

def map_readonly(fd: int, length: int, offset: int) -> mmap.mmap:
    """A read-only shared mapping of ``length`` bytes of ``fd`` at ``offset`` (a multiple of
    ``mmap.ALLOCATIONGRANULARITY``)."""
    return mmap.mmap(fd, length, access=mmap.ACCESS_READ, offset=offset)


def anonymous_map(size: int) -> mmap.mmap:
    """A private, page-aligned, zero-filled buffer of ``size`` bytes."""
    return mmap.mmap(-1, size)


def _uninitialized_buffer() -> Callable[[int], bytearray]:
    """``bytearray(n)`` zero-fills: a whole pass over memory that a received payload overwrites right away.
    CPython's ``PyByteArray_FromStringAndSize(NULL, n)`` leaves the bytes as they are; used only for buffers that
    are filled completely before anything reads them (or dropped unread). CPython's own C API: every OS."""
    try:
        import ctypes
        fn = ctypes.pythonapi.PyByteArray_FromStringAndSize
        fn.restype = ctypes.py_object
        fn.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
        if len(fn(None, 4096)) != 4096:
            raise RuntimeError("unexpected bytearray")
    except Exception:  # not CPython: zero-filled then
        return bytearray
    return lambda n: fn(None, n)


#: ``new_buffer(n)``: a bytearray of ``n`` bytes whose content is undefined until written.
new_buffer = _uninitialized_buffer()


def tune_malloc(arenas: int | None) -> None:
    """Tune the C heap for large, short-lived buffers (``engine/buffers.py``). Here: nothing to tune."""


# -- process signals ---------------------------------------------------------------------------------------------

def on_terminate(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> None:
    """Run ``callback`` on ``loop`` when the process is asked to stop (Ctrl+C, and SIGTERM or Ctrl+Break where
    they exist). Here: ``signal.signal`` handlers (the main thread only; Windows loops have no
    ``add_signal_handler``)."""
    def handler(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(callback)

    for name in ("SIGINT", "SIGTERM", "SIGBREAK"):
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, handler)


# -- the agent's control channel ----------------------------------------------------------------------------------

_TOKEN_WAIT = 10.0


async def serve_control(handler: ControlHandler, path: Path) -> asyncio.AbstractServer:
    """Serve the agent's control channel for local clients only; ``path`` (in the agent's home) is where
    :func:`connect_control` finds it. Here: a TCP socket on 127.0.0.1 and, at ``path``, a mode-0600 JSON file
    ``{"port", "token"}``; a client's first line must be the token, anything else is dropped."""
    token = secrets.token_hex(16).encode()

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), _TOKEN_WAIT)
        except (asyncio.TimeoutError, OSError, ValueError):
            line = b""
        if not hmac.compare_digest(line.rstrip(b"\r\n"), token):
            writer.close()
            return
        await handler(reader, writer)

    server = await asyncio.start_server(guarded, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, json.dumps({"port": port, "token": token.decode()}).encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return server


def connect_control(path: Path, timeout: float) -> socket.socket:
    """A blocking connection to the channel :func:`serve_control` serves at ``path`` (``OSError`` when nothing
    serves it), ready for the request."""
    try:
        info = json.loads(path.read_bytes())
        port, token = int(info["port"]), str(info["token"])
    except (ValueError, KeyError, TypeError):
        raise ConnectionRefusedError(errno.ECONNREFUSED, f"{path} does not name a control channel") from None
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(token.encode() + b"\n")
    except BaseException:
        s.close()
        raise
    return s


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (the appliance's pid file: engine/service). Here: signal 0 where signals are
    POSIX ones; elsewhere (Windows: ``os.kill`` would terminate it) the answer is "maybe", so True."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True    # it exists, owned by someone else
    return True


def user_ids() -> tuple[int, int] | None:
    """The process's (uid, gid), where the system has them (None: no POSIX ids)."""
    return None


# -- external tools (the recovery host's clients: virsh, genisoimage) -----------------------------------------------
async def run_tool(argv: Sequence[str], *, stdin: bytes | None = None, timeout: float = 60.0,
                   env: dict[str, str] | None = None) -> tuple[int, bytes, bytes]:
    """Run a program to its end: (exit code, stdout, stderr). ``FileNotFoundError`` when it is not installed,
    ``TimeoutError`` (the process killed) when it runs longer than ``timeout`` seconds. ``env``: the whole
    environment of the program (recovery-plan scripts get the plan's variables); None inherits ours."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    return proc.returncode or 0, out, err
