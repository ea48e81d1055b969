"""Pre-flight plan for a DPO run: the exact parameter count of a model and the memory the run will need.

Everything comes from the model's config alone: the model is built on the meta device (shapes, no memory, no
weights) and TRL is not imported. The parameters are counted on it (dpo/plan/count.py); the layer description
the memory estimate reads comes from it too (dpo/plan/architecture.py); the estimate (dpo/plan/memory.py) and
the largest batch that fits a device (dpo/plan/fit.py) follow from the options (dpo/plan/options.py).

Usage: `build_plan("smollm2-135m-instruct", PlanOptions(batch_size=4)).render()`, or `dpo plan SOURCE`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dpo.errors import UserError
from dpo.plan.architecture import FAMILIES, describe
from dpo.plan.count import ParameterCount, count_parameters, meta_model
from dpo.plan.fit import fit
from dpo.plan.lora import lora_parameters
from dpo.plan.memory import estimate
from dpo.plan.options import DTYPE_BYTES, OPTIMIZERS, REFERENCES, PlanOptions
from dpo.plan.units import fmt_bytes, fmt_count


@dataclass
class Plan:
    """The parameter count and the memory estimate for one set of options; `memory` values are bytes."""

    source: str
    model_type: str
    options: PlanOptions
    parameters: ParameterCount
    trainable: int
    memory: dict[str, int]
    activations: dict[str, int]
    phase: str
    suggestions: list[str] = field(default_factory=list)
    max_batch_size: int | None = None
    notes: list[str] = field(default_factory=list)  # what the plan changed from the options asked for, and why
    recipe: str | None = None  # the recipe the options were read from (`dpo plan RECIPE`)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "model_type": self.model_type,
            "parameters": {
                "total": self.parameters.total,
                "by_component": dict(self.parameters.by_component),
                "method": self.parameters.method,
                "trainable": self.trainable,
            },
            "memory": dict(self.memory),
            "activations": dict(self.activations),
            "peak_phase": self.phase,
            "max_batch_size": self.max_batch_size,
            "options": {**asdict(self.options), "lora_targets": list(self.options.lora_targets)},
            "suggestions": list(self.suggestions),
            "notes": list(self.notes),
            "recipe": self.recipe,
        }

    def _setup(self) -> str:
        kind = f"LoRA r={self.options.lora_rank}" if self.options.lora_rank else "full fine-tuning"
        return f"{kind} {fmt_count(self.trainable)} trainable"

    def summary_line(self) -> str:
        o = self.options
        dtype = o.dtype + (f" + {o.autocast} autocast" if o.autocast else "")
        ckpt = ", gradient checkpointing" if o.gradient_checkpointing else ""
        reference = ", no reference (reference-free loss)" if o.reference == "none" else ""
        accumulation = (
            f" with gradient_accumulation_steps={o.gradient_accumulation_steps}"
            if o.gradient_accumulation_steps > 1
            else ""
        )
        return (
            f"plan: {fmt_count(self.parameters.total)} params ({self.parameters.method}), {self._setup()}, "
            f"est. peak {fmt_bytes(self.memory['total'])} at batch {o.batch_size} x {o.seq_len} tokens{accumulation}, "
            f"{dtype}{ckpt}{reference}"
        )

    def render(self) -> str:
        o, p = self.options, self.parameters
        lines = [f"{self.source} ({self.model_type}): {p.total:,} parameters ({p.method})"]
        if self.recipe:
            lines.insert(
                0,
                f"recipe {self.recipe}: its model, LoRA, batch, accumulation, length, dtype and reference "
                "(options given win)",
            )
        if self.model_type not in FAMILIES:
            lines.append(
                "  (not in the planner's table of layer layouts: activations estimated as for a Llama-shaped "
                "layer of the same sizes)"
            )
        width = max(len(k) for k in p.by_component)
        for name, n in p.by_component.items():
            if n == 0 and name != "head":
                continue
            note = " (tied to embeddings)" if name == "head" and n == 0 else ""
            share = f"{100 * n / p.total:5.1f}%" if p.total else ""
            lines.append(f"  {name:<{width}}  {n:>15,}  {share}{note}")
        lines += ["", *(f"note: {n}" for n in self.notes)] if self.notes else []  # before the setup they changed
        reference = o.resolved_reference()
        lines += [
            "",
            f"setup: {self._setup()}"
            + (f" on {','.join(o.lora_targets)}" if o.lora_rank else "")
            + f"; reference: {reference}; optimizer: {o.optimizer}; {o.dtype}"
            + (f" + {o.autocast} autocast" if o.autocast else "")
            + f"; batch {o.batch_size} pairs x {o.seq_len} tokens ({2 * o.batch_size * o.seq_len:,} tokens per "
            "forward)"
            + (
                f", gradient_accumulation_steps={o.gradient_accumulation_steps} "
                f"({o.batch_size * o.gradient_accumulation_steps} pairs per optimizer step)"
                if o.gradient_accumulation_steps > 1
                else ""
            )
            + f"; gradient checkpointing {'on' if o.gradient_checkpointing else 'off'}; device {o.device}",
            "",
            f"memory (estimated peak {fmt_bytes(self.memory['total'])}, reached in the {self.phase}):",
        ]
        saved = ""
        if reference == "none":  # what a reference would have cost this setup (a copy without LoRA)
            copy = self.parameters.total * DTYPE_BYTES[o.dtype] if not o.lora_rank else 0
            saved = f"; saves {fmt_bytes(copy)} of reference weights" if copy else "; saves the reference forward"
        notes = {
            "weights": f"policy in {o.dtype}" + (" + fp32 LoRA adapter" if o.lora_rank else ""),
            "reference": REFERENCES[reference] + saved,
            "gradients": "trainable parameters"
            + (
                "; accumulated: alive through every later micro-batch's forward and backward"
                if o.gradient_accumulation_steps > 1
                else ""
            ),
            "optimizer": OPTIMIZERS[o.optimizer].description,
            "activations": (
                "kept for backward; without checkpointing: " + fmt_bytes(self.activations["without_checkpointing"])
                if o.gradient_checkpointing
                else "kept for backward; with checkpointing: " + fmt_bytes(self.activations["with_checkpointing"])
            ),
            "logits_workspace": "fused LM head tiles and fp32 gradient buffers (full logits never exist)",
            "runtime": (
                "assumed: CUDA context and library workspaces"
                if o.device == "cuda"
                else "measured: torch's CPU runtime after the first step"
            ),
            "total": "weights + reference + optimizer + runtime + peak of the step (not the column sum)",
        }
        for name, n in self.memory.items():
            lines.append(f"  {name:<17} {fmt_bytes(n):>10}   {notes.get(name, '')}")
        if self.suggestions:
            lines += ["", "suggestions:", *(f"  - {s}" for s in self.suggestions)]
        return "\n".join(lines)


def build_plan(source: str, options: PlanOptions | None = None) -> Plan:
    """Plan a DPO run for SOURCE: a config.json, a local model directory, or a model alias."""
    options = options or PlanOptions()
    options.validate()
    config = _load_config(source)
    try:  # a config that builds no model, or one whose layers cannot be read: an error naming the source
        model = meta_model(config)
        count = count_parameters(model)
        arch = describe(model)
    except UserError as exc:
        raise UserError(str(exc), where=source) from exc
    notes = []
    if options.lora_rank and lora_parameters(arch, options.lora_rank, options.lora_targets) == 0:
        # the count stands whatever the adapter; the memory plan is then the one setup that applies, full fine-tuning
        available = sorted({lin.name for lin, _ in arch.linears})
        notes.append(
            f"LoRA does not apply: none of its targets ({', '.join(options.lora_targets)}) is a Linear layer of this "
            f"{arch.model_type} model, whose Linear layers are: {', '.join(available)}. Planned as full fine-tuning; "
            "to plan LoRA, name some of those with --lora-targets (or all-linear)"
        )
        reference = "auto" if options.reference == "adapter" else options.reference
        options = dataclasses.replace(options, lora_rank=None, reference=reference)
    est = estimate(arch, count.total, options)
    plan = Plan(
        source=source,
        model_type=arch.model_type,
        options=options,
        parameters=count,
        trainable=est["trainable"],
        memory=est["memory"],
        activations=est["activations"],
        phase=est["phase"],
        notes=notes,
    )
    if options.gpu_memory_gib is not None:
        plan.max_batch_size, plan.suggestions = fit(arch, count.total, options)
    return plan


def _load_config(source: str):
    from dpo.models import load_config

    path = Path(source).expanduser()
    looks_like_path = source.endswith(".json") or "/" in source or source.startswith(("~", "."))
    if looks_like_path and not path.exists():
        raise UserError("no such file or directory", where=source)
    try:
        return load_config(source)
    except UserError as exc:  # unreadable file, bad JSON, unknown model_type: named by the source given here
        raise UserError(str(exc).removeprefix("model.name_or_path: "), where=source) from None
