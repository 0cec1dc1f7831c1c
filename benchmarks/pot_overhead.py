"""PoT overhead: tokens/s of PoT (self reward) vs the fast plain path, and PoT scaling over concurrent requests.

Plain = the fastest plain path available: `model.generate` greedy with a static KV cache, which transformers compiles
(torch.compile) on CUDA; on CPU transformers does not compile, so both the static and the dynamic cache are timed
(eager) and the faster is the reference. PoT = `PoTGenerator` with ``updates`` updates of ``segment`` tokens, the
same model, batch and length (EOS masked until the full length on both sides, ``min_new_tokens``).
Usage (GPU): python benchmarks/pot_overhead.py --model smollm2-135m-instruct --dtype bfloat16
      (CPU):  python benchmarks/pot_overhead.py --model tiny --updates 2 --segment 16 --batch-sizes 1,4
"""

from __future__ import annotations

import argparse
import time

import torch

from pot import PoTConfig, PoTGenerator

QUESTION = "Natalia sold clips to 48 of her friends in April, and then half as many in May. How many in total?"


def load(name: str, dtype: str, device: str):
    if name == "tiny":
        from core.tiny_llama import tiny_llama

        model, tok = tiny_llama()
        return model.to(device), tok
    from core.models import load_pretrained

    return load_pretrained(name, dtype=dtype, load_in_4bit=False, device=device)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def plain_paths(device: str) -> dict[str, str]:
    """``{description: cache_implementation}`` of the plain paths worth timing on this device."""
    if device.startswith("cuda"):
        return {"static cache, compiled": "static"}
    return {"static cache, eager": "static", "dynamic cache, eager": "dynamic"}


def plain_tokens_per_s(model, tok, prompts: list[str], new_tokens: int, device: str, cache: str) -> float:
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  cache_implementation=cache, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        model.generate(**enc, **kwargs)  # warm-up (and compilation on CUDA)
        synchronize(device)
        tic = time.perf_counter()
        out = model.generate(**enc, **kwargs)
        synchronize(device)
    return (out.shape[1] - enc["input_ids"].shape[1]) * len(prompts) / (time.perf_counter() - tic)


def pot_tokens_per_s(model, tok, prompts: list[str], cfg: PoTConfig, new_tokens: int, device: str) -> float:
    gen = PoTGenerator(model, tok, cfg, max_concurrency=len(prompts))
    gen.generate(prompts, max_new_tokens=min(new_tokens, cfg.segment_tokens + 1))  # warm-up
    synchronize(device)
    tic = time.perf_counter()
    results = gen.generate(prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    synchronize(device)
    return sum(len(r.token_ids) for r in results) / (time.perf_counter() - tic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--updates", type=int, default=16)
    parser.add_argument("--segment", type=int, default=128)
    parser.add_argument("--batch-sizes", default="1,8,32")
    args = parser.parse_args()
    model, tok = load(args.model, args.dtype, args.device)
    messages = [{"role": "user", "content": QUESTION}]
    prompt = (tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
              if getattr(tok, "chat_template", None) else QUESTION)
    new_tokens = args.updates * args.segment
    cfg = PoTConfig(max_updates=args.updates, segment_tokens=args.segment, reward="self")
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    print(f"model={args.model} device={args.device} new_tokens={new_tokens} ({args.updates} x {args.segment})")
    pot_tps = {}
    for size in sizes:
        # distinct prompts so the per-request seeds (and adapters) differ as in real use
        prompts = [f"{prompt}{' ' * i}" for i in range(size)]
        plain = {name: plain_tokens_per_s(model, tok, prompts, new_tokens, args.device, cache)
                 for name, cache in plain_paths(args.device).items()}
        fastest = max(plain, key=plain.get)
        pot_tps[size] = pot_tokens_per_s(model, tok, prompts, cfg, new_tokens, args.device)
        timings = "  ".join(f"plain[{name}] {tps:9.1f}" for name, tps in plain.items())
        print(f"batch {size:3d}: {timings}  PoT {pot_tps[size]:9.1f} tok/s  "
              f"slowdown fastest plain ({fastest})/PoT = {plain[fastest] / pot_tps[size]:.2f}x")
    base = sizes[0]
    for size in sizes[1:]:
        efficiency = pot_tps[size] / (pot_tps[base] * size / base)
        print(f"PoT scaling {base} -> {size} requests: {efficiency:.2f} of linear")


if __name__ == "__main__":
    main()
