"""The Windows implementation: Win32 calls through ``ctypes`` and ``msvcrt`` where the portable fallbacks of
:mod:`engine.platform.base` would be slower or weaker.

- positioned reads and writes: ``ReadFile``/``WriteFile`` with an ``OVERLAPPED`` offset on the descriptor's handle
  (no seek, no lock: safe from several threads at once, like ``pread``/``pwrite``);
- ``fdatasync``: ``os.fsync``, which on Windows *is* ``FlushFileBuffers`` (through the CRT's ``_commit``);
- unbuffered I/O: a second handle opened with ``FILE_FLAG_NO_BUFFERING`` (``O_DIRECT``'s counterpart: buffer
  address, offset and length sector-aligned, which ``engine/directio.py`` guarantees with its 4 KiB blocks);
- locks: ``LockFileEx`` on the first byte (exclusive, fail immediately), released by ``UnlockFileEx``;
- descriptors are binary: the CRT's default open mode is set to ``_O_BINARY`` at import, so ``os.open`` never
  translates line ends in the engine's files;
- from base: directory fsync is a no-op (NTFS journals its metadata; a directory cannot be opened with ``os.open``),
  no ``TIOCOUTQ`` (0), ``select.select`` for polling sockets, no hole punching (callers write zeros), the agent's
  control channel on loopback TCP with a token file.

Windows cannot run here: this module is type-checked by ``mypy --platform win32`` (tests/test_static.py).
"""

from __future__ import annotations

import sys

from .base import (POLLIN, POLLOUT, ControlHandler, DiskSpace, Poller, anonymous_map, connect_control, disk_free,
                   fallocate, fsync_dir, map_readonly, new_buffer, new_poller, on_terminate, serve_control, tune_malloc, unsent_bytes, writev,
                   open_folder, create_in, lstat_in, unlink_in, run_tool, user_ids, open_private)

__all__ = ["POLLIN", "POLLOUT", "ControlHandler", "Poller", "anonymous_map", "connect_control", "fallocate",
           "fdatasync", "fsync_dir", "map_readonly", "new_buffer", "new_poller", "open_direct", "pread", "pwrite",
           "on_terminate", "serve_control", "try_lock", "tune_malloc", "unlock", "unsent_bytes", "writev",
           "open_folder", "create_in", "lstat_in", "unlink_in", "DiskSpace", "disk_free", "run_tool", "user_ids",
           "open_private", "pid_alive"]

