"""`meerkat gradip inspect` end to end: a Meerkat-vp run and a plain run, --json fields, --plot PNG,
--round/--client, and the one-line exit-2 errors for missing or corrupt trajectories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli


@pytest.fixture(autouse=True)
def _no_wrap(monkeypatch: pytest.MonkeyPatch) -> None:
    from meerkat_cli import common

    monkeypatch.setattr(common.err, "soft_wrap", True)


@pytest.fixture(scope="module")
def mixed_partition(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("gradip-cli") / "mixed"
    run_cli("partition", "--task", "sentiment2", "--clients", "4", "--scheme", "mixed", "--extreme-clients", "2",
            "--seed", "0", "--out", str(path))
    return path


def _train(mask: Path, part: Path, out: Path, *extra: str) -> None:
    run_cli("train", "--model", "tiny-llama", "--mask", str(mask), "--partition", str(part), "--task", "sentiment2",
            "--rounds", "2", "--local-steps", "3", "--clients-per-round", "2", "--lr", "1e-2", "--eps", "1e-3",
            "--batch-size", "2", "--eval-limit", "8", "--device", "cpu", "--out", str(out), *extra)


@pytest.fixture(scope="module")
def vp_run(tiny_mask: Path, mixed_partition: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gradip-cli") / "vp"
    # thresholds low enough that some client is flagged on these short noisy trajectories
    _train(tiny_mask, mixed_partition, out, "--algorithm", "meerkat-vp", "--vp-calibration-steps", "10", "--vp-classifier", "rho",
           "--vp-rho-later", "0.01", "--vp-rho-quie", "0")
    return out


@pytest.fixture(scope="module")
def plain_run(tiny_mask: Path, mixed_partition: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gradip-cli") / "plain"
    _train(tiny_mask, mixed_partition, out, "--clients-per-round", "4")
    return out


def test_inspect_vp_run_json_and_plot(vp_run: Path, tmp_path: Path) -> None:
    png = tmp_path / "plots" / "traj.png"
    proc = run_cli("gradip", "inspect", str(vp_run), "--json", "--plot", str(png))
    doc = json.loads(proc.stdout)
    assert doc["algorithm"] == "meerkat-vp" and doc["round"] == 1 and doc["rounds"] == [1, 2]
    assert doc["decision_source"] == "ledger" and doc["classifier"]["name"] == "rho"
    assert doc["classifier"]["thresholds"] == {"rho_later": 0.01, "rho_quie": 0.0}
    assert [c["client"] for c in doc["clients"]] == [0, 1, 2, 3]
    ledger = [json.loads(ln) for ln in (vp_run / "ledger.jsonl").read_text().splitlines()]
    vp = next(r for r in ledger if r["type"] == "round" and r["round"] == 1)["vp"]
    assert doc["flagged"] == vp["flagged"] and doc["stopped"] == vp["stopped"] and doc["flagged"]
    for c in doc["clients"]:
        assert c["steps"] == 10 and len(c["abs_gradip"]) == 10 and len(c["sparkline"]) == 10
        assert set(c["stats"]) >= {"rho_later", "rho_quie", "mean_initial", "mean_later", "sigma"}
        assert set(c["margins"]) == {"rho_later", "rho_quie"}
        assert c["is_extreme"] in (True, False) and c["label_entropy_bits"] is not None
        assert c["stopped"] == (c["client"] in vp["stopped"])
        assert c["stats"]["rho_later"] == pytest.approx(vp["stats"][str(c["client"])]["rho_later"])
    assert len(doc["extreme"]) == 2 and doc["detector"]["extreme"] == doc["extreme"]
    assert set(doc["detector"]["separation"]) == {"rho_later", "rho_quie"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(png.parent.glob(".*tmp"))
    table = run_cli("gradip", "inspect", str(vp_run)).stdout
    assert "rho_later (>0.01)" in table and "FLAG" in table and "single-label" in table


def test_inspect_round_and_client_filters(vp_run: Path) -> None:
    r2 = json.loads(run_cli("gradip", "inspect", str(vp_run), "--round", "2", "--json").stdout)
    assert r2["round"] == 2 and r2["decision_source"] == "computed" and len(r2["clients"]) == 2
    c = r2["clients"][0]["client"]
    one = json.loads(run_cli("gradip", "inspect", str(vp_run), "--round", "2", "--client", str(c), "--json").stdout)
    assert [x["client"] for x in one["clients"]] == [c]
    bad = run_cli("gradip", "inspect", str(vp_run), "--round", "9", check=False)
    assert bad.returncode == 2 and "--round 9" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_inspect_plain_run_shows_what_vp_would_decide(plain_run: Path) -> None:
    doc = json.loads(run_cli("gradip", "inspect", str(plain_run), "--json").stdout)
    assert doc["algorithm"] == "meerkat" and doc["decision_source"] == "computed" and doc["stopped"] is None
    assert all(c["stopped"] is None and c["steps"] == 3 for c in doc["clients"])
    assert any("would have decided" in n for n in doc["notes"])
    other = json.loads(run_cli("gradip", "inspect", str(plain_run), "--classifier", "none", "--json").stdout)
    assert other["flagged"] == [] and other["classifier"]["name"] == "none"


def test_inspect_default_classifier_abstains_and_warns_on_a_short_calibration(plain_run: Path, tmp_path: Path) -> None:
    """The default classifier on 4 clients of 3 steps: it abstains (too few clients to compare), and the
    table, the JSON and the plot say that 3 steps are fewer than the 100 it needs."""
    doc = json.loads(run_cli("gradip", "inspect", str(plain_run), "--json").stdout)
    assert doc["classifier"]["name"] == "loss" and doc["classifier"]["min_calibration_steps"] == 100
    assert doc["outcome"] == "abstained" and doc["flagged"] == [] and "at least 5" in doc["reason"]
    assert doc["short_calibration"] is True and doc["calibration_steps"] == 3
    assert "calibration of 3 steps is shorter than the 100 the loss classifier needs" in doc["warning"] and doc["warning"] in doc["notes"]
    assert all(set(c["margins"]) == {"z", "drop"} for c in doc["clients"])
    png = tmp_path / "short.png"
    table = run_cli("gradip", "inspect", str(plain_run), "--plot", str(png)).stdout
    assert "SHORT calibration (3 < 100 steps)" in table and "warning: short calibration" in table
    assert "decision: abstained" in table and "z (>" in table and "drop (>" in table
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    paper = run_cli("gradip", "inspect", str(plain_run), "--classifier", "rho").stdout
    assert "rho_later (>2)" in paper and "SHORT calibration (3 < 100 steps)" in paper


def _png_width(png: Path) -> int:
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big")  # IHDR width


def test_inspect_shows_the_signal_the_classifier_reads(plain_run: Path, tmp_path: Path) -> None:
    """The default ``loss`` classifier decides on the local loss: the JSON names its signal and holds each
    client's loss per step, the table has a later-loss column and a loss sparkline, and the plot puts a
    loss panel before the |GradIP| ones (three panels on this two-round run, 7.5 in x 110 dpi each). The
    paper's ``rho`` reads |GradIP| only: no loss column, two panels."""
    doc = json.loads(run_cli("gradip", "inspect", str(plain_run), "--json").stdout)
    assert doc["classifier"]["signal"] == "loss" and doc["lm_warning"] is None
    from meerkat_core.gradip.stats import phase_slices

    p = doc["classifier"]["params"]
    _, later = phase_slices(3, p["initial_frac"], p["later_frac"])
    for c in doc["clients"]:
        assert len(c["loss"]) == 3 and all(v > 0 for v in c["loss"]) and len(c["loss_sparkline"]) == 3
        part = c["loss"][later]
        assert c["stats"]["loss_later"] == pytest.approx(sum(part) / len(part))  # the level the rule reads
    table = run_cli("gradip", "inspect", str(plain_run)).stdout
    assert "loss later" in table and "loss over round 1's steps" in table
    rho = json.loads(run_cli("gradip", "inspect", str(plain_run), "--classifier", "rho", "--json").stdout)
    assert rho["classifier"]["signal"] == "gradip"
    assert "loss later" not in run_cli("gradip", "inspect", str(plain_run), "--classifier", "rho").stdout
    loss_png, rho_png = tmp_path / "loss.png", tmp_path / "rho.png"
    run_cli("gradip", "inspect", str(plain_run), "--plot", str(loss_png))
    run_cli("gradip", "inspect", str(plain_run), "--classifier", "rho", "--plot", str(rho_png))
    assert _png_width(loss_png) == 3 * 825 and _png_width(rho_png) == 2 * 825


