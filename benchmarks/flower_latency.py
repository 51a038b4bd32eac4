"""Steady round time of the Flower engines against the in-process engine (issue #17).

Arms (each a full ``meerkat train`` run through ``meerkat_core.engines.run_engine``):

* ``deploy-tiny``    ``--engine flower`` on loopback: SuperLink, 3 SuperNodes, 3 ``meerkat site serve``;
                     tiny-llama, 3 clients all sampled, 1 local step;
* ``deploy-smollm2`` the same on SmolLM2-135M;
* ``sim-100``        ``--engine flower-sim``: 100 virtual SuperNodes, 10 sampled per round, 1 local step,
                     tiny-llama, one Ray worker;
* ``inproc-3`` / ``inproc-smollm2`` / ``inproc-100``: the in-process engine on the same settings.

A round's time is ``metrics.jsonl``'s ``seconds`` (the server's whole round: plan, messages, client
work, replay, GradIP, ledger). Round 1 includes the handshake (sites build their clients) and the last
round the final evaluation, so "steady" is the median of rounds 2 .. R-1. Arms run one after another
in this order (an in-process arm right before the Flower arm it is compared with); the in-process arm of
``sim-100`` (a ratio target) runs again right after it, and the ratio is taken against the steady rounds
of both in-process runs pooled, so a drift of the machine's speed between runs does not fall on one side.

    python benchmarks/flower_latency.py --out DIR [--arms ...] [--rounds 8] [--json FILE]
    python benchmarks/flower_latency.py --quick       # tiny arms only, 4 rounds (a few minutes)

Needs the flower extra. Time it alone on the machine (`/work/bin/heavy --exclusive` here).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ensure_mask, ensure_partition, machine, write_json  # noqa: E402

ARMS: dict[str, dict[str, Any]] = {
    "inproc-3": dict(engine="inprocess", model="tiny-llama", clients=3, per_round=3),
    "deploy-tiny": dict(engine="flower", model="tiny-llama", clients=3, per_round=3),
    "inproc-smollm2": dict(engine="inprocess", model="smollm2-135m", clients=3, per_round=3),
    "deploy-smollm2": dict(engine="flower", model="smollm2-135m", clients=3, per_round=3),
    "inproc-100": dict(engine="inprocess", model="tiny-llama", clients=100, per_round=10),
    "sim-100": dict(engine="flower-sim", model="tiny-llama", clients=100, per_round=10),
}
TARGETS = {"deploy-tiny": ("s", 8.0), "deploy-smollm2": ("s", 12.0), "sim-100": ("x inproc-100", 2.0)}


PAIRS = (("deploy-tiny", "inproc-3"), ("deploy-smollm2", "inproc-smollm2"), ("sim-100", "inproc-100"))
# an arm with a ratio target: its in-process arm runs before and again after it
BRACKETED = {arm: base for arm, base in PAIRS if TARGETS.get(arm, ("",))[0].startswith("x")}


def run_order(arms: list[str]) -> list[str]:
    """``arms`` in order, each ratio-target arm followed by a second run of its in-process arm."""
    order = []
    for name in arms:
        order.append(name)
        base = BRACKETED.get(name)
        if base in arms:
            order.append(base)
    return order


def steady_rounds(seconds: list[float]) -> list[float]:
    """Rounds 2 .. R-1 (round 1 holds the handshake, the last the final evaluation)."""
    return seconds[1:-1] if len(seconds) > 2 else seconds


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny arms only, 4 rounds")
    p.add_argument("--out", type=Path, default=Path("/tmp/meerkat-bench/flower_latency"))
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--local-steps", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", type=Path, help="where to write the JSON (default OUT/flower_latency.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.arms = [a for a in args.arms if "smollm2" not in a]
        args.rounds = min(args.rounds, 4)
    return args


def run_arm(args: argparse.Namespace, name: str) -> dict[str, Any]:
    from meerkat_core.config.train import EvalSettings, TrainConfig
    from meerkat_core.engines import run_engine

    arm = ARMS[name]
    model = arm["model"]
    mask = ensure_mask(args.out / f"{model}.mask.safetensors", model)
    part = ensure_partition(args.out / f"part-{arm['clients']}", "sentiment2", arm["clients"])
    run = args.out / "runs" / f"{name}-{time.strftime('%H%M%S')}"
    cfg = TrainConfig(model=model, mask=str(mask), partition=str(part), task="sentiment2", out=str(run),
                      rounds=args.rounds, local_steps=args.local_steps, clients_per_round=arm["per_round"],
                      lr=1e-4, eps=1e-3, batch_size=args.batch_size, eval=EvalSettings(limit=16), device="cpu",
                      engine=arm["engine"])
    t0 = time.perf_counter()
    summary = run_engine(cfg, on_event=lambda m: print(f"  [{name}] {m}", file=sys.stderr))
    wall = time.perf_counter() - t0
    from meerkat_core.rundir import RunDir

    rows = [m for m in RunDir(run).read_metrics() if m.get("round", 0) > 0]
    seconds = [float(m["seconds"]) for m in rows]
    steady = steady_rounds(seconds)
    return {"arm": name, **arm, "rounds": args.rounds, "local_steps": args.local_steps, "run": str(run),
            "round_seconds": seconds, "steady_median_s": statistics.median(steady), "steady_min_s": min(steady),
            "first_round_s": seconds[0], "wall_s": wall, "final_state_crc": summary["final_state_crc"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"benchmark": "flower_latency", "machine": machine(), "command": " ".join(sys.argv),
                           "runs": []}
    for name in run_order(args.arms):
        print(f"{name} ...", file=sys.stderr)
        doc["runs"].append(run_arm(args, name))
    runs_of: dict[str, list[dict[str, Any]]] = {}
    for r in doc["runs"]:
        runs_of.setdefault(r["arm"], []).append(r)
    for arm, base in PAIRS:
        if arm in runs_of and base in runs_of:
            # the in-process rounds of every run of the base arm (before and after the Flower arm, for the
            # ratio), pooled: a machine whose speed drifts between the runs moves both sides alike
            pooled = [s for b in runs_of[base] for s in steady_rounds(b["round_seconds"])]
            for r in runs_of[arm]:
                r["inprocess_steady_median_s"] = statistics.median(pooled)
                r["inprocess_runs"] = len(runs_of[base])
                r["vs_inprocess"] = r["steady_median_s"] / r["inprocess_steady_median_s"]
                r["same_bits_as_inprocess"] = all(r["final_state_crc"] == b["final_state_crc"] for b in runs_of[base])
    print(f"\n{'arm':<16} {'engine':<11} {'clients':>7} {'steady s':>9} {'min s':>7} {'round 1 s':>9} "
          f"{'x inproc':>8}  target")
    for r in doc["runs"]:
        unit, limit = TARGETS.get(r["arm"], ("", None))
        value = r.get("vs_inprocess") if unit.startswith("x") else r["steady_median_s"]
        verdict = "" if limit is None or value is None else ("holds" if value <= limit else "MISSED") + f" (<= {limit} {unit})"
        ratio = f"{r['vs_inprocess']:.2f}" if "vs_inprocess" in r else "-"
        print(f"{r['arm']:<16} {r['engine']:<11} {r['clients']:>4}/{r['per_round']:<2} {r['steady_median_s']:>9.2f} "
              f"{r['steady_min_s']:>7.2f} {r['first_round_s']:>9.1f} {ratio:>8}  {verdict}")
    write_json(args.json or args.out / "flower_latency.json", doc)
    return doc


if __name__ == "__main__":
    main()
