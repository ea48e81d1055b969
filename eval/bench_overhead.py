"""Overhead of our loss override: the same DPO training through dpo.training.trainer.Trainer and through plain TRL.

    python eval/bench_overhead.py                 # all cases, ~9 min on 2 CPU cores
    python eval/bench_overhead.py --repeats 1     # quicker, noisier

Both sides get the same model, LoRA config, data, batch, step count and DPOConfig (built from
recipes/plain.yaml with evaluation off); only the trainer class differs, with plain DPO (sigmoid)
on both so the computation is the same. Each measurement runs in a fresh subprocess so peak memory
(VmHWM, the resident-set high-water mark) is that run's own; the two sides alternate, and the median
step time over repeats is reported. Writes eval/results/overhead.json and eval/results/overhead.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "eval" / "results"
CASES = {
    # name: (model, steps timed, warm-up steps excluded, pairs per step)
    "tiny": ("tiny", 30, 3, 8),
    "smollm2-135m": ("smollm2-135m-instruct", 6, 1, 8),
}


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_case(case: str, impl: str) -> dict:
    """One measurement, in this (fresh) process."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["TQDM_DISABLE"] = "1"
    from transformers import TrainerCallback
    from trl import DPOTrainer

    from dpo.training.execute import trainer_inputs
    from dpo.training.gate import check
    from dpo.training.trainer import Trainer

    model_name, steps, warmup, batch = CASES[case]
    if model_name == "tiny":
        sys.path.insert(0, str(REPO))
        from tests.conftest import build_tiny_model

        model_name = str(build_tiny_model(Path(tempfile.mkdtemp()) / "tiny"))
    overrides = [
        f"model.name_or_path={model_name}",
        "loss.type=sigmoid",
        f"training.max_steps={steps + warmup}",
        f"training.per_device_train_batch_size={batch}",
        "training.eval_strategy=no",
        "training.precompute_ref_log_probs=false",
        "training.save_strategy=no",  # no periodic checkpoints: the same work on both sides as before resume existed
        f"data.max_train_pairs={(steps + warmup) * batch}",
        "logging.progress_bar=false",
    ]
    if case == "tiny":
        overrides.append("peft.target_modules=[q_proj, v_proj]")
    checked = check(REPO / "recipes" / "plain.yaml", overrides, output_dir=tempfile.mkdtemp())

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.start = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    timer = StepTimer()
    inputs = trainer_inputs(checked, callbacks=[timer])
    if impl == "trl":
        trainer = DPOTrainer(**inputs)
    else:
        # prompt sharing off: it saves work TRL does (eval/bench_speed.py measures that); this measures the override
        trainer = Trainer(**inputs, loss_plan=checked.loss_plan, share_prompt=False)
    trainer.train()
    step_times = timer.times[warmup:]
    return {
        "case": case,
        "impl": impl,
        "steps_timed": len(step_times),
        "median_step_s": statistics.median(step_times),
        "mean_step_s": statistics.fmean(step_times),
        "peak_rss_mib": peak_rss_mib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--one", nargs=2, metavar=("CASE", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_case(*args.one)))
        return
    runs = []
    for case in args.cases:
        for repeat in range(args.repeats):
            for impl in ("ours", "trl") if repeat % 2 == 0 else ("trl", "ours"):
                proc = subprocess.run(
                    [sys.executable, __file__, "--one", case, impl], capture_output=True, text=True, cwd=REPO
                )
                if proc.returncode != 0:
                    raise SystemExit(f"{case}/{impl} failed:\n{proc.stderr[-3000:]}")
                runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(runs[-1], flush=True)
    summary = {}
    for case in args.cases:
        by = {impl: [r for r in runs if r["case"] == case and r["impl"] == impl] for impl in ("ours", "trl")}
        step = {impl: statistics.median(r["median_step_s"] for r in rs) for impl, rs in by.items()}
        mem = {impl: statistics.median(r["peak_rss_mib"] for r in rs) for impl, rs in by.items()}
        summary[case] = {
            "median_step_s": step,
            "peak_rss_mib": mem,
            "step_time_ratio": step["ours"] / step["trl"],
            "peak_memory_ratio": mem["ours"] / mem["trl"],
            "repeats": args.repeats,
        }
    args.results.mkdir(parents=True, exist_ok=True)
    from provenance import provenance  # eval/, on sys.path as the script's folder

    record = {"summary": summary, "runs": runs, **provenance()}
    (args.results / "overhead.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "| model | step time ours / TRL (s) | ratio | peak RSS ours / TRL (MiB) | ratio |",
        "|---|---|---|---|---|",
    ]
    for case, s in summary.items():
        lines.append(
            f"| {case} | {s['median_step_s']['ours']:.3f} / {s['median_step_s']['trl']:.3f} | "
            f"{s['step_time_ratio']:.3f} | {s['peak_rss_mib']['ours']:.0f} / {s['peak_rss_mib']['trl']:.0f} | "
            f"{s['peak_memory_ratio']:.3f} |"
        )
    (args.results / "overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
