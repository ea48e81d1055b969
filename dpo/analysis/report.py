"""`dpo report PATH`: one self-contained HTML dashboard (report.html) for a run or a sweep directory.

    python -m dpo report runs/quickstart          # -> runs/quickstart/report.html
    python -m dpo report sweeps/beta              # a sweep directory (sweep_summary.json + trials/)

Reads the files a run or a sweep leaves on disk and nothing else: it never imports the trainer, TRL or
torch, so it works on any finished (or killed) run. Everything is inline (CSS, SVG charts drawn in
Python by dpo/analysis/plots.py, a few lines of JS to sort the trials table): the file opens offline.

Run page: train and held-out curves on shared step axes, with the best step, the early-stopping point
and the overfitting onset marked; stop reason and warnings; the recipe and what it changed vs its base;
the data card; eval.json when present. Sweep page: the trials table (sortable, ordered by the objective),
objective against each hyperparameter, the top trials' held-out curves overlaid, pruned and failed
trials with their reasons.
"""

from __future__ import annotations

import json
import math
import sys
from html import escape
from pathlib import Path
from typing import Any

import yaml

from dpo.analysis.diagnostics import ONSET_NOT_APPLICABLE, onset_not_checked_in
from dpo.analysis.plots import (
    INTERACTIVE_JS,
    PALETTE,
    Marker,
    ScatterPoint,
    Series,
    finite,
    fmt,
    line_chart,
    scatter_chart,
)
from dpo.errors import UserError
from dpo.metrics import METRICS, headline_values
from dpo.rundir.atomic import atomic_write_text
from dpo.rundir.files import (
    DATA_CARD,
    EVAL,
    METRICS_LOG,
    RECIPE_CHANGES,
    REPORT,
    SAMPLES,
    SUMMARY,
    SWEEP_SUMMARY,
    read_json,
    read_json_object,
    read_metrics,
    read_recipe_text,
)
from dpo.rundir.secrets import redact

TRAIN_COLOR, HELD_COLOR = "#1f77b4", "#ff7f0e"
CHOSEN_COLOR, REJECTED_COLOR = "#2ca02c", "#d62728"

# Colours of the series that share a chart with related metrics: an answer side has the same colour on every chart.
SERIES_COLORS = {
    "chosen": CHOSEN_COLOR,
    "rejected": REJECTED_COLOR,
    "accuracy gap": PALETTE[4],
    "margin gap": PALETTE[5],
    "loss gap": PALETTE[6],
}


def _chart_layout() -> dict[str, list[tuple[str, str, str, bool]]]:
    """The run page's charts from the metric table (dpo/metrics.py), in its order: title -> [(metric name in
    metrics.jsonl, legend label, color, is_train)], each chart's train curves first, then its held-out ones.
    Train curves are dashed and per step; held-out ones solid with a dot per evaluation, on the same axes."""
    members: dict[str, list] = {}
    for metric in METRICS:
        if metric.chart:
            members.setdefault(metric.chart, []).append(metric)
    layout = {}
    for title, metrics in members.items():
        both_places = any(m.in_train for m in metrics) and any(m.in_held_out for m in metrics)
        lines = []
        for train, place in ((True, "train"), (False, "held-out")):
            for m in metrics:
                if not (m.in_train if train else m.in_held_out):
                    continue
                # "chosen, held-out" where a chart mixes places; just "accuracy gap" where all its series are held-out
                label = ", ".join(part for part in (m.series, place if both_places or not m.series else None) if part)
                color = SERIES_COLORS[m.series] if m.series else TRAIN_COLOR if train else HELD_COLOR
                lines.append((m.name if train else m.held_out_name, label, color, train))
        layout[title] = lines
    return layout


RUN_CHARTS = _chart_layout()
TOP_TRIALS = 5  # held-out curves overlaid on the sweep page
STATE_COLORS = {"complete": PALETTE[0], "pruned": PALETTE[8], "failed": PALETTE[1], "running": PALETTE[3]}


