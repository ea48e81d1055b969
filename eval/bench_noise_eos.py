"""Does scoring the sorting test answers with the EOS token change the noise benchmark's verdict?

The trainer appends the EOS token to plain-text answers (the sorting data set) and scores the validation pairs with
it; eval/bench_noise.py scored the test pairs without it, every recorded run. Its newer runs score them both ways
(test "reward"/"policy" without, "reward_eos"/"policy_eos" with). This compares the two scorings on runs that
retrain recorded configurations into their own results folder:

    python eval/bench_noise.py --threads 1 --datasets sorting --noise 0.3 0.4 --seeds 0 1 2 \\
        --methods plain dpo_shift --results eval/results/noise_eos
    python eval/bench_noise.py --threads 1 --datasets sorting --noise 0.3 --seeds 0 1 2 \\
        --methods autopilot --results eval/results/noise_eos
    python eval/bench_noise_eos.py

(it reads only noise.runs.jsonl there; the tables bench_noise.py writes beside it are of the scoring without EOS and
of a partial grid, and are not kept)

Per data set, noise level and method: test accuracy scored without and with EOS, and the paired difference from plain
DPO both ways (95% bootstrap intervals over seeds and test prompts, as bench_noise.py computes them). A retrained run
whose configuration fingerprint, test scores without EOS (reward and policy), validation accuracy and autopilot
decisions equal its recorded run's counts as reproduced: the table says how many are. The runs recorded before
fingerprints existed were given theirs after the fact, from METHODS, so for them the scores are the evidence. Training
is deterministic on one machine and thread count; the recorded runs came from several commits and machines, so a
mismatch need not be a bug. Writes eval/results/noise_eos.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_noise import bootstrap, finished, interval, read_runs, split_heldout, test_prompts  # noqa: E402  (eval/ is not a package)

SCORINGS = {"without EOS (as recorded)": "reward", "with EOS (as validation)": "reward_eos"}


def compare(runs: list[dict], recorded: list[dict], prompts: dict[str, list[list[int]]] | None = None) -> dict:
    """{"dataset/noise": {method: numbers}} for the runs scored both ways; `prompts`: per data set, its test pairs
    grouped by prompt (the bootstrap's unit, as in bench_noise.py)."""
    prompts = prompts or {}
    by_key = {(r["dataset"], r["noise"], r["seed"], r["method"]): r for r in recorded}
    cells: dict[str, dict] = {}
    scored = [r for r in finished(runs) if "reward_eos" in r["test"]]
    for dataset, noise in sorted({(r["dataset"], r["noise"]) for r in scored}):
        in_cell = [r for r in scored if (r["dataset"], r["noise"]) == (dataset, noise)]
        plain = {r["seed"]: r for r in in_cell if r["method"] == "plain"}
        rows = {}
        for method in dict.fromkeys(r["method"] for r in in_cell):
            mine = sorted((r for r in in_cell if r["method"] == method), key=lambda r: r["seed"])
            same = [by_key.get((dataset, noise, r["seed"], method)) for r in mine]
            validation = [r["validation_accuracy"] for r in mine if r["validation_accuracy"] is not None]
            row = {
                "seeds": [r["seed"] for r in mine],
                "validation_accuracy": sum(validation) / len(validation) if validation else None,
                "same_as_recorded": sum(
                    1 for r, old in zip(mine, same, strict=True)
                    if old and old.get("config") == r["config"]
                    and all(old["test"][k] == r["test"][k] for k in ("reward", "policy"))
                    and all(old.get(k) == r.get(k) for k in ("validation_accuracy", "autopilot_decisions"))
                ),
            }  # fmt: skip
            paired = [plain.get(r["seed"]) for r in mine]
            for label, field in SCORINGS.items():
                row[label] = {"test_accuracy": bootstrap(mine, field, prompts=prompts.get(dataset))}
                if method != "plain" and all(paired):
                    row[label]["vs_plain"] = bootstrap(mine, field, paired, prompts=prompts.get(dataset))
            rows[method] = row
        cells[f"{dataset}/{noise}"] = rows
    return cells


def markdown(cells: dict, runs_file: Path | str) -> str:
    without, with_eos = SCORINGS
    lines = [
        "# Sorting test answers scored without and with the EOS token",
        "",
        f"`python eval/bench_noise_eos.py` (runs: `{runs_file}`). The trainer appends EOS to plain-text answers and "
        "scores the validation pairs with it; `eval/bench_noise.py` scored the test pairs without it. Same as "
        "recorded: retrained runs whose configuration fingerprint, test scores without EOS (reward and policy), "
        "validation accuracy and autopilot decisions equal the recorded run's.",
        "",
        f"| cell | method | seeds | same as recorded | validation | test {without} | vs plain | test {with_eos} "
        "| vs plain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cell, rows in cells.items():
        for method, row in rows.items():
            parts = [cell, method, " ".join(map(str, row["seeds"])), f"{row['same_as_recorded']}/{len(row['seeds'])}",
                     "-" if row["validation_accuracy"] is None else f"{row['validation_accuracy']:.3f}"]  # fmt: skip
            for label in SCORINGS:
                numbers = row[label]
                parts.append(interval(numbers["test_accuracy"]))
                parts.append(interval(numbers["vs_plain"], signed=True) if "vs_plain" in numbers else "-")
            lines.append("| " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=REPO / "eval" / "results" / "noise_eos" / "noise.runs.jsonl")
    parser.add_argument("--recorded", type=Path, default=REPO / "eval" / "results" / "noise.runs.jsonl")
    parser.add_argument("--results", type=Path, default=REPO / "eval" / "results")
    args = parser.parse_args(argv)
    runs = read_runs(args.runs)
    with tempfile.TemporaryDirectory() as work:
        prompts = {d: test_prompts(split_heldout(d, Path(work))[1]) for d in {r["dataset"] for r in runs}}
    cells = compare(runs, finished(read_runs(args.recorded)), prompts)
    (args.results / "noise_eos.json").write_text(json.dumps({"cells": cells}, indent=2) + "\n")
    shown = args.runs.relative_to(REPO) if args.runs.is_relative_to(REPO) else args.runs
    text = markdown(cells, shown)
    (args.results / "noise_eos.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
