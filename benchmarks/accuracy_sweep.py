"""Accuracy at equal budget: Meerkat vs full-parameter ZO vs random and magnitude masks, under IID,
Dirichlet(0.5) and mixed partitions, and the local-steps sweep (issue #7, item 5; METHOD.md section 6).

Grid (every seed S):

* partitions  ``iid``, ``dirichlet`` (``--alpha``, 0.5), ``mixed`` (``--extreme`` single-label clients), each
              made with ``meerkat partition ... --seed S``;
* arms        ``meerkat``    the sensitivity mask (``--mask``; density 1e-3 in the paper's setting);
              ``full-zo``    ``--mask all`` (full-parameter ZO, FedZO/FedMeZO style; its own ``--lr-full-zo``);
              ``random``     ``meerkat mask --method random`` at the same density (one mask per seed);
              ``magnitude``  ``meerkat mask --method magnitude`` at the same density;
              every arm with the same rounds, local steps, clients, batch and seed;
* sweep       ``meerkat`` on ``--sweep-partition`` with local steps T in ``--sweep-steps`` (1 5 10 50) at a
              fixed number of local steps per client (``--sweep-total``, 50): rounds = total / T.

Per run: initial and final global test accuracy, client steps, bytes; per (partition, arm) and per T: the
mean, the sample standard deviation, min and max over seeds, and the paired difference to ``meerkat``.
Resumable: a run whose directory holds a summary is read back, a partial one is resumed, so the grid
can be filled over several invocations (identical settings share one run directory).

    python benchmarks/accuracy_sweep.py --mask MASK --out DIR [--seeds 0 1 2] [--json FILE]
    python benchmarks/accuracy_sweep.py --quick    # tiny-llama, small task, one seed, every arm/partition

The full grid (3 seeds x 3 partitions x 4 arms + the sweep) on smollm2-135m is hours of CPU; run it on
a GPU or a quiet many-core machine (``--device cuda``), or a slice at a time (``--partitions``, ``--arms``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

ARMS = ("meerkat", "full-zo", "random", "magnitude")
PARTITIONS = ("iid", "dirichlet", "mixed")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny-llama, small task, one seed (CI)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--mask", help="sensitivity mask (default with --quick: computed into --out)")
    p.add_argument("--density", type=float, default=None, help="of the random/magnitude masks (default: --mask's)")
    p.add_argument("--task", default="sentiment2")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--clients-per-round", type=int, default=10)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--extreme", type=int, default=3, help="single-label clients of the mixed partition")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="*", choices=ARMS, default=list(ARMS), help="empty: no grid (the sweep only)")
    p.add_argument("--partitions", nargs="+", choices=PARTITIONS, default=list(PARTITIONS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--sweep-steps", type=int, nargs="*", default=[1, 5, 10, 50], help="empty: no sweep")
    p.add_argument("--sweep-total", type=int, default=50, help="local steps per client in every sweep run")
    p.add_argument("--sweep-partition", choices=PARTITIONS, default="dirichlet")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4, help="sparse arms")
    p.add_argument("--lr-full-zo", type=float, default=1e-6, help="full-parameter ZO (needs a far smaller lr)")
    p.add_argument("--z-cache-mb", type=int, default=None,
                   help="TrainConfig.z_cache_mb of the full-zo arm (default: enough for the model's d, so z is "
                        "drawn once per step; same bits as without)")
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--loss", default="classification", choices=["lm", "classification"],
                   help="training loss (TrainConfig.loss); classification is the one that moves SmolLM2's accuracy")
    p.add_argument("--eval-limit", type=int, default=200)
    _common.add_run_flags(p, "runs/accuracy_sweep", "torch.set_num_threads (default: torch's; 1 with --quick)")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.clients, args.clients_per_round, args.extreme = "tiny-llama", 4, 4, 1
        if args.seeds == [0, 1, 2]:  # the default: one seed; seeds given explicitly are kept
            args.seeds = [0]
        args.rounds, args.local_steps, args.sweep_steps, args.sweep_total = 1, 2, [1, 2], 2
        args.batch_size, args.lr, args.lr_full_zo, args.eval_limit = 2, 1e-2, 1e-3, 16
        args.threads = args.threads or 1
        if args.out == "runs/accuracy_sweep":
            args.out = "runs/accuracy_sweep_quick"
    bad = [t for t in args.sweep_steps if t < 1 or args.sweep_total % t]
    if bad:
        p.error(f"--sweep-steps {bad}: each T must divide --sweep-total {args.sweep_total}")
    if args.mask is None and not args.quick and {"meerkat"} & set(args.arms + (["meerkat"] if args.sweep_steps else [])):
        p.error("--mask is required (make one with `meerkat mask --model MODEL --density 1e-3 --out FILE`)")
    return args


def masks_for(args: argparse.Namespace, out: Path, seed: int, sens: str) -> dict[str, str]:
    return _common.arm_masks(out / "masks", args.model, sens, args.density or _common.mask_density(sens), seed,
                             args.quick)


def partition_for(args: argparse.Namespace, out: Path, task: str, scheme: str, seed: int) -> Path:
    extra = {"iid": {}, "dirichlet": {"alpha": args.alpha}, "mixed": {"extreme_clients": args.extreme}}
    name = {"iid": "iid", "dirichlet": f"dirichlet{args.alpha:g}", "mixed": f"mixed{args.extreme}"}[scheme]
    return _common.ensure_partition(out / "partitions" / f"{name}-seed{seed}", task, args.clients, scheme, seed,
                                    **extra[scheme])


def run_one(args: argparse.Namespace, out: Path, task: str, group: str, part_name: str, part: Path, arm: str,
            mask: str, seed: int, steps: int, rounds: int) -> dict[str, Any]:
    from meerkat_core.config.train import EvalSettings, TrainConfig

    run = out / "runs" / f"{part_name}-seed{seed}-{arm}-T{steps}-R{rounds}"
    lr = args.lr_full_zo if arm == "full-zo" else args.lr
    cfg = TrainConfig(model=args.model, mask=mask, partition=str(part), task=task, out=str(run), rounds=rounds,
                      local_steps=steps, clients_per_round=args.clients_per_round, lr=lr, eps=args.eps,
                      batch_size=args.batch_size, loss=args.loss, seed=seed, device=args.device,
                      eval=EvalSettings(limit=args.eval_limit))
    if arm == "full-zo":
        cfg.z_cache_mb = args.z_cache_mb if args.z_cache_mb is not None else _common.FULL_ZO_CACHE_MB
    t0 = time.perf_counter()
    summary, resumed = _common.train_or_read_back(cfg, "accuracy_sweep")
    return {"group": group, "seed": seed, "partition": part_name, "arm": arm, "local_steps": steps, "rounds": rounds,
            "lr": lr, "run": str(run), "status": resumed, "final_accuracy": summary["final_accuracy"],
            "initial_accuracy": summary["initial_accuracy"], "eval_n": summary["eval_n"],
            "client_steps": summary["total_client_steps"], "skipped_steps": summary["skipped_steps"],
            "bytes_up": summary["bytes_up"], "bytes_down": summary["bytes_down"], "k": summary["k"],
            "seconds": time.perf_counter() - t0}


def _agg(rows: list[dict[str, Any]]) -> dict[str, Any]:
    accs = [r["final_accuracy"] for r in rows]
    m, sd = _common.mean_sd(accs)
    fin = [a for a in accs if a is not None and math.isfinite(a)]
    return {"n": len(fin), "mean_accuracy": m, "sd_accuracy": sd, "min_accuracy": min(fin) if fin else None,
            "max_accuracy": max(fin) if fin else None, "seeds": sorted(r["seed"] for r in rows),
            "mean_client_steps": _common.mean_sd(r["client_steps"] for r in rows)[0]}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    grid: dict[str, dict[str, Any]] = {}
    for part in dict.fromkeys(r["partition"] for r in rows if r["group"] == "grid"):
        by_arm: dict[str, Any] = {}
        for arm in dict.fromkeys(r["arm"] for r in rows if r["group"] == "grid" and r["partition"] == part):
            sel = [r for r in rows if r["group"] == "grid" and r["partition"] == part and r["arm"] == arm]
            entry = _agg(sel)
            base = {r["seed"]: r["final_accuracy"] for r in rows
                    if r["group"] == "grid" and r["partition"] == part and r["arm"] == "meerkat"}
            if arm != "meerkat" and base:
                diffs = [r["final_accuracy"] - base[r["seed"]] for r in sel if r["seed"] in base]
                entry["paired_diff_vs_meerkat_mean"], entry["paired_diff_vs_meerkat_sd"] = _common.mean_sd(diffs)
            by_arm[arm] = entry
        grid[part] = by_arm
    sweep = {}
    for t in sorted({r["local_steps"] for r in rows if r["group"] == "sweep"}):
        sweep[str(t)] = _agg([r for r in rows if r["group"] == "sweep" and r["local_steps"] == t])
    return {"grid": grid, "sweep": sweep}


def print_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    print(f"{'group':<6} {'partition':<12} {'seed':>4} {'arm':<10} {'T':>3} {'R':>3} {'acc before':>10} "
          f"{'acc after':>9} {'steps':>6} {'status':<9}")
    for r in rows:
        print(f"{r['group']:<6} {r['partition']:<12} {r['seed']:>4} {r['arm']:<10} {r['local_steps']:>3} "
              f"{r['rounds']:>3} {r['initial_accuracy']:>10.4f} {r['final_accuracy']:>9.4f} {r['client_steps']:>6} "
              f"{r['status']:<9}")
    print()
    arms = list(dict.fromkeys(a for p in summary["grid"].values() for a in p))
    print(f"{'final accuracy':<14} " + " ".join(f"{a:>22}" for a in arms) + "   (mean ± sd over seeds (n))")
    for part, by_arm in summary["grid"].items():
        cells = []
        for a in arms:
            e = by_arm.get(a)
            cells.append(f"{e['mean_accuracy']:.4f} ± {e['sd_accuracy']:.4f} ({e['n']})" if e else "-")
        print(f"{part:<14} " + " ".join(f"{c:>22}" for c in cells))
    if summary["sweep"]:
        print()
        print(f"{'local steps T':>13} {'rounds':>6} {'mean acc':>9} {'sd':>7} {'n':>2}")
        for t, e in summary["sweep"].items():
            rounds = next(r["rounds"] for r in rows if r["group"] == "sweep" and r["local_steps"] == int(t))
            print(f"{t:>13} {rounds:>6} {e['mean_accuracy']:>9.4f} {e['sd_accuracy']:>7.4f} {e['n']:>2}")


@_common.keeps_torch_threads
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task = _common.ensure_small_task(out) if args.quick else args.task
    sens = args.mask or str(_common.ensure_mask(out / "masks" / "sensitivity.safetensors", args.model))
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        masks = masks_for(args, out, seed, sens) if set(args.arms) - {"meerkat", "full-zo"} else \
            {"meerkat": sens, "full-zo": "all"}
        for scheme in args.partitions if args.arms else []:
            part = partition_for(args, out, task, scheme, seed)
            for arm in args.arms:
                rows.append(run_one(args, out, task, "grid", scheme, part, arm, masks[arm], seed,
                                    args.local_steps, args.rounds))
                r = rows[-1]
                print(f"seed {seed} {scheme} {arm}: accuracy {r['final_accuracy']:.4f} ({r['status']})",
                      file=sys.stderr, flush=True)
        if args.sweep_steps:
            part = partition_for(args, out, task, args.sweep_partition, seed)
            for t in args.sweep_steps:
                rows.append(run_one(args, out, task, "sweep", args.sweep_partition, part, "meerkat", sens, seed, t,
                                    args.sweep_total // t))
                r = rows[-1]
                print(f"seed {seed} sweep T={t}: accuracy {r['final_accuracy']:.4f} ({r['status']})",
                      file=sys.stderr, flush=True)
    summary = summarize(rows)
    print_table(rows, summary)
    doc = {"machine": _common.machine(args.device),
           "settings": {k: v for k, v in vars(args).items() if k != "json_out"} | {"task": task, "mask": sens},
           "runs": rows, "summary": summary}
    _common.write_json(Path(args.json_out) if args.json_out else out / "results.json", doc)
    return doc


if __name__ == "__main__":
    main(sys.argv[1:])
