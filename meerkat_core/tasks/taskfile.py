"""Task files (TOML, or JSON with the same keys): read and checked strictly, before any data or model loads.

Every problem is a ``MeerkatInputError`` of one line that names the file and the fix: a file that is
not a table, an unknown key (with the nearest valid one), a wrong type, labels without words, a
template with a stray brace or without any field, preprocessing of a field the template lacks, a data
source that is not exactly one of hub / files / disk. docs/TASKS.md is the reference.
"""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path
from typing import Any

from meerkat_core.errors import MeerkatInputError
from meerkat_core.tasks.spec import PREPROCESS, DataSource, TaskSpec, template_fields

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TOP_KEYS = ("base", "name", "description", "template", "label_names", "label_words", "label_column", "columns",
            "preprocess", "data", "license")
DATA_KEYS = ("hub", "config", "files", "disk", "splits")
SPLIT_KEYS = ("train", "test")
# The JSON task files of meerkat <= 0.1 (still read): one text column, train/test files beside the file.
LEGACY_KEYS = ("text_column", "train_files", "test_files")
DOC = "see docs/TASKS.md"


def _unknown(where: str, key: str, valid: tuple[str, ...]) -> MeerkatInputError:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"did you mean '{near[0]}'?" if near else f"valid keys: {', '.join(valid)}"
    return MeerkatInputError(f"{where}: unknown key '{key}' ({hint})")


def _check_keys(raw: dict[str, Any], valid: tuple[str, ...], where: str) -> None:
    for key in raw:
        if key not in valid:
            raise _unknown(where, key, valid)


