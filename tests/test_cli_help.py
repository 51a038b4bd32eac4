"""Every command's --help renders, and renders its texts literally: no rich markup (``'meerkat[flower]'``
once rendered as ``'meerkat'``, the bracket taken for a style tag) and no emoji codes (``hf:ID:CONFIG``
once rendered as ``hf🆔CONFIG``)."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from meerkat_cli.app import app


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the app, found by walking it (so a new command is covered). Duck-typed:
    typer >= 0.22 builds on its own copy of click."""
    found = [path]
    if hasattr(group, "commands"):
        for name, sub in sorted(group.commands.items()):
            found += _commands(sub, path + (name,))
    return found


COMMANDS = _commands(typer.main.get_command(app))


def _help(args: tuple[str, ...]) -> str:
    res = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "400", "NO_COLOR": "1"})
    assert res.exit_code == 0, res.output
    return res.output


def test_every_command_is_found() -> None:
    assert {("train",), ("mask", "stats"), ("gradip", "inspect"), ("export",), ("partition",),
            ("site", "serve"), ("report",), ("tasks",), ("tasks", "show")} <= set(COMMANDS)


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "meerkat")
def test_help_renders_literally(args: tuple[str, ...]) -> None:
    text = _help(args)
    odd = sorted({c for c in text if ord(c) >= 0x1F000 or 0x2600 <= ord(c) <= 0x27BF})
    assert not odd, f"meerkat {' '.join(args)} --help renders {odd}"
    assert "[/" not in text  # no markup tags


def test_bracketed_and_colon_texts_survive() -> None:
    mask = " ".join(_help(("mask",)).split())  # undo the table's line wrapping
    assert "hf:ID, optionally with :CONFIG and @SPLIT (e.g. hf:allenai/c4:en@validation)" in mask
    assert "cuda[:N]" in mask
    train = " ".join(_help(("train",)).split())
    assert 'pip install -c constraints.txt -e ".[flower]"' in train and "--z-cache-mb" in train
    assert 'pip install -c constraints.txt -e ".[tensorboard]"' in train and "--log" in train
    report = " ".join(_help(("report",)).split())
    assert "cumulative bytes [up + down], one line per run" in report and "RUN" in report and "--plot" in report


def test_missing_flwr_error_shows_the_install_line(monkeypatch: pytest.MonkeyPatch, tiny_mask, tiny_partition,
                                                   tmp_path) -> None:
    """The one-line error without the extra once read `pip install 'meerkat'` (markup swallowed "[flower]")."""
    import sys

    from tests.conftest import run_cli

    monkeypatch.setitem(sys.modules, "flwr", None)  # as without the extra: `import flwr` raises ImportError
    res = run_cli("train", "--model", "tiny-llama", "--mask", str(tiny_mask), "--partition", str(tiny_partition),
                  "--task", "sentiment2", "--out", str(tmp_path / "r"), "--engine", "flower-sim", check=False)
    assert res.returncode == 2
    assert 'pip install -c constraints.txt -e ".[flower]"' in " ".join(res.stderr.split())
    assert not (tmp_path / "r").exists()
