"""Overfitting diagnostics: gaps logged at each evaluation, onset detection and warnings on known histories."""

from __future__ import annotations

import pytest

from dpo.analysis.diagnostics import overfitting_onset, warnings_for
from dpo.training.execute import execute
from tests.conftest import read_jsonl


def history(rows):
    """rows: (step, train margin, held-out margin, held-out loss, held-out chosen logratio)."""
    out = []
    for step, train_margin, held_margin, held_loss, displacement in rows:
        out.append({"step": step, "loss": 0.5, "rewards/margins": train_margin})
        out.append(
            {
                "step": step,
                "eval_loss": held_loss,
                "eval_rewards/margins": held_margin,
                "eval_logratios/chosen": displacement,
            }
        )
    return out


def test_onset_is_first_eval_after_which_heldout_worsens_while_train_improves():
    """Held-out margin peaks at step 20 then falls at 30 and 40 while the train margin keeps rising:
    with patience 2 the onset is step 20."""
    h = history(
        [(10, 1.0, 0.5, 0.6, 0.0), (20, 2.0, 0.9, 0.55, 0.0), (30, 3.0, 0.8, 0.6, 0.0), (40, 4.0, 0.7, 0.7, 0.0)]
    )
    assert overfitting_onset(h, "eval_rewards/margins", patience=2) == 20
    assert overfitting_onset(h, "eval_rewards/margins", patience=3) is None  # only two worsening evaluations
    # eval_loss is a 'min' metric: it worsens 0.55 -> 0.6 -> 0.7 after step 20 while the train loss is flat (0.5)
    assert overfitting_onset(h, "eval_loss", patience=2) is None  # train did not improve


def test_no_onset_when_train_also_worsens():
    h = history([(10, 3.0, 0.9, 0.5, 0.0), (20, 2.0, 0.8, 0.5, 0.0), (30, 1.0, 0.7, 0.5, 0.0)])
    assert overfitting_onset(h, "eval_rewards/margins", patience=2) is None


def test_warnings_name_the_numbers():
    """Margin rises 0.5 -> 1.5 while loss rises from 0.40 (step 10) to 0.60 (> 10% up); chosen log-ratio -3.2."""
    h = history([(10, 1.0, 0.5, 0.40, -0.1), (20, 2.0, 1.0, 0.50, -1.5), (30, 3.0, 1.5, 0.60, -3.2)])
    h[-1]["eval_gap/accuracies"] = 0.3
    found = warnings_for(h)
    assert any("held-out chosen log-prob fell by 3.2 nats" in w and "dpop" in w for w in found)
    assert any("held-out margin kept rising (0.500 -> 1.500)" in w and "minimum 0.400 at step 10" in w for w in found)
    assert any("exceeds held-out by 0.30" in w for w in found)
    held_out = [e for e in h if "eval_loss" in e]
    for e, beta in zip(held_out, (0.1, 0.2, 0.3), strict=True):  # a beta schedule: loss and margin not comparable
        e["eval_beta"] = beta
    assert not any("held-out margin kept rising" in w for w in warnings_for(h))
    for e in held_out:
        e["eval_beta"] = 0.1
    assert any("held-out margin kept rising" in w for w in warnings_for(h))


def test_warnings_within_the_noise_of_their_threshold_are_dropped_under_the_noise_rule():
    """The last evaluation: chosen log-ratio -1.5 (threshold 1 nat), loss 0.48 from a minimum of 0.40 (10%: 0.04),
    gap 0.25 (threshold 0.15). With k = 2 each bar rises by 2 standard errors: log-ratio SE 0.3 -> 1.6 nats (no
    warning), loss SE 0.05 -> 0.10 (none), accuracy SE 0.04 -> 0.23 (still a warning: 0.25 is beyond it)."""
    h = history([(10, 1.0, 0.5, 0.40, -0.1), (20, 2.0, 1.0, 0.44, -1.0), (30, 3.0, 1.5, 0.48, -1.5)])
    h[-1].update({"eval_gap/accuracies": 0.25, "eval_rewards/accuracies": 0.6, "eval_se/logratios/chosen": 0.3,
                  "eval_se/loss": 0.05, "eval_se/rewards/accuracies": 0.04})  # fmt: skip
    assert len(warnings_for(h)) == 3  # the plain thresholds
    [only] = warnings_for(h, noise_sigmas=2.0)
    assert "exceeds held-out by 0.25" in only


def test_loss_warning_compares_only_losses_after_the_autopilots_last_loss_change():
    """Loss 0.55 at step 10, 0.50 at 20; the autopilot adds an NLL term at step 30, after which the held-out loss
    measures another loss (1.40, 1.45) while the margin rises. Compared across the change it reads as a rise of 0.95
    over the minimum; after it (loss_since 30) the loss rose 0.05 from 1.40, under 10%: no warning."""
    h = history([(10, 1.0, 0.5, 0.55, 0.1), (20, 2.0, 1.0, 0.50, 0.1), (40, 3.0, 1.5, 1.40, 0.1),
                 (50, 3.5, 1.8, 1.45, 0.1)])  # fmt: skip
    [across] = warnings_for(h)
    assert "minimum 0.500 at step 20 to 1.450" in across
    assert warnings_for(h, loss_since=30) == []
    h[-1]["eval_loss"] = 1.60  # a rise of 0.20 after the change (over 10% of 1.40) is still one
    [after] = warnings_for(h, loss_since=30)
    assert "minimum 1.400 at step 40 to 1.600" in after


