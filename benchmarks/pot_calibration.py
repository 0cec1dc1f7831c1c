"""PoT step-size calibration: adapter size relative to W and next-token KL to the base model after 1/4/16 updates.

For each mode (segment, episode) and learning rate, PoT runs on a few held-out arithmetic problems with the random
reward (it never gives a group equal rewards, so every update steps; with Adam the step size, not the reward scale,
sets how far the adapter moves). After u updates it measures, per request:
- relative norm sqrt(Σ ||ΔW||_F²) / sqrt(Σ ||W||_F²) over the adapted projections
  (``pot.episode.relative_adapter_norms``);
- KL(p_adapted ‖ p_base) of the next-token distributions, averaged over the positions of the base model's greedy
  answer to the problem (the distributions that decide the answer);
- whether the greedy answer under the adapter differs from the base model's.
The chosen episode-mode rule (``PoTConfig.episode_lr``): the smallest learning rate whose mean KL after one update
is >= 1e-2 nats while the relative norm after 16 updates stays <= 0.05.
Usage: python benchmarks/pot_calibration.py [--problems 3] [--lrs 3e-4,3e-3,1e-2,3e-2] [--out results/pot_calibration]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from core.models import load_pretrained
from evaluation.config import SamplingConfig
from evaluation.sampling import sample
from pot import PoTConfig, PoTGenerator
from pot.episode import EpisodeGenerator, relative_adapter_norms, slots_by_batch
from recipes.tasks import load_task

KL_RULE, NORM_RULE = 1e-2, 0.05
SYSTEM_PROMPT = "Reply with only the number."


@torch.no_grad()
def next_token_kl(model, bank, slots: torch.Tensor, probes: list[tuple[list[int], int]]) -> list[float]:
    """Per slot: mean over the probe's answer positions of KL(p_adapted ‖ p_base) (probe = (ids, prompt length))."""
    out = []
    for slot, (ids, start) in zip(slots.tolist(), probes):
        x = torch.tensor([ids])
        base = model(input_ids=x).logits[0, start - 1:-1].float().log_softmax(-1)
        with bank.use(torch.tensor([slot])):
            adapted = model(input_ids=x).logits[0, start - 1:-1].float().log_softmax(-1)
        out.append(float((adapted.exp() * (adapted - base)).sum(-1).mean()))
    return out


@torch.no_grad()
def greedy_texts(model, tok, bank, slots: torch.Tensor, prompts: list[str], max_new_tokens: int) -> list[str]:
    with slots_by_batch(model, bank, {len(prompts): slots}):
        pools = sample(model, tok, prompts, SamplingConfig(n=1, temperature=0.0, max_new_tokens=max_new_tokens,
                                                           prompts_per_batch=len(prompts), remove_finished=False))
    return [p[0].text for p in pools]


def base_norm(model) -> float:
    """sqrt(Σ ||W||_F²) over the projections PoT adapts (q and v of every 4th attention layer by default)."""
    from pot.adapters import SlotAdapterBank

    bank = SlotAdapterBank(model, 1)
    try:
        return sum(float(t.module.weight.detach().float().pow(2).sum()) for t in bank.adapted) ** 0.5
    finally:
        bank.remove()


def measure(model, tok, bank, slots, prompts, probes, base_texts, max_new_tokens) -> dict:
    kl = next_token_kl(model, bank, slots, probes)
    texts = greedy_texts(model, tok, bank, slots, prompts, max_new_tokens)
    relative = relative_adapter_norms(bank, slots).tolist()
    return {"relative_norm_mean": sum(relative) / len(relative), "relative_norm_max": max(relative),
            "kl_mean": sum(kl) / len(kl), "kl_max": max(kl),
            "answer_changed": sum(a != b for a, b in zip(texts, base_texts)) / len(texts)}


def run_episode(model, tok, prompts, probes, base_texts, lr, checkpoints, max_new_tokens) -> dict:
    cfg = PoTConfig(mode="episode", reward="random", max_updates=max(checkpoints), group_size=3, temperature=1.0,
                    episode_lr=lr)
    gen = EpisodeGenerator(model, tok, cfg, max_concurrency=len(prompts))
    rows, original = {}, gen._update

    def update(requests, u, tokens):
        original(requests, u, tokens)
        if u + 1 in checkpoints:
            slots = torch.tensor([r.slot for r in requests])
            rows[u + 1] = measure(model, tok, gen.bank, slots, prompts, probes, base_texts, max_new_tokens)

    gen._update = update
    try:
        gen.generate(prompts, max_new_tokens)
    finally:
        gen.remove()
    return rows


