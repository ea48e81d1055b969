"""dpo/plan/: exact parameter counts from a config, and the DPO memory plan.

Parameter counts are checked against transformers itself: the same config instantiated on the meta device
(no memory, no weights), counting each parameter once (tied embeddings once), and against totals worked out by
hand. Memory is checked against a hand-worked tiny config, against autograd's own record of the tensors it
keeps, and for its ordering properties; `eval/bench_plan_memory.py` measures it against real training steps.
"""

from __future__ import annotations

import json

import pytest

from dpo.errors import UserError
from dpo.plan import PlanOptions, build_plan
from dpo.plan.architecture import FAMILIES, describe
from dpo.plan.count import count_parameters, meta_model
from dpo.plan.fit import GPU_HEADROOM
from dpo.plan.memory import RUNTIME_BYTES, estimate
from dpo.plan.units import GIB

SMALL = {
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 101,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
MHA_ONLY = {"gpt2", "gpt_neox"}  # no num_key_value_heads

# model_type -> variants covering GQA/MQA, explicit head_dim, biases, tied and untied heads, MoE layouts
VARIANTS = {
    "llama": [
        {},
        {
            "num_key_value_heads": 1,
            "head_dim": 24,
            "attention_bias": True,
            "mlp_bias": True,
            "tie_word_embeddings": True,
        },
    ],
    "mistral": [{"head_dim": None}, {"num_key_value_heads": 1, "head_dim": 32}],
    "mixtral": [{"num_local_experts": 4, "num_experts_per_tok": 2}, {"num_local_experts": 3, "head_dim": 8}],
    "qwen2": [{}, {"tie_word_embeddings": True, "head_dim": 8, "num_key_value_heads": 1}],
    "qwen2_moe": [
        {
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 40,
            "shared_expert_intermediate_size": 56,
            "decoder_sparse_step": 2,
            "mlp_only_layers": [2],
        },
        {
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 40,
            "shared_expert_intermediate_size": 56,
            "qkv_bias": False,
            "tie_word_embeddings": True,
        },
    ],
    "gemma": [
        {"head_dim": 32},
        {"head_dim": 16, "num_key_value_heads": 1, "attention_bias": True, "tie_word_embeddings": False},
    ],
    "gemma2": [{"head_dim": 32}, {"tie_word_embeddings": False}],
    "phi3": [{}, {"num_key_value_heads": 4, "tie_word_embeddings": True}],
    "gpt2": [{"n_positions": 128}, {"n_inner": 80, "tie_word_embeddings": False, "add_cross_attention": True}],
    "gpt_neox": [{}, {"attention_bias": False, "tie_word_embeddings": True}],
}


def make_config(model_type: str, **overrides):
    from transformers import AutoConfig

    kwargs = {**SMALL, **overrides}
    if model_type in MHA_ONLY:
        kwargs.pop("num_key_value_heads")
    return AutoConfig.for_model(model_type, **kwargs)


def meta_count(config) -> int:
    """What transformers builds for this config, counted without memory; a tied parameter counts once."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def test_every_family_in_the_table_is_tested():
    assert set(VARIANTS) == set(FAMILIES)


@pytest.mark.parametrize(
    ("model_type", "overrides"),
    [(mt, v) for mt, variants in VARIANTS.items() for v in variants],
    ids=[f"{mt}-{i}" for mt, variants in VARIANTS.items() for i in range(len(variants))],
)
def test_count_equals_meta_device_instantiation(model_type, overrides):
    config = make_config(model_type, **overrides)
    count = count_parameters(meta_model(config))
    assert count.method == "meta-device"
    assert count.total == meta_count(config)
    assert sum(count.by_component.values()) == count.total


def test_qwen2_7b_has_7_615_616_512_parameters():
    """The hand count (every projection hidden x hidden, two MLP matrices, learned positions) gives ~5.9B.
    GQA (4 KV heads of 128), three MLP matrices, q/k/v biases, RoPE and an untied head give the real number."""
    from transformers import Qwen2Config

    config = Qwen2Config(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
        rms_norm_eps=1e-6,
    )
    count = count_parameters(meta_model(config))
    assert count.total == 7_615_616_512
    parts = count.by_component
    assert parts["embeddings"] == parts["head"] == 152064 * 3584
    # per layer: q (3584 x 3584 + bias), k and v (3584 x 512 + bias each), o (3584 x 3584, no bias)
    assert parts["attention"] == 28 * (2 * 3584 * 3584 + 3584 + 2 * (3584 * 512 + 512))
    assert parts["mlp"] == 28 * 3 * 3584 * 18944
    assert parts["norms"] == (2 * 28 + 1) * 3584
    assert "position_embeddings" not in parts


def test_architecture_outside_the_table_is_counted_on_the_meta_device():
    from transformers import OPTConfig

    config = OPTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=128,
        vocab_size=101,
        max_position_embeddings=64,
        word_embed_proj_dim=64,
    )
    assert "opt" not in FAMILIES
    count = count_parameters(meta_model(config))
    assert count.method == "meta-device"
    assert count.total == meta_count(config) == sum(count.by_component.values())
    assert count.by_component["position_embeddings"] == 66 * 64  # OPT offsets its learned positions by 2


def test_architecture_outside_the_layout_table_is_planned_with_its_real_linears(tmp_path):
    from transformers import OPTConfig

    config = OPTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        ffn_dim=128,
        vocab_size=101,
        max_position_embeddings=64,
        word_embed_proj_dim=64,
    )
    plan = build_plan(write_config(tmp_path / "opt", config), PlanOptions(lora_rank=2, lora_targets=("fc1", "fc2")))
    assert plan.parameters.total == meta_count(config)
    assert plan.trainable == 2 * 2 * ((64 + 128) + (128 + 64))  # 2 layers x r=2 x (fc1 + fc2)
    assert "activations estimated as for a Llama-shaped layer" in plan.render()


def test_layers_that_differ_are_described_apart():
    """Qwen2-MoE with decoder_sparse_step=2 and layer 2 dense: layers 0 and 2 dense, layer 1 sparse."""
    arch = describe(meta_model(make_config("qwen2_moe", **VARIANTS["qwen2_moe"][0])))
    (dense, n_dense), (sparse, n_sparse) = arch.blocks
    assert (n_dense, n_sparse) == (2, 1)
    assert dense.moe is None and dense.mlp_width == 96
    assert [lin.name for lin in dense.mlp_in] == ["gate_proj", "up_proj"]
    assert (sparse.moe.experts, sparse.moe.top_k, sparse.moe.width) == (4, 2, 40)
    assert [lin.out_features for lin in sparse.moe.shared] == [56, 56, 64]
    # router (4 x 64) and the shared expert's gate (1 x 64) are multiplied by, as are the fused experts
    experts = 4 * 3 * 40 * 64
    assert sparse.matmul_weights == 2 * 64 * 64 + 2 * 32 * 64 + 3 * 56 * 64 + 64 + 4 * 64 + experts


def test_a_layout_that_does_not_match_the_model_is_a_user_error(tmp_path, monkeypatch):
    """If transformers renames a module the family table names, `dpo plan` says which (and `dpo train` goes on)."""
    from dataclasses import replace

    from transformers import LlamaConfig

    source = write_config(tmp_path / "tiny", LlamaConfig(**TINY))
    monkeypatch.setitem(FAMILIES, "llama", replace(FAMILIES["llama"], attn_out="self_attn.out_proj"))
    with pytest.raises(UserError, match="'self_attn.out_proj'"):
        build_plan(source)


def test_unknown_model_type_is_a_user_error(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "not-a-model", "hidden_size": 8}))
    with pytest.raises(UserError, match="config.json"):
        build_plan(str(path))


def test_missing_or_unreadable_source_is_a_one_line_user_error(tmp_path):
    with pytest.raises(UserError, match="nope/config.json") as missing:
        build_plan(str(tmp_path / "nope" / "config.json"))
    bad = tmp_path / "bad" / "config.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    with pytest.raises(UserError, match="bad/config.json") as unreadable:
        build_plan(str(bad))
    for exc in (missing.value, unreadable.value):
        assert "\n" not in str(exc)


def write_config(path, config) -> str:
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(path)
    return str(path / "config.json")


TINY = dict(
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    vocab_size=100,
    tie_word_embeddings=False,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def test_hand_worked_memory_for_a_tiny_llama(tmp_path):
    """Llama, vocab 100, hidden 16, MLP 32, 2 layers, 2 heads of 8, 1 KV head, untied; float32, 1 pair x 4 tokens,
    LoRA r=2 on q_proj and v_proj, adapter reference, AdamW, device cuda (Triton head: no extra tile copies).

    Parameters: embeddings 100*16 = 1600, head 1600, final norm 16; per layer q 16*16 = 256, k and v 16*8 = 128
    each, o 256 (768), MLP 3*16*32 = 1536, 2 norms 32: 2336; total 1600 + 1600 + 16 + 2*2336 = 7888.
    LoRA: r*(in+out): q 2*(16+16) = 64, v 2*(16+8) = 48, 112 per layer, 224 in all (fp32).
    weights 7888*4 + 224*4 = 32448; reference 0; gradients 224*4 = 896; optimizer 2*224*4 = 1792.
    Activations kept per token per layer (bytes): two RMSNorms keep their fp32 input and rsqrt 2*(64+4) = 136;
    q and v LoRA share the norm output 64, plus 2 rank-2 fp32 inputs 16; SDPA keeps q, and K/V repeated to 2
    heads (padded batch), 3*16*4 = 192, its output 64, fp32 logsumexp 2*4 = 8 and the mask copy 4*4 = 16 (88);
    frozen o/gate/up/down keep nothing; SiLU input, its output and up 3*32*4 = 384. Sum: 880.
    Tokens 2*1*4 = 8, so the layers keep 2*880*8 = 14080; once per token: final norm 68, head input copy 64,
    log-Z/entropy/targets/ids 24, bool mask 4: 160*8 = 1280. Activations 15360.
    Fused head: 2*1*3 = 6 scored positions, tile 6*100 = 600 floats: forward 2400 bytes, backward 2400 + fp32
    hidden gradient 6*16*4 = 384 -> 2784. One layer keeps 880*8 = 7040, more than either tile, so the peak is
    15360 + 7040 = 22400 on top of weights + optimizer + runtime: 32448 + 1792 + 22400 = 56640 + runtime.
    """
    from transformers import LlamaConfig

    source = write_config(tmp_path / "tiny", LlamaConfig(**TINY))
    options = PlanOptions(batch_size=1, seq_len=4, lora_rank=2, lora_targets=("q_proj", "v_proj"), device="cuda")
    plan = build_plan(source, options)
    assert options.gradient_accumulation_steps == 1  # the default: no accumulation, the numbers worked out below
    assert plan.parameters.total == 7888 and plan.trainable == 224
    expected = {
        "weights": 32448,
        "reference": 0,
        "gradients": 896,
        "optimizer": 1792,
        "activations": 15360,
        "logits_workspace": 2784,
        "runtime": RUNTIME_BYTES["cuda"],
        "total": 56640 + RUNTIME_BYTES["cuda"],
    }
    assert plan.memory == expected

    full = build_plan(source, PlanOptions(batch_size=1, seq_len=4, lora_rank=None, device="cuda"))
    # a second frozen copy as reference, fp32 gradients and two fp32 AdamW states for all 7888 parameters
    assert full.memory["weights"] == full.memory["reference"] == full.memory["gradients"] == 7888 * 4
    assert full.memory["optimizer"] == 2 * 7888 * 4


def test_activation_model_matches_what_autograd_keeps():
    """Sum the storages autograd saves during a training forward of a tiny Llama (TRL's fused head, padded
    batch) and compare with the plan's activation bytes, for full fine-tuning in fp32 and LoRA in bf16."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig
    from trl.trainer.utils import add_fused_lm_head

    config = LlamaConfig(
        **{
            **TINY,
            "hidden_size": 64,
            "intermediate_size": 160,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "num_hidden_layers": 3,
        }
    )
    pairs, seq_len = 2, 32
    for dtype, rank in (("float32", None), ("bfloat16", 8)):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
        add_fused_lm_head(model)
        if rank:
            model = get_peft_model(model, LoraConfig(r=rank, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
        ids = torch.randint(3, 100, (2 * pairs, seq_len))
        mask = torch.ones_like(ids)
        mask[0, -4:] = 0
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        saved: dict[int, int] = {}

        def pack(t, saved=saved, params=params):
            if t.untyped_storage().data_ptr() not in params:
                saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids, attention_mask=mask, labels=ids, fused_lm_head=True)
        options = PlanOptions(dtype=dtype, batch_size=pairs, seq_len=seq_len, lora_rank=rank)
        meta = meta_model(config)
        activations = estimate(describe(meta), count_parameters(meta).total, options)["memory"]["activations"]
        # LoRA: the first layer's input needs no gradient, so it keeps a little less than the others
        assert activations == pytest.approx(sum(saved.values()), rel=0.03), (dtype, rank)


def smol_like(tmp_path, **overrides) -> str:
    """A SmolLM2-135M-shaped Llama config (no weights)."""
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
        **overrides,
    )
    return write_config(tmp_path / "smol", config)


def test_lora_needs_less_optimizer_and_gradient_memory_than_full(tmp_path):
    source = smol_like(tmp_path)
    lora = build_plan(source, PlanOptions(lora_rank=16))
    full = build_plan(source, PlanOptions(lora_rank=None))
    assert lora.parameters.total == full.parameters.total == 134_515_008
    # 30 layers x r=16 x (q 576+576, k 576+192, v 576+192, o 576+576)
    assert lora.trainable == 30 * 16 * (2 * 1152 + 2 * 768)
    assert lora.memory["optimizer"] < full.memory["optimizer"] / 50
    assert lora.memory["gradients"] < full.memory["gradients"] / 50
    assert lora.memory["reference"] == 0 < full.memory["reference"]
    assert lora.memory["total"] < full.memory["total"]
    precomputed = build_plan(source, PlanOptions(lora_rank=None, reference="precomputed"))
    assert precomputed.memory["reference"] == 0


def test_a_reference_free_loss_counts_no_reference(tmp_path):
    """reference=none (simpo, orpo: dpo train passes it for a loss plan that needs no reference): the reference copy of
    full fine-tuning is saved, and the plan says how much; the recipe's plan line does the same."""
    from types import SimpleNamespace

    from dpo.config.schema import Recipe
    from dpo.plan.recipe_options import options_for_recipe

    source = smol_like(tmp_path)
    copy = build_plan(source, PlanOptions(lora_rank=None))
    none = build_plan(source, PlanOptions(lora_rank=None, reference="none"))
    assert none.memory["reference"] == 0 < copy.memory["reference"] == 134_515_008 * 4
    assert copy.memory["total"] - none.memory["total"] == copy.memory["reference"]
    assert "reference: none" in none.render() and "saves 513.1 MiB of reference weights" in none.render()
    lora = build_plan(source, PlanOptions(lora_rank=16, reference="none")).render()
    assert "saves the reference forward" in lora
    assert none.summary_line().endswith(", no reference (reference-free loss)")
    assert "reference" not in copy.summary_line()
    recipe = Recipe.model_validate({"data": {"train": "x.jsonl"}, "peft": None})
    args = SimpleNamespace(
        per_device_train_batch_size=2, max_length=64, gradient_checkpointing=False, precompute_ref_log_probs=False,
        bf16=False, fp16=False, optim="adamw_torch", gradient_accumulation_steps=1,
    )  # fmt: skip
    assert options_for_recipe(recipe, args, cuda=False, reference_free=True).reference == "none"
    assert options_for_recipe(recipe, args, cuda=False).reference == "auto"


def test_a_recipes_optimizer_and_mixed_precision_reach_the_plan():
    """training.optim and fp16 change the memory: SGD keeps no state, 8-bit AdamW a byte per state, fp16 autocast
    keeps float16 copies of the weights; an optimizer the planner has no entry for is planned as AdamW."""
    from types import SimpleNamespace

    from dpo.config.schema import Recipe
    from dpo.plan.recipe_options import options_for_recipe

    recipe = Recipe.model_validate({"data": {"train": "x.jsonl"}, "peft": None})
    common = dict(per_device_train_batch_size=2, max_length=64, gradient_checkpointing=False,
                  precompute_ref_log_probs=False, bf16=False, fp16=False, gradient_accumulation_steps=1)  # fmt: skip
    for optim, planned in [("sgd", "sgd"), ("paged_adamw_8bit", "adamw_8bit"), ("adamw_torch_fused", "adamw"),
                           ("adafactor", "adamw")]:  # fmt: skip
        options = options_for_recipe(recipe, SimpleNamespace(**common, optim=optim), cuda=True)
        assert options.optimizer == planned and options.autocast is None
    half = options_for_recipe(recipe, SimpleNamespace(**{**common, "fp16": True}, optim="adamw_torch"), cuda=True)
    assert half.autocast == "float16"


def test_gradient_checkpointing_lowers_activations(tmp_path):
    source = smol_like(tmp_path)
    plain = build_plan(source, PlanOptions(batch_size=4, seq_len=1024))
    ckpt = build_plan(source, PlanOptions(batch_size=4, seq_len=1024, gradient_checkpointing=True))
    assert ckpt.memory["activations"] < plain.memory["activations"] / 5
    assert ckpt.memory["total"] < plain.memory["total"]
    # both figures are reported whichever is chosen
    assert ckpt.activations == plain.activations
    assert plain.activations["with_checkpointing"] == ckpt.memory["activations"]


def test_bfloat16_and_autocast(tmp_path):
    source = smol_like(tmp_path)
    fp32 = build_plan(source, PlanOptions(lora_rank=None))
    bf16 = build_plan(source, PlanOptions(lora_rank=None, dtype="bfloat16"))
    mixed = build_plan(source, PlanOptions(lora_rank=None, autocast="bfloat16"))
    assert bf16.memory["weights"] * 2 == fp32.memory["weights"] == mixed.memory["weights"]
    assert bf16.memory["activations"] < mixed.memory["activations"] < fp32.memory["activations"]
    with pytest.raises(UserError, match="autocast"):
        build_plan(source, PlanOptions(dtype="bfloat16", autocast="bfloat16"))


def test_largest_batch_that_fits_is_the_largest(tmp_path):
    source = smol_like(tmp_path)
    options = PlanOptions(batch_size=64, seq_len=512, gpu_memory_gib=24)
    plan = build_plan(source, options)
    best = plan.max_batch_size
    assert 1 <= best < 64
    budget = 24 * GIB * GPU_HEADROOM

    def peak(batch: int) -> int:
        return build_plan(source, PlanOptions(batch_size=batch, seq_len=512)).memory["total"]

    assert peak(best) <= budget < peak(best + 1)
    assert f"largest per-device batch that fits is {best}" in plan.suggestions[0]
    assert "gradient_accumulation_steps=" in plan.suggestions[0]
    roomy = build_plan(source, PlanOptions(batch_size=2, seq_len=512, gpu_memory_gib=24))
    assert roomy.max_batch_size == best and "batch 2 fits" in roomy.suggestions[0]


def test_suggestions_when_nothing_fits(tmp_path):
    source = smol_like(tmp_path)
    plan = build_plan(source, PlanOptions(lora_rank=None, batch_size=8, seq_len=1024, gpu_memory_gib=3))
    assert plan.max_batch_size == 0
    assert plan.suggestions[0].startswith("even 1 pair")
    text = " ".join(plan.suggestions[1:])
    assert "gradient checkpointing" in text and "LoRA" in text
    hopeless = build_plan(source, PlanOptions(lora_rank=None, gpu_memory_gib=0.1))
    assert hopeless.max_batch_size == 0 and "nothing considered fits" in hopeless.suggestions[-1]
    assert "LoRA adapter (r=16 on q/k/v/o)" in text


def test_tr_dpos_moving_reference_is_a_full_copy_and_gets_no_suggestion_it_cannot_take(tmp_path):
    """TR-DPO (regularizers.sync_ref) moves a full copy of the model: it costs what a frozen copy costs, and neither
    precomputed reference log-probs nor a LoRA adapter (whose reference, the disabled base, cannot move) applies."""
    source = smol_like(tmp_path)
    copy = build_plan(source, PlanOptions(lora_rank=None, batch_size=8, seq_len=1024, gpu_memory_gib=3))
    synced = build_plan(source, PlanOptions(lora_rank=None, reference="synced", batch_size=8, seq_len=1024,
                                            gpu_memory_gib=3))  # fmt: skip
    assert synced.memory == copy.memory and synced.memory["reference"] == 134_515_008 * 4
    assert any("precompute" in s for s in copy.suggestions) and any("LoRA" in s for s in copy.suggestions)
    assert synced.suggestions[0].startswith("even 1 pair") and len(synced.suggestions) > 1
    assert not any("precompute" in s or "LoRA" in s for s in synced.suggestions)
    assert "reference: synced" in synced.render() and "TR-DPO" in synced.render()
    with pytest.raises(UserError, match="reference='synced' needs full fine-tuning"):
        build_plan(source, PlanOptions(lora_rank=16, reference="synced"))


def test_the_lora_suggestion_targets_layers_the_model_has(tmp_path):
    """GPT-2 has no q/k/v/o: suggesting LoRA on them would add no trainable parameter (PEFT refuses it) and the
    plan would promise a fit from a model with nothing to train. Its suggestion wraps every Linear instead."""
    from transformers import GPT2Config

    source = write_config(tmp_path / "gpt2", GPT2Config(n_embd=256, n_layer=4, n_head=4, vocab_size=5000))
    plan = build_plan(source, PlanOptions(lora_rank=None, batch_size=64, seq_len=512, gpu_memory_gib=1))
    lora = [s for s in plan.suggestions if "LoRA" in s]
    assert lora and all("on all Linear layers" in s for s in lora)


def test_lora_targets_that_do_not_exist_still_give_the_count_and_say_lora_does_not_apply(tmp_path):
    from transformers import GPT2Config

    source = write_config(tmp_path / "gpt2", GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=101))
    full = build_plan(source, PlanOptions(lora_rank=None))
    default = build_plan(source, PlanOptions())  # q_proj etc. do not exist in GPT-2
    assert default.parameters == full.parameters and default.parameters.total > 0
    assert default.options.lora_rank is None and default.trainable == full.trainable == full.parameters.total
    assert default.memory == full.memory  # planned as full fine-tuning, the setup that applies
    (note,) = default.notes
    assert note.startswith("LoRA does not apply: none of its targets (q_proj, k_proj, v_proj, o_proj) is a Linear")
    assert "Linear layers are: c_attn, c_fc, c_proj" in note
    assert "note: LoRA does not apply" in default.render() and default.to_dict()["notes"] == [note]
    adapter = build_plan(source, PlanOptions(reference="adapter"))  # there is no adapter to disable
    assert adapter.options.resolved_reference() == "copy"
    plan = build_plan(source, PlanOptions(lora_targets=("c_attn",), lora_rank=4))
    assert plan.trainable == 2 * 4 * (64 + 192)
    dotted = build_plan(source, PlanOptions(lora_targets=("attn.c_attn",), lora_rank=4))  # as PEFT matches it
    assert dotted.trainable == plan.trainable and dotted.notes == []
    all_linear = build_plan(source, PlanOptions(lora_targets=("all-linear",), lora_rank=4))
    # c_attn, attention c_proj, c_fc, MLP c_proj: the head is never wrapped
    assert all_linear.trainable == 2 * 4 * ((64 + 192) + (64 + 64) + (64 + 256) + (256 + 64))


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("dtype", "int8"),
        ("reference", "twin"),
        ("optimizer", "lion"),
        ("batch_size", 0),
        ("seq_len", 1),
        ("gradient_accumulation_steps", 0),
    ],
)
def test_bad_options_are_user_errors(tmp_path, option, value):
    with pytest.raises(UserError, match=option):
        build_plan(smol_like(tmp_path), PlanOptions(**{option: value}))


