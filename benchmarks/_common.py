"""Helpers shared by the benchmark scripts (not a benchmark itself).

The scripts are run as files (``python benchmarks/NAME.py``) and imported by path in the tests, so each
one puts this folder on ``sys.path`` and imports ``_common``.
"""

from __future__ import annotations

import csv
import ctypes
import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

# A small local copy of the default task (sentiment2), for --quick variants that build many federations:
# tokenizing the whole built-in train split (12,664 tweets) costs ~3 s per build on 2 cores.
SMALL_TRAIN, SMALL_TEST = 480, 64


def machine(device: str = "cpu") -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "device": device if not str(device).startswith("cuda") else torch.cuda.get_device_name(torch.device(device)),
        "loadavg_start": os.getloadavg(),
        "torch": torch.__version__,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nice": os.nice(0),
    }
    return info


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


def ensure_mask(path: Path, model: str, method: str = "sensitivity", density: float = 1e-3, seed: int = 0,
                quick: bool = True) -> Path:
    """A mask at ``path`` (computed once with ``meerkat_core.api.make_mask``; kept). ``quick`` uses a few
    short calibration blocks."""
    from meerkat_core import api
    from meerkat_core.config import MaskConfig

    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        small = {"samples": 8, "seq_len": 32, "batch_size": 4} if quick else {}
        api.make_mask(MaskConfig(model=model, method=method, density=density, seed=seed, device="cpu", out=str(path),
                                 **small))
    return path


def ensure_partition(path: Path, task: str, clients: int, scheme: str = "iid", seed: int = 0, **extra: Any) -> Path:
    """A partition at ``path`` (made once with ``meerkat_core.api.make_partition``); ``extra``: further
    ``PartitionConfig`` settings (``alpha``, ``extreme_clients``, ...)."""
    from meerkat_core import api
    from meerkat_core.config import PartitionConfig

    path = Path(path)
    if not (path / "manifest.json").exists():
        api.make_partition(PartitionConfig(task=task, clients=clients, scheme=scheme, seed=seed, out=str(path), **extra))
    return path


def ensure_small_task(folder: Path, n_train: int = SMALL_TRAIN, n_test: int = SMALL_TEST,
                      task: str = "sentiment2") -> str:
    """A task JSON file ``TASK-small.json`` with ``n_train`` / ``n_test`` rows of the built-in ``task``'s
    splits (every j-th row, so every label appears)."""
    folder = Path(folder)
    spec = folder / f"{task}-small.json"
    if spec.exists():
        return str(spec)
    from meerkat_core.tasks import get_task, load_task_data

    base = get_task(task)
    data = load_task_data(base)
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "small" if task == "sentiment2" else f"{task}-small"  # sentiment2's files keep their old names
    for name, ds, n in (("train", data.train, n_train), ("test", data.test, n_test)):
        # the built-in train split may be grouped by label; take every j-th row so every label appears
        step = max(1, len(ds) // n)
        rows = [ds[i] for i in range(0, len(ds), step)][:n]
        with open(folder / f"{prefix}-{name}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["text", "label"])
            for r in rows:
                w.writerow([r["text"], int(r["label"])])
    doc = {"name": f"{task}-small", "description": f"first rows of {task} ({n_train} train, {n_test} test)",
           "label_names": list(base.label_names), "label_words": list(base.label_words), "template": base.template,
           "train_files": f"{prefix}-train.csv", "test_files": f"{prefix}-test.csv"}
    tmp = spec.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(spec)
    return str(spec)


def task_label(task: str) -> str:
    """A task argument's short name: a task file's stem (``.json`` / ``.toml``), else the built-in name."""
    return Path(task).stem if task.endswith((".json", ".toml")) else task


def mask_density(mask: str) -> float:
    from meerkat_core.mask import load_mask

    return float(load_mask(mask).meta.density)


def arm_masks(folder: Path, model: str, sensitivity: str, density: float, seed: int,
              quick: bool) -> dict[str, str]:
    """The mask of each accuracy arm: ``meerkat`` the sensitivity mask, ``full-zo`` all weights, ``random``
    (one per seed) and ``magnitude`` at ``density``, made into ``folder`` once."""
    folder = Path(folder)
    return {
        "meerkat": sensitivity,
        "full-zo": "all",
        "random": str(ensure_mask(folder / f"random-d{density:g}-seed{seed}.safetensors", model, "random", density,
                                  seed, quick)),
        "magnitude": str(ensure_mask(folder / f"magnitude-d{density:g}.safetensors", model, "magnitude", density, 0,
                                     quick)),
    }


# full-zo's default z cache: 1 GiB holds z for up to 268M weights (smollm2-135m: d = 134.5M, 513 MiB)
FULL_ZO_CACHE_MB = 1024


# TrainConfig fields that do not change a finished run's result; every other one must match to read it back
READ_BACK_IGNORES = ("out", "resume", "device", "eval_every", "checkpoint_every", "z_cache_mb")


def check_same_settings(run: Path, cfg: Any, who: str) -> None:
    """Refuse to read back a finished run made with other settings (the directory name does not hold them all)."""
    from meerkat_core.rundir import RunDir

    previous = RunDir(run).train_config()
    ignore = READ_BACK_IGNORES + (("dtype",) if cfg.dtype == "auto" else ())  # auto resumes in the run's dtype
    before, now = previous.to_dict(), cfg.to_dict()
    diff = [f"{k}={before[k]!r} (now {now[k]!r})" for k in cfg.changed_settings(previous, ignore)]
    if diff:
        raise SystemExit(f"{who}: {run} was made with other settings: {', '.join(diff)}; "
                         "use another --out for these settings")


def train_or_read_back(cfg: Any, who: str, label: str | None = None) -> tuple[dict[str, Any], str]:
    """(summary, status) of the run ``cfg.out``: read back when it holds ``summary.json`` (made with the
    same settings), resumed when it is partial, else trained; status says which. Progress lines on stderr
    start with ``[label]`` (default: the run directory's name)."""
    from meerkat_core.fed.training import run_training
    from meerkat_core.rundir import RunDir

    run = Path(cfg.out)
    if (run / "summary.json").exists():
        check_same_settings(run, cfg, who)
        return json.loads((run / "summary.json").read_text()), "read back"
    cfg.resume = RunDir(run).exists()
    summary = run_training(cfg, on_event=lambda m: print(f"  [{label or run.name}] {m}", file=sys.stderr))
    return summary, "resumed" if cfg.resume else "trained"


def add_run_flags(p: Any, out: str, threads_help: str) -> None:
    """The flags of the run-based benchmarks: --device, --threads, --out DIR and --json FILE."""
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help=threads_help)
    p.add_argument("--out", default=out)
    p.add_argument("--json", dest="json_out", help="write the results here (default: OUT/results.json)")


def mean_sd(xs: Iterable[float | None]) -> tuple[float, float]:
    vals = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def write_json(path: Path, doc: dict[str, Any]) -> Path:
    from meerkat_core.atomic import write_json_atomic
    from meerkat_core.gradip.report import finite_json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, finite_json(doc))
    print(f"wrote {path}", file=sys.stderr)
    return path


