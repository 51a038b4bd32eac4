"""``meerkat site serve``: one site's long-lived process, holding its base model and shard between rounds.

It answers the requests of ``site_link`` on a Unix socket (mode 0600): ``HELLO`` checks the site's files
against the server's setup and builds (or reuses) the client; ``TRAIN`` runs one round of ``ZOClient``.
The client's synchronised state lives here, per Flower run: a new run starts from the base model's values
and catches up on the history the server sends (as a resumed run does).

flwr-free: the process needs only meerkat (torch, the model stack); Flower's SuperNode runs beside it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
from pathlib import Path
from typing import Callable

from meerkat_core.errors import MeerkatError, MeerkatInputError
from meerkat_core.flower.site import ClientSetup, SiteCache, SiteClient, SiteConfig, check_files, check_site
from meerkat_core.flower.site_link import (
    ERROR,
    HELLO,
    INPUT_ERROR,
    OK,
    TRAIN,
    read_frame,
    split_train_payload,
    write_frame,
)


class SiteServer:
    """The request handler: one site, one run at a time."""

    def __init__(self, site: SiteConfig) -> None:
        self.site = site
        self.cache = SiteCache()
        self.run_id: int | None = None
        self.current: SiteClient | None = None

    def hello(self, payload: bytes) -> bytes:
        body = json.loads(payload)
        setup = ClientSetup.from_dict(body["setup"])
        check_site(self.site, setup)
        examples = self.cache.examples(self.site)
        if not examples:  # the server leaves a client without data out of the run
            return json.dumps({"client": self.site.partition_id, "synced_round": 0, "examples": 0}).encode()
        built = self.cache.get(self.site, setup)
        if body["run"] != self.run_id:  # a new run: the client starts from the base model's values
            built.client.restore_sync_state(0, None)
            self.run_id = int(body["run"])
        self.current = built
        return json.dumps({"client": self.site.partition_id, "synced_round": built.client.synced_round,
                           "examples": examples}).encode()

    def train(self, payload: bytes) -> bytes:
        from meerkat_core.fed.protocol import RoundInstruction

        run_id, data = split_train_payload(payload)
        if self.current is None or run_id != self.run_id:
            raise MeerkatError(f"site {self.site.partition_id}: round of run {run_id} without its handshake "
                               "(the site server restarted?); resume the run")
        instr = RoundInstruction.from_bytes(data)
        if instr.client != self.site.partition_id:
            raise MeerkatInputError(f"site {self.site.partition_id}: got the round of client {instr.client}")
        reply, _ = self.current.client.run_round(instr, self.current.runtime)
        return reply.to_bytes()

    def handle(self, code: int, payload: bytes) -> tuple[int, bytes]:
        try:
            if code == HELLO:
                return OK, self.hello(payload)
            if code == TRAIN:
                return OK, self.train(payload)
            return ERROR, f"site server: unknown request {code}".encode()
        except MeerkatInputError as exc:
            return INPUT_ERROR, " ".join(str(exc).split()).encode()
        except Exception as exc:  # noqa: BLE001 - sent back to the ClientApp, which raises it in the run
            return ERROR, (" ".join(str(exc).split()) or type(exc).__name__).encode()


def _bind(path: Path) -> socket.socket:
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise MeerkatInputError(f"--socket {path}: exists and is not a socket; choose another path")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
            raise MeerkatInputError(f"--socket {path}: another site server is listening there")
        except OSError:
            path.unlink()  # a stale socket of a process that is gone
        finally:
            probe.close()
    if not path.parent.is_dir():
        raise MeerkatInputError(f"--socket {path}: no such directory {path.parent}")
    if len(os.fsencode(path)) > 100:
        raise MeerkatInputError(f"--socket {path}: too long for a Unix socket (keep it under 100 bytes)")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # owner only: the socket is the site's, not the machine's
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.listen(8)
    return sock


def serve(site: SiteConfig, socket_path: str, on_event: Callable[[str], None] | None = None) -> None:
    """Serve ``site`` on ``socket_path`` until SIGTERM / SIGINT (the socket file is removed on exit)."""
    import meerkat_core.fed.client  # noqa: F401 - the heavy imports happen before we listen
    import meerkat_core.models  # noqa: F401

    say = on_event or (lambda msg: None)
    check_files(site)
    path = Path(socket_path)
    server = SiteServer(site)
    sock = _bind(path)
    stop = {"now": False}

    def _stop(signum: int, frame: object) -> None:
        stop["now"] = True

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    sock.settimeout(0.5)
    import torch

    say(f"site {site.partition_id}: listening on {path} ({torch.get_num_threads()} torch threads)")
    try:
        while not stop["now"]:
            try:
                conn, _ = sock.accept()
            except socket.timeout:
                continue
            except InterruptedError:
                continue
            with conn:
                conn.settimeout(None)
                try:
                    while True:
                        code, payload = read_frame(conn)
                        write_frame(conn, *server.handle(code, payload))
                except (EOFError, OSError, MeerkatError):
                    pass  # the ClientApp closed its connection (or died): wait for the next one
    finally:
        sock.close()
        path.unlink(missing_ok=True)
        for s, h in previous.items():
            signal.signal(s, h)
        say(f"site {site.partition_id}: stopped")
