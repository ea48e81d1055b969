"""The hand-made charts' axes: ranges and ticks for values that differ by float rounding only."""

from __future__ import annotations

import signal
from contextlib import contextmanager

import pytest

from dpo.analysis.plots import FLAT, INTERACTIVE_JS, Series, line_chart, nice_ticks, padded_range

# two means of the same 270 pairs, one summed in another order: equal but for the last bit (the noise benchmark's
# html once built ticks 1e-17 apart for them, until the machine ran out of memory)
NEARLY_EQUAL = [0.6925925925925925, 0.6925925925925926]


def test_values_equal_but_for_rounding_get_the_band_of_a_constant():
    assert padded_range(NEARLY_EQUAL) == pytest.approx(padded_range([0.6925925925925925] * 2))  # +-10%
    assert padded_range([0.5, 0.5]) == (0.45, 0.55) and padded_range([0.0]) == (-1.0, 1.0)
    assert padded_range([0.0, 1.0]) == (-0.06, 1.06)  # a real span: 6% each side


@contextmanager
def at_most(seconds: int):
    """Fail, rather than hang until memory runs out, when the block takes longer (the bug this file guards)."""

    def give_up(signum, frame):
        raise TimeoutError(f"took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_ticks_are_counted_so_a_tiny_step_cannot_loop_forever():
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
    assert nice_ticks(-2, 7, integer=True) == [-2, 0.0, 2, 4, 6]
    with at_most(5):
        ticks = nice_ticks(*NEARLY_EQUAL)  # a step below the values' resolution: finite all the same
    assert len(ticks) <= 6


def test_a_chart_of_nearly_equal_series_is_drawn_and_its_script_uses_the_same_tolerance():
    series = [Series(name, [(40.0, y)], "#000") for name, y in zip(("a", "b"), NEARLY_EQUAL, strict=True)]
    with at_most(5):
        chart = line_chart("policy prefers chosen", series, (40.0, 40.0), x_label="% flipped")
    assert "<svg" in chart
    small = padded_range([4.7e-7, 4.7e-7 + 8.7e-10])  # a learning rate that does vary, by 0.2%: drawn as a slope
    assert small[1] - small[0] < 1e-9
    assert f"FLAT = {FLAT!r}" in INTERACTIVE_JS


def test_the_scripts_range_of_a_very_long_series_is_the_pythons():
    """Zoom and legend toggles recompute the y range in the page: 300,000 points (two series logged every step of a
    150,000-step run) overflowed the stack of Math.min.apply; a loop gives padded_range's answer."""
    import json
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    start = INTERACTIVE_JS.index("function padded(values)")
    body = INTERACTIVE_JS[start : INTERACTIVE_JS.index("document.querySelectorAll", start)]
    script = (f"var FLAT = {FLAT!r};\n{body}\nvar v = [];\nfor (var i = 0; i < 300000; i++) v.push(i % 7);\n"
              "console.log(JSON.stringify(padded(v)));")  # fmt: skip
    out = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == pytest.approx(list(padded_range([0.0, 6.0])))


def test_steps_are_written_whole_and_other_values_to_three_digits():
    """Step 1234 was "1.23e+03" in a tooltip (Python's .3g turns scientific at 1000) and "1230" in the page's
    readout (JavaScript rounds to 3 digits): both now say 1234; 1234.5 is 1230 in both."""
    from dpo.analysis.plots import fmt

    assert [fmt(v) for v in (1234, 1234.0, 1500, 1234.5, 0.123456, -0.5, 0.0, 2e5, 0.5625, -0.5625)] == [
        "1234", "1234", "1500", "1230", "0.123", "-0.5", "0", "2.00e+05", "0.563", "-0.563"]  # fmt: skip
    chart = line_chart("loss", [Series("run", [(1234.0, 0.5)], "#000")], (0.0, 2000.0))
    assert "run: step 1234, 0.5</title>" in chart


def test_the_scripts_fmt_writes_what_pythons_does():
    import json
    import shutil
    import subprocess

    from dpo.analysis.plots import fmt

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    start = INTERACTIVE_JS.index("function fmt(v)")
    body = INTERACTIVE_JS[start : INTERACTIVE_JS.index("function tickText", start)]
    values = [1234, 1500, 1234.5, 0.123456, -0.5, 0, 99999, 0.001, 0.5625, -0.5625, 999.5, 0.0015]
    out = subprocess.run([node, "-e", f"{body}\nconsole.log(JSON.stringify({json.dumps(values)}.map(fmt)));"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [fmt(v) for v in values]


def test_every_legend_row_is_inside_the_chart():
    """Eight 20-character labels take four rows; the chart grows so the last is drawn inside it, and a label too
    long for a row is cut with its whole text in a tooltip."""
    import re

    series = [Series(f"quickstart (run-{i:04d})", [(0.0, i), (10.0, i + 1)], "#000") for i in range(8)]
    series.append(Series("x" * 100, [(0.0, 1.0), (10.0, 2.0)], "#000"))
    chart = line_chart("loss", series, (0.0, 10.0))
    height = float(re.search(r'<svg[^>]* height="(\d+)"', chart).group(1))
    rows = [float(y) for y in re.findall(r'<text class="legend" x="[\d.]+" y="([\d.]+)"', chart)]
    assert len(rows) == 9 and len(set(rows)) >= 4
    assert max(rows) < height and f'viewBox="0 0 480 {height:g}"' in chart
    assert f"<title>{'x' * 100}</title>" in chart and "x" * 100 + "</text>" not in chart
    two_rows = line_chart("loss", series[:2], (0.0, 10.0))
    assert ' height="280"' in two_rows  # the usual size while the legend fits
