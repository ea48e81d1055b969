"""Label audit: estimate the share of flipped labels in a recipe's training pairs, and rank the pairs by how likely
their label is flipped (`dpo data audit RECIPE`; docs/audit.md explains the method, its assumptions and the papers).

    result = audit_recipe("recipes/quickstart.yaml", output="audit/")   # writes audit/audit.json

1. features: one no-grad forward of prompt + answer through the recipe's frozen model per answer (weights, so this
   lives in the training layer). Per answer, over the tokens after the part both answers of the pair share (the
   prompt, and any common start): the mean and the last of the final hidden states, the mean and the sum of the
   tokens' log-probs, and the log of their count.
2. dpo/training/flip_estimate.py: a cross-fitted linear Bradley-Terry reward model scores each pair out of fold,
   and a mirrored Gaussian mixture of those margins gives the flip rate, its interval and each pair's p_flipped.

Features depend on the answers only, not on which one is labelled chosen: eval/bench_audit.py computes them once per
data set and re-runs step 2 for each injected noise level (`audit_features` + `estimate_flips`).
"""

from __future__ import annotations

import inspect
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dpo.data.provenance import locate
from dpo.data.rows import sequence_texts
from dpo.rundir.atomic import atomic_write_json
from dpo.rundir.writable import check_output_dir
from dpo.training.flip_estimate import FOLDS, FlipMixture, check_auditable, cross_fitted_margins, fit_flip_mixture

AUDIT_FILE = "audit.json"
BATCH_SEQUENCES = 16  # sequences per forward: 8 pairs
SHOWN_SUSPECTS = 5


@dataclass
class AuditResult:
    """An audit of `pairs` (the recipe's training pairs, in order): the fitted mixture, each pair's source and row,
    and seconds spent (features: the forwards; fit: the reward model and the mixture)."""

    pairs: list[dict]
    origins: list[tuple[str | None, int | None]]
    mixture: FlipMixture
    seconds: dict[str, float] = field(default_factory=dict)
    reward_model: dict = field(default_factory=dict)

    @property
    def p_flipped(self) -> list[float]:
        """Each pair's posterior probability of a flipped label, unrounded (rounded only where it is written)."""
        return self.mixture.p_flipped.tolist()

    def ranking(self) -> list[int]:
        """Pair indices, most suspect first: by the unrounded log-odds of p_flipped, so by margin among the pairs
        whose p rounds to 1 (ties: training order, so the ranking is stable)."""
        return self.mixture.ranking()

    def to_json(self) -> dict:
        """audit.json: the flip rate with its interval, and the pairs most suspect first with their p_flipped and
        cross-fitted margin (rounded to 6 decimals here, and only here)."""
        m, p, margins = self.mixture, self.p_flipped, self.mixture.margins.tolist()
        return {
            "flip_rate": {"estimate": round(m.estimate, 4), "low": round(m.low, 4), "high": round(m.high, 4)},
            "pairs": [
                {"source": source, "row": row, "p_flipped": round(p[i], 6), "margin": round(margins[i], 6)}
                for i in self.ranking()
                for source, row in [self.origins[i]]
            ],
        }

    def card(self) -> dict:
        """What the data card records of the audit."""
        m = self.mixture
        return {
            "flip_rate": self.to_json()["flip_rate"],
            "pairs": len(self.pairs),
            "separation": round(m.separation, 3),
            "method": "cross-fitted linear reward model on frozen-model features + mirrored Gaussian mixture "
            "(docs/audit.md)",
            "reward_model": self.reward_model,
            "seconds": {k: round(v, 1) for k, v in self.seconds.items()},
        }


def _shared_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return min(n, len(a) - 1, len(b) - 1)  # at least one token of each answer is scored


def _tokenize(pairs: list[dict], tokenizer) -> list[tuple[list[int], int]]:
    """(token ids, start of the scored part) for chosen and rejected of each pair, as [c0, r0, c1, r1, ...]."""
    out = []
    for pair in pairs:
        ids = []
        for answer in (pair["chosen"], pair["rejected"]):
            text, special = sequence_texts(pair["prompt"], answer, tokenizer)
            ids.append(tokenizer(text, add_special_tokens=special)["input_ids"])
        start = max(1, _shared_prefix(*ids))  # the first token has no log-prob
        out += [(ids[0], start), (ids[1], start)]
    return out


