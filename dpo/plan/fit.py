"""Fitting a device: the largest per-device batch whose estimated peak fits, and what to change when none does."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from dpo.plan.architecture import Architecture
from dpo.plan.lora import lora_parameters
from dpo.plan.memory import estimate
from dpo.plan.options import DEFAULT_LORA_TARGETS, PlanOptions
from dpo.plan.units import GIB, fmt_bytes

# Fraction of --gpu-memory the plan lets itself use: the caching allocator fragments, which is not modelled.
GPU_HEADROOM = 0.95


def _largest_batch(arch: Architecture, total: int, options: PlanOptions, budget: float) -> int:
    """Largest batch_size whose estimated peak is within budget (0 if even 1 pair does not fit)."""

    def fits(b: int) -> bool:
        return estimate(arch, total, replace(options, batch_size=b))["memory"]["total"] <= budget

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= 1 << 16 and fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # fits(lo) and not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _changes(arch: Architecture, options: PlanOptions) -> list[tuple[str, dict[str, Any]]]:
    """Changes that lower the peak, cheapest in quality and speed first; only those that apply to this model."""
    changes: list[tuple[str, dict[str, Any]]] = []
    if not options.gradient_checkpointing:
        changes.append(("turn on gradient checkpointing", {"gradient_checkpointing": True}))
    if options.resolved_reference() == "copy":
        changes.append(("precompute the reference log-probs (reference=precomputed)", {"reference": "precomputed"}))
    if options.lora_rank is None and options.reference != "synced":  # TR-DPO cannot sync an adapter-disabled base
        # q/k/v/o where the model has them (Llama and kin), else every Linear (GPT-2's c_attn, c_proj, c_fc)
        default_applies = lora_parameters(arch, 16, DEFAULT_LORA_TARGETS) > 0
        targets = DEFAULT_LORA_TARGETS if default_applies else ("all-linear",)
        lora: dict[str, Any] = {"lora_rank": 16, "lora_targets": targets}
        if options.reference == "copy":
            lora["reference"] = "adapter"
        where = "q/k/v/o" if default_applies else "all Linear layers"
        changes.append((f"train a LoRA adapter (r=16 on {where}) instead of all weights", lora))
    if options.dtype == "float32" and options.autocast is None:
        changes.append(("load the weights in bfloat16", {"dtype": "bfloat16"}))
    if options.optimizer == "adamw" and options.lora_rank is None:
        changes.append(("use 8-bit AdamW (optimizer=adamw_8bit)", {"optimizer": "adamw_8bit"}))
    return changes


def _accumulation_advice(arch: Architecture, total: int, options: PlanOptions, budget: float, best: int) -> str:
    """How to keep the asked pairs per optimizer step with a smaller per-device batch. That batch must fit *with*
    accumulation, whose gradients stay alive through every later micro-batch: the largest such batch can be
    smaller than `best`, the largest without (when options.gradient_accumulation_steps is 1)."""
    pairs = options.batch_size * options.gradient_accumulation_steps
    # the estimate is the same for any number of steps above 1
    accumulating = replace(options, gradient_accumulation_steps=max(2, options.gradient_accumulation_steps))
    best_acc = best if options.gradient_accumulation_steps > 1 else _largest_batch(arch, total, accumulating, budget)
    note = "" if best_acc == best else f" ({best_acc or 'none'} with gradient accumulation, whose gradients stay alive)"
    if not best_acc:
        return f"{note}, so gradient accumulation cannot keep {pairs} pairs per optimizer step"
    # divisor <= best_acc < batch_size <= pairs: at least 2 micro-batches, so the batch was sized with accumulation
    divisor = max(k for k in range(1, best_acc + 1) if pairs % k == 0)
    return (
        f"{note}. To keep {pairs} pairs per optimizer step: per-device batch {divisor} with "
        f"gradient_accumulation_steps={pairs // divisor}"
    )


def fit(arch: Architecture, total: int, options: PlanOptions) -> tuple[int, list[str]]:
    """The largest per-device batch that fits options.gpu_memory_gib, and what to do when the asked one does not."""
    budget = options.gpu_memory_gib * GIB * GPU_HEADROOM
    cap = f"{options.gpu_memory_gib:g} GiB (less {1 - GPU_HEADROOM:.0%} headroom)"
    asked = options.batch_size
    best = _largest_batch(arch, total, options, budget)
    peak = fmt_bytes(estimate(arch, total, options)["memory"]["total"])
    if best >= asked:
        return best, [
            f"batch {asked} fits in {cap}: est. peak {peak}; the largest per-device batch that fits is {best}"
        ]
    if best:
        advice = [
            f"batch {asked} (est. peak {peak}) does not fit in {cap}; the largest per-device batch that fits is "
            f"{best}{_accumulation_advice(arch, total, options, budget, best)}"
        ]
    else:
        advice = [f"even 1 pair of {options.seq_len} tokens does not fit in {cap}"]

    def largest(change: dict[str, Any]) -> int:
        return _largest_batch(arch, total, replace(options, **change), budget)

    changes = _changes(arch, options)
    prefix = "or " if best else ""
    single = [
        f"{prefix}{label}: batch {asked} fits (up to {b})"
        for label, change in changes
        if (b := largest(change)) >= asked
    ]
    if single:
        return best, advice + single
    combined: dict[str, Any] = {}
    labels: list[str] = []
    for label, change in changes:
        if change.get("optimizer") == "adamw_8bit" and combined.get("lora_rank"):
            continue  # 8-bit states save little on a LoRA adapter
        combined.update(change)
        labels.append(label)
        if (b := largest(combined)) >= asked:
            return best, advice + [f"{prefix}together: {'; '.join(labels)}: batch {asked} fits (up to {b})"]
    if not best:
        for seq_len in (options.seq_len // 2, options.seq_len // 4):
            if seq_len >= 2 and (fits := largest({**combined, "seq_len": seq_len})):
                cut = f"cut sequences to {seq_len} tokens (up to batch {fits} there)"
                return best, advice + [f"together: {'; '.join(labels)}; and {cut}" if labels else cut]
        smallest = estimate(arch, total, replace(options, **combined, batch_size=1))["memory"]
        even_with = f" even with: {'; '.join(labels)}" if labels else ""
        advice.append(
            f"nothing considered fits: 1 pair needs {fmt_bytes(smallest['total'])}{even_with} (the weights alone "
            f"take {fmt_bytes(smallest['weights'])}); shard the model over several devices, quantize it, or pick "
            "a smaller model"
        )
    return best, advice
