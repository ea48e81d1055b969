"""dpo compare: two real tiny runs of different recipes on one page (curves overlaid, summaries, what each recipe
changed), checked as a file and in headless Chromium, with the charts' zoom, hover readout and legend toggles."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

import pytest

from dpo.analysis.compare import _unique_label, write_comparison
from dpo.analysis.report import cell_text
from dpo.errors import UserError
from dpo.metrics import HEADLINE
from dpo.training.execute import execute
from tests.browser import chromium_or_skip, open_in_browser
from tests.conftest import RUN_SUMMARY, TINY_TRAINING, hand_written_run, run_dpo, tiny_recipe_dict, write_recipe


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model_dir) -> list[Path]:
    root = tmp_path_factory.mktemp("compare")
    base = write_recipe(root / "base.yaml", tiny_recipe_dict(tiny_model_dir, 16, TINY_TRAINING))
    child = write_recipe(root / "child.yaml", {"base": "base.yaml", "name": "high-beta", "loss": {"beta": 0.5}})
    runs = [root / "runs" / "tiny", root / "runs" / "high-beta"]
    for recipe, run in zip((base, child), runs, strict=True):
        execute(recipe, ["logging.samples=0"], output_dir=run)
    return runs


def _series_labels(page: str) -> list[list[str]]:
    """Per chart, the labels of its series (data-points of each <g class="series">)."""
    from html import unescape

    charts = page.split('<svg class="plot"')[1:]
    return [[json.loads(unescape(p.split('"')[0]))["label"] for p in c.split('data-points="')[1:]] for c in charts]


@pytest.mark.slow
def test_comparison_overlays_curves_and_tabulates_summaries(two_runs, tmp_path):
    out = write_comparison(two_runs, tmp_path / "sub" / "compare.html")
    page = out.read_text()
    assert _series_labels(page) == [["tiny", "high-beta"]] * len(HEADLINE)
    table = page.split("<h2>Summaries</h2>")[1].split("</table>")[0]
    rows = [row.split("</tr>")[0] for row in table.split("<tr>")[2:]]  # after the header row
    assert len(rows) == 2
    for run, row in zip(two_runs, rows, strict=True):
        summary = json.loads((run / "summary.json").read_text())
        cells = [cell.split("</td>")[0] for cell in row.split("<td")[1:]]
        assert escape(str(run)) in cells[0] and cells[1] == f">{escape(summary['stop_reason'])}"
        assert cells[2] == f" class=num>{summary['steps']}"
        values = [summary[k][HEADLINE[0]] for k in ("initial_metrics", "best_metrics", "final_metrics")]
        assert cells[5] == " class=num>" + " / ".join(cell_text(v) for v in values)
    changed = page.split("What each recipe changed from its base")[1]
    assert "<code>loss.beta</code>: 0.5 <small>(was 0.1)</small>" in changed
    assert "<code>name</code>: high-beta" in changed
    assert "<script>" in page and "<script src" not in page  # inline; the browser test checks no request is made


def test_runs_of_one_recipe_get_labels_that_tell_them_apart():
    taken: set[str] = set()
    for folder in ("a/run", "b/run", "c/run", "c/run"):
        taken.add(_unique_label("quickstart", Path("runs") / folder, taken))
    assert taken == {"quickstart", "quickstart (run)", "quickstart (c/run)", "quickstart (c/run) #2"}


def test_compare_errors(two_runs, tmp_path):
    with pytest.raises(UserError, match="two or more"):
        write_comparison(two_runs[:1], tmp_path / "c.html")
    with pytest.raises(UserError, match="not a run directory"):
        write_comparison([two_runs[0], tmp_path], tmp_path / "c.html")
    proc = run_dpo("compare", two_runs[0], tmp_path / "missing", "--output", tmp_path / "c.html")
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {tmp_path / 'missing'}: no such directory"
    assert not (tmp_path / "c.html").exists()
    (tmp_path / "afile").write_text("")
    with pytest.raises(UserError, match="afile: is a file, not a directory"):
        write_comparison(two_runs, tmp_path / "afile" / "c.html")
    with pytest.raises(UserError, match="afile: not a directory"):
        write_comparison([two_runs[0], tmp_path / "afile"], tmp_path / "c.html")
    proc = run_dpo("compare", *two_runs, "--output", tmp_path / "c.html")
    assert proc.returncode == 0 and proc.stdout.strip() == f"wrote {tmp_path / 'c.html'}"


def test_compare_names_a_summary_that_is_not_an_object_and_a_page_it_cannot_write(two_runs, tmp_path, monkeypatch):
    import shutil

    import dpo.analysis.compare as compare

    copy = tmp_path / "run"
    shutil.copytree(two_runs[1], copy)
    (copy / "summary.json").write_text("[1]")
    with pytest.raises(UserError) as caught:
        write_comparison([two_runs[0], copy], tmp_path / "c.html")
    assert str(caught.value) == f"{copy / 'summary.json'}: not a JSON object (it holds an array)"

    def full_disk(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(compare, "atomic_write_text", full_disk)
    with pytest.raises(UserError) as caught:
        write_comparison(two_runs, tmp_path / "c.html")
    assert str(caught.value) == f"{tmp_path / 'c.html'}: cannot write it: No space left on device"


def test_the_summary_table_escapes_its_values_and_reads_wrong_shapes(tmp_path):
    """A run directory received from someone else: its summary's numbers went into the table as they were; a
    recipe_changes.json entry of the wrong shape was a KeyError."""
    tag = "<img src=x onerror=alert(1)>"
    summary = {**RUN_SUMMARY, "best_metrics": {"eval_loss": tag}, "steps": "<b>x</b>"}
    first = hand_written_run(tmp_path / "a", **{"summary.json": summary,
                                                "recipe_changes.json": {"changes": [{"key": "a"}, 1]}})  # fmt: skip
    second = hand_written_run(tmp_path / "b", **{"summary.json": {**RUN_SUMMARY, "best_metric": None,
                                                                  "overfitting": [1]}})  # fmt: skip
    page = write_comparison([first, second], tmp_path / "c.html").read_text()
    assert tag not in page and "<b>x</b>" not in page
    assert f"<td class=num>0.6931 / {escape(tag)} / 0.6928</td>" in page
    assert "<td class=num>&lt;b&gt;x&lt;/b&gt;</td>" in page


# Hide run 0 on the first chart, hover, zoom into the first half of the steps, zoom out: what a person would see.
INTERACT = """
() => {
  var svg = document.querySelector('svg.plot'), layer = svg.querySelector('rect.hover');
  var ticks = function () { return Array.from(svg.querySelectorAll('g.ticks text')).map(t => t.textContent); };
  var shown = function () { return Array.from(svg.querySelectorAll('g.series')).map(g => g.style.display !== 'none'); };
  var at = function (type, fx) {
    var r = layer.getBoundingClientRect();
    layer.dispatchEvent(new MouseEvent(type, {bubbles: true, clientX: r.left + r.width * fx, clientY: r.top + 10}));
  };
  var out = {ticks0: ticks()};
  svg.querySelector('g.legend-item').dispatchEvent(new MouseEvent('click', {bubbles: true}));
  out.hidden = shown();
  svg.querySelector('g.legend-item').dispatchEvent(new MouseEvent('click', {bubbles: true}));
  out.shownAgain = shown();
  at('mousemove', 0.01);
  out.readout = svg.querySelector('text.readout').textContent;
  at('mousedown', 0.0); at('mousemove', 0.5); at('mouseup', 0.5);
  out.zoomed = ticks();
  out.dots = Array.from(svg.querySelectorAll('g.series circle')).filter(c => c.style.display !== 'none').length;
  layer.dispatchEvent(new MouseEvent('dblclick', {bubbles: true}));
  out.reset = ticks();
  return out;
}
"""


@pytest.mark.slow
def test_comparison_renders_and_its_charts_respond_in_chromium(two_runs, tmp_path):
    chromium = chromium_or_skip()
    page = write_comparison(two_runs, tmp_path / "compare.html")
    check = open_in_browser(page, tmp_path / "compare.png", chromium, script=INTERACT)
    assert check.console_errors == [] and check.requests == []
    assert len(check.plots) == len(HEADLINE) and check.blank_plots() == []
    got = check.script_result
    assert got["hidden"] == [False, True] and got["shownAgain"] == [True, True]
    assert got["readout"].startswith("step 0") and "tiny: " in got["readout"] and "high-beta: " in got["readout"]
    x_ticks = lambda ticks: [t for t in ticks if t.isdigit()]  # noqa: E731 - the step axis' labels
    assert x_ticks(got["zoomed"]) != x_ticks(got["ticks0"]) and max(map(int, x_ticks(got["zoomed"]))) <= 2
    assert got["dots"] == 2 * 2  # the evaluations at steps 0 and 2 of both runs; step 4 is outside
    assert got["reset"] == got["ticks0"]
