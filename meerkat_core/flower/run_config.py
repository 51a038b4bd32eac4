"""A configuration dataclass <-> Flower's run config (``[tool.flwr.app.config]``, ``--run-config``).

The keys are derived from the dataclass fields, never written by hand: a field ``local_steps`` is the key
``local-steps`` (the CLI option's name without ``--``); a field that is itself a dataclass (a nested group
such as ``vp``) contributes its fields under a dotted prefix (``vp.calibration-steps``), which is how Flower
flattens a nested TOML table. Values are TOML scalars (str, int, float, bool); an optional field takes the
string ``"none"`` for ``None``, a list of strings (``--log csv --log tensorboard``) is one comma-separated
string (``"csv,tensorboard"``), and a field without a default is written as ``""`` (required: the ServerApp
refuses to start until it is set with ``--run-config``).

flwr-free on purpose: the CLI, the tests and the app's ``pyproject.toml`` generator use it without Flower.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import MISSING, dataclass
from typing import Any, Mapping, Union

from meerkat_core.errors import MeerkatInputError

Scalar = Union[str, int, float, bool]
NONE = "none"  # the run-config spelling of None for an optional field
REQUIRED = ""  # the run-config value of a field that has no default


@dataclass(frozen=True)
class RunConfigKey:
    """One leaf field of a (possibly nested) configuration dataclass, as a run-config key."""

    key: str  # e.g. "local-steps" or "vp.calibration-steps"
    path: tuple[str, ...]  # field names from the top dataclass down, e.g. ("vp", "calibration_steps")
    kind: type  # str, int, float, bool, or list (of str: comma-separated in the run config)
    optional: bool  # None allowed
    default: Any  # MISSING when the field has no default

    @property
    def required(self) -> bool:
        return self.default is MISSING

    def toml_default(self) -> Scalar:
        if self.required:
            return REQUIRED
        if self.default is None:
            return NONE
        return ",".join(self.default) if self.kind is list else self.default

    def parse(self, value: Scalar) -> Any:
        """The field's value from a run-config value (TOML scalar), or an input error naming the key."""
        if self.optional and isinstance(value, str) and value.strip().lower() == NONE:
            return None
        kind = self.kind
        if kind is list and isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        ok = (
            (kind is bool and isinstance(value, bool))
            or (kind is int and isinstance(value, int) and not isinstance(value, bool))
            or (kind is float and isinstance(value, (int, float)) and not isinstance(value, bool))
            or (kind is str and isinstance(value, str))
        )
        if not ok:
            want = kind.__name__ + (f' or "{NONE}"' if self.optional else "")
            raise MeerkatInputError(f"run config {self.key} = {value!r}: expected {want}")
        return float(value) if kind is float else value


def _leaf_type(hint: Any, where: str) -> tuple[type, bool]:
    """(scalar type, optional) of a field's annotation: ``int``, ``int | None``, ``Optional[str]``, ..."""
    origin = typing.get_origin(hint)
    if origin is Union or (hasattr(types, "UnionType") and origin is getattr(types, "UnionType")):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            kind, _ = _leaf_type(args[0], where)
            return kind, True
    if hint in (str, int, float, bool):
        return hint, False
    if origin is list and typing.get_args(hint) == (str,):
        return list, False
    raise TypeError(f"{where}: annotation {hint!r} has no run-config form (str, int, float, bool, list of str, "
                    "optional)")


def config_keys(cls: type, prefix: str = "", path: tuple[str, ...] = ()) -> list[RunConfigKey]:
    """Every leaf field of ``cls`` (recursing into nested dataclass groups), in declaration order."""
    hints = typing.get_type_hints(cls)
    keys: list[RunConfigKey] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        hint = hints[f.name]
        name = prefix + f.name.replace("_", "-")
        if dataclasses.is_dataclass(hint):
            keys.extend(config_keys(hint, name + ".", path + (f.name,)))
            continue
        kind, optional = _leaf_type(hint, f"{cls.__name__}.{f.name}")
        if f.default is not MISSING:
            default = f.default
        elif f.default_factory is not MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = MISSING
        keys.append(RunConfigKey(name, path + (f.name,), kind, optional, default))
    return keys


def defaults(cls: type, prefix: str = "") -> dict[str, Scalar]:
    """The flat run config of ``cls``'s defaults (``""`` for fields without one)."""
    return {k.key: k.toml_default() for k in config_keys(cls, prefix)}


def _build(cls: type, values: dict[tuple[str, ...], Any], path: tuple[str, ...] = ()) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        sub = path + (f.name,)
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = _build(hints[f.name], values, sub)
        elif sub in values:
            kwargs[f.name] = values[sub]
    return cls(**kwargs)


def from_run_config(
    cls: type, run_config: Mapping[str, Scalar], prefix: str = "", others: tuple[str, ...] = ()
) -> Any:
    """An instance of ``cls`` from the keys of ``run_config`` under ``prefix`` (absent keys: defaults).

    A key under ``prefix`` that ``cls`` does not declare is an input error (a misspelled ``--run-config``
    key must not be ignored), except keys under one of the ``others`` prefixes (another group's keys).
    A required field left at ``""`` is an input error.
    """
    keys = {k.key: k for k in config_keys(cls, prefix)}
    unknown = sorted(k for k in run_config
                     if k.startswith(prefix) and k not in keys and not k.startswith(others))
    if unknown:
        raise MeerkatInputError(f"run config: unknown key {unknown[0]} (known: {', '.join(keys)})")
    values: dict[tuple[str, ...], Any] = {}
    for name, key in keys.items():
        if name not in run_config:
            continue
        raw = run_config[name]
        if key.required and raw == REQUIRED:
            raise MeerkatInputError(f"run config {name} is required: set it with --run-config '{name}=...'")
        values[key.path] = key.parse(raw)
    missing = [k.key for k in keys.values() if k.required and k.path not in values]
    if missing:
        raise MeerkatInputError(f"run config {missing[0]} is required: set it with --run-config '{missing[0]}=...'")
    return _build(cls, values)


def to_run_config(obj: Any, prefix: str = "") -> dict[str, Scalar]:
    """The flat run config of a dataclass instance (``None`` -> ``"none"``)."""
    out: dict[str, Scalar] = {}
    for k in config_keys(type(obj), prefix):
        value = obj
        for name in k.path:
            value = getattr(value, name)
        out[k.key] = NONE if value is None else (",".join(value) if k.kind is list else value)
    return out


def toml_value(value: Scalar) -> str:
    """A TOML literal for a scalar (floats exactly: ``repr`` round-trips)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        text = repr(value)
        return text if any(c in text for c in ".en") else text + ".0"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def toml_lines(config: Mapping[str, Scalar]) -> list[str]:
    """``key = value`` lines (dotted keys stay dotted: TOML reads them as nested tables)."""
    return [f"{k} = {toml_value(v)}" for k, v in config.items()]
