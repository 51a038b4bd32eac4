"""``meerkat train --engine flower`` / ``flower-sim``: the Flower processes, started and stopped by the command.

Three ways to run the same Flower App (``app_config.render_app_pyproject``) with ``flwr run``:

- ``deployment`` (``--engine flower``): a SuperLink and, per client with data, a ``meerkat site serve``
  process (holding the model and shard between rounds) and a SuperNode whose node config names that
  site's socket; every address is 127.0.0.1 on a free port.
- ``simulation`` (``--engine flower-sim``): a SuperLink in simulation mode; Flower's simulation engine runs
  one virtual SuperNode per client of the partition on Ray workers (pinned to loopback), which keep their
  clients between rounds (``client_app``).
- ``superlink`` (``--engine flower --superlink ADDR``): nothing is started; the app is submitted to the
  SuperLink at ADDR, whose SuperNodes are the sites (docs/DEPLOY_FLOWER.md).

The whole configuration travels as the run config (``flwr run --run-config FILE``), plus ``flower.result``:
where the ServerApp writes the summary. Flower's working files (its ``FLWR_HOME``, the app, the run
config, one log per process) live in a work directory: a temporary one, removed after a successful run and
kept (and named in the error) after a failed one. Telemetry is off unless the caller sets
``FLWR_TELEMETRY_ENABLED`` itself; Flower's update check is off.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from meerkat_core.atomic import write_json_atomic, write_text_atomic
from meerkat_core.errors import MeerkatError, MeerkatInputError
from meerkat_core.config.train import TrainConfig
from meerkat_core.rundir import METRICS, RunDir, check_run_dir
from meerkat_core.flower import INSTALL_LINE
from meerkat_core.flower.app_config import FlowerSettings, run_config_for, write_app_dir
from meerkat_core.flower.result import read_result
from meerkat_core.flower.run_config import toml_lines
from meerkat_core.flower.site import SITE_SOCKET, SiteConfig, toml_str

CONNECTION = "meerkat-local"
MODES = ("deployment", "simulation", "superlink")


@dataclass
class FlowerOptions:
    mode: str = "deployment"  # one of MODES
    superlink: str | None = None  # mode "superlink": the SuperLink's address (host:port)
    root_certificates: str | None = None  # mode "superlink": the CA of its TLS certificate (None: insecure)
    work_dir: str | None = None  # default: a temporary directory
    keep_work_dir: bool = False
    host: str = "127.0.0.1"
    startup_timeout: float = 180.0  # for the SuperLink and the site servers to listen
    finish_grace: float = 30.0  # after the run's log stream ends, for the result file
    sim_workers: int = 1  # simulation: Ray workers (each holds one copy of the base model)
    poll_interval: float = 0.2  # SuperExec task polling (FLWR_SUPEREXEC_TASK_POLL_INTERVAL; Flower: 1 s)
    settings: FlowerSettings = FlowerSettings()


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
        raise MeerkatInputError(f"--engine flower: `{name}` not found; install the flower extra: {INSTALL_LINE}")
    return found


def _wait(ready: Callable[[], bool], proc: subprocess.Popen, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MeerkatError(f"{what} exited with code {proc.returncode} (log: {log})")
        if ready():
            return
        time.sleep(0.2)
    raise MeerkatError(f"{what} did not start within {timeout:.0f} s (log: {log})")


def _tcp_ready(host: str, port: int) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            return False

    return ready


def _unix_ready(path: Path) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(path))
                return True
        except OSError:
            return False

    return ready


def local_sites(cfg: TrainConfig) -> list[SiteConfig]:
    """One site per client with data; paths made absolute (the site servers run elsewhere in the tree)."""
    from meerkat_core.partition import load_partition

    manifest = load_partition(cfg.partition)
    mask = "all" if cfg.mask == "all" else str(Path(cfg.mask).resolve())
    if mask != "all" and not Path(mask).is_file():
        raise MeerkatInputError(f"--mask {cfg.mask}: no such file; make one with `meerkat mask` or pass --mask all")
    model = str(Path(cfg.model).resolve()) if Path(cfg.model).exists() else None
    part = str(Path(cfg.partition).resolve())
    return [SiteConfig(partition_id=c, partition_dir=part, mask=mask, model=model, device=cfg.device)
            for c in range(manifest.num_clients) if manifest.client_indices(c)]


class LocalFlower:
    """The processes of one ``run_flower_training`` (each in its own process group), stopped on exit."""

    def __init__(self, work: Path, cfg: TrainConfig, options: FlowerOptions) -> None:
        self.work = work
        self.cfg = cfg
        self.options = options
        self.logs = work / "logs"
        self.home = work / "flwr-home"
        self.procs: dict[str, subprocess.Popen] = {}
        env = dict(os.environ)
        env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
        env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
        env["FLWR_HOME"] = str(self.home)
        env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(options.poll_interval)
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray: single node, loopback addresses only
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        self.env = env
        self.address = options.superlink or ""
        self.pids: dict[str, Any] = {}

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        try:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.env if env is None else env, cwd=os.getcwd(), start_new_session=True)
        finally:
            log.close()
        self.procs[name] = proc
        return proc

    def _write_connection(self) -> None:
        lines = [f'[superlink]\ndefault = "{CONNECTION}"\n', f"[superlink.{CONNECTION}]", f"address = {toml_str(self.address)}"]
        if self.options.root_certificates:
            lines.append(f"root-certificates = {toml_str(str(Path(self.options.root_certificates).resolve()))}")
        else:
            lines.append("insecure = true")
        write_text_atomic(self.home / "config.toml", "\n".join(lines) + "\n")

    def _superlink(self, port: int, simulation: bool) -> None:
        host = self.options.host
        argv = [_executable("flower-superlink"), "--insecure", "--host", host, "--port", str(port),
                "--disable-runtime-dependency-installation"]
        link = self._spawn("superlink", argv + (["--simulation"] if simulation else []))
        self.address = f"{host}:{port}"
        self.pids["superlink"] = {"pid": link.pid, "port": port}
        _wait(_tcp_ready(host, port), link, self.options.startup_timeout, "flower-superlink",
              self.logs / "superlink.log")

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        mode = self.options.mode
        if mode == "simulation":
            self._superlink(free_ports(self.options.host, 1)[0], simulation=True)
        elif mode == "deployment":
            self._start_deployment()
        self._write_connection()
        write_json_atomic(self.work / "deployment.json", self.pids)

    def _start_deployment(self) -> None:
        host = self.options.host
        sites = local_sites(self.cfg)
        ports = free_ports(host, 1 + len(sites))
        sockets = Path(tempfile.mkdtemp(prefix="meerkat-sites-"))  # short: Unix socket paths are limited
        self.sockets = sockets
        meerkat = _executable("meerkat")
        site_env = dict(self.env)
        site_env.setdefault("OMP_NUM_THREADS", str(site_threads(len(sites))))
        servers = {}
        for site in sites:
            sock = sockets / f"site-{site.partition_id}.sock"
            argv = [meerkat, "site", "serve", "--socket", str(sock), "--partition-id", str(site.partition_id),
                    "--partition-dir", site.partition_dir, "--mask", site.mask, "--device", site.device]
            if site.model:
                argv += ["--model", site.model]
            servers[site.partition_id] = (sock, self._spawn(f"site-{site.partition_id}", argv, site_env))
        self._superlink(ports[0], simulation=False)
        for c, (sock, proc) in servers.items():
            _wait(_unix_ready(sock), proc, self.options.startup_timeout, f"meerkat site serve (client {c})",
                  self.logs / f"site-{c}.log")
        for site, port in zip(sites, ports[1:]):
            sock = servers[site.partition_id][0]
            self._spawn(f"supernode-{site.partition_id}", [
                _executable("flower-supernode"), "--insecure", "--superlink", self.address,
                "--host", host, "--port", str(port), "--node-config", f"{SITE_SOCKET}={toml_str(str(sock))}"])
        self.pids["supernodes"] = {str(s.partition_id): self.procs[f"supernode-{s.partition_id}"].pid for s in sites}
        self.pids["sites"] = {str(c): p.pid for c, (_, p) in servers.items()}

    def submit(self, app: Path, run_config: dict[str, Any], num_supernodes: int) -> subprocess.Popen:
        """``flwr run APP meerkat-local --run-config FILE --stream``: returns when the run's log stream ends."""
        override = self.work / "run-config.toml"
        write_text_atomic(override, "\n".join(toml_lines(run_config)) + "\n")
        argv = [_executable("flwr"), "run", str(app), CONNECTION, "--run-config", str(override), "--stream"]
        if self.options.mode == "simulation":
            argv += ["--federation-config", simulation_config(num_supernodes, self.options.sim_workers, self.cfg.device)]
        return self._spawn("flwr-run", argv)

    def check_alive(self) -> None:
        link = self.procs.get("superlink")
        if link is not None and link.poll() is not None:
            raise MeerkatError(f"flower-superlink exited with code {link.returncode} (log: {self.logs / 'superlink.log'})")

    def stop(self) -> None:
        names = list(self.procs)
        order = [n for n in names if n.startswith("supernode-")] + [n for n in names if n == "flwr-run"]
        order += [n for n in names if n == "superlink"] + [n for n in names if n.startswith("site-")]
        for name in order:
            _stop_group(self.procs[name])
        self.procs.clear()
        if getattr(self, "sockets", None):
            shutil.rmtree(self.sockets, ignore_errors=True)


