"""Faults and bad inputs (issue #19): kill -9 at commit points, torn and edited files, read-only and full
disks, absurd values. Every case ends as promised: exit 2 with one line naming the input (no traceback,
nothing half-written, nothing deleted that the command did not make), or a correct result.

Kills use the ``MEERKAT_KILL_AT`` hook (meerkat_core/faults.py): a real ``meerkat`` subprocess sends
itself SIGKILL at the named commit point. Read-only and full disks are tmpfs mounts (root only; the
read-only case falls back to chmod for other users); the tests that need them skip where mounting is
not allowed. The whole kill matrix runs under ``-m slow``; the default suite kills at three points.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import run_cli

ROUNDS = 3


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def train_args(mask: Path | str, part: Path | str, out: Path | str, *extra: str, rounds: int = ROUNDS) -> list[str]:
    return ["train", "--model", "tiny-llama", "--mask", str(mask), "--partition", str(part), "--task", "sentiment2",
            "--rounds", str(rounds), "--local-steps", "3", "--clients-per-round", "3", "--lr", "1e-2", "--eps", "1e-3",
            "--batch-size", "4", "--eval-limit", "8", "--eval-every", "2", "--checkpoint-every", "2", "--device", "cpu",
            "--out", str(out), *extra]


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, stderr exactly one ``error:`` line (no progress lines, no usage box, no traceback)."""
    err = proc.stderr.rstrip()  # a blank line before the error counts as a line
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    for n in needles:
        assert n in err, (n, err)
    return err


def last_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """An error met after the work began: progress lines may come first, then exactly one ``error:``
    line, the last; no traceback."""
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and lines and lines[-1].startswith("error:"), proc.stderr[-2000:]
    assert sum(ln.startswith("error:") for ln in lines) == 1, proc.stderr[-2000:]
    for n in needles:
        assert n in lines[-1], (n, lines[-1])
    return lines[-1]


def meerkat(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "meerkat_cli.app", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
                                        **(env or {})}, timeout=900)


def killed_at(point: str, *args: str, cwd: Path | None = None) -> None:
    proc = meerkat(*args, cwd=cwd, env={"MEERKAT_KILL_AT": point})
    assert proc.returncode == -signal.SIGKILL, f"not killed at {point} ({proc.returncode}): {proc.stderr[-2000:]}"


def hidden(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith(".") and p.name != ".lock") if d.is_dir() else []


def tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name != ".lock"}


def assert_same_run(got: Path, want: Path) -> None:
    """Every file of two run directories equal; in metrics and summary, the wall-clock fields (seconds,
    eval_seconds, seconds_this_invocation) aside."""
    a, b = tree(got), tree(want)
    assert sorted(a) == sorted(b)
    for name in a:
        if name == "metrics.jsonl":
            rows = [[{k: v for k, v in json.loads(x).items() if not k.endswith("seconds")} for x in t.decode().splitlines()]
                    for t in (a[name], b[name])]
            assert rows[0] == rows[1], name
        elif name == "summary.json":
            docs = [{k: v for k, v in json.loads(t).items() if k != "seconds_this_invocation"} for t in (a[name], b[name])]
            assert docs[0] == docs[1], name
        else:
            assert a[name] == b[name], name


def _can_mount() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount") is not None


@contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    if not _can_mount():
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A read-only directory: a read-only tmpfs as root (root ignores permissions), chmod 555 otherwise."""
    d = tmp_path / "ro"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        d.mkdir()
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    with tmpfs(d, "ro,size=64k") as m:
        yield m


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 KiB tmpfs: the first write of a few KiB fits, the next ones find the disk full."""
    with tmpfs(tmp_path / "full", "size=16k") as m:
        yield m


