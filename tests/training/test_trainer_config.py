"""Checks that need the loss table or TRL's DPOConfig fields: no knob is accepted and ignored."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml

from dpo.config.loading import changes_from_base, load_recipe, parse_override
from dpo.errors import UserError
from dpo.training.arguments import (
    build_dpo_config,
    check_training,
    last_evaluation_before_the_end,
    no_evaluation_during_training,
    steps_per_epoch,
)
from dpo.training.loss_plan import hyperparameter_keys, loss_plan
from tests.conftest import write_recipe


@pytest.fixture
def recipe_path(tmp_path):
    return write_recipe(tmp_path / "r.yaml", {"data": {"train": "unused.jsonl"}})


def plan(recipe_path, *overrides):
    return loss_plan(load_recipe(recipe_path, list(overrides)))


def test_default_plan_is_plain_dpo(recipe_path):
    p = plan(recipe_path)
    assert p.terms == (("sigmoid", 1.0),) and p.beta == 0.1 and p.hyperparameters == {}


def test_label_smoothing_turns_sigmoid_into_cdpo(recipe_path):
    assert plan(recipe_path, "loss.label_smoothing=0.1").hyperparameters == {"label_smoothing": 0.1}


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["loss.type=ipo", "loss.label_smoothing=0.1"], "loss.label_smoothing: does not apply to loss.type ['ipo']"),
        (["loss.dpop_lambda=5"], "loss.dpop_lambda: does not apply to loss.type ['sigmoid'] (it is used by: dpop)"),
        (["loss.discopop_tau=0.1", "loss.type=hinge"], "loss.discopop_tau: does not apply"),
        (["loss.type=sigmiod"], "unknown loss 'sigmiod'; did you mean 'sigmoid'?"),
        (["loss.type=[sigmoid, sft]", "loss.weights=[1.0]"], "1 weights for 2 losses"),
        # at another loss's default value too: a knob for a loss not chosen is a mistake, whatever its value
        (["loss.dpop_lambda=50"], "loss.dpop_lambda: does not apply to loss.type ['sigmoid']"),
        (["loss.simpo_gamma=0.5"], "loss.simpo_gamma: does not apply to loss.type ['sigmoid']"),
        (["loss.type=ipo", "loss.label_smoothing=0.001"], "loss.label_smoothing: does not apply"),  # EXO's default
        (["loss.type=ipo", "loss.label_smoothing=[0.1]"], "loss.label_smoothing: does not apply"),  # was a TypeError
        (["loss.type=[]"], "loss.type: List should have at least 1 item"),  # no loss: nothing would be trained
        (["loss.type=[sigmoid, sft]", "loss.weights=[1, -1]"], "loss.weights.1: Input should be greater than or"),
    ],
)
def test_inapplicable_or_unknown_loss_settings_are_errors(recipe_path, overrides, fragment):
    with pytest.raises(UserError) as err:
        plan(recipe_path, *overrides)
    assert str(err.value).startswith("--set: loss.") and fragment in str(err.value)


def test_a_default_that_no_chosen_loss_takes_changes_nothing_and_is_accepted(recipe_path):
    """recipe.yaml of earlier versions wrote `label_smoothing: 0.0` whatever the loss: such a run directory resumes.
    Any other value stays an error (above)."""
    assert plan(recipe_path, "loss.type=ipo", "loss.label_smoothing=0.0").hyperparameters == {}
    with pytest.raises(UserError, match="loss.label_smoothing: does not apply to loss.type"):
        plan(recipe_path, "loss.type=ipo", "loss.label_smoothing=0.05")


def test_unknown_loss_key_names_file_key_and_suggestion(tmp_path):
    """Moved from tests/config/test_recipe.py: `loss` keys come from the loss table, so they are checked with it."""
    base = write_recipe(tmp_path / "base.yaml", {"data": {"train": "unused.jsonl"}})
    bad = write_recipe(tmp_path / "typo.yaml", {"base": "base.yaml", "loss": {"bta": 0.2}})
    with pytest.raises(UserError) as err:
        loss_plan(load_recipe(bad))
    message = str(err.value)
    assert message.startswith(f"{bad}: unknown key 'loss.bta'; did you mean 'loss.beta'? (valid: type, weights, ")
    assert message.endswith(f"{', '.join(hyperparameter_keys())})")  # the hyperparameters of LOSSES, in table order
    assert "label_smoothing, dpop_lambda, discopop_tau, " in message
    assert load_recipe(bad).source("loss.bta") != str(base)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        # moved from tests/config/test_recipe.py (the range is in the loss functions' signatures now)
        (["loss.label_smoothing=0.5"], "loss.label_smoothing: Input should be less than 0.5 (got 0.5)"),
        (["loss.type=robust", "loss.label_smoothing=-0.1"], "loss.label_smoothing: Input should be greater than or"),
        (["loss.type=dpop", "loss.dpop_lambda=-1"], "loss.dpop_lambda: Input should be greater than or equal to 0"),
        (["loss.type=dpop", "loss.dpop_lambda=lots"], "loss.dpop_lambda: expected a number, got the text 'lots'"),
        (["loss.type=discopop", "loss.discopop_tau=0"], "loss.discopop_tau: Input should be greater than 0 (got 0)"),
        # EXO takes log(eps): 0 is out of its range although sigmoid (cDPO) accepts it
        (["loss.type=exo_pair", "loss.label_smoothing=0.0"], "loss.label_smoothing: Input should be greater than 0"),
        (["loss.type=[sigmoid, exo_pair]", "loss.label_smoothing=0"], "loss.label_smoothing: Input should be greater"),
        (["loss.dpop_lamda=5"], "unknown key 'loss.dpop_lamda'; did you mean 'loss.dpop_lambda'?"),
    ],
)
def test_bad_loss_hyperparameter_values_name_the_key(recipe_path, overrides, fragment):
    with pytest.raises(UserError) as err:
        plan(recipe_path, *overrides)
    assert str(err.value).startswith(f"--set: {fragment}"), str(err.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss.type=dpop", "loss.dpop_lambda=true"], "--set: loss.dpop_lambda: expected a number, got true"),
        (["loss.type=robust", "loss.label_smoothing=false"],
         "--set: loss.label_smoothing: expected a number, got false"),
        (["loss.beta_schedule={type: linear, end: true}"],
         "--set: loss.beta_schedule.end: expected a number, got true"),
        (["regularizers.f_divergence=alpha_divergence", "regularizers.f_alpha=true"],
         "--set: regularizers.f_alpha: expected a number, got true"),
        # false is no 0.0: ipo takes no smoothing, and `false` is not the "no smoothing" an old recipe.yaml wrote
        (["loss.type=ipo", "loss.label_smoothing=false"], "--set: loss.label_smoothing: does not apply to loss.type "
                                                          "['ipo'] (it is used by: aot, aot_unpaired, dpo_shift, "
                                                          "exo_pair, robust, sigmoid)"),
    ],
)  # fmt: skip
def test_true_or_false_is_no_loss_hyperparameter(recipe_path, overrides, message):
    """Checked as strictly as the recipe's sections: `dpop_lambda: true` was 1.0."""
    with pytest.raises(UserError) as err:
        plan(recipe_path, *overrides)
    assert str(err.value) == message


