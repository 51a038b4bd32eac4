"""Communication: bytes per client per round, up and down, and bytes to reach a target accuracy
(issue #7, item 4).

Arms, each a real federated run (``meerkat_core.fed.training.run_training``: the simulator passes every
message through ``to_bytes``/``from_bytes`` and the ledger records their lengths):

* ``meerkat-replay``  sparse mask, ``sync=replay`` (default): down = header + 16 B per global update the
                      client missed (key u64 + coef f64), up = header + 12 B per local step;
* ``meerkat-vector``  sparse mask, ``sync=vector``: down = header + the fp32 k-vector (4k B);
* ``full-zo``         ``--mask all`` (full-parameter ZO, vector sync, its default): down = header + 4d B;
* ``full-zo-replay``  ``--mask all --sync replay``: down as meerkat-replay (replay bytes do not depend on d);
* ``fedavg``          computed, not run: the full fp32 model each way, 4d B down and 4d B up per client
                      per round (2d B in bf16).

For a model whose d exceeds ``--max-train-d`` (default 20M: a full-parameter ZO step on SmolLM2-135M
takes about a minute on one CPU core) the ``full-zo`` arm is not trained: its messages are built with
the protocol classes (``RoundInstruction`` carrying a d-long fp32 vector, ``ClientReply`` with T steps)
and measured with ``to_bytes``; ``full-zo-replay`` is then skipped (same bytes as meerkat-replay).

Every measured byte count is split into payload (what the protocol implies: 16 B per history entry,
4 B per vector coordinate, 12 B per step) and header (the rest; ~100-300 B of JSON).

``--run-dir RUN [--target ACC]``: bytes to reach the target accuracy in existing run directories
(metrics.jsonl: the first evaluated round at or above the target; default target: the best accuracy the
run reached after round 0), with what FedAvg would have sent for the same rounds and participants.

    python benchmarks/communication.py --mask MASK [--model smollm2-135m] [--run-dir RUN ...] [--target 0.7]
    python benchmarks/communication.py --arms --run-dir RUN ... --target 0.75   # existing runs only
    python benchmarks/communication.py --quick      # tiny-llama, every arm trained, < 1 minute
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

ARMS = {
    "meerkat-replay": dict(sparse=True, sync="replay"),
    "meerkat-vector": dict(sparse=True, sync="vector"),
    "full-zo": dict(sparse=False, sync="vector"),
    "full-zo-replay": dict(sparse=False, sync="replay"),
}
ENTRY_BYTES, STEP_BYTES, COORD_BYTES = 16, 12, 4


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny-llama, small task, every arm trained (< 1 minute)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--mask", help="sparse mask file (default with --quick: computed into --work)")
    p.add_argument("--task", default="sentiment2")
    p.add_argument("--arms", nargs="*", choices=sorted(ARMS), default=list(ARMS),
                   help="none (a bare --arms): only bytes-to-target of --run-dir, nothing trained or loaded")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--clients-per-round", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--local-steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=1, help="bytes do not depend on it; small = fast")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--eval-limit", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-train-d", type=int, default=20_000_000,
                   help="above this d the full-zo arm is measured from built messages, not trained")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--run-dir", nargs="*", default=[], help="run directories for bytes-to-target")
    p.add_argument("--target", type=float, default=None, help="target accuracy (default: each run's best)")
    p.add_argument("--work", default="runs/bench/communication")
    p.add_argument("--out", default="benchmarks/results/communication.json")
    args = p.parse_args(argv)
    if not args.arms and not args.run_dir:
        p.error("nothing to do: give --arms, or --run-dir with a bare --arms")
    if args.quick:
        args.model = "tiny-llama"
        args.clients, args.clients_per_round, args.rounds, args.local_steps = 4, 2, 3, 3
    if args.mask is None and not args.quick and any(ARMS[a]["sparse"] for a in args.arms):
        p.error("--mask is required for the meerkat arms (make one with `meerkat mask --model MODEL --out FILE`)")
    return args


def _updates_per_round(clients: dict[int, list[dict[str, Any]]]) -> dict[int, int]:
    return {r: sum(len(rec["gs"]) - int(rec["skipped"]) for rec in recs) for r, recs in clients.items()}


def ledger_messages(run: Path, sync: str, k_payload: int) -> list[dict[str, Any]]:
    """Per (round, client): measured bytes and their payload/header split implied by the protocol."""
    from meerkat_core.rundir import RunDir

    clients, _, _ = RunDir(run).read_ledger()
    updates = _updates_per_round(clients)
    last_sync: dict[int, int] = {}
    rows = []
    for r in sorted(clients):
        for rec in sorted(clients[r], key=lambda x: int(x["client"])):
            c = int(rec["client"])
            since = last_sync.get(c, 0)
            entries = sum(updates[q] for q in range(since + 1, r)) if sync == "replay" else 0
            down_payload = ENTRY_BYTES * entries if sync == "replay" else COORD_BYTES * k_payload
            up_payload = STEP_BYTES * len(rec["gs"])
            rows.append({"round": r, "client": c, "steps": len(rec["gs"]), "history_entries": entries,
                         "bytes_down": int(rec["bytes_down"]), "bytes_up": int(rec["bytes_up"]),
                         "down_payload": down_payload, "up_payload": up_payload,
                         "down_header": int(rec["bytes_down"]) - down_payload,
                         "up_header": int(rec["bytes_up"]) - up_payload})
            last_sync[c] = r - 1  # the state it now holds is the one before this round's aggregation
    return rows


def built_messages(n_vector: int, steps: int, rounds: int, clients_per_round: int) -> list[dict[str, Any]]:
    """Vector-sync messages built with the protocol classes (not trained): the size does not depend on
    the values, only on the vector length and the step count."""
    import numpy as np

    from meerkat_core.fed.protocol import ClientReply, RoundInstruction

    vec = np.zeros(n_vector, dtype=np.float32)
    rows = []
    for r in range(1, rounds + 1):
        instr = RoundInstruction(round=r, client=0, steps=steps, seed=0, lr=1e-5, eps=1e-3, data_offset=0,
                                 sync="vector", synced_round=r - 1, vector=vec, state_round=r - 1,
                                 state_crc=2**32 - 1)
        down = len(instr.to_bytes())
        up = len(ClientReply(round=r, client=0, gs=[0.1] * steps, losses=[0.5] * steps, state_crc=2**32 - 1).to_bytes())
        for c in range(clients_per_round):
            rows.append({"round": r, "client": c, "steps": steps, "history_entries": 0, "bytes_down": down,
                         "bytes_up": up, "down_payload": COORD_BYTES * n_vector, "up_payload": STEP_BYTES * steps,
                         "down_header": down - COORD_BYTES * n_vector, "up_header": up - STEP_BYTES * steps})
    return rows


def stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def s(key: str) -> dict[str, float]:
        v = [r[key] for r in rows]
        return {"mean": statistics.fmean(v), "min": min(v), "max": max(v)}

    later = [r for r in rows if r["round"] > 1]
    return {
        "messages": len(rows),
        "down_per_client_round": s("bytes_down"),
        "up_per_client_round": s("bytes_up"),
        "down_per_client_round_after_round1": (statistics.fmean(r["bytes_down"] for r in later) if later else None),
        "up_per_step": statistics.fmean(r["bytes_up"] / r["steps"] for r in rows if r["steps"]),
        "down_header": s("down_header"),
        "up_header": s("up_header"),
        "total_down": sum(r["bytes_down"] for r in rows),
        "total_up": sum(r["bytes_up"] for r in rows),
    }


def bytes_to_target(run: Path, target: float | None, d: int | None = None) -> dict[str, Any]:
    """Cumulative bytes (all clients) up to the first evaluated round whose accuracy >= target."""
    from meerkat_core.rundir import RunDir

    rd = RunDir(run)
    metrics = rd.read_metrics()
    evals = [m for m in metrics if m.get("eval_accuracy") is not None]
    if not evals:
        return {"run": str(run), "error": "no evaluated rounds in metrics.jsonl"}
    trained = [m["eval_accuracy"] for m in evals if m["round"] > 0] or [evals[0]["eval_accuracy"]]
    best = max(trained)  # the best accuracy after training started (round 0 is the starting point)
    tgt = best if target is None else target
    prov = rd.read_config().get("provenance", {})
    d = d or prov.get("d")
    up = down = 0
    participations = 0
    reached = None
    for m in sorted(metrics, key=lambda m: m["round"]):
        if m["round"] > 0:
            up += int(m.get("bytes_up", 0))
            down += int(m.get("bytes_down", 0))
            participations += len(m.get("clients", []))
        acc = m.get("eval_accuracy")
        if acc is not None and acc >= tgt and (target is not None or m["round"] > 0 or len(evals) == 1):
            reached = m
            break
    out: dict[str, Any] = {"run": str(run), "target": tgt, "target_is_best": target is None, "best_accuracy": best,
                           "initial_accuracy": evals[0]["eval_accuracy"], "reached": reached is not None}
    if reached is not None:
        out.update(round=reached["round"], accuracy=reached["eval_accuracy"], bytes_up=up, bytes_down=down,
                   bytes_total=up + down, client_rounds=participations)
        if d:
            out["fedavg_bytes_total_same_rounds"] = participations * 2 * COORD_BYTES * int(d)
            out["fedavg_computed"] = True
    return out


def run_arm(args: argparse.Namespace, arm: str, mask: str, part: Path) -> Path:
    from meerkat_core.config.train import EvalSettings, TrainConfig
    from meerkat_core.fed.training import run_training
    from meerkat_core.rundir import RunDir

    run = Path(args.work) / f"{args.model.replace('/', '_')}-{arm}"
    if (run / "summary.json").exists():
        return run
    spec = ARMS[arm]
    cfg = TrainConfig(model=args.model, mask=mask if spec["sparse"] else "all", partition=str(part), task=args.task,
                      out=str(run), rounds=args.rounds, local_steps=args.local_steps,
                      clients_per_round=args.clients_per_round, lr=args.lr, batch_size=args.batch_size,
                      seed=args.seed, device="cpu", eval=EvalSettings(limit=args.eval_limit, every=1), sync=spec["sync"])
    cfg.resume = RunDir(run).exists()
    run_training(cfg, on_event=lambda m: print(f"  [{arm}] {m}", file=sys.stderr))
    return run


@_common.keeps_torch_threads
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    import torch

    torch.set_num_threads(args.threads)
    from meerkat_core.models import load_model

    if not args.arms:  # bytes-to-target of existing runs only (d from each run's provenance)
        res = {"machine": _common.machine("cpu"), "config": None, "arms": {}, "fedavg": None,
               "bytes_to_target": [bytes_to_target(Path(r), args.target) for r in args.run_dir]}
        report(res)
        _common.write_json(Path(args.out), res)
        return res
    work = Path(args.work)
    task = _common.ensure_small_task(work) if args.quick else args.task
    args.task = task
    mask = args.mask or str(_common.ensure_mask(work / "tiny.mask.safetensors", args.model))
    part = _common.ensure_partition(work / f"partition-{args.clients}", task, args.clients)
    model = load_model(args.model, device="cpu").model
    d = sum(p.numel() for p in model.parameters())
    del model
    from meerkat_core.mask import load_mask

    k = sum(t.indices.numel() for t in load_mask(mask).nonempty()) if any(ARMS[a]["sparse"] for a in args.arms) else None
    arms: dict[str, Any] = {}
    for arm in args.arms:
        spec = ARMS[arm]
        n_vec = k if spec["sparse"] else d
        if not spec["sparse"] and d > args.max_train_d:
            if spec["sync"] == "replay":
                arms[arm] = {"method": "skipped: replay bytes do not depend on d (see meerkat-replay)"}
                continue
            rows = built_messages(d, args.local_steps, args.rounds, args.clients_per_round)
            method = "protocol: messages built with RoundInstruction/ClientReply and measured by to_bytes (not trained)"
        else:
            run = run_arm(args, arm, mask, part)
            rows = ledger_messages(run, spec["sync"], n_vec)
            method = f"trained: ledger bytes of {run}"
        arms[arm] = {"method": method, "sync": spec["sync"], "vector_length": n_vec if spec["sync"] == "vector" else None,
                     **stats(rows), "messages_detail": rows}
    fedavg = {"method": "computed (not run): d x 4 bytes (fp32) each way per client per round",
              "down_per_client_round": COORD_BYTES * d, "up_per_client_round": COORD_BYTES * d,
              "bf16_each_way": 2 * d}
    targets = [bytes_to_target(Path(r), args.target, d) for r in args.run_dir]
    if args.quick and not args.run_dir and "meerkat-replay" in arms:
        targets.append(bytes_to_target(Path(args.work) / f"{args.model}-meerkat-replay", args.target, d))
    res: dict[str, Any] = {
        "machine": _common.machine("cpu"),
        "config": {"model": args.model, "mask": mask, "k": k, "d": d, "task": task, "clients": args.clients,
                   "clients_per_round": args.clients_per_round, "rounds": args.rounds,
                   "local_steps": args.local_steps, "quick": args.quick},
        "arms": arms,
        "fedavg": fedavg,
        "bytes_to_target": targets,
    }
    report(res)
    _common.write_json(Path(args.out), res)
    return res


def report_arms(res: dict[str, Any]) -> None:
    c = res["config"]
    hb = _common.human_bytes
    print(f"{c['model']}: d={c['d']:,} k={c['k'] if c['k'] is None else format(c['k'], ',')}, {c['clients']} clients, "
          f"{c['clients_per_round']} per round, {c['rounds']} rounds, T={c['local_steps']}")
    print(f"{'arm':<16} {'down/client/round':>18} {'(after round 1)':>16} {'max down':>11} {'up/client/round':>16} "
          f"{'up/step':>8}  how")
    for arm, a in res["arms"].items():
        if "down_per_client_round" not in a:
            print(f"{arm:<16} {a['method']}")
            continue
        after = a["down_per_client_round_after_round1"]
        print(f"{arm:<16} {hb(a['down_per_client_round']['mean']):>18} {hb(after):>16} "
              f"{hb(a['down_per_client_round']['max']):>11} {hb(a['up_per_client_round']['mean']):>16} "
              f"{a['up_per_step']:>8.1f}  {a['method'].split(':')[0]}")
    f = res["fedavg"]
    print(f"{'fedavg':<16} {hb(f['down_per_client_round']):>18} {'':>16} {'':>11} {hb(f['up_per_client_round']):>16} "
          f"{'':>8}  computed")


def report(res: dict[str, Any]) -> None:
    hb = _common.human_bytes
    if res["config"] is not None:
        report_arms(res)
    for t in res["bytes_to_target"]:
        if not t.get("reached"):
            print(f"{t['run']}: target {t.get('target')} not reached" + (f" ({t['error']})" if "error" in t else ""))
            continue
        line = (f"{t['run']}: accuracy {t['accuracy']:.4f} >= {t['target']:.4f} at round {t['round']} after "
                f"{hb(t['bytes_total'])} ({hb(t['bytes_down'])} down, {hb(t['bytes_up'])} up)")
        if "fedavg_bytes_total_same_rounds" in t:
            line += f"; FedAvg, same rounds (computed): {hb(t['fedavg_bytes_total_same_rounds'])}"
        print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
