"""Episode-mode PoT on the tiny GQA Llama (and SmolLM2 with a real arithmetic verifier): equivalences and formulas
that fail if batching, seeding, the surrogate gradient, clipping or the eval wiring are wrong."""

from __future__ import annotations

import argparse
import statistics

import pytest
import torch

from pot import PoTConfig
from pot.episode import (EpisodeGenerator, attempt_logprobs, clipped_surrogate, group_advantages,
                         relative_adapter_norms)
from pot.episode_rewards import EpisodeBatch, EpisodeMajorityReward, EpisodeVerifierReward
from pot.generator import request_seed
from evaluation.records import read_records
from evaluation.config import SamplingConfig
from evaluation.sampling import sample
from recipes.eval_command import EvalConfig, eval_config, evaluate_model, register
from recipes.tasks import load_task

PROMPTS = ["<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n", "Q: say hi\nA:", "7*8="]


def episode(**overrides) -> PoTConfig:
    # the tiny model at lr 1e-2 would hit the default 5% cap every update; a loose cap keeps the steps visible
    fields = dict(mode="episode", reward="random", max_updates=2, group_size=3, epochs=2, temperature=1.0,
                  episode_lr=1e-2, max_relative_norm=1.0)
    return PoTConfig(**{**fields, **overrides})


class PreferFirst:
    """Reward 1 for attempt 0 of every group, 0 for the others; remembers the attempts it scored."""

    def __init__(self) -> None:
        self.seen: list[list[list[int]]] = []

    def __call__(self, batch: EpisodeBatch):
        self.seen.append([list(t) for t in batch.token_ids])
        scores = torch.tensor([float(row % batch.group_size == 0) for row in range(len(batch.texts))])
        return scores, {"preferred": scores}


def test_budget_zero_is_the_plain_sampler(tiny):
    model, tok = tiny
    model.eval()
    stop = ("\n",)
    greedy = EpisodeGenerator(model, tok, episode(max_updates=0, temperature=0.0), stop=stop)
    plain = sample(model, tok, PROMPTS, SamplingConfig(n=1, temperature=0, max_new_tokens=12, stop=stop))
    results = greedy.generate(PROMPTS, 12)
    greedy.remove()
    params = sum(p.numel() for p in model.parameters())
    for result, pool, prompt in zip(results, plain, PROMPTS):
        assert (result.text, result.token_ids, result.finished) == (pool[0].text, pool[0].token_ids, pool[0].finished)
        answer = result.answers[0]
        context = len(tok(prompt, add_special_tokens=False)["input_ids"])
        assert answer.backward_tokens == 0 and answer.reprefill_tokens == 0
        assert answer.flops == pytest.approx(2 * params * (context + len(answer.token_ids)))
    sampled = EpisodeGenerator(model, tok, episode(max_updates=0, answer="sample", temperature=0.8, top_p=0.9, seed=5))
    plain = sample(model, tok, PROMPTS, SamplingConfig(n=1, temperature=0.8, top_p=0.9, seed=5, max_new_tokens=12))
    assert [r.token_ids for r in sampled.generate(PROMPTS, 12)] == [p[0].token_ids for p in plain]
    sampled.remove()


def test_batch_equals_separate_runs_and_budgets_equal_shorter_runs(tiny):
    model, tok = tiny
    model.eval()
    gen = EpisodeGenerator(model, tok, episode(), max_concurrency=4)
    batched = gen.generate(PROMPTS, 8, answer_at=[0, 1, 2])
    alone = [gen.generate([p], 8, answer_at=[0, 1, 2])[0] for p in PROMPTS]
    shorter = EpisodeGenerator(model, tok, episode(max_updates=1), max_concurrency=4).generate(PROMPTS, 8)
    for b, a, s in zip(batched, alone, shorter):
        for budget in (0, 1, 2):
            assert b.answers[budget].token_ids == a.answers[budget].token_ids
        assert [t.text for t in b.trace.attempts] == [t.text for t in a.trace.attempts]
        assert [t.reward for t in b.trace.attempts] == [t.reward for t in a.trace.attempts]
        for ub, ua in zip(b.trace.updates, a.trace.updates):
            assert ub.relative_norm == pytest.approx(ua.relative_norm, rel=1e-4)
            assert ub.stepped and ub.relative_norm > 0 and len(ub.grad_norms) == 2
        # a second epoch sees the first epoch's step: the ratio is no longer 1 everywhere
        assert b.trace.updates[0].grad_norms[0] != b.trace.updates[0].grad_norms[1]
        # the answer after u updates is the answer of a run with budget u, and is charged only what u cost
        assert s.answers[1].token_ids == b.answers[1].token_ids
        assert s.answers[1].flops == pytest.approx(b.answers[1].flops, rel=1e-9)
        spent = sum(t.flops for t in b.trace.attempts if t.update < 2)
        assert b.answers[2].flops > spent > b.answers[1].flops - 1  # attempts of updates 0, 1 and the answer
    # different prompts got different adapters (per-request seeds and rewards)
    assert len({round(r.trace.updates[-1].relative_norm, 8) for r in batched}) == len(PROMPTS)


