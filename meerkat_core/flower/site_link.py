"""The local link between a SuperNode's ClientApp and the ``meerkat site serve`` process of its site.

Flower runs each message in a fresh ``flwr-clientapp`` process, so a site that rebuilt its client for every
message would reload the base model each round. Instead the site runs one long-lived ``meerkat site serve``
process holding the model and its shard; the ClientApp (which imports nothing heavy) forwards each message
to it over a Unix socket on the same machine and returns the answer. Flower still carries every message
between machines; this link never leaves the host.

Frames (both directions): ``b"MKS1" | u8 code | u32 length | payload``. Requests: ``HELLO`` (JSON
``{"run": run id, "setup": ClientSetup}``), ``TRAIN`` (u64 run id, then ``RoundInstruction.to_bytes()``).
Replies: code ``OK`` with JSON ``{"client", "synced_round"}`` or ``ClientReply.to_bytes()``; ``INPUT_ERROR``
or ``ERROR`` with a one-line UTF-8 message. Standard library only.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

from meerkat_core.errors import MeerkatError, MeerkatInputError

MAGIC = b"MKS1"
HELLO, TRAIN = 1, 2
OK, INPUT_ERROR, ERROR = 0, 1, 2
_HEAD = struct.Struct("<4sBI")
_RUN = struct.Struct("<Q")


def write_frame(sock: socket.socket, code: int, payload: bytes) -> None:
    sock.sendall(_HEAD.pack(MAGIC, code, len(payload)) + payload)


def _read_exact(sock: socket.socket, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = sock.recv(min(n - got, 1 << 20))
        if not chunk:
            raise EOFError("connection closed")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    magic, code, n = _HEAD.unpack(_read_exact(sock, _HEAD.size))
    if magic != MAGIC:
        raise MeerkatError("site link: not a meerkat site frame (bad magic)")
    return code, _read_exact(sock, n)


def train_payload(run_id: int, instruction: bytes) -> bytes:
    return _RUN.pack(run_id) + instruction


def split_train_payload(payload: bytes) -> tuple[int, bytes]:
    return _RUN.unpack_from(payload)[0], payload[_RUN.size:]


class SiteLink:
    """The ClientApp's side: one request per connection (a ClientApp process handles one message)."""

    def __init__(self, path: str, timeout: float = 3600.0) -> None:
        self.path = path
        self.timeout = timeout

    def _request(self, code: int, payload: bytes) -> bytes:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.path)
                write_frame(sock, code, payload)
                status, body = read_frame(sock)
        except (OSError, EOFError) as exc:
            raise MeerkatError(f"site server at {self.path} is not reachable ({exc}); is `meerkat site serve` running?") from None
        if status == OK:
            return body
        text = body.decode("utf-8", "replace")
        raise MeerkatInputError(text) if status == INPUT_ERROR else MeerkatError(text)

    def hello(self, run_id: int, setup: dict[str, Any]) -> dict[str, Any]:
        return json.loads(self._request(HELLO, json.dumps({"run": run_id, "setup": setup}).encode()))

    def train(self, run_id: int, instruction: bytes) -> bytes:
        return self._request(TRAIN, train_payload(run_id, instruction))
