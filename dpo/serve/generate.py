"""`dpo generate RUN_DIR`: what the trained model answers, next to what its reference (the model before DPO) answers.

    python -m dpo generate runs/quickstart --prompt "What is 12 + 7?"
    python -m dpo generate runs/quickstart --file my_prompts.jsonl --n 5 --max-new-tokens 64

Prompts are formatted the way the run trained on them: a row whose prompt is a list of messages goes through the
tokenizer's chat template (with the generation prompt); a plain-text prompt is used as it is in a run on standard
(plain-text) data, and becomes one user message in a run on conversational data (data_card.json `format`).
Deterministic: greedy decoding by default; with --sample, ancestral sampling seeded per batch (--seed).

The reference is the trained model with its LoRA adapter disabled, or under full fine-tuning the base model named
in recipe.yaml. The same `side_by_side` writes the held-out samples at the end of training (dpo/training/samples.py).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from dpo.analysis.evaluate import EvalOptions, PolicyAndReference, load_tokenizer, token_ids
from dpo.analysis.evaluate import generate as generate_ids
from dpo.config.loading import load_recipe
from dpo.data.readers import read_jsonl
from dpo.data.rows import Problem
from dpo.errors import UserError
from dpo.rundir.files import DATA_CARD, FINAL, RECIPE, json_object_or_empty


@dataclass
class GenerateOptions:
    max_new_tokens: int = 128
    sample: bool = False  # greedy unless asked: the same prompt gives the same answer
    seed: int = 0
    batch_size: int = 8

    def decoding(self) -> str:
        return "sample" if self.sample else "greedy"

    def check(self) -> None:
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError("must be >= 1", where=f"--{name.replace('_', '-')}")


def as_trained(prompt, conversational: bool):
    """A prompt in the format of the run's data: plain text becomes one user message in a chat run."""
    if isinstance(prompt, str) and conversational:
        return [{"role": "user", "content": prompt}]
    return prompt


def shown(prompt) -> str:
    """The prompt as a person reads it: the last user message of a conversation, or the text."""
    if isinstance(prompt, list):
        return next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), prompt[-1]["content"])
    return prompt


def prompt_ids(tokenizer, prompt) -> list[int]:
    """Token ids of a prompt as training saw it: the chat template with the generation prompt for messages
    (dpo/analysis/evaluate.py, TRL's DPO preprocessing), the tokenized text otherwise."""
    return token_ids(tokenizer, prompt, generation_prompt=True)


def side_by_side(
    use: Callable[[str], AbstractContextManager], tokenizer, prompts: list, options: GenerateOptions
) -> list[dict]:
    """[{prompt, trained, reference}] for each prompt; `use("policy" | "reference")` lends the model."""
    ids = [prompt_ids(tokenizer, p) for p in prompts]
    settings = EvalOptions(max_new_tokens=options.max_new_tokens, batch_size=options.batch_size)
    answers = {}
    for which in ("policy", "reference"):
        with use(which) as model:
            answers[which] = generate_ids(model, tokenizer, ids, settings, options.decoding(), options.seed)
    return [
        {
            "prompt": shown(p),
            "trained": tokenizer.decode(answers["policy"][i], skip_special_tokens=True),
            "reference": tokenizer.decode(answers["reference"][i], skip_special_tokens=True),
        }
        for i, p in enumerate(prompts)
    ]


def read_prompts(path: Path, limit: int | None) -> list:
    """The `prompt` of each row of a JSONL file (text or a list of messages), at most `limit` of them."""
    if not path.is_file():
        raise UserError("no such file", where=str(path))
    prompts = []
    for number, row in read_jsonl(path):  # the data files' reader: the same checks of size, bytes and JSON
        if isinstance(row, Problem):
            raise UserError(f"row {number}: {row}", where=str(path))
        prompt = row.get("prompt") if isinstance(row, dict) else None
        messages_ok = (
            isinstance(prompt, list)
            and prompt
            and all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in prompt
            )
        )
        if not (isinstance(prompt, str) and prompt.strip()) and not messages_ok:
            raise UserError(
                f"row {number}: needs a 'prompt': text, or a list of {{role, content}} messages", where=str(path)
            )
        prompts.append(prompt)
        if limit is not None and len(prompts) >= limit:
            break
    if not prompts:
        raise UserError("holds no prompts", where=str(path))
    return prompts


def generate_for_run(
    run_dir: str | Path,
    prompt: str | None = None,
    file: str | Path | None = None,
    n: int | None = None,
    options: GenerateOptions | None = None,
) -> list[dict]:
    """Answers of a finished run's trained model and of its reference to `prompt` or the prompts of `file`."""
    options = options or GenerateOptions()
    run_dir = Path(run_dir)
    options.check()
    if (prompt is None) == (file is None):
        raise UserError("give one of --prompt TEXT or --file JSONL", where="dpo generate")
    if prompt is not None and not prompt.strip():  # as a blank row of --file is: no tokens to start from
        raise UserError("is empty", where="--prompt")
    if n is not None and n < 1:
        raise UserError("must be >= 1", where="--n")
    if n is not None and file is None:
        raise UserError("takes the first N prompts of --file; with --prompt there is one", where="--n")
    if not (run_dir / RECIPE).is_file():
        raise UserError(f"not a run directory: no {RECIPE}", where=str(run_dir))
    if not (run_dir / FINAL).is_dir():
        raise UserError("no final/ weights: the run did not finish", where=str(run_dir))
    prompts = [prompt] if prompt is not None else read_prompts(Path(file), n)
    conversational = json_object_or_empty(run_dir / DATA_CARD).get("format") == "conversational"
    prompts = [as_trained(p, conversational) for p in prompts]
    recipe = load_recipe(run_dir / RECIPE).recipe

    import torch

    torch.manual_seed(options.seed)
    tokenizer = load_tokenizer(run_dir, recipe.model.trust_remote_code)
    if any(isinstance(p, list) for p in prompts) and not tokenizer.chat_template:
        raise UserError(
            "chat prompts need a chat template, and the run's tokenizer has none", where=str(file or "--prompt")
        )
    models = PolicyAndReference(run_dir, recipe)
    return side_by_side(models.use, tokenizer, prompts, options)
