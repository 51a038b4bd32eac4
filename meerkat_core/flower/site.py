"""A site (one SuperNode): its node config, and the ZOClient built from the files it holds.

Node config keys (``flower-supernode --node-config '...'``):

- ``partition-id`` (int, required): the client id in the partition manifest.
- ``partition-dir`` (str, required): the site's copy of the ``meerkat partition`` directory.
- ``mask`` (str, required): the site's copy of the mask file, or ``all`` for full-parameter ZO.
- ``model`` (str, optional): where the site's base model is (built-in name, HF directory, .gguf);
  default: what the server announces.
- ``device`` (str, optional): ``auto`` (default), ``cpu`` or ``cuda``.

The site checks its mask file against the sha256 the server announces, and its partition against the
task's data (dataset fingerprint), so a site with the wrong files fails at the handshake.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from meerkat_core.errors import MeerkatInputError
from meerkat_core.fed.client import ClientRuntime, ZOClient
from meerkat_core.flower.records import ClientSetup


@dataclass(frozen=True)
class SiteConfig:
    partition_id: int
    partition_dir: str
    mask: str
    model: str | None = None
    device: str = "auto"

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> "SiteConfig":
        missing = [k for k in ("partition-id", "partition-dir", "mask") if k not in node_config]
        if missing:
            raise MeerkatInputError(f"SuperNode --node-config lacks {', '.join(missing)} (docs/DEPLOY_FLOWER.md)")
        model = node_config.get("model")
        return cls(
            partition_id=int(node_config["partition-id"]),
            partition_dir=str(node_config["partition-dir"]),
            mask=str(node_config["mask"]),
            model=str(model) if model else None,
            device=str(node_config.get("device", "auto")),
        )

    def node_config_string(self) -> str:
        """The ``--node-config`` value for this site."""
        parts = [f"partition-id={self.partition_id}", f"partition-dir={toml_str(self.partition_dir)}",
                 f"mask={toml_str(self.mask)}", f"device={toml_str(self.device)}"]
        if self.model:
            parts.append(f"model={toml_str(self.model)}")
        return " ".join(parts)


def toml_str(value: str) -> str:
    """A TOML basic string (node config and run config values are TOML)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check_site(site: SiteConfig, setup: ClientSetup) -> None:
    """Cheap checks at the handshake: the mask file is the server's, the partition has this client."""
    from meerkat_core.hashing import sha256_file
    from meerkat_core.partition import load_partition

    if setup.mask_sha256 == "all":
        if site.mask != "all":
            raise MeerkatInputError(f"site mask {site.mask}: the run is full-parameter (--mask all); set mask=\"all\"")
    else:
        if not Path(site.mask).is_file():
            raise MeerkatInputError(f"site mask {site.mask}: no such file")
        if sha256_file(site.mask) != setup.mask_sha256:
            raise MeerkatInputError(f"site mask {site.mask}: not the server's mask (sha256 differs)")
    manifest = load_partition(site.partition_dir)
    if not manifest.client_indices(site.partition_id):
        raise MeerkatInputError(f"partition {site.partition_dir}: client {site.partition_id} has no data")


def build_site_client(site: SiteConfig, setup: ClientSetup) -> tuple[ZOClient, ClientRuntime]:
    """Load the base model, the mask and this client's shard; the same encodings as the in-process engine."""
    from meerkat_core.encoding import encode_split
    from meerkat_core.mask import load_mask
    from meerkat_core.models import load_model
    from meerkat_core.fed.simulator import train_files_sha256
    from meerkat_core.partition import load_partition, verify_partition
    from meerkat_core.tasks import dataset_fingerprint, get_task, load_task_data
    from meerkat_core.zo import SparseCoordinates

    check_site(site, setup)
    task = get_task(setup.task)
    manifest = load_partition(site.partition_dir)
    data = load_task_data(task)
    verify_partition(manifest, dataset_fingerprint(data.train), train_files_sha256(task), len(data.train))
    loaded = load_model(site.model or setup.model, device=site.device, dtype=setup.dtype,
                        trust_remote_code=setup.trust_remote_code)
    mask = load_mask(site.mask, loaded.model) if site.mask != "all" else None
    indices = None if mask is None else {t.name: t.indices for t in mask.nonempty()}
    coords = SparseCoordinates(loaded.model, indices)
    if coords.k != setup.k:
        raise MeerkatInputError(f"site model {site.model or setup.model}: k={coords.k} but the server has k={setup.k}")
    idx = manifest.client_indices(site.partition_id)
    # encode_split tokenizes example by example, so encoding the shard equals the in-process subset
    enc = encode_split(loaded.tokenizer, task, data.train.select(idx), max_length=setup.max_length)
    client = ZOClient(site.partition_id, enc, coords.values())
    runtime = ClientRuntime(model=loaded.model, coords=coords, pad_id=loaded.tokenizer.pad_token_id,
                            batch_size=setup.batch_size, loss=setup.loss)
    return client, runtime