def test_inspect_repeats_the_lm_loss_warning(tiny_mask: Path, mixed_partition: Path, tmp_path: Path) -> None:
    """A run trained with --loss lm, inspected with the loss classifier: the warning `train` gives before
    the calibration round is in the JSON and the table too; not with ``rho``, which reads |GradIP|."""
    run = tmp_path / "lm"
    _train(tiny_mask, mixed_partition, run, "--clients-per-round", "4", "--loss", "lm")
    doc = json.loads(run_cli("gradip", "inspect", str(run), "--json").stdout)
    assert "--vp-classifier loss was set on --loss classification" in doc["lm_warning"]
    table = run_cli("gradip", "inspect", str(run)).stdout
    assert "warning: --vp-classifier loss was set on --loss classification" in table
    rho = json.loads(run_cli("gradip", "inspect", str(run), "--classifier", "rho", "--json").stdout)
    assert rho["lm_warning"] is None


def test_inspect_warns_in_table_json_and_plot_when_the_calibration_loss_rose(plain_run: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The report carries ``rising_loss_warning``'s line: None on this 3-step round (too short to tell); when
    the round's loss rose (stubbed here: the rule itself is tested in test_vp.py), a yellow warning line in
    the table, ``loss_warning`` in the JSON and a banner in the plot."""
    assert json.loads(run_cli("gradip", "inspect", str(plain_run), "--json").stdout)["loss_warning"] is None
    from meerkat_core.gradip import report

    monkeypatch.setattr(report, "rising_loss_warning", lambda trajs: f"the calibration loss rose for {len(trajs)} clients")
    doc = json.loads(run_cli("gradip", "inspect", str(plain_run), "--json").stdout)
    assert doc["loss_warning"] == "the calibration loss rose for 4 clients"
    png = tmp_path / "rose.png"
    table = run_cli("gradip", "inspect", str(plain_run), "--plot", str(png)).stdout
    assert "warning: the calibration loss rose for 4 clients" in table
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_prints_the_rising_loss_warning_and_keeps_it_out_of_the_ledger(
        tiny_mask: Path, mixed_partition: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`meerkat train --algorithm meerkat-vp`: when the calibration's loss rose (stubbed: the rule is tested
    in test_vp.py) the run prints one warning line after round 1, and its ledger holds the same round-1
    keys as a run without it (resume compares that record)."""
    from meerkat_core.fed import vp

    def train(out: Path) -> tuple[str, dict]:
        proc = run_cli("train", "--model", "tiny-llama", "--mask", str(tiny_mask), "--partition", str(mixed_partition),
                       "--task", "sentiment2", "--rounds", "1", "--batch-size", "2", "--eval-limit", "4", "--device",
                       "cpu", "--algorithm", "meerkat-vp", "--vp-calibration-steps", "4", "--vp-param",
                       "min_calibration_steps=4", "--out", str(out))
        ledger = [json.loads(ln) for ln in (out / "ledger.jsonl").read_text().splitlines()]
        return proc.stderr, next(r for r in ledger if r["type"] == "round")["vp"]

    calm_err, calm = train(tmp_path / "calm")
    assert "warning" not in calm_err
    monkeypatch.setattr(vp, "rising_loss_warning", lambda trajs: f"the calibration loss rose for {len(trajs)} clients")
    err, rec = train(tmp_path / "rose")
    assert err.count("warning: Meerkat-vp: the calibration loss rose for 4 clients") == 1
    assert set(rec) == set(calm) and rec["flagged"] == calm["flagged"]


def test_train_warns_when_the_calibration_is_shorter_than_the_classifier_needs(tiny_mask: Path, mixed_partition: Path,
                                                                               tmp_path: Path) -> None:
    out = tmp_path / "short"
    proc = run_cli("train", "--model", "tiny-llama", "--mask", str(tiny_mask), "--partition", str(mixed_partition),
                   "--task", "sentiment2", "--rounds", "1", "--batch-size", "2", "--eval-limit", "4", "--device", "cpu",
                   "--algorithm", "meerkat-vp", "--vp-calibration-steps", "4", "--out", str(out))
    assert "warning: --vp-calibration-steps 4 is shorter than the 100 steps the loss classifier needs" in proc.stderr
    ledger = [json.loads(ln) for ln in (out / "ledger.jsonl").read_text().splitlines()]
    vp = next(r for r in ledger if r["type"] == "round")["vp"]
    assert vp["short_calibration"] is True and vp["min_calibration_steps"] == 100 and vp["flagged"] == []
    quiet = run_cli("train", "--model", "tiny-llama", "--mask", str(tiny_mask), "--partition", str(mixed_partition),
                    "--task", "sentiment2", "--rounds", "1", "--batch-size", "2", "--eval-limit", "4", "--device", "cpu",
                    "--algorithm", "meerkat-vp", "--vp-calibration-steps", "4", "--vp-param", "min_calibration_steps=4",
                    "--out", str(tmp_path / "ok"))
    assert "warning" not in quiet.stderr
    lm = run_cli("train", "--model", "tiny-llama", "--mask", str(tiny_mask), "--partition", str(mixed_partition),
                 "--task", "sentiment2", "--rounds", "1", "--batch-size", "2", "--eval-limit", "4", "--device", "cpu",
                 "--algorithm", "meerkat-vp", "--vp-calibration-steps", "4", "--vp-param", "min_calibration_steps=4",
                 "--loss", "lm", "--out", str(tmp_path / "lm"))
    lines = [ln for ln in lm.stderr.splitlines() if ln.startswith("warning:")]  # the loss classifier on the LM loss
    assert len(lines) == 1 and "--loss lm" in lines[0] and "--vp-classifier rho" in lines[0], lm.stderr
    bad = run_cli("train", "--model", "tiny-llama", "--mask", str(tiny_mask), "--partition", str(mixed_partition),
                  "--algorithm", "meerkat-vp", "--vp-param", "zflag=3", "--out", str(tmp_path / "bad"), check=False)
    assert bad.returncode == 2 and "--vp-param zflag: classifier loss has no such parameter" in bad.stderr
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage"])
def test_missing_or_corrupt_trajectories_exit_2_one_line(plain_run: Path, tmp_path: Path, damage: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(plain_run, run)
    f = run / "gradip.safetensors"
    if damage == "missing":
        f.unlink()
    elif damage == "truncated":
        f.write_bytes(f.read_bytes()[:100])
    else:
        f.write_bytes(b"\x00" * 64)
    png = tmp_path / "x.png"
    proc = run_cli("gradip", "inspect", str(run), "--plot", str(png), check=False)
    assert proc.returncode == 2 and proc.stdout == "" and not png.exists()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert ("has no GradIP trajectories" if damage == "missing" else "corrupt or truncated") in lines[0]


def test_inspect_not_a_run_directory(tmp_path: Path) -> None:
    proc = run_cli("gradip", "inspect", str(tmp_path / "nope"), check=False)
    assert proc.returncode == 2 and "no such directory" in proc.stderr


def test_inspect_shows_each_client_across_its_rounds_and_a_short_calibration(plain_run: Path, tmp_path: Path) -> None:
    doc = json.loads(run_cli("gradip", "inspect", str(plain_run), "--json").stdout)
    r2 = {c["client"]: c for c in json.loads(run_cli("gradip", "inspect", str(plain_run), "--round", "2",
                                                       "--json").stdout)["clients"]}
    for c in doc["clients"]:
        h = c["history"]
        assert h["rounds"] == [1, 2] and h["steps"] == [3, 3]  # all 4 clients take part in both rounds
        assert h["abs_gradip"] == pytest.approx(c["abs_gradip"] + r2[c["client"]]["abs_gradip"])
        assert h["round_means"] == pytest.approx([sum(c["abs_gradip"]) / 3, sum(r2[c["client"]]["abs_gradip"]) / 3])
        assert len(h["sparkline"]) == 2
    assert doc["calibration_steps"] == 3 and doc["min_calibration_steps"] == 100 and doc["short_calibration"]
    assert "calibration of 3 steps is shorter than the 100 the loss classifier needs" in doc["warning"]
    assert doc["notes"][0] == doc["warning"]
    table = run_cli("gradip", "inspect", str(plain_run), "--plot", str(tmp_path / "t.png"))
    assert "steps (needs 100)" in table.stdout and "3 (short)" in table.stdout and "warning: short calibration: calibration of 3 steps" in table.stdout
    assert "mean per round taken" in table.stdout
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    none = json.loads(run_cli("gradip", "inspect", str(plain_run), "--classifier", "none", "--json").stdout)
    assert none["min_calibration_steps"] == 0 and not none["short_calibration"] and none["warning"] is None
