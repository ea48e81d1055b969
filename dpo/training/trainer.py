"""Our DPOTrainer: TRL's data collation, reference handling and metric names; our loss computation.

TRL 1.16's `DPOTrainer._compute_loss` is one long method with an if/elif chain over loss names: it
raises on a loss it does not know and silently ignores `label_smoothing` for `sigmoid`. We override
just that method: compute per-sequence policy and reference log-probs the way TRL does (fused LM
head, adapter-disabled reference under PEFT, precomputed reference log-probs when asked), then hand
them to the pure functions of `dpo/training/losses.py`, and log the same metric names TRL logs plus ours.

Written against TRL 1.16 (pinned in pyproject.toml).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch
from accelerate.utils import is_peft_model
from trl import DPOTrainer
from trl.trainer.utils import use_adapter

from dpo.data.rows import SCORE_GAP
from dpo.errors import NonFiniteError
from dpo.metrics import GAPS, HELD_OUT_PREFIX, PER_PAIR, STANDARD_ERROR_PREFIX, gap_sign
from dpo.noise import logged_error, standard_error
from dpo.rundir import resume
from dpo.rundir.atomic import atomic_write_json
from dpo.rundir.files import CHECKPOINT_PREFIX, DPO_STATE, TRAINER_STATE
from dpo.training.beta import BetaController
from dpo.training.losses import LossPlan, compute_loss
from dpo.training.plateau import NoiseAwarePlateau
from dpo.training.secret_free import secret_free

# SCORE_GAP: the column of pairs expanded from scored multi-response rows (dpo/data/rows.py); batches carry it for
# losses that take `score_gaps` (ODPO's offset)
_NON_MODEL_KEYS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps", SCORE_GAP}
# The held-out KL pass materialises (rows, tokens, vocabulary) float32 tensors, a few at a time: at most 8 rows
# per forward, fewer when sequences are long, so that one such tensor stays under ~256 MB (2**26 elements).
_KL_ROWS, _KL_ELEMENTS = 8, 2**26


class Trainer(DPOTrainer):
    """DPOTrainer whose loss comes from a `LossPlan` of functions in `dpo.training.losses.LOSSES`."""

    def __init__(self, *args, loss_plan: LossPlan, heldout_kl: bool = False, noise_sigmas: float = 0.0, **kwargs):
        self.loss_plan = loss_plan
        self.noise_sigmas = noise_sigmas  # reduce-on-plateau's noise rule (early_stopping.noise_sigmas)
        self.heldout_kl = heldout_kl
        self.beta_controller = BetaController(beta0=loss_plan.beta, **loss_plan.beta_schedule)
        self._neftune_on = False
        self._since_eval: dict[str, list[float]] = defaultdict(list)  # train values since the last evaluation
        self._eval_pairs: dict[str, list[float]] = defaultdict(list)  # this evaluation's per-pair values (PER_PAIR)
        self.clock_start, self.runtime_before = time.time(), 0.0  # run time of earlier attempts (resume)
        self.resumed_from: list[int] = []  # steps this run was resumed from
        self._loss_sum_before: tuple[float, int] | None = None  # (sum of train losses, steps) up to the resumed step
        full_fine_tuning = kwargs.get("peft_config") is None  # with LoRA TRL keeps no copy: the adapter is disabled
        with _no_reference_copy(kwargs.get("args"), loss_plan.needs_reference or not full_fine_tuning):
            super().__init__(*args, **kwargs)
        if not loss_plan.needs_reference:
            self.precompute_ref_logps = False  # nothing was precomputed (see _precompute_ref_logps)
        if loss_plan.needs_score_gaps:
            self.data_collator = _ScoreGapCollator(self.data_collator)
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
        scale = self.loss_plan.neftune_alpha / (output.size(1) * output.size(2)) ** 0.5
        return output + torch.zeros_like(output).uniform_(-scale, scale)

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        """TRL's reference log-prob precompute; none for a reference-free loss plan (see `_no_reference_copy`)."""
        if not self.loss_plan.needs_reference:
            return dataset
        return super()._precompute_ref_logps(dataset, name, batch_size)

    def compute_ref_log_probs(self, model, inputs):
        """TRL's reference forward, without the columns it does not know (the score gap)."""
        return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k != SCORE_GAP})

    def _set_signature_columns_if_needed(self):
        """TRL's columns, plus the score gap when a loss takes it (transformers drops every other column)."""
        super()._set_signature_columns_if_needed()
        if self.loss_plan.needs_score_gaps and SCORE_GAP not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, SCORE_GAP]

    def _beta_for_step(self) -> float:
        return self.beta_controller.scheduled(self.state.global_step, self.state.max_steps)

    def _sequence_logps(self, model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor, object]:
        """Per-sequence summed completion log-probs under `model` for the [chosen; rejected] batch."""
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True
        completion_mask = inputs["completion_mask"]
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        self._neftune_on = self.loss_plan.neftune_alpha is not None and model.training
        try:
            outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        finally:
            self._neftune_on = False
        shift_mask = completion_mask[..., 1:]
        # Prompt-learning PEFT prepends virtual tokens to the outputs; keep the positions of the real tokens.
        per_token_logps = outputs.log_probs[:, -shift_mask.size(1) :]
        return per_token_logps, self._reduce(per_token_logps, shift_mask), outputs

    def _reduce(self, per_token_logps: torch.Tensor, shift_mask: torch.Tensor) -> torch.Tensor:
        """Sum over the completion; with LD-DPO (ld_alpha) the tokens past the shorter answer are down-weighted."""
        if self.ld_alpha is None:
            return per_token_logps.sum(dim=1)
        positions = shift_mask.cumsum(dim=1)
        chosen_len, rejected_len = shift_mask.sum(dim=1).chunk(2)
        shared = torch.minimum(chosen_len, rejected_len).repeat(2).unsqueeze(1)
        shared_part = (per_token_logps * ((positions > 0) & (positions <= shared))).sum(dim=1)
        tail_part = (per_token_logps * (positions > shared)).sum(dim=1)
        return shared_part + self.ld_alpha * tail_part

    def _reference_logps(self, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if "ref_chosen_logps" in inputs:
            return inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        # TRL's helper: no grad, adapter disabled under PEFT (or the separate reference model).
        return self.compute_ref_log_probs(self.ref_model if self.ref_model is not None else self.model, inputs)

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
        in nats per sequence). Costs one reference forward per held-out batch when reference log-probs are
        precomputed, none otherwise (it replaces the reference forward that computes them).
        """
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NON_MODEL_KEYS}
        model_kwargs["use_cache"] = False
        shift_mask = inputs["completion_mask"][..., 1:].bool()
        labels = inputs["input_ids"][..., 1:]
        reference, reference_context = self._reference()
        if self.aux_loss_enabled:  # MoE: the router's load-balancing loss, as the fused forward computes it
            model_kwargs["output_router_logits"] = True
        vocabulary = self.accelerator.unwrap_model(model).get_output_embeddings().weight.size(0)
        rows_per_forward = max(1, min(_KL_ROWS, _KL_ELEMENTS // (labels.size(1) * vocabulary)))
        parts, aux_losses = [], []
        for rows in torch.arange(labels.size(0), device=labels.device).split(rows_per_forward):
            chunk = {k: v[rows] if torch.is_tensor(v) else v for k, v in model_kwargs.items()}
            mask, targets = shift_mask[rows], labels[rows]
            policy_out = model(**chunk)
            policy = policy_out.logits[:, -mask.size(1) - 1 : -1].float()
            if self.aux_loss_enabled:
                aux_losses.append(policy_out.aux_loss * len(rows))
            ref_kwargs = {k: v for k, v in chunk.items() if k != "output_router_logits"}
            with reference_context():
                ref = reference(**ref_kwargs).logits[:, -mask.size(1) - 1 : -1].float()
            parts.append(_token_fields(policy, ref, targets, mask))
        fields = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
        per_token_logps = fields.pop("log_probs")
        ref_logps = self._reduce(fields.pop("ref_log_probs"), shift_mask)
        kl = fields.pop("kl").sum(dim=1)
        # row-weighted mean of the chunks' router losses: close to, not exactly, what one forward of the batch gives
        aux_loss = sum(aux_losses) / labels.size(0) if aux_losses else None
        outputs = SimpleNamespace(log_probs=per_token_logps, aux_loss=aux_loss, **fields)
        return per_token_logps, self._reduce(per_token_logps, shift_mask), outputs, (ref_logps, kl)

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        kl = None
        if mode == "eval" and self.heldout_kl:
            per_token_logps, logps, outputs, (ref_logps, kl) = self._heldout_kl_pass(model, inputs)
            # The reference log-probs of this pass replace precomputed ones (equal up to float rounding): computed
            # the same way as the policy's, they tie exactly where policy = reference (step 0 under LoRA).
            ref_chosen, ref_rejected = ref_logps.chunk(2)
            inputs = {**inputs, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
        else:
            per_token_logps, logps, outputs = self._sequence_logps(model, inputs)
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
        if self.loss_plan.needs_reference:  # a reference-free plan runs no reference forward at all
            tensors.update(_reference_tensors(*self._reference_logps(inputs), tensors, self.loss_plan.link()))
        beta, keep = self._beta_for_step(), None
        if self.beta_controller.adaptive and mode == "train":
            beta, keep = self.beta_controller.adapt(tensors["chosen_logratios"] - tensors["rejected_logratios"])
        weights = self._wpo_weights(per_token_logps, outputs, inputs) if self.use_weighting else None
        loss, pair_losses = 0.0, 0.0
        for name, weight in self.loss_plan.terms:
            per_pair = compute_loss(name, tensors, beta=beta, **self.loss_plan.hyperparameters)
            if weights is not None:
                per_pair = per_pair * weights
            loss = loss + weight * (per_pair.mean() if keep is None else per_pair[keep].mean())
            pair_losses = pair_losses + weight * per_pair.detach()
        if mode == "eval":  # the spread of the per-pair losses gives eval_loss its standard error
            self._pair_values("loss", pair_losses)
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
        self._log_batch_metrics(mode, inputs, outputs, tensors, beta)
        if kl is not None:
            self._mean(mode, "kl", kl)
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
        if not self.model.training and self._eval_pairs:  # each per-pair metric's standard error over held-out pairs
            for name, values in self._eval_pairs.items():
                self._metrics["eval"][STANDARD_ERROR_PREFIX + name] = [standard_error(values)]
            self._eval_pairs.clear()
        if self.model.training:
            for name in GAPS:
                self._since_eval[name].extend(_logged(self._metrics["train"], logs, name))
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
        super().log(logs, start_time)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """transformers' scheduler, except reduce-on-plateau: ours, which knows the metric's noise."""
        if self.lr_scheduler is None and self.args.lr_scheduler_type == "reduce_lr_on_plateau":
            self.lr_scheduler = NoiseAwarePlateau(
                optimizer or self.optimizer,
                metric=self.args.metric_for_best_model,
                noise_sigmas=self.noise_sigmas,
                **(self.args.lr_scheduler_kwargs or {}),
            )
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)

    def _evaluate(self, trial, ignore_keys_for_eval, skip_scheduler: bool = False):
        """transformers' evaluation; our plateau scheduler is stepped here, with the metric's standard error."""
        ours = isinstance(self.lr_scheduler, NoiseAwarePlateau)
        metrics = super()._evaluate(trial, ignore_keys_for_eval, skip_scheduler=skip_scheduler or ours)
        if ours and not skip_scheduler:
            metric = self.args.metric_for_best_model
            metric = metric if metric.startswith(HELD_OUT_PREFIX) else HELD_OUT_PREFIX + metric  # as transformers does
            self.lr_scheduler.step(metrics[metric], error=logged_error(metrics, metric))
        return metrics

    def evaluate_untrained(self) -> dict[str, float]:
        """The step-0 evaluation before train(), leaving the model ready for train() to wrap in DDP.

        An evaluate() before train() prepares the bare model for evaluation only (no DDP wrapper) and marks it
        prepared; train() then skips the wrapper, so under torchrun / accelerate launch every process would update
        its own copy of the weights, unsynchronised. DeepSpeed and FSDP prepare fully in evaluate(): left alone.
        """
        metrics = self.evaluate()
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
        resume.mark_complete(folder, self.state.global_step)
        resume.rotate(folder.parent, limit, self.state.best_model_checkpoint)

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
            "train_loss_sum": self._total_loss_scalar + self._tr_loss.item(),
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
            "train_runtime": round(self.runtime_before, 4),
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

        # Without a reference (SimPO, ORPO) the rewards are beta * log pi(y|x), as TRL's CPO and ORPO trainers log them.
        reference_free = "chosen_logratios" not in t
        chosen_rewards = beta * t["chosen_logps" if reference_free else "chosen_logratios"].detach()
        rejected_rewards = beta * t["rejected_logps" if reference_free else "rejected_logratios"].detach()
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


def _logged(batch_metrics: dict, logs: dict, name: str, batch_name: str | None = None) -> list[float]:
    """The values of a metric about to be logged: TRL's per-batch values (under `batch_name`, the name without the
    eval_ prefix), or transformers' single value in `logs`."""
    values = batch_metrics.get(batch_name or name)
    if values:
        return list(values)
    return [logs[name]] if name in logs else []


def _average(values: list[float]) -> float:
    return sum(values) / len(values)