def test_loss_hyperparameters_are_validated_and_null_is_unset(recipe_path):
    p = plan(recipe_path, "loss.type=dpop", "loss.dpop_lambda=5")
    assert p.hyperparameters == {"dpop_lambda": 5.0} and isinstance(p.hyperparameters["dpop_lambda"], float)
    # null leaves the function's default, even for a loss that does not take the key
    assert plan(recipe_path, "loss.dpop_lambda=null", "loss.label_smoothing=null").hyperparameters == {}


def test_resolved_recipe_keeps_loss_keys_and_loads_again(recipe_path, tmp_path):
    overrides = ["loss.type=dpop", "loss.dpop_lambda=5", "loss.beta_schedule={type: linear, end: 0.3}"]
    loaded = load_recipe(recipe_path, overrides)
    dumped = yaml.safe_load(loaded.recipe.to_yaml())
    assert dumped["loss"]["dpop_lambda"] == 5 and dumped["loss"]["beta_schedule"] == {"type": "linear", "end": 0.3}
    again = load_recipe(write_recipe(tmp_path / "resolved.yaml", dumped))
    assert again.recipe == loaded.recipe and loss_plan(again) == loss_plan(loaded)


def test_changes_from_base_of_a_loss_hyperparameter(tmp_path):
    base = write_recipe(tmp_path / "base.yaml", {"data": {"train": "unused.jsonl"}, "loss": {"type": "dpop"}})
    child = write_recipe(tmp_path / "child.yaml", {"base": "base.yaml", "loss": {"dpop_lambda": 5.0}})
    changes = changes_from_base(load_recipe(child, ["loss.beta_schedule.end=0.3"]))
    assert {"key": "loss.dpop_lambda", "value": 5.0, "base_value": None, "source": str(child)} in changes
    assert {"key": "loss.beta_schedule.end", "value": 0.3, "base_value": None, "source": "--set"} in changes
    assert base.is_file()


