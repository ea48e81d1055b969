"""A recipe that uses the label audit: `data.audit` (record the estimate; drop or flip the most suspect pairs) and
`loss.label_smoothing: auto` (epsilon from the estimate). dpo/training/execute.py calls `apply_audit` once the run
directory is claimed, before anything else is written; the run directory gets audit.json next to data_card.json.

epsilon for `auto` is the expected share of flipped labels in the pairs the run trains on: the mean p_flipped over
them (a dropped suspect takes its p_flipped away, a flipped one turns p into 1 - p). Without drop or flip this is
the mixture's estimate itself once EM has converged (at its fixed point the estimate is the mean of the posteriors;
after its 500 iterations a slow fit may leave them apart in the last decimals). It is capped below 0.5,
where cDPO's target and rDPO's correction stop making sense.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter
from pathlib import Path

from dpo.data.prepare import PreparedData, content_hash
from dpo.data.rows import share_of
from dpo.errors import UserError
from dpo.rundir.files import DATA_CARD
from dpo.training.audit import AUDIT_FILE, audit_checked, render, write_audit
from dpo.training.loss_plan import AUTO

EPSILON_CAP = 0.45


def suspects(p_flipped: list[float], ranking: list[int], share: float | None, threshold: float | None) -> list[int]:
    """Indices of the suspect pairs: the most suspect `share` of them (rounded down), or those with p >= threshold."""
    if share is not None:
        return sorted(ranking[: share_of(share, len(ranking))])
    return [i for i, p in enumerate(p_flipped) if p >= threshold]


def _flipped(pair: dict) -> dict:
    return {**pair, "chosen": pair["rejected"], "rejected": pair["chosen"]}


def pair_hash(pair: dict) -> str:
    """A pair's content, as the data card records a suspect (its first 16 hex digits of `content_hash`)."""
    return content_hash([pair])[:16]


def recorded_suspects(pairs: list[dict], hashes: list[str]) -> list[int]:
    """Indices of the pairs whose content the run recorded as suspects (`hashes`, as `pair_hash` gives them), in
    training order; a content recorded n times picks its first n pairs."""
    left = Counter(hashes)
    chosen = []
    for i, pair in enumerate(pairs):
        if left[key := pair_hash(pair)] > 0:
            left[key] -= 1
            chosen.append(i)
    return chosen


