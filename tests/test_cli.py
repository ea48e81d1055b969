"""The `dpo` command's error contract: exit 2, one `error:` line naming the file and key, nothing written.

Commands run in this process through typer's CliRunner (a `python -m dpo` subprocess spends about 8 s importing
torch); two slow tests start the real entry point (`run_dpo`)."""

from __future__ import annotations

import pytest

from tests.conftest import ARITHMETIC, REPO, invoke_dpo, run_dpo, write_recipe


@pytest.fixture(autouse=True)
def no_training(monkeypatch, tmp_path):
    """A missed check would go on to train the embedded model (minutes, in this process): claiming the run directory
    fails the test instead. Relative paths resolve in a scratch folder, so a stray write cannot land in the repo."""

    def claimed(*args, **kwargs):
        raise AssertionError("the checks passed and training was about to start")

    monkeypatch.setattr("dpo.training.execute._claim_run_dir", claimed)
    monkeypatch.chdir(tmp_path)


@pytest.mark.slow
def test_a_late_train_error_is_one_line_from_the_real_entry_point(tmp_path):
    """In a new process, where library warnings and log lines reach stderr as a user sees them (in this process
    pytest records warnings, and transformers' log handler may be bound to another stream)."""
    recipe = write_recipe(tmp_path / "r.yaml", {"data": {"train": str(ARITHMETIC / "train.jsonl")}})
    proc = run_dpo("train", recipe, "--set", "training.warmup_steps=-1", "--output-dir", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert proc.stderr == (
        "error: --set: training.warmup_steps: DPOConfig rejected it: Got warmup_steps = -1, Expected value "
        "warmup_steps >= 0\n"
    )
    assert not (tmp_path / "out").exists()


@pytest.fixture
def good(tmp_path):
    return write_recipe(tmp_path / "good.yaml", {"data": {"train": str(ARITHMETIC / "train.jsonl")}})


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [
        ({"data": {"train": "x.jsonl"}, "los": {"beta": 0.1}}, "unknown key 'los'; did you mean 'loss'?"),
        ({"data": {"train": "x.jsonl"}, "loss": {"beta": "high"}}, "loss.beta: expected a number, got the text 'high'"),
        ({"data": {"train": "missing.jsonl"}}, "data.train: file"),
    ],
)
@pytest.mark.parametrize("command", ["train", "validate"])
def test_recipe_errors_exit_2_with_one_line(tmp_path, recipe, expected, command):
    path = write_recipe(tmp_path / "bad.yaml", recipe)
    out_dir = tmp_path / "out"
    args = [command, path] + (["--output-dir", out_dir] if command == "train" else [])
    proc = invoke_dpo(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert expected in lines[0]
    assert str(path) in lines[0] or "data.train" in lines[0]
    assert not out_dir.exists()


@pytest.mark.slow
def test_missing_recipe_file(tmp_path):  # through `python -m dpo`: the entry point, main(), and its exit code
    proc = run_dpo("validate", tmp_path / "none.yaml")
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {tmp_path / 'none.yaml'}: recipe file not found"


def test_allow_data_change_without_resume_is_an_error_not_ignored(good, tmp_path):
    proc = invoke_dpo("train", good, "--allow-data-change", "--output-dir", tmp_path / "run")
    assert proc.returncode == 2
    expected = "error: --allow-data-change: applies only with --resume (a run that starts reads its data as it is)"
    assert proc.stderr.splitlines() == [expected]
    assert not (tmp_path / "run").exists()


def test_validate_ok(good):
    proc = invoke_dpo("validate", good, "--set", "loss.beta=0.2")
    assert proc.returncode == 0, proc.stderr
    assert "loss sigmoid (beta=0.2)" in proc.stdout and "held-out pairs" in proc.stdout


def test_validate_warns_that_train_would_refuse_a_run_directory_in_use(good, tmp_path):
    run_dir = tmp_path / "run"
    proc = invoke_dpo("validate", good, "--output-dir", run_dir)
    assert proc.returncode == 0 and proc.stderr == ""  # an empty or missing directory: nothing to warn of
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("")
    proc = invoke_dpo("validate", good, "--output-dir", run_dir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        f"warning: {run_dir}: holds files already: dpo train refuses it unless --resume continues the run there; "
        "choose another --output-dir for a new run"
    ]
    assert proc.stdout.startswith("ok: ")


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("some-org/not-a-local-model", "the model hub is not reachable"),
        ("./no/such/dir", "model directory './no/such/dir' does not exist"),
    ],
)
def test_unreachable_model_is_a_user_error_before_anything_is_written(good, tmp_path, name, fragment):
    out_dir = tmp_path / "out"
    proc = invoke_dpo("train", good, "--set", f"model.name_or_path={name}", "--output-dir", out_dir)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert line.startswith("error: --set: model.name_or_path: ") and fragment in line and "\n" not in line
    assert not out_dir.exists()


