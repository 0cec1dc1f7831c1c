"""Tokens/s of ``pot.sampling.sample`` against ``model.generate`` at the same batch, with the ratios the issue asks
for: the sampler vs plain ``generate`` (dynamic cache) and, on CUDA, vs ``generate`` with a compiled static cache.

    python benchmarks/sampling_throughput.py --model tiny-llama --batches 8,32 --n 8 --max-new-tokens 64
    python benchmarks/sampling_throughput.py --model smollm2-135m-instruct --dtype bfloat16 --batches 64,256 \\
        --n 16 --max-new-tokens 128          # on the GPU machine (goal: >= 10x plain, >= 2x compiled at 256)

Every row samples batch/n prompts x n completions at temperature 1; the tokens counted are the generated tokens up to
and including EOS. ``generate`` keeps finished rows in the batch (padding); the dynamic-cache sampler drops them; the
static-cache sampler keeps them (fixed shapes) and stops when all rows are done. Compiled variants are warmed up
once on the same shapes (the static cache length is prompt + max_new_tokens), so compile time is not counted.
"""

from __future__ import annotations

import argparse
import time

import torch

from pot.sampling import SamplingConfig, sample
from recipes.models import load_pretrained


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _generated_tokens(rows: torch.Tensor, eos: int) -> int:
    return sum(row.index(eos) + 1 if eos in row else len(row) for row in rows.tolist())


def time_generate(model, tok, prompts, n, max_new_tokens, **kwargs) -> float:
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    _sync()
    began = time.perf_counter()
    out = model.generate(**enc, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, num_return_sequences=n,
                         max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, **kwargs)
    _sync()
    elapsed = time.perf_counter() - began
    return _generated_tokens(out[:, enc["input_ids"].shape[1]:], tok.eos_token_id) / elapsed


def time_sampler(model, tok, prompts, n, max_new_tokens, **kwargs) -> float:
    cfg = SamplingConfig(n=n, max_new_tokens=max_new_tokens, temperature=1.0, prompts_per_batch=len(prompts),
                         **kwargs)
    _sync()
    began = time.perf_counter()
    pools = sample(model, tok, prompts, cfg)
    _sync()
    return sum(len(s.token_ids) for pool in pools for s in pool) / (time.perf_counter() - began)


def measure(model, tok, prompts, n, max_new_tokens) -> dict[str, float]:
    """tokens/s of every variant that runs on this device (compiled ones after a warm-up on the same shapes)."""
    cuda = model.device.type == "cuda"
    samplers = {"sampler (dynamic cache)": {}, "sampler (static cache)": {"cache": "static"}}
    generators = {"generate (dynamic cache)": {}}
    if cuda:
        samplers["sampler (compiled static cache)"] = {"cache": "static", "compile": True}
        generators["generate (compiled static cache)"] = {"cache_implementation": "static"}  # auto-compiles on CUDA
    rates = {}
    for name, kwargs in samplers.items():
        time_sampler(model, tok, prompts, n, max_new_tokens, **kwargs)  # warm-up / compile
        rates[name] = time_sampler(model, tok, prompts, n, max_new_tokens, **kwargs)
    for name, kwargs in generators.items():
        time_generate(model, tok, prompts, n, max_new_tokens, **kwargs)
        rates[name] = time_generate(model, tok, prompts, n, max_new_tokens, **kwargs)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--batches", default="16", help="comma-separated total batch sizes (prompts x n)")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    model, tok = load_pretrained(args.model, dtype=args.dtype, load_in_4bit=False)
    model.eval()
    for batch in (int(b) for b in args.batches.split(",")):
        if batch % args.n:
            raise ValueError(f"--batches entries must be multiples of --n={args.n}, got {batch}")
        prompts = [tok.apply_chat_template([{"role": "user", "content": f"What is {17 + i} * {23 + 2 * i}?"}],
                                           tokenize=False, add_generation_prompt=True) for i in range(batch // args.n)]
        torch.manual_seed(0)
        rates = measure(model, tok, prompts, args.n, args.max_new_tokens)
        print(f"{args.model} ({model.dtype}) on {model.device}: batch {batch} = {len(prompts)} prompts x {args.n}, "
              f"{args.max_new_tokens} new tokens")
        baselines = [name for name in rates if name.startswith("generate")]
        for name, rate in rates.items():
            ratios = "" if name in baselines else "   " + "   ".join(
                f"{rate / rates[b]:6.2f}x {b.removeprefix('generate ')}" for b in baselines)
            print(f"  {name:<34} {rate:10.1f} tok/s{ratios}")


if __name__ == "__main__":
    main()
