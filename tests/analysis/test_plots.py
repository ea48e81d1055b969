"""The hand-made charts' axes: ranges and ticks for values that differ by float rounding only."""

from __future__ import annotations

import pytest

from dpo.analysis.plots import FLAT, INTERACTIVE_JS, Series, line_chart, nice_ticks, padded_range

# two means of the same 270 pairs, one summed in another order: equal but for the last bit (the noise benchmark's
# html once built ticks 1e-17 apart for them, until the machine ran out of memory)
NEARLY_EQUAL = [0.6925925925925925, 0.6925925925925926]


def test_values_equal_but_for_rounding_get_the_band_of_a_constant():
    assert padded_range(NEARLY_EQUAL) == pytest.approx(padded_range([0.6925925925925925] * 2))  # +-10%
    assert padded_range([0.5, 0.5]) == (0.45, 0.55) and padded_range([0.0]) == (-1.0, 1.0)
    assert padded_range([0.0, 1.0]) == (-0.06, 1.06)  # a real span: 6% each side


def test_ticks_are_counted_so_a_tiny_step_cannot_loop_forever():
    assert nice_ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
    assert nice_ticks(-2, 7, integer=True) == [-2, 0.0, 2, 4, 6]
    assert len(nice_ticks(*NEARLY_EQUAL)) <= 6  # a step below the values' resolution: finite all the same


def test_a_chart_of_nearly_equal_series_is_drawn_and_its_script_uses_the_same_tolerance():
    series = [Series(name, [(40.0, y)], "#000") for name, y in zip(("a", "b"), NEARLY_EQUAL, strict=True)]
    assert "<svg" in line_chart("policy prefers chosen", series, (40.0, 40.0), x_label="% flipped")
    assert f"FLAT = {FLAT!r}" in INTERACTIVE_JS