def write_report(path: str | Path) -> Path:
    """Build PATH/report.html for a run directory or a sweep directory; returns the file's path.
    Written to a temporary name and renamed, so a reader never sees half a file."""
    path = Path(path)
    # A part of a file with the wrong shape (a list where an object belongs, text where a number does: a file edited by
    # hand) is left out where it is read, as a file that is not there is (as_dict, dicts, finite); a part the page
    # cannot do without is one error line naming the file and the key. Anything else that fails is a bug of this
    # module, and raises as one (a traceback), rather than telling the user that they edited a file.
    if (path / SWEEP_SUMMARY).is_file():
        page = sweep_html(path)
    elif (path / METRICS_LOG).is_file() or (path / SUMMARY).is_file():
        page = run_html(path)
    elif not path.is_dir():
        raise UserError("not a directory (give a run or sweep folder)" if path.exists() else "no such directory",
                        where=str(path))  # fmt: skip
    else:
        raise UserError(
            "neither a run directory (no metrics.jsonl / summary.json) nor a sweep directory (no sweep_summary.json)",
            where=str(path),
        )
    target = path / REPORT
    try:
        atomic_write_text(target, redact(page))  # the page quotes paths, recipe values and generated answers
    except OSError as exc:  # a read-only folder, a full disk: one line, as for any other bad input
        raise UserError(f"cannot write {REPORT}: {exc.strerror or exc}", where=str(path)) from None
    return target


def write_report_or_warn(path: str | Path) -> Path | None:
    """The dashboard is a view of files already written: if it fails, say so on one line and keep the run."""
    try:
        return write_report(path)
    except Exception as exc:  # noqa: BLE001 - any failure here must not lose a finished run
        print(
            f"warning: report.html not written ({type(exc).__name__}: {exc}); retry with: dpo report {path}",
            file=sys.stderr,
        )
        return None


# ---- reading run files (dpo/rundir/files.py reads them) -----------------------------------------


def as_dict(value) -> dict:
    """A part of a run file that should be an object: itself, or {} when it holds something else (null, a list,
    text: a file edited by hand), so that the page leaves that part out as it leaves out a file that is not there."""
    return value if isinstance(value, dict) else {}


def dicts(value) -> list[dict]:
    """A part that should be a list of objects: its objects (none when it is no list)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def metric_series(events: list[dict], name: str) -> list[tuple[float, float]]:
    """(step, value) of metric `name`: held-out ones from evaluation events, train ones from step events."""
    held_out = name.startswith("eval_")
    return [
        (e["step"], e[name])
        for e in events
        if name in e and "step" in e and ("eval_loss" in e) == held_out and isinstance(e[name], int | float)
    ]


# ---- the run page --------------------------------------------------------------------------------


def run_markers(summary: dict | None) -> list[Marker]:
    """The vertical lines of the run's charts; one whose step or label is not what the summary writes is left out."""
    if not summary:
        return []
    markers = []
    if finite(summary.get("best_step")):
        markers.append(Marker(summary["best_step"], f"best {as_dict(summary.get('best_metric')).get('name')}",
                              "#2ca02c"))  # fmt: skip
    stopped = {"early_stopped": "early stop", "autopilot": "autopilot stop"}.get(str(summary.get("stop_reason")))
    if stopped and finite(summary.get("steps")):
        markers.append(Marker(summary["steps"], stopped, "#d62728"))
    onset = as_dict(summary.get("overfitting")).get("onset_step")
    if finite(onset):
        markers.append(Marker(onset, "overfitting onset", "#9467bd"))
    for decision in dicts(as_dict(summary.get("autopilot")).get("decisions")):  # dpo/training/autopilot.py
        changed = as_dict(decision.get("changed"))
        if not finite(decision.get("step")) or not all(isinstance(v, list) and len(v) == 2 for v in changed.values()):
            continue
        changes = ", ".join(f"{key} {new}" for key, (_, new) in changed.items())
        markers.append(Marker(decision["step"], f"autopilot {decision.get('rule')}: {changes}", "#ff7f0e"))
    return markers


