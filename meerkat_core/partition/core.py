"""Split a labelled ``datasets.Dataset`` over federated clients.

The partitioners are flwr-datasets' own (``IidPartitioner``, ``DirichletPartitioner``,
``PathologicalPartitioner``) plus our ``MixedPartitioner``. They run on a light two-column copy of the
split (the original row number and the integer label), taken in a seeded random order, so that

- the contiguous blocks of ``IidPartitioner`` are random samples, and the within-label slices that
  the Dirichlet and pathological partitioners cut are random too (they slice labels in row order);
- each partition's original row numbers are read back through the public ``load_partition`` API
  (the ``__row__`` column), never from a partitioner's private state;
- no text is copied.

Every random choice is derived from the one ``seed``. See docs/PARTITION_FORMAT.md for the choices.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import datasets
import numpy as np
import pyarrow as pa
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    PathologicalPartitioner,
)

from meerkat_core.config.choices import SCHEMES
from meerkat_core.errors import MeerkatInputError
from meerkat_core.partition.mixed import MixedPartitioner

Scheme = Literal["iid", "dirichlet", "pathological", "mixed"]

#: Pathological label assignment (flwr's ``class_assignment_mode``); "first-deterministic" gives
#: partition ``i`` label ``i % C`` first, so every label is used whenever ``N >= C``.
PATHOLOGICAL_ASSIGNMENT = "first-deterministic"
#: How many independent Dirichlet draws (each itself retried 10 times inside flwr) before
#: ``--min-size`` is declared unsatisfiable.
DIRICHLET_OUTER_ATTEMPTS = 10

_ROW = "__row__"
_LABEL = "__label__"


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SchemeConfig:
    """How to split: the scheme and its parameters (the seed is passed separately).

    ``alpha`` is used by ``dirichlet``, ``labels_per_client`` by ``pathological``, ``extreme_clients``
    by ``mixed``; ``min_size`` (every client's minimum number of samples, >= 1) by all schemes.
    """

    scheme: str
    num_clients: int
    alpha: float = 0.5
    labels_per_client: int = 1
    extreme_clients: int = 0
    min_size: int = 1
    self_balancing: bool = False

    def params(self) -> dict[str, Any]:
        """The parameters that matter for this scheme (what the manifest records)."""
        p: dict[str, Any] = {"num_clients": self.num_clients, "min_size": self.min_size}
        if self.scheme == "dirichlet":
            p.update(alpha=self.alpha, self_balancing=self.self_balancing)
        elif self.scheme == "pathological":
            p.update(labels_per_client=self.labels_per_client, class_assignment_mode=PATHOLOGICAL_ASSIGNMENT)
        elif self.scheme == "mixed":
            p.update(extreme_clients=self.extreme_clients)
        return p

    def validate(self) -> None:
        """Checks that need no data. Raises ``MeerkatInputError``."""
        if self.scheme not in SCHEMES:
            raise MeerkatInputError(f"unknown --scheme {self.scheme!r}; choose one of {', '.join(SCHEMES)}")
        if self.num_clients < 1:
            raise MeerkatInputError(f"--clients must be at least 1, got {self.num_clients}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise MeerkatInputError(f"--alpha must be a finite number > 0, got {self.alpha}")
        if self.labels_per_client < 1:
            raise MeerkatInputError(f"--labels-per-client must be at least 1, got {self.labels_per_client}")
        if self.min_size < 1:
            raise MeerkatInputError(f"--min-size must be at least 1 (a client needs data), got {self.min_size}")
        if self.extreme_clients < 0:
            raise MeerkatInputError(f"--extreme-clients must be >= 0, got {self.extreme_clients}")
        if self.extreme_clients > self.num_clients:
            raise MeerkatInputError(
                f"--extreme-clients {self.extreme_clients} exceeds --clients {self.num_clients}"
            )
        if self.extreme_clients > 0 and self.scheme != "mixed":
            raise MeerkatInputError(
                f"--extreme-clients applies only to --scheme mixed (got --scheme {self.scheme}); "
                "drop it or use --scheme mixed"
            )


# --------------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LabelEncoding:
    """Integer class ids for a label column: ``codes[i]`` in ``0..num_classes-1``."""

    codes: np.ndarray
    num_classes: int
    label_names: list[str] | None
    #: "identity" (labels already 0..C-1 ints), "class_label" (a datasets.ClassLabel feature) or
    #: "sorted_unique" (class id = position of the raw value among the sorted unique values).
    mapping: str
    #: raw label value of each class id when ``mapping == "sorted_unique"``
    values: list[Any] | None = None


def encode_labels(
    ds: datasets.Dataset,
    label_column: str,
    label_names: Sequence[str] | None = None,
    num_classes: int | None = None,
) -> LabelEncoding:
    """Map a label column to class ids.

    - A ``ClassLabel`` feature keeps its ids and names.
    - Integers that are exactly ``0..C-1`` (or a subset, when ``num_classes`` says how many) keep
      their values.
    - Anything else (strings, other integers) maps to its position among the sorted unique values,
      and the names become ``str(value)``.
    ``label_names``/``num_classes`` (e.g. from a task spec) override the names and class count.
    """
    if label_column not in ds.column_names:
        raise MeerkatInputError(
            f"unknown label column {label_column!r}; the data has columns {sorted(ds.column_names)}"
        )
    feature = ds.features[label_column]
    column = ds.select_columns([label_column]).with_format("arrow")[label_column]
    if column.null_count:
        row = int(np.flatnonzero(np.asarray(column.is_null()))[0])
        raise MeerkatInputError(f"label column {label_column!r} is empty at row {row}")
    int_typed = pa.types.is_integer(column.type)
    raw: list[Any] = [] if int_typed else column.to_pylist()

    values: list[Any] | None = None
    if isinstance(feature, datasets.ClassLabel):
        codes = np.asarray(column, dtype=np.int64)
        names: list[str] | None = list(feature.names)
        count = feature.num_classes
        mapping = "class_label"
    else:
        if int_typed:
            arr: np.ndarray | None = np.asarray(column, dtype=np.int64)
        else:
            is_int = all(isinstance(v, int) and not isinstance(v, bool) for v in raw)
            arr = np.asarray(raw, dtype=np.int64) if is_int else None
        if arr is not None and arr.size == 0:
            arr = None
        identity = False
        if arr is not None and int(arr.min()) >= 0:
            top = int(arr.max())
            if num_classes is not None:
                if top >= num_classes:
                    raise MeerkatInputError(
                        f"label column {label_column!r} has class id {top} but the task has "
                        f"{num_classes} classes"
                    )
                identity = True
            else:
                identity = int(np.unique(arr).size) == top + 1
        if identity:
            assert arr is not None
            codes = arr
            names = None
            count = num_classes if num_classes is not None else int(arr.max()) + 1
            mapping = "identity"
        else:
            if int_typed:
                raw = column.to_pylist()
            try:
                uniq = sorted(set(raw))
            except TypeError as exc:
                raise MeerkatInputError(
                    f"label column {label_column!r} mixes value types that cannot be ordered ({exc})"
                ) from None
            _refuse_numbers_with_names(label_column, uniq)
            index = {v: i for i, v in enumerate(uniq)}
            codes = np.asarray([index[v] for v in raw], dtype=np.int64)
            names = [str(v) for v in uniq]
            count = len(uniq)
            mapping = "sorted_unique"
            values = [v.item() if isinstance(v, np.generic) else v for v in uniq]
    if num_classes is not None and mapping != "sorted_unique":
        if codes.size and int(codes.max()) >= num_classes:
            raise MeerkatInputError(
                f"label column {label_column!r} has class id {int(codes.max())} but the task has "
                f"{num_classes} classes"
            )
        count = num_classes
    if label_names is not None:
        if len(label_names) != count:
            raise MeerkatInputError(
                f"{len(label_names)} label names given for {count} classes in column {label_column!r}"
            )
        names = [str(x) for x in label_names]
    return LabelEncoding(codes=codes, num_classes=count, label_names=names, mapping=mapping, values=values)


def _refuse_numbers_with_names(label_column: str, values: Sequence[Any]) -> None:
    """Text labels that mix numbers ("0", "1") with names ("neg", "pos") would become 4 classes where
    the data means 2: refuse them rather than guess which number is which name."""
    texts = [v for v in values if isinstance(v, str)]
    numbers = [v for v in texts if v.strip().lstrip("+-").isdigit()]
    names = [v for v in texts if v not in numbers]
    if numbers and names:
        raise MeerkatInputError(
            f"label column {label_column!r} mixes numbers ({', '.join(numbers[:3])}) with names "
            f"({', '.join(names[:3])}); write every label the same way (all class ids or all names)"
        )


# --------------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------------
@dataclass
class ClientPartition:
    """One client's share: sorted row indices into the partitioned split, and its label statistics."""

    id: int
    indices: list[int]
    label_counts: list[int]
    tv_distance: float
    label_entropy_bits: float
    is_extreme: bool
    assigned_label: int | None = None

    @property
    def size(self) -> int:
        return len(self.indices)

    @property
    def num_labels(self) -> int:
        return sum(1 for c in self.label_counts if c > 0)

    def summary(self) -> dict[str, Any]:
        """Everything but the indices (what the table and ``--json`` show)."""
        return {
            "id": self.id,
            "size": self.size,
            "label_counts": list(self.label_counts),
            "num_labels": self.num_labels,
            "tv_distance": self.tv_distance,
            "label_entropy_bits": self.label_entropy_bits,
            "is_extreme": self.is_extreme,
            "assigned_label": self.assigned_label,
        }


@dataclass
class PartitionResult:
    config: SchemeConfig
    seed: int
    num_samples: int
    num_classes: int
    label_names: list[str] | None
    global_label_counts: list[int]
    clients: list[ClientPartition]
    label_encoding: LabelEncoding | None = field(default=None, repr=False)
    notes: list[str] = field(default_factory=list)

    @property
    def mean_tv_distance(self) -> float:
        return float(np.mean([c.tv_distance for c in self.clients]))

    def summary(self) -> dict[str, Any]:
        sizes = [c.size for c in self.clients]
        tvs = [c.tv_distance for c in self.clients]
        return {
            "num_clients": len(self.clients),
            "num_samples": self.num_samples,
            "num_classes": self.num_classes,
            "global_label_counts": list(self.global_label_counts),
            "size_min": min(sizes),
            "size_max": max(sizes),
            "size_mean": round(float(np.mean(sizes)), 3),
            "tv_distance_mean": round(float(np.mean(tvs)), 6),
            "tv_distance_max": round(float(np.max(tvs)), 6),
            "num_extreme": sum(1 for c in self.clients if c.is_extreme),
        }


def label_stats(counts: np.ndarray, global_dist: np.ndarray) -> tuple[float, float]:
    """(total-variation distance to the global label distribution, label entropy in bits)."""
    total = counts.sum()
    if total == 0:
        return 1.0, 0.0
    q = counts / total
    tv = 0.5 * float(np.abs(q - global_dist).sum())
    nz = q[q > 0]
    entropy = float(-(nz * np.log2(nz)).sum())
    return round(tv, 6), round(abs(entropy), 6)


# --------------------------------------------------------------------------------------------------
# Partitioning
# --------------------------------------------------------------------------------------------------
def _derived_seed(seed: int, *path: int) -> int:
    """A 32-bit seed derived from ``seed`` and a purpose path (independent streams)."""
    return int(np.random.SeedSequence([seed, *path]).generate_state(1)[0])


def _read_rows(partitioner: Any, num_clients: int) -> list[np.ndarray]:
    """Each partition's original row numbers, sorted (read through the public ``load_partition``)."""
    return [
        np.sort(np.asarray(partitioner.load_partition(i).with_format("arrow")[_ROW], dtype=np.int64))
        for i in range(num_clients)
    ]


def _split_rows(
    codes: np.ndarray, config: SchemeConfig, seed: int
) -> tuple[list[np.ndarray], dict[int, int], list[str]]:
    """Row indices per client (sorted), the extreme clients' assigned labels, and notes."""
    n = int(codes.size)
    num_c = config.num_clients
    notes: list[str] = []
    order = np.random.default_rng(_derived_seed(seed, 0)).permutation(n)
    # Arrow format: flwr's partitioners read the label column with np.array(), which is fast on an
    # Arrow column and slow on datasets' default row-by-row Python formatting.
    light = datasets.Dataset.from_dict({_ROW: order, _LABEL: codes[order]}).with_format("arrow")
    assigned: dict[int, int] = {}

    if config.scheme == "iid":
        part = IidPartitioner(num_partitions=num_c)
        part.dataset = light
        rows = _read_rows(part, num_c)

    elif config.scheme == "dirichlet":
        rows = []
        for attempt in range(DIRICHLET_OUTER_ATTEMPTS):
            part = DirichletPartitioner(
                num_partitions=num_c,
                partition_by=_LABEL,
                alpha=float(config.alpha),
                min_partition_size=config.min_size,
                self_balancing=config.self_balancing,
                shuffle=False,
                seed=_derived_seed(seed, 1, attempt),
            )
            part.dataset = light
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    rows = _read_rows(part, num_c)
            except ValueError as exc:
                if "max number of attempts" in str(exc):
                    continue
                raise MeerkatInputError(f"dirichlet partitioning failed: {exc}") from None
            if attempt:
                notes.append(
                    f"dirichlet: --min-size {config.min_size} was met on outer attempt {attempt + 1}"
                )
            break
        else:
            raise MeerkatInputError(
                f"--min-size {config.min_size} could not be met: {DIRICHLET_OUTER_ATTEMPTS * 11} Dirichlet "
                f"draws with alpha={config.alpha} over {num_c} clients all left some client smaller; "
                "lower --min-size, raise --alpha or use fewer --clients"
            )

    elif config.scheme == "pathological":
        present = int(np.unique(codes).size)
        if config.labels_per_client > present:
            raise MeerkatInputError(
                f"--labels-per-client {config.labels_per_client} exceeds the {present} distinct labels in the data"
            )
        part = PathologicalPartitioner(
            num_partitions=num_c,
            partition_by=_LABEL,
            num_classes_per_partition=config.labels_per_client,
            class_assignment_mode=PATHOLOGICAL_ASSIGNMENT,
            shuffle=False,
            seed=_derived_seed(seed, 2),
        )
        part.dataset = light
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rows = _read_rows(part, num_c)
        except ValueError as exc:
            raise MeerkatInputError(f"pathological partitioning impossible: {' '.join(str(exc).split())}") from None
        covered = sum(r.size for r in rows)
        if covered != n:
            used = set(np.unique(np.concatenate([codes[r] for r in rows if r.size])).tolist())
            unused = sorted(set(np.unique(codes).tolist()) - used)
            raise MeerkatInputError(
                f"pathological split with {num_c} clients x {config.labels_per_client} labels leaves "
                f"label(s) {unused} on no client; use --clients >= the number of labels or a larger "
                "--labels-per-client"
            )

    elif config.scheme == "mixed":
        part = MixedPartitioner(
            num_partitions=num_c,
            partition_by=_LABEL,
            num_extreme=config.extreme_clients,
            seed=_derived_seed(seed, 3),
        )
        part.dataset = light
        try:
            rows = _read_rows(part, num_c)
            assigned = {int(k): int(v) for k, v in part.extreme_labels.items()}
        except ValueError as exc:
            raise MeerkatInputError(f"mixed partitioning impossible: {' '.join(str(exc).split())}") from None
    else:  # pragma: no cover - validate() rejects it
        raise MeerkatInputError(f"unknown scheme {config.scheme!r}")

    return rows, assigned, notes


def partition_dataset(
    ds: datasets.Dataset,
    label_column: str,
    config: SchemeConfig,
    seed: int,
    *,
    label_names: Sequence[str] | None = None,
    num_classes: int | None = None,
) -> PartitionResult:
    """Partition ``ds`` (the train split) over ``config.num_clients`` clients.

    Returns every client's sorted row indices into ``ds`` and its label statistics. The partitions
    are disjoint and cover ``ds`` exactly, the same ``seed`` gives the same indices, and every client
    has at least ``config.min_size`` samples (or ``MeerkatInputError`` is raised, with nothing
    half-done). ``label_names``/``num_classes`` (from a task spec) fix the class list.
    """
    config.validate()
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MeerkatInputError(f"--seed must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    enc = encode_labels(ds, label_column, label_names=label_names, num_classes=num_classes)
    codes = enc.codes
    n = int(codes.size)
    if n == 0:
        raise MeerkatInputError("the data has no rows to partition")
    if config.num_clients > n:
        raise MeerkatInputError(f"--clients {config.num_clients} exceeds the {n} samples in the data")
    if config.num_clients * config.min_size > n:
        raise MeerkatInputError(
            f"--min-size {config.min_size} is unsatisfiable: {config.num_clients} clients x {config.min_size} "
            f"> {n} samples"
        )

    rows, assigned, notes = _split_rows(codes, config, seed)

    # Invariants: disjoint, exact cover.
    all_rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    if all_rows.size != n or np.unique(all_rows).size != n:
        raise AssertionError("partition is not an exact cover of the data")  # a bug, not bad input

    too_small = [(i, int(r.size)) for i, r in enumerate(rows) if r.size < config.min_size]
    if too_small:
        cid, size = too_small[0]
        raise MeerkatInputError(
            f"--min-size {config.min_size} is unsatisfiable with --scheme {config.scheme}: client {cid} gets "
            f"{size} samples ({len(too_small)} client(s) too small); lower --min-size or use fewer --clients"
        )

    global_counts = np.bincount(codes, minlength=enc.num_classes)
    global_dist = global_counts / n
    clients = []
    for i, r in enumerate(rows):
        counts = np.bincount(codes[r], minlength=enc.num_classes)
        tv, ent = label_stats(counts, global_dist)
        clients.append(
            ClientPartition(
                id=i,
                indices=r.tolist(),
                label_counts=[int(x) for x in counts],
                tv_distance=tv,
                label_entropy_bits=ent,
                is_extreme=int((counts > 0).sum()) == 1,
                assigned_label=assigned.get(i),
            )
        )
    return PartitionResult(
        config=config,
        seed=seed,
        num_samples=n,
        num_classes=enc.num_classes,
        label_names=enc.label_names,
        global_label_counts=[int(x) for x in global_counts],
        clients=clients,
        label_encoding=enc,
        notes=notes,
    )
