"""The import layering of docs/ARCHITECTURE.md: a module imports only its own layer or lower ones, and
the packages of one layer import each other without cycles. Every import statement counts, at module
level or inside a function: a function-level import is no way around a layer.

Run it as a script (``python tests/test_layers.py``) to list the offending imports.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Lowest first. A unit is a top-level module or package of meerkat_core (or all of meerkat_cli).
LAYERS: list[tuple[str, ...]] = [
    ("atomic", "errors", "faults", "hashing", "heap", "host_memory", "jsonsafe", "st_bytes", "paths", "config"),
    ("zo", "mask", "partition", "tasks", "models", "encoding", "scoring", "evaluation", "corpus"),
    ("gradip", "rundir"),
    ("fed", "compare"),
    ("engines", "flower"),
    ("api",),
    ("meerkat_cli",),
]
RANK = {unit: i for i, units in enumerate(LAYERS) for unit in units}
# meerkat_core/__init__.py holds __version__ and re-exports the api lazily: importable from anywhere.
ROOT_PACKAGE = "meerkat_core"


def unit_of_module(module: str) -> str | None:
    """The layer unit of a dotted module name (None: not ours, or the root package itself)."""
    parts = module.split(".")
    if parts[0] == "meerkat_cli":
        return "meerkat_cli"
    if parts[0] != ROOT_PACKAGE or len(parts) == 1:
        return None
    return parts[1]


def unit_of_file(path: Path) -> str | None:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return unit_of_module(".".join(parts))


def imported_units(path: Path) -> list[tuple[int, str]]:
    """(line, unit) of every meerkat import in a file, wherever the statement is."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, unit_of_module(alias.name)) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == ROOT_PACKAGE:  # from meerkat_core import api / models / __version__
                found += [(node.lineno, a.name if a.name in RANK else None) for a in node.names]
            else:
                found.append((node.lineno, unit_of_module(node.module)))
    return [(line, u) for line, u in found if u is not None]


def package_files() -> list[Path]:
    return sorted(p for pkg in ("meerkat_core", "meerkat_cli") for p in (ROOT / pkg).rglob("*.py"))


def violations() -> list[str]:
    problems = []
    edges: dict[str, set[str]] = {}
    for path in package_files():
        me = unit_of_file(path)
        if me is None:
            continue
        if me not in RANK:
            problems.append(f"{path.relative_to(ROOT)}: unit {me!r} has no layer in tests/test_layers.py")
            continue
        for line, unit in imported_units(path):
            if unit == me:
                continue
            if unit not in RANK:
                problems.append(f"{path.relative_to(ROOT)}:{line}: imports {unit!r}, which has no layer")
            elif RANK[unit] > RANK[me]:
                problems.append(f"{path.relative_to(ROOT)}:{line}: {me} (layer {RANK[me]}) imports {unit} "
                                f"(layer {RANK[unit]}): an upward import")
            elif RANK[unit] == RANK[me]:
                edges.setdefault(me, set()).add(unit)
    problems += [f"cycle between units of one layer: {' -> '.join(c)}" for c in _cycles(edges)]
    return problems


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(u: str, stack: list[str]) -> None:
        state[u] = "open"
        for v in sorted(edges.get(u, ())):
            if state.get(v) == "open":
                found.append(stack[stack.index(v):] + [v] if v in stack else [u, v])
            elif v not in state:
                visit(v, stack + [v])
        state[u] = "done"

    for u in sorted(edges):
        if u not in state:
            visit(u, [u])
    return found


def test_no_upward_imports_and_no_cycles() -> None:
    problems = violations()
    assert not problems, "\n".join(problems)


def test_benchmarks_and_examples_call_the_api_not_the_cli() -> None:
    files = sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "examples").glob("*.py"))
    offenders = [f"{p.relative_to(ROOT)}:{line}" for p in files for line, unit in imported_units(p)
                 if unit == "meerkat_cli"]
    texts = [p for p in files if "typer.testing" in p.read_text() or "CliRunner" in p.read_text()]
    assert not offenders and not texts, (offenders, texts)


def test_fed_never_imports_flower() -> None:
    for path in (ROOT / "meerkat_core" / "fed").rglob("*.py"):
        assert "flower" not in {u for _, u in imported_units(path)}, path


if __name__ == "__main__":
    problems = violations()
    print("\n".join(problems) or "layering: no upward import, no cycle")
    sys.exit(1 if problems else 0)
