"""``CATGRPOTrainer``: TRL's GRPO with advantages reweighted (or replaced) for a test-time strategy (CAT §5)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing

from cat.estimators import PER_SAMPLE_ESTIMATORS, RewardHistory, passk_training_advantage, pkpo_sloo_minus_one
from trainers.cat_weights import P_FLOOR, CATWeights, compute_cat_weights
from trainers.checkpointing import load_cat_state, save_cat_state
from trainers.grpo_config import CATGRPOConfig
from core.models import disable_cpu_4bit_repack, refuse_gguf_quantized

AnswerKeysFn = Callable[[list[Any]], list[Hashable | None]]


class CATGRPOTrainer(GRPOTrainer):
    """GRPO whose group-standardised advantages A are multiplied by CAT weights w ≥ 0 (per prompt or per sample).

    Scaling A by w ≥ 0 scales every GRPO loss term −min(ρA, clip(ρ)A) by w, so this is exactly the paper's weighted
    policy gradient w·A·∇log π. ``pkpo`` replaces A with the PKPO s^(loo−1) pass@k credit times the group size
    (next paragraph); ``passk_advantage`` with the Pass@k-Training analytical advantage.
    ``answer_keys_fn(completions)`` gives majority vote its answer clusters: it is called once per prompt group with
    that group's scored completions and returns one key per completion (None = unparsed), equal keys for answers the
    verifier treats as the same.

    PKPO's estimators are in the sum convention: ∇pass@k ≈ Σ_i s_i ∇log π(y_i) over the group's n samples
    (Walder & Karkhanis 2025, arXiv:2505.15201, the gradient estimator their eqs. 8 and 33 feed). TRL's losses
    average over completions (or their tokens), the mean convention (1/n)·Σ_i A_i ∇log π(y_i), so A_i = n·s_i;
    for k = 1 this is the leave-one-out advantage g_i − mean_{j≠i} g_j, on the scale of GRPO's advantages.

    All-wrong penalty λ = ``cat_all_wrong_penalty`` (CAT repo ``rl.py``, step 2 of its RL update; λ = 0.5 in the
    paper's majority presets, App. K): A_i ← (A_i − λ·1[no rollout of the prompt is correct])·w_i, so an unsolved
    prompt, whose group-standardised A is 0, pushes its rollouts down by λ·w instead of contributing nothing.

    A completion that every reward function refused (TRL's "unscorable", reward NaN, advantage 0) takes no part:
    no p̂ contribution, no penalty, no replacement advantage; p̂, k and the pass@k credits of its group come from the
    scored rollouts. With ``mask_truncated_completions``, per-sample weights skip the emptied rollouts
    (``trainers.cat_weights``).

    Logs ``cat/raw_reward_mean`` (rewards are never transformed here, so it equals TRL's ``reward``; the CAT weight
    acts on the advantage) and ``cat/alignment``, the cosine of the training weight with the test strategy's f′
    over this batch's p̂ (``cat.alignment``), next to the weight statistics; with a per-sample p̂,
    ``cat/p_hat_floor_frac``, the share of rollouts whose p̂ sits at the 1e-10 floor (weights there are all equal).
    The completions table TRL logs (``log_completions``) shows the final advantages, after CAT.
    """

    def __init__(self, *args, answer_keys_fn: AnswerKeysFn | None = None, **kwargs):
        args_config = kwargs.get("args", args[2] if len(args) > 2 else None)
        if not isinstance(args_config, CATGRPOConfig):
            raise TypeError(f"args must be a CATGRPOConfig, got {type(args_config).__name__}")
        if args_config.cat_strategy == "maj" and args_config.cat_k == "dynamic" and answer_keys_fn is None:
            raise ValueError("cat_k='dynamic' needs answer_keys_fn, got None")
        refuse_gguf_quantized(kwargs.get("model", args[0] if args else None))
        super().__init__(*args, **kwargs)
        disable_cpu_4bit_repack(self.model)
        self.answer_keys_fn = answer_keys_fn
        self.cat_history = RewardHistory(args_config.cat_history_size)
        self._cat_gathered: tuple[list, list, torch.Tensor] | None = None
        self._warned_p_floor = False

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        # One writer: with save_only_model only the saving process has created the directory.
        if self.args.should_save:
            # Trainer names the directory it just wrote after the global step (transformers' PREFIX_CHECKPOINT_DIR).
            run_dir = self._get_output_dir(trial=trial)
            save_cat_state(Path(run_dir, f"checkpoint-{self.state.global_step}"), self.cat_history)

    def _load_optimizer_and_scheduler(self, checkpoint):
        # Trainer calls this once on every resume, on every backend (DeepSpeed skips _load_from_checkpoint); TRL
        # restores its own adaptive-entropy state here too.
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            load_cat_state(checkpoint, self.cat_history)

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
        reward_weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        # TRL's "unscorable" rows: every reward function returned None; they get reward NaN and advantage 0.
        scored = ~torch.isnan(rewards_per_func).all(dim=1).cpu()
        rewards = (rewards_per_func * reward_weights).nansum(dim=1).double().cpu().masked_fill(~scored, torch.nan)
        self._metrics[mode]["cat/raw_reward_mean"].append(float(rewards[scored].mean()))
        rewards, scored = rewards.view(-1, m), scored.view(-1, m)
        correct = ((rewards >= self.args.cat_correct_threshold) & scored).double()
        loss_mask = output["completion_mask"] * output.get("tool_mask", 1)
        lengths = self.accelerator.gather(loss_mask.sum(dim=1)).double().cpu().view(-1, m)
        logp_sum = self._old_sequence_logps(output, loss_mask, m, mode) if self._needs_sequence_logps else None
        # TRL's advantages of the whole batch, in rollout order (each process holds a contiguous slice)
        advantages = self.accelerator.gather(output["advantages"]).double().cpu().view(-1, m)
        cat_weights = None
        if self.args.cat_strategy in ("pkpo", "passk_advantage"):
            advantages = self._pass_at_k_advantages(rewards, correct, scored)
        elif self.args.cat_strategy != "none":
            cat_weights = self._cat_weights(
                prompts[::m], completions, rewards, correct, scored, lengths > 0, m, mode, logp_sum, lengths
            )
        if self.args.cat_all_wrong_penalty > 0:
            unsolved = scored.any(dim=1, keepdim=True) & (correct.sum(dim=1, keepdim=True) == 0)
            advantages = advantages - self.args.cat_all_wrong_penalty * (unsolved & scored).double()
        if cat_weights is not None:
            advantages = advantages * cat_weights
        self._log_final_advantages(advantages.flatten())
        local = len(output["advantages"])
        rows = slice(self.accelerator.process_index * local, (self.accelerator.process_index + 1) * local)
        # Keep only this process's rows, as TRL does for its advantages.
        output["advantages"] = advantages.flatten()[rows].to(output["advantages"].device, output["advantages"].dtype)
        return output

    def _log_final_advantages(self, advantages: torch.Tensor) -> None:
        """Replace the pre-CAT advantages TRL queued for its completions table with the final ones."""
        logged = self._logs["advantages"]
        for _ in range(min(len(advantages), len(logged))):
            logged.pop()
        logged.extend(advantages.tolist())

    @property
    def _needs_sequence_logps(self) -> bool:
        return self.args.cat_strategy in ("pass", "maj") and self.args.cat_p_estimator in PER_SAMPLE_ESTIMATORS

    @torch.no_grad()
    def _old_sequence_logps(self, output: dict, loss_mask: torch.Tensor, m: int, mode: str) -> torch.Tensor:
        """Σ_t log π_old(y_t | x, y_<t) over the loss tokens of every completion, gathered over processes.

        TRL 1.16 returns ``old_per_token_logps`` only when it needs importance sampling (gradient accumulation not a
        multiple of the generation interval, or vLLM); otherwise the policy has not moved since generation, so one
        no-grad forward pass of the current model gives π_old.
        """
        per_token = output.get("old_per_token_logps")
        if per_token is None:
            input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
            attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
            chunk = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
            with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
                per_token, _, _ = self._get_per_token_logps_and_entropies(
                    self.model, input_ids, attention_mask, output["completion_ids"].size(1), batch_size=chunk
                )
        logp_sum = (per_token * loss_mask).sum(dim=1)
        return self.accelerator.gather(logp_sum).double().cpu().view(-1, m)

    def _cat_weights(
        self, group_prompts, completions, rewards, correct, scored, trainable, m, mode, logp_sum=None, lengths=None
    ) -> torch.Tensor:
        """The CAT weights that multiply the advantages, shape (groups, m), for pass / maj / bon."""
        args = self.args
        answer_keys = None
        if args.cat_strategy == "maj" and args.cat_k == "dynamic":  # the only consumer of answer clusters
            answer_keys = [self._answer_keys(completions[g * m : (g + 1) * m], scored[g]) for g in range(len(scored))]
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
            scored=scored,
            trainable=trainable,
        )
        if args.cat_strategy == "bon" and args.cat_quantile == "history" and mode == "train":
            self.cat_history.append(rewards[scored])
        self._log_weights(result, mode)
        return result.weights

    def _answer_keys(self, group_completions: list, group_scored: torch.Tensor) -> list[Hashable | None]:
        chosen = [c for c, ok in zip(group_completions, group_scored.tolist()) if ok]
        if not chosen:
            return []
        keys = list(self.answer_keys_fn(chosen))
        if len(keys) != len(chosen):
            raise ValueError(f"answer_keys_fn must return one key per completion, got {len(keys)} for {len(chosen)}")
        return keys

    def _pass_at_k_advantages(self, rewards, correct, scored) -> torch.Tensor:
        """PKPO credits n·s^(loo−1) or Pass@k-Training advantages, per group over its scored rollouts.

        A group with fewer than max(k, 2) scored rollouts has no unbiased pass@k credit (nor a baseline): 0.
        """
        k = self.args.cat_n
        out = torch.zeros_like(rewards)
        for g in range(rewards.shape[0]):
            rows = scored[g]
            size = int(rows.sum())
            if size < max(k, 2):
                continue
            if self.args.cat_strategy == "pkpo":
                out[g, rows] = size * pkpo_sloo_minus_one(rewards[g, rows].unsqueeze(0), k)[0]
            else:
                out[g, rows] = passk_training_advantage(correct[g, rows].unsqueeze(0), k)[0]
        return out

    def _log_weights(self, result: CATWeights, mode: str) -> None:
        w = result.weights[result.counted]
        metrics = self._metrics[mode]
        if w.numel():
            metrics["cat/weight_mean"].append(float(w.mean()))
            metrics["cat/weight_max"].append(float(w.max()))
            metrics["cat/weight_frac_zero"].append(float((w == 0).double().mean()))
            square_sum = float((w**2).sum())
            if square_sum > 0:
                metrics["cat/effective_sample_size"].append(float(w.sum() ** 2) / square_sum / w.numel())
        if result.p_hat.numel():
            metrics["cat/p_hat_mean"].append(float(result.p_hat.mean()))
        if result.k is not None:
            metrics["cat/k_mean"].append(float(result.k.double().mean()))
        if result.alignment is not None:
            metrics["cat/alignment"].append(result.alignment)
        if result.floor_frac is not None:
            metrics["cat/p_hat_floor_frac"].append(result.floor_frac)
            if result.floor_frac > 0.5 and not self._warned_p_floor:
                self._warned_p_floor = True
                warnings.warn(
                    f"cat_p_estimator={self.args.cat_p_estimator!r}: p̂ sits at the {P_FLOOR:g} floor for "
                    f"{result.floor_frac:.0%} of the rollouts, where every weight is the same, so the update is "
                    "close to plain GRPO; consider cat_p_estimator='length_normalized' or a per-prompt estimator "
                    "(logged as cat/p_hat_floor_frac)",
                    stacklevel=2,
                )
