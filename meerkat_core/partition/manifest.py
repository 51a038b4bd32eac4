"""The partition directory: ``manifest.json`` (format "meerkat.partition", version 1).

``write_partition`` builds the whole directory in a temporary sibling and renames it into place
(``atomic_dir``); ``load_partition`` reads and checks it; ``verify_partition`` refuses a partition
made from another dataset. The format is described in docs/PARTITION_FORMAT.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import datasets
import numpy as np

import meerkat_core
from meerkat_core.atomic import atomic_dir
from meerkat_core.errors import MeerkatInputError
from meerkat_core.hashing import sha256_bytes, sha256_json
from meerkat_core.partition.core import PartitionResult
from meerkat_core.partition.fingerprint import FINGERPRINT_SCHEME

FORMAT = "meerkat.partition"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

TEST_SPLIT_NOTE = (
    "Only the train split is partitioned. The test split stays whole, held out on the server for "
    "global evaluation; no client holds any of it."
)


def library_versions() -> dict[str, str]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:  # pragma: no cover
            return "unknown"

    return {
        "meerkat_core": meerkat_core.__version__,
        "flwr-datasets": version("flwr-datasets"),
        "datasets": datasets.__version__,
        "numpy": np.__version__,
    }


# --------------------------------------------------------------------------------------------------
# In-memory view of a loaded manifest
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClientInfo:
    id: int
    size: int
    label_counts: list[int]
    tv_distance: float
    label_entropy_bits: float
    is_extreme: bool
    assigned_label: int | None
    indices: list[int] = field(repr=False)


@dataclass(frozen=True)
class PartitionManifest:
    """A loaded, checked ``manifest.json``. ``raw`` is the whole JSON document."""

    path: Path
    format_version: int
    source: dict[str, Any]
    dataset_fingerprint: str
    partition_fingerprint: str
    text_column: str
    label_column: str
    label_names: list[str] | None
    num_classes: int
    scheme: str
    params: dict[str, Any]
    seed: int
    min_size: int
    num_samples: int
    clients: list[ClientInfo]
    raw: dict[str, Any] = field(repr=False)

    @property
    def num_clients(self) -> int:
        return len(self.clients)

    def client_indices(self, c: int) -> list[int]:
        """Sorted row indices of client ``c`` into the partitioned (train) split."""
        if not 0 <= c < len(self.clients):
            raise MeerkatInputError(
                f"client {c} is not in partition {self.path} (it has clients 0..{len(self.clients) - 1})"
            )
        return list(self.clients[c].indices)

    def client_dataset(self, ds: datasets.Dataset, c: int) -> datasets.Dataset:
        """Client ``c``'s rows of ``ds`` (the train split this partition was made from)."""
        if ds.num_rows != self.num_samples:
            raise MeerkatInputError(
                f"partition {self.path} indexes {self.num_samples} rows but the data has {ds.num_rows}; "
                "re-run `meerkat partition` on this data"
            )
        return ds.select(self.client_indices(c))

    def client_sizes(self) -> list[int]:
        return [cl.size for cl in self.clients]

    def extreme_clients(self) -> list[int]:
        return [cl.id for cl in self.clients if cl.is_extreme]


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------
def partition_fingerprint(dataset_fp: str, result: PartitionResult) -> str:
    """Identity of a partition: the dataset it indexes plus every client's indices."""
    return sha256_json(
        {
            "dataset": dataset_fp,
            "clients": [sha256_bytes(np.asarray(c.indices, dtype="<i8").tobytes()) for c in result.clients],
        }
    )[:16]


