"""The benchmark scripts run end to end (tiny model, smallest settings) and write their result files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_overfitting_benchmark_smoke(tmp_path):
    proc = subprocess.run(
        [sys.executable, "eval/bench_overfitting.py", "--smoke", "--noise", "0.3", "--controls", "plain", "cdpo",
         "--results", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "overfitting_smoke.json").read_text())["rows"]
    controls = ["plain", "cdpo", "early_stop_margins", "early_stop_loss", "early_stop_accuracies"]
    assert [r["control"] for r in rows] == controls
    assert all(r["noise"] == 0.3 and 0 <= r["eval_rewards/accuracies"] <= 1 for r in rows)
    assert "| 30% | cdpo |" in (tmp_path / "overfitting_smoke.md").read_text()


@pytest.mark.slow
def test_overhead_benchmark_smoke(tmp_path):
    proc = subprocess.run(
        [sys.executable, "eval/bench_overhead.py", "--cases", "tiny", "--repeats", "1", "--results", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "overhead.json").read_text())["summary"]["tiny"]
    assert summary["step_time_ratio"] > 0 and summary["peak_memory_ratio"] > 0
    assert "| tiny |" in (tmp_path / "overhead.md").read_text()


@pytest.mark.slow
def test_speed_benchmark_quick(tmp_path):
    proc = subprocess.run(
        [sys.executable, "eval/bench_speed.py", "--quick", "--datasets", "arithmetic", "--settings", "fp32",
         "--results", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    [row] = json.loads((tmp_path / "speed_quick.json").read_text())["rows"]
    assert row["dataset"] == "arithmetic" and row["setting"] == "fp32" and row["prompt_shared"]
    assert row["max_loss_difference"] < 1e-4  # plain TRL and ours train the same model
    assert row["speedup"] > 0 and row["eval_over_policy_forward"] > 0 and row["layouts"]["shared"] > 0
    assert "| arithmetic | fp32 |" in (tmp_path / "speed_quick.md").read_text()
    runs = json.loads((tmp_path / "speed_quick.json").read_text())["runs"]
    assert all(r["torch_threads"] >= 1 and "commit" in r for r in runs)  # what a resumed benchmark may mix


@pytest.mark.slow
def test_sweep_pruning_benchmark_smoke(tmp_path):
    proc = subprocess.run(
        [sys.executable, "eval/bench_sweep_pruning.py", "--smoke", "--results", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "sweep_pruning_smoke.json").read_text())
    full, pruned = result["full"], result["pruned"]
    assert [t["params"] for t in full["trials"]] == [t["params"] for t in pruned["trials"]]  # the same trials
    assert full["steps_total"] == 8 and all(t["state"] == "complete" for t in full["trials"])
    assert pruned["steps_total"] == sum(t["steps"] for t in pruned["trials"]) <= full["steps_total"]
    assert result["steps_ratio"] == round(pruned["steps_total"] / full["steps_total"], 3)
    assert "| median pruning + early stopping |" in (tmp_path / "sweep_pruning_smoke.md").read_text()


@pytest.mark.slow
def test_noise_benchmark_quick_is_resumable_and_skips_what_this_version_lacks(tmp_path):
    """--quick on one data set, one noise level, two seeds: every method's runs are recorded, the tables and goals
    are written, `label_smoothing: auto` runs the label audit first, and a second invocation trains nothing again."""
    command = [sys.executable, "eval/bench_noise.py", "--quick", "--datasets", "arithmetic", "--noise", "0.3",
               "--seeds", "0", "1", "--methods", "plain", "cdpo", "simpo", "label_smoothing_auto", "autopilot", "odpo",
               "--results", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads(line) for line in (tmp_path / "noise_quick.runs.jsonl").read_text().splitlines()]
    assert sorted((r["method"], r["seed"]) for r in runs) == [
        ("autopilot", 0),
        ("autopilot", 1),
        ("cdpo", 0),
        ("cdpo", 1),
        ("label_smoothing_auto", 0),
        ("label_smoothing_auto", 1),
        ("plain", 0),
        ("plain", 1),
        ("simpo", 0),  # reference-free: scored by its own (length-normalised) reward, no reference forward
        ("simpo", 1),
    ]
    assert all(r["test"]["pairs"] == 8 and len(r["test"]["reward"]) == 8 and r["steps"] == 2 for r in runs)
    # the step scored: the last where nothing keeps a best checkpoint, else the restored one's
    assert all(r["scored_step"] == r["steps"] for r in runs if r["method"] in ("plain", "cdpo"))
    assert all(r["scored_step"] in (0, 1, 2) for r in runs if r["method"] == "autopilot")
    assert not any("reward_eos" in r["test"] for r in runs)  # chat answers end with the end of turn either way
    assert all(r["torch_threads"] >= 1 and "commit" in r for r in runs)  # what a resumed benchmark may mix
    assert len({r["config"] for r in runs}) == 10  # a fingerprint of each run's configuration (checked on resume)
    # a reference-free run says its validation accuracy is of the per-token reward its loss trains
    assert {r["method"] for r in runs if r.get("validation_reward") == "per_token"} == {"simpo"}
    audited = [r for r in runs if "audit_flip_rate" in r]  # the estimate `label_smoothing: auto` trained with
    assert {r["method"] for r in audited} == {"label_smoothing_auto"} and len(audited) == 2
    assert all(0 <= r["audit_flip_rate"] < 0.5 for r in audited)
    result = json.loads((tmp_path / "noise_quick.json").read_text())
    cell = result["cells"]["arithmetic/0.3"]["methods"]
    assert set(cell) == {"plain", "cdpo", "simpo", "label_smoothing_auto", "autopilot", "best_single"}
    # simpo is no candidate: a reference-free loss's validation accuracy starts at the base model's preference
    assert 0 <= cell["simpo"]["validation_accuracy"] <= 1
    assert cell["best_single"]["chosen"] == "cdpo" and cell["best_single"]["chosen_on_seeds"] == [0, 1]
    assert len(cell["autopilot"]["vs_best_single"]) == 3
    # ODPO's loss reads each pair's score gap: the arithmetic pairs have none, so it is skipped there, with why
    assert result["skipped"] == {"odpo on arithmetic": "its loss needs a score gap per pair, and this data set has "
                                 "no scores"}  # fmt: skip
    assert "skipping odpo on arithmetic" in proc.stdout
    mean, low, high = cell["cdpo"]["test_accuracy"]
    assert 0 <= low <= mean <= high <= 1 and cell["plain"]["vs_plain"] == [0.0, 0.0, 0.0]
    assert {g["goal"] for g in result["goals"]} >= {"autopilot >= plain + 0.10 in test accuracy"}
    assert (tmp_path / "noise_quick.html").read_text().count("<svg") == 3  # accuracy, policy preference, steps
    readme_rows = (tmp_path / "noise_quick.md").read_text().split("The README's table")[1].splitlines()
    methods = [line.split(" | ")[2] for line in readme_rows if line.startswith("| arithmetic | 30% |")]
    assert methods == [
        "plain DPO",
        "autopilot (`quickstart.yaml`, `noisy-labels.yaml`)",
        "cDPO (smoothing 0.1)",
        "cDPO, smoothing from the label audit (`auto`)",
        "SimPO (reference-free)",
    ]  # METHODS' order
    simpo_row = next(line for line in readme_rows if "SimPO" in line)
    # its own reward, and its difference from plain DPO on the policy's preference
    assert f"| 2 | ({cell['simpo']['test_accuracy'][0]:.2f}: its own reward) | " in simpo_row
    policy = cell["simpo"]["test_policy_preference"]
    assert simpo_row.endswith(f" (policy) | {policy[0]:.2f} [{policy[1]:.2f}, {policy[2]:.2f}] |")
    assert cell["simpo"]["vs_plain_on"] == "policy" and cell["cdpo"]["vs_plain_on"] == "reward"
    again = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert again.returncode == 0 and "plan:" not in again.stdout  # nothing trained the second time
    assert len((tmp_path / "noise_quick.runs.jsonl").read_text().splitlines()) == 10
    # --no-train: the grid with a third seed lacks one run per method (odpo: not on arithmetic), and trains none
    (tmp_path / "noise_quick.md").unlink()
    listing = subprocess.run([*command, "--seeds", "0", "1", "2", "--no-train"], capture_output=True, text=True,
                             cwd=REPO, timeout=600)  # fmt: skip
    assert listing.returncode == 0, listing.stderr[-3000:]
    assert "to train: 5 runs, about " in listing.stdout and "  arithmetic 30% cdpo: seeds 2\n" in listing.stdout
    assert "plan:" not in listing.stdout and (tmp_path / "noise_quick.md").exists()  # the tables, from the 10 runs
    assert len((tmp_path / "noise_quick.runs.jsonl").read_text().splitlines()) == 10


@pytest.mark.slow
def test_noise_benchmark_runs_odpo_on_the_scored_data_set(tmp_path):
    """On sorting (multi-response rows with scores), ODPO trains and is scored like any loss with a reference; an
    LD-DPO run's test reward is of its weighted log-probs, and marked so."""
    command = [sys.executable, "eval/bench_noise.py", "--quick", "--datasets", "sorting", "--noise", "0.3",
               "--seeds", "0", "--methods", "plain", "odpo", "ld_dpo", "--results", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads(line) for line in (tmp_path / "noise_quick.runs.jsonl").read_text().splitlines()]
    assert [(r["dataset"], r["method"]) for r in runs] == [("sorting", "plain"), ("sorting", "odpo"),
                                                           ("sorting", "ld_dpo")]  # fmt: skip
    assert [r["test"].get("reward_reduction") for r in runs] == [None, None, "ld_weighted"]
    assert all(r["steps"] == 2 and r["test"]["pairs"] == 8 for r in runs)
    # plain-text answers: test scored without EOS (as recorded) and with it (as the trainer scores validation)
    assert all(len(r["test"]["reward_eos"]) == len(r["test"]["policy_eos"]) == 8 for r in runs)
    cell = json.loads((tmp_path / "noise_quick.json").read_text())["cells"]["sorting/0.3"]["methods"]
    bench = _load_bench("bench_noise")
    best = max(runs[1:], key=lambda r: bench.ranked_by_validation(r["method"], r["validation_accuracy"]))["method"]
    assert "vs_plain" in cell["odpo"] and "vs_plain" in cell["ld_dpo"] and cell["best_single"]["chosen"] == best


