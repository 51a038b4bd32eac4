"""Does Meerkat-vp's detector transfer to tasks it was not tuned on? (issue #23, docs/GRADIP.md)

The detector only reads the calibration round's GradIP trajectories, so every run here is ONE round of
``meerkat-vp`` (every client, ``--cal-steps`` steps, classifier ``none``: nobody stopped). Its
trajectories are cached as JSON (``OUT/cache/TASK-seedS.json``); scoring a classifier on them costs
nothing, so all classifiers are compared on exactly the same trajectories.

One run per task and seed: a ``mixed`` split of ``--population + --extreme`` clients (10 + 3: three
single-label clients, ten IID shares of the rest). In a calibration round every client starts from the
same global model and walks its own data with its own random directions, so a client's trajectory does
not depend on which other clients take part. From each run the benchmark scores rounds of
``--population`` clients: ``iid`` (the ten IID clients: nobody may be flagged) and ``mixedE`` for
E = 1 .. 3 (E single-label clients, every choice of them, with the first 10 - E IID clients), at every
calibration length in ``--score-steps`` (the first T steps of a 100-step round are exactly a T-step
round): flagged, true / false positives, missed, abstained, and the margins.

    python benchmarks/vp_detector.py --mask MASK --out DIR [--tasks ...] [--seeds 0 1 2] [--runs-only]
    python benchmarks/vp_detector.py --quick            # tiny-llama, well under a minute (CI)

``sotu_era`` is a 4-class task file over State of the Union passages (benchmarks/_sotu_era.py); ``trec``
(6 question types), ``bbc_news`` and ``sentiment3`` are built in.
``--task-lr TASK=LR`` runs a task at its own step size (one at which its IID clients' loss falls: a
classifier reads how a converging client's signal falls, RESULTS.md section 11). A cached run made with
other settings (model, steps, lr, batch, loss, eps, clients) is refused, never mixed in.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

TUNING_TASK = "sentiment2"
CLASSIFIERS = ("loss", "population", "rho")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny-llama, tiny budget (well under a minute); for CI")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--mask", help="mask file (default with --quick: computed into --out)")
    p.add_argument("--tasks", nargs="+", default=[TUNING_TASK, "sentiment3", "sotu_era"],
                   help="built-in task names, task JSON files, or sotu_era (built into OUT)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--population", type=int, default=10, help="clients in every scored round")
    p.add_argument("--extreme", type=int, default=3, help="single-label clients of the split (up to this many scored)")
    p.add_argument("--cal-steps", type=int, default=100)
    p.add_argument("--score-steps", type=int, nargs="+", default=[30, 50, 100],
                   help="calibration lengths scored (prefixes of the --cal-steps round)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--task-lr", nargs="+", default=[], metavar="TASK=LR",
                   help="this task's lr instead of --lr (a step size at which its IID clients' loss falls)")
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--loss", default="classification", choices=["lm", "classification"])
    p.add_argument("--classifiers", nargs="+", default=list(CLASSIFIERS))
    p.add_argument("--runs-only", action="store_true", help="run (or read back) the calibration rounds, score nothing")
    p.add_argument("--out", default="runs/vp_detector")
    p.add_argument("--json", dest="json_out", help="write the results here (default: OUT/results.json)")
    args = p.parse_args(argv)
    args.task_lr = parse_task_lr(args.task_lr, args.tasks)
    if args.quick:
        args.model, args.population, args.extreme, args.seeds = "tiny-llama", 6, 2, args.seeds[:1]
        args.cal_steps, args.score_steps, args.batch_size, args.lr = 8, [4, 8], 2, 1e-2
        if args.tasks == p.get_default("tasks"):
            args.tasks = ["sentiment2-small"]
        if args.out == p.get_default("out"):
            args.out = "runs/vp_detector_quick"
    return args


def parse_task_lr(items: list[str], tasks: list[str]) -> dict[str, float]:
    """``--task-lr TASK=LR ...`` as a mapping; a task not in ``--tasks`` or an LR that is not a positive
    number is an error."""
    out: dict[str, float] = {}
    for item in items:
        task, sep, value = item.partition("=")
        try:
            lr = float(value)
        except ValueError:
            lr = math.nan
        if not sep or task not in tasks or not lr > 0:
            raise SystemExit(f"--task-lr {item}: need TASK=LR with TASK one of --tasks ({' '.join(tasks)}) and LR > 0")
        out[task] = lr
    return out


def run_settings(args: argparse.Namespace, task: str) -> dict[str, Any]:
    """What a cached calibration run of ``task`` was made with; a cache made otherwise is refused."""
    return {"model": args.model, "cal_steps": args.cal_steps, "lr": args.task_lr.get(task, args.lr),
            "batch_size": args.batch_size, "loss": args.loss, "eps": args.eps,
            "num_clients": args.population + args.extreme}


def check_cached(doc: dict[str, Any], want: dict[str, Any], cache: Path) -> dict[str, Any]:
    """``doc`` (a cached run) when it was made with the settings ``want``; else exit with what differs."""
    have = {k: doc.get(k) for k in want}
    have["num_clients"] = len(doc.get("clients", {}))
    diff = [f"{k} {have[k]!r} (asked {v!r})" for k, v in want.items() if have[k] != v]
    if diff:
        raise SystemExit(f"{cache}: cached with other settings: {', '.join(diff)}; use another --out or delete the file")
    return doc


def task_arg(task: str, out: Path, quick: bool) -> str:
    """What ``--task`` gets for a task name of this benchmark."""
    if task == "sotu_era":
        import _sotu_era

        return str(_sotu_era.write_task(out / "tasks" / "sotu_era"))
    if task == "sentiment2-small":
        return _common.ensure_small_task(out / "tasks")
    return task


def run_key(task: str, seed: int) -> str:
    return f"{_common.task_label(task)}-seed{seed}"


def calibration_run(args: argparse.Namespace, out: Path, mask: str, task: str, seed: int) -> dict[str, Any]:
    """One calibration round (cached): per client its GradIP trajectory and the partition's truth."""
    cache = out / "cache" / f"{run_key(task, seed)}.json"
    want = run_settings(args, task)
    if cache.exists():
        return check_cached(json.loads(cache.read_text()), want, cache)
    from meerkat_core.config.train import EvalSettings, TrainConfig, VPSettings
    from meerkat_core.fed.training import run_training
    from meerkat_core.gradip import load_trajectories
    from meerkat_core.partition import load_partition

    key = run_key(task, seed)
    spec = task_arg(task, out, args.quick)
    part = _common.ensure_partition(out / "partitions" / key, spec, args.population + args.extreme, "mixed", seed,
                                    extreme_clients=args.extreme)
    run = out / "runs" / key
    if run.exists():  # a round that did not finish: run it again from the start
        import shutil

        shutil.rmtree(run)
    cfg = TrainConfig(
        model=args.model, mask=mask, partition=str(part), task=spec, out=str(run), rounds=1, lr=want["lr"], eps=args.eps,
        batch_size=args.batch_size, loss=args.loss, seed=seed, device="cpu", eval=EvalSettings(limit=4),
        algorithm="meerkat-vp", vp=VPSettings(calibration_steps=args.cal_steps, classifier="none"),
    )
    t0 = time.perf_counter()
    run_training(cfg, on_event=lambda m: print(f"  [{key}] {m}", file=sys.stderr))
    seconds = time.perf_counter() - t0
    manifest = load_partition(part)
    trajs = load_trajectories(run).for_round(1)
    doc = {
        "key": key, "task": _common.task_label(task), "seed": seed, "run": str(run),
        **{k: v for k, v in want.items() if k != "num_clients"},  # read back by check_cached
        "seconds": seconds, "machine": _common.machine("cpu"),
        "clients": {
            str(c): {"extreme": bool(manifest.clients[c].is_extreme),
                     "label_entropy_bits": manifest.clients[c].label_entropy_bits,
                     "gradip": [float(v) for v in t.gradip], "g": [float(v) for v in t.g], "loss": [float(v) for v in t.loss]}
            for c, t in sorted(trajs.items())
        },
    }
    _common.write_json(cache, doc)
    return doc


