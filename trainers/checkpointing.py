"""CAT state in Trainer checkpoints: the best-of-N reward history, saved next to TRL's model/optimizer/RNG files."""

from __future__ import annotations

import json
from pathlib import Path

from cat.estimators import RewardHistory
from core.files import atomic_write_json

CAT_STATE_FILE = "cat_state.json"


def save_cat_state(checkpoint_dir: str | Path, history: RewardHistory) -> None:
    """Written atomically: a kill mid-write leaves no torn file that would make the checkpoint look complete."""
    atomic_write_json(Path(checkpoint_dir, CAT_STATE_FILE), {"reward_history": history.state_dict()}, indent=None)


def load_cat_state(checkpoint_dir: str | Path, history: RewardHistory) -> None:
    """Restore the history in place; a checkpoint without CAT state is refused (resuming would change weights)."""
    path = Path(checkpoint_dir, CAT_STATE_FILE)
    if not path.is_file():
        raise ValueError(f"checkpoint_dir has no {CAT_STATE_FILE}: {str(checkpoint_dir)!r}")
    history.load_state_dict(json.loads(path.read_text())["reward_history"])
