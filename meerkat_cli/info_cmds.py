"""``meerkat models`` and ``meerkat tasks``: what is built in and where it comes from."""

from __future__ import annotations

import typer
from rich.table import Table

from meerkat_cli.common import JSON_PARAM, JsonOption, cli_errors, emit_json, err, new_app, out
from meerkat_cli.options import config_command
from meerkat_core.config import TaskShowConfig


def models_command(json_out: bool = JsonOption) -> None:
    """List the built-in models, their parameter counts and where their files are."""
    with cli_errors():
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


tasks_app = new_app(help="List the built-in tasks (no argument) or show what a task builds (show).",
                    invoke_without_command=True)


@tasks_app.callback()
def tasks_command(ctx: typer.Context, json_out: bool = JsonOption) -> None:
    """List the built-in tasks: labels, label words, prompt template and data source (docs/TASKS.md)."""
    if ctx.invoked_subcommand is not None:
        return
    from meerkat_core.tasks.registry import builtin_task_info

    rows = builtin_task_info()
    if json_out:
        emit_json(rows)
        return
    table = Table(title="built-in tasks (or pass a task file: docs/TASKS.md; `meerkat tasks show NAME`)",
                  title_justify="left")
    for col in ("name", "labels → words", "template", "source", "description"):
        table.add_column(col)
    for r in rows:
        words = ", ".join(f"{a}→{b!r}" for a, b in zip(r["labels"], r["label_words"]))
        name = f"{r['name']} (default)" if r["default"] else r["name"]
        table.add_row(name, words, repr(r["template"]), r["source"], r["description"])
    out.print(table)


def _show(cfg: TaskShowConfig, json_out: bool) -> None:
    from meerkat_core import api  # transformers (the tokenizer): imported when the command runs, not for --help

    with cli_errors():
        doc = api.show_task(cfg)
    if json_out:
        emit_json(doc)
        return
    out.print(f"[bold]{doc['name']}[/]: {doc['description']}")
    out.print(f"source: {doc['source']}   template: {doc['template']!r}")
    if doc["preprocess"]:
        out.print("preprocess: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in doc["preprocess"].items()))
    words = Table(title=f"label words under {doc['tokenizer']}'s tokenizer"
                  + ("" if doc["single_token"] else " (multi-token: one forward over prompt + word rows)"),
                  title_justify="left")
    for col in ("label", "word", "tokens", "ids"):
        words.add_column(col)
    for w in doc["label_words"]:
        words.add_row(w["label"], repr(w["word"]), " | ".join(repr(t) for t in w["tokens"]), str(w["token_ids"]))
    out.print(words)
    if doc["data_error"]:
        err.print(f"data: {doc['data_error']}")
        return
    counts = Table(title="class counts", title_justify="left")
    counts.add_column("split")
    labels = list(next(iter(doc["class_counts"].values())))
    for lab in labels:
        counts.add_column(lab, justify="right")
    for sp, c in doc["class_counts"].items():
        counts.add_row(sp, *(str(c[lab]) for lab in labels))
    out.print(counts)
    for i, ex in enumerate(doc["examples"]):
        out.print(f"[bold]{ex['split']} row {i}[/] (label {ex['label']} -> {ex['label_word']!r}, {ex['prompt_tokens']} tokens):",
                  markup=True)
        out.print(repr(ex["prompt"]), markup=False)


tasks_app.command("show")(config_command(
    TaskShowConfig, _show, command="tasks show", extras=[JSON_PARAM],
    doc="The prompts a task builds for its first rows, each label word's tokens, and class counts per split.",
))
