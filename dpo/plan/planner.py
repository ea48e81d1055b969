"""Pre-flight plan for a DPO run: the exact parameter count of a model and the memory the run will need.

Everything here is computed from the model's config alone; no weights are loaded and TRL is not imported.

* Parameters. `FAMILIES` maps a config's `model_type` to a function that describes the model's layers
  (grouped-query attention and explicit `head_dim`, attention/MLP biases, gated or plain MLPs, experts and
  router, RMSNorm or LayerNorm, learned or rotary positions, tied or untied head). The count is exact: the
  tests check it against instantiating the same config on the meta device. Architectures outside the table
  that transformers knows are counted by instantiating them on the meta device (`method="meta-device"`).
* Memory. A DPO step forwards the policy on chosen and rejected concatenated (2 x batch_size sequences of
  seq_len tokens), forwards the reference under no_grad, backpropagates and steps the optimizer. The plan
  adds up the weights (policy, reference), the gradients and optimizer states of the trainable parameters,
  the activations autograd keeps (with and without gradient checkpointing) and the workspace of TRL's fused
  LM head, and takes the peak over the phases of the step (see `_estimate`). The per-tensor rules are written
  next to the code that applies them; `eval/bench_plan_memory.py` measures the estimate against real runs.

Usage: `build_plan("smollm2-135m-instruct", PlanOptions(batch_size=4)).render()`, or `dpo plan SOURCE`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from dpo.errors import UserError

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# --------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------


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
    "adapter": "the policy with its LoRA adapter disabled (no extra weights)",
    "precomputed": "reference log-probs computed once before training (no extra weights, no reference forward)",
}

DEVICES = {
    "cuda": "GPU, TRL's Triton fused LM head; adds an assumed CUDA runtime overhead",
    "cpu": "CPU, TRL's torch fallback for the fused LM head (larger workspace)",
}

# Memory the framework itself takes once training runs, outside the tensors modelled here. CUDA: the context,
# cuBLAS/cuDNN workspaces, NCCL buffers; not measured here (no GPU in CI), a typical figure stated as an
# assumption. CPU: thread pools, oneDNN primitive caches, autograd engine; eval/bench_plan_memory.py measured
# 27-53 MiB after the first step.
RUNTIME_BYTES = {"cuda": int(0.75 * GIB), "cpu": 40 * 1024**2}
# Fraction of --gpu-memory the plan lets itself use: the caching allocator fragments, which is not modelled.
GPU_HEADROOM = 0.95


@dataclass
class PlanOptions:
    """What the DPO run will do. Every field maps to a `dpo plan` option of the same name."""

    dtype: str = "float32"
    """Dtype the model is loaded in: float32 | bfloat16 | float16."""
    batch_size: int = 8
    """Preference pairs per device; DPO forwards 2 * batch_size sequences (chosen + rejected concatenated)."""
    seq_len: int = 512
    """Tokens per sequence (prompt + completion, after padding)."""
    lora_rank: int | None = 16
    """LoRA rank; None for full fine-tuning."""
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """Module names LoRA wraps (PEFT `target_modules`), or ("all-linear",)."""
    gradient_checkpointing: bool = False
    """Recompute each layer in the backward pass instead of keeping its activations."""
    reference: str = "auto"
    """auto | copy | adapter | precomputed (auto: adapter with LoRA, copy without)."""
    optimizer: str = "adamw"
    """One of OPTIMIZERS."""
    gpu_memory_gib: float | None = None
    """Memory of one device in GiB; the plan then suggests the largest batch that fits, or what to change."""
    device: str = "cuda"
    """cuda | cpu: which fused LM head TRL runs (Triton kernel or torch fallback) and the runtime overhead."""
    autocast: str | None = None
    """bfloat16 | float16 when weights stay float32 and matmuls run under autocast (TRL's `bf16=True`)."""

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
            if self.autocast not in ("bfloat16", "float16"):
                raise bad("autocast", self.autocast, ("bfloat16", "float16"))
            if self.dtype != "float32":
                raise UserError("plan option autocast needs dtype=float32 (autocast keeps float32 weights)")
        if self.batch_size < 1:
            raise UserError(f"plan option batch_size must be at least 1, got {self.batch_size}")
        if self.seq_len < 2:
            raise UserError(f"plan option seq_len must be at least 2, got {self.seq_len}")
        if self.lora_rank is not None and self.lora_rank < 1:
            raise UserError(
                f"plan option lora_rank must be at least 1 (or None for full fine-tuning), got {self.lora_rank}"
            )
        if self.lora_rank is None and self.reference == "adapter":
            raise UserError("plan option reference='adapter' needs LoRA (set lora_rank)")
        if self.gpu_memory_gib is not None and self.gpu_memory_gib <= 0:
            raise UserError(f"plan option gpu_memory_gib must be positive, got {self.gpu_memory_gib}")


# --------------------------------------------------------------------------------------------------
# Model description: what the analytic counter and the activation model both read
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Linear:
    """An nn.Linear (or GPT-2's Conv1D). `name` is the module's own name, the one PEFT target_modules matches."""

    name: str
    in_features: int
    out_features: int
    bias: bool = False

    @property
    def numel(self) -> int:
        return self.in_features * self.out_features + (self.out_features if self.bias else 0)


@dataclass(frozen=True)
class MoE:
    """A sparse MoE block: fused expert weights (3-D parameters LoRA target_modules cannot wrap) and a router."""

    experts: int
    top_k: int
    width: int  # intermediate size of one expert (gate, up and down projections)
    shared: tuple[Linear, ...] = ()  # Qwen2-MoE's always-on shared expert (gate, up, down)
    shared_gate: Linear | None = None  # Qwen2-MoE: sigmoid gate on the shared expert, Linear(hidden, 1)


@dataclass(frozen=True)
class Block:
    """One decoder layer, described by what determines its parameters and its activations."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    attn_in: tuple[Linear, ...]  # read the attention norm's output: q/k/v, or one fused qkv
    attn_out: Linear
    mlp_in: tuple[Linear, ...] = ()  # dense MLP: read the MLP norm's output (gate+up, gate_up, or fc)
    mlp_out: Linear | None = None
    mlp_width: int = 0
    gated: bool = True
    act: str = "silu"
    norm: str = "rms"  # rms (Llama: weight applied in the model dtype) | rms_fp32 (Gemma) | layer (LayerNorm)
    norms: int = 2
    rotary: bool = True
    eager_attention: bool = False
    softcap: bool = False
    moe: MoE | None = None
    cross_attn: tuple[Linear, ...] = ()  # GPT-2 with add_cross_attention (plus one more LayerNorm)

    def linears(self) -> list[Linear]:
        out = [*self.attn_in, self.attn_out, *self.mlp_in, *self.cross_attn]
        if self.mlp_out is not None:
            out.append(self.mlp_out)
        if self.moe is not None:
            out += [*self.moe.shared, *([self.moe.shared_gate] if self.moe.shared_gate else [])]
        return out


@dataclass(frozen=True)
class Architecture:
    model_type: str
    vocab: int
    hidden: int
    blocks: tuple[tuple[Block, int], ...]  # (layer description, how many layers)
    positions: int = 0  # learned position embeddings (rows); 0 for rotary/no positions
    final_norm: str = "rms"
    tied: bool = False
    extra_linears: tuple[tuple[Linear, int], ...] | None = None  # meta-device: the model's real Linear list

    @property
    def layers(self) -> int:
        return sum(n for _, n in self.blocks)

    def linears(self) -> list[tuple[Linear, int]]:
        """Every Linear LoRA could wrap, with how many copies the model has (the head excluded)."""
        if self.extra_linears is not None:
            return list(self.extra_linears)
        return [(lin, n) for block, n in self.blocks for lin in block.linears()]


def _norm_params(kind: str, hidden: int) -> int:
    return 2 * hidden if kind == "layer" else hidden


def parameter_breakdown(arch: Architecture) -> dict[str, int]:
    """Exact parameter count per component, from the layer description."""
    h = arch.hidden
    parts = {"embeddings": arch.vocab * h, "attention": 0, "mlp": 0, "norms": 0, "head": 0}
    if arch.positions:
        parts["position_embeddings"] = arch.positions * h
    for block, n in arch.blocks:
        parts["attention"] += n * sum(lin.numel for lin in (*block.attn_in, block.attn_out, *block.cross_attn))
        parts["norms"] += n * (block.norms + (1 if block.cross_attn else 0)) * _norm_params(block.norm, h)
        parts["mlp"] += n * sum(lin.numel for lin in (*block.mlp_in, *([block.mlp_out] if block.mlp_out else [])))
        if block.moe is not None:
            moe = block.moe
            # gate_up_proj (experts, 2*width, hidden) + down_proj (experts, hidden, width); router (experts, hidden)
            parts["experts"] = parts.get("experts", 0) + n * moe.experts * 3 * moe.width * h
            router = moe.experts * h + (moe.shared_gate.numel if moe.shared_gate else 0)
            parts["router"] = parts.get("router", 0) + n * router
            parts["mlp"] += n * sum(lin.numel for lin in moe.shared)
    parts["norms"] += _norm_params(arch.final_norm, h)
    if not arch.tied:
        parts["head"] = arch.vocab * h
    return parts


# --------------------------------------------------------------------------------------------------
# The family table: model_type -> function(config) -> Architecture
# --------------------------------------------------------------------------------------------------


def _head_dim(cfg) -> int:
    # transformers reads `getattr(config, "head_dim", ...)`; configs that set it to None mean hidden/heads
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def _kv_heads(cfg) -> int:
    return getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads


def _tied(cfg, default: bool) -> bool:
    value = getattr(cfg, "tie_word_embeddings", None)
    return default if value is None else bool(value)


def _eager(cfg, default: bool = False) -> bool:
    impl = getattr(cfg, "_attn_implementation", None)
    return impl == "eager" if impl else default


def _qkvo(cfg, qkv_bias: bool, o_bias: bool) -> tuple[tuple[Linear, ...], Linear]:
    h, hd = cfg.hidden_size, _head_dim(cfg)
    q, kv = cfg.num_attention_heads * hd, _kv_heads(cfg) * hd
    attn_in = (Linear("q_proj", h, q, qkv_bias), Linear("k_proj", h, kv, qkv_bias), Linear("v_proj", h, kv, qkv_bias))
    return attn_in, Linear("o_proj", q, h, o_bias)


def _gated_mlp(h: int, width: int, bias: bool = False) -> tuple[tuple[Linear, ...], Linear]:
    return (Linear("gate_proj", h, width, bias), Linear("up_proj", h, width, bias)), Linear("down_proj", width, h, bias)


def _attention_dims(cfg) -> dict[str, int]:
    return {
        "hidden": cfg.hidden_size,
        "heads": cfg.num_attention_heads,
        "kv_heads": _kv_heads(cfg),
        "head_dim": _head_dim(cfg),
    }


def _llama_like(
    cfg,
    *,
    qkv_bias: bool,
    o_bias: bool,
    mlp_bias: bool,
    norm: str = "rms",
    norms: int = 2,
    act: str | None = None,
    tied_default: bool = False,
    eager: bool = False,
    softcap: bool = False,
):
    attn_in, attn_out = _qkvo(cfg, qkv_bias, o_bias)
    mlp_in, mlp_out = _gated_mlp(cfg.hidden_size, cfg.intermediate_size, mlp_bias)
    block = Block(
        **_attention_dims(cfg),
        attn_in=attn_in,
        attn_out=attn_out,
        mlp_in=mlp_in,
        mlp_out=mlp_out,
        mlp_width=cfg.intermediate_size,
        act=act or getattr(cfg, "hidden_act", "silu"),
        norm=norm,
        norms=norms,
        eager_attention=_eager(cfg, eager),
        softcap=softcap,
    )
    return Architecture(
        model_type=cfg.model_type,
        vocab=cfg.vocab_size,
        hidden=cfg.hidden_size,
        blocks=((block, cfg.num_hidden_layers),),
        final_norm=norm,
        tied=_tied(cfg, tied_default),
    )


def _llama(cfg) -> Architecture:
    bias = bool(getattr(cfg, "attention_bias", False))
    return _llama_like(cfg, qkv_bias=bias, o_bias=bias, mlp_bias=bool(getattr(cfg, "mlp_bias", False)))


def _mistral(cfg) -> Architecture:
    return _llama_like(cfg, qkv_bias=False, o_bias=False, mlp_bias=False)


def _qwen2(cfg) -> Architecture:
    # Qwen2 always has biases on q, k and v (not on o), whatever the config says
    return _llama_like(cfg, qkv_bias=True, o_bias=False, mlp_bias=False)


def _gemma(cfg) -> Architecture:
    bias = bool(getattr(cfg, "attention_bias", False))
    return _llama_like(cfg, qkv_bias=bias, o_bias=bias, mlp_bias=False, norm="rms_fp32", tied_default=True)


def _gemma2(cfg) -> Architecture:
    # four norms per layer (pre/post attention, pre/post MLP); transformers defaults Gemma 2 to eager attention
    # because SDPA cannot apply its attention logit soft-capping
    bias = bool(getattr(cfg, "attention_bias", False))
    softcap = getattr(cfg, "attn_logit_softcapping", None) is not None
    return _llama_like(
        cfg,
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=False,
        norm="rms_fp32",
        norms=4,
        act=getattr(cfg, "hidden_activation", None),
        tied_default=True,
        eager=True,
        softcap=softcap,
    )


def _phi3(cfg) -> Architecture:
    h, hd, width = cfg.hidden_size, _head_dim(cfg), cfg.intermediate_size
    q, kv = cfg.num_attention_heads * hd, _kv_heads(cfg) * hd
    block = Block(
        **_attention_dims(cfg),
        attn_in=(Linear("qkv_proj", h, q + 2 * kv),),
        attn_out=Linear("o_proj", q, h),
        mlp_in=(Linear("gate_up_proj", h, 2 * width),),
        mlp_out=Linear("down_proj", width, h),
        mlp_width=width,
        act=cfg.hidden_act,
        eager_attention=_eager(cfg),
    )
    return Architecture(
        model_type=cfg.model_type,
        vocab=cfg.vocab_size,
        hidden=h,
        blocks=((block, cfg.num_hidden_layers),),
        tied=_tied(cfg, False),
    )


def _mixtral(cfg) -> Architecture:
    attn_in, attn_out = _qkvo(cfg, False, False)
    moe = MoE(experts=cfg.num_local_experts, top_k=cfg.num_experts_per_tok, width=cfg.intermediate_size)
    block = Block(
        **_attention_dims(cfg),
        attn_in=attn_in,
        attn_out=attn_out,
        act=cfg.hidden_act,
        moe=moe,
        eager_attention=_eager(cfg),
    )
    return Architecture(
        model_type=cfg.model_type,
        vocab=cfg.vocab_size,
        hidden=cfg.hidden_size,
        blocks=((block, cfg.num_hidden_layers),),
        tied=_tied(cfg, False),
    )


def _qwen2_moe(cfg) -> Architecture:
    h = cfg.hidden_size
    attn_in, attn_out = _qkvo(cfg, bool(getattr(cfg, "qkv_bias", True)), False)
    common = {
        **_attention_dims(cfg),
        "attn_in": attn_in,
        "attn_out": attn_out,
        "act": cfg.hidden_act,
        "eager_attention": _eager(cfg),
    }
    shared_in, shared_out = _gated_mlp(h, cfg.shared_expert_intermediate_size)
    moe = MoE(
        experts=cfg.num_experts,
        top_k=cfg.num_experts_per_tok,
        width=cfg.moe_intermediate_size,
        shared=(*shared_in, shared_out),
        shared_gate=Linear("shared_expert_gate", h, 1),
    )
    sparse = Block(**common, moe=moe)
    mlp_in, mlp_out = _gated_mlp(h, cfg.intermediate_size)
    dense = Block(**common, mlp_in=mlp_in, mlp_out=mlp_out, mlp_width=cfg.intermediate_size)
    only_dense = set(getattr(cfg, "mlp_only_layers", None) or [])
    step = cfg.decoder_sparse_step

    # same rule as Qwen2MoeDecoderLayer.__init__
    def is_sparse(i: int) -> bool:
        return i not in only_dense and cfg.num_experts > 0 and (i + 1) % step == 0

    n_sparse = sum(is_sparse(i) for i in range(cfg.num_hidden_layers))
    blocks = tuple((b, n) for b, n in ((sparse, n_sparse), (dense, cfg.num_hidden_layers - n_sparse)) if n)
    return Architecture(
        model_type=cfg.model_type, vocab=cfg.vocab_size, hidden=h, blocks=blocks, tied=_tied(cfg, False)
    )


def _gpt2(cfg) -> Architecture:
    h = cfg.hidden_size
    width = cfg.n_inner if getattr(cfg, "n_inner", None) is not None else 4 * h
    cross = ()
    if getattr(cfg, "add_cross_attention", False):
        cross = (Linear("c_attn", h, 2 * h, True), Linear("q_attn", h, h, True), Linear("c_proj", h, h, True))
    block = Block(
        hidden=h,
        heads=cfg.num_attention_heads,
        kv_heads=cfg.num_attention_heads,
        head_dim=h // cfg.num_attention_heads,
        attn_in=(Linear("c_attn", h, 3 * h, True),),
        attn_out=Linear("c_proj", h, h, True),
        mlp_in=(Linear("c_fc", h, width, True),),
        mlp_out=Linear("c_proj", width, h, True),
        mlp_width=width,
        gated=False,
        act=cfg.activation_function,
        norm="layer",
        rotary=False,
        eager_attention=_eager(cfg),
        cross_attn=cross,
    )
    return Architecture(
        model_type=cfg.model_type,
        vocab=cfg.vocab_size,
        hidden=h,
        blocks=((block, cfg.num_hidden_layers),),
        positions=cfg.max_position_embeddings,
        final_norm="layer",
        tied=_tied(cfg, True),
    )


def _gpt_neox(cfg) -> Architecture:
    h, width = cfg.hidden_size, cfg.intermediate_size
    bias = bool(getattr(cfg, "attention_bias", True))
    block = Block(
        hidden=h,
        heads=cfg.num_attention_heads,
        kv_heads=cfg.num_attention_heads,
        head_dim=h // cfg.num_attention_heads,
        attn_in=(Linear("query_key_value", h, 3 * h, bias),),
        attn_out=Linear("dense", h, h, bias),
        mlp_in=(Linear("dense_h_to_4h", h, width, True),),
        mlp_out=Linear("dense_4h_to_h", width, h, True),
        mlp_width=width,
        gated=False,
        act=cfg.hidden_act,
        norm="layer",
        eager_attention=_eager(cfg),
    )
    return Architecture(
        model_type=cfg.model_type,
        vocab=cfg.vocab_size,
        hidden=h,
        blocks=((block, cfg.num_hidden_layers),),
        final_norm="layer",
        tied=_tied(cfg, False),
    )


FAMILIES: dict[str, Callable[[Any], Architecture]] = {
    "llama": _llama,
    "mistral": _mistral,
    "mixtral": _mixtral,
    "qwen2": _qwen2,
    "qwen2_moe": _qwen2_moe,
    "gemma": _gemma,
    "gemma2": _gemma2,
    "phi3": _phi3,
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
}


# --------------------------------------------------------------------------------------------------
# Counting parameters
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParameterCount:
    """Parameters of a model, each counted once (a tied head adds nothing), split by component."""

    total: int
    by_component: dict[str, int]
    method: str  # "analytic" | "meta-device"


def count_parameters(config) -> ParameterCount:
    """Exact parameter count of the causal LM a transformers config describes (tied weights counted once)."""
    count, _ = _describe(config)
    return count


def _describe(config) -> tuple[ParameterCount, Architecture]:
    config = _as_config(config)
    family = FAMILIES.get(config.model_type)
    if family is not None:
        arch = family(config)
        parts = parameter_breakdown(arch)
        return ParameterCount(sum(parts.values()), parts, "analytic"), arch
    return _meta_device(config)


def _as_config(config):
    if isinstance(config, dict):
        from transformers import AutoConfig

        data = dict(config)
        model_type = data.pop("model_type", None)
        if model_type is None:
            raise UserError("config has no 'model_type'")
        return AutoConfig.for_model(model_type, **data)
    return config


# Parameter names -> component, for models counted on the meta device (first match wins)
_META_COMPONENTS = (
    ("head", re.compile(r"(^|\.)(lm_head|embed_out)\.")),
    ("position_embeddings", re.compile(r"(wpe|embed_positions|position_embeddings)\.")),
    ("embeddings", re.compile(r"(embed|wte|word_embeddings)")),
    ("norms", re.compile(r"(norm|ln_|layernorm)", re.IGNORECASE)),
    ("router", re.compile(r"(router|\.gate\.weight$|shared_expert_gate)")),
    ("experts", re.compile(r"experts\.")),
    ("attention", re.compile(r"(attn|attention)")),
    ("mlp", re.compile(r"(mlp|feed_forward|ffn|fc\d)")),
)


def _meta_device(config) -> tuple[ParameterCount, Architecture]:
    """Instantiate the model on the meta device (no memory, no weights) and count what it holds."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(copy.deepcopy(config))
    except (ValueError, KeyError, TypeError, ImportError) as exc:
        raise UserError(
            f"model_type '{config.model_type}' is not in the planner's table ({', '.join(FAMILIES)}) and "
            f"transformers cannot build it as a causal LM ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc
    parts: dict[str, int] = {}
    for name, param in model.named_parameters():  # named_parameters() yields a tied parameter once
        component = next((c for c, pattern in _META_COMPONENTS if pattern.search(name)), "other")
        parts[component] = parts.get(component, 0) + param.numel()
    linears: dict[Linear, int] = {}
    output = model.get_output_embeddings()
    for name, module in model.named_modules():
        leaf = None if module is output else _as_linear(name.rsplit(".", 1)[-1], module)
        if leaf is not None:
            linears[leaf] = linears.get(leaf, 0) + 1
    return ParameterCount(sum(parts.values()), parts, "meta-device"), _generic_architecture(config, model, linears)


def _as_linear(name: str, module) -> Linear | None:
    import torch

    if isinstance(module, torch.nn.Linear):
        return Linear(name, module.in_features, module.out_features, module.bias is not None)
    if type(module).__name__ == "Conv1D":  # GPT-2 style: weight is (in, out)
        return Linear(name, module.weight.shape[0], module.weight.shape[1], module.bias is not None)
    return None


def _generic_architecture(config, model, linears: dict[Linear, int]) -> Architecture:
    """A Llama-shaped stand-in for the activation model of an architecture outside the table (approximate)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    h = text.hidden_size
    heads = getattr(text, "num_attention_heads", None) or max(1, h // 64)
    width = getattr(text, "intermediate_size", None) or getattr(text, "ffn_dim", None) or 4 * h
    hd = getattr(text, "head_dim", None) or h // heads
    names = {lin.name for lin in linears}
    gated = bool(names & {"gate_proj", "gate_up_proj", "w1", "w3"})
    block = Block(
        hidden=h,
        heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=hd,
        attn_in=(Linear("q_proj", h, heads * hd), Linear("k_proj", h, heads * hd), Linear("v_proj", h, heads * hd)),
        attn_out=Linear("o_proj", heads * hd, h),
        mlp_in=(Linear("up_proj", h, width),),
        mlp_out=Linear("down_proj", width, h),
        mlp_width=width,
        gated=gated,
        eager_attention=_eager(model.config),
    )
    tied = model.get_output_embeddings() is None or (
        model.get_input_embeddings() is not None
        and model.get_output_embeddings().weight is model.get_input_embeddings().weight
    )
    return Architecture(
        model_type=config.model_type,
        vocab=text.vocab_size,
        hidden=h,
        blocks=((block, text.num_hidden_layers),),
        tied=tied,
        extra_linears=tuple(linears.items()),
    )


# --------------------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------------------


def _lora_matches(targets: tuple[str, ...], name: str) -> bool:
    # PEFT's target_modules as a list matches a module whose own name equals an entry; "all-linear" wraps every
    # Linear but the output layer (the head is not in Architecture.linears())
    return "all-linear" in targets or name in targets


def lora_parameters(arch: Architecture, rank: int, targets: tuple[str, ...]) -> int:
    """Trainable parameters LoRA adds: A (rank x in) and B (out x rank) for each wrapped Linear."""
    return sum(
        n * rank * (lin.in_features + lin.out_features) for lin, n in arch.linears() if _lora_matches(targets, lin.name)
    )


# --------------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------------

# What autograd keeps for backward, rule by rule. Checked by summing the storages that
# torch.autograd.graph.saved_tensors_hooks sees in a training forward of small models of every family in
# FAMILIES (full and LoRA, fp32, bf16, fp32 + bf16 autocast): within 4% for the dense families, except
# that with LoRA the first layer keeps less than the rule says (its input needs no gradient), which a
# 4-layer model shows as up to +18% and a 30-layer one as ~1%; MoE layers are approximate (within 4%, or
# -12% under autocast). tests/plan/test_plan.py repeats the check for Llama.

# Tensors an activation function saves for backward, in units of its input's size. Native kernels (SiLU,
# GELU, tanh-GELU) save their input; transformers' "gelu_new" is written in Python as
# 0.5*x*(1+tanh(c*(x+0.044715*x^3))) and autograd keeps x, the tanh output, 0.5*x and 1+tanh.
_ACT_SAVES = {"gelu_new": 4}
# TRL's fused LM head projects the hidden states onto the vocabulary in tiles of at most 4096 tokens x 32768
# vocabulary entries (trl/kernels/chunked_logprob.py). On CUDA a Triton kernel folds each tile in registers,
# so one tile buffer (compute dtype) is the whole workspace. The torch fallback used on CPU materialises
# fp32 copies of the tile for the online logsumexp and its gradient; measured with VmHWM on an isolated
# head (TRL 1.16, torch 2.13): about 13 extra bytes per tile element in forward and 29 in backward.
_HEAD_TOKENS, _HEAD_VOCAB = 4096, 32768
_HEAD_EXTRA_BYTES = {"cuda": (0, 0), "cpu": (13, 29)}


@dataclass(frozen=True)
class _Ctx:
    """What the activation rules need to know about the run (bytes per element; which weights train)."""

    seq_len: int
    cb: int  # compute dtype bytes: matmul outputs, attention tensors
    wb: int  # weight dtype bytes (the residual stream and RMSNorm outputs are in it)
    full: bool  # base weights are trainable (full fine-tuning)
    autocast: bool
    rank: int
    targets: tuple[str, ...]

    def lora(self, lin: Linear) -> bool:
        return self.rank > 0 and _lora_matches(self.targets, lin.name)


def _inputs_saved(ctx: _Ctx, consumers: tuple[Linear, ...], width: int, src_bytes: int, kept: bool = False) -> float:
    """Bytes per token kept for the input of Linear layers that all read the same tensor of `width` features.

    A Linear keeps its input only when its weight needs a gradient (a frozen Linear keeps just its weight).
    Linears that read the tensor as it is share one saved copy. A casting reader keeps its own copy: under
    autocast each call casts its input to the compute dtype, and PEFT casts the input of a float32 adapter when
    the base model is bf16/fp16. LoRA's B matrix also keeps its rank-wide input. `kept`: the tensor is
    already kept by another op (SDPA keeps its output), so sharing it costs nothing more.
    """
    shared, own = False, 0.0
    for lin in consumers:
        lora = ctx.lora(lin)
        if not (ctx.full or lora):
            continue
        if ctx.autocast and src_bytes != ctx.cb:
            own += ctx.cb * width
        elif lora and ctx.wb != 4:
            own += 4 * width
        else:
            shared = True
        if lora:
            own += ctx.rank * (ctx.cb if ctx.autocast else 4)
    return own + (src_bytes * width if shared and not kept else 0)


def _norm_saved(ctx: _Ctx, kind: str, h: int) -> float:
    """Bytes per token a norm keeps. Llama's RMSNorm upcasts its input to fp32 (kept by pow and the
    normalising multiply, with the fp32 rsqrt) and keeps the normalised tensor for its weight's gradient;
    Gemma keeps that tensor in fp32; LayerNorm keeps its input plus mean and rstd (fp32 under autocast)."""
    if kind == "layer":
        return (4 if ctx.autocast else ctx.cb) * h + 8
    kept = 4 * h + 4
    if ctx.full:
        kept += (4 if kind == "rms_fp32" else ctx.wb) * h
    return kept


def _block_saved(block: Block, ctx: _Ctx) -> float:
    """Bytes per token autograd keeps for one decoder layer in a training forward (no checkpointing).

    Assumes a padded batch, as DPO batches are: transformers then passes SDPA a mask, so K and V are repeated
    to all query heads (no GQA kernel) and SDPA keeps a copy of the mask in the compute dtype per layer.
    Dropout is off (TRL's disable_dropout=True), residual additions keep nothing.
    """
    h, cb, T = block.hidden, ctx.cb, ctx.seq_len
    norm_out = 4 if (ctx.autocast and block.norm == "layer") else ctx.wb  # dtype of a norm's output
    q = block.heads * block.head_dim
    repeated = block.kv_heads < block.heads
    kv = q if repeated else block.kv_heads * block.head_dim
    saved = block.norms * _norm_saved(ctx, block.norm, h)
    saved += _inputs_saved(ctx, block.attn_in, h, norm_out)
    # attention: q and k after RoPE, and v, kept by SDPA (or by the eager matmuls)
    saved += cb * (q + 2 * kv)
    if len(block.attn_in) == 1 and not repeated and block.rotary:
        # fused qkv with RoPE: q and k are new tensors, but v is a view of the fused output, which stays alive
        saved += cb * (q + kv)
    if block.eager_attention:
        # eager: the fp32 softmax output, its cast to the compute dtype (kept by the matmul with v), and the
        # tanh output of logit soft-capping; o_proj keeps the contiguous output copy only when it trains
        saved += block.heads * T * (4 + (cb if cb != 4 else 0) + (cb if block.softcap else 0))
        saved += _inputs_saved(ctx, (block.attn_out,), q, cb)
    else:
        # SDPA keeps its output (which o_proj reads as is), the fp32 logsumexp per head and a copy of the mask
        saved += cb * q + 4 * block.heads + cb * T
        saved += _inputs_saved(ctx, (block.attn_out,), q, cb, kept=True)
    if block.moe is None:
        w, act = block.mlp_width, _ACT_SAVES.get(block.act, 1)
        saved += _inputs_saved(ctx, block.mlp_in, h, norm_out)
        if block.gated:
            saved += cb * w * (2 + act)  # act input (and its internals), act output and up, kept by the product
        else:
            saved += cb * w * act
        saved += _inputs_saved(ctx, (block.mlp_out,), w, cb)
    else:
        moe = block.moe
        # approximate: per routed copy of a token its gathered input (when experts train), gate_up output,
        # activation output and product, and the expert output kept for the routing-weight multiply;
        # router softmax in fp32
        per_copy = 3 * moe.width + h + ((h + moe.width) if ctx.full else 0)
        saved += cb * moe.top_k * per_copy + 4 * moe.experts + (norm_out * h if ctx.full else 0)
        if moe.shared:
            w = moe.shared[0].out_features
            saved += _inputs_saved(ctx, moe.shared[:2], h, norm_out) + cb * w * 3
            saved += _inputs_saved(ctx, moe.shared[2:], w, cb) + cb * (h + 1)
    return saved


def _block_matmul_weights(block: Block) -> int:
    """Weights one layer multiplies by (Linear weights, experts, router): what autocast casts per forward."""
    n = sum(lin.in_features * lin.out_features for lin in block.linears())
    if block.moe is not None:
        n += block.moe.experts * (3 * block.moe.width + 1) * block.hidden
    return n


def _activation_bytes(arch: Architecture, ctx: _Ctx, tokens: int, checkpointing: bool) -> tuple[float, float]:
    """(bytes kept from the end of the forward until backward, bytes one layer keeps) for `tokens` tokens.

    With gradient checkpointing each layer keeps only its input hidden states (residual stream, weight dtype);
    the backward pass recomputes one layer at a time, so one layer's activations come back on top, but only
    after the LM head's backward is done.
    """
    # under autocast every matmul keeps the compute-dtype copy of its weight for the input gradient, frozen
    # or not: a per-forward copy of the layer weights, whatever the number of tokens
    cast = ctx.cb if ctx.autocast else 0
    per_layer = [(_block_saved(b, ctx) * tokens + cast * _block_matmul_weights(b), n) for b, n in arch.blocks]
    layer = max(b for b, _ in per_layer)
    # once per forward: the final norm, the fused head's copy of the shifted hidden states, its fp32 log-Z,
    # entropy and int64 targets, the embedding's int64 ids, the boolean 4-D mask
    once = _norm_saved(ctx, arch.final_norm, arch.hidden) + ctx.wb * arch.hidden + 4 + 4 + 8 + 8 + ctx.seq_len
    if checkpointing:
        kept = arch.layers * ctx.wb * arch.hidden * tokens
    else:
        kept = sum(b * n for b, n in per_layer)
    return kept + once * tokens, layer


# --------------------------------------------------------------------------------------------------
# Memory estimate
# --------------------------------------------------------------------------------------------------


def _estimate(arch: Architecture, total: int, options: PlanOptions) -> dict[str, Any]:
    """Bytes per component and the estimated peak of one DPO training step.

    static   = weights + reference + optimizer states (alive for the whole run after the first step)
    peak     = static + max over the phases of a step of what is alive on top:
      forward   activations + fused-head forward workspace (policy head, then the reference forward)
      backward  activations + fused-head backward workspace + its fp32 gradient buffers (hidden states;
                head weight when it trains); as layers are backpropagated, their activations are freed
                while their gradients appear, so this is the backward's peak when activations dominate
      end of backward   all gradients, plus the embedding's dense gradient before it is added to .grad.
                The optimizer step adds nothing on top: the Trainer's default AdamW (adamw_torch_fused since
                torch 2.8) updates in place, and gradient clipping scales the gradients in place.
    Summing activations and gradients instead would count memory twice that is never alive at once.
    """
    wb = DTYPE_BYTES[options.dtype]
    cb = DTYPE_BYTES[options.autocast] if options.autocast else wb
    lora = options.lora_rank is not None
    rank = options.lora_rank or 0
    reference = options.resolved_reference()
    trainable = lora_parameters(arch, rank, options.lora_targets) if lora else total
    pb = 4 if lora else wb  # bytes of a trainable parameter: PEFT keeps adapters in fp32
    h, V = arch.hidden, arch.vocab

    ctx = _Ctx(options.seq_len, cb, wb, not lora, options.autocast is not None, rank, options.lora_targets)
    tokens = 2 * options.batch_size * options.seq_len  # chosen and rejected, concatenated
    ckpt = options.gradient_checkpointing
    kept, layer = _activation_bytes(arch, ctx, tokens, ckpt)
    kept_other, _ = _activation_bytes(arch, ctx, tokens, not ckpt)
    # activations at their largest: with checkpointing, plus the one layer recomputed in backward
    acts, acts_other = (kept + layer, kept_other) if ckpt else (kept, kept_other + layer)

    scored = 2 * options.batch_size * (options.seq_len - 1)  # positions the fused head scores
    tile = min(scored, _HEAD_TOKENS) * min(V, _HEAD_VOCAB)
    extra_fwd, extra_bwd = _HEAD_EXTRA_BYTES[options.device]
    head_fwd = tile * (cb + extra_fwd)
    head_bwd = tile * (cb + extra_bwd) + scored * h * 4  # + fp32 gradient of the hidden states
    head_grad = 0
    if not lora:  # the head (or the tied embedding) trains: fp32 gradient accumulator, cast to its dtype
        head_grad = V * h * 4 + (V * h * wb if wb != 4 else 0)

    optimizer = OPTIMIZERS[options.optimizer]
    states = trainable * optimizer.state_bytes(pb)
    gradients = trainable * pb
    # the embedding's dense gradient is built at the end of backward before it is added to .grad
    late_bwd = gradients + (V * h * wb if not lora else 0)

    memory = {
        "weights": total * wb + (trainable * 4 if lora else 0),
        "reference": total * wb if reference == "copy" else 0,
        "gradients": gradients,
        "optimizer": int(states),
        "activations": int(acts),
        "logits_workspace": int(max(head_fwd, head_bwd + head_grad)),
        "runtime": RUNTIME_BYTES[options.device],
    }
    phases = {
        # one layer's working set in forward (no_grad reference included); in backward the gradients of one
        # layer's activations, and with checkpointing that layer's recomputed activations as well
        "forward": kept + max(head_fwd, layer),
        "backward": kept + max(head_bwd, (2 if ckpt else 1) * layer) + head_grad,
        "end of backward": late_bwd,
    }
    phase = max(phases, key=phases.get)
    static = memory["weights"] + memory["reference"] + memory["optimizer"] + memory["runtime"]
    memory["total"] = int(static + phases[phase])
    return {
        "memory": {k: int(v) for k, v in memory.items()},
        "trainable": trainable,
        "phase": phase,
        "activations": {
            "without_checkpointing": int(acts_other if ckpt else acts),
            "with_checkpointing": int(acts if ckpt else acts_other),
        },
    }


# --------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------


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
        }

    def _setup(self) -> str:
        kind = f"LoRA r={self.options.lora_rank}" if self.options.lora_rank else "full fine-tuning"
        return f"{kind} {_fmt_count(self.trainable)} trainable"

    def summary_line(self) -> str:
        o = self.options
        dtype = o.dtype + (f" + {o.autocast} autocast" if o.autocast else "")
        ckpt = ", gradient checkpointing" if o.gradient_checkpointing else ""
        return (
            f"plan: {_fmt_count(self.parameters.total)} params ({self.parameters.method}), {self._setup()}, "
            f"est. peak {_fmt_bytes(self.memory['total'])} at batch {o.batch_size} x {o.seq_len} tokens, "
            f"{dtype}{ckpt}"
        )

    def render(self) -> str:
        o, p = self.options, self.parameters
        lines = [f"{self.source} ({self.model_type}): {p.total:,} parameters ({p.method})"]
        if p.method == "meta-device":
            lines.append(
                "  (not in the planner's table: counted by building the model on the meta device; activations "
                "estimated as for a Llama-shaped layer of the same sizes)"
            )
        width = max(len(k) for k in p.by_component)
        for name, n in p.by_component.items():
            if n == 0 and name != "head":
                continue
            note = " (tied to embeddings)" if name == "head" and n == 0 else ""
            share = f"{100 * n / p.total:5.1f}%" if p.total else ""
            lines.append(f"  {name:<{width}}  {n:>15,}  {share}{note}")
        reference = o.resolved_reference()
        lines += [
            "",
            f"setup: {self._setup()}"
            + (f" on {','.join(o.lora_targets)}" if o.lora_rank else "")
            + f"; reference: {reference}; optimizer: {o.optimizer}; {o.dtype}"
            + (f" + {o.autocast} autocast" if o.autocast else "")
            + f"; batch {o.batch_size} pairs x {o.seq_len} tokens ({2 * o.batch_size * o.seq_len:,} tokens per "
            f"forward); gradient checkpointing {'on' if o.gradient_checkpointing else 'off'}; device {o.device}",
            "",
            f"memory (estimated peak {_fmt_bytes(self.memory['total'])}, reached in the {self.phase}):",
        ]
        notes = {
            "weights": f"policy in {o.dtype}" + (" + fp32 LoRA adapter" if o.lora_rank else ""),
            "reference": REFERENCES[reference],
            "gradients": "trainable parameters",
            "optimizer": OPTIMIZERS[o.optimizer].description,
            "activations": (
                "kept for backward; without checkpointing: " + _fmt_bytes(self.activations["without_checkpointing"])
                if o.gradient_checkpointing
                else "kept for backward; with checkpointing: " + _fmt_bytes(self.activations["with_checkpointing"])
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
            lines.append(f"  {name:<17} {_fmt_bytes(n):>10}   {notes.get(name, '')}")
        if self.suggestions:
            lines += ["", "suggestions:", *(f"  - {s}" for s in self.suggestions)]
        return "\n".join(lines)


def _fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _fmt_count(n: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size:
            return f"{n / size:.{2 if unit == 'B' else 1}f}{unit}"
    return str(n)


def build_plan(source: str, options: PlanOptions | None = None) -> Plan:
    """Plan a DPO run for SOURCE: a config.json, a local model directory, or a model alias."""
    options = options or PlanOptions()
    options.validate()
    config = _load_config(source)
    count, arch = _describe(config)
    if options.lora_rank and lora_parameters(arch, options.lora_rank, options.lora_targets) == 0:
        available = sorted({lin.name for lin, _ in arch.linears()})
        raise UserError(
            f"none of the LoRA targets {', '.join(options.lora_targets)} is a Linear layer of this "
            f"{arch.model_type} model; its Linear layers are: {', '.join(available)}",
            where=source,
        )
    est = _estimate(arch, count.total, options)
    plan = Plan(
        source=source,
        model_type=arch.model_type,
        options=options,
        parameters=count,
        trainable=est["trainable"],
        memory=est["memory"],
        activations=est["activations"],
        phase=est["phase"],
    )
    if options.gpu_memory_gib is not None:
        plan.max_batch_size, plan.suggestions = _fit(arch, count.total, options)
    return plan


def _load_config(source: str):
    from dpo.models import load_config

    path = Path(source).expanduser()
    looks_like_path = source.endswith(".json") or "/" in source or source.startswith(("~", "."))
    if looks_like_path and not path.exists():
        raise UserError("no such file or directory", where=source)
    try:
        return load_config(source)
    except UserError:
        raise
    except (OSError, ValueError) as exc:  # unreadable file, bad JSON, unknown model_type
        raise UserError(f"cannot read the model config: {_first_line(exc)}", where=source) from exc


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------------
# Fitting a device
# --------------------------------------------------------------------------------------------------


def _largest_batch(arch: Architecture, total: int, options: PlanOptions, budget: float) -> int:
    """Largest batch_size whose estimated peak is within budget (0 if even 1 pair does not fit)."""

    def fits(b: int) -> bool:
        return _estimate(arch, total, replace(options, batch_size=b))["memory"]["total"] <= budget

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= 1 << 16 and fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # fits(lo) and not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _changes(options: PlanOptions) -> list[tuple[str, dict[str, Any]]]:
    """Changes that lower the peak, cheapest in quality and speed first."""
    changes: list[tuple[str, dict[str, Any]]] = []
    if not options.gradient_checkpointing:
        changes.append(("turn on gradient checkpointing", {"gradient_checkpointing": True}))
    if options.resolved_reference() == "copy":
        changes.append(("precompute the reference log-probs (reference=precomputed)", {"reference": "precomputed"}))
    if options.lora_rank is None:
        lora: dict[str, Any] = {"lora_rank": 16, "lora_targets": PlanOptions.lora_targets}
        if options.reference == "copy":
            lora["reference"] = "adapter"
        changes.append(("train a LoRA adapter (r=16 on q/k/v/o) instead of all weights", lora))
    if options.dtype == "float32" and options.autocast is None:
        changes.append(("load the weights in bfloat16", {"dtype": "bfloat16"}))
    if options.optimizer == "adamw" and options.lora_rank is None:
        changes.append(("use 8-bit AdamW (optimizer=adamw_8bit)", {"optimizer": "adamw_8bit"}))
    return changes


def _fit(arch: Architecture, total: int, options: PlanOptions) -> tuple[int, list[str]]:
    """The largest per-device batch that fits options.gpu_memory_gib, and what to do when the asked one does not."""
    budget = options.gpu_memory_gib * GIB * GPU_HEADROOM
    cap = f"{options.gpu_memory_gib:g} GiB (less {1 - GPU_HEADROOM:.0%} headroom)"
    asked = options.batch_size
    best = _largest_batch(arch, total, options, budget)
    peak = _fmt_bytes(_estimate(arch, total, options)["memory"]["total"])
    if best >= asked:
        return best, [
            f"batch {asked} fits in {cap}: est. peak {peak}; the largest per-device batch that fits is {best}"
        ]
    if best:
        divisor = max(k for k in range(1, best + 1) if asked % k == 0)
        advice = [
            f"batch {asked} (est. peak {peak}) does not fit in {cap}; the largest per-device batch that fits is "
            f"{best}. To keep {asked} pairs per optimizer step: per-device batch {divisor} with "
            f"gradient_accumulation_steps={asked // divisor}"
        ]
    else:
        advice = [f"even 1 pair of {options.seq_len} tokens does not fit in {cap}"]

    def largest(change: dict[str, Any]) -> int:
        return _largest_batch(arch, total, replace(options, **change), budget)

    changes = _changes(options)
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
            if seq_len >= 2 and largest({**combined, "seq_len": seq_len}):
                return best, advice + [f"together: {'; '.join(labels)}; and cut sequences to {seq_len} tokens"]
        smallest = _estimate(arch, total, replace(options, **combined, batch_size=1))["memory"]
        even_with = f" even with: {'; '.join(labels)}" if labels else ""
        advice.append(
            f"nothing considered fits: 1 pair needs {_fmt_bytes(smallest['total'])}{even_with} (the weights alone "
            f"take {_fmt_bytes(smallest['weights'])}); shard the model over several devices, quantize it, or pick "
            "a smaller model"
        )
    return best, advice
