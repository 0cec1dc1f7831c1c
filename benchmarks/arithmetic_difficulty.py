"""Measure SmolLM2-135M-Instruct's per-problem success probability on `arithmetic` at several difficulties.

The default difficulty of the task is chosen from this table: it should spread p̂ over (0, 1), not pile it at 0 or 1.
Usage: python benchmarks/arithmetic_difficulty.py [--problems 40] [--samples 16] [--configs "1,2,+" "2,2,+" "2,2,+,29"]
"""

from __future__ import annotations

import argparse
import time

import torch

from cat.estimators import pass_at_k
from core.models import load_pretrained
from recipes.tasks import load_task


@torch.no_grad()
def success_rates(model, tokenizer, task, samples: int, max_new_tokens: int, temperature: float, batch: int = 8):
    rates = []
    for start in range(0, len(task.problems), batch):
        chunk = task.problems[start : start + batch]
        texts = [tokenizer.apply_chat_template(task.messages(p), add_generation_prompt=True, tokenize=False) for p in chunk]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(
            **enc, do_sample=True, temperature=temperature, top_p=1.0, top_k=0, max_new_tokens=max_new_tokens,
            num_return_sequences=samples, pad_token_id=tokenizer.pad_token_id,
        )
        completions = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        for i, problem in enumerate(chunk):
            group = completions[i * samples : (i + 1) * samples]
            rates.append(sum(task.verify(c, problem).correct for c in group))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=40)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--configs", nargs="+", default=["1,2,+", "2,2,+", "1,3,+"], help="digits,terms,operators[,max_operand]")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load_pretrained("smollm2-135m-instruct", dtype="float32", load_in_4bit=False)
    print(f"{'digits,terms,ops':>16} {'mean p̂':>7} {'pass@1':>7} {'pass@8':>7} {'p̂=0':>5} {'p̂=1':>5} {'0<p̂<1':>7} {'s':>5}")
    for config in args.configs:
        digits, terms, ops, *largest = config.split(",")
        task = load_task("arithmetic", split="test", size=args.problems, seed=1, digits=int(digits), terms=int(terms),
                         operators=ops, max_operand=int(largest[0]) if largest else None)
        t0 = time.perf_counter()
        counts = success_rates(model, tokenizer, task, args.samples, args.max_new_tokens, args.temperature)
        n = args.samples
        p = [c / n for c in counts]
        print(
            f"{config:>16} {sum(p) / len(p):7.3f} {float(pass_at_k([n] * len(counts), counts, 1).mean()):7.3f} "
            f"{float(pass_at_k([n] * len(counts), counts, 8).mean()):7.3f} {sum(c == 0 for c in counts) / len(p):5.2f} "
            f"{sum(c == n for c in counts) / len(p):5.2f} {sum(0 < c < n for c in counts) / len(p):7.2f} "
            f"{time.perf_counter() - t0:5.0f}"
        )
        print("   p̂ histogram (tenths):", [sum(int(min(x, 0.999) * 10) == b for x in p) for b in range(10)])


if __name__ == "__main__":
    main()