def test_adapter_reference_needs_lora(tmp_path):
    with pytest.raises(UserError, match="LoRA"):
        build_plan(smol_like(tmp_path), PlanOptions(lora_rank=None, reference="adapter"))


def test_model_directory_json_render_and_summary(tmp_path):
    source = smol_like(tmp_path)
    plan = build_plan(str(tmp_path / "smol"), PlanOptions(gpu_memory_gib=16))  # a directory works too
    data = json.loads(json.dumps(plan.to_dict()))
    assert data["parameters"]["total"] == 134_515_008 and data["parameters"]["method"] == "meta-device"
    assert set(data["parameters"]["by_component"]) >= {"embeddings", "attention", "mlp", "norms", "head"}
    assert data["memory"]["total"] == plan.memory["total"] and data["suggestions"] == plan.suggestions
    assert set(data["activations"]) == {"with_checkpointing", "without_checkpointing"}
    text = plan.render()
    for word in ("embeddings", "attention", "mlp", "norms", "tied to embeddings", "activations", "suggestions"):
        assert word in text
    line = plan.summary_line()
    assert "\n" not in line
    assert line.startswith("plan: 134.5M params (meta-device), LoRA r=16 1.8M trainable, est. peak ")
    assert line.endswith("at batch 8 x 512 tokens, float32")
    assert build_plan(source).summary_line() == line


