"""host_memory.keep_freed_memory: a CPU forward's freed activations are reused, not faulted in again."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from meerkat_core.host_memory import MMAP_THRESHOLD, TRIM_THRESHOLD, keep_freed_memory

# fp32 activations around bf16 GEMMs, the paired forward's pattern (zo/paired.py) at SmolLM2's widths over a
# doubled batch of 8 x 65 tokens; prints the page faults of each pass
PASSES = """
import json, resource, sys, torch
import torch.nn.functional as F
torch.set_num_threads(1)
if sys.argv[1] == "tuned":
    from meerkat_core.host_memory import keep_freed_memory
    keep_freed_memory()
w1 = torch.randn(1536, 576, dtype=torch.bfloat16)
w2 = torch.randn(576, 1536, dtype=torch.bfloat16)
x0 = torch.randn(16, 65, 576)
faults = []
for _ in range(8):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = x0
    for _ in range(6):
        h = F.linear(x.to(torch.bfloat16), w1).float()
        x = x + F.linear((F.silu(h) * h).to(torch.bfloat16), w2).float()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(json.dumps(faults))
"""


def _faults(arm: str) -> list[int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", PASSES, arm], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_keep_freed_memory_stops_the_page_faults_of_repeated_forwards():
    """Without it, glibc trims the heap between layers and every pass faults ~80 MB in again (~20,000 pages
    here); with it, passes after the first few fault next to nothing (0 here; up to 390 in a pass under CI)."""
    default, tuned = _faults("default"), _faults("tuned")
    assert sum(default[-4:]) >= 4 * 2000, default  # the pattern does fault without it: the test can fail
    assert sum(tuned[-4:]) <= sum(default[-4:]) / 10, (tuned, default)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_keep_freed_memory_says_what_it_did(monkeypatch):
    assert keep_freed_memory() == (f"glibc malloc keeps freed memory: mmap threshold {MMAP_THRESHOLD >> 20} MiB, "
                                   f"trim threshold {TRIM_THRESHOLD >> 20} MiB")
    assert keep_freed_memory("cuda") is None  # only CPU runs touch the host allocator
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert keep_freed_memory() == "malloc left as the environment sets it (MALLOC_TRIM_THRESHOLD_)"
