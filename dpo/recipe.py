"""Recipes: YAML file -> `base:` inheritance -> `--set` overrides -> strictly validated `Recipe`.

A recipe is the single description of a run. This module knows the recipe's *shape* (sections, keys,
types, ranges); it imports no torch and no trainer. Checks that need other tables (loss names,
DPOConfig fields) live in `dpo/trainer_config.py`.

Every error is a `UserError` naming the file that set the offending key (a base recipe, the recipe
itself, or `--set`) and the dotted key, with the closest valid key suggested for typos.
"""

from __future__ import annotations

import copy
import inspect
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dpo.augment import AUGMENTATIONS
from dpo.augment import check as augment_check
from dpo.augment import parameters as augment_parameters
from dpo.errors import UserError, did_you_mean


class _SafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no Python tags) with YAML 1.2 scalars, as users expect: `1e-5` is a float, and
    `no` / `off` / `yes` / `on` are strings (so `save_strategy: no` means "no", not False)."""


_SafeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+)$"),
    list("-+0123456789."),
)


def safe_load(text: str):
    return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a SafeLoader subclass


# Keys whose relative paths resolve against the folder of the recipe file that sets them.
PATH_KEYS = ("data.train", "data.eval")
SET_SOURCE = "--set"


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, defaults are validated too."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelSection(Section):
    name_or_path: str = Field("smollm2-135m-instruct", description="Embedded alias, local directory or hub id.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype when loading.")
    trust_remote_code: bool = Field(False, description="Run model code shipped with a hub model. Off by default.")


class PeftSection(Section):
    """LoRA adapter. With LoRA the reference model is the adapter-disabled base: no second copy."""

    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA branch.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names to adapt, or 'all-linear'.",
    )


class DataSection(Section):
    train: str = Field(..., description="Training pairs: .jsonl/.json/.parquet/.csv file or save_to_disk dir.")
    eval: str | None = Field(None, description="Held-out pairs; when absent, split off heldout_fraction by prompt.")
    heldout_fraction: float = Field(0.1, gt=0, lt=1, description="Share of prompts held out when eval is absent.")
    max_train_pairs: int | None = Field(None, gt=0, description="Use only the first N training pairs.")
    max_eval_pairs: int | None = Field(None, gt=0, description="Use only the first N held-out pairs.")
    augment: list[dict[str, Any]] = Field(
        default_factory=list, description="Augmentation steps for the training pairs: [{type: label_noise, ...}]."
    )

    @field_validator("augment")
    @classmethod
    def _known_augmentations(cls, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, step in enumerate(steps):
            name = step.get("type")
            if not isinstance(name, str) or name not in AUGMENTATIONS:
                hint = did_you_mean(name, AUGMENTATIONS)
                raise ValueError(f"step {i}: unknown type {name!r}{hint} (valid: {', '.join(AUGMENTATIONS)})")
            accepted = augment_parameters(name)
            unknown = sorted(set(step) - {"type"} - set(accepted))
            missing = sorted(k for k, v in accepted.items() if v is inspect.Parameter.empty and k not in step)
            if unknown or missing:
                problem = f"unknown key(s) {unknown}" if unknown else f"missing key(s) {missing}"
                raise ValueError(f"step {i} ({name}): {problem}; it takes {sorted(accepted)}")
            problem = augment_check(name, {k: v for k, v in step.items() if k != "type"})
            if problem:
                raise ValueError(f"step {i} ({name}): {problem}")
        return steps


class BetaScheduleSection(Section):
    """How beta moves during training (dpo/beta.py). Keys of another kind are errors, not ignored."""

    type: Literal["constant", "linear", "cosine", "adaptive"] = Field("constant", description="Schedule kind.")
    end: float | None = Field(None, gt=0, description="linear/cosine: beta at the last step (starts at loss.beta).")
    alpha: float | None = Field(None, ge=0, description="adaptive (beta-DPO): sensitivity to the batch reward gap.")
    momentum: float | None = Field(None, ge=0, lt=1, description="adaptive: moving-average momentum of the gap.")
    keep_fraction: float | None = Field(
        None, gt=0, le=1, description="adaptive: share of each batch kept by beta-guided data filtering."
    )

    @model_validator(mode="after")
    def _keys_match_type(self):
        allowed = {
            "constant": set(),
            "linear": {"end"},
            "cosine": {"end"},
            "adaptive": {"alpha", "momentum", "keep_fraction"},
        }
        for key in ("end", "alpha", "momentum", "keep_fraction"):
            if getattr(self, key) is not None and key not in allowed[self.type]:
                raise ValueError(f"'{key}' does not apply to beta_schedule type '{self.type}'")
        if self.type in ("linear", "cosine") and self.end is None:
            raise ValueError(f"beta_schedule type '{self.type}' needs 'end' (the final beta)")
        return self


class LossSection(Section):
    """The preference loss. Hyperparameters a chosen loss does not use must stay unset (see losses.py)."""

    type: str | list[str] = Field("sigmoid", description="Loss name from dpo/losses.py LOSSES, or a list to combine.")
    weights: list[float] | None = Field(None, description="One weight per loss when `type` is a list.")
    beta: float = Field(0.1, gt=0, description="KL-penalty strength beta (IPO: its tau).")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="Assumed label-flip rate (cDPO with sigmoid, rDPO with robust, EXO, AOT)."
    )
    dpop_lambda: float | None = Field(None, ge=0, description="DPO-Positive penalty weight (loss `dpop`).")
    discopop_tau: float | None = Field(None, gt=0, description="DiscoPOP temperature (loss `discopop`).")
    beta_schedule: BetaScheduleSection = Field(default_factory=BetaScheduleSection)

    def type_list(self) -> list[str]:
        return [self.type] if isinstance(self.type, str) else list(self.type)


class SyncRefSection(Section):
    """TR-DPO (arXiv 2404.09656): move the reference toward the policy during training."""

    every: int = Field(512, gt=0, description="Steps between reference updates.")
    mixup: float = Field(0.6, ge=0, le=1, description="ref <- mixup * policy + (1 - mixup) * ref.")


class RegularizersSection(Section):
    """Terms beyond the loss. Each is off by default; each that is set must apply (checked)."""

    nll_weight: float = Field(0.0, ge=0, description="RPO: weight of the chosen answers' NLL term (arXiv 2404.19733).")
    neftune_alpha: float | None = Field(
        None, gt=0, description="NEFTune embedding noise (arXiv 2310.05914), policy forward only."
    )
    sync_ref: SyncRefSection | None = Field(None, description="TR-DPO reference syncing (full fine-tuning only).")
    wpo: bool = Field(False, description="WPO: weight pairs by their probability under the policy (arXiv 2406.11827).")
    ld_alpha: float | None = Field(
        None, ge=0, le=1, description="LD-DPO: weight of tokens past the shorter answer (arXiv 2409.06411)."
    )
    f_divergence: Literal["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"] = Field(
        "reverse_kl", description="f-DPO divergence (arXiv 2309.16240); reverse_kl is plain DPO."
    )
    f_alpha: float | None = Field(None, gt=0, description="alpha of alpha_divergence.")

    @model_validator(mode="after")
    def _f_alpha_needs_alpha_divergence(self):
        if self.f_alpha is not None and self.f_divergence != "alpha_divergence":
            raise ValueError("'f_alpha' applies only to f_divergence 'alpha_divergence'")
        return self


class EarlyStoppingSection(Section):
    metric: str = Field("eval_rewards/margins", description="Held-out metric watched for best/early stop.")
    mode: Literal["auto", "max", "min"] = Field("auto", description="auto: max unless the metric is a loss.")
    patience: int | None = Field(None, gt=0, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as an improvement.")
    warmup_steps: int = Field(0, ge=0, description="No early stop before this global step.")


class LoggingSection(Section):
    wandb: bool = Field(False, description="Log to Weights & Biases (offline unless an API key is configured).")
    wandb_project: str = Field("dpo-toolkit", description="wandb project name.")
    wandb_mode: Literal["auto", "offline", "online"] = Field(
        "auto", description="auto: online when an API key is configured, offline otherwise."
    )
    tensorboard: bool = Field(False, description="Also write TensorBoard event files under the run directory.")
    progress_bar: bool = Field(True, description="Show a progress bar while training.")


class Recipe(Section):
    """A fully resolved recipe (after inheritance and overrides)."""

    name: str = Field("run", description="Run name; the default output directory is runs/<name>.")
    seed: int = Field(42, description="Seed for data split, adapter init and training.")
    model: ModelSection = Field(default_factory=ModelSection)
    peft: PeftSection | None = Field(default_factory=PeftSection, description="null = full fine-tuning.")
    data: DataSection
    loss: LossSection = Field(default_factory=LossSection)
    regularizers: RegularizersSection = Field(default_factory=RegularizersSection)
    early_stopping: EarlyStoppingSection = Field(default_factory=EarlyStoppingSection)
    training: dict[str, Any] = Field(default_factory=dict, description="Passed through to trl.DPOConfig.")
    logging: LoggingSection = Field(default_factory=LoggingSection)

    @field_validator("name")
    @classmethod
    def _name_stays_inside_the_output_dir(cls, name: str) -> str:
        problem = run_name_problem(name)
        if problem:
            raise ValueError(problem)
        return name

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def run_name_problem(name: str) -> str | None:
    """Why `name` cannot be a run (or trial) folder under an output directory, or None. A name is one plain
    folder name: `../x`, `/abs`, `a/b` would put the run outside the folder the user chose."""
    if not name or name in (".", ".."):
        return f"{name!r} is not a folder name"
    if any(sep in name for sep in ("/", "\\", "\0")) or Path(name).is_absolute() or Path(name).drive:
        return f"{name!r} must be a plain folder name (no path separators): runs go to runs/<name>"
    if len(name.encode()) > 255:
        return "is longer than a folder name may be (255 bytes)"
    return None


class LoadedRecipe:
    """A validated Recipe plus where each key came from (for error messages in later checks)."""

    def __init__(self, recipe: Recipe, path: Path, provenance: dict[str, str]):
        self.recipe = recipe
        self.path = path
        self.provenance = provenance

    def source(self, key: str) -> str:
        """The file that set `key` (or its closest parent), or '--set'."""
        return source_of(self.provenance, key, str(self.path))

    def where(self, key: str) -> str:
        """'file: key', the prefix of an error about `key`."""
        return f"{self.source(key)}: {key}"


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> LoadedRecipe:
    """Read a recipe file with its bases, apply `key.path=value` overrides, validate strictly."""
    path = Path(path)
    raw, provenance = _read_with_bases(path, chain=())
    for item in overrides:
        key, value = parse_override(item)
        if key == "base" or key.startswith("base."):
            raise UserError(
                "base cannot be overridden: it is read before --set applies; edit the recipe", where=SET_SOURCE
            )
        if key in PATH_KEYS and isinstance(value, str):
            value = str(Path(value).expanduser().resolve())  # paths given on the command line are CWD-relative
        _set_dotted(raw, key, value)
        provenance[key] = SET_SOURCE
    raw.setdefault("name", path.stem)
    return LoadedRecipe(validate(raw, provenance, default_source=str(path)), path, provenance)


def parse_override(item: str) -> tuple[str, Any]:
    """'loss.beta=0.2' -> ('loss.beta', 0.2). Values are parsed as YAML, so types come out right."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"override '{item}' must look like key.path=value", where=SET_SOURCE)
    try:
        value = safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise UserError(f"{key}: value '{text}' is not valid YAML ({exc.problem})", where=SET_SOURCE) from exc
    return key, value


