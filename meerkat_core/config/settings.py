"""A command's configuration, declared once: dataclass fields that carry their flag, help and choices.

A configuration is a keyword-only dataclass whose fields are made with ``setting(...)`` (one value) or
``group(...)`` (a nested dataclass of settings, e.g. ``TrainConfig.vp``). Everything else is derived
from that one declaration:

- the command-line flag: ``--`` + the dotted path with ``.`` and ``_`` written as ``-``
  (``vp.calibration_steps`` -> ``--vp-calibration-steps``), unless ``flag=`` says otherwise;
  ``meerkat_cli.options`` generates the Typer options from ``describe(cls)``;
- the TOML form (``--config FILE.toml``, a run's ``config.toml``): one table per group
  (``to_mapping`` / ``from_mapping``; an unknown key is an input error naming the nearest valid one);
- the flat form (``flat_dict`` / ``from_flat``): each setting under its flag name with ``_``
  (``vp_calibration_steps``), the keys of a run's ``config.json`` since format version 1;
- ``check_choices``: every setting with a declared choice list holds one of its choices.

Adding a setting: add a field ``name: type = setting(default, help="...")`` to the dataclass (or to a
group); the flag, the TOML key and the help line follow. Its checks beyond choices go in the config's
``validate``.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import types
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, Union

import tomli_w

from meerkat_core.errors import MeerkatInputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CONFIG_FORMAT = "meerkat.config"
CONFIG_FORMAT_VERSION = 1
# Keys a configuration file may hold besides the settings: what it is, and where a saved one came from.
META_KEYS = ("format", "format_version", "command", "provenance")

# TOML has no null: an optional setting that is None is written as this string (e.g. eval.limit, all
# test examples) and read back as None.
NONE = "none"

Choices = Union[Sequence[str], Callable[[], Sequence[str]]]


def setting(
    default: Any = MISSING,
    *,
    help: str,
    flag: str | None = None,
    short: str | None = None,
    choices: Choices | None = None,
    default_factory: Callable[[], Any] | None = None,
    in_file: bool = True,
    cli: bool = True,
    positional: bool = False,
    metavar: str | None = None,
) -> Any:
    """A dataclass field that is one setting of a command.

    ``flag`` replaces the derived flag (e.g. ``"--self-balancing/--no-self-balancing"``); ``short`` adds
    a short alias (``"-m"``); ``choices`` (a sequence, or a function returning one, for registries) are
    checked by ``check_choices`` and listed in the help; ``in_file=False`` keeps the setting out of
    TOML files (an action of one invocation, like ``--resume``); ``cli=False`` gives it no flag;
    ``positional=True`` makes it a command-line argument instead of an option (``meerkat export RUN``)."""
    meta = {"help": help, "flag": flag, "short": short, "choices": choices, "in_file": in_file, "cli": cli,
            "positional": positional, "metavar": metavar}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata={"setting": meta})
    return field(default=default, metadata={"setting": meta})


def group(cls: type, *, help: str = "") -> Any:
    """A nested group of settings (its own dataclass), e.g. ``vp: VPSettings = group(VPSettings)``."""
    return field(default_factory=cls, metadata={"group": {"help": help}})


@dataclass(frozen=True)
class SettingInfo:
    """One setting of a configuration class, as ``describe`` yields it."""

    path: tuple[str, ...]  # ("vp", "calibration_steps")
    type: Any  # the field's type (resolved annotation)
    default: Any  # MISSING when required
    help: str
    flags: tuple[str, ...]  # ("--model", "-m") or ("--self-balancing/--no-self-balancing",)
    choices: Choices | None
    in_file: bool
    cli: bool
    positional: bool
    metavar: str | None

    @property
    def dotted(self) -> str:
        return ".".join(self.path)

    @property
    def ident(self) -> str:
        """A Python identifier for the setting (also its key in a flat dict): ``vp_calibration_steps``."""
        return "_".join(self.path)

    @property
    def flag(self) -> str:
        """The main long flag, e.g. ``--vp-calibration-steps``."""
        return self.flags[0].split("/")[0]

    @property
    def required(self) -> bool:
        return self.default is MISSING

    def choice_list(self) -> list[str]:
        c = self.choices
        if c is None:
            return []
        return list(c() if callable(c) else c)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return MISSING


def describe(cls: type, prefix: tuple[str, ...] = ()) -> Iterator[SettingInfo]:
    """Every setting of ``cls`` (groups expanded, in declaration order)."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if "group" in f.metadata:
            yield from describe(hints[f.name], prefix + (f.name,))
            continue
        meta = f.metadata.get("setting")
        if meta is None:
            raise TypeError(f"{cls.__name__}.{f.name}: declare it with setting(...) or group(...)")
        path = prefix + (f.name,)
        flag = meta["flag"] or "--" + "-".join(path).replace("_", "-")
        flags = (flag,) + ((meta["short"],) if meta["short"] else ())
        yield SettingInfo(path=path, type=hints[f.name], default=_default(f), help=meta["help"], flags=flags,
                          choices=meta["choices"], in_file=meta["in_file"], cli=meta["cli"],
                          positional=meta["positional"], metavar=meta["metavar"])