@pytest.fixture(scope="module")
def finished(tiny_mask: Path, tiny_partition: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 3-round run, made in-process in ``<tmp>/ref/run`` (cwd-relative --out)."""
    base = tmp_path_factory.mktemp("ref")
    cwd = os.getcwd()
    os.chdir(base)
    try:
        run_cli(*train_args(tiny_mask, tiny_partition, "run"))
    finally:
        os.chdir(cwd)
    return base / "run"


def copy_run(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def resume(mask: Path | str, part: Path | str, out: Path | str, *extra: str, rounds: int = ROUNDS) -> subprocess.CompletedProcess:
    return run_cli(*train_args(mask, part, out, "--resume", *extra, rounds=rounds), check=False)


# --------------------------------------------------------------------------------------------------
# 1. export never deletes what it did not make
# --------------------------------------------------------------------------------------------------
def test_export_refuses_a_directory_holding_other_files(finished: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mydir"
    mine.mkdir()
    (mine / "thesis.txt").write_text("x")
    for extra in ([], ["--overwrite"]):
        proc = run_cli("export", str(finished), "--out", str(mine), *extra, check=False)
        one_line_error(proc, str(mine))
        assert (mine / "thesis.txt").read_text() == "x" and sorted(os.listdir(mine)) == ["thesis.txt"]
    assert hidden(tmp_path) == []


def test_export_never_touches_the_run_or_a_parent(finished: Path, tmp_path: Path) -> None:
    run = copy_run(finished, tmp_path / "box" / "run")
    before = tree(tmp_path / "box")
    for target in (run, run / "checkpoints", tmp_path / "box"):
        for extra in ([], ["--overwrite"]):
            one_line_error(run_cli("export", str(run), "--out", str(target), *extra, check=False), str(target))
    assert tree(tmp_path / "box") == before and hidden(tmp_path) == []
    a_file = tmp_path / "model.bin"
    a_file.write_text("keep")
    one_line_error(run_cli("export", str(run), "--out", str(a_file), "--overwrite", check=False), "not a directory")
    assert a_file.read_text() == "keep" and hidden(tmp_path) == []


def test_export_overwrite_replaces_an_earlier_export_only(finished: Path, tmp_path: Path) -> None:
    dest = tmp_path / "merged"
    run_cli("export", str(finished), "--out", str(dest))
    first = tree(dest)
    one_line_error(run_cli("export", str(finished), "--out", str(dest), check=False), "--overwrite")
    run_cli("export", str(finished), "--out", str(dest), "--overwrite")
    assert tree(dest) == first and hidden(tmp_path) == []  # same export again, nothing left beside it
    empty = tmp_path / "empty"
    empty.mkdir()
    run_cli("export", str(finished), "--out", str(empty))
    assert (empty / "meerkat_export.json").is_file()


# --------------------------------------------------------------------------------------------------
# 2. replacing a partition is crash-safe
# --------------------------------------------------------------------------------------------------
def test_partition_replacement_survives_a_kill(tmp_path: Path) -> None:
    part = tmp_path / "part"
    args = ["partition", "--task", "sentiment2", "--clients", "3", "--out", str(part)]
    run_cli(*args, "--seed", "1")
    old = tree(part)
    killed_at("rename:part", *args, "--seed", "2")  # the new directory is complete, not yet swapped in
    assert tree(part) == old
    killed_at("swapped:part", *args, "--seed", "2")  # swapped in, the old one not yet deleted
    new = tree(part)
    assert new != old and json.loads(new["manifest.json"])["seed"] == 2
    run_cli(*args, "--seed", "3")
    assert hidden(tmp_path) == [] and json.loads((part / "manifest.json").read_text())["seed"] == 3


# --------------------------------------------------------------------------------------------------
# 3. resume compares inputs by content; checkpoints embed no path
# --------------------------------------------------------------------------------------------------
def test_resume_compares_mask_and_partition_by_content(finished: Path, tiny_mask: Path, tiny_partition: Path,
                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = copy_run(finished, tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_cli("mask", "--model", "tiny-llama", "--method", "random", "--samples", "4", "--seq-len", "16",
            "--batch-size", "4", "--seed", "5", "--out", str(elsewhere / "mask.safetensors"))
    run_cli("partition", "--task", "sentiment2", "--clients", "4", "--scheme", "iid", "--out", str(elsewhere / "part"))
    monkeypatch.chdir(elsewhere)
    before = tree(run)
    # the same relative names as the run's inputs would have, but other content
    one_line_error(resume("mask.safetensors", tiny_partition, run, rounds=4), "--mask", "mask_sha256")
    one_line_error(resume(tiny_mask, "part", run, rounds=4), "--partition", "partition_fingerprint")
    assert tree(run) == before
    # the run's own mask and partition, by other paths (copies, absolute): accepted
    shutil.copy(tiny_mask, elsewhere / "copy.safetensors")
    shutil.copytree(tiny_partition, elsewhere / "part-copy")
    proc = resume("copy.safetensors", "part-copy", run.resolve())
    assert proc.returncode == 0, proc.stderr


def test_identical_runs_in_other_directories_write_identical_checkpoints(tiny_mask: Path, tiny_partition: Path,
                                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        shutil.copy(tiny_mask, tmp_path / d / "mask.safetensors")
        monkeypatch.chdir(tmp_path / d)
        run_cli(*train_args("mask.safetensors", tiny_partition, "run", "--eval-every", "0", rounds=1))
    name = "run/checkpoints/round-0001.safetensors"
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # the checkpoint finds its mask through the run directory; copied out on its own, through --mask
    monkeypatch.chdir(tmp_path)
    loose = tmp_path / "loose.safetensors"
    shutil.copy(tmp_path / "a" / name, loose)
    one_line_error(run_cli("eval", "--model", "tiny-llama", "--checkpoint", str(loose), "--limit", "2", check=False),
                   "--mask")
    res = json.loads(run_cli("eval", "--model", "tiny-llama", "--checkpoint", str(loose), "--mask", "a/mask.safetensors",
                             "--limit", "2", "--json").stdout)
    assert res["n"] == 2


# --------------------------------------------------------------------------------------------------
# 4. + 11. damaged ledgers
# --------------------------------------------------------------------------------------------------
def _ledger_lines(run: Path) -> list[str]:
    return (run / "ledger.jsonl").read_text().splitlines(keepends=True)


def _damage(run: Path, how: str) -> int:
    """Damage the ledger of ``run`` in place; returns the 1-based line the error must name (0: any)."""
    lines = _ledger_lines(run)
    r2 = [i for i, ln in enumerate(lines) if json.loads(ln)["round"] == 2]
    first = r2[0]
    if how == "delete a middle line":
        del lines[first]
        line = 0
    elif how == "edit one gs":
        rec = json.loads(lines[first])
        rec["gs"][1] = rec["gs"][1] * 1.5
        lines[first] = json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n"
        line = r2[-1] + 1  # the round line whose state_crc no longer matches
    elif how == "cut a middle line":
        lines[first] = lines[first][: len(lines[first]) // 2] + "\n"
        line = first + 1
    elif how == "mangle a key":
        lines[first] = lines[first].replace('"gs":', '"gz":', 1)
        line = first + 1
    elif how == "delete a round line":
        del lines[r2[-1]]
        line = 0
    else:
        raise ValueError(how)
    (run / "ledger.jsonl").write_text("".join(lines))
    return line


@pytest.mark.parametrize("how", ["delete a middle line", "edit one gs", "cut a middle line", "mangle a key",
                                 "delete a round line"])
def test_resume_refuses_a_damaged_ledger(how: str, finished: Path, tiny_mask: Path, tiny_partition: Path,
                                         tmp_path: Path) -> None:
    run = copy_run(finished, tmp_path / "run")
    line = _damage(run, how)
    before = tree(run)
    err = one_line_error(resume(tiny_mask, tiny_partition, run, rounds=4), "ledger.jsonl line")
    if line:
        assert f"line {line}:" in err, err
    assert tree(run) == before


@pytest.mark.parametrize("how", ["missing", "empty"])
def test_resume_refuses_a_lost_ledger(how: str, finished: Path, tiny_mask: Path, tiny_partition: Path,
                                      tmp_path: Path) -> None:
    run = copy_run(finished, tmp_path / "run")
    if how == "missing":
        (run / "ledger.jsonl").unlink()
    else:
        (run / "ledger.jsonl").write_text("")
    before = tree(run)
    one_line_error(resume(tiny_mask, tiny_partition, run, rounds=4), "ledger.jsonl")
    assert tree(run) == before


# --------------------------------------------------------------------------------------------------
# 5., 6., 12. kill -9 at commit points, then --resume: the run directory equals an uninterrupted one's
# --------------------------------------------------------------------------------------------------
# every commit point a 3-round run passes after its config exists, in order (the rounds append their GradIP
# rows and metrics rows; metrics.jsonl is written whole once, at round 0, and gradip.safetensors when the job ends)
ALL_POINTS = [
    "after:config", "rename:metrics.jsonl", "after:metrics:0",
    "after:gradip:1", "after:ledger:1", "after:metrics:1",
    "after:gradip:2", "after:ledger:2", "after:metrics:2", "rename:round-0002.safetensors", "after:checkpoint:2",
    "after:gradip:3", "after:ledger:3", "after:metrics:3", "rename:round-0003.safetensors", "after:checkpoint:3",
    "rename:gradip.safetensors", "rename:summary.json", "after:summary",
]
QUICK_POINTS = ["after:ledger:2", "after:ledger:3", "rename:round-0002.safetensors"]


def _kill_then_resume(point: str, finished: Path, mask: Path, part: Path, base: Path,
                      monkeypatch: pytest.MonkeyPatch) -> Path:
    base.mkdir()
    args = train_args(mask, part, "run")  # absolute paths (as the reference run's), a relative --out
    killed_at(point, *args, cwd=base)
    monkeypatch.chdir(base)
    run_cli(*args, "--resume")
    run = base / "run"
    assert not [p for p in run.rglob("*.tmp")], "temporaries left"
    assert_same_run(run, finished)
    return run


@pytest.mark.parametrize("point", QUICK_POINTS)
def test_kill_at_a_commit_point_then_resume_is_exact(point: str, finished: Path, tiny_mask: Path,
                                                     tiny_partition: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _kill_then_resume(point, finished, tiny_mask, tiny_partition, tmp_path / "k", monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("point", [p for p in ALL_POINTS if p not in QUICK_POINTS])
def test_kill_at_every_commit_point_then_resume_is_exact(point: str, finished: Path, tiny_mask: Path,
                                                         tiny_partition: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _kill_then_resume(point, finished, tiny_mask, tiny_partition, tmp_path / "k", monkeypatch)


def test_resume_in_steps_equals_one_run(finished: Path, tiny_mask: Path, tiny_partition: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """2 rounds, then --resume to 3: the same files as one 3-round run. Round 3's messages to the clients
    of round 2 carry only the history since then: the resumed server remembers when each client last
    synced (it re-sent the whole history, so bytes_down differed)."""
    monkeypatch.chdir(tmp_path)
    run_cli(*train_args(tiny_mask, tiny_partition, "run", rounds=2))
    run_cli(*train_args(tiny_mask, tiny_partition, "run", "--resume"))
    got = [json.loads(x) for x in (tmp_path / "run" / "ledger.jsonl").read_text().splitlines()]
    want = [json.loads(x) for x in (finished / "ledger.jsonl").read_text().splitlines()]
    assert [x["bytes_down"] for x in got] == [x["bytes_down"] for x in want]
    assert_same_run(tmp_path / "run", finished)


def test_resume_rewrites_a_damaged_checkpoint_and_drops_temporaries(finished: Path, tiny_mask: Path,
                                                                    tiny_partition: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    run = copy_run(finished, tmp_path / "run")
    monkeypatch.chdir(tmp_path)  # --out "run", as the reference run's config.json has it
    ck = run / "checkpoints" / "round-0002.safetensors"
    ck.write_bytes(ck.read_bytes()[:-100])  # truncated
    (run / "checkpoints" / ".round-0003.safetensors.abcd1234.tmp").write_bytes(b"x" * 1000)
    (run / ".metrics.jsonl.zz_99xyz.tmp").write_text("{}")
    (run / "notes.txt").write_text("mine")  # not meerkat's: stays
    proc = resume(tiny_mask, tiny_partition, "run")
    assert proc.returncode == 0, proc.stderr
    (run / "notes.txt").unlink()
    assert_same_run(run, finished)


def test_sync_auto_sends_the_vector_when_the_history_costs_more() -> None:
    import torch

    from meerkat_core.fed.client import ZOClient
    from meerkat_core.fed.protocol import HistoryEntry, RoundInstruction
    from meerkat_core.fed.server import ServerConfig, ZOServer
    from meerkat_core.fed.state import apply_history

    k = 20  # a k-vector costs 80 B; a missed update 16 B
    x0 = torch.zeros(k)
    hist = {r: [HistoryEntry(1000 * r + i, 0.01) for i in range(3)] for r in (1, 2, 3)}
    sizes = {}
    for mode in ("replay", "auto"):
        server = ZOServer(ServerConfig(seed=0, rounds=9, local_steps=1, clients_per_round=1, lr=0.1, eps=1e-3,
                                       batch_size=1, sync=mode), x0, {0: 5, 1: 5})
        server.history = hist
        apply_history(server.x, [h for r in (1, 2, 3) for h in hist[r]])
        server.round = 3
        server.synced_round[1] = 2  # client 1 missed 1 round (3 updates), client 0 all 3 (9 updates)
        near, far = server.instruction(4, 1), server.instruction(4, 0)
        sizes[mode] = len(far.to_bytes())
        assert near.sync == "replay" and len(near.history) == 3
        if mode == "auto":
            assert far.sync == "vector"  # 9 x 16 B of history > 20 x 4 B of vector
            client = ZOClient(0, None, x0)  # type: ignore[arg-type]
            client._sync(RoundInstruction.from_bytes(far.to_bytes()))  # crc-checked against the server's state
            assert client.synced_round == 3
        else:
            assert far.sync == "replay" and len(far.history) == 9
    assert sizes["auto"] < sizes["replay"]


# --------------------------------------------------------------------------------------------------
# 7. non-finite and absurd values
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opt,value", [("--lr", "inf"), ("--eps", "inf"), ("--lr", "nan"), ("--eps", "nan")])
def test_non_finite_settings_are_refused(opt: str, value: str, tiny_mask: Path, tiny_partition: Path,
                                         tmp_path: Path) -> None:
    args = train_args(tiny_mask, tiny_partition, tmp_path / "run", rounds=1)
    args[args.index(opt) + 1] = value
    one_line_error(run_cli(*args, check=False), opt)
    assert not (tmp_path / "run").exists()


def test_a_diverging_run_stops_with_an_error(tiny_mask: Path, tiny_partition: Path, tmp_path: Path) -> None:
    args = train_args(tiny_mask, tiny_partition, tmp_path / "run", "--json", rounds=3)
    args[args.index("--lr") + 1] = "1e30"
    proc = run_cli(*args, check=False)
    last_line_error(proc, "diverged", "--lr")
    assert json.loads(proc.stdout)["exit_code"] == 2  # --json: the error as a JSON object
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_nan_checkpoint_is_refused_and_json_stays_valid(finished: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    src = finished / "checkpoints" / "round-0003.safetensors"
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as fh:
        md = dict(fh.metadata())
    tensors = {k: torch.full_like(v, float("nan")) for k, v in load_file(str(src)).items()}
    md.pop("values_crc", None)
    bad = tmp_path / "nan.safetensors"
    save_file(tensors, str(bad), metadata=md)
    proc = run_cli("eval", "--model", "tiny-llama", "--checkpoint", str(bad), "--limit", "4", "--json", check=False)
    one_line_error(proc, "not finite")
    assert json.loads(proc.stdout)["error"].startswith("checkpoint")
    # a class with no test example has no accuracy: null, not the invalid token NaN
    ok = run_cli("eval", "--model", "tiny-llama", "--limit", "1", "--json")

    def no_nan(token: str) -> None:
        raise AssertionError(f"invalid JSON token {token}")

    doc = json.loads(ok.stdout, parse_constant=no_nan)
    assert None in doc["per_class_accuracy"].values()


# --------------------------------------------------------------------------------------------------
# 8. partition checks
# --------------------------------------------------------------------------------------------------
def _edit_manifest(src: Path, dest: Path, edit) -> Path:
    shutil.copytree(src, dest)
    doc = json.loads((dest / "manifest.json").read_text())
    edit(doc)
    (dest / "manifest.json").write_text(json.dumps(doc))
    return dest


def test_edited_label_counts_are_refused(tiny_mask: Path, tiny_partition: Path, tmp_path: Path) -> None:
    def swap_counts(doc: dict) -> None:
        c = next(c for c in doc["clients"] if c["label_counts"][0] != c["label_counts"][1])
        c["label_counts"] = c["label_counts"][::-1]

    part = _edit_manifest(tiny_partition, tmp_path / "part", swap_counts)
    one_line_error(run_cli(*train_args(tiny_mask, part, tmp_path / "run", rounds=1), check=False), "label_counts")
    assert not (tmp_path / "run").exists()


def test_indices_swapped_between_clients_are_refused(tiny_partition: Path, tmp_path: Path) -> None:
    from meerkat_core.errors import MeerkatInputError
    from meerkat_core.partition import load_partition

    def swap(doc: dict) -> None:
        a, b = doc["clients"][0], doc["clients"][1]
        for key in ("indices", "size", "label_counts", "num_labels", "tv_distance", "label_entropy_bits", "is_extreme"):
            a[key], b[key] = b[key], a[key]

    part = _edit_manifest(tiny_partition, tmp_path / "part", swap)
    with pytest.raises(MeerkatInputError, match="partition_fingerprint"):
        load_partition(part)


@pytest.mark.parametrize("rows,needle", [
    ("text,label\ngood day,pos\nbad day,neg\nfine,1\nugly,0\n", "mixes numbers"),
    ('text,label\ngood day,1\n"",0\nbad day,0\n   ,1\n', "empty in 2 rows"),
])
def test_partition_refuses_ambiguous_file_rows(rows: str, needle: str, tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_text(rows)
    out = tmp_path / "part"
    one_line_error(run_cli("partition", "--data", str(data), "--clients", "2", "--out", str(out), check=False), needle)
    assert not out.exists()


# --------------------------------------------------------------------------------------------------
# 9. --resume with fewer rounds than done
# --------------------------------------------------------------------------------------------------
def test_resume_with_fewer_rounds_than_done_is_refused(finished: Path, tiny_mask: Path, tiny_partition: Path,
                                                       tmp_path: Path) -> None:
    run = copy_run(finished, tmp_path / "run")
    before = tree(run)
    one_line_error(resume(tiny_mask, tiny_partition, run, rounds=2), "completed 3 rounds", "--rounds 3")
    assert tree(run) == before


# --------------------------------------------------------------------------------------------------
# 10. output paths that cannot be written: one line, before the work, nothing half-written
# --------------------------------------------------------------------------------------------------
def _mask_args(out: Path) -> list[str]:
    return ["mask", "--model", "tiny-llama", "--samples", "4", "--seq-len", "16", "--batch-size", "4", "--out", str(out)]


def test_unwritable_outputs_read_only(read_only: Path, finished: Path, tiny_mask: Path, tiny_partition: Path) -> None:
    cases = {
        "mask --out": _mask_args(read_only / "m.safetensors"),
        "partition --out": ["partition", "--task", "sentiment2", "--clients", "2", "--out", str(read_only / "p")],
        "partition --plot": ["partition", "--task", "sentiment2", "--clients", "2", "--out",
                             str(read_only.parent / "p-ok"), "--plot", str(read_only / "p.png")],
        "train --out": train_args(tiny_mask, tiny_partition, read_only / "run", rounds=1),
        "export --out": ["export", str(finished), "--out", str(read_only / "merged")],
        "gradip inspect --plot": ["gradip", "inspect", str(finished), "--plot", str(read_only / "g.png")],
    }
    for what, args in cases.items():
        one_line_error(run_cli(*args, check=False), what.split()[-1], str(read_only))
        assert os.listdir(read_only) == [], what
    assert not (read_only.parent / "p-ok").exists()  # --plot is checked before the partition is written


def test_unwritable_outputs_wrong_type(tmp_path: Path, finished: Path, tiny_mask: Path, tiny_partition: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("keep")
    a_dir = tmp_path / "a-dir"
    a_dir.mkdir()
    cases = {
        "mask --out under a file": (_mask_args(a_file / "m.safetensors"), "not a directory"),
        "mask --out a directory": (_mask_args(a_dir), "is a directory"),
        "partition --out a file": (["partition", "--task", "sentiment2", "--clients", "2", "--out", str(a_file)],
                                   "not a directory"),
        "partition --plot a directory": (["partition", "--task", "sentiment2", "--clients", "2", "--out",
                                          str(tmp_path / "p"), "--plot", str(a_dir)], "is a directory"),
        "train --out a file": (train_args(tiny_mask, tiny_partition, a_file, rounds=1), "not a directory"),
        "gradip inspect --plot under a file": (["gradip", "inspect", str(finished), "--plot", str(a_file / "g.png")],
                                               "not a directory"),
    }
    for what, (args, needle) in cases.items():
        one_line_error(run_cli(*args, check=False), needle)
        assert a_file.read_text() == "keep" and os.listdir(a_dir) == [], what
    assert sorted(os.listdir(tmp_path)) == ["a-dir", "a-file"]


def test_full_disk(full_disk: Path, finished: Path, tiny_mask: Path, tiny_partition: Path) -> None:
    # the disk fills up only when the computed mask is written: its progress lines come first
    last_line_error(run_cli(*_mask_args(full_disk / "m.safetensors"), check=False), "no space left")
    assert os.listdir(full_disk) == []
    one_line_error(run_cli("export", str(finished), "--out", str(full_disk / "merged"), check=False), "no space left")
    assert os.listdir(full_disk) == []
    run = full_disk / "run"
    err = last_line_error(run_cli(*train_args(tiny_mask, tiny_partition, run, rounds=3), check=False), "no space left")
    assert str(run) in err
    assert not [p for p in full_disk.rglob("*.tmp")]
    if (run / "ledger.jsonl").exists():  # whatever was committed is whole: the run can be resumed elsewhere
        from meerkat_core.rundir import RunDir

        RunDir(run).ledger_rounds()


# --------------------------------------------------------------------------------------------------
# 11. more bad inputs that raised tracebacks
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("limit", ["0", "-3"])
def test_eval_limit_must_be_positive(limit: str, tiny_mask: Path, tiny_partition: Path, tmp_path: Path) -> None:
    args = train_args(tiny_mask, tiny_partition, tmp_path / "run", rounds=1)
    args[args.index("--eval-limit") + 1] = limit
    one_line_error(run_cli(*args, check=False), "--eval-limit")
    assert not (tmp_path / "run").exists()


def test_sparse_checkpoint_edited_to_mask_all(finished: Path, tmp_path: Path) -> None:
    src = finished / "checkpoints" / "round-0003.safetensors"
    data = src.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"]["mask_sha256"] = "all"
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    bad = tmp_path / "all.safetensors"
    bad.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n :])
    one_line_error(run_cli("eval", "--model", "tiny-llama", "--checkpoint", str(bad), "--limit", "2", check=False),
                   "damaged")


# --------------------------------------------------------------------------------------------------
# 13. smaller: no progress lines or usage boxes before an error, JSON errors, honest messages, no cache
# --------------------------------------------------------------------------------------------------
def test_errors_are_one_line_and_json_when_asked(tmp_path: Path, tiny_partition: Path) -> None:
    one_line_error(run_cli(*_mask_args(tmp_path / "m"), "--corpus", str(tmp_path / "nope.txt"), check=False), "--corpus")
    one_line_error(run_cli("train", "--model", "tiny-llama", check=False), "--mask")  # a usage error, no box
    proc = run_cli("train", "--model", "tiny-llama", "--json", check=False)
    assert json.loads(proc.stdout) == {"error": one_line_error(proc)[len("error: "):], "exit_code": 2}
    proc = run_cli("partition", "--task", "nope", "--clients", "2", "--out", str(tmp_path / "p"), "--json", check=False)
    assert json.loads(proc.stdout)["exit_code"] == 2 and "nope" in one_line_error(proc)


def test_messages_do_not_say_not_found_for_paths_that_exist(tmp_path: Path, tiny_mask: Path) -> None:
    d = tmp_path / "dir"
    d.mkdir()
    err = one_line_error(run_cli("partition", "--data", str(d), "--clients", "2", "--out", str(tmp_path / "p"),
                                 check=False), "is a directory")
    assert "not found" not in err and "no such" not in err
    err = one_line_error(run_cli(*train_args(tiny_mask, d, tmp_path / "run", rounds=1), check=False), "not a partition")
    assert "not found" not in err


def test_partition_data_leaves_the_datasets_cache_alone(tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_text("text,label\ngood,1\nbad,0\nfine,1\nugly,0\n")
    home = tmp_path / "hf"
    home.mkdir()
    env = {"HF_HOME": str(home), "HF_DATASETS_CACHE": str(home / "datasets")}
    proc = meerkat("partition", "--data", str(data), "--label-column", "nope", "--clients", "2",
                   "--out", str(tmp_path / "p"), env=env)
    one_line_error(proc, "--label-column")
    assert list(home.rglob("*")) == []