def test_attempt_logprobs_match_a_full_sequence_reference(tiny):
    model, tok = tiny
    model.eval()
    gen = EpisodeGenerator(model, tok, episode(), max_concurrency=2)
    slots = torch.tensor([0, 1])
    gen.bank.reset(slots, [1, 2])
    with torch.no_grad():
        for t in gen.bank.adapted:  # a non-zero adapter, different per slot
            t.B.normal_(0, 0.05, generator=torch.Generator().manual_seed(3))
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS[:2]]  # different lengths: padding
    attempts = [[[5, 9, 12], [7], [40, 41]], [[3, 3], [8, 9, 10, 11], [2]]]
    logp, valid = attempt_logprobs(model, tok, gen.bank, slots, prompts, attempts, 0.7)
    for i, (ids, group) in enumerate(zip(prompts, attempts)):
        for g, y in enumerate(group):
            with gen.bank.use(slots[i:i + 1]):
                logits = model(input_ids=torch.tensor([ids + y])).logits[0].float() / 0.7
            reference = logits.log_softmax(-1)[len(ids) - 1:-1].gather(-1, torch.tensor(y)[:, None]).squeeze(-1)
            row = i * 3 + g
            assert valid[row].sum() == len(y)
            torch.testing.assert_close(logp[row, :len(y)], reference, rtol=1e-5, atol=1e-5)


def test_update_follows_the_autograd_gradient_of_the_surrogate(tiny):
    """One update, one epoch, from B = 0: Adam's first step is −lr·g/|g| per entry, so ΔB must be −lr·sign(∇L) of
    an independent reference of L = −(1/G) Σ_g A_g (1/|y_g|) Σ_t log π(y_gt) (ρ = 1 at the first epoch), and the
    rewarded attempt's log-prob must rise, the others' fall."""
    model, tok = tiny
    model.eval()
    reward = PreferFirst()
    lr, temperature = 1e-3, 1.0
    cfg = episode(max_updates=1, epochs=1, episode_lr=lr, max_grad_norm=1e6)
    gen = EpisodeGenerator(model, tok, cfg, reward=reward, max_concurrency=1)
    prompt = PROMPTS[0]
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    gen.generate([prompt], 6)
    attempts = reward.seen[0]
    after = [t.B[0].detach().clone() for t in gen.bank.adapted]
    with torch.no_grad():
        after_logp = [float(attempt_logprobs(model, tok, gen.bank, torch.tensor([0]), [ids], [attempts], temperature)[0]
                            [g, :len(y)].sum()) for g, y in enumerate(attempts)]
    # reference: the same initial adapter, full-sequence forwards, plain autograd
    gen.bank.reset(torch.tensor([0]), [request_seed(cfg.seed, prompt)])
    rewards = torch.tensor([1.0, 0.0, 0.0])
    advantages = (rewards - rewards.mean()) / (rewards.std() + 1e-4)
    loss, before_logp = 0.0, []
    for a, y in zip(advantages, attempts):
        with gen.bank.use(torch.tensor([0])):
            logits = model(input_ids=torch.tensor([ids + y])).logits[0].float() / temperature
        logp = logits.log_softmax(-1)[len(ids) - 1:-1].gather(-1, torch.tensor(y)[:, None]).squeeze(-1)
        before_logp.append(float(logp.detach().sum()))
        loss = loss - a * logp.mean() / len(attempts)
    grads = torch.autograd.grad(loss, [t.B for t in gen.bank.adapted])
    for delta, grad in zip(after, grads):
        g = grad[0]
        big = g.abs() > 1e-5  # far above Adam's eps 1e-8: there the step is −lr·sign(g) to 1e-3
        assert big.sum() > g.numel() // 4
        torch.testing.assert_close(delta[big], -lr * g[big].sign(), rtol=1e-3, atol=0)
    # the step raised the surrogate Σ_g A_g · mean_t log π(y_gt) (first order: −lr·|∇L|_1 < 0 for the loss)
    gain = sum(float(a) * (new - old) / len(y) for a, new, old, y in zip(advantages, after_logp, before_logp, attempts))
    assert gain > 0


