"""The label audit: the flip-rate estimator on synthetic margins and features with a known flip rate, and
`dpo data audit`, `data.audit` and `loss.label_smoothing: auto` end to end on a tiny random model."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from dpo.config.loading import load_recipe
from dpo.errors import UserError
from dpo.training.audit_use import apply_audit, suspects
from dpo.training.flip_estimate import cross_fitted_margins, fit_flip_mixture, profile_log_likelihood
from dpo.training.gate import check
from dpo.training.loss_plan import loss_plan
from tests.conftest import TINY_TRAINING, invoke_dpo, run_dpo, tiny_recipe_dict, write_recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mirrored_margins(n: int, rate: float, mu: float, sigma: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Margins of clean pairs ~ N(mu, sigma); a flipped pair's margin is negated. Returns (margins, flipped)."""
    g = torch.Generator().manual_seed(seed)
    clean = mu + sigma * torch.randn(n, generator=g, dtype=torch.float64)
    flipped = torch.rand(n, generator=g) < rate
    return torch.where(flipped, -clean, clean), flipped


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.2, 0.3, 0.4])
def test_mixture_recovers_the_flip_rate_of_separated_margins(rate):
    margins, flipped = mirrored_margins(4000, rate, mu=2.0, sigma=1.0, seed=0)
    fit = fit_flip_mixture(margins)
    injected = flipped.double().mean().item()  # the realised share, which the estimate should find
    assert fit.estimate == pytest.approx(injected, abs=0.015)
    assert fit.low <= injected <= fit.high
    assert fit.high - fit.low < 0.05
    assert fit.mu == pytest.approx(2.0, abs=0.1) and fit.sigma == pytest.approx(1.0, abs=0.1)


def test_posterior_is_bayes_rule_under_the_fitted_mixture():
    margins, _ = mirrored_margins(2000, 0.2, mu=2.0, sigma=1.0, seed=1)
    fit = fit_flip_mixture(margins)
    e, mu, s = fit.estimate, fit.mu, fit.sigma
    for i in (0, 1, 2):
        m = margins[i].item()
        # p(flipped | m) = e N(m; -mu, s) / (e N(m; -mu, s) + (1 - e) N(m; mu, s)); the normal's constants cancel
        flip = e * math.exp(-0.5 * ((m + mu) / s) ** 2)
        clean = (1 - e) * math.exp(-0.5 * ((m - mu) / s) ** 2)
        assert fit.p_flipped[i].item() == pytest.approx(flip / (flip + clean), abs=1e-4)
    # a margin of 0 is as likely either way, scaled by the prior: p = e
    assert fit.p_flipped[margins.abs().argmin()].item() == pytest.approx(e, abs=0.02)


@pytest.mark.parametrize("rate", [0.0, 0.2])
def test_the_interval_ends_where_the_profile_likelihood_crosses_the_cut(rate):
    """The ends were the innermost grid points (a 0.01 grid), up to 0.01 inside the true ends each time; with no
    flips and good separation the "95%" interval was [0, 0]. Checked against the profile on a 40 times finer grid
    around each end; the point estimate is not touched."""
    margins, _ = mirrored_margins(500, rate, mu=2.0, sigma=1.0, seed=0)
    fit = fit_flip_mixture(margins)
    best = profile_log_likelihood(margins, torch.tensor([fit.estimate]), fit.mu, fit.sigma).item()
    level = best - 1.959964**2 / 2  # the chi-square(1) cut at 95%
    step = 0.01 / 40
    for end, outermost in ((fit.low, min), (fit.high, max)):
        fine = torch.linspace(end - 0.01, end + 0.01, 81, dtype=torch.float64).clamp(0.0, 0.5)
        inside = fine[profile_log_likelihood(margins, fine, fit.mu, fit.sigma) >= level]
        # the true crossing lies between the outermost fine point inside and the next one out
        assert 0 <= (end - outermost(inside).item()) * (-1 if outermost is min else 1) < step + 1e-9
    if rate == 0.0:
        assert fit.estimate == pytest.approx(0, abs=1e-6) and fit.low == 0.0 and 0.003 < fit.high < 0.01  # was [0, 0]
    else:
        assert fit.low < fit.estimate < fit.high and round(fit.low, 2) != fit.low and round(fit.high, 2) != fit.high


