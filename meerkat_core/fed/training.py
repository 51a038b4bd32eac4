"""``run_training``: the whole ``meerkat train`` job over a run directory, resumable.

Order of writes per round (the ledger block is the commit point): GradIP rows (appended to the side
file + fsync) -> ledger block (append + fsync) -> metrics row (append + fsync) -> checkpoint (atomic).
Each round costs the files O(its own rows), not a rewrite of the history; when the job ends the GradIP
rows are put into gradip.safetensors at once (``GradipLog.write``). ``--resume`` keeps the committed
ledger rounds, rebuilds the global state by re-applying them from the base model's values (bitwise
what the run computed), rewrites metrics and GradIP cut to match (once), and goes on.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

from meerkat_core.config.train import TrainConfig
from meerkat_core.errors import MeerkatInputError
from meerkat_core.fed.server import RoundOutcome
from meerkat_core.fed.state import state_crc
from meerkat_core.fed.simulator import (
    Federation,
    build_federation,
    client_record,
    evaluate_global,
    run_round,
    write_checkpoint,
)
from meerkat_core.gradip.classify import make_classifier
from meerkat_core.gradip.file import GRADIP_PENDING
from meerkat_core.gradip.log import GradipLog
from meerkat_core.rundir import CHECKPOINTS, METRICS, RunDir, check_run_dir, run_dir_lock
from meerkat_core.tasks import get_task

RoundCallback = Callable[[dict[str, Any]], None]
# One round: (outcome, per-client (bytes_down, bytes_up) of the protocol encodings, extra metrics-row
# fields). The in-process engine is the default; meerkat_core.flower supplies one that uses Flower.
RoundRunner = Callable[[Federation, int], tuple[RoundOutcome, dict[int, tuple[int, int]], dict[str, Any]]]


def check_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg.validate()`` plus what needs the registries (the Meerkat-vp classifier's name) and the task
    (a bad task file is refused before the run directory, and its lock, exists)."""
    cfg.validate()
    make_classifier(cfg.vp.classifier, cfg.vp.classifier_params())  # an unknown name is an input error
    get_task(cfg.task)
    return cfg


def _should_eval(cfg: TrainConfig, r: int) -> bool:
    return r == cfg.rounds or (cfg.eval.every > 0 and r % cfg.eval.every == 0)


def _should_checkpoint(cfg: TrainConfig, r: int) -> bool:
    return r == cfg.rounds or (cfg.checkpoint.every > 0 and r % cfg.checkpoint.every == 0)


def _restore(fed: Federation, run: RunDir) -> tuple[int, list[dict[str, Any]], GradipLog]:
    clients, rounds, committed = run.read_ledger()
    run.truncate_ledger(committed)
    done = max(rounds) if rounds else 0
    for r in range(1, done + 1):
        if r not in rounds:
            raise MeerkatInputError(f"--resume {run.path}: ledger lacks round {r}; the run directory is damaged")
        fed.server.restore_round(r, clients[r])
    fed.server.policy.restore(rounds)
    metrics = [m for m in run.read_metrics() if int(m.get("round", 0)) <= done]
    if run.file(METRICS).exists():
        run.write_metrics(metrics)  # rows of uncommitted rounds and a torn last line go, before rows are appended
    gradip = GradipLog.read_until(run.path, done)
    if gradip.columns["round"] or (run.path / GRADIP_PENDING).exists():
        gradip.write(run.path, fed.cfg.seed, fed.provenance["mask_sha256"])  # likewise for the GradIP side file
    for p in (run.path / CHECKPOINTS).glob("round-*.safetensors"):
        if int(p.stem.split("-")[1]) > done:
            p.unlink()
    if done and _should_checkpoint(fed.cfg, done) and not run.checkpoint_path(done).exists():
        write_checkpoint(fed, run, done)
    return done, metrics, gradip


def run_training(
    cfg: TrainConfig,
    on_round: RoundCallback | None = None,
    on_event: Callable[[str], None] | None = None,
    build: Callable[[TrainConfig], Federation] = build_federation,
    round_runner: RoundRunner | None = None,
) -> dict[str, Any]:
    """Run (or resume) a federated training job; returns the summary written to summary.json.

    The run directory is locked for the whole job (``run_lock``): a second process on it is refused."""
    check_config(cfg)
    run = check_run_dir(cfg)
    with run_dir_lock(run.path):
        return _train_locked(cfg, run, on_round, on_event, build, round_runner)


