"""Task files (docs/TASKS.md): strict validation, multi-field templates with preprocessing, data sources
(local files per split, save_to_disk), multi-token label words in scoring and training, `tasks show`,
and `partition --data` followed by `train`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from meerkat_core.encoding import candidate_batch, encode_split, render_prompts
from meerkat_core.errors import MeerkatInputError
from meerkat_core.scoring import class_scores, multi_token_classification_loss
from meerkat_core.tasks import get_task, load_task_data
from tests.conftest import run_cli, train_tiny

REVIEWS = [("a delight from start to finish.", "pos"), ("dull and far too long.", "neg"),
           ("the cast is wonderful.", "pos"), ("I walked out halfway.", "neg"), ("sharp, funny, warm.", "pos"),
           ("a mess of a plot.", "neg"), ("see it twice.", "pos"), ("nothing works here.", "neg")]
MULTI_WORDS = '[" absolutely wonderful", " utterly terrible"]'


def _csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("review,topic,sentiment\n" + "".join(f'"{t}",Film,{y}\n' for t, y in rows))
    return path


def _task(tmp: Path, body: str, name: str = "task.toml") -> Path:
    _csv(tmp / "train.csv", REVIEWS)
    _csv(tmp / "test.csv", REVIEWS[:4])
    p = tmp / name
    p.write_text(body)
    return p


GOOD = f'''name = "reviews"
template = "Topic: {{topic}}. {{review}} Overall it was"
label_names = ["neg", "pos"]
label_words = {MULTI_WORDS}
label_column = "sentiment"
[preprocess]
topic = ["lower"]
review = ["strip_period", "upper_first"]
[data]
files = {{ train = "train.csv", test = ["test.csv"] }}
'''


def test_multi_field_template_with_preprocessing(tmp_path: Path) -> None:
    spec = get_task(str(_task(tmp_path, GOOD)))
    data = load_task_data(spec)
    assert spec.fields == ("topic", "review") and data.train.column_names == ["topic", "review", "label"]
    assert render_prompts(spec, data.train.select([0, 1])) == [
        "Topic: film. A delight from start to finish Overall it was",
        "Topic: film. Dull and far too long Overall it was",
    ]
    assert data.train["label"][:2] == [1, 0] and len(data.test) == 4


def test_save_to_disk_source(tmp_path: Path) -> None:
    import datasets

    rows = {"sentence": [t for t, _ in REVIEWS], "label": [int(y == "pos") for _, y in REVIEWS]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows),
                          "validation": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "saved"))
    p = tmp_path / "t.toml"
    p.write_text('base = "sst2"\n[data]\ndisk = "saved"\nsplits = { test = "validation" }\n')
    data = load_task_data(get_task(str(p)))
    assert len(data.train) == 8 and data.test["label"] == rows["label"]
    assert render_prompts(get_task(str(p)), data.test.select([0]))[0] == "a delight from start to finish. It was"


def test_old_json_task_files_still_work(tmp_path: Path) -> None:
    _csv(tmp_path / "a.csv", REVIEWS)
    p = tmp_path / "old.json"
    p.write_text(json.dumps({"label_names": ["neg", "pos"], "label_words": [" bad", " good"], "text_column": "review",
                             "label_column": "sentiment", "train_files": "a.csv", "test_files": ["a.csv"]}))
    spec = get_task(str(p))
    assert spec.template == "{text} It was" and spec.name == "old"
    data = load_task_data(spec)
    assert render_prompts(spec, data.train.select([1]))[0] == "dull and far too long. It was"


NO_PRE = GOOD.replace('[preprocess]\ntopic = ["lower"]\nreview = ["strip_period", "upper_first"]\n', "")
BAD_FILES = {
    "number.json": ("42", "holds a int, not a table"),
    "list.json": ("[1, 2]", "holds a list, not a table"),
    "string.json": ('"sst2"', "holds a str, not a table"),
    "typo.toml": (GOOD.replace("template =", "templat ="), "unknown key 'templat' (did you mean 'template'?)"),
    "names.toml": (GOOD.replace('label_names = ["neg", "pos"]', 'label_names = "neg pos"'), "'label_names' must be a list"),
    "nowords.toml": (GOOD.replace(f"label_words = {MULTI_WORDS}", 'label_words = [" bad"]'),
                     "2 label_names but 1 label_words; give one label word per label"),
    "foo.toml": (GOOD.replace("{review}", "{review} {foo}"), "template field {foo} reads column 'foo', which the data lacks"),
    "txt.toml": (NO_PRE.replace("{review}", "{reveiw}"), "did you mean 'review'?"),
    "stray.toml": (GOOD.replace("Overall it was", "Overall { it was"), "stray '{' or '}'"),
    "nofield.toml": (NO_PRE.replace("Topic: {topic}. {review} Overall it was", "Overall it was"), "names no field"),
    "attr.toml": (GOOD.replace("{topic}", "{topic.lower}"), "is not a plain column name"),
    "step.toml": (GOOD.replace('"lower"', '"lowercase"'), "unknown key 'lowercase' (did you mean 'lower'?)"),
    "nodata.toml": (GOOD.split("[data]")[0], "missing [data]"),
    "twodata.toml": (GOOD + 'hub = "x/y"\n', "exactly one of hub"),
    "badtoml.toml": ("name = [\n", "not valid TOML"),
    "base.toml": ('base = "sst3"\n', "did you mean 'sst2'?"),
}


@pytest.mark.parametrize("fname", sorted(BAD_FILES))
def test_bad_task_files_exit_2_with_one_line(fname: str, tmp_path: Path) -> None:
    body, want = BAD_FILES[fname]
    p = _task(tmp_path, body, fname)
    with pytest.raises(MeerkatInputError) as info:
        load_task_data(get_task(str(p)))
    assert want in str(info.value) and str(p) in str(info.value)
    for args in (["eval", "--model", "tiny-llama", "--task", str(p)], ["tasks", "show", str(p)]):
        proc = run_cli(*args, check=False)
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), (fname, proc.stderr)
        assert "Traceback" not in proc.stderr and str(p) in lines[0]


def test_bad_task_file_writes_nothing_and_loads_no_model(tmp_path: Path, tiny_mask: Path, tiny_partition: Path) -> None:
    p = _task(tmp_path, GOOD.replace("template =", "templat ="), "typo.toml")
    out = tmp_path / "run"
    proc = run_cli("train", "--model", "no/such-model", "--mask", str(tiny_mask), "--partition", str(tiny_partition),
                   "--task", str(p), "--out", str(out), check=False, env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "unknown key 'templat'" in proc.stderr and not out.exists()


def _brute_force_scores(model, enc, indices: list[int]) -> torch.Tensor:
    """Each (prompt, word) alone, unpadded: mean over the word's tokens of log p(token | everything before)."""
    rows = []
    for i in indices:
        row = []
        for word in enc.label_words.token_ids:
            ids = torch.tensor([enc.prompts[i] + list(word)])
            logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
            n = len(enc.prompts[i])
            row.append(torch.stack([logp[n - 1 + j, t] for j, t in enumerate(word)]).mean())
        rows.append(torch.stack(row))
    return torch.stack(rows)