def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def human_bytes(n: float | None) -> str:
    if n is None or (isinstance(n, float) and not math.isfinite(n)):
        return "-"
    for unit, f in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= f:
            return f"{n / f:.2f} {unit}"
    return f"{n:.0f} B"


# -- memory of this process (Linux) ---------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def hwm_bytes() -> int | None:
    """Peak resident set size of this process (VmHWM), or ru_maxrss where /proc is missing."""
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib * 1024


def reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc), so RSS reflects live memory."""
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class AnonPeak:
    """Peak anonymous resident memory (``RssAnon``), sampled by a background thread every ``interval`` s.

    VmHWM counts file-backed pages too (weights loaded by mmap from safetensors stay mapped and resident
    after they were read, though the kernel may drop them under pressure); ``RssAnon`` is the memory a
    process really allocated. Sampling can miss a spike shorter than the interval.
    """

    def __init__(self, interval: float = 0.002) -> None:
        import threading

        self.interval = interval
        self.peak = _status_kib("RssAnon") or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            v = _status_kib("RssAnon") or 0
            if v > self.peak:
                self.peak = v
            self._stop.wait(self.interval)

    def __enter__(self) -> "AnonPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        v = _status_kib("RssAnon") or 0
        self.peak = max(self.peak, v)

    @property
    def peak_bytes(self) -> int:
        return self.peak * 1024


def anon_bytes() -> int | None:
    kib = _status_kib("RssAnon")
    return None if kib is None else kib * 1024


def time_client_syncs(fed: Any, clock: Callable[[], float]) -> list[float]:
    """Wrap every client's ``_sync`` (its catch-up before the local steps) so its ``clock`` time adds
    to ``box[0]`` of the returned one-element list; the caller resets it. Wrapping twice keeps one timer."""
    box = [0.0]
    for client in fed.clients.values():
        orig = client.__dict__.setdefault("_bench_orig_sync", client._sync)

        def timed_sync(instr: Any, known_state: Any = None, *, _orig: Any = orig) -> Any:
            c = clock()
            try:
                return _orig(instr, known_state)
            finally:
                box[0] += clock() - c
        client._sync = timed_sync
    return box


def keeps_torch_threads(fn: Any) -> Any:
    """Restore torch's thread count after ``fn`` (the scripts set it; the tests call them in-process)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*a: Any, **kw: Any) -> Any:
        import torch

        prev = torch.get_num_threads()
        try:
            return fn(*a, **kw)
        finally:
            torch.set_num_threads(prev)

    return wrapper
