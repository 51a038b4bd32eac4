"""Peak memory: sparse ZO training vs inference vs first-order backprop + Adam (issue #7, item 3).

Each arm runs in a fresh subprocess (this script with ``--child ARM``) that loads the model, encodes
one batch of the task's train split (the same examples for every arm), then measures:

* ``inference``  ``--steps`` plain forwards of the training loss under ``torch.inference_mode``;
* ``zo``         the mask is loaded, ``SparseCoordinates`` built (fp32 master of the k coordinates; the
                 parameters owning them are moved into flat buffers), then ``--steps`` sparse ZO steps
                 (``zo_step``: two forwards each);
* ``zo-noflat``  the same with ``SparseCoordinates(..., flatten=False)`` (index ops on each parameter's own
                 storage; training uses ``flatten=True``): isolates what flattening costs;
* ``zo-full``    (optional) the same with every weight (``--mask all``, this engine's full mode);
* ``fo-adam``    ``--steps`` of backprop + ``torch.optim.Adam`` over all weights (fp32 grads and two
                 moments: ~3 extra copies of the weights, plus the activations kept for backward).

On CPU the child measures resident memory (Linux ``/proc/self/status``): after the model and the batch
are loaded it frees the heap (``malloc_trim``), records the baseline RSS, resets the peak
(``/proc/self/clear_refs``), runs the arm and reads the peak (VmHWM; ``ru_maxrss`` where /proc is
missing). Reported per arm: absolute peak RSS, the delta over the baseline, and the ratio of
``weights + delta`` to the inference arm's (the CPU analogue of ``torch.cuda.max_memory_allocated``,
which counts tensors only, not the interpreter and libraries), plus the plain ratio of total peaks.
For ``zo`` the setup (``SparseCoordinates``) and the steps are also reported apart. On CUDA the child
uses ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (baseline: allocated after
loading).

    python benchmarks/memory.py --mask MASK [--model smollm2-135m] [--out FILE]
    python benchmarks/memory.py --quick       # tiny-llama, its own mask, < 1 minute
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

ARMS = ("inference", "zo", "zo-noflat", "zo-full", "fo-adam")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny-llama with its own mask, every arm (< 1 minute)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--mask", help="mask file (default with --quick: computed into --work)")
    p.add_argument("--task", default="sentiment2")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=None,
                   help="default: inference zo zo-noflat fo-adam (and zo-full with --quick; it is slow on a 135M model on CPU)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cuda" if _common.cuda_available() else "cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="runs/bench/memory")
    p.add_argument("--out", default="benchmarks/results/memory.json")
    p.add_argument("--child", choices=ARMS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.model = "tiny-llama"
        args.arms = args.arms or list(ARMS)
    args.arms = args.arms or ["inference", "zo", "zo-noflat", "fo-adam"]
    if "inference" not in args.arms:
        args.arms = ["inference", *args.arms]
    if args.mask is None and not args.quick and {"zo", "zo-noflat"} & set(args.arms) and not args.child:
        p.error("--mask is required for the zo arm (make one with `meerkat mask --model MODEL --out FILE`)")
    return args


# -- child ----------------------------------------------------------------------------------------
def child(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    from meerkat_core.encoding import encode_split, label_batch
    from meerkat_core.models import load_model
    from meerkat_core.scoring import label_loss
    from meerkat_core.tasks import get_task, load_task_data
    from meerkat_core.zo import SparseCoordinates, derive_key, zo_step

    arm = args.child
    cuda = str(args.device).startswith("cuda")
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    model = lm.model
    task = get_task(args.task)
    train = load_task_data(task).train
    step = max(1, len(train) // args.batch_size)
    rows = train.select(range(0, step * args.batch_size, step))
    enc = encode_split(lm.tokenizer, task, rows, max_length=args.max_length)
    batch = label_batch(enc, list(range(len(enc))), lm.tokenizer.pad_token_id).to(lm.device)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    del train, rows

    def loss() -> torch.Tensor:
        return label_loss(model, batch)

    with torch.inference_mode():
        loss()  # warm-up: lazy initialisations (kernels, caches) belong to the baseline of every arm
    _common.trim_heap()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        peak_now = torch.cuda.max_memory_allocated
    else:
        base = _common.rss_bytes()
        reset_ok = _common.reset_hwm()
        peak_now = _common.hwm_bytes
    out: dict[str, Any] = {"arm": arm, "param_bytes": param_bytes, "baseline_bytes": base,
                           "batch_shape": list(batch.input_ids.shape), "device": str(lm.device),
                           "dtype": str(lm.dtype)}
    if not cuda:
        out["rss_after_load_bytes"] = base
        out["hwm_reset"] = reset_ok
    import contextlib

    anon_base = None if cuda else _common.anon_bytes()
    out["baseline_anon_bytes"] = anon_base

    def sampler() -> Any:
        return contextlib.nullcontext() if cuda else _common.AnonPeak()

    t0 = time.perf_counter()
    anon_peaks = []
    if arm == "inference":
        with sampler() as s, torch.inference_mode():
            for _ in range(args.steps):
                float(loss())
        anon_peaks.append(s)
    elif arm in ("zo", "zo-noflat", "zo-full"):
        indices = None
        with sampler() as s:
            if arm != "zo-full":
                from meerkat_core.mask import load_mask

                mask = load_mask(args.mask, model)
                indices = {t.name: t.indices for t in mask.nonempty()}
            coords = SparseCoordinates(model, indices, flatten=arm != "zo-noflat")
            if cuda:
                torch.cuda.synchronize()
        anon_peaks.append(s)
        out["k"] = coords.k
        out["setup_peak_bytes"] = peak_now()
        if not cuda:
            out["setup_anon_peak_bytes"] = s.peak_bytes
        _common.trim_heap()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            out["after_setup_bytes"] = torch.cuda.memory_allocated()
        else:
            out["after_setup_bytes"] = _common.rss_bytes()
            out["after_setup_anon_bytes"] = _common.anon_bytes()
            _common.reset_hwm()
        with sampler() as s:
            for t in range(args.steps):
                zo_step(coords, loss, derive_key(0, 1, 0, t), 1e-6, 1e-3)
            if cuda:
                torch.cuda.synchronize()
        anon_peaks.append(s)
        out["steps_peak_bytes"] = peak_now()
        if not cuda:
            out["steps_anon_peak_bytes"] = s.peak_bytes
    elif arm == "fo-adam":
        params = [p for p in model.parameters()]
        with sampler() as s:
            for p in params:
                p.requires_grad_(True)
            opt = torch.optim.Adam(params, lr=1e-6)
            for _ in range(args.steps):
                lv = loss()
                lv.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        anon_peaks.append(s)
    if cuda:
        torch.cuda.synchronize()
    out["seconds"] = time.perf_counter() - t0
    peak = peak_now()
    if arm.startswith("zo"):
        peak = max(peak, out["setup_peak_bytes"])
    out["peak_bytes"] = peak
    out["delta_bytes"] = peak - base
    if arm.startswith("zo"):
        out["steps_delta_bytes"] = out["steps_peak_bytes"] - base
        out["setup_delta_bytes"] = out["setup_peak_bytes"] - base
    if not cuda:
        out["anon_peak_bytes"] = max(s.peak_bytes for s in anon_peaks)
        out["anon_delta_bytes"] = out["anon_peak_bytes"] - anon_base
        if arm.startswith("zo"):
            out["steps_anon_delta_bytes"] = out["steps_anon_peak_bytes"] - anon_base
    return out


# -- parent ---------------------------------------------------------------------------------------
def run_child(args: argparse.Namespace, arm: str, mask: str | None) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", arm, "--model", args.model,
           "--task", args.task, "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
           "--steps", str(args.steps), "--device", args.device, "--dtype", args.dtype,
           "--threads", str(args.threads), "--arms", arm]
    if mask:
        cmd += ["--mask", mask]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(Path.cwd()))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"memory arm {arm} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


@_common.keeps_torch_threads
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.child:
        print(json.dumps(child(args)))
        return {}
    mask = args.mask
    if mask is None and {"zo", "zo-noflat"} & set(args.arms):
        mask = str(_common.ensure_mask(Path(args.work) / "tiny.mask.safetensors", args.model))
    arms = {}
    for arm in args.arms:
        arms[arm] = run_child(args, arm, mask if arm in ("zo", "zo-noflat") else None)
        print(f"  {arm}: peak {_common.mib(arms[arm]['peak_bytes'])} MiB", file=sys.stderr, flush=True)
    inf = arms["inference"]
    w = inf["param_bytes"]
    for arm, r in arms.items():
        r["ratio_peak_to_inference"] = r["peak_bytes"] / inf["peak_bytes"]
        r["ratio_weights_plus_delta_to_inference"] = (w + max(r["delta_bytes"], 0)) / (w + max(inf["delta_bytes"], 0))
        if "steps_delta_bytes" in r:
            r["ratio_steps_only_weights_plus_delta"] = (w + max(r["steps_delta_bytes"], 0)) / (w + max(inf["delta_bytes"], 0))
        if "anon_delta_bytes" in r:
            r["ratio_anon_weights_plus_delta_to_inference"] = (
                (w + max(r["anon_delta_bytes"], 0)) / (w + max(inf["anon_delta_bytes"], 0)))
        if "steps_anon_delta_bytes" in r:
            r["ratio_anon_steps_only_weights_plus_delta"] = (
                (w + max(r["steps_anon_delta_bytes"], 0)) / (w + max(inf["anon_delta_bytes"], 0)))
    import torch

    torch.set_num_threads(args.threads)
    res: dict[str, Any] = {
        "machine": _common.machine(args.device),
        "config": {"model": args.model, "mask": mask, "task": args.task, "batch_size": args.batch_size,
                   "max_length": args.max_length, "steps": args.steps, "device": args.device,
                   "threads": args.threads, "quick": args.quick,
                   "method": "torch.cuda.max_memory_allocated" if str(args.device).startswith("cuda")
                   else "peak RSS (VmHWM) of a fresh subprocess per arm, reset after loading"},
        "arms": arms,
        "target_ratio_zo_to_inference": 1.1,
    }
    if "zo" in arms:
        res["ratio_zo_to_inference"] = arms["zo"]["ratio_weights_plus_delta_to_inference"]
        res["ratio_zo_steps_only_to_inference"] = arms["zo"]["ratio_steps_only_weights_plus_delta"]
        res["meets_target"] = res["ratio_zo_to_inference"] <= 1.1
        if "ratio_anon_weights_plus_delta_to_inference" in arms["zo"]:
            res["ratio_zo_to_inference_anon"] = arms["zo"]["ratio_anon_weights_plus_delta_to_inference"]
            res["ratio_zo_steps_only_to_inference_anon"] = arms["zo"]["ratio_anon_steps_only_weights_plus_delta"]
    if "zo-noflat" in arms:
        res["ratio_zo_noflat_to_inference"] = arms["zo-noflat"]["ratio_weights_plus_delta_to_inference"]
    if "fo-adam" in arms:
        res["ratio_fo_adam_to_inference"] = arms["fo-adam"]["ratio_weights_plus_delta_to_inference"]
        if "ratio_anon_weights_plus_delta_to_inference" in arms["fo-adam"]:
            res["ratio_fo_adam_to_inference_anon"] = arms["fo-adam"]["ratio_anon_weights_plus_delta_to_inference"]
    report(res)
    _common.write_json(Path(args.out), res)
    return res


def report(res: dict[str, Any]) -> None:
    c = res["config"]
    some = next(iter(res["arms"].values()))
    print(f"{c['model']} on {c['device']}: batch {some['batch_shape']}, {c['steps']} steps, "
          f"weights {_common.mib(some['param_bytes'])} MiB; {c['method']}")
    anon = "anon_delta_bytes" in some
    head = f"{'arm':<10} {'baseline MiB':>12} {'peak MiB':>9} {'delta MiB':>9} {'(w+delta)/inf':>13} {'peak/inf':>8}"
    if anon:
        head += f" {'anon delta MiB':>14} {'(w+anon)/inf':>12}"
    print(head)
    for arm, r in res["arms"].items():
        line = (f"{arm:<10} {_common.mib(r['baseline_bytes']):>12} {_common.mib(r['peak_bytes']):>9} "
                f"{_common.mib(r['delta_bytes']):>9} {r['ratio_weights_plus_delta_to_inference']:>13.3f} "
                f"{r['ratio_peak_to_inference']:>8.3f}")
        if anon:
            line += f" {_common.mib(r['anon_delta_bytes']):>14} {r['ratio_anon_weights_plus_delta_to_inference']:>12.3f}"
        print(line)
        if "setup_delta_bytes" in r:
            extra = (f"; anonymous: setup {_common.mib(r['setup_anon_peak_bytes'] - r['baseline_anon_bytes'])} MiB, "
                     f"steps {_common.mib(r['steps_anon_delta_bytes'])} MiB") if anon else ""
            print(f"  {arm}: SparseCoordinates setup delta {_common.mib(r['setup_delta_bytes'])} MiB, steps delta "
                  f"{_common.mib(r['steps_delta_bytes'])} MiB (resident){extra}")
    if "ratio_zo_to_inference" in res:
        line = (f"ZO training / inference (weights + delta, resident): {res['ratio_zo_to_inference']:.3f}x "
                f"(target <= 1.1: {'met' if res['meets_target'] else 'missed'}); steps only "
                f"{res['ratio_zo_steps_only_to_inference']:.3f}x")
        if "ratio_zo_to_inference_anon" in res:
            line += (f"; anonymous memory: {res['ratio_zo_to_inference_anon']:.3f}x, steps only "
                     f"{res['ratio_zo_steps_only_to_inference_anon']:.3f}x")
        print(line)
    if "ratio_zo_noflat_to_inference" in res:
        print(f"ZO without flattening / inference (weights + delta, resident): {res['ratio_zo_noflat_to_inference']:.3f}x")
    if "ratio_fo_adam_to_inference" in res:
        line = f"backprop + Adam / inference: {res['ratio_fo_adam_to_inference']:.3f}x"
        if "ratio_fo_adam_to_inference_anon" in res:
            line += f" (anonymous: {res['ratio_fo_adam_to_inference_anon']:.3f}x)"
        print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
