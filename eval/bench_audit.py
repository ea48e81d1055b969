"""How well the label audit (`dpo data audit`, docs/audit.md) finds injected label flips.

    python eval/bench_audit.py                    # both shipped data sets, 0-40% flipped, 3 seeds (idle machine)
    python eval/bench_audit.py --quick            # arithmetic only, 300 pairs, 0/20/40%, one seed
    python eval/bench_audit.py --cache /tmp/audit-features   # keep the features between runs

For each data set (the training pairs of recipes/quickstart.yaml: data/arithmetic, and recipes/sorting.yaml:
data/sorting's scored answers expanded into pairs; the shipped `chosen` is the gold-better answer), a seeded share of
the pairs is flipped (0%, 10%, 20%, 30%, 40%; exactly round(share * n) pairs) and the audit estimates the flip rate
and ranks the pairs. Per run: the estimate against the injected rate, whether the injected rate is inside the
reported interval, the precision of the top 10% suspects (the share of them truly flipped), and the time.

The per-answer features of the frozen model do not depend on which answer is labelled chosen, so they are computed
once per data set (the forwards: most of an audit's time) and a flip swaps a pair's two rows; the time of one audit
is that forward time plus its own fit. Writes eval/results/audit.json and eval/results/audit.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "eval" / "results"
DATASETS = {"arithmetic": REPO / "recipes" / "quickstart.yaml", "sorting": REPO / "recipes" / "sorting.yaml"}
LEVELS = (0.0, 0.1, 0.2, 0.3, 0.4)
GOALS = {"max_abs_error": 0.05, "top10_precision_at_20_40": 0.8}


def training_pairs(dataset: str, model: str, max_pairs: int) -> list[dict]:
    """The data set's training pairs as a run of its recipe would get them (checked, split, expanded)."""
    from dpo.training.gate import check

    overrides = [f"model.name_or_path={model}", f"data.max_train_pairs={max_pairs}"]
    return check(DATASETS[dataset], overrides).data.train


def features_for(dataset: str, model: str, max_pairs: int, cache: Path | None):
    """Per-answer features (N, 2, F) of the data set's gold-labelled pairs, and the seconds their forwards took."""
    import torch

    from dpo.models import load_model, load_tokenizer
    from dpo.training.audit import audit_features

    path = cache / f"{dataset}-{Path(model).name}-{max_pairs}.pt" if cache else None
    if path is not None and path.is_file():
        saved = torch.load(path)
        return saved["features"], saved["seconds"]
    pairs = training_pairs(dataset, model, max_pairs)
    loaded, tokenizer = load_model(model), load_tokenizer(model)
    started = time.perf_counter()
    features = audit_features(loaded, tokenizer, pairs)
    seconds = time.perf_counter() - started
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"features": features, "seconds": seconds}, path)
    return features, seconds


def one_run(features, level: float, seed: int) -> dict:
    """Flip round(level * n) seeded pairs, audit, and score the audit against the truth."""
    import torch

    from dpo.training.audit import estimate_flips

    n = len(features)
    flipped = sorted(random.Random(f"bench-audit:{seed}:{level}").sample(range(n), round(level * n)))
    noisy = features.clone()
    noisy[flipped] = noisy[flipped].flip(1)  # swap chosen and rejected
    started = time.perf_counter()
    mixture, choice = estimate_flips(noisy, seed)
    fit_s = time.perf_counter() - started
    truth = torch.zeros(n, dtype=torch.bool)
    truth[flipped] = True
    top = mixture.ranking()[: max(1, n // 10)]  # as audit.json and data.audit's share rank them
    injected = len(flipped) / n
    return {
        "injected": round(injected, 4),
        "estimate": round(mixture.estimate, 4),
        "low": round(mixture.low, 4),
        "high": round(mixture.high, 4),
        "abs_error": round(abs(mixture.estimate - injected), 4),
        "inside": mixture.low <= injected <= mixture.high,
        "top10_precision": round(truth[top].float().mean().item(), 4),
        "separation": round(mixture.separation, 3),
        "reward_model": choice["features"],
        "fit_s": round(fit_s, 2),
    }


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"Label audit against injected flips ({meta['model']}; {meta['seeds']} seed(s); "
        f"`python eval/bench_audit.py{' --quick' if meta['quick'] else ''}`).",
        "",
        "| data set | pairs | injected | estimate (mean, min-max over seeds) | max abs error | truth inside interval "
        "| top-10% precision (mean) | separation | audit time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["dataset"], r["level"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for dataset, level in keys:
        group = [r for r in rows if r["dataset"] == dataset and r["level"] == level]
        est = [r["estimate"] for r in group]
        lines.append(
            f"| {dataset} | {group[0]['pairs']} | {level:.0%} "
            f"| {statistics.fmean(est):.3f} ({min(est):.3f}-{max(est):.3f})"
            f" | {max(r['abs_error'] for r in group):.3f} | {sum(r['inside'] for r in group)}/{len(group)}"
            f" | {statistics.fmean(r['top10_precision'] for r in group):.2f}"
            f" | {statistics.fmean(r['separation'] for r in group):.2f}"
            f" | {statistics.fmean(r['audit_s'] for r in group):.0f} |"
        )
    goals = meta["goals_met"]
    lines += [
        "",
        f"Goals: estimate within 5 points at every level: {goals['within_5_points']}; truth inside the interval: "
        f"{goals['truth_inside']}; top-10% precision >= 0.8 at 20-40%: {goals['top10_precision']}.",
        "Audit time = the forwards of the data set's answers (once per data set) + the fit of that run.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="arithmetic, 300 pairs, 0/20/40%%, one seed")
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--levels", nargs="*", type=float, default=list(LEVELS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-pairs", type=int, default=1000)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="model alias or directory")
    parser.add_argument("--cache", type=Path, help="folder to keep the per-answer features in between runs")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.datasets, args.levels, args.seeds, args.max_pairs = ["arithmetic"], [0.0, 0.2, 0.4], 1, 300
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    rows = []
    for dataset in args.datasets:
        features, forward_s = features_for(dataset, args.model, args.max_pairs, args.cache)
        for level in args.levels:
            for seed in range(args.seeds):
                row = {"dataset": dataset, "pairs": len(features), "level": level, "seed": seed}
                row.update(one_run(features, level, seed))
                row["forward_s"] = round(forward_s, 1)
                row["audit_s"] = round(forward_s + row["fit_s"], 1)
                rows.append(row)
                print(json.dumps(row), flush=True)
    noisy = [r for r in rows if 0.2 <= r["level"] <= 0.4]
    meta = {
        "model": args.model,
        "seeds": args.seeds,
        "quick": args.quick,
        "goals": GOALS,
        "goals_met": {
            "within_5_points": all(r["abs_error"] <= GOALS["max_abs_error"] for r in rows),
            "truth_inside": all(r["inside"] for r in rows),
            "top10_precision": all(r["top10_precision"] >= GOALS["top10_precision_at_20_40"] for r in noisy),
        },
    }
    args.results.mkdir(parents=True, exist_ok=True)
    name = "audit_quick" if args.quick else "audit"
    (args.results / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (args.results / f"{name}.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