def test_exo_pair_uses_the_paper_epsilon_unless_set(recipe_path):
    assert plan(recipe_path, "loss.type=exo_pair").hyperparameters == {}  # the function's default: 1e-3
    assert plan(recipe_path, "loss.type=exo_pair", "loss.label_smoothing=0.01").hyperparameters == {
        "label_smoothing": 0.01
    }


def test_combined_losses_with_weights(recipe_path):
    p = plan(recipe_path, "loss.type=[sigmoid, sft]", "loss.weights=[1.0, 0.5]")
    assert p.terms == (("sigmoid", 1.0), ("sft", 0.5))


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("training.beta=0.2", "training.beta: belongs elsewhere: use loss.beta"),
        ("training.label_smoothing=0.1", "use loss.label_smoothing"),
        ("training.seed=3", "use seed (top level)"),
        ("training.eval_on_start=true", "training.eval_on_start: is built in: every run evaluates the untrained model"),
        (
            "training.restore_callback_states_from_checkpoint=true",
            "training.restore_callback_states_from_checkpoint: is built in: dpo train --resume already restores early "
            "stopping's and the autopilot's state",
        ),
        ("training.lerning_rate=0.1", "unknown key 'training.lerning_rate'; did you mean 'training.learning_rate'?"),
        ("training.max_steps=ten", "training.max_steps: expected a whole number, got the text 'ten'"),
        ("training.learning_rate=true", "training.learning_rate: expected a number, got true"),
    ],
)
def test_training_section_is_checked_against_dpoconfig(recipe_path, override, fragment):
    with pytest.raises(UserError) as err:
        check_training(load_recipe(recipe_path, [override]))
    assert str(err.value).startswith("--set: ") and fragment in str(err.value)


def test_a_built_in_key_spelled_out_at_its_default_is_accepted(recipe_path):
    """`eval_on_start: false` (a recipe converted from TRL's arguments spells the defaults out) changes nothing."""
    assert check_training(load_recipe(recipe_path, ["training.eval_on_start=false"]))["eval_on_start"] is False


def test_save_strategy_best_is_an_error_it_would_save_nothing(recipe_path, tmp_path):
    """transformers saves under "best" only when metric_for_best_model improves; dpo never sets it (early stopping
    watches its own metric), so the run would write no checkpoint: nothing to resume, no best to restore."""
    with pytest.raises(UserError) as err:
        build_dpo_config(load_recipe(recipe_path, ["training.save_strategy=best"]), tmp_path)
    assert str(err.value).startswith(
        "--set: training.save_strategy: 'best' saves only when transformers' metric_for_best_model improves"
    )
    assert (
        build_dpo_config(load_recipe(recipe_path, ["training.save_strategy=epoch"]), tmp_path).save_strategy == "epoch"
    )


