"""dpo report: the HTML dashboard of a run and of a sweep, from real tiny training runs, checked as files and in
headless Chromium (no console errors, no network, every chart drawn with data in it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html import escape
from pathlib import Path

import pytest

from dpo.analysis.report import RUN_CHARTS, cell_text, run_charts, write_report, write_report_or_warn
from dpo.errors import UserError
from dpo.metrics import HEADLINE
from dpo.training.execute import execute
from tests.browser import PageCheck, chromium_or_skip, open_in_browser
from tests.conftest import (
    REPO,
    RUN_SUMMARY,
    TINY_TRAINING,
    hand_written_run,
    invoke_dpo,
    tiny_recipe_dict,
    write_recipe,
)

SCREENSHOTS = REPO / "docs"  # set DPO_REPORT_SCREENSHOTS=1 to refresh the screenshots in docs/reports.md

# (trial number, state, overrides, reason) of the sweep built below; trial 3 failed before writing anything
TRIALS = [
    (0, "complete", ["loss.beta=0.1"], None),
    (1, "complete", ["loss.beta=0.5", "training.learning_rate=0.03"], None),
    (2, "pruned", ["loss.beta=0.02", "training.max_steps=2"], "pruned at step 2: eval_rewards/accuracies below median"),
    (3, "failed", [], "error: training diverged (loss is nan at step 1)"),
]
OBJECTIVE = "eval_rewards/accuracies"


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A sweep directory per the sweep contract (issue 6): real tiny runs as trials, sweep_summary.json by hand."""
    root = tmp_path_factory.mktemp("sweep")
    recipe = write_recipe(root / "base.yaml", tiny_recipe_dict(tiny_model_dir, 16, TINY_TRAINING))
    trials = []
    for number, state, overrides, reason in TRIALS:
        run_dir = root / "trials" / f"trial-{number:04d}"
        value, steps = None, 0
        if state == "failed":
            run_dir.mkdir(parents=True)
        else:
            summary, _ = execute(recipe, overrides, output_dir=run_dir)
            steps = summary["steps"]
            value = summary["final_metrics"][OBJECTIVE] if state == "complete" else None
        trial = {
            "number": number,
            "state": state,
            "params": {k: float(v) for k, _, v in (o.partition("=") for o in overrides if "max_steps" not in o)},
            "value": value,
            "reason": reason,
            "steps": steps,
            "run_dir": f"trials/trial-{number:04d}",
        }
        (run_dir / "trial.json").write_text(json.dumps(trial))
        trials.append(trial)
    complete = [t for t in trials if t["state"] == "complete"]
    best = max(complete, key=lambda t: t["value"])
    (root / "sweep_summary.json").write_text(
        json.dumps(
            {
                "name": "tiny-sweep",
                "objective": {"metric": OBJECTIVE, "direction": "maximize"},
                "sampler": "tpe",
                "pruner": "median",
                "trials": trials,
                "best_trial": best["number"],
                "best_value": best["value"],
                "best_params": best["params"],
                "importance": {"loss.beta": 0.7, "training.learning_rate": 0.3},
                "steps_total": sum(t["steps"] for t in trials),
                "steps_saved_by_pruning": 4,
            }
        )
    )
    return root


@pytest.mark.slow
def test_train_writes_the_run_report_and_dpo_report_rebuilds_it(sweep_dir):
    run_dir = sweep_dir / "trials" / "trial-0001"
    report = run_dir / "report.html"
    assert report.is_file()  # written at the end of training
    report.unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "dpo", "report", str(run_dir)], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote {report}"
    page = report.read_text()
    for title in RUN_CHARTS:
        assert f'data-title="{escape(title)}"' in page, title  # every chart has data in a real run
    assert "<script src" not in page and "<link" not in page and "http" not in page.replace("http://www.w3.org", "")
    # how the recipe differs from its base: the --set overrides, with the value they replaced
    assert "<code>loss.beta</code></td><td>0.5</td><td>0.1</td><td>--set</td>" in page
    assert "<code>training.learning_rate</code></td><td>0.03</td><td>0.01</td><td>--set</td>" in page
    card = json.loads((run_dir / "data_card.json").read_text())
    assert card["content_hash"]["eval"] in page  # the data card
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"<span>stop reason</span><b>{summary['stop_reason']}</b>" in page
    assert f"<span>best step</span><b>{summary['best_step']}</b>" in page


