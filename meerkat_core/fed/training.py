"""``run_training``: the whole ``meerkat train`` job over a run directory, resumable.

Order of writes per round (the ledger block is the commit point): GradIP rows (appended to the side
file + fsync) -> ledger block (append + fsync) -> metrics row (append + fsync) -> checkpoint (atomic).
Each round costs the files O(its own rows), not a rewrite of the history; when the job ends the GradIP
rows are put into gradip.safetensors at once (``GradipLog.write``). A round whose client steps were all
skipped, or that leaves a non-finite state, stops the job with an input error before its ledger block
(the run has diverged; the directory stays complete up to the round before).

``--resume`` trusts the ledger alone. It redoes every committed round with the server's own
``complete_round`` from the base model's values, checking each against the ledger (the recorded
``state_crc``, who took part, step budgets, data pointers, Meerkat-vp's decisions): any mismatch is an
input error naming the ledger line. The replay restores the server exactly (state, history, when
each client last synced), rebuilds GradIP and metrics from it (evaluations a kill lost are redone at
the round they belong to) and writes them whole once, verifies every checkpoint byte for byte and
rewrites one that is missing or damaged, removes the temporaries a kill left, cuts a torn tail off the
ledger, and goes on.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Callable

import torch

from meerkat_core.config.train import TrainConfig
from meerkat_core.errors import MeerkatInputError
from meerkat_core.faults import commit_point
from meerkat_core.fed.server import RoundOutcome
from meerkat_core.fed.state import state_crc
from meerkat_core.fed.vp import calibration_warnings
from meerkat_core.fed.simulator import (
    Federation,
    build_federation,
    checkpoint_file_bytes,
    client_record,
    evaluate_global,
    run_round,
    write_checkpoint,
)
from meerkat_core.gradip.classify import classifier_from_settings
from meerkat_core.gradip.file import GRADIP_FILE, GRADIP_PENDING
from meerkat_core.gradip.log import GradipLog
from meerkat_core.rundir import (
    CHECKPOINT_NAME,
    CHECKPOINTS,
    LEDGER,
    METRICS,
    SUMMARY,
    LedgerRound,
    RunDir,
    check_run_dir,
    run_dir_lock,
)
from meerkat_core.tasks import get_task

RoundCallback = Callable[[dict[str, Any]], None]
# One round: (outcome, per-client (bytes_down, bytes_up) of the protocol encodings, extra metrics-row
# fields). The in-process engine is the default; meerkat_core.flower supplies one that uses Flower.
RoundRunner = Callable[[Federation, int], tuple[RoundOutcome, dict[int, tuple[int, int]], dict[str, Any]]]
# metrics-row fields that come from the ledger (the rest: evaluations, and the round's wall time)
LEDGER_ROW_FIELDS = ("round", "clients", "mean_loss", "lr", "steps", "skipped", "bytes_down", "bytes_up")
EVAL_FIELDS = ("eval_accuracy", "eval_loss", "eval_n")
EVAL_TIMING = ("eval_seconds",)  # carried over with EVAL_FIELDS on --resume; older runs lack it
# An engine's transport figures (Flower's wire bytes, dropped replies): in the metrics row, not in the ledger,
# which stays the same bytes on every engine; --resume keeps them from a row that agrees with the ledger.
ENGINE_FIELDS = ("flower_bytes_down", "flower_bytes_up", "dropped")
# the run's inputs, compared by content on --resume (paths may differ: another working directory)
CONTENT_PROVENANCE = ("model_fingerprint", "mask_sha256", "partition_fingerprint", "dataset_fingerprint", "k", "d",
                      "num_clients")


def check_config(cfg: TrainConfig) -> TrainConfig:
    """``cfg.validate()`` plus what needs the registries (the Meerkat-vp classifier and its parameters) and
    the task (a bad task file is refused before the run directory, and its lock, exists)."""
    cfg.validate()
    classifier_from_settings(cfg.vp)  # an unknown name, parameter or value is an input error
    get_task(cfg.task)
    return cfg


def _should_eval(cfg: TrainConfig, r: int) -> bool:
    return r == cfg.rounds or (cfg.eval.every > 0 and r % cfg.eval.every == 0)


def _should_checkpoint(cfg: TrainConfig, r: int) -> bool:
    return r == cfg.rounds or (cfg.checkpoint.every > 0 and r % cfg.checkpoint.every == 0)


def _evaluate(fed: Federation, r: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    ev = evaluate_global(fed)
    if ev["n"] and not math.isfinite(ev["loss"]):
        raise MeerkatInputError(f"round {r}: the global model's evaluation loss is {ev['loss']} (its outputs are not "
                                f"finite): the run has diverged; {_diverged_fix(fed.cfg, r)}")
    return {"eval_accuracy": ev["accuracy"], "eval_loss": ev["loss"], "eval_n": ev["n"],
            "eval_seconds": time.perf_counter() - t0}


def _diverged_fix(cfg: TrainConfig, last_good: int) -> str:
    return (f"lower --lr (now {cfg.lr:g}) or --eps (now {cfg.eps:g}); the run directory is complete up to round "
            f"{last_good}")


def round_row(r: int, fed: Federation, outcome: RoundOutcome, wire: dict[int, tuple[int, int]],
              extra: dict[str, Any], seconds: float | None) -> dict[str, Any]:
    """A round's metrics row (without evaluation), from what the round produced (or the ledger holds)."""
    losses = [v for o in outcome.clients for v in o.losses if math.isfinite(v)]
    return {
        "round": r,
        "clients": [o.client for o in outcome.clients],
        "mean_loss": sum(losses) / len(losses) if losses else float("nan"),
        "lr": outcome.clients[0].lr if outcome.clients else fed.server.lr_for(r),
        "steps": sum(o.steps for o in outcome.clients),
        "skipped": sum(o.skipped for o in outcome.clients),
        "bytes_down": sum(w[0] for w in wire.values()),
        "bytes_up": sum(w[1] for w in wire.values()),
        "seconds": seconds,
        **extra,
    }