def test_clipped_surrogate_and_advantages_by_hand():
    # ratios e^{log 1.5}, 1, e^{log 0.5}; ε = 0.2
    logp = torch.log(torch.tensor([[1.5, 1.0, 0.5], [1.5, 1.0, 0.5]], dtype=torch.float64)).requires_grad_(True)
    old = torch.zeros(2, 3, dtype=torch.float64)
    valid = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    out = clipped_surrogate(logp, old, adv, valid, 0.2)
    # A = +1: min(1.5, 1.2) = 1.2, min(1, 1) = 1, min(0.5, 0.8) = 0.5; A = −1: min(−1.5, −1.2) = −1.5, −1 (last masked)
    assert out.tolist() == pytest.approx([(1.2 + 1.0 + 0.5) / 3, (-1.5 - 1.0) / 2])
    out.sum().backward()
    # d/dlogp of ρA where the unclipped branch is active (ρ·A/|y|), 0 where the clipped one is
    expected = [[0.0, 1.0 / 3, 0.5 / 3], [-1.5 / 2, -1.0 / 2, 0.0]]
    assert logp.grad.tolist()[0] == pytest.approx(expected[0])
    assert logp.grad.tolist()[1] == pytest.approx(expected[1])
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.5, 0.5, 0.5])
    centred = [1 - 1 / 3, -1 / 3, -1 / 3]
    sd = statistics.stdev([1.0, 0.0, 0.0])
    assert group_advantages(rewards, 3, "std").tolist() == pytest.approx([c / (sd + 1e-4) for c in centred] + [0] * 3)
    assert group_advantages(rewards, 3, "mean").tolist() == pytest.approx(centred + [0] * 3)


def test_majority_reward_uses_the_task_clusters():
    task = load_task("arithmetic", split="test", size=2)
    reward = EpisodeMajorityReward(lambda texts, finished: task.answer_keys(texts, finished=finished))
    texts = ["The answer is 3", "3.0", "4", "no number", "x", "7"]
    batch = EpisodeBatch(model=None, tokenizer=None, bank=None, slots=torch.zeros(6), request_keys=[0] * 6,
                         request_seeds=[0] * 6, prompts=[""] * 6, texts=texts, token_ids=[[1]] * 6,
                         finished=[True] * 6, logprob_mean=[0.0] * 6, group_size=3, update=0, max_updates=1,
                         forward_tokens=[0] * 6)
    scores, _ = reward(batch)
    assert scores.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]


@pytest.mark.slow
def test_oracle_reward_on_smollm2_raises_correct_attempts(smollm2):
    """Positive control with the real arithmetic verifier: after one update the correct attempts of a mixed group
    are more likely and the wrong ones less likely."""
    model, tok = smollm2
    task = load_task("arithmetic", split="test", size=4, max_operand=19, test_one_in=2,
                     system_prompt="Reply with only the number.")
    problems = task.problems
    prompts = [task.render(p, tok) for p in problems]
    check = lambda i, text, finished: float(task.verify(text, problems[i], finished=finished).correct)  # noqa: E731
    cfg = PoTConfig(mode="episode", reward="verifier", max_updates=1, group_size=4, temperature=1.0)
    gen = EpisodeGenerator(model, tok, cfg, reward=EpisodeVerifierReward(check), max_concurrency=5)
    results = gen.generate(prompts, 10)
    mixed = 0
    for i, r in enumerate(results):
        attempts = r.trace.attempts
        assert [a.reward for a in attempts] == [check(i, a.text, a.finished) for a in attempts]
        if len({a.reward for a in attempts}) < 2:
            assert not r.trace.updates[0].stepped
            continue
        mixed += 1
        ids = [tok(prompts[i], add_special_tokens=False)["input_ids"]]
        tokens = [a.token_ids for a in attempts]
        with torch.no_grad():
            new, valid = attempt_logprobs(model, tok, gen.bank, torch.tensor([i]), ids, [tokens], 1.0)
            # the last slot stayed unused: B = 0, the base model that sampled the attempts
            old, _ = attempt_logprobs(model, tok, gen.bank, torch.tensor([gen.bank.num_slots - 1]), ids, [tokens], 1.0)
        delta = ((new - old) * valid).sum(-1) / valid.sum(-1)
        right = [d for a, d in zip(attempts, delta.tolist()) if a.reward > 0]
        wrong = [d for a, d in zip(attempts, delta.tolist()) if a.reward == 0]
        assert statistics.fmean(right) > 0 > statistics.fmean(wrong), (right, wrong)
    assert mixed >= 1
    assert relative_adapter_norms(gen.bank, torch.tensor([gen.bank.num_slots - 1])).item() == 0
    gen.remove()


