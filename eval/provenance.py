"""What a benchmark run records about where it ran, so that a resumed benchmark's mixed runs can be told apart."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def commit() -> str | None:
    """The repository's commit, with "+dirty" when tracked files outside eval/results/ have changes (the results
    change with every run recorded); None outside a git checkout."""

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO)

    head = git("rev-parse", "--short", "HEAD")
    if head.returncode != 0:
        return None
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!eval/results").stdout
    return head.stdout.strip() + ("+dirty" if changed else "")


def provenance() -> dict:
    """{commit, torch_threads} of this process."""
    import torch

    return {"commit": commit(), "torch_threads": torch.get_num_threads()}
