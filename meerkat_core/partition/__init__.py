"""Federated data partitions: split a task's train split over clients and record it.

Public API::

    partition_dataset(ds, label_column, config: SchemeConfig, seed) -> PartitionResult
    dataset_fingerprint(ds, text_column, label_column) -> str
    load_partition(dir) -> PartitionManifest        # .client_indices(c) -> list[int]
    verify_partition(manifest, ds_fingerprint)      # MeerkatInputError on mismatch
    verify_label_counts(manifest, labels)           # label_counts agree with the data
"""

from meerkat_core.partition.core import (
    SCHEMES,
    ClientPartition,
    LabelEncoding,
    PartitionResult,
    SchemeConfig,
    encode_labels,
    partition_dataset,
)
from meerkat_core.partition.fingerprint import dataset_fingerprint
from meerkat_core.partition.manifest import (
    FORMAT,
    FORMAT_VERSION,
    ClientInfo,
    PartitionManifest,
    build_manifest,
    load_partition,
    verify_label_counts,
    verify_partition,
    write_partition,
)
from meerkat_core.partition.mixed import MixedPartitioner

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SCHEMES",
    "ClientInfo",
    "ClientPartition",
    "LabelEncoding",
    "MixedPartitioner",
    "PartitionManifest",
    "PartitionResult",
    "SchemeConfig",
    "build_manifest",
    "dataset_fingerprint",
    "encode_labels",
    "load_partition",
    "partition_dataset",
    "verify_label_counts",
    "verify_partition",
    "write_partition",
]
