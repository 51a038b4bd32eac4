"""``meerkat models`` and ``meerkat tasks``: what is built in and where it comes from."""

from __future__ import annotations

from rich.table import Table

from meerkat_cli.common import JsonOption, cli_errors, emit_json, out


def models_command(json_out: bool = JsonOption) -> None:
    """List the built-in models, their parameter counts and where their files are."""
    with cli_errors(json_out):
        from meerkat_core.models import builtin_model_info

        rows = builtin_model_info()
    if json_out:
        emit_json(rows)
        return
    table = Table(title="built-in models", title_justify="left")
    for col in ("name", "parameters", "description", "files"):
        table.add_column(col, justify="right" if col == "parameters" else "left")
    for r in rows:
        table.add_row(str(r["name"]), f"{r['parameters']:,}", str(r["description"]), str(r["files"]))
    out.print(table)


def tasks_command(json_out: bool = JsonOption) -> None:
    """List the built-in tasks: labels, label words, prompt template and data source."""
    from meerkat_core.tasks.registry import BUILTIN_TASKS, DEFAULT_TASK

    rows = [
        {
            "name": t.name,
            "default": t.name == DEFAULT_TASK,
            "description": t.description,
            "labels": list(t.label_names),
            "label_words": list(t.label_words),
            "template": t.template,
            "source": t.source if t.hub is None else f"hub:{t.hub.path}",
            "license": t.license,
        }
        for t in BUILTIN_TASKS.values()
    ]
    if json_out:
        emit_json(rows)
        return
    table = Table(title="built-in tasks (or pass a task JSON file, see docs/TASKS.md)", title_justify="left")
    for col in ("name", "labels → words", "template", "source", "description"):
        table.add_column(col)
    for r in rows:
        words = ", ".join(f"{a}→{b!r}" for a, b in zip(r["labels"], r["label_words"]))
        name = f"{r['name']} (default)" if r["default"] else r["name"]
        table.add_row(name, words, repr(r["template"]), r["source"], r["description"])
    out.print(table)