def validate(raw: dict, provenance: dict[str, str], default_source: str) -> Recipe:
    raw = {k: v for k, v in raw.items() if k != "base"}
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        where = source_of(provenance, key, default_source)
        raise UserError(_describe(err, key), where=where) from None


def _describe(err: dict, key: str) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        parent, _, leaf = key.rpartition(".")
        valid = valid_keys(parent)
        hint = did_you_mean(leaf, valid, prefix=f"{parent}." if parent else "", cutoff=0.5)
        return f"unknown key '{key}'{hint} (valid: {', '.join(valid)})"
    if kind == "missing":
        return f"required key '{key}' is missing"
    if kind == "value_error":  # our own model validators: the message is the whole story
        return f"{key}: {err['msg'].removeprefix('Value error, ')}"
    got = err.get("input")
    shown = repr(got) if not isinstance(got, dict) else "a mapping"
    return f"{key}: {err['msg'].rstrip('.')} (got {shown})"


def valid_keys(dotted_section: str) -> list[str]:
    """Field names of the section at `dotted_section` ('' = top level)."""
    model: type[BaseModel] = Recipe
    for part in filter(None, dotted_section.split(".")):
        field = model.model_fields.get(part)
        sub = _section_type(field.annotation) if field else None
        if sub is None:
            return []
        model = sub
    names = list(model.model_fields)
    return names + (["base"] if model is Recipe else [])