def _check_diverged(cfg: TrainConfig, fed: Federation, r: int, outcome: RoundOutcome) -> None:
    """Stop a run that no longer learns anything: every step skipped, or a non-finite state."""
    steps = sum(len(o.gs) for o in outcome.clients)
    skipped = sum(o.skipped for o in outcome.clients)
    tail = _diverged_fix(cfg, r - 1)
    if steps and skipped == steps:
        raise MeerkatInputError(
            f"round {r}: all {steps} client steps were skipped (their loss or update was not finite): the run has "
            f"diverged; {tail}"
        )
    if not bool(torch.isfinite(fed.server.x).all()):
        raise MeerkatInputError(f"round {r}: the global state is no longer finite: the run has diverged; {tail}")


def _ledger_wire(records: list[dict[str, Any]]) -> dict[int, tuple[int, int]]:
    return {int(c["client"]): (int(c.get("bytes_down", 0)), int(c.get("bytes_up", 0))) for c in records}


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values (the ledger and metrics went through JSON)."""
    return json.dumps(a, sort_keys=True, allow_nan=True) == json.dumps(b, sort_keys=True, allow_nan=True)


class _Restore:
    """Redo the committed rounds of a run directory (the module docstring), one check at a time."""

    def __init__(self, fed: Federation, run: RunDir) -> None:
        self.fed, self.run, self.cfg = fed, run, fed.cfg
        self.ledger = run.file(LEDGER)

    def bad(self, line: int, why: str) -> MeerkatInputError:
        return MeerkatInputError(f"--resume: {self.ledger} line {line}: {why}; the ledger was edited or damaged "
                                 "(restore it from a copy, or start a new run)")

    def evidence(self, done: int) -> None:
        """Files that are only written after a round's ledger commit must not be ahead of the ledger."""
        if not self.ledger.exists():
            raise MeerkatInputError(f"--resume {self.run.path}: {LEDGER} is missing; the run directory is damaged "
                                    "(restore the ledger, or start a new run)")
        ahead: list[str] = []
        rows = [int(m["round"]) for m in self.run.read_metrics() if isinstance(m.get("round"), int)]
        if rows and max(rows) > done:
            ahead.append(f"{METRICS} has round {max(rows)}")
        ckpts = [int(m.group(1)) for p in (self.run.path / CHECKPOINTS).glob("round-*.safetensors")
                 if (m := CHECKPOINT_NAME.match(p.name))]
        if ckpts and max(ckpts) > done:
            ahead.append(f"a checkpoint of round {max(ckpts)}")
        summary = self.run.read_summary()
        if summary is not None and isinstance(summary.get("rounds"), int) and summary["rounds"] > done:
            ahead.append(f"{SUMMARY} reports {summary['rounds']} rounds")
        if ahead:
            raise MeerkatInputError(
                f"--resume {self.run.path}: {' and '.join(ahead)} but {LEDGER} commits only {done}; the ledger lost "
                "rounds (restore it from a copy, or start a new run)"
            )

    def round(self, lr: LedgerRound) -> RoundOutcome:
        fed, r = self.fed, lr.round
        server = fed.server
        expected = set(server.sample_clients(r))
        listed = [int(c["client"]) for c in lr.clients]
        if len(set(listed)) != len(listed) or not set(listed) <= expected:
            raise self.bad(lr.client_lines[0], f"round {r} lists clients {listed}, but the run samples {sorted(expected)}")
        for line, rec in zip(lr.client_lines, lr.clients):
            c = int(rec["client"])
            if int(rec["steps"]) != int(server.policy.steps(r, c)) or int(rec["seed"]) != self.cfg.seed:
                raise self.bad(line, f"client {c} of round {r}: steps {rec['steps']} / seed {rec['seed']} are not the run's "
                                     f"({server.policy.steps(r, c)} / {self.cfg.seed})")
        if fed.client_replay:  # simulated clients that replay: each holds the state it last synced to
            for c in listed:
                fed.clients[c].restore_sync_state(server.round, server.x)
        try:
            outcome = server.restore_round(r, lr.clients)
        except (KeyError, TypeError, ValueError) as exc:
            raise self.bad(lr.line, f"round {r} cannot be replayed ({type(exc).__name__}: {exc})") from None
        recorded = lr.record["state_crc"]
        if not isinstance(recorded, int) or recorded != outcome.state_crc:
            raise self.bad(lr.line, f"round {r} records state_crc {recorded!r} but its client lines lead to "
                                    f"{outcome.state_crc}")
        decisions = server.policy.on_round_complete(r, outcome)
        for key, value in decisions.items():
            if not _same(lr.record.get(key), value):
                raise self.bad(lr.line, f"round {r}'s {key!r} differs from what the round's results give")
        return outcome

    def checkpoint(self, r: int) -> None:
        """Verify checkpoint ``r`` against the replayed state, byte for byte; (re)write it if needed."""
        path = self.run.checkpoint_path(r)
        if not (_should_checkpoint(self.cfg, r) or path.exists()):
            return
        want = checkpoint_file_bytes(self.fed, r)
        try:
            ok = path.read_bytes() == want
        except OSError:
            ok = False
        if not ok:
            write_checkpoint(self.fed, self.run, r)


