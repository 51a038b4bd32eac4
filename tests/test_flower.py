"""The Flower engines (issues #8, #17): records, the Flower App, simulation and deployment on loopback.

Skipped cleanly without flwr (pip install -c constraints.txt -e '.[flower]'). Each run below starts real
Flower processes on 127.0.0.1 (a SuperLink, SuperNodes and `meerkat site serve`, or the simulation
engine on Ray); the long ones are also marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli

flwr = pytest.importorskip("flwr")

pytestmark = pytest.mark.flower

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def train_args(mask: Path, part: Path, out: Path, *extra: str, rounds: int = 2, steps: int = 3) -> list[str]:
    return ["train", "--model", "tiny-llama", "--mask", str(mask), "--partition", str(part), "--task", "sentiment2",
            "--rounds", str(rounds), "--local-steps", str(steps), "--clients-per-round", "3", "--lr", "1e-2",
            "--eps", "1e-3", "--batch-size", "4", "--eval-limit", "16", "--device", "cpu", "--out", str(out), *extra]


def run_config_args(mask: Path, part: Path, out: Path, rounds: int = 2) -> str:
    """The same run as ``train_args`` as `flwr run --run-config` key=value pairs (the app's key names)."""
    return (f'model="tiny-llama" mask="{mask}" partition="{part}" task="sentiment2" out="{out}" rounds={rounds} '
            'local-steps=3 clients-per-round=3 lr=0.01 eps=0.001 batch-size=4 eval.limit=16 device="cpu"')


@pytest.fixture(scope="module")
def part3(workdir: Path) -> Path:
    path = workdir / "part3"
    if not path.exists():
        run_cli("partition", "--task", "sentiment2", "--clients", "3", "--scheme", "dirichlet", "--alpha", "0.5",
                "--seed", "0", "--out", str(path))
    return path


def _ledger(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "ledger.jsonl").read_text().splitlines()]


def assert_same_run(a: Path, b: Path, rounds: int, restarted_round: int | None = None) -> None:
    """Same checkpoint, ledger (incl. bytes_up/bytes_down) and GradIP. ``restarted_round``: the first round
    after ``a`` resumed on fresh Flower clients: they lost the state they had synced to, so the server sends
    them more history than an in-process resume, which restores every client's sync state exactly; there
    ``a``'s bytes_down may only be larger, and everything else is byte for byte the same."""
    name = f"checkpoints/round-{rounds:04d}.safetensors"
    assert (a / name).read_bytes() == (b / name).read_bytes()
    if restarted_round is None:
        assert (a / "ledger.jsonl").read_bytes() == (b / "ledger.jsonl").read_bytes()
    else:
        la, lb = _ledger(a), _ledger(b)
        assert len(la) == len(lb)
        for x, y in zip(la, lb):
            if x.get("round") == restarted_round:
                assert x.pop("bytes_down") >= y.pop("bytes_down"), (x, y)
            assert x == y
    assert (a / "gradip.safetensors").read_bytes() == (b / "gradip.safetensors").read_bytes()
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())


def free_port() -> int:
    from meerkat_core.flower.deployment import free_ports

    return free_ports("127.0.0.1", 1)[0]


