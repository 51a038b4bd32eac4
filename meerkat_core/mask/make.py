"""The ``meerkat mask`` pipeline: load the model, tokenize the calibration corpus, compute, write.

``make_mask(cfg)`` is what ``meerkat_core.api.make_mask`` (and so the CLI) runs; the file it writes is
the one ``save_mask`` writes (docs/MASK_FORMAT.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from meerkat_core import models
from meerkat_core.config.mask import MaskConfig
from meerkat_core.atomic import check_writable
from meerkat_core.corpus import build_calibration, hub_docs_for, load_documents
from meerkat_core.mask.compute import ProgressFn, compute_mask
from meerkat_core.mask.io import save_mask
from meerkat_core.mask.select import unmatched_patterns
from meerkat_core.mask.stats import MaskStats, mask_stats
from meerkat_core.mask.types import Mask

EventFn = Callable[[str], None]


@dataclass
class MaskMade:
    """A mask written by ``make_mask``: the mask, its file and size, how long it took, its statistics."""

    mask: Mask
    path: Path
    file_bytes: int
    seconds: float
    stats: MaskStats


def make_mask(cfg: MaskConfig, progress: ProgressFn | None = None, on_event: EventFn | None = None) -> MaskMade:
    """Compute the mask ``cfg`` describes and write it to ``cfg.out`` (atomically)."""
    say = on_event or (lambda msg: None)
    cfg.validate()
    start = time.perf_counter()
    # every input is read and checked before anything is said (a bad one is one line, and costs no
    # computation): where the mask goes, the corpus, the model
    check_writable(cfg.out, "--out")
    docs = load_documents(cfg.corpus, text_field=cfg.text_field, max_hub_docs=hub_docs_for(cfg.samples))
    loaded = models.load_model(cfg.model, device=cfg.device, dtype="fp32" if cfg.dtype == "auto" else cfg.dtype,
                               trust_remote_code=cfg.trust_remote_code)  # auto: the backprop pass runs in fp32
    names = [n for n, _ in loaded.model.named_parameters()]
    for pattern in unmatched_patterns(names, cfg.exclude):
        say(f"warning: --exclude {pattern} matches no parameter")
    say(f"loaded model {cfg.model}; tokenizing calibration corpus {cfg.corpus} ...")
    calib = build_calibration(cfg.corpus, loaded.tokenizer, samples=cfg.samples, seq_len=cfg.seq_len, seed=cfg.seed,
                              text_field=cfg.text_field, docs=docs)
    mask = compute_mask(
        loaded.model, calib.batches(cfg.batch_size), density=cfg.density, method=cfg.method, exclude=cfg.exclude,
        seed=cfg.seed, model_name=loaded.name, corpus=calib.info, batch_size=cfg.batch_size,
        num_batches=calib.num_batches(cfg.batch_size), progress=progress, score_groups=cfg.score_groups,
    )
    path = save_mask(mask, cfg.out)
    return MaskMade(mask=mask, path=path, file_bytes=path.stat().st_size, seconds=time.perf_counter() - start,
                    stats=mask_stats(mask))
