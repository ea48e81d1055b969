"""The memory a DPO training step needs: weights, gradients, optimizer states, activations, LM-head workspace.

A DPO step forwards the policy on chosen and rejected concatenated (2 x batch_size sequences of seq_len
tokens), forwards the reference under no_grad, backpropagates and steps the optimizer. The estimate adds up
the weights (policy, reference), the gradients and optimizer states of the trainable parameters, the
activations autograd keeps (with and without gradient checkpointing) and the workspace of TRL's fused LM
head, and takes the peak over the phases of the step (see `estimate`). The per-tensor rules are written next
to the code that applies them; `eval/bench_plan_memory.py` measures the estimate against real runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dpo.plan.architecture import Architecture, Block, Linear
from dpo.plan.lora import lora_matches, lora_parameters
from dpo.plan.options import DTYPE_BYTES, OPTIMIZERS, PlanOptions
from dpo.plan.units import GIB, MIB

# Memory the framework itself takes once training runs, outside the tensors modelled here. CUDA: the context,
# cuBLAS/cuDNN workspaces, NCCL buffers; not measured here (no GPU in CI), a typical figure stated as an
# assumption. CPU: thread pools, oneDNN primitive caches, autograd engine; eval/bench_plan_memory.py measured
# 27-53 MiB after the first step.
RUNTIME_BYTES = {"cuda": int(0.75 * GIB), "cpu": 40 * MIB}

# What autograd keeps for backward, rule by rule. Checked by summing the storages that
# torch.autograd.graph.saved_tensors_hooks sees in a training forward of small models of every family in
# FAMILIES (full and LoRA, fp32, bf16, fp32 + bf16 autocast): within 4% for the dense families, except
# that with LoRA the first layer keeps less than the rule says (its input needs no gradient), which a
# 4-layer model shows as up to +18% and a 30-layer one as ~1%; MoE layers are approximate (within 4%, or
# -12% under autocast). tests/plan/test_plan.py repeats the check for Llama.

# Tensors an activation module saves for backward, in units of its input's size, by class name. Native kernels
# (SiLU, GELU, tanh-GELU) save their input; transformers' NewGELUActivation ("gelu_new") is written in Python
# as 0.5*x*(1+tanh(c*(x+0.044715*x^3))) and autograd keeps x, the tanh output, 0.5*x and 1+tanh.
_ACT_SAVES = {"NewGELUActivation": 4}
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
        return self.rank > 0 and lora_matches(self.targets, lin.name)


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


def _activation_bytes(arch: Architecture, ctx: _Ctx, tokens: int, checkpointing: bool) -> tuple[float, float]:
    """(bytes kept from the end of the forward until backward, bytes one layer keeps) for `tokens` tokens.

    With gradient checkpointing each layer keeps only its input hidden states (residual stream, weight dtype);
    the backward pass recomputes one layer at a time, so one layer's activations come back on top, but only
    after the LM head's backward is done.
    """
    # under autocast every matmul keeps the compute-dtype copy of its weight for the input gradient, frozen
    # or not: a per-forward copy of the layer weights, whatever the number of tokens
    cast = ctx.cb if ctx.autocast else 0
    per_layer = [(_block_saved(b, ctx) * tokens + cast * b.matmul_weights, n) for b, n in arch.blocks]
    layer = max(b for b, _ in per_layer)
    # once per forward: the final norm, the fused head's copy of the shifted hidden states, its fp32 log-Z,
    # entropy and int64 targets, the embedding's int64 ids, the boolean 4-D mask
    once = _norm_saved(ctx, arch.final_norm, arch.hidden) + ctx.wb * arch.hidden + 4 + 4 + 8 + 8 + ctx.seq_len
    if checkpointing:
        kept = arch.layers * ctx.wb * arch.hidden * tokens
    else:
        kept = sum(b * n for b, n in per_layer)
    return kept + once * tokens, layer


def estimate(arch: Architecture, total: int, options: PlanOptions) -> dict[str, Any]:
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

    Gradient accumulation (gradient_accumulation_steps > 1): the optimizer steps after the last micro-batch, so
    from the second micro-batch on every .grad exists before its forward starts:
      forward, backward   + all gradients. Autograd adds each new gradient into its .grad in place and frees
                it, so nothing else is new in backward (the head's fresh weight gradient is the buffer above).
      end of backward   untied head: unchanged, the embedding's dense gradient is the one temporary on top of
                all gradients. Tied head: + vocab x hidden (weight dtype): the head's gradient for the shared
                weight waits in autograd's input buffer for the embedding's, and now that weight has a .grad as
                well (in the first micro-batch it has none, which the formula above counts in the buffer's place).
    The first micro-batch is the step without accumulation, never above the later ones.
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
        "reference": total * wb if reference in ("copy", "synced") else 0,
        "gradients": gradients,
        "optimizer": int(states),
        "activations": int(acts),
        "logits_workspace": int(max(head_fwd, head_bwd + head_grad)),
        "runtime": RUNTIME_BYTES[options.device],
    }
    accumulating = options.gradient_accumulation_steps > 1
    # micro-batches after the first: the gradients accumulated so far, alive through forward and backward
    held = gradients if accumulating else 0
    if accumulating and not lora and arch.tied_head:
        late_bwd += V * h * wb  # the tied head's gradient, waiting for the embedding's, while .grad exists
    phases = {
        # one layer's working set in forward (no_grad reference included); in backward the gradients of one
        # layer's activations, and with checkpointing that layer's recomputed activations as well
        "forward": kept + max(head_fwd, layer) + held,
        "backward": kept + max(head_bwd, (2 if ckpt else 1) * layer) + head_grad + held,
        "end of backward": late_bwd,
    }
    phase = max(phases, key=phases.get)
    static = memory["weights"] + memory["reference"] + memory["optimizer"] + memory["runtime"]
    memory["total"] = int(static + phases[phase])
    return {
        "memory": {k: int(v) for k, v in memory.items()},
        "trainable": trainable,
        "phase": phase,
        "phases": {name: int(v) for name, v in phases.items()},  # what is alive on top of the static memory
        "activations": {
            "without_checkpointing": int(acts_other if ckpt else acts),
            "with_checkpointing": int(acts if ckpt else acts_other),
        },
    }
