"""Shared-prompt layout: one row per pair, [prompt | chosen | rejected], so the prompt is computed once.

TRL's collator gives 2B rows, the B chosen sequences then the B rejected ones, each `prompt + answer`, right-padded.
Both rows of a pair start with the same prompt, which the ordinary forward computes twice. Here each pair becomes one
row:

    [ prompt[:-1] | prompt[-1], chosen | prompt[-1], rejected ]
      shared        chosen branch        rejected branch

with position ids that restart the rejected branch where the prompt ends, and a 4-D attention mask in which each
branch sees the shared part and itself only (rejected tokens never attend to chosen ones). The prompt's last token
is repeated in each branch because its hidden state predicts each answer's first token, and one position can carry
one label only. Every token then has exactly the keys, values and position it has in the ordinary forward, so the
per-token log-probs are the same up to float rounding (tests/training/test_prompt_sharing.py checks 1e-4 in fp32).

Cost per pair: len(prompt) + len(chosen) + len(rejected) + 1 tokens instead of 2 * len(prompt) + len(chosen) +
len(rejected). Labels are given pre-shifted (TRL's fused LM head takes `shift_labels`), and `unpack` maps the per-token
results back to the (2B, T - 1) layout of the ordinary path, so everything downstream is unchanged.

Pure tensor code: no model, no trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100
# transformers' attention implementations that take a custom 4-D mask and position ids as they are
SUPPORTED_ATTENTION = ("sdpa", "eager")


@dataclass
class PackedPairs:
    """One row per pair. `segment`: 0 shared prompt, 1 chosen branch, 2 rejected branch, -1 padding."""

    input_ids: torch.Tensor  # (B, L)
    position_ids: torch.Tensor  # (B, L)
    segment: torch.Tensor  # (B, L)
    shift_labels: torch.Tensor  # (B, L): the token each position predicts, IGNORE where none is scored
    index: torch.Tensor  # (2B, T - 1): packed position of each position of the ordinary layout
    valid: torch.Tensor  # (2B, T - 1) bool: the ordinary layout's scored positions (its shifted completion mask)

    def attention_mask(self, implementation: str, dtype: torch.dtype) -> torch.Tensor:
        """The (B, 1, L, L) mask in the form `implementation` expects: bool (True = attend) for sdpa, additive for
        eager. A query attends to earlier keys of the shared part and of its own branch; padding attends to itself
        only (a row with no key would give NaN, which backward would spread)."""
        seg_q, seg_k = self.segment.unsqueeze(2), self.segment.unsqueeze(1)
        length = self.segment.size(1)
        positions = torch.arange(length, device=self.segment.device)
        causal = positions.view(1, length, 1) >= positions.view(1, 1, length)
        same_branch = (seg_k == 0) | (seg_k == seg_q)
        allowed = causal & same_branch & (seg_k >= 0) & (seg_q >= 0)
        allowed = allowed | (torch.eye(length, dtype=torch.bool, device=allowed.device) & (seg_q < 0))
        allowed = allowed.unsqueeze(1)
        if implementation == "sdpa":
            return allowed
        blocked = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return blocked.masked_fill_(~allowed, torch.finfo(dtype).min)

    def unpack(self, per_token: torch.Tensor) -> torch.Tensor:
        """(B, L) per-position values of the packed rows -> (2B, T - 1) in the ordinary layout, 0 where not scored."""
        doubled = torch.cat([per_token, per_token])
        values = doubled.gather(1, self.index)
        return values.masked_fill(~self.valid, 0)

    def unpack_rows(self, per_position: torch.Tensor) -> torch.Tensor:
        """(B, L, ...) -> (2B, T - 1, ...): the values at the positions of the ordinary layout (not masked)."""
        doubled = torch.cat([per_position, per_position])
        index = self.index.view(*self.index.shape, *([1] * (per_position.dim() - 2)))
        return doubled.gather(1, index.expand(-1, -1, *per_position.shape[2:]))


def pack_pairs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor, pad_token_id: int
) -> PackedPairs | None:
    """The shared-prompt layout of a batch from TRL's preference collator, or None where it would not be exact: a pair
    whose two rows do not start with the same prompt (truncated from the left, say), or a row with padding inside."""
    pairs = input_ids.size(0) // 2
    lengths = attention_mask.sum(dim=1)
    if bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):
        return None  # not right-padded: the ordinary forward's positions would not be 0..n-1
    rows = []
    for i in range(pairs):
        chosen, rejected = i, pairs + i
        lc, lr = int(lengths[chosen]), int(lengths[rejected])
        prompt_c = _prompt_length(completion_mask[chosen], lc)
        prompt_r = _prompt_length(completion_mask[rejected], lr)
        if prompt_c != prompt_r or not torch.equal(input_ids[chosen, :prompt_c], input_ids[rejected, :prompt_r]):
            return None
        rows.append((lc, lr, max(prompt_c - 1, 0)))
    width = max(lc + lr - shared for lc, lr, shared in rows)
    device = input_ids.device
    packed = torch.full((pairs, width), pad_token_id, dtype=input_ids.dtype, device=device)
    positions = torch.zeros((pairs, width), dtype=torch.long, device=device)
    segment = torch.full((pairs, width), -1, dtype=torch.long, device=device)
    labels = torch.full((pairs, width), IGNORE, dtype=input_ids.dtype, device=device)
    scored = completion_mask[:, 1:].bool()
    seq_len = input_ids.size(1) - 1
    index = torch.zeros((2 * pairs, seq_len), dtype=torch.long, device=device)
    for i, (lc, lr, shared) in enumerate(rows):
        chosen, rejected = input_ids[i], input_ids[pairs + i]
        end = lc + lr - shared
        packed[i, :lc] = chosen[:lc]  # shared part + chosen branch: the chosen row itself
        packed[i, lc:end] = rejected[shared:lr]
        positions[i, :lc] = torch.arange(lc, device=device)
        positions[i, lc:end] = torch.arange(shared, lr, device=device)
        segment[i, :shared], segment[i, shared:lc], segment[i, lc:end] = 0, 1, 2
        # ordinary position t predicts token t + 1; its packed position: t (chosen), lc + t - shared (rejected)
        t = torch.arange(seq_len, device=device)
        index[i] = t.clamp(max=width - 1)
        index[pairs + i] = (lc + t - shared).clamp(0, width - 1)
        labels[i] = _scatter_labels(labels[i], index[i], chosen[1:], scored[i])
        labels[i] = _scatter_labels(labels[i], index[pairs + i], rejected[1:], scored[pairs + i])
    # the scored positions of a rejected row lie in its branch (t >= shared), so `index` never points elsewhere there
    return PackedPairs(packed, positions, segment, labels, index, scored)


def _prompt_length(completion_row: torch.Tensor, length: int) -> int:
    """Tokens before the first completion token (the whole row when the answer was truncated away)."""
    hits = completion_row[:length].nonzero()
    return int(hits[0]) if len(hits) else length


def _scatter_labels(labels: torch.Tensor, index: torch.Tensor, targets: torch.Tensor, scored: torch.Tensor):
    return labels.index_put((index[scored],), targets[scored])