def test_multi_token_scores_and_loss_match_brute_force(tmp_path: Path, tiny_loaded) -> None:
    spec = get_task(str(_task(tmp_path, GOOD.replace(MULTI_WORDS, '[" bad", " absolutely wonderful"]'))))
    enc = encode_split(tiny_loaded.tokenizer, spec, load_task_data(spec).train)
    lens = [len(w) for w in enc.label_words.token_ids]
    assert not enc.label_words.single_token and len(set(lens)) == 2  # words of different lengths
    pad = tiny_loaded.tokenizer.pad_token_id
    idx = list(range(8))
    with torch.inference_mode():
        got = class_scores(tiny_loaded.model, enc, idx, pad)
        want = _brute_force_scores(tiny_loaded.model, enc, idx)
        batch = candidate_batch(enc, idx, pad)
        labels = torch.tensor(enc.labels)
        loss = multi_token_classification_loss(tiny_loaded.model, batch, labels, 2)
        again = multi_token_classification_loss(tiny_loaded.model, batch, labels, 2)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(loss, -want.log_softmax(-1)[torch.arange(8), labels].mean(), rtol=0, atol=1e-5)
    assert loss.item() == again.item()  # deterministic: the ZO step calls it twice


def test_partition_data_then_train_multi_token_task(tmp_path: Path, tiny_mask: Path) -> None:
    """`partition --data` + a task file over the same CSV trains (manifest's file hashes), with multi-token
    words and the default classification loss; the run evaluates and `tasks show` lists the word tokens."""
    p = _task(tmp_path, GOOD)
    part = tmp_path / "part"
    run_cli("partition", "--data", str(tmp_path / "train.csv"), "--text-column", "review", "--label-column",
            "sentiment", "--clients", "2", "--scheme", "iid", "--seed", "0", "--out", str(part))
    run = tmp_path / "run"
    summary = train_tiny(tiny_mask, part, str(p), run, rounds=2)
    assert summary["total_client_steps"] == 8 and summary["skipped_steps"] == 0 and summary["eval_n"] == 4
    losses = [v for ln in (run / "ledger.jsonl").read_text().splitlines() for v in json.loads(ln).get("losses", [])]
    assert len(losses) == 8 and all(0 < v < 5 for v in losses)  # CE over 2 candidates, not over the vocabulary
    ev = json.loads(run_cli("eval", "--checkpoint", str(run), "--json").stdout)
    assert ev["task"] == "reviews" and ev["accuracy"] == pytest.approx(summary["final_accuracy"], abs=1e-9)
    shown = json.loads(run_cli("tasks", "show", str(p), "--n", "2", "--json").stdout)
    assert not shown["single_token"] and all(len(w["token_ids"]) > 1 for w in shown["label_words"])
    assert shown["examples"][0]["prompt"] == "Topic: film. A delight from start to finish Overall it was"
    assert shown["class_counts"] == {"train": {"neg": 4, "pos": 4}, "test": {"neg": 2, "pos": 2}}
    # a different CSV under the same name is still refused
    _csv(tmp_path / "train.csv", REVIEWS[::-1])
    proc = run_cli("train", "--model", "tiny-llama", "--mask", str(tiny_mask), "--partition", str(part), "--task", str(p),
                   "--out", str(tmp_path / "run2"), check=False)
    assert proc.returncode == 2 and "made from another dataset" in proc.stderr
