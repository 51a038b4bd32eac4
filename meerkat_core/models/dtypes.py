"""The run dtype: names, and what ``--dtype auto`` picks on this machine (and why).

``auto`` is fp32 for now, everywhere: bf16 becomes the default where the hardware computes it natively
once the ZO step has been measured to estimate g and learn like fp32 there at the speed issue #20 asks
(2.5x fp32's step, within 1.05x of two bf16 forwards). Measured on CPUs with AVX512-BF16 and with AMX-BF16
(benchmarks/RESULTS.md sections 10.1-10.4): bf16 matched fp32's test accuracy after equal steps, and with
the paired forward (``zo/paired.py``, the default for bf16/fp16) its estimate of g is within 2.3% of the
fp32 one on SmolLM2 (median; 11-20% with two separate forwards). But in ``meerkat train`` rounds the paired
step is 1.3x faster than fp32's on the AMX Xeon (measured before ``host_memory.py``) and 2.1x on a Zen 5 EPYC
with AVX512-BF16 (section 10.5; 2.5x bare at one thread; two separate forwards: 2.0-3.0x, with the 11-20%
error), so neither meets the speed target in rounds. The reason recorded with a run says what this machine has:

* a CPU with AMX-BF16 or AVX512-BF16 (torch's own probes, else the ``/proc/cpuinfo`` flags): bf16 is
  one ``--dtype bf16`` away. A step with the paired forward is 1.3-1.6x faster than fp32's on the AMX Xeon
  (section 10.3) and 2.0-2.5x on the Zen 5 EPYC (section 10.5); with two forwards (``--zo-forward two``)
  rounds were 1.6x (a Zen 4-class AVX512-BF16 EPYC) to 2.1x (AMX) faster.
  Without them (e.g. AVX2 only) torch emulates bf16 and a forward is ~7x *slower* than fp32.
* CUDA: fp32 for now. The reduced-precision step has not been measured on a GPU (no device was
  available); bf16 there is one explicit ``--dtype bf16`` away.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from meerkat_core.errors import MeerkatInputError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
LOW_PRECISION = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class DtypeChoice:
    dtype: torch.dtype
    reason: str  # one line, printed and recorded with the run

    @property
    def name(self) -> str:
        return NAMES[self.dtype]


def _cpuinfo_flags(path: str = "/proc/cpuinfo") -> set[str]:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_bf16_feature(flags: set[str] | None = None) -> str | None:
    """The CPU's native bf16 instruction set ("AMX-BF16" or "AVX512-BF16"), or None."""
    if flags is None:
        probe = getattr(torch, "cpu", None)
        try:
            if probe is not None and probe._is_amx_tile_supported():
                return "AMX-BF16"
            if probe is not None and probe._is_avx512_bf16_supported():
                return "AVX512-BF16"
        except AttributeError:  # an older torch without the probes: read the flags
            pass
        flags = _cpuinfo_flags()
    if "amx_bf16" in flags:
        return "AMX-BF16"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    return None


def choose_dtype(dtype: str, device: torch.device, bf16_feature: str | None | bool = False) -> DtypeChoice:
    """Resolve ``--dtype`` (auto | fp32 | bf16 | fp16 and their long names) for ``device``.

    ``bf16_feature``: the CPU's native bf16 feature (default: probed on this machine).
    """
    if dtype != "auto":
        if dtype not in DTYPES:
            raise MeerkatInputError(f"--dtype {dtype}: expected auto, fp32, bf16 or fp16")
        return DtypeChoice(DTYPES[dtype], f"--dtype {dtype}")
    if device.type == "cuda":
        return DtypeChoice(torch.float32, "auto: fp32 on CUDA (bf16 not yet measured to learn like fp32 on a GPU)")
    if device.type != "cpu":
        return DtypeChoice(torch.float32, f"auto: fp32 on {device.type}")
    feature = cpu_bf16_feature() if bf16_feature is False else bf16_feature
    if feature:  # fast here, but its estimate is not yet fp32's (module doc)
        return DtypeChoice(torch.float32, f"auto: fp32 (the CPU has native {feature}: bf16 learned like fp32 in our "
                                          "runs, with its estimate of g within 2.4% of fp32's, but its step is only 1.3-2.1x "
                                          "faster in rounds, not yet the 2.5x that would make it the default: pass --dtype bf16 "
                                          "to use it)")
    cap = torch.backends.cpu.get_cpu_capability()
    return DtypeChoice(torch.float32, f"auto: fp32 (CPU without native bf16, {cap}: bf16 would be emulated and slower)")