@pytest.mark.slow
def test_embedded_alias_is_planned_from_its_config():
    plan = build_plan("smollm2-135m-instruct", PlanOptions(batch_size=2, seq_len=128))
    assert plan.model_type == "llama" and plan.parameters.total == 134_515_008
    assert plan.parameters.by_component["head"] == 0  # tied


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_size": 50, "num_attention_heads": 8}, "The hidden size (50) is not a multiple of the number of"),
        ({"num_attention_heads": 0}, "cannot read the model config: integer division or modulo by zero"),
        ({"num_hidden_layers": 0}, "has no decoder layers (num_hidden_layers: 0)"),
    ],
)
def test_configs_transformers_refuses_are_one_error_line(tmp_path, change, message):
    """transformers 5 checks a config as it reads it, with errors that are no ValueError (its strict dataclasses,
    a division by 0 heads): each is a UserError naming the folder, not a traceback."""
    import json

    folder = tmp_path / "model"
    folder.mkdir()
    config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, **change}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError) as err:
        build_plan(str(folder))
    assert message in str(err.value) and "\n" not in str(err.value)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read the model config: It looks like the config file"):
        build_plan(str(folder))


def test_cutting_sequences_is_advised_on_its_own_when_no_other_change_is_left(tmp_path):
    """LoRA, bfloat16 weights and gradient checkpointing already on: the advice read "together: ; and cut
    sequences to ..."; it names the cut alone, and the batch that fits at that length."""
    from dataclasses import replace

    source = smol_like(tmp_path)
    options = PlanOptions(lora_rank=16, dtype="bfloat16", gradient_checkpointing=True, batch_size=1, seq_len=2048)
    long, half = (build_plan(source, replace(options, seq_len=n)).memory["total"] for n in (2048, 1024))
    plan = build_plan(source, replace(options, gpu_memory_gib=(long + half) / 2 / GPU_HEADROOM / GIB))
    assert plan.max_batch_size == 0
    assert plan.suggestions[-1].startswith("cut sequences to 1024 tokens (up to batch ")