def _restore(fed: Federation, run: RunDir) -> tuple[int, list[dict[str, Any]], GradipLog]:
    rounds, committed = run.ledger_rounds()
    done = len(rounds)
    if done > fed.cfg.rounds:
        raise MeerkatInputError(
            f"--resume {run.path}: the run has completed {done} rounds, more than --rounds {fed.cfg.rounds}; "
            f"pass --rounds {done} or more"
        )
    rs = _Restore(fed, run)
    rs.evidence(done)
    run.remove_temporaries(also=(GRADIP_FILE,))
    old = {int(m["round"]): m for m in run.read_metrics() if isinstance(m.get("round"), int)}
    metrics: list[dict[str, Any]] = []
    if old.get(0) and all(k in old[0] for k in EVAL_FIELDS):
        metrics.append(old[0])
    elif done:  # the starting point's evaluation was lost (done == 0: the main loop evaluates it)
        metrics.append({"round": 0, **_evaluate(fed, 0)})
    gradip = GradipLog()
    for lr in rounds:
        r = lr.round
        outcome = rs.round(lr)
        row = round_row(r, fed, outcome, _ledger_wire(lr.clients), {}, None)
        prev = old.get(r)
        if prev is not None and all(_same(prev.get(k), row[k]) for k in LEDGER_ROW_FIELDS):
            row["seconds"] = prev.get("seconds")
            row.update({k: prev[k] for k in EVAL_FIELDS + EVAL_TIMING + ENGINE_FIELDS if k in prev})
        if _should_eval(fed.cfg, r) and "eval_accuracy" not in row:
            row.update(_evaluate(fed, r))
        metrics.append(row)
        for o in outcome.clients:
            gradip.add_client_round(r, o)
        rs.checkpoint(r)
    run.truncate_ledger(committed)
    if done or metrics:
        run.write_metrics(metrics)
    # GradIP of a round the ledger never committed goes too (from the file and from the side file)
    if done or run.file(GRADIP_FILE).exists() or run.file(GRADIP_PENDING).exists():
        gradip.write(run.path, fed.cfg.seed, fed.provenance["mask_sha256"])
    return done, metrics, gradip


