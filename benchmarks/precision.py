"""Reduced precision (issue #20): does a bf16/fp16 ZO step estimate g like fp32, what does it cost, does it learn like fp32?

Three sections, each on the model as ``load_model`` returns it and on real task batches:

* ``errors``: per dtype and mode (``paired``: carriers and the paired forward, zo/paired.py, the
  default for bf16/fp16; ``carriers``: zo/carriers.py with two sequential forwards, the default before
  the paired forward; ``rounded``: perturbations written rounded into the low-precision weights, the
  design before issue #20), the relative error ``|g - g_fp32| / |g_fp32|`` of the projected gradient over ``--keys``
  keys (median, 90th percentile, sign flips); g_fp32 is the fp32 model's at eps 1e-3. For rounded writes
  also the share of masked coordinates whose +eps z perturbation is erased by the rounding.
* ``timing``: the training step (``zo_step`` with the client's loss) against two plain forwards of the
  same batch (for ``paired``: the same model's two sequential forwards), and each dtype's step against the fp32 step, averaged over the ``--batches`` real batches
  (their lengths vary as in training); passes interleaved across dtypes in one process, process CPU
  time and wall time.
* ``accuracy``: ``meerkat train`` runs at an equal budget per task x dtype x seed (finished runs are
  read back), their final test accuracy, and the seconds per client step of their rounds.
* ``sources`` (not in the default sections): where the carriers' remaining error comes from. The
  low-precision linear layers are emulated in fp32 arithmetic on the same low-precision weights, with
  either their inputs or their outputs left unrounded (``exact inputs`` / ``exact outputs``), and g is
  compared with the fp32 g at the same eps; slow (fp32 GEMMs), a diagnostic only.

    python benchmarks/precision.py --mask MASK [--sections errors timing accuracy] [--json FILE]
    python benchmarks/precision.py --quick    # tiny-llama, a few keys, one short run per dtype (CI)
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

SECTIONS = ("errors", "timing", "accuracy", "sources")
MODES = ("paired", "carriers", "rounded")  # the first is what training uses
REF_EPS = 1e-3


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny-llama, few keys and reps, one short run per dtype")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--mask", help="mask file (default with --quick: computed into --work)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS[:3]),
                   help="default: errors timing accuracy (sources is a slow diagnostic)")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16", "fp16"], choices=["fp32", "bf16", "fp16"])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                   help="modes of the low-precision dtypes compared in the errors and timing sections")
    p.add_argument("--task", default="sentiment2", help="task of the errors and timing sections")
    p.add_argument("--loss", default="classification", choices=["lm", "classification"])
    p.add_argument("--keys", type=int, default=32, help="keys (one z each) in the errors section")
    p.add_argument("--batches", type=int, default=4, help="distinct real batches the keys cycle through")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eps", type=float, nargs="+", default=[1e-3], help="eps values of the low-precision steps")
    p.add_argument("--reps", type=int, default=3, help="timing passes per dtype, each over every one of --batches")
    p.add_argument("--acc-tasks", nargs="+", default=["sentiment2", "sentiment3"])
    p.add_argument("--acc-dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    p.add_argument("--acc-eps", nargs="+", default=[], metavar="DTYPE=EPS",
                   help="eps of a dtype's accuracy runs (e.g. bf16=3e-3; default: TrainConfig's); the run's name "
                        "then ends in -epsEPS")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet partition of the accuracy runs")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--local-steps", type=int, default=5)
    p.add_argument("--clients-per-round", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--eval-limit", type=int, default=200)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--work", default="runs/bench/precision", help="masks, partitions and runs")
    p.add_argument("--json", dest="json_out", default=None, help="default: benchmarks/results/precision.json")
    args = p.parse_args(argv)
    if args.quick:
        args.model = "tiny-llama"
        args.keys, args.batches, args.reps = min(args.keys, 6), 2, min(args.reps, 2)
        args.seeds, args.rounds, args.local_steps, args.clients_per_round = args.seeds[:1], 1, 2, 2
        args.clients, args.eval_limit = 4, 32
    elif args.mask is None:
        p.error("--mask is required (make one with `meerkat mask --model smollm2-135m --density 1e-3 --out FILE`)")
    try:
        args.acc_eps = {d: float(e) for d, e in (item.split("=", 1) for item in args.acc_eps)}
    except ValueError:
        p.error(f"--acc-eps {' '.join(args.acc_eps)}: expected DTYPE=EPS pairs, e.g. bf16=3e-3")
    if set(args.acc_eps) - set(args.acc_dtypes):
        p.error(f"--acc-eps names dtypes not in --acc-dtypes: {sorted(set(args.acc_eps) - set(args.acc_dtypes))}")
    return args


# ---------------------------------------------------------------------------------------------------
# shared pieces
def _load(args: argparse.Namespace, dtype: str, mode: str = MODES[0]) -> tuple[Any, Any]:
    """(loaded model, its SparseCoordinates on the mask) as training builds them (``mode``: see MODES)."""
    from meerkat_core.host_memory import keep_freed_memory
    from meerkat_core.mask import load_mask
    from meerkat_core.models import load_model
    from meerkat_core.zo import SparseCoordinates

    loaded = load_model(args.model, device=args.device, dtype=dtype)
    keep_freed_memory(loaded.device.type)  # as training does (host_memory.py)
    mask = load_mask(args.mask, loaded.model)
    low = dtype != "fp32"
    coords = SparseCoordinates(loaded.model, {t.name: t.indices for t in mask.nonempty()},
                               carriers=(mode != "rounded") if low else None,
                               paired=(mode == "paired") if low else None)
    return loaded, coords


def _batches(args: argparse.Namespace, loaded: Any) -> tuple[Any, list[list[int]]]:
    """The task's encoded train split and ``args.batches`` seeded batches of its row indices."""
    from meerkat_core.encoding import encode_split
    from meerkat_core.tasks import get_task, load_task_data

    task = get_task(args.task)
    enc = encode_split(loaded.tokenizer, task, load_task_data(task).train)
    rnd = random.Random(0)
    return enc, [rnd.sample(range(len(enc)), args.batch_size) for _ in range(args.batches)]


