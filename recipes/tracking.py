"""W&B for training runs: offline without an API key, resumable, and never the reason a run stops.

We open the run ourselves (project, entity, tags, the whole recipe as config) so that transformers'
``WandbCallback``, which only calls ``wandb.init`` when no run exists (``WandbCallback.setup``), logs into it. The
callback is wrapped so that a W&B error turns logging off with one warning instead of ending training.
"""

from __future__ import annotations

import functools
import os
import secrets
import warnings
from pathlib import Path

from transformers.integrations import WandbCallback

from core.files import atomic_write_text

RUN_ID_FILE = "wandb_run_id"


def resolve_mode(mode: str) -> str:
    """``auto``: ``$WANDB_MODE`` if set, else online with an API key (env or ~/.netrc) and offline without one."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    netrc = Path.home() / ".netrc"
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (netrc.is_file() and "api.wandb.ai" in netrc.read_text())
    return "online" if has_key else "offline"


def start_run(logging_cfg, config: dict, output_dir: str | Path, run_name: str):
    """Open (after a kill: reopen) the run of ``output_dir``, or a new run if the old id is still held; None when W&B
    is disabled or cannot start. The run id lives in ``output_dir/wandb_run_id``; a failure to read or write that
    file only warns (the run then cannot be continued by ``--resume``, but training goes on)."""
    mode = resolve_mode(logging_cfg.mode)
    if mode == "disabled":
        return None
    output_dir = Path(output_dir)
    id_file = output_dir / RUN_ID_FILE
    previous = _read_run_id(id_file)
    for run_id in [i for i in (previous, secrets.token_hex(4)) if i]:
        try:
            import wandb

            run = wandb.init(
                project=logging_cfg.project, entity=logging_cfg.entity, name=run_name, tags=logging_cfg.tags,
                config=config, dir=str(output_dir), mode=mode, id=run_id, resume="allow",
            )
        except Exception as error:  # noqa: BLE001 — W&B must never stop a run
            # after a SIGKILL the dead process's W&B service can still hold the old id ("run ID is in use")
            warnings.warn(f"W&B run {run_id} could not be opened: {type(error).__name__}: {error}", stacklevel=2)
            continue
        if run_id != previous:
            try:
                atomic_write_text(id_file, run_id)
            except OSError as error:
                warnings.warn(f"W&B run id not saved to {id_file} ({type(error).__name__}: {error}); "
                              "a resumed run will log to a new W&B run", stacklevel=2)
        return run
    warnings.warn("W&B disabled for this run", stacklevel=2)
    return None


def _read_run_id(id_file: Path) -> str | None:
    if not id_file.exists():
        return None
    try:
        return id_file.read_text().strip() or None
    except (OSError, UnicodeDecodeError) as error:
        warnings.warn(f"W&B run id unreadable in {id_file} ({type(error).__name__}); starting a new W&B run",
                      stacklevel=3)
        return None


def finish(run, exit_code: int | None = None) -> None:
    """Close the run; ``exit_code`` 1 marks it failed in W&B. Called on every path, error or not, so that W&B's own
    exit hook never finds an open run to tear down."""
    if run is None:
        return
    try:
        run.finish(exit_code=exit_code)
    except Exception as error:  # noqa: BLE001
        warnings.warn(f"W&B finish failed: {type(error).__name__}: {error}", stacklevel=2)


def _never_raises(method):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self.failed:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as error:  # noqa: BLE001
            self.failed = True
            warnings.warn(f"W&B logging stopped: {type(error).__name__}: {error}", stacklevel=2)
            return None

    return wrapper


class SafeWandbCallback(WandbCallback):
    """transformers' ``WandbCallback`` whose every hook turns W&B off on error instead of raising."""

    failed = False

    setup = _never_raises(WandbCallback.setup)
    on_train_begin = _never_raises(WandbCallback.on_train_begin)
    on_train_end = _never_raises(WandbCallback.on_train_end)
    on_log = _never_raises(WandbCallback.on_log)
    on_save = _never_raises(WandbCallback.on_save)
    on_predict = _never_raises(WandbCallback.on_predict)
