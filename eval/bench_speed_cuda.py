"""Speed on CUDA GPUs: plain TRL DPOTrainer against ours, bf16, SDPA, Liger kernels where installed, one or more GPUs.

    python eval/bench_speed_cuda.py                                          # one GPU
    accelerate launch --num_processes 2 eval/bench_speed_cuda.py             # two GPUs (DDP through accelerate)
    python eval/bench_speed_cuda.py --quick                                  # tiny random model (a smoke run)

The counterpart of eval/bench_speed.py (CPU) for a device run: the same recipe (recipes/plain.yaml, plain
DPO), the same three data sets (arithmetic, sorting, generated long answers), in bf16 autocast with SDPA attention,
with Liger's layer kernels (RMSNorm, RoPE, SwiGLU; not its fused cross-entropy, which TRL's fused LM head replaces)
when the `liger_kernel` package is installed, and each trainer in turn in this process (both see the same GPU; peak
memory is torch.cuda.max_memory_allocated, reset between them). It prints, on the main process, one line per
(data, trainer) and a table:

    data | pairs/s TRL / ours | speedup | tokens/s TRL / ours | peak GiB TRL / ours | eval s TRL / ours |
    max step-loss difference

pairs/s and tokens/s count every process's pairs (global batch = per-device batch x processes). Writes nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "eval"))

from bench_speed import _data_overrides  # noqa: E402

DATASETS = ("arithmetic", "sorting", "long")


def _apply_liger(model) -> str:
    """Liger's layer kernels on a Llama-family model, where the package is installed; what was done, in words."""
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        return "not installed"
    _apply_liger_kernel_to_instance(model=model, fused_linear_cross_entropy=False, cross_entropy=False)
    return "on"


def run(dataset: str, impl: str, quick: bool, steps: int, batch: int) -> dict:
    import torch
    from transformers import TrainerCallback
    from trl import DPOTrainer

    from dpo.training.execute import trainer_inputs
    from dpo.training.gate import check
    from dpo.training.trainer import Trainer

    work = Path(tempfile.mkdtemp())
    model_name, eval_pairs = "smollm2-135m-instruct", 100
    if quick:
        from tests.conftest import build_tiny_model

        model_name, steps, eval_pairs = str(build_tiny_model(work / "tiny")), 2, 8
    warmup = 1
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    overrides = [
        f"model.name_or_path={model_name}",
        "loss.type=sigmoid",
        f"training.max_steps={steps + warmup}",
        f"training.per_device_train_batch_size={batch}",
        "training.per_device_eval_batch_size=32",
        "training.eval_strategy=no",
        "training.precompute_ref_log_probs=false",
        "training.save_strategy=no",
        "training.bf16=true",
        "logging.progress_bar=false",
        *_data_overrides(dataset, (steps + warmup) * batch * processes, eval_pairs, work),
    ]
    checked = check(REPO / "recipes" / "plain.yaml", overrides, output_dir=work / "run")

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self.losses, self.start = [], [], None

        def on_step_begin(self, args, state, control, **kwargs):
            torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.start)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    timer = StepTimer()
    inputs = trainer_inputs(checked, callbacks=[timer])
    inputs["model"].config._attn_implementation = "sdpa"
    liger = _apply_liger(inputs["model"])
    torch.cuda.reset_peak_memory_stats()
    if impl == "trl":
        trainer = DPOTrainer(**inputs)
    else:
        trainer = Trainer(**inputs, loss_plan=checked.loss_plan, heldout_kl=True, heldout_kl_pairs=16)
    trainer.evaluate()
    trainer.train()
    started = time.perf_counter()
    trainer.evaluate()
    eval_s = time.perf_counter() - started
    timed = timer.times[warmup:]
    ds = trainer.train_dataset
    pairs_tokens = [
        2 * len(p) + len(c) + len(r)
        for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"], strict=True)
    ]
    global_batch = batch * processes
    return {
        "dataset": dataset,
        "impl": impl,
        "liger": liger,
        "processes": processes,
        "pairs_per_s": len(timed) * global_batch / sum(timed),
        "tokens_per_s": len(timed) * global_batch * statistics.fmean(pairs_tokens) / sum(timed),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "eval_s": eval_s,
        "losses": timer.losses,
        "trainer": trainer,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16, help="pairs per device per step")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["TQDM_DISABLE"] = "1"
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use eval/bench_speed.py on a CPU")
    main_process = int(os.environ.get("RANK", "0")) == 0
    lines = [
        "| data | pairs/s TRL / ours | speedup | tokens/s TRL / ours | peak GiB TRL / ours | eval s TRL / ours | "
        "max step-loss difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset in args.datasets:
        by = {}
        for impl in ("trl", "ours"):
            result = run(dataset, impl, args.quick, args.steps, args.batch)
            trainer = result.pop("trainer")
            if impl == "ours":
                result["layouts"] = dict(trainer.layouts_used)
            del trainer
            torch.cuda.empty_cache()
            by[impl] = result
            if main_process:
                print({k: v for k, v in result.items() if k != "losses"}, flush=True)
        trl, ours = by["trl"], by["ours"]
        difference = max((abs(a - b) for a, b in zip(trl["losses"], ours["losses"], strict=True)), default=0.0)
        lines.append(
            f"| {dataset} | {trl['pairs_per_s']:.1f} / {ours['pairs_per_s']:.1f} | "
            f"{ours['pairs_per_s'] / trl['pairs_per_s']:.2f}x | "
            f"{trl['tokens_per_s']:.0f} / {ours['tokens_per_s']:.0f} | "
            f"{trl['peak_gib']:.2f} / {ours['peak_gib']:.2f} | {trl['eval_s']:.2f} / {ours['eval_s']:.2f} | "
            f"{difference:.1e} |"
        )
    if main_process:
        print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
