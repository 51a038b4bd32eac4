"""The benchmarks' --quick variants (issue #7): each runs on tiny-llama into tmp_path and writes JSON whose
numbers must be present, sane and consistent with what the code and the wire protocol imply. They check
the harnesses, not the figures (no timing target is asserted)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
TINY_D = 3_219_776  # tiny-llama's parameters (meerkat models)


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve their annotations through the module's entry
    spec.loader.exec_module(mod)
    return mod


def finite_pos(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def mask_k(path: Path) -> int:
    from meerkat_core.mask import load_mask

    return sum(t.indices.numel() for t in load_mask(path).nonempty())


def test_server_cost_quick(tmp_path: Path, tiny_mask: Path, capsys) -> None:
    out = tmp_path / "server_cost.json"
    load("server_cost").main(["--quick", "--mask", str(tiny_mask), "--work", str(tmp_path / "w"), "--out", str(out)])
    doc = json.loads(out.read_text())
    assert doc["config"]["k"] == mask_k(tiny_mask) and doc["config"]["d"] == TINY_D
    assert doc["client_steps"] == 3 * 4 * 3  # rounds x clients per round (all 4) x local steps
    assert [r["round"] for r in doc["per_round"]] == [1, 2, 3]
    per = doc["per_step_cpu_s"]
    for key in ("client_zo_step", "server_complete_round", "server_all"):
        assert finite_pos(per[key]), key
    assert per["server_all"] >= per["server_complete_round"]
    assert all(finite_pos(v) for v in doc["server_pieces_per_step_cpu_s"].values())
    assert doc["fraction_server_complete_round"] == pytest.approx(per["server_complete_round"] / per["client_zo_step"])
    assert finite_pos(doc["fraction_server_all"])
    # every client takes part in every round, so from round 2 on each catches up on the previous round's
    # 12 global updates (one per client step; a non-finite step would be skipped)
    assert 0 < doc["history_entries_replayed_by_clients"] <= 2 * 4 * 12
    assert doc["per_round"][0]["sync_cpu"] <= doc["per_round"][0]["client_cpu"]
    assert "server cost / client step" in capsys.readouterr().out


def test_memory_quick(tmp_path: Path, tiny_mask: Path) -> None:
    out = tmp_path / "memory.json"
    load("memory").main(["--quick", "--mask", str(tiny_mask), "--work", str(tmp_path / "w"), "--out", str(out)])
    doc = json.loads(out.read_text())
    arms = doc["arms"]
    assert set(arms) == {"inference", "zo", "zo-noflat", "zo-full", "fo-adam"}
    w = 4 * TINY_D  # fp32 weights
    for name, a in arms.items():
        assert a["param_bytes"] == w, name
        assert a["peak_bytes"] > w and a["baseline_bytes"] > w, name  # the process holds at least the weights
        assert finite_pos(a["ratio_weights_plus_delta_to_inference"]), name
        assert a["batch_shape"] == arms["inference"]["batch_shape"], name  # the same batch for every arm
    assert arms["zo"]["k"] == arms["zo-noflat"]["k"] == mask_k(tiny_mask) and arms["zo-full"]["k"] == TINY_D
    # physical floors the measurement must see: backprop + Adam holds grads and two moments (3 x weights);
    # full-parameter ZO holds an fp32 master of all d coordinates (1 x weights)
    assert arms["fo-adam"]["delta_bytes"] > 2 * w
    assert arms["zo-full"]["delta_bytes"] > 0.9 * w
    assert arms["zo"]["delta_bytes"] < arms["fo-adam"]["delta_bytes"]
    assert doc["ratio_fo_adam_to_inference"] > doc["ratio_zo_to_inference"] > 0
    assert doc["ratio_zo_to_inference"] == arms["zo"]["ratio_weights_plus_delta_to_inference"]


def test_communication_quick(tmp_path: Path, tiny_mask: Path) -> None:
    out = tmp_path / "communication.json"
    load("communication").main(["--quick", "--mask", str(tiny_mask), "--work", str(tmp_path / "w"), "--out", str(out)])
    doc = json.loads(out.read_text())
    k = mask_k(tiny_mask)
    assert doc["config"]["k"] == k and doc["config"]["d"] == TINY_D
    arms = doc["arms"]
    assert set(arms) == {"meerkat-replay", "meerkat-vector", "full-zo", "full-zo-replay"}
    for name, a in arms.items():
        assert a["method"].startswith("trained"), name
        rows = a["messages_detail"]
        assert len(rows) == 3 * 2  # rounds x clients per round
        for r in rows:
            assert r["steps"] == 3
            assert r["up_payload"] == 12 * r["steps"]
            assert 40 <= r["up_header"] <= 200, (name, r)  # "MKT1" + length + a small JSON header
            assert 64 <= r["down_header"] <= 512, (name, r)
            if a["sync"] == "vector":
                assert r["down_payload"] == 4 * a["vector_length"] and r["history_entries"] == 0
            else:
                assert r["down_payload"] == 16 * r["history_entries"]
        assert [r["history_entries"] for r in rows if r["round"] == 1] == [0, 0]
    assert arms["meerkat-vector"]["vector_length"] == k and arms["full-zo"]["vector_length"] == TINY_D
    # replay bytes do not depend on k or d: the same schedule gives the same history lengths
    hist = lambda a: [(r["round"], r["client"], r["history_entries"]) for r in arms[a]["messages_detail"]]  # noqa: E731
    assert hist("meerkat-replay") == hist("full-zo-replay")
    assert any(e > 0 for _, _, e in hist("meerkat-replay"))
    mean_down = {n: a["down_per_client_round"]["mean"] for n, a in arms.items()}
    assert mean_down["meerkat-replay"] < mean_down["meerkat-vector"] < mean_down["full-zo"]
    assert doc["fedavg"]["down_per_client_round"] == doc["fedavg"]["up_per_client_round"] == 4 * TINY_D
    (t,) = doc["bytes_to_target"]
    assert t["reached"] and t["round"] >= 1
    assert t["bytes_total"] == t["bytes_up"] + t["bytes_down"] > 0
    assert t["fedavg_bytes_total_same_rounds"] == t["client_rounds"] * 8 * TINY_D
    # a bare --arms reads existing runs only (nothing trained, d from the run's provenance); an unreachable
    # target is reported as not reached
    out2 = tmp_path / "b2t.json"
    load("communication").main(["--arms", "--run-dir", t["run"], t["run"], "--target", "1.01", "--out", str(out2)])
    doc2 = json.loads(out2.read_text())
    assert doc2["arms"] == {} and doc2["config"] is None
    assert [x["reached"] for x in doc2["bytes_to_target"]] == [False, False]
    # no target: each run's best after training started, the same answer as the full benchmark's
    load("communication").main(["--arms", "--run-dir", t["run"], "--out", str(out2)])
    (t2,) = json.loads(out2.read_text())["bytes_to_target"]
    assert (t2["round"], t2["bytes_total"], t2["fedavg_bytes_total_same_rounds"]) == \
        (t["round"], t["bytes_total"], t["fedavg_bytes_total_same_rounds"])
    # an explicit target the starting point already meets costs nothing
    load("communication").main(["--arms", "--run-dir", t["run"], "--target", str(t["initial_accuracy"]),
                                "--out", str(out2)])
    (t3,) = json.loads(out2.read_text())["bytes_to_target"]
    assert (t3["round"], t3["bytes_total"], t3["client_rounds"]) == (0, 0, 0)


def test_sim_scale_quick(tmp_path: Path, tiny_mask: Path) -> None:
    out = tmp_path / "sim_scale.json"
    load("sim_scale").main(["--quick", "--mask", str(tiny_mask), "--work", str(tmp_path / "w"), "--out", str(out)])
    doc = json.loads(out.read_text())
    res = doc["results"]
    assert [r["clients"] for r in res] == [10, 50]
    for r in res:
        s, a = r["sampled"], r["all"]
        assert s["clients"] == 2 * 5 and s["rounds"] == 2  # quick: 2 rounds of 5 clients
        assert a["clients"] == r["clients"] and a["rounds"] == 1
        for scen in (s, a):
            assert scen["steps"] == scen["clients"]  # T = 1
            assert finite_pos(scen["clients_per_s"]) and finite_pos(scen["clients_per_cpu_s"])
            shares = scen["share_client_sync"] + scen["share_client_steps"] + scen["share_server"]
            assert all(0 <= scen[x] <= 1 for x in ("share_client_sync", "share_client_steps", "share_server"))
            assert shares <= 1 + 1e-9
            # wire sizes: 12 B per step up, 16 B per replayed global update down, plus small headers
            assert 40 * scen["clients"] <= scen["bytes_up"] - 12 * scen["steps"] <= 200 * scen["clients"]
            assert 64 * scen["clients"] <= scen["bytes_down"] - 16 * scen["history_entries"] <= 512 * scen["clients"]
        assert a["history_entries"] > 0 and a["sync_cpu_s"] > 0  # everyone catches up on rounds 1-2
        assert r["k"] == mask_k(tiny_mask)
    assert "rss_per_extra_client_bytes" in res[1]


def test_accuracy_sweep_summary_spread() -> None:
    mod = load("accuracy_sweep")
    rows = [{"group": "grid", "partition": "iid", "arm": arm, "seed": s, "final_accuracy": acc, "client_steps": 10}
            for arm, accs in (("meerkat", (0.6, 0.7, 0.8)), ("random", (0.5, 0.5, 0.8))) for s, acc in enumerate(accs)]
    rows += [{"group": "sweep", "partition": "iid", "arm": "meerkat", "seed": 0, "local_steps": 5,
              "final_accuracy": 0.6, "client_steps": 10}]
    summ = mod.summarize(rows)
    m = summ["grid"]["iid"]["meerkat"]
    assert m["n"] == 3 and m["mean_accuracy"] == pytest.approx(0.7) and m["sd_accuracy"] == pytest.approx(0.1)
    r = summ["grid"]["iid"]["random"]
    assert r["paired_diff_vs_meerkat_mean"] == pytest.approx(-0.1)
    assert r["min_accuracy"] == 0.5 and r["max_accuracy"] == 0.8
    assert summ["sweep"]["5"]["n"] == 1


def test_accuracy_sweep_quick(tmp_path: Path, tiny_mask: Path) -> None:
    mod = load("accuracy_sweep")
    argv = ["--quick", "--mask", str(tiny_mask), "--out", str(tmp_path / "sweep")]
    doc = mod.main(argv)
    saved = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(doc["summary"]))
    grid = [r for r in saved["runs"] if r["group"] == "grid"]
    sweep = [r for r in saved["runs"] if r["group"] == "sweep"]
    assert {(r["partition"], r["arm"]) for r in grid} == {(p, a) for p in mod.PARTITIONS for a in mod.ARMS}
    assert [r["local_steps"] for r in sweep] == [1, 2] and [r["rounds"] for r in sweep] == [2, 1]
    # the T=2 sweep run has the grid's dirichlet/meerkat settings: one run directory, read back
    assert sweep[1]["status"] == "read back" and sum(r["status"] == "trained" for r in saved["runs"]) == 13
    k = mask_k(tiny_mask)
    for r in saved["runs"]:
        assert 0 <= r["final_accuracy"] <= 1 and 0 <= r["initial_accuracy"] <= 1
        assert r["client_steps"] == 4 * 2  # equal budget: 4 clients x 2 local steps, in every arm and T
        assert r["k"] == (TINY_D if r["arm"] == "full-zo" else k)  # random/magnitude at the mask's density
    assert set(saved["summary"]["grid"]) == set(mod.PARTITIONS)
    assert all(e["n"] == 1 for p in saved["summary"]["grid"].values() for e in p.values())
    # resumable: a second call reads every finished run back
    again = mod.main(argv)
    assert all(r["status"] == "read back" for r in again["runs"])
    # a bare --arms runs the sweep only
    only = mod.main(argv + ["--arms"])
    assert [(r["group"], r["local_steps"], r["status"]) for r in only["runs"]] == [("sweep", 1, "read back"),
                                                                                  ("sweep", 2, "read back")]
    # the full-zo arm holds z for the whole step (z_cache_mb); the sparse arms keep the default
    full_cfg = json.loads((Path(next(r["run"] for r in grid if r["arm"] == "full-zo")) / "config.json").read_text())
    assert full_cfg["train"]["z_cache_mb"] == 1024 and full_cfg["train"]["mask"] == "all"
    # a finished run is not read back for other settings (the run directory's name does not hold lr or eps)
    with pytest.raises(SystemExit, match=r"made with other settings: eps=0\.001 \(now 0\.002\)"):
        mod.main(argv + ["--eps", "0.002"])


@pytest.mark.slow
def test_scale_quick(tmp_path: Path) -> None:
    """benchmarks/scale.py --quick: three fresh subprocesses (inference, mask, train) on a small shape
    written as a local HF directory; the peaks must hold at least the weights, the mask and the
    training must agree on k, and the ratios must be what the recorded figures give."""
    out = tmp_path / "scale.json"
    doc = load("scale").main(["--quick", "--work", str(tmp_path / "w"), "--out", str(out)])
    saved = json.loads(out.read_text())
    (shape,) = saved["shapes"]
    assert shape["shape"] == "quick" and shape["d"] == doc["shapes"][0]["d"] > 0
    row = shape["dtypes"]["fp32"]
    inf, mask, train = row["inference"], row["mask"], row["train"]
    weights = 4 * shape["d"]
    for phase in (inf, mask, train):
        assert not phase.get("failed"), phase
        assert phase["param_bytes"] == weights and phase["peak_rss"] > weights
        assert "meerkat_core" in phase["meerkat_core"]
    from meerkat_core.mask import k_for_density

    k = k_for_density(1e-3, shape["d"])
    assert mask["k"] == train["k"] == k and mask["method"] == "sensitivity"
    assert train["round_steps"] == 2 * 2  # clients x local steps
    assert train["setup_peak"] <= train["peak_rss"] and train["steady_peak"] <= train["peak_rss"]
    assert row["train_peak_over_inference_peak"] == pytest.approx(train["peak_rss"] / inf["peak_rss"])
    assert row["mask_peak_over_fp32_weights"] == pytest.approx(mask["peak_rss"] / weights)
    assert finite_pos(train["step_over_two_forwards"]) and finite_pos(mask["mask_s"])
    assert row["estimate"]["score_groups"] == 1 and row["skipped"] == {}
    # a budget nothing fits: the phases are reported from their estimates, not run
    tiny = load("scale").main(["--quick", "--work", str(tmp_path / "w"), "--budget-gib", "0.01",
                               "--out", str(tmp_path / "none.json")])
    skipped = tiny["shapes"][0]["dtypes"]["fp32"]["skipped"]
    assert set(skipped) == {"inference", "mask", "train"} and all("estimated peak" in v for v in skipped.values())


def test_precision_quick(tmp_path: Path, tiny_mask: Path) -> None:
    out = tmp_path / "precision.json"
    load("precision").main(["--quick", "--mask", str(tiny_mask), "--work", str(tmp_path / "w"), "--json", str(out)])
    doc = json.loads(out.read_text())
    ref = doc["errors"]["reference"]
    assert ref["k"] == mask_k(tiny_mask) and len(ref["g"]) == 6 and all(math.isfinite(g) for g in ref["g"])
    rows = {(r["dtype"], r["mode"]): r for r in doc["errors"]["rows"]}
    assert set(rows) == {(d, m) for d in ("bf16", "fp16") for m in ("paired", "carriers", "rounded")}
    for (dtype, mode), r in rows.items():
        assert r["n"] == 6 and 0 <= r["median"] <= r["p90"] and 0 <= r["sign_flips"] <= 6
        assert (r["carriers"] is not None) == (mode != "rounded")
        assert (r["paired"] is not None) == (mode == "paired")
        assert (r["erased_share"] is not None) == (mode == "rounded")
    assert rows[("bf16", "rounded")]["erased_share"] > rows[("fp16", "rounded")]["erased_share"]
    # the paired forward's g is the closest to fp32's (tiny-llama: about 0.3% against 6% for bf16 carriers)
    assert rows[("bf16", "paired")]["median"] < 0.5 * rows[("bf16", "carriers")]["median"]
    timing = {r["dtype"]: r for r in doc["timing"]["rows"]}
    assert set(timing) == {"fp32", "bf16", "fp16", "bf16-carriers", "fp16-carriers", "bf16-rounded", "fp16-rounded"}
    for r in timing.values():
        assert finite_pos(r["two_forwards_s"]) and finite_pos(r["step_over_two_forwards_cpu"])
        assert len(r["batch_shapes"]) == 2 and all(b[0] == 8 for b in r["batch_shapes"])  # every --batches batch timed
    assert len(doc["timing"]["raw"]["fp32"]["step"]) == 2  # one time per pass (--reps 2 under --quick)
    assert timing["fp32"]["fp32_step_over_step"] == pytest.approx(1.0)
    acc = doc["accuracy"]
    assert {(r["dtype"], r["seed"]) for r in acc["rows"]} == {("fp32", 0), ("bf16", 0)}
    assert all(0 <= r["final_accuracy"] <= 1 and r["client_steps"] == 4 for r in acc["rows"])
    assert "diff_vs_fp32" in acc["summary"]["sentiment2-small"]["bf16"]
    assert doc["cpu_bf16"]["auto"] in ("fp32", "bf16")


def test_precision_sources_emulates_the_linear_layers(tmp_path: Path, tiny_mask: Path) -> None:
    """precision.py --sections sources: each variant's g against the fp32 g at the same eps; the emulated
    variants really replace the low-precision linear layers (their g differ from the carriers' own)."""
    out = tmp_path / "sources.json"
    doc = load("precision").main(["--quick", "--mask", str(tiny_mask), "--work", str(tmp_path / "w"), "--json", str(out),
                                  "--sections", "sources", "--dtypes", "fp32", "bf16", "--eps", "1e-3", "3e-3"])
    assert json.loads(out.read_text())["sources"]["rows"] == doc["sources"]["rows"]
    rows = {(r["variant"], r["eps"]): r for r in doc["sources"]["rows"]}
    assert set(rows) == {(v, e) for v in ("as is", "exact inputs", "exact outputs") for e in (1e-3, 3e-3)}
    assert set(doc["sources"]["reference"]) == {"0.001", "0.003"}
    for r in rows.values():
        assert r["dtype"] == "bf16" and r["n"] == 6 and 0 <= r["median"] <= r["p90"] and math.isfinite(r["p90"])
    for eps in (1e-3, 3e-3):
        plain = rows[("as is", eps)]["g"]
        assert rows[("exact inputs", eps)]["g"] != plain and rows[("exact outputs", eps)]["g"] != plain


def test_paper_protocol_selection_verdicts_and_plan(tmp_path: Path, capsys) -> None:
    """benchmarks/paper_protocol.py without a model: the lr rule (best validation mean, ties to the smaller
    lr, only complete cells), the verdicts, the partition names, the validation slice and --plan's counts."""
    mod = load("paper_protocol")
    args = mod.parse(["--seeds", "0", "1", "--lr-meerkat", "3e-4", "1e-4", "--lr-random", "1e-2", "5e-2"])
    row = {"task": "t", "partition": "iid", "steps": 10, "val_curve": []}
    rows = [{**row, "arm": "meerkat", "lr": lr, "seed": s, "val_final": v}
            for lr, vals in ((1e-4, (0.6, 0.7)), (3e-4, (0.7, 0.6))) for s, v in enumerate(vals)]
    rows += [{**row, "arm": "random", "lr": 1e-2, "seed": 0, "val_final": 0.9}]  # 3 of its 4 runs missing
    meerkat, random_ = mod.select(args, rows)
    assert meerkat["val_mean"] == pytest.approx({"0.0001": 0.65, "0.0003": 0.65})
    assert meerkat["lr"] == 1e-4 and meerkat["edge"]  # a tie goes to the smaller lr
    assert "lr" not in random_ and random_["missing"] == [[1e-2, 1], [5e-2, 0], [5e-2, 1]]
    rows[2]["val_final"] = 0.8  # now 3e-4 wins, whatever the order of the rows
    assert mod.select(args, rows)[0]["lr"] == 3e-4 and mod.select(args, rows[::-1])[1]["lr"] == 3e-4
    assert [mod.verdict(*v) for v in ((0.01, 0.02, 3), (0.03, 0.01, 3), (-0.03, 0.01, 3), (0.0, 0.0, 1),
                                      (math.nan, math.nan, 0))] == ["tie", "held", "not held", "tie", "missing"]
    a = {"arm": "meerkat", "steps": 10, "lr": 1e-4, "test": {"0": 0.8, "1": 0.7, "2": 0.9}}
    b = {"arm": "full-zo", "steps": 10, "lr": 1e-5, "test": {"0": 0.7, "1": 0.7}}
    pair = mod.paired("c", a, b, task="t")
    assert pair["diffs"] == pytest.approx([0.1, 0.0]) and pair["n"] == 2 and pair["verdict"] == "tie"
    assert mod.partition_settings("dirichlet0.1") == ("dirichlet", {"alpha": 0.1})
    assert mod.partition_settings("pathological2") == ("pathological", {"labels_per_client": 2})
    assert mod.partition_settings("mixed3") == ("mixed", {"extreme_clients": 3})
    for bad in ("dirichlet", "pathological1.5", "label-skew"):
        with pytest.raises(ValueError):
            mod.partition_settings(bad)
    labels = [0] * 10 + [1] * 4 + [2] * 6
    val = mod.stratified_slice(labels, 3, 0)
    assert [labels[i] for i in val] == [0, 1, 2, 0, 1, 2]  # at most half of a class, interleaved
    assert val == mod.stratified_slice(labels, 3, 0) and len(set(val)) == 6
    # --plan on the default grid: counts only, nothing written
    doc = mod.main(["--plan", "--out", str(tmp_path / "p")])
    assert not (tmp_path / "p").exists()
    per_task = {"grid": 5 * 4 * 3 * 3, "sweep": 3 * 3 * 3 * 3 - 3 * 3 * 3, "vp": 3 * 3 * 3}  # T=10 sweep runs = grid's
    assert {(r["section"], r["runs"]) for r in doc["slices"]} == {(s, n) for s, n in per_task.items()}
    vp_steps = 3 * (1000 + 2 * (10 * 100 + 9 * 10 * 10))  # meerkat, then meerkat-vp and vp-random (calibration round)
    assert doc["total"]["runs"] == 2 * sum(per_task.values())
    assert doc["total"]["client_steps"] == 2 * ((per_task["grid"] + per_task["sweep"]) * 1000 + 3 * vp_steps)
    assert "1000 client steps per run" in capsys.readouterr().out


@pytest.mark.slow
def test_paper_protocol_quick(tmp_path: Path, tiny_mask: Path) -> None:
    """benchmarks/paper_protocol.py --quick: every section on tiny-llama; the validation slice is disjoint
    from the clients' rows, every cell is selected and scored on the test split, every claim reports, a
    second call reads everything back, a finished run without its summary is resumed to the same state."""
    mod = load("paper_protocol")
    out = tmp_path / "pp"
    argv = ["--quick", "--mask", str(tiny_mask), "--out", str(out)]
    doc = mod.main(argv)
    assert doc["val_task_check"]["same_k_vector"] and doc["val_task_check"]["same_losses"]
    runs = doc["runs"]
    assert len(runs) == 2 * 8 + 2 * 2 + 3 * 2 and all(r["status"] == "trained" for r in runs)
    for r in runs:  # 4 clients x 2 steps; meerkat-vp: a calibration round of 8 steps each, then 1 round of T = 1
        assert r["client_steps"] == (4 * 8 + 4 * 1 if r["arm"] in ("meerkat-vp", "vp-random") else 4 * 2), r["run"]
        assert r["val_n"] == 3 * 8 and 0 <= r["val_final"] <= 1
    expected = {(p, a, 1) for p in ("iid", "pathological1") for a in mod.ARMS}
    expected |= {("dirichlet0.1", "meerkat", t) for t in (1, 2)} | {("mixed2", a, 1) for a in
                                                                    ("meerkat", "meerkat-vp", "vp-random")}
    cells = doc["cells"]
    assert {(c["partition"], c["arm"], c["steps"]) for c in cells} == expected
    for c in cells:
        assert c["lr"] in c["lr_grid"] and len(c["lr_grid"]) == 2 and c["test_n"] == mod.QUICK_TEST
        assert c["val_mean"][f"{c['lr']:g}"] == max(c["val_mean"].values())
    assert all(doc["claims"][k] for k in "12345")
    assert {c["claim"] for c in doc["claims"]["5"]} == {"meerkat-vp >= meerkat", "meerkat-vp >= vp-random"}
    # the clients never see a validation row; train + validation = the task's train rows
    tasks = doc["validation"]["tasks"]["sentiment3-small"]
    val = [json.loads(line) for line in (out / "tasks" / "sentiment3-small-val-val.jsonl").read_text().splitlines()]
    train = [json.loads(line) for line in (out / "tasks" / "sentiment3-small-val-train.jsonl").read_text().splitlines()]
    assert len(val) == 24 and len(train) == mod.QUICK_TRAIN - 24 and not {r["text"] for r in val} & {r["text"] for r in train}
    assert json.loads(Path(tasks["val"]).read_text())["data"]["files"]["test"] == "sentiment3-small-val-val.jsonl"
    manifest = json.loads((out / "partitions" / "sentiment3-small" / "iid-seed0" / "manifest.json").read_text())
    assert manifest["source"]["task"] == "sentiment3-small-val"
    # resumable: everything read back, the same tables
    again = mod.main(argv)
    assert all(r["status"] == "read back" for r in again["runs"])
    assert json.loads(json.dumps(again["cells"])) == json.loads(json.dumps(cells))
    run = Path(runs[0]["run"])
    crc = json.loads((run / "summary.json").read_text())["final_state_crc"]
    (run / "summary.json").unlink()
    third = mod.main(argv + ["--sections", "grid", "--partitions", "iid", "--arms", "meerkat"])
    assert [r["status"] for r in third["runs"]] == ["resumed", "read back"]
    assert json.loads((run / "summary.json").read_text())["final_state_crc"] == crc
    with pytest.raises(SystemExit, match=r"made with other settings: eps=0\.001 \(now 0\.002\)"):
        mod.main(argv + ["--eps", "0.002"])


def test_vp_detector_task_lr_and_cache_settings(tmp_path: Path) -> None:
    """--task-lr gives one task its own lr (the others keep --lr), bad items are refused, and a cached
    calibration run made with another lr or client count is refused, not scored as if it matched."""
    mod = load("vp_detector")
    args = mod.parse(["--tasks", "sentiment2", "sotu_era", "--task-lr", "sotu_era=3e-5", "--lr", "1e-4"])
    assert args.task_lr == {"sotu_era": 3e-5}
    assert mod.run_settings(args, "sotu_era")["lr"] == 3e-5 and mod.run_settings(args, "sentiment2")["lr"] == 1e-4
    for bad in (["bbc_news=1e-4"], ["sotu_era"], ["sotu_era=-1"], ["sotu_era=x"]):
        with pytest.raises(SystemExit, match="--task-lr"):
            mod.parse(["--tasks", "sentiment2", "sotu_era", "--task-lr", *bad])
    want = mod.run_settings(args, "sotu_era")
    doc = {**{k: v for k, v in want.items() if k != "num_clients"}, "clients": {str(c): {} for c in range(13)}}
    assert mod.check_cached(doc, want, tmp_path / "c.json") is doc
    with pytest.raises(SystemExit, match=r"c\.json: cached with other settings: lr 0\.0001 \(asked 3e-05\)"):
        mod.check_cached({**doc, "lr": 1e-4}, want, tmp_path / "c.json")
    with pytest.raises(SystemExit, match=r"num_clients 12 \(asked 13\)"):
        mod.check_cached({**doc, "clients": {str(c): {} for c in range(12)}}, want, tmp_path / "c.json")


def test_sotu_era_task_file_loads(tmp_path: Path) -> None:
    """vp_detector's held-out 4-class task: the file it writes is a valid task file (only task keys; the
    builder's version and counts beside it) whose splits hold the counts it recorded, every era in both."""
    from meerkat_core.tasks import get_task, load_task_data

    _sotu_era = load("_sotu_era")
    path = _sotu_era.write_task(tmp_path / "sotu")
    task = get_task(str(path))
    data = load_task_data(task)
    build = json.loads((tmp_path / "sotu" / "build.json").read_text())
    assert build["builder_format_version"] == _sotu_era.FORMAT_VERSION
    assert {"train": len(data.train), "test": len(data.test)} == build["counts"]
    assert len(task.label_names) == 4
    for ds in (data.train, data.test):
        assert sorted(set(int(x) for x in ds["label"])) == [0, 1, 2, 3]


def test_flower_latency_brackets_the_simulation_with_in_process_runs() -> None:
    """The ratio arm's in-process baseline runs before and after it (no flwr needed to plan the order)."""
    mod = load("flower_latency")
    assert mod.run_order(["inproc-3", "deploy-tiny", "inproc-100", "sim-100"]) == [
        "inproc-3", "deploy-tiny", "inproc-100", "sim-100", "inproc-100"]
    assert mod.run_order(["sim-100"]) == ["sim-100"]  # no in-process arm asked for: no extra run
    assert mod.steady_rounds([9.0, 1.0, 2.0, 5.0]) == [1.0, 2.0]
    assert mod.steady_rounds([3.0, 4.0]) == [3.0, 4.0]


def test_host_memory_quick(tmp_path: Path, tiny_mask: Path, capsys) -> None:
    """Both allocator arms run in their own process on the paired bf16 step and report faults and times."""
    out = tmp_path / "host_memory.json"
    load("host_memory").main(["--quick", "--mask", str(tiny_mask), "--work", str(tmp_path / "w"), "--json", str(out)])
    doc = json.loads(out.read_text())
    assert [r["arm"] for r in doc["rows"]] == ["default", "meerkat"]
    for r in doc["rows"]:
        assert r["coords_paired"] and r["steps"] == 2  # --quick: 2 batches x 1 rep, on the paired forward
        assert r["faults_per_step"] >= 0 and r["faults_per_two_forwards"] >= 0
        assert finite_pos(r["step_s"]) and finite_pos(r["two_forwards_s"]) and finite_pos(r["peak_rss_bytes"])
        assert r["step_over_two_forwards"] == pytest.approx(r["step_s"] / r["two_forwards_s"])
    assert set(doc["summary"]) == {"default", "meerkat"}
    assert "step/2fwd" in capsys.readouterr().out
