"""Parameter counts: the model a transformers config describes, built on the meta device and counted.

On the meta device every parameter has a shape and no storage: a 70B Llama is built in 0.04 s without
memory (CPU, one thread). `named_parameters()` yields a tied parameter once, so a tied head adds nothing.
This is the only parameter count in the planner; the layer description the memory estimate reads
(dpo/plan/architecture.py) is read from the same model.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

from dpo.errors import UserError

# Parameter names -> component, first match wins. The input embedding and the output head are recognised by
# identity (get_input_embeddings / get_output_embeddings), whatever the model calls them.
_COMPONENTS = (
    ("position_embeddings", re.compile(r"(wpe|embed_positions|position_embeddings)\.")),
    ("embeddings", re.compile(r"(embed|wte|word_embeddings)")),
    ("norms", re.compile(r"(norm|ln_|layernorm)", re.IGNORECASE)),
    ("router", re.compile(r"(router|\.gate\.weight$|shared_expert_gate)")),
    ("experts", re.compile(r"experts\.")),
    ("attention", re.compile(r"(attn|attention)")),
    ("mlp", re.compile(r"(mlp|feed_forward|ffn|fc\d)")),
)


@dataclass(frozen=True)
class ParameterCount:
    """Parameters of a model, each counted once (a tied head adds nothing), split by component."""

    total: int
    by_component: dict[str, int]
    # how the total was obtained; `dpo plan --json` reports it
    method: str = "meta-device"


def meta_model(config):
    """The causal LM `config` describes, built on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            # a copy: building a model writes into its config (the attention implementation it picked)
            return AutoModelForCausalLM.from_config(copy.deepcopy(config))
    except (ValueError, KeyError, TypeError, ImportError, ZeroDivisionError) as exc:  # 0 heads: a division
        raise UserError(
            f"transformers cannot build model_type '{config.model_type}' as a causal LM "
            f"({type(exc).__name__}: {first_line(exc)})"
        ) from exc


def count_parameters(model) -> ParameterCount:
    """Exact parameter count of a (meta-device) model: each parameter once, split by component."""
    head = model.get_output_embeddings()
    embeddings = model.get_input_embeddings()
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    embedding_ids = {id(p) for p in embeddings.parameters()} if embeddings is not None else set()
    # a tied head shares the embedding's weight: reported as 0, which render() shows as tied
    parts = {"embeddings": 0, "attention": 0, "mlp": 0, "norms": 0, "head": 0}
    for name, param in model.named_parameters():  # a tied parameter is yielded once
        if id(param) in embedding_ids:
            component = "embeddings"
        elif id(param) in head_ids:
            component = "head"
        else:
            component = next((c for c, pattern in _COMPONENTS if pattern.search(name)), "other")
        parts[component] = parts.get(component, 0) + param.numel()
    return ParameterCount(sum(parts.values()), parts)


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
