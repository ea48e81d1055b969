"""What a planned DPO run does: `PlanOptions` and the tables of the names its options accept.

Every `PlanOptions` field is a `dpo plan` option: dpo/cli.py builds the command's options from the fields
(name, type, default, and the help text in each field's metadata), so a new field is a new option.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dpo.errors import UserError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# dtypes matmuls may run in under autocast over float32 weights
AUTOCASTS = ("bfloat16", "float16")


@dataclass(frozen=True)
class Optimizer:
    """Bytes of optimizer state per trainable parameter, given the parameter's own byte width."""

    state_bytes: Callable[[int], float]
    description: str


# torch's AdamW keeps exp_avg and exp_avg_sq as `zeros_like(param)`: fp32 for fp32 parameters and LoRA
# adapters (PEFT keeps adapters in fp32), but bf16 for parameters loaded in bf16 (no fp32 master copy).
OPTIMIZERS: dict[str, Optimizer] = {
    "adamw": Optimizer(lambda pb: 2 * pb, "AdamW: two states per parameter, in the parameter's dtype"),
    "adamw_8bit": Optimizer(lambda pb: 2.0, "8-bit AdamW (bitsandbytes): two 1-byte states per parameter"),
    "sgd": Optimizer(lambda pb: 0.0, "SGD without momentum: no state"),
}

REFERENCES = {
    "auto": "adapter-disabled base with LoRA, a second copy without",
    "copy": "a second full copy of the model, frozen",
    "synced": "a second full copy that TR-DPO (regularizers.sync_ref) moves towards the policy: it needs full "
    "fine-tuning and cannot be precomputed",
    "adapter": "the policy with its LoRA adapter disabled (no extra weights)",
    "precomputed": "reference log-probs computed once before training (no extra weights, no reference forward)",
    "none": "a reference-free loss (simpo, orpo): no reference model, no reference forward, no precompute",
}

DEVICES = {
    "cuda": "GPU, TRL's Triton fused LM head; adds an assumed CUDA runtime overhead",
    "cpu": "CPU, TRL's torch fallback for the fused LM head (larger workspace)",
}

DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _names(table) -> str:
    return " | ".join(table)


def _option(default: Any, help: str, *, option: str | None = None, none_flag: tuple[str, str] | None = None):
    """A PlanOptions field. `help` is the option's --help text. `option`: the CLI option's name where it is not
    --field-name. `none_flag`: (flag, help) of a CLI flag that sets the field to None, for a field whose default
    is not None (the option itself then takes the field's type without None)."""
    return field(default=default, metadata={"help": help, "option": option, "none_flag": none_flag})


@dataclass
class PlanOptions:
    """What the DPO run will do. Every field is a `dpo plan` option (see the module docstring)."""

    dtype: str = _option("float32", f"Dtype the model is loaded in: {_names(DTYPE_BYTES)}.")
    batch_size: int = _option(
        8, "Preference pairs per device; DPO forwards 2 x batch_size sequences (chosen + rejected concatenated)."
    )
    gradient_accumulation_steps: int = _option(
        1,
        "Micro-batches per optimizer step (the Trainer's gradient_accumulation_steps); above 1 the accumulated "
        "gradients stay alive through each later micro-batch's forward and backward.",
    )
    seq_len: int = _option(512, "Tokens per sequence (prompt + completion, after padding).")
    lora_rank: int | None = _option(
        16, "LoRA rank.", none_flag=("--full", "Full fine-tuning instead of LoRA (no LoRA rank).")
    )
    lora_targets: tuple[str, ...] = _option(
        DEFAULT_LORA_TARGETS, "Module names LoRA wraps (PEFT target_modules), comma-separated, or all-linear."
    )
    gradient_checkpointing: bool = _option(
        False, "Recompute each layer in the backward pass instead of keeping its activations."
    )
    reference: str = _option(
        "auto",
        f"{_names(REFERENCES)} (auto: adapter with LoRA, copy without; synced: TR-DPO's moving copy; none: a "
        "reference-free loss).",
    )
    optimizer: str = _option("adamw", f"{_names(OPTIMIZERS)}.")
    gpu_memory_gib: float | None = _option(
        None,
        "Memory of one device in GiB; the plan then suggests the largest batch that fits, or what to change.",
        option="--gpu-memory",
    )
    device: str = _option("cuda", f"{_names(DEVICES)}: which fused LM head TRL runs (Triton kernel or torch fallback).")
    autocast: str | None = _option(
        None, f"{_names(AUTOCASTS)}: matmuls under autocast over float32 weights (TRL's bf16=True)."
    )

    def resolved_reference(self) -> str:
        if self.reference == "auto":
            return "adapter" if self.lora_rank else "copy"
        return self.reference

    def validate(self) -> None:
        def bad(name: str, value: Any, allowed) -> UserError:
            return UserError(f"plan option {name}={value!r} is not one of: {', '.join(allowed)}")

        if self.dtype not in DTYPE_BYTES:
            raise bad("dtype", self.dtype, DTYPE_BYTES)
        if self.reference not in REFERENCES:
            raise bad("reference", self.reference, REFERENCES)
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", self.optimizer, OPTIMIZERS)
        if self.device not in DEVICES:
            raise bad("device", self.device, DEVICES)
        if self.autocast is not None:
            if self.autocast not in AUTOCASTS:
                raise bad("autocast", self.autocast, AUTOCASTS)
            if self.dtype != "float32":
                raise UserError("plan option autocast needs dtype=float32 (autocast keeps float32 weights)")
        if self.batch_size < 1:
            raise UserError(f"plan option batch_size must be at least 1, got {self.batch_size}")
        if self.gradient_accumulation_steps < 1:
            raise UserError(
                f"plan option gradient_accumulation_steps must be at least 1, got {self.gradient_accumulation_steps}"
            )
        if self.seq_len < 2:
            raise UserError(f"plan option seq_len must be at least 2, got {self.seq_len}")
        if self.lora_rank is not None and self.lora_rank < 1:
            raise UserError(
                f"plan option lora_rank must be at least 1 (or None for full fine-tuning), got {self.lora_rank}"
            )
        if self.lora_rank is None and self.reference == "adapter":
            raise UserError("plan option reference='adapter' needs LoRA (set lora_rank)")
        if self.lora_rank is not None and self.reference == "synced":
            raise UserError("plan option reference='synced' needs full fine-tuning (--full): TR-DPO syncs a full copy")
        if self.gpu_memory_gib is not None and not (math.isfinite(self.gpu_memory_gib) and self.gpu_memory_gib > 0):
            raise UserError(f"plan option gpu_memory_gib must be a positive number, got {self.gpu_memory_gib}")