def test_the_bisection_reads_the_profile_the_grid_reads(monkeypatch):
    """The interval's crossings are those of `profile_log_likelihood` itself, not of a copy of it that could drift
    (its start, its iterations): each halving asks it about both ends."""
    from dpo.training import flip_estimate

    asked = []
    original = flip_estimate.profile_log_likelihood

    def profile(margins, grid, mu, sigma):
        asked.append(len(grid))
        return original(margins, grid, mu, sigma)

    monkeypatch.setattr(flip_estimate, "profile_log_likelihood", profile)
    margins, _ = mirrored_margins(500, 0.2, mu=2.0, sigma=1.0, seed=0)
    fit_flip_mixture(margins)
    assert asked.count(2) == flip_estimate.BISECTIONS


def test_margins_that_cannot_tell_the_answers_apart_give_a_wide_interval():
    g = torch.Generator().manual_seed(0)
    fit = fit_flip_mixture(0.1 * torch.randn(1000, generator=g, dtype=torch.float64))
    assert fit.separation < 0.5
    assert fit.low <= 0.05 and fit.high >= 0.45


def synthetic_diffs(n: int, rate: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair feature differences whose clean label follows a linear reward (w . d > 0), then a share `rate` flipped."""
    g = torch.Generator().manual_seed(seed)
    dim = 20
    w = torch.randn(dim, generator=g)
    d = torch.randn(n, dim, generator=g)
    d = d * torch.sign(d @ w)[:, None] + 0.5 * w / w.norm()  # every clean pair prefers chosen
    flipped = torch.rand(n, generator=g) < rate
    d[flipped] = -d[flipped]
    return d, flipped


def test_cross_fitted_reward_model_finds_the_flipped_pairs():
    diffs, flipped = synthetic_diffs(600, 0.25, seed=0)
    margins, choice = cross_fitted_margins(diffs, seed=0)
    assert choice["features"] == "all" and choice["l2"] > 0
    fit = fit_flip_mixture(margins)
    assert fit.estimate == pytest.approx(flipped.float().mean().item(), abs=0.05)
    top = fit.p_flipped.argsort(descending=True)[:60]  # the top 10%
    assert flipped[top].float().mean().item() >= 0.9
    assert torch.equal(margins, cross_fitted_margins(diffs, seed=0)[0])  # seeded: the same folds, the same margins
    assert not torch.equal(margins, cross_fitted_margins(diffs, seed=1)[0])


def test_pairs_whose_p_rounds_to_1_are_ranked_by_margin_not_by_training_order():
    """With well-separated margins the posterior saturates: p was rounded to 6 decimals before ranking, so the tied
    pairs at 1.0 came in training order, and `share` dropped or flipped pairs by row number, not by margin."""
    from dpo.training.audit import AuditResult

    margins, _ = mirrored_margins(200, 0.3, mu=3.0, sigma=1.0, seed=0)
    result = AuditResult([{}] * 200, [("pairs.jsonl", i + 1) for i in range(200)], fit_flip_mixture(margins))
    written = result.to_json()["pairs"]
    assert sum(pair["p_flipped"] == 1.0 for pair in written) >= 20  # saturated: rounding alone cannot order them
    by_margin = sorted(range(200), key=lambda i: margins[i].item())
    assert result.ranking() == by_margin
    assert [pair["row"] - 1 for pair in written] == by_margin
    assert [pair["margin"] for pair in written] == [round(margins[i].item(), 6) for i in by_margin]
    assert suspects(result.p_flipped, result.ranking(), share=0.1, threshold=None) == sorted(by_margin[:20])
    assert result.p_flipped != [round(p, 6) for p in result.p_flipped]  # rounded only where it is written


def test_suspects_by_share_and_by_threshold():
    p = [0.1, 0.9, 0.5, 0.7]
    ranking = [1, 3, 2, 0]
    assert suspects(p, ranking, share=0.5, threshold=None) == [1, 3]
    assert suspects(p, ranking, share=0.3, threshold=None) == [1]  # rounded down
    assert suspects(p, ranking, share=None, threshold=0.5) == [1, 2, 3]


# ---- the command and the recipe keys, on a tiny random model --------------------------------------------


@pytest.fixture
def audit_recipe(tmp_path, tiny_model_dir):
    """The tiny model on a 24-pair JSONL file with a blank line (row numbers are file lines) and a duplicate."""
    lines = []
    for i in range(24):
        pair = {"prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}.", "rejected": f"{2 * i + 1}."}
        lines.append(json.dumps(pair))
        if i == 3:
            lines += ["", json.dumps(pair)]  # line 5 blank, line 6 a duplicate of line 4 (dropped)
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(lines) + "\n")
    recipe = tiny_recipe_dict(tiny_model_dir, 100, TINY_TRAINING)
    recipe["data"] = {"train": str(data), "heldout_fraction": 0.2}
    return write_recipe(tmp_path / "audit.yaml", recipe)


@pytest.mark.slow
def test_data_audit_writes_sorted_pairs_numbered_by_file_line(audit_recipe, tmp_path):
    out = tmp_path / "out"
    proc = run_dpo("data", "audit", audit_recipe, "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    audit = json.loads((out / "audit.json").read_text())
    assert set(audit) == {"flip_rate", "pairs"}
    rate = audit["flip_rate"]
    assert set(rate) == {"estimate", "low", "high"} and 0 <= rate["low"] <= rate["estimate"] <= rate["high"] <= 0.5
    pairs = audit["pairs"]
    assert all(set(p) == {"source", "row", "p_flipped", "margin"} for p in pairs)
    p = [x["p_flipped"] for x in pairs]
    assert p == sorted(p, reverse=True)
    # 24 distinct pairs, 20% of the prompts held out: the training pairs' rows are file lines, skipping 5 and 6
    lines = (audit_recipe.parent / "pairs.jsonl").read_text().split("\n")
    checked = check(audit_recipe)
    assert len(pairs) == len(checked.data.train)
    for entry in pairs:
        assert entry["source"] == str(audit_recipe.parent / "pairs.jsonl")
        assert entry["row"] not in (5, 6)
        row = json.loads(lines[entry["row"] - 1])
        assert row in checked.data.train
    assert "estimated flip rate" in proc.stdout and "top 5 suspects:" in proc.stdout
    assert "prompt:" in proc.stdout and "chosen:" in proc.stdout and "rejected:" in proc.stdout
    assert "audit: scoring answers" in proc.stderr  # the progress bar
    again = run_dpo("data", "audit", audit_recipe, "--output", tmp_path / "again")
    assert again.returncode == 0
    assert (tmp_path / "again" / "audit.json").read_text() == (out / "audit.json").read_text()  # seeded


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.audit.suspects=drop", "data.audit: suspects: drop needs exactly one of share or threshold"),
        ("data.audit.share=0.1", "share has no effect with suspects: keep"),
        ("data.audit.suspect=drop", "unknown key"),
        ("data.max_train_pairs=5", "the audit needs at least 10 training pairs"),
    ],
)
def test_data_audit_user_errors(audit_recipe, tmp_path, override, message):
    proc = invoke_dpo("data", "audit", audit_recipe, "--output", tmp_path / "out", "--set", override)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_share_of_suspects_that_rounds_to_no_pair_is_an_error(audit_recipe):
    """0.02 of the 19 training pairs (24 rows, a duplicate dropped, a fifth of the prompts held out) is no pair:
    the drop would do nothing, unsaid; 0.1 is one pair."""
    with pytest.raises(UserError, match=r"data.audit.share: has no effect: 0.02 of the 19 training pairs is no pair"):
        check(audit_recipe, ["data.audit.suspects=drop", "data.audit.share=0.02"])
    assert check(audit_recipe, ["data.audit.suspects=flip", "data.audit.share=0.1"]).recipe.data.audit.share == 0.1


def test_data_audit_refuses_an_output_it_cannot_write_before_scoring(audit_recipe, tmp_path):
    """The output folder is checked before the minutes of scoring, not when audit.json is written."""
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    proc = invoke_dpo("data", "audit", audit_recipe, "--output", afile / "out")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error:") and f"cannot be created: {afile} is a file, not a directory" in proc.stderr
    assert "scoring answers" not in proc.stderr  # refused before the audit's progress bar started


def test_data_audit_checks_its_own_folder_not_the_run_directory_it_never_writes(audit_recipe, tmp_path, monkeypatch):
    """`dpo data audit` writes no run directory: a runs/<name> that `dpo train` could not create is no error here,
    only the audit's own --output is checked."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("a file where dpo train would make runs/")
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    proc = invoke_dpo("data", "audit", audit_recipe, "--output", afile / "out")
    assert proc.returncode == 2 and proc.stderr.splitlines() == [
        f"error: {afile / 'out'}: cannot be created: {afile} is a file, not a directory"
    ]


def test_label_smoothing_auto_is_for_flip_rate_losses_only(audit_recipe):
    plan = loss_plan(load_recipe(audit_recipe, ["loss.label_smoothing=auto"]))
    assert plan.hyperparameters == {"label_smoothing": "auto"}
    assert loss_plan(load_recipe(audit_recipe, ["loss.type=robust", "loss.label_smoothing=auto"]))
    with pytest.raises(UserError, match=r"does not apply to loss.type \['ipo'\]"):  # as a number would
        loss_plan(load_recipe(audit_recipe, ["loss.type=ipo", "loss.label_smoothing=auto"]))
    with pytest.raises(UserError, match="applies to losses whose label_smoothing is a label-flip rate"):
        loss_plan(load_recipe(audit_recipe, ["loss.type=exo_pair", "loss.label_smoothing=auto"]))


def test_auto_takes_epsilon_from_the_audit(audit_recipe, tmp_path):
    checked = apply_audit(check(audit_recipe, ["loss.label_smoothing=auto"]), tmp_path, progress=False)
    audit = checked.data.card["audit"]
    epsilon = checked.loss_plan.hyperparameters["label_smoothing"]
    assert isinstance(epsilon, float) and 0 <= epsilon < 0.5
    assert audit["auto"] == {"loss.label_smoothing": round(epsilon, 4)}
    # nothing dropped: epsilon is the mean posterior, which is the mixture's estimate at EM's fixed point
    assert epsilon == pytest.approx(audit["flip_rate"]["estimate"], abs=1e-3)
    assert audit["suspects"] == {"action": "keep", "pairs": 0, "rows": []}
    assert (tmp_path / "audit.json").is_file()


def test_auto_takes_the_estimate_the_autopilot_reads(audit_recipe, tmp_path, monkeypatch):
    """auto's epsilon is the expected flip rate as data_card.json records it (4 decimals), which the autopilot reads:
    its label_audit rule finds the smoothing already there at step 0 (unrounded, 0.123456 < 0.1235 raised it)."""
    import dataclasses

    import dpo.training.audit_use as audit_use
    from dpo.training.autopilot import autopilot_for

    real_audit = audit_use.audit_checked

    def all_at(checked, progress=True):
        result = real_audit(checked, progress)
        mixture = dataclasses.replace(result.mixture, p_flipped=torch.full_like(result.mixture.p_flipped, 0.123456))
        return dataclasses.replace(result, mixture=mixture)

    monkeypatch.setattr(audit_use, "audit_checked", all_at)
    checked = apply_audit(check(audit_recipe, ["loss.label_smoothing=auto", "autopilot.enabled=true"]), tmp_path,
                          progress=False)  # fmt: skip
    audit = checked.data.card["audit"]
    assert checked.loss_plan.hyperparameters["label_smoothing"] == audit["expected_flip_rate_after"] == 0.1235
    assert audit["auto"] == {"loss.label_smoothing": 0.1235}
    autopilot = autopilot_for(checked, tmp_path / "metrics.jsonl")
    assert autopilot.flip_rate == 0.1235
    metrics = {"eval_loss": 0.69, "eval_rewards/margins": 0.0, "eval_rewards/accuracies": 0.5}
    assert autopilot.decide(0, metrics) == []


@pytest.mark.parametrize("action", ["drop", "flip"])
def test_suspects_are_dropped_or_flipped(audit_recipe, tmp_path, action):
    before = check(audit_recipe)
    checked = apply_audit(
        check(audit_recipe, [f"data.audit.suspects={action}", "data.audit.share=0.25"]), tmp_path, progress=False
    )
    audit = json.loads((tmp_path / "audit.json").read_text())
    n = len(before.data.train)
    top = audit["pairs"][: n // 4]
    card = checked.data.card["audit"]["suspects"]
    assert card["action"] == action and card["pairs"] == n // 4
    assert sorted((r["source"], r["row"]) for r in card["rows"]) == sorted((p["source"], p["row"]) for p in top)
    lines = (audit_recipe.parent / "pairs.jsonl").read_text().split("\n")
    suspect_rows = [json.loads(lines[p["row"] - 1]) for p in top]
    if action == "drop":
        assert len(checked.data.train) == n - n // 4
        assert not any(row in checked.data.train for row in suspect_rows)
        assert checked.data.card["split"]["train_pairs"] == n - n // 4
    else:
        assert len(checked.data.train) == n
        for row in suspect_rows:
            assert {**row, "chosen": row["rejected"], "rejected": row["chosen"]} in checked.data.train
    # the data as read keep their hash (what --resume compares); the pairs trained on have their own
    assert checked.data.card["content_hash"]["train"] == before.data.card["content_hash"]["train"]
    assert checked.data.card["audit"]["content_hash_after"] != before.data.card["content_hash"]["train"]


def test_a_drop_that_leaves_no_evaluation_before_the_last_step_is_refused(audit_recipe, tmp_path, monkeypatch):
    """Fewer pairs make shorter epochs. One epoch of the 19 pairs as read, at 2 a step, is 10 steps, evaluated at
    step 8; with 9 of them dropped it is 5. A drop of a `share` has a count the gate knows before the audit runs;
    a drop by `threshold` has one only the audit's posteriors give, so the run is checked again after it."""
    import dataclasses

    import dpo.training.audit_use as audit_use

    epochs = ["early_stopping.patience=2", "training.max_steps=-1", "training.num_train_epochs=1"]
    settings = [*epochs, "training.per_device_train_batch_size=2", "training.eval_steps=8"]
    assert len(check(audit_recipe, settings).data.train) == 19  # an evaluation at step 8 of 10
    refused = (
        "--set: early_stopping.patience: needs evaluations during training (training.eval_steps 8 >= the run's 5 "
        "steps (training.num_train_epochs 1 over 10 training pairs at 2 a step)): without them the untrained model "
        "would be kept as the best"
    )
    with pytest.raises(UserError) as raised:  # 19 - int(0.5 x 19) = 10 pairs left
        check(audit_recipe, [*settings, "data.audit.suspects=drop", "data.audit.share=0.5"])
    assert str(raised.value) == refused

    real_audit = audit_use.audit_checked

    def nine_suspects(checked, progress=True):  # the tiny random model suspects nothing by itself
        result = real_audit(checked, progress)
        p_flipped = torch.tensor([0.9] * 9 + [0.1] * 10, dtype=result.mixture.p_flipped.dtype)
        return dataclasses.replace(result, mixture=dataclasses.replace(result.mixture, p_flipped=p_flipped))

    monkeypatch.setattr(audit_use, "audit_checked", nine_suspects)
    by_threshold = check(audit_recipe, [*settings, "data.audit.suspects=drop", "data.audit.threshold=0.5"])
    with pytest.raises(UserError) as raised:
        apply_audit(by_threshold, tmp_path, progress=False)
    assert str(raised.value) == f"{refused} (after data.audit dropped 9 suspect pairs)"


@pytest.mark.slow
def test_train_with_auto_records_the_audit_in_card_and_report(audit_recipe, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_dpo(
        "train", audit_recipe, "--output-dir", run_dir,
        "--set", "loss.label_smoothing=auto", "--set", "data.audit.suspects=drop", "--set", "data.audit.threshold=0.5",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads((run_dir / "data_card.json").read_text())
    assert set(card["audit"]["flip_rate"]) == {"estimate", "low", "high"}
    assert card["audit"]["suspects"]["action"] == "drop" and card["audit"]["suspects"]["threshold"] == 0.5
    assert "loss.label_smoothing" in card["audit"]["auto"]
    assert (run_dir / "audit.json").is_file()
    html = (run_dir / "report.html").read_text()
    assert "Label audit" in html and "estimated flip rate" in html


@pytest.mark.slow
def test_the_autopilot_reads_the_flip_rate_the_audit_leaves_and_acts_on_it(audit_recipe, tmp_path, monkeypatch):
    """In a real run the autopilot's estimate is the data card's `expected_flip_rate_after`, and its label_audit
    rule raises the smoothing to it at the step-0 evaluation, before training. The tiny random model cannot tell
    the answers apart (its audit estimates 0), so the audit's posteriors are set to 0.25 each: the mean the card
    must then carry."""
    import dataclasses

    import dpo.training.audit_use as audit_use
    from dpo.training.autopilot import Autopilot
    from dpo.training.execute import execute

    real_audit = audit_use.audit_checked

    def a_quarter_suspect(checked, progress=True):
        result = real_audit(checked, progress)
        mixture = dataclasses.replace(result.mixture, p_flipped=torch.full_like(result.mixture.p_flipped, 0.25))
        return dataclasses.replace(result, mixture=mixture)

    monkeypatch.setattr(audit_use, "audit_checked", a_quarter_suspect)
    overrides = ["autopilot.enabled=true", "data.audit.suspects=keep"]
    summary, trainer = execute(audit_recipe, overrides, output_dir=tmp_path / "run")
    card = json.loads((tmp_path / "run" / "data_card.json").read_text())["audit"]
    [autopilot] = [c for c in trainer.callback_handler.callbacks if isinstance(c, Autopilot)]
    assert autopilot.flip_rate == card["expected_flip_rate_after"] == 0.25
    [decision] = [d for d in summary["autopilot"]["decisions"] if d["rule"] == "label_audit"]
    assert decision["step"] == 0 and decision["because"] == {"flip_rate": 0.25, "label_smoothing": 0.0}
    assert decision["changed"] == {"loss.label_smoothing": [0.0, 0.25]}


@pytest.mark.parametrize(
    "data_changed, epsilon, note",
    [
        (False, 0.1235, "resume: the label audit now estimates a flip rate of 0.1234; the run goes on with 0.1235, "
                        "the estimate it was made with; loss.label_smoothing: auto stays 0.1235"),
        # --allow-data-change: the suspects are picked again, and the estimate of the old data is of other pairs
        (True, 0.1234, "resume: the training data changed, so the run goes on with the label audit's new estimate of "
                       "the flip rate, 0.1234, not 0.1235, the estimate it was made with; loss.label_smoothing: auto "
                       "is now 0.1234"),
    ],
)  # fmt: skip
def test_a_resumed_run_keeps_its_estimate_unless_the_training_data_changed(
    audit_recipe, tmp_path, monkeypatch, capsys, data_changed, epsilon, note
):
    """The regression: resumed with --allow-data-change, the run kept the old data's flip-rate estimate and epsilon
    while its new audit picked the suspects, so data_card.json recorded a rate of pairs it no longer trains on."""
    import dataclasses

    import dpo.training.audit_use as audit_use

    real_audit = audit_use.audit_checked

    def all_at(checked, progress=True):
        result = real_audit(checked, progress)
        mixture = dataclasses.replace(result.mixture, p_flipped=torch.full_like(result.mixture.p_flipped, 0.12344))
        return dataclasses.replace(result, mixture=mixture)

    monkeypatch.setattr(audit_use, "audit_checked", all_at)
    resumed = {"expected_flip_rate_after": 0.1235, "auto": {"loss.label_smoothing": 0.1235}}
    checked = apply_audit(check(audit_recipe, ["loss.label_smoothing=auto"]), tmp_path, progress=False,
                          resumed=resumed, data_changed=data_changed)  # fmt: skip
    audit = checked.data.card["audit"]
    assert checked.loss_plan.hyperparameters["label_smoothing"] == audit["expected_flip_rate_after"] == epsilon
    assert audit["auto"] == {"loss.label_smoothing": epsilon}
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("resume:")] == [note]


def test_a_resumed_run_keeps_the_auto_label_smoothing_it_was_made_with(audit_recipe, tmp_path, monkeypatch, capsys):
    """The regression: resume audited the labels again and took epsilon from the new estimate. Scored on another
    device or thread count the estimate may end a hair apart and round to another 4th decimal (0.123456 -> 0.1235,
    0.12344 -> 0.1234): steps 3 and 4 trained with another label smoothing than steps 1 and 2, without a word."""
    import dataclasses

    import dpo.training.audit_use as audit_use
    from dpo.training.execute import execute

    real_audit = audit_use.audit_checked
    rate = {"p": 0.123456}

    def all_at(checked, progress=True):
        result = real_audit(checked, progress)
        mixture = dataclasses.replace(result.mixture, p_flipped=torch.full_like(result.mixture.p_flipped, rate["p"]))
        return dataclasses.replace(result, mixture=mixture)

    monkeypatch.setattr(audit_use, "audit_checked", all_at)
    run_dir = tmp_path / "run"
    execute(audit_recipe, ["loss.label_smoothing=auto"], output_dir=run_dir)
    assert json.loads((run_dir / "data_card.json").read_text())["audit"]["auto"] == {"loss.label_smoothing": 0.1235}
    for name in ("final", "checkpoints/checkpoint-4"):  # killed after step 2's checkpoint
        shutil.rmtree(run_dir / name)
    (run_dir / "summary.json").unlink()
    capsys.readouterr()
    rate["p"] = 0.12344  # the audit scored again, a hair apart
    summary, trainer = execute(audit_recipe, ["loss.label_smoothing=auto"], output_dir=run_dir, resume=True)
    assert summary["resumed_from"] == [2] and summary["steps"] == 4
    assert trainer.loss_plan.hyperparameters["label_smoothing"] == 0.1235
    audit = json.loads((run_dir / "data_card.json").read_text())["audit"]
    assert audit["auto"] == {"loss.label_smoothing": 0.1235} and audit["expected_flip_rate_after"] == 0.1235
    notes = [line for line in capsys.readouterr().out.splitlines() if "label audit" in line]
    assert notes == [
        "resume: the label audit now estimates a flip rate of 0.1234; the run goes on with 0.1235, the estimate it "
        "was made with; loss.label_smoothing: auto stays 0.1235"
    ]


def test_a_resumed_run_drops_the_pairs_it_was_made_without(audit_recipe, tmp_path, monkeypatch, capsys):
    """The regression: with `data.audit.suspects: drop` resume audited the labels again and dropped the new audit's
    suspects, so steps 3 and 4 could train on other pairs than steps 1 and 2 (the audit scored on another device or
    thread count ranks near-ties differently). The run's suspects are found again by content (data_card.json
    `audit.suspects.hashes`), whatever the new audit ranks first. A run whose card predates the hashes is checked
    against `content_hash_after`: other pairs are one error line, exit 2, nothing changed."""
    import dataclasses

    import dpo.training.audit_use as audit_use
    import dpo.training.execute as executing
    from dpo.training.execute import execute

    real_audit = audit_use.audit_checked
    suspect = {"first": True}
    trained_on = []
    real_build = executing.build_trainer

    def build_trainer(checked, callbacks):  # the pairs each attempt trains on
        trained_on.append(audit_use.content_hash(checked.data.train))
        return real_build(checked, callbacks)

    monkeypatch.setattr(executing, "build_trainer", build_trainer)

    def four_suspects(checked, progress=True):  # the first four pairs, or (scored again) the last four
        result = real_audit(checked, progress)
        n = len(result.pairs)
        high = range(4) if suspect["first"] else range(n - 4, n)
        p = torch.tensor([0.9 if i in high else 0.1 for i in range(n)], dtype=result.mixture.p_flipped.dtype)
        return dataclasses.replace(result, mixture=dataclasses.replace(result.mixture, p_flipped=p))

    monkeypatch.setattr(audit_use, "audit_checked", four_suspects)
    settings = ["data.audit.suspects=drop", "data.audit.threshold=0.5"]
    run_dir = tmp_path / "run"
    execute(audit_recipe, settings, output_dir=run_dir)
    made = json.loads((run_dir / "data_card.json").read_text())["audit"]
    assert made["suspects"]["pairs"] == 4

    def killed_after_step_2():
        for name in ("final", "checkpoints/checkpoint-4"):
            shutil.rmtree(run_dir / name, ignore_errors=True)
        (run_dir / "summary.json").unlink(missing_ok=True)

    killed_after_step_2()
    suspect["first"] = False  # the audit scored again now suspects other pairs
    summary, trainer = execute(audit_recipe, settings, output_dir=run_dir, resume=True)
    assert summary["resumed_from"] == [2] and summary["steps"] == 4
    assert trained_on == [made["content_hash_after"]] * 2
    resumed = json.loads((run_dir / "data_card.json").read_text())["audit"]
    assert resumed["content_hash_after"] == made["content_hash_after"]
    assert resumed["suspects"]["rows"] == made["suspects"]["rows"]
    assert len(resumed["suspects"]["hashes"]) == 4 and resumed["suspects"]["hashes"] == made["suspects"]["hashes"]

    # a run made before the hashes were recorded: the new audit's picks differ from the pairs it trained on
    card = json.loads((run_dir / "data_card.json").read_text())
    del card["audit"]["suspects"]["hashes"]
    (run_dir / "data_card.json").write_text(json.dumps(card))
    killed_after_step_2()
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    capsys.readouterr()
    with pytest.raises(UserError) as refused:
        execute(audit_recipe, settings, output_dir=run_dir, resume=True)
    assert str(refused.value).startswith(
        f"{run_dir / 'data_card.json'}: audit.content_hash_after: the pairs that data.audit.suspects: drop leaves now "
        f"are not those the run was made with (content hash {made['content_hash_after'][:12]}... now "
    )
    assert str(refused.value).endswith(
        "...): the label audit, scored again, picks other suspects, and the resumed steps would train on other pairs; "
        "start a new run in another --output-dir"
    )
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
