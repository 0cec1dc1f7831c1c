"""Tokens/s of ``evaluation.sampling.sample`` against transformers' own generation at the same batch, with ratios: the
sampler vs plain ``generate`` (dynamic cache), vs ``generate`` with a compiled static cache (CUDA), and vs continuous
batching (``model.generate_batch``, transformers' paged-attention scheduler).

    python benchmarks/sampling_throughput.py --model tiny-llama --batches 8,32 --n 8 --max-new-tokens 64
    python benchmarks/sampling_throughput.py --model smollm2-135m-instruct --dtype bfloat16 --batches 1,64,256 \\
        --n 16 --max-new-tokens 128 --json sampler.json   # GPU (goal: >= 10x plain, >= 2x compiled at 256)

Every row samples batch/n prompts x n completions at temperature 1 (a batch smaller than n is one prompt x batch
completions); the tokens counted are the generated tokens up to and including EOS. ``generate`` keeps finished rows
in the batch (padding); the dynamic-cache sampler drops them; the static-cache sampler keeps them (fixed shapes) and
stops when all rows are done; ``generate_batch`` schedules requests into a paged KV cache and frees finished ones.
Every variant runs once on the same shapes before it is timed, so compilation, CUDA-graph capture and the paged
cache's allocation are not counted (on CPU, ``generate_batch`` gets a small cache: its default sizes it from GPU
memory). ``--json`` writes every rate and ratio.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time

import torch
from transformers import GenerationConfig

from core.models import load_pretrained
from evaluation.config import SamplingConfig
from evaluation.sampling import sample


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


def time_generate_batch(model, tok, prompts, n, max_new_tokens) -> float:
    """Continuous batching: ``generate_batch`` on token ids, n return sequences per prompt.

    The manager (paged cache, CUDA graphs) is kept between the warm-up call and the timed one where this transformers
    version allows it (``persistent_manager``), as a server would keep it.
    """
    inputs = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    config = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, num_return_sequences=n,
                              max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id)
    kwargs = {"generation_config": config}
    accepted = inspect.signature(model.generate_batch).parameters  # the API grew across transformers 5.x
    if model.device.type != "cuda" and "continuous_batching_config" in accepted:
        from transformers import ContinuousBatchingConfig

        kwargs["continuous_batching_config"] = ContinuousBatchingConfig(
            num_blocks=max(16, 2 * len(prompts) * n), max_batch_tokens=max(256, len(prompts) * n), page_size=32)
    if "persistent_manager" in accepted:
        kwargs["persistent_manager"] = True
    _sync()
    began = time.perf_counter()
    out = model.generate_batch(inputs=inputs, **kwargs)
    _sync()
    elapsed = time.perf_counter() - began
    if len(out) != len(prompts) * n:
        raise RuntimeError(f"generate_batch returned {len(out)} of {len(prompts) * n} sequences")
    return sum(len(o.generated_tokens) for o in out.values()) / elapsed


def measure(model, tok, prompts, n, max_new_tokens, continuous: bool = True) -> dict[str, float]:
    """tokens/s of every variant that runs on this device (each after a warm-up on the same shapes)."""
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
    if continuous:
        attention = model.config._attn_implementation  # continuous batching switches it to a paged kernel
        time_generate_batch(model, tok, prompts, n, max_new_tokens)
        rates["generate_batch (continuous batching)"] = time_generate_batch(model, tok, prompts, n, max_new_tokens)
        if hasattr(model, "destroy_cached_continuous_batching_manager"):
            model.destroy_cached_continuous_batching_manager()  # the next batch size gets its own
        if model.config._attn_implementation != attention:
            model.set_attn_implementation(attention)
    return rates


def ratios(rates: dict[str, float]) -> dict[str, dict[str, float]]:
    """Each sampler variant's rate divided by each transformers variant's (``generate*``)."""
    baselines = [name for name in rates if name.startswith("generate")]
    return {name: {b: rate / rates[b] for b in baselines} for name, rate in rates.items() if name not in baselines}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--batches", default="16", help="comma-separated total batch sizes (prompts x n)")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--no-continuous", action="store_true", help="skip generate_batch (continuous batching)")
    parser.add_argument("--json", default=None, help="write every rate and ratio to this file")
    args = parser.parse_args()
    model, tok = load_pretrained(args.model, dtype=args.dtype, load_in_4bit=False)
    model.eval()
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        n = min(args.n, batch)
        if batch % n:
            raise ValueError(f"--batches entries must be multiples of --n={args.n} (or smaller than it), got {batch}")
        prompts = [tok.apply_chat_template([{"role": "user", "content": f"What is {17 + i} * {23 + 2 * i}?"}],
                                           tokenize=False, add_generation_prompt=True) for i in range(batch // n)]
        torch.manual_seed(0)
        rates = measure(model, tok, prompts, n, args.max_new_tokens, continuous=not args.no_continuous)
        print(f"{args.model} ({model.dtype}) on {model.device}: batch {batch} = {len(prompts)} prompts x {n}, "
              f"{args.max_new_tokens} new tokens")
        row_ratios = ratios(rates)
        for name, rate in rates.items():
            shown = "".join(f"   {r:6.2f}x {b}" for b, r in row_ratios.get(name, {}).items())
            print(f"  {name:<38} {rate:10.1f} tok/s{shown}")
        rows.append({"batch": batch, "prompts": len(prompts), "n": n, "tokens_per_s": rates, "ratios": row_ratios})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "dtype": str(model.dtype), "device": str(model.device),
                       "max_new_tokens": args.max_new_tokens, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
