"""A site (one client of the federation): what it is told, what it holds, and the client built from it.

- ``ClientSetup``: what the server announces at the handshake (model, task, mask hash, ...).
- ``SiteConfig``: the site's own files (partition id and directory, mask, model, device), read from the
  SuperNode's node config, falling back to the run config (under Flower's simulation engine a virtual
  SuperNode has only ``partition-id``; the run's ``partition`` / ``mask`` / ``model`` / ``device`` apply).
- ``SiteCache``: what a long-lived process keeps between messages: one loaded base model (and its masked
  coordinates) per (model, mask, dtype, device), the task's data, each site's encoded shard, and the
  newest global state its clients reached (``fed.catchup``: the clients of one Ray worker replay each
  global update once, not once each). A Ray worker of the simulation engine and ``meerkat site serve``
  keep one; a rebuild costs seconds (imports, model load, tokenization), a cached round costs the ZO steps.

Node config keys (``flower-supernode --node-config '...'``): ``partition-id`` (int), ``partition-dir``,
``mask`` (a file, or ``all``), ``model`` (optional; default: what the server announces), ``device``
(``auto``/``cpu``/``cuda``), or ``site-socket`` alone: the socket of a ``meerkat site serve`` process that
holds all of that (docs/DEPLOY_FLOWER.md).

flwr-free (``meerkat site serve`` runs without Flower); torch and the model stack load lazily.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from meerkat_core.errors import MeerkatInputError

SITE_SOCKET = "site-socket"


@dataclass(frozen=True)
class ClientSetup:
    """What the server tells every site at the handshake; the site checks its files against it."""

    model: str
    task: str
    mask_sha256: str  # "all" for full-parameter ZO
    k: int
    max_length: int
    batch_size: int
    dtype: str
    loss: str
    trust_remote_code: bool
    zo_forward: str = "auto"  # absent from an older server's setup: that server's sites ran the default

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "ClientSetup":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(raw).items() if k in names})


def client_setup(fed: Any) -> ClientSetup:
    """The setup a federation (``fed.simulator.Federation``) announces to its sites."""
    cfg = fed.cfg
    return ClientSetup(
        model=cfg.model, task=cfg.task, mask_sha256=str(fed.provenance["mask_sha256"]), k=int(fed.provenance["k"]),
        max_length=cfg.max_length, batch_size=cfg.batch_size, dtype=cfg.dtype, loss=cfg.loss,
        trust_remote_code=cfg.trust_remote_code, zo_forward=cfg.zo_forward,
    )


@dataclass(frozen=True)
class SiteConfig:
    partition_id: int
    partition_dir: str
    mask: str
    model: str | None = None
    device: str = "auto"

    @classmethod
    def from_node_config(
        cls, node_config: Mapping[str, Any], run_config: Mapping[str, Any] | None = None
    ) -> "SiteConfig":
        """The node config's keys; ``partition-dir`` / ``mask`` / ``model`` / ``device`` default to the run
        config's ``partition`` / ``mask`` / ``model`` / ``device`` (the simulation engine's virtual nodes)."""
        run = dict(run_config or {})

        def pick(node_key: str, run_key: str) -> Any:
            if node_key in node_config and node_config[node_key] != "":
                return node_config[node_key]
            value = run.get(run_key, "")
            return value if value != "" else None

        values = {"partition-id": node_config.get("partition-id"), "partition-dir": pick("partition-dir", "partition"),
                  "mask": pick("mask", "mask")}
        missing = [k for k, v in values.items() if v is None]
        if missing:
            raise MeerkatInputError(
                f"SuperNode --node-config lacks {', '.join(missing)} (or {SITE_SOCKET}; docs/DEPLOY_FLOWER.md)")
        model = node_config.get("model") or None
        return cls(
            partition_id=int(values["partition-id"]),
            partition_dir=str(values["partition-dir"]),
            mask=str(values["mask"]),
            model=str(model) if model else None,
            device=str(pick("device", "device") or "auto"),
        )

    def node_config_string(self) -> str:
        """The ``--node-config`` value for this site."""
        parts = [f"partition-id={self.partition_id}", f"partition-dir={toml_str(self.partition_dir)}",
                 f"mask={toml_str(self.mask)}", f"device={toml_str(self.device)}"]
        if self.model:
            parts.append(f"model={toml_str(self.model)}")
        return " ".join(parts)

    def data_key(self) -> tuple[Any, ...]:
        return (str(Path(self.partition_dir).resolve()), self.partition_id)


def toml_str(value: str) -> str:
    """A TOML basic string (node config and run config values are TOML)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check_files(site: SiteConfig) -> None:
    """The site's own files exist: the partition knows this client, the mask file is there."""
    from meerkat_core.partition import load_partition

    if site.mask != "all" and not Path(site.mask).is_file():
        raise MeerkatInputError(f"site mask {site.mask}: no such file (copy the server's mask file, or \"all\")")
    manifest = load_partition(site.partition_dir)
    if not 0 <= site.partition_id < manifest.num_clients:
        raise MeerkatInputError(
            f"partition {site.partition_dir}: no client {site.partition_id} (it has {manifest.num_clients})")


