"""Augmentations of the training pairs, and the one table of their names (AUGMENTATIONS).

Each augmentation is a pure function `fn(rows, rng, *, params...) -> rows`: it takes the training pairs
({prompt, chosen, rejected}) and a seeded `random.Random`, and returns the new list without modifying the
input. Like the losses, its keyword-only parameters are its recipe keys, with their constraints in the
annotation (checked with dpo/config/signatures.py before any file is read), so a key it does not take, or a
value its annotation rejects, is an error. A recipe step whose `type` is 'package.module:function' is a
plug-in with the same contract.
Augmentations run after the held-out split and only on the training pairs: held-out data is never
touched, and no prompt leaks across the split. Rows an augmentation creates are validated like input rows.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import random
from collections import Counter
from collections.abc import Callable
from typing import Annotated, Any

from annotated_types import Interval, MinLen
from pydantic import AfterValidator

from dpo.config.signatures import REQUIRED, checked_value, keyword_parameters
from dpo.data.rows import SCORE_GAP, Problem, canonical, counts_text, prompt_key, share_of
from dpo.errors import UserError, did_you_mean

Fraction = Annotated[float, Interval(ge=0, le=1)]
Texts = Annotated[list[str], MinLen(1)]


def _with_placeholders(templates: list[str]) -> list[str]:
    bad = [t for t in templates if "{prompt}" not in t]
    if bad:
        raise ValueError(f"template {bad[0]!r} has no '{{prompt}}' placeholder")
    return templates


Templates = Annotated[list[str], MinLen(1), AfterValidator(_with_placeholders)]


class NoEffect(ValueError):
    """An augmentation whose keys make it do nothing: `apply` reports it as a user error naming the step (a plug-in
    may raise it too)."""


def _pairs_of(fraction: float, rows: list[dict]) -> int:
    """fraction * N pairs, to the nearest pair (halves up); a fraction > 0 that gives none is NoEffect."""
    count = share_of(fraction, len(rows), nearest=True)
    if fraction > 0 and count == 0:
        raise NoEffect(f"has no effect: fraction {fraction:g} of {len(rows)} training pairs rounds to no pair")
    return count


def label_noise(rows: list[dict], rng: random.Random, *, fraction: Fraction) -> list[dict]:
    """Flip fraction * N randomly chosen pairs (chosen <-> rejected), rounded to the nearest pair (halves up; a
    fraction > 0 that rounds to none is an error): simulated annotator noise, for robustness studies and the
    noise benchmark."""
    flipped = set(rng.sample(range(len(rows)), _pairs_of(fraction, rows)))
    return [
        {**row, "chosen": row["rejected"], "rejected": row["chosen"]} if i in flipped else dict(row)
        for i, row in enumerate(rows)
    ]


def _vary_prompt(prompt: Any, template: str, system: str | None) -> Any:
    """Text prompts: the template around the text, the system prompt before it (a blank line between).
    Message prompts: the template around the last user message, the system prompt as the system message."""
    if isinstance(prompt, str):
        text = template.replace("{prompt}", prompt)
        return f"{system}\n\n{text}" if system else text
    messages = [dict(m) for m in prompt]
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is not None:
        messages[last_user]["content"] = template.replace("{prompt}", messages[last_user]["content"])
    if system:
        if messages[0]["role"] == "system":
            messages[0]["content"] = system
        else:
            messages.insert(0, {"role": "system", "content": system})
    return messages


def prompt_variants(
    rows: list[dict],
    rng: random.Random,
    *,
    templates: Templates | None = None,
    system_prompts: Texts | None = None,
    copies: Annotated[int, Interval(ge=1, le=100)] = 1,
    keep_original: bool = True,
) -> list[dict]:
    """Adds `copies` variants of each pair's prompt: a random template (text around '{prompt}') and a random
    system prompt; the answers are unchanged.

    A variant equal to the original prompt or to an earlier variant of it is not added. With keep_original
    (default) the original pair comes first, then its variants; without it only the variants are kept, and a pair
    none of whose variants differs from it (the template '{prompt}' drawn and no system prompt, or a message
    prompt with no user message to wrap) is kept as it is: the data card counts such pairs as `unchanged`."""
    templates = templates or ["{prompt}"]
    out = []
    for row in rows:
        seen = {canonical(row["prompt"])}
        if keep_original:
            out.append(dict(row))
        for _ in range(copies):
            template = rng.choice(templates)
            system = rng.choice(system_prompts) if system_prompts else None
            prompt = _vary_prompt(row["prompt"], template, system)
            if canonical(prompt) not in seen:
                seen.add(canonical(prompt))
                out.append({**row, "prompt": prompt})
        if not keep_original and len(seen) == 1:  # no variant: the pair stays, with its own prompt
            out.append(dict(row))
    return out


def off_prompt_negatives(rows: list[dict], rng: random.Random, *, fraction: Fraction = 1.0) -> list[dict]:
    """Adds up to fraction * N pairs (rounded as label_noise rounds) whose rejected answer is the chosen answer of a
    pair with another prompt: an easy negative that teaches the model to answer the question asked.

    The pairs that get one are drawn at random; the new pairs are appended after the originals. A negative must
    differ from both answers of the pair, and make a pair that is not among the rows already (nor among the new
    ones): where answers are short (arithmetic), another prompt's chosen answer is often this pair's own rejected
    one. A pair with no such negative gets none (the data card's `after` counts the pairs added, none when the drawn
    pairs happen to have none); a step that can add no pair at all (the training pairs ask one question, or no other
    prompt's chosen answer makes a new pair with any of them) is an error, not a step that does nothing. That is a
    property of the data, never of the draw: the same recipe must not be valid for one seed and refused for another."""
    count = _pairs_of(fraction, rows)
    keys = [prompt_key(r["prompt"]) for r in rows]  # 'What is 2+2?' and 'What  is 2+2?' ask one question
    if count and len(set(keys)) < 2:
        raise NoEffect(
            f"has no effect: the {len(rows)} training pairs have one distinct prompt, and a negative is another "
            "prompt's chosen answer"
        )
    pairs = {canonical([r["prompt"], r["chosen"], r["rejected"]]) for r in rows}

    def usable(i: int, j: int) -> bool:
        negative = rows[j]["chosen"]
        return (
            keys[j] != keys[i]
            and negative != rows[i]["chosen"]
            and negative != rows[i]["rejected"]
            and canonical([rows[i]["prompt"], rows[i]["chosen"], negative]) not in pairs
        )

    extra = []
    for i in sorted(rng.sample(range(len(rows)), count)):
        for _ in range(20):  # rejection sampling: almost always succeeds at once, no O(N^2) scan
            j = rng.randrange(len(rows))
            if usable(i, j):
                break
        else:
            candidates = [j for j in range(len(rows)) if usable(i, j)]
            if not candidates:
                continue
            j = rng.choice(candidates)
        # a new pair: the original pair's score gap (if any) says nothing about it
        extra.append({"prompt": rows[i]["prompt"], "chosen": rows[i]["chosen"], "rejected": rows[j]["chosen"]})
        pairs.add(canonical([rows[i]["prompt"], rows[i]["chosen"], rows[j]["chosen"]]))
    # Scanned only here, on the way to an error (the draw above scanned every pair already when it drew them all).
    if count and not extra and not any(usable(i, j) for i in range(len(rows)) for j in range(len(rows))):
        raise NoEffect(
            f"has no effect: none of the {len(rows)} training pairs has a negative (another prompt's chosen answer "
            "that differs from both its answers and makes a pair not there already)"
        )
    return [dict(r) for r in rows] + extra


AUGMENTATIONS: dict[str, Callable[..., list[dict]]] = {
    "label_noise": label_noise,
    "prompt_variants": prompt_variants,
    "off_prompt_negatives": off_prompt_negatives,
}


def markdown_table() -> str:
    """The augmentation table of docs/data.md, built from AUGMENTATIONS so the docs cannot drift from the code."""
    rows = ["| `type` | what it does | keys (default) |", "|---|---|---|"]
    for name, fn in AUGMENTATIONS.items():
        summary = " ".join(inspect.getdoc(fn).split("\n\n")[0].split())
        keys = ", ".join(f"`{k}`" if v is REQUIRED else f"`{k}` ({v})" for k, v in parameters(name).items())
        rows.append(f"| `{name}` | {summary} | {keys} |")
    return "\n".join(rows)


def resolve(name: Any) -> Callable[..., list[dict]]:
    """The function for a step's `type`: a name in AUGMENTATIONS, or a plug-in 'package.module:function'.
    LookupError (with the message to show) when there is none."""
    if isinstance(name, str) and name in AUGMENTATIONS:
        return AUGMENTATIONS[name]
    if not isinstance(name, str) or ":" not in name:
        hint = did_you_mean(name, AUGMENTATIONS) if isinstance(name, str) else ""
        raise LookupError(
            f"unknown type {name!r}{hint} (valid: {', '.join(AUGMENTATIONS)}, or a plug-in 'package.module:function')"
        )
    module_name, _, function_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or any error the module raises while importing
        raise LookupError(f"plug-in {name!r}: cannot import '{module_name}' ({type(exc).__name__}: {exc})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise LookupError(f"plug-in {name!r}: module '{module_name}' has no function '{function_name}'")
    return function


def parameters(name: Any) -> dict[str, object]:
    """The recipe keys an augmentation takes, with their defaults (signatures.REQUIRED: none)."""
    return keyword_parameters(resolve(name))


def arguments(function: Callable[..., list[dict]], step: dict) -> tuple[dict[str, Any], str | None]:
    """A step's keys as its function's annotations validate them (what the function is called with), and None;
    or ({}, the first problem, naming the key)."""
    out = {}
    for key, value in step.items():
        if key == "type":
            continue
        # strict: a quoted number or a 2.0 for a count is a mistake in a step's keys, as it always was here
        out[key], problem = checked_value(function, key, value, key, strict=True)
        if problem:
            return {}, problem
    return out, None


def step_problem(steps: list[dict]) -> str | None:
    """Why the recipe's `data.augment` steps cannot run (the first problem, naming the step), or None: each step's
    type must resolve and its keys must be its function's keyword-only parameters, with valid values."""
    for i, step in enumerate(steps):
        name = step.get("type")
        try:
            function = resolve(name)
        except LookupError as exc:
            return f"step {i}: {exc}"
        accepted = keyword_parameters(function)
        unknown = sorted(set(step) - {"type"} - set(accepted))
        missing = sorted(k for k, v in accepted.items() if v is REQUIRED and k not in step)
        if unknown or missing:
            problem = f"unknown key(s) {unknown}" if unknown else f"missing key(s) {missing}"
            return f"step {i} ({name}): {problem}; it takes {sorted(accepted)}"
        _, problem = arguments(function, step)
        if problem:
            return f"step {i} ({name}): {problem}"
    return None


def apply(
    rows: list[dict],
    steps: list[dict],
    seed: int,
    checker: Callable[[list[Any]], list[dict | Problem]],
    on_invalid: str = "error",
    where: str = "data.augment",
) -> tuple[list[dict], list[dict]]:
    """Run the steps in order; returns the rows and a record per step for the data card: the step's keys, the rows
    `before` and `after` it, how many it `changed` (rows that differ, by content), how many it left `unchanged`
    (rows it gave back as they were), the `invalid` rows it made, by reason, under on_invalid 'skip', and where every
    row it was given had a score gap, how many rows it made `without_score_gap`.

    Rows a step creates (not among its input rows) go through `checker` (the row checks and the length check;
    it returns each row in canonical form or its Problem); under on_invalid 'error' a bad one is a UserError
    naming `where` and the step, under 'skip' it is dropped and counted in the step's record."""
    records = []
    for index, step in enumerate(steps):
        params = {k: v for k, v in step.items() if k != "type"}  # as written, for the data card
        rng = random.Random(f"{seed}:{index}:{step['type']}")  # each step seeded on its own: reorderable
        before = rows
        label = f"{where}: step {index} ({step['type']})"
        function = resolve(step["type"])
        kwargs, problem = arguments(function, step)
        if problem:
            raise UserError(problem, where=label)
        known = {canonical(r) for r in before}
        try:
            if step["type"] in AUGMENTATIONS:
                out = function(before, rng, **kwargs)
            else:  # a user's plug-in: its failure is reported as bad input of that step, not as our traceback
                try:
                    # a copy: a plug-in that edits the rows it is given in place would otherwise change `before` too,
                    # and its edited rows would pass as known ones, unchecked and not counted as changed
                    out = function(copy.deepcopy(before), rng, **kwargs)
                except NoEffect:
                    raise
                except Exception as exc:  # noqa: BLE001
                    raise UserError(f"the plug-in raised {type(exc).__name__}: {exc}", where=label) from None
        except NoEffect as exc:  # keys that make the step do nothing: said, not ignored
            raise UserError(str(exc), where=label) from None
        if not isinstance(out, list):
            raise UserError(f"returned a {type(out).__name__}, expected a list of rows", where=label)
        new = [i for i, r in enumerate(out) if not isinstance(r, dict) or canonical(r) not in known]
        out = list(out)
        bad = {}
        for i, checked in zip(new, checker([out[i] for i in new]), strict=True):
            if isinstance(checked, Problem):
                bad[i] = checked
            else:
                out[i] = checked  # canonical form (e.g. an implicit prompt made explicit)
        invalid: dict[str, int] = {}
        if bad and on_invalid == "error":
            shown = "; ".join(f"output row {i + 1}: {p}" for i, p in list(bad.items())[:3])
            raise UserError(f"{shown}{f' (and {len(bad) - 3} more)' if len(bad) > 3 else ''}", where=label)
        for p in bad.values():
            invalid[p.reason] = invalid.get(p.reason, 0) + 1
        rows = [r for i, r in enumerate(out) if i not in bad]
        if not rows:
            made = f": the {len(bad)} rows it made were all invalid ({counts_text(invalid)})" if bad else ""
            raise UserError(f"left no training pairs (it was given {len(before)}){made}", where=label)
        # rows that differ, by content not position (a step that adds 15 rows changed 15, one that flips 3 changed 3);
        # counted as multisets, so that a step that repeats rows changed as many as it added
        added = Counter(canonical(r) for r in rows) - Counter(canonical(r) for r in before)
        removed = Counter(canonical(r) for r in before) - Counter(canonical(r) for r in rows)
        changed = max(added.total(), removed.total())
        unchanged = (Counter(canonical(r) for r in rows) & Counter(canonical(r) for r in before)).total()
        record = {"type": step["type"], **params, "before": len(before), "after": len(rows), "changed": changed,
                  "unchanged": unchanged}  # fmt: skip
        if invalid:
            record["invalid"] = invalid
        if all(
            SCORE_GAP in r for r in before
        ):  # pairs that read a score gap (ODPO) lose it here: the gate names the step
            gapless = sum(SCORE_GAP not in out[i] for i in new if i not in bad)
            if gapless:
                record["without_score_gap"] = gapless
        records.append(record)
    return rows, records
