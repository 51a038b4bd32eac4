"""``meerkat train --engine flower``: a local Flower deployment, started and stopped by the command.

One SuperLink and one SuperNode per client (each with its ``partition-id``) on loopback, on free ports;
the app (``meerkat_core.flower.server_app`` / ``client_app``) is submitted with ``flwr run`` and writes
the run directory exactly as the in-process engine does. Everything Flower needs (FLWR_HOME, the app's
``pyproject.toml``, the job file, logs) lives in a work directory: a temporary one, removed after a
successful run and kept (and named in the error) after a failed one. Telemetry is off unless the caller
sets ``FLWR_TELEMETRY_ENABLED`` itself; Flower's update check is off.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from meerkat_core.atomic import write_json_atomic, write_text_atomic
from meerkat_core.errors import MeerkatError, MeerkatInputError
from meerkat_core.config.train import TrainConfig
from meerkat_core.fed.training import check_config
from meerkat_core.flower import require_flwr
from meerkat_core.flower.job import RUN_CONFIG_KEY, FlowerJob, read_result
from meerkat_core.flower.rounds import RoundTimeouts
from meerkat_core.flower.site import SiteConfig, toml_str
from meerkat_core.partition import load_partition
from meerkat_core.rundir import METRICS, RunDir, check_run_dir

CONNECTION = "meerkat-local"
APP_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "meerkat-flower"
version = "1.0.0"
description = "meerkat: federated sparse zeroth-order fine-tuning on Flower"
license = "Apache-2.0"
dependencies = ["meerkat[flower]"]

[tool.flwr.app]
publisher = "meerkat"

[tool.flwr.app.components]
serverapp = "meerkat_core.flower.server_app:app"
clientapp = "meerkat_core.flower.client_app:app"

[tool.flwr.app.config]
{key} = ""
""".format(key=RUN_CONFIG_KEY)


@dataclass
class FlowerOptions:
    work_dir: str | None = None  # default: a temporary directory
    keep_work_dir: bool = False
    host: str = "127.0.0.1"
    startup_timeout: float = 180.0  # for the SuperLink to listen
    finish_grace: float = 30.0  # after the run's log stream ends, for the result file
    timeouts: RoundTimeouts = field(default_factory=RoundTimeouts)


def write_app_dir(path: Path) -> Path:
    """The Flower App directory (only a pyproject.toml: the code is the installed meerkat package)."""
    path.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path / "pyproject.toml", APP_PYPROJECT)
    return path