def run_segment(model, tok, prompts, probes, base_texts, lr, checkpoints, max_new_tokens, segment) -> dict:
    cfg = PoTConfig(mode="segment", reward="random", max_updates=max(checkpoints), segment_tokens=segment, lr=lr)
    gen = PoTGenerator(model, tok, cfg, max_concurrency=len(prompts))
    rows, original, done = {}, gen._update, set()

    def update(active, owner, learners, *rest):
        cache = original(active, owner, learners, *rest)
        counts = {r.updates for r in active}
        for u in sorted(counts & set(checkpoints) - done):
            if all(r.updates >= u for r in active) and len(active) == len(prompts):
                done.add(u)
                slots = torch.tensor([r.key for r in active])  # one wave: request k sits in slot k
                rows[u] = measure(model, tok, gen.bank, slots, prompts, probes, base_texts, max_new_tokens)
        return cache

    gen._update = update
    length = segment * (max(checkpoints) + 1)
    try:
        gen.generate(prompts, length, min_new_tokens=length)  # EOS masked: every request lives for every update
    finally:
        gen.bank.remove()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--problems", type=int, default=3)
    parser.add_argument("--lrs", default="3e-4,3e-3,1e-2,3e-2")
    parser.add_argument("--updates", default="1,4,16")
    parser.add_argument("--modes", default="segment,episode")
    parser.add_argument("--segment", type=int, default=2, help="segment-mode tokens per update")
    parser.add_argument("--max-new-tokens", type=int, default=10)
    parser.add_argument("--out", default="results/pot_calibration")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tok = load_pretrained(args.model, dtype="float32", load_in_4bit=False)
    model.eval()
    task = load_task("arithmetic", split="test", size=args.problems, max_operand=19, test_one_in=2,
                     system_prompt=SYSTEM_PROMPT)
    prompts = [task.render(p, tok) for p in task.problems]
    base = sample(model, tok, prompts, SamplingConfig(n=1, temperature=0.0, max_new_tokens=args.max_new_tokens))
    base_texts = [p[0].text for p in base]
    probes = []
    for prompt, pool in zip(prompts, base):
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        probes.append((ids + list(pool[0].token_ids), len(ids)))
    checkpoints = [int(u) for u in args.updates.split(",")]
    table = []
    for mode in args.modes.split(","):
        for lr in [float(x) for x in args.lrs.split(",")]:
            tic = time.perf_counter()
            if mode == "episode":
                rows = run_episode(model, tok, prompts, probes, base_texts, lr, checkpoints, args.max_new_tokens)
            else:
                rows = run_segment(model, tok, prompts, probes, base_texts, lr, checkpoints, args.max_new_tokens,
                                   args.segment)
            for u, row in sorted(rows.items()):
                table.append({"mode": mode, "lr": lr, "updates": u, **row})
                print(f"{mode:8s} lr {lr:7.0e} after {u:2d}: relative norm {row['relative_norm_mean']:.2e} "
                      f"(max {row['relative_norm_max']:.2e})  KL {row['kl_mean']:.2e} (max {row['kl_max']:.2e})  "
                      f"greedy answer changed {row['answer_changed']:.2f}", flush=True)
            print(f"  ({time.perf_counter() - tic:.0f} s)", flush=True)
    chosen = {}
    for mode in args.modes.split(","):
        ok = [lr for lr in sorted({r["lr"] for r in table if r["mode"] == mode})
              if any(r["kl_mean"] >= KL_RULE for r in table if (r["mode"], r["lr"], r["updates"]) == (mode, lr, 1))
              and all(r["relative_norm_max"] <= NORM_RULE for r in table
                      if (r["mode"], r["lr"], r["updates"]) == (mode, lr, max(checkpoints)))]
        chosen[mode] = ok[0] if ok else None
    print(f"rule: smallest lr with mean KL after 1 update >= {KL_RULE} and max relative norm after "
          f"{max(checkpoints)} updates <= {NORM_RULE}: {chosen}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": args.model, "task": "arithmetic max_operand=19 test_one_in=2 (test split)",
            "system_prompt": SYSTEM_PROMPT, "problems": args.problems, "reward": "random", "group_size": 3,
            "segment_tokens": args.segment, "rule": {"kl_after_1": KL_RULE, "relative_norm_after_max": NORM_RULE},
            "chosen": chosen, "cap_relative": PoTConfig().max_relative_norm}
    (out / "calibration.json").write_text(json.dumps({"meta": meta, "rows": table}, indent=1) + "\n")
    lines = ["| mode | lr | updates | relative norm (mean / max) | KL to base (mean / max) | greedy answer changed |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['mode']} | {r['lr']:.0e} | {r['updates']} | {r['relative_norm_mean']:.2e} / "
              f"{r['relative_norm_max']:.2e} | {r['kl_mean']:.2e} / {r['kl_max']:.2e} | {r['answer_changed']:.2f} |"
              for r in table]
    cap = PoTConfig().max_relative_norm
    lines += ["", f"Rule: the smallest lr with mean KL after 1 update >= {KL_RULE} nats and max relative norm after "
              f"{max(checkpoints)} updates <= {NORM_RULE}. Chosen: {chosen}.",
              f"The adapter-norm cap max_relative_norm = {cap} bounds each projection's ||ΔW|| / ||W||."]
    (out / "calibration.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
