"""Everything the engine asks of the operating system beyond what every CPython has, in one place (borg's
``platform/`` pattern): positioned I/O, ``fdatasync``, unbuffered appends, directory fsync, file locks, hole
punching, the socket send queue, polling, mappings, C-heap tuning and the agent's local control channel.

One implementation is picked at import, for the whole process:

- ``posix`` (:mod:`.posix`) on Linux and other POSIX systems: the real calls, mostly aliases of ``os`` functions,
  so ``platform.pread(...)`` costs what ``os.pread(...)`` did;
- ``windows`` (:mod:`.windows`) on Windows: Win32 calls (``ReadFile``/``WriteFile`` at an offset,
  ``FlushFileBuffers``, ``LockFileEx``, ``FILE_FLAG_NO_BUFFERING``);
- ``portable`` (:mod:`.base`): only calls every CPython has, chosen with the environment variable
  ``LIFEBOAT_PLATFORM=portable`` (set before the engine is imported) so the Windows-like code paths of the storage
  layer run and are tested on Linux.

Callers import the module, never its names (``from engine import platform``; ``platform.pread(fd, n, at)``), and
no engine module outside this package may use the calls it wraps (ruff's banned-api rule, tests/test_static.py).
"""

from __future__ import annotations

import os
import sys

#: ``LIFEBOAT_PLATFORM``: ``portable`` selects the portable implementation; empty or the native name the native one.
ENV = "LIFEBOAT_PLATFORM"
_wanted = os.environ.get(ENV, "")
_native = "windows" if sys.platform == "win32" else "posix"
if _wanted not in ("", "portable", _native):
    raise ImportError(f"{ENV}={_wanted!r}: expected 'portable' or {_native!r} on this system")

if _wanted == "portable":
    from .base import *  # noqa: F403
    NAME = "portable"
elif sys.platform == "win32":
    from .windows import *  # noqa: F403
    NAME = "windows"
else:
    from .posix import *  # noqa: F403
    NAME = "posix"