def _section_type(annotation) -> type[BaseModel] | None:
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def source_of(provenance: dict[str, str], key: str, default: str) -> str:
    """The file that set `key`, falling back to its parents (a section set as a whole).

    For an error about a whole section (a cross-key check), a key under it set by --set is the
    likeliest culprit, so --set wins there.
    """
    if any(k.startswith(f"{key}.") and src == SET_SOURCE for k, src in provenance.items()):
        return SET_SOURCE
    parts = key.split(".")
    while parts:
        found = provenance.get(".".join(parts))
        if found:
            return found
        parts.pop()
    return default


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> tuple[dict, dict[str, str]]:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise UserError(f"base: inheritance cycle {cycle}", where=str(path))
    data = read_yaml_mapping(path)
    _resolve_paths(data, path.parent)
    base_ref = data.get("base")
    if base_ref is None:
        merged, provenance = {}, {}
    else:
        if not isinstance(base_ref, str):
            raise UserError(f"base: must be a path to another recipe (got {base_ref!r})", where=str(path))
        base_path = Path(os.path.normpath(path.parent / base_ref))  # absolute base_ref wins in the join
        if not base_path.is_file():
            raise UserError(f"base: file '{base_ref}' not found (looked in {base_path.parent})", where=str(path))
        merged, provenance = _read_with_bases(base_path, (*chain, resolved))
        merged.pop("name", None)  # a child recipe is its own run; it never inherits the base's name
    _deep_merge(merged, data, provenance, str(path), prefix="")
    return merged, provenance