def build_manifest(
    result: PartitionResult,
    *,
    dataset_fp: str,
    source: dict[str, Any],
    text_column: str,
    label_column: str,
    test_split: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest document (a plain dict, indices included)."""
    enc = result.label_encoding
    test = {"partitioned": False, "note": TEST_SPLIT_NOTE}
    if test_split:
        test.update(test_split)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source": source,
        "split": "train",
        "test_split": test,
        "dataset_fingerprint": dataset_fp,
        "dataset_fingerprint_scheme": FINGERPRINT_SCHEME,
        "partition_fingerprint": partition_fingerprint(dataset_fp, result),
        "text_column": text_column,
        "label_column": label_column,
        "label_names": result.label_names,
        "label_mapping": None
        if enc is None
        else {"kind": enc.mapping, "values": enc.values},
        "num_classes": result.num_classes,
        "scheme": result.config.scheme,
        "params": result.config.params(),
        "seed": result.seed,
        "min_size": result.config.min_size,
        "num_samples": result.num_samples,
        "num_clients": len(result.clients),
        "versions": library_versions(),
        "summary": result.summary(),
        "notes": list(result.notes),
        "clients": [{**c.summary(), "indices": list(c.indices)} for c in result.clients],
    }


def dump_manifest(doc: dict[str, Any]) -> str:
    """Indented JSON with each client's index list kept on one line (it can be long)."""
    placeholders: dict[str, str] = {}
    shallow = dict(doc)
    clients = []
    for i, c in enumerate(doc["clients"]):
        key = f"@@indices-{i}@@"
        placeholders[json.dumps(key)] = json.dumps(c["indices"], separators=(",", ":"))
        clients.append({**c, "indices": key})
    shallow["clients"] = clients
    # Keys stay in build order (header first, the long client list last) for a human reader.
    text = json.dumps(shallow, indent=2)
    for key, value in placeholders.items():
        text = text.replace(key, value, 1)
    return text + "\n"


def check_out_dir(out: str | os.PathLike[str]) -> None:
    """Refuse an output path that exists and is not a partition directory (never clobber user data)."""
    target = Path(out)
    if not target.exists():
        return
    if not target.is_dir():
        raise MeerkatInputError(f"--out {target} exists and is not a directory")
    entries = list(target.iterdir())
    if not entries:
        return
    manifest = target / MANIFEST_NAME
    try:
        ok = json.loads(manifest.read_text("utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise MeerkatInputError(
            f"--out {target} exists and is not a meerkat partition directory; choose another path"
        )


def write_partition(
    out: str | os.PathLike[str],
    doc: dict[str, Any],
    extra_files: dict[str, Callable[[Path], None]] | None = None,
) -> Path:
    """Write the partition directory atomically: built in a temporary sibling, then renamed.

    An existing partition directory at ``out`` is replaced whole; any other existing, non-empty
    path is refused. ``extra_files`` maps a file name to a writer called with its path inside the
    temporary directory.
    """
    check_out_dir(out)
    target = Path(out)
    with atomic_dir(target) as tmp:
        (tmp / MANIFEST_NAME).write_text(dump_manifest(doc), encoding="utf-8")
        for name, writer in (extra_files or {}).items():
            writer(tmp / name)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    return target


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------
def _bad(path: Path, why: str) -> MeerkatInputError:
    return MeerkatInputError(f"{path} is not a valid meerkat partition: {why}")


def load_partition(path: str | os.PathLike[str]) -> PartitionManifest:
    """Read and check a partition directory (or its ``manifest.json``).

    Checks the format and version, that every client's indices are sorted, in range, disjoint
    from the others and cover ``num_samples`` exactly, and that sizes and label counts agree.
    Raises ``MeerkatInputError`` on any problem.
    """
    p = Path(path)
    manifest = p / MANIFEST_NAME if p.is_dir() else p
    base = manifest.parent
    if not manifest.is_file():
        raise MeerkatInputError(f"partition {p} not found (no {MANIFEST_NAME}); run `meerkat partition` first")
    try:
        doc = json.loads(manifest.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise _bad(base, f"cannot read {manifest.name} ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise _bad(base, f"format is {doc.get('format') if isinstance(doc, dict) else None!r}, expected {FORMAT!r}")
    if doc.get("format_version") != FORMAT_VERSION:
        raise _bad(base, f"format_version {doc.get('format_version')!r} is not supported (expected {FORMAT_VERSION})")
    try:
        n = int(doc["num_samples"])
        clients = []
        seen = np.zeros(n, dtype=bool)
        for pos, c in enumerate(doc["clients"]):
            idx = [int(i) for i in c["indices"]]
            arr = np.asarray(idx, dtype=np.int64)
            if int(c["id"]) != pos:
                raise _bad(base, f"client ids must be 0..N-1 in order (entry {pos} has id {c['id']})")
            if arr.size and (arr.min() < 0 or arr.max() >= n or np.any(np.diff(arr) <= 0)):
                raise _bad(base, f"client {pos} indices are not sorted, unique and within 0..{n - 1}")
            if seen[arr].any():
                raise _bad(base, f"client {pos} shares samples with an earlier client")
            seen[arr] = True
            if int(c["size"]) != arr.size or sum(int(x) for x in c["label_counts"]) != arr.size:
                raise _bad(base, f"client {pos} size/label counts disagree with its indices")
            clients.append(
                ClientInfo(
                    id=pos,
                    size=int(arr.size),
                    label_counts=[int(x) for x in c["label_counts"]],
                    tv_distance=float(c["tv_distance"]),
                    label_entropy_bits=float(c["label_entropy_bits"]),
                    is_extreme=bool(c["is_extreme"]),
                    assigned_label=None if c.get("assigned_label") is None else int(c["assigned_label"]),
                    indices=idx,
                )
            )
        if not seen.all():
            raise _bad(base, f"clients cover {int(seen.sum())} of {n} samples")
        return PartitionManifest(
            path=base,
            format_version=int(doc["format_version"]),
            source=dict(doc["source"]),
            dataset_fingerprint=str(doc["dataset_fingerprint"]),
            partition_fingerprint=str(doc.get("partition_fingerprint", "")),
            text_column=str(doc["text_column"]),
            label_column=str(doc["label_column"]),
            label_names=None if doc.get("label_names") is None else [str(x) for x in doc["label_names"]],
            num_classes=int(doc["num_classes"]),
            scheme=str(doc["scheme"]),
            params=dict(doc["params"]),
            seed=int(doc["seed"]),
            min_size=int(doc["min_size"]),
            num_samples=n,
            clients=clients,
            raw=doc,
        )
    except MeerkatInputError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise _bad(base, f"malformed manifest ({type(exc).__name__}: {exc})") from None


def verify_partition(
    manifest: PartitionManifest, ds_fingerprint: str, files_sha256: list[str] | None = None, num_rows: int | None = None
) -> None:
    """Refuse a partition made from another dataset (``MeerkatInputError`` on a fingerprint mismatch).

    ``files_sha256``: the sha256 of the local files the train split was read from, in order. A partition
    made with ``meerkat partition --data`` from those very files (its ``source.sha256``; its fingerprint is
    over the raw columns, so it differs from the task's) is accepted when it also indexes ``num_rows`` rows."""
    src = manifest.source
    if (files_sha256 is not None and src.get("kind") == "files" and list(src.get("sha256", [])) == files_sha256
            and num_rows == manifest.num_samples):
        return
    if manifest.dataset_fingerprint != ds_fingerprint:
        raise MeerkatInputError(
            f"partition {manifest.path} was made from another dataset (fingerprint "
            f"{manifest.dataset_fingerprint[:12]}..., this data has {ds_fingerprint[:12]}...); "
            "re-run `meerkat partition` on this data"
        )