def _groups(cls: type) -> dict[str, type]:
    hints = _hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if "group" in f.metadata}


# -- values ------------------------------------------------------------------------------------------
def get(obj: Any, path: Sequence[str]) -> Any:
    for name in path:
        obj = getattr(obj, name)
    return obj


def to_mapping(obj: Any, *, files_only: bool = False) -> dict[str, Any]:
    """The nested dict of a configuration (groups as sub-dicts); ``files_only`` drops ``in_file=False``."""
    out: dict[str, Any] = {}
    for info in describe(type(obj)):
        if files_only and not info.in_file:
            continue
        node = out
        for name in info.path[:-1]:
            node = node.setdefault(name, {})
        node[info.path[-1]] = get(obj, info.path)
    return out


def flat_dict(obj: Any) -> dict[str, Any]:
    """Every setting under its flat name (``vp_calibration_steps``): a run's ``config.json`` "train"."""
    return {info.ident: get(obj, info.path) for info in describe(type(obj))}


def _nearest(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(candidates)}"


def _coerce(info: SettingInfo, value: Any, where: str) -> Any:
    """Check a value read from a file against the setting's type (TOML ints may stand for floats)."""
    t = info.type
    origin = typing.get_origin(t)
    allowed: tuple[Any, ...]
    if origin in (Union, types.UnionType):
        allowed = typing.get_args(t)
    else:
        allowed = (t,)
    if type(None) in allowed and (value is None or value == NONE):
        return None
    for a in allowed:
        base = typing.get_origin(a) or a
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if base is bool and isinstance(value, bool):
            return value
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if base is str and isinstance(value, str):
            return value
        if base in (list, tuple) and isinstance(value, list):
            item = (typing.get_args(a) or (object,))[0]
            if item is object or all(isinstance(x, item) for x in value):
                return list(value)
    kind = " or ".join(getattr(a, "__name__", str(a)) for a in allowed if a is not type(None))
    raise MeerkatInputError(f"{where}: {info.dotted} = {value!r} is not a {kind}")


def from_mapping(cls: type, data: Mapping[str, Any], where: str = "config",
                 overrides: Mapping[tuple[str, ...], Any] | None = None) -> Any:
    """Build ``cls`` from a nested mapping (a TOML file's tables), then apply ``overrides`` (by path).

    Unknown keys are input errors naming the nearest valid key; missing required settings too."""
    infos = {info.path: info for info in describe(cls)}
    values: dict[tuple[str, ...], Any] = {}

    def walk(node: Mapping[str, Any], klass: type, prefix: tuple[str, ...]) -> None:
        groups = _groups(klass)
        for key, value in node.items():
            path = prefix + (key,)
            if not prefix and key in META_KEYS:
                continue
            if key in groups:
                if not isinstance(value, Mapping):
                    raise MeerkatInputError(f"{where}: {'.'.join(path)} must be a table ([{'.'.join(path)}])")
                walk(value, groups[key], path)
                continue
            info = infos.get(path)
            if info is None or not info.in_file:
                valid = [".".join(p) for p, i in infos.items() if i.in_file]
                raise MeerkatInputError(f"{where}: unknown key {'.'.join(path)!r}{_nearest('.'.join(path), valid)}")
            values[path] = _coerce(info, value, where)

    walk(data, cls, ())
    values.update(overrides or {})
    return build(cls, values, where)