def apply_audit(
    checked,
    run_dir: Path,
    progress: bool = True,
    write: bool = True,
    resumed: dict | None = None,
    data_changed: bool = False,
):
    """The checked recipe with the audit applied: its training pairs after `data.audit.suspects`, its loss plan
    with `auto` resolved, and the audit in its data card. Writes RUN_DIR/audit.json (when `write`). A UserError
    when the drop leaves no pairs, or fewer than the run needs (gate.check_pairs_counted).

    `resumed`: the audit section of data_card.json of a run that resumes from a checkpoint. Its flip-rate estimate
    (`expected_flip_rate_after`, and `auto`'s epsilon from it) is kept: the audit, scored again, may end a hair
    apart (another device, thread count or library version) and round to another 4th decimal, and the run would
    go on with another epsilon than it trained with so far, and the autopilot compare with another rate. A
    one-line note says so when the new estimate differs. With `suspects: drop | flip` the pairs it picked stay
    picked, found by content (`suspects.hashes`; a run made before they were recorded: the new audit's picks), and
    the pairs trained on must hash as they did (`content_hash_after`), else a UserError before anything is written:
    the resumed steps would train on other pairs. `data_changed`: the training data changed since (resumed with
    --allow-data-change): the new audit picks the suspects, and its estimate (and `auto`'s epsilon) is used, since
    the old one was of other pairs; a `resume:` line says so when the two differ."""
    result = audit_checked(checked, progress)
    section = checked.recipe.data.audit
    action = section.suspects if section is not None else "keep"
    p = result.p_flipped
    chosen = [] if action == "keep" else suspects(p, result.ranking(), section.share, section.threshold)
    same_pairs = resumed is not None and action != "keep" and not data_changed
    recorded = ((resumed or {}).get("suspects") or {}).get("hashes") if same_pairs else None
    if isinstance(recorded, list) and all(isinstance(h, str) for h in recorded):
        chosen = recorded_suspects(result.pairs, recorded)
    picked = set(chosen)
    if action == "drop":
        kept = [i for i in range(len(p)) if i not in picked]
        pairs, p_after = [result.pairs[i] for i in kept], [p[i] for i in kept]
    elif action == "flip":
        pairs = [_flipped(pair) if i in picked else pair for i, pair in enumerate(result.pairs)]
        p_after = [1 - x if i in picked else x for i, x in enumerate(p)]
    else:
        pairs, p_after = list(result.pairs), list(p)
    if not pairs:
        raise UserError("drops every training pair", where=checked.loaded.where("data.audit"))
    if action == "drop":  # fewer pairs: maybe no full batch, or a run in epochs that ends before evaluating
        from dpo.training.gate import check_pairs_counted

        try:
            check_pairs_counted(checked.loaded, checked.dpo_config, len(pairs))
        except UserError as exc:  # the counts it quotes are after the drop: say so
            raise UserError(f"{exc} (after data.audit dropped {len(chosen)} suspect pairs)") from None
    trained_on = (resumed or {}).get("content_hash_after") if same_pairs else None
    if isinstance(trained_on, str) and content_hash(pairs) != trained_on:
        raise UserError(
            f"audit.content_hash_after: the pairs that data.audit.suspects: {action} leaves now are not those the run "
            f"was made with (content hash {trained_on[:12]}... now {content_hash(pairs)[:12]}...): the label audit, "
            f"scored again, picks other suspects, and the resumed steps would train on other pairs; start a new run "
            f"in another --output-dir",
            where=str(run_dir / DATA_CARD),
        )
    if write:  # every process of a multi-process run audits (the same result, seeded); the main one writes
        print(render(result, write_audit(result, run_dir)), flush=True, file=sys.stdout)
    # rounded as data_card.json records it: the autopilot's label_audit rule compares the smoothing with that value
    expected = estimate = round(sum(p_after) / len(pairs), 4)
    kept = (resumed or {}).get("expected_flip_rate_after")
    if not (isinstance(kept, int | float) and not isinstance(kept, bool) and 0 <= kept <= 1):
        kept = None
    if kept is not None and not data_changed:
        expected = kept
    card = {
        **result.card(),
        "file": AUDIT_FILE,
        "suspects": {
            "action": action,
            **({"share": section.share} if section is not None and section.share is not None else {}),
            **({"threshold": section.threshold} if section is not None and section.threshold is not None else {}),
            "pairs": len(chosen),
            "rows": [{"source": result.origins[i][0], "row": result.origins[i][1]} for i in chosen],
            **({"hashes": [pair_hash(result.pairs[i]) for i in chosen]} if action != "keep" else {}),  # for resume
        },
        "expected_flip_rate_after": expected,
    }
    hyperparameters = dict(checked.loss_plan.hyperparameters)
    for key, value in hyperparameters.items():
        if value == AUTO:
            hyperparameters[key] = min(expected, EPSILON_CAP)
            card.setdefault("auto", {})[f"loss.{key}"] = hyperparameters[key]
    if write and expected != estimate:
        auto = "".join(f"; {key}: auto stays {value}" for key, value in card.get("auto", {}).items())
        print(
            f"resume: the label audit now estimates a flip rate of {estimate}; the run goes on with {expected}, the "
            f"estimate it was made with{auto}",
            flush=True,
        )
    elif write and kept is not None and data_changed and kept != estimate:
        auto = "".join(f"; {key}: auto is now {value}" for key, value in card.get("auto", {}).items())
        print(
            f"resume: the training data changed, so the run goes on with the label audit's new estimate of the flip "
            f"rate, {estimate}, not {kept}, the estimate it was made with{auto}",
            flush=True,
        )
    # content_hash stays the hash of the data as read, which is what --resume compares (a change the user made);
    # the pairs trained on after the drop or flip have their own
    card["content_hash_after"] = content_hash(pairs)
    data_card = {**checked.data.card, "audit": card}
    data_card["split"] = {**data_card["split"], "train_pairs": len(pairs)}
    data = PreparedData(pairs, checked.data.eval, data_card)
    plan = dataclasses.replace(checked.loss_plan, hyperparameters=hyperparameters)
    return dataclasses.replace(checked, data=data, loss_plan=plan)
