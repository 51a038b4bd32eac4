"""The seven paper tasks (SST-2, AG News, Yelp polarity, BoolQ, RTE, WSC, WiC), each on a few rows written
here in its hub dataset's column schema, as local files: the exact prompt of one row, the label mapping,
then partition -> eval -> one training round on tiny-llama through the CLI (a task file ``base = NAME``
with local ``[data] files`` runs the built-in definition on them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from meerkat_core.encoding import render_prompts
from meerkat_core.tasks import BUILTIN_TASKS, PAPER_TASKS, get_task, load_task_data
from tests.conftest import run_cli, train_tiny

# One row per task in the hub schema, the prompt it must give, and its class index.
ROWS: dict[str, tuple[dict[str, Any], str, int]] = {
    "sst2": ({"idx": 0, "sentence": "a gorgeous , witty , seductive movie . ", "label": 1},
             "a gorgeous , witty , seductive movie . It was", 1),
    "ag_news": ({"text": "Wall St. Bears Claw Back Into the Black (Reuters) Short-sellers are seeing green again.", "label": 2},
                "Wall St. Bears Claw Back Into the Black (Reuters) Short-sellers are seeing green again. This article is about", 2),
    "yelp_polarity": ({"text": " The soup was cold and the waiter ignored us. \n", "label": 0},
                      "The soup was cold and the waiter ignored us. It was", 0),
    "boolq": ({"question": "is the pacific ocean larger than the atlantic", "answer": True,
               "passage": "The Pacific Ocean is the largest of the Earth's oceanic divisions."},
              "The Pacific Ocean is the largest of the Earth's oceanic divisions. Is the pacific ocean larger than the atlantic?\n", 1),
    "rte": ({"premise": "The cat sat on the mat all afternoon.", "hypothesis": "A cat was on a mat.", "idx": 0, "label": 0},
            'The cat sat on the mat all afternoon.\nDoes this mean that "A cat was on a mat." is true? Yes or No?\n', 0),
    "wsc": ({"text": "Mark told Pete many lies about himself, which Pete included in his book. He should have been more skeptical.",
             "span1_index": 5, "span2_index": 14, "span1_text": "Pete", "span2_text": "He", "idx": 0, "label": 1},
            "Mark told Pete many lies about himself, which Pete included in his book. He should have been more skeptical.\n"
            'In the previous sentence, does the pronoun "he" refer to Pete? Yes or No?\n', 1),
    "wic": ({"word": "bank", "sentence1": "She sat on the river bank.", "sentence2": "He robbed the bank.",
             "start1": 21, "start2": 12, "end1": 25, "end2": 16, "idx": 0, "label": 0},
            'Does the word "bank" have the same meaning in these two sentences? Yes, No?\nShe sat on the river bank.\n'
            "He robbed the bank.\n", 0),
}
LABEL_WORDS = {"sst2": (" terrible", " great"), "boolq": ("No", "Yes"), "rte": ("Yes", "No"), "wsc": ("No", "Yes"),
               "wic": ("No", "Yes")}


def _rows(task: str, n: int) -> list[dict[str, Any]]:
    """``n`` rows: the fixed one, then variants cycling through the classes (texts made distinct)."""
    row, _, _ = ROWS[task]
    spec = BUILTIN_TASKS[task]
    out = [dict(row)]
    text_col = spec.fields[0]
    for i in range(1, n):
        r = dict(row)
        r[text_col] = f"{row[text_col]} (variant {i})"
        y = i % spec.num_classes
        r[spec.label_column] = bool(y) if isinstance(row[spec.label_column], bool) else y
        out.append(r)
    return out


def _local_task(tmp: Path, task: str) -> Path:
    d = tmp / task
    d.mkdir()
    for split, n in (("train", 8), ("validation", 4)):
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(task, n)))
    test_split = "validation" if BUILTIN_TASKS[task].data.test_split == "validation" else "test"
    if test_split == "test":
        (d / "validation.jsonl").rename(d / "test.jsonl")
    path = d / "task.toml"
    path.write_text(f'base = "{task}"\nname = "{task}-local"\n[data]\n'
                    f'files = {{ train = "train.jsonl", {test_split} = "{test_split}.jsonl" }}\n'
                    + (f'splits = {{ test = "{test_split}" }}\n' if test_split != "test" else ""))
    return path


def test_all_seven_paper_tasks_are_listed() -> None:
    rows = json.loads(run_cli("tasks", "--json").stdout)
    names = {r["name"] for r in rows}
    assert set(PAPER_TASKS) <= names and len(PAPER_TASKS) == 7
    by = {r["name"]: r for r in rows}
    assert by["rte"]["source"] == "hub:aps/super_glue/rte" and by["boolq"]["source"] == "hub:google/boolq"


@pytest.mark.parametrize("task", PAPER_TASKS)
def test_paper_task_prompt_labels_eval_and_one_round(task: str, tmp_path: Path, tiny_mask: Path) -> None:
    spec_file = _local_task(tmp_path, task)
    spec = get_task(str(spec_file))
    base = BUILTIN_TASKS[task]
    assert (spec.template, spec.label_words, spec.preprocess) == (base.template, base.label_words, base.preprocess)
    if task in LABEL_WORDS:
        assert spec.label_words == LABEL_WORDS[task]
    data = load_task_data(spec)
    row, prompt, label = ROWS[task]
    assert render_prompts(spec, data.train.select([0]))[0] == prompt
    assert data.train["label"][0] == label
    assert data.train["label"][:4] == [label] + [i % spec.num_classes for i in range(1, 4)]
    assert len(data.test) == 4

    part = tmp_path / "part"
    run_cli("partition", "--task", str(spec_file), "--clients", "2", "--scheme", "iid", "--seed", "0", "--out", str(part))
    ev = json.loads(run_cli("eval", "--model", "tiny-llama", "--task", str(spec_file), "--json").stdout)
    assert ev["n"] == 4 and ev["task"] == f"{task}-local" and sum(map(sum, ev["confusion"])) == 4
    run = tmp_path / "run"
    summary = train_tiny(tiny_mask, part, str(spec_file), run, rounds=1)
    assert summary["total_client_steps"] == 4 and summary["skipped_steps"] == 0 and summary["eval_n"] == 4
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["loss"] == "classification"  # the default
    # eval --checkpoint RUN with neither --task nor --model: the run's task and model
    ev_run = json.loads(run_cli("eval", "--checkpoint", str(run), "--json").stdout)
    assert ev_run["task"] == f"{task}-local" and ev_run["model"] == "tiny-llama" and ev_run["n"] == 4
    assert ev_run["accuracy"] == pytest.approx(summary["final_accuracy"], abs=1e-9)
