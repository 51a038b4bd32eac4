"""The result file between ``meerkat train --engine flower*`` and the ServerApp it submitted.

The command sets the run config key ``flower.result`` to a path; the ServerApp writes there
``{"ok": true, "summary": {...}}`` or ``{"ok": false, "error": "<one line>", "input_error": bool}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from meerkat_core.atomic import write_json_atomic
from meerkat_core.errors import MeerkatError, MeerkatInputError


def write_result(path: str | Path, summary: dict[str, Any] | None = None, error: BaseException | None = None) -> None:
    if error is None:
        body: dict[str, Any] = {"ok": True, "summary": summary}
    else:
        body = {"ok": False, "error": " ".join(str(error).split()) or type(error).__name__,
                "input_error": isinstance(error, MeerkatInputError)}
    p = Path(path)
    if not p.parent.is_dir():  # submitted from another machine: its path means nothing here
        return
    write_json_atomic(p, body)


def read_result(path: str | Path) -> dict[str, Any]:
    """The ServerApp's summary; its error re-raised (MeerkatInputError for input errors)."""
    p = Path(path)
    if not p.is_file():
        raise MeerkatError("the Flower ServerApp ended without a result")
    body = json.loads(p.read_text())
    if body.get("ok"):
        return body["summary"]
    if body.get("input_error"):
        raise MeerkatInputError(body["error"])
    raise MeerkatError(body["error"])