def test_plan_json_and_errors(tmp_path):
    import json

    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            {
                "model_type": "llama", "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "tie_word_embeddings": False,
            }
        )
    )  # fmt: skip
    proc = invoke_dpo("plan", config, "--json", "--full", "--batch-size", "2", "--seq-len", "32")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    # embeddings 64000 + head 64000 + 2 layers x (attention 64*64*2 + 64*32*2 = 12288, mlp 3*64*128 = 24576,
    # norms 2*64) + final norm 64 = 128000 + 2 * 36992 + 64 = 202048
    assert plan["parameters"]["total"] == 202048 and plan["parameters"]["trainable"] == 202048
    assert plan["memory"]["total"] > 0
    proc = invoke_dpo("plan", tmp_path / "missing.json")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "missing.json" in proc.stderr


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["training.warmup_steps=-1"], "--set: training.warmup_steps: DPOConfig rejected it: Got warmup_steps = -1"),
        (["early_stopping.metric=eval_reward/margins"], "did you mean 'eval_rewards/margins'?"),
        (["early_stopping.patience=2", "training.eval_strategy=no"], "early_stopping.patience: needs evaluations"),
        (["data.heldout_fraction=0.3"], "data.heldout_fraction: has no effect: data.eval is set"),
        (["early_stopping.warmup_steps=5"], "early_stopping.warmup_steps: has no effect"),
        (["logging.wandb_project=x"], "logging.wandb_project: has no effect: logging.wandb is false"),
        (["training.max_steps=3", "training.num_train_epochs=2"], "training.num_train_epochs: has no effect"),
        (["training.label_smoothing_factor=0.1"], "use loss.label_smoothing"),
        (["base=other.yaml"], "base cannot be overridden"),
        (["data.augment=[{type: label_noise, fraction: '0.2'}]"], "fraction: expected a number, got the text '0.2'"),
        (["training.eval_steps=-0.5"], "training.eval_steps: must be above 0"),  # found by tests/test_fuzz.py
        (  # the arithmetic set's 1200 training pairs, in batches of 2000 that drop_last keeps only when full
            ["training.dataloader_drop_last=true", "training.per_device_train_batch_size=2000"],
            "training.dataloader_drop_last: drops every training pair: 1200 training pairs make no full batch of 2000",
        ),
    ],
)
def test_late_errors_are_caught_before_the_run_directory(tmp_path, overrides, fragment):
    recipe = write_recipe(
        tmp_path / "r.yaml",
        {"data": {"train": str(ARITHMETIC / "train.jsonl"), "eval": str(ARITHMETIC / "eval.jsonl")}},
    )
    out_dir = tmp_path / "out"
    args = [a for o in overrides for a in ("--set", o)]
    proc = invoke_dpo("train", recipe, *args, "--output-dir", out_dir)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and line.startswith("error: ") and fragment in line
    assert not out_dir.exists()


