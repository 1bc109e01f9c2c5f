"""The POSIX implementation (Linux first): the real calls, bound as module-level aliases where ``os`` has them, so
a caller's ``platform.pread(...)`` costs what ``os.pread(...)`` did (one attribute lookup, no wrapper frame).

Everything not defined here comes from :mod:`engine.platform.base`.
"""

from __future__ import annotations

import sys

from .base import ControlHandler, DiskSpace, Poller, new_buffer, run_tool

__all__ = ["POLLIN", "POLLOUT", "ControlHandler", "Poller", "anonymous_map", "connect_control", "fallocate",
           "fdatasync", "fsync_dir", "map_readonly", "new_buffer", "new_poller", "open_direct", "pread", "pwrite",
           "on_terminate", "serve_control", "try_lock", "tune_malloc", "unlock", "unsent_bytes", "writev",
           "open_folder", "create_in", "lstat_in", "unlink_in", "DiskSpace", "disk_free", "run_tool", "user_ids",
           "open_private", "pid_alive"]

# The guard tells ``mypy --platform win32`` that nothing below exists there (it checks windows.py instead).
if sys.platform != "win32":
    import asyncio
    import ctypes
    import ctypes.util
    import errno
    import fcntl
    import mmap
    import os
    import select
    import signal
    import socket
    import struct
    import termios
    from collections.abc import Callable
    from pathlib import Path

    # -- positioned I/O: the calls themselves ---------------------------------------------------------------------
    pread = os.pread
    pwrite = os.pwrite
    writev = os.writev
    fdatasync = os.fdatasync if hasattr(os, "fdatasync") else os.fsync   # macOS has no fdatasync

    def open_direct(path: str) -> int | None:
        """A write-only ``O_DIRECT`` descriptor on ``path``, or ``None`` where the OS or the filesystem refuses it
        (tmpfs, some network filesystems: ``EINVAL``)."""
        direct = getattr(os, "O_DIRECT", 0)
        if not direct:
            return None
        try:
            return os.open(path, os.O_WRONLY | direct)
        except OSError:
            return None

    def open_folder(path: os.PathLike[str] | str) -> int | None:
        """A descriptor of the folder itself: ``O_NOFOLLOW`` refuses a link in its place."""
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def create_in(folder_fd: int | None, folder: Path, name: str, mode: int) -> int:
        """``openat(folder_fd, name, O_CREAT|O_EXCL|O_NOFOLLOW)``: a link planted later is refused, not followed,
        and the folder cannot be swapped under the name."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        if folder_fd is None:
            return os.open(folder / name, flags, mode)
        return os.open(name, flags, mode, dir_fd=folder_fd)

    def open_private(path: Path, *, create: bool) -> int:
        """Open ``path`` read-write, 0600, never through a link at its last component (``O_NOFOLLOW``: ELOOP)."""
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | ((os.O_CREAT | os.O_TRUNC) if create else 0)
        return os.open(path, flags, 0o600)

    def lstat_in(folder_fd: int | None, folder: Path, name: str) -> os.stat_result:
        if folder_fd is None:
            return os.lstat(folder / name)
        return os.stat(name, dir_fd=folder_fd, follow_symlinks=False)

    def unlink_in(folder_fd: int | None, folder: Path, name: str) -> None:
        if folder_fd is None:
            os.unlink(folder / name)
        else:
            os.unlink(name, dir_fd=folder_fd)

    def fsync_dir(path: os.PathLike[str] | str) -> None:
        """Make a directory's entries (created, renamed, deleted files) durable."""
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- fallocate(2) with mode flags: Python's os has only posix_fallocate -----------------------------------------
    # errnos meaning "this filesystem/kernel cannot do that mode": the caller should fall back, not fail.
    _UNSUPPORTED = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL, errno.ENODEV, errno.ENOTTY}

    def _load_fallocate() -> ctypes._CFunctionType | None:
        """libc's ``fallocate64`` (64-bit offsets even on 32-bit builds), or ``None`` off Linux."""
        if not sys.platform.startswith("linux"):
            return None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        except OSError:
            return None
        fn = getattr(libc, "fallocate64", None) or getattr(libc, "fallocate", None)
        if fn is None:
            return None
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        fn.restype = ctypes.c_int
        return fn   # type: ignore[no-any-return]

    _fallocate = _load_fallocate()

    def fallocate(fd: int, mode: int, offset: int, length: int) -> bool:
        """``fallocate(fd, mode, offset, length)``: ``True`` done, ``False`` if the mode is unsupported here;
        raises ``OSError`` on real errors."""
        if _fallocate is None:
            return False
        while True:
            if _fallocate(fd, mode, offset, length) == 0:
                return True
            err = ctypes.get_errno()
            if err == errno.EINTR:
                continue
            if err in _UNSUPPORTED:
                return False
            raise OSError(err, os.strerror(err))

    # -- free space ---------------------------------------------------------------------------------------------
    def disk_free(path: os.PathLike[str] | str) -> DiskSpace:
        """``statvfs``: the filesystem's size and the blocks available to unprivileged writers (``f_bavail``: what
        is left before the root-reserved blocks, which is where an appliance not running as root stops)."""
        st = os.statvfs(path)
        return DiskSpace(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)

    # -- locks --------------------------------------------------------------------------------------------------
    def try_lock(fd: int) -> bool:
        """``flock(LOCK_EX | LOCK_NB)``: excludes every other open file description, in any process."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

    # -- sockets ------------------------------------------------------------------------------------------------
    _TIOCOUTQ = getattr(termios, "TIOCOUTQ", None)
    _INT = struct.Struct("i")
    _INT0 = bytes(_INT.size)

    def unsent_bytes(fd: int) -> int:
        """``TIOCOUTQ``: bytes in the socket's send queue (unsent or unacknowledged); 0 if it cannot tell."""
        if _TIOCOUTQ is None:
            return 0
        try:
            return int(_INT.unpack(fcntl.ioctl(fd, _TIOCOUTQ, _INT0))[0])
        except OSError:
            return 0

    POLLIN = select.POLLIN
    POLLOUT = select.POLLOUT

    def new_poller() -> Poller:
        return select.poll()

    # -- memory -------------------------------------------------------------------------------------------------
    def map_readonly(fd: int, length: int, offset: int) -> mmap.mmap:
        """A read-only shared mapping, populated at once where the OS can (``MAP_POPULATE``: one fault, not one
        per page)."""
        return mmap.mmap(fd, length, prot=mmap.PROT_READ, offset=offset,
                         flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))

    def anonymous_map(size: int) -> mmap.mmap:
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)

    def user_ids() -> tuple[int, int] | None:
        """The process's (uid, gid): a local recovery host runs QEMU as them (engine/recovery/hosts/libvirt.py)."""
        return os.getuid(), os.getgid()

    def tune_malloc(arenas: int | None) -> None:
        """Keep large buffers in glibc's heap for reuse (``engine/buffers.py``); a no-op off glibc."""
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(-3, 32 << 20)    # M_MMAP_THRESHOLD (its maximum on 64-bit)
            libc.mallopt(-1, 64 << 20)    # M_TRIM_THRESHOLD
            if arenas:
                libc.mallopt(-8, arenas)  # M_ARENA_MAX
        except (OSError, AttributeError):
            pass   # not glibc: only slower

    # -- process signals ---------------------------------------------------------------------------------------
    def pid_alive(pid: int) -> bool:
        """Signal 0: the process exists (EPERM: it does, owned by another user)."""
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def on_terminate(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> None:
        """SIGINT and SIGTERM handled by the loop itself (``add_signal_handler``)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, callback)

    # -- the agent's control channel: a Unix socket -----------------------------------------------------------
    async def serve_control(handler: ControlHandler, path: Path) -> asyncio.AbstractServer:
        """A Unix socket at ``path``, mode 0600 (only the agent's user may connect)."""
        if path.exists() or path.is_symlink():
            path.unlink()
        server = await asyncio.start_unix_server(handler, path=str(path))
        os.chmod(path, 0o600)
        return server

    def connect_control(path: Path, timeout: float) -> socket.socket:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except BaseException:
            s.close()
            raise
        return s