def run_charts(events: list[dict], summary: dict | None) -> tuple[list[str], list[str]]:
    """(SVG charts, titles of the charts with nothing logged). All charts share the x range 0..last step."""
    steps = [e["step"] for e in events if isinstance(e.get("step"), int | float)]
    max_steps = (summary or {}).get("max_steps")
    last = max([*steps, max_steps if finite(max_steps) else 0, 1])
    markers = run_markers(summary)
    charts, empty = [], []
    for title, lines in RUN_CHARTS.items():
        series = [
            Series(label, metric_series(events, name), color, dashed=train, dots=not train, width=1.2 if train else 2)
            for name, label, color, train in lines
        ]
        svg = line_chart(title, series, (0, last), markers)
        (charts.append(svg) if svg else empty.append(title))
    return charts, empty


def run_html(run_dir: Path) -> str:
    events = read_metrics(run_dir)
    # objects, each of them: `[1]` or null in a hand-edited file is a one-line error naming it, not a traceback
    summary = read_json_object(run_dir / SUMMARY)
    card = read_json_object(run_dir / DATA_CARD)
    changes = read_json_object(run_dir / RECIPE_CHANGES)
    evaluation = read_json_object(run_dir / EVAL)
    recipe_text = read_recipe_text(run_dir)
    name = recipe_name(recipe_text) or run_dir.name
    charts, empty = run_charts(events, summary)

    body = [f"<h1>Run {escape(name)}</h1>", f'<p class="path">{escape(str(run_dir.resolve()))}</p>']
    body.append(_status_block(summary, events))
    body.append("<h2>Curves</h2>")
    body.append(
        '<p class="note">Train (dashed, every logged step) and held-out (solid, one dot per evaluation; step 0 is the '
        "model before training) on the same axes. Vertical lines: "
        '<span style="color:#2ca02c">best step</span>, <span style="color:#d62728">early stop</span>, '
        '<span style="color:#9467bd">overfitting onset</span>. Hover a chart for the values at a step, drag across '
        "it to zoom into a range of steps (double-click: zoom out), click a legend entry to hide or show its curve.</p>"
    )
    body.append('<div class="grid">' + "".join(charts) + "</div>")
    if empty:
        body.append(f'<p class="note">Not logged in this run: {escape(", ".join(empty))}.</p>')
    if summary:
        body.append(_headline_table(summary))
    samples = read_json_object(run_dir / SAMPLES)
    if samples:
        body.append(samples_section(samples))
    if evaluation:
        body.append(_eval_section(evaluation))
    body.append(_recipe_section(recipe_text, changes))
    if card and as_dict(card.get("audit")):
        body.append(_audit_section(card["audit"]))
    if card:
        rest = {k: v for k, v in card.items() if k != "audit"}
        body.append("<h2>Data card</h2>" + _kv_table(_flatten(rest)))
    return html_page(f"dpo report: {name}", "".join(body))


def _audit_section(audit: dict) -> str:
    """The label audit (data_card.json `audit`, written by dpo/training/audit_use.py): the flip-rate estimate with
    its interval, what was done with the suspect pairs, and the loss keys set from the estimate."""
    rate = as_dict(audit.get("flip_rate"))
    suspects = as_dict(audit.get("suspects"))
    rows = dicts(suspects.get("rows"))
    shown = ", ".join(f"{r.get('source')}:{r.get('row')}" for r in rows[:10]) + (
        f" (and {len(rows) - 10} more)" if len(rows) > 10 else ""
    )

    def percent(key: str) -> str:
        return f"{rate[key]:.1%}" if finite(rate.get(key)) else "-"

    flat = {
        "estimated flip rate": f"{percent('estimate')} (95% interval {percent('low')} to {percent('high')})",
        "pairs audited": audit.get("pairs"),
        "separation of clean margins": audit.get("separation"),
        "suspect pairs": f"{suspects.get('action', 'keep')}: {suspects.get('pairs', 0)}"
        + (f" ({shown})" if rows else ""),
        "expected flip rate of the pairs trained on": audit.get("expected_flip_rate_after"),
        **{f"{key} (auto)": value for key, value in as_dict(audit.get("auto")).items()},
    }
    return (
        "<h2>Label audit</h2>"
        '<p class="note">Estimated before training with the frozen model (docs/audit.md); every pair\'s p_flipped '
        f"is in {escape(str(audit.get('file', 'audit.json')))}.</p>" + _kv_table(flat)
    )


