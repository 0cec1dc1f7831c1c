"""CAT-SFT: loss values and gradients against naive closed forms, the pairwise-contrastive term, config checks."""

from math import comb

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from core.tiny_llama import tiny_llama
from trainers import CATSFTConfig, CATSFTTrainer
from trainers.sft import pairwise_contrastive_token_loss


def _config(tmp_path, **overrides):
    base = dict(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-3, use_cpu=True,
        bf16=False, gradient_checkpointing=False, report_to="none", dataloader_pin_memory=False, logging_steps=1,
        save_strategy="no", seed=0, max_length=32,
    )
    base.update(overrides)
    return CATSFTConfig(**base)


def _dataset():
    return Dataset.from_dict({"prompt": ["1+1=", "2+2=", "3+1=", "2+3="], "completion": ["2", "4", "4", "5"]})


def _trainer(tmp_path, dtype=torch.float32, **overrides):
    model, tokenizer = tiny_llama(dtype=dtype)
    return CATSFTTrainer(model=model, args=_config(tmp_path, **overrides), train_dataset=_dataset(), processing_class=tokenizer)


def _reference_log_p(model, batch):
    """Σ log π(y_t) over the completion tokens, written out independently of the trainer."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.double()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(dim=1), mask.sum()


def _passn_ref(log_p, n):
    return -torch.log(-torch.expm1(n * torch.log1p(-torch.exp(log_p))))


def _majority_ref(log_p, n, k):
    p = torch.exp(log_p)
    return -torch.log(sum(comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1)))


@pytest.mark.parametrize(
    ("overrides", "reference"),
    [
        ({"cat_strategy": "none"}, lambda lp: -lp),
        ({"cat_strategy": "pass", "cat_n": 4}, lambda lp: _passn_ref(lp, 4)),
        ({"cat_strategy": "pass", "cat_n": 16, "cat_reduction": "token_mean"}, lambda lp: _passn_ref(lp, 16)),
        ({"cat_strategy": "maj", "cat_n": 5, "cat_k": 3}, lambda lp: _majority_ref(lp, 5, 3)),
    ],
)
def test_loss_and_gradient_match_naive_closed_form(tmp_path, overrides, reference):
    trainer = _trainer(tmp_path, dtype=torch.float64, **overrides)
    model = trainer.model
    batch = next(iter(trainer.get_train_dataloader()))
    loss = trainer.compute_loss(model, batch)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    log_p, tokens = _reference_log_p(model, batch)
    per_sequence = reference(log_p)
    expected = per_sequence.mean() if trainer.args.cat_reduction == "sequence_mean" else per_sequence.sum() / tokens
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-8)
    # TRL's fused LM head keeps its softmax statistics in float32, also for this float64 model
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_pairwise_contrastive_with_all_rivals_drawn():
    # with 5 tokens the 4 rivals sampled without replacement are exactly the 4 non-gold tokens
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, dtype=torch.float64)
    gold = torch.randint(0, 5, (2, 3))
    token_logp = torch.log_softmax(logits, -1).gather(-1, gold.unsqueeze(-1)).squeeze(-1)
    got = pairwise_contrastive_token_loss(logits, gold, token_logp)
    for b in range(2):
        for t in range(3):
            g = int(gold[b, t])
            z = logits[b, t]
            pair = sum(-torch.log(torch.sigmoid(z[g] - z[r])) for r in range(5) if r != g) / 4
            torch.testing.assert_close(got[b, t], 0.5 * -token_logp[b, t] + 0.5 * pair)


def test_pairwise_contrastive_trains(tmp_path):
    trainer = _trainer(tmp_path, cat_strategy="pairwise_contrastive", cat_reduction="token_mean")
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"cat_strategy": "bon"}, "cat_strategy"),
        ({"cat_n": 0}, "cat_n"),
        ({"cat_strategy": "maj", "cat_n": 3, "cat_k": 5}, "cat_k"),
        ({"cat_reduction": "mean"}, "cat_reduction"),
        ({"packing": True}, "packing"),
        ({"padding_free": True}, "padding_free"),
        ({"completion_only_loss": False}, "completion_only_loss"),
    ],
)
def test_config_rejects_bad_fields(tmp_path, overrides, field):
    with pytest.raises(ValueError, match=field):
        _config(tmp_path, **overrides)


@pytest.mark.slow
def test_smollm2_two_real_steps(tmp_path, smollm2):
    model, tokenizer = smollm2
    config = _config(tmp_path, cat_strategy="pass", cat_n=4, per_device_train_batch_size=2, learning_rate=1e-5)
    trainer = CATSFTTrainer(model=model, args=config, train_dataset=_dataset(), processing_class=tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "layers.0.self_attn.q_proj" in n}
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(0 < loss < 1e3 for loss in losses)
    assert any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters() if n in before)


# ------------------------------------------------------------------------ normalisation over the accumulation window

UNEVEN = Dataset.from_dict({"prompt": ["1+1=", "10+10=", "3+1="], "completion": ["2", "20 (twenty)", "4"]})


class _Grads(TrainerCallback):
    def __init__(self):
        self.grads = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


def _first_step_grads(tmp_path, trainer_cls=CATSFTTrainer, config_cls=None, data=UNEVEN, **overrides):
    model, tokenizer = tiny_llama(dtype=torch.float64)
    grads = _Grads()
    base = dict(output_dir=str(tmp_path), max_steps=1, learning_rate=0.0, use_cpu=True, bf16=False,
                gradient_checkpointing=False, report_to="none", dataloader_pin_memory=False, logging_steps=1,
                save_strategy="no", seed=0, max_length=32)
    config = (config_cls or CATSFTConfig)(**{**base, **overrides})
    trainer = trainer_cls(model=model, args=config, train_dataset=data, processing_class=tokenizer, callbacks=[grads])
    trainer.train()
    return trainer, grads.grads[0]


@pytest.mark.parametrize("reduction", ["token_mean", "sequence_mean"])
def test_gradient_does_not_depend_on_the_micro_batch_split(tmp_path, reduction):
    # 3 examples of unequal length: one micro-batch of 3, or 2 + 1, or 1 + 1 + 1 accumulated. TRL's fused LM head
    # keeps float32 softmax statistics in this float64 model, so splits agree to float32 rounding (~1e-7 of the
    # largest entry, CPU-dependent), far inside the 17% a per-micro-batch normaliser gives.
    cat = {"cat_strategy": "pass", "cat_n": 4, "cat_reduction": reduction}
    _, whole = _first_step_grads(tmp_path / "a", per_device_train_batch_size=3, **cat)
    for batch, steps in ((2, 2), (1, 3)):
        _, split = _first_step_grads(tmp_path / f"{batch}", per_device_train_batch_size=batch,
                                     gradient_accumulation_steps=steps, **cat)
        assert split.keys() == whole.keys()
        for name, grad in whole.items():
            scale = grad.abs().max().item()
            torch.testing.assert_close(split[name], grad, rtol=1e-5, atol=1e-5 * scale, msg=f"{batch}x{steps} {name}")


def test_baseline_is_trl_sft_with_its_metrics(tmp_path):
    """cat_strategy='none' with token_mean is TRL's SFT loss: same gradient, same entropy/accuracy/token metrics."""
    common = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2)
    plain, plain_grads = _first_step_grads(tmp_path / "trl", SFTTrainer, SFTConfig, **common)
    ours, our_grads = _first_step_grads(tmp_path / "cat", cat_strategy="none", cat_reduction="token_mean", **common)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(our_grads[name], grad, rtol=1e-9, atol=1e-12)
    theirs, mine = plain.state.log_history[0], ours.state.log_history[0]
    assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-9)
    for key in ("entropy", "mean_token_accuracy", "num_tokens"):
        assert mine[key] == pytest.approx(theirs[key], rel=1e-9), key
    assert mine["num_tokens"] > 0 and mine["entropy"] > 0