# -- scoring -------------------------------------------------------------------------------------
def trajectories(run: dict[str, Any], steps: int, ids: dict[int, dict[str, Any]] | None = None) -> dict[int, Any]:
    """The first ``steps`` steps of every client of a cached run (or of the clients in ``ids``)."""
    from meerkat_core.gradip import Trajectory

    clients = ids if ids is not None else {int(c): v for c, v in run["clients"].items()}
    return {c: Trajectory.from_lists(1, c, v["gradip"][:steps], v["g"][:steps], loss=v["loss"][:steps])
            for c, v in sorted(clients.items())}


def populations(run: dict[str, Any], size: int) -> list[dict[str, Any]]:
    """The rounds of ``size`` clients scored from one run: ``iid`` (the first ``size`` IID clients) and,
    for every choice of e single-label clients, ``mixed<e>`` (those plus the first ``size - e`` IID ones)."""
    from itertools import combinations

    clients = {int(c): v for c, v in run["clients"].items()}
    extreme = sorted(c for c, v in clients.items() if v["extreme"])
    iid = sorted(c for c in clients if c not in extreme)
    out = []

    def pop(setting: str, ext: tuple[int, ...], ids: list[int]) -> dict[str, Any]:
        return {"task": run["task"], "seed": run["seed"], "setting": setting, "extreme": sorted(ext),
                "clients": {c: clients[c] for c in sorted(ids)}, "run": run["key"]}

    if len(iid) >= size:
        out.append(pop("iid", (), iid[:size]))
    for e in range(1, min(len(extreme), size - 1) + 1):
        for keep in combinations(extreme, e):
            out.append(pop(f"mixed{e}", keep, list(keep) + iid[: size - e]))
    return out


