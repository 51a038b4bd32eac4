"""The host allocator between ZO steps: keep freed memory for the next step (issue #20).

PyTorch's CPU tensors come straight from the C library's ``malloc``. glibc returns the top of its heap
to the kernel once more than ``M_TRIM_THRESHOLD`` bytes are free there, and serves blocks above
``M_MMAP_THRESHOLD`` with fresh ``mmap`` calls; both start at 128 KiB and grow only up to the largest
block freed so far. A forward frees and reallocates the same activations layer after layer, step after
step, so with those defaults each step can fault in fresh pages the kernel must zero again: the paired
bf16 forward (zo/paired.py, fp32 activations over a doubled batch) took 94,000-144,000 page faults
(~0.5 GB) per step on SmolLM2 and ran 1.4x slower at two threads than with the settings below, which
bring it to a few hundred (benchmarks/RESULTS.md section 10.5). Plain bf16 forwards were not affected
(0-300 faults either way), and the fp32 step took the same time before and after (2.17 and 2.20 s).

``keep_freed_memory(device_type)`` does nothing (None) unless the model runs on the CPU; there it sets
``M_MMAP_THRESHOLD`` to ``MMAP_THRESHOLD`` (glibc's upper bound on 64-bit) and ``M_TRIM_THRESHOLD`` to
``TRIM_THRESHOLD``: the heap then keeps up to that much freed memory at its top for
the next step. The process's peak memory is unchanged (the pages were in use at the peak); it just does
not shrink between steps. It is a no-op, said in its answer, where malloc is not glibc's, and where the
user tuned malloc already (``MALLOC_*`` environment variables, ``GLIBC_TUNABLES``): theirs win.
Calling it again sets the same values (no state is kept here).
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # DEFAULT_MMAP_THRESHOLD_MAX on 64-bit: glibc refuses more
TRIM_THRESHOLD = 256 * 2**20
USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
                 "GLIBC_TUNABLES")


def keep_freed_memory(device_type: str = "cpu") -> str | None:
    """Tune glibc's malloc for repeated forwards on the CPU (see module doc); one line saying what was done,
    None where ``device_type`` (``torch.device.type`` of the model) is not ``"cpu"``."""
    if device_type != "cpu":
        return None
    user = [name for name in USER_SETTINGS if os.environ.get(name)]
    if user:
        return f"malloc left as the environment sets it ({', '.join(user)})"
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return "malloc left at its defaults (not glibc)"
    try:
        libc = ctypes.CDLL("libc.so.6")
        done = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):
        done = False
    if not done:
        return "malloc left at its defaults (glibc's mallopt refused)"
    return f"glibc malloc keeps freed memory: mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold {TRIM_THRESHOLD >> 20} MiB"
