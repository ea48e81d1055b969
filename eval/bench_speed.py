"""Speed: plain TRL DPOTrainer against ours (prompt sharing, cheap evaluation), side by side, on this machine's CPU.

    python eval/bench_speed.py            # embedded SmolLM2-135M, 3 data sets x 3 settings x 2 trainers (~30-40 min,
                                          # 2 idle CPU cores); writes eval/results/speed.{json,md}
    python eval/bench_speed.py --quick    # tiny random model, 2 steps per run (~1-2 min; what the test runs)

Both trainers get the same model, LoRA, data, batch, step count, seed and DPOConfig, built from
recipes/plain.yaml (sigmoid, no NLL term, no autopilot) so the computation is the same; reference log-probs
are computed inline on both sides (each pair is seen once). Settings, one row each:

* fp32: our CPU defaults (float32, no gradient checkpointing);
* bf16: bf16 autocast alone (this CPU's AMX/AVX-512 bf16 units), to measure its speed and how far it moves the loss;
* TRL defaults: bf16 autocast and gradient checkpointing, as DPOConfig defaults to.

Data: the shipped arithmetic pairs, the shipped sorting pairs (multi-response rows expanded to pairs), and a generated
set with long answers (lists of a few hundred tokens, from `long_answer_rows`). Each run is a fresh subprocess so its
peak memory (VmHWM) is its own; the trainers alternate. Per run: pairs/s and tokens/s over the timed steps (the
first step is warm-up), peak memory, the per-step training losses (both trainers' must agree), and evaluation time
on the held-out pairs: the step-0 evaluation, one after training, and, for ours, a single policy forward over the
same pairs (the yardstick of "an evaluation costs about 1.3x a policy forward"). Ours evaluates with the held-out KL
(its default); plain TRL has none.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "eval" / "results"
SETTINGS = {  # name: (bf16 autocast, gradient checkpointing)
    "fp32": (False, False),
    "bf16": (True, False),
    "trl-defaults": (True, True),
}
DATASETS = ("arithmetic", "sorting", "long")
IMPLS = ("trl", "ours")


def long_answer_rows(count: int, seed: int) -> list[dict]:
    """Preference pairs with answers of a few hundred tokens: a list of multiples, and the same list with one wrong."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        step, length = rng.randint(3, 19), rng.randint(45, 75)
        numbers = [step * (i + 1) for i in range(length)]
        wrong = list(numbers)
        wrong[rng.randrange(length)] += rng.choice([-1, 1]) * rng.randint(1, step - 1)
        prompt = f"List the first {length} multiples of {step}, separated by commas."
        rows.append(
            {
                "prompt": [{"role": "user", "content": prompt}],
                "chosen": [{"role": "assistant", "content": ", ".join(map(str, numbers)) + "."}],
                "rejected": [{"role": "assistant", "content": ", ".join(map(str, wrong)) + "."}],
            }
        )
    return rows


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _data_overrides(dataset: str, pairs: int, eval_pairs: int, work: Path) -> list[str]:
    if dataset == "long":
        for split, count, seed in (("train", pairs, 0), ("eval", eval_pairs, 1)):
            lines = [json.dumps(row) for row in long_answer_rows(count, seed)]
            (work / f"long-{split}.jsonl").write_text("\n".join(lines) + "\n")
        train, held_out, max_length = work / "long-train.jsonl", work / "long-eval.jsonl", 1024
    else:
        train, held_out = REPO / "data" / dataset / "train.jsonl", REPO / "data" / dataset / "eval.jsonl"
        max_length = 256
    return [
        f"data.train={train}",
        f"data.eval={held_out}",
        f"data.max_train_pairs={pairs}",
        f"data.max_eval_pairs={eval_pairs}",
        f"training.max_length={max_length}",
    ]