def _load_bench(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "eval" / f"{name}.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[name] = bench  # its dataclasses look their module up while being built
    spec.loader.exec_module(bench)
    return bench


def test_noise_benchmark_drops_the_validation_of_reference_free_runs_logged_as_summed_log_probs(tmp_path):
    """Before the trainer logged a reference-free loss's reward per token, a SimPO run's validation accuracy was the
    policy's own (summed log-prob) preference: read back without a value, while a marked run keeps its value and a
    loss with a reference never needs the mark; a cut-off last line is left out."""
    bench = _load_bench("bench_noise")
    runs_file = tmp_path / "noise.runs.jsonl"
    cell = {"dataset": "sorting", "noise": 0.3}
    old_simpo = {**cell, "method": "simpo", "seed": 0, "validation_accuracy": 0.7}
    new_simpo = {**cell, "method": "simpo", "seed": 1, "validation_accuracy": 0.8, "validation_reward": "per_token"}
    plain = {**cell, "method": "plain", "seed": 0, "validation_accuracy": 0.6}
    runs_file.write_text("".join(json.dumps(r) + "\n" for r in (old_simpo, new_simpo, plain)) + '{"method": "pla')
    runs = bench.read_runs(runs_file)
    assert [r["validation_accuracy"] for r in runs] == [None, 0.8, 0.6]


def test_noise_benchmark_trains_again_an_ld_dpo_run_whose_test_reward_was_not_weighted(tmp_path, capsys):
    """LD-DPO's reward weights the tail of the longer answer (its validation accuracy is of that reward): a run whose
    test reward was scored with plain sums is left out, so it trains again, and its retrained record later in the
    file counts; one marked as weighted is kept, and so is a failed run."""
    bench = _load_bench("bench_noise")
    assert bench.ld_weighted("ld_dpo") and not bench.ld_weighted("plain")
    runs_file = tmp_path / "noise.runs.jsonl"
    cell = {"dataset": "arithmetic", "noise": 0.2, "method": "ld_dpo"}
    unweighted = {**cell, "seed": 0, "test": {"reward": "10"}}
    weighted = {**cell, "seed": 1, "test": {"reward": "10", "reward_reduction": bench.LD_WEIGHTED}}
    retrained = {**unweighted, "test": weighted["test"], "retrained": True}
    failed = {**cell, "seed": 2, "failed": "training went non-finite"}  # no test result: kept, so not trained again
    runs_file.write_text("".join(json.dumps(r) + "\n" for r in (unweighted, weighted, failed, retrained)))
    assert [(r["seed"], r.get("retrained")) for r in bench.read_runs(runs_file)] == [(1, None), (2, None), (0, True)]
    assert "line 1: ('arithmetic', 0.2, 0, 'ld_dpo') scored its test reward unweighted" in capsys.readouterr().out


def test_noise_benchmark_resamples_a_prompts_test_pairs_together(tmp_path):
    """The bootstrap's unit is the test prompt: four pairs of one prompt are always drawn together, so one seed's
    interval is its point; as four prompts of a pair each, the same answers give a wide interval, exactly as with
    no grouping. test_prompts groups a test file's positions by prompt, in order of first appearance."""
    bench = _load_bench("bench_noise")
    run = {"test": {"reward": "1100"}}
    assert bench.bootstrap([run], "reward", prompts=[[0, 1, 2, 3]]) == (0.5, 0.5, 0.5)
    apart = bench.bootstrap([run], "reward", prompts=[[0], [1], [2], [3]])
    assert apart == bench.bootstrap([run], "reward") and apart[1] <= 0.25 and apart[2] >= 0.75
    test_file = tmp_path / "test.jsonl"
    prompts = ["b", "a", "b", [{"role": "user", "content": "a"}], "a"]
    test_file.write_text("".join(json.dumps({"prompt": p, "chosen": "x", "rejected": "y"}) + "\n" for p in prompts))
    assert bench.test_prompts(test_file) == [[0, 2], [1, 4], [3]]


def test_noise_benchmark_records_runs_once_and_keeps_a_record_after_a_cut_off_line(tmp_path, capsys):
    """A second record of a run (two invocations that trained it at once) is left out with a note, the first kept; a
    record appended after a line cut off by a kill starts a line of its own, so it is read back; a failed run is
    recorded (read back, so not trained again) but is not a finished run."""
    bench = _load_bench("bench_noise")
    runs_file = tmp_path / "noise.runs.jsonl"

    def run(seed, **extra):
        return {"dataset": "sorting", "noise": 0.2, "seed": seed, "method": "plain", **extra}

    runs_file.write_text(json.dumps(run(0, first=True)) + "\n" + json.dumps(run(0)) + "\n" + '{"dataset": "so')
    bench.append_run(runs_file, run(1))
    bench.append_run(runs_file, run(2, failed="training went non-finite at step 7"))
    runs = bench.read_runs(runs_file)
    assert [(r["seed"], r.get("first")) for r in runs] == [(0, True), (1, None), (2, None)]
    assert "line 2 records ('sorting', 0.2, 0, 'plain') again (first on line 1): left out" in capsys.readouterr().out
    assert [r["seed"] for r in bench.finished(runs)] == [0, 1]


def test_noise_benchmark_lists_failed_runs_and_breaks_validation_ties_by_the_methods_order():
    """A failed run is named under the tables; two methods whose validation accuracies differ only by float32
    rounding are tied, and the tie goes to the method METHODS lists first, not to the rounding; the best single
    control says when a candidate has not run on every seed yet; a method with a run lacking validation accuracy
    is left out of the ranking across cells instead of failing it."""
    bench = _load_bench("bench_noise")

    def run(method, seed, validation, reward="1100"):
        return {"dataset": "arithmetic", "noise": 0.4, "seed": seed, "method": method,
                "validation_accuracy": validation, "test": {"pairs": 4, "reward": reward, "policy": reward},
                "steps": 60, "max_steps": 60, "stop_reason": "completed"}  # fmt: skip

    done = [run("plain", 0, 0.5), run("early_stopping", 0, 0.67), run("dpo_shift", 0, 0.6700000166893005)]
    done += [run("cdpo", 0, 0.9), run("cdpo", 1, None)]  # the best, but one run has no validation accuracy
    assert list(bench.METHODS).index("early_stopping") < list(bench.METHODS).index("dpo_shift")
    result = bench.aggregate(done, {})
    best = result["cells"]["arithmetic/0.4"]["methods"]["best_single"]
    assert best["chosen"] == "early_stopping"
    assert "cdpo" not in result["across_noisy_cells"]["validation_accuracy"]
    assert "cdpo" in result["across_noisy_cells"]["not_in_every_cell"]
    assert "dpop" in best["candidates_not_run"] and "early_stopping" in best["candidates_not_run"]  # one seed of 3
    alone = bench.aggregate([run("autopilot", 0, 0.5)], {})["goals"]  # no single control: the goal is open, not gone
    assert [(g["goal"].split(" (")[0], g["verdict"], g["detail"]) for g in alone if "best single" in g["goal"]] == [
        ("autopilot >= best single control", "open", "no best single control on the autopilot's seeds yet")
    ]
    result["failed"] = [{"dataset": "sorting", "noise": 0.3, "seed": 1, "method": "chi_po", "failed": "non-finite"}]
    text = bench.markdown(result)
    assert "- `chi_po` on sorting at 30%, seed 1: non-finite" in text
    not_run = f"provisional: {len(best['candidates_not_run'])} candidates not run on every seed yet"
    assert f"{not_run}; {bench.validation_caveats('early_stopping')[0]})" in text  # its mark after


def test_noise_benchmark_times_the_runs_left_at_each_methods_own_pace():
    """--no-train's estimate: a method's recorded runs on the data set give its pace (TR-DPO, full fine-tuning, is
    slower than the LoRA methods); a method with none there but some on another data set takes the data set's mean
    scaled by its pace relative to the other methods on that other data set; one with none anywhere takes the data
    set's mean; a data set with no run is named as untimed."""
    bench = _load_bench("bench_noise")
    done = [{"dataset": "arithmetic", "method": "plain", "wall_s": 6000.0},
            {"dataset": "arithmetic", "method": "plain", "wall_s": 5000.0},
            {"dataset": "arithmetic", "method": "tr_dpo", "wall_s": 9000.0},
            {"dataset": "arithmetic", "method": "cdpo"},
            {"dataset": "sorting", "method": "plain", "wall_s": 4000.0},
            {"dataset": "sorting", "method": "ipo", "wall_s": 2000.0}]  # fmt: skip
    todo = [("arithmetic", 0.3, 1, "tr_dpo", None), ("arithmetic", 0.3, 2, "tr_dpo", None),
            ("arithmetic", 0.4, 0, "rpo", None), ("sorting", 0.3, 0, "tr_dpo", None),
            ("clean", 0.3, 0, "plain", None)]  # fmt: skip
    # arithmetic's mean is 20000/3 s: 2 x 9000 (tr_dpo's own) + 20000/3 (rpo, with no run anywhere, at the mean);
    # sorting's mean is 3000 s and tr_dpo ran 9000 / 5500 = 1.636 times the other methods on arithmetic, so 4909 s
    # there: 18000 + 6666.7 + 4909.1 = 29575.8 s = 8.22 hours (tr_dpo against arithmetic's mean with its own runs,
    # 1.35 x 3000 s, would give 7.98; at sorting's mean alone, 7.69)
    lines = bench.remaining(todo, done).splitlines()
    assert lines[0] == (
        "to train: 5 runs, about 8.2 run-hours at the recorded runs' pace (two at a time halves the "
        "wall clock) (and clean, with no recorded run to time):"
    )
    assert lines[1:] == [
        "  arithmetic 30% tr_dpo: seeds 1 2",
        "  arithmetic 40% rpo: seeds 0",
        "  sorting 30% tr_dpo: seeds 0",
        "  clean 30% plain: seeds 0",
    ]
    assert bench.remaining([], done) == "to train: nothing; every run of this grid is recorded"


def test_noise_benchmark_stops_on_a_run_of_a_method_it_no_longer_names(tmp_path, capsys):
    bench = _load_bench("bench_noise")
    runs_file = tmp_path / "noise.runs.jsonl"
    plain = {"dataset": "sorting", "noise": 0.3, "method": "plain", "seed": 0}
    runs_file.write_text(json.dumps(plain) + "\n" + json.dumps({"method": "old_name"}) + "\n")
    with pytest.raises(SystemExit) as stopped:
        bench.read_runs(runs_file)
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {runs_file}: line 2: method 'old_name' is not in METHODS (plain, ")
    assert error.count("\n") == 1


def test_noise_benchmark_fingerprints_the_configuration_each_run_trained(tmp_path, capsys):
    """A run's fingerprint is its resolved recipe's: the same from another work folder (the held-out files live
    there), another for another seed, share of flipped labels or method configuration. A recorded run whose
    fingerprint METHODS no longer gives (a recipe edited or a method remapped under it), or that has none, stops the
    benchmark with one line naming it, unless this version skips the method."""
    bench = _load_bench("bench_noise")
    base = list(bench.BUDGET)

    def config(method, seed, work, noise=0.3):
        validation = bench.split_heldout("sorting", work)[0]
        return bench.fingerprint(method, bench.run_overrides("sorting", noise, seed, method, base, validation), work)

    one, other = tmp_path / "one", tmp_path / "other"
    one.mkdir(), other.mkdir()
    shift = config("dpo_shift", 0, one)
    assert len(shift) == 12 and shift == config("dpo_shift", 0, other)
    others = [config("dpo_shift", 1, one), config("dpo_shift", 0, one, 0.2), config("dpo_shift_linear", 0, one),
              config("early_stopping", 0, one), config("plain", 0, one)]  # fmt: skip
    assert len({shift, *others}) == 6
    runs_file = tmp_path / "noise.runs.jsonl"
    run = {"dataset": "sorting", "noise": 0.3, "seed": 0, "method": "dpo_shift", "config": shift}
    validation = {"sorting": bench.split_heldout("sorting", other)[0]}
    bench.check_fingerprints(runs_file, [run], base, other, validation, {})  # as recorded: nothing to say
    remapped = {**run, "config": config("dpo_shift_linear", 0, one)}
    bench.check_fingerprints(runs_file, [run, remapped], base, other, validation, {"dpo_shift": "not here"})
    for recorded, message in (
        (remapped, "1 recorded run(s) trained another configuration than METHODS gives now (first: dpo_shift on "
                   "sorting at 30%, seed 0, fingerprint "),
        ({k: v for k, v in run.items() if k != "config"}, "1 recorded run(s) have no configuration fingerprint "
                                                          "(first: dpo_shift on sorting at 30%, seed 0)"),
    ):  # fmt: skip
        with pytest.raises(SystemExit) as stopped:
            bench.check_fingerprints(runs_file, [run, recorded], base, other, validation, {})
        assert stopped.value.code == 2
        error = capsys.readouterr().err
        assert error.startswith(f"error: {runs_file}: {message}") and error.count("\n") == 1


def test_noise_benchmark_goals_wait_for_plain_dpo_on_every_seed():
    """Every difference from plain DPO is taken on the same seed: where plain DPO lacks a seed, the first goal stays
    open and names it with its count, and a method that ran on every seed counts only the seeds plain DPO shares;
    the autopilot's goal against the best single control, which reads no plain DPO, is judged all the same."""
    bench = _load_bench("bench_noise")

    def run(method, seed):
        return {"dataset": "sorting", "noise": 0.3, "seed": seed, "method": method, "validation_accuracy": 0.6,
                "test": {"pairs": 4, "reward": "1111", "policy": "1111"}, "steps": 60, "max_steps": 60,
                "stop_reason": "completed"}  # fmt: skip

    every = [m for m in bench.DEFAULT_METHODS if not bench.needs_scores(m)]  # sorting's ODPO left out: not expected
    shipped = [m for m in every if bench.METHODS[m].shipped]
    done = [run(m, s) for m in every if m != "plain" for s in bench.SEEDS] + [run("plain", 0), run("plain", 1)]
    below = next(g for g in bench.aggregate(done, {})["goals"] if g["goal"].startswith("no shipped recipe below"))
    assert below["verdict"] == "open"
    not_run = below["detail"].split("; not run here yet: ")[1].split(", ")
    assert "plain (2 of 3 seeds)" in not_run and "cdpo (2 of 3 seeds)" in not_run
    assert len(not_run) == len(shipped)  # every method's difference waits for plain DPO's third seed
    # the autopilot's goal reads no plain DPO: every candidate and the autopilot ran on every seed, so it is judged
    versus_best = next(g for g in bench.aggregate(done, {})["goals"] if g["goal"].startswith("autopilot >= best"))
    assert versus_best["verdict"] == "yes" and "open until" not in versus_best["detail"]
    below = next(g for g in bench.aggregate([*done, run("plain", 2)], {})["goals"] if g["goal"] == below["goal"])
    assert below["verdict"] == "yes" and below["detail"] == "none below"


def test_noise_benchmark_keeps_a_full_fine_tuning_recipe_full_in_the_quick_budget(tmp_path):
    """TR-DPO's recipe has no peft section (its reference moves, which LoRA's adapter-disabled base cannot): the quick
    budget's LoRA targets are left out of its overrides, so that it still validates; a LoRA recipe keeps them."""
    import dpo.api

    bench = _load_bench("bench_noise")
    validation = bench.split_heldout("arithmetic", tmp_path)[0]
    quick = list(bench.QUICK)
    full = bench.run_overrides("arithmetic", 0.3, 0, "tr_dpo", quick, validation)
    assert [o for o in full if o.startswith("peft.")] == []
    lora = bench.run_overrides("arithmetic", 0.3, 0, "plain", quick, validation)
    assert "peft.target_modules=[q_proj, v_proj]" in lora
    assert dpo.api.validate(bench.REPO / "recipes" / "tr-dpo.yaml", full)  # "needs full fine-tuning" before


def test_noise_benchmark_goals_judge_each_method_once_and_choose_the_best_single_on_validation():
    """Hand-made runs on 4 test pairs: the best single control is the one with the higher validation accuracy even
    where its test accuracy is lower; a shipped recipe below plain beyond the interval is named once (not again as
    best_single), a control run with overrides (the NLL term) is listed but does not miss the goal; the autopilot's
    0.10 goal reads its paired difference from plain."""
    bench = _load_bench("bench_noise")

    def run(method, seed, reward, validation, dataset="sorting", noise=0.3, policy=None):
        return {"dataset": dataset, "noise": noise, "seed": seed, "method": method, "validation_accuracy": validation,
                "test": {"pairs": 4, "reward": reward, "policy": policy or reward}, "steps": 60, "max_steps": 60,
                "stop_reason": "completed"}  # fmt: skip

    done = [run("plain", s, "1111", 0.7) for s in (0, 1)]
    done += [run("odpo", s, "0000", 0.9) for s in (0, 1)]  # chosen on validation, worst on test
    done += [run("cdpo", s, "1110", 0.6) for s in (0, 1)]
    done += [run("autopilot", s, "1111", 0.8) for s in (0, 1)]
    done += [run("plain", 2, "1111", 0.1)]  # a seed the others lack: left out where methods are compared
    done += [run("simpo", s, "1111", 0.95, policy="0000") for s in (0, 1)]  # its own reward high, policy wrong
    done += [run("nll", s, "0000", 0.5) for s in (0, 1)]  # below plain, but no recipe ships it (an override)
    done += [run("cdpo", 0, "1100", 0.5, "arithmetic", 0.2)]  # on arithmetic, but not at 40% yet: that goal is open
    done += [run(m, 0, "1100", v, "arithmetic", n) for n in (0.2, 0.4)
             for m, v in (("plain", 0.5), ("autopilot", {0.2: 0.4, 0.4: 0.8}[n]), ("simpo", 0.9))]  # fmt: skip
    result = bench.aggregate(done, {})
    # the recipe for unknown noise is chosen on validation over the noisy cells, among the methods that ran in all
    # (odpo and cdpo ran on sorting only; simpo is reference-free), on shared seeds, each data set counted once:
    # autopilot (mean(0.4, 0.8) + 0.8) / 2, plain (0.5 + 0.7) / 2
    across = result["across_noisy_cells"]
    assert across["cells"] == ["arithmetic/0.2", "arithmetic/0.4", "sorting/0.3"]
    assert across["validation_accuracy"] == pytest.approx({"autopilot": 0.7, "plain": 0.6})
    assert list(across["validation_accuracy"]) == ["autopilot", "plain"]
    assert across["below_plain"] == {"autopilot": ["arithmetic/0.2"], "plain": []}
    assert across["not_in_every_cell"] == ["cdpo", "nll", "odpo"] and across["reference_free"] == ["simpo"]
    rows = result["cells"]["sorting/0.3"]["methods"]
    assert rows["best_single"]["chosen"] == "odpo" and rows["best_single"]["chosen_on_seeds"] == [0, 1]
    assert rows["plain"]["seeds"] == [0, 1, 2] and rows["autopilot"]["seeds"] == [0, 1]
    assert rows["odpo"]["vs_plain"] == (-1.0, -1.0, -1.0)  # every pair, every seed: no resample differs
    goals = {g["goal"]: g for g in result["goals"]}
    below = goals["no shipped recipe below plain beyond the interval"]
    # cdpo's -0.25 interval reaches 0; best_single once; a reference-free loss on the policy's preference, marked
    assert below["verdict"] == "NO"  # missed, though shipped recipes of the grid have not run here: one below is enough
    judged, not_run = below["detail"].split("; not run here yet: ")
    assert judged == "odpo -1.000, simpo -1.000 (policy) (not shipped as run: nll -1.000)"
    # every shipped recipe of the default grid without a run on each of its seeds (0, 1, 2) in the cell: early
    # stopping, DPO-Shift, IPO, ... and cDPO and ODPO, which have two
    assert {"early_stopping", "dpo_shift", "ipo", "orpo"} <= set(not_run.split(", "))
    assert {"cdpo (2 of 3 seeds)", "odpo (2 of 3 seeds)"} <= set(not_run.split(", "))
    assert not {"plain", "cdpo", "odpo", "nll", "dpo_shift_linear", "label_smoothing_auto"} & set(not_run.split(", "))
    assert bench.METHODS["odpo"].shipped and not bench.METHODS["nll"].shipped
    arithmetic = {g["cell"]: g for g in result["goals"] if g["goal"] == below["goal"]}
    assert arithmetic["arithmetic/0.2"]["verdict"] == "open" and arithmetic["arithmetic/0.4"]["verdict"] == "open"
    # ODPO needs scored pairs, and arithmetic has none: not expected there; cDPO ran at 20% only, on one seed
    assert "cdpo" in arithmetic["arithmetic/0.4"]["detail"].split("; not run here yet: ")[1].split(", ")
    assert "cdpo (1 of 3 seeds)" in arithmetic["arithmetic/0.2"]["detail"]
    assert "odpo" not in arithmetic["arithmetic/0.4"]["detail"]
    assert "| arithmetic/0.4 | no shipped recipe below plain beyond the interval | open |" in bench.markdown(result)
    assert rows["simpo"]["vs_plain_on"] == "policy" and rows["odpo"]["vs_plain_on"] == "reward"
    # the autopilot has two of the three seeds: the 0.10 goal waits for the third, like the others
    assert goals["autopilot >= plain + 0.10 in test accuracy"]["verdict"] == "open"
    assert goals["autopilot >= plain + 0.10 in test accuracy"]["detail"] == (
        "+0.000 [+0.000, +0.000]; open until these have run on every seed: autopilot"
    )
    versus_best = goals["autopilot >= best single control (chosen on validation)"]
    # above odpo, the chosen one; but early stopping, IPO, ... have not run here and may be chosen instead
    assert versus_best["verdict"] == "open"
    unrun = versus_best["detail"].split("; open until these have run on every seed: ")[1].split(", ")
    assert {"early_stopping", "ipo", "odpo (2 of 3 seeds)", "autopilot (2 of 3 seeds)"} <= set(unrun)
    assert not {"odpo", "cdpo", "nll", "simpo", "autopilot"} & set(unrun)
    every_single = [m for m in bench.DEFAULT_METHODS if bench.METHODS[m].kind == "single"
                    and not bench.reference_free(m) and m not in ("odpo", "cdpo", "nll")]  # fmt: skip
    versus_best_goal = versus_best["goal"]

    def versus_best_on_sorting(runs):
        goals = bench.aggregate(runs, {})["goals"]
        return next(g for g in goals if g["cell"] == "sorting/0.3" and g["goal"] == versus_best_goal)

    on_two_seeds = done + [run(m, s, "1111", 0.1) for m in every_single for s in (0, 1)]
    assert versus_best_on_sorting(on_two_seeds)["verdict"] == "open"  # every candidate ran, but not on the third seed
    third_seed = [run("odpo", 2, "0000", 0.9), run("cdpo", 2, "1110", 0.6), run("nll", 2, "0000", 0.5)]
    third_seed += [run(m, 2, "1111", 0.1) for m in every_single]
    waiting = versus_best_on_sorting(on_two_seeds + third_seed)  # every candidate on each seed, the autopilot on two
    assert waiting["verdict"] == "open" and waiting["detail"].endswith("on every seed: autopilot (2 of 3 seeds)")
    versus_best = versus_best_on_sorting(on_two_seeds + third_seed + [run("autopilot", 2, "1111", 0.8)])
    assert versus_best["verdict"] == "yes"  # every candidate ran on each seed; odpo (validation 0.9) chosen
    assert versus_best["detail"] == "autopilot - odpo: +1.000 [+1.000, +1.000]"
    # the README's table: METHODS' order, labels, two decimals; plain's own row has no difference from plain; a
    # reference-free loss's accuracy is its own reward, in parentheses, and its difference is of the policy's
    table = [line for line in bench.readme_table(result) if line.startswith("| sorting | 30% |")]
    assert table[0] == "| sorting | 30% | plain DPO | 3 | 1.00 [1.00, 1.00] |  | 1.00 [1.00, 1.00] |"
    assert table[1] == (
        "| sorting | 30% | NLL term (weight 1; the quickstart before) | 2 | 0.00 [0.00, 0.00] | -1.00 [-1.00, -1.00] "
        "| 0.00 [0.00, 0.00] |"
    )
    assert table[2] == (
        "| sorting | 30% | autopilot (`quickstart.yaml`, `noisy-labels.yaml`) | 2 | 1.00 [1.00, 1.00] "
        "| +0.00 [+0.00, +0.00] | 1.00 [1.00, 1.00] |"
    )
    assert table[3].startswith("| sorting | 30% | cDPO (smoothing 0.1) | 2 | 0.75 [") and "| -0.25 [" in table[3]
    assert table[4] == (
        "| sorting | 30% | SimPO (reference-free) | 2 | (1.00: its own reward) | -1.00 [-1.00, -1.00] (policy) "
        "| 0.00 [0.00, 0.00] |"
    )
    assert table[5] == "| sorting | 30% | ODPO | 2 | 0.00 [0.00, 0.00] | -1.00 [-1.00, -1.00] | 0.00 [0.00, 0.00] |"
    assert len(table) == 6


def test_noise_benchmark_names_the_shipped_recipes_its_grid_does_not_judge(tmp_path):
    bench = _load_bench("bench_noise")
    for name in ("plain.yaml", "dpop.yaml", "quickstart.yaml", "sorting.yaml", "noisy-labels.yaml", "new-loss.yaml"):
        (tmp_path / name).write_text("base: plain.yaml\n")
    assert bench.recipes_outside_the_grid(tmp_path) == ["new-loss.yaml"]
    # the default grid runs every shipped control: a new recipe joins METHODS and DEFAULT_METHODS (or NOT_CONTROLS)
    assert bench.recipes_outside_the_grid() == []


def test_noise_benchmark_tabulates_a_grid_where_no_ranked_method_ran_in_every_noisy_cell():
    """Runs of a reference-free loss alone (`--methods orpo` into a fresh results folder): nothing to rank across the
    noisy cells, so the ranking is empty and the tables are still written (it raised a TypeError after the runs)."""
    bench = _load_bench("bench_noise")
    done = [{"dataset": "sorting", "noise": 0.2, "seed": s, "method": "orpo", "validation_accuracy": 0.9,
             "test": {"pairs": 4, "reward": "1110", "policy": "1100"}, "steps": 60, "max_steps": 60,
             "stop_reason": "completed"} for s in (0, 1)]  # fmt: skip
    result = bench.aggregate(done, {})
    across = result["across_noisy_cells"]
    assert across["cells"] == ["sorting/0.2"] and across["validation_accuracy"] == {}
    assert across["below_plain"] == {} and across["not_in_every_cell"] == [] and across["reference_free"] == ["orpo"]
    assert "| sorting | 20% | orpo |" in bench.markdown(result)
    assert "<svg" in bench.figures(result)


def test_overfitting_benchmark_lists_the_new_losses_and_tabulates_reference_free_rows():
    """The losses of issue 16 are single controls (ODPO aside: the arithmetic pairs have no scores), and a row
    without a chosen log-ratio (a reference-free loss logs none) shows n/a instead of failing the table."""
    bench = _load_bench("bench_overfitting")
    assert {"cal_dpo", "dpo_shift", "chi_po", "dr_dpo", "simpo", "orpo"} <= set(bench.CONTROLS)
    row = {
        "noise": 0.0, "steps": 30, "eval_rewards/accuracies": 0.7, "eval_rewards/margins": 1.0,
        "eval_logps/accuracies": 0.8,
    }  # fmt: skip
    text = bench.table([{**row, "control": "plain", "eval_logratios/chosen": -1.0}, {**row, "control": "simpo"}])
    assert "| 0% | simpo | 0.700 | +0.000 | 1.000 | n/a | 0.800 | 30 |" in text


@pytest.mark.slow
def test_audit_benchmark_quick(tmp_path, tiny_model_dir):
    proc = subprocess.run(
        [sys.executable, "eval/bench_audit.py", "--quick", "--model", str(tiny_model_dir), "--results", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "audit_quick.json").read_text())
    rows = result["rows"]
    assert [(r["dataset"], r["level"]) for r in rows] == [("arithmetic", 0.0), ("arithmetic", 0.2), ("arithmetic", 0.4)]
    assert all(r["pairs"] == 300 and r["injected"] == r["level"] for r in rows)
    assert all(0 <= r["low"] <= r["estimate"] <= r["high"] <= 0.5 and 0 <= r["top10_precision"] <= 1 for r in rows)
    assert set(result["meta"]["goals_met"]) == {"within_5_points", "truth_inside", "top10_precision"}
    assert "| arithmetic | 300 | 20% |" in (tmp_path / "audit_quick.md").read_text()


def test_noise_eos_check_compares_both_scorings_with_plain_and_counts_reproduced_runs(tmp_path):
    """eval/bench_noise_eos.py: per method, the test accuracy without and with EOS and the paired difference from
    plain DPO both ways; a retrained run counts as reproduced when its fingerprint, its scores without EOS, its
    validation accuracy and its autopilot decisions equal the recorded run's."""
    check = _load_bench("bench_noise_eos")

    def run(method, seed, without, with_eos, config="c"):
        test = {"pairs": 4, "reward": without, "policy": without, "reward_eos": with_eos}
        return {"dataset": "sorting", "noise": 0.3, "seed": seed, "method": method, "config": config,
                "validation_accuracy": 0.5, "test": test}  # fmt: skip

    runs = [run("plain", 0, "1100", "1100"), run("dpo_shift", 0, "1000", "1110"), run("ipo", 0, "1000", "1000")]
    recorded = [run("plain", 0, "1100", "-"), run("dpo_shift", 0, "1000", "-", config="other"),
                run("ipo", 0, "1000", "-")]  # fmt: skip
    recorded[2]["test"]["policy"] = "0000"  # the same configuration and reward scores, another policy preference
    for r in recorded:
        del r["test"]["reward_eos"]
    cells = check.compare(runs, recorded)
    shift = cells["sorting/0.3"]["dpo_shift"]
    assert cells["sorting/0.3"]["plain"]["same_as_recorded"] == 1 and shift["same_as_recorded"] == 0
    assert cells["sorting/0.3"]["ipo"]["same_as_recorded"] == 0
    without, with_eos = (shift[label] for label in check.SCORINGS)
    assert without["test_accuracy"][0] == 0.25 and without["vs_plain"][0] == -0.25
    assert with_eos["test_accuracy"][0] == 0.75 and with_eos["vs_plain"][0] == 0.25
    assert "vs_plain" not in cells["sorting/0.3"]["plain"][next(iter(check.SCORINGS))]
    recorded[0]["validation_accuracy"] = 0.6  # the same test scores, another validation accuracy: not reproduced
    assert check.compare(runs, recorded)["sorting/0.3"]["plain"]["same_as_recorded"] == 0
    row = "| sorting/0.3 | dpo_shift | 0 | 0/1 | 0.500 | 0.250 [0.000, 0.750] | -0.250 [-0.750, +0.000] | 0.750 "
    assert row + "[0.250, 1.000] | +0.250 [+0.000, +0.750] |" in check.markdown(cells, "runs.jsonl")  # seeded


@pytest.mark.slow
def test_quickstart_benchmark_tabulates_each_runs_final_weights(tmp_path, tiny_model_dir):
    tiny = [f"model.name_or_path={tiny_model_dir}", "training.max_steps=4", "training.eval_steps=2"]
    proc = subprocess.run(
        [sys.executable, "eval/bench_quickstart.py", "--results", str(tmp_path), *(f"--set={s}" for s in tiny)],
        capture_output=True, text=True, cwd=REPO, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads((tmp_path / "quickstart.json").read_text())["runs"]
    assert list(runs) == ["quickstart", "nll", "plain"]
    assert runs["nll"]["overrides"] == ["regularizers.nll_weight=1", *tiny]
    assert [row["step"] for row in runs["plain"]["evaluations"]] == [0, 2, 4]
    for run in runs.values():
        assert run["steps"] == 4 and run["final_weights"] in ("best", "last")
        assert run["initial"]["eval_rewards/accuracies"] == 0  # the reference is the policy at step 0
    table = (tmp_path / "quickstart.md").read_text().split("The README's table:\n\n")[1].splitlines()
    assert table[0].startswith("| held-out pairs | base model (step 0) | quickstart: autopilot")
    plain = runs["plain"]["final"]
    assert table[2].endswith(f"| {plain['eval_rewards/accuracies']:.2f} |")  # the last column is plain DPO's
    assert table[-1].startswith("| wall time") and len(table) == 2 + 5 + 2


def test_noise_benchmark_goals_expect_every_method_that_runs_on_the_data_set_not_only_those_that_ran():
    """ODPO runs on sorting (its pairs have scores): with no ODPO run there (or only failed ones) the sorting goals
    stay open naming it, and it is a candidate the best single control waits for; goals missing their runs read open
    (the autopilot not run in a cell; at 30%, no seed with both the autopilot and plain DPO), never vanish."""
    bench = _load_bench("bench_noise")

    def run(method, seed, validation=0.6):
        return {"dataset": "sorting", "noise": 0.3, "seed": seed, "method": method, "validation_accuracy": validation,
                "test": {"pairs": 4, "reward": "1111", "policy": "1111"}, "steps": 60, "max_steps": 60,
                "stop_reason": "completed"}  # fmt: skip

    others = [m for m in bench.DEFAULT_METHODS if m != "odpo"]
    done = [run(m, s) for m in others for s in bench.SEEDS]
    runs_on = {"sorting": set(bench.METHODS)}  # what main finds from the data: every method runs there
    goals = {g["goal"]: g for g in bench.aggregate(done, {}, applicable=runs_on)["goals"]}
    below = goals["no shipped recipe below plain beyond the interval"]
    assert below["verdict"] == "open" and below["detail"] == "none below; not run here yet: odpo"
    versus_best = goals["autopilot >= best single control (chosen on validation)"]
    assert versus_best["verdict"] == "open" and versus_best["detail"].endswith("on every seed: odpo")
    guessed = {g["goal"]: g for g in bench.aggregate(done, {})["goals"]}  # hand-made runs: inferred from what ran
    assert guessed["no shipped recipe below plain beyond the interval"]["verdict"] == "yes"

    without_autopilot = [r for r in done if r["method"] != "autopilot"]
    goals = bench.aggregate(without_autopilot, {}, applicable=runs_on)["goals"]
    found = [(g["goal"].split(" (")[0], g["verdict"], g["detail"]) for g in goals if g["goal"].startswith("autopilot")]
    assert found == [
        ("autopilot >= best single control", "open", "autopilot not run here yet"),
        ("autopilot >= plain + 0.10 in test accuracy", "open",
         "the difference needs plain DPO on each of the autopilot's seeds: autopilot, plain (3 of 3 seeds)"),
    ]  # fmt: skip


def test_noise_benchmark_best_single_records_the_validation_mean_it_was_chosen_by():
    """Chosen on the seeds every candidate shares (0, 1): cDPO's 0.9 there, beside its 0.7 over all three seeds."""
    bench = _load_bench("bench_noise")

    def run(method, seed, validation):
        return {"dataset": "arithmetic", "noise": 0.2, "seed": seed, "method": method,
                "validation_accuracy": validation, "test": {"pairs": 4, "reward": "1100", "policy": "1100"},
                "steps": 60, "max_steps": 60, "stop_reason": "completed"}  # fmt: skip

    done = [run("cdpo", 0, 0.9), run("cdpo", 1, 0.9), run("cdpo", 2, 0.3), run("ipo", 0, 0.8), run("ipo", 1, 0.8)]
    cell = bench.aggregate(done, {})["cells"]["arithmetic/0.2"]["methods"]
    assert cell["best_single"]["chosen"] == "cdpo" and cell["best_single"]["chosen_on_seeds"] == [0, 1]
    assert cell["best_single"]["chosen_by_validation"] == pytest.approx(0.9)
    # its row, like its test numbers, is of every seed it ran
    assert cell["best_single"]["validation_accuracy"] == cell["cdpo"]["validation_accuracy"] == pytest.approx(0.7)


def test_noise_benchmark_refuses_runs_scored_on_another_test_split(tmp_path, capsys):
    """A record names the test file its per-pair strings are positions in: one scored on another split stops the
    benchmark with one line; records from before the field are let through; strings of different lengths are
    never paired."""
    bench = _load_bench("bench_noise")
    test_file = bench.split_heldout("sorting", tmp_path)[1]
    today = bench.test_digest(test_file)
    run = {"dataset": "sorting", "noise": 0.3, "seed": 0, "method": "plain", "test_split": today}
    runs_file = tmp_path / "noise.runs.jsonl"
    bench.check_test_split(runs_file, [run, {**run, "seed": 1, "test_split": today}], {"sorting": test_file})
    older = {k: v for k, v in run.items() if k != "test_split"}
    bench.check_test_split(runs_file, [older], {"sorting": test_file})
    with pytest.raises(SystemExit) as stopped:
        bench.check_test_split(runs_file, [run, {**run, "test_split": "0123456789ab"}], {"sorting": test_file})
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {runs_file}: 1 recorded run(s) were scored on another test split than this")
    assert f"split 0123456789ab, now {today}" in error and error.count("\n") == 1
    scored = [{"seed": s, "test": {"reward": reward}} for s, reward in ((0, "1100"), (1, "110"))]
    with pytest.raises(ValueError, match=r"test results of \[3, 4\] pairs"):
        bench.bootstrap(scored, "reward")
    for corrupt in ("1120", "11 0", "1a00"):  # each character a pair's 0 or 1: anything else is a corrupt record
        with pytest.raises(ValueError, match="test reward strings must hold only 0 and 1"):
            bench.bootstrap([{"seed": 0, "test": {"reward": corrupt}}], "reward")


def test_noise_benchmark_reads_runs_of_a_method_whose_recipe_this_version_cannot_load(monkeypatch):
    """The loss table cannot be asked about such a method: it counts as neither reference-free nor needing scores
    (check_fingerprints notes it), where the lookup once ended the benchmark with a traceback."""
    bench = _load_bench("bench_noise")
    monkeypatch.setitem(bench.METHODS, "unloadable", bench.Method("plain.yaml", "x", ("loss.label_smoothing=lots",)))
    assert bench.reference_free("unloadable") is False and bench.needs_scores("unloadable") is False


def test_noise_benchmark_bootstrap_draws_seeds_and_prompts_as_counts_and_keeps_an_exact_zero():
    """BOOTSTRAP (10,000) draws of seeds and prompts with replacement, taken as counts: each draw's statistic is the
    mean over the drawn seeds of the mean over the drawn pairs, paired with the baseline on seed and pair position,
    and the interval ends leave as many draws below as above (250 each). Differences are counts of pairs, so a draw of
    exactly 0 is common: an end there is exactly 0.0 (never -0.0, nor a rounding error beside 0)."""
    import math

    bench = _load_bench("bench_noise")
    assert bench.BOOTSTRAP == 10_000
    runs = [{"test": {"reward": r}} for r in ("110100", "011110", "111000")]
    base = [{"test": {"reward": r}} for r in ("100100", "011010", "101001")]
    prompts = [[0, 1], [2], [3, 4, 5]]
    seed_counts, prompt_counts = bench._draws(3, 3, 0)
    expected = []
    for seeds, groups in zip(seed_counts.astype(int), prompt_counts.astype(int), strict=True):
        drawn_seeds = [s for s in range(3) for _ in range(seeds[s])]
        pairs = [p for g in range(3) for _ in range(groups[g]) for p in prompts[g]]
        expected.append(sum(sum(int(runs[s]["test"]["reward"][p]) - int(base[s]["test"]["reward"][p])
                                for p in pairs) / len(pairs) for s in drawn_seeds) / 3)  # fmt: skip
    expected.sort()
    point, low, high = bench.bootstrap(runs, "reward", base, prompts=prompts)
    assert point == pytest.approx(2 / 18)
    assert (low, high) == pytest.approx((expected[250], expected[9749]), abs=1e-12)
    assert bench.bootstrap(runs, "reward", base, prompts=prompts) == (point, low, high)  # the same draws each call
    # one pair of four apart: a quarter of the pairs differ, and (3/4)**4 of the draws miss it, exactly 0
    above = bench.bootstrap([{"test": {"reward": "1100"}}], "reward", [{"test": {"reward": "1000"}}])
    below = bench.bootstrap([{"test": {"reward": "1000"}}], "reward", [{"test": {"reward": "1100"}}])
    assert above[1] == 0.0 and below[2] == 0.0 and math.copysign(1, below[2]) == 1.0
    assert bench.interval(below, signed=True) == "-0.250 [-0.750, +0.000]"


def test_noise_benchmark_judges_the_autopilot_against_the_best_recipe_default_control_three_ways():
    """The goal against the best single control reads "yes" (not below it by the point estimate, nor beyond the
    interval), "within the interval" (below by the point estimate, the interval reaching 0, an end exactly at 0
    included) or "NO" (below beyond the interval), words from one table that noise.md explains under the goals. The
    variants no recipe ships (nll, dpo_shift_linear) stay rows but are no candidates, here nor in the ranking across
    cells (listed apart there). A candidate whose recipe restores its best checkpoint, or whose reference moves, is
    marked where it is chosen and in that ranking; the mark comes from the recipe, not the name."""
    bench = _load_bench("bench_noise")
    verdict = bench.versus_best_verdict
    assert verdict((0.0, -0.05, 0.05)) == "yes" and verdict((0.02, 0.0, 0.06)) == "yes"
    assert verdict((-0.041, -0.089, 0.0)) == verdict((-0.03, -0.08, 0.03)) == "within the interval"
    assert verdict((-0.07, -0.16, -0.003)) == "NO"
    assert {bench.METHODS[m].kind for m in ("nll", "dpo_shift_linear")} == {"variant"}
    candidates = bench.choice_candidates(set(bench.METHODS))
    assert "dpo_shift" in candidates and not {"nll", "dpo_shift_linear", "simpo", "plain"} & set(candidates)
    assert bench.validation_caveats("early_stopping") == bench.validation_caveats("autopilot")
    assert bench.validation_caveats("early_stopping")[0].startswith("validation optimistic")
    moving = "validation against its moving reference, test against the base model"
    assert bench.validation_caveats("tr_dpo") == (moving,)
    assert bench.validation_caveats("dpo_shift") == bench.validation_caveats("plain") == ()

    def run(method, seed, reward, validation):
        return {"dataset": "arithmetic", "noise": 0.3, "seed": seed, "method": method,
                "validation_accuracy": validation, "test": {"pairs": 4, "reward": reward, "policy": reward},
                "steps": 60, "max_steps": 60, "stop_reason": "completed"}  # fmt: skip

    every = [m for m in bench.DEFAULT_METHODS if not bench.needs_scores(m)]
    done = [run(m, s, "1100", 0.6) for m in every for s in bench.SEEDS if m not in ("dpo_shift", "dpo_shift_linear")]
    done += [run("dpo_shift", s, "1110", 0.7) for s in bench.SEEDS]  # the best at its recipe's defaults
    done += [run("dpo_shift_linear", s, "1100", 0.8) for s in bench.SEEDS]  # higher on validation, lower on test
    result = bench.aggregate(done, {})
    rows = result["cells"]["arithmetic/0.3"]["methods"]
    assert rows["best_single"]["chosen"] == "dpo_shift" and "dpo_shift_linear" in rows
    goal = next(g for g in result["goals"] if g["goal"].startswith("autopilot >= best single"))
    assert goal["verdict"] == "within the interval"  # -0.250 on every seed, one pair in four: [-0.75, 0]
    assert goal["detail"] == "autopilot - dpo_shift: -0.250 [-0.750, +0.000]"
    across = result["across_noisy_cells"]
    assert "dpo_shift_linear" not in across["validation_accuracy"] and "nll" not in across["validation_accuracy"]
    assert across["variants"] == pytest.approx({"dpo_shift_linear": 0.8, "nll": 0.6})
    assert set(across["caveats"]) == {"autopilot", "early_stopping", "tr_dpo"}
    text = bench.markdown(result)
    assert "| arithmetic/0.3 | autopilot >= best single control (chosen on validation) | within the interval |" in text
    assert "Verdicts: " + "; ".join(f"{word}: {meaning}" for word, meaning in bench.VERDICTS.items()) in text
    assert "an interval end can land exactly on 0 (shown as +0.000): such an end reaches 0" in text
    assert "Variants no recipe ships, so not ranked: dpo_shift_linear 0.800 (never below plain), nll 0.600" in text
    assert f"early_stopping 0.600 (never below plain; {bench.validation_caveats('early_stopping')[0]})" in text
    # early stopping best on validation: marked where it is chosen, in the row and in the goal's numbers
    mark = bench.validation_caveats("early_stopping")[0]
    best = [run(m, s, "1100", 0.9) for m in ("early_stopping", "tr_dpo") for s in bench.SEEDS]
    result = bench.aggregate([r for r in done if r["method"] not in ("early_stopping", "tr_dpo")] + best, {})
    rows = result["cells"]["arithmetic/0.3"]["methods"]
    assert rows["best_single"]["chosen"] == "early_stopping"  # listed before tr_dpo: the tie is its
    assert rows["best_single"]["caveats"] == list(bench.validation_caveats("early_stopping"))
    goal = next(g for g in result["goals"] if g["goal"].startswith("autopilot >= best single"))
    assert goal["verdict"] == "yes"
    assert goal["detail"] == f"autopilot - early_stopping: +0.000 [+0.000, +0.000]; early_stopping: {mark}"
    assert f"| best_single (early_stopping; chosen on seeds 0, 1, 2; {mark}) |" in bench.markdown(result)


def test_noise_benchmark_marks_a_restoring_recipe_from_its_keys_not_its_name(monkeypatch):
    bench = _load_bench("bench_noise")
    monkeypatch.setitem(bench.METHODS, "patient", bench.Method("plain.yaml", "x", ("early_stopping.patience=3",)))
    monkeypatch.setitem(bench.METHODS, "moving", bench.Method("tr-dpo.yaml", "y", ("regularizers.sync_ref.every=5",)))
    assert bench.validation_caveats("patient") == bench.validation_caveats("early_stopping")
    assert bench.validation_caveats("moving") == bench.validation_caveats("tr_dpo")


def test_noise_benchmark_shows_the_scored_step_waits_for_validation_and_marks_sorting_scored_without_eos():
    """The steps column adds the step whose weights were scored where every run of the row records it; a single
    control without a validation accuracy on a seed counts as not run for the choice (the choice provisional, the goal
    open, naming it); on a data set whose runs were scored with EOS too (plain text), the first goal's numbers say
    the test is scored without it."""
    bench = _load_bench("bench_noise")
    assert bench.steps_used({"steps": 60, "max_steps": 60, "scored_step": 40}, "cdpo") == "60 / 60, scored 40"
    assert bench.steps_used({"steps": 60, "max_steps": 60, "scored_step": None}, "plain") == "60 / 60"
    # a method that restores its best checkpoint, its runs recorded before scored_step was: not the last step's
    for restoring in ("early_stopping", "autopilot"):
        assert bench.steps_used({"steps": 60, "max_steps": 60, "scored_step": None}, restoring) == "60 / 60, scored ?"

    def run(method, seed, dataset="sorting", validation=0.6, **extra):
        test = {"pairs": 4, "reward": "1100", "policy": "1100"}
        if dataset == "sorting":
            test["reward_eos"] = test["policy_eos"] = "1100"
        return {"dataset": dataset, "noise": 0.3, "seed": seed, "method": method, "validation_accuracy": validation,
                "test": test, "steps": 60, "max_steps": 60, "stop_reason": "completed", **extra}  # fmt: skip

    every = [m for m in bench.DEFAULT_METHODS if not bench.needs_scores(m) and m != "cdpo"]
    done = [run(m, s, d) for m in every for s in bench.SEEDS for d in ("sorting", "arithmetic")]
    done += [run("cdpo", s, d, scored_step=40) for s in bench.SEEDS for d in ("sorting", "arithmetic")]
    done[-1]["validation_accuracy"] = None  # cdpo on arithmetic, seed 2
    done[0]["scored_step"] = 50  # one run of many: its row shows none
    result = bench.aggregate(done, {})
    sorting, arithmetic = (result["cells"][f"{d}/0.3"]["methods"] for d in ("sorting", "arithmetic"))
    assert sorting["cdpo"]["scored_step"] == 40 and sorting[done[0]["method"]]["scored_step"] is None
    assert "| sorting | 30% | cdpo |" in (text := bench.markdown(result))
    assert next(line for line in text.splitlines() if line.startswith("| sorting | 30% | cdpo |")).endswith(
        "| 60 / 60, scored 40 |")  # fmt: skip
    assert next(line for line in text.splitlines() if line.startswith("| sorting | 30% | early_stopping |")).endswith(
        "| 60 / 60, scored ? |")  # fmt: skip
    assert arithmetic["cdpo"]["validation_seeds"] == [0, 1] and arithmetic["cdpo"]["seeds"] == [0, 1, 2]
    assert sorting["best_single"]["candidates_not_run"] == []
    assert arithmetic["best_single"]["candidates_not_run"] == ["cdpo"]
    goals = {(g["cell"], g["goal"].split(" (")[0]): g for g in result["goals"]}
    waiting = goals["arithmetic/0.3", "autopilot >= best single control"]
    assert waiting["verdict"] == "open"
    assert waiting["detail"].endswith("open until these have run on every seed: cdpo (2 of 3 seeds with a validation "
                                      "accuracy)")  # fmt: skip
    assert goals["sorting/0.3", "autopilot >= best single control"]["verdict"] == "yes"
    eos = "; test scored without EOS, unlike validation (see the note on EOS above the tables)"
    assert goals["sorting/0.3", "no shipped recipe below plain beyond the interval"]["detail"] == "none below" + eos
    assert goals["arithmetic/0.3", "no shipped recipe below plain beyond the interval"]["detail"] == "none below"
    assert "EOS: plain-text test answers (sorting) are scored without the EOS token" in text