def recipe_name(recipe_text: str) -> str | None:
    """The `name:` of a recipe's text (recipe.yaml of a run), None when it has none or the text is not a recipe.
    Parsed, not read off the line: recipe.yaml is dumped with quotes and escapes (`name: "\\u5B9E\\u9A8C"` for 实验,
    `name: 'no'`), and a long name is folded onto the next line."""
    try:
        recipe = yaml.safe_load(recipe_text)
    except (yaml.YAMLError, RecursionError):  # a recipe.yaml edited into something else: the folder's name instead
        return None
    name = recipe.get("name") if isinstance(recipe, dict) else None
    return str(name) if name not in (None, "") else None


def _status_block(summary: dict | None, events: list[dict]) -> str:
    if not summary:
        last = max((e.get("step", 0) for e in events), default=0)
        return (
            '<div class="status warn"><b>No summary.json</b>: the run did not finish (killed, failed or still '
            f"running); curves up to step {last}.</div>"
        )
    best = as_dict(summary.get("best_metric"))
    overfitting = as_dict(summary.get("overfitting"))
    onset = overfitting.get("onset_step")
    checked = "overfitting" in summary  # a run stopped on a non-finite loss ends before its diagnostics run
    onset_not_found = ONSET_NOT_APPLICABLE if onset_not_checked_in(overfitting) else "not detected"
    if not checked:
        onset_not_found = "not computed"
    items = [
        ("stop reason", summary.get("stop_reason")),
        ("steps", f"{summary.get('steps')} of {summary.get('max_steps')}"),
        ("best step", summary.get("best_step")),
        (f"best {best.get('name', 'metric')} ({best.get('mode', '-')})", cell_text(best.get("value"))),
        ("final weights", summary.get("final_weights")),
        (
            "overfitting onset",
            f"step {onset} ({overfitting.get('metric')})" if onset is not None else onset_not_found,
        ),
        ("runtime", f"{summary.get('runtime_s')} s"),
    ]
    cells = "".join(f"<div><span>{escape(str(k))}</span><b>{escape(str(v))}</b></div>" for k, v in items)
    warnings = overfitting.get("warnings") if isinstance(overfitting.get("warnings"), list) else []
    warn_html = "".join(f'<li class="warning">{escape(str(w))}</li>' for w in warnings)
    verdict = f'<ul class="warnings">{warn_html}</ul>' if warnings else '<p class="ok">No overfitting warnings.</p>'
    if not checked:
        verdict = (f'<p class="note">Not looked for: the run stopped ({escape(str(summary.get("stop_reason")))}) '
                   "before the end-of-run diagnostics.</p>")  # fmt: skip
    return f'<div class="status">{cells}</div><h2>Warnings</h2>{verdict}'


def cell_text(value) -> str:
    """A value as a table cell shows it (not escaped): a float with 4 decimals, as the console prints held-out numbers
    (dpo/analysis/console.py), 4 significant digits where 4 decimals would keep fewer (below 1e-3) or it is 1e5 or
    more; None as '-'. Held-out numbers and sweep objectives often differ in the 3rd or 4th digit: the 3 significant
    digits of the charts' ticks and tooltips (`fmt`) showed them as equal."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4f}" if value == 0 or 1e-3 <= abs(value) < 1e5 else f"{value:.4g}"
    return "-" if value is None else str(value)


def param_text(value) -> str:
    """A hyperparameter's value in the trials table: 4 significant digits, as the console shows it (0.003, 1e-05)."""
    return f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else cell_text(value)


