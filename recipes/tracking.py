"""W&B for training runs: offline without an API key, resumable, and never the reason a run stops.

We open the run ourselves (project, entity, group, job type, tags, the whole recipe as config); training then runs
with ``report_to=["wandb"]``, so transformers' ``WandbCallback`` (which only calls ``wandb.init`` when no run exists,
``WandbCallback.setup``) and TRL's own W&B logging (GRPO's completions table, ``log_completions``) log into it.
``use_safe_callback`` swaps the callback for ``SafeWandbCallback``, whose hooks turn W&B off with one warning on an
error instead of ending training; turning off also takes ``wandb`` out of ``report_to``, which stops TRL's logging.
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
DEFAULT_PROJECT = "catpot"


def resolve_project(project: str | None) -> str:
    """The W&B project: the recipe's value if set, else ``$WANDB_PROJECT``, else ``catpot``."""
    return project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT


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
                project=resolve_project(logging_cfg.project), entity=logging_cfg.entity, group=logging_cfg.group,
                job_type=logging_cfg.job_type, name=run_name, tags=logging_cfg.tags, config=config,
                dir=str(output_dir), mode=mode, id=run_id, resume="allow",
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
    def wrapper(self, args, *rest, **kwargs):
        if self.failed:
            return None
        try:
            return method(self, args, *rest, **kwargs)
        except Exception as error:  # noqa: BLE001
            self.failed = True
            if isinstance(getattr(args, "report_to", None), list) and "wandb" in args.report_to:
                args.report_to.remove("wandb")  # TRL logs its tables only while "wandb" is in report_to
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


def use_safe_callback(trainer) -> None:
    """Replace the ``WandbCallback`` that ``report_to=["wandb"]`` gave ``trainer`` with a ``SafeWandbCallback``."""
    trainer.remove_callback(WandbCallback)
    trainer.add_callback(SafeWandbCallback())
