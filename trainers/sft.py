"""``CATSFTTrainer``: SFT on −log f(p), p = exp(Σ completion-token log-probs), through ``cat`` closed forms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from datasets import IterableDataset
from trl import SFTTrainer
from trl.data_utils import get_dataset_column_names
from trl.trainer.utils import entropy_from_logits, selective_log_softmax

from cat.operators import MajorityVote, PassAtN
from core.models import disable_cpu_4bit_repack, refuse_gguf_quantized
from trainers.sft_config import CATSFTConfig

NUM_RIVALS = 4


class CATSFTTrainer(SFTTrainer):
    """Per-sequence loss ℓ_i, reduced by ``cat_reduction`` (the same for the baseline and every CAT branch).

    none: ℓ = −log p; pass: ℓ = −log(1 − (1−p)^N); maj: ℓ = −log P[Bin(N, p) ≥ k] (CAT §5, SFT update), each
    differentiated in closed form by ``cat.objectives`` (never CE times a differentiable weight).
    pairwise_contrastive: ℓ = Σ_t [0.5·(−log p_t) + 0.5·mean_r −log σ(z_gold − z_r)] over 4 rival tokens r per
    position, drawn without gradient from the softmax with the gold token masked out.

    ``token_mean`` divides Σ ℓ by the target tokens, ``sequence_mean`` by the sequences, both counted over the whole
    gradient-accumulation window and every process, as TRL's SFT loss counts tokens (``num_items_in_batch``); so
    the gradient does not depend on how a batch is split into micro-batches or processes.

    The log-probabilities come from TRL's fused LM head (float32 softmax statistics, no logits materialised), the
    path TRL's own SFT loss takes, which also gives its ``entropy``, ``mean_token_accuracy`` and ``num_tokens``
    metrics; pairwise_contrastive needs the logits, so it runs the plain forward and TRL's selective log-softmax.

    p must be the probability of the whole completion given the prompt: a dataset whose loss would cover the prompt
    (``messages``/``text`` data without ``assistant_only_loss``) is refused, and so is an example whose completion
    ``max_length`` would cut (p would be the probability of a prefix).
    """

    # compute_loss divides by the whole window's item count, so Trainer must not divide by the accumulation steps
    loss_is_scaled_for_ga = True

    def __init__(self, *args, **kwargs):
        config = kwargs.get("args", args[1] if len(args) > 1 else None)
        if not isinstance(config, CATSFTConfig):
            raise TypeError(f"args must be a CATSFTConfig, got {type(config).__name__}")
        refuse_gguf_quantized(kwargs.get("model", args[0] if args else None))
        super().__init__(*args, **kwargs)
        disable_cpu_4bit_repack(self.model)

    # ------------------------------------------------------------------------------------------------- data checks

    def _prepare_dataset(self, dataset, processing_class, args, packing, formatting_func, dataset_name):
        self._refuse_whole_sequence_loss(dataset, args, formatting_func, dataset_name)
        # Prepared without truncation, so that a completion max_length would cut is seen and refused; the rest is
        # then truncated as TRL truncates (only unsupervised tokens go).
        max_length, args.max_length = args.max_length, None
        try:
            dataset = super()._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)
        finally:
            args.max_length = max_length
        if max_length is None:
            return dataset
        kept = slice(None, max_length) if args.truncation_mode == "keep_start" else slice(-max_length, None)

        def truncated(example: dict) -> dict:
            return {"input_ids": example["input_ids"][kept], "labels": example["labels"][kept]}

        def refuse_if_cut(example: dict) -> dict:
            if _completion_is_cut(example["labels"], kept):
                _refuse_cut(1, None, max_length, args, dataset_name)
            return truncated(example)

        if isinstance(dataset, IterableDataset):  # checked as the examples stream in
            return dataset.map(refuse_if_cut)
        cut_lengths, longest = [], 0
        for batch in dataset.select_columns(["labels"]).iter(batch_size=1000):
            for labels in batch["labels"]:
                longest = max(longest, len(labels))
                if _completion_is_cut(labels, kept):
                    cut_lengths.append(len(labels))
        if cut_lengths:
            _refuse_cut(len(cut_lengths), len(dataset), max_length, args, dataset_name, max(cut_lengths))
        return dataset.map(truncated) if longest > max_length else dataset

    def _refuse_whole_sequence_loss(self, dataset, args, formatting_func, dataset_name) -> None:
        columns = set(get_dataset_column_names(dataset))
        completion_data = "completion_mask" in columns or {"prompt", "completion"} <= columns
        if (
            "labels" in columns
            or args.assistant_only_loss
            or "assistant_masks" in columns
            or (self.completion_only_loss and completion_data and formatting_func is None)
        ):
            return
        raise ValueError(
            f"{dataset_name} dataset has columns {sorted(columns)}: CAT-SFT needs p = π(completion | prompt), so pass "
            "prompt-completion data ('prompt' and 'completion' columns) or set assistant_only_loss=True; otherwise "
            "TRL supervises the whole sequence and p would include the prompt"
        )

    # ---------------------------------------------------------------------------------------------------- the loss

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> torch.Tensor | None:
        """Target tokens (``token_mean``) or sequences (``sequence_mean``) of the accumulation window, summed over
        processes when ``average_tokens_across_devices`` (transformers' default), as Trainer counts tokens."""
        if not batch_samples:
            return None
        if self.args.cat_reduction == "token_mean":
            count = sum((batch["labels"][..., 1:] != -100).sum() for batch in batch_samples)
        else:
            count = sum(batch["labels"].shape[0] for batch in batch_samples)
        count = torch.as_tensor(count, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        labels = inputs["labels"]
        forward = {k: v for k, v in inputs.items() if k != "labels"}
        forward["use_cache"] = False
        if self.args.cat_strategy == "pairwise_contrastive":
            outputs = model(**forward)
            # at least float32: bf16 log-probs summed over a sequence lose the small p that CAT reweights
            logits = outputs.logits[:, :-1]
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            mask = labels[:, 1:] != -100
            gold = labels[:, 1:].clamp(min=0)
            token_logp = selective_log_softmax(logits, gold) * mask
            per_sequence = (pairwise_contrastive_token_loss(logits, gold, token_logp) * mask).sum(dim=1)
            with torch.no_grad():
                entropy = entropy_from_logits(logits) * mask
                is_top1 = (logits.argmax(dim=-1) == gold) & mask
        else:
            outputs = model(**forward, labels=labels, fused_lm_head=True)
            mask, token_logp = outputs.label_mask, outputs.log_probs  # log_probs is 0 where the label is -100
            per_sequence = self.per_sequence_loss(token_logp.sum(dim=1))
            entropy, is_top1 = outputs.entropy, outputs.is_top1
        if num_items_in_batch is None:  # evaluation: this batch alone
            items = mask.sum() if self.args.cat_reduction == "token_mean" else labels.shape[0]
            loss = per_sequence.sum() / torch.as_tensor(items).clamp(min=1)
        else:
            loss = per_sequence.sum() / num_items_in_batch
            # num_items_in_batch counts every process and DDP averages the gradients over them
            if self.args.average_tokens_across_devices:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        self._log_token_metrics(mode, inputs, mask, entropy.detach(), is_top1)
        if return_outputs and self.args.cat_strategy != "pairwise_contrastive":
            with torch.no_grad():  # the fused head builds no logits; prediction_step wants them
                outputs = model(**forward)
        return (loss, outputs) if return_outputs else loss

    def _log_token_metrics(self, mode: str, inputs, mask, entropy, is_top1) -> None:
        """TRL SFTTrainer's entropy, mean_token_accuracy and num_tokens, computed as it computes them."""
        num_valid = self.accelerator.gather_for_metrics(mask.sum()).sum()
        entropy_sum = self.accelerator.gather_for_metrics(entropy.sum()).sum()
        num_correct = self.accelerator.gather_for_metrics(is_top1.sum()).sum()
        self._metrics[mode]["entropy"].append((entropy_sum / num_valid).item() if num_valid > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((num_correct / num_valid).item() if num_valid > 0 else 0.0)
        if mode == "train":
            # CAT-SFT refuses packing and padding-free batches, so the attention mask is always there
            tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += tokens // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    def per_sequence_loss(self, log_p: torch.Tensor) -> torch.Tensor:
        args = self.args
        if args.cat_strategy == "none":
            return -log_p
        if args.cat_strategy == "pass":
            return PassAtN(args.cat_n).sft_loss(log_p, reduction="none")
        return MajorityVote(args.cat_n, args.cat_k).sft_loss(log_p, reduction="none")


def _completion_is_cut(labels: list[int], kept: slice) -> bool:
    """Whether keeping only ``labels[kept]`` (TRL's truncation) drops a supervised token."""
    return sum(label != -100 for label in labels) != sum(label != -100 for label in labels[kept])


def _refuse_cut(count, total, max_length, args, dataset_name, longest=None):
    of = f"{count} of {total} examples" if total is not None else "an example"
    longest = f", the longest {longest} tokens" if longest is not None else ""
    raise ValueError(
        f"max_length={max_length} cuts the completion of {of} in the {dataset_name} dataset{longest} "
        f"(truncation_mode={args.truncation_mode!r}): p would be the probability of a prefix. Raise max_length or "
        "drop the long examples"
    )


def pairwise_contrastive_token_loss(logits: torch.Tensor, gold: torch.Tensor, token_logp: torch.Tensor) -> torch.Tensor:
    """0.5·(−log p_gold) + 0.5·mean over ``NUM_RIVALS`` sampled rivals r of −log σ(z_gold − z_r), per position."""
    with torch.no_grad():
        probs = torch.softmax(logits, dim=-1).scatter(-1, gold.unsqueeze(-1), 0.0)
        rivals = torch.multinomial(probs.flatten(0, 1), NUM_RIVALS, replacement=False).view(*gold.shape, NUM_RIVALS)
    z_gold = logits.gather(-1, gold.unsqueeze(-1))
    z_rivals = logits.gather(-1, rivals)
    pairwise = F.softplus(z_rivals - z_gold).mean(dim=-1)  # −log σ(z_gold − z_r) = softplus(z_r − z_gold)
    return 0.5 * (-token_logp) + 0.5 * pairwise