def _headline_table(summary: dict) -> str:
    rows = []
    for name, cells in headline_values(summary):
        rows.append(
            f"<tr><td>{escape(name)}</td>"
            + "".join(f"<td class=num>{escape(cell_text(v))}</td>" for v in cells)
            + "</tr>"
        )
    final_step = as_dict(summary.get("final_metrics")).get("eval_step")
    head = f"<tr><th>held-out metric</th><th>step 0</th><th>best (step {escape(str(summary.get('best_step')))})</th>"
    head += f"<th>end (step {escape(str(final_step))})</th></tr>"
    return f"<h2>Held-out numbers</h2><table>{head}{''.join(rows)}</table>"


def _eval_section(evaluation: dict) -> str:
    parts = ["<h2>Evaluation (eval.json)</h2>"]
    flat = {k: v for k, v in _flatten(evaluation).items() if not k.startswith(("samples", "definitions"))}
    parts.append(_kv_table(flat))
    definitions = as_dict(evaluation.get("definitions"))
    if definitions:
        items = "".join(f"<li><b>{escape(k)}</b>: {escape(str(v))}</li>" for k, v in definitions.items())
        parts.append(f"<details><summary>How each number was computed</summary><ul>{items}</ul></details>")
    samples = dicts(evaluation.get("samples"))
    if samples:
        columns = ("prompt", "policy_answer", "policy_reward", "reference_answer", "reference_reward")
        rows = "".join("<tr>" + "".join(_sample_cell(k, s.get(k)) for k in columns) + "</tr>" for s in samples[:10])
        parts.append(
            f"<details><summary>First {min(10, len(samples))} of {len(samples)} generated answers</summary><table>"
            "<tr><th>prompt</th><th>policy</th><th>reward</th><th>reference</th><th>reward</th></tr>"
            f"{rows}</table></details>"
        )
    return "".join(parts)


def samples_section(samples: dict) -> str:
    """samples.json (dpo/training/samples.py): held-out prompts with the trained and the reference model's answers."""
    rows = "".join(
        f"<tr><td>{escape(str(s.get('prompt')))}</td><td>{escape(str(s.get('trained')))}</td>"
        f"<td>{escape(str(s.get('reference')))}</td></tr>"
        for s in dicts(samples.get("samples"))
    )
    return (
        f"<h2>Answers on held-out prompts</h2><p class=note>{escape(str(samples.get('what')))}; "
        f"{escape(str(samples.get('decoding')))}. More: <code>dpo generate RUN_DIR --prompt ...</code>.</p>"
        f'<table class="samples"><tr><th>prompt</th><th>trained</th><th>reference</th></tr>{rows}</table>'
    )


def _sample_cell(key: str, value) -> str:
    return (
        f"<td class=num>{escape(cell_text(value))}</td>"
        if key.endswith("reward")
        else f"<td>{escape(str(value)[:200])}</td>"
    )


def _recipe_section(recipe_text: str, changes: dict | None) -> str:
    parts = ["<h2>Recipe</h2>"]
    if changes:
        rows = "".join(
            f"<tr><td><code>{escape(str(c.get('key')))}</code></td><td>{escape(compact_text(c.get('value')))}</td>"
            f"<td>{escape(compact_text(c.get('base_value')))}</td><td>{escape(str(c.get('source')))}</td></tr>"
            for c in changed_keys(changes)
        )
        overrides = changes.get("overrides") or []
        parts.append(
            f"<p>Recipe file <code>{escape(str(changes.get('recipe_file')))}</code>"
            + (f", overrides <code>{escape(' '.join('--set ' + o for o in overrides))}</code>" if overrides else "")
            + ". What it changed (keys the recipe file sets vs its base recipe or the defaults; --set keys vs "
            + "the recipe file):</p>"
            + f"<table><tr><th>key</th><th>value</th><th>replaces</th><th>set by</th></tr>{rows}</table>"
        )
    else:
        parts.append('<p class="note">No recipe_changes.json in this run directory (written by newer versions).</p>')
    if recipe_text:
        parts.append(f"<details><summary>Resolved recipe.yaml</summary><pre>{escape(recipe_text)}</pre></details>")
    return "".join(parts)