def read_yaml_mapping(path: Path) -> dict:
    """Load one YAML file with the safe loader; it must hold a mapping."""
    if not path.is_file():
        raise UserError("recipe file not found", where=str(path))
    try:
        data = safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError("not UTF-8 text", where=str(path)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"invalid YAML{line}: {problem}", where=str(path)) from None
    if data is None:
        raise UserError("recipe is empty", where=str(path))
    if not isinstance(data, dict):
        raise UserError(f"a recipe must be a mapping of sections, got {type(data).__name__}", where=str(path))
    return data


def _resolve_paths(data: dict, folder: Path) -> None:
    for key in PATH_KEYS:
        section, _, leaf = key.partition(".")
        block = data.get(section)
        if isinstance(block, dict) and isinstance(block.get(leaf), str):
            p = Path(block[leaf]).expanduser()
            block[leaf] = str(p if p.is_absolute() else (folder / p).resolve())


def _deep_merge(into: dict, new: dict, provenance: dict[str, str], source: str, prefix: str) -> None:
    for key, value in new.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value, provenance, source, dotted + ".")
        else:
            into[key] = copy.deepcopy(value)
            provenance[dotted] = source
            if isinstance(value, dict):
                for sub in _flatten_keys(value, dotted):
                    provenance[sub] = source


def _flatten_keys(d: dict, prefix: str) -> list[str]:
    out = []
    for k, v in d.items():
        out.append(f"{prefix}.{k}")
        if isinstance(v, dict):
            out.extend(_flatten_keys(v, f"{prefix}.{k}"))
    return out


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"{'.'.join(parts[: i + 1])} is not a section, cannot set {key}", where=SET_SOURCE)
        node = child
    node[parts[-1]] = value