def test_missing_data_file_names_the_recipe_and_key(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", {"data": {"train": "nowhere.jsonl"}})
    proc = invoke_dpo("validate", recipe)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {recipe}: data.train: file '{tmp_path / 'nowhere.jsonl'}' not found"


def test_a_recipe_that_passes_every_check_reaches_training(good, tmp_path):
    """The tests above see exit 2 because a check caught the input, not because training could not start here."""
    with pytest.raises(AssertionError, match="training was about to start"):
        invoke_dpo("train", good, "--output-dir", tmp_path / "out")


def test_held_out_prompts_that_are_training_prompts_are_warned_of(tmp_path, tiny_model_dir):
    """Held-out data that is mostly training data (a copy of the training file plus a row) passes the "every
    held-out row is a training row" check, but its metrics measure memorisation: `dpo validate` and `dpo train`
    (the gate's warnings) say how many held-out prompts are training prompts, unless allow_eval_in_train says so."""
    import json

    from dpo.training.gate import check

    rows = [{"prompt": f"What is {i}+1?", "chosen": str(i + 1), "rejected": str(i + 2)} for i in range(12)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    leaky = [*rows, {"prompt": "What  is 3+1? ", "chosen": "four", "rejected": "five"}, {**rows[0], "prompt": "New?"}]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in leaky))
    data = {"train": str(tmp_path / "train.jsonl"), "eval": str(tmp_path / "eval.jsonl")}
    recipe = write_recipe(tmp_path / "r.yaml", {"model": {"name_or_path": str(tiny_model_dir)}, "data": data})
    expected = (
        f"{recipe}: data.eval: 12 of the 13 held-out prompts are also training prompts (whitespace aside): "
        "held-out metrics on them measure memorisation, not generalisation; hold out other prompts (or drop "
        "data.eval to split off data.heldout_fraction of the prompts), or set data.allow_eval_in_train: true "
        "if that is meant"
    )
    assert check(recipe, output_dir=tmp_path / "run").warnings == [expected]  # what `dpo train` prints
    proc = invoke_dpo("validate", recipe, "--output-dir", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [f"warning: {expected}"] and proc.stdout.startswith("ok: ")
    proc = invoke_dpo("validate", recipe, "--output-dir", tmp_path / "run", "--set", "data.allow_eval_in_train=true")
    assert proc.returncode == 0 and proc.stderr == ""


def test_odpo_after_off_prompt_negatives_names_the_augmentation_step(tmp_path):
    """ODPO reads every pair's score gap; the pairs off_prompt_negatives adds have none (they are new pairs): the
    step is named, not loss.type and the data's sources."""
    from tests.conftest import REPO

    step = "data.augment=[{type: off_prompt_negatives, fraction: 0.5}]"
    proc = invoke_dpo("validate", REPO / "recipes" / "odpo.yaml", "--output-dir", tmp_path / "run", "--set", step)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: --set: data.augment: step 0 (off_prompt_negatives): adds 160 training pairs without a score gap (new "
        "pairs have no score), and odpo needs the score gap of every pair; drop the step, or use a loss that reads "
        "none"
    ]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # counted in epochs, the steps per epoch divide by the batch and the accumulation: a ZeroDivisionError before
        (["training.per_device_train_batch_size=0", "training.max_steps=-1", "training.num_train_epochs=1"],
         "training.per_device_train_batch_size: must be 1 or more (training pairs in a batch on each device), got 0"),
        (["training.gradient_accumulation_steps=0", "training.max_steps=-1", "training.num_train_epochs=1"],
         "training.gradient_accumulation_steps: must be 1 or more (batches per optimizer step), got 0"),
        # with max_steps, validate said ok and torch's DataLoader refused the batch once the run directory existed
        (["training.per_device_eval_batch_size=0"],
         "training.per_device_eval_batch_size: must be 1 or more (held-out pairs in a batch on each device), got 0"),
        # was reported as every data row being longer than -5 tokens
        (["training.max_length=-5"],
         "training.max_length: must be 1 or more (tokens of prompt and answer in a row; null: no limit), got -5"),
        (["training.save_strategy=steps", "training.save_steps=0"],
         "training.save_steps: must be above 0 (a number of steps, or below 1 a fraction of the run), got 0"),
        # validate said ok; torch's DataLoader refused it (ValueError) once the run directory existed
        (["training.dataloader_num_workers=-1"],
         "training.dataloader_num_workers: must be 0 or more (processes loading batches; 0: the training process "
         "loads them), got -1"),
        # validate said ok; torch's AdamW refused them when the trainer built it
        (["training.learning_rate=-0.001"],
         "training.learning_rate: must be 0 or more (the optimizer's step size), got -0.001"),
        (["training.adam_beta2=1"],
         "training.adam_beta2: must be from 0 to below 1 (Adam's decay of its squared-gradient average), got 1"),
        # a run of no steps, which validate passed
        (["training.max_steps=-1", "training.num_train_epochs=0"],
         "training.num_train_epochs: must be above 0 (passes over the training pairs when max_steps is not set), "
         "got 0"),
    ],
)  # fmt: skip
def test_a_batch_or_length_of_zero_is_an_error_naming_the_key(good, overrides, message):
    proc = invoke_dpo("validate", good, *[a for o in overrides for a in ("--set", o)])
    assert proc.returncode == 2 and proc.stderr == f"error: --set: {message}\n"