def _check_same_inputs(fed: Federation, run: RunDir, before: dict[str, Any]) -> None:
    """--resume: the mask, partition, data and model must be the run's by content (``before``: the run's
    recorded provenance), not by path."""
    for key in CONTENT_PROVENANCE:
        if key in before and before[key] != fed.provenance[key]:
            option = {"mask_sha256": "--mask", "partition_fingerprint": "--partition", "dataset_fingerprint": "--task",
                      "model_fingerprint": "--model"}.get(key, "the inputs")
            raise MeerkatInputError(
                f"--resume {run.path}: {option} is not what the run used ({key} {fed.provenance[key]!r}, the run "
                f"recorded {before[key]!r}); resume with the original file"
            )


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
    run, dtype_reason = check_run_dir(cfg)
    with run_dir_lock(run.path):
        return _train_locked(cfg, run, on_round, on_event, build, round_runner, dtype_reason)


def _train_locked(
    cfg: TrainConfig,
    run: RunDir,
    on_round: RoundCallback | None,
    on_event: Callable[[str], None] | None,
    build: Callable[[TrainConfig], Federation],
    round_runner: RoundRunner | None,
    dtype_reason: str,
) -> dict[str, Any]:
    fed = build(cfg)  # loads and checks every input before anything is written
    fed.provenance["dtype_reason"] = dtype_reason
    say = on_event or (lambda msg: None)
    start = time.perf_counter()
    if cfg.resume:
        before = run.read_config().get("provenance", {})
        _check_same_inputs(fed, run, before)
        # a resumed run keeps the reason it was started with (its config.json stays the uninterrupted run's)
        fed.provenance["dtype_reason"] = before.get("dtype_reason") or dtype_reason
        done, metrics, gradip = _restore(fed, run)
        say(f"resuming after round {done} of {cfg.rounds}")
    else:
        run.path.mkdir(parents=True, exist_ok=True)
        run.create_ledger()  # before config.json: a run directory with a config always has a ledger
        done, metrics, gradip = 0, [], GradipLog()
    # said once every input was checked: a refused --resume prints its error line alone
    say(f"dtype {cfg.dtype} ({dtype_reason})")
    if fed.provenance.get("carriers"):  # a low-precision run: how a step's two losses are computed
        reason = fed.provenance.get("zo_forward_reason")
        say(f"zo forward: {fed.provenance['zo_forward']}" + (f" (paired forward: {reason})" if reason else ""))
    for warning in calibration_warnings(cfg):
        say(f"warning: {warning}")
    run.write_config(cfg, fed.provenance)
    commit_point("after:config")
    if done == 0 and not metrics:
        say("evaluating the starting point")
        metrics.append({"round": 0, **_evaluate(fed, 0)})
        run.write_metrics(metrics)
        commit_point("after:metrics:0")
        if on_round:
            on_round(metrics[-1])
    for r in range(done + 1, cfg.rounds + 1):
        t0 = time.perf_counter()
        outcome, wire, extra = (round_runner or run_in_process)(fed, r)
        _check_diverged(cfg, fed, r, outcome)
        records = []
        for o in outcome.clients:
            rec = client_record(o, wire[o.client])
            rec["round"] = r
            records.append(rec)
            gradip.add_client_round(r, o)
        gradip.append(run.path, cfg.seed, fed.provenance["mask_sha256"])
        commit_point(f"after:gradip:{r}")
        row = round_row(r, fed, outcome, wire, extra, time.perf_counter() - t0)
        decisions = fed.server.policy.on_round_complete(r, outcome)
        for warning in fed.server.policy.warnings():
            say(f"warning: {warning}")
        run.append_round(records, {"round": r, "state_crc": outcome.state_crc, **decisions,
                                   **{k: row[k] for k in ("steps", "skipped", "bytes_down", "bytes_up")}})
        commit_point(f"after:ledger:{r}")
        if _should_eval(cfg, r):
            row.update(_evaluate(fed, r))
        metrics.append(row)
        run.append_metrics(row)
        commit_point(f"after:metrics:{r}")
        if _should_checkpoint(cfg, r):
            write_checkpoint(fed, run, r)
            commit_point(f"after:checkpoint:{r}")
        if on_round:
            on_round(row)
    gradip.write(run.path, cfg.seed, fed.provenance["mask_sha256"])  # the job's rows into gradip.safetensors
    summary = summarize(cfg, fed, metrics, run, time.perf_counter() - start)
    run.write_summary(summary)
    commit_point("after:summary")
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
