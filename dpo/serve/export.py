"""`dpo export RUN_DIR --output DIR`: the trained weights as a folder anyone can load, with a filled model card.

    python -m dpo export runs/quickstart --output exported/quickstart            # the LoRA adapter + tokenizer
    python -m dpo export runs/quickstart --output exported/merged --merge        # one model, loads without peft
    python -m dpo export runs/quickstart --output exported/merged --merge --push-to-hub me/quickstart-dpo

DIR gets the adapter (adapter_config.json, adapter_model.safetensors; its recorded base is the recipe's
model.name_or_path, not a cache folder) or with --merge the base model with the adapter merged in (safetensors,
`AutoModelForCausalLM.from_pretrained(DIR)`), a fully fine-tuned run's model as it is, the tokenizer, and README.md
(dpo/analysis/model_card.py). Everything is checked first (the run, DIR, the hub's reachability and credentials
with --push-to-hub), then written to a temporary folder and moved into place: a failure leaves no half-written DIR.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
from pathlib import Path

from dpo.analysis.evaluate import base_model_of
from dpo.analysis.model_card import README, model_card, write_model_card
from dpo.config.loading import load_recipe
from dpo.errors import UserError
from dpo.rundir.atomic import atomic_write_text
from dpo.rundir.files import FINAL, RECIPE
from dpo.rundir.writable import check_output_dir

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def check_hub(repo: str) -> str:
    """Fail with one line, before anything is written, when `repo` cannot be pushed to: an invalid name, the hub
    switched off (HF_HUB_OFFLINE), no token, or the hub unreachable / the token refused. Returns the user name."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    where = "--push-to-hub"
    try:
        validate_repo_id(repo)
    except HFValidationError as exc:
        raise UserError(f"not a hub repository id ({exc})", where=where) from None
    if "/" not in repo:
        raise UserError(f"'{repo}' needs the form OWNER/NAME", where=where)
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise UserError("cannot push: HF_HUB_OFFLINE is set (offline); nothing was written", where=where)
    token = get_token()
    if not token:
        raise UserError("cannot push: no Hugging Face token (set HF_TOKEN or run `hf auth login`)", where=where)
    try:
        return HfApi().whoami(token=token)["name"]
    except Exception as exc:  # noqa: BLE001 - offline, DNS, proxy, 401: all mean "cannot push from here"
        raise UserError(
            f"cannot push: the hub is not reachable or refused the token ({type(exc).__name__}); nothing was written",
            where=where,
        ) from None


STAGING_HEX_BYTES = 6  # a staging folder's name: .NAME-<12 hex digits>


def _staging_folder(target: Path, inside: bool) -> Path:
    """Where the export is written before it is moved into `target`: inside it when it exists (filled), else beside
    it (renamed)."""
    return (target if inside else target.parent) / f".{target.name}-{secrets.token_hex(STAGING_HEX_BYTES)}"


def _is_staging_of(entry: Path, target: Path) -> bool:
    suffix = entry.name.removeprefix(f".{target.name}-")
    hex_digits = set("0123456789abcdef")
    return entry.is_dir() and len(suffix) == 2 * STAGING_HEX_BYTES and set(suffix) <= hex_digits


def _check_output(output: Path) -> None:
    check_output_dir(output)  # the same check, and words, as every command that writes a directory
    if output.is_dir():
        # an export killed while it filled this folder (SIGKILL, out of memory during --merge) left its staging
        # folder in it; so does one still running (a --merge takes minutes), whose folder must not be taken from
        # it: said, for the user to remove once no export runs
        entries = list(output.iterdir())
        if entries and all(_is_staging_of(entry, Path(os.path.abspath(output))) for entry in entries):
            names = ", ".join(sorted(entry.name for entry in entries))
            raise UserError(
                f"holds only {names}: temporary folders of exports that were killed or are still running; remove "
                "them once no export to this folder runs, and export again",
                where=str(output),
            )
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UserError("already exists and is not an empty folder; choose another --output", where=str(output))


def export_run(run_dir: str | Path, output: str | Path, merge: bool = False, push_to_hub: str | None = None) -> dict:
    """Write the run's weights, tokenizer and model card to `output`; returns {output, weights, pushed_to}."""
    run_dir, output = Path(run_dir), Path(output)
    final = run_dir / FINAL
    if not (run_dir / RECIPE).is_file():
        raise UserError(f"not a run directory: no {RECIPE}", where=str(run_dir))
    if not final.is_dir():
        raise UserError("no final/ weights: the run did not finish", where=str(run_dir))
    is_adapter = (final / "adapter_config.json").is_file()
    if merge and not is_adapter:
        raise UserError("--merge: this run fine-tuned the whole model (no adapter in final/); export without --merge",
                        where=str(run_dir))  # fmt: skip
    _check_output(output)
    if push_to_hub:
        check_hub(push_to_hub)
    recipe = load_recipe(run_dir / RECIPE).recipe
    weights = "merged" if merge else "adapter" if is_adapter else "model"

    # Written into a temporary folder first, then moved into place. An existing (empty) DIR is kept and filled, so
    # that `--output .` and a folder whose parent this user cannot write work, and it keeps its owner's permissions;
    # a new DIR is the temporary folder renamed, with the permissions of any folder made here.
    target = Path(os.path.abspath(output))
    fill_existing = target.exists()
    if not fill_existing:
        target.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_folder(target, inside=fill_existing)
    staging.mkdir(mode=0o777)  # the umask applies, as to any folder made here (mkdtemp would make it 0700)
    try:
        if merge:
            with base_model_of(run_dir):
                _write_merged(final, recipe, staging)
        else:
            for item in final.iterdir():  # the saved adapter or model and the tokenizer, as the run wrote them
                if item.is_file() and item.name != README:
                    shutil.copy2(item, staging / item.name)
        if weights == "adapter":
            write_model_card(staging, run_dir)  # also records the recipe's base in adapter_config.json
        else:
            atomic_write_text(staging / README, model_card(run_dir, weights))
        if fill_existing:
            for item in staging.iterdir():
                os.replace(item, target / item.name)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    pushed = _push(output, push_to_hub) if push_to_hub else None
    return {"output": str(output), "weights": weights, "pushed_to": pushed}


def _write_merged(final: Path, recipe, target: Path) -> None:
    """The base model with the adapter's LoRA deltas folded into its weights, saved as plain transformers
    safetensors (no peft needed to load it), plus the tokenizer."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from dpo.models import load_model

    base = load_model(recipe.model.name_or_path, recipe.model.dtype, recipe.model.trust_remote_code)
    merged = PeftModel.from_pretrained(base, str(final)).merge_and_unload()
    merged.save_pretrained(str(target))
    tokenizer = AutoTokenizer.from_pretrained(str(final), trust_remote_code=recipe.model.trust_remote_code)
    tokenizer.save_pretrained(str(target))


def _push(folder: Path, repo: str) -> str:
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message="dpo export")
    except Exception as exc:  # noqa: BLE001 - the export itself is done; say what failed in one line
        raise UserError(
            f"wrote {folder}, but the upload failed ({type(exc).__name__}: {exc}); retry with: "
            f"hf upload {shlex.quote(repo)} {shlex.quote(str(folder))}",
            where="--push-to-hub",
        ) from None
    return f"https://huggingface.co/{repo}"
