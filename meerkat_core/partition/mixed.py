"""``MixedPartitioner``: E extreme (single-label) partitions, the rest IID over what remains.

This is the paper's "extreme Non-IID" setting for Meerkat-vp: a few clients each hold a single label
while the others hold ordinary IID shares. The rules (documented in docs/PARTITION_FORMAT.md):

- Which partition ids are extreme is drawn from ``seed`` (without replacement), so the extreme clients
  are not always ``0..E-1``; ``extreme_partition_ids`` says which.
- Labels go to the extreme partitions round-robin over the sorted unique labels: the j-th extreme
  partition (in increasing id order) gets ``labels[j % C]``.
- With ``E < N`` each extreme partition takes ``n // N`` samples (the size of an IID share) of its label,
  drawn at random without replacement; if fewer remain it takes all that remain (it is then smaller).
  Everything left over is shuffled and split into ``N - E`` nearly equal contiguous blocks, one per
  non-extreme partition, so the partitions are disjoint and cover the dataset.
- With ``E == N`` every partition is extreme; each label's samples are split evenly over the partitions
  assigned to it. This needs ``N >= C`` (otherwise some label would belong to nobody).
"""

from __future__ import annotations

from typing import Any

import datasets
import numpy as np
from flwr_datasets.partitioner import Partitioner


class MixedPartitioner(Partitioner):
    """Extreme Non-IID (single-label) partitions mixed with IID partitions.

    Parameters
    ----------
    num_partitions : int
        Total number of partitions ``N``.
    partition_by : str
        Column holding the labels.
    num_extreme : int
        Number ``E`` of single-label partitions, ``0 <= E <= N``.
    seed : int
        Seed of every random choice (extreme ids, the samples they take, the IID shuffle).
    """

    def __init__(self, num_partitions: int, partition_by: str, num_extreme: int, seed: int = 0) -> None:
        super().__init__()
        if num_partitions <= 0:
            raise ValueError("The number of partitions must be greater than zero.")
        if not 0 <= num_extreme <= num_partitions:
            raise ValueError(
                f"num_extreme must be between 0 and num_partitions ({num_partitions}), got {num_extreme}."
            )
        self._num_partitions = num_partitions
        self._partition_by = partition_by
        self._num_extreme = num_extreme
        self._seed = seed
        self._partition_id_to_indices: dict[int, list[int]] = {}
        self._extreme_label: dict[int, Any] = {}
        self._determined = False

    # -- flwr Partitioner API ------------------------------------------------------------------------
    def load_partition(self, partition_id: int) -> datasets.Dataset:
        self._determine_if_needed()
        return self.dataset.select(self._partition_id_to_indices[partition_id])

    @property
    def num_partitions(self) -> int:
        return self._num_partitions

    # -- extras --------------------------------------------------------------------------------------
    @property
    def extreme_partition_ids(self) -> list[int]:
        """Ids of the single-label partitions, increasing."""
        self._determine_if_needed()
        return sorted(self._extreme_label)

    @property
    def extreme_labels(self) -> dict[int, Any]:
        """Partition id -> the label value that extreme partition was assigned."""
        self._determine_if_needed()
        return dict(self._extreme_label)

    # -- algorithm -----------------------------------------------------------------------------------
    def _determine_if_needed(self) -> None:
        if self._determined:
            return
        n = self.dataset.num_rows
        num_p, num_e = self._num_partitions, self._num_extreme
        if num_p > n:
            raise ValueError(
                "The number of partitions needs to be smaller than the number of samples in the dataset."
            )
        labels = np.asarray(self.dataset[self._partition_by])
        classes = sorted(np.unique(labels).tolist())
        num_c = len(classes)
        rng = np.random.default_rng(self._seed)

        extreme_ids = sorted(int(i) for i in rng.choice(num_p, size=num_e, replace=False))
        assigned = {pid: classes[j % num_c] for j, pid in enumerate(extreme_ids)}
        parts: dict[int, list[int]] = {pid: [] for pid in range(num_p)}

        # Each label's positions, in a seeded random order.
        pool = {c: rng.permutation(np.nonzero(labels == c)[0]) for c in classes}

        if num_e == num_p:
            if num_p < num_c:
                unused = classes[num_p:]
                raise ValueError(
                    f"With every partition extreme, {num_p} partitions cannot hold all {num_c} labels; "
                    f"labels {unused} would be left out."
                )
            for c in classes:
                owners = [pid for pid in extreme_ids if assigned[pid] == c]
                for pid, chunk in zip(owners, np.array_split(pool[c], len(owners))):
                    parts[pid] = chunk.tolist()
        else:
            share = n // num_p
            for pid in extreme_ids:
                c = assigned[pid]
                take, pool[c] = pool[c][:share], pool[c][share:]
                if take.size == 0:
                    raise ValueError(
                        f"No samples with label {c!r} are left for extreme partition {pid}; "
                        f"use fewer extreme partitions."
                    )
                parts[pid] = take.tolist()
            rest = np.concatenate([pool[c] for c in classes]) if classes else np.zeros(0, dtype=np.int64)
            rest = rng.permutation(rest)
            iid_ids = [pid for pid in range(num_p) if pid not in assigned]
            for pid, chunk in zip(iid_ids, np.array_split(rest, len(iid_ids))):
                parts[pid] = chunk.tolist()

        self._partition_id_to_indices = parts
        self._extreme_label = assigned
        self._determined = True