def changed_keys(changes: dict) -> list[dict]:
    """The entries of recipe_changes.json whose value differs from the one it replaced (entries that are not
    objects, from a file edited by hand, left out)."""
    return [c for c in dicts(changes.get("changes")) if c.get("value") != c.get("base_value")]


def compact_text(value) -> str:
    """A value on one line: lists, dicts and booleans as JSON, None as '-'."""
    return "-" if value is None else json.dumps(value) if isinstance(value, bool | dict | list) else str(value)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: tree}


def _kv_table(flat: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td><code>{escape(k)}</code></td><td>{escape(compact_text(v) if isinstance(v, list) else cell_text(v))}"
        "</td></tr>"
        for k, v in flat.items()
    )
    return f"<table>{rows}</table>"


# ---- the sweep page ------------------------------------------------------------------------------


def sweep_html(sweep_dir: Path) -> str:
    summary = read_json(sweep_dir / SWEEP_SUMMARY)
    where = str(sweep_dir / SWEEP_SUMMARY)
    if not isinstance(summary, dict) or not isinstance(summary.get("trials"), list):
        raise UserError("must hold an object with a 'trials' list", where=where)
    objective = as_dict(summary.get("objective"))
    metric, direction = objective.get("metric"), objective.get("direction", "maximize")
    if not isinstance(metric, str) or not metric:
        shown = "missing" if not metric else f"not a metric name: {json.dumps(metric)}"
        raise UserError(f"objective.metric is {shown}", where=where)
    # trials as objects with a params object and a state name: an entry edited into something else is left out
    trials = [
        {**t, "params": as_dict(t.get("params")), "state": t.get("state") if isinstance(t.get("state"), str) else None}
        for t in dicts(summary["trials"])
    ]
    ranked = _ranked(trials, direction)
    name = summary.get("name") or sweep_dir.name

    body = [f"<h1>Sweep {escape(str(name))}</h1>", f'<p class="path">{escape(str(sweep_dir.resolve()))}</p>']
    counts = {s: sum(t.get("state") == s for t in trials) for s in STATE_COLORS}
    items = [
        ("objective", f"{direction} {metric}"),
        ("trials", ", ".join(f"{n} {s}" for s, n in counts.items() if n)),
        ("best trial", summary.get("best_trial")),
        ("best value", cell_text(summary.get("best_value"))),
        ("sampler / pruner", f"{summary.get('sampler')} / {summary.get('pruner')}"),
        ("steps run", summary.get("steps_total")),
        ("steps saved by pruning", summary.get("steps_saved_by_pruning")),
    ]
    body.append(
        '<div class="status">'
        + "".join(f"<div><span>{escape(k)}</span><b>{escape(str(v))}</b></div>" for k, v in items)
        + "</div>"
    )
    if summary.get("best_params"):
        body.append("<p>Best parameters: <code>" + escape(json.dumps(summary["best_params"])) + "</code></p>")
    body.append("<h2>Trials</h2><p class=note>Ordered by the objective, best first; click a header to sort.</p>")
    body.append(_trials_table(sweep_dir, trials, ranked, direction))
    body.append("<h2>Objective against each hyperparameter</h2>")
    scatters = _scatters(trials, metric)
    body.append('<div class="grid">' + "".join(scatters) + "</div>" if scatters else "<p>No trial has a value yet.</p>")
    if as_dict(summary.get("importance")):
        body.append("<h2>Hyperparameter importance</h2>" + _importance(summary["importance"]))
    body.append(f"<h2>Held-out {escape(metric)} of the top trials</h2>")
    curves = _top_curves(sweep_dir, trials, ranked, metric)
    body.append(curves or "<p>No held-out curves found in the trial directories.</p>")
    troubled = [t for t in trials if t.get("state") in ("pruned", "failed")]
    if troubled:
        rows = "".join(
            f'<tr class="{escape(str(t.get("state")))}"><td>{escape(str(t.get("number")))}</td>'
            f"<td>{escape(str(t.get('state')))}"
            f"</td><td>{escape(str(t.get('steps')))}</td><td>{escape(str(t.get('reason') or '-'))}</td></tr>"
            for t in troubled
        )
        body.append(
            "<h2>Pruned and failed trials</h2><table><tr><th>trial</th><th>state</th><th>steps</th><th>reason</th>"
            f"</tr>{rows}</table>"
        )
    return html_page(f"dpo sweep report: {name}", "".join(body))