class Procs:
    """Processes a test starts, each in its own group, stopped (by their ids) at the end."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs, self.procs = env, logs, {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                                    start_new_session=True)
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop(self) -> None:
        from meerkat_core.flower.deployment import _stop_group

        for proc in reversed(list(self.procs.values())):
            _stop_group(proc)


def flwr_env(home: Path) -> dict[str, str]:
    return {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def wait_for(ready, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert time.time() < deadline, f"{what} not ready within {timeout} s"
        time.sleep(0.2)


def _descendants(root: int) -> set[int]:
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out, grew = {root}, True
    while grew:
        new = {p for p, pp in parents.items() if pp in out and p not in out}
        out |= new
        grew = bool(new)
    return out


def listening_addresses(root: int) -> set[str]:
    """The local addresses of the TCP sockets that ``root`` and its descendants listen on (``ss -ltnp``)."""
    import re

    pids = _descendants(root)
    lines = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines()
    return {ln.split()[3] for ln in lines if {int(p) for p in re.findall(r"pid=(\d+)", ln)} & pids}


def listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# -- fast: no Flower processes ----------------------------------------------------------------------------
def test_records_round_trip_and_sizes() -> None:
    from meerkat_core.fed.protocol import ClientReply, HistoryEntry, RoundInstruction
    from meerkat_core.flower.records import (
        instruction_from_content, instruction_to_content, reply_from_content, reply_to_content,
    )

    instr = RoundInstruction(round=3, client=1, steps=4, seed=7, lr=0.01, eps=1e-3, data_offset=12, sync="replay",
                             synced_round=1, history=[HistoryEntry((1 << 63) - 5, -0.25), HistoryEntry(9, 1e-300)],
                             state_round=2, state_crc=0xFFFFFFFF)
    content = instruction_to_content(instr)
    assert "meerkat.vector" not in content  # replay mode: no weight arrays
    assert instruction_from_content(content).to_bytes() == instr.to_bytes()
    vec = RoundInstruction(round=1, client=0, steps=1, seed=0, lr=1.0, eps=1.0, data_offset=0, sync="vector",
                           synced_round=0, vector=np.arange(5, dtype=np.float32), state_round=0, state_crc=1)
    back = instruction_from_content(instruction_to_content(vec))
    assert back.to_bytes() == vec.to_bytes()
    reply = ClientReply(round=3, client=1, gs=[0.5, float("nan"), -1e-7], losses=[1.1, 2.2, 3.3], state_crc=5)
    got = reply_from_content(reply_to_content(reply))
    assert got.to_bytes() == ClientReply.from_bytes(reply.to_bytes()).to_bytes()  # losses rounded to f4 as on our wire
    assert np.isnan(got.gs[1])


def test_exchange_takes_each_reply_as_it_comes_and_backs_off_between(monkeypatch) -> None:
    """The server's work overlaps the clients': ``while_waiting`` runs right after the push, ``on_reply``
    on each reply as it is pulled; pulls start poll_min apart and double up to poll while none comes."""
    from types import SimpleNamespace

    from meerkat_core.flower import rounds

    def reply(to: str) -> SimpleNamespace:
        return SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=to))

    script = [[], [], [], [], [], [reply("a")], [], [reply("b"), reply("c")]]
    events: list[str] = []

    class Grid:
        def push_messages(self, messages):
            events.append("push")
            return ["a", "b", "c"]

        def pull_messages(self, ids):
            return script.pop(0)

    sleeps: list[float] = []
    monkeypatch.setattr(rounds.time, "sleep", sleeps.append)
    got = rounds.exchange(Grid(), [], timeout=60, poll=0.01, poll_min=0.002,
                          on_reply=lambda m: events.append("reply " + m.metadata.reply_to_message_id),
                          while_waiting=lambda: events.append("waiting"))
    assert [m.metadata.reply_to_message_id for m in got] == ["a", "b", "c"]
    assert events == ["push", "waiting", "reply a", "reply b", "reply c"]
    assert sleeps == [0.002, 0.004, 0.008, 0.01, 0.01, 0.002, 0.004]
    assert script == []


def test_repository_app_is_a_valid_flower_app_without_code() -> None:
    from flwr.cli.build import build_fab_from_disk
    from flwr.cli.config_utils import load_and_validate

    config, warnings = load_and_validate(REPO / "flower_app" / "pyproject.toml")
    assert not warnings
    assert config["tool"]["flwr"]["app"]["components"]["clientapp"] == "meerkat_core.flower.client_app:app"
    assert len(build_fab_from_disk(REPO / "flower_app")) < 10_000  # the FAB is the pyproject: no code, no data


def test_client_app_imports_nothing_heavy() -> None:
    """A SuperNode starts a fresh process per message: the ClientApp module must not pull in torch."""
    code = "import sys, meerkat_core.flower.client_app; print(sorted({'torch', 'transformers', 'datasets'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_engine_choices_exit_2(tiny_mask: Path, part3: Path, tmp_path: Path) -> None:
    res = run_cli(*train_args(tiny_mask, part3, tmp_path / "x", "--engine", "carrier-pigeon"), check=False)
    assert res.returncode == 2 and "--engine carrier-pigeon" in res.stderr
    res = run_cli(*train_args(tiny_mask, part3, tmp_path / "x", "--superlink", "127.0.0.1:1"), check=False)
    assert res.returncode == 2 and "only with --engine flower" in res.stderr
    assert not (tmp_path / "x").exists()


def test_pip_check_is_clean_with_the_extra() -> None:
    """Installing the extra leaves no broken requirement (the assets are installed with --no-deps on purpose)."""
    assets = [ln.split("==")[0].strip().lower() for ln in (REPO / "requirements-assets.txt").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    res = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    broken = [ln for ln in res.stdout.splitlines() if ln.strip() and ln.split()[0].lower() not in assets
              and not ln.startswith("No broken")]
    assert not broken, res.stdout
    from importlib.metadata import version

    assert version("typer") == "0.20.1"  # constraints.txt: the CLI runs on what flwr accepts


# -- the simulation engine ---------------------------------------------------------------------------------
def test_flwr_run_local_simulation_matches_inprocess_bitwise(tiny_mask: Path, part3: Path, tmp_path: Path) -> None:
    """A Flower user's path: `flwr run flower_app local-simulation` with --run-config overrides, then
    `meerkat train --engine flower-sim --resume` one round further; both equal the in-process engine."""
    home, out = tmp_path / "flwr-home", tmp_path / "sim"
    port = free_port()
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local-simulation"\n\n[superlink.local-simulation]\naddress = "127.0.0.1:{port}"\n'
        "insecure = true\n")
    procs = Procs(flwr_env(home), tmp_path / "logs")
    try:
        link = procs.start("superlink", ["flower-superlink", "--simulation", "--insecure", "--host", "127.0.0.1",
                                         "--port", str(port), "--disable-runtime-dependency-installation"])
        wait_for(lambda: listening(port) or link.poll() is not None, "simulation SuperLink")
        t0 = time.perf_counter()
        run = procs.start("flwr-run", [
            "flwr", "run", str(REPO / "flower_app"), "local-simulation", "--stream",
            "--run-config", run_config_args(tiny_mask, part3, out),
            "--federation-config", "num-supernodes=3 init-args-num-cpus=1 client-resources-num-cpus=1"])
        seen: set[str] = set()  # every TCP address the SuperLink's process tree listens on (Ray's included)
        while run.poll() is None and time.perf_counter() - t0 < 900:
            seen |= listening_addresses(link.pid)
            time.sleep(0.5)
        t_sim = time.perf_counter() - t0
    finally:
        procs.stop()
    assert (out / "summary.json").exists(), procs.log("flwr-run")[-3000:]
    loopback = ("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")  # gRPC (Ray) writes IPv4 as IPv4-mapped IPv6
    assert len(seen) > 2 and all(a.startswith(loopback) for a in seen), seen  # the SuperLink's and Ray's
    ref = tmp_path / "inproc"
    run_cli(*train_args(tiny_mask, part3, ref))
    assert_same_run(out, ref, 2)
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2] and rows[2]["dropped"] == []
    # the same run directory, one round further on `meerkat train --engine flower-sim`
    fl = json.loads(run_cli(*train_args(tiny_mask, part3, out, "--resume", "--engine", "flower-sim", "--json",
                                        rounds=3)).stdout)
    run_cli(*train_args(tiny_mask, part3, ref, "--resume", rounds=3))
    assert fl["engine"] == "flower-sim" and fl["rounds"] == 3
    assert_same_run(out, ref, 3, restarted_round=3)
    print(f"\nflwr run (2 rounds, simulation): {t_sim:.0f} s; round seconds {[r.get('seconds') for r in rows[1:]]}")


# -- deployments on loopback --------------------------------------------------------------------------------
def assert_flower_framing(run: Path) -> None:
    """Bytes on the wire: Flower's encoding of the same messages = ours + framing (metadata, record names)."""
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()][1:]
    for row in rows:
        n = len(row["clients"])
        assert 0 < (row["flower_bytes_down"] - row["bytes_down"]) / n < 1000
        assert 0 < (row["flower_bytes_up"] - row["bytes_up"]) / n < 1000


