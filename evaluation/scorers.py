"""Sample scorers for best-of-k selection: the verifier and verifier-free / reward-model alternatives.

- ``oracle``: the task verifier, 1.0 if correct else 0.0 (best-of-k under it is pass@k).
- ``self_certainty``: mean over generated tokens of KL(U ‖ p_t) (Kang et al. 2025), higher = more confident.
- ``mean_logprob``: mean log p(y_t | y_<t) of the generated tokens.
- ``reward_model:ID``: the scalar logit of a Hugging Face ``AutoModelForSequenceClassification`` (num_labels = 1)
  applied to the chat-templated prompt + completion.

Weighted majority vote turns each score into a vote weight (``evaluation.metrics.vote_weights``).
"""

from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from evaluation.config import check_scorer
from evaluation.sampling import Sample


class RewardModelScorer:
    """Scores (prompt, completion) pairs with a sequence-classification reward model's single logit."""

    def __init__(self, model, tokenizer, batch_size: int = 8):
        if model.config.num_labels != 1:
            raise ValueError(f"reward model must have num_labels=1, got {model.config.num_labels}")
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    @classmethod
    def from_pretrained(cls, model_id: str) -> "RewardModelScorer":
        return cls(AutoModelForSequenceClassification.from_pretrained(model_id), AutoTokenizer.from_pretrained(model_id))

    @torch.no_grad()
    def __call__(self, prompt: str, completions: list[str]) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(completions), self.batch_size):
            texts = [prompt + c for c in completions[start : start + self.batch_size]]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True).to(self.model.device)
            scores += self.model(**enc).logits[:, 0].float().tolist()
        return scores


def score_samples(scorer: str, samples: list[Sample], correct: list[bool], prompt: str,
                  reward_model: RewardModelScorer | None = None) -> list[float]:
    """One score per sample under ``scorer`` (higher is better)."""
    if scorer == "oracle":
        return [float(c) for c in correct]
    if scorer == "self_certainty":
        return [s.self_certainty for s in samples]
    if scorer == "mean_logprob":
        return [s.logprob_mean for s in samples]
    check_scorer(scorer)
    if reward_model is None:
        raise ValueError(f"scorer {scorer!r} needs a loaded RewardModelScorer, got None")
    return reward_model(prompt, [s.text for s in samples])
