"""Our protocol messages as Flower records (no weight arrays in replay mode).

- ``RoundInstruction`` -> ConfigRecord ``meerkat.instruction``: the header fields and the seed material
  (history keys as int64 — keys are 63-bit — and coefficients as float64); in vector mode the fp32
  global vector travels in ArrayRecord ``meerkat.vector``.
- ``ClientReply`` -> MetricRecord ``meerkat.reply``: round, client, crc, gs (float64), losses (float32
  values, carried as float64).
- The client setup (model, task, mask hash, ...) -> ConfigRecord ``meerkat.setup`` (handshake only).

``message_bytes`` is the size of a Flower message as it is stored and pushed (the deflated objects of
its tree: the Message with its metadata, the RecordDict, each record); HTTP framing is not counted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from meerkat_core.errors import MeerkatError
from meerkat_core.fed.protocol import ClientReply, HistoryEntry, RoundInstruction
from meerkat_core.flower.site import ClientSetup

INSTRUCTION = "meerkat.instruction"
VECTOR = "meerkat.vector"
REPLY = "meerkat.reply"
SETUP = "meerkat.setup"
HELLO = "meerkat.hello"
_HEADER = ("round", "client", "steps", "seed", "lr", "eps", "data_offset", "sync", "synced_round",
           "state_round", "state_crc")


def setup_to_record(setup: ClientSetup) -> ConfigRecord:
    return ConfigRecord(setup.to_dict())


def setup_from_record(rec: Any) -> ClientSetup:
    return ClientSetup.from_dict(dict(rec))


def instruction_to_content(instr: RoundInstruction) -> RecordDict:
    cfg: dict[str, Any] = {k: getattr(instr, k) for k in _HEADER}
    records: dict[str, Any] = {}
    if instr.sync == "replay":
        cfg["history_keys"] = [int(h.key) for h in instr.history]
        cfg["history_coefs"] = [float(h.coef) for h in instr.history]
    else:
        vec = np.ascontiguousarray(np.asarray(instr.vector, dtype="<f4"))
        records[VECTOR] = ArrayRecord({"vector": Array(vec)})
    records[INSTRUCTION] = ConfigRecord(cfg)
    return RecordDict(records)


def instruction_from_content(content: RecordDict) -> RoundInstruction:
    if INSTRUCTION not in content:
        raise MeerkatError("not a meerkat round instruction (no ConfigRecord 'meerkat.instruction')")
    cfg = dict(content[INSTRUCTION])
    head = {k: cfg[k] for k in _HEADER}
    if head["sync"] == "replay":
        history = [HistoryEntry(int(k), float(c)) for k, c in zip(cfg["history_keys"], cfg["history_coefs"])]
        return RoundInstruction(history=history, **head)
    vector = content[VECTOR]["vector"].numpy().astype("<f4")
    return RoundInstruction(vector=vector, **head)


def reply_to_content(reply: ClientReply) -> RecordDict:
    # losses are float32 on our wire; round them here so both engines log the same values
    losses = [float(v) for v in np.asarray(reply.losses, dtype="<f4")]
    rec = MetricRecord({"round": reply.round, "client": reply.client, "state_crc": reply.state_crc,
                        "gs": [float(g) for g in reply.gs], "losses": losses})
    return RecordDict({REPLY: rec})


def reply_from_content(content: RecordDict) -> ClientReply:
    if REPLY not in content:
        raise MeerkatError("not a meerkat client reply (no MetricRecord 'meerkat.reply')")
    m = dict(content[REPLY])
    return ClientReply(round=int(m["round"]), client=int(m["client"]), state_crc=int(m["state_crc"]),
                       gs=[float(v) for v in m["gs"]], losses=[float(v) for v in m["losses"]])


def message_bytes(msg: Message) -> int:
    """Bytes of ``msg`` as Flower stores and pushes it: the sum of its deflated objects."""
    try:  # flwr >= 1.2x keeps it in supercore; earlier releases in common
        from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    except ImportError:  # pragma: no cover - depends on the flwr release
        from flwr.common.inflatable import get_all_nested_objects  # type: ignore[no-redef]

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(msg).values())