def test_run_charts_mark_best_step_early_stop_and_onset(tmp_path):
    events = [{"step": 0, "eval_loss": 0.69, "eval_rewards/margins": 0.0}]
    for step in range(1, 9):
        events.append({"step": step, "loss": 0.7 - step * 0.05, "rewards/margins": step * 0.1, "learning_rate": 1e-3})
        if step % 2 == 0:
            events.append({"step": step, "eval_loss": 0.69 - 0.01 * min(step, 4), "eval_rewards/margins": step * 0.05})
    summary = {
        "best_step": 4,
        "best_metric": {"name": "eval_loss", "mode": "min", "value": 0.65},
        "stop_reason": "early_stopped",
        "steps": 8,
        "max_steps": 20,
        "overfitting": {"onset_step": 6, "warnings": []},
    }
    charts, empty = run_charts(events, summary)
    assert len(charts) == 3 and "Loss" not in empty and "beta" in empty  # nothing logged: no blank chart
    loss = charts[0]
    for title in ("best eval_loss (step 4)", "early stop (step 8)", "overfitting onset (step 6)"):
        assert f"<title>{title}</title>" in loss
    # shared x axis 0..max_steps (20): step 8 sits 40% of the way across the plotting area (58..468)
    assert 'class="marker" x1="222.0"' in loss


def test_sweep_report_lists_trials_best_first_with_reasons(sweep_dir):
    page = write_report(sweep_dir).read_text()
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    rows = page.split('<table id="trials"')[1].split("</table>")[0].split("<tr ")[1:]
    ranked = sorted((t for t in summary["trials"] if t["value"] is not None), key=lambda t: -t["value"])
    numbers = [int(r.split("<td")[1].split(">")[1].split("<")[0]) for r in rows]
    assert numbers[: len(ranked)] == [t["number"] for t in ranked] and sorted(numbers) == [0, 1, 2, 3]
    for _, state, _, reason in TRIALS:
        if reason:
            assert reason in page and f'class="{state}"' in page
    assert f'data-title="{OBJECTIVE} vs loss.beta"' in page
    assert f'data-title="held-out {OBJECTIVE}"' in page and "trial 2 (pruned)" in page
    assert 'href="trials/trial-0000/report.html"' in page  # each trial's own dashboard


def test_not_a_run_directory_is_a_user_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dpo", "report", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {tmp_path}: neither a run directory")
    assert not (tmp_path / "report.html").exists()


def test_a_report_that_cannot_be_written_is_one_error_line(tmp_path):
    """A folder where report.html cannot go (here a folder of that name; a read-only folder or a full disk alike):
    exit 2 and one `error:` line, no traceback, no temporary file left."""
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "eval_loss": 0.7}\n')
    (tmp_path / "report.html").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "dpo", "report", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert (
        proc.returncode == 2 and proc.stderr.strip() == f"error: {tmp_path}: cannot write report.html: Is a directory"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "report.html"]


def test_broken_metrics_row_names_file_and_row(tmp_path, capsys):
    """A damaged row is skipped with a warning naming file and row; the report shows the good rows (issue 19)."""
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "eval_loss": 0.7}\n{"step": 1, "loss\n{"step": 2}\n')
    write_report(tmp_path)
    err = capsys.readouterr().err
    assert err.startswith(f"warning: {tmp_path / 'metrics.jsonl'}: row 2: not valid JSON (")
    assert err.endswith("; skipped it\n") and err.count("\n") == 1
    # a killed run's half-written last line is dropped, not an error
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "eval_loss": 0.7}\n{"step": 1, "eval_loss": 0.6}\n{"st')
    assert "No summary.json" in write_report(tmp_path).read_text()


@pytest.mark.parametrize("name", ["实验", "no", "run #2", "a long name " * 10])
def test_the_report_title_is_the_recipe_name_as_the_user_wrote_it(tmp_path, name):
    """recipe.yaml is dumped with quotes and escapes (`name: "\\u5B9E\\u9A8C"`, `name: 'no'`, a long name folded):
    the title was that text, quotes and all."""
    from dpo.analysis.report import recipe_name
    from dpo.config.yaml_loader import dump_yaml

    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "eval_loss": 0.7}\n')
    (tmp_path / "recipe.yaml").write_text(dump_yaml({"name": name, "model": {"name_or_path": "m"}}))
    assert f"<h1>Run {escape(name)}</h1>" in write_report(tmp_path).read_text()
    assert recipe_name("not: [a recipe") is None and recipe_name("- a list") is None and recipe_name("name: ''") is None


