"""The paper's five claims on a setting hard enough to separate the arms (issue #21; METHOD.md section 6).

benchmarks/RESULTS.md section 5 compared the arms at 125 client steps on binary tweet sentiment, where they
tie. This driver runs the paper's comparisons on multi-class tasks under strong label skew, with every arm
at its own learning rate chosen on a validation split, and states for each claim whether it held.

Tasks      ``--tasks`` (``bbc_news`` 5 classes, ``sentiment3`` 3 classes; both offline), model ``--model``
           (``smollm2-135m``), the default classification loss.
Validation For every task two task files in ``OUT/tasks/``: ``TASK-val`` (train = the task's train split
           minus a validation slice, test = that slice) and, for the check below, ``TASK-trainonly``
           (the same train rows, test = the task's real test split). The slice is stratified: per class
           ``--val-per-class`` rows drawn with a fixed seed (``VAL_SEED``), interleaved class by class;
           the other train rows keep their order. Partitions are made from ``TASK-val``, so no client
           ever sees a validation row, and every run trains on ``TASK-val`` (its in-training evaluations
           are on validation). Only the selected runs' final checkpoints are scored on the test split
           (``meerkat_core.api.evaluate`` with ``cross_task``, ``--test-limit`` rows; nothing is retrained).
           ``--check-val-task`` (on with ``--quick``) trains the first run again on ``TASK-trainonly`` and
           requires the same k-vector and losses: the validation task changes what is evaluated, not the
           training.
Partitions ``--partitions`` (the grid): ``iid``, ``dirichlet0.1``, ``dirichlet0.5``, ``pathological1``,
           ``pathological2`` (k labels per client); ``--sweep-partitions`` for the T sweep (``iid``,
           ``dirichlet0.1``, ``pathological1``: the strongest skews, IID as the contrast); ``mixed3``
           (three single-label clients, the rest IID) for the vp section. Names are SCHEME+VALUE
           (alpha, labels per client, single-label clients); one partition per seed
           (``meerkat partition ... --seed S``), ``--clients`` clients.
Arms       ``meerkat`` (the sensitivity mask ``--mask``, density 1e-3), ``full-zo`` (``--mask all``),
           ``random`` and ``magnitude`` masks at the sensitivity mask's density (``meerkat mask --method``;
           a random mask per seed), each with its own lr grid (``--lr-meerkat`` ... ``--lr-magnitude``,
           three values each by default; full-ZO needs a far smaller lr). vp section: ``meerkat``,
           ``meerkat-vp``, ``vp-random`` (``VPSettings(control="random")``: as many clients stopped as
           were flagged, chosen at random: random early stopping), optionally ``vp-none`` (calibration
           round, nobody stopped); all on the meerkat lr grid, calibration ``--cal-steps`` steps.
Budget     every run gives each sampled client ``--steps-per-client`` S local steps (default 100) in
           rounds of T steps: rounds = S / T, client steps = S x ``--clients-per-round`` (1000 by default,
           8x the 125 of RESULTS.md section 5, where no arm had converged). ``--val-evals`` validation
           evaluations during each run show whether it still moved at the end. Meerkat-vp's calibration
           round (every client, ``--cal-steps``) replaces its first round, so its runs spend more.
Sections   ``grid``: every partition x arm x lr x seed at T = ``--grid-steps`` (10); ``sweep``: T in
           ``--sweep-steps`` (1 10 50) for ``--sweep-arms`` on ``--sweep-partitions`` (runs equal to
           grid runs are shared); ``vp``: the vp arms on ``--vp-partition``.
Selection  per (task, partition, arm, T): the lr with the best mean validation accuracy (final checkpoint,
           mean over the seeds) wins; ties go to the smaller lr. A cell is selected only once every lr
           has every seed; an lr at the edge of its grid is marked (widen the grid there).
Claims     paired differences (same seed, same partition, selected lrs, test accuracy): (1) meerkat -
           full-zo on the non-IID partitions at equal T; (2) meerkat - random and meerkat - magnitude at
           equal density; (3) accuracy(smaller T) - accuracy(larger T) on the sweep's non-IID partitions;
           (4) GradIP: the calibration round's flags against the single-label truth (every meerkat-vp
           run); (5) meerkat-vp - meerkat on the mixed split (and vp - vp-random: the detector against
           random stopping). Verdict: ``tie`` when |mean diff| < sd of the diffs (or the mean is 0),
           else ``held`` (diff > 0) or ``not held``; for the ">=" claims (1, 5) a tie does not contradict
           the claim. (4) holds when every run flags exactly the single-label clients.
Precision  fp32 (``--dtype``): the fastest precision shown to learn like fp32 on CPU so far; bf16's ZO
           estimate is 10.8% off fp32's (target 5%, RESULTS.md section 10) and its accuracy after equal
           steps is not measured.
Resumable  a run whose directory holds summary.json is read back (settings checked), a partial one is
           resumed, test scores are cached in ``OUT/test/``; the grid fills over several invocations. The
           runs record absolute paths (tasks, partitions, masks in OUT): leave OUT where it is. Tables and
           OUT/results.json cover the slice of this invocation; ``--report-only`` with the full grid's
           flags reports everything that is finished.

    python benchmarks/paper_protocol.py --plan                     # runs and client steps per slice; runs nothing
    python benchmarks/paper_protocol.py --out DIR [--mask MASK] [--device cuda]        # everything
    python benchmarks/paper_protocol.py --out DIR --sections grid --tasks bbc_news --partitions dirichlet0.1
    python benchmarks/paper_protocol.py --out DIR --report-only    # tables from the finished runs only
    python benchmarks/paper_protocol.py --quick                    # tiny-llama, every section (CI)

Without ``--mask`` the sensitivity mask is made into ``OUT/masks/`` (``meerkat mask`` defaults, ``--density``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

ARMS = ("meerkat", "full-zo", "random", "magnitude")
VP_ARMS: dict[str, dict[str, str]] = {  # TrainConfig settings of the vp section's arms
    "meerkat": {},
    "meerkat-vp": {"algorithm": "meerkat-vp"},
    "vp-random": {"algorithm": "meerkat-vp", "control": "random"},
    "vp-none": {"algorithm": "meerkat-vp", "classifier": "none"},
}
SECTIONS = ("grid", "sweep", "vp")
PARTITIONS = ("iid", "dirichlet0.1", "dirichlet0.5", "pathological1", "pathological2")
DEFAULT_LRS = {"meerkat": [3e-5, 1e-4, 3e-4], "full-zo": [1e-5, 2e-5, 5e-5], "random": [2e-2, 5e-2, 1e-1],
               "magnitude": [2e-2, 5e-2, 1e-1]}
VAL_SEED = 0  # the validation slice's draw (fixed: every sitting and seed sees the same slice)
# wall seconds per client step for --plan's estimate: RESULTS.md section 5.2, SmolLM2-135M, batch 8, one
# thread of a 2-core Xeon, with the server's replay (Meerkat 1.61 s, full-parameter ZO 15.1 s)
STEP_SECONDS = {"sparse": 1.61, "full-zo": 15.1}
QUICK_TRAIN, QUICK_TEST = 240, 48


# -- settings --------------------------------------------------------------------------------------
def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny-llama, a small 3-class task, one seed, tiny grids (CI)")
    p.add_argument("--plan", action="store_true", help="print the runs and client steps per slice; run nothing")
    p.add_argument("--report-only", action="store_true", help="train nothing: tables from the finished runs")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--mask", help="sensitivity mask (default: made into OUT/masks/)")
    p.add_argument("--density", type=float, default=1e-3, help="of the mask made without --mask")
    p.add_argument("--tasks", nargs="+", default=["bbc_news", "sentiment3"],
                   help="built-in task names or task files; NAME-small: a small copy of the built-in NAME")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--partitions", nargs="+", default=list(PARTITIONS), help="the grid's partitions")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="the grid's arms")
    p.add_argument("--sweep-partitions", nargs="+", default=["iid", "dirichlet0.1", "pathological1"])
    p.add_argument("--sweep-arms", nargs="+", choices=ARMS, default=["meerkat"])
    p.add_argument("--sweep-steps", type=int, nargs="+", default=[1, 10, 50], help="local steps T of the sweep")
    p.add_argument("--grid-steps", type=int, default=10, help="local steps T of the grid and the vp section")
    p.add_argument("--vp-partition", default="mixed3")
    p.add_argument("--vp-arms", nargs="+", choices=list(VP_ARMS), default=["meerkat", "meerkat-vp", "vp-random"])
    p.add_argument("--cal-steps", type=int, default=None, help="Meerkat-vp calibration steps (default: TrainConfig's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps-per-client", type=int, default=100, help="the budget S: local steps per sampled client")
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--clients-per-round", type=int, default=10)
    for arm in ARMS:
        p.add_argument(f"--lr-{arm}", type=float, nargs="+", default=DEFAULT_LRS[arm], help=f"lr grid of {arm}")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--val-per-class", type=int, default=50, help="validation rows per class, carved from train")
    p.add_argument("--val-evals", type=int, default=4, help="validation evaluations during each run (0: final only)")
    p.add_argument("--test-limit", type=int, default=None, help="test rows scored (default: the whole test split)")
    p.add_argument("--check-val-task", action="store_true",
                   help="also train one grid run on TASK-trainonly and require the same checkpoint (on with --quick)")
    _common.add_run_flags(p, "runs/paper_protocol", "torch.set_num_threads (1 with --quick)")
    args = p.parse_args(argv)
    if args.quick:
        quick_settings(args, p)
    if args.cal_steps is None:
        from meerkat_core.config.train import VPSettings

        args.cal_steps = VPSettings().calibration_steps
    check(args, p)
    return args


def quick_settings(args: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    """--quick: tiny-llama on a small sentiment3 copy, one seed, two lrs per arm, T in {1, 2}, 2 steps per
    client; the grid on iid and pathological1, the sweep on dirichlet0.1 (every scheme once)."""
    args.model, args.clients, args.clients_per_round, args.batch_size = "tiny-llama", 4, 4, 2
    small = {"seeds": [0], "tasks": ["sentiment3-small"], "partitions": ["iid", "pathological1"],
             "sweep_partitions": ["dirichlet0.1"], "vp_partition": "mixed2"}
    for key, value in small.items():  # flags given explicitly are kept
        if getattr(args, key) == p.get_default(key):
            setattr(args, key, value)
    args.steps_per_client, args.grid_steps, args.sweep_steps, args.cal_steps = 2, 1, [1, 2], 8
    for arm, lrs in {"meerkat": [1e-2, 2e-2], "full-zo": [1e-3, 2e-3], "random": [1e-2, 2e-2],
                     "magnitude": [1e-2, 2e-2]}.items():
        setattr(args, lr_attr(arm), lrs)
    args.val_per_class, args.val_evals, args.check_val_task = 8, 1, True
    args.threads = args.threads or 1
    if args.out == p.get_default("out"):
        args.out = "runs/paper_protocol_quick"


def check(args: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    steps = set(args.sweep_steps) | {args.grid_steps}
    bad = sorted(t for t in steps if t < 1 or args.steps_per_client % t)
    if bad:
        p.error(f"local steps {bad}: each T must divide --steps-per-client {args.steps_per_client}")
    for name in set(args.partitions) | set(args.sweep_partitions) | {args.vp_partition}:
        try:
            partition_settings(name)
        except ValueError as exc:
            p.error(str(exc))
    if not partition_settings(args.vp_partition)[0] == "mixed":
        p.error(f"--vp-partition {args.vp_partition}: the vp section needs a mixed split (mixedE)")
    if args.val_per_class < 1:
        p.error("--val-per-class must be at least 1")


def lr_attr(arm: str) -> str:
    return "lr_" + arm.replace("-", "_")


def lr_grid(args: argparse.Namespace, arm: str) -> list[float]:
    """The lr grid of an arm, ascending (the vp arms use meerkat's)."""
    return sorted(set(getattr(args, lr_attr(arm if arm in ARMS else "meerkat"))))


def partition_settings(name: str) -> tuple[str, dict[str, Any]]:
    """(scheme, PartitionConfig settings) of a partition name: iid, dirichletALPHA, pathologicalK, mixedE."""
    if name == "iid":
        return "iid", {}
    m = re.fullmatch(r"(dirichlet|pathological|mixed)([0-9.]+)", name)
    if m is None:
        raise ValueError(f"partition {name!r}: expected iid, dirichletALPHA, pathologicalK or mixedE "
                         "(e.g. dirichlet0.1, pathological2, mixed3)")
    scheme, value = m.groups()
    if scheme == "dirichlet":
        return scheme, {"alpha": float(value)}
    if not value.isdigit():
        raise ValueError(f"partition {name!r}: {scheme} takes a whole number")
    return scheme, {"labels_per_client" if scheme == "pathological" else "extreme_clients": int(value)}


def non_iid(partition: str) -> bool:
    return partition_settings(partition)[0] in ("dirichlet", "pathological")


# -- the plan ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    """One training run: a (task, partition, arm, T) cell at one lr and seed."""

    task: str  # the task's label (a built-in name, or a task file's stem)
    partition: str
    arm: str
    steps: int
    lr: float
    seed: int

    @property
    def cell(self) -> tuple[str, str, str, int]:
        return self.task, self.partition, self.arm, self.steps

    @property
    def rel(self) -> Path:
        return Path(self.task) / f"{self.partition}-seed{self.seed}" / f"{self.arm}-T{self.steps}-lr{self.lr:g}"


def plan(args: argparse.Namespace) -> dict[str, list[RunSpec]]:
    """The runs of each section (in cell order, so a sitting completes cells one at a time)."""
    cells: dict[str, list[tuple[str, str, int]]] = {
        "grid": [(p, a, args.grid_steps) for p in args.partitions for a in args.arms],
        "sweep": [(p, a, t) for p in args.sweep_partitions for a in args.sweep_arms for t in sorted(args.sweep_steps)],
        "vp": [(args.vp_partition, a, args.grid_steps) for a in args.vp_arms],
    }
    return {s: [RunSpec(_common.task_label(task), p, a, t, lr, seed) for task in args.tasks for p, a, t in cells[s]
                for lr in lr_grid(args, a) for seed in args.seeds] for s in args.sections}


def rounds_of(args: argparse.Namespace, spec: RunSpec) -> int:
    return args.steps_per_client // spec.steps


def nominal_client_steps(args: argparse.Namespace, spec: RunSpec) -> int:
    """Client steps of a run (Meerkat-vp: the calibration round of every client, then stopped clients
    taking fewer; the figure counts them at T)."""
    per_round = args.clients_per_round * spec.steps
    if VP_ARMS.get(spec.arm, {}).get("algorithm") == "meerkat-vp":
        return args.clients * args.cal_steps + (rounds_of(args, spec) - 1) * per_round
    return rounds_of(args, spec) * per_round


def run_dir(out: Path, spec: RunSpec) -> Path:
    return out / "runs" / spec.rel


def print_plan(args: argparse.Namespace, out: Path, sections: dict[str, list[RunSpec]]) -> dict[str, Any]:
    """Per (section, task): runs (those already listed by an earlier section are shared, not counted),
    client steps, finished / partial runs, and the CPU hours at RESULTS.md's per-step cost (SmolLM2-135M only)."""
    rate = STEP_SECONDS if args.model == "smollm2-135m" else {"sparse": math.nan, "full-zo": math.nan}
    seen: set[RunSpec] = set()
    rows = []
    for section, specs in sections.items():
        for task in dict.fromkeys(s.task for s in specs):
            mine = [s for s in specs if s.task == task and s not in seen]
            seen.update(mine)
            steps = sum(nominal_client_steps(args, s) for s in mine)
            secs = sum(nominal_client_steps(args, s) * rate["full-zo" if s.arm == "full-zo" else "sparse"]
                       for s in mine)
            rows.append({"section": section, "task": task, "runs": len(mine), "client_steps": steps,
                         "done": sum((run_dir(out, s) / "summary.json").exists() for s in mine),
                         "partial": sum((run_dir(out, s) / "config.json").exists()
                                        and not (run_dir(out, s) / "summary.json").exists() for s in mine),
                         "cpu_hours": secs / 3600})
    print(f"budget: {args.steps_per_client} local steps per sampled client x {args.clients_per_round} clients per "
          f"round = {args.steps_per_client * args.clients_per_round} client steps per run "
          f"(rounds = {args.steps_per_client} / T); seeds {args.seeds}")
    print(f"{'section':<7} {'task':<18} {'runs':>5} {'client steps':>13} {'done':>5} {'partial':>7} {'CPU h':>8}")
    total = {"section": "total", "task": "", **{k: sum(r[k] for r in rows)
                                                 for k in ("runs", "client_steps", "done", "partial", "cpu_hours")}}
    for r in rows + [total]:
        hours = f"{r['cpu_hours']:.1f}" if math.isfinite(r["cpu_hours"]) else "-"
        print(f"{r['section']:<7} {r['task']:<18} {r['runs']:>5} {r['client_steps']:>13} {r['done']:>5} "
              f"{r['partial']:>7} {hours:>8}")
    print(f"(CPU h: {STEP_SECONDS['sparse']} s per sparse and {STEP_SECONDS['full-zo']} s per full-ZO client step, "
          "SmolLM2-135M on one thread of a 2-core Xeon, RESULTS.md 5.2; plus one test evaluation per selected run)")
    return {"slices": rows, "total": total}


# -- inputs: tasks, masks, partitions -----------------------------------------------------------------
def stratified_slice(labels: list[int], per_class: int, seed: int) -> list[int]:
    """Row indices of the validation slice: per class ``per_class`` rows drawn with ``seed`` (at most half
    of a class), interleaved class by class so every prefix is balanced."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    picks = []
    for y in sorted(by_class):
        idx = list(by_class[y])
        rng.shuffle(idx)
        picks.append(idx[: min(per_class, len(idx) // 2)])
    n = min(len(p) for p in picks)
    return [p[j] for j in range(n) for p in picks]


def _write_rows(path: Path, ds: Any, fields: tuple[str, ...], rows: Iterable[int]) -> str:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for i in rows:
            fh.write(json.dumps({**{f: ds[i][f] for f in fields}, "label": int(ds[i]["label"])}) + "\n")
    tmp.replace(path)
    return path.name


def _task_doc(spec: Any, name: str, description: str, train: str, test: str) -> dict[str, Any]:
    """A task file with ``spec``'s prompt and words over the rows in ``train`` / ``test`` (jsonl, columns
    named as the template's fields, as ``load_task_data`` returns them)."""
    doc = {"name": name, "description": description, "template": spec.template,
           "label_names": list(spec.label_names), "label_words": list(spec.label_words), "label_column": "label",
           "columns": {}, "preprocess": {k: list(v) for k, v in spec.preprocess.items()}, "license": spec.license,
           "data": {"files": {"train": train, "test": test}}}
    if spec.origin == "builtin":
        doc["base"] = spec.name
    return doc


def task_source(task: str, out: Path) -> str:
    """What the source task is read from: ``NAME-small`` is a small copy of the built-in NAME in OUT/tasks."""
    if task.endswith("-small") and not Path(task).exists():
        return _common.ensure_small_task(out / "tasks", QUICK_TRAIN, QUICK_TEST, task=task.removesuffix("-small"))
    return task


def ensure_val_tasks(task: str, out: Path, per_class: int) -> dict[str, str]:
    """The task files of one task: ``val`` (train minus the slice / the slice), ``trainonly`` (the same train
    rows / the real test split) and ``test`` (what the test scores use: the source task). Written once."""
    source = task_source(task, out)
    label = _common.task_label(task)
    folder = out / "tasks"
    paths = {"val": folder / f"{label}-val.json", "trainonly": folder / f"{label}-trainonly.json"}
    if not all(p.exists() for p in paths.values()):
        from meerkat_core.atomic import write_json_atomic
        from meerkat_core.tasks import get_task, load_task_data

        spec = get_task(source)
        data = load_task_data(spec)
        labels = [int(y) for y in data.train["label"]]
        val = stratified_slice(labels, per_class, VAL_SEED)
        held = set(val)
        folder.mkdir(parents=True, exist_ok=True)
        train = _write_rows(folder / f"{label}-val-train.jsonl", data.train, spec.fields,
                            (i for i in range(len(labels)) if i not in held))
        valf = _write_rows(folder / f"{label}-val-val.jsonl", data.train, spec.fields, val)
        test = _write_rows(folder / f"{label}-test.jsonl", data.test, spec.fields, range(len(data.test)))
        what = (f"{label}'s train split minus a stratified validation slice ({len(val)} rows, {per_class} per "
                f"class, seed {VAL_SEED})")
        write_json_atomic(paths["trainonly"], _task_doc(spec, f"{label}-trainonly", what + "; test: the test split",
                                                        train, test))
        write_json_atomic(paths["val"], _task_doc(spec, f"{label}-val", what + "; test: the slice", train, valf))
    return {"val": str(paths["val"]), "trainonly": str(paths["trainonly"]), "test": source}


@dataclass
class Inputs:
    """What the runs share: the sensitivity mask, the task files, the masks of each seed (made lazily)."""

    out: Path
    sensitivity: str
    tasks: dict[str, dict[str, str]]
    masks: dict[int, dict[str, str]]

    def mask(self, args: argparse.Namespace, spec: RunSpec) -> str:
        if spec.arm not in ("random", "magnitude"):
            return "all" if spec.arm == "full-zo" else self.sensitivity
        if spec.seed not in self.masks:
            self.masks[spec.seed] = _common.arm_masks(self.out / "masks", args.model, self.sensitivity,
                                                      _common.mask_density(self.sensitivity), spec.seed, args.quick)
        return self.masks[spec.seed][spec.arm]

    def partition(self, args: argparse.Namespace, spec: RunSpec) -> Path:
        scheme, extra = partition_settings(spec.partition)
        return _common.ensure_partition(self.out / "partitions" / spec.task / f"{spec.partition}-seed{spec.seed}",
                                        self.tasks[spec.task]["val"], args.clients, scheme, spec.seed, **extra)


def make_inputs(args: argparse.Namespace, out: Path) -> Inputs:
    made = out / "masks" / "sensitivity.safetensors"
    sens = Path(args.mask).resolve() if args.mask else _common.ensure_mask(made, args.model, density=args.density,
                                                                           quick=args.quick)
    tasks = {_common.task_label(t): ensure_val_tasks(t, out, args.val_per_class) for t in args.tasks}
    return Inputs(out=out, sensitivity=str(sens), tasks=tasks, masks={})


# -- runs ---------------------------------------------------------------------------------------
def train_config(args: argparse.Namespace, inputs: Inputs, spec: RunSpec, task: str, run: Path) -> Any:
    from meerkat_core.config.train import EvalSettings, TrainConfig, VPSettings

    rounds = rounds_of(args, spec)
    every = max(1, rounds // args.val_evals) if args.val_evals else 0
    vp = dict(VP_ARMS.get(spec.arm, {}))
    algorithm = vp.pop("algorithm", "meerkat")
    cfg = TrainConfig(model=args.model, mask=inputs.mask(args, spec), partition=str(inputs.partition(args, spec)),
                      task=task, out=str(run), rounds=rounds, local_steps=spec.steps,
                      clients_per_round=args.clients_per_round, lr=spec.lr, eps=args.eps, batch_size=args.batch_size,
                      seed=spec.seed, device=args.device, dtype=args.dtype, algorithm=algorithm,
                      eval=EvalSettings(limit=None, every=every),
                      vp=VPSettings(calibration_steps=args.cal_steps, **vp))
    if spec.arm == "full-zo":
        cfg.z_cache_mb = _common.FULL_ZO_CACHE_MB
    return cfg


def val_curve(run: Path) -> list[list[float]]:
    """[round, validation accuracy] of every evaluated round of a run (round 0: the starting point)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [[r["round"], r["eval_accuracy"]] for r in rows if r.get("eval_accuracy") is not None]


def detection(run: Path) -> dict[str, Any]:
    """The calibration round's flags against the partition's single-label clients."""
    from meerkat_core.gradip.report import build_report

    rep = build_report(run, round_=1)
    det = rep.detector() or {}
    return {"flagged": rep.flagged, "stopped": rep.to_json()["stopped"], "extreme": det.get("extreme"),
            "exact": det.get("exact"), "true_positives": len(det.get("true_positives", [])),
            "false_positives": len(det.get("false_positives", [])), "outcome": rep.outcome,
            "separation": det.get("separation")}


def execute(args: argparse.Namespace, inputs: Inputs, spec: RunSpec) -> dict[str, Any] | None:
    """Train (or resume, or read back) one run; None when ``--report-only`` and it is not finished."""
    run = run_dir(inputs.out, spec)
    if args.report_only and not (run / "summary.json").exists():
        return None
    cfg = train_config(args, inputs, spec, inputs.tasks[spec.task]["val"], run)
    t0 = time.perf_counter()
    summary, status = _common.train_or_read_back(cfg, "paper_protocol", label=str(spec.rel))
    row = {**asdict(spec), "run": str(run), "status": status, "rounds": cfg.rounds,
           "val_initial": summary["initial_accuracy"], "val_final": summary["final_accuracy"],
           "val_n": summary["eval_n"], "val_curve": val_curve(run), "client_steps": summary["total_client_steps"],
           "skipped_steps": summary["skipped_steps"], "k": summary["k"], "seconds": time.perf_counter() - t0}
    if cfg.algorithm == "meerkat-vp":
        row["detection"] = detection(run)
    return row


def test_score(args: argparse.Namespace, inputs: Inputs, row: dict[str, Any]) -> dict[str, Any]:
    """The run's final checkpoint on the source task's test split (cached in OUT/test/ by checkpoint sha256)."""
    from meerkat_core.fed.checkpoint import resolve_checkpoint
    from meerkat_core.hashing import sha256_file

    spec = RunSpec(**{k: row[k] for k in ("task", "partition", "arm", "steps", "lr", "seed")})
    ckpt = resolve_checkpoint(row["run"])
    key = {"checkpoint_sha256": sha256_file(ckpt), "task": inputs.tasks[spec.task]["test"], "limit": args.test_limit}
    cache = inputs.out / "test" / spec.rel.parent / f"{spec.rel.name}.json"  # (with_suffix would eat the lr's digits)
    if cache.exists():
        doc = json.loads(cache.read_text())
        if all(doc.get(k) == v for k, v in key.items()):
            return doc
    from meerkat_core import api
    from meerkat_core.config import EvalConfig

    t0 = time.perf_counter()
    ev = api.evaluate(EvalConfig(checkpoint=row["run"], task=key["task"], cross_task=True, limit=args.test_limit,
                                 device=args.device, dtype=args.dtype))
    doc = {**key, "checkpoint": str(ckpt), "accuracy": ev.result.accuracy, "n": ev.result.n,
           "seconds": time.perf_counter() - t0}
    _common.write_json(cache, doc)
    return doc


def check_val_task(args: argparse.Namespace, inputs: Inputs, spec: RunSpec) -> dict[str, Any]:
    """Training on TASK-val is the training on any task with the same train rows: the same run on
    TASK-trainonly (test split = the real one) must end in the same k-vector and losses."""
    import torch

    from meerkat_core.fed.checkpoint import read_checkpoint, resolve_checkpoint

    runs = {"val": run_dir(inputs.out, spec), "trainonly": inputs.out / "checks" / spec.rel}
    for name, run in runs.items():
        _common.train_or_read_back(train_config(args, inputs, spec, inputs.tasks[spec.task][name], run),
                                   "paper_protocol", label=f"check {name}")
    ks = [read_checkpoint(resolve_checkpoint(str(r)))[1] for r in runs.values()]
    losses = [[r.get("mean_loss") for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
               if r.get("round", 0) > 0] for run in runs.values()]
    same = ks[0].keys() == ks[1].keys() and all(torch.equal(ks[0][n], ks[1][n]) for n in ks[0])
    if not same or losses[0] != losses[1]:
        raise SystemExit(f"paper_protocol: {runs['val']} and {runs['trainonly']} trained differently "
                         f"(k-vectors equal: {same}; losses {losses[0]} vs {losses[1]}): the validation task "
                         "changed the training")
    return {"run": str(spec.rel), "runs": {k: str(v) for k, v in runs.items()}, "same_k_vector": same,
            "same_losses": True, "rounds": len(losses[0])}


# -- selection and claims ---------------------------------------------------------------------------
def select(args: argparse.Namespace, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (task, partition, arm, T): the validation mean of every lr, the chosen lr (best mean; ties:
    the smaller lr), or the missing (lr, seed) runs when the cell is not complete."""
    by_cell: dict[tuple, dict[float, dict[int, dict[str, Any]]]] = {}
    for r in rows:
        by_cell.setdefault((r["task"], r["partition"], r["arm"], r["steps"]), {}).setdefault(r["lr"], {})[r["seed"]] = r
    cells = []
    for (task, part, arm, steps), by_lr in by_cell.items():
        grid = lr_grid(args, arm)
        missing = [[lr, s] for lr in grid for s in args.seeds if s not in by_lr.get(lr, {})]
        val = {lr: _common.mean_sd(by_lr[lr][s]["val_final"] for s in args.seeds if s in by_lr.get(lr, {}))[0]
               for lr in grid if lr in by_lr}
        cell: dict[str, Any] = {"task": task, "partition": part, "arm": arm, "steps": steps, "lr_grid": grid,
                                "val_mean": {f"{lr:g}": m for lr, m in val.items()}, "missing": missing}
        if not missing:
            best = max(grid, key=lambda lr: round(val[lr], 9))  # max keeps the first (smallest) lr of a tie
            cell.update(lr=best, edge=len(grid) > 1 and best in (grid[0], grid[-1]),
                        runs={s: by_lr[best][s] for s in args.seeds})
        cells.append(cell)
    return cells


def last_gain(runs: Iterable[dict[str, Any]]) -> float:
    """Mean over seeds of the validation accuracy gained between the last two evaluations (convergence)."""
    gains = [r["val_curve"][-1][1] - r["val_curve"][-2][1] for r in runs if len(r["val_curve"]) >= 2]
    return _common.mean_sd(gains)[0]


def score_cells(args: argparse.Namespace, inputs: Inputs, cells: list[dict[str, Any]]) -> None:
    """Test accuracy of each complete cell's selected runs (one per seed), mean ± sd."""
    for cell in cells:
        if "lr" not in cell:
            continue
        tests = {s: test_score(args, inputs, r) for s, r in cell["runs"].items()}
        cell["test"] = {str(s): t["accuracy"] for s, t in tests.items()}
        cell["test_n"] = next(iter(tests.values()))["n"]
        cell["test_mean"], cell["test_sd"] = _common.mean_sd(t["accuracy"] for t in tests.values())
        cell["val_last_gain"] = last_gain(cell["runs"].values())
        cell["runs"] = {str(s): r["run"] for s, r in cell["runs"].items()}


def verdict(mean: float, sd: float, n: int) -> str:
    """held / not held / tie: a tie when |mean| < sd of the paired differences (or the mean is 0)."""
    if n == 0 or not math.isfinite(mean):
        return "missing"
    if mean == 0 or abs(mean) < sd:
        return "tie"
    return "held" if mean > 0 else "not held"


def paired(claim: str, a: dict[str, Any] | None, b: dict[str, Any] | None, **where: Any) -> dict[str, Any] | None:
    """Test accuracy of cell ``a`` minus cell ``b``, seed by seed (the seeds both have)."""
    if a is None or b is None or "test" not in a or "test" not in b:
        return None
    diffs = [a["test"][s] - b["test"][s] for s in a["test"] if s in b["test"]]
    mean, sd = _common.mean_sd(diffs)
    return {"claim": claim, **where, "a": f"{a['arm']} T{a['steps']} lr {a['lr']:g}",
            "b": f"{b['arm']} T{b['steps']} lr {b['lr']:g}", "diffs": diffs, "mean": mean, "sd": sd, "n": len(diffs),
            "verdict": verdict(mean, sd, len(diffs))}


def claims(cells: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, list]:
    """The paired comparisons of each claim, over the cells there are (so any slice of the grid reports)."""
    at = {(c["task"], c["partition"], c["arm"], c["steps"]): c for c in cells}
    out: dict[str, list] = {k: [] for k in CLAIM_TITLES}
    for (task, part, arm, t), c in at.items():
        where = {"task": task, "partition": part, "steps": t}
        if arm == "meerkat" and non_iid(part):
            out["1"].append(paired("meerkat >= full-zo", c, at.get((task, part, "full-zo", t)), **where))
        if arm == "meerkat":
            out["2"] += [paired(f"meerkat > {o}", c, at.get((task, part, o, t)), **where)
                         for o in ("random", "magnitude")]
        if arm == "meerkat-vp":
            out["5"] += [paired(f"meerkat-vp >= {o}", c, at.get((task, part, o, t)), **where)
                         for o in ("meerkat", "vp-random", "vp-none")]
    for task, part, arm in dict.fromkeys(k[:3] for k in at if non_iid(k[1])):
        ts = sorted(k[3] for k in at if k[:3] == (task, part, arm))
        out["3"] += [paired(f"{arm} T={t1} > T={t2}", at[(task, part, arm, t1)], at[(task, part, arm, t2)],
                            task=task, partition=part, steps=t1) for t1, t2 in itertools.combinations(ts, 2)]
    for task in dict.fromkeys(r["task"] for r in rows):
        vp = [r for r in rows if r["task"] == task and r["arm"] == "meerkat-vp" and "detection" in r]
        if vp:
            out["4"].append(detection_claim(task, vp))
    return {k: [c for c in v if c is not None] for k, v in out.items()}


def detection_claim(task: str, vp: list[dict[str, Any]]) -> dict[str, Any]:
    """Claim 4 over every meerkat-vp run of a task (every lr and seed): does the calibration round flag
    exactly the single-label clients?"""
    dets = [r["detection"] for r in vp]
    exact = sum(bool(d["exact"]) for d in dets)
    return {"claim": "GradIP flags exactly the single-label clients", "task": task, "runs": len(dets),
            "exact": exact, "true_positives": sum(d["true_positives"] for d in dets),
            "single_label": sum(len(d["extreme"] or []) for d in dets),
            "false_positives": sum(d["false_positives"] for d in dets),
            "abstained": sum(d["outcome"] == "abstained" for d in dets),
            "verdict": "held" if exact == len(dets) else "not held"}


# -- tables -----------------------------------------------------------------------------------------
CLAIM_TITLES = {"1": "(1) sparse Meerkat >= full-parameter ZO under Non-IID, equal T",
                "2": "(2) sensitivity mask > random and > magnitude masks at equal density",
                "3": "(3) smaller T helps under Non-IID (equal client steps)",
                "4": "(4) GradIP separates single-label clients (calibration round of every meerkat-vp run)",
                "5": "(5) Meerkat-vp >= Meerkat with single-label clients present"}


def print_cells(cells: list[dict[str, Any]]) -> None:
    print(f"{'task':<16} {'partition':<14} {'arm':<10} {'T':>3}  {'validation mean per lr':<40} {'lr':>7} "
          f"{'test mean ± sd (n)':>22} {'val gain at end':>15}")
    for c in cells:
        vals = " ".join(f"{lr}:{m:.3f}" for lr, m in c["val_mean"].items())
        if "lr" in c:
            lr = f"{c['lr']:g}" + ("*" if c["edge"] else "")
            test = f"{c['test_mean']:.4f} ± {c['test_sd']:.4f} ({len(c['test'])})"
            gain = f"{c['val_last_gain']:+.4f}" if math.isfinite(c["val_last_gain"]) else "-"
        else:
            lr, test, gain = "-", f"{len(c['missing'])} runs missing", ""
        print(f"{c['task']:<16} {c['partition']:<14} {c['arm']:<10} {c['steps']:>3}  {vals:<40} {lr:>7} "
              f"{test:>22} {gain:>15}")
    print("lr*: at the edge of its grid (widen the grid there); val gain at end: validation accuracy gained "
          "between the last two evaluations, mean over seeds")


def _print_detection(found: list[dict[str, Any]]) -> None:
    print(f"  {'task':<16} {'runs':>4} {'exact':>5} {'TP/single-label':>15} {'FP':>3} {'abstained':>9}  verdict")
    for c in found:
        tp = f"{c['true_positives']}/{c['single_label']}"
        print(f"  {c['task']:<16} {c['runs']:>4} {c['exact']:>5} {tp:>15} {c['false_positives']:>3} "
              f"{c['abstained']:>9}  {c['verdict']}")


def _print_paired(found: list[dict[str, Any]]) -> None:
    print(f"  {'task':<16} {'partition':<14} {'T':>3} {'comparison':<26} {'paired diff ± sd (n)':>24}  verdict")
    for c in found:
        diff = f"{c['mean']:+.4f} ± {c['sd']:.4f} ({c['n']})"
        print(f"  {c['task']:<16} {c['partition']:<14} {c['steps']:>3} {c['claim']:<26} {diff:>24}  {c['verdict']}")


def print_claims(found: dict[str, list]) -> None:
    for key, title in CLAIM_TITLES.items():
        print()
        print(title)
        if not found[key]:
            print("  (no complete cells for this claim)")
            continue
        (_print_detection if key == "4" else _print_paired)(found[key])
        counts = {v: sum(c["verdict"] == v for c in found[key]) for v in ("held", "tie", "not held")}
        print("  " + ", ".join(f"{v}: {n}" for v, n in counts.items()))
    print("\nverdict: tie when |mean paired difference| < its sd (or 0); held / not held by the sign otherwise. "
          "Paired: same seed, the selected lr of each arm, test accuracy.")


# -- main -------------------------------------------------------------------------------------------
@_common.keeps_torch_threads
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    out = Path(args.out).resolve()  # runs record absolute task, partition and mask paths: any working directory
    sections = plan(args)
    if args.plan:
        return print_plan(args, out, sections)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    inputs = make_inputs(args, out)
    specs = list(dict.fromkeys(s for section in sections.values() for s in section))
    rows = []
    for i, spec in enumerate(specs, 1):
        row = execute(args, inputs, spec)
        if row is not None:
            rows.append(row)
            print(f"[{i}/{len(specs)}] {spec.rel}: validation {row['val_final']:.4f} ({row['status']})",
                  file=sys.stderr, flush=True)
    checked = check_val_task(args, inputs, specs[0]) if args.check_val_task and specs and not args.report_only \
        else None
    cells = select(args, rows)
    score_cells(args, inputs, cells)
    found = claims(cells, rows)
    print_cells(cells)
    print_claims(found)
    doc = {"machine": _common.machine(args.device),
           "settings": {k: v for k, v in vars(args).items() if k not in ("json_out", "plan")},
           "budget": {"steps_per_client": args.steps_per_client, "clients_per_round": args.clients_per_round,
                      "client_steps_per_run": args.steps_per_client * args.clients_per_round},
           "validation": {"per_class": args.val_per_class, "seed": VAL_SEED, "tasks": inputs.tasks},
           "mask": inputs.sensitivity, "val_task_check": checked, "runs": rows, "cells": cells, "claims": found}
    _common.write_json(Path(args.json_out) if args.json_out else out / "results.json", doc)
    return doc


if __name__ == "__main__":
    main(sys.argv[1:])
