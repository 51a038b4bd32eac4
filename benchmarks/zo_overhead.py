"""Overhead of a sparse ZO step vs plain forward passes (and vs a dense MeZO-style step).

Builds a random LlamaForCausalLM with the SmolLM2-135M configuration (~134.5M parameters, tied
embeddings), picks k = 134,515 random coordinates (0.1%), and times on the current machine:

* one forward pass of a batch of B x T tokens (inference mode);
* the engine's pieces: drawing z (k normals), perturb, restore, update (index ops on the flat buffer);
* a whole ``zo_step`` (two forwards + everything else), reported as a ratio to two plain forwards;
* a dense MeZO-style step (Malladi et al.: per-tensor ``torch.normal`` regenerated from a seed for each
  of four in-place sweeps: +eps, forward, -2 eps, forward, +eps, update), same ratio;
* the rng alone for 134,515 and 10M draws.

Timings are medians over repetitions (min also recorded), forwards and steps interleaved so that
machine load affects both alike. ``--quick`` uses a small model and few repetitions (< 2 minutes).

On a shared or oversubscribed CPU, run with ``OMP_WAIT_POLICY=PASSIVE`` (or ``--threads 1``): with
libgomp's default active waiting, idle OpenMP workers spin and starve the main thread, which makes
sequences of small kernels (the rng, index ops) 10-100x slower than their true cost.

    python benchmarks/zo_overhead.py [--quick] [--out benchmarks/results/zo_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from meerkat_core.zo import SparseCoordinates, derive_key, normal, zo_step
from meerkat_core.zo.testing import random_mask

SMOLLM2_135M = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    tie_word_embeddings=True,
    max_position_embeddings=2048,
)
QUICK = dict(
    vocab_size=4096,
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=True,
)


def timed(fn: Callable[[], object], reps: int, warmup: int = 1) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return {"median_s": statistics.median(ts), "min_s": min(ts), "reps": reps}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def mezo_step(model: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], seed: int, lr: float, eps: float) -> float:
    """MeZO (Malladi et al. 2023, Algorithm 1): z regenerated from the seed for every sweep."""
    params = [p for p in model.parameters() if p.requires_grad]

    def sweep(scale: float) -> None:
        torch.manual_seed(seed)
        for p in params:
            z = torch.normal(0, 1, size=p.shape, device=p.device, dtype=p.dtype)
            p.data.add_(z, alpha=scale)

    with torch.inference_mode():
        sweep(eps)
        lp = float(loss_fn())
        sweep(-2 * eps)
        lm = float(loss_fn())
        sweep(eps)
        g = (lp - lm) / (2 * eps)
        sweep(-lr * g)
    return g


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small model, few repetitions (< 2 minutes)")
    ap.add_argument("--out", default="benchmarks/results/zo_overhead.json")
    ap.add_argument("--k", type=int, default=None, help="coordinates (default 134515, or 0.1%% of d with --quick)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense MeZO-style comparison")
    ap.add_argument("--full", action="store_true",
                    help="also time this engine's full-parameter mode (indices=None, k = d), with z drawn once "
                         "per step (cached) and redrawn three times in pieces; on by default with --quick")
    ap.add_argument("--full-reps", type=int, default=1, help="repetitions of each full-parameter step (--full)")
    args = ap.parse_args(argv)

    from transformers import LlamaConfig, LlamaForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    reps = args.reps or (3 if args.quick else 7)
    cfg = QUICK if args.quick else SMOLLM2_135M
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval().to(device=device, dtype=dtype)
    build_s = time.perf_counter() - t0
    d = sum(p.numel() for p in model.parameters())
    k = args.k or (134_515 if not args.quick else max(1, d // 1000))
    ids = torch.randint(0, cfg["vocab_size"], (args.batch, args.seq), generator=torch.Generator().manual_seed(0)).to(device)

    def loss_fn() -> torch.Tensor:
        logits = model(input_ids=ids).logits.float()
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

    def forward() -> None:
        with torch.inference_mode():
            loss_fn()
        sync(device)

    mask = random_mask(model, k, seed=0)
    t0 = time.perf_counter()
    coords = SparseCoordinates(model, mask)
    coords_s = time.perf_counter() - t0
    res: dict = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
            "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
            "loadavg_start": os.getloadavg(),
            "torch": torch.__version__,
        },
        "config": {"model": "quick" if args.quick else "SmolLM2-135M (random init)", "d": d, "k": k,
                   "batch": args.batch, "seq": args.seq, "dtype": args.dtype, "reps": reps},
        "setup_s": {"build_model": build_s, "sparse_coordinates": coords_s},
    }

    key = derive_key(0, 0, 0, 0)
    step_no = [0]

    def draw() -> None:
        normal(derive_key(1, 0, 0, step_no[0]), k, device=device)
        step_no[0] += 1
        sync(device)

    parts = {
        "draw_z": timed(draw, reps),
        "perturb": timed(lambda: (coords.perturb_key(key, 1e-3), sync(device)), reps),
        "restore": timed(lambda: (coords.restore(), sync(device)), reps),
        "update": timed(lambda: (coords.update_key(key, 1e-7, 1.0), sync(device)), reps),
    }
    coords.restore()
    res["sparse_parts"] = parts
    engine_s = parts["draw_z"]["median_s"] + 2 * parts["perturb"]["median_s"] + parts["restore"]["median_s"] + parts["update"]["median_s"]

    # interleave: 2 plain forwards, one sparse step, (one dense step)
    fw, sp, dn = [], [], []
    forward()
    t_step = [0]

    def sparse_step() -> None:
        zo_step(coords, loss_fn, derive_key(0, 1, 0, t_step[0]), 1e-6, 1e-3)
        t_step[0] += 1
        sync(device)

    sparse_step()
    if not args.no_dense:
        mezo_step(model, loss_fn, 1234, 1e-6, 1e-3)
    cpu_fw, cpu_sp, cpu_dn = [], [], []  # process CPU time: less sensitive to other processes
    for r in range(reps):
        t, c = time.perf_counter(), time.process_time()
        forward()
        forward()
        fw.append(time.perf_counter() - t)
        cpu_fw.append(time.process_time() - c)
        t, c = time.perf_counter(), time.process_time()
        sparse_step()
        sp.append(time.perf_counter() - t)
        cpu_sp.append(time.process_time() - c)
        if not args.no_dense:
            t, c = time.perf_counter(), time.process_time()
            mezo_step(model, loss_fn, 1000 + r, 1e-6, 1e-3)
            sync(device)
            dn.append(time.perf_counter() - t)
            cpu_dn.append(time.process_time() - c)
    two_fw = statistics.median(fw)
    res["two_forwards_s"] = {"median_s": two_fw, "min_s": min(fw)}
    res["sparse_step_s"] = {"median_s": statistics.median(sp), "min_s": min(sp)}
    res["sparse_engine_s"] = engine_s
    res["ratio_sparse_step_to_two_forwards"] = statistics.median(sp) / two_fw
    res["ratio_sparse_step_to_two_forwards_min"] = min(sp) / min(fw)
    res["ratio_sparse_engine_overhead"] = 1 + engine_s / two_fw
    if device.type == "cpu":
        res["cpu_time_s"] = {"two_forwards": statistics.median(cpu_fw), "sparse_step": statistics.median(cpu_sp)}
        res["ratio_sparse_step_to_two_forwards_cpu_time"] = statistics.median(cpu_sp) / statistics.median(cpu_fw)
        if cpu_dn:
            res["cpu_time_s"]["dense_mezo_step"] = statistics.median(cpu_dn)
            res["ratio_dense_mezo_step_to_two_forwards_cpu_time"] = statistics.median(cpu_dn) / statistics.median(cpu_fw)
    if dn:
        res["dense_mezo_step_s"] = {"median_s": statistics.median(dn), "min_s": min(dn)}
        res["ratio_dense_mezo_step_to_two_forwards"] = statistics.median(dn) / two_fw
        res["ratio_dense_mezo_step_to_two_forwards_min"] = min(dn) / min(fw)
    res["rng"] = {
        "normal_134515": timed(lambda: (normal(key, 134_515, device=device), sync(device)), reps),
        "normal_10M": timed(lambda: (normal(key, 10_000_000, device=device), sync(device)), 1 if args.quick else 3),
    }
    if args.full or args.quick:
        # the engine's full-parameter mode both ways it runs: z held for the step (drawn once; in training
        # `--z-cache-mb` >= d x 4 B) and z redrawn in pieces for perturb +, perturb - and the update
        limits = {"z_cached": d, "z_redrawn": 0}
        n_full = reps if args.quick else args.full_reps
        times: dict[str, list[float]] = {name: [] for name in limits}
        for r in range(n_full):  # interleaved, so load hits both alike
            for name, limit in limits.items():
                full = SparseCoordinates(model, None, z_cache_limit=limit)  # re-flattens (untimed); `coords` is stale
                t = time.perf_counter()
                zo_step(full, loss_fn, derive_key(0, 2, 0, r), 1e-6, 1e-3)
                sync(device)
                times[name].append(time.perf_counter() - t)
        for name, fs in times.items():
            res[f"full_mode_step_{name}_s"] = {"median_s": statistics.median(fs), "min_s": min(fs), "reps": n_full}
            res[f"ratio_full_mode_step_{name}_to_two_forwards"] = statistics.median(fs) / two_fw
    res["machine"]["loadavg_end"] = os.getloadavg()
    report(res)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(f"wrote {out}")
    return res


def report(res: dict) -> None:
    c, m = res["config"], res["machine"]
    print(f"{c['model']}: d={c['d']:,} k={c['k']:,} batch {c['batch']}x{c['seq']} {c['dtype']} on {m['device']} "
          f"({m['cpu_count']} cores, {m['torch_threads']} torch threads, load {m['loadavg_start'][0]:.1f})")
    rows = [("two plain forwards", res["two_forwards_s"])]
    rows += [(f"  {n}", v) for n, v in res["sparse_parts"].items()]
    rows += [("sparse zo_step (2 fwd + all)", res["sparse_step_s"])]
    if "dense_mezo_step_s" in res:
        rows += [("dense MeZO step (2 fwd + 4 sweeps)", res["dense_mezo_step_s"])]
    for name, what in (("z_cached", "z drawn once"), ("z_redrawn", "z redrawn x3")):
        if f"full_mode_step_{name}_s" in res:
            rows += [(f"full-param zo_step ({what})", res[f"full_mode_step_{name}_s"])]
    rows += [("rng 134,515 draws", res["rng"]["normal_134515"]), ("rng 10M draws", res["rng"]["normal_10M"])]
    print(f"{'what':40s} {'median ms':>12s} {'min ms':>12s}")
    for name, v in rows:
        print(f"{name:40s} {v['median_s'] * 1e3:12.2f} {v['min_s'] * 1e3:12.2f}")
    print(f"sparse engine overhead (sum of parts) / two forwards: {res['ratio_sparse_engine_overhead']:.4f}x")
    print(f"sparse step / two forwards (median, min): {res['ratio_sparse_step_to_two_forwards']:.4f}x, "
          f"{res['ratio_sparse_step_to_two_forwards_min']:.4f}x")
    if "ratio_dense_mezo_step_to_two_forwards" in res:
        print(f"dense MeZO step / two forwards (median, min): {res['ratio_dense_mezo_step_to_two_forwards']:.4f}x, "
              f"{res['ratio_dense_mezo_step_to_two_forwards_min']:.4f}x")
    if "ratio_sparse_step_to_two_forwards_cpu_time" in res:
        line = f"process CPU time ratios (median): sparse step {res['ratio_sparse_step_to_two_forwards_cpu_time']:.4f}x"
        if "ratio_dense_mezo_step_to_two_forwards_cpu_time" in res:
            line += f", dense MeZO step {res['ratio_dense_mezo_step_to_two_forwards_cpu_time']:.4f}x"
        print(line)
    if "ratio_full_mode_step_z_cached_to_two_forwards" in res:
        print(f"full-param step / two forwards (median): z drawn once {res['ratio_full_mode_step_z_cached_to_two_forwards']:.4f}x, "
              f"z redrawn x3 {res['ratio_full_mode_step_z_redrawn_to_two_forwards']:.4f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
