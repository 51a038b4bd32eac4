"""Loading a task's data: the built-in offline corpus, local csv/jsonl/parquet files, or the hub.

Every loader returns ``datasets.Dataset`` objects with exactly two columns: ``text`` (str) and
``label`` (int in 0..C-1), so the rest of meerkat never sees source-specific column names.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from meerkat_core.errors import MeerkatInputError
from meerkat_core.hashing import sha256_json
from meerkat_core.paths import hub_offline
from meerkat_core.tasks.packaged import read_packaged
from meerkat_core.tasks.spec import TaskSpec

LOCAL_SUFFIXES = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


@dataclass
class TaskData:
    task: TaskSpec
    train: Any  # datasets.Dataset(text, label)
    test: Any  # datasets.Dataset(text, label)

    def split(self, name: str) -> Any:
        if name not in ("train", "test"):
            raise MeerkatInputError(f"--split {name}: expected train or test")
        return self.train if name == "train" else self.test


def balanced_split(
    labels: Sequence[int], num_classes: int, per_class: int, seed: int, balance_train: bool = True
) -> tuple[list[int], list[int]]:
    """Seeded (train, test) index lists, both class-balanced. The test set holds ``per_class`` of each
    class, interleaved class by class so that every prefix of it (``--limit``) is balanced too; the
    train split keeps as many of each class as the rarest class has left (the rest is dropped), so a
    model fine-tuned on it does not simply learn the majority label (label skew is what the
    partitioner is for). With ``balance_train=False`` the train split keeps all the rest."""
    rng = random.Random(seed)
    by_class: list[list[int]] = [[] for _ in range(num_classes)]
    for i, y in enumerate(labels):
        by_class[y].append(i)
    test_lists = []
    for idx in by_class:
        rng.shuffle(idx)
        test_lists.append(idx[: min(per_class, len(idx) // 2)])
    n_test = min(len(t) for t in test_lists)
    test = [test_lists[c][j] for j in range(n_test) for c in range(num_classes)]
    rest = [idx[n_test:] for idx in by_class]
    per_class_train = min(len(r) for r in rest) if balance_train else None
    train = [i for r in rest for i in r[:per_class_train]]
    rng.shuffle(train)
    return train, test


def _to_dataset(texts: Sequence[str], labels: Sequence[int]) -> Any:
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict({"text": list(texts), "label": list(labels)}, features=features)


def load_builtin(task: TaskSpec) -> TaskData:
    texts, labels = read_packaged(task.source, task.label_names)
    train, test = balanced_split(labels, task.num_classes, task.test_per_class, task.split_seed, task.balance_train)
    return TaskData(
        task=task,
        train=_to_dataset([texts[i] for i in train], [labels[i] for i in train]),
        test=_to_dataset([texts[i] for i in test], [labels[i] for i in test]),
    )


def load_local_files(paths: Sequence[str]) -> Any:
    """Read csv/jsonl/parquet files (all of one kind) into one ``datasets.Dataset``, columns as they are."""
    import datasets

    if not paths:
        raise MeerkatInputError("no data files given")
    kinds = set()
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise MeerkatInputError(f"data file {p}: no such file")
        kind = LOCAL_SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise MeerkatInputError(f"data file {p}: unsupported type; use .csv, .jsonl or .parquet")
        kinds.add(kind)
    if len(kinds) > 1:
        raise MeerkatInputError(f"data files {', '.join(paths)}: mix of file types; pass files of one type")
    try:
        ds = datasets.load_dataset(kinds.pop(), data_files=[str(Path(p).resolve()) for p in paths], split="train")
    except Exception as exc:
        raise MeerkatInputError(f"data files {', '.join(paths)}: cannot read ({type(exc).__name__}: {exc})") from None
    return ds


def normalise_columns(ds: Any, task: TaskSpec, where: str) -> Any:
    """Select the task's text/label columns, rename them to text/label, map label names to ints."""
    for col in (task.text_column, task.label_column):
        if col not in ds.column_names:
            raise MeerkatInputError(
                f"{where}: no column '{col}' (columns: {', '.join(ds.column_names)}); set text_column/label_column"
            )
    texts = [str(t) for t in ds[task.text_column]]
    raw = ds[task.label_column]
    names = {n: i for i, n in enumerate(task.label_names)}
    labels: list[int] = []
    for v in raw:
        if isinstance(v, str) and v in names:
            labels.append(names[v])
        elif isinstance(v, (int,)) or (isinstance(v, str) and v.lstrip("-").isdigit()):
            labels.append(int(v))
        else:
            raise MeerkatInputError(f"{where}: label {v!r} is neither a class index nor one of {list(task.label_names)}")
    bad = [y for y in labels if not 0 <= y < task.num_classes]
    if bad:
        raise MeerkatInputError(f"{where}: label {bad[0]} outside 0..{task.num_classes - 1}")
    return _to_dataset(texts, labels)


def load_files_task(task: TaskSpec) -> TaskData:
    train = normalise_columns(load_local_files(task.train_files), task, ", ".join(task.train_files))
    test = normalise_columns(load_local_files(task.test_files), task, ", ".join(task.test_files))
    return TaskData(task=task, train=train, test=test)


def load_hub_task(task: TaskSpec) -> TaskData:
    import datasets

    assert task.hub is not None
    try:
        dd = datasets.load_dataset(task.hub.path, task.hub.config)
    except Exception as exc:
        if hub_offline():
            raise MeerkatInputError(
                f"task '{task.name}' needs the hub dataset {task.hub.path}, which is not cached and HF_HUB_OFFLINE=1; "
                "use a built-in task or a task JSON file with local data"
            ) from None
        raise MeerkatInputError(f"task '{task.name}': cannot load hub dataset {task.hub.path} ({type(exc).__name__})") from None
    where = f"hub dataset {task.hub.path}"
    return TaskData(
        task=task,
        train=normalise_columns(dd[task.hub.train_split], task, where),
        test=normalise_columns(dd[task.hub.test_split], task, where),
    )


def load_task_data(task: TaskSpec) -> TaskData:
    if task.source.startswith("builtin:"):
        return load_builtin(task)
    if task.source == "hub":
        return load_hub_task(task)
    return load_files_task(task)


def dataset_fingerprint(ds: Any) -> str:
    """sha256 over a (text, label) dataset's content, in order."""
    return sha256_json({"text": list(ds["text"]), "label": [int(y) for y in ds["label"]]})