@pytest.mark.parametrize("file", ["summary.json", "data_card.json", "eval.json", "samples.json"])
def test_a_run_file_that_is_not_a_json_object_is_one_error_naming_it(tmp_path, file):
    """`[1]` in a hand-edited file was a traceback (`.get` on a list); a summary with null metrics is drawn."""
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "eval_loss": 0.7}\n')
    (tmp_path / file).write_text("[1]")
    proc = subprocess.run(
        [sys.executable, "-m", "dpo", "report", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == 2 and proc.stderr == f"error: {tmp_path / file}: not a JSON object (it holds an array)\n"
    (tmp_path / file).unlink()
    (tmp_path / "summary.json").write_text(json.dumps({"stop_reason": "completed", "initial_metrics": None}))
    assert f"<td>{HEADLINE[0]}</td><td class=num>-</td>" in write_report(tmp_path).read_text()


def test_a_file_given_for_the_run_folder_is_named_as_such(tmp_path):
    (tmp_path / "summary.json").write_text("{}")
    with pytest.raises(UserError, match="summary.json: not a directory"):
        write_report(tmp_path / "summary.json")
    with pytest.raises(UserError, match="missing: no such directory"):
        write_report(tmp_path / "missing")


def test_report_redacts_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "s3cr3t-value-9876")
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "eval_loss": 0.7}\n')
    (tmp_path / "eval.json").write_text(json.dumps({"samples": [{"prompt": "s3cr3t-value-9876", "policy_reward": 1}]}))
    page = write_report(tmp_path).read_text()
    assert "s3cr3t-value-9876" not in page and "[redacted $MY_SERVICE_TOKEN]" in page
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_failing_report_keeps_the_run(tmp_path, capsys):
    (tmp_path / "summary.json").write_text("{not json")
    assert write_report_or_warn(tmp_path) is None
    assert capsys.readouterr().err.startswith("warning: report.html not written (UserError:")
    assert (tmp_path / "summary.json").read_text() == "{not json" and not (tmp_path / "report.html").exists()
    assert not list(tmp_path.glob(".*.tmp"))


# ---- what the tables show, and files of the wrong shape ---------------------------------------------------


def test_table_numbers_have_the_consoles_4_decimals_so_close_values_differ(tmp_path):
    """Every table number went through the ticks' 3 significant digits: step 0 (0.693147) and best (0.692816) both
    read 0.693, as did two trials whose objectives differ in the 4th digit, the worse one ranked first."""
    page = write_report(hand_written_run(tmp_path / "run")).read_text()
    assert "<tr><td>eval_loss</td><td class=num>0.6931</td><td class=num>0.6928</td><td class=num>0.6928</td>" in page
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    trials = [{"number": n, "state": "complete", "params": {"training.learning_rate": lr}, "value": value,
               "reason": None, "steps": 4, "run_dir": f"trials/trial-{n:04d}"}
              for n, lr, value in ((0, 1e-05, 0.69318), (1, 0.003, 0.69282))]  # fmt: skip
    (sweep / "sweep_summary.json").write_text(json.dumps({
        "name": "s", "objective": {"metric": "eval_loss", "direction": "minimize"}, "trials": trials,
        "best_trial": 1, "best_value": 0.69282, "best_params": trials[1]["params"],
    }))  # fmt: skip
    page = write_report(sweep).read_text()
    assert "<span>best value</span><b>0.6928</b>" in page
    rows = page.split('<table id="trials"')[1].split("</table>")[0].split("<tr ")[1:]
    assert '<td data-sort="0">0.6928</td><td data-sort="0.003">0.003</td>' in rows[0]  # best first; lr as written
    assert '<td data-sort="1">0.6932</td><td data-sort="1e-05">1e-05</td>' in rows[1]
    assert cell_text(1234567.0) == "1.235e+06" and cell_text(0.000123456) == "0.0001235" and cell_text(0.0) == "0.0000"


