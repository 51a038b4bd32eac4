"""``meerkat gradip inspect``: a run's GradIP trajectories per client, their statistics and the
Meerkat-vp classification (with the margin to each threshold)."""

from __future__ import annotations

import math
from typing import Any

from rich.markup import escape
from rich.table import Table

from meerkat_cli.common import JSON_PARAM, cli_errors, emit_json, err, new_app, out, print_table
from meerkat_cli.options import config_command
from meerkat_core.config import InspectConfig
from meerkat_core.gradip.classify import SIGNAL_LABELS

gradip_app = new_app(help="GradIP trajectories of a run.", no_args_is_help=True)


def _num(v: Any, fmt: str = "{:.3g}") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "inf" if isinstance(v, float) and v == math.inf else "-"
    return fmt.format(v)


def _vs(value: float, thr: float | None) -> str:
    """``value``, green with a tick when it passes its threshold."""
    if thr is None:
        return _num(value)
    ok = isinstance(value, float) and not math.isnan(value) and value > thr
    return f"[green]{_num(value)} ✓[/]" if ok else f"{_num(value)}  "


PAPER_STATS = ("rho_later", "rho_quie")


def _table(rep: Any) -> Table:
    thr = rep.classifier["thresholds"]
    short = f", [yellow]SHORT calibration ({rep.calibration_steps} < {rep.min_calibration_steps} steps)[/]" \
        if rep.short_calibration else ""
    title = (f"GradIP, round {rep.round} of {rep.run} ({rep.algorithm}; classifier {rep.classifier['name']}, "
             f"decision: {rep.decision_source}, {rep.outcome}{short})")
    table = Table(title=title, title_justify="left")
    need = rep.min_calibration_steps
    stats = list(PAPER_STATS) + [k for k in thr if k not in PAPER_STATS]
    cols = [("client", "right"), ("entropy", "right"), ("extreme", "center"),
            (f"steps (needs {need})" if need else "steps", "right"), ("|GradIP| init/later", "right")]
    cols += [(f"{k} (>{_num(thr[k])})" if k in thr else k, "right") for k in stats]
    on_loss = rep.signal == "loss"  # the decision reads the loss: show it beside |GradIP|
    if on_loss:
        cols += [("loss later", "right"), (f"loss over round {rep.round}'s steps", "left")]
    cols += [(f"|GradIP| over round {rep.round}'s steps", "left"), ("flagged", "center"), ("stopped", "center"),
             ("rounds", "right"), ("|GradIP| mean per round taken", "left")]
    for col, just in cols:
        table.add_column(col, justify=just, no_wrap=True)
    for r in rep.rows:
        s = r.stats
        table.add_row(
            str(r.client),
            _num(r.label_entropy_bits, "{:.3f}"),
            "-" if r.is_extreme is None else ("[red]yes[/]" if r.is_extreme else ""),
            f"[yellow]{r.steps} (short)[/]" if r.steps < need else str(r.steps),
            f"{_num(s.get('mean_initial'))} / {_num(s.get('mean_later'))}",
            *(_vs(s.get(k, math.nan), thr.get(k)) for k in stats),
            *((_num(s.get("loss_later")), r.loss_sparkline) if on_loss else ()),
            r.sparkline,
            "[bold red]FLAG[/]" if r.flagged else "",
            "-" if r.stopped is None else ("yes" if r.stopped else ""),
            str(len(r.history.rounds)),
            r.history.sparkline,
        )
    return table


def _footer(rep: Any) -> list[str]:
    lines = [f"decision: {rep.outcome}" + (f" ({rep.reason})" if rep.reason else "")]
    if rep.warning():
        lines.append(f"[yellow]warning:[/] {escape(rep.warning() or '')}")
    for w in (rep.loss_warning, rep.lm_warning):
        if w:
            lines.append(f"[yellow]warning:[/] {escape(w)}")
    det = rep.detector()
    if det is not None:
        verdict = "exactly the single-label clients" if det["exact"] else (
            f"false positives {det['false_positives']}, false negatives {det['false_negatives']}")
        lines.append(f"flagged {det['flagged']}; single-label clients {det['extreme']}: {verdict}")
        for key, s in det["separation"].items():
            lines.append(f"  {key}: threshold {_num(s['threshold'])}, min over single-label {_num(s['min_extreme'])}, "
                         f"max over the others {_num(s['max_other'])}")
    else:
        lines.append(f"flagged {rep.flagged}")
    p = rep.classifier["params"]
    if "initial_frac" in p:
        lines.append(f"phases: initial = first {p['initial_frac']:.0%} of steps, later = last {p['later_frac']:.0%}; "
                     f"quiet level sigma = {p['quiet_factor']} x initial mean")
    pop = rep.population
    if "centre" in pop:
        lines.append(f"population: {int(pop['clients'])} clients; the others' later {SIGNAL_LABELS[rep.signal]} level "
                     f"{math.exp(pop['centre']):.3g} (log {pop['centre']:.3g}), "
                     f"scale {pop['scale']:.3g} (noise floor {pop['noise_floor']:.3g}) in log units; "
                     f"gap {pop['gap']:.3g} scales after the {int(pop['split'])} lowest")
    lines.extend(f"note: {escape(n)}" for n in rep.notes if n != rep.warning())
    return lines


def _inspect(cfg: InspectConfig, json_out: bool) -> None:
    from meerkat_core import api

    with cli_errors(json_out):
        rep = api.inspect_gradip(cfg)
    if cfg.plot is not None:
        err.print(f"wrote {cfg.plot}", markup=False)
    if json_out:
        emit_json(rep.to_json())
        return
    print_table(_table(rep))
    for line in _footer(rep):
        out.print(line)


gradip_app.command("inspect")(config_command(
    InspectConfig, _inspect, command="gradip inspect", extras=[JSON_PARAM],
    doc="""Per client: trajectory statistics, a sparkline of |GradIP|, the Meerkat-vp classification and
    whether the client was stopped early. Works on plain Meerkat runs too (what vp would decide).""",
))
