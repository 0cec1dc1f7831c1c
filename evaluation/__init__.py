"""evaluation: test-time sampling and scoring of a model, and the metrics computed from the samples.

``sampling`` (batched generation with per-request seeds), ``scorers`` (verifier, reward model, self-certainty),
``records`` (one JSON line per problem, resumable), ``metrics`` (pass@k, maj@k, weighted maj@k, best-of-k and avg@k
from one pool of n samples, compute per point, bootstrap intervals). The estimators themselves are in
``cat.estimators``, shared with the training objectives.
"""