def test_values_in_the_tables_are_escaped(tmp_path):
    """A run directory received from someone else: its summary's numbers went into the tables as they were."""
    tag = "<img src=x onerror=alert(1)>"
    summary = {**RUN_SUMMARY, "best_metrics": {"eval_loss": tag}, "best_step": "<b>4</b>", "steps": "<b>x</b>"}
    page = write_report(hand_written_run(tmp_path / "run", **{"summary.json": summary})).read_text()
    assert tag not in page and "<b>x</b>" not in page and "<b>4</b>" not in page
    assert f"<td class=num>{escape(tag)}</td>" in page and "best (step &lt;b&gt;4&lt;/b&gt;)" in page


@pytest.mark.parametrize(
    ("files", "shown"),
    [
        ({"summary.json": {**RUN_SUMMARY, "best_metric": None}}, "<span>best metric (-)</span><b>-</b>"),
        ({"summary.json": {**RUN_SUMMARY, "best_step": "four", "steps": None, "stop_reason": "early_stopped",
                           "overfitting": [1], "autopilot": {"decisions": [1, {"step": 2, "changed": [1]}]}}},
         "<span>best step</span><b>four</b>"),
        ({"data_card.json": {"audit": {"flip_rate": {"estimate": 0.1, "low": None, "high": 0.2}}}},
         "<td>10.0% (95% interval - to 20.0%)</td>"),
        ({"data_card.json": {"audit": {"pairs": 3, "suspects": [1], "auto": None}}},
         "<td>- (95% interval - to -)</td>"),
        ({"recipe_changes.json": {"changes": [{"key": "a"}, 1, "text"]}}, "<h2>Recipe</h2>"),
        ({"recipe_changes.json": {"changes": {"not": "a list"}}}, "<h2>Recipe</h2>"),
        ({"eval.json": {"samples": [1, 2], "definitions": [1]}}, "<h2>Evaluation (eval.json)</h2>"),
        ({"samples.json": {"samples": ["x"]}}, "<h2>Answers on held-out prompts</h2>"),
    ],
    ids=["best-metric-null", "summary-fields", "audit-null-bound", "audit-no-rate", "changes-partial",
         "changes-not-a-list", "eval-entries", "samples-entries"],
)  # fmt: skip
def test_a_part_of_a_run_file_with_the_wrong_shape_is_left_out_not_a_traceback(tmp_path, files, shown):
    """Valid JSON of the wrong shape inside a run file (null, a list, a string) was a TypeError or KeyError traceback
    from `dpo report`, exit 1: the part is left out, as a file that is not there is, and the rest is drawn."""
    page = write_report(hand_written_run(tmp_path / "run", **files)).read_text()
    assert "<h2>Held-out numbers</h2>" in page and 'data-title="Loss"' in page and shown in page


@pytest.mark.parametrize(
    ("objective", "said"),
    [({"metric": ["eval_loss"]}, 'objective.metric is not a metric name: ["eval_loss"]'),
     ("eval_loss", "objective.metric is missing")],
)  # fmt: skip
def test_a_sweep_objective_the_page_cannot_do_without_is_one_error_line_naming_the_file(tmp_path, objective, said):
    (tmp_path / "sweep_summary.json").write_text(json.dumps({"objective": objective, "trials": []}))
    proc = invoke_dpo("report", tmp_path)
    assert proc.returncode == 2 and proc.stderr == f"error: {tmp_path / 'sweep_summary.json'}: {said}\n"


