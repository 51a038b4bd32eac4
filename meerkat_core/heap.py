"""Giving freed memory back to the operating system (Linux/glibc; elsewhere these do nothing).

glibc keeps freed chunks below its mmap threshold (up to 32 MiB) in its heap for reuse, so resident
memory stays at its high-water mark after a burst of mid-sized tensors (activations, gradients) is
freed. When the next burst is one large fresh allocation (a flat buffer, an embedding's gradient),
both count: ``trim`` hands the free heap pages back first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library (Linux only), or None."""
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def trim() -> None:
    """``malloc_trim(0)``: return the heap's free pages to the OS."""
    lib = libc()
    if lib is not None and hasattr(lib, "malloc_trim"):
        lib.malloc_trim(0)
