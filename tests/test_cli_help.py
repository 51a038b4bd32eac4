"""Every command's --help renders its option texts literally (rich markup and emoji codes are not
applied to them: "hf:ID:CONFIG" once rendered as "hf🆔CONFIG")."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from meerkat_cli.app import app

COMMANDS = [[], ["mask"], ["mask", "stats"], ["mask", "compare"], ["partition"], ["train"], ["eval"],
            ["gradip"], ["gradip", "inspect"], ["export"], ["models"], ["tasks"], ["site"], ["site", "serve"]]


def _help(args: list[str]) -> str:
    res = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "400", "NO_COLOR": "1"})
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "meerkat")
def test_help_has_no_emoji(args: list[str]) -> None:
    text = _help(args)
    odd = sorted({c for c in text if ord(c) >= 0x1F000 or 0x2600 <= ord(c) <= 0x27BF})
    assert not odd, f"meerkat {' '.join(args)} --help renders {odd}"


def test_literal_option_texts_survive() -> None:
    text = " ".join(_help(["mask"]).split())  # undo the table's line wrapping
    assert "hf:ID, optionally with :CONFIG and @SPLIT (e.g. hf:allenai/c4:en@validation)" in text
    assert "cuda[:N]" in text
    assert "--z-cache-mb" in _help(["train"])


def test_flower_install_line_survives_in_help_and_errors(monkeypatch: pytest.MonkeyPatch, tiny_mask, tiny_partition,
                                                         tmp_path) -> None:
    """rich markup once swallowed "[flower]" (`pip install 'meerkat'`), in --help and in the missing-flwr error."""
    from tests.conftest import run_cli

    assert 'pip install -c constraints.txt -e ".[flower]"' in " ".join(_help(["train"]).split())
    monkeypatch.setitem(sys.modules, "flwr", None)  # as without the extra: `import flwr` raises ImportError
    res = run_cli("train", "--model", "tiny-llama", "--mask", str(tiny_mask), "--partition", str(tiny_partition),
                  "--task", "sentiment2", "--out", str(tmp_path / "r"), "--engine", "flower-sim", check=False)
    assert res.returncode == 2
    assert 'pip install -c constraints.txt -e ".[flower]"' in " ".join(res.stderr.split())
    assert not (tmp_path / "r").exists()
