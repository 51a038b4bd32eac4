"""What a classification task is: its data source, columns, prompt template and label words."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class HubSource:
    """A dataset on the Hugging Face hub (used only where the user has a hub)."""

    path: str
    config: str | None = None
    train_split: str = "train"
    test_split: str = "test"


@dataclass(frozen=True)
class TaskSpec:
    """A classification task posed MeZO-style: ``template.format(text=...)`` then one label word per class.

    ``source`` is one of ``builtin:<name>`` (offline data shipped by a package), ``hub`` (``hub`` field)
    or ``files`` (``train_files`` / ``test_files``: local csv, jsonl or parquet).
    """

    name: str
    description: str
    label_names: tuple[str, ...]
    label_words: tuple[str, ...]
    template: str = "{text} It was"
    text_column: str = "text"
    label_column: str = "label"
    source: str = "files"
    hub: HubSource | None = None
    train_files: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ()
    split_seed: int = 1234
    test_per_class: int = 500
    balance_train: bool = True  # built-in data: drop train rows so that every class has as many as the rarest
    license: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def prompt(self, text: str) -> str:
        return self.template.format(text=text)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
