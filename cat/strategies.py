"""The test-time strategies by name, one vocabulary for training (``cat_strategy``) and evaluation (``strategies``).

A strategy's name is the prefix of its metric. Training with ``cat_strategy: pass`` and ``cat_n: 16`` maximises
pass@16 (CAT, arXiv:2604.24957 §2), and ``eval.strategies: [pass, maj, bon]`` reports pass@k, maj@k and bon@k:

- ``pass``: some of the N samples is correct, f(p) = 1 − (1−p)^N (``cat.operators.PassAtN``);
- ``maj``: the plurality answer of the N samples is correct; training uses the surrogate P[Bin(N, p) ≥ k]
  (``cat.operators.MajorityVote``);
- ``bon``: the sample a scorer ranks first is correct (``cat.operators.BestOfN``).

Training adds objectives that are not test-time strategies (``pkpo``, ``passk_advantage``,
``pairwise_contrastive``), and evaluation adds metrics that no trainer targets (``avg``, ``wmaj``, ``pot``).
``canonical_strategy`` still reads the former training names (``passn``, ``majority``, ``best_of_n``), until catpot 0.3.
"""

from __future__ import annotations

import warnings

PASS, MAJ, BON = "pass", "maj", "bon"
TEST_TIME_STRATEGIES = (PASS, MAJ, BON)
FORMER_NAMES = {"passn": PASS, "majority": MAJ, "best_of_n": BON}


def canonical_strategy(name, field: str):
    """``name``, or the current name of a former one (with a ``FutureWarning`` naming ``field``); other values are
    returned unchanged for the caller's own check."""
    if isinstance(name, str) and name in FORMER_NAMES:
        new = FORMER_NAMES[name]
        warnings.warn(f"{field}={name!r} is now {new!r} (the prefix of its metric, {new}@N); the former name "
                      "will stop being read in catpot 0.3", FutureWarning, stacklevel=3)
        return new
    return name
