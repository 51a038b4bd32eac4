"""Typer options generated from a command's configuration dataclass (``meerkat_core.config``).

``config_command(cls, run, ...)`` returns a function Typer can register: its parameters are one option
(or argument) per setting of ``cls`` (flag, help, default and choices from the declaration, see
``meerkat_core.config.settings``), optionally ``--config FILE.toml``, and the command's own extra
parameters (``--json``). When called it builds ``cls`` from the file (if given) with the flags actually
given on the command line on top, and passes it to ``run(cfg, **extras)``. A flag left out takes the
file's value, else the declared default; a required setting given nowhere is a one-line error.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence

import typer

from meerkat_cli.common import cli_errors
from meerkat_core.config.settings import SettingInfo, build, describe, load_config_file

ChoicesFn = Callable[[], Sequence[str]]


def _cli_type(info: SettingInfo) -> Any:
    """The annotation Typer gets: ``Optional[...]`` where the command line may leave the setting out."""
    args = typing.get_args(info.type)
    optional = type(None) in args
    inner = next(a for a in args if a is not type(None)) if optional else info.type
    if typing.get_origin(inner) is list:
        return Optional[List[str]]  # a repeatable option (list settings hold strings)
    return Optional[inner] if optional or info.required else inner


def _help(info: SettingInfo, choices: Sequence[str]) -> str:
    text = info.help
    if choices:
        text += f" One of: {', '.join(choices)}."
    return text


def _parameter(info: SettingInfo, choices: Sequence[str]) -> inspect.Parameter:
    if info.positional:
        default: Any = typer.Argument(... if info.required else info.default, help=_help(info, choices),
                                      show_default=not info.required, metavar=info.metavar)
    else:
        if info.required or isinstance(info.default, list):
            value = None
        else:
            value = info.default
        text = _help(info, choices) + (" [required]" if info.required else "")
        default = typer.Option(value, *info.flags, help=text, show_default=not info.required and value is not None,
                               metavar=info.metavar)
    return inspect.Parameter(info.ident, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=_cli_type(info))


def config_command(
    cls: type,
    run: Callable[..., None],
    *,
    command: str,
    doc: str,
    extras: Sequence[inspect.Parameter] = (),
    config_file: bool = False,
    choices: Mapping[str, ChoicesFn] | None = None,
) -> Callable[..., None]:
    """A Typer command for configuration class ``cls`` (see the module docstring).

    ``extras``: further parameters (e.g. ``--json``), passed to ``run`` by name; ``choices``: choice
    lists known only at run time (registries), by dotted setting path, for the help text."""
    infos = [info for info in describe(cls) if info.cli]
    dynamic = dict(choices or {})
    params = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)]
    params += [_parameter(info, list(dynamic[info.dotted]()) if info.dotted in dynamic else info.choice_list())
               for info in infos]
    if config_file:
        params.append(inspect.Parameter(
            "config_file", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
            default=typer.Option(None, "--config", help=f"A TOML file of `meerkat {command}` settings (a run's "
                                 "config.toml, for one); flags given here override it.", metavar="FILE.toml")))
    params += list(extras)
    names = {p.name for p in params}
    if len(names) != len(params):
        raise TypeError(f"{cls.__name__}: a setting's name collides with an extra parameter")

    def command_fn(ctx: typer.Context, **kwargs: Any) -> None:
        if ctx.invoked_subcommand is not None:  # a group callback (``meerkat mask stats``): not this command
            return
        extra = {p.name: kwargs.pop(p.name) for p in extras}
        path = kwargs.pop("config_file", None)
        given = {}
        for info in infos:
            source = ctx.get_parameter_source(info.ident)  # click's enum, or the copy typer >= 0.22 vendors
            if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
                value = kwargs[info.ident]
                given[info.path] = list(value) if isinstance(value, (list, tuple)) else value
        with cli_errors(bool(extra.get("json_out", False))):
            cfg = load_config_file(cls, path, command, given) if path is not None else build(cls, given)
        run(cfg, **extra)

    command_fn.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command_fn.__doc__ = doc
    command_fn.__name__ = f"{command.replace(' ', '_')}_command"
    return command_fn
