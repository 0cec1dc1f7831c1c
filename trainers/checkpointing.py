"""CAT state in Trainer checkpoints: the best-of-N reward history, saved next to TRL's model/optimizer/RNG files."""

from __future__ import annotations

import json
from pathlib import Path

from cat.estimators import RewardHistory

CAT_STATE_FILE = "cat_state.json"


def save_cat_state(checkpoint_dir: str | Path, history: RewardHistory) -> None:
    Path(checkpoint_dir, CAT_STATE_FILE).write_text(json.dumps({"reward_history": history.state_dict()}))


def load_cat_state(checkpoint_dir: str | Path, history: RewardHistory) -> None:
    """Restore the history in place; a checkpoint without CAT state is refused (resuming would change weights)."""
    path = Path(checkpoint_dir, CAT_STATE_FILE)
    if not path.is_file():
        raise ValueError(f"checkpoint_dir has no {CAT_STATE_FILE}: {str(checkpoint_dir)!r}")
    history.load_state_dict(json.loads(path.read_text())["reward_history"])