@pytest.mark.parametrize(
    "overrides",
    [
        # each bound's own end is in the range: torch takes a rate, decay or epsilon of 0 and Adam's betas of 0
        ["training.learning_rate=0", "training.adam_beta1=0", "training.adam_beta2=0", "training.adam_epsilon=0",
         "training.weight_decay=0", "training.eval_delay=0", "training.dataloader_num_workers=0"],
        # a fraction of a pass over the pairs is a run of some steps
        ["training.max_steps=-1", "training.num_train_epochs=0.5"],
    ],
)  # fmt: skip
def test_training_values_at_the_ends_of_their_ranges_pass(good, overrides):
    """Only what is out of range is refused (BOUNDED, dpo/training/arguments.py): its ends stay accepted."""
    proc = invoke_dpo("validate", good, *[a for o in overrides for a in ("--set", o)])
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr


def test_out_of_range_training_values_are_reported_together(good):
    """Every training value out of its range, one line each; num_train_epochs beside max_steps is the no-op error
    alone (not a second one about its range)."""
    overrides = ["training.dataloader_num_workers=-1", "training.weight_decay=-0.1", "training.adam_epsilon=-1",
                 "training.adam_beta1=1.5", "training.eval_delay=-2", "training.max_steps=5",
                 "training.num_train_epochs=-1"]  # fmt: skip
    proc = invoke_dpo("validate", good, *[a for o in overrides for a in ("--set", o)])
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "error: --set: training.dataloader_num_workers: must be 0 or more (processes loading batches; 0: the "
        "training process loads them), got -1",
        "error: --set: training.weight_decay: must be 0 or more (the optimizer's decay of the weights), got -0.1",
        "error: --set: training.adam_epsilon: must be 0 or more (Adam's denominator term), got -1",
        "error: --set: training.adam_beta1: must be from 0 to below 1 (Adam's decay of its gradient average), got 1.5",
        "error: --set: training.eval_delay: must be 0 or more (steps, or under eval_strategy 'epoch' epochs, before "
        "the first evaluation), got -2",
        "error: --set: training.num_train_epochs: has no effect: training.max_steps is set and wins",
    ]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # the held-out KL is off by default without a reference at evaluation: its subsample size did nothing
        (["peft=null", "training.precompute_ref_log_probs=true", "logging.heldout_kl_pairs=32"],
         "logging.heldout_kl_pairs: has no effect: the held-out KL is off, with no reference model at evaluation "
         "(full fine-tuning, peft: null, with training.precompute_ref_log_probs: true)"),
        # transformers reads neither without evaluations (and the checkpoints then follow save_steps 0.1)
        (["training.eval_strategy=no", "training.eval_steps=5"],
         "training.eval_steps: has no effect: training.eval_strategy is 'no'"),
        (["training.eval_strategy=no", "training.eval_delay=3"],
         "training.eval_delay: has no effect: training.eval_strategy is 'no'"),
        # transformers evaluates at each epoch's end and reads eval_steps only under 'steps' (eval_delay counts epochs)
        (["training.eval_strategy=epoch", "training.eval_delay=1", "training.eval_steps=5"],
         "training.eval_steps: has no effect: training.eval_strategy is 'epoch': evaluations come at each epoch's "
         "end"),
    ],
)  # fmt: skip
def test_a_setting_that_the_rest_of_the_recipe_turns_off_is_an_error(good, overrides, message):
    proc = invoke_dpo("validate", good, *[a for o in overrides for a in ("--set", o)])
    assert proc.returncode == 2 and proc.stderr == f"error: --set: {message}\n"
    assert invoke_dpo("validate", good, *[a for o in overrides[:-1] for a in ("--set", o)]).returncode == 0


def test_turning_off_evaluations_overrides_a_base_recipes_cadence(tmp_path):
    """quickstart.yaml sets eval_steps 10; a child or --set that turns evaluations off overrides that cadence, as the
    speed benchmarks do to plain.yaml: not a knob set to do nothing (eval_steps written beside it is, above)."""
    from tests.conftest import REPO

    plain = REPO / "recipes" / "plain.yaml"
    for strategy in ("no", "epoch"):
        proc = invoke_dpo("validate", plain, "--set", f"training.eval_strategy={strategy}", "--output-dir",
                          tmp_path / "run")  # fmt: skip
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('training:\n  lr_scheduler_kwargs: {"\\ud800": 1}\n',
         "training.lr_scheduler_kwargs: key '\\ud800' must be text without lone surrogate escapes (\\ud800 to "
         "\\udfff)"),
        ('"\\udfff": 1\n', "key '\\udfff' must be text without lone surrogate escapes (\\ud800 to \\udfff)"),
    ],
)  # fmt: skip
def test_a_lone_surrogate_in_a_key_is_an_error_naming_the_file(tmp_path, text, message):
    """validate said ok, and dpo train failed writing the run's recipe.yaml (UnicodeEncodeError)."""
    path = tmp_path / "surk.yaml"
    path.write_text(f"data:\n  train: {ARITHMETIC / 'train.jsonl'}\n{text}")
    proc = invoke_dpo("validate", path)
    assert proc.returncode == 2 and proc.stderr == f"error: {path}: {message}\n"


