"""meerkat from Python (a notebook cell, a sweep script): the library API, no CLI.

The same pipeline as examples/quickstart.sh, on the tiny random model so it runs in about a minute on
a laptop CPU; swap in ``model="smollm2-135m"`` (and bigger budgets) for a real run. Every function
writes exactly the files its ``meerkat`` command writes.

    python examples/notebook_api.py [OUT_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

from meerkat_core import api
from meerkat_core.config import (
    EvalConfig,
    EvalSettings,
    ExportConfig,
    InspectConfig,
    MaskConfig,
    PartitionConfig,
    TrainConfig,
    VPSettings,
)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    mask = out / "mask.safetensors"
    if not mask.exists():
        made = api.make_mask(MaskConfig(model="tiny-llama", samples=8, seq_len=32, out=str(mask)))
        print(f"mask: k = {made.mask.k:,} of d = {made.mask.meta.d:,} ({made.file_bytes:,} bytes)")
    part = out / "partition"
    if not (part / "manifest.json").exists():
        split = api.make_partition(PartitionConfig(task="sentiment2", clients=6, scheme="mixed", extreme_clients=2,
                                                   out=str(part)))
        print(f"partition: {split.result.num_samples} examples over {len(split.result.clients)} clients")

    # Meerkat-vp: a 20-step calibration round, then flagged clients run one step per round.
    cfg = TrainConfig(model="tiny-llama", mask=str(mask), partition=str(part), out=str(out / "run"), rounds=3,
                      local_steps=3, clients_per_round=3, lr=1e-2, batch_size=2, algorithm="meerkat-vp",
                      vp=VPSettings(calibration_steps=20), eval=EvalSettings(limit=32))
    cfg.resume = (out / "run" / "config.json").exists()
    run = api.train(cfg, on_round=lambda row: print(f"  round {row['round']}: {row.get('eval_accuracy', '')}"))
    print(f"train: accuracy {run.summary['initial_accuracy']} -> {run.final_accuracy}; "
          f"re-run it with `meerkat train --config {run.run}/config.toml --out NEW`")

    ev = api.evaluate(EvalConfig(model="tiny-llama", checkpoint=str(run.run), limit=32))
    print(f"eval: accuracy {ev.result.accuracy:.4f} on {ev.result.n} examples")
    rep = api.inspect_gradip(InspectConfig(run=str(run.run), plot=str(out / "gradip.png")))
    print(f"gradip: flagged {rep.flagged} (single-label clients {rep.extreme})")
    exported = api.export(ExportConfig(run=str(run.run), out=str(out / "merged")))
    print(f"export: {exported.out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/notebook_api"))
