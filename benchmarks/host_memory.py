"""Page faults and time of the paired bf16 step with glibc's default malloc and with meerkat's (issue #20).

``meerkat_core/host_memory.py`` keeps freed memory in the heap for the next step; this measures what that is
worth. The setting is process-wide, so each arm runs in a process of its own (``--child``), and the arms
alternate ``--rounds`` times. A child loads the model as training does (``load_model`` in bf16, carriers and
the paired forward on the mask), takes ``--batches`` real batches, warms up on each, then times ``--reps``
passes of (two plain forwards, one ZO step) per batch. Per arm: minor page faults per step and per two
forwards, seconds of each, step / two forwards, and peak RSS (VmHWM). benchmarks/RESULTS.md section 10.5.

    python benchmarks/host_memory.py --mask MASK [--threads 1] [--rounds 2] [--json FILE]
    python benchmarks/host_memory.py --quick    # tiny-llama, one round (CI: the harness works)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import precision  # noqa: E402

ARMS = ("default", "meerkat")  # glibc's defaults; host_memory.keep_freed_memory


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny-llama, one round, few reps")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--mask", help="mask file (default with --quick: computed into --work)")
    p.add_argument("--task", default="sentiment2")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--reps", type=int, default=2, help="timed passes over the batches per child")
    p.add_argument("--rounds", type=int, default=2, help="times the arms alternate")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="runs/bench/host_memory")
    p.add_argument("--json", dest="json_out", default=None, help="default: benchmarks/results/host_memory.json")
    p.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.batches, args.reps, args.rounds = "tiny-llama", 2, 1, 1
    elif args.mask is None and args.child is None:
        p.error("--mask is required (make one with `meerkat mask --model smollm2-135m --density 1e-3 --out FILE`)")
    return args


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One arm in this process: faults and seconds per step and per two forwards."""
    import torch

    import meerkat_core.host_memory as host_memory
    from meerkat_core.zo import derive_key, zo_step

    torch.set_num_threads(args.threads)
    if args.child == "default":  # precision._load calls it, as training does: here it must not
        host_memory.keep_freed_memory = lambda device_type="cpu": "glibc defaults (benchmark arm)"
    pargs = precision.parse(["--model", args.model, "--mask", args.mask, "--task", args.task, "--batches",
                             str(args.batches), "--batch-size", str(args.batch_size), "--work", args.work])
    loaded, coords = precision._load(pargs, "bf16")
    enc, batches = precision._batches(pargs, loaded)
    fns = [precision._loss_fn(pargs, loaded, coords, enc, b) for b in batches]
    key = [0]

    def step(fn: Any) -> None:
        zo_step(coords, fn, derive_key(22, 0, 0, key[0]), 1e-9, precision.REF_EPS)
        key[0] += 1

    def forwards(fn: Any) -> None:
        with torch.inference_mode():
            fn()
            fn()

    for fn in fns:  # warm-up
        forwards(fn)
        step(fn)
    secs: dict[str, list[float]] = {"step": [], "fwd2": []}
    faults = {"step": 0, "fwd2": 0}
    for _ in range(args.reps):
        for fn in fns:
            for what, run in (("fwd2", forwards), ("step", step)):
                f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                t = time.perf_counter()
                run(fn)
                secs[what].append(time.perf_counter() - t)
                faults[what] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    n = len(secs["step"])
    step_s, fwd2_s = statistics.mean(secs["step"]), statistics.mean(secs["fwd2"])
    return {"arm": args.child, "steps": n, "coords_paired": coords.paired is not None,
            "faults_per_step": faults["step"] / n, "faults_per_two_forwards": faults["fwd2"] / n,
            "step_s": step_s, "two_forwards_s": fwd2_s, "step_over_two_forwards": step_s / fwd2_s,
            "peak_rss_bytes": _common.hwm_bytes()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return {}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.mask is None:
        args.mask = str(_common.ensure_mask(work / "masks" / "sensitivity.safetensors", args.model))
    base = [sys.executable, __file__, "--model", args.model, "--mask", args.mask, "--task", args.task,
            "--batches", str(args.batches), "--batch-size", str(args.batch_size), "--reps", str(args.reps),
            "--threads", str(args.threads), "--work", args.work]
    rows = []
    for r in range(args.rounds):
        for arm in ARMS:
            out = subprocess.run([*base, "--child", arm], capture_output=True, text=True, check=True)
            row = {"round": r, **json.loads(out.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(f"{arm:<8} faults/step {row['faults_per_step']:>9.0f}  step {row['step_s']:.3f} s  two forwards "
                  f"{row['two_forwards_s']:.3f} s  ratio {row['step_over_two_forwards']:.3f}  peak "
                  f"{_common.mib(row['peak_rss_bytes'])} MiB", flush=True)
    summary = {arm: {k: statistics.median(r[k] for r in rows if r["arm"] == arm)
                     for k in ("faults_per_step", "step_s", "two_forwards_s", "step_over_two_forwards")}
               for arm in ARMS}
    print(f"\n{'arm':<8} {'faults/step':>12} {'step s':>8} {'2 fwd s':>8} {'step/2fwd':>10}   (medians)")
    for arm, m in summary.items():
        print(f"{arm:<8} {m['faults_per_step']:>12.0f} {m['step_s']:>8.3f} {m['two_forwards_s']:>8.3f} "
              f"{m['step_over_two_forwards']:>10.3f}")
    doc = {"machine": _common.machine("cpu"), "settings": vars(args).copy(), "rows": rows, "summary": summary}
    _common.write_json(Path(args.json_out or "benchmarks/results/host_memory.json"), doc)
    return doc


if __name__ == "__main__":
    main()