def _str(raw: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise MeerkatInputError(f"{where}: '{key}' must be a non-empty string; {DOC}")
    return value


def _str_list(raw: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = raw.get(key)
    if value is None:
        raise MeerkatInputError(f"{where}: missing '{key}' (a list of strings, one per class); {DOC}")
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise MeerkatInputError(f"{where}: '{key}' must be a list of non-empty strings, e.g. [\"negative\", \"positive\"]")
    return tuple(value)


def _table(raw: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise MeerkatInputError(f"{where}: '{key}' must be a table ([{key}] in TOML, an object in JSON); {DOC}")
    return value


def _files(value: Any, base: Path, where: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v for v in items):
        raise MeerkatInputError(f"{where}: each split's files must be a path or a list of paths")
    out = []
    for item in items:
        p = Path(item).expanduser()
        out.append(str(p if p.is_absolute() else (base / p).resolve()))
    return tuple(out)


def _data_source(raw: dict[str, Any], base: Path, where: str) -> DataSource:
    w = f"{where} [data]"
    _check_keys(raw, DATA_KEYS, w)
    kinds = [k for k in ("hub", "files", "disk") if k in raw]
    if len(kinds) != 1:
        raise MeerkatInputError(f"{w}: give exactly one of hub = \"PATH\", files = {{train = ..., test = ...}} or disk = \"DIR\"")
    splits = _table(raw, "splits", w)
    _check_keys(splits, SPLIT_KEYS, f"{w} splits")
    for k, v in splits.items():
        if not isinstance(v, str) or not v:
            raise MeerkatInputError(f"{w}: splits.{k} must be a split name, e.g. \"validation\"")
    train, test = splits.get("train", "train"), splits.get("test", "test")
    kind = kinds[0]
    if "config" in raw and kind != "hub":
        raise MeerkatInputError(f"{w}: 'config' belongs to a hub source only")
    if kind == "files":
        files = raw["files"]
        if not isinstance(files, dict):
            raise MeerkatInputError(f"{w}: files must be a table of split = path(s), e.g. files = {{train = \"train.csv\", test = \"test.csv\"}}")
        resolved = {str(k): _files(v, base, f"{w} files.{k}") for k, v in files.items()}
        for split in (train, test):
            if split not in resolved:
                raise MeerkatInputError(f"{w}: files has no split '{split}' (it has {', '.join(resolved) or 'none'}); add it or set splits")
        return DataSource(kind="files", files=resolved, train_split=train, test_split=test)
    path = _str(raw, kind, w)
    if kind == "disk":
        p = Path(path).expanduser()
        path = str(p if p.is_absolute() else (base / p).resolve())
    config = raw.get("config")
    if config is not None and not isinstance(config, str):
        raise MeerkatInputError(f"{w}: config must be a string (the hub dataset's configuration name)")
    return DataSource(kind=kind, path=path, config=config, train_split=train, test_split=test)


def _from_legacy(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """meerkat <= 0.1 JSON task files: ``text_column``, ``train_files``, ``test_files`` at the top."""
    raw = dict(raw)
    if "data" in raw and ("train_files" in raw or "test_files" in raw):
        raise MeerkatInputError(f"{where}: give the data either as [data] or as train_files/test_files, not both")
    if "train_files" in raw or "test_files" in raw:
        missing = [k for k in ("train_files", "test_files") if k not in raw]
        if missing:
            raise MeerkatInputError(f"{where}: missing '{missing[0]}' (or use a [data] table); {DOC}")
        raw["data"] = {"files": {"train": raw.pop("train_files"), "test": raw.pop("test_files")}}
        raw.setdefault("template", "{text} It was")  # the old default
    if "text_column" in raw:
        col = raw.pop("text_column")
        if not isinstance(col, str) or not col:
            raise MeerkatInputError(f"{where}: 'text_column' must be a column name")
        raw.setdefault("template", "{text} It was")
        columns = dict(_table(raw, "columns", where))
        columns.setdefault("text", col)
        raw["columns"] = columns
    return raw


def _spec_keys(spec: TaskSpec) -> dict[str, Any]:
    """A built-in task's settings as task-file keys (for ``base = "NAME"``; [data] is kept as it is)."""
    return {"name": spec.name, "description": spec.description, "template": spec.template,
            "label_names": list(spec.label_names), "label_words": list(spec.label_words),
            "label_column": spec.label_column, "columns": dict(spec.columns),
            "preprocess": {k: list(v) for k, v in spec.preprocess.items()}, "license": spec.license}


def parse_task(raw: Any, where: str, base: Path, default_name: str) -> TaskSpec:
    """A checked ``TaskSpec`` from a task file's parsed content."""
    if not isinstance(raw, dict):
        kind = type(raw).__name__
        raise MeerkatInputError(
            f"{where}: holds a {kind}, not a table of settings (name, template, label_names, label_words, [data]); {DOC}"
        )
    raw = _from_legacy(raw, where)
    _check_keys(raw, TOP_KEYS, where)
    parent = None
    if "base" in raw:
        from meerkat_core.tasks.registry import BUILTIN_TASKS

        name = raw.pop("base")
        if name not in BUILTIN_TASKS:
            near = difflib.get_close_matches(str(name), list(BUILTIN_TASKS), n=1)
            hint = f"did you mean '{near[0]}'?" if near else f"built-in tasks: {', '.join(BUILTIN_TASKS)}"
            raise MeerkatInputError(f"{where}: base = {name!r} is not a built-in task ({hint})")
        parent = BUILTIN_TASKS[name]
        raw = {**_spec_keys(parent), **raw}
    names = _str_list(raw, "label_names", where)
    words = _str_list(raw, "label_words", where)
    if len(names) < 2:
        raise MeerkatInputError(f"{where}: label_names has {len(names)} class; a classification task needs at least 2")
    if len(set(names)) != len(names):
        raise MeerkatInputError(f"{where}: label_names repeats a name; give each class once")
    if len(words) != len(names):
        raise MeerkatInputError(
            f"{where}: {len(names)} label_names but {len(words)} label_words; give one label word per label, in the same order"
        )
    if len(set(words)) != len(words):
        raise MeerkatInputError(f"{where}: label_words repeats a word; each class needs its own word")
    template = _str(raw, "template", where)
    fields = template_fields(template, where)
    columns = _table(raw, "columns", where)
    for k, v in columns.items():
        if k not in fields:
            raise MeerkatInputError(f"{where}: columns.{k} maps a field the template does not use (fields: {', '.join(fields)})")
        if not isinstance(v, str) or not v:
            raise MeerkatInputError(f"{where}: columns.{k} must be a column name")
    pre = _table(raw, "preprocess", where)
    steps: dict[str, tuple[str, ...]] = {}
    for k, v in pre.items():
        if k not in fields:
            raise MeerkatInputError(f"{where}: preprocess.{k} names a field the template does not use (fields: {', '.join(fields)})")
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise MeerkatInputError(f"{where}: preprocess.{k} must be a list of step names")
        for s in items:
            if s not in PREPROCESS:
                raise _unknown(f"{where} preprocess.{k}", s, tuple(PREPROCESS))
        steps[k] = tuple(items)
    if "data" not in raw and parent is None:
        raise MeerkatInputError(f"{where}: missing [data] (hub = \"PATH\", files = {{train = ..., test = ...}} or disk = \"DIR\"); {DOC}")
    data = _data_source(_table(raw, "data", where), base, where) if "data" in raw else parent.data  # type: ignore[union-attr]
    keep = {} if parent is None else {"split_seed": parent.split_seed, "test_per_class": parent.test_per_class,
                                      "balance_train": parent.balance_train}
    return TaskSpec(
        **keep,
        name=_str(raw, "name", where, default_name) or default_name,
        description=_str(raw, "description", where, f"task from {where.removeprefix('task file ')}"),
        label_names=names,
        label_words=words,
        template=template,
        data=data,
        label_column=_str(raw, "label_column", where, "label") or "label",
        columns=dict(columns),
        preprocess=steps,
        license=_str(raw, "license", where, ""),
        origin=where.removeprefix("task file "),
    )


def read_task_file(path: Path) -> TaskSpec:
    """A task from a ``.toml`` file (or ``.json``, same keys; the older JSON keys are read too)."""
    where = f"task file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MeerkatInputError(f"{where}: cannot read it ({type(exc).__name__}: {exc})") from None
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise MeerkatInputError(f"{where}: not valid JSON ({exc}); {DOC}") from None
    else:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise MeerkatInputError(f"{where}: not valid TOML ({exc}); {DOC}") from None
    return parse_task(raw, where, path.resolve().parent, path.stem)