def test_dpoconfig_gets_recipe_values_and_cpu_defaults(recipe_path, tmp_path):
    loaded = load_recipe(recipe_path, ["loss.beta=0.3", "seed=7", "training.max_steps=5", "training.eval_steps=2"])
    config = build_dpo_config(loaded, tmp_path / "run")
    assert config.beta == 0.3 and config.seed == 7 and config.max_steps == 5 and config.eval_steps == 2
    assert config.output_dir == str(tmp_path / "run" / "checkpoints")
    assert config.bf16 is False and config.gradient_checkpointing is False
    assert config.report_to == [] or config.report_to == "none" or config.report_to == ["none"]


@pytest.mark.parametrize("trusted", [True, False])
def test_dpoconfig_carries_model_trust_remote_code(recipe_path, tmp_path, trusted):
    """TRL loads the reference copy under full fine-tuning (and FSDP's temporary one) with DPOConfig's flag, not the
    recipe's: a model that exists only as custom code would fail to load there without it."""
    loaded = load_recipe(recipe_path, [f"model.trust_remote_code={str(trusted).lower()}"])
    assert build_dpo_config(loaded, tmp_path / "run").trust_remote_code is trusted


@pytest.mark.parametrize(
    ("strategy", "max_steps", "eval_steps", "eval_delay", "reason"),
    [
        ("no", 40, 10, 0, "training.eval_strategy is 'no'"),
        ("steps", 40, 10, 0, None),  # evaluations at 10, 20, 30 (and 40)
        ("steps", 40, 40, 0, "training.eval_steps 40 >= training.max_steps 40"),  # only at the last step
        ("steps", 40, 50, 0, "training.eval_steps 50 >= training.max_steps 40"),  # only the closing one at 40
        ("steps", 40, 10, 25, None),  # the first at 30
        ("steps", 40, 10, 30, None),  # eval_delay is inclusive: the first at 30
        ("steps", 40, 10, 31, "training.eval_delay 31 leaves no evaluation before training.max_steps 40"),
        ("steps", 40, 10, 40, "training.eval_delay 40 leaves no evaluation before training.max_steps 40"),
        ("steps", 40, 10, 10, None),  # a delay up to eval_steps moves nothing
        ("steps", 40, 0.1, 0, None),  # a fraction of the run: every 4 steps
        ("steps", 10, 0.99, 0, "training.eval_steps 0.99 (every 10 steps) >= training.max_steps 10"),
        ("steps", 0, 0.1, 0, None),  # no steps: nothing to evaluate (and no division by an interval of 0)
        ("steps", 10, 0.5, 6, "training.eval_delay 6 leaves no evaluation before training.max_steps 10"),
        ("steps", 5, 10, 20, "training.eval_steps 10 >= training.max_steps 5"),  # the delay is not the cause
        ("steps", -1, 10, 0, None),  # epochs: the length needs the data
        ("epoch", 40, 10, 0, None),  # the epoch's length needs the pairs: checked with them (below)
    ],
)
def test_no_evaluation_during_training(strategy, max_steps, eval_steps, eval_delay, reason):
    """transformers evaluates at every multiple of eval_steps from eval_delay on and once more at the last step
    (DefaultFlowCallback.on_step_end): a run whose first such multiple is its last step has nothing to act on."""
    config = SimpleNamespace(eval_strategy=strategy, max_steps=max_steps, eval_steps=eval_steps, eval_delay=eval_delay)
    assert no_evaluation_during_training(config) == reason


def _epoch_config(strategy, max_steps, eval_steps=10, eval_delay=0, epochs=3.0, batch=8, accumulation=1,
                  processes=1, drop_last=False):  # fmt: skip
    return SimpleNamespace(eval_strategy=strategy, max_steps=max_steps, eval_steps=eval_steps, eval_delay=eval_delay,
                           num_train_epochs=epochs, train_batch_size=batch, world_size=processes,
                           gradient_accumulation_steps=accumulation, dataloader_drop_last=drop_last)  # fmt: skip


