"""Noise benchmark: which controls help, and which hurt, when training labels are flipped. It decides the shipped
defaults (issue 18); it replaces the 40-pair overfitting benchmark (eval/bench_overfitting.py) as the evidence.

    python eval/bench_noise.py                                  # everything below (a day or more on 2 CPU cores)
    python eval/bench_noise.py --datasets arithmetic --noise 0 0.3 --methods plain cdpo autopilot --seeds 0 1 2
    python eval/bench_noise.py --quick                          # tiny random model, 2 steps per run (~2 min; tests)
    python eval/bench_noise.py --no-train                       # what is still to run; tables from what has run

For each data set shipped in data/ (arithmetic, sorting), each share of flipped training labels (0%, 20%, 30%, 40%)
and each seed (0, 1, 2: the seed of the adapter, the data order and which labels are flipped), every method trains
the embedded model with LoRA for the same budget (BUDGET: 160 training pairs, 3 passes, an evaluation every 10
steps). The data set's held-out pairs are split by prompt into a validation part, the run's `data.eval` (what
early stopping, the autopilot and the choice of the best control see), and a test part that nothing reads until
the run is finished; the test labels are the true ones (label noise only touches the training split).

Methods (METHODS): plain DPO (recipes/plain.yaml); each single control at its recipe's defaults, on top of plain DPO
(cDPO, robust DPO, IPO, DPOP, early stopping, DPO-Shift, beta-DPO, ...; TR-DPO with full fine-tuning, as its recipe
ships, since its reference moves; ODPO only on a data set with scores, sorting, as its loss reads each pair's
score gap); two variants at settings no recipe ships (kind "variant": the NLL term at weight 1, DPO-Shift with its
factor moving from 0.75 to 1); `label_smoothing: auto` from the label audit (skipped, with a note, when this version
does not know the value); the autopilot (recipes/quickstart.yaml: plain DPO with `autopilot.enabled: true`). "best
single control" is not trained: per data set and noise level it is the single control (at its recipe's defaults:
no variant) with the highest mean validation accuracy on the seeds all of them have, reported with its test numbers
and marked where its validation number is not the quantity its test number is (validation_caveats: a restored best
checkpoint, chosen on those pairs; TR-DPO's moving reference); reference-free losses (SimPO, ORPO) are not
candidates, because their validation accuracy (of their own reward, the length-normalised log-prob) starts at the
base model's preference rather than at chance. Their runs recorded before the trainer logged that
reward (it logged the summed log-prob) show no validation accuracy: it measured something else.

Reported per data set, noise level and method, as mean over seeds with a 95% bootstrap interval (resampling seeds
and test pairs): test preference accuracy against the true labels (the implicit reward, beta * log-ratio
difference, of the chosen answer above the rejected one's; for a reference-free loss its own reward, the
length-normalised log-prob, which includes the base model's prior: compare those rows on the policy column) and
the policy's own preference (its log-prob of the chosen answer above the rejected one's), the difference from
plain DPO on the same seeds and test pairs (paired bootstrap; for a reference-free loss, of the policy's own
preference), and the steps used (and the step whose weights were scored, where the record has it). Then the
issue's goals, each with a verdict (VERDICTS) and numbers; the first (nothing below plain DPO) is judged on the
methods that run a shipped recipe as it ships (Method.shipped).

Resumable: each finished run is appended to RESULTS/noise.runs.jsonl and skipped when the script starts again;
the tables cover every run in that file. Each run records a fingerprint of the recipe it trained, checked against
METHODS at every start (check_fingerprints): a recipe edited under recorded runs stops the script. Writes
RESULTS/noise.json, RESULTS/noise.md (tables, goals) and RESULTS/noise.html (charts against the share of flipped
labels); noise_quick.* with --quick.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATASETS = {  # name -> the shipped recipe that trains on it (its data.train and expand_pairs are used)
    "arithmetic": "quickstart.yaml",
    "sorting": "sorting.yaml",
}
NOISE = (0.0, 0.2, 0.3, 0.4)
SEEDS = (0, 1, 2)
LINEAR_SHIFT = "loss.shift_lambda_end=1.0"  # DPO-Shift's factor from dpo-shift.yaml's 0.75 up to 1 over training


@dataclass(frozen=True)
class Method:
    recipe: str  # in recipes/
    label: str  # its name in the README's table (whose rows follow METHODS' order)
    overrides: tuple[str, ...] = ()
    # plain | single (a control at its recipe's defaults) | variant (a control at settings no recipe ships: shown,
    # never a candidate for the best single control) | audit | autopilot
    kind: str = "single"

    @property
    def shipped(self) -> bool:
        """Whether the method runs its recipe as it ships (no overrides): what the goal "no shipped recipe below plain
        DPO" judges."""
        return not self.overrides


# plain DPO; what the recipes the README recommends run (the quickstart's autopilot, early stopping, DPO-Shift) and
# the NLL term the quickstart ran until the validation ranking across the noisy cells put it last (0.683; the autopilot
# first, 0.786); then the other controls. The
# recipes the single controls run inherit plain.yaml (odpo.yaml sorting.yaml, with the autopilot off): each is plain DPO
# plus one control, as it ships.
METHODS: dict[str, Method] = {
    "plain": Method("plain.yaml", "plain DPO", kind="plain"),
    # the NLL term (RPO) at weight 1: recipes/quickstart.yaml up to that validation ranking; no recipe ships it
    "nll": Method(
        "plain.yaml", "NLL term (weight 1; the quickstart before)", ("regularizers.nll_weight=1.0",), "variant"
    ),
    "early_stopping": Method("early-stopping.yaml", "early stopping (`early-stopping.yaml`)"),
    "dpo_shift": Method("dpo-shift.yaml", "DPO-Shift (`dpo-shift.yaml`)"),  # one of the newer losses (issue 16)
    # the paper's "increase_linear" schedule for DPO-Shift's factor; level with the fixed factor on validation over
    # the noisy cells (0.750 against 0.751), so the recipe keeps the fixed one
    "dpo_shift_linear": Method(
        "dpo-shift.yaml", "DPO-Shift, f from 0.75 to 1 (not shipped)", (LINEAR_SHIFT,), "variant"
    ),
    "autopilot": Method("quickstart.yaml", "autopilot (`quickstart.yaml`, `noisy-labels.yaml`)", kind="autopilot"),
    "cdpo": Method("cdpo.yaml", "cDPO (smoothing 0.1)"),
    "robust": Method("robust.yaml", "robust DPO"),
    "ipo": Method("ipo.yaml", "IPO"),
    "dpop": Method("dpop.yaml", "DPOP"),
    "beta_dpo": Method("beta-dpo.yaml", "beta-DPO"),
    "label_smoothing_auto": Method(
        "plain.yaml", "cDPO, smoothing from the label audit (`auto`)", ("loss.label_smoothing=auto",), "audit"
    ),
    "rpo": Method("rpo.yaml", "RPO"),
    "wpo": Method("wpo.yaml", "WPO"),
    "ld_dpo": Method("ld-dpo.yaml", "LD-DPO"),
    "neftune": Method("neftune.yaml", "NEFTune"),
    "f_divergence": Method("f-divergence.yaml", "f-divergence DPO"),
    "beta_schedule": Method("beta-schedule.yaml", "beta schedule"),
    "tr_dpo": Method("tr-dpo.yaml", "TR-DPO (full fine-tuning)"),  # the reference moves: no LoRA, no precomputing
    # the other newer losses (issue 16), each at its recipe's defaults; simpo and orpo need no reference
    "dr_dpo": Method("dr-dpo.yaml", "Dr. DPO"),
    "cal_dpo": Method("cal-dpo.yaml", "Cal-DPO"),
    "chi_po": Method("chi-po.yaml", "chi-PO"),
    "orpo": Method("orpo.yaml", "ORPO"),
    "simpo": Method("simpo.yaml", "SimPO"),
    "odpo": Method("odpo.yaml", "ODPO"),  # needs scored data: runs on sorting only (see needs_scores)
}
# every shipped control (the goal "no shipped recipe below plain DPO" judges them all); the last seven joined the grid
# after the others had run, so they run last
DEFAULT_METHODS = ("plain", "nll", "cdpo", "robust", "ipo", "dpop", "early_stopping", "beta_dpo", "cal_dpo",
                   "dpo_shift", "dpo_shift_linear", "chi_po", "dr_dpo", "simpo", "orpo", "odpo", "label_smoothing_auto",
                   "autopilot",
                   "rpo", "wpo", "ld_dpo", "neftune", "f_divergence", "beta_schedule", "tr_dpo")  # fmt: skip