@torch.no_grad()
def audit_features(model, tokenizer, pairs: list[dict], progress: bool = True) -> Tensor:
    """Per-answer features (N, 2, F): chosen then rejected of each pair, from one forward per answer."""
    sequences = _tokenize(pairs, tokenizer)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))  # little padding per batch
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    features: list[Tensor | None] = [None] * len(sequences)
    keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    from tqdm.auto import tqdm

    with tqdm(
        total=len(pairs), desc="audit: scoring answers", unit="pair", disable=not progress, file=sys.stderr
    ) as bar:
        for first in range(0, len(order), BATCH_SEQUENCES):
            batch = order[first : first + BATCH_SEQUENCES]
            width = max(len(sequences[i][0]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                tokens = sequences[i][0]
                ids[row, : len(tokens)] = torch.tensor(tokens)
                mask[row, : len(tokens)] = 1
            # logits only where a scored token is predicted (the vocabulary projection is a fifth of a small
            # model's cost, and the shared prompt needs none)
            first_logit = min(sequences[i][1] for i in batch) - 1
            kept = {"logits_to_keep": torch.arange(first_logit, width - 1)} if keeps_logits else {}
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, **kept)
            hidden = out.hidden_states[-1].float()
            logits = out.logits.float() if keeps_logits else out.logits[:, first_logit : width - 1].float()
            logps = torch.log_softmax(logits, -1).gather(-1, ids[:, first_logit + 1 :, None])[..., 0]
            for row, i in enumerate(batch):
                tokens, start = sequences[i]
                end = len(tokens)
                token_logps = logps[row, start - 1 - first_logit : end - 1 - first_logit]
                features[i] = torch.cat(
                    [
                        hidden[row, start:end].mean(0),
                        hidden[row, end - 1],
                        torch.stack([token_logps.mean(), token_logps.sum(), torch.tensor(float(end - start)).log()]),
                    ]
                )
            bar.update(len(batch) / 2)
    return torch.stack(features).view(len(pairs), 2, -1)  # type: ignore[arg-type]


def feature_sets(width: int) -> dict[str, Tensor]:
    """The candidate feature subsets of an answer's `width` features: all of them, or the three log-prob features
    alone (PerpCorrect's signal; few parameters, so less to overfit when many labels are wrong). The reward model's
    inner cross-validation picks one."""
    return {"hidden states + log-probs": torch.arange(width), "log-probs": torch.arange(width - 3, width)}


def estimate_flips(features: Tensor, seed: int) -> tuple[FlipMixture, dict]:
    """The flip mixture of pairs whose per-answer features are `features` (N, 2, F), chosen first, and the reward
    model chosen (its feature set and L2 strength)."""
    diffs = features[:, 0] - features[:, 1]
    margins, choice = cross_fitted_margins(diffs, seed, FOLDS, feature_sets(diffs.shape[1]))
    return fit_flip_mixture(margins), choice


def audit_pairs(model, tokenizer, pairs: list[dict], origins, seed: int, progress: bool = True) -> AuditResult:
    started = time.perf_counter()
    features = audit_features(model, tokenizer, pairs, progress)
    scored = time.perf_counter()
    mixture, choice = estimate_flips(features, seed)
    seconds = {"features": scored - started, "fit": time.perf_counter() - scored}
    return AuditResult(pairs, origins, mixture, seconds, choice)


def audit_checked(checked, progress: bool = True) -> AuditResult:
    """Audit a checked recipe's training pairs with its model (loaded here, frozen, freed after)."""
    from dpo.models import load_model, load_tokenizer

    recipe = checked.recipe
    pairs = checked.data.train
    check_auditable(checked.loaded, pairs)
    torch.manual_seed(recipe.seed)
    model = load_model(recipe.model.name_or_path, recipe.model.dtype, recipe.model.trust_remote_code)
    tokenizer = load_tokenizer(recipe.model.name_or_path, recipe.model.trust_remote_code)
    try:
        return audit_pairs(model, tokenizer, pairs, locate(recipe.data, pairs), recipe.seed, progress)
    finally:
        del model


def audit_recipe(recipe_path: str | Path, overrides=(), output: str | Path | None = None, progress: bool = True):
    """`dpo data audit`: audit a recipe's training pairs, write OUTPUT/audit.json (default audits/<name>)."""
    from dpo.training.gate import check

    checked = check(recipe_path, overrides, writes_run_dir=False)
    out_dir = Path(output) if output else Path("audits") / checked.recipe.name
    check_output_dir(out_dir)  # before the minutes of scoring, not after
    result = audit_checked(checked, progress)
    write_audit(result, out_dir)
    return result, out_dir / AUDIT_FILE


def write_audit(result: AuditResult, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / AUDIT_FILE, result.to_json())
    return out_dir / AUDIT_FILE


def _text(value: Any, limit: int = 100) -> str:
    if isinstance(value, list):  # messages: their contents
        value = " | ".join(m["content"] for m in value)
    value = " ".join(str(value).split())
    return value if len(value) <= limit else value[: limit - 1] + "…"


def render(result: AuditResult, path: Path | None = None, shown: int = SHOWN_SUSPECTS) -> str:
    """The console summary: the estimate, what it rests on, and the top suspects as prompt / chosen / rejected."""
    m = result.mixture
    p = result.p_flipped
    lines = [
        f"audit of {len(result.pairs)} training pairs: estimated flip rate {m.estimate:.1%} "
        f"(95% interval {m.low:.1%} to {m.high:.1%})",
        f"  pairs with p_flipped >= 0.5: {sum(x >= 0.5 for x in p)}; separation of clean margins {m.separation:.2f}"
        + ("  (low: the model barely tells the answers apart; the estimate says little)" if m.separation < 1 else ""),
        f"  time: {result.seconds.get('features', 0):.0f} s scoring answers, "
        f"{result.seconds.get('fit', 0):.0f} s fitting",
    ]
    if path is not None:
        lines.append(f"  wrote {path}")
    lines.append(f"top {min(shown, len(p))} suspects:")
    margins = m.margins.tolist()
    for i in result.ranking()[:shown]:
        source, row = result.origins[i]
        pair = result.pairs[i]
        where = f"{source} row {row}" if source else "(made by an augmentation)"
        lines += [
            f"  p_flipped {p[i]:.2f} (margin {margins[i]:.2f})  {where}",
            f"    prompt:   {_text(pair['prompt'])}",
            f"    chosen:   {_text(pair['chosen'])}",
            f"    rejected: {_text(pair['rejected'])}",
        ]
    return "\n".join(lines)