@pytest.mark.parametrize(
    ("config", "pairs", "reason"),
    [
        # 100 pairs in batches of 8: 13 steps an epoch (the last batch of 4)
        (_epoch_config("epoch", 40), 100, None),  # epoch ends at 13, 26, 39 (and the last step, 40)
        (_epoch_config("epoch", 13), 100,
         "training.eval_strategy 'epoch': an epoch is 13 steps (100 training pairs at 8 a step), not fewer than "
         "training.max_steps 13"),
        (_epoch_config("epoch", 13, drop_last=True), 100, None),  # 12 steps: the short batch dropped
        (_epoch_config("epoch", 5, accumulation=4), 100, None),  # 13 batches, 4 steps (the last of one batch)
        (_epoch_config("epoch", 4, accumulation=4), 100,
         "training.eval_strategy 'epoch': an epoch is 4 steps (100 training pairs at 32 a step), not fewer than "
         "training.max_steps 4"),
        (_epoch_config("epoch", 7, processes=2), 100,  # 7 batches of 8 on each process
         "training.eval_strategy 'epoch': an epoch is 7 steps (100 training pairs at 16 a step on 2 processes), "
         "not fewer than training.max_steps 7"),
        (_epoch_config("epoch", -1, epochs=1), 100,
         "training.eval_strategy 'epoch': an epoch is 13 steps (100 training pairs at 8 a step), not fewer than "
         "the run's 13 steps (training.num_train_epochs 1)"),
        (_epoch_config("epoch", -1, epochs=1.5), 100, None),  # 20 steps, the first epoch ends at 13
        (_epoch_config("epoch", -1, eval_delay=2, epochs=2), 100,
         "training.eval_strategy 'epoch': the first epoch from training.eval_delay 2 ends at step 26 (100 training "
         "pairs at 8 a step), not before the run's 26 steps (training.num_train_epochs 2)"),
        (_epoch_config("epoch", 40, eval_delay=2.5), 100, None),  # the third epoch's end, 39
        (_epoch_config("steps", -1, eval_steps=20, epochs=1), 100,
         "training.eval_steps 20 >= the run's 13 steps (training.num_train_epochs 1 over 100 training pairs at 8 "
         "a step)"),
        (_epoch_config("steps", -1, eval_steps=0.1, epochs=1), 100, None),  # every 2 steps
        (_epoch_config("steps", -1, eval_steps=0.1, epochs=1), 8,
         "training.eval_steps 0.1 (every 1 step) >= the run's 1 step (training.num_train_epochs 1 over 8 training "
         "pairs at 8 a step)"),
        (_epoch_config("steps", 40), 100, None),  # a step run with max_steps set: the data change nothing
    ],
)  # fmt: skip
def test_no_evaluation_during_training_with_the_data(config, pairs, reason):
    """Runs measured in epochs, and the epoch strategy: the evaluation steps depend on the epoch's length."""
    assert no_evaluation_during_training(config) is None  # without the data: passed on to the second check
    assert no_evaluation_during_training(config, pairs) == reason


@pytest.mark.parametrize(
    ("config", "pairs", "last"),
    [
        (_epoch_config("steps", 40, eval_steps=10), None, 30),  # 10, 20, 30 (and 40, the last step)
        (_epoch_config("steps", 41, eval_steps=10), None, 40),
        (_epoch_config("steps", 40, eval_steps=40), None, 0),  # only at the last step
        (_epoch_config("steps", 40, eval_steps=10, eval_delay=31), None, 0),
        (_epoch_config("steps", 4, eval_steps=3, eval_delay=3), None, 3),  # eval_steps 2 or 4: none
        (_epoch_config("steps", 10, eval_steps=0.3), None, 9),  # every 3 steps
        (_epoch_config("steps", 11, eval_steps=0.3), None, 8),  # every 4 steps: earlier in a longer run
        (_epoch_config("steps", -1, eval_steps=10), None, None),  # the run's length needs the pairs
        (_epoch_config("steps", -1, eval_steps=10), 100, 30),  # 3 epochs of 13 steps: 39
        (_epoch_config("epoch", 40), 100, 39),  # epoch ends 13, 26, 39
        (_epoch_config("epoch", 40, eval_delay=3), 100, 39),
        (_epoch_config("epoch", 39, eval_delay=3), 100, 0),  # the third epoch's end is the last step
        (_epoch_config("epoch", 40), None, None),
        (_epoch_config("no", 40), None, 0),
    ],
)  # fmt: skip
def test_last_evaluation_before_the_end(config, pairs, last):
    """What a sweep's median pruner is judged by: it prunes from n_warmup_steps on, never at the last step."""
    assert last_evaluation_before_the_end(config, pairs) == last


