"""Loading a task's data: a packaged offline corpus, local files, a ``save_to_disk`` folder, or the hub.

Every loader returns ``datasets.Dataset`` objects with one string column per template field (named
as in the template) and ``label`` (int in 0..C-1), so the rest of meerkat never sees source-specific
column names.
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
    train: Any  # datasets.Dataset(<one column per template field>, label)
    test: Any

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


def _to_dataset(fields: dict[str, Sequence[str]], labels: Sequence[int]) -> Any:
    import datasets

    features = datasets.Features({**{f: datasets.Value("string") for f in fields}, "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict({**{f: list(v) for f, v in fields.items()}, "label": list(labels)}, features=features)


def load_builtin(task: TaskSpec) -> TaskData:
    texts, labels = read_packaged(task.data.path, task.label_names)
    train, test = balanced_split(labels, task.num_classes, task.test_per_class, task.split_seed, task.balance_train)
    (field,) = task.fields
    return TaskData(
        task=task,
        train=_to_dataset({field: [texts[i] for i in train]}, [labels[i] for i in train]),
        test=_to_dataset({field: [texts[i] for i in test]}, [labels[i] for i in test]),
    )


def _file_kind(paths: Sequence[str]) -> str:
    kinds = set()
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise MeerkatInputError(f"data file {p}: no such file")
        kind = LOCAL_SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise MeerkatInputError(f"data file {p}: unsupported type; use .csv, .jsonl, .json or .parquet")
        kinds.add(kind)
    if len(kinds) > 1:
        raise MeerkatInputError(f"data files {', '.join(paths)}: mix of file types; pass files of one type")
    return kinds.pop()


def load_local_files(paths: Sequence[str]) -> Any:
    """Read csv/jsonl/json/parquet files (all of one kind) into one ``datasets.Dataset``, columns as they are."""
    import datasets

    if not paths:
        raise MeerkatInputError("no data files given")
    kind = _file_kind(paths)
    try:
        ds = datasets.load_dataset(kind, data_files=[str(Path(p).resolve()) for p in paths], split="train")
    except Exception as exc:
        raise MeerkatInputError(f"data files {', '.join(paths)}: cannot read ({type(exc).__name__}: {exc})") from None
    return ds


def _label_index(v: Any, names: dict[str, int]) -> int | None:
    if isinstance(v, str) and v in names:
        return names[v]
    if isinstance(v, int):  # bools too: False -> 0, True -> 1
        return int(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v)
    return None


def check_columns(column_names: Sequence[str], task: TaskSpec, where: str) -> None:
    """Refuse data that lacks a column the template or the labels read (nearest column suggested)."""
    import difflib

    cols = list(column_names)
    wanted = [(f, task.column_of(f), "template field {%s}" % f) for f in task.fields]
    wanted.append(("label", task.label_column, "label_column"))
    for _, col, what in wanted:
        if col not in cols:
            near = difflib.get_close_matches(col, cols, n=1, cutoff=0.5)
            hint = f"did you mean '{near[0]}'? " if near else ""
            fix = "set label_column" if what == "label_column" else "fix the template or map the field with [columns]"
            raise MeerkatInputError(
                f"{where}: {what} reads column '{col}', which the data lacks (columns: {', '.join(cols)}); {hint}{fix}"
            )


def normalise_columns(ds: Any, task: TaskSpec, where: str) -> Any:
    """The task's view of ``ds``: one string column per template field, ``label`` as 0..C-1."""
    check_columns(ds.column_names, task, where)
    fields = {f: ["" if v is None else str(v) for v in ds[task.column_of(f)]] for f in task.fields}
    names = {n: i for i, n in enumerate(task.label_names)}
    labels: list[int] = []
    for v in ds[task.label_column]:
        y = _label_index(v, names)
        if y is None:
            raise MeerkatInputError(f"{where}: label {v!r} is neither a class index nor one of {list(task.label_names)}")
        if not 0 <= y < task.num_classes:
            raise MeerkatInputError(f"{where}: label {y} outside 0..{task.num_classes - 1} ({task.num_classes} label_names)")
        labels.append(y)
    return _to_dataset(fields, labels)


def _where(task: TaskSpec) -> str:
    return f"task file {task.origin}" if task.origin != "builtin" else f"task '{task.name}'"


def load_files_task(task: TaskSpec) -> TaskData:
    """Each split's files (all of one type per split) read with ``datasets``; columns as they are."""
    src = task.data
    dd = {split: load_local_files(list(src.files[split])) for split in (src.train_split, src.test_split)}
    return _split_pair(task, dd, f"{_where(task)} (files)")


def _split_pair(task: TaskSpec, dd: Any, where: str) -> TaskData:
    src = task.data
    for split in (src.train_split, src.test_split):
        if split not in dd:
            raise MeerkatInputError(f"{where}: no split '{split}' (it has {', '.join(dd)}); set [data] splits")
    return TaskData(
        task=task,
        train=normalise_columns(dd[src.train_split], task, f"{where}, split {src.train_split}"),
        test=normalise_columns(dd[src.test_split], task, f"{where}, split {src.test_split}"),
    )


def load_disk_task(task: TaskSpec) -> TaskData:
    import datasets

    path = Path(task.data.path)
    if not path.is_dir():
        raise MeerkatInputError(f"{_where(task)}: [data] disk = {path}: no such directory (a datasets save_to_disk folder)")
    try:
        dd = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise MeerkatInputError(f"{_where(task)}: cannot read {path} with datasets.load_from_disk ({type(exc).__name__})") from None
    if isinstance(dd, datasets.Dataset):
        raise MeerkatInputError(f"{_where(task)}: {path} holds one Dataset, not a DatasetDict with train and test splits")
    return _split_pair(task, dd, f"{_where(task)} (disk {path})")


def load_hub_task(task: TaskSpec) -> TaskData:
    import datasets

    src = task.data
    try:
        dd = datasets.load_dataset(src.path, src.config)
    except Exception as exc:
        if hub_offline():
            raise MeerkatInputError(
                f"task '{task.name}' needs the hub dataset {src.describe()}, which is not cached and HF_HUB_OFFLINE=1; "
                "use a built-in offline task or a task file with local data (docs/TASKS.md)"
            ) from None
        raise MeerkatInputError(f"task '{task.name}': cannot load hub dataset {src.describe()} ({type(exc).__name__})") from None
    return _split_pair(task, dd, f"hub dataset {src.describe()}")


def load_task_data(task: TaskSpec) -> TaskData:
    loaders = {"builtin": load_builtin, "hub": load_hub_task, "files": load_files_task, "disk": load_disk_task}
    return loaders[task.data.kind](task)


def dataset_fingerprint(ds: Any) -> str:
    """sha256 over a task dataset's content, in order: ``{"text": [...], "label": [...]}`` for one ``text``
    field (as ``meerkat_core.partition.fingerprint`` computes it), every field's column otherwise."""
    labels = [int(y) for y in ds["label"]]
    names = [c for c in ds.column_names if c != "label"]
    if names == ["text"]:
        return sha256_json({"text": list(ds["text"]), "label": labels})
    return sha256_json({"fields": {c: list(ds[c]) for c in names}, "label": labels})