def _ranked(trials: list[dict], direction: str) -> list[dict]:
    """Trials with a finite value, best first (the order of the table and of the top curves)."""
    scored = [t for t in trials if finite(t.get("value"))]
    return sorted(scored, key=lambda t: t["value"], reverse=direction == "maximize")


def _param_names(trials: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for t in trials for k in (t.get("params") or {})))


def _trials_table(sweep_dir: Path, trials: list[dict], ranked: list[dict], direction: str) -> str:
    params = _param_names(trials)
    order = ranked + [t for t in trials if t not in ranked]
    head = "".join(
        f'<th data-type="{kind}">{escape(label)}</th>'
        for label, kind in [("trial", "num"), ("state", "text"), ("objective", "num")]
        + [(p, "num") for p in params]
        + [("steps", "num"), ("reason", "text"), ("report", "text")]
    )
    rows = []
    for rank, t in enumerate(order):
        value = t.get("value")
        cells = [
            _cell(t.get("number"), t.get("number")),
            _cell(t.get("state"), None),
            # rank keeps the objective order for both directions; trials without a value sort last
            _cell(cell_text(value), rank if finite(value) else 1e9),
        ]
        for p in params:
            v = (t.get("params") or {}).get(p)
            cells.append(_cell(param_text(v), v if finite(v) else None))
        cells.append(_cell(t.get("steps"), t.get("steps")))
        cells.append(_cell(t.get("reason") or "", None))
        run_dir = t.get("run_dir")
        report = sweep_dir / run_dir / REPORT if isinstance(run_dir, str) and run_dir else None
        link = f'<a href="{escape(str(run_dir))}/{REPORT}">open</a>' if report and report.is_file() else "-"
        cells.append(f"<td>{link}</td>")
        rows.append(f'<tr class="{escape(str(t.get("state")))}">{"".join(cells)}</tr>')
    return f'<table id="trials" class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _cell(text, sort_key) -> str:
    key = f' data-sort="{sort_key}"' if isinstance(sort_key, int | float) and not isinstance(sort_key, bool) else ""
    return f"<td{key}>{escape('-' if text is None else str(text))}</td>"


def _scatters(trials: list[dict], metric: str) -> list[str]:
    charts = []
    for param in _param_names(trials):
        points = [
            ScatterPoint(
                x=v if finite(v) else str(v),
                y=t["value"],
                tooltip=f"trial {t.get('number')} ({t.get('state')}): {param}={v}, {metric}={fmt(t['value'])}",
                color=STATE_COLORS.get(t.get("state"), PALETTE[0]),
            )
            for t in trials
            if finite(t.get("value")) and param in (t.get("params") or {}) and (v := t["params"][param]) is not None
        ]
        svg = scatter_chart(f"{metric} vs {param}", points, param, metric)
        if svg:
            charts.append(svg)
    return charts