@pytest.mark.parametrize("drop_last", [False, True])
def test_batches_per_process_are_accelerates(drop_last):
    """Each of several processes gets the batches accelerate's BatchSamplerShard gives it (even_batches: the short
    ones padded from the start), which steps_per_epoch counts without starting any process."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    for pairs in (1, 7, 16, 17, 33, 100):
        for processes in (1, 2, 3):
            config = _epoch_config("epoch", 40, batch=4, processes=processes, drop_last=drop_last)
            lengths = {len(BatchSamplerShard(BatchSampler(range(pairs), 4, drop_last), processes, rank))
                       for rank in range(processes)}  # fmt: skip
            assert len(lengths) == 1  # every process steps alike
            assert steps_per_epoch(config, pairs) == max(lengths.pop(), 1), (pairs, processes)  # transformers' max


def test_no_evaluation_during_training_agrees_with_transformers():
    """Against transformers' own code: the steps DefaultFlowCallback evaluates at, eval_steps resolved by
    TrainerState.compute_steps; a run is flagged exactly when none of them comes before its last step."""
    from transformers import TrainerControl, TrainerState
    from transformers.trainer_callback import DefaultFlowCallback

    for max_steps in range(1, 25):
        for eval_steps in (1, 2, 3, 5, 8, 12, 30, 0.1, 0.25, 0.5, 0.99):
            for eval_delay in (0, 1, 4, 7.5, 11, 24):
                args = SimpleNamespace(eval_strategy="steps", max_steps=max_steps, eval_steps=eval_steps,
                                       eval_delay=eval_delay, logging_steps=1, save_steps=None,
                                       logging_strategy="no", save_strategy="no", logging_first_step=False)  # fmt: skip
                state = TrainerState(max_steps=max_steps)
                state.compute_steps(args, max_steps)
                evaluated = []
                for step in range(1, max_steps + 1):
                    state.global_step = step
                    if DefaultFlowCallback().on_step_end(args, state, TrainerControl()).should_evaluate:
                        evaluated.append(step)
                flagged = no_evaluation_during_training(args) is not None
                assert flagged == (not any(step < max_steps for step in evaluated)), (max_steps, eval_steps, eval_delay)


def test_evaluation_check_with_the_data_agrees_with_a_real_trainer(tmp_path):
    """Against transformers' own training loop: a Trainer over a one-parameter model records the steps it
    evaluates at, for runs measured in steps and in epochs, each epoch's end or every few steps, with gradient
    accumulation and a last, short batch; the check flags a run exactly when none comes before its last step."""
    import itertools
    import math

    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class OneWeight(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            return {"loss": (self.weight * x).pow(2).mean()}

    class EvaluationSteps(TrainerCallback):
        def __init__(self):
            self.steps = []

        def on_evaluate(self, args, state, control, **kwargs):
            self.steps.append(state.global_step)

    lengths = [(-1, 1), (-1, 1.5), (-1, 2), (5, 3), (9, 3)]  # (max_steps, num_train_epochs)
    schedules = [("epoch", 1, 0), ("epoch", 1, 1.5), ("steps", 3, 0), ("steps", 0.5, 0), ("steps", 2, 4)]
    shapes = [(5, 4, 1, False), (20, 4, 3, False), (37, 8, 1, True)]  # (pairs, batch, accumulation, drop_last)
    # each shape with every schedule, not with every pair of length and schedule; and an epoch cut short by max_steps
    grid = [(*run, shapes[index % len(shapes)]) for index, run in enumerate(itertools.product(lengths, schedules))]
    grid.append(((3, 3), ("epoch", 1, 0), (37, 8, 1, False)))  # an epoch is 5 steps, the run 3
    outcomes = []
    for (max_steps, epochs), (strategy, every, delay), (pairs, batch, accumulation, drop_last) in grid:
        args = TrainingArguments(
            output_dir=str(tmp_path), max_steps=max_steps, num_train_epochs=epochs, eval_strategy=strategy,
            eval_steps=every, eval_delay=delay, per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation, dataloader_drop_last=drop_last, save_strategy="no",
            logging_strategy="no", report_to=[], disable_tqdm=True, use_cpu=True,
        )  # fmt: skip
        seen = EvaluationSteps()
        trainer = Trainer(
            model=OneWeight(), args=args, train_dataset=[{"x": torch.ones(1)}] * pairs,
            eval_dataset=[{"x": torch.ones(1)}], callbacks=[seen],
        )  # fmt: skip
        trainer.train()
        last = trainer.state.global_step
        case = (max_steps, epochs, strategy, every, delay, pairs, batch, accumulation, drop_last, seen.steps)
        if max_steps < 0:
            assert last == math.ceil(epochs * steps_per_epoch(args, pairs)), case
        flagged = no_evaluation_during_training(args, pairs) is not None
        assert flagged == (not any(step < last for step in seen.steps)), case
        outcomes.append(flagged)
    assert 0 < sum(outcomes) < len(outcomes) and outcomes[-1]  # the grid has runs of both kinds


def test_a_bool_training_key_takes_only_true_or_false(recipe_path):
    """YAML 1.2 reads `no` and `off` as text, which DPOConfig would take as true (any non-empty text is):
    `gradient_checkpointing: no` turned checkpointing on. Every bool field of DPOConfig refuses them, naming the key."""
    import dataclasses

    from trl import DPOConfig

    from dpo.training.arguments import training_key_problem

    fields = [f for f in dataclasses.fields(DPOConfig) if f.init and f.type in (bool, bool | None)]
    fields = [f for f in fields if training_key_problem(f.name) is None]
    assert len(fields) > 40 and "gradient_checkpointing" in {f.name for f in fields}
    for text in ("no", "off"):
        with pytest.raises(UserError) as err:
            check_training(load_recipe(recipe_path, [f"training.{f.name}={text}" for f in fields]))
        lines = [str(e) for e in getattr(err.value, "errors", [err.value])]
        assert lines == [
            f"--set: training.{f.name}: expected true or false{' or null' if f.type is not bool else ''}, got the text "
            f"'{text}'"
            for f in fields
        ]
    assert check_training(load_recipe(recipe_path, ["training.gradient_checkpointing=false"])) == {
        "gradient_checkpointing": False
    }


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "training.lr_scheduler_type=cosine_foo",
            "--set: training.lr_scheduler_type: expected one of linear, cosine, cosine_with_restarts, polynomial, "
            "constant, constant_with_warmup, inverse_sqrt, reduce_lr_on_plateau, cosine_with_min_lr, "
            "cosine_warmup_with_min_lr, warmup_stable_decay or greedy, got the text 'cosine_foo'",
        ),
        (
            "training.save_strategy=No",
            "--set: training.save_strategy: expected one of no, steps, epoch or best, got the text 'No'",
        ),  # fmt: skip
        ("training.eval_strategy=3", "--set: training.eval_strategy: expected one of no, steps or epoch, got 3"),
        (
            "training.logging_strategy=always",
            "--set: training.logging_strategy: expected one of no, steps or epoch, got the text 'always'",
        ),  # fmt: skip
        (
            "training.hub_strategy=sometimes",
            "--set: training.hub_strategy: expected one of end, every_save, "
            "checkpoint or all_checkpoints, got the text 'sometimes'",
        ),  # fmt: skip
    ],
)
def test_a_string_enum_training_key_takes_only_its_members(recipe_path, override, message):
    """transformers types these choices `SomeEnum | str` and reads the text as the enum: any other text was passed
    on to DPOConfig, whose error blamed the recipe file, not the key or --set."""
    with pytest.raises(UserError) as err:
        check_training(load_recipe(recipe_path, [override]))
    assert str(err.value) == message


def test_an_optimizer_name_is_checked_against_transformers_list(recipe_path):
    from transformers.training_args import OptimizerNames

    with pytest.raises(UserError) as err:
        check_training(load_recipe(recipe_path, ["training.optim=adamw_foo"]))
    names = [m.value for m in OptimizerNames]
    assert str(err.value) == (
        f"--set: training.optim: expected one of {', '.join(names[:-1])} or {names[-1]}, got the text 'adamw_foo'"
    )
    accepted = ["training.optim=sgd", "training.save_strategy=no", "training.eval_strategy=epoch",
                "training.lr_scheduler_type=cosine", "training.debug=underflow_overflow"]  # fmt: skip
    assert check_training(load_recipe(recipe_path, accepted))["save_strategy"] == "no"


def test_a_bool_written_as_text_is_one_error_not_two(recipe_path):
    """`disable_dropout: no` is the type error alone: the dropout check no longer reads the text as true and blames
    peft.dropout too."""
    from dpo.config.checks import check_no_op_keys

    loaded = load_recipe(recipe_path, ["peft.dropout=0.1", "training.disable_dropout=no"])
    check_no_op_keys(loaded)
    with pytest.raises(UserError, match=r"^--set: training.disable_dropout: expected true or false, got the text"):
        check_training(loaded)


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("training.warmup_steps=-1",
         "{base}: training.warmup_steps: DPOConfig rejected it: Got warmup_steps = -1, Expected value "
         "warmup_steps >= 0"),
        ("training.dataloader_prefetch_factor=2",
         "{base}: training.dataloader_prefetch_factor: DPOConfig rejected it: --dataloader_prefetch_factor can only be "
         "set when data is loaded in a different process, i.e. when --dataloader_num_workers > 0."),
        # named by its value; a missing file was a FileNotFoundError traceback
        ("training.accelerator_config=nope.json",
         "{base}: training.accelerator_config: DPOConfig rejected it: [Errno 2] No such file or directory: "
         "'nope.json'"),
    ],
)  # fmt: skip
def test_a_dpoconfig_rejection_names_the_key_and_the_file_that_set_it(tmp_path, where, message):
    """DPOConfig's own errors named the child recipe and `training` whoever set the key: the base file, or --set."""
    key, value = parse_override(where)
    base = write_recipe(tmp_path / "base.yaml", {"data": {"train": "unused.jsonl"}, "training": {key[9:]: value}})
    child = write_recipe(tmp_path / "child.yaml", {"base": "base.yaml", "seed": 1})
    with pytest.raises(UserError) as err:
        build_dpo_config(load_recipe(child), tmp_path / "run")
    assert str(err.value) == message.format(base=base)
    with pytest.raises(UserError) as err:
        build_dpo_config(load_recipe(child, [where]), tmp_path / "run")
    assert str(err.value) == message.format(base="--set")


def test_a_dpoconfig_rejection_that_names_no_key_is_blamed_on_the_training_section(tmp_path, monkeypatch):
    import trl

    base = write_recipe(tmp_path / "base.yaml", {"data": {"train": "unused.jsonl"}, "training": {"max_steps": 3}})
    child = write_recipe(tmp_path / "child.yaml", {"base": "base.yaml", "seed": 1})

    class Rejecting(trl.DPOConfig):
        def __init__(self, **kwargs):
            raise ValueError("something is off\nsecond line")

    monkeypatch.setattr(trl, "DPOConfig", Rejecting)
    with pytest.raises(UserError) as err:
        build_dpo_config(load_recipe(child), tmp_path / "run")
    assert str(err.value) == f"{base}: training: DPOConfig rejected the settings: something is off"
    with pytest.raises(UserError) as err:
        build_dpo_config(load_recipe(child, ["training.learning_rate=0.1"]), tmp_path / "run")
    assert str(err.value) == "--set: training: DPOConfig rejected the settings: something is off"