def build(cls: type, values: Mapping[tuple[str, ...], Any], where: str = "config") -> Any:
    """``cls`` from settings by path; absent ones take their declared defaults."""
    groups = _groups(cls)
    kwargs: dict[str, Any] = {}
    for name, klass in groups.items():
        sub = {p[1:]: v for p, v in values.items() if p[0] == name}
        kwargs[name] = build(klass, sub, where)
    for f in dataclasses.fields(cls):
        if f.name in groups:
            continue
        if (f.name,) in values:
            kwargs[f.name] = values[(f.name,)]
        elif _default(f) is MISSING:
            info = next(i for i in describe(cls) if i.path == (f.name,))
            raise MeerkatInputError(f"{info.flag} is required (give it on the command line or in --config FILE.toml)")
    return cls(**kwargs)


def from_flat(cls: type, flat: Mapping[str, Any], where: str = "config") -> Any:
    """``cls`` from a flat dict (``flat_dict``'s keys; absent ones take their defaults). An unknown key
    is an input error naming the nearest valid one."""
    infos = list(describe(cls))
    names = [info.ident for info in infos]
    for key in flat:
        if key not in names:
            raise MeerkatInputError(f"{where}: unknown setting {key!r}{_nearest(key, names)}")
    return build(cls, {info.path: flat[info.ident] for info in infos if info.ident in flat}, where)


def check_choices(obj: Any) -> None:
    """Every setting with a choice list holds one of its choices, each item of a list setting one of them
    (else a one-line input error)."""
    for info in describe(type(obj)):
        choices = info.choice_list()
        value = get(obj, info.path)
        for v in value if isinstance(value, list) else [value]:
            if choices and v not in choices:
                raise MeerkatInputError(f"{info.flag} {v}: expected one of {', '.join(choices)}")


def changed(a: Any, b: Any, ignore: Sequence[str] = ()) -> list[str]:
    """Flat names of the settings whose values differ between two configurations of one class."""
    fa, fb, skip = flat_dict(a), flat_dict(b), set(ignore)
    return [k for k in fa if k not in skip and fa[k] != fb.get(k)]


# -- TOML files --------------------------------------------------------------------------------------
def read_toml(path: str | Path, flag: str = "--config") -> dict[str, Any]:
    """A TOML file's tables; unreadable or malformed files are one-line input errors."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise MeerkatInputError(f"{flag} {p}: no such file") from None
    except IsADirectoryError:
        raise MeerkatInputError(f"{flag} {p}: is a directory; give a .toml file") from None
    except OSError as exc:
        raise MeerkatInputError(f"{flag} {p}: unreadable ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise MeerkatInputError(f"{flag} {p}: not valid TOML ({' '.join(str(exc).split())})") from None


def load_config_file(cls: type, path: str | Path, command: str,
                     overrides: Mapping[tuple[str, ...], Any] | None = None) -> Any:
    """``cls`` from a configuration file of ``command``, with ``overrides`` (flags given) on top."""
    data = read_toml(path)
    where = f"--config {path}"
    if "format" in data and data["format"] != CONFIG_FORMAT:
        raise MeerkatInputError(f"{where}: format {data['format']!r} is not a meerkat configuration ({CONFIG_FORMAT})")
    version = data.get("format_version", CONFIG_FORMAT_VERSION)
    if version != CONFIG_FORMAT_VERSION:
        raise MeerkatInputError(f"{where}: format_version {version!r}; this meerkat reads version {CONFIG_FORMAT_VERSION}")
    if data.get("command", command) != command:
        raise MeerkatInputError(f"{where}: a configuration of `meerkat {data['command']}`, not of `meerkat {command}`")
    return from_mapping(cls, data, where, overrides)


def _toml_value(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _toml_value(x) for k, x in v.items()}
    return NONE if v is None else v


def config_toml(obj: Any, command: str, provenance: Mapping[str, Any] | None = None) -> str:
    """The TOML text of a resolved configuration: format, version and command, the settings (groups as
    tables; None as ``"none"``), then the provenance table when given (ignored when read back)."""
    doc: dict[str, Any] = {"format": CONFIG_FORMAT, "format_version": CONFIG_FORMAT_VERSION, "command": command}
    doc.update(_toml_value(to_mapping(obj, files_only=True)))
    if provenance:
        doc["provenance"] = _toml_value(dict(provenance))
    return tomli_w.dumps(doc)
