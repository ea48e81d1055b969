"""Sweep benchmark: the same grid sweep with and without median pruning + early stopping. How many training steps
does each spend, and does the cheap one find the same best configuration? Goal: the same best for at most 40% of
the steps.

    python eval/bench_sweep_pruning.py            # 6 trials x 2 sweeps on a small random Llama (~20 min, 2 CPU cores)
    python eval/bench_sweep_pruning.py --smoke    # 2 trials x 2 sweeps, 4 steps each (~2 min; for tests)

Both sweeps run `dpo sweep` (one trial at a time, grid sampler with the same seed: the same trials in the same
order) over learning rate x LoRA rank, objective held-out DPO loss (beta fixed, so losses compare across
trials). The cheap sweep adds `pruner: median` and early stopping on the same held-out loss (patience 2); its
objective for an early-stopped trial is the restored best checkpoint's value.

The embedded 135M model would take hours per sweep on this CPU, so the model is a small random Llama (4 layers,
hidden 128, character tokenizer) trained on the shipped arithmetic pairs. Its held-out loss moves away from
log 2 within 30 steps, by an amount that depends on the learning rate and rank (mostly upwards:
a random model this small learns little arithmetic; see the results file for what this does and does not show).

Writes eval/results/sweep_pruning.json and eval/results/sweep_pruning.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SEARCH = {"training.learning_rate": {"grid": [3.0e-3, 1.0e-2, 3.0e-2]}, "peft.r": {"grid": [2, 8]}}
SMOKE_SEARCH = {"training.learning_rate": {"grid": [1.0e-2, 1.0e-3]}}
PRUNER = {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 10}
EARLY_STOPPING = {"early_stopping.metric": "eval_loss", "early_stopping.patience": 2}


def build_model(path: Path, smoke: bool) -> Path:
    from tests.conftest import build_tiny_model

    if smoke:
        return build_tiny_model(path)
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tiny = build_tiny_model(path)  # for its tokenizer; the model is replaced by a larger one
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def base_recipe(model: Path, smoke: bool) -> dict:
    data = REPO / "data" / "arithmetic"
    steps, every = (4, 2) if smoke else (30, 5)
    return {
        "name": "bench-sweep",
        "seed": 0,
        "model": {"name_or_path": str(model)},
        "peft": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"},
        "data": {
            "train": str(data / "train.jsonl"),
            "eval": str(data / "eval.jsonl"),
            "max_train_pairs": 16 if smoke else 240,
            "max_eval_pairs": 8 if smoke else 40,
        },
        "loss": {"type": "sigmoid", "beta": 0.1},
        "training": {
            "max_steps": steps,
            "eval_steps": every,
            "per_device_train_batch_size": 4 if smoke else 8,
            "per_device_eval_batch_size": 30,
            "max_length": 96,
        },
        "logging": {"progress_bar": False},
    }


def run_sweep(name: str, spec: dict, work: Path) -> tuple[dict, float]:
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    started = time.time()
    cmd = [sys.executable, "-m", "dpo", "sweep", str(path), "--output-dir", str(work / name)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"sweep {name} failed:\n{proc.stderr[-3000:]}")
    print(proc.stdout, flush=True)
    return json.loads((work / name / "sweep_summary.json").read_text()), time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model, 2 trials of 4 steps per sweep")
    parser.add_argument("--results", type=Path, default=REPO / "eval" / "results")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        work = Path(tmp)
        model = build_model(work / "model", args.smoke)
        (work / "base.yaml").write_text(yaml.safe_dump(base_recipe(model, args.smoke), sort_keys=False))
        common = {
            "recipe": str(work / "base.yaml"),
            "objective": {"metric": "eval_loss", "direction": "minimize"},
            "sampler": "grid",
            "seed": 0,
            "search": SMOKE_SEARCH if args.smoke else SEARCH,
        }
        full, full_s = run_sweep("full", {**common, "pruner": "none"}, work)
        cheap_pruner = {**PRUNER, "n_startup_trials": 1, "n_warmup_steps": 0} if args.smoke else PRUNER
        cheap, cheap_s = run_sweep("pruned", {**common, "pruner": cheap_pruner, "fixed": EARLY_STOPPING}, work)

    ratio = cheap["steps_total"] / full["steps_total"]
    result = {
        "smoke": args.smoke,
        "search": common["search"],
        "pruner": cheap_pruner,
        "early_stopping": EARLY_STOPPING,
        "full": _digest(full, full_s),
        "pruned": _digest(cheap, cheap_s),
        "steps_ratio": round(ratio, 3),
        "same_best": full["best_params"] == cheap["best_params"],
        "goal_met": full["best_params"] == cheap["best_params"] and ratio <= 0.40,
    }
    suffix = "_smoke" if args.smoke else ""
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"sweep_pruning{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.results / f"sweep_pruning{suffix}.md").write_text(markdown(result))
    print(markdown(result))


def _digest(summary: dict, seconds: float) -> dict:
    return {
        "steps_total": summary["steps_total"],
        "steps_saved_by_pruning": summary["steps_saved_by_pruning"],
        "best_params": summary["best_params"],
        "best_value": summary["best_value"],
        "wall_s": round(seconds, 1),
        "trials": [{k: t[k] for k in ("number", "state", "params", "value", "steps")} for t in summary["trials"]],
    }


def markdown(result: dict) -> str:
    full, cheap = result["full"], result["pruned"]
    lines = [
        "| sweep | training steps | best configuration | best held-out loss | wall time (s) |",
        "|---|---:|---|---:|---:|",
    ]
    for name, d in (("no pruning, no early stopping", full), ("median pruning + early stopping", cheap)):
        best = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in d["best_params"].items())
        lines.append(f"| {name} | {d['steps_total']} | {best} | {d['best_value']:.4f} | {d['wall_s']:.0f} |")
    verdict = "met" if result["goal_met"] else "not met"
    lines += [
        "",
        f"Steps: {result['steps_ratio']:.0%} of the full sweep; same best configuration: "
        f"{'yes' if result['same_best'] else 'no'}. Goal (same best, at most 40% of the steps): {verdict}.",
        "",
        "| trial | params | full: loss (steps) | pruned/early-stopped: state, loss (steps) |",
        "|---:|---|---|---|",
    ]
    for a, b in zip(full["trials"], cheap["trials"], strict=False):
        params = ", ".join(f"{k.split('.')[-1]}={v:g}" for k, v in a["params"].items())
        value = f"{b['value']:.4f}" if b["value"] is not None else "-"
        lines.append(
            f"| {a['number']} | {params} | {a['value']:.4f} ({a['steps']}) | {b['state']}, {value} ({b['steps']}) |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