def test_gradient_accumulation_keeps_the_gradients_alive_through_the_later_micro_batches(tmp_path):
    """The hand-worked LoRA case above with gradient_accumulation_steps=2: from the second micro-batch on the 224
    fp32 adapter gradients (896 bytes) are alive through the forward and the backward, so the peak, 15360 + 7040
    on top of the static memory, gains exactly 896; the end of backward (all gradients plus the embedding's dense
    gradient) is unchanged. Full fine-tuning gains the 7888 * 4 = 31552 gradient bytes in both phases too."""
    from dataclasses import replace

    from transformers import LlamaConfig

    source = write_config(tmp_path / "tiny", LlamaConfig(**TINY))
    lora = PlanOptions(batch_size=1, seq_len=4, lora_rank=2, lora_targets=("q_proj", "v_proj"), device="cuda")
    accumulated = build_plan(source, replace(lora, gradient_accumulation_steps=2))
    assert accumulated.memory == {
        **build_plan(source, lora).memory,
        "total": 56640 + 896 + RUNTIME_BYTES["cuda"],
    }
    assert build_plan(source, replace(lora, gradient_accumulation_steps=8)).memory == accumulated.memory

    arch = describe(meta_model(LlamaConfig(**TINY)))
    for options, gradients in ((lora, 224 * 4), (PlanOptions(batch_size=1, seq_len=4, lora_rank=None), 7888 * 4)):
        once = estimate(arch, 7888, options)
        twice = estimate(arch, 7888, replace(options, gradient_accumulation_steps=2))
        assert once["memory"]["gradients"] == twice["memory"]["gradients"] == gradients
        assert twice["phases"] == {
            "forward": once["phases"]["forward"] + gradients,
            "backward": once["phases"]["backward"] + gradients,
            "end of backward": once["phases"]["end of backward"],
        }
        static = sum(twice["memory"][k] for k in ("weights", "reference", "optimizer", "runtime"))
        assert twice["memory"]["total"] == static + max(twice["phases"].values())