def test_healthy_run_has_no_warnings():
    h = history([(10, 1.0, 0.8, 0.5, 0.2), (20, 1.5, 1.2, 0.45, 0.3)])
    assert warnings_for(h) == []


def test_gaps_are_logged_at_each_evaluation(tiny_recipe, tmp_path):
    """eval_gap/margins = mean of the train rewards/margins since the previous evaluation - held-out margin;
    eval_gap/loss = held-out loss - mean train loss over the same steps. Checked from metrics.jsonl itself."""
    summary, _ = execute(tiny_recipe, output_dir=tmp_path / "run")
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    evals = [r for r in rows if "eval_loss" in r]
    assert "eval_gap/margins" not in evals[0]  # step 0: nothing trained yet
    previous = 0
    for e in evals[1:]:
        window = [r for r in rows if "loss" in r and "eval_loss" not in r and previous < r["step"] <= e["step"]]
        train_margin = sum(r["rewards/margins"] for r in window) / len(window)
        train_accuracy = sum(r["rewards/accuracies"] for r in window) / len(window)
        train_loss = sum(r["loss"] for r in window) / len(window)
        assert e["eval_gap/margins"] == pytest.approx(train_margin - e["eval_rewards/margins"], abs=1e-6)
        assert e["eval_gap/accuracies"] == pytest.approx(train_accuracy - e["eval_rewards/accuracies"], abs=1e-6)
        assert e["eval_gap/loss"] == pytest.approx(e["eval_loss"] - train_loss, abs=1e-4)
        previous = e["step"]
    block = summary["overfitting"]
    assert block["metric"] == "eval_rewards/margins" and block["patience"] == 2 and "onset_step" in block
    assert block["noise_sigmas"] == 2.0  # the recipe's early_stopping.noise_sigmas, which the onset and warnings used
    assert isinstance(block["warnings"], list)


def test_onset_on_a_metric_without_a_train_counterpart_is_recorded_as_not_checked_and_shown_as_not_applicable():
    """The onset compares a held-out curve with the same metric on the training batches: on eval_gap/* or eval_kl
    (early_stopping.metric may be either) it is not looked for, and summary.json, the report, the model card and the
    comparison page say so instead of "not detected", which reads as checked."""
    from dpo.analysis.compare import _summary_table
    from dpo.analysis.diagnostics import overfitting_block
    from dpo.analysis.model_card import _results
    from dpo.analysis.report import _status_block

    h = history([(10, 1.0, 0.5, 0.6, 0.0), (20, 2.0, 0.9, 0.55, 0.0), (30, 3.0, 0.8, 0.6, 0.0)])
    checked = overfitting_block(h, "eval_rewards/margins", 2)
    assert checked["onset_step"] is None and checked["onset_not_checked"] is None
    gap = overfitting_block(h, "eval_gap/accuracies", 2)
    assert gap["onset_step"] is None
    assert gap["onset_not_checked"] == (
        "eval_gap/accuracies has no train counterpart (it is only logged held-out): no train curve to compare it with"
    )
    # a callback's own metric: nothing is known of where it is logged
    custom = overfitting_block(h, "eval_my_score", 2, mode="max")
    assert custom["onset_not_checked"].startswith("eval_my_score has no train counterpart (not a dpo metric with")
    older = {"metric": "eval_kl", "patience": 2, "onset_step": None, "warnings": []}  # written before the key
    not_applicable = "not applicable (no train counterpart)"
    for block, shown in ((checked, "not detected"), (gap, not_applicable), (older, not_applicable)):
        summary = {"stop_reason": "completed", "steps": 30, "max_steps": 30, "best_step": 20, "overfitting": block}
        assert f"<span>overfitting onset</span><b>{shown}</b>" in _status_block(summary, h)
        card = "\n".join(_results(summary))
        if shown == "not detected":
            assert "- onset: not detected on eval_rewards/margins (patience 2)" in card
        else:
            assert f"- onset: not applicable (no train counterpart): {block['metric']} has no train counterpart" in card
        table = _summary_table([{"name": "run", "dir": "runs/x", "color": "#000", "summary": summary}])
        assert ("<td class=num>none</td>" if shown == "not detected" else "<td class=num>n/a</td>") in table


def test_a_run_stopped_before_its_diagnostics_is_not_shown_as_free_of_warnings():
    """A run stopped on a non-finite loss has no overfitting block: the report said "No overfitting warnings" and
    onset "not detected", the comparison "none", which read as looked for and not found."""
    from dpo.analysis.compare import _summary_table
    from dpo.analysis.report import _status_block

    summary = {"stop_reason": "non_finite", "steps": 7, "max_steps": 30, "best_step": 5}
    h = history([(5, 1.0, 0.5, 0.6, 0.0)])
    block = _status_block(summary, h)
    assert "No overfitting warnings" not in block and "<span>overfitting onset</span><b>not computed</b>" in block
    assert "Not looked for: the run stopped (non_finite) before the end-of-run diagnostics." in block
    table = _summary_table([{"name": "run", "dir": "runs/x", "color": "#000", "summary": summary}])
    assert "<td class=num>not computed</td>" in table
