"""evaluation: test-time sampling and scoring of a model, and the metrics computed from the samples.

``config`` (the sampler's settings and the names of strategies, scorers, backends), ``sampling`` (batched
generation with per-prompt seeds), ``scorers`` (verifier, reward model, self-certainty),
``records`` (one JSON line per problem, resumable), ``metrics`` (pass@k, maj@k, weighted maj@k, best-of-k and avg@k
from one pool of n samples, compute per point, bootstrap intervals). The estimators themselves are in
``cat.estimators``, shared with the training objectives.
"""