def _sweep_summary(tmp_path, *trials) -> dict:
    """A finished sweep's summary as dpo/sweep/driver.py writes it: (state, reason, value) per trial."""
    rows = [{"number": i, "state": state, "params": {"loss.beta": 0.1 * (i + 1)}, "value": value, "reason": reason,
             "steps": 2, "run_dir": f"trials/trial-{i:04d}", "max_steps": 4}
            for i, (state, reason, value) in enumerate(trials)]  # fmt: skip
    complete = [r for r in rows if r["state"] == "complete"]
    best = complete[0] if complete else None
    return {"name": "s", "objective": {"metric": "eval_loss", "direction": "minimize"}, "sampler": "grid",
            "pruner": "median", "trials": rows, "best_trial": best and best["number"],
            "best_value": best and best["value"], "best_params": best["params"] if best else {}, "importance": {},
            "steps_total": 2 * len(rows), "steps_saved_by_pruning": 0, "base_recipe": "b.yaml",
            "sweep_dir": str(tmp_path / "sweeps" / "s")}  # fmt: skip


@pytest.mark.parametrize(
    ("trials", "exit_code", "line"),
    [
        ([("failed", "objective eval_loss is missing in summary.json", None), ("pruned", "pruned at step 2", None),
          ("failed", "objective eval_loss is missing in summary.json", None), ("failed", "exit code 1: boom", None)],
         3, "no trial completed (3 failed, 1 pruned), so there is no best.yaml; the most common failure (2 of 3): "
            "objective eval_loss is missing in summary.json"),
        ([("pruned", "pruned at step 2", None), ("pruned", "pruned at step 1", None)],
         3, "no trial completed (2 pruned), so there is no best.yaml; every trial was pruned by the median pruner"),
        ([("failed", "boom", None), ("complete", None, 0.69)], 0, None),
        ([("failed", "boom", None), ("running", None, None)], 0, None),  # another machine's trial may yet complete
    ],
)  # fmt: skip
def test_a_sweep_with_no_completed_trial_exits_3_with_one_line(tmp_path, monkeypatch, trials, exit_code, line):
    """It exited 0 with "no trial completed" in yellow and no best.yaml, so `dpo sweep S && dpo train .../best.yaml`
    failed later on a missing file that did not say why."""
    from dpo import api

    summary = _sweep_summary(tmp_path, *trials)
    monkeypatch.setattr(api, "sweep", lambda spec, **kwargs: summary)
    proc = invoke_dpo("sweep", tmp_path / "s.yaml")
    assert proc.returncode == exit_code
    assert "sweep s: eval_loss (minimize)" in proc.stdout  # the trials table first, as for any sweep
    assert proc.stderr == (f"error: {summary['sweep_dir']}: {line}\n" if line else "")


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["data", "audit", "r.yaml"], "error: r.yaml: data.train: file "),
        (["report", "run"], "error: run: neither a run directory"),
        (["eval", "run"], "error: run: not a run directory: no recipe.yaml"),
        (["eval", "run", "--data", "r.yaml"], "error: run: not a run directory: no recipe.yaml"),
        (["convert-trl", "trl.yaml"], "error: trl.yaml: required key 'data' is missing"),
        # outputs, which are written, not read: an existing one this user cannot read was refused as unreadable
        (
            ["compare", "run", "run", "--output", "o.html"],
            "error: run: not a run directory (no metrics.jsonl / summary.json)\n",
        ),  # the whole line
        (["export", "run", "--output", "out"], "error: run: not a run directory: no recipe.yaml"),
        (
            ["convert-trl", "trl.yaml", "--output", "o.yaml"],
            "error: o.yaml: already exists; choose another --output or remove it",
        ),
        (["validate", "r.yaml", "--output-dir", "out"], "error: r.yaml: data.train: file "),
        (["data", "audit", "r.yaml", "--output", "out"], "error: r.yaml: data.train: file "),
        # an input the run's generate reads itself, naming the run first
        (["generate", "run", "--file", "p.jsonl"], "error: run: not a run directory: no recipe.yaml"),
    ],
)
def test_path_arguments_are_checked_by_our_readers_not_by_click(tmp_path, monkeypatch, args, line):
    """click's own readability check printed a boxed usage error (several lines, no `error:` start) where every other
    command prints the one-line contract; as root the real check never fails, so os.access is made to say no."""
    import os

    (tmp_path / "r.yaml").write_text("data:\n  train: missing.jsonl\n")
    (tmp_path / "trl.yaml").write_text("model_name_or_path: m\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "out").mkdir()
    for name in ("o.html", "o.yaml", "p.jsonl"):
        (tmp_path / name).write_text("")
    real_access = os.access
    denied = {"r.yaml", "run", "trl.yaml", "out", "o.html", "o.yaml", "p.jsonl"}

    def access(path, mode, *rest, **kwargs):
        if mode & os.R_OK and os.path.basename(path) in denied:
            return False
        return real_access(path, mode, *rest, **kwargs)

    monkeypatch.setattr(os, "access", access)
    proc = invoke_dpo(*args)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith(line), proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--bogus", "r.yaml"], "dpo train: No such option: --bogus"),
        (["train"], "dpo train: Missing argument 'recipe'"),
        (["nosuch"], "dpo: No such command 'nosuch'"),
        (["--bogus"], "dpo: No such option: --bogus"),
        (["plan", "--batch-size", "abc", "r.yaml"], "dpo plan: Invalid value for '--batch-size'"),
        (["data", "inspect"], "dpo data inspect: Missing argument 'target'"),  # a subgroup's command
        (["data", "nosuch"], "dpo data: No such command 'nosuch'"),
    ],
)  # fmt: skip
def test_a_bad_command_line_is_one_error_line_naming_the_command(args, message):
    """typer printed usage lines and a boxed panel; every other bad input is one `error:` line with exit 2. CliRunner
    names the program `root` where the console script says `dpo`."""
    proc = invoke_dpo(*args)
    line = proc.stderr.replace("root", "dpo")
    command = message.split(":")[0]
    assert proc.returncode == 2 and line.count("\n") == 1, proc.stderr
    assert line.startswith(f"error: {message}") and line.endswith(f" (see {command} --help)\n"), proc.stderr


