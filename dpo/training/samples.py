"""samples.json: at the end of training, a few held-out prompts answered by the trained model and by its reference.

The report (dpo/analysis/report.py) reads files only and cannot generate; the trainer still holds both models here
(the reference is the same model with its adapter disabled, or TRL's reference model: under TR-DPO the synced one),
so this is where the answers are made, for any data set (`dpo eval` generates more, scored, for data with a gold
reward). The trained model is the final weights: the best checkpoint's where it was restored, and `step` says which.
Greedy decoding, the prompts formatted as in training (dpo/serve/generate.py); `logging.samples: 0` turns it off.
"""

from __future__ import annotations

import json
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

from dpo.rundir.atomic import atomic_write_json
from dpo.rundir.files import SAMPLES
from dpo.serve.generate import GenerateOptions, side_by_side

MAX_NEW_TOKENS = 64


def held_out_prompts(rows: list[dict], count: int) -> list:
    """The first `count` distinct prompts of the held-out pairs, in data order."""
    distinct = {json.dumps(r["prompt"], sort_keys=True): r["prompt"] for r in rows}
    return list(distinct.values())[:count]


# where write_samples takes the reference model from -> how samples.json's `reference` names it
REFERENCE_WORDS = {
    "adapter_disabled": "the base model (the trained model with its adapter disabled)",
    "synced_copy": "TR-DPO's synced reference as the last step left it (regularizers.sync_ref moved it toward the "
    "policy), not the base model",
    "reference_copy": "the base model (TRL's reference copy)",
    "reloaded": "the base model (loaded again)",
}


def reference_source(model, trainer) -> str:
    """Where the reference model that answers comes from (a REFERENCE_WORDS key): write_samples uses it and
    samples.json names it by it."""
    if hasattr(model, "disable_adapter"):  # LoRA: the reference is the base under the adapter
        return "adapter_disabled"
    if getattr(trainer, "ref_model", None) is not None:
        return "synced_copy" if getattr(trainer.args, "sync_ref_model", False) else "reference_copy"
    return "reloaded"  # full fine-tuning with precomputed reference log-probs


def reference_words(model, trainer) -> str:
    """Which model answers as the reference (samples.json's `reference`)."""
    return REFERENCE_WORDS[reference_source(model, trainer)]


def write_samples(trainer, checked, run_dir: Path, step: int) -> None:
    """Answer the first `logging.samples` held-out prompts with the trained and the reference model. `step`: the
    step whose weights the trained model holds (the restored best checkpoint's, else the last)."""
    count = checked.recipe.logging.samples
    prompts = held_out_prompts(checked.data.eval, count)
    if not prompts or trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:
        return  # sharded weights: generating on one process would wait forever for the others
    model = trainer.accelerator.unwrap_model(trainer.model)
    was_training = model.training
    model.eval()

    source = reference_source(model, trainer)

    @contextmanager
    def use(which: str):
        if which == "policy":
            yield model
        elif source == "adapter_disabled":
            with model.disable_adapter():
                yield model
        elif source in ("synced_copy", "reference_copy"):
            yield trainer.accelerator.unwrap_model(trainer.ref_model)
        else:  # reloaded: load the base again, once
            from dpo.models import load_model

            recipe = checked.recipe.model
            yield load_model(recipe.name_or_path, recipe.dtype, recipe.trust_remote_code).to(model.device).eval()

    options = GenerateOptions(max_new_tokens=MAX_NEW_TOKENS, seed=checked.recipe.seed)
    with warnings.catch_warnings():  # transformers 5 deprecation notices from inside generate(), not actionable here
        warnings.simplefilter("ignore", FutureWarning)
        rows = side_by_side(use, trainer.processing_class, prompts, options)
    model.train(was_training)
    reference = REFERENCE_WORDS[source]
    atomic_write_json(
        run_dir / SAMPLES,
        {
            "what": f"the first {len(prompts)} distinct held-out prompts, answered after training by the trained "
            f"model (its weights of step {step}) and by the reference, {reference}",
            "decoding": f"greedy, at most {MAX_NEW_TOKENS} new tokens",
            "step": step,
            "reference": reference,
            "samples": rows,
        },
    )


def write_samples_or_warn(trainer, checked, run_dir: Path, step: int) -> None:
    """samples.json is a view of weights already saved: if generating fails, say so on one line and keep the run."""
    try:
        write_samples(trainer, checked, run_dir, step)
    except Exception as exc:  # noqa: BLE001 - the finished run in final/ must not be lost over a preview
        print(f"warning: samples.json not written ({type(exc).__name__}: {exc})", file=sys.stderr)