def test_gradient_accumulation_with_a_tied_head_holds_its_gradient_at_the_end_of_backward(tmp_path):
    """A tied head's weight is the embedding's: its gradient from the head waits in autograd's buffer until the
    embedding's backward adds its dense gradient. In the first micro-batch that weight has no .grad yet; from the
    second on it has, so the end of backward holds one more vocab x hidden: 5000 * 16 * 4 = 320000 bytes. An untied
    head's gradient goes into its own .grad at once (nothing more)."""
    from dataclasses import replace

    from transformers import LlamaConfig

    full = PlanOptions(batch_size=1, seq_len=4, lora_rank=None)
    for tied, extra in ((True, 5000 * 16 * 4), (False, 0)):
        meta = meta_model(LlamaConfig(**{**TINY, "vocab_size": 5000, "tie_word_embeddings": tied}))
        arch, total = describe(meta), count_parameters(meta).total
        assert arch.tied_head is tied
        once = estimate(arch, total, full)
        twice = estimate(arch, total, replace(full, gradient_accumulation_steps=2))
        gradients = total * 4
        assert twice["phases"]["end of backward"] == once["phases"]["end of backward"] + extra
        assert twice["phases"]["backward"] == once["phases"]["backward"] + gradients
    assert once["phase"] == "end of backward"  # so the end of backward is what a tied head's accumulation raises
    assert estimate(arch, total, replace(full, gradient_accumulation_steps=2))["phase"] == "backward"