@pytest.mark.slow
def test_killed_supernode_round_completes_and_run_resumes(tiny_mask: Path, part3: Path, tmp_path: Path) -> None:
    from meerkat_core.config.train import EvalSettings, TrainConfig
    from meerkat_core.flower.deployment import FlowerOptions, run_flower_training

    out, work = tmp_path / "killed", tmp_path / "flower-work"
    cfg = TrainConfig(model="tiny-llama", mask=str(tiny_mask), partition=str(part3), task="sentiment2", out=str(out),
                      rounds=3, local_steps=3, clients_per_round=3, lr=1e-2, eps=1e-3, batch_size=4, eval=EvalSettings(limit=16),
                      device="cpu")
    result: dict = {}

    def target() -> None:
        try:
            result["summary"] = run_flower_training(cfg, options=FlowerOptions(work_dir=str(work)))
        except Exception as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    th = threading.Thread(target=target)
    th.start()
    deadline = time.time() + 900
    ledger = out / "ledger.jsonl"
    while time.time() < deadline and th.is_alive():
        if ledger.exists() and ledger.read_text().count('"type":"round"') >= 1:
            break
        time.sleep(0.2)
    pid = json.loads((work / "deployment.json").read_text())["supernodes"]["2"]
    # the three local sites split torch's threads instead of each spin-waiting on every core
    from meerkat_core.flower.deployment import site_threads

    threads = os.environ.get("OMP_NUM_THREADS") or site_threads(3)  # a variable already set wins
    assert f"({threads} torch threads)" in (work / "logs" / "site-0.log").read_text()
    os.kill(pid, signal.SIGKILL)  # client 2's site goes away mid-run
    th.join(timeout=1200)
    assert not th.is_alive()
    assert "error" not in result, result.get("error")
    assert result["summary"]["engine"] == "flower"
    led = _ledger(out)
    # round 1 (all three sites up) is bitwise the in-process engine's
    ref = tmp_path / "inproc"
    run_cli(*train_args(tiny_mask, part3, ref, rounds=3))
    first = [ln for ln in (ref / "ledger.jsonl").read_text().splitlines(keepends=True) if '"round":1,' in ln]
    assert (out / "ledger.jsonl").read_text().startswith("".join(first))
    assert_flower_framing(out)
    rounds = [x for x in led if x["type"] == "round"]
    assert [x["round"] for x in rounds] == [1, 2, 3]
    per_round = {r: sorted(x["client"] for x in led if x["type"] == "client" and x["round"] == r) for r in (1, 2, 3)}
    assert per_round[1] == [0, 1, 2] and per_round[3] == [0, 1]  # the round completes with the others
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["dropped"] == [2]
    # consistent and resumable: a new deployment re-applies the ledger and client 2 catches up on the history
    summary = json.loads(run_cli(*train_args(tiny_mask, part3, out, "--resume", "--engine", "flower", "--json",
                                             rounds=4)).stdout)
    assert summary["rounds"] == 4 and summary["engine"] == "flower"
    led = _ledger(out)
    assert [x["round"] for x in led if x["type"] == "round"] == [1, 2, 3, 4]
    assert sorted(x["client"] for x in led if x["type"] == "client" and x["round"] == 4) == [0, 1, 2]
    assert (out / "checkpoints" / "round-0004.safetensors").exists()