# shipped recipes that are no control of their own: the data sets' recipes, and noisy-labels.yaml, which is plain.yaml
# with the autopilot on, as the autopilot method runs quickstart.yaml
NOT_CONTROLS = {*DATASETS.values(), "noisy-labels.yaml"}


def recipes_outside_the_grid(recipes: Path = REPO / "recipes") -> list[str]:
    """The shipped recipes that no method of the default grid runs as it ships: the goal "no shipped recipe below
    plain DPO" says nothing of them."""
    judged = {METHODS[m].recipe for m in DEFAULT_METHODS if METHODS[m].shipped} | NOT_CONTROLS
    return sorted(path.name for path in recipes.glob("*.yaml") if path.name not in judged)


BUDGET = (  # the same for every method, applied before the method's own keys (which win)
    "data.max_train_pairs=160",
    "data.max_eval_pairs=null",  # the whole validation part
    "training.max_steps=60",  # 3 passes over 160 pairs at 8 per step: room to memorise flipped labels
    "training.eval_steps=10",
    "training.per_device_eval_batch_size=25",
    "logging.heldout_kl=false",  # not read by any method; saves a reference forward per evaluation
    "logging.progress_bar=false",
)
QUICK = ("data.max_train_pairs=16", "data.max_eval_pairs=8", "training.max_steps=2", "training.eval_steps=1",
         "training.per_device_train_batch_size=8", "logging.heldout_kl=false", "logging.progress_bar=false",
         "peft.target_modules=[q_proj, v_proj]")  # fmt: skip
QUICK_TEST_PAIRS = 8
# the test reward of an LD-DPO run (regularizers.ld_alpha) is of its weighted log-probs: marked in its record
LD_WEIGHTED = "ld_weighted"
BOOTSTRAP = 10_000  # draws per interval
# a goal's verdict (goals' "verdict"): the word noise.md shows, and what it means (said under its goals table)
VERDICTS = {
    "yes": "met",
    "within the interval": "the autopilot below the best single control by the point estimate, its interval reaching "
    "0: neither met nor missed beyond the interval",
    "NO": "missed, below beyond the interval (the 0.10 goal: short of 0.10 by the point estimate)",
    "open": "a method the goal needs lacks a seed of the grid there",
}


# ---- data: the held-out pairs, split by prompt into validation and test ----


