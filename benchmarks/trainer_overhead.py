"""CATGRPOTrainer vs plain GRPOTrainer: interleaved A/B training steps, median step-time ratio (goal <= 1.02).

    .venv/bin/python benchmarks/trainer_overhead.py                      # CPU, tiny random Llama
    python benchmarks/trainer_overhead.py --model smollm2-135m-instruct --load-in-4bit --steps 20   # GPU
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from trainers import CATGRPOConfig, CATGRPOTrainer


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._start)


def reward_contains_digit(completions, **kwargs):
    return [float(any(ch.isdigit() for ch in str(c))) for c in completions]


def load(model_name: str, load_in_4bit: bool):
    if model_name == "tiny":
        from recipes.tiny_llama import tiny_llama

        return tiny_llama()
    from recipes.models import load_pretrained

    dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    return load_pretrained(model_name, dtype=dtype, load_in_4bit=load_in_4bit)


def run_once(cat: bool, args, tmp: str) -> list[float]:
    model, tokenizer = load(args.model, args.load_in_4bit)
    common = dict(
        output_dir=tmp, per_device_train_batch_size=8, num_generations=4, max_completion_length=args.completion_length,
        max_steps=args.steps, learning_rate=1e-5, use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(), gradient_checkpointing=False, report_to="none", dataloader_pin_memory=False,
        logging_steps=1, save_strategy="no", seed=0,
    )
    config = CATGRPOConfig(**common, cat_strategy="passn", cat_n=4) if cat else GRPOConfig(**common)
    timer = StepTimer()
    peft_config = None
    if args.load_in_4bit:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    data = Dataset.from_dict({"prompt": [f"What is {i} + {i}?" for i in range(64)]})
    trainer_cls = CATGRPOTrainer if cat else GRPOTrainer
    trainer = trainer_cls(model=model, reward_funcs=reward_contains_digit, args=config, train_dataset=data,
                          processing_class=tokenizer, callbacks=[timer], peft_config=peft_config)
    trainer.train()
    return timer.times[1:]  # the first step includes warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--load-in-4bit", action="store_true")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3, help="A/B pairs, interleaved")
    parser.add_argument("--completion-length", type=int, default=16)
    parser.add_argument("--output-dir", default="/tmp/trainer_overhead")
    args = parser.parse_args()
    times = {False: [], True: []}
    for round_index in range(args.rounds):
        order = (False, True) if round_index % 2 == 0 else (True, False)
        for cat in order:
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            times[cat] += run_once(cat, args, args.output_dir)
            if torch.cuda.is_available():
                print(f"{'cat' if cat else 'plain'} peak memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    plain, ours = statistics.median(times[False]), statistics.median(times[True])
    print(f"median step: plain {plain * 1e3:.1f} ms, CAT {ours * 1e3:.1f} ms over {len(times[True])} steps each")
    print(f"ratio CAT/plain = {ours / plain:.3f} (goal <= 1.02)")


if __name__ == "__main__":
    main()