def _tls_material(d: Path) -> None:
    """docs/DEPLOY_FLOWER.md, "TLS": a CA and a SuperLink certificate for 127.0.0.1 (openssl)."""
    d.mkdir()

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", "ca.key", "-out", "ca.crt",
        "-subj", "/CN=meerkat test CA")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n")
    ssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
        "-out", "server.pem", "-extfile", "san.ext")


@pytest.mark.slow
def test_tls_and_node_auth_deployment_end_to_end(tiny_mask: Path, part3: Path, tmp_path: Path) -> None:
    """docs/DEPLOY_FLOWER.md on loopback: a TLS SuperLink with SuperNode authentication, the connection in
    $FLWR_HOME/config.toml, registered sites (an unregistered one is refused), each SuperNode on its own
    --port beside its `meerkat site serve`, and `meerkat train --superlink`; bitwise the in-process run."""
    certs, keys, home, out = tmp_path / "certs", tmp_path / "keys", tmp_path / "flwr-home", tmp_path / "tls"
    _tls_material(certs)
    keys.mkdir()
    for name in ("site-0", "site-1", "site-2", "intruder"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-f", str(keys / name)], check=True)
    port = free_port()
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "my-superlink"\n\n[superlink.my-superlink]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{certs / "ca.crt"}"\n')
    procs = Procs(flwr_env(home), tmp_path / "logs")
    try:
        for c in range(3):  # the sites' processes load their model while the SuperLink starts
            procs.start(f"site-{c}", ["meerkat", "site", "serve", "--socket", str(tmp_path / f"s{c}.sock"),
                                      "--partition-id", str(c), "--partition-dir", str(part3), "--mask", str(tiny_mask),
                                      "--device", "cpu"])
        link = procs.start("superlink", [
            "flower-superlink", "--ssl-ca-certfile", str(certs / "ca.crt"), "--ssl-certfile", str(certs / "server.pem"),
            "--ssl-keyfile", str(certs / "server.key"), "--host", "127.0.0.1", "--port", str(port),
            "--enable-supernode-auth", "--disable-runtime-dependency-installation"])
        wait_for(lambda: listening(port) or link.poll() is not None, "TLS SuperLink")
        for c in range(3):
            res = subprocess.run(["flwr", "supernode", "register", str(keys / f"site-{c}.pub"), "my-superlink"],
                                 env=procs.env, capture_output=True, text=True, timeout=120)
            assert res.returncode == 0, res.stdout + res.stderr
        intruder = procs.start("intruder", [
            "flower-supernode", "--superlink", f"127.0.0.1:{port}", "--root-certificates", str(certs / "ca.crt"),
            "--auth-supernode-private-key", str(keys / "intruder"), "--host", "127.0.0.1", "--port", str(free_port()),
            "--max-retries", "1", "--node-config", f'site-socket="{tmp_path / "s0.sock"}"'])
        for c in range(3):
            wait_for(lambda c=c: (tmp_path / f"s{c}.sock").exists(), f"site server {c}")
            procs.start(f"supernode-{c}", [
                "flower-supernode", "--superlink", f"127.0.0.1:{port}", "--root-certificates", str(certs / "ca.crt"),
                "--auth-supernode-private-key", str(keys / f"site-{c}"), "--host", "127.0.0.1", "--port",
                str(free_port()), "--node-config", f'site-socket="{tmp_path / f"s{c}.sock"}"'])
        summary = json.loads(run_cli(*train_args(tiny_mask, part3, out, "--engine", "flower", "--superlink",
                                                 f"127.0.0.1:{port}", "--superlink-ca", str(certs / "ca.crt"),
                                                 "--json")).stdout)
        wait_for(lambda: intruder.poll() is not None, "the unregistered SuperNode to give up", timeout=120)
    finally:
        procs.stop()
    assert summary["engine"] == "flower"
    ref = tmp_path / "inproc"
    run_cli(*train_args(tiny_mask, part3, ref))
    assert_same_run(out, ref, 2)
    assert intruder.returncode != 0
    assert "Failed to activate SuperNode" in procs.log("intruder")
    assert "No SuperNode found with the given public key" in procs.log("superlink")
    assert_flower_framing(out)
