"""``meerkat tasks show``: what a task definition builds: prompts, label-word tokens, class counts."""

from __future__ import annotations

from typing import Any

from meerkat_core.config.tasks import TaskShowConfig
from meerkat_core.errors import MeerkatInputError
from meerkat_core.models import DEFAULT_MODEL, load_tokenizer
from meerkat_core.tasks.registry import get_task
from meerkat_core.tasks.sources import load_task_data
from meerkat_core.tasks.spec import render_prompts


def describe_task(cfg: TaskShowConfig) -> dict[str, Any]:
    """The resolved prompts of the first ``cfg.n`` rows of ``cfg.split``, each label word's tokens under
    ``cfg.model``'s tokenizer (default: ``DEFAULT_MODEL``'s) and the class counts of both splits. A hub
    dataset that cannot be read here (offline) is reported in ``data_error``; the rest is still shown."""
    cfg.validate()
    name, n, model, split = cfg.task, cfg.n, cfg.model or DEFAULT_MODEL, cfg.split
    spec = get_task(name)
    tok = load_tokenizer(model)
    words = []
    for label, word in zip(spec.label_names, spec.label_words):
        ids = tok(word, add_special_tokens=False).input_ids
        words.append({"label": label, "word": word, "token_ids": ids, "tokens": [tok.decode([i]) for i in ids]})
    doc: dict[str, Any] = {
        "name": spec.name, "description": spec.description, "template": spec.template, "fields": list(spec.fields),
        "columns": {f: spec.column_of(f) for f in spec.fields}, "label_column": spec.label_column,
        "preprocess": {k: list(v) for k, v in spec.preprocess.items()}, "source": spec.source,
        "origin": spec.origin, "tokenizer": model, "label_words": words,
        "single_token": all(len(w["token_ids"]) == 1 for w in words), "examples": [], "class_counts": {},
        "data_error": None,
    }
    try:
        data = load_task_data(spec)
    except MeerkatInputError as exc:
        if spec.data.kind != "hub":  # local data that does not fit the task is an error; an absent hub is not
            raise
        doc["data_error"] = str(exc)
        return doc
    for s in ("train", "test"):
        labels = list(data.split(s)["label"])
        doc["class_counts"][s] = {lab: labels.count(i) for i, lab in enumerate(spec.label_names)}
    ds = data.split(split)
    head = ds.select(range(min(n, len(ds))))
    for prompt, y in zip(render_prompts(spec, head), head["label"]):
        ids = tok(prompt, add_special_tokens=False).input_ids
        doc["examples"].append({"split": split, "prompt": prompt, "label": spec.label_names[y],
                                "label_word": spec.label_words[y], "prompt_tokens": len(ids)})
    return doc