def score(pop: dict[str, Any], name: str, steps: int) -> dict[str, Any]:
    from meerkat_core.gradip import make_classifier

    clf = make_classifier(name)
    d = clf.classify(trajectories({}, steps, pop["clients"]))
    ext, flagged = set(pop["extreme"]), set(d.flagged)
    others = [c for c in pop["clients"] if c not in ext]
    sep = {}
    for key in d.thresholds:
        xs = [d.margins[c][key] for c in ext]
        ys = [d.margins[c][key] for c in others]
        sep[key] = {"min_extreme": min(xs) if xs else None, "max_other": max(ys) if ys else None}
    return {
        "task": pop["task"], "seed": pop["seed"], "setting": pop["setting"], "clients": sorted(pop["clients"]),
        "classifier": name, "steps": steps, "extreme": sorted(ext), "flagged": sorted(flagged),
        "true_positives": len(flagged & ext), "false_positives": len(flagged - ext), "missed": len(ext - flagged),
        "exact": flagged == ext, "outcome": d.outcome, "reason": d.reason, "margins": sep,
        "short_calibration": d.short_calibration, "population": d.population,
    }


def summarize(scores: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (task, setting, classifier, steps): populations, exact, TP / single-label, FP, abstained, and the
    worst margins (min over single-label clients, max over the others, of value / threshold)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for s in scores:
        groups.setdefault((s["task"], s["setting"], s["classifier"], s["steps"]), []).append(s)
    rows = []
    for (task, setting, name, steps), items in groups.items():
        worst: dict[str, dict[str, float | None]] = {}
        for key in items[0]["margins"]:
            xs = [i["margins"][key]["min_extreme"] for i in items if i["margins"][key]["min_extreme"] is not None]
            ys = [i["margins"][key]["max_other"] for i in items if i["margins"][key]["max_other"] is not None]
            worst[key] = {"min_extreme": min(xs) if xs else None, "max_other": max(ys) if ys else None}
        rows.append({
            "task": task, "tuning": task == TUNING_TASK, "setting": setting, "classifier": name, "steps": steps,
            "populations": len(items),
            "seeds": sorted({i["seed"] for i in items}), "exact": sum(i["exact"] for i in items),
            "true_positives": sum(i["true_positives"] for i in items),
            "single_label": sum(len(i["extreme"]) for i in items),
            "false_positives": sum(i["false_positives"] for i in items),
            "abstained": sum(i["outcome"] == "abstained" for i in items), "worst_margins": worst,
        })
    return sorted(rows, key=lambda r: (not r["tuning"], r["task"], r["setting"], r["steps"], r["classifier"]))


def _m(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.2f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'task':<18} {'setting':<8} {'T':>4} {'classifier':<11} {'pops':>4} {'exact':>6} {'TP/single':>9} "
          f"{'FP':>3} {'abst':>4}  worst margins (min single-label / max other, value/threshold)")
    for r in rows:
        task = r["task"] + (" (tuning)" if r["tuning"] else "")
        margins = "  ".join(f"{k} {_m(v['min_extreme'])}/{_m(v['max_other'])}" for k, v in r["worst_margins"].items())
        print(f"{task:<18} {r['setting']:<8} {r['steps']:>4} {r['classifier']:<11} {r['populations']:>4} "
              f"{r['exact']:>3}/{r['populations']:<2} {r['true_positives']:>4}/{r['single_label']:<4} "
              f"{r['false_positives']:>3} {r['abstained']:>4}  {margins}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mask = args.mask
    if mask is None and args.quick:
        mask = str(_common.ensure_mask(out / "tiny.mask", args.model))
    if mask is None:
        raise SystemExit("--mask is required (make one with `meerkat mask --model MODEL --out FILE`)")
    runs = []
    for seed in args.seeds:  # seed-major: a partial grid still covers every task
        for task in args.tasks:
            runs.append(calibration_run(args, out, mask, task, seed))
            print(f"{runs[-1]['key']}: {runs[-1]['seconds']:.0f} s", file=sys.stderr, flush=True)
    if args.runs_only:
        return 0
    from meerkat_core.gradip import Trajectory
    from meerkat_core.gradip.classify import rising_loss_warning

    for r in runs:  # whether each calibration converged: a run whose loss rose is no fair test of a classifier
        warning = rising_loss_warning({int(c): Trajectory.from_lists(1, int(c), v["gradip"], loss=v["loss"])
                                       for c, v in r["clients"].items()})
        r["loss_warning"] = warning
        print(f"{r['key']}: {'LOSS ROSE: ' + warning if warning else 'calibration loss fell'}", file=sys.stderr)
    pops = [p for r in runs for p in populations(r, args.population)]
    scores = [score(p, name, t) for p in pops for name in args.classifiers for t in args.score_steps]
    rows = summarize(scores)
    print_table(rows)
    from meerkat_core.gradip import make_classifier

    doc = {
        "settings": {k: v for k, v in vars(args).items() if k != "json_out"},
        "tuning_task": TUNING_TASK, "machine": _common.machine("cpu"),
        "classifiers": {n: make_classifier(n).params() for n in args.classifiers},
        "runs": [{k: v for k, v in r.items() if k != "clients"} for r in runs],
        "summary": rows, "scores": scores,
    }
    _common.write_json(Path(args.json_out) if args.json_out else out / "results.json", doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
