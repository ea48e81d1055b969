"""A sequence's log-probability from its tokens' ones: the one reduction the trainer and `dpo eval` share.

    per-sequence log-prob = sum over the completion's tokens of log p(token | prompt, earlier tokens)

With LD-DPO (`regularizers.ld_alpha`, arXiv 2409.06411, eq. 9) the tokens of each answer past the length of the
shorter answer of its pair count ld_alpha times: the shared prefix in full, the verbose tail down-weighted, so that a
preference cannot be won by length alone. The trainer reduces the policy's and the reference's per-token log-probs
with it (so its logged rewards/* are of these), and `dpo eval` (dpo/analysis/evaluate.py) the implicit reward's.

Torch only: below the training and analysis layers, so that both use this one function.
"""

from __future__ import annotations

import torch


def reduce_logps(per_token_logps: torch.Tensor, mask: torch.Tensor, ld_alpha: float | None = None) -> torch.Tensor:
    """(2B,) per-sequence log-probs from (2B, T) per-token log-probs of the rows [chosen; rejected] (zero where `mask`,
    the completion tokens, is 0). `ld_alpha` None: the plain sum; else LD-DPO's shared part + ld_alpha * tail, the
    shared part a pair's first min(|chosen|, |rejected|) completion tokens."""
    if ld_alpha is None:
        return per_token_logps.sum(dim=1)
    positions = mask.cumsum(dim=1)
    chosen_len, rejected_len = mask.sum(dim=1).chunk(2)
    shared = torch.minimum(chosen_len, rejected_len).repeat(2).unsqueeze(1)
    shared_part = (per_token_logps * ((positions > 0) & (positions <= shared))).sum(dim=1)
    tail_part = (per_token_logps * (positions > shared)).sum(dim=1)
    return shared_part + ld_alpha * tail_part