def test_a_trial_state_of_the_wrong_shape_is_left_out(tmp_path):
    trial = {"number": 0, "state": ["complete"], "params": {"loss.beta": 0.1}, "value": 0.5, "steps": 4}
    (tmp_path / "sweep_summary.json").write_text(json.dumps({"objective": {"metric": "eval_loss"}, "trials": [trial]}))
    page = write_report(tmp_path).read_text()
    assert '<tr class="None"><td data-sort="0">0</td><td>-</td>' in page


def test_a_bug_in_the_report_raises_as_one_not_as_a_file_edited_by_hand(tmp_path, monkeypatch):
    """The page's own KeyError was turned into exit 2, "was one edited by hand?", with no traceback."""
    from dpo.analysis import report

    def broken(summary):
        return summary["a key the page renamed"]

    monkeypatch.setattr(report, "_headline_table", broken)
    with pytest.raises(KeyError, match="a key the page renamed"):
        write_report(hand_written_run(tmp_path / "run"))


# ---- in a real browser ---------------------------------------------------------------------------


def _assert_renders(check: PageCheck, expected_titles: set[str]) -> None:
    assert check.console_errors == []
    assert check.requests == []  # self-contained: nothing fetched from anywhere
    assert {p["title"] for p in check.plots} == expected_titles
    assert check.blank_plots() == []


@pytest.mark.slow
def test_run_report_renders_in_chromium(sweep_dir, tmp_path):
    chromium = chromium_or_skip()
    report = write_report(sweep_dir / "trials" / "trial-0000")
    shot = tmp_path / "run-report.png"
    check = open_in_browser(report, shot, chromium)
    _assert_renders(check, set(RUN_CHARTS))
    assert shot.stat().st_size > 10_000
    _keep_screenshot(shot, "report-run.png")


def test_sweep_report_renders_and_sorts_in_chromium(sweep_dir, tmp_path):
    chromium = chromium_or_skip()
    report = write_report(sweep_dir)
    shot = tmp_path / "sweep-report.png"
    # click "trial" to sort by number, then read the first column
    sort_by_trial = (
        "() => { document.querySelector('#trials th').click(); "
        "return Array.from(document.querySelectorAll('#trials tbody tr')).map(r => r.cells[0].textContent); }"
    )
    check = open_in_browser(report, shot, chromium, script=sort_by_trial)
    expected = {f"{OBJECTIVE} vs loss.beta", f"{OBJECTIVE} vs training.learning_rate", f"held-out {OBJECTIVE}"}
    _assert_renders(check, expected)
    assert check.script_result == ["0", "1", "2", "3"]
    _keep_screenshot(shot, "report-sweep.png")


def test_a_blank_chart_fails_the_browser_check(tmp_path):
    chromium = chromium_or_skip()
    page = tmp_path / "blank.html"
    page.write_text(
        "<html><body>"
        '<svg class="plot" data-title="empty" viewBox="0 0 100 100" width="100" height="100"></svg>'
        '<svg class="plot" data-title="nan" viewBox="0 0 100 100" width="100" height="100">'
        '<path class="data" d="M10,NaNL20,30" stroke="red"/></svg>'
        '<svg class="plot" data-title="ok" viewBox="0 0 100 100" width="100" height="100">'
        '<path class="data" d="M10,10L20,30" stroke="red"/></svg>'
        "<script>console.error('boom')</script></body></html>"
    )
    check = open_in_browser(page, tmp_path / "blank.png", chromium)
    assert [p.split(":")[0] for p in check.blank_plots()] == ["empty", "nan"]
    assert check.console_errors[-1] == "boom" and "NaN" in check.console_errors[0]


def _keep_screenshot(shot: Path, name: str) -> None:
    import os

    if os.environ.get("DPO_REPORT_SCREENSHOTS"):
        SCREENSHOTS.mkdir(exist_ok=True)
        shutil.copy(shot, SCREENSHOTS / name)


def test_report_module_loads_no_trainer():
    """dpo/analysis/report.py reads files only (DESIGN): it works where torch, transformers and TRL are not
    importable."""
    code = (
        "import sys, dpo.analysis.report; "
        "print(sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr
