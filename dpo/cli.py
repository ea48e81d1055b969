"""The `dpo` command. Thin: parse, call one library function, print, set the exit code.

User errors (bad recipe, bad data, missing file) print one `error: ...` line and exit 2. A training run that
started but stopped on a NaN/Inf loss or gradient norm prints one `error: ...` line and exits 3 (its
summary.json says `stop_reason: non_finite`), and so does a sweep none of whose trials completed (no best.yaml).
Secrets from the environment are redacted from all output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import sys
import typing
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from typer.core import TyperGroup

try:  # typer parses with its own copy of click (a private module: typer>=0.29,<1 in pyproject.toml)
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # a typer that parses with click itself
    from click.exceptions import NoArgsIsHelpError, UsageError

from dpo import api
from dpo.analysis.evaluate import DECODINGS
from dpo.errors import RunFailed, UserError, one_line
from dpo.plan.options import PlanOptions
from dpo.rundir.resume import has_previous_attempt
from dpo.rundir.secrets import redact, redact_standard_streams
from dpo.sweep.spec import help_text as sweep_help


@contextlib.contextmanager
def _usage_errors_on_one_line():
    try:
        yield
    except NoArgsIsHelpError:  # `dpo` or `dpo data` alone: the help, as no_args_is_help asks
        raise
    except UsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else "dpo"
        message = one_line(redact(exc.format_message())).rstrip(".")  # "Missing argument 'recipe'." ends in one
        typer.echo(f"error: {command}: {message} (see {command} --help)", err=True)
        raise typer.Exit(code=exc.exit_code) from None


class OneLineUsageErrors(TyperGroup):
    """A bad command line (an unknown option or command, a missing argument, a value of the wrong type) is one
    `error:` line naming the command, exit 2, like every other bad input, not typer's usage lines and boxed panel.
    Parsing happens in make_context (the top level's options) and in invoke (every subcommand's), so both are
    wrapped; `data`'s group is parsed inside the top level's invoke."""

    def make_context(self, *args, **kwargs):
        with _usage_errors_on_one_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx):
        with _usage_errors_on_one_line():
            return super().invoke(ctx)


app = typer.Typer(
    cls=OneLineUsageErrors,
    add_completion=False,
    no_args_is_help=True,
    help="DPO fine-tuning with overfitting controls.",
)

SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override a recipe key, e.g. --set loss.beta=0.2 (repeatable).")
]


def _version(value: bool) -> None:
    if value:
        from dpo import __version__

        typer.echo(f"dpo-toolkit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
):
    """DPO fine-tuning with overfitting controls."""


def _fail(exc: UserError | RunFailed) -> None:
    for problem in getattr(exc, "errors", None) or [exc]:  # UserErrors: one line per problem found
        typer.echo(f"error: {one_line(redact(str(problem)))}", err=True)
    raise typer.Exit(code=exc.exit_code)


@app.command()
def train(
    recipe: Annotated[
        Path,
        typer.Argument(
            help="Recipe YAML file or shipped recipe name (with --resume: or a run directory).", readable=False
        ),
    ],
    set_: SetOption = None,
    output_dir: Annotated[
        Path | None, typer.Option(help="Run directory (default: runs/<recipe name>).", readable=False)
    ] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue a killed run from its last complete checkpoint to the same number of steps. "
            "RECIPE may be the run directory itself (its recipe.yaml is used).",
        ),
    ] = False,
    allow_data_change: Annotated[
        bool,
        typer.Option(
            "--allow-data-change",
            help="With --resume: continue although the training data changed since the run was made "
            "(refused otherwise); data_card.json records the change.",
        ),
    ] = False,
):
    """Train a recipe and write its run directory. Exit codes: 0 done, 2 bad input, 3 stopped on NaN/Inf."""
    from dpo.analysis.console import print_summary
    from dpo.rundir.files import is_main_process

    redact_standard_streams()  # a no-op under main(), which did it already
    try:
        summary = api.train(
            recipe, overrides=set_ or [], output_dir=output_dir, resume=resume, allow_data_change=allow_data_change
        )
    except (UserError, RunFailed) as exc:
        _fail(exc)
    if is_main_process():  # under torchrun / accelerate launch: one summary, not one per process
        print_summary(summary)


@app.command(epilog=escape(sweep_help()))  # escape: rich would read [sigmoid, ipo] as markup
def sweep(
    spec: Annotated[
        Path, typer.Argument(help="Sweep spec YAML (base recipe, search space, sampler, objective).", readable=False)
    ],
    workers: Annotated[int, typer.Option(help="Trials run in parallel on this machine.")] = 1,
    storage: Annotated[
        str | None,
        typer.Option(
            help="optuna database URL (e.g. postgresql://user@host/db): the same command on several "
            "machines joins one sweep. Default: SQLite in the sweep directory."
        ),
    ] = None,
    output_dir: Annotated[
        Path | None, typer.Option(help="Sweep directory (default: sweeps/<spec name>).", readable=False)
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a stopped sweep; finished trials stay.")] = False,
):
    """Run many trainings over a search space (optuna) and write the sweep directory and best.yaml. Exit codes: 0 done,
    2 bad input, 3 no trial completed (no best.yaml)."""
    from dpo.analysis.console import print_sweep_summary
    from dpo.sweep.driver import nothing_completed

    try:
        summary = api.sweep(spec, workers=workers, storage=storage, output_dir=output_dir, resume=resume)
    except UserError as exc:
        _fail(exc)
    print_sweep_summary(summary)
    problem = nothing_completed(summary)
    if problem:
        _fail(RunFailed(problem))


@app.command()
def validate(
    recipe: Annotated[
        Path, typer.Argument(help="Recipe YAML file, or a shipped recipe's name (`dpo recipes`).", readable=False)
    ],
    set_: SetOption = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(help="Run directory dpo train would write (default: runs/<recipe name>).", readable=False),
    ] = None,
):
    """Check a recipe and its data without training (no model weights are loaded): the same checks as dpo train."""
    try:
        checked = api.validate(recipe, set_ or [], output_dir=output_dir)
    except UserError as exc:
        _fail(exc)
    for warning in checked.warnings:
        typer.echo(redact(f"warning: {warning}"), err=True)
    if has_previous_attempt(checked.run_dir):  # train's one check that reads what is there, not the recipe
        typer.echo(
            redact(
                f"warning: {checked.run_dir}: holds files already: dpo train refuses it unless --resume continues "
                "the run there; choose another --output-dir for a new run"
            ),
            err=True,
        )
    split = checked.data.card["split"]
    terms = " + ".join(f"{w:g}*{n}" if w != 1 else n for n, w in checked.loss_plan.terms)
    typer.echo(  # redacted: a model path may hold a secret (a token in a URL or folder name)
        redact(
            f"ok: {recipe}: model {checked.recipe.model.name_or_path}, loss {terms} (beta={checked.loss_plan.beta}), "
            f"{split['train_pairs']} train / {split['eval_pairs']} held-out pairs"
        )
    )


def plan(ctx: typer.Context, source: str, json_output: bool = False, **values) -> None:
    """Count a model's parameters exactly from its config and plan DPO memory (no weights loaded). SOURCE may be a
    recipe: its model, LoRA, batch, accumulation, length and dtype are planned, and the options given here replace
    them."""
    import json

    try:
        result = api.plan(source, _plan_options(values), given=_given_options(ctx))
    except UserError as exc:
        _fail(exc)
    typer.echo(json.dumps(result.to_dict(), indent=2) if json_output else result.render())


# `dpo plan` has one option per PlanOptions field, built from the field (name, type, default, help), so a new
# field is a new option. A tuple field is a comma-separated string; a field with a `none_flag` also gets that
# flag, which sets it to None (--full: no LoRA rank).
_PLAN_HINTS = typing.get_type_hints(PlanOptions)


def _none_flag_name(f: dataclasses.Field) -> str:
    return f"{f.name}_is_none"


def _plan_parameters() -> list[inspect.Parameter]:
    def param(name: str, kind, default, *names: str, help: str) -> inspect.Parameter:
        annotation = Annotated[kind, typer.Option(*names, help=help)]
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)

    params = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        inspect.Parameter(
            "source",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=Annotated[
                str, typer.Argument(help="config.json, local model directory, model alias, or a recipe.")
            ],
        ),
        param("json_output", bool, False, "--json", help="Print the plan as JSON."),
    ]
    for f in dataclasses.fields(PlanOptions):
        kind, default = _PLAN_HINTS[f.name], f.default
        names = [f.metadata["option"]] if f.metadata["option"] else []  # else typer's --field-name
        if typing.get_origin(kind) is tuple:
            kind, default = str, ",".join(default)
        elif f.metadata["none_flag"]:
            kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
        params.append(param(f.name, kind, default, *names, help=f.metadata["help"]))
        if f.metadata["none_flag"]:
            flag, help_text = f.metadata["none_flag"]
            params.append(param(_none_flag_name(f), bool, False, flag, help=help_text))
    return params


def _given_options(ctx: typer.Context) -> tuple[str, ...]:
    """The PlanOptions fields set on the command line (not left at their defaults)."""

    def given(name: str) -> bool:
        source = ctx.get_parameter_source(name)
        return source is not None and source.name != "DEFAULT"  # by name: typer may bring its own click

    fields = dataclasses.fields(PlanOptions)
    return tuple(f.name for f in fields if given(f.name) or (f.metadata["none_flag"] and given(_none_flag_name(f))))


def _plan_options(values: dict) -> PlanOptions:
    """PlanOptions from the values typer parsed for the options `_plan_parameters` built."""
    options = {}
    for f in dataclasses.fields(PlanOptions):
        value = values[f.name]
        if typing.get_origin(_PLAN_HINTS[f.name]) is tuple:
            value = tuple(item.strip() for item in value.split(",") if item.strip())
        if f.metadata["none_flag"] and values[_none_flag_name(f)]:
            value = None
        options[f.name] = value
    return PlanOptions(**options)


plan.__signature__ = inspect.Signature(_plan_parameters())
plan.__annotations__ = {p.name: p.annotation for p in plan.__signature__.parameters.values()}
app.command()(plan)


data_app = typer.Typer(no_args_is_help=True, help="Look at preference data before training on it.")
app.add_typer(data_app, name="data")


@data_app.command("inspect")
def data_inspect(
    target: Annotated[
        Path,
        typer.Argument(help="A data file (.jsonl/.json/.parquet/.csv, dataset dir) or a recipe.", readable=False),
    ],
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


@data_app.command("audit")
def data_audit(
    recipe: Annotated[Path, typer.Argument(help="The recipe whose training data and model to audit.", readable=False)],
    set_: SetOption = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", help="Folder for audit.json (default: audits/<recipe name>).", readable=False),
    ] = None,
):
    """Estimate the share of flipped labels in the recipe's training pairs, and rank the pairs by p_flipped."""
    from dpo.training.audit import render

    try:
        result, path = api.audit_data(recipe, set_ or [], output)
    except UserError as exc:
        _fail(exc)
    typer.echo(render(result, path))


@app.command()
def report(
    path: Annotated[Path, typer.Argument(help="A run directory or a sweep directory.", readable=False)],
):
    """Build PATH/report.html: a self-contained dashboard of a run or a sweep (opens offline)."""
    try:
        written = api.report(path)
    except UserError as exc:
        _fail(exc)
    typer.echo(f"wrote {written}")


@app.command("eval")
def eval_(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory (with final/).", readable=False)],
    data: Annotated[
        Path | None, typer.Option(help="Preference pairs to use instead of the run's held-out split.", readable=False)
    ] = None,
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
    pref, reward = result["preference"], result["preference"]["implicit_reward"]
    typer.echo(
        f"held-out ({result['data']['pairs']} pairs): preference accuracy policy {pref['policy']['accuracy']:.3f}, "
        f"reference {pref['reference']['accuracy']:.3f}; implicit reward ({reward['kind']}) accuracy "
        f"{reward['accuracy']:.3f}, margin {reward['mean_margin']:.4f}"
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


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory (with final/).", readable=False)],
    output: Annotated[Path, typer.Option(help="Folder to write (must not exist, or be empty).", readable=False)],
    merge: Annotated[
        bool, typer.Option("--merge", help="Merge the LoRA adapter into the base model (loads without peft).")
    ] = False,
    push_to_hub: Annotated[
        str | None, typer.Option(help="Also upload the folder to this hub repository (OWNER/NAME).")
    ] = None,
):
    """Export a run's weights: the adapter or a merged model, the tokenizer and a filled model card (README.md)."""
    try:
        result = api.export(run_dir, output, merge=merge, push_to_hub=push_to_hub)
    except UserError as exc:
        _fail(exc)
    typer.echo(f"wrote {result['output']} ({result['weights']})")
    if result["pushed_to"]:
        typer.echo(f"pushed to {result['pushed_to']}")


@app.command()
def generate(
    run_dir: Annotated[Path, typer.Argument(help="A finished run directory (with final/).", readable=False)],
    prompt: Annotated[str | None, typer.Option(help="One prompt.")] = None,
    file: Annotated[
        Path | None, typer.Option(help="JSONL with a `prompt` per row (text or chat messages).", readable=False)
    ] = None,
    n: Annotated[int | None, typer.Option("--n", help="Only the first N prompts of --file.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 128,
    sample: Annotated[bool, typer.Option("--sample", help="Sample (temperature 1) instead of greedy.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of --sample.")] = 0,
    json_output: Annotated[bool, typer.Option("--json", help="Print the answers as JSON.")] = False,
):
    """The trained model's answers next to the reference's (the model before DPO), with the data's chat template."""
    import json

    from dpo.serve.generate import GenerateOptions

    options = GenerateOptions(max_new_tokens=max_new_tokens, sample=sample, seed=seed)
    try:
        rows = api.generate(run_dir, prompt=prompt, file=file, n=n, options=options)
    except UserError as exc:
        _fail(exc)
    if json_output:
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    for row in rows:
        typer.echo(f"prompt:    {row['prompt']}\ntrained:   {row['trained']}\nreference: {row['reference']}\n")


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Two or more run directories.", readable=False)],
    output: Annotated[Path, typer.Option(help="The HTML page to write.", readable=False)] = Path("compare.html"),
):
    """One self-contained HTML page: the runs' held-out curves overlaid and a table of their summaries."""
    try:
        written = api.compare(run_dirs, output)
    except UserError as exc:
        _fail(exc)
    typer.echo(f"wrote {written}")


@app.command("convert-trl")
def convert_trl(
    config: Annotated[Path, typer.Argument(help="A `trl dpo --config` YAML file.", readable=False)],
    output: Annotated[
        Path | None, typer.Option(help="Write the recipe here (default: print it).", readable=False)
    ] = None,
):
    """Turn a `trl dpo` config into a recipe; lists the keys it could not map (stderr)."""
    try:
        text, converted = api.convert_trl(config, output)
    except UserError as exc:
        _fail(exc)
    for key, reason in converted.unmapped:
        typer.echo(f"not mapped: {key}: {reason}", err=True)
    for note in converted.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"wrote {output}" if output is not None else text.rstrip("\n"))


@app.command()
def recipes():
    """List the shipped recipes and sweeps, each with its first comment line; run one by name (dpo train quickstart)."""
    from dpo.config.shipped import shipped_dir

    try:
        found = api.recipes()
    except UserError as exc:
        _fail(exc)
    width = max(len(r.name) for r in found)
    for heading, sweeps in (("recipes (dpo train NAME)", False), ("sweeps (dpo sweep NAME)", True)):
        typer.echo(heading + ":")
        for r in (r for r in found if r.is_sweep == sweeps):
            typer.echo(f"  {r.name:<{width}}  {r.summary}")
    typer.echo(f"files: {shipped_dir('recipes')}")


def main() -> None:
    redact_standard_streams()  # every command's output (ours, typer's usage errors, libraries')
    try:
        app()
    except UserError as exc:  # raised outside a command body (e.g. while parsing)
        for problem in getattr(exc, "errors", None) or [exc]:
            print(f"error: {one_line(redact(str(problem)))}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
