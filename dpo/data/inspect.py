"""`dpo data inspect FILE_OR_RECIPE`: what is in a preference data set, before training on it.

Counts (rows read, kept, invalid by reason, duplicates, multi-response rows and the pairs they make),
length histograms in tokens of the model that will train on it (prompt, chosen, rejected, and the whole
sequence against max_length), and a few sample pairs. Bad rows never stop an inspection: it runs with
`on_invalid: skip` so every problem is counted, and says what the recipe's own policy would do.
A recipe is inspected split by split as a run would see it (after mixing, expansion and augmentation).
"""

from __future__ import annotations

import random
import statistics
from pathlib import Path
from typing import Any

from dpo.config.loading import load_recipe
from dpo.config.schema import DataSection, ExpandPairsSection
from dpo.data.expand import expand_pairs
from dpo.data.prepare import RowChecker, load_split, prepare_data
from dpo.data.rows import REASONS, is_multi, prompt_key, sequence_texts, token_lengths
from dpo.errors import UserError

DEFAULT_MAX_LENGTH = 1024  # trl.DPOConfig's default


def _token_stats(rows: list[dict], tokenizer) -> dict[str, list[int]]:
    """Token counts per pair: prompt, chosen and rejected answers (as TRL splits them), longer full sequence."""
    prompts = [
        (tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True), False)
        if isinstance(r["prompt"], list)
        else (r["prompt"], True)
        for r in rows
    ]
    prompt_n = token_lengths(prompts, tokenizer)
    chosen_n = token_lengths([sequence_texts(r["prompt"], r["chosen"], tokenizer) for r in rows], tokenizer)
    rejected_n = token_lengths([sequence_texts(r["prompt"], r["rejected"], tokenizer) for r in rows], tokenizer)
    return {
        "prompt": prompt_n,
        "chosen": [c - p for c, p in zip(chosen_n, prompt_n, strict=True)],
        "rejected": [r - p for r, p in zip(rejected_n, prompt_n, strict=True)],
        "sequence": [max(c, r) for c, r in zip(chosen_n, rejected_n, strict=True)],
    }


