"""The `dpo` command. Thin: parse, call one library function, print, set the exit code.

User errors (bad recipe, bad data, missing file) print one `error: ...` line and exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from dpo.errors import UserError

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
    resume: Annotated[bool, typer.Option(help="Continue in an existing run directory.")] = False,
):
    """Train a recipe and write its run directory."""
    from dpo.console import print_summary
    from dpo.run import train as run_train

    try:
        summary = run_train(recipe, overrides=set_ or [], output_dir=output_dir, resume=resume)
    except UserError as exc:
        _fail(exc)
    print_summary(summary)


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


def main() -> None:
    try:
        app()
    except UserError as exc:  # raised outside a command body (e.g. while parsing)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
