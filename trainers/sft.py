"""``CATSFTTrainer``: SFT on −log f(p), p = exp(Σ completion-token log-probs), through ``cat`` closed forms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from trl import SFTTrainer

from cat.operators import MajorityVote, PassAtN
from trainers.quantization import disable_cpu_4bit_repack, refuse_gguf_quantized
from trainers.sft_config import CATSFTConfig

NUM_RIVALS = 4


class CATSFTTrainer(SFTTrainer):
    """Per-sequence loss ℓ_i, reduced by ``cat_reduction`` (the same for the baseline and every CAT branch).

    none: ℓ = −log p; passn: ℓ = −log(1 − (1−p)^N); majority: ℓ = −log P[Bin(N, p) ≥ k] (CAT §5, SFT update), each
    differentiated in closed form by ``cat.objectives`` (never CE times a differentiable weight).
    pairwise_contrastive: ℓ = Σ_t [0.5·(−log p_t) + 0.5·mean_r −log σ(z_gold − z_r)] over 4 rival tokens r per
    position, drawn without gradient from the softmax with the gold token masked out.
    ``sequence_mean`` averages ℓ over sequences; ``token_mean`` divides Σ ℓ by the number of target tokens.
    """

    def __init__(self, *args, **kwargs):
        config = kwargs.get("args", args[1] if len(args) > 1 else None)
        if not isinstance(config, CATSFTConfig):
            raise TypeError(f"args must be a CATSFTConfig, got {type(config).__name__}")
        refuse_gguf_quantized(kwargs.get("model", args[0] if args else None))
        super().__init__(*args, **kwargs)
        disable_cpu_4bit_repack(self.model)
        # The loss is already a mean over this micro-batch, so Trainer must divide it by the accumulation steps.
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"))
        # log-softmax in at least float32: bf16 log-probs summed over a sequence lose the small p that CAT reweights
        logits = outputs.logits[:, :-1]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        targets = labels[:, 1:]
        mask = targets != -100
        gold = targets.clamp(min=0)
        token_logp = torch.log_softmax(logits, dim=-1).gather(-1, gold.unsqueeze(-1)).squeeze(-1) * mask
        per_sequence = self.per_sequence_loss(logits, gold, mask, token_logp)
        if self.args.cat_reduction == "sequence_mean":
            loss = per_sequence.mean()
        else:
            loss = per_sequence.sum() / mask.sum().clamp(min=1)
        return (loss, outputs) if return_outputs else loss

    def per_sequence_loss(self, logits, gold, mask, token_logp) -> torch.Tensor:
        args = self.args
        log_p = token_logp.sum(dim=1)
        if args.cat_strategy == "none":
            return -log_p
        if args.cat_strategy == "passn":
            return PassAtN(args.cat_n).sft_loss(log_p, reduction="none")
        if args.cat_strategy == "majority":
            return MajorityVote(args.cat_n, args.cat_k).sft_loss(log_p, reduction="none")
        return (pairwise_contrastive_token_loss(logits, gold, token_logp) * mask).sum(dim=1)


def pairwise_contrastive_token_loss(logits: torch.Tensor, gold: torch.Tensor, token_logp: torch.Tensor) -> torch.Tensor:
    """0.5·(−log p_gold) + 0.5·mean over ``NUM_RIVALS`` sampled rivals r of −log σ(z_gold − z_r), per position."""
    with torch.no_grad():
        probs = torch.softmax(logits, dim=-1).scatter(-1, gold.unsqueeze(-1), 0.0)
        rivals = torch.multinomial(probs.flatten(0, 1), NUM_RIVALS, replacement=False).view(*gold.shape, NUM_RIVALS)
    z_gold = logits.gather(-1, gold.unsqueeze(-1))
    z_rivals = logits.gather(-1, rivals)
    pairwise = F.softplus(z_rivals - z_gold).mean(dim=-1)  # −log σ(z_gold − z_r) = softplus(z_r − z_gold)
    return 0.5 * (-token_logp) + 0.5 * pairwise
