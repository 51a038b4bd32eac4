"""``meerkat site serve`` and its Unix-socket link (issue #17): flwr-free, so in the default suite.

A real ``meerkat site serve`` process answers the handshake (refusing a mask that is not the server's)
and runs a round whose reply is byte for byte the in-process client's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meerkat_core.errors import MeerkatError, MeerkatInputError
from meerkat_core.config.train import EvalSettings, TrainConfig
from meerkat_core.fed.protocol import ClientReply
from meerkat_core.flower.site_link import SiteLink
from tests.conftest import run_cli


def _serve(sock: Path, mask: Path, part: Path, client: int = 0) -> subprocess.Popen:
    argv = [sys.executable, "-m", "meerkat_cli.app", "site", "serve", "--socket", str(sock), "--partition-id",
            str(client), "--partition-dir", str(part), "--mask", str(mask), "--device", "cpu"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not sock.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline
        time.sleep(0.1)
    return proc


def test_site_server_handshake_and_round_equal_the_in_process_client(
    tiny_mask: Path, tiny_partition: Path, tmp_path: Path
) -> None:
    from meerkat_core.fed.simulator import build_federation
    from meerkat_core.flower.site import client_setup

    cfg = TrainConfig(model="tiny-llama", mask=str(tiny_mask), partition=str(tiny_partition), task="sentiment2",
                      out=str(tmp_path / "unused"), rounds=2, local_steps=2, clients_per_round=4, lr=1e-2,
                      batch_size=4, eval=EvalSettings(limit=8), device="cpu")
    fed = build_federation(cfg)
    setup = client_setup(fed).to_dict()
    client = min(fed.clients)
    sock = tmp_path / "s.sock"
    proc = _serve(sock, tiny_mask, tiny_partition, client)
    try:
        link = SiteLink(str(sock), timeout=300)
        with pytest.raises(MeerkatInputError, match="not the server's mask"):
            link.hello(7, {**setup, "mask_sha256": "0" * 64})
        assert link.hello(7, setup) == {"client": client, "synced_round": 0, "examples": fed.server.client_sizes[client]}
        with pytest.raises(MeerkatError, match="without its handshake"):
            link.train(8, b"")
        for r in (1, 2):  # round 2 starts with the history of round 1 (replayed on both sides)
            plan = fed.server.plan_round(r)
            instr = next(i for i in plan if i.client == client)
            got = link.train(7, instr.to_bytes())
            want, _ = fed.clients[client].run_round(instr, fed.runtime)
            assert got == want.to_bytes()
            fed.server.complete_round(r, plan, [ClientReply.from_bytes(got)])  # the others "dropped out"
        assert (oct(os.stat(sock).st_mode & 0o777)) == "0o600"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0 and not sock.exists()


def test_site_serve_refuses_bad_input(tiny_mask: Path, tiny_partition: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    res = run_cli("site", "serve", "--socket", str(tmp_path / "file"), "--partition-id", "0", "--partition-dir",
                  str(tiny_partition), "--mask", str(tiny_mask), check=False)
    assert res.returncode == 2 and "exists and is not a socket" in res.stderr
    res = run_cli("site", "serve", "--socket", str(tmp_path / "s.sock"), "--partition-id", "99", "--partition-dir",
                  str(tiny_partition), "--mask", str(tiny_mask), check=False)
    assert res.returncode == 2 and "no client 99" in res.stderr
    res = run_cli("site", "serve", "--socket", str(tmp_path / "s.sock"), "--partition-id", "0", "--partition-dir",
                  str(tiny_partition), "--mask", str(tmp_path / "nope"), check=False)
    assert res.returncode == 2 and "no such file" in res.stderr
    assert not (tmp_path / "s.sock").exists()
