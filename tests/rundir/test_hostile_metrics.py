"""`dpo report` on a damaged metrics.jsonl (issue 19): the report is built from the good rows, the bad ones are
skipped with one `warning:` line naming the file and the first bad row; never a traceback. Resume, which rewrites
the file, stays strict: a damaged row there is one `error:` line (exit 2)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from dpo.errors import UserError
from dpo.rundir.files import kept_weights, metrics_rows, read_metrics
from tests.conftest import REPO, TINY_TRAINING, tiny_recipe_dict, write_recipe


def dpo(*args):
    return subprocess.run([sys.executable, "-m", "dpo", *args], capture_output=True, cwd=REPO, timeout=600)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model_dir):
    from dpo.training.execute import execute

    root = tmp_path_factory.mktemp("hostile-metrics")
    write_recipe(root / "tiny.yaml", tiny_recipe_dict(tiny_model_dir, 16, {**TINY_TRAINING, "max_steps": 2}))
    execute(root / "tiny.yaml", [], output_dir=root / "run")
    return root / "run"


# name: (bytes appended at the end of metrics.jsonl, the warning's reason)
BAD_ENDINGS = {
    "ends_in_null": (b"null\n", "not a JSON object"),
    "ends_in_a_non_utf8_byte": (b"\xff\n", "not UTF-8 text"),
    "non_utf8_byte_inside_a_row": (b'{"step": 9, "loss": 1.0, "x": "\xff"}\n', "not UTF-8 text"),
    "ends_in_a_list": (b"[1, 2]\n", "not a JSON object"),
    "infinite_step": (b'{"step": 1e400, "loss": 1.0}\n', "no whole-number step >= 0"),
    "boolean_step": (b'{"step": true, "loss": 1.0}\n', "no whole-number step >= 0"),
    "string_step": (b'{"step": "3", "loss": 1.0}\n', "no whole-number step >= 0"),
    "negative_step": (b'{"step": -1, "loss": 1.0}\n', "no whole-number step >= 0"),
    "no_step": (b'{"loss": 1.0}\n', "no whole-number step >= 0"),
    "deeply_nested": (b"[" * 100_000 + b"\n", "not valid JSON"),
}


@pytest.mark.parametrize("name", list(BAD_ENDINGS))
def test_report_on_a_damaged_metrics_file_uses_the_good_rows(finished_run, tmp_path, name):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "report.html").unlink(missing_ok=True)
    good = read_metrics(run_dir)
    appended, reason = BAD_ENDINGS[name]
    metrics = run_dir / "metrics.jsonl"
    rows = metrics.read_bytes().splitlines(keepends=True)
    metrics.write_bytes(b"".join([rows[0], appended, *rows[1:], appended]))  # in the middle and at the end

    proc = dpo("report", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = proc.stderr.decode().strip().splitlines()
    assert err == [f"warning: {metrics}: row 2: {reason}" + err[0].split(reason, 1)[1]]
    torn_end = reason.startswith("not valid JSON")  # the last row counts as torn by a kill: skipped silently
    assert err[0].endswith("; skipped it" if torn_end else "; skipped it (and 1 more bad row(s))")
    assert "Traceback" not in proc.stderr.decode()
    assert (run_dir / "report.html").is_file()
    assert read_metrics(run_dir) == good


def test_a_torn_last_row_is_skipped_silently(finished_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    good = read_metrics(run_dir)
    with (run_dir / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 5, "lo')
    assert read_metrics(run_dir) == good
    assert capsys.readouterr().err == ""


def test_resume_reads_metrics_strictly(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1, "loss": 1.0}\nnull\n{"step": 2, "loss": 1.0}\n')
    with pytest.raises(UserError, match=r"metrics.jsonl: row 2: not a JSON object$"):
        metrics_rows(path)
    assert [record["step"] for _, record in metrics_rows(path, skip_bad=True)] == [1, 2]


def test_kept_weights_names_the_step_and_numbers_of_final():
    summary = {"best_step": 30, "steps": 40, "best_metrics": {"a": 1}, "final_metrics": {"a": 2}}
    assert kept_weights({**summary, "final_weights": "best"}) == (30, {"a": 1})
    assert kept_weights({**summary, "final_weights": "last"}) == (40, {"a": 2})
    assert kept_weights({**summary, "final_weights": None}) == (None, {})  # the non-finite guard: no final/
