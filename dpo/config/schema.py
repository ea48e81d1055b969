"""The recipe's shape: its sections, keys, types, ranges and defaults (pydantic), and nothing else.

Imports no torch and no trainer. Reading files, `base:` layers and `--set` overrides live in
dpo/config/loading.py; checks that need a component's table (losses, DPOConfig fields) in dpo/training/.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dpo.config.signatures import values_problem
from dpo.config.yaml_loader import UNFOLDED, dump_yaml
from dpo.errors import did_you_mean
from dpo.noise import DEFAULT_SIGMAS

# Keys whose relative paths resolve against the folder of the recipe file that sets them.
PATH_KEYS = ("data.train", "data.eval")
HUB_PREFIX = "hub:"  # a data source that is a hub dataset id, not a path
# Our column names, which a source's `columns:` may map its own columns to (dpo/data/rows.py reads rows by them).
TARGETS = ("prompt", "chosen", "rejected", "responses", "scores", "ranks")


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, defaults are validated too."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelSection(Section):
    name_or_path: str = Field("smollm2-135m-instruct", description="Embedded alias, local directory or hub id.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype when loading.")
    trust_remote_code: bool = Field(False, description="Run model code shipped with a hub model. Off by default.")
    share_prompt: bool = Field(
        True,
        description="Compute each pair's prompt once: one row [prompt | chosen | rejected] with a block attention "
        "mask, exact (docs/speed.md). Where the model or its attention implementation cannot take it, the run says "
        "so and uses two sequences per pair; false: always two sequences, as TRL does. With dropout active in "
        "training, the policy's training forward uses two sequences (each answer its own dropout draw).",
    )


class PeftSection(Section):
    """LoRA adapter. With LoRA the reference model is the adapter-disabled base: no second copy."""

    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA branch.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        description="Module names to adapt, or 'all-linear'.",
    )


class DataSource(Section):
    """One source of rows, for `data.train` / `data.eval` given as a list (a plain path is a source with defaults)."""

    path: str = Field(..., description="A .jsonl/.json/.parquet/.csv file, a save_to_disk dir, or hub:owner/name.")
    weight: float | None = Field(
        None, gt=0, description="Share of the mix: weighted sources split their total row count by weight."
    )
    count: int | None = Field(None, gt=0, description="Take exactly this many rows (seeded; repeats when larger).")
    columns: dict[Literal[TARGETS], str] = Field(  # type: ignore[valid-type]
        default_factory=dict,
        description="Our column -> the source's column, 'a.b' (nested key) or 'a[].b' (key b of each list item).",
    )
    ignore_columns: list[str] = Field(
        default_factory=list,
        description="Source columns to drop without complaint (each one some row of the source has).",
    )
    split: str = Field("train", description="Split of a hub dataset or of a save_to_disk DatasetDict.")
    subset: str | None = Field(None, description="Configuration name of a hub dataset.")

    @model_validator(mode="after")
    def _weight_or_count(self):
        if self.weight is not None and self.count is not None:
            raise ValueError("give a source a weight or a count, not both")
        return self


SourceList = str | DataSource | list[str | DataSource]


class ExpandPairsSection(Section):
    """Multi-response rows (N scored or ranked answers) -> pairs, in both splits (a format conversion, made
    after the split by prompt, so no prompt leaks). Every pair of answers with a strictly better score and a
    score gap >= min_gap is a (chosen, rejected) pair; at most max_pairs_per_prompt per prompt, largest gaps first."""

    min_gap: float = Field(0.0, ge=0, description="Smallest score gap that makes a pair (ranks: rank positions).")
    max_pairs_per_prompt: int | None = Field(None, gt=0, description="Cap per prompt (largest gaps kept; ties seeded).")


class AuditSection(Section):
    """Label audit before training (dpo/training/audit.py, docs/audit.md): estimates the share of flipped labels in
    the training pairs with the recipe's model and each pair's p_flipped, recorded in data_card.json and the report;
    `suspects` drops or flips the most suspect pairs. `loss.label_smoothing: auto` runs the audit too."""

    suspects: Literal["keep", "drop", "flip"] = Field(
        "keep", description="What to do with the most suspect pairs: keep them, drop them, or swap chosen/rejected."
    )
    share: float | None = Field(None, gt=0, lt=1, description="The most suspect share of the pairs are suspects.")
    threshold: float | None = Field(
        None, gt=0, le=1, description="Pairs whose p_flipped is at least this are suspects."
    )

    @model_validator(mode="after")
    def _share_or_threshold(self):
        given = [k for k in ("share", "threshold") if getattr(self, k) is not None]
        if self.suspects == "keep" and given:
            raise ValueError(f"{given[0]} has no effect with suspects: keep (set suspects: drop or flip)")
        if self.suspects != "keep" and len(given) != 1:
            raise ValueError(f"suspects: {self.suspects} needs exactly one of share or threshold")
        return self


class DataSection(Section):
    train: SourceList = Field(
        ...,
        description="Training rows: a path (.jsonl/.json/.parquet/.csv, save_to_disk dir, hub:owner/name), "
        "or a list of sources {path, weight | count, columns, ignore_columns, split, subset} mixed together.",
    )
    eval: SourceList | None = Field(
        None, description="Held-out rows (same forms as train); when absent, split off heldout_fraction by prompt."
    )
    heldout_fraction: float = Field(0.1, gt=0, lt=1, description="Share of prompts held out when eval is absent.")
    max_train_pairs: int | None = Field(None, gt=0, description="Use only the first N training pairs.")
    max_eval_pairs: int | None = Field(None, gt=0, description="Use only the first N held-out pairs.")
    on_invalid: Literal["error", "skip"] = Field(
        "error", description="error: stop at bad rows, naming file and rows; skip: drop them, counted in data_card."
    )
    expand_pairs: ExpandPairsSection = Field(default_factory=ExpandPairsSection)
    allow_eval_in_train: bool = Field(
        False,
        description="Let held-out data be training data (data.eval the same data as data.train, or sharing "
        "prompts with it): held-out metrics then measure memorisation. false: held-out rows that are all training "
        "rows are an error, and held-out prompts that are training prompts a warning.",
    )
    augment: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Augmentation steps for the training pairs, in order: [{type: label_noise, fraction: 0.2}, "
        "...]; a type 'package.module:function' is a plug-in. Each step's keys are checked against its function "
        "(dpo/data/augment.py) when the data is prepared.",
    )

    audit: AuditSection | None = Field(
        None,
        description="Audit the training labels before training: {suspects: keep | drop | flip, share | threshold}.",
    )

    def sources(self, split: str) -> list[DataSource]:
        """`train` or `eval` as a list of sources."""
        value = self.train if split == "train" else self.eval
        items = [] if value is None else value if isinstance(value, list) else [value]
        return [DataSource(path=item) if isinstance(item, str) else item for item in items]

    @field_validator("train", "eval", mode="before")
    @classmethod
    def _sources_shape(cls, value):
        """Check each source here, so an error names the source and its key (a union's error would not)."""
        if value is None or isinstance(value, str):
            return value
        fields = DataSource.model_fields
        misspelt = isinstance(value, dict) and len(value) == 1 and _near(next(iter(value)), fields)
        if isinstance(value, dict) and value and not misspelt and not any(key in fields for key in value):
            # {name: path, ...}: named sets (as transformers' Trainer takes for eval_dataset; {math: .., code: ..}
            # too, though 'math' is near 'path'), or a source whose keys are all wrong: either way not a source, so
            # not "source 0: required key 'path' is missing"; one key near a field ({pth: ..}) is named below
            raise ValueError(
                f"expected a path, a source {{path, weight | count, ...}} or a list of sources (mixed into one set); "
                f"got a mapping without 'path' ({', '.join(map(str, value))}): named sets are not supported"
            )
        items = value if isinstance(value, list) else [value]
        if not items:
            raise ValueError("needs at least one source")
        for i, item in enumerate(items):
            if isinstance(item, str):
                continue
            if not isinstance(item, dict):
                raise ValueError(f"source {i}: expected a path or a mapping {{path, weight | count, ...}}")
            unknown = [str(key) for key in item if key not in fields]
            if unknown:  # before a missing 'path': {pth: a.jsonl} is a misspelt key, best named as one
                hint = did_you_mean(unknown[0], fields, cutoff=0.5)
                raise ValueError(f"source {i}: unknown key '{unknown[0]}'{hint} (valid: {', '.join(fields)})")
            try:
                DataSource.model_validate(item, strict=True)  # as the recipe's (dpo/config/loading.py)
            except ValidationError as exc:
                err = exc.errors()[0]
                key = ".".join(str(p) for p in err["loc"])
                if err["type"] == "missing":
                    raise ValueError(f"source {i}: required key '{key}' is missing") from None
                message = values_problem([err], key).removeprefix(f"{key}: ")
                raise ValueError(f"source {i}: {f'{key}: ' if key else ''}{message}") from None
        return value


def _near(key, names) -> bool:
    """Whether `key` looks like a misspelling of one of `names` (as did_you_mean would suggest it)."""
    return bool(did_you_mean(str(key), names, cutoff=0.5))


class BetaScheduleSection(Section):
    """How beta moves during training: a kind from dpo/training/beta.py BETA_SCHEDULES and the keys that kind takes.

    The keys are that kind's parameters, with their constraints, in that table: this section takes further keys,
    and they are checked against the table with the rest of the loss (dpo/training/loss_plan.py), before a run
    directory exists."""

    model_config = ConfigDict(extra="allow")

    type: str = Field("constant", description="Schedule kind (dpo/training/beta.py BETA_SCHEDULES).")


class LossSection(Section):
    """The preference loss.

    Its hyperparameters (label_smoothing, dpop_lambda, ...) are further keys of this section: the keyword-only
    parameters of the chosen losses in dpo/training/losses.py LOSSES, whose signatures hold their constraints and
    defaults. They are checked against that table with the rest of the loss (dpo/training/loss_plan.py): an unknown
    key, one the chosen losses do not take, or a bad value is an error there, before a run directory exists."""

    model_config = ConfigDict(extra="allow")

    type: str | Annotated[list[str], Field(min_length=1)] = Field(
        "sigmoid", description="Loss name from dpo/training/losses.py LOSSES, or a non-empty list."
    )
    weights: list[Annotated[float, Field(ge=0)]] | None = Field(
        None, description="One weight (>= 0) per loss when `type` is a list."
    )
    beta: float = Field(0.1, gt=0, description="KL-penalty strength beta (IPO: its tau).")
    beta_schedule: BetaScheduleSection = Field(default_factory=BetaScheduleSection)

    def type_list(self) -> list[str]:
        return [self.type] if isinstance(self.type, str) else list(self.type)

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The loss hyperparameters the recipe sets (keys beyond the schema's), as written."""
        return dict(self.model_extra or {})


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
    f_divergence: str = Field(
        "reverse_kl",
        description="f-DPO divergence (arXiv 2309.16240) from dpo/training/losses.py F_DIVERGENCES; reverse_kl is "
        "plain DPO.",
    )
    f_alpha: float | None = Field(
        None, description="alpha of an f-divergence that takes one (alpha_divergence); checked against its link."
    )


class EarlyStoppingSection(Section):
    metric: str = Field("eval_rewards/margins", description="Held-out metric watched for best/early stop.")
    mode: Literal["auto", "max", "min"] = Field(
        "auto",
        description="auto: the metric's better direction in dpo's metric table (min for losses, gaps, KL and the "
        "rejected answers' rewards and log-probs; max otherwise); metrics without one need max or min.",
    )
    patience: int | None = Field(None, gt=0, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as an improvement.")
    warmup_steps: int = Field(0, ge=0, description="No early stop before this global step.")
    noise_sigmas: float = Field(
        DEFAULT_SIGMAS,
        ge=0,
        description="k, the noise rule: nothing stops (or cuts the learning rate on a plateau) before the best is k "
        "standard errors (corrected for the number of evaluations) beyond the start (step 0, or chance for an "
        "accuracy); early stopping stops only at an evaluation k standard errors below the best, and reduce-on-plateau "
        "counts a gain as an improvement only beyond k standard errors. The kept checkpoint is the best value seen. "
        "The overfitting onset, the end-of-run warnings and the autopilot's rules use the same k. 0 turns the rule "
        "off. See docs/overfitting.md.",
    )


class AutopilotSection(Section):
    """At each evaluation, read the overfitting diagnostics and change one control within these bounds (the rule
    table is dpo/training/autopilot.py RULES; docs/overfitting.md shows it). Off by default."""

    enabled: bool = Field(False, description="Turn the autopilot on.")
    max_nll_weight: float = Field(1.0, ge=0, description="Highest NLL-term weight (regularizers.nll_weight) it sets.")
    nll_weight_step: float = Field(0.25, gt=0, description="How much it raises the NLL-term weight at a time.")
    max_dpop_lambda: float = Field(200.0, ge=0, description="Highest loss.dpop_lambda it sets (losses that take it).")
    dpop_lambda_factor: float = Field(2.0, gt=1, description="Factor by which it raises loss.dpop_lambda.")
    min_shift_lambda: float = Field(
        0.75,
        gt=0,
        le=1,
        description="Lowest DPO-Shift factor loss.shift_lambda it sets (on plain DPO, cDPO and DPO-Shift; 0.75 is "
        "recipes/dpo-shift.yaml's); 1: never.",
    )
    shift_lambda_step: float = Field(0.25, gt=0, lt=1, description="How much it lowers loss.shift_lambda at a time.")
    max_label_smoothing: float = Field(
        0.3, ge=0, lt=0.5, description="Highest loss.label_smoothing it sets (losses that take it)."
    )
    label_smoothing_step: float = Field(0.1, gt=0, lt=0.5, description="How much it raises loss.label_smoothing.")
    lr_factor: float = Field(0.5, gt=0, lt=1, description="Factor of one learning-rate cut.")
    min_lr_factor: float = Field(
        0.125, gt=0, le=1, description="Lowest learning rate, as a fraction of the recipe's schedule; 1: no cuts."
    )
    may_stop: bool = Field(True, description="May stop training (the best checkpoint is then restored).")
    patience: int = Field(3, gt=0, description="Evaluations without a new best of early_stopping.metric: a plateau.")
    cooldown: int = Field(2, ge=0, description="Evaluations a rule rests after it acted, so its effect can show.")
    displacement_nats: float = Field(
        0.5,
        gt=0,
        description="Held-out chosen log-ratio this far below its highest value so far: likelihood displacement.",
    )
    accuracy_gap: float = Field(0.15, gt=0, description="Train minus held-out reward accuracy above this: memorising.")
    loss_rise: float = Field(
        0.10, gt=0, description="Held-out loss this much (relative) above its minimum while the margin grows."
    )
    flip_rate: float | None = Field(
        None,
        ge=0,
        lt=0.5,
        description="Estimated share of flipped training labels; null: the label audit's estimate in data_card.json "
        "(audit.expected_flip_rate_after, written when the recipe has `data.audit` or `label_smoothing: auto`) "
        "when there is one.",
    )


class LoggingSection(Section):
    wandb: bool = Field(False, description="Log to Weights & Biases (offline unless an API key is configured).")
    wandb_project: str = Field("dpo-toolkit", description="wandb project name.")
    wandb_mode: Literal["auto", "offline", "online"] = Field(
        "auto", description="auto: online when an API key is configured, offline otherwise."
    )
    wandb_group: str | None = Field(None, description="wandb run group (a sweep sets it to the sweep's name).")
    tensorboard: bool = Field(False, description="Also write TensorBoard event files under the run directory.")
    progress_bar: bool = Field(True, description="Show a progress bar while training.")
    samples: int = Field(
        4,
        ge=0,
        description="Held-out prompts answered greedily by the trained and the reference model at the end of "
        "training, written to samples.json for the report (0: none).",
    )
    heldout_kl: bool | None = Field(
        None,
        description="Log eval_kl, the policy's KL from the reference on the answers of the first heldout_kl_pairs "
        "held-out pairs, at each evaluation (costs one reference forward per held-out batch with precomputed "
        "reference log-probs). null: on whenever "
        "a reference model is available at evaluation (not under full fine-tuning with precomputed log-probs).",
    )
    heldout_kl_pairs: int | None = Field(
        16,
        gt=0,
        description="eval_kl is computed on the first N held-out pairs (a fixed subsample, with its standard error "
        "eval_se/kl): its full-vocabulary policy and reference forwards cost about N / held-out pairs of an "
        "evaluation. null: all.",
    )


class Recipe(Section):
    """A fully resolved recipe (after inheritance and overrides)."""

    name: str = Field("run", description="Run name; the default output directory is runs/<name>.")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Seed for data split, adapter init and training.")
    model: ModelSection = Field(default_factory=ModelSection)
    peft: PeftSection | None = Field(default_factory=PeftSection, description="null = full fine-tuning.")
    data: DataSection
    loss: LossSection = Field(default_factory=LossSection)
    regularizers: RegularizersSection = Field(default_factory=RegularizersSection)
    early_stopping: EarlyStoppingSection = Field(default_factory=EarlyStoppingSection)
    autopilot: AutopilotSection = Field(default_factory=AutopilotSection)
    training: dict[str, Any] = Field(default_factory=dict, description="Passed through to trl.DPOConfig.")
    logging: LoggingSection = Field(default_factory=LoggingSection)

    @field_validator("name")
    @classmethod
    def _name_stays_inside_the_output_dir(cls, name: str) -> str:
        problem = run_name_problem(name)
        if problem:
            raise ValueError(problem)
        return name

    def to_yaml(self, redact: Callable[[Any], Any] | None = None) -> str:
        """The recipe as YAML that loads back to it. `redact` (dpo.rundir.secrets.redact_data, for a file of a run or
        sweep directory) is applied to the data before it is dumped: redacting the text afterwards would miss a secret
        YAML escaped (a non-ASCII character written as \\xE4, a ' doubled inside single quotes)."""
        data = self.model_dump(mode="json")
        return dump_yaml(redact(data) if redact else data, sort_keys=False, width=UNFOLDED)


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


def _default_of(dotted: str) -> Any:
    """The schema default of a recipe key (None for required keys and free-form `training` keys)."""
    model: type[BaseModel] = Recipe
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None or (i == len(parts) - 1 and field.is_required()):
            return None
        if i == len(parts) - 1:
            default = field.get_default(call_default_factory=True)
            return default.model_dump(mode="json") if isinstance(default, BaseModel) else default
        sub = _section_type(field.annotation)
        if sub is None:
            return None
        model = sub
    return None
