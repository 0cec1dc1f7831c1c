"""PoT overhead: wall time of PoT (segment and episode mode) vs the fastest plain sampler, and PoT batch scaling.

Plain = the fastest plain path available at the same batch and answer length: ``model.generate`` greedy with a
static KV cache (compiled by transformers on CUDA) or, on CPU where nothing is compiled, the faster of the static
and dynamic caches and ``evaluation.sampling.sample`` (greedy). PoT:
- segment: ``PoTGenerator`` with ``updates`` updates of ``segment`` tokens (EOS masked to the full length on both
  sides, ``min_new_tokens``), self reward: the answer is the output, so slowdown = PoT wall / plain wall;
- episode: ``EpisodeGenerator`` with ``updates`` updates of G = 3 attempts of ``updates · segment`` tokens and a
  greedy answer, random reward (a step every update). It generates (updates · G + 1)× the answer's tokens by
  design, so next to the slowdown it prints the cost per generated token relative to plain (the machinery's
  overhead) and the equivalent plain budget.
Scaling: PoT tokens/s at batch b over b/b0 times the batch-b0 tokens/s (1.0 = linear).
GPU goal: segment slowdown <= 1.6x at batch 1 and 32, scaling >= 0.7 of linear.
Usage (GPU): python benchmarks/pot_overhead.py --dtype bfloat16
      (CPU):  python benchmarks/pot_overhead.py          (SmolLM2, 2 updates x 8 tokens, batch 1,8,32)
              python benchmarks/pot_overhead.py --model tiny   (the random tiny Llama: smoke run)
"""

from __future__ import annotations

import argparse
import time

import torch

from evaluation.config import SamplingConfig
from evaluation.sampling import sample
from pot import PoTConfig, PoTGenerator
from pot.episode import EpisodeGenerator

QUESTION = "Natalia sold clips to 48 of her friends in April, and then half as many in May. How many in total?"
GOAL_SLOWDOWN, GOAL_SCALING = 1.6, 0.7


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


def timed(fn, device: str) -> tuple[float, object]:
    if device.startswith("cuda"):
        fn()  # warm-up: compilation, CUDA graphs, allocator (eager CPU runs need none)
        synchronize(device)
    tic = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - tic, out


def plain_walls(model, tok, prompts: list[str], new_tokens: int, device: str) -> dict[str, float]:
    """``{path: seconds}`` for ``new_tokens`` greedy tokens per prompt on every plain path worth timing here."""
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    caches = ["static"] if device.startswith("cuda") else ["static", "dynamic"]
    walls = {}
    for cache in caches:
        kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                      cache_implementation=cache, pad_token_id=tok.pad_token_id)
        with torch.no_grad():
            walls[f"generate {cache}"] = timed(lambda: model.generate(**enc, **kwargs), device)[0]
    if not device.startswith("cuda"):
        # evaluation.sampling stops at EOS: time it only as a reference (it may generate fewer tokens)
        cfg = SamplingConfig(n=1, temperature=0.0, max_new_tokens=new_tokens, prompts_per_batch=len(prompts))
        walls["evaluation.sampling greedy"] = timed(lambda: sample(model, tok, prompts, cfg), device)[0]
    return walls


def segment_run(model, tok, prompts, updates: int, segment: int, device: str) -> tuple[float, int]:
    cfg = PoTConfig(max_updates=updates, segment_tokens=segment, reward="self")
    gen = PoTGenerator(model, tok, cfg, max_concurrency=len(prompts))
    length = updates * segment
    try:
        wall, results = timed(lambda: gen.generate(prompts, max_new_tokens=length, min_new_tokens=length), device)
    finally:
        gen.bank.remove()
    return wall, sum(len(r.token_ids) for r in results)


def episode_run(model, tok, prompts, updates: int, length: int, device: str) -> tuple[float, int, int]:
    cfg = PoTConfig(mode="episode", reward="random", max_updates=updates, group_size=3, temperature=1.0)
    gen = EpisodeGenerator(model, tok, cfg, max_concurrency=len(prompts))
    try:
        wall, results = timed(lambda: gen.generate(prompts, length), device)
    finally:
        gen.remove()
    answer = sum(len(r.token_ids) for r in results)
    generated = answer + sum(a.num_tokens for r in results for a in r.trace.attempts)
    return wall, answer, generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--updates", type=int, default=None, help="default: 16 on CUDA, 2 on CPU")
    parser.add_argument("--segment", type=int, default=None, help="default: 128 on CUDA, 8 on CPU")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--modes", default="segment,episode")
    args = parser.parse_args()
    gpu = args.device.startswith("cuda")
    updates = args.updates if args.updates is not None else (16 if gpu else 2)
    segment = args.segment if args.segment is not None else (128 if gpu else 8)
    model, tok = load(args.model, args.dtype, args.device)
    model.eval()
    messages = [{"role": "user", "content": QUESTION}]
    prompt = (tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
              if getattr(tok, "chat_template", None) else QUESTION)
    length = updates * segment
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    modes = args.modes.split(",")
    print(f"model={args.model} device={args.device} dtype={args.dtype} answer={length} tokens "
          f"(segment: {updates} x {segment}; episode: {updates} updates x G=3 attempts of {length} + answer)")
    tps: dict[str, dict[int, float]] = {m: {} for m in modes}
    for size in sizes:
        # distinct prompts so the per-request seeds (and adapters) differ as in real use
        prompts = [f"{prompt}{' ' * i}" for i in range(size)]
        plain = plain_walls(model, tok, prompts, length, args.device)
        forced = {k: v for k, v in plain.items() if k.startswith("generate")}
        fastest = min(forced, key=forced.get)
        cells = [f"batch {size:3d}", "  ".join(f"plain[{k}] {size * length / v:8.1f} tok/s" for k, v in plain.items())]
        if "segment" in modes:
            wall, tokens = segment_run(model, tok, prompts, updates, segment, args.device)
            tps["segment"][size] = tokens / wall
            cells.append(f"segment {tokens / wall:8.1f} tok/s slowdown {wall / forced[fastest]:5.2f}x")
        if "episode" in modes:
            wall, answer, generated = episode_run(model, tok, prompts, updates, length, args.device)
            tps["episode"][size] = generated / wall
            per_token = (wall / generated) / (forced[fastest] / (size * length))
            cells.append(f"episode {generated / wall:8.1f} gen tok/s slowdown {wall / forced[fastest]:6.2f}x "
                         f"(generates {generated / max(answer, 1):4.1f}x the answer; per generated token "
                         f"{per_token:4.2f}x plain)")
        print(f"{cells[0]}: {cells[1]}  (fastest forced-length plain: {fastest})\n    " + "  |  ".join(cells[2:]),
              flush=True)
    base = sizes[0]
    for mode in modes:
        for size in sizes[1:]:
            efficiency = tps[mode][size] / (tps[mode][base] * size / base)
            goal = f" (GPU goal >= {GOAL_SCALING})" if gpu else ""
            print(f"{mode} scaling {base} -> {size} requests: {efficiency:.2f} of linear{goal}")


if __name__ == "__main__":
    main()