def test_pairwise_contrastive_logs_the_token_metrics(tmp_path):
    trainer, _ = _first_step_grads(tmp_path, cat_strategy="pairwise_contrastive", cat_reduction="token_mean",
                                   per_device_train_batch_size=3)
    logs = trainer.state.log_history[0]
    model, batch = trainer.model, next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].double()
    mask = batch["labels"][:, 1:] != -100
    logp = torch.log_softmax(logits, dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    accuracy = (logits.argmax(-1) == batch["labels"][:, 1:]) & mask
    assert logs["entropy"] == pytest.approx(float(entropy[mask].mean()), rel=1e-6)
    assert logs["mean_token_accuracy"] == pytest.approx(float(accuracy.sum() / mask.sum()), rel=1e-9)
    assert logs["num_tokens"] == float(batch["attention_mask"].sum())


# ------------------------------------------------------------------------------------- what p is the probability of


@pytest.mark.parametrize(
    "data",
    [
        Dataset.from_dict({"messages": [[{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]]}),
        Dataset.from_dict({"text": ["1+1=2"]}),
    ],
)
def test_whole_sequence_datasets_are_refused(tmp_path, data):
    model, tokenizer = tiny_llama()
    with pytest.raises(ValueError, match="train dataset has columns .*assistant_only_loss=True"):
        CATSFTTrainer(model=model, args=_config(tmp_path), train_dataset=data, processing_class=tokenizer)


def test_completions_cut_by_max_length_are_refused(tmp_path):
    model, tokenizer = tiny_llama()
    # prompt + completion + EOS: 4 + 1 + 1, 6 + 11 + 1 and 4 + 1 + 1 tokens; max_length=12 cuts the second
    with pytest.raises(ValueError, match=r"max_length=12 cuts the completion of 1 of 3 examples .* the longest 18"):
        CATSFTTrainer(model=model, args=_config(tmp_path, max_length=12), train_dataset=UNEVEN,
                      processing_class=tokenizer)
    trainer = CATSFTTrainer(model=model, args=_config(tmp_path, max_length=18), train_dataset=UNEVEN,
                            processing_class=tokenizer)
    assert sorted(len(ids) for ids in trainer.train_dataset["input_ids"]) == [6, 6, 18]


@pytest.mark.filterwarnings("ignore:The `'keep_end'` truncation mode is deprecated:FutureWarning")
def test_prompts_cut_by_keep_end_are_truncated_as_trl_truncates(tmp_path):
    model, tokenizer = tiny_llama()
    kwargs = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_length=14, truncation_mode="keep_end")
    ours = CATSFTTrainer(model=model, args=CATSFTConfig(**kwargs), train_dataset=UNEVEN, processing_class=tokenizer)
    theirs = SFTTrainer(model=model, args=SFTConfig(**kwargs), train_dataset=UNEVEN, processing_class=tokenizer)
    assert ours.train_dataset["input_ids"] == theirs.train_dataset["input_ids"]
    assert ours.train_dataset["labels"] == theirs.train_dataset["labels"]
    assert max(len(ids) for ids in ours.train_dataset["input_ids"]) == 14  # the first 4 prompt tokens went
