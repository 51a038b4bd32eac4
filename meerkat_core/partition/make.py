"""The ``meerkat partition`` pipeline: load a task's train split (or local files), check the columns,
split, fingerprint, and write the partition directory (and the heatmap when asked).

``make_partition(cfg)`` is what ``meerkat_core.api.make_partition`` (and so the CLI) runs. Everything
that needs no data is checked before anything is loaded; nothing is written before everything worked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from meerkat_core.config.partition import PartitionConfig
from meerkat_core.errors import MeerkatInputError
from meerkat_core.hashing import sha256_file
from meerkat_core.partition.core import PartitionResult, SchemeConfig, partition_dataset
from meerkat_core.partition.fingerprint import dataset_fingerprint
from meerkat_core.partition.manifest import MANIFEST_NAME, build_manifest, check_out_dir, write_partition
from meerkat_core.partition.plot import render_heatmap_png, write_heatmap
from meerkat_core.tasks import TaskSpec, get_task, load_local_files, load_task_data
from meerkat_core.tasks import dataset_fingerprint as task_fingerprint

EventFn = Callable[[str], None]


@dataclass
class PartitionMade:
    """A partition written by ``make_partition``: where, from what, the split and its manifest."""

    out: Path
    manifest_path: Path
    plot: Path | None
    source: dict[str, Any]
    dataset_fingerprint: str
    scheme: SchemeConfig
    seed: int
    result: PartitionResult
    manifest: dict[str, Any] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """What ``meerkat partition --json`` prints."""
        r = self.result
        return {
            "out": str(self.out),
            "manifest": str(self.manifest_path),
            "plot": None if self.plot is None else str(self.plot),
            "source": self.source,
            "dataset_fingerprint": self.dataset_fingerprint,
            "partition_fingerprint": self.manifest["partition_fingerprint"],
            "scheme": self.scheme.scheme,
            "params": self.scheme.params(),
            "seed": self.seed,
            "num_samples": r.num_samples,
            "num_classes": r.num_classes,
            "label_names": r.label_names,
            "summary": r.summary(),
            "notes": r.notes,
            "clients": [c.summary() for c in r.clients],
        }


def scheme_of(cfg: PartitionConfig) -> SchemeConfig:
    return SchemeConfig(
        scheme=cfg.scheme.strip().lower(), num_clients=cfg.clients, alpha=cfg.alpha,
        labels_per_client=cfg.labels_per_client, extreme_clients=cfg.extreme_clients, min_size=cfg.min_size,
        self_balancing=cfg.self_balancing,
    )


def _load(cfg: PartitionConfig) -> tuple[TaskSpec | None, Any, Any, dict[str, Any], list[str] | None, int | None]:
    """(task or None, train Dataset, test Dataset or None, source record, label names, number of classes)."""
    if cfg.task is not None:
        spec = get_task(cfg.task)
        data = load_task_data(spec)
        source: dict[str, Any] = {"kind": "task", "task": getattr(spec, "name", cfg.task)}
        names = num = None
        if cfg.label_column == "label":
            names = list(getattr(spec, "label_names", None) or []) or None
            num = getattr(spec, "num_classes", None)
        return spec, data.train, getattr(data, "test", None), source, names, num
    for p in cfg.data:
        if not Path(p).is_file():
            raise MeerkatInputError(f"--data {p} not found")
    source = {"kind": "files", "paths": list(cfg.data), "sha256": [sha256_file(p) for p in cfg.data]}
    return None, load_local_files(list(cfg.data)), None, source, None, None


def make_partition(cfg: PartitionConfig, on_event: EventFn | None = None) -> PartitionMade:
    """Split the data ``cfg`` names and write ``cfg.out`` (and ``cfg.plot``); returns what was written."""
    say = on_event or (lambda msg: None)
    scheme = scheme_of(cfg)
    scheme.validate()
    cfg.validate()
    out = Path(cfg.out)
    check_out_dir(out)
    say("loading data")
    spec, train, test, source, label_names, num_classes = _load(cfg)
    if spec is None:  # local files: the columns are the user's to name
        text_column = cfg.text_column
        for col, what in ((cfg.label_column, "--label-column"), (text_column, "--text-column")):
            if col not in train.column_names:
                raise MeerkatInputError(f"unknown {what} {col!r}; the data has columns {', '.join(train.column_names)}")
    else:  # a task's split has one column per template field, and label
        text_column = ",".join(spec.fields)
    say("partitioning")
    result = partition_dataset(train, cfg.label_column, scheme, cfg.seed, label_names=label_names,
                               num_classes=num_classes)
    say("fingerprinting")
    # a task's fingerprint is the one `train` recomputes on the split it loads (every field's column)
    fp = task_fingerprint(train) if spec is not None else dataset_fingerprint(train, text_column, cfg.label_column)
    test_split: dict[str, Any] | None = None
    if test is not None:
        test_split = {"num_samples": len(test), "dataset_fingerprint": task_fingerprint(test)}
    elif source["kind"] == "files":
        test_split = {"num_samples": None, "note_files": "no test split given with --data"}
    doc = build_manifest(result, dataset_fp=fp, source=source, text_column=text_column,
                         label_column=cfg.label_column, test_split=test_split)
    png = None
    if cfg.plot is not None:
        say("plotting")
        png = render_heatmap_png(result)
    write_partition(out, doc)
    plot = None
    if png is not None and cfg.plot is not None:
        plot = Path(cfg.plot)
        write_heatmap(plot, png)
    return PartitionMade(out=out, manifest_path=out / MANIFEST_NAME, plot=plot, source=source, dataset_fingerprint=fp,
                         scheme=scheme, seed=cfg.seed, result=result, manifest=doc)
