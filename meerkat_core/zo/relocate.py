"""Moving parameters into new memory one tensor at a time, giving the old memory back as the move goes.

Flattening (``coordinates``) copies the parameters that own coordinates into one buffer. Done naively,
the old weights live until the last copy is made, so for a moment the weights exist twice. Here each
parameter is re-pointed at its new place, its values copied in pieces of ``CHUNK`` bytes, and each
copied piece of its old memory released at once:

* **CPU, Linux**: when nothing else uses the old storage, the whole pages of a copied piece are dropped
  from this process with ``madvise(MADV_DONTNEED)``. That is what matters for weights loaded from
  safetensors: they are views of one private file mapping, which stays while any tensor views it,
  and with it every page already read; dropping the pages of each moved tensor keeps resident memory
  at one copy of the weights (plus one piece). On heap memory the same call only returns pages early
  (the storage is freed anyway when its last reference goes); ``malloc_trim`` then hands glibc's freed
  chunks back every ``TRIM_EVERY`` bytes.
* **Accelerators**: a group's parameters are first moved to host memory (freeing the device copies),
  the device cache is emptied, then the buffer is allocated and filled back tensor by tensor; the
  device never holds old and new copies together.

This never changes values, and is best effort: where a step is unavailable (another OS or C library, a
storage still used elsewhere) the memory is released later, when the old tensors die.
"""

from __future__ import annotations

import ctypes
import mmap
from typing import Iterable

import torch
from torch import nn

from meerkat_core import heap

CHUNK = 16 << 20  # bytes copied between two page drops
TRIM_EVERY = 32 << 20  # bytes released to the heap between two malloc_trim calls
_MADV_DONTNEED = 4  # Linux


def _exclusive(t: torch.Tensor) -> bool:
    """True when ``t`` is the only tensor using its storage (so dropping its pages loses nothing)."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    if count is None:
        return False
    storage = t.untyped_storage()
    return int(count(storage._cdata)) <= 2  # ``t`` itself + the ``storage`` wrapper just made


class Relocator:
    """Moves parameters into new memory (``move``), releasing each one's old memory as it is copied."""

    def __init__(self) -> None:
        self._libc = heap.libc()
        self._page = mmap.PAGESIZE
        self._freed = 0

    def _drop_pages(self, t: torch.Tensor, start: int, stop: int) -> None:
        """Drop the whole pages of bytes ``[start, stop)`` of contiguous CPU tensor ``t``."""
        base = t.data_ptr()
        lo = -(-(base + start) // self._page) * self._page
        hi = (base + stop) // self._page * self._page
        if hi > lo:
            self._libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), _MADV_DONTNEED)

    def move(self, p: nn.Parameter, dest: torch.Tensor) -> None:
        """``p.data := dest`` (same shape) holding ``p``'s values; the old memory is released piece by
        piece as it is copied (see the module doc)."""
        old = p.data
        p.data = dest
        droppable = (self._libc is not None and old.device.type == "cpu" and old.is_contiguous()
                     and old.numel() > 0 and _exclusive(old))
        src, out = old.reshape(-1), dest.view(-1)
        size = old.element_size()
        step = max(1, CHUNK // size) if droppable else max(1, old.numel())
        with torch.no_grad():
            for a in range(0, old.numel(), step):
                b = min(old.numel(), a + step)
                out[a:b].copy_(src[a:b])
                if droppable:
                    self._drop_pages(old, a * size, b * size)
        nbytes = old.numel() * size if old.device.type == "cpu" else 0
        del old, src
        self._freed += nbytes
        if self._freed >= TRIM_EVERY:
            self.trim()

    def stage_on_host(self, params: Iterable[nn.Parameter]) -> None:
        """Move accelerator parameters to host memory one by one, then empty the device's cache."""
        devices = set()
        for p in params:
            if p.device.type != "cpu":
                devices.add(p.device)
                p.data = p.data.to("cpu")
        for dev in devices:
            backend = getattr(torch, dev.type, None)
            if backend is not None and hasattr(backend, "empty_cache"):
                backend.empty_cache()

    def trim(self) -> None:
        """Hand freed heap memory back to the OS (glibc ``malloc_trim``; elsewhere nothing)."""
        self._freed = 0
        heap.trim()
