"""Meerkat-vp vs Meerkat on a split with single-label clients (METHOD.md section 5, docs/GRADIP.md).

For every seed S: ``meerkat partition --scheme mixed --extreme-clients E --seed S``, then one run per
arm on that split, all with the same budget settings:

* ``meerkat``    plain Meerkat: ``clients_per_round`` sampled clients, ``local_steps`` each, every round;
* ``meerkat-vp`` round 1 is the calibration round (every client, ``cal_steps``), then the same sampling,
  flagged clients run ``vp_stopped_steps`` (1) steps;
* ``vp-random``  (optional) the paper's control: as many clients stopped, chosen at random;
* ``vp-none``    (optional) calibration round, nobody stopped: Meerkat with vp's round-1 budget.

Reported per run: the detector's result (flagged vs the partition's single-label clients, with the
statistics' separation), the final global test accuracy, client steps; per arm the mean and the
sample standard deviation over seeds, and the paired difference to ``meerkat``. Runs are resumable:
an arm whose run directory holds a summary is read back, a partial one is resumed.

    python benchmarks/vp_vs_meerkat.py --mask MASK --out DIR [--seeds 0 1 2] [--json FILE]
    python benchmarks/vp_vs_meerkat.py --quick            # tiny-llama, < 5 minutes (CI)

On a shared CPU set ``OMP_WAIT_POLICY=PASSIVE`` (see benchmarks/zo_overhead.py).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

ARMS = {
    "meerkat": dict(algorithm="meerkat"),
    "meerkat-vp": dict(algorithm="meerkat-vp"),
    "vp-random": dict(algorithm="meerkat-vp", vp_control="random"),
    "vp-none": dict(algorithm="meerkat-vp", vp_classifier="none"),
}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny-llama, small budget (< 5 min); for CI")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--mask", help="mask file (default with --quick: computed into --out)")
    p.add_argument("--task", default="sentiment2")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--extreme", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=["meerkat", "meerkat-vp"], choices=sorted(ARMS))
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--local-steps", type=int, default=10)
    p.add_argument("--clients-per-round", type=int, default=10)
    p.add_argument("--cal-steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=7e-5)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--loss", default="lm", choices=["lm", "classification"], help="training loss (TrainConfig.loss)")
    p.add_argument("--eval-limit", type=int, default=200)
    p.add_argument("--vp", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra TrainConfig vp_* settings, e.g. vp_rho_later=3")
    p.add_argument("--out", default="runs/vp_vs_meerkat")
    p.add_argument("--json", dest="json_out", help="write the results here (default: OUT/results.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.clients, args.extreme, args.seeds = "tiny-llama", 4, 2, args.seeds[:1]
        args.rounds, args.local_steps, args.clients_per_round, args.cal_steps = 2, 3, 4, 8
        args.batch_size, args.lr, args.eval_limit = 2, 1e-2, 16
        args.arms = ["meerkat", "meerkat-vp", "vp-random"]
        if args.out == "runs/vp_vs_meerkat":
            args.out = "runs/vp_vs_meerkat_quick"
    return args


def _vp_value(raw: str) -> tuple[str, Any]:
    key, _, val = raw.partition("=")
    for cast in (int, float):
        try:
            return key, cast(val)
        except ValueError:
            pass
    return key, val


def ensure_inputs(args: argparse.Namespace, out: Path, seed: int) -> tuple[str, Path]:
    mask = args.mask
    if mask is None:
        if not args.quick:
            raise SystemExit("--mask is required (make one with `meerkat mask --model MODEL --out FILE`)")
        mask = str(_common.ensure_mask(out / "tiny.mask", args.model))
    part = _common.ensure_partition(out / f"partition-seed{seed}", args.task, args.clients, "mixed", seed,
                                    extreme_clients=args.extreme)
    return mask, part


def run_arm(args: argparse.Namespace, arm: str, seed: int, mask: str, part: Path, out: Path) -> dict[str, Any]:
    from meerkat_core.config.train import TrainConfig
    from meerkat_core.rundir import RunDir
    from meerkat_core.fed.training import run_training

    run = out / f"seed{seed}-{arm}"
    summary_path = run / "summary.json"
    cfg = TrainConfig.from_dict(dict(
        model=args.model, mask=mask, partition=str(part), task=args.task, out=str(run), rounds=args.rounds,
        local_steps=args.local_steps, clients_per_round=args.clients_per_round, lr=args.lr, eps=args.eps,
        batch_size=args.batch_size, loss=args.loss, seed=seed, device="cpu", eval_limit=args.eval_limit,
        vp_calibration_steps=args.cal_steps, **ARMS[arm], **dict(_vp_value(v) for v in args.vp),
    ))
    t0 = time.perf_counter()
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
    else:
        cfg.resume = RunDir(run).exists()
        summary = run_training(cfg, on_event=lambda m: print(f"  [{arm} seed {seed}] {m}", file=sys.stderr))
    row: dict[str, Any] = {
        "seed": seed, "arm": arm, "run": str(run), "final_accuracy": summary["final_accuracy"],
        "initial_accuracy": summary["initial_accuracy"], "eval_n": summary["eval_n"],
        "client_steps": summary["total_client_steps"], "skipped_steps": summary["skipped_steps"],
        "seconds": time.perf_counter() - t0,
    }
    if cfg.algorithm == "meerkat-vp":
        from meerkat_core.gradip.report import build_report

        rep = build_report(run)
        det = rep.detector() or {}
        row.update(flagged=rep.flagged, stopped=rep.to_json()["stopped"], extreme=det.get("extreme"),
                   detector_exact=det.get("exact"), separation=det.get("separation"))
    return row


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def summarize(rows: list[dict[str, Any]], arms: list[str]) -> dict[str, Any]:
    by = {(r["seed"], r["arm"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    out: dict[str, Any] = {}
    for arm in arms:
        accs = [by[(s, arm)]["final_accuracy"] for s in seeds if (s, arm) in by]
        m, sd = _mean_sd(accs)
        entry = {"n": len(accs), "mean_accuracy": m, "sd_accuracy": sd,
                 "mean_client_steps": statistics.fmean(by[(s, arm)]["client_steps"] for s in seeds if (s, arm) in by)}
        if arm != "meerkat" and "meerkat" in arms:
            diffs = [by[(s, arm)]["final_accuracy"] - by[(s, "meerkat")]["final_accuracy"]
                     for s in seeds if (s, arm) in by and (s, "meerkat") in by]
            entry["paired_diff_mean"], entry["paired_diff_sd"] = _mean_sd(diffs)
            entry["paired_diffs"] = diffs
        out[arm] = entry
    return out


def print_table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    print(f"{'seed':>4} {'arm':<11} {'acc before':>10} {'acc after':>9} {'steps':>6} {'flagged':<12} {'stopped':<12} "
          f"{'extreme':<12} exact")
    for r in rows:
        print(f"{r['seed']:>4} {r['arm']:<11} {r['initial_accuracy']:>10.4f} {r['final_accuracy']:>9.4f} "
              f"{r['client_steps']:>6} {str(r.get('flagged', '-')):<12} {str(r.get('stopped', '-')):<12} "
              f"{str(r.get('extreme', '-')):<12} "
              f"{r.get('detector_exact', '-')}")
    print()
    print(f"{'arm':<11} {'n':>2} {'mean acc':>9} {'sd':>7} {'steps':>7} {'vs meerkat (paired)':>22}")
    for arm, s in summary.items():
        diff = (f"{s['paired_diff_mean']:+.4f} ± {s['paired_diff_sd']:.4f}" if "paired_diff_mean" in s else "")
        print(f"{arm:<11} {s['n']:>2} {s['mean_accuracy']:>9.4f} {s['sd_accuracy']:>7.4f} "
              f"{s['mean_client_steps']:>7.0f} {diff:>22}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        mask, part = ensure_inputs(args, out, seed)
        for arm in args.arms:
            rows.append(run_arm(args, arm, seed, mask, part, out))
            print(f"seed {seed} {arm}: accuracy {rows[-1]['final_accuracy']:.4f}"
                  + (f", flagged {rows[-1]['flagged']} (extreme {rows[-1]['extreme']})" if "flagged" in rows[-1] else ""),
                  file=sys.stderr, flush=True)
    summary = summarize(rows, args.arms)
    print_table(rows, summary)
    from meerkat_core.atomic import write_json_atomic
    from meerkat_core.gradip.report import finite_json

    doc = {"settings": {k: v for k, v in vars(args).items() if k != "json_out"}, "runs": rows, "summary": summary}
    target = Path(args.json_out) if args.json_out else out / "results.json"
    write_json_atomic(target, finite_json(doc))
    print(f"wrote {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