def test_accumulation_advice_names_a_batch_that_fits_with_accumulation(tmp_path):
    """Full fine-tuning, 16 pairs x 512 tokens, a device between the peaks of batch 8 without and with accumulation
    (the 513 MiB of gradients alive through the second micro-batch). Batch 8 is the largest that fits without
    accumulation, so the old advice, per-device batch 8 with gradient_accumulation_steps=2, did not fit; the batch
    named must fit with accumulation: the largest with it is 7, whose largest divisor of 16 is 4."""
    from dataclasses import replace

    source = smol_like(tmp_path)
    options = PlanOptions(lora_rank=None, batch_size=16, seq_len=512)

    def peak(batch: int, steps: int = 1) -> int:
        return build_plan(source, replace(options, batch_size=batch, gradient_accumulation_steps=steps)).memory["total"]

    budget = (peak(8) + peak(8, 2)) / 2
    assert peak(8) <= budget < peak(9) and peak(7, 2) <= budget < peak(8, 2)
    plan = build_plan(source, replace(options, gpu_memory_gib=budget / GPU_HEADROOM / GIB))
    assert plan.max_batch_size == 8
    assert plan.suggestions[0].endswith(
        "the largest per-device batch that fits is 8 (7 with gradient accumulation, whose gradients stay alive). "
        "To keep 16 pairs per optimizer step: per-device batch 4 with gradient_accumulation_steps=4"
    )
    assert peak(4, 4) <= budget

    # accumulation asked for: 8 x 2 = 16 pairs per optimizer step, batch 8 does not fit with accumulation
    asked = build_plan(
        source,
        replace(options, batch_size=8, gradient_accumulation_steps=2, gpu_memory_gib=plan.options.gpu_memory_gib),
    )
    assert asked.max_batch_size == 7
    assert asked.suggestions[0].endswith(
        "the largest per-device batch that fits is 7. To keep 16 pairs per optimizer step: per-device batch 4 with "
        "gradient_accumulation_steps=4"
    )

    # between 1 pair without and with accumulation: no accumulation advice can be true
    budget = (peak(1) + peak(1, 2)) / 2
    tight = build_plan(source, replace(options, batch_size=2, gpu_memory_gib=budget / GPU_HEADROOM / GIB))
    assert tight.max_batch_size == 1
    assert tight.suggestions[0].endswith(
        "the largest per-device batch that fits is 1 (none with gradient accumulation, whose gradients stay alive), "
        "so gradient accumulation cannot keep 2 pairs per optimizer step"
    )


def test_accumulation_is_shown_in_the_plan(tmp_path):
    source = smol_like(tmp_path)
    plan = build_plan(source, PlanOptions(lora_rank=None, batch_size=2, seq_len=128, gradient_accumulation_steps=4))
    text = plan.render()
    assert "batch 2 pairs x 128 tokens (512 tokens per forward), gradient_accumulation_steps=4 (8 pairs per " in text
    assert "gradients          513.1 MiB   trainable parameters; accumulated: alive through every later" in text
    assert "at batch 2 x 128 tokens with gradient_accumulation_steps=4, float32" in plan.summary_line()
    once = build_plan(source, PlanOptions(lora_rank=None, batch_size=2, seq_len=128))
    assert "gradient_accumulation_steps" not in once.render() + once.summary_line()
    assert "accumulated:" not in once.render()