# The guard makes mypy check this body only with ``--platform win32`` (and posix.py's only without it).
if sys.platform == "win32":
    import ctypes
    import msvcrt
    import os
    from ctypes import wintypes
    from typing import TYPE_CHECKING

    if TYPE_CHECKING:
        from _typeshed import ReadableBuffer

    _k32 = ctypes.WinDLL("kernel32", use_last_error=True)

    class _OVERLAPPED(ctypes.Structure):
        _fields_ = [("Internal", ctypes.c_size_t), ("InternalHigh", ctypes.c_size_t),
                    ("Offset", wintypes.DWORD), ("OffsetHigh", wintypes.DWORD), ("hEvent", wintypes.HANDLE)]

    _LPOVERLAPPED = ctypes.POINTER(_OVERLAPPED)
    _ReadFile = _k32.ReadFile
    _ReadFile.argtypes = [wintypes.HANDLE, ctypes.c_void_p, wintypes.DWORD, ctypes.POINTER(wintypes.DWORD),
                          _LPOVERLAPPED]
    _ReadFile.restype = wintypes.BOOL
    _WriteFile = _k32.WriteFile
    _WriteFile.argtypes = [wintypes.HANDLE, ctypes.c_void_p, wintypes.DWORD, ctypes.POINTER(wintypes.DWORD),
                           _LPOVERLAPPED]
    _WriteFile.restype = wintypes.BOOL
    _CreateFileW = _k32.CreateFileW
    _CreateFileW.argtypes = [wintypes.LPCWSTR, wintypes.DWORD, wintypes.DWORD, ctypes.c_void_p, wintypes.DWORD,
                             wintypes.DWORD, wintypes.HANDLE]
    _CreateFileW.restype = wintypes.HANDLE
    _CloseHandle = _k32.CloseHandle
    _CloseHandle.argtypes = [wintypes.HANDLE]
    _CloseHandle.restype = wintypes.BOOL
    _LockFileEx = _k32.LockFileEx
    _LockFileEx.argtypes = [wintypes.HANDLE, wintypes.DWORD, wintypes.DWORD, wintypes.DWORD, wintypes.DWORD,
                            _LPOVERLAPPED]
    _LockFileEx.restype = wintypes.BOOL
    _UnlockFileEx = _k32.UnlockFileEx
    _UnlockFileEx.argtypes = [wintypes.HANDLE, wintypes.DWORD, wintypes.DWORD, wintypes.DWORD, _LPOVERLAPPED]
    _UnlockFileEx.restype = wintypes.BOOL

    _ERROR_HANDLE_EOF = 38
    _ERROR_LOCK_VIOLATION = 33
    _ERROR_IO_PENDING = 997
    _GENERIC_WRITE = 0x40000000
    _FILE_SHARE_ALL = 0x1 | 0x2 | 0x4          # read, write, delete: like a POSIX descriptor
    _OPEN_EXISTING = 3
    _FILE_ATTRIBUTE_NORMAL = 0x80
    _FILE_FLAG_NO_BUFFERING = 0x20000000
    _INVALID_HANDLE_VALUE = ctypes.c_void_p(-1).value
    _LOCKFILE_FAIL_IMMEDIATELY = 0x1
    _LOCKFILE_EXCLUSIVE_LOCK = 0x2
    _MAX_IO = 1 << 30                          # one ReadFile/WriteFile moves at most a DWORD's worth

    def _at(offset: int) -> _OVERLAPPED:
        if offset < 0:
            raise OSError(22, "negative offset")
        return _OVERLAPPED(0, 0, offset & 0xFFFFFFFF, offset >> 32, None)

    def _handle(fd: int) -> int:
        return msvcrt.get_osfhandle(fd)

    def pread(fd: int, length: int, offset: int, /) -> bytes:
        """Up to ``length`` bytes at ``offset`` (fewer only at the end of the file)."""
        buf = ctypes.create_string_buffer(min(length, _MAX_IO))
        got = wintypes.DWORD(0)
        if not _ReadFile(_handle(fd), buf, len(buf), ctypes.byref(got), ctypes.byref(_at(offset))):
            err = ctypes.get_last_error()
            if err == _ERROR_HANDLE_EOF:
                return b""
            raise ctypes.WinError(err)
        return buf.raw[:got.value]

    def pwrite(fd: int, buffer: ReadableBuffer, offset: int, /) -> int:
        """Write ``buffer`` at ``offset``; returns the bytes written. Writable buffers (the staging ``mmap``,
        bytearrays) are passed without a copy, read-only ones are copied once."""
        mv = memoryview(buffer).cast("B")
        n = min(len(mv), _MAX_IO)
        if not n:
            return 0
        src: ctypes.Array[ctypes.c_char] | bytes
        if mv.readonly:
            src = mv[:n].tobytes()
        else:
            src = (ctypes.c_char * n).from_buffer(mv)
        done = wintypes.DWORD(0)
        if not _WriteFile(_handle(fd), src, n, ctypes.byref(done), ctypes.byref(_at(offset))):
            raise ctypes.WinError(ctypes.get_last_error())
        return done.value

    #: ``FlushFileBuffers`` (the CRT's ``_commit``, which ``os.fsync`` calls on Windows).
    fdatasync = os.fsync

    def open_direct(path: str) -> int | None:
        """A write-only descriptor on ``path`` that bypasses the system cache (``FILE_FLAG_NO_BUFFERING``), or
        ``None`` if the file system refuses it."""
        h = _CreateFileW(path, _GENERIC_WRITE, _FILE_SHARE_ALL, None, _OPEN_EXISTING,
                         _FILE_ATTRIBUTE_NORMAL | _FILE_FLAG_NO_BUFFERING, None)
        if h is None or h == _INVALID_HANDLE_VALUE:
            return None
        try:
            return msvcrt.open_osfhandle(h, os.O_WRONLY | os.O_BINARY)
        except OSError:
            _CloseHandle(h)
            return None

    def try_lock(fd: int) -> bool:
        """``LockFileEx`` on byte 0, exclusive, without waiting: excludes every other handle, in any process."""
        flags = _LOCKFILE_EXCLUSIVE_LOCK | _LOCKFILE_FAIL_IMMEDIATELY
        if _LockFileEx(_handle(fd), flags, 0, 1, 0, ctypes.byref(_at(0))):
            return True
        err = ctypes.get_last_error()
        if err in (_ERROR_LOCK_VIOLATION, _ERROR_IO_PENDING):
            return False
        raise ctypes.WinError(err)

    def unlock(fd: int) -> None:
        if not _UnlockFileEx(_handle(fd), 0, 1, 0, ctypes.byref(_at(0))):
            raise ctypes.WinError(ctypes.get_last_error())

    def _binary_by_default() -> None:
        """Make ``_O_BINARY`` the CRT's default open mode: ``os.open`` without ``O_BINARY`` opens in text mode
        on Windows, where every write would turn ``\\n`` into ``\\r\\n``."""
        try:
            ctypes.CDLL("ucrtbase")._set_fmode(os.O_BINARY)
        except (OSError, AttributeError):
            pass

    _binary_by_default()

    _PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
    _STILL_ACTIVE = 259

    def pid_alive(pid: int) -> bool:
        """OpenProcess + GetExitCodeProcess: exists and has not exited (never a signal: it would kill it)."""
        h = _k32.OpenProcess(_PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
        if not h:
            return ctypes.get_last_error() == 5   # ERROR_ACCESS_DENIED: it exists, owned by another user
        try:
            code = wintypes.DWORD()
            return bool(_k32.GetExitCodeProcess(h, ctypes.byref(code))) and code.value == _STILL_ACTIVE
        finally:
            _k32.CloseHandle(h)
