"""The messages between server and clients: plain data, serialized to bytes for the wire.

A message is a small JSON header (ints, floats, strings) followed by packed little-endian arrays
(float64 scalars, uint64 keys). Nothing of size d or k travels in replay mode: the global state
reaches a client as the (key, coefficient) history it missed, which it replays itself.

Wire format: ``b"MKT1" | u32 header length | header JSON | for each array in header["arrays"]:
raw little-endian bytes``. Byte counts reported by meerkat are the lengths of these encodings.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from meerkat_core.errors import MeerkatError

MAGIC = b"MKT1"
_DTYPES = {"f8": np.dtype("<f8"), "u8": np.dtype("<u8"), "f4": np.dtype("<f4")}


def pack(header: dict[str, Any], arrays: dict[str, tuple[str, Any]]) -> bytes:
    """Encode a header and named arrays (``name -> (dtype code, values)``) into one message."""
    head = dict(header)
    head["arrays"] = [[name, code, len(vals)] for name, (code, vals) in arrays.items()]
    hb = json.dumps(head, separators=(",", ":"), sort_keys=True).encode()
    parts = [MAGIC, struct.pack("<I", len(hb)), hb]
    for _, (code, vals) in arrays.items():
        parts.append(np.asarray(vals, dtype=_DTYPES[code]).tobytes())
    return b"".join(parts)


def unpack(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    if data[:4] != MAGIC:
        raise MeerkatError("not a meerkat message (bad magic)")
    (n,) = struct.unpack("<I", data[4:8])
    head = json.loads(data[8 : 8 + n])
    pos = 8 + n
    arrays: dict[str, np.ndarray] = {}
    for name, code, length in head.pop("arrays"):
        dt = _DTYPES[code]
        arrays[name] = np.frombuffer(data, dtype=dt, count=length, offset=pos).copy()
        pos += dt.itemsize * length
    if pos != len(data):
        raise MeerkatError("malformed meerkat message (trailing bytes)")
    return head, arrays


@dataclass
class HistoryEntry:
    """One global update: ``x += fp32(coef) * z(key)`` (coef = -p_c * lr * g_c^t)."""

    key: int
    coef: float


@dataclass
class RoundInstruction:
    """Server -> client, once per round."""

    round: int
    client: int
    steps: int  # local step budget this round
    seed: int  # seed material: step t uses key derive_key(seed, round, client, t)
    lr: float
    eps: float
    data_offset: int  # examples of the client's data stream consumed before this round
    sync: str  # "replay" or "vector"
    synced_round: int  # replay: the round the client's state must be at before applying history
    history: list[HistoryEntry] = field(default_factory=list)  # replay mode
    vector: Any = None  # vector mode: the global k-vector (float32 array)
    state_round: int = 0  # the round whose global state the client reaches after sync
    state_crc: int = 0  # crc32 of the global fp32 k-vector, to detect a desynchronised client

    def to_bytes(self) -> bytes:
        header = {k: getattr(self, k) for k in (
            "round", "client", "steps", "seed", "lr", "eps", "data_offset", "sync", "synced_round",
            "state_round", "state_crc")}
        arrays: dict[str, tuple[str, Any]] = {}
        if self.sync == "replay":
            arrays["keys"] = ("u8", [h.key for h in self.history])
            arrays["coefs"] = ("f8", [h.coef for h in self.history])
        else:
            arrays["vector"] = ("f4", self.vector if self.vector is not None else [])
        return pack(header, arrays)

    @classmethod
    def from_bytes(cls, data: bytes) -> "RoundInstruction":
        head, arrays = unpack(data)
        history = []
        vector = None
        if head["sync"] == "replay":
            history = [HistoryEntry(int(k), float(c)) for k, c in zip(arrays["keys"], arrays["coefs"])]
        else:
            vector = arrays["vector"]
        return cls(history=history, vector=vector, **head)


@dataclass
class ClientReply:
    """Client -> server, once per round: one projected gradient per local step, and losses for logs."""

    round: int
    client: int
    gs: list[float]  # float64, exactly the values the client applied (nan = skipped step)
    losses: list[float]  # (L+ + L-) / 2 per step, float32 precision (for logging only)
    state_crc: int  # crc32 of the client's state after sync (must equal the instruction's)

    def to_bytes(self) -> bytes:
        header = {"round": self.round, "client": self.client, "state_crc": self.state_crc}
        return pack(header, {"gs": ("f8", self.gs), "losses": ("f4", self.losses)})

    @classmethod
    def from_bytes(cls, data: bytes) -> "ClientReply":
        head, arrays = unpack(data)
        return cls(gs=[float(v) for v in arrays["gs"]], losses=[float(v) for v in arrays["losses"]], **head)
