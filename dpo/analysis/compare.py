"""`dpo compare RUN_DIR RUN_DIR ...`: one self-contained HTML page that puts runs side by side.

    python -m dpo compare runs/quickstart runs/robust runs/dpop --output compare.html

For runs from any recipes (a sweep's report compares only its own trials): each headline held-out metric as one
chart with a curve per run (each run's best step marked in its colour), and a table of the runs' summaries: stop
reason, best step, the held-out numbers before training / at the best step / at the end, and the keys each recipe
changed from its base (recipe_changes.json). Reads files only, like `dpo report`; the charts are the report's
(dpo/analysis/plots.py: zoom, hover values, click a legend entry to hide a run), and the page opens offline.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from dpo.analysis.diagnostics import onset_not_checked_in
from dpo.analysis.plots import PALETTE, Marker, Series, line_chart
from dpo.analysis.report import (
    as_dict,
    cell_text,
    changed_keys,
    compact_text,
    finite,
    html_page,
    metric_series,
    recipe_name,
)
from dpo.errors import UserError
from dpo.metrics import HEADLINE, headline_values
from dpo.rundir.atomic import atomic_write_text
from dpo.rundir.files import METRICS_LOG, RECIPE, RECIPE_CHANGES, SUMMARY, read_json_object, read_metrics, read_text
from dpo.rundir.secrets import redact
from dpo.rundir.writable import check_output_dir


def _runs(run_dirs: list[Path]) -> list[dict]:
    """Each run's name, colour, events, summary and changes; a path that is not a run directory is a UserError."""
    if len(run_dirs) < 2:
        raise UserError("give two or more run directories to compare", where="dpo compare")
    runs, names = [], set()
    for i, run_dir in enumerate(run_dirs):
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise UserError("not a directory (give a run folder)" if run_dir.exists() else "no such directory",
                            where=str(run_dir))  # fmt: skip
        if not ((run_dir / METRICS_LOG).is_file() or (run_dir / SUMMARY).is_file()):
            raise UserError("not a run directory (no metrics.jsonl / summary.json)", where=str(run_dir))
        name = _unique_label(recipe_name(read_text(run_dir / RECIPE)) or run_dir.name, run_dir, names)
        names.add(name)
        runs.append(
            {
                "name": name,
                "dir": run_dir,
                "color": PALETTE[i % len(PALETTE)],
                "events": read_metrics(run_dir),
                "summary": read_json_object(run_dir / SUMMARY),  # `[1]` is an error naming the file
                "changes": read_json_object(run_dir / RECIPE_CHANGES),
            }
        )
    return runs


def _unique_label(name: str, run_dir: Path, taken: set[str]) -> str:
    """The recipe's name; for a second run of one recipe, with its folder, then with the folder above (a/run and
    b/run), then numbered (one folder given twice)."""
    candidates = [name, f"{name} ({run_dir.name})", f"{name} ({run_dir.parent.name}/{run_dir.name})"]
    label = next((c for c in candidates if c not in taken), candidates[-1])
    number = 2
    while label in taken:
        label = f"{candidates[-1]} #{number}"
        number += 1
    return label


def comparison_html(run_dirs: list[Path]) -> str:
    runs = _runs(run_dirs)
    last = max([1, *(e["step"] for r in runs for e in r["events"] if isinstance(e.get("step"), int | float))])
    charts, missing = [], []
    for metric in HEADLINE:
        series = [Series(r["name"], metric_series(r["events"], metric), r["color"], width=2) for r in runs]
        markers = [
            Marker(r["summary"]["best_step"], f"{r['name']}: best step", r["color"])
            for r in runs
            if r["summary"] and finite(r["summary"].get("best_step"))
        ]
        svg = line_chart(f"held-out {metric.removeprefix('eval_')}", series, (0, last), markers)
        (charts.append(svg) if svg else missing.append(metric))
    body = [f"<h1>Comparing {len(runs)} runs</h1>"]
    body.append(
        '<p class="note">Held-out curves, one colour per run (step 0 is each run\'s model before training); dotted '
        "vertical lines mark each run's best step. Hover a chart for the values at a step, drag across it to zoom "
        "(double-click: zoom out), click a legend entry to hide or show a run.</p>"
    )
    body.append('<div class="grid">' + "".join(charts) + "</div>")
    if missing:
        body.append(f'<p class="note">Logged by none of the runs: {escape(", ".join(missing))}.</p>')
    body.append("<h2>Summaries</h2>" + _summary_table(runs))
    body.append("<h2>What each recipe changed from its base</h2>" + _changes_table(runs))
    return html_page("dpo compare", "".join(body))


def _summary_table(runs: list[dict]) -> str:
    head = "<tr><th>run</th><th>stop reason</th><th>steps</th><th>best step</th><th>overfitting onset</th>"
    head += "".join(f"<th>{escape(m)}<br><small>step 0 / best / end</small></th>" for m in HEADLINE) + "</tr>"
    rows = []
    for r in runs:
        s = r["summary"] or {}
        best = as_dict(s.get("best_metric"))
        onset = as_dict(s.get("overfitting")).get("onset_step")
        no_onset = "n/a" if onset_not_checked_in(as_dict(s.get("overfitting"))) else "none"
        if "overfitting" not in s:  # no summary.json, or a run stopped on a non-finite loss: never looked for
            no_onset = "not computed"
        cells = [
            f'<td><b style="color:{r["color"]}">{escape(r["name"])}</b><br><small>{escape(str(r["dir"]))}</small></td>',
            f"<td>{escape(str(s.get('stop_reason', 'no summary.json (not finished)')))}</td>",
            f"<td class=num>{escape(cell_text(s.get('steps')))}</td>",
            f"<td class=num>{escape(cell_text(s.get('best_step')))} <small>({escape(str(best.get('name', '-')))})"
            "</small></td>",
            f"<td class=num>{escape(cell_text(onset)) if onset is not None else no_onset}</td>",
        ]
        for _, values in headline_values(s):
            cells.append(f"<td class=num>{escape(' / '.join(cell_text(v) for v in values))}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _changes_table(runs: list[dict]) -> str:
    rows = []
    for r in runs:
        changes = r["changes"]
        if changes is None:
            listed = '<span class="note">no recipe_changes.json</span>'
        else:
            listed = (
                "<br>".join(
                    f"<code>{escape(str(c.get('key')))}</code>: {escape(compact_text(c.get('value')))} "
                    f"<small>(was {escape(compact_text(c.get('base_value')))})</small>"
                    for c in changed_keys(changes)
                )
                or '<span class="note">nothing: the base recipe as it is</span>'
            )
            listed = f"<small>{escape(str(changes.get('recipe_file')))}</small><br>{listed}"
        rows.append(f'<tr><td><b style="color:{r["color"]}">{escape(r["name"])}</b></td><td>{listed}</td></tr>')
    return f"<table><tr><th>run</th><th>changed keys</th></tr>{''.join(rows)}</table>"


def write_comparison(run_dirs, output: str | Path = "compare.html") -> Path:
    """Write the comparison page to `output` (temporary name, then renamed); returns its path."""
    output = Path(output)
    if output.is_dir():
        raise UserError("is a folder; --output names the HTML file to write", where=str(output))
    check_output_dir(output.parent)  # under a file, or in a folder this user cannot write: one line, not a traceback
    page = comparison_html([Path(d) for d in run_dirs])
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write_text(output, redact(page))
    except OSError as exc:  # a full disk, a folder made read-only meanwhile: one line, as dpo report says it
        raise UserError(f"cannot write it: {exc.strerror or exc}", where=str(output)) from None
    return output
