"""CATGRPOTrainer vs plain GRPOTrainer: interleaved A/B training steps, median step-time ratio (goal <= 1.02), and
the peak memory of each run.

    .venv/bin/python benchmarks/trainer_overhead.py                      # CPU, tiny random Llama
    python benchmarks/trainer_overhead.py --model smollm2-135m-instruct --load-in-4bit --steps 20 --json t.json  # GPU

Peak memory per run: ``torch.cuda.max_memory_allocated`` after a reset on CUDA; on CPU the largest resident set
size seen at the end of a step (``/proc/self/statm``).
``--load-in-4bit`` loads NF4 weights through bitsandbytes (also on CPU); with ``--model tiny`` the random Llama is
saved once to a temporary directory so that it loads through the same quantized path.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from trainers import CATGRPOConfig, CATGRPOTrainer


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []
        self.peak_rss = 0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._start)
        self.peak_rss = max(self.peak_rss, resident_bytes())


def reward_contains_digit(completions, **kwargs):
    return [float(any(ch.isdigit() for ch in str(c))) for c in completions]


_SAVED_TINY: list[str] = []


def load(model_name: str, load_in_4bit: bool):
    if model_name == "tiny":
        from core.tiny_llama import tiny_llama

        if not load_in_4bit:
            return tiny_llama()
        if not _SAVED_TINY:
            model, tokenizer = tiny_llama()
            path = tempfile.mkdtemp(prefix="tiny-llama-")
            model.save_pretrained(path)
            tokenizer.save_pretrained(path)
            _SAVED_TINY.append(path)
        model_name = _SAVED_TINY[0]
    from core.models import load_pretrained

    dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    return load_pretrained(model_name, dtype=dtype, load_in_4bit=load_in_4bit)


def quantized_linears(model) -> int:
    """How many bitsandbytes 4-bit linear layers the trained model holds (0 unless it really loaded in NF4)."""
    import bitsandbytes as bnb

    return sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def run_once(cat: bool, args, tmp: str) -> tuple[list[float], int, int]:
    """Step times (the first, warm-up step dropped), peak memory in bytes and 4-bit layer count of one run."""
    model, tokenizer = load(args.model, args.load_in_4bit)
    common = dict(
        output_dir=tmp, per_device_train_batch_size=8, num_generations=4, max_completion_length=args.completion_length,
        max_steps=args.steps, learning_rate=1e-5, use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(), gradient_checkpointing=False, report_to="none", dataloader_pin_memory=False,
        logging_steps=1, save_strategy="no", seed=0,
    )
    config = CATGRPOConfig(**common, cat_strategy="pass", cat_n=4) if cat else GRPOConfig(**common)
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
    peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else timer.peak_rss
    return timer.times[1:], peak, quantized_linears(trainer.model)  # the first step includes warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--load-in-4bit", action="store_true")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3, help="A/B pairs, interleaved")
    parser.add_argument("--completion-length", type=int, default=16)
    parser.add_argument("--output-dir", default="/tmp/trainer_overhead")
    parser.add_argument("--json", default=None, help="write the step times, ratio and peak memory to this file")
    args = parser.parse_args()
    times = {False: [], True: []}
    peaks = {False: [], True: []}
    kind = "CUDA max_memory_allocated" if torch.cuda.is_available() else "peak RSS at step ends"
    for round_index in range(args.rounds):
        order = (False, True) if round_index % 2 == 0 else (True, False)
        for cat in order:
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            step_times, peak, four_bit_layers = run_once(cat, args, args.output_dir)
            times[cat] += step_times
            peaks[cat].append(peak)
            print(f"{'cat' if cat else 'plain'} peak memory ({kind}): {peak / 2**30:.3f} GiB")
    plain, ours = statistics.median(times[False]), statistics.median(times[True])
    print(f"median step: plain {plain * 1e3:.1f} ms, CAT {ours * 1e3:.1f} ms over {len(times[True])} steps each")
    print(f"ratio CAT/plain = {ours / plain:.3f} (goal <= 1.02)")
    print(f"peak memory ({kind}): plain {max(peaks[False]) / 2**30:.3f} GiB, CAT {max(peaks[True]) / 2**30:.3f} GiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "load_in_4bit": args.load_in_4bit, "steps": args.steps,
                       "rounds": args.rounds, "device": "cuda" if torch.cuda.is_available() else "cpu",
                       "median_step_s": {"plain": plain, "cat": ours}, "ratio_cat_over_plain": ours / plain,
                       "step_times_s": {"plain": times[False], "cat": times[True]}, "peak_memory_kind": kind,
                       "peak_memory_bytes": {"plain": peaks[False], "cat": peaks[True]},
                       "linear4bit_layers": four_bit_layers}, f, indent=2)


if __name__ == "__main__":
    main()
