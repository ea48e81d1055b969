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
from pathlib import Path

from dpo.data.prepare import PreparedData, content_hash
from dpo.data.rows import share_of
from dpo.errors import UserError
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


def apply_audit(checked, run_dir: Path, progress: bool = True, write: bool = True, resumed: dict | None = None):
    """The checked recipe with the audit applied: its training pairs after `data.audit.suspects`, its loss plan
    with `auto` resolved, and the audit in its data card. Writes RUN_DIR/audit.json (when `write`). A UserError
    when the drop leaves no pairs, or fewer than the run needs (gate.check_pairs_counted).

    `resumed`: the audit section of data_card.json of a run that resumes from a checkpoint. Its flip-rate estimate
    (`expected_flip_rate_after`, and `auto`'s epsilon from it) is kept: the audit, scored again, may end a hair
    apart (another device, thread count or library version) and round to another 4th decimal, and the run would
    go on with another epsilon than it trained with so far, and the autopilot compare with another rate. A
    one-line note says so when the new estimate differs."""
    result = audit_checked(checked, progress)
    section = checked.recipe.data.audit
    action = section.suspects if section is not None else "keep"
    p = result.p_flipped
    chosen = [] if action == "keep" else suspects(p, result.ranking(), section.share, section.threshold)
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
    if write:  # every process of a multi-process run audits (the same result, seeded); the main one writes
        print(render(result, write_audit(result, run_dir)), flush=True, file=sys.stdout)
    # rounded as data_card.json records it: the autopilot's label_audit rule compares the smoothing with that value
    expected = estimate = round(sum(p_after) / len(pairs), 4)
    kept = (resumed or {}).get("expected_flip_rate_after")
    if isinstance(kept, int | float) and not isinstance(kept, bool) and 0 <= kept <= 1:
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
    # content_hash stays the hash of the data as read, which is what --resume compares (a change the user made);
    # the pairs trained on after the drop or flip have their own
    card["content_hash_after"] = content_hash(pairs)
    data_card = {**checked.data.card, "audit": card}
    data_card["split"] = {**data_card["split"], "train_pairs": len(pairs)}
    data = PreparedData(pairs, checked.data.eval, data_card)
    plan = dataclasses.replace(checked.loss_plan, hyperparameters=hyperparameters)
    return dataclasses.replace(checked, data=data, loss_plan=plan)