def split_heldout(dataset: str, work: Path) -> tuple[Path, Path]:
    """(validation file, test file) of pairs from the data set's held-out file, split by prompt (a hash of it, so
    the split is the same on every machine); multi-response rows expanded to pairs as the data set's recipe does."""
    from dpo.config.loading import load_recipe
    from dpo.data.expand import expand_pairs
    from dpo.data.rows import canonical, is_multi

    recipe = load_recipe(REPO / "recipes" / DATASETS[dataset]).recipe
    source = Path(recipe.data.eval if isinstance(recipe.data.eval, str) else recipe.data.eval[0].path)
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    prompts = sorted({canonical(r["prompt"]) for r in rows}, key=lambda p: hashlib.sha256(p.encode()).hexdigest())
    validation_prompts = set(prompts[: len(prompts) // 2])
    expand = recipe.data.expand_pairs
    paths = []
    for part, keep in (("validation", True), ("test", False)):
        chosen_rows = [r for r in rows if (canonical(r["prompt"]) in validation_prompts) == keep]
        if any(map(is_multi, chosen_rows)):
            chosen_rows, _ = expand_pairs(chosen_rows, random.Random(0), min_gap=expand.min_gap,
                                          max_pairs_per_prompt=expand.max_pairs_per_prompt)  # fmt: skip
        path = work / f"{dataset}-{part}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in chosen_rows))
        paths.append(path)
    return paths[0], paths[1]


def test_digest(test_file: Path) -> str:
    """12 hex digits of the test file's bytes. A run's per-pair test strings are positions in that file, paired by
    position with every other run's: runs scored on another split (a data file, the split or the pair expansion
    changed) cannot be compared with them (check_test_split)."""
    return hashlib.sha256(test_file.read_bytes()).hexdigest()[:12]


def check_test_split(runs_file: Path, done: list[dict], test_files: dict[str, Path]) -> None:
    """Every recorded run that names its test split (`test_split`: the runs recorded before it do not) was scored on
    the split this checkout makes; else the benchmark stops (exit 2) naming the first that was not."""
    today = {dataset: test_digest(path) for dataset, path in test_files.items()}
    wrong = [run for run in done if "test_split" in run and run["test_split"] != today.get(run["dataset"])]
    if wrong:
        first = wrong[0]
        print(f"error: {runs_file}: {len(wrong)} recorded run(s) were scored on another test split than this checkout "
              f"makes (first: {first['method']} on {first['dataset']} at {first['noise']:.0%}, seed {first['seed']}, "
              f"split {first['test_split']}, now {today.get(first['dataset'])}): the data files or how they are "
              "split changed; their pairs cannot be paired with new runs'; move them out", file=sys.stderr)  # fmt: skip
        raise SystemExit(2)


def recipe_knows(overrides: list[str]) -> str | None:
    """None when plain DPO with these overrides (after the budget's) is a valid recipe, else why not."""
    import dpo.api
    from dpo.errors import UserError

    try:
        dpo.api.validate(REPO / "recipes" / "plain.yaml", overrides)
    except UserError as exc:
        return str(exc)
    return None


# ---- one run ----


def score_test(run_dir: Path, test_file: Path, limit: int | None) -> dict:
    """Per-pair test results of the run's final weights: the implicit reward's preference and the policy's own.

    The implicit reward is the one the run's loss trains: beta * log-ratio difference where the loss has a
    reference (of LD-DPO's weighted log-probs for an LD-DPO run, as its validation reward); for a reference-free
    loss (SimPO, ORPO), the length-normalised log-prob both of them use. TR-DPO's is against the base model, as
    `dpo eval` scores it: the reference its loss and its validation accuracy moved with is kept in no file. The
    policy's preference is of plain sums.
    Plain-text answers (sorting) are scored without the EOS token the trainer appends to them ("reward",
    "policy"), as every recorded run was, and also with it ("reward_eos", "policy_eos"), as the trainer scores
    the validation pairs; chat answers end with the template's end of turn either way."""
    from dpo.analysis.evaluate import (
        PolicyAndReference,
        implicit_margins,
        load_tokenizer,
        pair_ids,
        sequence_logps,
        summed_and_reward_logps,
    )
    from dpo.config.loading import load_recipe
    from dpo.metrics import implicit_reward_of
    from dpo.training.loss_plan import loss_plan

    loaded = load_recipe(run_dir / "recipe.yaml")
    has_reference = loss_plan(loaded).needs_reference
    pairs = [json.loads(line) for line in test_file.read_text().splitlines() if line.strip()][:limit]
    tokenizer = load_tokenizer(run_dir)
    models = PolicyAndReference(run_dir, loaded.recipe)
    plain_text = any(not isinstance(p["prompt"], list) for p in pairs)
    n, kind, result = len(pairs), implicit_reward_of(has_reference), {"pairs": len(pairs)}
    ld_alpha = loaded.recipe.regularizers.ld_alpha  # LD-DPO: its reward weights the tail of the longer answer
    if ld_alpha is not None:
        result["reward_reduction"] = LD_WEIGHTED
    for suffix, eos in (("", False), ("_eos", True)) if plain_text else (("", False),):
        tokenized = [pair_ids(tokenizer, p, plain_text_eos=eos) for p in pairs]
        prompts = [t[0] for t in tokenized] * 2
        completions = [t[1] for t in tokenized] + [t[2] for t in tokenized]
        logps, reward_logps = {}, {}
        for which in ("policy", "reference") if has_reference else ("policy",):
            with models.use(which) as model:
                scores = sequence_logps(model, prompts, completions, 16, tokenizer.pad_token_id, ld_alpha is not None)
            # the reward as the run's loss reduced the log-probs (LD-DPO's weighting); the policy's preference of sums
            logps[which], reward_logps[which] = summed_and_reward_logps(scores, n, ld_alpha)
        lengths = [len(t[1]) for t in tokenized], [len(t[2]) for t in tokenized]
        # beta > 0 only scales the margins: their sign is all that counts here
        margins = implicit_margins(reward_logps["policy"], reward_logps.get("reference"), lengths, 1.0, kind)
        result[f"reward{suffix}"] = "".join(str(int(m > 0)) for m in margins)
        result[f"policy{suffix}"] = "".join(str(int(a > b)) for a, b in zip(*logps["policy"], strict=True))
    return result


@functools.cache
def ld_weighted(method: str) -> bool:
    """The method's recipe weights the log-probs LD-DPO's way (regularizers.ld_alpha)."""
    from dpo.config.loading import load_recipe
    from dpo.errors import UserError

    spec = METHODS[method]
    try:
        recipe = load_recipe(REPO / "recipes" / spec.recipe, list(spec.overrides)).recipe
    except UserError:  # a method whose recipe this version cannot load (check_fingerprints says so): kept as recorded
        return False
    return recipe.regularizers.ld_alpha is not None


@functools.cache
def reference_free(method: str) -> bool:
    """The method's loss has no reference model (SimPO, ORPO), from the loss table."""
    from dpo.config.loading import load_recipe
    from dpo.errors import UserError
    from dpo.training.loss_plan import loss_plan

    spec = METHODS[method]
    try:
        return not loss_plan(load_recipe(REPO / "recipes" / spec.recipe, list(spec.overrides))).needs_reference
    except UserError:  # a method whose recipe this version cannot load (check_fingerprints says so): as recorded
        return False


@functools.cache
def needs_scores(method: str) -> bool:
    """The method's loss reads each pair's score gap (ODPO), from the loss table: it runs only on scored data."""
    from dpo.config.loading import load_recipe
    from dpo.errors import UserError
    from dpo.training.loss_plan import loss_plan

    spec = METHODS[method]
    try:
        return loss_plan(load_recipe(REPO / "recipes" / spec.recipe, list(spec.overrides))).needs_score_gaps
    except UserError:  # as in reference_free
        return False


# validation_caveats' mark of a method whose runs restore their best checkpoint at the end (steps_used reads it too)
RESTORES_BEST = "validation optimistic, as it restores its best checkpoint, chosen on these pairs"


@functools.cache
def validation_caveats(method: str) -> tuple[str, ...]:
    """Why the method's validation accuracy, which best_single and the ranking across cells are chosen on, is not
    the quantity its test accuracy is, from its recipe: a run that keeps its best checkpoint (early_stopping.patience
    set, or the autopilot on: training restores it at the end) reports that checkpoint's validation accuracy, the
    best of its evaluations of the very pairs it is then ranked on (optimistic); a moving reference
    (regularizers.sync_ref, TR-DPO) is what its validation reward is against, while its test reward is against the
    base model (score_test)."""
    from dpo.config.loading import load_recipe
    from dpo.errors import UserError

    spec = METHODS[method]
    try:
        recipe = load_recipe(REPO / "recipes" / spec.recipe, list(spec.overrides)).recipe
    except UserError:  # as in reference_free
        return ()
    caveats = []
    if recipe.early_stopping.patience is not None or recipe.autopilot.enabled:
        caveats.append(RESTORES_BEST)
    if recipe.regularizers.sync_ref is not None:
        caveats.append("validation against its moving reference, test against the base model")
    return tuple(caveats)


def is_scored(files: tuple[Path, Path]) -> bool:
    """Every held-out pair of the data set carries a score gap (expanded from multi-response rows with scores); the
    training file is the same kind of data, and the run's own check refuses a pair without one."""
    from dpo.data.rows import SCORE_GAP

    rows = [json.loads(line) for path in files for line in path.read_text().splitlines() if line.strip()]
    return bool(rows) and all(SCORE_GAP in row for row in rows)


def validation_accuracy(summary: dict) -> float | None:
    """The validation reward accuracy of the weights the run ended with (the best checkpoint's when restored)."""
    from dpo.rundir.files import kept_weights

    return kept_weights(summary)[1].get("eval_rewards/accuracies")


def run_one(dataset: str, noise: float, seed: int, method: str, base: list[str], files: tuple[Path, Path],
            work: Path, quick: bool) -> dict:  # fmt: skip
    from provenance import provenance  # eval/, on sys.path as the script's folder

    import dpo.api
    from dpo.errors import RunFailed
    from dpo.rundir.files import kept_weights

    spec = METHODS[method]
    validation, test = files
    overrides = run_overrides(dataset, noise, seed, method, base, validation)
    config = fingerprint(method, overrides, work)  # of the recipe as it trains, before any edit during the run
    run_dir = work / "runs" / f"{dataset}-noise{int(noise * 100)}-seed{seed}-{method}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a run cut off before it was recorded starts over
    started = time.time()
    try:
        summary = dpo.api.train(REPO / "recipes" / spec.recipe, overrides=overrides, output_dir=run_dir)
    except RunFailed as exc:  # e.g. non-finite: recorded, so that a restart does not train it (and fail) again
        return {"dataset": dataset, "noise": noise, "seed": seed, "method": method, "config": config,
                "failed": str(exc), "wall_s": round(time.time() - started, 1), **provenance()}  # fmt: skip
    test_result = score_test(run_dir, test, QUICK_TEST_PAIRS if quick else None)
    decisions = (summary.get("autopilot") or {}).get("decisions", [])
    card = run_dir / "data_card.json"
    audit = (json.loads(card.read_text()) if card.exists() else {}).get("audit") or {}
    record = {
        "dataset": dataset, "noise": noise, "seed": seed, "method": method,
        "config": config,
        "steps": summary["steps"], "max_steps": summary["max_steps"], "stop_reason": summary["stop_reason"],
        # the step whose weights were scored: the restored best checkpoint's, or the last (the runs recorded before
        # this field lack it)
        "scored_step": kept_weights(summary)[0],
        "validation_accuracy": validation_accuracy(summary),
        # marks the runs whose trainer logged a reference-free loss's reward per token (see read_runs)
        **({"validation_reward": "per_token"} if reference_free(method) else {}),
        "test": test_result,
        "test_split": test_digest(test),  # which test file the per-pair strings are positions in
        "autopilot_decisions": [{k: d[k] for k in ("step", "rule", "changed")} for d in decisions],
        **({"audit_flip_rate": audit["flip_rate"]["estimate"]} if "flip_rate" in audit else {}),  # label auditing
        "wall_s": round(time.time() - started, 1),
        **provenance(),  # a resumed benchmark may mix code versions and thread counts: each run says its own
    }  # fmt: skip
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # weights are big; the record has what counts
    return record


def run_overrides(dataset: str, noise: float, seed: int, method: str, base: list[str], validation: Path) -> list[str]:
    """The overrides a run trains its method's recipe with: the budget, the data set, the seed, the flipped share."""
    from dpo.config.loading import load_recipe

    if load_recipe(REPO / "recipes" / METHODS[method].recipe).recipe.peft is None:
        # a full fine-tuning recipe (TR-DPO: its reference moves, which LoRA's adapter-disabled base cannot) stays one:
        # the quick budget's LoRA targets would give it a peft section back
        base = [o for o in base if not o.startswith("peft.")]
    overrides = [*base, f"data.eval={validation}", f"seed={seed}", f"name={method}", *METHODS[method].overrides]
    if DATASETS[dataset] != "quickstart.yaml":
        # every method's recipe trains on the quickstart's arithmetic pairs (through plain.yaml, most of them): on
        # another data set, that data set's training file and pair expansion
        data = load_recipe(REPO / "recipes" / DATASETS[dataset]).recipe.data
        overrides.insert(0, f"data.train={Path(data.train if isinstance(data.train, str) else data.train[0].path)}")
        expand = data.expand_pairs
        overrides.insert(1, f"data.expand_pairs={{min_gap: {expand.min_gap}, max_pairs_per_prompt: "
                            f"{expand.max_pairs_per_prompt or 'null'}}}")  # fmt: skip
    if noise > 0:
        overrides.append(f"data.augment=[{{type: label_noise, fraction: {noise}}}]")
    return overrides


def fingerprint(method: str, overrides: list[str], work: Path) -> str:
    """12 hex digits of the run's resolved recipe: the keys that differ from their defaults, without its name (the
    method's key) and with this machine's paths (the repository, the benchmark's work folder) taken out. Two runs
    with the same fingerprint trained the same recipe; a remapped METHODS entry that would train another one shows
    as a mismatch (check_fingerprints). It cannot see a changed schema default, the code, nor the data files'
    contents."""
    from dpo.config.loading import load_recipe

    recipe = load_recipe(REPO / "recipes" / METHODS[method].recipe, overrides).recipe
    values = recipe.model_dump(mode="json", exclude_defaults=True)
    values.pop("name", None)
    text = json.dumps(values, sort_keys=True, ensure_ascii=False)  # paths as written, so the replacements find them
    text = text.replace(str(work), "<work>").replace(str(REPO), "<repo>")
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def check_fingerprints(runs_file: Path, done: list[dict], base: list[str], work: Path,
                       validation: dict[str, Path], skipped: dict[str, str]) -> None:  # fmt: skip
    """Every recorded run's configuration fingerprint is the one its METHODS entry gives now: a recipe edited, or a
    method remapped, under recorded runs would label their numbers with a configuration they did not train. Stops
    the benchmark (exit 2) naming the first run that differs and how many do. Runs of a method this version skips
    (`skipped`), or whose recipe it cannot load (a note says so), are not checked."""
    from dpo.errors import UserError

    unmarked = [run for run in done if "config" not in run]
    if unmarked:
        print(f"error: {runs_file}: {len(unmarked)} recorded run(s) have no configuration fingerprint (first: "
              f"{unmarked[0]['method']} on {unmarked[0]['dataset']} at {unmarked[0]['noise']:.0%}, seed "
              f"{unmarked[0]['seed']}): recorded before runs kept one; train them again into a new results folder",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(2)
    wrong, unloadable = [], {}
    for run in done:
        if run["method"] in skipped or run["method"] in unloadable:
            continue
        overrides = run_overrides(run["dataset"], run["noise"], run["seed"], run["method"], base,
                                  validation[run["dataset"]])  # fmt: skip
        try:
            if run["config"] != fingerprint(run["method"], overrides, work):
                wrong.append(run)
        except UserError as exc:  # a method outside --methods whose recipe this version cannot load
            unloadable[run["method"]] = str(exc)
            print(f"note: not checking the recorded {run['method']} runs: {exc}", flush=True)
    if wrong:
        first = wrong[0]
        print(f"error: {runs_file}: {len(wrong)} recorded run(s) trained another configuration than METHODS gives "
              f"now (first: {first['method']} on {first['dataset']} at {first['noise']:.0%}, seed {first['seed']}, "
              f"fingerprint {first['config']}); map the method to the recipe and overrides it ran, or move its "
              "runs out", file=sys.stderr)  # fmt: skip
        raise SystemExit(2)


def read_runs(runs_file: Path, quiet: bool = False) -> list[dict]:
    """The runs recorded so far (a run whose training failed has "failed" and no test result: see finished); a
    last line cut off by a kill is left out (that run trains again), and so is a second record of a run (two
    invocations that trained it at once: the first is kept), and the validation accuracy of a reference-free run
    recorded before its reward was logged per token, and an LD-DPO run whose test reward was not weighted (it trains
    again). A run of a method METHODS no longer names stops the benchmark with its line: its numbers cannot be
    labelled or judged. `quiet`: without the notes on what is left out (a re-read before each run)."""
    runs, first_line = [], {}

    def note(text: str) -> None:
        if not quiet:
            print(f"note: {text}", flush=True)

    lines = runs_file.read_text().splitlines() if runs_file.exists() else []
    for number, line in enumerate(lines, 1):
        try:
            run = json.loads(line)
        except json.JSONDecodeError:
            note(f"skipping a cut-off line of {runs_file}")
            continue
        if run.get("method") not in METHODS:
            print(f"error: {runs_file}: line {number}: method {run.get('method')!r} is not in METHODS "
                  f"({', '.join(METHODS)}); rename it there or move its runs out", file=sys.stderr)  # fmt: skip
            raise SystemExit(2)
        key = run_key(run)
        if "test" in run and ld_weighted(run["method"]) and run["test"].get("reward_reduction") != LD_WEIGHTED:
            # scored with plain log-prob sums before the benchmark weighted an LD-DPO run's test reward as its loss
            # does: not comparable with its validation accuracy, nor with the later runs'; it trains again (a record
            # of that run further down counts)
            note(f"{runs_file}: line {number}: {key} scored its test reward unweighted: left out, it trains "
                 "again")  # fmt: skip
            continue
        if key in first_line:
            note(f"{runs_file}: line {number} records {key} again (first on line {first_line[key]}): "
                 "left out")  # fmt: skip
            continue
        first_line[key] = number
        if "validation_reward" not in run and reference_free(run["method"]):
            # recorded when the trainer logged a reference-free loss's reward as the summed log-prob (the policy's
            # own preference), not the per-token log-prob the loss trains: not comparable with the later runs'
            run["validation_accuracy"] = None
        runs.append(run)
    return runs


def run_key(run: dict) -> tuple:
    """What names one run of the grid: (data set, noise, seed, method)."""
    return run["dataset"], run["noise"], run["seed"], run["method"]


def finished(runs: list[dict]) -> list[dict]:
    """The runs that trained to the end and were scored (a failed one is recorded with "failed" instead)."""
    return [run for run in runs if "failed" not in run]


def append_run(runs_file: Path, record: dict) -> None:
    """One record as one line; a last line cut off by a kill is ended first, so that this one stays readable."""
    with runs_file.open("a+b") as f:
        if f.tell() and (f.seek(-1, 2), f.read(1))[1] != b"\n":
            f.write(b"\n")
        f.write((json.dumps(record) + "\n").encode())


def remaining(todo: list[tuple], done: list[dict]) -> str:
    """What --no-train prints: the runs still to train, a line per data set, noise level and method (its seeds),
    and the time they would take at the pace of the recorded runs (their wall_s, as those ran): a method's own runs
    on the data set where it has some (full fine-tuning, as TR-DPO ships, is slower than LoRA); else the data set's
    mean, scaled by how much slower or faster than the other methods there the method's runs on other data sets
    were; else the data set's mean."""
    if not todo:
        return "to train: nothing; every run of this grid is recorded"
    missing: dict[tuple, list[int]] = {}
    for dataset, noise, seed, method, _ in todo:
        missing.setdefault((dataset, noise, method), []).append(seed)
    lines = [f"  {d} {n:.0%} {m}: seeds {' '.join(map(str, seeds))}" for (d, n, m), seeds in missing.items()]
    walls: dict[str, dict[str, list[float]]] = {}  # data set -> method -> the wall_s of its timed runs
    for run in done:
        if "wall_s" in run:
            walls.setdefault(run["dataset"], {}).setdefault(run["method"], []).append(run["wall_s"])

    def mean_wall(dataset: str, but: str | None = None) -> float:
        return _mean(w for method, ws in walls[dataset].items() if method != but for w in ws)

    seconds, unpaced = 0.0, set()
    for dataset, _, _, method, _ in todo:
        if dataset not in walls:
            unpaced.add(dataset)
        elif method in walls[dataset]:
            seconds += _mean(walls[dataset][method])
        else:  # its runs elsewhere against the other methods' there (its own would pull the ratio toward 1)
            ratios = [_mean(by[method]) / mean_wall(d, but=method) for d, by in walls.items()
                      if method in by and len(by) > 1]  # fmt: skip
            seconds += mean_wall(dataset) * (_mean(ratios) if ratios else 1.0)
    estimate = f"about {seconds / 3600:.1f} run-hours at the recorded runs' pace (two at a time halves the wall clock)"
    if unpaced:
        estimate += f" (and {', '.join(sorted(unpaced))}, with no recorded run to time)"
    return "\n".join([f"to train: {len(todo)} runs, {estimate}:", *lines])


# ---- statistics ----


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def bootstrap(
    runs: list[dict],
    field: str,
    baseline: list[dict] | None = None,
    seed: int = 0,
    prompts: list[list[int]] | None = None,
) -> tuple:
    """(mean, low, high): mean test accuracy over `runs` (per-pair 0/1 strings in run["test"][field]) with a 95%
    interval from BOOTSTRAP draws that resample seeds and test prompts; with `baseline` (the same seeds, same test
    pairs), of the difference run - baseline, each draw taking the same seeds and pairs from both (paired on seed
    and pair position).

    `prompts` groups the test pairs' positions by prompt (test_prompts): the pairs one prompt expands to share its
    question, so they are resampled together, or the interval would be too narrow (sorting has three pairs per
    prompt). None: every pair its own prompt. Three seeds resampled by a percentile bootstrap still understate the
    spread between seeds: the intervals are, if anything, narrow.

    A draw picks seeds and prompts with replacement; what it computes, the mean over the drawn seeds of the mean over
    the drawn pairs, depends only on how often each seed and each prompt was drawn, so the draws are counts
    (multinomial) and the statistic is (seed counts x per-seed, per-prompt sums x prompt counts) / (seeds x pairs),
    whole numbers until that last division: a difference of exactly 0 stays exactly 0. `seed` fixes the draws: every
    call with the same numbers of seeds and prompts resamples alike (_draws)."""
    import numpy as np

    def matrix(records):
        rows = np.array([np.frombuffer(r["test"][field].encode(), dtype=np.uint8) - ord("0") for r in records],
                        dtype=np.int64)  # fmt: skip
        if not np.isin(rows, (0, 1)).all():  # a corrupt record: int(c) of the per-pair loop this replaced raised too
            raise ValueError(f"test {field} strings must hold only 0 and 1")
        return rows

    lengths = {len(r["test"][field]) for r in runs + (baseline or [])}
    if len(lengths) > 1:  # positions are paired across runs: they must be positions in one test file
        raise ValueError(f"test results of {sorted(lengths)} pairs: runs scored on different test splits cannot be "
                         "paired (check_test_split)")  # fmt: skip
    values = matrix(runs) - (matrix(baseline) if baseline else 0)  # seeds x pairs: 0/1, or -1/0/1 for a difference
    n_seeds, n_pairs = values.shape
    # quick runs score only the first pairs: groups cut to them
    groups = [[p for p in group if p < n_pairs] for group in prompts] if prompts else [[p] for p in range(n_pairs)]
    groups = [group for group in groups if group]
    # float64 from here: whole numbers far below 2**53, so every sum is exact
    sums = np.stack([values[:, group].sum(axis=1) for group in groups], axis=1).astype(float)  # seeds x prompts
    sizes = np.array([len(group) for group in groups], dtype=float)
    seed_counts, prompt_counts = _draws(n_seeds, len(groups), seed)
    totals = np.einsum("bg,bg->b", seed_counts @ sums, prompt_counts)
    draws = np.sort(totals / (n_seeds * (prompt_counts @ sizes)))
    point = values.sum() / (n_seeds * n_pairs)
    # as many draws below the low end as above the high end (250 each)
    ends = draws[int(0.025 * BOOTSTRAP)], draws[int(0.975 * BOOTSTRAP) - 1]
    return tuple(float(value) + 0.0 for value in (point, *ends))  # + 0.0: no -0.0, shown as "-0.000"


@functools.cache
def _draws(n_seeds: int, n_prompts: int, seed: int) -> tuple:
    """BOOTSTRAP draws of seeds and prompts with replacement, as counts: (draws x seeds, draws x prompts), floats.
    The same for every call with these shapes and seed (drawn once: drawing is most of a bootstrap's time)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    seeds = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=BOOTSTRAP)
    prompts = rng.multinomial(n_prompts, np.full(n_prompts, 1 / n_prompts), size=BOOTSTRAP)
    return seeds.astype(float), prompts.astype(float)


def test_prompts(test_file: Path) -> list[list[int]]:
    """The test file's pair positions grouped by prompt, in order of first appearance (bootstrap's unit)."""
    from dpo.data.rows import canonical

    groups: dict[str, list[int]] = {}
    lines = [line for line in test_file.read_text().splitlines() if line.strip()]
    for position, line in enumerate(lines):
        groups.setdefault(canonical(json.loads(line)["prompt"]), []).append(position)
    return list(groups.values())


def aggregate(done: list[dict], skipped: dict[str, str], prompts: dict[str, list[list[int]]] | None = None,
              applicable: dict[str, set[str]] | None = None) -> dict:  # fmt: skip
    """Per data set and noise level: each method's mean, interval and difference from plain; the best single
    control chosen on validation; the goals. `prompts`: per data set, its test pairs grouped by prompt (the
    bootstrap's unit; None: each pair its own). `applicable`: per data set, the methods that run on it (a loss that
    needs scores runs only where pairs have them; main decides it from the data, is_scored); None, for hand-made
    runs: every method but those, which count where they have a run."""
    prompts = prompts or {}
    if applicable is None:
        ran_on: dict[str, set[str]] = {}
        for r in done:
            ran_on.setdefault(r["dataset"], set()).add(r["method"])
        applicable = {d: {m for m in METHODS if m in ran or not needs_scores(m)} for d, ran in ran_on.items()}
    cells = {}
    for dataset in sorted({r["dataset"] for r in done}):
        for noise in sorted({r["noise"] for r in done if r["dataset"] == dataset}):
            group = [r for r in done if r["dataset"] == dataset and r["noise"] == noise]
            by_method = {}
            for r in group:
                by_method.setdefault(r["method"], []).append(r)
            plain = sorted(by_method.get("plain", []), key=lambda r: r["seed"])
            rows = {}
            for method, runs in by_method.items():
                runs = sorted(runs, key=lambda r: r["seed"])
                rows[method] = _row(method, runs, plain, prompts.get(dataset))
            # Reference-free losses are left out of the choice: their validation "reward accuracy" (of the per-token
            # log-prob) starts at the base model's preference (about 0.8 here), not at chance like a log-ratio's.
            singles = [
                m
                for m in rows
                if METHODS[m].kind == "single" and not reference_free(m) and rows[m]["validation_accuracy"] is not None
            ]
            # chosen on the seeds every candidate has, so that no method wins by having run on easier seeds (none
            # shared: no choice)
            shared = set.intersection(*({r["seed"] for r in by_method[m]} for m in singles)) if singles else set()
            if shared:
                best = max(singles, key=lambda m: ranked_by_validation(
                    m, _mean(r["validation_accuracy"] for r in by_method[m] if r["seed"] in shared)))  # fmt: skip
                # a candidate not yet run on every seed, or without a validation accuracy on one (it cannot be
                # averaged, so it is left out above), may take its place
                unrun = [m for m in choice_candidates(applicable.get(dataset, set()))
                         if not set(SEEDS) <= set(rows.get(m, {}).get("validation_seeds", []))]  # fmt: skip
                # the mean it was chosen by (its row's validation_accuracy, like its test numbers, is of all its seeds)
                chosen_by = _mean(r["validation_accuracy"] for r in by_method[best] if r["seed"] in shared)
                rows["best_single"] = {**rows[best], "chosen": best, "chosen_on_seeds": sorted(shared),
                                       "chosen_by_validation": chosen_by, "candidates_not_run": unrun,
                                       "caveats": list(validation_caveats(best))}  # fmt: skip
                if "autopilot" in by_method:  # paired, on the seeds both have
                    best_by_seed = {r["seed"]: r for r in by_method[best]}
                    auto = [
                        r for r in sorted(by_method["autopilot"], key=lambda r: r["seed"]) if r["seed"] in best_by_seed
                    ]
                    if auto:
                        paired_best = [best_by_seed[r["seed"]] for r in auto]
                        rows["autopilot"]["vs_best_single"] = bootstrap(
                            auto, "reward", paired_best, prompts=prompts.get(dataset)
                        )
            cells[f"{dataset}/{noise}"] = {"dataset": dataset, "noise": noise, "methods": rows}
    # the data sets whose runs were scored with EOS too: score_test does so for plain-text answers only (the runs
    # recorded before it did are scored without EOS alone, like every headline number)
    plain_text = {r["dataset"] for r in done if "reward_eos" in r["test"]}
    return {"cells": cells, "skipped": skipped, "goals": goals(cells, applicable, plain_text),
            "across_noisy_cells": across_noisy_cells(done)}  # fmt: skip


def choice_candidates(applicable: set[str]) -> list[str]:
    """The single controls of the default grid that best_single is chosen among (on validation) on a data set
    where the methods `applicable` run: each at its recipe's defaults, as the issue has it. The variants no recipe
    ships (kind "variant": `nll`, `dpo_shift_linear`) are not candidates: an extra candidate that wins on validation
    and tests lower makes the goal against the best single control easier (on arithmetic at 30% dpo_shift_linear
    did)."""
    return [m for m in DEFAULT_METHODS if METHODS[m].kind == "single" and not reference_free(m)
            and m in applicable]  # fmt: skip


def ranked_by_validation(method: str, accuracy: float) -> tuple:
    """Sort key for choosing on validation accuracy: the accuracy to 6 decimals (the trainer logs float32 means, so
    two methods with the same count of correct pairs differ in the 8th; different counts of 100 or 90 pairs per
    seed differ in the 4th), then, on a tie, the method METHODS lists first."""
    return round(accuracy, 6), -list(METHODS).index(method)


def across_noisy_cells(done: list[dict]) -> dict:
    """What a recipe for labels of unknown noise on a task of unknown kind (recipes/noisy-labels.yaml) is chosen on:
    per method, its validation accuracy averaged over the noisy cells of each data set, then over the data sets
    (each counts once, however many noise levels ran on it), and the noisy cells where it is below plain DPO on
    validation. Only methods that ran in every noisy cell take part, each cell on the seeds all of them share (as
    for best_single); reference-free losses are left out (their validation accuracy starts at the base model's
    preference), and so are the variants no recipe ships (kind "variant"), which no recipe can be: their numbers,
    on the seeds they share with the ranked methods, are listed apart. `caveats`: the ranked methods and variants
    whose validation number is not what their test number is (validation_caveats; early stopping and the autopilot
    report the checkpoint they restore, chosen on those same pairs: an optimistic number)."""
    noisy = sorted({(r["dataset"], r["noise"]) for r in done if r["noise"] > 0})
    in_cell = {cell: [r for r in done if (r["dataset"], r["noise"]) == cell] for cell in noisy}
    # a method whose every run in the cell has a validation accuracy (one without cannot be averaged)
    ran = {cell: {r["method"] for r in runs} - {r["method"] for r in runs if r["validation_accuracy"] is None}
           for cell, runs in in_cell.items()}  # fmt: skip
    if not noisy:
        return {
            "cells": [],
            "validation_accuracy": {},
            "variants": {},
            "below_plain": {},
            "caveats": {},
            "not_in_every_cell": [],
            "reference_free": [],
        }
    taking_part = sorted(m for m in set.intersection(*ran.values()) if not reference_free(m))
    everywhere = [m for m in taking_part if METHODS[m].kind != "variant"]
    by_dataset: dict[str, dict[str, list[float]]] = {m: {} for m in taking_part}
    below: dict[str, list[str]] = {m: [] for m in taking_part}
    for dataset, noise in noisy:
        runs = [r for r in done if (r["dataset"], r["noise"]) == (dataset, noise) and r["method"] in taking_part]
        seeds_of = [{r["seed"] for r in runs if r["method"] == m} for m in everywhere]
        shared = set.intersection(*seeds_of) if seeds_of else set()  # no ranked method in every cell: none to rank
        value = {}
        for m in taking_part:
            seeds = shared & {r["seed"] for r in runs if r["method"] == m}  # a variant: the shared seeds it has
            if seeds:
                value[m] = _mean(r["validation_accuracy"] for r in runs if r["method"] == m and r["seed"] in seeds)
        for m, v in value.items():
            by_dataset[m].setdefault(dataset, []).append(v)
            if "plain" in value and v < value["plain"]:
                below[m].append(f"{dataset}/{noise}")
    means = {m: _mean(_mean(v) for v in by_dataset[m].values()) for m in taking_part if by_dataset[m]}

    def ranked(methods):
        return dict(sorted(((m, means[m]) for m in methods if m in means), key=lambda kv: ranked_by_validation(*kv),
                           reverse=True))  # fmt: skip

    return {
        "cells": [f"{d}/{n}" for d, n in noisy],
        "validation_accuracy": ranked(everywhere),
        "variants": ranked(m for m in taking_part if m not in everywhere),
        "below_plain": below,
        "caveats": {m: list(validation_caveats(m)) for m in means if validation_caveats(m)},
        # with every run's validation accuracy, that is: one run without leaves its method out of the ranking
        "not_in_every_cell": sorted(
            {r["method"] for runs in in_cell.values() for r in runs}
            - set(taking_part)
            - {m for m in {r["method"] for r in done} if reference_free(m)}
        ),  # fmt: skip
        # named apart, whether or not they ran everywhere (and whatever their runs recorded on validation)
        "reference_free": sorted({r["method"] for r in done if r["noise"] > 0 and reference_free(r["method"])}),
    }


def _row(method: str, runs: list[dict], plain: list[dict], prompts: list[list[int]] | None = None) -> dict:
    """One method's numbers in one cell. Its difference from plain DPO (`vs_plain`, paired on seeds and test pairs)
    is of the test accuracy; for a reference-free loss it is of the policy's own preference (`vs_plain_on`), the
    one number both measure alike: its own reward starts at the base model's preference, plain DPO's at chance."""
    paired = [next((p for p in plain if p["seed"] == r["seed"]), None) for r in runs]
    row = {
        "seeds": [r["seed"] for r in runs],
        "validation_accuracy": _mean(r["validation_accuracy"] for r in runs)
        if all(r["validation_accuracy"] is not None for r in runs) else None,
        "test_accuracy": bootstrap(runs, "reward", prompts=prompts),
        "test_policy_preference": bootstrap(runs, "policy", prompts=prompts),
        # the seeds whose run has a validation accuracy: a single control short of one is not chosen (as not run)
        "validation_seeds": [r["seed"] for r in runs if r["validation_accuracy"] is not None],
        "steps": _mean(r["steps"] for r in runs),
        # the step whose weights were scored (a restored best checkpoint's), where every run records it
        "scored_step": _mean(r["scored_step"] for r in runs)
        if all(r.get("scored_step") is not None for r in runs) else None,
        "max_steps": runs[0]["max_steps"],
        "stop_reasons": sorted({r["stop_reason"] for r in runs}),
    }  # fmt: skip
    if plain and all(p is not None for p in paired):
        row["vs_plain_on"] = "policy" if reference_free(method) else "reward"
        row["vs_plain"] = bootstrap(runs, row["vs_plain_on"], paired, prompts=prompts)
    return row


def versus_plain(row: dict, decimals: int = 3) -> str:
    """A row's difference from plain DPO with its interval, or "-" where plain DPO lacks the row's seeds."""
    return interval(row["vs_plain"], decimals, signed=True) + _on_policy(row) if "vs_plain" in row else "-"


def _on_policy(row: dict) -> str:
    """The mark of a difference from plain DPO taken on the policy's preference (a reference-free loss)."""
    return " (policy)" if row["vs_plain_on"] == "policy" else ""


def _below(method: str, row: dict) -> str:
    """A method and its difference from plain DPO, for a goal's numbers: "nll -0.137", "simpo -0.010 (policy)"."""
    return f"{method} {row['vs_plain'][0]:+.3f}{_on_policy(row)}"


def goals(cells: dict, applicable: dict[str, set[str]], plain_text: set[str] = frozenset()) -> list[dict]:
    """The issue's goals per noisy cell, each with a verdict from VERDICTS: no shipped recipe below plain DPO beyond
    the interval (a control that runs with overrides is listed when below, but not judged; "open" while a shipped
    recipe of the default grid that runs on the data set, or plain DPO, has not run on every seed of the grid in the
    cell); the autopilot at least as good as the best single control (versus_best_verdict; open while the
    autopilot, or a candidate single control, which may be chosen instead, has not run on every seed in the cell
    with a validation accuracy; plain DPO, which this goal does not read, may lack one); the autopilot 0.10 above
    plain DPO at 30% noise, by the point estimate. Every noisy cell gets a row for each goal that applies: one whose
    runs are missing reads "open". `applicable`: per data set, the methods that run on it. `plain_text`: the data
    sets whose answers are plain text, whose test numbers are scored without the EOS token the validation pairs are
    scored with (the first goal's numbers say so there: which methods fall below plain DPO depends on it)."""
    datasets = {cell["dataset"] for cell in cells.values()}
    expected = {d: [m for m in DEFAULT_METHODS if METHODS[m].shipped and m in applicable.get(d, set())]
                for d in datasets}  # fmt: skip
    # the single controls best_single is chosen among (on validation): one not run yet may take its place
    candidates = {d: choice_candidates(applicable.get(d, set())) for d in datasets}
    versus_best_goal = "autopilot >= best single control (chosen on validation)"
    versus_plain_goal = "autopilot >= plain + 0.10 in test accuracy"
    found = []
    for key, cell in cells.items():
        if cell["noise"] == 0:
            continue
        rows = cell["methods"]
        # best_single is a copy of the row of the method it names, which is judged under its own name already
        compared = {m: r for m, r in rows.items() if m not in ("plain", "best_single") and "vs_plain" in r}
        below = [m for m, r in compared.items() if r["vs_plain"][2] < 0]
        shipped_below = [m for m in below if METHODS[m].shipped]
        # a run without seeds shared with plain DPO has no difference to judge: as good as not run; a method judged
        # met has run on every seed of the grid (on fewer its interval may still move; one below on the seeds it
        # has misses the goal already, as more seeds seldom lift it)
        complete = {m for m, r in compared.items() if set(SEEDS) <= set(r["seeds"])}
        if set(SEEDS) <= set(rows.get("plain", {}).get("seeds", [])):
            complete.add("plain")  # every other method is judged against it: it has to have run on every seed too
        missing = [m for m in expected[cell["dataset"]] if m not in complete]
        detail = ", ".join(_below(m, rows[m]) for m in shipped_below) or "none below"
        if others := [m for m in below if m not in shipped_below]:
            detail += f" (not shipped as run: {', '.join(_below(m, rows[m]) for m in others)})"
        if missing:
            detail += f"; not run here yet: {', '.join(_seeds_run(m, rows) for m in missing)}"
        if cell["dataset"] in plain_text:
            detail += "; test scored without EOS, unlike validation (see the note on EOS above the tables)"
        verdict = "NO" if shipped_below else "open" if missing else "yes"
        found.append({"cell": key, "goal": "no shipped recipe below plain beyond the interval", "verdict": verdict,
                      "detail": detail})  # fmt: skip
        if "vs_best_single" in rows.get("autopilot", {}):
            diff = rows["autopilot"]["vs_best_single"]
            best = rows["best_single"]
            # the autopilot and every single control it may be compared with, each on every seed of the grid (their
            # own: neither the choice on validation nor this difference reads plain DPO), a candidate with a
            # validation accuracy on each (the choice reads it)
            unrun = [] if set(SEEDS) <= set(rows["autopilot"]["seeds"]) else [_seeds_run("autopilot", rows, False)]
            unrun += [_validated(m, rows) for m in candidates[cell["dataset"]]
                      if not set(SEEDS) <= set(rows.get(m, {}).get("validation_seeds", []))]  # fmt: skip
            pending = f"; open until these have run on every seed: {', '.join(unrun)}" if unrun else ""
            caveats = "".join(f"; {best['chosen']}: {caveat}" for caveat in best.get("caveats", []))
            found.append({"cell": key, "goal": versus_best_goal,
                          "verdict": "open" if unrun else versus_best_verdict(diff),
                          "detail": f"autopilot - {best['chosen']}: {diff[0]:+.3f} "
                                    f"[{diff[1]:+.3f}, {diff[2]:+.3f}]{caveats}{pending}"})  # fmt: skip
        else:  # nothing to compare yet: no autopilot run, or no single control shares a seed with the others
            why = (
                "no best single control on the autopilot's seeds yet"
                if "autopilot" in rows
                else "autopilot not run here yet"
            )
            found.append({"cell": key, "goal": versus_best_goal, "verdict": "open", "detail": why})
        if cell["noise"] == 0.3 and "vs_plain" in rows.get("autopilot", {}):
            diff = rows["autopilot"]["vs_plain"]
            unrun = [m for m in ("autopilot", "plain") if not set(SEEDS) <= set(rows.get(m, {}).get("seeds", []))]
            pending = f"; open until these have run on every seed: {', '.join(unrun)}" if unrun else ""
            found.append({"cell": key, "goal": versus_plain_goal,
                          "verdict": "open" if unrun else "yes" if diff[0] >= 0.10 else "NO",
                          "detail": f"{diff[0]:+.3f} [{diff[1]:+.3f}, {diff[2]:+.3f}]{pending}"})  # fmt: skip
        elif cell["noise"] == 0.3:  # the autopilot not run here yet, or plain DPO short of one of its seeds
            found.append({"cell": key, "goal": versus_plain_goal, "verdict": "open",
                          "detail": f"the difference needs plain DPO on each of the autopilot's seeds: "
                                    f"{_seeds_run('autopilot', rows, with_plain=False)}, "
                                    f"{_seeds_run('plain', rows, with_plain=False)}"})  # fmt: skip
    return found


def versus_best_verdict(diff: tuple) -> str:
    """The autopilot against the best single control from (point, low, high) of their difference: "yes" at or above
    it by the point estimate and not below it beyond the interval; "within the interval" below it by the point
    estimate with an interval that reaches 0 (an upper end exactly at 0 does); "NO" below it beyond the interval
    (upper end below 0)."""
    point, _, high = diff
    if high < 0:
        return "NO"
    return "yes" if point >= 0 else "within the interval"


def _validated(method: str, rows: dict) -> str:
    """A candidate for best_single short of a seed for the choice, as goals() names it: by _seeds_run, or, where a
    run it has lacks its validation accuracy, with the count of those that have one."""
    row = rows.get(method, {})
    validated = [s for s in row.get("validation_seeds", []) if s in SEEDS]
    if len(validated) < len([s for s in row.get("seeds", []) if s in SEEDS]):
        return f"{method} ({len(validated)} of {len(SEEDS)} seeds with a validation accuracy)"
    return _seeds_run(method, rows, with_plain=False)


def _seeds_run(method: str, rows: dict, with_plain: bool = True) -> str:
    """A method not yet run on every seed of the grid in a cell, as goals() names it: with its count where it has
    some ("tr_dpo (2 of 3 seeds)"); `with_plain`: of the seeds plain DPO has too (a difference from plain DPO needs
    both runs; plain DPO, short of a seed, is named with its own count)."""
    plain = set(rows.get("plain", {}).get("seeds", [])) if with_plain and method != "plain" else set(SEEDS)
    seeds = [s for s in rows.get(method, {}).get("seeds", []) if s in SEEDS and s in plain]
    return f"{method} ({len(seeds)} of {len(SEEDS)} seeds)" if seeds else method


def markdown(result: dict) -> str:
    lines = [
        "Test preference accuracy (true labels; implicit reward) and the policy's own preference, mean over seeds "
        f"with 95% bootstrap intervals ({BOOTSTRAP:,} draws resampling seeds and test prompts, a prompt's pairs "
        "together); difference from plain DPO on the same seeds and pairs (of the policy's preference for a "
        "reference-free loss, marked (policy)); steps used of the budget (and the step whose weights were scored, "
        "where the runs record it; `scored ?` where they restore their best checkpoint but were recorded before the "
        "step was). `best_single` is chosen on validation accuracy among the single controls at "
        "their recipes' defaults, not the variants no recipe ships (`nll`, `dpo_shift_linear`; a tie goes to the "
        "method listed first), and marked where its validation number is not the quantity its test number is. "
        "EOS: plain-text test answers (sorting) are scored without the EOS token, as every recorded run was, "
        "while the trainer scores the validation pairs with it (eval/bench_noise_eos.py compares the scoring "
        "with it).",
        "",
        "| data | noise | method | test accuracy | vs plain | policy prefers chosen | validation acc. | steps |",
        "|---|---|---|---|---|---|---|---|",
    ]

    for cell in result["cells"].values():
        for method, r in cell["methods"].items():
            name = method
            if method == "best_single":
                name = f"best_single ({r['chosen']}; chosen on seeds {', '.join(map(str, r['chosen_on_seeds']))}"
                if r.get("candidates_not_run"):  # provisional
                    name += f"; provisional: {len(r['candidates_not_run'])} candidates not run on every seed yet"
                name += "".join(f"; {caveat}" for caveat in r.get("caveats", [])) + ")"
            vs = versus_plain(r)
            val = f"{r['validation_accuracy']:.3f}" if r["validation_accuracy"] is not None else "-"
            lines.append(
                f"| {cell['dataset']} | {cell['noise']:.0%} | {name} | {interval(r['test_accuracy'])} | {vs} | "
                f"{interval(r['test_policy_preference'])} | {val} | "
                f"{steps_used(r, r['chosen'] if method == 'best_single' else method)} |"
            )
    if result["skipped"]:
        lines += ["", *(f"Skipped `{m}`: {why}" for m, why in result["skipped"].items())]
    if result.get("failed"):
        lines += ["", "Runs whose training failed (recorded, so not trained again; not in the statistics, so the "
                      "method is one seed short there):",
                  *(f"- `{r['method']}` on {r['dataset']} at {r['noise']:.0%}, seed {r['seed']}: {r['failed']}"
                    for r in result["failed"])]  # fmt: skip
    across = result.get("across_noisy_cells") or {}
    if across.get("validation_accuracy"):

        def entry(method, value):
            cells = across["below_plain"][method]
            notes = [f"below plain on {', '.join(cells)}" if cells else "never below plain"]
            return f"{method} {value:.3f} ({'; '.join(notes + across['caveats'].get(method, []))})"

        ranked = ", ".join(entry(*kv) for kv in across["validation_accuracy"].items())
        variants = ", ".join(entry(*kv) for kv in across["variants"].items()) or "none"
        unranked = ", ".join(across["not_in_every_cell"]) or "none"
        free = ", ".join(across["reference_free"]) or "none"
        lines += ["", f"Validation accuracy across the noisy cells ({', '.join(across['cells'])}), averaged per data "
                      f"set and then over data sets, on the seeds the methods share: {ranked}. Variants no recipe "
                      f"ships, so not ranked: {variants}. Not in every noisy cell, so not ranked: {unranked}. "
                      "Reference-free, so not ranked wherever they ran (their validation accuracy starts at the base "
                      f"model's preference): {free}."]  # fmt: skip
    if result["goals"]:
        lines += ["", "| cell | goal | verdict | numbers |", "|---|---|---|---|"]
        lines += [f"| {g['cell']} | {g['goal']} | {g['verdict']} | {g['detail']} |" for g in result["goals"]]
        lines += [
            "",
            "Verdicts: " + "; ".join(f"{word}: {meaning}" for word, meaning in VERDICTS.items()) + ". "
            'The autopilot is at least as good as the best single control ("yes") where its difference from '
            "it is at least 0 by the point estimate and not below 0 beyond the interval. Differences are "
            "counts of test pairs, so a bootstrap draw of exactly 0 is common and an interval end can land "
            f"exactly on 0 (shown as +0.000): such an end reaches 0, at least 2.5% of the "
            f"{BOOTSTRAP:,} draws being at 0 or beyond it, so that difference is not beyond the interval.",
        ]
        if outside := ", ".join(f"`{name}`" for name in recipes_outside_the_grid()):
            lines += ["", f"Shipped recipes outside the grid, so not judged by the first goal: {outside}."]
    lines += ["", "The README's table (the same numbers, two decimals):", "", *readme_table(result)]
    return "\n".join(lines) + "\n"


def steps_used(row: dict, method: str) -> str:
    """A row's steps column: "60 / 60", and ", scored 40" where its runs record the step whose weights were scored.
    A method that restores its best checkpoint (validation_caveats) whose runs do not all record that step (runs
    recorded before scored_step was) gets ", scored ?": "60 / 60" alone would read as the last step's weights."""
    if row.get("scored_step") is not None:
        scored = f", scored {row['scored_step']:.0f}"
    else:
        scored = ", scored ?" if RESTORES_BEST in validation_caveats(method) else ""
    return f"{row['steps']:.0f} / {row['max_steps']}{scored}"


def readme_table(result: dict) -> list[str]:
    """The README's table: per data set and noise level, the methods in METHODS' order, under their labels, two
    decimals. A reference-free loss's test accuracy is its own reward, which starts at the base model's preference
    rather than at chance: shown in parentheses, and its "vs plain DPO" is of the policy's preference, marked
    "(policy)" ("-" is a method whose seeds plain DPO lacks)."""
    lines = [
        "| data | flipped | method | seeds | test accuracy | vs plain DPO | the policy prefers the true answer |",
        "|---|---|---|---|---|---|---|",
    ]
    for cell in result["cells"].values():
        for method in (m for m in METHODS if m in cell["methods"]):
            r = cell["methods"][method]
            label, accuracy, versus = METHODS[method].label, interval(r["test_accuracy"], 2), ""
            if reference_free(method):
                label, accuracy = f"{label} (reference-free)", f"({r['test_accuracy'][0]:.2f}: its own reward)"
            if method != "plain":
                versus = versus_plain(r, 2)
            columns = [cell["dataset"], f"{cell['noise']:.0%}", label, len(r["seeds"]), accuracy, versus,
                       interval(r["test_policy_preference"], 2)]  # fmt: skip
            lines.append("| " + " | ".join(map(str, columns)) + " |")
    return lines


def interval(value: tuple, decimals: int = 3, signed: bool = False) -> str:
    """(mean, low, high) as "mean [low, high]"."""
    spec = f"{'+' if signed else ''}.{decimals}f"
    return f"{value[0]:{spec}} [{value[1]:{spec}}, {value[2]:{spec}}]"


def figures(result: dict) -> str:
    """An HTML page of charts against the share of flipped labels, per data set: test accuracy (true labels), the
    policy's own preference, and steps used, one line per method (means; the intervals are in noise.md)."""
    from dpo.analysis.plots import PALETTE, Series, line_chart

    charts = []
    datasets = sorted({c["dataset"] for c in result["cells"].values()})
    for dataset in datasets:
        cells = sorted((c for c in result["cells"].values() if c["dataset"] == dataset), key=lambda c: c["noise"])
        methods = list(dict.fromkeys(m for c in cells for m in c["methods"] if m != "best_single"))
        noise = [100 * c["noise"] for c in cells]
        for field, title in (("test_accuracy", "test accuracy (true labels)"),
                             ("test_policy_preference", "policy prefers the chosen answer (test)"),
                             ("steps", "steps used")):  # fmt: skip
            series = [
                Series(
                    method,
                    [(100 * c["noise"], _point(c["methods"][method][field])) for c in cells if method in c["methods"]],
                    PALETTE[i % len(PALETTE)],
                )  # fmt: skip
                for i, method in enumerate(methods)
            ]
            chart = line_chart(f"{dataset}: {title}", series, (min(noise), max(noise)), x_label="% of training "
                               "labels flipped")  # fmt: skip
            if chart:
                charts.append(chart)
    return "<!doctype html><meta charset=utf-8><title>noise benchmark</title>" + "".join(charts) + "\n"


def _point(value) -> float:
    return value[0] if isinstance(value, list | tuple) else value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny random model, 2 steps per run (for tests)")
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--noise", type=float, nargs="*", default=list(NOISE))
    parser.add_argument("--seeds", type=int, nargs="*", default=list(SEEDS))
    parser.add_argument("--methods", nargs="*", default=list(DEFAULT_METHODS), choices=list(METHODS))
    parser.add_argument("--results", type=Path, default=REPO / "eval" / "results")
    parser.add_argument("--threads", type=int, help="torch threads (1 when two benchmark processes share the CPU)")
    parser.add_argument(
        "--no-train",
        action="store_true",
        help="train nothing: list the runs of the chosen grid "
        "not recorded yet, with a time estimate, and write the tables from the recorded ones",
    )
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-noise-"))
    base = list(BUDGET)
    if args.quick:
        from tests.conftest import build_tiny_model

        base = [*QUICK, f"model.name_or_path={build_tiny_model(work / 'tiny')}"]
    skipped = {}
    methods = []
    for method in args.methods:
        spec = METHODS[method]
        problem = recipe_knows([*base, *spec.overrides]) if spec.kind == "audit" else None
        if problem:
            skipped[method] = f"this version does not take {', '.join(spec.overrides)} ({problem})"
            print(f"skipping {method}: {skipped[method]}", flush=True)
        else:
            methods.append(method)
    if "plain" not in methods:
        print("note: without plain DPO there is no baseline to compare with", flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    name = "noise_quick" if args.quick else "noise"
    runs_file = args.results / f"{name}.runs.jsonl"
    heldout = {dataset: split_heldout(dataset, work) for dataset in DATASETS}  # (validation, test) files
    validation_files = {d: files[0] for d, files in heldout.items()}
    test_files = {d: files[1] for d, files in heldout.items()}
    runs = read_runs(runs_file)
    check_fingerprints(runs_file, runs, base, work, validation_files, skipped)
    check_test_split(runs_file, runs, test_files)
    done = finished(runs)
    recorded = {run_key(r) for r in runs}  # a failed run too: it would fail again
    # per data set, the methods that run on it: a loss that needs scores only where every pair has one
    runs_on = {d: {m for m in METHODS if is_scored(files) or not needs_scores(m)} for d, files in heldout.items()}
    todo = []  # (dataset, noise, seed, method, held-out files), in the order they train: seed by seed
    for dataset in args.datasets:
        files = heldout[dataset]
        applicable = [m for m in methods if m in runs_on[dataset]]
        for method in sorted(set(methods) - set(applicable), key=methods.index):
            skipped[f"{method} on {dataset}"] = "its loss needs a score gap per pair, and this data set has no scores"
            print(f"skipping {method} on {dataset}: {skipped[f'{method} on {dataset}']}", flush=True)
        todo += [(dataset, noise, seed, method, files) for noise in args.noise for seed in args.seeds
                 for method in applicable if (dataset, noise, seed, method) not in recorded]  # fmt: skip
    if args.no_train:
        print(remaining(todo, done))
    for dataset, noise, seed, method, files in [] if args.no_train else todo:
        if (dataset, noise, seed, method) in {run_key(r) for r in read_runs(runs_file, quiet=True)}:
            print(f"note: {method} on {dataset} at {noise:.0%}, seed {seed}: recorded by another invocation since "
                  "this one started; not trained again", flush=True)  # fmt: skip
            continue
        record = run_one(dataset, noise, seed, method, base, files, work, args.quick)
        append_run(runs_file, record)
        shown = {k: v for k, v in record.items() if k not in ("test", "autopilot_decisions")}
        print(json.dumps(shown), flush=True)
    checked = recorded
    runs = read_runs(runs_file)  # again: another invocation may have added runs since this one started
    added = [r for r in runs if run_key(r) not in checked]  # by another checkout, maybe: checked as at the start
    check_fingerprints(runs_file, added, base, work, validation_files, skipped)
    check_test_split(runs_file, added, test_files)
    done = finished(runs)
    recorded_methods = {r["method"] for r in done} | set(methods)  # the tables cover every recorded run
    prompts = {d: test_prompts(path) for d, path in test_files.items()}
    result = {"budget": base, "methods": {m: METHODS[m].__dict__ for m in METHODS if m in recorded_methods},
              "failed": [{k: r[k] for k in ("dataset", "noise", "seed", "method", "failed")}
                         for r in runs if "failed" in r],
              **aggregate(done, skipped, prompts, runs_on)}  # fmt: skip
    (args.results / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.results / f"{name}.md").write_text(markdown(result))
    (args.results / f"{name}.html").write_text(figures(result))
    print(markdown(result))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