def run_one(dataset: str, setting: str, impl: str, quick: bool) -> dict:
    """One measurement, in this (fresh) process."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["TQDM_DISABLE"] = "1"
    import torch
    from provenance import provenance  # eval/, on sys.path as the script's folder
    from transformers import TrainerCallback
    from trl import DPOTrainer

    from dpo.training.execute import trainer_inputs
    from dpo.training.gate import check
    from dpo.training.trainer import Trainer

    work = Path(tempfile.mkdtemp())
    model_name, steps, batch, eval_pairs = "smollm2-135m-instruct", 6, 8, 100 if dataset != "long" else 24
    if quick:
        from tests.conftest import build_tiny_model

        model_name, steps, eval_pairs = str(build_tiny_model(work / "tiny")), 2, 8
    warmup = 1
    bf16, checkpointing = SETTINGS[setting]
    overrides = [
        f"model.name_or_path={model_name}",
        "loss.type=sigmoid",
        f"training.max_steps={steps + warmup}",
        f"training.per_device_train_batch_size={batch}",
        "training.per_device_eval_batch_size=25",
        "training.eval_strategy=no",
        "training.precompute_ref_log_probs=false",  # inline on both sides: every pair is seen once
        "training.save_strategy=no",
        f"training.bf16={str(bf16).lower()}",
        f"training.gradient_checkpointing={str(checkpointing).lower()}",
        "logging.progress_bar=false",
        *_data_overrides(dataset, (steps + warmup) * batch, eval_pairs, work),
    ]
    if quick:
        overrides.append("peft.target_modules=[q_proj, v_proj]")
    if bf16 and not torch.cuda.is_available():
        overrides.append("training.use_cpu=true")  # transformers refuses bf16 without a GPU unless told the CPU
    checked = check(REPO / "recipes" / "plain.yaml", overrides, output_dir=work / "run")

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.losses, self.start = [], [], None

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    timer = StepTimer()
    inputs = trainer_inputs(checked, callbacks=[timer])
    if impl == "trl":
        trainer = DPOTrainer(**inputs)
    else:
        trainer = Trainer(**inputs, loss_plan=checked.loss_plan, heldout_kl=True, heldout_kl_pairs=16)
    result = {
        "dataset": dataset,
        "setting": setting,
        "impl": impl,
        "bf16": bf16,
        "gradient_checkpointing": checkpointing,
        **provenance(),  # a resumed benchmark may mix code versions and thread counts: each run says its own
    }
    if impl == "ours":
        result["prompt_shared"] = trainer.share_prompt
    started = time.perf_counter()
    trainer.evaluate()
    result["eval_step0_s"] = time.perf_counter() - started
    trainer.train()
    started = time.perf_counter()
    metrics = trainer.evaluate()
    result["eval_s"] = time.perf_counter() - started
    result["eval_rewards/accuracies"] = metrics.get("eval_rewards/accuracies")
    if impl == "ours":
        result["layouts"] = dict(trainer.layouts_used)  # forward passes per layout, training and evaluation
        result["policy_forward_s"] = _policy_forward_s(trainer, torch)
    tokens = _tokens_per_pair(trainer)
    timed = timer.times[warmup:]
    result.update(
        {
            "steps_timed": len(timed),
            "pairs_per_s": len(timed) * batch / sum(timed),
            "tokens_per_s": len(timed) * batch * tokens / sum(timed),
            "median_step_s": statistics.median(timed),
            "peak_rss_mib": peak_rss_mib(),
            "losses": timer.losses,
            "train_tokens_per_pair": tokens,
        }
    )
    return result


def _tokens_per_pair(trainer) -> float:
    """Tokens of a pair as TRL feeds them (prompt + chosen, prompt + rejected), mean over the training set."""
    ds = trainer.train_dataset
    total = sum(
        2 * len(p) + len(c) + len(r)
        for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"], strict=True)
    )
    return total / len(ds)


def _policy_forward_s(trainer, torch) -> float:
    """One fused policy forward over the held-out pairs, nothing else: the unit an evaluation is measured in."""
    trainer.model.eval()
    started = time.perf_counter()
    with torch.no_grad(), trainer.accelerator.autocast():
        for batch in trainer.get_eval_dataloader():
            trainer._sequence_logps(trainer.model, trainer._prepare_inputs(batch))
    return time.perf_counter() - started


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        for setting in dict.fromkeys(r["setting"] for r in runs):
            by = {r["impl"]: r for r in runs if r["dataset"] == dataset and r["setting"] == setting}
            if set(by) != set(IMPLS):
                continue
            ours, trl = by["ours"], by["trl"]
            rows.append(
                {
                    "dataset": dataset,
                    "setting": setting,
                    "pairs_per_s": {"trl": trl["pairs_per_s"], "ours": ours["pairs_per_s"]},
                    "speedup": ours["pairs_per_s"] / trl["pairs_per_s"],
                    "tokens_per_s": {"trl": trl["tokens_per_s"], "ours": ours["tokens_per_s"]},
                    "peak_rss_mib": {"trl": trl["peak_rss_mib"], "ours": ours["peak_rss_mib"]},
                    "eval_s": {"trl": trl["eval_s"], "ours": ours["eval_s"]},
                    "eval_step0_s": {"trl": trl["eval_step0_s"], "ours": ours["eval_step0_s"]},
                    "eval_over_policy_forward": ours["eval_s"] / ours["policy_forward_s"],
                    "max_loss_difference": max(
                        (abs(a - b) for a, b in zip(ours["losses"], trl["losses"], strict=True)), default=0.0
                    ),
                    "prompt_shared": ours.get("prompt_shared"),
                    "layouts": ours.get("layouts"),
                }
            )
    fp32 = {r["dataset"]: r for r in rows if r["setting"] == "fp32"}
    for row in rows:  # bf16 against fp32, ours: speed and how far the loss moves
        base = fp32.get(row["dataset"])
        if base and row["setting"] != "fp32":
            same = [r for r in runs if r["impl"] == "ours" and r["dataset"] == row["dataset"]]
            losses = {r["setting"]: r["losses"] for r in same}
            row["ours_vs_fp32"] = {
                "speed": row["pairs_per_s"]["ours"] / base["pairs_per_s"]["ours"],
                "max_loss_change": max(abs(a - b) for a, b in zip(losses[row["setting"]], losses["fp32"], strict=True)),
            }
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| data | setting | pairs/s TRL / ours | speedup | tokens/s TRL / ours | peak RSS MiB TRL / ours | "
        "eval s TRL / ours (step 0: TRL / ours) | ours: eval / policy forward | max step-loss difference | "
        "ours vs fp32: speed, max loss change |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        vs = r.get("ours_vs_fp32")
        lines.append(
            f"| {r['dataset']} | {r['setting']} | {r['pairs_per_s']['trl']:.2f} / {r['pairs_per_s']['ours']:.2f} | "
            f"**{r['speedup']:.2f}x** | {r['tokens_per_s']['trl']:.0f} / {r['tokens_per_s']['ours']:.0f} | "
            f"{r['peak_rss_mib']['trl']:.0f} / {r['peak_rss_mib']['ours']:.0f} | "
            f"{r['eval_s']['trl']:.1f} / {r['eval_s']['ours']:.1f} "
            f"({r['eval_step0_s']['trl']:.1f} / {r['eval_step0_s']['ours']:.1f}) | "
            f"{r['eval_over_policy_forward']:.2f} | {r['max_loss_difference']:.1e} | "
            + (f"{vs['speed']:.2f}x, {vs['max_loss_change']:.1e} |" if vs else "- |")
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny random model, 2 timed steps per run")
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--one", nargs=3, metavar=("DATASET", "SETTING", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one, quick=args.quick)))
        return
    name = "speed_quick" if args.quick else "speed"
    args.results.mkdir(parents=True, exist_ok=True)
    # Resumable: each finished run is recorded here and skipped when the script starts again (the long-answer runs
    # take minutes each on 2 cores); the tables cover every run in the file.
    runs_file = args.results / f"{name}.runs.jsonl"
    runs = []
    for line in runs_file.read_text().splitlines() if runs_file.exists() else []:
        try:
            runs.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut off by a kill: that run is timed again
            print(f"note: skipping a cut-off line of {runs_file}", flush=True)
    for i, (dataset, setting) in enumerate((d, s) for d in args.datasets for s in args.settings):
        recorded = {r["impl"] for r in runs if (r["dataset"], r["setting"]) == (dataset, setting)}
        if recorded == set(IMPLS):
            continue
        # a row's two trainers are timed one after the other, never hours apart under another load: a half-done row
        # is timed again in full
        runs = [r for r in runs if (r["dataset"], r["setting"]) != (dataset, setting)]
        for impl in IMPLS if i % 2 == 0 else reversed(IMPLS):
            command = [sys.executable, __file__, "--one", dataset, setting, impl] + (["--quick"] if args.quick else [])
            proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
            if proc.returncode != 0:
                raise SystemExit(f"{dataset}/{setting}/{impl} failed:\n{proc.stderr[-3000:]}")
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            partial = runs_file.with_suffix(".tmp")  # replaced in one step: a kill never leaves half a file
            partial.write_text("".join(json.dumps(r) + "\n" for r in runs))
            os.replace(partial, runs_file)
            print({k: v for k, v in runs[-1].items() if k != "losses"}, flush=True)
    rows = summarise(runs)
    (args.results / f"{name}.json").write_text(json.dumps({"rows": rows, "runs": runs}, indent=2) + "\n")
    (args.results / f"{name}.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