def cli(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="catpot")
    register(parser.add_subparsers(required=True))
    return parser.parse_args(["eval", "--model", "m", "--task", "arithmetic", "--out", "o", *flags])


def test_cli_flags_reach_the_pot_config():
    cfg = eval_config(cli("--strategies", "pass,pot", "--pot-mode", "episode", "--pot-reward", "majority",
                          "--pot-updates", "0,2,8", "--pot-group-size", "5", "--pot-lr", "0.02", "--pot-epochs", "3",
                          "--pot-answer", "sample", "--temperature", "0.7", "--seed", "2"))
    pot = cfg.pot_config(8, run_index=1)
    assert (pot.mode, pot.reward, pot.max_updates, pot.group_size, pot.episode_lr, pot.epochs, pot.answer) == \
        ("episode", "majority", 8, 5, 0.02, 3, "sample")
    assert (pot.temperature, pot.seed) == (0.7, 2 * 100_003 + 1)
    assert cfg.pot_updates == [0, 2, 8]
    assert eval_config(cli("--pot-lr", "0.5")).pot_config(1).lr == 0.5  # segment mode: its own step size
    assert eval_config(cli()).pot_config(1).episode_lr == PoTConfig().episode_lr  # unset: the mode's default


@pytest.mark.parametrize("flags, message", [
    (("--pot-mode", "bogus"), "eval.pot_mode (--pot-mode) must be one of ('segment', 'episode'), got 'bogus'"),
    (("--pot-reward", "gold"), "eval.pot_reward (--pot-reward) must be one of"),
    (("--pot-group-size", "1"), "eval.pot_group_size (--pot-group-size) must be an integer >= 2, got 1"),
    (("--pot-epochs", "0"), "eval.pot_epochs (--pot-epochs) must be an integer >= 1, got 0"),
    (("--pot-lr", "-1"), "eval.pot_lr (--pot-lr) must be a finite number > 0, got -1.0"),
    (("--pot-answer", "best"), "eval.pot_answer (--pot-answer) must be one of ('greedy', 'sample'), got 'best'"),
    (("--pot-updates", "1,x"), "--pot-updates must be comma-separated ints, got '1,x'"),
    (("--strategies", "pot", "--pot-mode", "episode", "--temperature", "0"), "needs temperature > 0, got 0.0"),
])
def test_bad_pot_flags_give_one_line_errors(flags, message):
    with pytest.raises(ValueError) as err:
        eval_config(cli(*flags))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_eval_episode_records_compute_and_reads_answers_strictly(tiny, tmp_path):
    model, tok = tiny
    model.eval()
    task = load_task("arithmetic", split="test", size=3)
    cfg = EvalConfig(n=1, ks=[1], strategies=["pass", "pot"], pot_updates=[0, 2], pot_runs=1, pot_mode="episode",
                     pot_reward="random", max_new_tokens=6, answer_mode="strict", prompts_per_batch=3)
    results = evaluate_model(model, tok, task, cfg, tmp_path)
    _, records = read_records(tmp_path / "records.jsonl")
    prompts = [task.render(p, tok) for p in task.problems]
    greedy = sample(model, tok, prompts, SamplingConfig(n=1, temperature=0, max_new_tokens=6))
    for record, pool, problem in zip(records, greedy, task.problems):
        zero, two = record["pot"]["0"][0], record["pot"]["2"][0]
        assert zero["text"] == pool[0].text and zero["backward_tokens"] == 0
        for run in (zero, two):
            assert run["answer"] == task.extract(run["text"], strict=True, finished=run["finished"])
            assert run["correct"] == task.verify(run["text"], problem, strict=True, finished=run["finished"]).correct
        assert len(two["attempts"]) == 2 * 3 and two["backward_tokens"] > 0 and two["reprefill_tokens"] > 0
        assert two["flops"] > sum(a["flops"] for a in two["attempts"])  # the attempts plus the answer
    point = results["curves"]["pot@2"][0]
    assert point["flops"] == pytest.approx(sum(r["pot"]["2"][0]["flops"] for r in records))
