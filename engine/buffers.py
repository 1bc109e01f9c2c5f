"""Memory helpers for the data path: buffers that are filled before anything reads them, and glibc heap tuning."""

from __future__ import annotations

from . import platform

__all__ = ["new_buffer", "tune_malloc"]

#: ``new_buffer(n)``: a bytearray of ``n`` bytes whose content is undefined until written (CPython's
#: ``PyByteArray_FromStringAndSize(NULL, n)``: ``bytearray(n)`` would zero-fill memory a payload overwrites at once).
new_buffer = platform.new_buffer

_tuned: set[int | None] = set()


def tune_malloc(*, arenas: int | None = None) -> None:
    """Keep large buffers (payloads, frames, TLS output: 64 KiB to a few MiB each, allocated and freed all the
    time) in glibc's heap for reuse instead of fresh ``mmap``s: each fresh one page-faults on every 4 KiB, which
    cost more CPU than the data's own copies. Memory stays bounded: at most 64 MiB of free heap is kept.
    ``arenas`` caps glibc's arenas (each thread otherwise gets its own, full of buffers freed by others).
    Process-wide and idempotent; a no-op off glibc."""
    if arenas in _tuned:
        return
    _tuned.add(arenas)
    platform.tune_malloc(arenas)
