"""The README's quickstart table: the quickstart recipe and two baselines, trained on the embedded model one after
another, their held-out numbers read from each run's summary.json and metrics.jsonl.

    python eval/bench_quickstart.py            # three runs, about 12 minutes on 2 idle CPU cores
    python eval/bench_quickstart.py --no-train # the tables again from eval/results/quickstart.json

Each run is `python -m dpo train` in a fresh process (so its wall time is its own, set-up and model loading
included) into a temporary run directory. Measure on an idle machine: the wall times are part of the table.
Writes eval/results/quickstart.{json,md}; the README's table is the one at the end of quickstart.md
(tests/test_docs.py checks that the two are equal).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "eval" / "results"

# name: (column heading, recipe, overrides)
RUNS = {
    "quickstart": ("quickstart: autopilot (`quickstart.yaml`)", "recipes/quickstart.yaml", []),
    "nll": ("DPO + NLL, weight 1 (the quickstart before)", "recipes/plain.yaml", ["regularizers.nll_weight=1"]),
    "plain": ("plain DPO (`plain.yaml`)", "recipes/plain.yaml", []),
}
# held-out metric: row heading (the first column reads them from the base model, step 0)
ROWS = {
    "eval_rewards/accuracies": "reward accuracy (`eval_rewards/accuracies`)",
    "eval_logps/accuracies": "the model itself prefers the chosen answer (`eval_logps/accuracies`)",
    "eval_logratios/chosen": "mean log pi/pi_ref of chosen answers (`eval_logratios/chosen`, nats)",
    "eval_rewards/margins": "reward margin (`eval_rewards/margins`)",
    "eval_kl": "KL(policy ‖ reference) per held-out answer (`eval_kl`, nats, first {kl_pairs} pairs; ± standard error)",
}
CURVE = ("eval_rewards/accuracies", "eval_logps/accuracies", "eval_logratios/chosen")


def train(name: str, run_dir: Path, extra: list[str]) -> dict:
    """One run of RUNS[name] (with the overrides `extra` after its own) into run_dir; what the tables need from its
    summary.json and metrics.jsonl."""
    from provenance import commit  # eval/, on sys.path as the script's folder

    from dpo.rundir.files import kept_weights, read_metrics

    _, recipe, own = RUNS[name]
    overrides = [*own, *extra]
    command = [sys.executable, "-m", "dpo", "train", recipe, "--output-dir", str(run_dir)]
    for override in overrides:
        command += ["--set", override]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True)
    wall_s = time.perf_counter() - started
    summary = json.loads((run_dir / "summary.json").read_text())
    evaluations = [{"step": row["step"], **{key: row[key] for key in CURVE}}
                   for row in read_metrics(run_dir) if "eval_rewards/accuracies" in row]  # fmt: skip
    final_step, final = kept_weights(summary)
    return {
        "name": name,
        "recipe": recipe,
        "overrides": overrides,
        "commit": commit(),
        "wall_s": round(wall_s, 1),
        "runtime_s": summary["runtime_s"],
        "steps": summary["steps"],
        "final_weights": summary["final_weights"],  # best (restored) or last
        "initial": summary["initial_metrics"],
        "final_step": final_step,  # the step and the held-out numbers of the weights in final/
        "final": final,
        "evaluations": evaluations,
        "decisions": (summary.get("autopilot") or {}).get("decisions", []),
        "warnings": summary["overfitting"]["warnings"],
    }


def _value(metrics: dict, key: str) -> str:
    if key == "eval_kl":
        return f"{metrics[key]:.2f} ± {metrics['eval_se/kl']:.2f}"
    if key == "eval_logratios/chosen":
        return f"{metrics[key]:+.2f}"
    return f"{metrics[key]:.2f}"


def markdown(runs: dict[str, dict]) -> str:
    """The README's table (base model, then each run's `final/` weights) and what the table leaves out."""
    from dpo.config.schema import LoggingSection
    from dpo.training.autopilot import describe

    first = runs["quickstart"]
    header = ["held-out pairs", "base model (step 0)"]
    header += [f"{RUNS[name][0]}, `final/` = step {run['final_step']}" for name, run in runs.items()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    kl_pairs = LoggingSection.model_fields["heldout_kl_pairs"].default  # the recipes keep the default
    for key, heading in ROWS.items():
        heading = heading.format(kl_pairs=kl_pairs)
        cells = [_value(first["initial"], key) if key != "eval_kl" else "0"]
        cells += [_value(run["final"], key) for run in runs.values()]
        lines.append(f"| {heading} | " + " | ".join(cells) + " |")
    peak = []
    for run in runs.values():
        best = max(run["evaluations"], key=lambda row: row["eval_logps/accuracies"])
        peak.append(f"{best['eval_logps/accuracies']:.2f} (step {best['step']})")
    lines.append("| the model prefers the chosen answer, highest over the evaluations | | " + " | ".join(peak) + " |")
    lines.append(
        "| wall time (`runtime_s`; in brackets the whole command) | | "
        + " | ".join(f"{run['runtime_s']:.0f} s ({run['wall_s']:.0f} s)" for run in runs.values())
        + " |"
    )
    decisions = [describe(decision) for decision in first["decisions"]] or ["(none)"]
    commits = sorted({str(run["commit"]) for run in runs.values()})
    return "\n".join(
        [
            "Held-out numbers of the weights each run leaves in `final/` (the restored best checkpoint where the run "
            "keeps one), read from its summary.json; `python eval/bench_quickstart.py`, commit "
            f"{', '.join(commits)}.",
            "",
            "The quickstart's autopilot decisions, as its console printed them:",
            "",
            *[f"    {line}" for line in decisions],
            "",
            "The warnings each run's summary gave at its end:",
            "",
            *[f"- {name}: {warning}" for name, run in runs.items() for warning in run["warnings"]],
            "",
            "The README's table:",
            "",
            *lines,
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-train", action="store_true", help="rewrite quickstart.md from quickstart.json")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--set",
        dest="extra",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an override for every run, after the run's own (the tests: a tiny model, fewer steps)",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    json_path = args.results / "quickstart.json"
    if args.no_train:
        runs = json.loads(json_path.read_text())["runs"]
    else:
        runs = {}
        with tempfile.TemporaryDirectory(prefix="bench-quickstart-") as scratch:
            for name in RUNS:
                runs[name] = train(name, Path(scratch) / name, args.extra)
                print(f"{name}: {runs[name]['runtime_s']:.0f} s", flush=True)
        args.results.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"runs": runs}, indent=1) + "\n")
    (args.results / "quickstart.md").write_text(markdown(runs))
    print(markdown(runs))


if __name__ == "__main__":
    main()