def _loss_fn(args: argparse.Namespace, loaded: Any, coords: Any, enc: Any, batch: Any) -> Any:
    from meerkat_core.fed.client import ClientRuntime

    rt = ClientRuntime(model=loaded.model, coords=coords, pad_id=loaded.tokenizer.pad_token_id,
                       batch_size=args.batch_size, loss=args.loss)
    return rt.loss_fn(enc, batch)


def _keys(n: int) -> list[int]:
    from meerkat_core.zo import derive_key

    return [derive_key(20, 1, i % 10, i // 10) for i in range(n)]


def _g_values(args: argparse.Namespace, loaded: Any, coords: Any, enc: Any, batches: list[Any], eps: float,
              erased: list[float] | None = None) -> list[float]:
    """g of every key on the batch it cycles to, the weights unchanged between keys (no update)."""
    import torch

    from meerkat_core.zo import two_losses

    gs = []
    with torch.inference_mode():
        at_rest = coords.model_values() if erased is not None else None
        for i, key in enumerate(_keys(args.keys)):
            fn = _loss_fn(args, loaded, coords, enc, batches[i % len(batches)])
            if erased is not None and i < 8:
                coords.perturb_key(key, eps)
                erased.append(float((coords.model_values() == at_rest).float().mean()))
                coords.restore()
            lp, lm = two_losses(coords, fn, key, eps)
            gs.append((lp - lm) / (2 * eps))
    return gs


def _rel_stats(gs: list[float], ref: list[float]) -> dict[str, Any]:
    rel = [abs(g - r) / abs(r) for g, r in zip(gs, ref) if r != 0 and math.isfinite(g)]
    q = statistics.quantiles(rel, n=10) if len(rel) > 1 else rel * 9
    return {"median": statistics.median(rel), "p90": q[-1], "mean": statistics.fmean(rel),
            "sign_flips": sum((g > 0) != (r > 0) for g, r in zip(gs, ref)), "n": len(rel)}


# ---------------------------------------------------------------------------------------------------
def section_errors(args: argparse.Namespace) -> dict[str, Any]:
    import gc

    loaded, coords = _load(args, "fp32")
    enc, batches = _batches(args, loaded)
    t0 = time.perf_counter()
    ref = _g_values(args, loaded, coords, enc, batches, REF_EPS)
    out: dict[str, Any] = {"reference": {"dtype": "fp32", "eps": REF_EPS, "g": ref, "seconds": time.perf_counter() - t0,
                                         "k": coords.k}, "rows": []}
    print(f"fp32 reference: {len(ref)} keys, median |g| {statistics.median(abs(g) for g in ref):.3g}", flush=True)
    if 1e-2 in args.eps or len(args.eps) > 1:  # fp32's own change with eps: the curvature part of any gap
        for eps in args.eps:
            if eps != REF_EPS:
                gs = _g_values(args, loaded, coords, enc, batches, eps)
                out["rows"].append({"dtype": "fp32", "mode": "-", "eps": eps, **_rel_stats(gs, ref), "g": gs})
    del loaded, coords
    gc.collect()
    for dtype in (d for d in args.dtypes if d != "fp32"):
        for mode in args.modes:
            loaded, coords = _load(args, dtype, mode)
            for eps in args.eps:
                erased: list[float] | None = [] if mode == "rounded" else None
                t0 = time.perf_counter()
                gs = _g_values(args, loaded, coords, enc, batches, eps, erased)
                row = {"dtype": dtype, "mode": mode, "eps": eps, **_rel_stats(gs, ref), "g": gs,
                       "erased_share": statistics.fmean(erased) if erased else None,
                       "carriers": coords.carriers.summary() if coords.carriers else None,
                       "paired": coords.paired.summary() if coords.paired else None,
                       "seconds": time.perf_counter() - t0}
                out["rows"].append(row)
                print(f"{dtype} {mode} eps {eps:g}: median rel err {row['median']:.4f}, p90 {row['p90']:.4f}, "
                      f"sign flips {row['sign_flips']}/{row['n']}", flush=True)
            del loaded, coords
            gc.collect()
    return out


def section_timing(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from meerkat_core.zo import derive_key, zo_step

    setups = {}
    for dtype in args.dtypes:
        modes = [MODES[0]] if dtype == "fp32" else args.modes
        for mode in modes:
            name = dtype if mode == MODES[0] else f"{dtype}-{mode}"
            loaded, coords = _load(args, dtype, mode)
            enc, batches = _batches(args, loaded)
            # every pass times all --batches real batches (the same ones for every dtype): one batch's length
            # alone is not what training sees (RESULTS 10.2: 65 tokens there, a median 51 in rounds)
            setups[name] = (loaded, coords, [_loss_fn(args, loaded, coords, enc, b) for b in batches])
            shapes = [[len(b), max(len(enc.prompts[i]) for i in b)] for b in batches]
    times: dict[str, dict[str, list[float]]] = {d: {"fwd2": [], "step": [], "fwd2_cpu": [], "step_cpu": []} for d in setups}
    step_no, rep = [0], [0]

    def step(dtype: str) -> None:
        _, coords, fns = setups[dtype]
        zo_step(coords, fns[rep[0]], derive_key(21, 0, 0, step_no[0]), 1e-9, REF_EPS)
        step_no[0] += 1

    def forwards(dtype: str) -> None:
        fn = setups[dtype][2][rep[0]]
        with torch.inference_mode():
            fn()
            fn()

    for dtype in setups:  # warm-up
        forwards(dtype)
        step(dtype)
    for _ in range(args.reps):  # a pass times every batch; a pass's time is the mean over its batches
        for dtype in setups:
            acc = {k: 0.0 for k in times[dtype]}
            for rep[0] in range(len(batches)):
                for what, fn in (("fwd2", forwards), ("step", step)):
                    t, c = time.perf_counter(), time.process_time()
                    fn(dtype)
                    acc[what] += time.perf_counter() - t
                    acc[what + "_cpu"] += time.process_time() - c
            for k, v in acc.items():
                times[dtype][k].append(v / len(batches))
    rows = []
    med = {d: {k: statistics.median(v) for k, v in t.items()} for d, t in times.items()}
    for dtype, m in med.items():
        row = {"dtype": dtype, "two_forwards_s": m["fwd2"], "step_s": m["step"], "step_over_two_forwards": m["step"] / m["fwd2"],
               "step_over_two_forwards_cpu": m["step_cpu"] / m["fwd2_cpu"],
               "carriers": setups[dtype][1].carriers.summary() if setups[dtype][1].carriers else None,
               "batch_shapes": shapes}
        if "fp32" in med:
            row["fp32_step_over_step"] = med["fp32"]["step"] / m["step"]
            row["fp32_step_over_step_cpu"] = med["fp32"]["step_cpu"] / m["step_cpu"]
        rows.append(row)
        print(f"{dtype}: step / two forwards {row['step_over_two_forwards_cpu']:.3f} (cpu), "
              f"fp32 step / this step {row.get('fp32_step_over_step_cpu', float('nan')):.3f}", flush=True)
    return {"reps": args.reps, "rows": rows, "raw": times}


def section_accuracy(args: argparse.Namespace) -> dict[str, Any]:
    from meerkat_core.config.train import EvalSettings, TrainConfig
    from meerkat_core.fed.training import run_training
    from meerkat_core.rundir import RunDir

    work = Path(args.work)
    rows = []
    tasks = [_common.ensure_small_task(work)] if args.quick else args.acc_tasks
    for task in tasks:
        tname = _common.task_label(task)
        for seed in args.seeds:
            part = _common.ensure_partition(work / "partitions" / f"{tname}-dirichlet{args.alpha:g}-seed{seed}", task,
                                            args.clients, "dirichlet", seed, alpha=args.alpha)
            for dtype in args.acc_dtypes:
                eps = {"eps": args.acc_eps[dtype]} if dtype in args.acc_eps else {}
                tail = f"-eps{eps['eps']:g}" if eps else ""
                run = work / "runs" / f"{tname}-seed{seed}-{dtype}-R{args.rounds}xC{args.clients_per_round}xT{args.local_steps}{tail}"
                cfg = TrainConfig(**eps, model=args.model, mask=args.mask, partition=str(part), task=task, out=str(run),
                                  rounds=args.rounds, local_steps=args.local_steps,
                                  clients_per_round=args.clients_per_round, lr=args.lr, batch_size=args.batch_size,
                                  loss=args.loss, seed=seed, device=args.device, dtype=dtype,
                                  eval=EvalSettings(limit=args.eval_limit))
                summary_path = run / "summary.json"
                if summary_path.exists():
                    _common.check_same_settings(run, cfg, "precision")
                    status, summary = "read back", json.loads(summary_path.read_text())
                else:
                    cfg.resume = RunDir(run).exists()
                    status = "resumed" if cfg.resume else "trained"
                    summary = run_training(cfg, on_event=lambda m: print(f"  [{run.name}] {m}", file=sys.stderr))
                metrics = RunDir(run).read_metrics()
                rounds = [m for m in metrics if m.get("round", 0) > 0]
                steps = sum(m["steps"] for m in rounds)
                rows.append({"task": tname, "seed": seed, "dtype": dtype, "eps": cfg.eps, "run": str(run), "status": status,
                             "initial_accuracy": summary["initial_accuracy"], "final_accuracy": summary["final_accuracy"],
                             "eval_n": summary["eval_n"], "client_steps": steps,
                             "round_seconds_per_step": sum(m["seconds"] for m in rounds) / steps if steps else None})
                print(f"{tname} seed {seed} {dtype}: {summary['initial_accuracy']:.4f} -> {summary['final_accuracy']:.4f} "
                      f"({status})", flush=True)
    agg = {}
    for tname in dict.fromkeys(r["task"] for r in rows):
        entry = {}
        for dtype in args.acc_dtypes:
            sel = [r for r in rows if r["task"] == tname and r["dtype"] == dtype]
            m, sd = _common.mean_sd(r["final_accuracy"] for r in sel)
            entry[dtype] = {"mean_accuracy": m, "sd_accuracy": sd, "n": len(sel), "eps": sel[0]["eps"],
                            "round_seconds_per_step": _common.mean_sd(r["round_seconds_per_step"] for r in sel)[0]}
        if "fp32" in entry:
            for dtype in entry:
                if dtype != "fp32":
                    entry[dtype]["diff_vs_fp32"] = entry[dtype]["mean_accuracy"] - entry["fp32"]["mean_accuracy"]
                    entry[dtype]["fp32_step_over_step_in_rounds"] = (
                        entry["fp32"]["round_seconds_per_step"] / entry[dtype]["round_seconds_per_step"])
        agg[tname] = entry
    return {"rows": rows, "summary": agg, "budget": {
        "clients": args.clients, "partition": f"dirichlet({args.alpha:g})", "rounds": args.rounds,
        "clients_per_round": args.clients_per_round, "local_steps": args.local_steps, "batch_size": args.batch_size,
        "lr": args.lr, "loss": args.loss, "eval_limit": args.eval_limit, "seeds": args.seeds,
        "eps": {r["dtype"]: r["eps"] for r in rows}}}


SOURCES = ("as is", "exact inputs", "exact outputs")


def _emulate_linears(model: Any, carriers: Any, variant: str) -> None:
    """Every low-precision ``nn.Linear`` (its correction included) computes in fp32 from its weights'
    low-precision values; ``exact inputs``: from the unrounded input, output rounded; ``exact outputs``:
    from the rounded input, output left fp32. Only for the ``sources`` section (the model is thrown away)."""
    import torch.nn.functional as F
    from torch import nn

    from meerkat_core.models.dtypes import LOW_PRECISION

    corrected = {id(c.module): c for c in carriers.corrected.values()}
    for mod in model.modules():
        if not isinstance(mod, nn.Linear) or mod.weight.dtype not in LOW_PRECISION:
            continue
        w32, low = mod.weight.detach().float(), mod.weight.dtype
        b32 = None if mod.bias is None else mod.bias.detach().float()

        def forward(x: Any, mod: Any = mod, c: Any = corrected.get(id(mod)), w32: Any = w32, b32: Any = b32,
                    low: Any = low) -> Any:
            xin = x.float() if variant == "exact inputs" else x.to(low).float()
            y = F.linear(xin, w32, b32)
            if c is not None:  # the correction D changes with every write: read it live
                y = y + F.linear(xin.index_select(-1, c.cols), c.corr.float())
            return y if variant == "exact outputs" else y.to(low)

        mod.forward = forward


def section_sources(args: argparse.Namespace) -> dict[str, Any]:
    import gc

    loaded, coords = _load(args, "fp32")
    enc, batches = _batches(args, loaded)
    ref = {eps: _g_values(args, loaded, coords, enc, batches, eps) for eps in args.eps}
    del loaded, coords
    gc.collect()
    rows = []
    for dtype in (d for d in args.dtypes if d != "fp32"):
        for variant in SOURCES:
            loaded, coords = _load(args, dtype, "carriers")
            if variant != "as is":
                _emulate_linears(loaded.model, coords.carriers, variant)
            for eps in args.eps:
                gs = _g_values(args, loaded, coords, enc, batches, eps)
                row = {"dtype": dtype, "variant": variant, "eps": eps, **_rel_stats(gs, ref[eps]), "g": gs}
                rows.append(row)
                print(f"{dtype} {variant} eps {eps:g}: median rel err vs fp32 at the same eps {row['median']:.4f}, "
                      f"p90 {row['p90']:.4f}", flush=True)
            del loaded, coords
            gc.collect()
    return {"reference": {str(e): g for e, g in ref.items()}, "rows": rows}


def print_tables(doc: dict[str, Any]) -> None:
    if "errors" in doc:
        print(f"\n{'dtype':<6} {'writes':<9} {'eps':>7} {'median rel err':>15} {'p90':>8} {'sign flips':>11} {'erased':>7}")
        for r in doc["errors"]["rows"]:
            er = f"{r['erased_share']:.3f}" if r.get("erased_share") is not None else "-"
            print(f"{r['dtype']:<6} {r['mode']:<9} {r['eps']:>7g} {r['median']:>15.4f} {r['p90']:>8.4f} "
                  f"{r['sign_flips']:>5}/{r['n']:<5} {er:>7}")
    if "sources" in doc:
        print(f"\n{'dtype':<6} {'linear layers':<14} {'eps':>7} {'median rel err':>15} {'p90':>8} {'sign flips':>11}")
        for r in doc["sources"]["rows"]:
            print(f"{r['dtype']:<6} {r['variant']:<14} {r['eps']:>7g} {r['median']:>15.4f} {r['p90']:>8.4f} "
                  f"{r['sign_flips']:>5}/{r['n']:<5}")
    if "timing" in doc:
        print(f"\n{'dtype':<12} {'2 forwards s':>12} {'step s':>8} {'step/2fwd':>10} {'(cpu)':>7} {'fp32 step/step':>15}")
        for r in doc["timing"]["rows"]:
            print(f"{r['dtype']:<12} {r['two_forwards_s']:>12.3f} {r['step_s']:>8.3f} {r['step_over_two_forwards']:>10.3f} "
                  f"{r['step_over_two_forwards_cpu']:>7.3f} {r.get('fp32_step_over_step_cpu', float('nan')):>15.3f}")
    if "accuracy" in doc:
        print(f"\n{'task':<16} {'dtype':<6} {'eps':>7} {'final accuracy':>22} {'vs fp32':>8} {'s/step in rounds':>17}")
        for tname, entry in doc["accuracy"]["summary"].items():
            for dtype, e in entry.items():
                diff = f"{e['diff_vs_fp32']:+.4f}" if "diff_vs_fp32" in e else "-"
                sps = e["round_seconds_per_step"]
                print(f"{tname:<16} {dtype:<6} {e['eps']:>7g} {e['mean_accuracy']:.4f} ± {e['sd_accuracy']:.4f} ({e['n']})"
                      f" {diff:>8} {sps:>17.3f}")


@_common.keeps_torch_threads
def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    args = parse(argv)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.mask is None:
        args.mask = str(_common.ensure_mask(work / "masks" / "sensitivity.safetensors", args.model))
    doc: dict[str, Any] = {"machine": _common.machine(args.device), "settings": vars(args).copy(),
                           "cpu_bf16": _cpu_bf16()}
    for name in args.sections:
        t0 = time.perf_counter()
        doc[name] = {"sections_seconds": None, **globals()[f"section_{name}"](args)}
        doc[name]["sections_seconds"] = time.perf_counter() - t0
    print_tables(doc)
    _common.write_json(Path(args.json_out or "benchmarks/results/precision.json"), doc)
    return doc


def _cpu_bf16() -> dict[str, Any]:
    import torch

    from meerkat_core.models import choose_dtype, cpu_bf16_feature

    choice = choose_dtype("auto", torch.device("cpu"))
    return {"feature": cpu_bf16_feature(), "capability": torch.backends.cpu.get_cpu_capability(),
            "auto": choice.name, "reason": choice.reason}


if __name__ == "__main__":
    main()
