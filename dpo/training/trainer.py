"""Our DPOTrainer: TRL's data collation, reference handling and metric names; our loss computation.

TRL 1.16's `DPOTrainer._compute_loss` is one long method with an if/elif chain over loss names: it
raises on a loss it does not know and silently ignores `label_smoothing` for `sigmoid`. We override
just that method: compute per-sequence policy and reference log-probs the way TRL does (fused LM
head, adapter-disabled reference under PEFT, precomputed reference log-probs when asked), then hand
them to the pure functions of `dpo/training/losses.py`, and log the same metric names TRL logs (but a
mixture-of-experts model's `aux_loss`, which trains and is not logged) plus ours.

Written against TRL 1.16 (pinned in pyproject.toml).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import time
import warnings
from collections import defaultdict
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch
from accelerate.utils import is_peft_model
from trl import DPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import use_adapter

from dpo.data.rows import SCORE_GAP
from dpo.errors import NonFiniteError
from dpo.logps import reduce_logps
from dpo.metrics import GAPS, HELD_OUT_PREFIX, PER_PAIR, STANDARD_ERROR_PREFIX, gap_sign, lookup
from dpo.noise import logged_error, standard_error
from dpo.rundir import resume
from dpo.rundir.atomic import atomic_write_json
from dpo.rundir.files import CHECKPOINT_PREFIX, DPO_STATE, REFERENCE_LOGPS, TRAINER_STATE
from dpo.training.beta import BetaController
from dpo.training.callbacks import BestCheckpointCallback
from dpo.training.losses import LOSSES, LossPlan, compute_loss, per_token
from dpo.training.packing import SUPPORTED_ATTENTION, PackedPairs, pack_pairs
from dpo.training.plateau import NoiseAwarePlateau
from dpo.training.secret_free import secret_free

# SCORE_GAP: the column of pairs expanded from scored multi-response rows (dpo/data/rows.py); batches carry it for
# losses that take `score_gaps` (ODPO's offset)
_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps", SCORE_GAP}
# The held-out KL pass materialises (rows, tokens, vocabulary) float32 tensors, a few at a time: at most 8 rows
# per forward, fewer when sequences are long, so that one such tensor stays under ~256 MB (2**26 elements).
_KL_ROWS, _KL_ELEMENTS = 8, 2**26
# the per-token fields TRL's fused LM head returns (None where not requested)
_FUSED_FIELDS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


class Trainer(DPOTrainer):
    """DPOTrainer whose loss comes from a `LossPlan` of functions in `dpo.training.losses.LOSSES`."""

    def __init__(
        self,
        *args,
        loss_plan: LossPlan,
        heldout_kl: bool = False,
        noise_sigmas: float = 0.0,
        share_prompt: bool = True,
        heldout_kl_pairs: int | None = None,
        **kwargs,
    ):
        self.loss_plan = loss_plan
        self.noise_sigmas = noise_sigmas  # reduce-on-plateau's noise rule (early_stopping.noise_sigmas)
        self.plateau_start: float | None = None  # the watched metric at step 0 (evaluate_untrained): its start
        self.heldout_kl = heldout_kl
        self.heldout_kl_pairs = heldout_kl_pairs  # KL on the first N held-out pairs (None: all of them)
        self.share_prompt = False  # decided once the model is in place (see _decide_prompt_sharing)
        # dropout in the policy's training forward: two sequences there (see _decide_prompt_sharing)
        self._dropout_apart = False
        self._share_prompt_wanted, self._sharing_decided = share_prompt, False
        self._causal_needs_no_mask = False
        # forward passes per layout (policy, reference and the held-out KL's each count; the benchmark reports them)
        self.layouts_used = {"shared": 0, "two_sequences": 0}
        self._neftune_length: int | None = None
        # Reference log-probs by pair content (see _reference_logps): the held-out pairs' always, the training pairs'
        # with training.precompute_ref_log_probs. Valid while the reference is fixed (not with TR-DPO's sync).
        self._ref_cache: dict[bytes, tuple[float, float]] = {}
        self._policy_is_ref_at_start: bool | None = None
        self._kl_keys: set[bytes] | None = None
        self._evaluating = False
        self._kl_values: dict[bytes, tuple[float, float]] = {}  # KL (chosen, rejected) of this evaluation's subsample
        self.beta_controller = BetaController(beta0=loss_plan.beta, **loss_plan.beta_schedule)
        self._neftune_on = False
        self._since_eval: dict[str, list[float]] = defaultdict(list)  # train values since the last evaluation
        self._preference_losses: list[float] = []  # MoE: train losses since the last log, router loss left out
        self._eval_pairs: dict[str, list[float]] = defaultdict(list)  # this evaluation's per-pair values (PER_PAIR)
        self._eval_tokens: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # per-token metric: [sum, count]
        self.clock_start, self.runtime_before = time.time(), 0.0  # run time of earlier attempts (resume)
        self.resumed_from: list[int] = []  # steps this run was resumed from
        self._loss_sum_before: tuple[float, int] | None = None  # (sum of train losses, steps) up to the resumed step
        full_fine_tuning = kwargs.get("peft_config") is None  # with LoRA TRL keeps no copy: the adapter is disabled
        self._ref_model_given = kwargs.get("ref_model") is not None  # else TRL decides whether it loads a copy
        with _no_reference_copy(kwargs.get("args"), loss_plan.needs_reference or not full_fine_tuning):
            super().__init__(*args, **kwargs)
        if not loss_plan.needs_reference:
            self.precompute_ref_logps = False  # nothing was precomputed (see _precompute_ref_logps)
        if loss_plan.needs_score_gaps:
            self.data_collator = _ScoreGapCollator(self.data_collator)
        self._decide_prompt_sharing()
        self.beta = loss_plan.beta  # TRL reads self.beta in a few places; keep them consistent with ours
        if loss_plan.neftune_alpha is not None:
            embeddings = self.accelerator.unwrap_model(self.model).get_input_embeddings()
            embeddings.register_forward_hook(self._neftune_hook)

    def _neftune_hook(self, module, inputs, output):
        """NEFTune (arXiv 2310.05914, Alg. 1): uniform noise of scale alpha / sqrt(L * d) on the embeddings.

        Only while `_neftune_on`, i.e. inside the policy's training forward. transformers' own NEFTune
        hook fires on every forward in training mode, which under LoRA includes the reference forward
        (same module, adapter disabled) and would perturb the reference too.
        """
        if not self._neftune_on:
            return output
        # the length of the ordinary (two-sequence) batch, also when the prompt is shared, so the noise is the same
        length = self._neftune_length or output.size(1)
        scale = self.loss_plan.neftune_alpha / (length * output.size(2)) ** 0.5
        return output + self._neftune_noise(output, scale)

    def _neftune_noise(self, embeddings: torch.Tensor, scale: float) -> torch.Tensor:
        return torch.zeros_like(embeddings).uniform_(-scale, scale)

    def _set_signature_columns_if_needed(self):
        """TRL's columns, plus the score gap when a loss takes it (transformers drops every other column)."""
        super()._set_signature_columns_if_needed()
        if self.loss_plan.needs_score_gaps and SCORE_GAP not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, SCORE_GAP]

    def beta_now(self) -> float:
        """The beta of the current step: evaluation and the next training batch use it (adaptive: the beta of the
        last training batch)."""
        return self.beta_controller.scheduled(self.state.global_step, self.state.max_steps)

    def _sequence_logps(
        self, model, inputs: dict, own_training_forward: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, object]:
        """Per-sequence summed completion log-probs under `model` for the [chosen; rejected] batch.

        With the prompt shared (dpo/training/packing.py) one row per pair goes through the model and the per-token
        results come back in the ordinary (2B, T - 1) layout. `own_training_forward`: whether this is the policy's own
        forward, which trains when the model is in training mode; False for the reference's (the adapter disabled on
        the policy model) and the start-up check's. The policy's training forward alone gets NEFTune's noise, if
        configured; a mixture of experts' router logits, for its router loss; two sequences where dropout is
        active."""
        completion_mask = inputs["completion_mask"]
        shift_mask = completion_mask[..., 1:]
        training = own_training_forward and model.training
        layout = self._packed_layout(inputs, policy_training=training)
        self._neftune_on = training and self.loss_plan.neftune_alpha is not None
        self._neftune_length = inputs["input_ids"].size(1)
        try:
            if layout is not None:
                with _score_completions_only():
                    packed = model(
                        **self._packed_kwargs(model, layout), shift_labels=layout.shift_labels, fused_lm_head=True
                    )
                fields = {f: getattr(packed, f, None) for f in _FUSED_FIELDS}
                fields = {f: None if v is None else layout.unpack(v) for f, v in fields.items()}
                outputs = SimpleNamespace(**fields, aux_loss=None)
            else:
                model_kwargs = self._ordinary_kwargs(inputs)
                if self.aux_loss_enabled:
                    # only the policy's training loss adds the router loss: the reference's forward (TRL drops the
                    # flag there too) and evaluation need no router logits, nor an aux loss that would be discarded.
                    # False, not left out: a config with output_router_logits true would compute them anyway
                    model_kwargs["output_router_logits"] = training
                labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
                with _score_completions_only():
                    outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        finally:
            self._neftune_on, self._neftune_length = False, None
        # Prompt-learning PEFT prepends virtual tokens to the outputs; keep the positions of the real tokens.
        per_token_logps = outputs.log_probs[:, -shift_mask.size(1) :]
        return per_token_logps, self._reduce(per_token_logps, shift_mask), outputs

    # ---- prompt sharing (dpo/training/packing.py) ----

    def _decide_prompt_sharing(self) -> None:
        """On where it is exact: an attention implementation that takes a custom 4-D mask, a text model without
        sliding windows or prepended virtual tokens, and a check that both layouts agree on a small batch. Otherwise
        the ordinary path, said once. Decided once, before TRL's up-front reference pass where there is one."""
        if self._sharing_decided:
            return
        self._sharing_decided = True
        wanted = self._share_prompt_wanted
        unwrapped = self.accelerator.unwrap_model(self.model)
        config = unwrapped.config.get_text_config()
        implementation = config._attn_implementation
        peft_config = getattr(unwrapped, "peft_config", {})
        reason = None
        if implementation not in SUPPORTED_ATTENTION:
            reason = f"attention implementation {implementation!r} (supported: {', '.join(SUPPORTED_ATTENTION)})"
        elif self._is_vision_dataset:
            reason = "vision-language inputs"
        elif self.aux_loss_enabled:
            reason = "mixture-of-experts router loss"
        elif any(getattr(c, "is_prompt_learning", False) for c in peft_config.values()):
            reason = "prompt-learning adapters prepend virtual tokens"
        elif "sliding_attention" in (getattr(config, "layer_types", None) or []) or (
            getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)
        ):
            reason = "sliding-window attention"
        # Right-padded rows need no padding mask under causal attention (a real token sees only earlier, real tokens),
        # and without one SDPA runs its causal kernel instead of materialising every (query, key) score: same values.
        self._causal_needs_no_mask = reason is None
        if not wanted:
            return
        if reason is None:
            self.share_prompt = True
            reason = self._prompt_sharing_mismatch()
            self.share_prompt = reason is None
            self.layouts_used = dict.fromkeys(self.layouts_used, 0)  # not counting the check's batch
        if reason and self.accelerator.is_main_process:
            print(f"prompt sharing: off ({reason}); chosen and rejected run as two sequences", flush=True)
        dropout = _active_dropout(unwrapped) if self.share_prompt else None
        # With dropout on, the shared prompt would get one dropout draw that both answers see, and the DPO loss,
        # which reads their difference, would cancel most of it: a weaker regulariser than asked for. So the policy's
        # training forward keeps two sequences, each with its own draw, as TRL's. Evaluation (no dropout) and the
        # reference's forward (no gradient: dropout regularises nothing there) keep the prompt shared.
        self._dropout_apart = dropout is not None
        if dropout and self.accelerator.is_main_process:
            print(
                f"prompt sharing: off in the policy's training forward ({dropout}): chosen and rejected run as two "
                "sequences there, each with its own dropout; evaluation and the reference keep the prompt shared",
                flush=True,
            )

    @torch.no_grad()
    def _prompt_sharing_mismatch(self) -> str | None:
        """Both layouts on a small random batch (2 pairs, a shared prompt): None where they agree."""
        model = self.model
        generator = torch.Generator().manual_seed(0)
        vocabulary = self.accelerator.unwrap_model(model).get_input_embeddings().weight.size(0)
        ids = torch.randint(0, vocabulary, (4, 12), generator=generator)
        ids[2:, :6] = ids[:2, :6]  # rows 0/2 and 1/3 are pairs with the same 6-token prompt
        attention = torch.ones_like(ids)
        attention[1, 10:] = attention[2, 9:] = 0  # answers of different lengths: padding inside the batch
        completion = attention.clone()
        completion[:, :6] = 0
        device = self.accelerator.device
        batch = {"input_ids": ids.to(device), "attention_mask": attention.to(device)}
        batch["completion_mask"] = completion.to(device)
        was_training = model.training
        model.eval()
        try:
            with self.accelerator.autocast():
                shared = self._sequence_logps(model, batch, own_training_forward=False)[1]
                self.share_prompt = False
                ordinary = self._sequence_logps(model, batch, own_training_forward=False)[1]
        except Exception as exc:  # noqa: BLE001 - any failure of the shared layout means: use the ordinary one
            return f"the model rejects the shared layout: {type(exc).__name__}: {str(exc)[:120]}"
        finally:
            model.train(was_training)
        exact = ordinary.dtype == torch.float32 and not self.args.bf16 and not self.args.fp16
        tolerance = 1e-4 if exact else 5e-2
        difference = (shared.float() - ordinary.float()).abs().max().item()
        if not difference <= tolerance * max(1.0, ordinary.abs().max().item()):
            return f"log-probs differ from the two-sequence forward by {difference:.2g} on a test batch"
        return None

    def _packed_layout(self, inputs: dict, policy_training: bool = False) -> PackedPairs | None:
        """The shared-prompt layout of a batch, or None: off, a batch it would not be exact for, one it would make
        dearer (long answers after a short prompt: saving the prompt costs less than the longer rows' attention), or
        the policy's training forward with dropout active (see _decide_prompt_sharing)."""
        if not self.share_prompt or set(inputs) - {"input_ids", "attention_mask", *_NON_MODEL_KEYS}:
            return None
        layout = None
        if not (policy_training and self._dropout_apart):
            ids, attention, completion = inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"]
            layout = pack_pairs(ids, attention, completion, pad_token_id=0)
        if layout is not None and not self._sharing_pays(inputs["input_ids"].shape, layout.input_ids.shape):
            layout = None
        self.layouts_used["two_sequences" if layout is None else "shared"] += 1
        return layout

    def _sharing_pays(self, ordinary: torch.Size, shared: torch.Size) -> bool:
        """Multiply-adds of the transformer blocks, per layer, in each layout (padding included): the linear layers
        per token, plus attention per (query, key) pair, half of them under the ordinary layout's causal kernel, all
        of them under the shared layout's block mask."""
        config = self.accelerator.unwrap_model(self.model).config.get_text_config()
        hidden, heads = config.hidden_size, config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        intermediate = getattr(config, "intermediate_size", None) or 4 * hidden
        linear = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + 3 * hidden * intermediate
        attention = 2 * heads * head_dim
        rows, length = ordinary
        pairs, width = shared
        cost_ordinary = rows * length * linear + rows * length * length / 2 * attention
        cost_shared = pairs * width * linear + pairs * width * width * attention
        return cost_shared < cost_ordinary

    def _ordinary_kwargs(self, inputs: dict) -> dict:
        """Model inputs of the two-sequence layout; no padding mask where the rows are right-padded (see above)."""
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        mask = model_kwargs.get("attention_mask")
        if self._causal_needs_no_mask and mask is not None and not bool((mask[:, 1:] > mask[:, :-1]).any()):
            model_kwargs["attention_mask"] = None
        return model_kwargs

    def _packed_kwargs(self, model, layout: PackedPairs) -> dict:
        unwrapped = self.accelerator.unwrap_model(model)
        implementation = unwrapped.config.get_text_config()._attn_implementation
        dtype = unwrapped.get_input_embeddings().weight.dtype
        return {
            "input_ids": layout.input_ids,
            "attention_mask": layout.attention_mask(implementation, dtype),
            "position_ids": layout.position_ids,
            "use_cache": False,
        }

    def _full_logits(self, model, inputs: dict) -> torch.Tensor:
        """(2B, T - 1, vocabulary) next-token logits in the ordinary layout (the prompt shared where possible)."""
        layout = self._packed_layout(inputs)
        seq_len = inputs["input_ids"].size(1) - 1
        if layout is None:
            return model(**self._ordinary_kwargs(inputs)).logits[:, -seq_len - 1 : -1]
        return layout.unpack_rows(model(**self._packed_kwargs(model, layout)).logits)

    def _reduce(self, per_token_logps: torch.Tensor, shift_mask: torch.Tensor) -> torch.Tensor:
        """Sum over the completion; with LD-DPO (ld_alpha) the tokens past the shorter answer are down-weighted
        (dpo/logps.py, which `dpo eval` applies too)."""
        return reduce_logps(per_token_logps, shift_mask, self.ld_alpha)

    def _reference_logps(self, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's (chosen, rejected) log-probs of a batch: precomputed ones from the batch, else from the
        cache of pairs computed before, else a reference forward of the pairs not cached (then cached, where the cache
        applies: held-out pairs always, training pairs with training.precompute_ref_log_probs)."""
        if "ref_chosen_logps" in inputs:
            return inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        mode = "train" if self.model.training else "eval"
        caching = not self.args.sync_ref_model and (mode == "eval" or self.precompute_ref_logps)
        if not caching:
            return self._ref_forward(inputs)
        keys = _pair_keys(inputs)
        missing = [i for i, key in enumerate(keys) if key not in self._ref_cache]
        if missing:
            chosen, rejected = self._ref_forward(_select_pairs(inputs, missing))
            for i, c, r in zip(missing, chosen.tolist(), rejected.tolist(), strict=True):
                self._ref_cache[keys[i]] = (c, r)
        device, dtype = inputs["input_ids"].device, torch.float32
        values = torch.tensor([self._ref_cache[key] for key in keys], device=device, dtype=dtype)
        return values[:, 0], values[:, 1]

    def _ref_forward(self, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        # TRL's helper (overridden below): no grad, adapter disabled under PEFT, or the separate reference model
        return self.compute_ref_log_probs(self.ref_model if self.ref_model is not None else self.model, inputs)

    def compute_ref_log_probs(self, model, inputs):
        """TRL's reference forward (used by its precompute too), through our `_sequence_logps`: the prompt shared."""
        _, reference_context = self._reference()  # the adapter disabled under PEFT
        with (
            torch.no_grad(),
            disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
            reference_context(),
            self.accelerator.autocast(),
        ):
            _, logps, _ = self._sequence_logps(model, inputs, own_training_forward=False)
        return logps.chunk(2)

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        """TRL computes every pair's reference log-probs before training. Where the reference stays available (LoRA:
        the adapter disabled; or a reference copy) that saves nothing over computing each pair's the first time it is
        seen and keeping them (`_reference_logps`), which also skips pairs never reached; only full fine-tuning, whose
        reference copy the precompute lets go, computes them up front. A reference-free loss plan computes none (see
        `_no_reference_copy`)."""
        # Under FSDP TRL loads a reference copy for this pass only and frees it afterwards: precompute then, or the
        # training pairs would find no reference but the moving policy
        temporary_copy = self.is_fsdp_enabled and not self._ref_model_given
        if (
            not self.loss_plan.needs_reference
            or is_peft_model(self.model)
            or (self.ref_model is not None and not temporary_copy)
        ):
            return dataset
        self._decide_prompt_sharing()  # TRL's __init__ runs this pass before ours goes on: the shared layout for it too
        return super()._precompute_ref_logps(dataset, name, batch_size)

    def _policy_is_reference(self) -> bool:
        """True where the policy is known to equal the reference exactly: before the first optimizer step, with every
        LoRA B matrix zero (the adapter adds exactly 0), or a reference copy with the policy's weights. Evaluation
        only (no dropout, no NEFTune)."""
        if self.state.global_step > 0 or self.args.sync_ref_model or self.model.training:
            return False
        if self._policy_is_ref_at_start is None:
            unwrapped = self.accelerator.unwrap_model(self.model)
            if self.ref_model is None and is_peft_model(unwrapped):
                names = [n for n, p in unwrapped.named_parameters() if p.requires_grad]
                lora_b = [p for n, p in unwrapped.named_parameters() if "lora_B" in n or "lora_embedding_B" in n]
                only_lora = all("lora_A" in n or "lora_B" in n or "lora_embedding" in n for n in names)
                same = only_lora and bool(lora_b) and all(not p.any() for p in lora_b)
            elif self.ref_model is not None:
                reference = self.accelerator.unwrap_model(self.ref_model).state_dict()
                policy = unwrapped.state_dict()
                same = reference.keys() == policy.keys() and all(torch.equal(policy[k], reference[k]) for k in policy)
            else:
                same = False  # full fine-tuning with precomputed reference log-probs: they come with the batch
            self._policy_is_ref_at_start = same
        return self._policy_is_ref_at_start

    def _reference(self):
        """The reference: (model, a context to run it in): the adapter disabled under PEFT, else TRL's ref_model."""
        if self.ref_model is None and is_peft_model(self.model):
            unwrapped = self.accelerator.unwrap_model(self.model)
            adapter = "ref" if "ref" in unwrapped.peft_config else None
            return self.model, lambda: use_adapter(unwrapped, adapter_name=adapter)
        return self.ref_model, contextlib.nullcontext

    @torch.no_grad()
    def _heldout_kl_pass(self, model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor, object, torch.Tensor]:
        """Evaluation forward with full next-token distributions of the policy and of the reference.

        Returns what `_sequence_logps` returns (per-token and per-sequence completion log-probs, and the fields
        TRL's fused LM head computes: entropy, mean logit, top-1, log sum p^2), computed from full logits, plus
        the exact KL(pi || pi_ref) summed over each completion's tokens (teacher-forced on the held-out answers;
        in nats per sequence) and the reference's log-probs. Runs on the held-out KL subsample only (see
        `_eval_forward`), the prompt shared where possible.
        """
        shift_mask = inputs["completion_mask"][..., 1:].bool()
        labels = inputs["input_ids"][..., 1:]
        reference, reference_context = self._reference()
        vocabulary = self.accelerator.unwrap_model(model).get_output_embeddings().weight.size(0)
        rows_per_forward = max(1, min(_KL_ROWS, _KL_ELEMENTS // (labels.size(1) * vocabulary)))
        pairs = labels.size(0) // 2
        parts = []
        for chunk in torch.arange(pairs).split(max(1, rows_per_forward // 2)):
            sub = _select_pairs(inputs, chunk.tolist())
            rows = torch.cat([chunk, chunk + pairs]).to(labels.device)
            mask, targets = shift_mask[rows], labels[rows]
            policy = self._full_logits(model, sub).float()
            with reference_context():
                ref = self._full_logits(reference, sub).float()
            parts.append((rows, _token_fields_at(policy, ref, targets, mask)))
        order = torch.cat([rows for rows, _ in parts]).argsort()
        fields = {name: torch.cat([p[name] for _, p in parts])[order] for name in parts[0][1]}
        per_token_logps = fields.pop("log_probs")
        ref_logps = self._reduce(fields.pop("ref_log_probs"), shift_mask)
        kl = fields.pop("kl").sum(dim=1)
        outputs = SimpleNamespace(log_probs=per_token_logps, aux_loss=None, **fields)
        return per_token_logps, self._reduce(per_token_logps, shift_mask), outputs, (ref_logps, kl)

    def _eval_forward(self, model, inputs: dict):
        """One evaluation batch: (per-token log-probs, per-sequence log-probs, fused-head fields, reference
        (chosen, rejected) log-probs, or None for a reference-free plan); the KL of the subsample's pairs goes to
        `_kl_values` (see `_log_heldout_kl`).

        Cheap by design (docs/speed.md): the policy's fused forward for every pair; the reference's log-probs from
        the cache (computed once per held-out pair, and at step 0 taken from the policy, which is known to equal
        the reference); full-vocabulary KL on the fixed subsample `_kl_keys` only (policy and reference forwards
        with full logits, which replace the fused forward for those pairs)."""
        if not self.loss_plan.needs_reference:  # a reference-free plan: no reference forward, no KL (no reference)
            return (*self._sequence_logps(model, inputs), None)
        keys = _pair_keys(inputs)
        identical = self._policy_is_reference()
        kl_pairs = []
        if self.heldout_kl:
            kl_pairs = [i for i, key in enumerate(keys) if self._kl_keys is None or key in self._kl_keys]
        if identical or not kl_pairs:
            per_token_logps, logps, outputs = self._sequence_logps(model, inputs)
            if identical:  # the reference's log-probs are the policy's: cache them, no reference forward
                for key, c, r in zip(keys, *[x.tolist() for x in logps.chunk(2)], strict=True):
                    self._ref_cache.setdefault(key, (c, r))
            ref_chosen, ref_rejected = self._reference_logps(inputs)
            for i in kl_pairs:  # identical models: KL 0 exactly
                self._kl_values[keys[i]] = (0.0, 0.0)
            return per_token_logps, logps, outputs, (ref_chosen, ref_rejected)
        pairs = len(keys)
        rest = [i for i in range(pairs) if i not in set(kl_pairs)]
        parts = [(kl_pairs, self._heldout_kl_pass(model, _select_pairs(inputs, kl_pairs)))]
        ref_kl = parts[0][1][3][0]
        if not self.args.sync_ref_model:  # TR-DPO's reference moves: nothing reads a cached value of it
            for key, c, r in zip([keys[i] for i in kl_pairs], *[x.tolist() for x in ref_kl.chunk(2)], strict=True):
                self._ref_cache.setdefault(key, (c, r))
        if rest:
            parts.append((rest, self._sequence_logps(model, _select_pairs(inputs, rest))))
        order = torch.tensor([i for chosen_rows, _ in parts for i in chosen_rows]).argsort()
        rows = torch.cat([order, order + pairs]).to(inputs["input_ids"].device)

        def merged(values: list):
            if any(v is None for v in values):
                return None
            # each part is [chosen rows; rejected rows]: regroup into [all chosen; all rejected], then reorder
            halves = [v.chunk(2) for v in values]
            chosen = torch.cat([h[0] for h in halves])
            rejected = torch.cat([h[1] for h in halves])
            return torch.cat([chosen, rejected])[rows]

        per_token_logps = merged([p[0] for _, p in parts])
        logps = merged([p[1] for _, p in parts])
        fields = {f: merged([getattr(p[2], f, None) for _, p in parts]) for f in _FUSED_FIELDS if f != "log_probs"}
        outputs = SimpleNamespace(log_probs=per_token_logps, aux_loss=None, **fields)
        ref_chosen, ref_rejected = self._reference_logps(inputs)  # all cached by now
        kl_chosen, kl_rejected = parts[0][1][3][1].chunk(2)
        for i, c, r in zip(kl_pairs, kl_chosen.tolist(), kl_rejected.tolist(), strict=True):
            self._kl_values[keys[i]] = (c, r)
        return per_token_logps, logps, outputs, (ref_chosen, ref_rejected)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """TRL's evaluate; first fixes the held-out KL subsample: the first `heldout_kl_pairs` pairs of each held-out
        set (by content, so it is the same whatever the batch size and the number of processes)."""
        if self.heldout_kl and (eval_dataset is not None or self._kl_keys is None):
            self._kl_keys = self._kl_subsample(self.eval_dataset if eval_dataset is None else eval_dataset)
        self._evaluating = True  # log() adds eval_kl from this evaluation's subsample
        try:
            return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        finally:
            self._evaluating = False
            if eval_dataset is not None:
                self._kl_keys = None  # the run's own held-out set gets its subsample back next time

    def _kl_subsample(self, datasets) -> set[bytes] | None:
        """Keys of the first `heldout_kl_pairs` pairs of each held-out set; None (every pair) when that is all of them
        or a set is not tokenized yet (TRL tokenizes a dataset passed to evaluate)."""
        if self.heldout_kl_pairs is None:
            return None
        keys: set[bytes] = set()
        for dataset in datasets.values() if isinstance(datasets, dict) else [datasets]:
            if isinstance(dataset, str) or "prompt_ids" not in getattr(dataset, "column_names", []):
                return None
            count = min(self.heldout_kl_pairs, len(dataset))
            if count:
                keys.update(_pair_keys(self.data_collator([dataset[i] for i in range(count)])))
        return keys

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        if mode == "eval":
            per_token_logps, logps, outputs, reference = self._eval_forward(model, inputs)
        else:
            per_token_logps, logps, outputs = self._sequence_logps(model, inputs)
            # a reference-free plan runs no reference forward at all
            reference = self._reference_logps(inputs) if self.loss_plan.needs_reference else None
        chosen_logps, rejected_logps = logps.chunk(2)
        chosen_lengths, rejected_lengths = inputs["completion_mask"].sum(dim=1).chunk(2)
        chosen_scored_tokens, _ = inputs["completion_mask"][..., 1:].sum(dim=1).chunk(2)
        tensors = {
            "chosen_logps": chosen_logps,
            "rejected_logps": rejected_logps,
            "chosen_lengths": chosen_lengths.to(logps.dtype),
            "rejected_lengths": rejected_lengths.to(logps.dtype),
            "chosen_scored_tokens": chosen_scored_tokens.to(logps.dtype),
            "progress": torch.tensor(self.state.global_step / max(self.state.max_steps, 1), dtype=logps.dtype),
        }
        if SCORE_GAP in inputs:
            tensors["score_gaps"] = inputs[SCORE_GAP].to(logps.dtype)
        if reference is not None:
            tensors.update(_reference_tensors(*reference, tensors, self.loss_plan.link()))
        beta, keep = self.beta_now(), None
        if self.beta_controller.adaptive and mode == "train":
            gaps = tensors["chosen_logratios"] - tensors["rejected_logratios"]
            summed = partial(self.accelerator.reduce, reduction="sum")  # over the processes; one process: the tensor
            beta, keep = self.beta_controller.adapt(gaps, sum_over_processes=summed)
        weights = self._wpo_weights(per_token_logps, outputs, inputs) if self.use_weighting else None
        # LD-DPO down-weights the tokens past the shorter answer in DPO-style preference terms only: an NLL term (RPO's)
        # is the likelihood of the whole chosen answer, as in TRL, and ORPO, which holds one, reads whole answers
        nll_tensors = tensors
        if self.ld_alpha is not None:
            whole_chosen, whole_rejected = per_token_logps.sum(dim=1).chunk(2)
            nll_tensors = {**tensors, "chosen_logps": whole_chosen, "rejected_logps": whole_rejected}
        loss, pair_losses = 0.0, 0.0
        for name, weight in self.loss_plan.terms:
            given = nll_tensors if LOSSES[name].includes_nll else tensors
            per_pair = compute_loss(name, given, beta=beta, **self.loss_plan.hyperparameters)
            if weights is not None:
                per_pair = per_pair * weights
            loss = loss + weight * (per_pair.mean() if keep is None else per_pair[keep].mean())
            pair_losses = pair_losses + weight * per_pair.detach()
        # the spread of the per-pair losses gives eval_loss its standard error; a batch-level loss (Dr. DPO) has no
        # per-pair values, so no standard error (the noise rule then treats eval_loss as exact)
        if mode == "eval" and all(LOSSES[name].per_pair for name, _ in self.loss_plan.terms):
            self._pair_values("loss", pair_losses)
        if self.aux_loss_enabled and mode == "train":
            # the router's load-balancing loss trains the experts; the held-out loss is the preference loss alone, the
            # same number at every evaluation (the held-out KL's pass scores its pairs with no router loss to add).
            # eval_gap/loss compares like with like, so it reads the train preference loss too (kept here; see log()),
            # not transformers' logged loss, which includes the router term: the gap measures fit to the preferences
            self._preference_losses.append(self.accelerator.gather_for_metrics(loss.detach()).mean().item())
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
        self._log_batch_metrics(mode, inputs, outputs, tensors, beta)
        if return_outputs:
            with torch.no_grad():
                outputs = model(**{k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS})
            return loss, outputs
        return loss

    def _wpo_weights(self, per_token_logps, outputs, inputs) -> torch.Tensor:
        """WPO (arXiv 2406.11827, Eq. 2) as TRL computes it: exp of the length-normalised, probability-aligned
        log-prob of each answer under the policy, chosen times rejected, without gradient."""
        shift_mask = inputs["completion_mask"][..., 1:]
        seq_len = shift_mask.size(1)
        with torch.no_grad():
            aligned = (per_token_logps - outputs.log_sum_sq_probs[:, -seq_len:]) * shift_mask
            weights = torch.exp(aligned.sum(dim=1) / shift_mask.sum(dim=1).clamp_min(1))
        chosen_weights, rejected_weights = weights.chunk(2)
        return chosen_weights * rejected_weights

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """TRL's log, plus the train-minus-held-out gaps at each evaluation (train values averaged since the
        previous evaluation)."""
        # TRL's batch metrics wait in self._metrics until super().log; transformers' own (loss) are already in logs.
        if self._evaluating and self.heldout_kl:
            self._log_heldout_kl()
        if not self.model.training and self._eval_pairs:  # each per-pair metric's standard error over held-out pairs
            for name, values in self._eval_pairs.items():
                self._metrics["eval"][STANDARD_ERROR_PREFIX + name] = [standard_error(values)]
                # the mean over held-out pairs, not TRL's mean of batch means: a last, smaller batch would weigh
                # its pairs more, and the standard error above is that of the pair mean (loss: transformers' own)
                if name in self._metrics["eval"]:
                    self._metrics["eval"][name] = [_average(values)]
            self._eval_pairs.clear()
        if not self.model.training and self._eval_tokens:  # likewise a per-token metric: over every held-out token
            for name, (total, count) in self._eval_tokens.items():
                self._metrics["eval"][name] = [total / count if count > 0 else 0.0]
            self._eval_tokens.clear()
        if self.model.training:
            for name in GAPS:
                values = _logged(self._metrics["train"], logs, name)
                if name == "loss" and values and self._preference_losses:  # MoE: without the router loss (above)
                    values = [_average(self._preference_losses)]
                self._since_eval[name].extend(values)
            if "loss" in logs:
                self._preference_losses.clear()
        elif self._since_eval:
            held_out = self._metrics["eval"]
            for name, gap in GAPS.items():
                values = _logged(held_out, logs, HELD_OUT_PREFIX + name, batch_name=name)
                if self._since_eval[name] and values:
                    held_out[gap] = [gap_sign(name) * (_average(self._since_eval[name]) - _average(values))]
            self._since_eval.clear()
        if "train_loss" in logs and self._loss_sum_before:
            # transformers averages over this attempt's steps only; the run's mean covers every step
            total, step = self._loss_sum_before
            steps = self.state.global_step
            logs["train_loss"] = (total + logs["train_loss"] * (steps - step)) / max(steps, 1)
        if "train_runtime" in logs and self.runtime_before:
            # transformers times this attempt only; the key means every attempt's time (dpo/metrics.py), as
            # summary.json's runtime_s does (the rates, train_*_per_second, stay this attempt's: its steps, its time)
            logs["train_runtime"] = round(self.runtime_before + logs["train_runtime"], 4)
        super().log(logs, start_time)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """transformers' scheduler, except reduce-on-plateau: ours, which knows the metric's noise."""
        if self.lr_scheduler is None and self.args.lr_scheduler_type == "reduce_lr_on_plateau":
            self.lr_scheduler = NoiseAwarePlateau(
                optimizer or self.optimizer,
                metric=self.args.metric_for_best_model,
                noise_sigmas=self.noise_sigmas,
                start=self.plateau_start,
                **(self.args.lr_scheduler_kwargs or {}),
            )
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)

    def _evaluate(self, trial, ignore_keys_for_eval, skip_scheduler: bool = False):
        """transformers' evaluation; our plateau scheduler is stepped here, with the metric's standard error."""
        ours = isinstance(self.lr_scheduler, NoiseAwarePlateau)
        metrics = super()._evaluate(trial, ignore_keys_for_eval, skip_scheduler=skip_scheduler or ours)
        if ours and not skip_scheduler and not self._gap_missing(metrics):
            metric = self._watched_key()
            self.lr_scheduler.step(metrics[metric], error=logged_error(metrics, metric))
        return metrics

    def _gap_missing(self, metrics: dict) -> bool:
        """The watched metric is a train/held-out gap this evaluation lacks: it needs train values logged since the
        previous evaluation (none when logging_steps does not divide eval_steps, nor at a closing evaluation at
        max_steps off the eval_steps grid). Reduce-on-plateau and the best-metric bookkeeping skip such an
        evaluation, as early stopping and the autopilot do."""
        metric = self.args.metric_for_best_model
        if not metric or self._watched_key() in metrics:
            return False
        watched = lookup(self._watched_key())
        return watched is not None and watched.gap_of is not None

    def _determine_best_metric(self, metrics, trial) -> bool:
        """transformers' best-metric bookkeeping (read with reduce-on-plateau), which raises on a missing metric."""
        return False if self._gap_missing(metrics) else super()._determine_best_metric(metrics, trial)

    def _watched_key(self) -> str:
        """metric_for_best_model as evaluation logs it, eval_-prefixed (as transformers reads it)."""
        metric = self.args.metric_for_best_model
        return metric if metric.startswith(HELD_OUT_PREFIX) else HELD_OUT_PREFIX + metric

    def _log_heldout_kl(self) -> None:
        """eval_kl and its standard error (eval_se/kl, over pairs, as every per-pair metric's: dpo/noise.py) from this
        evaluation's subsample: every process's pairs, each pair once (the last batch of a multi-process evaluation
        repeats pairs to even out the processes)."""
        from accelerate.utils import gather_object

        merged = dict(gather_object(list(self._kl_values.items())))
        self._kl_values.clear()
        per_pair = [(chosen + rejected) / 2 for chosen, rejected in merged.values()]  # the pair is the unit
        if not per_pair:
            return
        self._metrics["eval"]["kl"] = [sum(per_pair) / len(per_pair)]  # = the mean over answers
        self._metrics["eval"][STANDARD_ERROR_PREFIX + "kl"] = [standard_error(per_pair)]

    def evaluate_untrained(self) -> dict[str, float]:
        """The step-0 evaluation before train(), leaving the model ready for train() to wrap in DDP.

        An evaluate() before train() prepares the bare model for evaluation only (no DDP wrapper) and marks it
        prepared; train() then skips the wrapper, so under torchrun / accelerate launch every process would update
        its own copy of the weights, unsynchronised. DeepSpeed and FSDP prepare fully in evaluate(): left alone.
        """
        metrics = self.evaluate()
        if self.args.metric_for_best_model:  # reduce-on-plateau's start, the scheduler being made in train()
            self.plateau_start = metrics.get(self._watched_key())
        model = self.model
        prepared = getattr(model, "_is_accelerate_prepared", False)
        if self.args.world_size > 1 and self.model_wrapped is model and prepared:
            del model._is_accelerate_prepared
            self.accelerator._models[:] = [m for m in self.accelerator._models if m is not model]
        return metrics

    # ---- the non-finite guard ----
    # Checked before the optimizer applies the step: a NaN/Inf loss or gradient norm raises NonFiniteError, so
    # the weights in memory and every checkpoint on disk stay finite. (transformers would instead log the average
    # of earlier losses in place of a NaN loss, and step on.)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        value = loss.detach().float().item()
        if not math.isfinite(value):
            raise NonFiniteError("loss", self.state.global_step + 1, value)
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        value = float(grad_norm) if grad_norm is not None else 0.0
        if not math.isfinite(value):
            raise NonFiniteError("grad_norm", self.state.global_step + 1, value)
        return grad_norm

    # ---- checkpoints that resume can trust (dpo/rundir/resume.py) ----

    def _save_checkpoint(self, model, trial):
        """transformers' checkpoint, then our state, then the completeness mark, and only then rotation: a kill at
        any point leaves the previous complete checkpoints in place."""
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            with warnings.catch_warnings():  # transformers 5 deprecation notices users cannot act on, per checkpoint
                warnings.simplefilter("ignore", FutureWarning)
                super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        # Every process writes its own part (its RNG state; its shard under FSDP/DeepSpeed) and transformers does
        # not wait for them: the mark must not say complete before the slowest process is done.
        self.accelerator.wait_for_everyone()
        if not self.args.should_save:
            return  # the main process (one per node with save_on_each_node) writes our files
        folder = Path(self._get_output_dir(trial=trial)) / f"{CHECKPOINT_PREFIX}{self.state.global_step}"
        atomic_write_json(folder / DPO_STATE, self.dpo_state())
        self.save_reference_cache(folder / REFERENCE_LOGPS)
        resume.mark_complete(folder, self.state.global_step)
        kept = [cb.best_checkpoint(folder.parent) for cb in self.callback_handler.callbacks
                if isinstance(cb, BestCheckpointCallback)]  # fmt: skip
        resume.rotate(folder.parent, limit, next((k for k in kept if k), None) or self.state.best_model_checkpoint)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """transformers' save of weights, tokenizer and training_args.bin, with the arguments and the model's
        recorded path free of secrets (dpo/training/secret_free.py): they are pickled / written into the run dir."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir  # the real path, not a redacted one
        with secret_free(self):
            super()._save(output_dir, state_dict)

    def dpo_state(self) -> dict:
        """What a resumed run needs besides transformers' checkpoint."""
        return {
            "beta_controller": dataclasses.asdict(self.beta_controller),
            "since_eval": dict(self._since_eval),
            "total_train_tokens": self._total_train_tokens,
            # transformers restarts its sum at each train(): a resumed attempt adds the attempts' before it
            "train_loss_sum": (self._loss_sum_before or (0.0, 0))[0] + self._total_loss_scalar + self._tr_loss.item(),
            "runtime_s": self.runtime_before + time.time() - self.clock_start,
            "resumed_from": self.resumed_from,
        }

    def load_dpo_state(self, state: dict, step: int) -> None:
        """Put back `dpo_state()` of the checkpoint at `step` before `train(resume_from_checkpoint=...)`."""
        if "beta_controller" in state:
            self.beta_controller = BetaController(**state["beta_controller"])
        self._since_eval = defaultdict(list, state.get("since_eval", {}))
        self._total_train_tokens = state.get("total_train_tokens", 0)
        self.runtime_before = state.get("runtime_s", 0.0)
        self.resumed_from = [*state.get("resumed_from", []), step]
        self._loss_sum_before = (state.get("train_loss_sum", 0.0), step)

    # The cached reference log-probs travel with the checkpoint, so that a resumed run uses the very numbers the
    # uninterrupted run does: a reference forward after the resume (another batch layout; and at step 0 a held-out
    # pair's were taken from the policy, known equal to the reference) differs in the last float digits.

    def _reference_cache_resumable(self) -> bool:
        """Only in a single process under a fixed reference: with several, each caches its own share of the pairs,
        and restoring one process's share would leave only the others running reference forwards, a collective
        under FSDP / ZeRO-3; TR-DPO's reference moves, so its values go stale."""
        return self.args.world_size == 1 and not self.args.sync_ref_model

    def save_reference_cache(self, path: Path) -> None:
        if self._reference_cache_resumable() and self._ref_cache:
            from safetensors.torch import save_file

            keys = torch.frombuffer(bytearray(b"".join(self._ref_cache)), dtype=torch.uint8).view(-1, PAIR_KEY_BYTES)
            values = torch.tensor(list(self._ref_cache.values()), dtype=torch.float64)  # the cached floats, exactly
            save_file({"keys": keys, "values": values}, str(path))

    def load_reference_cache(self, checkpoint: Path) -> None:
        """Put back `save_reference_cache`'s values from a checkpoint (none in one saved before this existed)."""
        path = Path(checkpoint) / REFERENCE_LOGPS
        if self._reference_cache_resumable() and path.is_file():
            from safetensors.torch import load_file

            saved = load_file(str(path))
            keys = [bytes(row) for row in saved["keys"].numpy()]
            self._ref_cache.update(zip(keys, map(tuple, saved["values"].tolist()), strict=True))

    def finish_from_checkpoint(self, checkpoint: str):
        """For a checkpoint saved when training had already ended (its last step, or early-stopped) by a process that
        died before writing final/ and summary.json: load its weights and state and log the end-of-training line,
        without another step. (transformers' train() would run one more step when resumed at max_steps mid-epoch,
        and would ignore an early stop.)"""
        from transformers import TrainerState
        from transformers.trainer_utils import TrainOutput

        self._load_from_checkpoint(checkpoint)
        self.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE))
        metrics = {
            "train_runtime": 0.0,  # this attempt trains nothing; log() adds the earlier attempts' (runtime_before)
            "total_flos": self.state.total_flos,
            "train_loss": 0.0,
        }
        self.log(metrics)  # log() turns train_loss into the mean over every step (see _loss_sum_before)
        return TrainOutput(self.state.global_step, metrics["train_loss"], metrics)

    # ---- metrics: TRL's names, then ours ----

    def _mean(self, mode: str, name: str, values: torch.Tensor) -> None:
        gathered = self.accelerator.gather_for_metrics(values.detach()).float()
        self._metrics[mode][name].append(gathered.mean().item())
        if mode == "eval" and name in PER_PAIR:
            self._eval_pairs[name].extend(gathered.tolist())

    def _pair_values(self, name: str, values: torch.Tensor) -> None:
        """Keep one evaluation batch's per-pair values of `name`, for its standard error (dpo/noise.py)."""
        self._eval_pairs[name].extend(self.accelerator.gather_for_metrics(values.detach()).float().tolist())

    def _token_mean(self, mode: str, name: str, values: torch.Tensor, mask: torch.Tensor) -> None:
        total = self.accelerator.gather_for_metrics((values * mask).sum().detach()).sum()
        count = self.accelerator.gather_for_metrics(mask.sum()).sum()
        self._metrics[mode][name].append((total / count).item() if count > 0 else 0.0)
        if mode == "eval":
            self._eval_tokens[name][0] += total.item()
            self._eval_tokens[name][1] += count.item()

    def _log_batch_metrics(self, mode, inputs, outputs, t, beta) -> None:
        seq_len = inputs["completion_mask"].size(1) - 1
        shift_mask = inputs["completion_mask"][..., 1:].float()
        chosen_mask, rejected_mask = shift_mask.chunk(2)
        self._token_mean(mode, "entropy", outputs.entropy[:, -seq_len:].detach(), shift_mask)
        if mode == "train":
            tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += tokens // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        chosen_logits, rejected_logits = outputs.mean_logits[:, -seq_len:].detach().chunk(2)
        self._token_mean(mode, "logits/chosen", chosen_logits, chosen_mask)
        self._token_mean(mode, "logits/rejected", rejected_logits, rejected_mask)
        chosen_top1, _ = outputs.is_top1[:, -seq_len:].chunk(2)
        self._token_mean(mode, "mean_token_accuracy", chosen_top1.float(), chosen_mask)

        reference_free = "chosen_logratios" not in t
        chosen_rewards, rejected_rewards = implicit_rewards(t, beta)
        self._mean(mode, "rewards/chosen", chosen_rewards)
        self._mean(mode, "rewards/rejected", rejected_rewards)
        self._mean(mode, "rewards/accuracies", (chosen_rewards > rejected_rewards).float())
        self._mean(mode, "rewards/margins", chosen_rewards - rejected_rewards)
        self._mean(mode, "logps/chosen", t["chosen_logps"])
        self._mean(mode, "logps/rejected", t["rejected_logps"])
        # Ours. logps/accuracies: share of pairs where the policy itself gives the chosen answer the higher
        # log-likelihood (unlike rewards/accuracies, this is meaningful at step 0 too).
        self._mean(mode, "logps/accuracies", (t["chosen_logps"] > t["rejected_logps"]).float())
        # logratios/chosen < 0 means the chosen answers lost likelihood vs the reference (likelihood displacement).
        if not reference_free:
            self._mean(mode, "logratios/chosen", t["chosen_logratios"])
            self._mean(mode, "logratios/rejected", t["rejected_logratios"])
        self._metrics[mode]["beta"] = [beta]


def implicit_rewards(t: dict, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen and rejected answers' implicit rewards, the quantity the loss separates: beta * log-ratio with a
    reference; without one (SimPO, ORPO) beta * the length-normalised log-prob both losses train on, as TRL's CPO
    (simpo) and ORPO trainers log them (their `average_log_prob`). A sum of log-probs would favour the shorter
    answer and make `rewards/accuracies` disagree with the loss."""
    if "chosen_logratios" in t:
        return beta * t["chosen_logratios"].detach(), beta * t["rejected_logratios"].detach()
    return (
        beta * per_token(t["chosen_logps"], t["chosen_lengths"]).detach(),
        beta * per_token(t["rejected_logps"], t["rejected_lengths"]).detach(),
    )


def _reference_tensors(ref_chosen_logps, ref_rejected_logps, tensors: dict, link) -> dict:
    """The loss inputs that need the reference: its log-probs, the log-ratios and their f-divergence link."""
    chosen_logratios = tensors["chosen_logps"] - ref_chosen_logps
    rejected_logratios = tensors["rejected_logps"] - ref_rejected_logps
    return {
        "ref_chosen_logps": ref_chosen_logps,
        "ref_rejected_logps": ref_rejected_logps,
        "chosen_logratios": chosen_logratios,
        "rejected_logratios": rejected_logratios,
        "chosen_scores": link(chosen_logratios),
        "rejected_scores": link(rejected_logratios),
    }


@contextlib.contextmanager
def _no_reference_copy(args, keep: bool):
    """Around TRL's __init__: for a reference-free loss plan, keep TRL from loading a second copy of the model as the
    reference (it does so for full fine-tuning unless reference log-probs are to be precomputed). TRL is told they
    will be, and our `_precompute_ref_logps` then computes none. The setting is put back afterwards; the recipe
    check refuses `training.precompute_ref_log_probs` for such plans. (Costs TRL one hash of the weights at init.)"""
    if keep or args is None or args.precompute_ref_log_probs:
        yield
        return
    args.precompute_ref_log_probs = True
    try:
        yield
    finally:
        args.precompute_ref_log_probs = False


class _ScoreGapCollator:
    """TRL's collator, plus each pair's score gap (the `score_gap` column) as a float tensor, for ODPO's offset."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.collate(examples)
        batch[SCORE_GAP] = torch.tensor([example[SCORE_GAP] for example in examples], dtype=torch.float32)
        return batch


def _active_dropout(model: torch.nn.Module) -> str | None:
    """What dropout the model draws in training mode, in words, or None: `nn.Dropout` layers with p > 0 (the model's,
    LoRA's `lora_dropout`; TRL's `disable_dropout` sets their p to 0) and attention dropout, which attention modules
    apply as a float (`attention_dropout`) and `disable_dropout` leaves alone."""
    layers = sum(1 for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0)
    rates = [getattr(m, "attention_dropout", None) for m in model.modules()]
    attention = max((rate for rate in rates if isinstance(rate, float)), default=0.0)
    parts = []
    if layers:
        parts.append(f"{layers} dropout layer{'s' if layers > 1 else ''} with p > 0")
    if attention > 0:
        parts.append(f"attention dropout {attention:g}")
    return "dropout: " + ", ".join(parts) if parts else None


def _token_fields(policy: torch.Tensor, ref: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> dict:
    """Per-token fields from full logits of shape (rows, tokens, vocabulary), zero outside the completion: the
    fields TRL's fused LM head returns (same definitions), the reference's log-probs, and KL(pi || pi_ref)."""
    log_p, log_q = policy.log_softmax(-1), ref.log_softmax(-1)
    p = log_p.exp()
    index = targets.unsqueeze(-1)
    fields = {
        "log_probs": log_p.gather(-1, index).squeeze(-1),
        "ref_log_probs": log_q.gather(-1, index).squeeze(-1),
        "kl": (p * (log_p - log_q)).sum(-1),
        "entropy": -(p * log_p).sum(-1),
        "log_sum_sq_probs": torch.logsumexp(2 * log_p, dim=-1),
        "mean_logits": policy.mean(-1),
        "is_top1": policy.argmax(-1) == targets,
    }
    return {name: value.masked_fill(~mask, 0) for name, value in fields.items()}


def _token_fields_at(policy: torch.Tensor, ref: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> dict:
    """`_token_fields`, with the vocabulary-sized work done at the answers' positions only (a chat batch is mostly
    prompt and padding); zero elsewhere, as there."""
    scored = torch.ones((1, int(mask.sum())), dtype=torch.bool, device=mask.device)
    picked = _token_fields(policy[mask].unsqueeze(0), ref[mask].unsqueeze(0), targets[mask].unsqueeze(0), scored)
    fields = {}
    for name, values in picked.items():
        fields[name] = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
        fields[name][mask] = values[0]
    return fields


def _logged(batch_metrics: dict, logs: dict, name: str, batch_name: str | None = None) -> list[float]:
    """The values of a metric about to be logged: TRL's per-batch values (under `batch_name`, the name without the
    eval_ prefix), or transformers' single value in `logs`."""
    values = batch_metrics.get(batch_name or name)
    if values:
        return list(values)
    return [logs[name]] if name in logs else []


def _average(values: list[float]) -> float:
    return sum(values) / len(values)


@contextlib.contextmanager
def _score_completions_only():
    """TRL's fused LM head projects only the scored (completion) positions through the vocabulary on Triton devices,
    and every position elsewhere, to keep tile shapes fixed for compilers such as Neuron's. On CPU nothing compiles
    them, and scoring only the completion positions gives the same values for less work (the prompt and padding
    positions are a large share of a chat batch). TRL 1.16's switch for that is `trl.trainer.utils._use_triton`."""
    import trl.trainer.utils as trl_utils

    original = trl_utils._use_triton
    trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
    try:
        yield
    finally:
        trl_utils._use_triton = original


PAIR_KEY_BYTES = 16  # a pair's key in the reference cache: a 128-bit hash of its tokens


def _pair_keys(inputs: dict) -> list[bytes]:
    """A key per pair of a collated batch: its chosen and rejected tokens and completion masks, padding excluded.
    Identifies a pair by content (the same in every batch, on every process) for the reference cache."""
    pairs = inputs["input_ids"].size(0) // 2
    ids, attention, completion = (inputs[k].cpu() for k in ("input_ids", "attention_mask", "completion_mask"))
    lengths = attention.sum(dim=1).tolist()
    keys = []
    for i in range(pairs):
        parts = []
        for row in (i, pairs + i):
            n = lengths[row]
            parts.append(torch.cat([ids[row, :n], completion[row, :n], torch.tensor([-1])]).numpy().tobytes())
        keys.append(hashlib.blake2b(b"".join(parts), digest_size=PAIR_KEY_BYTES).digest())
    return keys


def _select_pairs(inputs: dict, pairs: list[int]) -> dict:
    """The sub-batch of the given pairs: their chosen and rejected rows (2B-row tensors), their entries of per-pair
    tensors (B rows: precomputed reference log-probs)."""
    total = inputs["input_ids"].size(0) // 2
    index = torch.tensor(pairs, dtype=torch.long, device=inputs["input_ids"].device)
    rows = torch.cat([index, index + total])
    return {k: v[rows] if v.size(0) == 2 * total else v[index] for k, v in inputs.items()}