def free_ports(host: str, n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _executable(name: str) -> str:
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise MeerkatInputError(f"--engine flower: `{name}` not found; pip install 'meerkat[flower]'")
    return found


def _wait_listening(host: str, port: int, proc: subprocess.Popen, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MeerkatError(f"{what} exited with code {proc.returncode} (log: {log})")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise MeerkatError(f"{what} did not listen on {host}:{port} within {timeout:.0f} s (log: {log})")


def local_sites(cfg: TrainConfig) -> list[SiteConfig]:
    """One site per client with data; paths made absolute (the SuperNodes run elsewhere in the tree)."""
    manifest = load_partition(cfg.partition)
    mask = "all" if cfg.mask == "all" else str(Path(cfg.mask).resolve())
    if mask != "all" and not Path(mask).is_file():
        raise MeerkatInputError(f"--mask {cfg.mask}: no such file; make one with `meerkat mask` or pass --mask all")
    model = str(Path(cfg.model).resolve()) if Path(cfg.model).exists() else None
    part = str(Path(cfg.partition).resolve())
    return [SiteConfig(partition_id=c, partition_dir=part, mask=mask, model=model, device=cfg.device)
            for c in range(manifest.num_clients) if manifest.client_indices(c)]


class LocalDeployment:
    """SuperLink + SuperNodes as child processes (each in its own process group), stopped on exit."""

    def __init__(self, work: Path, sites: list[SiteConfig], options: FlowerOptions) -> None:
        self.work = work
        self.sites = sites
        self.options = options
        self.logs = work / "logs"
        self.home = work / "flwr-home"
        self.procs: dict[str, subprocess.Popen] = {}
        env = dict(os.environ)
        env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
        env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
        env["FLWR_HOME"] = str(self.home)
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        self.env = env
        self.port = 0

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        try:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.env, cwd=os.getcwd(), start_new_session=True)
        finally:
            log.close()
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        host = self.options.host
        self.logs.mkdir(parents=True, exist_ok=True)
        ports = free_ports(host, 1 + len(self.sites))
        self.port = ports[0]
        write_text_atomic(self.home / "config.toml",
                          f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
                          f'address = "{host}:{self.port}"\ninsecure = true\n')
        link = self._spawn("superlink", [
            _executable("flower-superlink"), "--insecure", "--host", host, "--port", str(self.port),
            "--disable-runtime-dependency-installation"])
        _wait_listening(host, self.port, link, self.options.startup_timeout, "flower-superlink",
                        self.logs / "superlink.log")
        for site, port in zip(self.sites, ports[1:]):
            self._spawn(f"supernode-{site.partition_id}", [
                _executable("flower-supernode"), "--insecure", "--superlink", f"{host}:{self.port}",
                "--host", host, "--port", str(port), "--node-config", site.node_config_string()])
        write_json_atomic(self.work / "deployment.json", {
            "superlink": {"pid": link.pid, "port": self.port},
            "supernodes": {str(s.partition_id): self.procs[f"supernode-{s.partition_id}"].pid for s in self.sites},
        })

    def submit(self, app: Path, job_path: Path) -> subprocess.Popen:
        """``flwr run APP meerkat-local --stream``: returns when the run's log stream ends."""
        override = self.work / "run-config.toml"
        write_text_atomic(override, f"{RUN_CONFIG_KEY} = {toml_str(str(job_path))}\n")
        return self._spawn("flwr-run", [_executable("flwr"), "run", str(app), CONNECTION,
                                        "--run-config", str(override), "--stream"])

    def check_alive(self) -> None:
        link = self.procs.get("superlink")
        if link is not None and link.poll() is not None:
            raise MeerkatError(f"flower-superlink exited with code {link.returncode} (log: {self.logs / 'superlink.log'})")

    def stop(self) -> None:
        order = [n for n in self.procs if n.startswith("supernode-")] + [n for n in self.procs if n == "flwr-run"]
        order += [n for n in self.procs if n == "superlink"]
        for name in order:
            _stop_group(self.procs[name])
        self.procs.clear()


def _stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group we started (the process and the Flower processes it spawned), then SIGKILL.

    Each process was started with ``start_new_session=True``, so it leads a group whose id is its pid.
    """
    pgid = proc.pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            proc.poll()  # reap our child, so a zombie leader does not look alive
            if not _group_alive(pgid):
                break
            time.sleep(0.2)
        if not _group_alive(pgid):
            break
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _new_rows(run: RunDir, seen: int) -> Iterator[dict[str, Any]]:
    if not run.file(METRICS).exists():
        return iter(())
    return (row for row in run.read_metrics() if int(row.get("round", -1)) > seen)


def run_flower_training(
    cfg: TrainConfig,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    on_event: Callable[[str], None] | None = None,
    options: FlowerOptions | None = None,
) -> dict[str, Any]:
    """Run (or resume) ``cfg`` on a local Flower deployment; returns the summary (as summary.json, plus
    the engine's wire totals ``flower_bytes_up`` / ``flower_bytes_down`` of this invocation)."""
    require_flwr()
    options = options or FlowerOptions()
    check_config(cfg)
    check_run_dir(cfg)  # bad --out / --resume fail here, before anything starts
    sites = local_sites(cfg)
    say = on_event or (lambda msg: None)
    work = Path(options.work_dir) if options.work_dir else Path(tempfile.mkdtemp(prefix="meerkat-flower-"))
    work.mkdir(parents=True, exist_ok=True)
    job_path = work / "job.json"
    result_path = work / "result.json"
    result_path.unlink(missing_ok=True)
    FlowerJob(train=cfg.to_dict(), result=str(result_path.resolve()), timeouts=options.timeouts).write(job_path)
    app = write_app_dir(work / "app")
    deployment = LocalDeployment(work, sites, options)
    run = RunDir(Path(cfg.out))
    seen = max((int(m.get("round", 0)) for m in run.read_metrics()), default=-1) if cfg.resume else -1
    rows: list[dict[str, Any]] = []
    ok = False
    try:
        say(f"starting a Flower SuperLink and {len(sites)} SuperNodes on {options.host} (work dir {work})")
        deployment.start()
        stream = deployment.submit(app, job_path.resolve())
        ended_at: float | None = None
        while not result_path.exists():
            deployment.check_alive()
            for row in _new_rows(run, seen):
                seen = int(row["round"])
                rows.append(row)
                if on_round:
                    on_round(row)
            if stream.poll() is not None:
                ended_at = ended_at or time.monotonic()
                if time.monotonic() - ended_at > options.finish_grace:
                    break
            time.sleep(0.5)
        summary = read_result(result_path)
        for row in _new_rows(run, seen):
            rows.append(row)
            if on_round:
                on_round(row)
        ok = True
    except MeerkatError as exc:
        raise type(exc)(f"{' '.join(str(exc).split())} (Flower logs: {deployment.logs})") from None
    finally:
        deployment.stop()
        if ok and not options.work_dir and not options.keep_work_dir:
            shutil.rmtree(work, ignore_errors=True)
    summary = dict(summary)
    summary["engine"] = "flower"
    summary["flower_bytes_up"] = sum(int(r.get("flower_bytes_up", 0)) for r in rows)
    summary["flower_bytes_down"] = sum(int(r.get("flower_bytes_down", 0)) for r in rows)
    return summary
