"""The `dpo` command. Thin: parse, call one library function, print, set the exit code.

User errors (bad recipe, bad data, missing file) print one `error: ...` line and exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from dpo.errors import UserError
from dpo.sweep_spec import help_text as sweep_help

app = typer.Typer(add_completion=False, no_args_is_help=True, help="DPO fine-tuning with overfitting controls.")

SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override a recipe key, e.g. --set loss.beta=0.2 (repeatable).")
]


def _fail(exc: UserError) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=exc.exit_code)


@app.command()
def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    set_: SetOption = None,
    output_dir: Annotated[Path | None, typer.Option(help="Run directory (default: runs/<recipe name>).")] = None,
):
    """Train a recipe and write its run directory."""
    from dpo.console import print_summary
    from dpo.run import is_main_process
    from dpo.run import train as run_train

    try:
        summary = run_train(recipe, overrides=set_ or [], output_dir=output_dir)
    except UserError as exc:
        _fail(exc)
    if is_main_process():  # under torchrun / accelerate launch: one summary, not one per process
        print_summary(summary)


@app.command(epilog=escape(sweep_help()))  # escape: rich would read [sigmoid, ipo] as markup
def sweep(
    spec: Annotated[Path, typer.Argument(help="Sweep spec YAML (base recipe, search space, sampler, objective).")],
    workers: Annotated[int, typer.Option(help="Trials run in parallel on this machine.")] = 1,
    storage: Annotated[
        str | None,
        typer.Option(
            help="optuna database URL (e.g. postgresql://user@host/db): the same command on several "
            "machines joins one sweep. Default: SQLite in the sweep directory."
        ),
    ] = None,
    output_dir: Annotated[Path | None, typer.Option(help="Sweep directory (default: sweeps/<spec name>).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a stopped sweep; finished trials stay.")] = False,
):
    """Run many trainings over a search space (optuna) and write the sweep directory and best.yaml."""
    from dpo.console import print_sweep_summary
    from dpo.sweep import run_sweep

    try:
        summary = run_sweep(spec, workers=workers, storage=storage, output_dir=output_dir, resume=resume)
    except UserError as exc:
        _fail(exc)
    print_sweep_summary(summary)


@app.command()
def validate(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    set_: SetOption = None,
):
    """Check a recipe and its data without training (no model weights are loaded)."""
    from dpo.run import check

    try:
        checked = check(recipe, set_ or [])
    except UserError as exc:
        _fail(exc)
    split = checked.data.card["split"]
    terms = " + ".join(f"{w:g}*{n}" if w != 1 else n for n, w in checked.loss_plan.terms)
    typer.echo(
        f"ok: {recipe}: model {checked.recipe.model.name_or_path}, loss {terms} (beta={checked.loss_plan.beta}), "
        f"{split['train_pairs']} train / {split['eval_pairs']} held-out pairs"
    )


@app.command()
def plan(
    source: Annotated[str, typer.Argument(help="config.json, local model directory, or model alias.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    dtype: Annotated[str, typer.Option(help="float32 | bfloat16 | float16.")] = "float32",
    batch_size: Annotated[int, typer.Option(help="Preference pairs per device.")] = 8,
    seq_len: Annotated[int, typer.Option(help="Tokens per sequence (prompt + answer).")] = 512,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    full: Annotated[bool, typer.Option("--full", help="Full fine-tuning instead of LoRA.")] = False,
    lora_targets: Annotated[str, typer.Option(help="Comma-separated module names, or all-linear.")] = (
        "q_proj,k_proj,v_proj,o_proj"
    ),
    gradient_checkpointing: Annotated[bool, typer.Option(help="Recompute activations in backward.")] = False,
    reference: Annotated[str, typer.Option(help="auto | copy | adapter | precomputed.")] = "auto",
    optimizer: Annotated[str, typer.Option(help="adamw | adamw_8bit | sgd.")] = "adamw",
    device: Annotated[str, typer.Option(help="cuda | cpu (which fused LM head TRL runs).")] = "cuda",
    autocast: Annotated[str | None, typer.Option(help="bfloat16 | float16 autocast over float32 weights.")] = None,
    gpu_memory: Annotated[float | None, typer.Option(help="Device memory in GiB: find the largest batch.")] = None,
):
    """Count a model's parameters exactly from its config and plan DPO memory (no weights loaded)."""
    import json

    from dpo.plan import PlanOptions, build_plan

    options = PlanOptions(
        dtype=dtype,
        batch_size=batch_size,
        seq_len=seq_len,
        lora_rank=None if full else lora_rank,
        lora_targets=tuple(t.strip() for t in lora_targets.split(",") if t.strip()),
        gradient_checkpointing=gradient_checkpointing,
        reference=reference,
        optimizer=optimizer,
        device=device,
        autocast=autocast,
        gpu_memory_gib=gpu_memory,
    )
    try:
        result = build_plan(source, options)
    except UserError as exc:
        _fail(exc)
    typer.echo(json.dumps(result.to_dict(), indent=2) if json_output else result.render())


def main() -> None:
    try:
        app()
    except UserError as exc:  # raised outside a command body (e.g. while parsing)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
