"""Overfitting benchmark: plain DPO vs each control, with 0% and 30% of the training labels flipped.

    python eval/bench_overfitting.py                  # embedded model, both noise levels (~60 min, 2 idle CPU cores)
    python eval/bench_overfitting.py --smoke          # tiny random model, 2 steps per run (~1 min; for tests)

Every run starts from recipes/plain.yaml (the quickstart without its autopilot) with the same budget (several
passes over a small training set, so that memorisation can happen) and evaluates on clean held-out pairs
(label noise is injected into the training split only), so held-out accuracy is measured against the true
labels. Early stopping on margin, loss and accuracy is judged on the plain run's own evaluations (patience 2):
the stop a callback would have made, and the metrics of the checkpoint it would have restored, without re-
training; that checkpoint is chosen on the same held-out pairs it is scored on (optimistic: best of the
evaluations; bench_noise.py keeps a separate test split).

Writes eval/results/overfitting.json and eval/results/overfitting.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

sys.path.insert(0, str(Path(__file__).resolve().parent))  # eval/ is not a package

from bench_noise import append_run  # noqa: E402

from dpo.training.callbacks import BestCheckpointCallback  # noqa: E402

REPORTED = ("eval_rewards/accuracies", "eval_rewards/margins", "eval_logratios/chosen", "eval_logps/accuracies")

# Control name -> recipe overrides. `{noise}` is replaced by the run's flip rate (robust DPO is told the rate).
CONTROLS: dict[str, list[str]] = {
    "plain": [],
    "cdpo": ["loss.label_smoothing=0.1"],
    "ipo": ["loss.type=ipo"],
    "robust": ["loss.type=robust", "loss.label_smoothing={robust_rate}"],
    "dpop": ["loss.type=dpop", "loss.dpop_lambda=50"],
    "nll": ["regularizers.nll_weight=1.0"],
    "beta_dpo": ["loss.beta_schedule={type: adaptive, alpha: 0.6, momentum: 0.9, keep_fraction: 0.8}"],
    # the losses of issue 16 (docs/losses.md), each with its recipe's settings. ODPO is not here: it needs rated
    # data (score gaps), and the arithmetic pairs have none.
    "cal_dpo": ["loss.type=cal_dpo"],
    "dpo_shift": ["loss.type=dpo_shift", "loss.shift_lambda=0.75"],
    "chi_po": ["loss.type=chi_po", "loss.chi_clip=10.0"],
    "dr_dpo": ["loss.type=dr_dpo", "loss.dr_dpo_beta_prime=1.0"],
    # reference-free: nothing to precompute; their rewards are beta * log pi / |y|, so "held-out acc." is the share
    # of pairs where the policy gives the chosen answer the higher per-token log-likelihood (from the base model's
    # preference, not chance; runs before the trainer logged it per token: the summed log-likelihood), and the
    # chosen log-ratio is n/a
    "simpo": ["loss.type=simpo", "loss.beta=2.0", "loss.simpo_gamma=1.0", "training.precompute_ref_log_probs=false"],
    "orpo": ["loss.type=orpo", "loss.beta=0.1", "training.precompute_ref_log_probs=false"],
}
EARLY_STOPPING = ("eval_rewards/margins", "eval_loss", "eval_rewards/accuracies")

BUDGET = [  # 80 training pairs seen 3 times; 40 clean held-out pairs every 5 steps
    "data.max_train_pairs=80",
    "data.max_eval_pairs=40",
    "training.max_steps=30",
    "training.eval_steps=5",
    "training.per_device_eval_batch_size=40",
    "logging.progress_bar=false",
]
SMOKE = ["data.max_train_pairs=16", "data.max_eval_pairs=8", "training.max_steps=2", "training.eval_steps=1"]


def run(control: str, noise: float, out: Path, base: list[str]) -> dict:
    import dpo

    robust_rate = noise if noise > 0 else 0.1
    # the budget first, the control last: a control's keys win
    overrides = [*base, *(o.replace("{robust_rate}", str(robust_rate)) for o in CONTROLS[control])]
    if noise > 0:
        overrides.append(f"data.augment=[{{type: label_noise, fraction: {noise}}}]")
    run_dir = out / f"noise{int(noise * 100)}-{control}"
    started = time.time()
    summary = dpo.train(REPO / "recipes" / "plain.yaml", overrides=overrides, output_dir=run_dir)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = summary["final_metrics"]
    return {
        "control": control,
        "noise": noise,
        "steps": summary["steps"],
        "wall_s": round(time.time() - started, 1),
        **{k: final.get(k) for k in REPORTED},
        "evaluations": [
            {k: h[k] for k in ("step", *REPORTED, "eval_loss") if k in h} for h in history if "eval_loss" in h
        ],
    }


def early_stopping_rows(plain: dict) -> list[dict]:
    """What early stopping (patience 2) on each metric would have done to the plain run."""
    rows = []
    for metric in EARLY_STOPPING:
        callback = BestCheckpointCallback(metric, patience=2)
        stopped = None
        for e in plain["evaluations"]:
            _, stop = callback.update(e["step"], e[metric])
            if stop:
                stopped = e["step"]
                break
        best = next(e for e in plain["evaluations"] if e["step"] == callback.best_step)
        rows.append(
            {
                "control": f"early_stop_{metric.removeprefix('eval_').replace('rewards/', '')}",
                "noise": plain["noise"],
                "steps": stopped if stopped is not None else plain["steps"],
                **{k: best.get(k) for k in REPORTED},
                "best_step": callback.best_step,
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| noise | control | held-out acc. (true labels) | vs plain | held-out margin | chosen log-ratio | "
        "policy prefers chosen | steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for noise in sorted({r["noise"] for r in rows}):
        group = [r for r in rows if r["noise"] == noise]
        plain = next((r["eval_rewards/accuracies"] for r in group if r["control"] == "plain"), None)
        for r in group:
            delta = "n/a" if plain is None else f"{r['eval_rewards/accuracies'] - plain:+.3f}"
            logratio = r.get("eval_logratios/chosen")  # not logged without a reference (simpo, orpo)
            lines.append(
                f"| {noise:.0%} | {r['control']} | {r['eval_rewards/accuracies']:.3f} | {delta} | "
                f"{r['eval_rewards/margins']:.3f} | {'n/a' if logratio is None else f'{logratio:.2f}'} | "
                f"{r['eval_logps/accuracies']:.3f} | {r['steps']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny random model, 2 steps per run")
    parser.add_argument("--noise", type=float, nargs="*", default=[0.0, 0.3])
    parser.add_argument("--controls", nargs="*", default=list(CONTROLS))
    parser.add_argument("--results", type=Path, default=REPO / "eval" / "results")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bench-overfitting-"))
    base = BUDGET
    if args.smoke:
        from tests.conftest import build_tiny_model

        base = [
            *SMOKE,
            f"model.name_or_path={build_tiny_model(out / 'tiny')}",
            "peft.target_modules=[q_proj, v_proj]",
        ]
        base.append("logging.progress_bar=false")
    args.results.mkdir(parents=True, exist_ok=True)
    name = "overfitting_smoke" if args.smoke else "overfitting"
    # Each finished run is appended to a runs file, so an interrupted benchmark (it takes over an hour on CPU)
    # picks up where it stopped, and runs made by separate invocations (--noise 0.3, later --noise 0) add up:
    # the tables cover every run in the file.
    runs_file = args.results / f"{name}.runs.jsonl"
    done = []
    for line in runs_file.read_text().splitlines() if runs_file.exists() else []:
        try:
            done.append(json.loads(line))
        except json.JSONDecodeError:  # the last line of a run cut off by a kill: that run trains again
            print(f"note: skipping a cut-off line of {runs_file}", flush=True)
    for noise in args.noise:
        for control in args.controls:
            if not any(r["control"] == control and r["noise"] == noise for r in done):
                done.append(run(control, noise, out, base))
                append_run(runs_file, done[-1])
                print(json.dumps({k: v for k, v in done[-1].items() if k != "evaluations"}), flush=True)
    rows = []
    for noise in sorted({r["noise"] for r in done}):
        group = sorted((r for r in done if r["noise"] == noise), key=lambda r: list(CONTROLS).index(r["control"]))
        rows.extend(group)
        plain = next((r for r in group if r["control"] == "plain"), None)
        if plain is not None:
            rows.extend(early_stopping_rows(plain))
    (args.results / f"{name}.json").write_text(json.dumps({"budget": base, "rows": rows}, indent=2) + "\n")
    (args.results / f"{name}.md").write_text(table(rows) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
