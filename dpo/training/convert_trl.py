"""`dpo convert-trl`: a `trl dpo --config FILE.yaml` config turned into a recipe, and the keys that have no home in one.

A `trl dpo` config holds the fields of four TRL dataclasses side by side: ScriptArguments (dataset_name, ...),
ModelConfig (model_name_or_path, use_peft, lora_r, ...), DPOConfig (beta, loss_type, learning_rate, ... with all
of transformers' TrainingArguments) and DatasetMixtureConfig (datasets). Each key goes where the recipe keeps
that knob: `MOVED` for the keys with a home outside `training:` (the same homes dpo/training/arguments.py
points `training:` keys to), a few with their own rule below, and every other DPOConfig field under `training:`.
The result is checked as any recipe is (dpo/training/gate.py's checks, less the data, which may be on the hub);
a problem names the TRL file and key it came from.

Where TRL's defaults and the recipe's differ, the converted recipe says what TRL did: without `use_peft: true`
TRL trains the full model, so the recipe gets `peft: null`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dpo.config.loading import LoadedRecipe, check_scalars, validate
from dpo.config.schema import HUB_PREFIX, ModelSection, Recipe
from dpo.config.signatures import show_value
from dpo.config.yaml_loader import dump_yaml, read_yaml_mapping
from dpo.errors import Problems, UserError, raise_all

# TRL key -> recipe key, value as written
MOVED: dict[str, str] = {
    "model_name_or_path": "model.name_or_path",
    "trust_remote_code": "model.trust_remote_code",
    "beta": "loss.beta",
    "loss_type": "loss.type",
    "loss_weights": "loss.weights",
    "discopop_tau": "loss.discopop_tau",
    "ld_alpha": "regularizers.ld_alpha",
    "use_weighting": "regularizers.wpo",
    "f_divergence_type": "regularizers.f_divergence",
    "f_alpha_divergence_coef": "regularizers.f_alpha",
    "neftune_noise_alpha": "regularizers.neftune_alpha",
    "seed": "seed",
    "run_name": "name",
}
# ModelConfig's LoRA keys, read when use_peft is true
LORA: dict[str, str] = {
    "lora_r": "peft.r",
    "lora_alpha": "peft.alpha",
    "lora_dropout": "peft.dropout",
    "lora_target_modules": "peft.target_modules",
}
SYNC_REF = {
    "ref_model_sync_steps": "regularizers.sync_ref.every",
    "ref_model_mixup_alpha": "regularizers.sync_ref.mixup",
}
DATASET_KEYS = ("dataset_name", "dataset_config", "dataset_train_split", "dataset_test_split")
# Keys a recipe has no place for, and why
NOT_MAPPED: dict[str, str] = {
    "output_dir": "pass --output-dir to dpo train (default runs/<name>)",
    "load_best_model_at_end": "dpo keeps the best checkpoint in final/ when early_stopping.patience is set",
    "model_revision": "no recipe key: give a local directory or the hub id of that revision",
    "attn_implementation": "no recipe key: transformers picks the attention implementation",
    "dataset_streaming": "dpo reads the whole data set (it splits, audits and hashes it)",
    "streaming": "dpo reads the whole data set (it splits, audits and hashes it)",
    "ignore_bias_buffers": "a DDP workaround of TRL's script; not needed by dpo",
    "env": "set these environment variables yourself before dpo train",
    "use_rslora": "no recipe key for rank-stabilised LoRA",
    "use_dora": "no recipe key for DoRA",
    "lora_target_parameters": "no recipe key: LoRA wraps modules (peft.target_modules)",
    "lora_modules_to_save": "no recipe key for modules trained in full next to LoRA",
    "lora_task_type": "dpo trains causal LMs (CAUSAL_LM)",
    "load_in_8bit": "no quantized training (QLoRA) in dpo",
    "load_in_4bit": "no quantized training (QLoRA) in dpo",
    "bnb_4bit_quant_type": "no quantized training (QLoRA) in dpo",
    "use_bnb_nested_quant": "no quantized training (QLoRA) in dpo",
    "bnb_4bit_quant_storage": "no quantized training (QLoRA) in dpo",
}


@dataclass
class Converted:
    """A recipe (as a mapping), the TRL keys that could not be mapped with why, and what changed meaning."""

    recipe: dict[str, Any]
    unmapped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # recipe key -> the TRL key it came from

    def put(self, key: str, value: Any, trl_key: str) -> None:
        node = self.recipe
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
        self.sources[key] = trl_key


def convert_trl(path: str | Path) -> Converted:
    """Read a `trl dpo` config file and turn it into a recipe; checks the recipe (not its data)."""
    path = Path(path)
    config = read_yaml_mapping(path, what="trl config")
    _check_shapes(config, path)
    out = Converted({"name": path.stem})
    fields = _dpo_config_fields()
    _model(config, out)
    _data(config, out)
    for key, value in config.items():
        if key in MOVED:
            out.put(MOVED[key], _loss_type(value) if key == "loss_type" else value, key)
        elif key in NOT_MAPPED:
            out.unmapped.append((key, NOT_MAPPED[key]))
        elif key in _HANDLED:
            _HANDLED[key](key, value, config, out)
        elif key in fields:
            problem = _training_problem(key, value)
            if problem:
                out.unmapped.append((key, problem))
            else:
                out.put(f"training.{key}", value, key)
        elif key not in _READ_ELSEWHERE:
            out.unmapped.append((key, "not an option of trl dpo (ScriptArguments, ModelConfig, DPOConfig)"))
    _check(out, path)
    return out


def _model(config: dict, out: Converted) -> None:
    if "model_name_or_path" not in config:
        out.notes.append("no model_name_or_path: the recipe trains dpo's embedded model (smollm2-135m-instruct)")
    dtype = config.get("dtype")
    if dtype in ModelSection.model_fields["dtype"].annotation.__args__:
        out.put("model.dtype", dtype, "dtype")
    elif "dtype" in config:
        out.unmapped.append(("dtype", f"{dtype!s}: model.dtype takes float32, bfloat16 or float16"))
    lora = [k for k in LORA if k in config]
    if config.get("use_peft"):
        out.recipe["peft"] = {}
        for key in lora:
            if key == "lora_dropout" and config[key] and config.get("disable_dropout", True) is not False:
                out.unmapped.append((key, "TRL's disable_dropout (true unless set false) zeroes every dropout, LoRA's "
                                          "too: it had no effect"))  # fmt: skip
                continue
            out.put(LORA[key], config[key], key)
    else:
        out.put("peft", None, "use_peft")
        out.notes.append("use_peft is not true: TRL trains the full model, so the recipe has peft: null")
        out.unmapped += [(key, "use_peft is not true, so TRL does not use it either") for key in lora]


def _data(config: dict, out: Converted) -> None:
    name = config.get("dataset_name")
    mixture = config.get("datasets") or []
    if name is None and not mixture:
        out.unmapped.append(("dataset_name", "missing: set data.train in the recipe"))
        return
    if name is not None and mixture:
        out.unmapped.append(("dataset_name", "TRL uses `datasets` when both are given, and so does the recipe"))
    if mixture:
        out.put("data.train", [_mixture_source(i, entry, out) for i, entry in enumerate(mixture)], "datasets")
    else:
        source = _source(name, config.get("dataset_config"), config.get("dataset_train_split", "train"))
        out.put("data.train", source, "dataset_name")
    evaluates = config.get("eval_strategy", "no") != "no" or "dataset_test_split" in config
    if name is not None and not mixture and evaluates:
        test = _source(name, config.get("dataset_config"), config.get("dataset_test_split", "test"))
        out.put("data.eval", test, "dataset_test_split")
    else:
        out.notes.append("no held-out split given: the recipe holds out data.heldout_fraction of the prompts")
    if "test_split_size" in config:
        out.put("data.heldout_fraction", config["test_split_size"], "test_split_size")


def _source(name: str, subset: str | None, split: str) -> str | dict:
    """A data source: a hub data set (hub:owner/name), or a local path where `name` is one (load_dataset takes
    both; relative paths are TRL's working directory's, so they are written absolute)."""
    path = Path(name).expanduser()
    where = str(path.resolve()) if path.exists() else f"{HUB_PREFIX}{name}"
    if subset is None and split == "train":
        return where
    return {"path": where, "split": split, **({"subset": subset} if subset else {})}


def _mixture_source(i: int, entry: dict, out: Converted) -> str | dict:
    for key in entry:
        if key not in ("path", "name", "split"):
            out.unmapped.append((f"datasets[{i}].{key}", "no recipe key (a source takes path, subset and split)"))
    return _source(entry["path"], entry.get("name"), entry.get("split", "train"))


def _loss_type(value: Any) -> Any:
    return value[0] if isinstance(value, list) and len(value) == 1 else value


# TRL 1.16's losses that read label_smoothing (DPOTrainer._compute_loss); the others, sigmoid first, ignore it
TRL_SMOOTHED_LOSSES = {"robust", "exo_pair", "aot", "aot_unpaired"}


def _label_smoothing(key: str, value: Any, config: dict, out: Converted) -> None:
    """Where TRL's loss ignored it (sigmoid, its default), the recipe must not apply it: dpo's sigmoid with
    smoothing is cDPO, another training than the one converted."""
    losses = config.get("loss_type", "sigmoid")
    losses = {losses} if isinstance(losses, str) else set(losses or ["sigmoid"])
    if value and not losses & TRL_SMOOTHED_LOSSES:
        out.unmapped.append((key, f"TRL's {', '.join(sorted(losses))} loss ignores it, so TRL trained without "
                                  "smoothing (for cDPO set loss.label_smoothing in the recipe)"))  # fmt: skip
    else:
        out.put("loss.label_smoothing", value, key)


def _padding_free(key: str, value: Any, config: dict, out: Converted) -> None:
    if value:  # TRL 1.16 warns and sets it back to false
        out.unmapped.append((key, "TRL 1.16 turns it off (temporarily unavailable there) and pads"))
    else:
        out.put(f"training.{key}", value, key)


def _precompute_ref_batch_size(key: str, value: Any, config: dict, out: Converted) -> None:
    if value is not None and not (config.get("precompute_ref_log_probs") and not config.get("use_peft")):
        # dpo computes a pair's reference log-probs with its first batch unless full fine-tuning asks for them up front
        out.unmapped.append((key, "read only with precompute_ref_log_probs: true and full fine-tuning (no use_peft)"))
    else:
        out.put(f"training.{key}", value, key)


def _report_to(key: str, value: Any, config: dict, out: Converted) -> None:
    targets = [value] if isinstance(value, str) else list(value or [])
    if "all" in targets:
        targets = ["wandb", "tensorboard"]
    for target in targets:
        if target in ("wandb", "tensorboard"):
            out.put(f"logging.{target}", True, key)
        elif target != "none":
            out.unmapped.append((f"{key}: {target}", "dpo logs to wandb and tensorboard only"))


def _sync_ref(key: str, value: Any, config: dict, out: Converted) -> None:
    if value:
        out.put("regularizers.sync_ref", {}, key)
        for sub, target in SYNC_REF.items():
            if sub in config:
                out.put(target, config[sub], sub)


def _sync_ref_setting(key: str, value: Any, config: dict, out: Converted) -> None:
    if not config.get("sync_ref_model"):
        out.unmapped.append((key, "sync_ref_model is not true, so TRL does not use it either"))


def _metric(key: str, value: Any, config: dict, out: Converted) -> None:
    if value is None:  # TRL's default: no metric
        return
    # transformers prefixes metric_for_best_model with eval_ when it lacks it
    out.put("early_stopping.metric", value if value.startswith("eval_") else f"eval_{value}", key)


def _direction(key: str, value: Any, config: dict, out: Converted) -> None:
    if value is not None:
        out.put("early_stopping.mode", "max" if value else "min", key)


def _progress_bar(key: str, value: Any, config: dict, out: Converted) -> None:
    out.put("logging.progress_bar", not value, key)


# keys with a rule of their own (called once each, with the whole config)
_HANDLED = {
    "label_smoothing": _label_smoothing,
    "padding_free": _padding_free,
    "precompute_ref_batch_size": _precompute_ref_batch_size,
    "report_to": _report_to,
    "sync_ref_model": _sync_ref,
    **dict.fromkeys(SYNC_REF, _sync_ref_setting),
    "metric_for_best_model": _metric,
    "greater_is_better": _direction,
    "disable_tqdm": _progress_bar,
}
# keys `_model` and `_data` read
_READ_ELSEWHERE = {"dtype", "use_peft", *LORA, *DATASET_KEYS, "datasets", "test_split_size"}


def _dpo_config_fields() -> set[str]:
    from dpo.training.arguments import _dpo_config_fields as fields

    return set(fields())


def _trl_bool_fields() -> set[str]:
    """The keys `trl dpo` reads as true or false (its dataclasses' bool fields)."""
    import dataclasses

    from trl import DPOConfig, ModelConfig, ScriptArguments
    from trl.scripts.utils import DatasetMixtureConfig

    classes = (DPOConfig, ModelConfig, ScriptArguments, DatasetMixtureConfig)
    return {f.name for cls in classes for f in dataclasses.fields(cls) if f.type in (bool, bool | None)}


def _text_or_texts(value: Any) -> bool:
    return isinstance(value, str) or isinstance(value, list) and all(isinstance(v, str) for v in value)


# Words PyYAML's YAML 1.1 loader (TRL's) reads as bools, and which ours (YAML 1.2, as recipes are read) keeps as text
_YAML_1_1_BOOLS = {"yes": True, "no": False, "on": True, "off": False}


def _check_shapes(config: dict, path: Path) -> None:
    """The values the conversion reads must have the shape TRL gives them, each problem naming the TRL key: a bool
    written as text (YAML 1.2 reads `no` as text, which is true) would turn `use_peft` on, and a dataset of the wrong
    shape would end in a traceback."""
    problems = []

    def problem(key: str, message: str) -> None:
        problems.append(UserError(f"{key}: {message}", where=str(path)))

    for key in sorted(_trl_bool_fields() & config.keys()):
        value = config[key]
        if not isinstance(value, bool | None):
            meant = _YAML_1_1_BOOLS.get(value.lower()) if isinstance(value, str) else None
            hint = "" if meant is None else f" (TRL's YAML 1.1 reads it as {str(meant).lower()}: write that)"
            problem(key, f"expected true or false, got {show_value(value)}{hint}")
    for key, wanted in (("dataset_name", "a data set name or path"), ("metric_for_best_model", "a metric name")):
        if not isinstance(config.get(key), str | None):
            problem(key, f"expected {wanted}, got {show_value(config[key])}")
    report_to = config.get("report_to")
    if report_to is not None and not _text_or_texts(report_to):
        problem("report_to", f"expected a name or a list of names, got {show_value(report_to)}")
    loss_type = config.get("loss_type")
    if loss_type is not None and not (_text_or_texts(loss_type) and loss_type):
        problem("loss_type", f"expected a loss name or a list of loss names, got {show_value(loss_type)}")
    datasets = config.get("datasets")
    if datasets is not None and not isinstance(datasets, list):
        problem("datasets", f"expected a list of data sets {{path, name, split}}, got {show_value(datasets)}")
    for i, entry in enumerate(datasets if isinstance(datasets, list) else []):
        if not isinstance(entry, dict):
            problem(f"datasets[{i}]", f"expected a data set {{path, name, split}}, got {show_value(entry)}")
        elif not isinstance(entry.get("path"), str):
            got = f"got {show_value(entry['path'])}" if "path" in entry else "it has none"
            problem(f"datasets[{i}]", f"needs a path (a data set name or path), {got}")
    raise_all(problems)


def _training_problem(key: str, value: Any) -> str | None:
    from dpo.training.arguments import training_key_problem

    problem = training_key_problem(key, value)
    return problem[0] if problem else None


def _check(out: Converted, path: Path) -> None:
    """The converted recipe must pass the recipe's checks as `dpo validate` runs them (dpo/training/gate.py), less
    those that read its data or its model (either may be on the hub); every problem names the TRL key."""
    from dpo.training.gate import check_settings, default_output_dir

    provenance = {key: f"{path} ({trl_key})" for key, trl_key in out.sources.items()}
    check_scalars(out.recipe, provenance, default_source=str(path))  # beta: 1e400 is inf, which the schema takes
    loaded = LoadedRecipe(validate(dict(out.recipe), provenance, default_source=str(path)), path, provenance)
    problems = Problems()
    check_settings(loaded, default_output_dir(loaded.recipe), problems)
    problems.raise_all()


def recipe_yaml(converted: Converted, source: Path, output: Path | None) -> str:
    """The recipe file's text, opening with where it came from and the command that runs it."""

    header = f"# Converted from the trl dpo config {source.name} by `dpo convert-trl`.\n"
    if output is not None:
        header += f"#   dpo train {output}\n#   dpo train {output} --set training.max_steps=10\n"
    order = list(Recipe.model_fields)  # the sections in the order recipes write them
    recipe = dict(sorted(converted.recipe.items(), key=lambda item: order.index(item[0])))
    return header + dump_yaml(recipe, sort_keys=False)
