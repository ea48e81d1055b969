"""The layer description the activation model reads, taken from the model built on the meta device.

`FAMILIES` says, for each model family whose activations are modelled exactly, which module of a decoder layer
plays which part (attention inputs and output, MLP inputs and output, norms, experts). Everything numeric comes
from the meta-device model itself: the shapes and biases of its Linear modules, its expert weights, its norm
modules, its activation modules, the attention implementation transformers picked, and the config's head
counts. Layers that differ (Qwen2-MoE's dense and sparse layers) come out as different `Block`s. A family
outside the table gets a Llama-shaped stand-in of the same sizes (approximate activations), with its real
Linear modules for LoRA.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

from dpo.errors import UserError

# --------------------------------------------------------------------------------------------------
# The description
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Linear:
    """An nn.Linear (or GPT-2's Conv1D). `name` is the module's own name, the one PEFT target_modules matches."""

    name: str
    in_features: int
    out_features: int
    bias: bool = False


@dataclass(frozen=True)
class MoE:
    """A sparse MoE block: fused expert weights (3-D parameters LoRA target_modules cannot wrap) and a router."""

    experts: int
    top_k: int
    width: int  # intermediate size of one expert (gate, up and down projections)
    shared: tuple[Linear, ...] = ()  # Qwen2-MoE's always-on shared expert (gate, up, down)


@dataclass(frozen=True)
class Block:
    """One decoder layer, described by what determines its activations."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    attn_in: tuple[Linear, ...]  # read the attention norm's output: q/k/v, or one fused qkv
    attn_out: Linear
    matmul_weights: int  # elements of the weights the layer multiplies by (Linears, experts, router)
    mlp_in: tuple[Linear, ...] = ()  # dense MLP: read the MLP norm's output (gate+up, gate_up, or fc)
    mlp_out: Linear | None = None
    mlp_width: int = 0
    gated: bool = True
    act: str = "SiLUActivation"  # class name of the MLP's activation module
    norm: str = "rms"  # rms (Llama: weight applied in the model dtype) | rms_fp32 (Gemma) | layer (LayerNorm)
    norms: int = 2
    rotary: bool = True
    eager_attention: bool = False
    softcap: bool = False
    moe: MoE | None = None


@dataclass(frozen=True)
class Architecture:
    model_type: str
    vocab: int
    hidden: int
    blocks: tuple[tuple[Block, int], ...]  # (layer description, how many layers)
    linears: tuple[tuple[Linear, int], ...]  # every Linear LoRA could wrap (the head excluded), with its count
    final_norm: str = "rms"
    tied_head: bool = False  # the output head is the input embedding's weight (one parameter, two gradients)

    @property
    def layers(self) -> int:
        return sum(n for _, n in self.blocks)


# --------------------------------------------------------------------------------------------------
# The family table: which module of a decoder layer is which
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Module paths inside one decoder layer. A layer has the parts it has: Qwen2-MoE's dense layers have
    the MLP projections, its sparse layers the experts."""

    attn_in: tuple[str, ...]
    attn_out: str
    mlp_in: tuple[str, ...]
    mlp_out: str
    norms: tuple[str, ...]
    experts: str | None = None  # the module holding the fused 3-D expert weights
    shared_expert: tuple[str, ...] = ()  # gate, up, down of an always-on shared expert
    # Gemma's RMSNorm multiplies by (1 + weight) in fp32 and keeps the normalised tensor in fp32; Llama's
    # casts back to the model dtype first. Nothing in the module tells them apart.
    fp32_norm: bool = False


_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
_GATED = ("mlp.gate_proj", "mlp.up_proj")
_LLAMA = Layout(_QKV, "self_attn.o_proj", _GATED, "mlp.down_proj", ("input_layernorm", "post_attention_layernorm"))
_MOE = replace(_LLAMA, experts="mlp.experts")
_GEMMA = replace(_LLAMA, fp32_norm=True)

FAMILIES: dict[str, Layout] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "mixtral": _MOE,
    "qwen2_moe": replace(
        _MOE, shared_expert=tuple(f"mlp.shared_expert.{p}" for p in ("gate_proj", "up_proj", "down_proj"))
    ),
    "gemma": _GEMMA,
    # pre/post norms around both attention and MLP
    "gemma2": replace(_GEMMA, norms=(*_LLAMA.norms, "pre_feedforward_layernorm", "post_feedforward_layernorm")),
    "phi3": Layout(("self_attn.qkv_proj",), "self_attn.o_proj", ("mlp.gate_up_proj",), "mlp.down_proj", _LLAMA.norms),
    # GPT-2's cross-attention (add_cross_attention) only runs with encoder states, which a causal LM never has:
    # its Linears count for LoRA and autocast copies but keep no activations
    "gpt2": Layout(("attn.c_attn",), "attn.c_proj", ("mlp.c_fc",), "mlp.c_proj", ("ln_1", "ln_2")),
    "gpt_neox": Layout(
        ("attention.query_key_value",),
        "attention.dense",
        ("mlp.dense_h_to_4h",),
        "mlp.dense_4h_to_h",
        _LLAMA.norms,
    ),
}


# --------------------------------------------------------------------------------------------------
# Reading the meta-device model
# --------------------------------------------------------------------------------------------------


def describe(model) -> Architecture:
    """The layer description of a model built on the meta device (see the module docstring)."""
    config = model.config
    text = config.get_text_config()
    linears = _model_linears(model)
    layout = FAMILIES.get(config.model_type)
    if layout is None:
        return _stand_in(model, text, linears)
    eager = config._attn_implementation == "eager"
    rotary = any(name.endswith("rotary_emb") for name, _ in model.named_modules())
    blocks = Counter(_block(layer, layout, text, eager, rotary) for layer in _decoder_layers(model, text))
    if not blocks:
        raise UserError(f"this {config.model_type} has no decoder layers (num_hidden_layers: 0)")
    first = next(iter(blocks))
    return Architecture(
        model_type=config.model_type,
        vocab=text.vocab_size,
        hidden=text.hidden_size,
        blocks=tuple(blocks.items()),
        linears=linears,
        final_norm=first.norm,  # every family in the table uses one kind of norm throughout
        tied_head=_tied(model),
    )


def _as_linear(name: str, module) -> Linear | None:
    import torch

    if isinstance(module, torch.nn.Linear):
        return Linear(name, module.in_features, module.out_features, module.bias is not None)
    if type(module).__name__ == "Conv1D":  # GPT-2 style: weight is (in, out)
        return Linear(name, module.weight.shape[0], module.weight.shape[1], module.bias is not None)
    return None


def _model_linears(model) -> tuple[tuple[Linear, int], ...]:
    """Every Linear of the model but the output head (PEFT's all-linear never wraps it), with its count."""
    output = model.get_output_embeddings()
    found: Counter[Linear] = Counter()
    for name, module in model.named_modules():
        linear = None if module is output else _as_linear(name.rsplit(".", 1)[-1], module)
        if linear is not None:
            found[linear] += 1
    return tuple(found.items())


def _decoder_layers(model, text):
    """The ModuleList holding the decoder layers (model.layers, transformer.h, gpt_neox.layers, ...)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == text.num_hidden_layers:
            return module
    raise UserError(f"the planner finds no list of {text.num_hidden_layers} decoder layers in this {text.model_type}")


def _find(layer, path: str):
    try:
        return layer.get_submodule(path)
    except AttributeError:
        return None


def _part(layer, path: str, model_type: str):
    """A module the layout says every layer of this family has."""
    module = _find(layer, path)
    if module is None:
        # the table no longer matches transformers' modules: `dpo plan` says so, and `dpo train` goes on
        raise UserError(
            f"the planner's layout of {model_type} layers (FAMILIES in dpo/plan/architecture.py) names "
            f"'{path}', which this version of transformers does not build"
        )
    return module


def _linear(layer, path: str, model_type: str) -> Linear:
    return _as_linear(path.rsplit(".", 1)[-1], _part(layer, path, model_type))


def _head_dim(text) -> int:
    # transformers reads `getattr(config, "head_dim", ...)`; configs that set it to None mean hidden/heads
    return getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads


def _attention_dims(text) -> dict[str, int]:
    return {
        "hidden": text.hidden_size,
        "heads": text.num_attention_heads,
        "kv_heads": getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
        "head_dim": _head_dim(text),
    }


def _activation(layer) -> str:
    """Class name of the first activation module in the layer (what autograd keeps depends on its code)."""
    for module in layer.modules():
        if type(module).__module__ in ("transformers.activations", "torch.nn.modules.activation"):
            return type(module).__name__
    return Block.act


def _block(layer, layout: Layout, text, eager: bool, rotary: bool) -> Block:
    import torch

    model_type = text.model_type
    norms = [_part(layer, path, model_type) for path in layout.norms]
    if isinstance(norms[0], torch.nn.LayerNorm):
        norm = "layer"
    else:
        norm = "rms_fp32" if layout.fp32_norm else "rms"
    experts = _find(layer, layout.experts) if layout.experts else None
    moe, mlp = None, {}
    if experts is not None:  # a sparse layer: experts, router and (Qwen2-MoE) a shared expert
        shared = tuple(_linear(layer, path, model_type) for path in layout.shared_expert)
        n_experts, _, width = experts.down_proj.shape  # (experts, hidden, width)
        moe = MoE(experts=n_experts, top_k=text.num_experts_per_tok, width=width, shared=shared)
    else:
        mlp_in = tuple(_linear(layer, path, model_type) for path in layout.mlp_in)
        mlp_out = _linear(layer, layout.mlp_out, model_type)
        mlp = {
            "mlp_in": mlp_in,
            "mlp_out": mlp_out,
            "mlp_width": mlp_out.in_features,
            # gated MLPs (SwiGLU, GeGLU) read twice the width they hand to the down projection
            "gated": sum(lin.out_features for lin in mlp_in) == 2 * mlp_out.in_features,
        }
    return Block(
        **_attention_dims(text),
        attn_in=tuple(_linear(layer, path, model_type) for path in layout.attn_in),
        attn_out=_linear(layer, layout.attn_out, model_type),
        # every weight matrix, expert stack and router; norm weights and biases are 1-D
        matmul_weights=sum(p.numel() for p in layer.parameters() if p.dim() >= 2),
        **mlp,
        act=_activation(layer),
        norm=norm,
        norms=len(norms),
        rotary=rotary,
        eager_attention=eager,
        softcap=getattr(text, "attn_logit_softcapping", None) is not None,
        moe=moe,
    )


def _stand_in(model, text, linears: tuple[tuple[Linear, int], ...]) -> Architecture:
    """A Llama-shaped stand-in for the activation model of a family outside the table (approximate)."""
    h = text.hidden_size
    heads = getattr(text, "num_attention_heads", None) or max(1, h // 64)
    width = getattr(text, "intermediate_size", None) or getattr(text, "ffn_dim", None) or 4 * h
    hd = getattr(text, "head_dim", None) or h // heads
    names = {lin.name for lin, _ in linears}
    attn_in = (Linear("q_proj", h, heads * hd), Linear("k_proj", h, heads * hd), Linear("v_proj", h, heads * hd))
    attn_out = Linear("o_proj", heads * hd, h)
    mlp_in, mlp_out = (Linear("up_proj", h, width),), Linear("down_proj", width, h)
    block = Block(
        hidden=h,
        heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=hd,
        attn_in=attn_in,
        attn_out=attn_out,
        matmul_weights=sum(lin.in_features * lin.out_features for lin in (*attn_in, attn_out, *mlp_in, mlp_out)),
        mlp_in=mlp_in,
        mlp_out=mlp_out,
        mlp_width=width,
        gated=bool(names & {"gate_proj", "gate_up_proj", "w1", "w3"}),
        eager_attention=model.config._attn_implementation == "eager",
    )
    return Architecture(
        model_type=model.config.model_type,
        vocab=text.vocab_size,
        hidden=h,
        blocks=((block, text.num_hidden_layers),),
        linears=linears,
        tied_head=_tied(model),
    )


def _tied(model) -> bool:
    output, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    return output is not None and embedding is not None and output.weight is embedding.weight
