"""A pytest plugin (``-p tests.engine.platform.no_posix_calls``) for runs under ``LIFEBOAT_PLATFORM=portable``:
loaded before any conftest or test module, it removes the POSIX-only calls from ``os``, ``select`` and ``mmap`` and
makes ``fcntl``/``termios`` unimportable, so a storage test that still passes used none of them. It also checks that
the portable implementation was the one selected."""

from __future__ import annotations

import mmap
import os
import select
import sys

from engine.platform import ENV

REMOVED = {os: ("pread", "pwrite", "preadv", "pwritev", "writev", "fdatasync", "O_DIRECT", "O_DIRECTORY"),
           select: ("poll", "epoll"),
           mmap: ("MAP_PRIVATE", "MAP_ANONYMOUS", "MAP_SHARED", "MAP_POPULATE", "PROT_READ")}

if os.environ.get(ENV) != "portable":
    raise RuntimeError(f"this plugin is for runs with {ENV}=portable")
for module, names in REMOVED.items():
    for name in names:
        if hasattr(module, name):
            delattr(module, name)
for name in ("fcntl", "termios"):
    sys.modules[name] = None  # type: ignore[assignment]   # `import fcntl` now raises ImportError


def pytest_sessionstart(session: object) -> None:
    import engine.platform
    assert engine.platform.NAME == "portable", engine.platform.NAME
