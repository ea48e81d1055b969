"""Keep secrets out of the files that transformers, PEFT and wandb write into a run directory.

Our own files pass through `dpo.rundir.secrets.redact`; these are the ones libraries write from objects we hand
them. A secret (the value of an environment variable named like one, see dpo/rundir/secrets.py) reaches them when the
user's strings hold it: a model path, the run name, an output directory. Three places copy those strings:

- transformers pickles the whole TrainingArguments into `training_args.bin` in every checkpoint and in final/
  (`Trainer._save`): our Trainer saves with `secret_free(trainer)`, which hands it a scrubbed copy of the arguments;
- PEFT writes the base model's path into `adapter_config.json` and the model card (README.md), and transformers'
  WandbCallback copies the model config (its `_name_or_path`) and the arguments into the wandb config:
  `model_names_redacted` redacts the recorded paths while they save / log;
- wandb itself records the run's name, project and group and the command line: dpo/training/integrations.py opens
  the run with those redacted, and `secret_free_callbacks` replaces transformers' wandb and TensorBoard callbacks
  (TensorBoard's event file holds the arguments and the model config as text).

The real values stay in memory (TRL loads a full fine-tune's reference model from the model path): only what is
written is redacted.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager

from dpo.rundir.secrets import redact, scrubbed_arguments, secret_values


@contextmanager
def model_names_redacted(model):
    """For the duration of the block: every config `_name_or_path`, model `name_or_path` and PEFT
    `base_model_name_or_path` inside `model` with secrets redacted; the real values are put back afterwards."""
    secrets = secret_values()
    swapped = []
    if secrets and model is not None:
        modules = list(model.modules())
        configs = [getattr(module, "config", None) for module in modules]
        holders = [(config, "_name_or_path") for config in configs if hasattr(config, "to_dict")]
        holders += [(module, "name_or_path") for module in modules if "name_or_path" in vars(module)]
        peft_configs = getattr(model, "peft_config", None)
        if isinstance(peft_configs, dict):
            holders += [(config, "base_model_name_or_path") for config in peft_configs.values()]
        for holder, attribute in holders:
            value = getattr(holder, attribute, None)
            if isinstance(value, str) and redact(value, secrets=secrets) != value:
                swapped.append((holder, attribute, value))
                setattr(holder, attribute, redact(value, secrets=secrets))
    try:
        yield
    finally:
        for holder, attribute, value in reversed(swapped):
            setattr(holder, attribute, value)


@contextmanager
def secret_free(trainer):
    """While a Trainer saves: its `args` a scrubbed copy (pickled into training_args.bin) and the model's recorded
    paths redacted (adapter_config.json, README.md)."""
    args = trainer.args
    trainer.args = scrubbed_arguments(args)
    try:
        with model_names_redacted(trainer.model):
            yield
    finally:
        trainer.args = args


@contextmanager
def argv_redacted():
    """sys.argv with secrets redacted while wandb.init records the command line (its run metadata)."""
    argv = sys.argv
    sys.argv = [redact(arg) for arg in argv]
    try:
        yield
    finally:
        sys.argv = argv


def secret_free_callbacks() -> dict[type, type]:
    """transformers' logging callbacks that copy the arguments and the model config into a file, and their scrubbing
    versions: WandbCallback (wandb.config), TensorBoardCallback (the "args" and "model_config" texts of its event
    file)."""
    from transformers.integrations import TensorBoardCallback, WandbCallback

    class SecretFreeWandbCallback(WandbCallback):
        def setup(self, args, state, model, **kwargs):
            with model_names_redacted(model):
                super().setup(scrubbed_arguments(args), state, model, **kwargs)

    class SecretFreeTensorBoardCallback(TensorBoardCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            with model_names_redacted(kwargs.get("model")):
                super().on_train_begin(scrubbed_arguments(args), state, control, **kwargs)

    return {WandbCallback: SecretFreeWandbCallback, TensorBoardCallback: SecretFreeTensorBoardCallback}


def use_secret_free_loggers(trainer) -> None:
    """Swap the logging callbacks that transformers added for `report_to` for their scrubbing versions."""
    for original, scrubbing in secret_free_callbacks().items():
        if trainer.pop_callback(original) is not None:
            trainer.add_callback(scrubbing())
