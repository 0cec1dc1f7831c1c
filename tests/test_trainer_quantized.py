"""QLoRA (4-bit NF4 + LoRA) on CPU through both trainers; the eval-mode repack pitfall; GGUF-flagged models refused."""

import bitsandbytes as bnb
import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM

from core.tiny_llama import tiny_llama
from trainers import CATGRPOConfig, CATGRPOTrainer, CATSFTConfig, CATSFTTrainer
from core.models import nf4_config

COMMON = dict(
    use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none", dataloader_pin_memory=False,
    logging_steps=1, save_strategy="no", seed=0, learning_rate=1e-3,
)


@pytest.fixture
def tiny_4bit(tmp_path):
    model, tokenizer = tiny_llama()
    model.save_pretrained(tmp_path / "tiny")
    quantized = AutoModelForCausalLM.from_pretrained(
        tmp_path / "tiny", quantization_config=nf4_config(torch.float32), device_map="cpu"
    )
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in quantized.modules())
    return quantized, tokenizer


def _lora():
    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def _lora_grads(model, batch):
    model.zero_grad()
    model(**batch).logits.float().pow(2).mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if "lora_" in n and p.grad is not None}


def test_grpo_qlora_trains_and_survives_eval_generate(tmp_path, tiny_4bit):
    model, tokenizer = tiny_4bit
    config = CATGRPOConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, num_generations=4, max_completion_length=8,
        max_steps=2, cat_strategy="pass", cat_n=4, **COMMON,
    )
    trainer = CATGRPOTrainer(
        model=model, reward_funcs=lambda completions, **kw: [float("a" in c) for c in completions], args=config,
        train_dataset=Dataset.from_dict({"prompt": ["ab", "ba"]}), processing_class=tokenizer, peft_config=_lora(),
    )
    layers = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.support_avx512bf16_for_cpu is False for m in layers)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))

    batch = tokenizer(["abab", "baba"], return_tensors="pt")
    trainer.model.train()
    before = _lora_grads(trainer.model, batch)
    trainer.model.eval()
    with torch.no_grad():
        trainer.model.generate(**batch, max_new_tokens=4, do_sample=False)
    trainer.model.train()
    after = _lora_grads(trainer.model, batch)
    assert before.keys() == after.keys() and len(before) == 16  # A and B of q, v in 4 layers
    assert any(g.abs().sum() > 0 for g in after.values())
    for name, grad in before.items():
        torch.testing.assert_close(after[name], grad)


def test_sft_qlora_trains(tmp_path, tiny_4bit):
    model, tokenizer = tiny_4bit
    config = CATSFTConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=2, cat_strategy="pass", cat_n=4,
        max_length=32, **COMMON,
    )
    data = Dataset.from_dict({"prompt": ["1+1=", "2+2="], "completion": ["2", "4"]})
    trainer = CATSFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer, peft_config=_lora())
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.slow
def test_gguf_flagged_model_is_refused(tmp_path):
    from core.models import embedded_gguf

    gguf = embedded_gguf("smollm2-135m-instruct")
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = CATSFTConfig(output_dir=str(tmp_path), max_steps=1, **COMMON)
    with pytest.raises(ValueError, match="GGUF"):
        CATSFTTrainer(model=model, args=config, train_dataset=Dataset.from_dict({"prompt": ["a"], "completion": ["b"]}))
