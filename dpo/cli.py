"""The `dpo` command. Thin: parse, call one library function, print, set the exit code.

User errors (bad recipe, bad data, missing file) print one `error: ...` line and exit 2. A training run that
started but stopped on a NaN/Inf loss or gradient norm prints one `error: ...` line and exits 3 (its
summary.json says `stop_reason: non_finite`). Secrets from the environment are redacted from all output.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from dpo import api
from dpo.analysis.evaluate import DECODINGS
from dpo.errors import RunFailed, UserError
from dpo.rundir.secrets import RedactingStream, redact
from dpo.sweep.spec import help_text as sweep_help

app = typer.Typer(add_completion=False, no_args_is_help=True, help="DPO fine-tuning with overfitting controls.")

SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override a recipe key, e.g. --set loss.beta=0.2 (repeatable).")
]


def _fail(exc: UserError | RunFailed) -> None:
    typer.echo(f"error: {redact(str(exc))}", err=True)
    raise typer.Exit(code=exc.exit_code)


@app.command()
def train(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file (with --resume: or a run directory).")],
    set_: SetOption = None,
    output_dir: Annotated[Path | None, typer.Option(help="Run directory (default: runs/<recipe name>).")] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue a killed run from its last complete checkpoint to the same number of steps. "
            "RECIPE may be the run directory itself (its recipe.yaml is used).",
        ),
    ] = False,
):
    """Train a recipe and write its run directory. Exit codes: 0 done, 2 bad input, 3 stopped on NaN/Inf."""
    from dpo.analysis.console import print_summary
    from dpo.rundir.files import is_main_process

    # everything printed from here on (ours, transformers', tqdm's) passes through the secret redaction
    sys.stdout, sys.stderr = RedactingStream(sys.stdout), RedactingStream(sys.stderr)
    try:
        summary = api.train(recipe, overrides=set_ or [], output_dir=output_dir, resume=resume)
    except (UserError, RunFailed) as exc:
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
    from dpo.analysis.console import print_sweep_summary

    try:
        summary = api.sweep(spec, workers=workers, storage=storage, output_dir=output_dir, resume=resume)
    except UserError as exc:
        _fail(exc)
    print_sweep_summary(summary)


@app.command()
def validate(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    set_: SetOption = None,
):
    """Check a recipe and its data without training (no model weights are loaded)."""
    try:
        checked = api.validate(recipe, set_ or [])
    except UserError as exc:
        _fail(exc)
    for warning in checked.warnings:
        typer.echo(f"warning: {warning}", err=True)
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

    from dpo.plan.planner import PlanOptions

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
        result = api.plan(source, options)
    except UserError as exc:
        _fail(exc)
    typer.echo(json.dumps(result.to_dict(), indent=2) if json_output else result.render())


data_app = typer.Typer(no_args_is_help=True, help="Look at preference data before training on it.")
app.add_typer(data_app, name="data")


@data_app.command("inspect")
def data_inspect(
    target: Annotated[Path, typer.Argument(help="A data file (.jsonl/.json/.parquet/.csv, dataset dir) or a recipe.")],
    set_: SetOption = None,
    model: Annotated[
        str | None,
        typer.Option(help="Tokenizer to count tokens with (default: the recipe's model, or the embedded one)."),
    ] = None,
    max_length: Annotated[
        int | None, typer.Option(help="Longest prompt + answer in tokens (default: the recipe's, or 1024).")
    ] = None,
    samples: Annotated[int, typer.Option(help="Sample pairs to show per split.")] = 3,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
):
    """Counts, token-length histograms, invalid rows by reason, duplicates and sample pairs of a data set."""
    import json

    from dpo.data.inspect import render

    try:
        report = api.inspect_data(target, set_ or [], model=model, max_length=max_length, samples=samples)
    except UserError as exc:
        _fail(exc)
    typer.echo(json.dumps(report, indent=2, ensure_ascii=False) if json_output else render(report))


@app.command()
def report(
    path: Annotated[Path, typer.Argument(help="A run directory or a sweep directory.")],
):
    """Build PATH/report.html: a self-contained dashboard of a run or a sweep (opens offline)."""
    try:
        written = api.report(path)
    except UserError as exc:
        _fail(exc)
    typer.echo(f"wrote {written}")


@app.command("eval")
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory (with final/).")],
    data: Annotated[Path | None, typer.Option(help="Preference pairs to use instead of the run's held-out split.")] = (
        None
    ),
    samples: Annotated[int, typer.Option(help="Held-out prompts to generate answers for (gold-reward data).")] = 32,
    max_new_tokens: Annotated[int, typer.Option(help="Longest generated answer, in tokens.")] = 64,
    batch_size: Annotated[int, typer.Option(help="Sequences per forward / generate call.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the sampled answers.")] = 0,
    decoding: Annotated[str, typer.Option(help=f"{' | '.join(DECODINGS)}: how the scored answers are decoded.")] = (
        "sample"
    ),
):
    """Evaluate a run's policy against its reference on held-out data; writes RUN_DIR/eval.json."""
    from dpo.analysis.evaluate import EvalOptions
    from dpo.analysis.report import write_report_or_warn

    options = EvalOptions(data, samples, max_new_tokens, batch_size, seed, decoding)
    try:
        result = api.evaluate(run_dir, options)
    except UserError as exc:
        _fail(exc)
    pref = result["preference"]
    typer.echo(
        f"held-out ({result['data']['pairs']} pairs): preference accuracy policy {pref['policy']['accuracy']:.3f}, "
        f"reference {pref['reference']['accuracy']:.3f}; implicit reward accuracy "
        f"{pref['implicit_reward']['accuracy']:.3f}, margin {pref['implicit_reward']['mean_margin']:.4f}"
    )
    gen = result["generation"]
    if gen:
        typer.echo(
            f"generated ({gen['prompts']} prompts, {gen['decoding']}): {gen['gold_reward']} reward policy "
            f"{gen['policy_mean_reward']:.3f}, reference {gen['reference_mean_reward']:.3f}, win rate "
            f"{gen['win_rate']:.3f}, KL {gen['kl']:.3f}"
        )
    else:
        typer.echo(f"no generation: {result['generation_skipped']}")
    typer.echo(f"wrote {run_dir / 'eval.json'}")
    write_report_or_warn(run_dir)  # the dashboard shows eval.json


def main() -> None:
    try:
        app()
    except UserError as exc:  # raised outside a command body (e.g. while parsing)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
