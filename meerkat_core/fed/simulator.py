"""The in-process federation: N clients on ONE copy of the base model, a server, a run directory.

Each round: the server plans (sampling, step budgets, seeds, sync payloads); every sampled client
syncs, runs its ZO steps on the shared model and replies with scalars; the server replays all paths,
computes GradIP and aggregates. Messages are serialized to bytes in both directions, so the byte
counts in the ledger are real wire sizes, and the client only ever sees what the bytes carry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import meerkat_core
from meerkat_core.errors import MeerkatInputError
from meerkat_core.fed.checkpoint import checkpoint_bytes, save_checkpoint
from meerkat_core.fed.client import ClientRuntime, ZOClient
from meerkat_core.config.train import TrainConfig
from meerkat_core.fed.policy import UniformPolicy
from meerkat_core.fed.protocol import ClientReply, RoundInstruction
from meerkat_core.rundir import RunDir
from meerkat_core.fed.server import RoundOutcome, ServerConfig, ZOServer
from meerkat_core.fed.vp import VPPolicy
from meerkat_core.hashing import sha256_file
from meerkat_core.host_memory import keep_freed_memory



@dataclass
class Federation:
    """Everything a run needs, loaded and checked (nothing written yet)."""

    cfg: TrainConfig
    loaded: Any
    task: Any
    mask: Any | None
    manifest: Any
    clients: dict[int, ZOClient]
    runtime: ClientRuntime
    server: ZOServer
    test_set: Any
    provenance: dict[str, Any] = field(default_factory=dict)
    # False: in replay mode a simulated client adopts the server's state instead of replaying the
    # history it was sent (same bits, crc-checked; the message is still built and counted). True:
    # every client really replays it, as over a network (tests of the catch-up path set this).
    client_replay: bool = False


def make_policy(cfg: TrainConfig, client_sizes: dict[int, int]) -> Any:
    """The round policy of ``cfg.algorithm``: uniform sampling for meerkat, calibration +
    early stopping for meerkat-vp."""
    if cfg.algorithm == "meerkat-vp":
        return VPPolicy.from_config(cfg, client_sizes)
    return UniformPolicy(cfg.seed, cfg.clients_per_round, cfg.local_steps)


def build_federation(cfg: TrainConfig) -> Federation:
    """The whole federation in this process: the server and every client (the in-process engine)."""
    return _build(cfg, with_clients=True)


def build_server_federation(cfg: TrainConfig) -> Federation:
    """The server's side only (the Flower engines): no client is built and no training text encoded;
    the clients' sizes are the partition manifest's row counts (what ``ZOClient.num_examples`` is)."""
    return _build(cfg, with_clients=False)


def _build(cfg: TrainConfig, with_clients: bool) -> Federation:
    from meerkat_core.encoding import encode_split
    from meerkat_core.mask import load_mask
    from meerkat_core.models import load_model
    from meerkat_core.partition import load_partition
    from meerkat_core.tasks import get_task, load_task_data
    from meerkat_core.zo import SparseCoordinates

    cfg.validate()
    task = get_task(cfg.task)
    if cfg.mask != "all" and not Path(cfg.mask).is_file():
        raise MeerkatInputError(f"--mask {cfg.mask}: no such file; make one with `meerkat mask` or pass --mask all")
    manifest = load_partition(cfg.partition)
    data = load_task_data(task)
    verify_train_partition(manifest, task, data)
    loaded = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    # forwards on the CPU reuse the memory the last step freed (host_memory.py: page faults, issue #20)
    host_allocator = keep_freed_memory(loaded.device.type)
    mask = load_mask(cfg.mask, loaded.model) if cfg.mask != "all" else None
    indices = None if mask is None else {t.name: t.indices for t in mask.nonempty()}
    coords = SparseCoordinates(loaded.model, indices, z_cache_limit=cfg.z_cache_limit, paired=cfg.paired)
    x0 = coords.values()
    gbar = None
    if mask is not None:
        gbar = coords.concat({t.name: t.grad_mean for t in mask.nonempty()})
    train_enc = encode_split(loaded.tokenizer, task, data.train, max_length=cfg.max_length) if with_clients else None
    clients: dict[int, ZOClient] = {}
    sizes: dict[int, int] = {}
    for c in range(manifest.num_clients):
        idx = manifest.client_indices(c)
        if idx:
            sizes[c] = len(idx)
            if train_enc is not None:
                clients[c] = ZOClient(c, train_enc.subset(idx), x0)
    test = data.test if cfg.eval.limit is None else data.test.select(range(min(cfg.eval.limit, len(data.test))))
    test_set = encode_split(loaded.tokenizer, task, test, max_length=cfg.max_length)
    server = ZOServer(
        ServerConfig(
            seed=cfg.seed, rounds=cfg.rounds, local_steps=cfg.local_steps, clients_per_round=cfg.clients_per_round,
            lr=cfg.lr, eps=cfg.eps, batch_size=cfg.batch_size, schedule=cfg.schedule, sync=cfg.sync_mode,
        ),
        x0, sizes, gbar=gbar, policy=make_policy(cfg, sizes),
    )
    runtime = ClientRuntime(model=loaded.model, coords=coords, pad_id=loaded.tokenizer.pad_token_id,
                            batch_size=cfg.batch_size, loss=cfg.loss)
    provenance = {
        "meerkat_version": meerkat_core.__version__,
        "model_fingerprint": loaded.fingerprint,
        "model_source": loaded.source,
        "mask_sha256": "all" if mask is None else sha256_file(cfg.mask),
        "mask_path": "all" if mask is None else str(Path(cfg.mask).resolve()),
        "k": coords.k,
        "d": coords.d,
        "partition_fingerprint": manifest.partition_fingerprint,
        "dataset_fingerprint": manifest.dataset_fingerprint,
        "task_name": task.name,
        "task_identity": task.identity(),
        "num_clients": len(sizes),
        "torch": torch.__version__,
        "dtype": str(loaded.dtype).removeprefix("torch."),
        # low-precision runs: where the masked coordinates are carried (zo/carriers.py); None in fp32
        "carriers": coords.carriers.summary() if coords.carriers else None,
        # how a step's two losses are computed: one paired forward (zo/paired.py) or two forwards
        "zo_forward": "paired" if coords.paired is not None else "two forwards",
        # a low-precision run on two forwards: why not paired (None otherwise)
        "zo_forward_reason": coords.paired_unavailable,
        "host_allocator": host_allocator,  # what keep_freed_memory did (None: the model is not on the CPU)
    }
    return Federation(cfg, loaded, task, mask, manifest, clients, runtime, server, test_set, provenance)


def verify_train_partition(manifest: Any, task: Any, data: Any) -> None:
    """Refuse a partition that is not of ``task``'s train split (``data``): its fingerprint (or, for a
    partition made with ``meerkat partition --data`` from the task's own files, their sha256) and the
    label counts it promises, checked against the labels it was made from."""
    from meerkat_core.partition import verify_label_counts, verify_partition
    from meerkat_core.tasks import dataset_fingerprint, load_local_files

    files = train_files_sha256(task)
    verify_partition(manifest, dataset_fingerprint(data.train), files, len(data.train))
    labels = data.train["label"]
    if files is not None and manifest.source.get("kind") == "files" and list(manifest.source.get("sha256", [])) == files:
        # a partition of the raw files: its label counts are over the files' own label column
        labels = load_local_files(list(task.data.files[task.data.train_split]))[manifest.label_column]
    verify_label_counts(manifest, labels)


def train_files_sha256(task: Any) -> list[str] | None:
    """sha256 of each local file a files task reads its train split from (for ``verify_partition``)."""
    from meerkat_core.hashing import sha256_file

    if task.data.kind != "files":
        return None
    return [sha256_file(p) for p in task.data.files[task.data.train_split]]


def run_round(
    fed: Federation, round_: int, keep_end_states: bool = False
) -> tuple[RoundOutcome, dict[int, tuple[int, int]], dict[int, torch.Tensor]]:
    """One round, with every message passed as bytes. Returns the outcome, per-client (down, up) bytes
    and the clients' real end states (for the replay-equality check; with ``keep_end_states`` the
    outcome also holds the server's replayed end states)."""
    wire: dict[int, tuple[int, int]] = {}
    instructions: list[RoundInstruction] = []
    replies: list[ClientReply] = []
    real_end: dict[int, torch.Tensor] = {}
    for instr in fed.server.plan_round(round_):
        down = instr.to_bytes()
        known = None if fed.client_replay else fed.server.x
        reply, end_state = fed.clients[instr.client].run_round(RoundInstruction.from_bytes(down), fed.runtime, known)
        up = reply.to_bytes()
        instructions.append(instr)
        replies.append(ClientReply.from_bytes(up))
        wire[instr.client] = (len(down), len(up))
        if keep_end_states:
            real_end[instr.client] = end_state
    outcome = fed.server.complete_round(round_, instructions, replies, keep_end_states=keep_end_states)
    return outcome, wire, real_end