def site_threads(sites: int, threads: int | None = None) -> int:
    """Torch threads for each local site server: ``threads`` (torch's count here) shared by the sites.

    The local sites step at the same moment each round; each with every core spin-waits against the
    others (on 2 cores three SmolLM2 sites at 2 threads each: 16.6 s a round, at 1 thread each 9.1 s,
    same bits; benchmarks/RESULTS.md section 7.5). An ``OMP_NUM_THREADS`` already set wins.
    """
    import torch

    if threads is None:
        threads = torch.get_num_threads()
    return max(1, threads // max(1, sites))


def simulation_config(num_supernodes: int, workers: int, device: str, threads: int | None = None) -> str:
    """``flwr run --federation-config``: N virtual SuperNodes on ``workers`` Ray workers.

    The workers share ``threads - 1`` CPUs, at least one each (``threads``: torch's intra-op thread count
    here, what the in-process engine would use). The CPU left over is the simulation process's: the
    ServerApp replays each reply as it arrives and Flower sweeps its message queue while the workers
    step, and a worker whose torch threads fill every core stalls whenever those wake (issue #17,
    benchmarks/RESULTS.md section 7.5: on 2 cores one worker thread gave a 0.34-0.46 s round, two
    0.40-0.54 s). Ray sets a worker's ``OMP_NUM_THREADS`` to the CPUs it was given unless the variable
    is already set.
    """
    import torch

    if threads is None:
        threads = torch.get_num_threads()
    per_worker = max(1, (threads - 1) // max(1, workers))
    parts = [f"num-supernodes={num_supernodes}", f"init-args-num-cpus={per_worker * workers}",
             f"client-resources-num-cpus={per_worker}", "init-args-log-to-driver=true"]
    if device != "cpu":
        if torch.cuda.is_available():
            parts += [f"init-args-num-gpus={torch.cuda.device_count()}",
                      f"client-resources-num-gpus={min(1.0, torch.cuda.device_count() / workers)}"]
    return " ".join(parts)


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
    """Run (or resume) ``cfg`` on Flower (``options.mode``); returns the summary (as summary.json, plus the
    engine's wire totals ``flower_bytes_up`` / ``flower_bytes_down`` of this invocation)."""
    from dataclasses import replace

    from meerkat_core.fed.training import check_config
    from meerkat_core.flower import require_flwr
    from meerkat_core.partition import load_partition

    require_flwr()
    options = options or FlowerOptions()
    if options.mode not in MODES:
        raise MeerkatInputError(f"Flower mode {options.mode}: expected one of {', '.join(MODES)}")
    if options.mode == "superlink" and not options.superlink:
        raise MeerkatInputError("--superlink: give the SuperLink's address (host:port)")
    check_config(cfg)
    check_run_dir(cfg)  # bad --out / --resume fail here, before anything starts; --dtype auto becomes concrete
    num_supernodes = load_partition(cfg.partition).num_clients
    say = on_event or (lambda msg: None)
    work = Path(options.work_dir) if options.work_dir else Path(tempfile.mkdtemp(prefix="meerkat-flower-"))
    work.mkdir(parents=True, exist_ok=True)
    result_path = (work / "result.json").resolve()
    result_path.unlink(missing_ok=True)
    settings = replace(options.settings, result=str(result_path))
    app = write_app_dir(work / "app")
    flower = LocalFlower(work, cfg, options)
    run = RunDir(Path(cfg.out))
    seen = max((int(m.get("round", 0)) for m in run.read_metrics()), default=-1) if cfg.resume else -1
    rows: list[dict[str, Any]] = []
    ok = False
    try:
        say({"deployment": f"starting a Flower SuperLink, site servers and SuperNodes on {options.host}",
             "simulation": f"starting a Flower SuperLink in simulation mode on {options.host}",
             "superlink": f"submitting to the SuperLink at {options.superlink}"}[options.mode] + f" (work dir {work})")
        flower.start()
        stream = flower.submit(app, run_config_for(cfg, settings), num_supernodes)
        ended_at: float | None = None
        while not result_path.exists():
            flower.check_alive()
            for row in _new_rows(run, seen):
                seen = int(row["round"])
                rows.append(row)
                if on_round:
                    on_round(row)
            if stream.poll() is not None:
                ended_at = ended_at or time.monotonic()
                if time.monotonic() - ended_at > options.finish_grace:
                    break
            time.sleep(0.2)
        if not result_path.exists() and options.mode == "superlink":
            raise MeerkatError(
                f"the run ended without a result at {result_path}: --superlink expects the SuperLink (and its "
                "ServerApp) on this machine; for a remote one submit with `flwr run flower_app ...` (docs/DEPLOY_FLOWER.md)")
        summary = read_result(result_path)
        for row in _new_rows(run, seen):
            rows.append(row)
            if on_round:
                on_round(row)
        ok = True
    except MeerkatError as exc:
        raise type(exc)(f"{' '.join(str(exc).split())} (Flower logs: {flower.logs})") from None
    finally:
        flower.stop()
        if ok and not options.work_dir and not options.keep_work_dir:
            shutil.rmtree(work, ignore_errors=True)
    summary = dict(summary)
    summary["engine"] = "flower-sim" if options.mode == "simulation" else "flower"
    summary["flower_bytes_up"] = sum(int(r.get("flower_bytes_up", 0)) for r in rows)
    summary["flower_bytes_down"] = sum(int(r.get("flower_bytes_down", 0)) for r in rows)
    return summary