def check_site(site: SiteConfig, setup: ClientSetup) -> None:
    """Cheap checks at the handshake: the mask file is the server's, the partition knows this client."""
    from meerkat_core.hashing import sha256_file

    check_files(site)
    if setup.mask_sha256 == "all":
        if site.mask != "all":
            raise MeerkatInputError(f"site mask {site.mask}: the run is full-parameter (--mask all); set mask=\"all\"")
    elif sha256_file(site.mask) != setup.mask_sha256:
        raise MeerkatInputError(f"site mask {site.mask}: not the server's mask (sha256 differs)")


@dataclass
class SiteClient:
    """A site's built client: its ZOClient (shard, synchronised state) and the runtime it steps on."""

    client: Any  # ZOClient
    runtime: Any  # ClientRuntime


class SiteCache:
    """Loaded models, task data and encoded shards, kept for the life of the process (see module doc)."""

    def __init__(self) -> None:
        # -> (LoadedModel, SparseCoordinates, x0): x0 taken at load, before any client stepped on the model
        self._models: dict[tuple[Any, ...], tuple[Any, Any, Any]] = {}
        self._data: dict[str, Any] = {}  # task name -> TaskData
        self._verified: set[tuple[str, str]] = set()  # (partition dir, task) checked against the data
        self._clients: dict[tuple[Any, ...], SiteClient] = {}
        self._catch_up: Any = None  # fed.catchup.SharedCatchUp (``catch_up``)

    @property
    def catch_up(self) -> Any:
        """This process's ``fed.catchup.SharedCatchUp``, made on first use (torch loads lazily here)."""
        if self._catch_up is None:
            from meerkat_core.fed.catchup import SharedCatchUp

            self._catch_up = SharedCatchUp()
        return self._catch_up

    def _model(self, site: SiteConfig, setup: ClientSetup) -> tuple[Any, Any, Any]:
        key = (site.model or setup.model, site.mask, setup.mask_sha256, setup.dtype, site.device,
               setup.trust_remote_code, setup.zo_forward)
        if key not in self._models:
            from meerkat_core.config.train import paired_argument
            from meerkat_core.host_memory import keep_freed_memory
            from meerkat_core.mask import load_mask
            from meerkat_core.models import load_model
            from meerkat_core.zo import SparseCoordinates

            self._models.clear()  # one base model per process: a new run's model replaces the old one
            self._clients.clear()
            loaded = load_model(site.model or setup.model, device=site.device, dtype=setup.dtype,
                                trust_remote_code=setup.trust_remote_code)
            keep_freed_memory(loaded.device.type)  # host_memory.py: CPU steps reuse freed memory, no page faults
            mask = load_mask(site.mask, loaded.model) if site.mask != "all" else None
            indices = None if mask is None else {t.name: t.indices for t in mask.nonempty()}
            coords = SparseCoordinates(loaded.model, indices, paired=paired_argument(setup.zo_forward))
            if coords.k != setup.k:
                raise MeerkatInputError(
                    f"site model {site.model or setup.model}: k={coords.k} but the server has k={setup.k}")
            self._models[key] = (loaded, coords, coords.values())
        return self._models[key]

    def _task_data(self, task: Any) -> Any:
        if task.name not in self._data:
            from meerkat_core.tasks import load_task_data

            self._data[task.name] = load_task_data(task)
        return self._data[task.name]

    def examples(self, site: SiteConfig) -> int:
        """How many training examples the partition gives this site (0: it sits the run out)."""
        from meerkat_core.partition import load_partition

        return len(load_partition(site.partition_dir).client_indices(site.partition_id))

    def get(self, site: SiteConfig, setup: ClientSetup) -> SiteClient:
        """The site's client for ``setup``: built on first use (the same encodings as the in-process engine)."""
        from meerkat_core.encoding import encode_split
        from meerkat_core.fed.client import ClientRuntime, ZOClient
        from meerkat_core.fed.simulator import verify_train_partition
        from meerkat_core.partition import load_partition
        from meerkat_core.tasks import get_task

        loaded, coords, x0 = self._model(site, setup)
        key = (*site.data_key(), setup.task, setup.max_length, setup.batch_size, setup.loss, id(loaded))
        if key in self._clients:
            return self._clients[key]
        task = get_task(setup.task)
        manifest = load_partition(site.partition_dir)
        data = self._task_data(task)
        check = (site.data_key()[0], task.name)
        if check not in self._verified:
            verify_train_partition(manifest, task, data)
            self._verified.add(check)
        idx = manifest.client_indices(site.partition_id)
        if not idx:
            raise MeerkatInputError(f"partition {site.partition_dir}: client {site.partition_id} has no data")
        # encode_split tokenizes example by example, so encoding the shard equals the in-process subset
        enc = encode_split(loaded.tokenizer, task, data.train.select(idx), max_length=setup.max_length)
        runtime = ClientRuntime(model=loaded.model, coords=coords, pad_id=loaded.tokenizer.pad_token_id,
                                batch_size=setup.batch_size, loss=setup.loss)
        self._clients[key] = SiteClient(ZOClient(site.partition_id, enc, x0), runtime)
        return self._clients[key]
