"""``CATGRPOTrainer``: TRL's GRPO with advantages reweighted (or replaced) for a test-time strategy (CAT §5)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing

from cat.estimators import RewardHistory, passk_training_advantage, pkpo_sloo_minus_one
from trainers.cat_weights import PER_SAMPLE_ESTIMATORS, compute_cat_weights
from trainers.checkpointing import load_cat_state, save_cat_state
from trainers.grpo_config import CATGRPOConfig
from trainers.quantization import disable_cpu_4bit_repack, refuse_gguf_quantized

AnswerKeyFn = Callable[[Any], Hashable | None]


class CATGRPOTrainer(GRPOTrainer):
    """GRPO whose group-standardised advantages A are multiplied by CAT weights w ≥ 0 (per prompt or per sample).

    Scaling A by w ≥ 0 scales every GRPO loss term −min(ρA, clip(ρ)A) by w, so this is exactly the paper's weighted
    policy gradient w·A·∇log π. ``pkpo`` replaces A with the PKPO s^(loo−1) pass@k credit; ``passk_advantage`` with
    the Pass@k-Training analytical advantage. ``answer_key_fn(completion)`` gives majority vote its answer clusters.

    All-wrong penalty λ = ``cat_all_wrong_penalty`` (CAT repo ``rl.py``, step 2 of its RL update; λ = 0.5 in the
    paper's majority presets, App. K): A_i ← (A_i − λ·1[no rollout of the prompt is correct])·w_i, so an unsolved
    prompt, whose group-standardised A is 0, pushes its rollouts down by λ·w instead of contributing nothing.

    Logs ``cat/raw_reward_mean`` (rewards are never transformed here, so it equals TRL's ``reward``; the CAT weight
    acts on the advantage) and ``cat/alignment``, the cosine of the training weight with the test strategy's f′
    over this batch's p̂ (``cat.alignment``), next to the weight statistics.
    """

    def __init__(self, *args, answer_key_fn: AnswerKeyFn | None = None, **kwargs):
        args_config = kwargs.get("args", args[2] if len(args) > 2 else None)
        if not isinstance(args_config, CATGRPOConfig):
            raise TypeError(f"args must be a CATGRPOConfig, got {type(args_config).__name__}")
        if args_config.cat_strategy == "majority" and args_config.cat_k == "dynamic" and answer_key_fn is None:
            raise ValueError("cat_k='dynamic' needs answer_key_fn, got None")
        refuse_gguf_quantized(kwargs.get("model", args[0] if args else None))
        super().__init__(*args, **kwargs)
        disable_cpu_4bit_repack(self.model)
        self.answer_key_fn = answer_key_fn
        self.cat_history = RewardHistory(args_config.cat_history_size)
        self._cat_gathered: tuple[list, list, torch.Tensor] | None = None

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        # Trainer names the directory it just wrote after the global step (transformers' PREFIX_CHECKPOINT_DIR).
        run_dir = self._get_output_dir(trial=trial)
        save_cat_state(Path(run_dir, f"checkpoint-{self.state.global_step}"), self.cat_history)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_cat_state(resume_from_checkpoint, self.cat_history)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # TRL returns rewards gathered over all processes; a GRPO group can straddle processes, so the CAT weights
        # must be computed here on the global groups (a per-process reward function would see partial groups).
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self._cat_active:
            self._cat_gathered = (gather_object(prompts), gather_object(completions), rewards_per_func)
        return rewards_per_func

    @property
    def _cat_active(self) -> bool:
        return self.args.cat_strategy != "none" or self.args.cat_all_wrong_penalty > 0

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if not self._cat_active:
            return output
        prompts, completions, rewards_per_func = self._cat_gathered
        self._cat_gathered = None
        mode = "train" if self.model.training else "eval"
        m = self.num_generations if mode == "train" else self.num_generations_eval
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        rewards = (rewards_per_func * weights).nansum(dim=1).double().cpu()
        # TRL's own "reward" metric leaves out completions that every reward function refused (all NaN); so does ours.
        scored = ~torch.isnan(rewards_per_func).all(dim=1).cpu()
        self._metrics[mode]["cat/raw_reward_mean"].append(float(rewards[scored].mean()))
        rewards = rewards.view(-1, m)
        correct = (rewards >= self.args.cat_correct_threshold).double()
        logp_sum, lengths = self._old_sequence_logps(output, m, mode) if self._needs_sequence_logps else (None, None)
        cat_weights, replacement = self._cat_factor(prompts[::m], completions, rewards, correct, m, mode, logp_sum, lengths)
        local = len(output["advantages"])
        rows = slice(self.accelerator.process_index * local, (self.accelerator.process_index + 1) * local)

        def this_process(values: torch.Tensor) -> torch.Tensor:
            # Keep only this process's rows, as TRL does for its advantages.
            return values.flatten()[rows].to(output["advantages"].device, output["advantages"].dtype)

        advantages = output["advantages"] if replacement is None else this_process(replacement)
        if self.args.cat_all_wrong_penalty > 0:
            all_wrong = (correct.sum(dim=1, keepdim=True) == 0).double().expand(-1, m)
            advantages = advantages - self.args.cat_all_wrong_penalty * this_process(all_wrong)
        if cat_weights is not None:
            advantages = advantages * this_process(cat_weights)
        output["advantages"] = advantages
        return output

    @property
    def _needs_sequence_logps(self) -> bool:
        return self.args.cat_strategy in ("passn", "majority") and self.args.cat_p_estimator in PER_SAMPLE_ESTIMATORS

    @torch.no_grad()
    def _old_sequence_logps(self, output: dict, m: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Σ_t log π_old(y_t | x, y_<t) and the token count of every completion, gathered over processes.

        TRL 1.16 returns ``old_per_token_logps`` only when it needs importance sampling (gradient accumulation not a
        multiple of the generation interval, or vLLM); otherwise the policy has not moved since generation, so one
        no-grad forward pass of the current model gives π_old.
        """
        mask = output["completion_mask"]
        per_token = output.get("old_per_token_logps")
        if per_token is None:
            input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
            attention_mask = torch.cat([output["prompt_mask"], mask], dim=1)
            chunk = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
            with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
                per_token, _, _ = self._get_per_token_logps_and_entropies(
                    self.model, input_ids, attention_mask, output["completion_ids"].size(1), batch_size=chunk
                )
        logp_sum = (per_token * mask).sum(dim=1)
        # mask_truncated_completions zeroes a truncated row's mask: its loss is 0 whatever its weight, and a length
        # of 1 keeps the length-normalised estimator defined for it.
        lengths = mask.sum(dim=1).clamp(min=1)
        return (
            self.accelerator.gather(logp_sum).double().cpu().view(-1, m),
            self.accelerator.gather(lengths).double().cpu().view(-1, m),
        )

    def _cat_factor(
        self, group_prompts, completions, rewards, correct, m, mode, logp_sum=None, lengths=None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(CAT weights, replacement advantages), each of shape (groups, m) or None; all-wrong penalty not included."""
        args = self.args
        if args.cat_strategy == "none":
            return None, None
        if args.cat_strategy == "pkpo":
            return None, pkpo_sloo_minus_one(rewards, args.cat_n)
        if args.cat_strategy == "passk_advantage":
            return None, passk_training_advantage(correct, args.cat_n)
        answer_keys = None
        if args.cat_strategy == "majority" and args.cat_k == "dynamic":  # the only consumer of answer clusters
            keys = [self.answer_key_fn(c) for c in completions]
            answer_keys = [keys[i : i + m] for i in range(0, len(keys), m)]
        history = self.cat_history if args.cat_quantile == "history" else None
        result = compute_cat_weights(
            args.cat_strategy,
            correct,
            n=args.cat_n,
            k=args.cat_k,
            form=args.cat_weight_form,
            p_estimator=args.cat_p_estimator,
            clip=args.cat_clip,
            normalize=args.cat_normalize,
            answer_keys=answer_keys,
            rewards=rewards,
            history=history,
            logp_sum=logp_sum,
            lengths=lengths,
            prompts=[str(p) for p in group_prompts],
        )
        if args.cat_strategy == "best_of_n" and args.cat_quantile == "history" and mode == "train":
            self.cat_history.append(rewards.flatten())
        w = result.weights
        metrics = self._metrics[mode]
        metrics["cat/weight_mean"].append(float(w.mean()))
        metrics["cat/weight_max"].append(float(w.max()))
        metrics["cat/weight_frac_zero"].append(float((w == 0).double().mean()))
        metrics["cat/p_hat_mean"].append(float(result.p_hat.mean()))
        metrics["cat/effective_sample_size"].append(float(w.sum() ** 2 / (w**2).sum() / w.numel()))
        if result.k is not None:
            metrics["cat/k_mean"].append(float(result.k.double().mean()))
        if result.alignment is not None:
            metrics["cat/alignment"].append(result.alignment)
        return w, None
