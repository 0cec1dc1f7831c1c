"""What produced a set of samples, as content hashes: the model, the adapter, the rendered prompts, the libraries.

``catpot eval`` resumes ``records.jsonl`` only when all of these match, so that records of another model, adapter,
task option or library version are never mixed into one result. Identity follows the bytes, not the path: an
adapter retrained in place gets a new hash. ``run_provenance`` adds what a reader of the results needs to reproduce
them but that does not decide a resume: the git commit of the catpot checkout, every relevant package version, the
data files' hashes and the chat template's hash.

Adapters are hashed in full (they are small). Base-model weights can be many GB, so a weight file is identified by
its size, its first MiB (the safetensors header with every tensor's name, dtype, shape and offset) and 16 evenly
spaced 64 KiB samples; retraining changes essentially every weight, so it changes the samples too, while a load of a
135M model stays well under a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from core import CATPOT_VERSION
from core.files import file_sha256, tree_sha256
from recipes.run_dir import BOOKKEEPING

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
SMALL_FILE = 8 << 20  # files up to this size are hashed in full
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "math-verify", "bitsandbytes", "wandb",
            "vllm", "deepspeed")
CHECKOUT = Path(__file__).resolve().parents[1]  # the directory holding the catpot packages


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape training and evaluation (None: not installed); read from the
    package metadata, so nothing is imported."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def git_revision(checkout: str | Path = CHECKOUT) -> dict | None:
    """``{"commit", "dirty"}`` of the git checkout catpot runs from; None when it is not one (an installed wheel)
    or git is missing. ``dirty``: tracked files differ from the commit."""

    def git(*command: str) -> str:
        return subprocess.run(["git", "-C", str(checkout), *command], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != Path(checkout).resolve():
            return None  # catpot is installed inside some other repository (a virtualenv in a project)
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def chat_template_sha256(tokenizer) -> str | None:
    """sha256 of the tokenizer's chat template (a string, or a mapping of named templates); None without one."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    text = template if isinstance(template, str) else json.dumps(template, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def run_provenance(task, tokenizer, source: dict) -> dict:
    """What produced an evaluation, for ``results.json`` and the records header (see ``recipes.eval_command``)."""
    return {"catpot": CATPOT_VERSION, "git": git_revision(), "packages": package_versions(), "source": source,
            "data": dict(task.data_sha256), "chat_template": task.chat_template,
            "chat_template_sha256": chat_template_sha256(tokenizer) if task.chat_template else None,
            "prompts_sha256": prompts_sha256(task, tokenizer)}


def sampled_sha256(path: str | Path, samples: int = 16, sample_bytes: int = 1 << 16) -> str:
    """sha256 over the size, the first MiB and ``samples`` evenly spaced blocks of a (large) file."""
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode() + b"\0")
    with open(path, "rb") as f:
        digest.update(f.read(1 << 20))
        for i in range(samples):
            f.seek(size * i // samples)
            digest.update(f.read(sample_bytes))
    return digest.hexdigest()


def directory_fingerprint(directory: str | Path) -> str:
    """sha256 over the top-level files of a model directory: small files in full, weight files sampled."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(directory).iterdir() if p.is_file() and p.name not in BOOKKEEPING):
        large = path.suffix in WEIGHT_SUFFIXES and path.stat().st_size > SMALL_FILE
        digest.update(f"{path.name}\0{sampled_sha256(path) if large else file_sha256(path)}\0".encode())
    return digest.hexdigest()


def check_adapter(directory: str | Path, what: str = "adapter") -> list[str]:
    """The adapter files of ``directory`` after checking they are readable; an error names the file at fault."""
    from safetensors import safe_open

    directory = Path(directory)
    config = directory / ADAPTER_CONFIG
    if not config.is_file():
        raise FileNotFoundError(f"{what}: no peft adapter at {str(directory)!r} ({ADAPTER_CONFIG} is missing)")
    try:
        if not isinstance(json.loads(config.read_text()), dict):
            raise ValueError("not a JSON object")
    except (UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{what}: {config} is corrupt ({_first_line(error)})") from None
    weights = [name for name in ADAPTER_WEIGHTS if (directory / name).is_file()]
    if not weights:
        raise FileNotFoundError(f"{what}: {directory} has no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})")
    if weights[0].endswith(".safetensors"):
        try:
            with safe_open(str(directory / weights[0]), "pt") as f:
                f.keys()
        except Exception as error:  # safetensors raises its own SafetensorError for a torn or foreign file
            raise ValueError(f"{what}: {directory / weights[0]} is corrupt ({_first_line(error)})") from None
    return [ADAPTER_CONFIG, weights[0]]


def adapter_fingerprint(directory: str | Path, what: str = "adapter") -> str:
    """sha256 over the adapter's config and weights (checked readable first)."""
    return tree_sha256(directory, tuple(check_adapter(directory, what)))


def weights_fingerprint(directory: str | Path) -> str:
    """A trained ``final/`` directory: the adapter hash for a LoRA run, the model directory's otherwise."""
    if (Path(directory) / ADAPTER_CONFIG).is_file():
        return adapter_fingerprint(directory, f"trained weights in {directory}")
    return directory_fingerprint(directory)


def model_fingerprint(name_or_path: str, cache_dir: str | Path | None = None) -> dict:
    """``{"name", "weights"}`` of a base model; ``weights`` hashes its files where they are on disk.

    The tiny test Llama is built from code and seeded (its identity is catpot's version); a Hub id not in the local
    Hugging Face cache is identified by its name.
    """
    from core.models import EMBEDDED, TINY, embedded_checkpoint

    if name_or_path == TINY:
        return {"name": TINY, "weights": None}
    if name_or_path in EMBEDDED:
        return {"name": name_or_path, "weights": directory_fingerprint(embedded_checkpoint(name_or_path, cache_dir))}
    if Path(name_or_path).is_dir():
        return {"name": name_or_path, "weights": directory_fingerprint(name_or_path)}
    try:
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(name_or_path, local_files_only=True)
    except Exception:  # noqa: BLE001 — not cached (or not a Hub id): the name is all there is to go on
        return {"name": name_or_path, "weights": None}
    return {"name": name_or_path, "weights": directory_fingerprint(snapshot)}


def prompts_sha256(task, tokenizer) -> str:
    """sha256 over every problem's id, rendered prompt (``Task.render``: exactly what is sampled from) and gold
    answer."""
    digest = hashlib.sha256()
    for problem in task.problems:
        digest.update(json.dumps([problem.id, task.render(problem, tokenizer), problem.answer]).encode() + b"\n")
    return digest.hexdigest()


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
