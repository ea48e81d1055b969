"""Which Linear modules a LoRA adapter wraps, and the trainable parameters it adds."""

from __future__ import annotations

from dpo.plan.architecture import Architecture


def lora_matches(targets: tuple[str, ...], name: str) -> bool:
    # PEFT's target_modules as a list matches a module whose full name equals an entry or ends with "." + entry; the
    # planner knows a Linear by its own name, so an entry with a path (self_attn.q_proj) counts by its last part.
    # "all-linear" wraps every Linear but the output layer (the head is not in Architecture.linears)
    return "all-linear" in targets or any(target.rsplit(".", 1)[-1] == name for target in targets)


def lora_parameters(arch: Architecture, rank: int, targets: tuple[str, ...]) -> int:
    """Trainable parameters LoRA adds: A (rank x in) and B (out x rank) for each wrapped Linear."""
    return sum(
        n * rank * (lin.in_features + lin.out_features) for lin, n in arch.linears if lora_matches(targets, lin.name)
    )