def _train_locked(
    cfg: TrainConfig,
    run: RunDir,
    on_round: RoundCallback | None,
    on_event: Callable[[str], None] | None,
    build: Callable[[TrainConfig], Federation],
    round_runner: RoundRunner | None,
) -> dict[str, Any]:
    fed = build(cfg)  # loads and checks every input before anything is written
    say = on_event or (lambda msg: None)
    start = time.perf_counter()
    if cfg.resume:
        done, metrics, gradip = _restore(fed, run)
        say(f"resuming after round {done} of {cfg.rounds}")
    else:
        run.path.mkdir(parents=True, exist_ok=True)
        done, metrics, gradip = 0, [], GradipLog()
    run.write_config(cfg, fed.provenance)
    if done == 0 and not metrics:
        say("evaluating the starting point")
        t0 = time.perf_counter()
        ev = evaluate_global(fed)
        metrics.append({"round": 0, "eval_accuracy": ev["accuracy"], "eval_loss": ev["loss"], "eval_n": ev["n"],
                        "eval_seconds": time.perf_counter() - t0})
        run.write_metrics(metrics)
        if on_round:
            on_round(metrics[-1])
    for r in range(done + 1, cfg.rounds + 1):
        t0 = time.perf_counter()
        outcome, wire, extra = (round_runner or run_in_process)(fed, r)
        records = []
        for o in outcome.clients:
            rec = client_record(o, wire[o.client])
            rec["round"] = r
            records.append(rec)
            gradip.add_client_round(r, o)
        gradip.append(run.path, cfg.seed, fed.provenance["mask_sha256"])
        losses = [v for o in outcome.clients for v in o.losses if math.isfinite(v)]
        row: dict[str, Any] = {
            "round": r,
            "clients": [o.client for o in outcome.clients],
            "mean_loss": sum(losses) / len(losses) if losses else float("nan"),
            "lr": fed.server.lr_for(r),
            "steps": sum(o.steps for o in outcome.clients),
            "skipped": sum(o.skipped for o in outcome.clients),
            "bytes_down": sum(w[0] for w in wire.values()),
            "bytes_up": sum(w[1] for w in wire.values()),
            "seconds": time.perf_counter() - t0,
            **extra,
        }
        decisions = fed.server.policy.on_round_complete(r, outcome)
        run.append_round(records, {"round": r, "state_crc": outcome.state_crc, **decisions,
                                   **{k: row[k] for k in ("steps", "skipped", "bytes_down", "bytes_up")}})
        if _should_eval(cfg, r):
            t0 = time.perf_counter()
            ev = evaluate_global(fed)
            row.update(eval_accuracy=ev["accuracy"], eval_loss=ev["loss"], eval_n=ev["n"],
                       eval_seconds=time.perf_counter() - t0)
        metrics.append(row)
        run.append_metrics(row)
        if _should_checkpoint(cfg, r):
            write_checkpoint(fed, run, r)
        if on_round:
            on_round(row)
    gradip.write(run.path, cfg.seed, fed.provenance["mask_sha256"])  # the job's rows into gradip.safetensors
    summary = summarize(cfg, fed, metrics, run, time.perf_counter() - start)
    run.write_summary(summary)
    return summary


def run_in_process(fed: Federation, r: int) -> tuple[RoundOutcome, dict[int, tuple[int, int]], dict[str, Any]]:
    """The in-process engine's round (``simulator.run_round``) as a ``RoundRunner``."""
    outcome, wire, _ = run_round(fed, r)
    return outcome, wire, {}


def summarize(cfg: TrainConfig, fed: Federation, metrics: list[dict[str, Any]], run: RunDir, seconds: float) -> dict[str, Any]:
    evals = [m for m in metrics if "eval_accuracy" in m]
    rounds = [m for m in metrics if m.get("round", 0) > 0]
    steps = sum(m["steps"] for m in rounds)
    up = sum(m["bytes_up"] for m in rounds)
    down = sum(m["bytes_down"] for m in rounds)
    ckpts = sorted((run.path / CHECKPOINTS).glob("round-*.safetensors"))
    return {
        "run": str(run.path),
        "algorithm": cfg.algorithm,
        "rounds": cfg.rounds,
        "k": fed.provenance["k"],
        "d": fed.provenance["d"],
        "initial_accuracy": evals[0]["eval_accuracy"] if evals else None,
        "final_accuracy": evals[-1]["eval_accuracy"] if evals else None,
        "eval_n": evals[-1]["eval_n"] if evals else None,
        "total_client_steps": steps,
        "skipped_steps": sum(m["skipped"] for m in rounds),
        "bytes_up": up,
        "bytes_down": down,
        "uplink_bytes_per_step": up / steps if steps else None,
        "seconds_this_invocation": seconds,
        "latest_checkpoint": str(ckpts[-1]) if ckpts else None,
        "final_state_crc": state_crc(fed.server.x),
    }
