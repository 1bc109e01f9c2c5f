"""Memory helpers for the data path: buffers that are filled before anything reads them, and glibc heap tuning."""

from __future__ import annotations

from typing import Callable

__all__ = ["new_buffer", "tune_malloc"]


def _uninitialized_buffer() -> Callable[[int], bytearray]:
    """``bytearray(n)`` zero-fills: a whole pass over memory that a received payload overwrites right away.
    CPython's ``PyByteArray_FromStringAndSize(NULL, n)`` leaves the bytes as they are; used only for buffers that
    are filled completely before anything reads them (or dropped unread)."""
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
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)    # M_MMAP_THRESHOLD (its maximum on 64-bit)
        libc.mallopt(-1, 64 << 20)    # M_TRIM_THRESHOLD
        if arenas:
            libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass   # not glibc: only slower