def test_the_cli_imports_with_a_typer_that_has_no_private_click_copy():
    """dpo/cli.py takes click's UsageError from typer's private `typer._click`; a typer without it (one that parses
    with click itself) must not break `import dpo.cli`, and with it every command: click's own classes are taken."""
    import subprocess
    import sys

    code = (
        "import sys, typer, click.exceptions as ce\n"
        "sys.modules['typer._click'] = sys.modules['typer._click.exceptions'] = None\n"
        "import dpo.cli as cli\n"
        "print(cli.UsageError is ce.UsageError, cli.NoArgsIsHelpError is ce.NoArgsIsHelpError)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert (proc.returncode, proc.stdout) == (0, "True True\n"), proc.stderr[-2000:]


def test_no_command_still_prints_the_help():
    """no_args_is_help is a usage error inside click; it stays the help, not an error line."""
    for args in ([], ["data"]):
        proc = invoke_dpo(*args)
        assert "Usage: " in proc.stdout and "error:" not in proc.stderr, (args, proc.stdout, proc.stderr)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # an empty part was named as the unknown key 'loss.' (or '')
        ("loss..beta=0.2", "override key 'loss..beta' has an empty part between dots; write it as key.path=value"),
        (".loss=1", "override key '.loss' has an empty part between dots; write it as key.path=value"),
        ("loss.beta.=1", "override key 'loss.beta.' has an empty part between dots; write it as key.path=value"),
        # a typo'd section or key: the close match suggested; a key under a value: named with what is there
        ("los.beta=0.2", "unknown key 'los'; did you mean 'loss'? (valid: name, seed, model, peft, data, loss, "
         "regularizers, early_stopping, autopilot, training, logging, base)"),
        ("data.train.path.x=1", "data.train is not a section, cannot set data.train.path.x"),
    ],
)  # fmt: skip
def test_a_bad_dotted_override_key_is_one_line_naming_it(good, override, message):
    proc = invoke_dpo("validate", good, "--set", override)
    assert proc.returncode == 2 and proc.stderr == f"error: --set: {message}\n"