def evaluate_global(fed: Federation) -> dict[str, Any]:
    from meerkat_core.evaluation import evaluate_encoded

    fed.runtime.coords.set_values(fed.server.x)
    res = evaluate_encoded(
        fed.loaded.model, fed.test_set, list(fed.task.label_names), fed.runtime.pad_id,
        batch_size=fed.cfg.eval.batch_size, task=fed.task.name,
    )
    return {"accuracy": res.accuracy, "loss": res.mean_loss, "n": res.n, "per_class": res.per_class_accuracy}


def checkpoint_values(fed: Federation) -> dict[str, torch.Tensor]:
    return {name: v.clone() for name, v in fed.runtime.coords.split(fed.server.x).items()}


def _checkpoint_meta(fed: Federation, round_: int) -> dict[str, Any]:
    # no path: identical runs in different directories write identical checkpoints
    return {
        "round": round_, "model": fed.cfg.model, "model_fingerprint": fed.provenance["model_fingerprint"],
        "mask_sha256": fed.provenance["mask_sha256"], "k": fed.provenance["k"], "seed": fed.cfg.seed,
        "meerkat_version": meerkat_core.__version__,
    }


def checkpoint_file_bytes(fed: Federation, round_: int) -> bytes:
    """The exact bytes of the checkpoint of the current global state as round ``round_``'s."""
    return checkpoint_bytes(checkpoint_values(fed), _checkpoint_meta(fed, round_))


def write_checkpoint(fed: Federation, run: RunDir, round_: int) -> Path:
    path = run.checkpoint_path(round_)
    save_checkpoint(path, checkpoint_values(fed), _checkpoint_meta(fed, round_))
    return path


def client_record(o: Any, wire: tuple[int, int]) -> dict[str, Any]:
    return {
        "round": None, "client": o.client, "steps": o.steps, "seed": o.seed, "lr": o.lr, "eps": o.eps,
        "data_offset": o.data_offset, "weight": o.weight, "gs": o.gs, "losses": o.losses, "skipped": o.skipped,
        "bytes_down": wire[0], "bytes_up": wire[1],
    }