def _top_curves(sweep_dir: Path, trials: list[dict], ranked: list[dict], metric: str) -> str | None:
    """The objective's held-out curve of the best TOP_TRIALS trials (colours), pruned trials in grey."""
    top = [t for t in ranked if t.get("state") != "pruned"][:TOP_TRIALS]
    chosen = [(t, PALETTE[i % 8], False) for i, t in enumerate(top)]
    chosen += [(t, STATE_COLORS["pruned"], True) for t in trials if t.get("state") == "pruned"]
    series, last = [], 1
    for t, color, pruned in chosen:
        run_dir = t.get("run_dir")
        if not isinstance(run_dir, str) or not run_dir:
            continue
        points = metric_series(read_metrics(sweep_dir / run_dir), metric)
        if points:
            last = max(last, max(x for x, _ in points))
            label = f"trial {t.get('number')}" + (" (pruned)" if pruned else f" = {fmt(t['value'])}")
            series.append(Series(label, points, color, dashed=pruned, width=1.2 if pruned else 2))
    return line_chart(f"held-out {metric}", series, (0, last)) if series else None


def _importance(importance: dict) -> str:
    top = max((v for v in importance.values() if finite(v)), default=0) or 1
    rows = "".join(
        f'<tr><td><code>{escape(k)}</code></td><td class=num>{escape(cell_text(v))}</td><td><div class="bar" '
        f'style="width:{max(0.0, v / top) * 240 if finite(v) else 0:.0f}px"></div></td></tr>'
        for k, v in sorted(importance.items(), key=lambda kv: -kv[1] if finite(kv[1]) else 0)
    )
    return f"<table>{rows}</table>"


# ---- the page shell ------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1500px;
padding:0 16px;color:#222}
h1{font-size:22px;margin:0}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.path,.note{color:#666}.ok{color:#2a7d2a}
.status{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.status div{background:#f4f6f8;border-radius:6px;padding:6px 10px}
.status span{display:block;color:#666;font-size:12px}.status.warn{background:#fff4e5;padding:10px}
.warnings li{color:#8a4b00;margin:4px 0}
.grid{display:flex;flex-wrap:wrap;gap:12px}
svg.plot{background:#fff;border:1px solid #e3e3e3;border-radius:6px}
svg .title{font-size:13px;font-weight:600}svg .tick,svg .legend,svg .axis{font-size:10.5px;fill:#555}
svg .grid{stroke:#eee}svg .frame{fill:none;stroke:#bbb}svg .marker{stroke-width:1.5;stroke-dasharray:3,3}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #e1e1e1;padding:3px 8px;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}th{background:#f4f6f8}
table.sortable th{cursor:pointer}table.sortable th:after{content:" \\2195";color:#aaa}
tr.pruned td{color:#777}tr.failed td{color:#b00}
pre{background:#f7f7f7;padding:10px;overflow:auto}.bar{height:10px;background:#1f77b4}
table.samples td{vertical-align:top;white-space:pre-wrap;max-width:460px}svg .readout{font-size:10.5px;fill:#222}
"""

# Sorting of the trials table: numbers by data-sort (the objective column sorts by rank), text otherwise.
JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var asc = th.dataset.dir !== 'asc'; th.dataset.dir = asc ? 'asc' : 'desc';
      var numeric = th.dataset.type === 'num';
      rows.sort(function (a, b) {
        var x = a.cells[col], y = b.cells[col], r;
        if (numeric) {
          var u = parseFloat(x.dataset.sort), v = parseFloat(y.dataset.sort);
          u = isNaN(u) ? Infinity : u; v = isNaN(v) ? Infinity : v; r = u - v;
        } else { r = x.textContent.localeCompare(y.textContent); }
        return asc ? r : -r;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def html_page(title: str, body: str) -> str:
    """A self-contained HTML page (styles and scripts inline) around `body`: the run and sweep reports' and
    dpo compare's."""
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
        f"<body>{body}<script>{JS}{INTERACTIVE_JS}</script></body></html>\n"
    )