def histogram(values: list[int], bins: int = 8) -> list[dict]:
    """Counts in up to `bins` equal-width integer buckets [low, high] from min to max."""
    low, high = min(values), max(values)
    width = -(-(high - low + 1) // bins)  # ceiling division: every value falls in a bucket
    counts = [0] * -(-(high - low + 1) // width)
    for v in values:
        counts[(v - low) // width] += 1
    return [{"low": low + i * width, "high": low + (i + 1) * width - 1, "count": n} for i, n in enumerate(counts)]


def _tokenizer(name_or_path: str, trust_remote_code: bool, where: str):
    """The tokenizer to count tokens with; a model that cannot give one is an error naming where it came from
    (`--model`, or the recipe's model.name_or_path)."""
    from dpo.models import load_tokenizer

    try:
        return load_tokenizer(name_or_path, trust_remote_code)
    except (UserError, OSError, ValueError) as exc:
        message = str(exc).removeprefix("model.name_or_path: ").splitlines()[0]
        raise UserError(f"cannot load the tokenizer: {message}", where=where) from None


def _split_report(rows: list[dict], tokenizer, samples: int, seed: int) -> dict:
    tokens = _token_stats(rows, tokenizer) if rows else {}
    picked = sorted(random.Random(seed).sample(range(len(rows)), min(samples, len(rows))))
    return {
        "pairs": len(rows),
        "prompts": len({prompt_key(r["prompt"]) for r in rows}),  # as the split and the data card count them
        "tokens": {
            name: {
                "min": min(v),
                "median": statistics.median(v),
                "max": max(v),
                "histogram": histogram(v),
            }
            for name, v in tokens.items()
        },
        "samples": [rows[i] for i in picked],
    }


def inspect_data(
    target: str | Path,
    overrides=(),
    model: str | None = None,
    max_length: int | None = None,
    samples: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """The inspection report of a data file or of a recipe's data (see the module docstring)."""
    from dpo.models import DEFAULT_MODEL

    if samples < 0:
        raise UserError(f"must be 0 or more (got {samples})", where="--samples")
    if max_length is not None and max_length < 1:  # 0 is no "not given": the recipe's or the default would be used
        raise UserError(f"must be at least 1 token (got {max_length})", where="--max-length")
    target = Path(target)
    if target.suffix.lower() in (".yaml", ".yml"):
        loaded = load_recipe(target, list(overrides))
        recipe = loaded.recipe
        where = "--model" if model else loaded.where("model.name_or_path")
        tokenizer = _tokenizer(model or recipe.model.name_or_path, recipe.model.trust_remote_code, where)
        limit = max_length if max_length is not None else recipe.training.get("max_length", DEFAULT_MAX_LENGTH)
        section = recipe.data.model_copy(update={"on_invalid": "skip"})
        prepared = prepare_data(section, recipe.seed, loaded.where, tokenizer, limit)
        card, policy = prepared.card, recipe.data.on_invalid
        splits = {"train": prepared.train, "eval": prepared.eval}
        sources = [s for split in card["sources"].values() for s in split]
    else:
        if overrides:  # they would be accepted and ignored, unknown keys and all
            raise UserError("applies only to a recipe; a data file is inspected as it is", where="--set")
        tokenizer = _tokenizer(model or DEFAULT_MODEL, False, "--model")
        limit = max_length if max_length is not None else DEFAULT_MAX_LENGTH
        section = DataSection(train=str(target), on_invalid="skip")
        rows, sources = load_split(section, "train", seed, RowChecker(tokenizer, limit), lambda key: str(target))
        card, policy = {}, "error"
        if any(map(is_multi, rows)):
            defaults = ExpandPairsSection().model_dump()
            rows, counts = expand_pairs(rows, random.Random(f"{seed}:expand:train"), **defaults)
            card["expanded"] = {"all": {**defaults, **counts}}
        splits = {"all": rows}
    invalid: dict[str, int] = {}
    for source in sources:
        for reason, n in source["dropped"].items():
            if reason != "duplicate":
                invalid[reason] = invalid.get(reason, 0) + n
    for step in card.get("augmented", []):  # rows an augmentation made that the checks refuse (skipped here)
        for reason, n in step.get("invalid", {}).items():
            invalid[reason] = invalid.get(reason, 0) + n
    return {
        "target": str(target),
        "tokenizer": getattr(tokenizer, "name_or_path", None),
        "max_length": limit,
        "on_invalid": policy,
        "sources": sources,
        "invalid": dict(sorted(invalid.items())),
        "duplicates": sum(s["dropped"].get("duplicate", 0) for s in sources),
        "expanded": card.get("expanded", {}),
        "augmented": card.get("augmented", []),
        "splits": {name: _split_report(rows, tokenizer, samples, seed) for name, rows in splits.items()},
    }


def _short(value: Any, width: int = 100) -> str:
    text = value if isinstance(value, str) else " | ".join(f"{m['role']}: {m['content']}" for m in value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 3] + "..."


def render(report: dict) -> str:
    """The report as text for the terminal."""
    lines = [f"{report['target']}: tokens by {report['tokenizer']}, max_length {report['max_length']}"]
    for s in report["sources"]:
        bad = sum(n for r, n in s["dropped"].items() if r != "duplicate")
        lines.append(
            f"  source {s['path']}: {s['rows_read']} rows read, {s['kept']} kept, {bad} invalid, "
            f"{s['dropped'].get('duplicate', 0)} duplicates, {s['multi_response_rows']} multi-response"
        )
        lines += [f"    row {e['row']}: [{e['reason']}] {e['detail']}" for e in s.get("first_invalid", [])]
    if report["invalid"]:
        action = "drops them" if report["on_invalid"] == "skip" else "stops with an error"
        lines.append(f"invalid rows by reason (data.on_invalid: {report['on_invalid']} {action}):")
        lines += [f"  {reason:24} {n:6}  {REASONS[reason]}" for reason, n in report["invalid"].items()]
    else:
        lines.append("invalid rows: none")
    lines.append(f"exact duplicates dropped: {report['duplicates']}")
    for name, e in report["expanded"].items():
        lines.append(
            f"pair expansion ({name}): {e['multi_response_rows']} multi-response rows -> {e['pairs_made']} pairs "
            f"(min_gap {e['min_gap']}, cap {e['max_pairs_per_prompt']}; {e['ties']} ties, "
            f"{e['identical_answers']} identical answers, {e['below_min_gap']} below min_gap, "
            f"{e['cut_by_cap']} over the cap)"
        )
    for step in report["augmented"]:
        made_invalid = step.get("invalid", {})
        invalid = ", ".join(f"{reason} {n}" for reason, n in made_invalid.items())
        invalid = f" ({sum(made_invalid.values())} made invalid: {invalid})" if made_invalid else ""
        lines.append(f"augmentation {step['type']}: {step['before']} -> {step['after']} pairs{invalid}")
    for name, split in report["splits"].items():
        lines.append(f"[{name}] {split['pairs']} pairs, {split['prompts']} prompts")
        for column, stats in split["tokens"].items():
            lines.append(f"  {column} tokens: min {stats['min']}, median {stats['median']:g}, max {stats['max']}")
            top = max(b["count"] for b in stats["histogram"])
            for b in stats["histogram"]:
                bar = "#" * max(1 if b["count"] else 0, round(40 * b["count"] / top))
                lines.append(f"    {b['low']:>6}-{b['high']:<6} {b['count']:>7} {bar}")
        for i, row in enumerate(split["samples"], start=1):
            lines.append(f"  sample {i}: prompt:   {_short(row['prompt'])}")
            lines.append(f"            chosen:   {_short(row['chosen'])}")
            lines.append(f"            rejected: {_short(row['rejected'])}")
    return "\n".join(lines)
