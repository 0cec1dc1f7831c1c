"""``catpot eval`` and ``catpot compare``: scaling curves of a model/checkpoint on a task, with CIs and compute.

``results.json`` schema::

    {"summary": {"finished_rate": float,
                 "strategies": {strategy: {"k_min", "at_k_min", "k_max", "at_k_max", "unparsed_share"}}},
     "config": {...the evaluation config...}, "model": str, "task": str, "n": int, "num_problems": int,
     "scorer": str,
     "curves": {strategy: [{"k", "value", "ci_low", "ci_high", "mc_stderr", "generated_tokens", "forward_tokens",
                            "backward_tokens", "flops", "wall_time"}]},
     "unparsed": {strategy: count of unparsable sample answers (scored wrong)},
     "finished_rate": share of the samples that ended before the token limit (EOS or a stop string),
     "provenance": {"catpot", "git": {"commit", "dirty"} or null, "packages": {name: version or null},
                    "source": {model/adapter content hashes, dtype, ...}, "data": {file: sha256},
                    "chat_template": bool, "chat_template_sha256", "prompts_sha256"}}

``summary`` holds each curve at its smallest and largest k and the share of its answers that did not parse;
``provenance`` says what produced the numbers (``recipes.provenance``).

Strategies: ``pass`` (pass@k), ``maj`` (maj@k), ``wmaj`` (weighted maj@k: the ``scorer``'s vote weights summed per
answer), ``avg`` (avg@k), ``bon`` (best-of-k under ``scorer``), and ``pot``
which adds one curve ``pot@u`` per update budget u (k = 1: PoT alone; k > 1: oracle best-of-k over ``pot_runs`` PoT
runs; its compute includes the PoT backward and re-prefill tokens); see ``evaluation.metrics`` for the formulas.
``records.jsonl`` next to it holds every sample (see ``evaluation.records``).

PoT (``pot_*`` fields, ``--pot-*`` flags): ``pot_mode`` segment (``pot.generator``) or episode (``pot.episode``),
``pot_reward`` self | verifier (the task's checker: oracle, the positive control) | majority (answer clusters of the
G attempts, label-free) | random (the negative control), ``pot_updates`` budgets, ``pot_group_size`` G,
``pot_lr`` (None: the mode's default), ``pot_epochs`` and ``pot_answer`` (episode mode), and ``pot_options``
(``--pot-option KEY=VALUE``) for every other ``pot.PoTConfig`` field. PoT answers are read in ``answer_mode`` like
the sampled ones. Episode mode answers every budget from one run (``answer_at``; the answer
after u updates equals a run with budget u), each charged only the compute spent up to it.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import asdict, fields
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from core.files import atomic_write_json
from evaluation.metrics import curves, finished_rate, paired_bootstrap, pot_curves, problem_values, unparsed_counts
from evaluation.records import RecordsFile, read_records
from recipes.config import LoggingConfig, parse_override
from recipes.eval_config import FIELDS_ADDED_LATER, EvalConfig
from recipes.flags import add_flags, field_default, from_flags


def evaluate_model(model, tokenizer, task, eval_cfg: EvalConfig, out_dir: str | Path, run=None,
                   model_name: str = "model", num_parameters: int | None = None, source: dict | None = None) -> dict:
    """Sample, score and record every problem of ``task`` (resuming ``out_dir/records.jsonl``); write results.json.

    ``model`` is a transformers model, or a ``vllm.LLM`` with ``eval_cfg.backend == "vllm"`` (then pass
    ``num_parameters``, which FLOPs need; by default it is counted from ``model.parameters()``). ``source`` says what
    produced the samples beyond the sampling settings (content hashes of the model and adapter, dtype, task options,
    data directory; see ``recipes.provenance``); records are resumed only when it, the rendered prompts, the gold
    answers and the library versions all match.
    """
    from evaluation.scorers import RewardModelScorer
    from recipes.provenance import run_provenance
    from recipes.run_dir import claim

    if not task.problems:
        raise ValueError(f"task {task.name!r} has no problems")
    out = Path(out_dir)
    claim(out, "eval", "evaluation directory")
    provenance = run_provenance(task, tokenizer, source or {})
    device = model.device.type if hasattr(model, "device") else eval_cfg.backend
    identity = records_identity(eval_cfg, model_name, task, provenance, device)
    records = RecordsFile(out / "records.jsonl", identity, provenance)
    reward_model = None
    if eval_cfg.scorer.startswith("reward_model:"):
        reward_model = RewardModelScorer.from_pretrained(eval_cfg.scorer.split(":", 1)[1])
    problems = task.problems
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as bar:
        progress = bar.add_task(f"eval {model_name} on {task.name}", total=len(problems),
                                completed=sum(p.id in records.done for p in problems))
        for start in range(0, len(problems), eval_cfg.prompts_per_batch):
            todo = [p for p in problems[start : start + eval_cfg.prompts_per_batch] if p.id not in records.done]
            if todo:
                _evaluate_batch(model, tokenizer, task, todo, eval_cfg, records, reward_model)
                bar.advance(progress, len(todo))
    ordered = [records.done[p.id] for p in problems]
    if num_parameters is None:
        num_parameters = sum(p.numel() for p in model.parameters())
    sampled = [s for s in eval_cfg.strategies if s != "pot"]
    results = {"config": asdict(eval_cfg), "model": model_name, "task": task.name, "n": eval_cfg.n,
               "num_problems": len(ordered), "scorer": eval_cfg.scorer,
               "curves": curves(ordered, sampled, eval_cfg.ks, eval_cfg.scorer, num_parameters, eval_cfg.seed)}
    if "pot" in eval_cfg.strategies:
        results["curves"].update(pot_curves(ordered, [k for k in eval_cfg.ks if k <= eval_cfg.pot_runs], eval_cfg.seed))
    results["unparsed"] = unparsed_counts(ordered, list(results["curves"]))
    results["finished_rate"] = finished_rate(ordered)
    answers = {name: len(ordered) * (eval_cfg.pot_runs if name.startswith("pot@") else eval_cfg.n)
               for name in results["curves"]}
    results = {"summary": summarize(results, answers), **results, "provenance": provenance}
    atomic_write_json(out / "results.json", results)
    from recipes.plotting import plot_results

    plot_results([out / "results.json"], out / "accuracy_vs_k.png", x="k")
    plot_results([out / "results.json"], out / "accuracy_vs_compute.png", x="compute")
    if run is not None:
        log_to_wandb(run, results, ordered)
    return results


def records_identity(eval_cfg: EvalConfig, model_name: str, task, provenance: dict, device: str) -> dict:
    """What the samples of ``records.jsonl`` depend on; records are resumed only under the same identity.

    From ``provenance`` (``recipes.provenance.run_provenance``): the rendered prompts' hash, the model's ``source``
    and the versions of catpot, transformers and torch. The metrics (``ks``, ``strategies``) and when training
    evaluates (``every_steps``) do not change the samples; fields added after records were first written are left
    out at their defaults, so those records stay resumable.
    """
    packages = provenance["packages"]
    versions = {"catpot": provenance["catpot"], "transformers": packages["transformers"], "torch": packages["torch"]}
    identity = {**asdict(eval_cfg), "model": model_name, "task": task.name,
                "problem_ids": [p.id for p in task.problems], "prompts_sha256": provenance["prompts_sha256"],
                "source": provenance["source"], "versions": versions, "device": device}
    identity.pop("ks"), identity.pop("strategies")
    identity.pop("every_steps", None)
    defaults = {f.name: field_default(f) for f in fields(EvalConfig)}
    later = {"subset": "first", **{name: defaults[name] for name in FIELDS_ADDED_LATER}}
    for name, default in later.items():
        if identity.get(name) == default:
            identity.pop(name)
    identity["pot"] = "pot" in eval_cfg.strategies
    return identity


def summarize(results: dict, answers: dict[str, int]) -> dict:
    """Each curve at its smallest and largest k and its unparsed share (``answers``: answers per curve), plus the
    finished rate: what a reader compares first, without parsing the curves."""
    strategies = {}
    for name, points in results["curves"].items():
        first, last = min(points, key=lambda p: p["k"]), max(points, key=lambda p: p["k"])
        strategies[name] = {"k_min": first["k"], "at_k_min": first["value"], "k_max": last["k"],
                            "at_k_max": last["value"], "unparsed_share": results["unparsed"][name] / answers[name]}
    return {"finished_rate": results["finished_rate"], "strategies": strategies}


def _evaluate_batch(model, tokenizer, task, todo, eval_cfg: EvalConfig, records: RecordsFile, reward_model) -> None:
    """Sample, verify, score (and PoT-run) one batch of problems and append their records."""
    from evaluation.sampling import sample
    from evaluation.scorers import score_samples

    prompts = [task.render(p, tokenizer) for p in todo]
    pot_runs = run_pot(model, tokenizer, task, todo, prompts, eval_cfg) if "pot" in eval_cfg.strategies else {}
    began = time.perf_counter()
    pools = sample(model, tokenizer, prompts, eval_cfg)  # an EvalConfig is the sampler's SamplingConfig
    wall = (time.perf_counter() - began) / len(todo)
    for problem, prompt, pool in zip(todo, prompts, pools):
        strict = eval_cfg.answer_mode == "strict"
        verdicts = [task.verify(s.text, problem, strict=strict, finished=s.finished) for s in pool]
        keys = task.answer_keys([s.text for s in pool], strict=strict, finished=[s.finished for s in pool])
        correct = [v.correct for v in verdicts]
        scorers = sorted({"oracle", eval_cfg.scorer})
        scores = {name: score_samples(name, pool, correct, prompt, reward_model) for name in scorers}
        records.add({
            "id": problem.id, "prompt": prompt, "gold": problem.answer,
            "prompt_tokens": len(tokenizer(prompt, add_special_tokens=False)["input_ids"]),
            "wall_time": wall,
            "samples": [{"text": s.text, "num_tokens": len(s.token_ids), "answer": v.answer, "answer_key": keys[i],
                         "correct": v.correct, "finished": s.finished, "stop": s.stop,
                         "scores": {name: scores[name][i] for name in scorers}}
                        for i, (s, v) in enumerate(zip(pool, verdicts))],
            **({"pot": pot_runs[problem.id]} if "pot" in eval_cfg.strategies else {}),
        })


def run_pot(model, tokenizer, task, problems, prompts, eval_cfg: EvalConfig) -> dict[str, dict[str, list[dict]]]:
    """``{problem id: {budget: [run]}}``: ``pot_runs`` PoT generations per problem and update budget (seeds differ).

    Episode mode runs once per run index with the largest budget and answers after every budget (``answer_at``);
    segment mode runs once per budget. Answers are verified in ``eval_cfg.answer_mode``.
    """
    out: dict[str, dict[str, list[dict]]] = {p.id: {} for p in problems}
    if eval_cfg.pot_mode == "episode":
        for run_index in range(eval_cfg.pot_runs):
            config = eval_cfg.pot_config(max(eval_cfg.pot_updates), run_index)
            by_budget = _episode_runs(model, tokenizer, task, problems, prompts, eval_cfg, config)
            for problem, runs in zip(problems, by_budget):
                for budget in eval_cfg.pot_updates:
                    out[problem.id].setdefault(str(budget), []).append(runs[budget])
        return out
    for budget in eval_cfg.pot_updates:
        for run_index in range(eval_cfg.pot_runs):
            config = eval_cfg.pot_config(budget, run_index)
            for problem, run in zip(problems, _segment_runs(model, tokenizer, task, problems, prompts, eval_cfg,
                                                            config)):
                out[problem.id].setdefault(str(budget), []).append(run)
    return out


def pot_reward(task, problems, config, strict: bool):
    """The reward object ``config.reward`` needs for ``config.mode`` on ``problems`` (None: the generator's own)."""
    from pot.episode_rewards import EpisodeMajorityReward, EpisodeVerifierReward
    from pot.rewards import MajorityReward, VerifierReward

    if config.reward == "verifier":
        if config.mode == "episode":
            def check(i: int, text: str, finished: bool) -> float:
                return float(task.verify(text, problems[i], strict=strict, finished=finished).correct)

            return EpisodeVerifierReward(check)
        return VerifierReward(lambda i, text: float(task.verify(text, problems[i], strict=strict).correct))
    if config.reward == "majority":
        if config.mode == "episode":
            return EpisodeMajorityReward(lambda texts, finished: task.answer_keys(texts, strict=strict,
                                                                                   finished=finished))
        return MajorityReward(lambda text: task.answer_key(text, strict=strict))
    return None


def _verdict_fields(task, problem, text: str, finished: bool, strict: bool) -> dict:
    verdict = task.verify(text, problem, strict=strict, finished=finished)
    return {"text": text, "answer": verdict.answer, "answer_key": verdict.answer_key, "correct": verdict.correct,
            "finished": finished}


def _episode_runs(model, tokenizer, task, problems, prompts, eval_cfg: EvalConfig, config) -> list[dict[int, dict]]:
    from pot.episode import EpisodeGenerator

    strict = eval_cfg.answer_mode == "strict"
    generator = EpisodeGenerator(model, tokenizer, config, reward=pot_reward(task, problems, config, strict),
                                 max_concurrency=len(prompts), stop=tuple(eval_cfg.stop))
    try:
        results = generator.generate(prompts, eval_cfg.max_new_tokens, answer_at=list(eval_cfg.pot_updates))
    finally:
        generator.remove()
    runs = []
    for problem, result in zip(problems, results):
        by_budget = {}
        for budget, a in result.answers.items():
            by_budget[budget] = {
                **_verdict_fields(task, problem, a.text, a.finished, strict), "failure": result.trace.failure,
                "steps": a.steps, "generated_tokens": a.generated_tokens, "forward_tokens": a.forward_tokens,
                "reprefill_tokens": a.reprefill_tokens, "backward_tokens": a.backward_tokens, "flops": a.flops,
                "wall_time": a.wall_s,
                "attempts": [{k: v for k, v in asdict(t).items() if k != "token_ids"}
                             for t in result.trace.attempts if t.update < budget],
                "adapter_relative_norm": next((u.relative_norm for u in reversed(result.trace.updates)
                                               if u.update < budget), 0.0)}
        runs.append(by_budget)
    return runs


def _segment_runs(model, tokenizer, task, problems, prompts, eval_cfg: EvalConfig, config) -> list[dict]:
    from pot import PoTGenerator
    from evaluation.sampling import eos_token_ids

    strict = eval_cfg.answer_mode == "strict"
    generator = PoTGenerator(model, tokenizer, config, reward=pot_reward(task, problems, config, strict))
    try:
        results = generator.generate(prompts, eval_cfg.max_new_tokens)
    finally:
        generator.bank.remove()
    eos = set(eos_token_ids(model, tokenizer))
    runs = []
    for problem, result in zip(problems, results):
        trace = result.trace
        finished = bool(result.token_ids) and result.token_ids[-1] in eos
        runs.append({
            **_verdict_fields(task, problem, result.text, finished, strict), "failure": trace.failure,
            "steps": len(trace.updates), "generated_tokens": trace.generated_tokens,
            "forward_tokens": trace.forward_tokens, "reprefill_tokens": trace.reprefill_tokens,
            "backward_tokens": trace.backward_tokens, "flops": trace.estimated_flops,
            "wall_time": trace.wall_s / len(problems),
            "attempts": [{"update": u.update, "reward": u.reward, "advantage": u.advantage,
                          "forward_tokens": u.forward_tokens, "backward_tokens": u.backward_tokens}
                         for u in trace.updates]})
    return runs


def log_to_wandb(run, results: dict, records: list[dict]) -> None:
    """The curves, as series that overlay across runs and as line-series charts, per-point/per-problem tables and
    summary scalars; failures only warn.

    Series: one row per strategy and k with the step metrics ``eval/k`` and ``eval/flops`` and the values
    ``eval/by_k/<strategy>`` (x = ``eval/k``) and ``eval/by_flops/<strategy>`` (x = ``eval/flops``), declared with
    ``define_metric``, so that W&B draws each run's curve against k or compute and overlays runs of a project.
    Summary: ``eval/<strategy>@<k>`` for every point, ``eval/finished_rate`` and ``eval/unparsed_share/<strategy>``.
    """
    try:
        _log_curves_and_table(run, results, records)
    except Exception as err:  # tracking is a side channel: results.json and the figures are already written
        warnings.warn(f"W&B logging failed, evaluation results are in results.json: {type(err).__name__}: {err}",
                      RuntimeWarning, stacklevel=2)


def _log_curves_and_table(run, results: dict, records: list[dict]) -> None:
    """One log call: accuracy against k, generated tokens and FLOPs (one line per strategy), the points, the problems."""
    import wandb

    curves = results["curves"]
    names = list(curves)
    run.define_metric("eval/k")
    run.define_metric("eval/flops")
    for name in names:
        run.define_metric(f"eval/by_k/{name}", step_metric="eval/k")
        run.define_metric(f"eval/by_flops/{name}", step_metric="eval/flops")
    for name in names:
        for p in curves[name]:
            run.log({"eval/k": p["k"], "eval/flops": p["flops"], f"eval/by_k/{name}": p["value"],
                     f"eval/by_flops/{name}": p["value"]})
    summary = {f"eval/{name}@{p['k']}": p["value"] for name in names for p in curves[name]}
    if "summary" in results:
        summary["eval/finished_rate"] = results["summary"]["finished_rate"]
        summary.update({f"eval/unparsed_share/{name}": entry["unparsed_share"]
                        for name, entry in results["summary"]["strategies"].items()})
    run.summary.update(summary)
    logged = {}
    for axis, key in (("k", "k"), ("generated_tokens", "generated_tokens"), ("flops", "flops")):
        logged[f"eval/accuracy_vs_{axis}"] = wandb.plot.line_series(
            xs=[[p[key] for p in curves[s]] for s in names], ys=[[p["value"] for p in curves[s]] for s in names],
            keys=names, title=f"accuracy vs {axis}", xname=axis)
    columns = ["k", "value", "ci_low", "ci_high", "generated_tokens", "backward_tokens", "flops", "wall_time"]
    logged["eval/points"] = wandb.Table(columns=["strategy", *columns],
                                        data=[[s, *[p[c] for c in columns]] for s in names for p in curves[s]])
    logged["eval/problems"] = wandb.Table(columns=["id", "correct", "n", "unparsed"], data=[
        [r["id"], sum(s["correct"] for s in r["samples"]), len(r["samples"]),
         sum(s["answer_key"] is None for s in r["samples"])] for r in records])
    run.log(logged)


def _load_adapter(model, adapter: str):
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, adapter)
    except Exception as err:  # peft raises several types (size mismatch, missing target modules, bad config)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"--adapter {adapter} does not match the model: {first}") from err


def eval_config(args: argparse.Namespace) -> EvalConfig:
    """The ``EvalConfig`` of ``catpot eval``'s flags (``recipes.flags``: one flag per field)."""
    return from_flags(EvalConfig, args)


def run_eval(args: argparse.Namespace) -> dict:
    from recipes import tracking
    from core.models import load_pretrained, resolve_model
    from recipes.provenance import adapter_fingerprint, model_fingerprint
    from recipes.run_dir import open_run_dir
    from recipes.tasks import load_task

    cfg = eval_config(args)
    options = task_options(args.task_option or [])
    task = load_task(args.task, split=args.split, size=args.limit, subset=args.subset, seed=args.task_seed,
                     data_dir=args.data_dir, prompt_template=args.prompt_template, system_prompt=args.system_prompt,
                     chat_template=args.chat_template, fewshot=args.fewshot, fewshot_format=args.fewshot_format,
                     **options)
    if not task.problems:
        raise ValueError(f"--task {args.task!r} (split {args.split!r}) has no problems")
    source = {"model": model_fingerprint(args.model),
              "adapter": adapter_fingerprint(args.adapter, "--adapter") if args.adapter else None,
              "dtype": args.dtype if cfg.backend == "vllm" else str(resolve_model(args.model, args.dtype, False).dtype),
              "task_options": options,
              "data_dir": str(Path(args.data_dir).expanduser().resolve()) if args.data_dir else None}
    with open_run_dir(args.out, "eval", "--out", resume=True):
        if cfg.backend == "vllm":
            model, tokenizer, num_parameters = _load_vllm(args)
        else:
            model, tokenizer = load_pretrained(args.model, dtype=args.dtype, load_in_4bit=False)
            if args.adapter:
                model = _load_adapter(model, args.adapter)  # unmerged: merging into bf16 weights rounds the update away
            model.eval()
            num_parameters = None
        name = args.model + (f"+{args.adapter}" if args.adapter else "")
        run = tracking.start_run(LoggingConfig(group=args.wandb_group, job_type="eval"),
                                 {**asdict(cfg), "model": name, "task": args.task}, args.out,
                                 f"eval {name} on {args.task}")
        try:
            results = evaluate_model(model, tokenizer, task, cfg, args.out, run=run, num_parameters=num_parameters,
                                     model_name=name, source=source)
        finally:
            tracking.finish(run)
    print_results_table(results)
    return results


VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts (besides 1)


def _load_vllm(args: argparse.Namespace):
    """``(evaluation.sampling.VLLMModel, tokenizer, parameter count)`` for ``--backend vllm``; the count comes from a
    meta-device build. ``--adapter``: the engine is built with ``enable_lora=True`` and a ``max_lora_rank`` that
    holds the adapter's rank, and every request carries the adapter as a ``LoRARequest`` (unmerged, as on hf)."""
    try:
        import vllm
    except ImportError:
        raise ValueError("--backend vllm needs the vllm package (pip install 'catpot[vllm]'), which is not "
                         "installed") from None
    from transformers import AutoTokenizer

    from evaluation.sampling import VLLMModel
    from core.models import resolve_model_path

    path = resolve_model_path(args.model)
    if not args.adapter:
        llm = vllm.LLM(model=path, dtype=args.dtype, seed=args.seed)
        return VLLMModel(llm), AutoTokenizer.from_pretrained(path), parameter_count(path)
    from vllm.lora.request import LoRARequest

    rank = adapter_rank(args.adapter)
    max_rank = next((r for r in VLLM_LORA_RANKS if r >= rank), None)
    if max_rank is None:
        raise ValueError(f"--adapter {args.adapter} has LoRA rank {rank}; vLLM serves ranks up to "
                         f"{VLLM_LORA_RANKS[-1]}")
    llm = vllm.LLM(model=path, dtype=args.dtype, seed=args.seed, enable_lora=True, max_lora_rank=max_rank, max_loras=1)
    lora = LoRARequest("adapter", 1, str(Path(args.adapter).resolve()))
    return VLLMModel(llm, lora), AutoTokenizer.from_pretrained(path), parameter_count(path)


def adapter_rank(directory: str | Path) -> int:
    """The largest LoRA rank of a peft adapter (``r`` and any per-module ``rank_pattern`` value)."""
    config = json.loads((Path(directory) / "adapter_config.json").read_text())
    ranks = [config.get("r") or 0, *(config.get("rank_pattern") or {}).values()]
    return max(int(r) for r in ranks)


def parameter_count(path: str) -> int:
    """Parameters of the causal LM at ``path``, counted on the meta device (nothing is loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path)).num_parameters()


def print_results_table(results: dict, console: Console | None = None) -> None:
    """One row per strategy and k: accuracy, 95% CI, Monte Carlo error, compute; unparsed answers per strategy."""
    table = Table(title=f"{results['model']} on {results['task']}: {results['num_problems']} problems, "
                        f"n = {results['n']}, scorer {results['scorer']}")
    for column in ("strategy", "k", "accuracy", "95% CI", "MC err", "gen. tokens", "unparsed"):
        table.add_column(column, justify="left" if column == "strategy" else "right", no_wrap=True)
    for strategy, points in results["curves"].items():
        for i, p in enumerate(points):
            table.add_row(strategy if i == 0 else "", str(p["k"]), f"{p['value']:.3f}",
                          f"[{p['ci_low']:.3f}, {p['ci_high']:.3f}]", f"{p['mc_stderr']:.3f}",
                          f"{p['generated_tokens']:.0f}", str(results["unparsed"][strategy]) if i == 0 else "",
                          end_section=i == len(points) - 1)
    (console or Console()).print(table)


def compare_directories(dir_a: str | Path, dir_b: str | Path, seed: int = 0) -> list[dict]:
    """Paired bootstrap of B − A over the problems both evaluated, for every strategy and k both have."""
    (_, recs_a), (_, recs_b) = (read_records(Path(d) / "records.jsonl") for d in (dir_a, dir_b))
    by_id_b = {r["id"]: r for r in recs_b}
    common = [r for r in recs_a if r["id"] in by_id_b]
    if not common:
        raise ValueError(f"compare: {dir_a} and {dir_b} share no evaluated problems")
    results_a, results_b = (json.loads((Path(d) / "results.json").read_text()) for d in (dir_a, dir_b))
    rows = []
    for strategy in [s for s in results_a["curves"] if s in results_b["curves"]]:
        ks_b = {p["k"] for p in results_b["curves"][strategy]}
        for k in [p["k"] for p in results_a["curves"][strategy] if p["k"] in ks_b]:
            a = [problem_values(r, strategy, k, results_a["scorer"])[0] for r in common]
            b = [problem_values(by_id_b[r["id"]], strategy, k, results_b["scorer"])[0] for r in common]
            cmp = paired_bootstrap(a, b, seed=seed)
            verdict = "within noise" if cmp.within_noise else ("B better" if cmp.difference > 0 else "A better")
            rows.append({"strategy": strategy, "k": k, **asdict(cmp), "verdict": verdict, "problems": len(common)})
    return rows


def run_compare(args: argparse.Namespace) -> list[dict]:
    rows = compare_directories(args.a, args.b, seed=args.seed)
    for r in rows:
        print(f"{r['strategy']}@{r['k']}: B-A = {r['difference']:+.4f} 95% CI [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] "
              f"over {r['problems']} problems: {r['verdict']}")
    return rows


def task_options(pairs: list[str]) -> dict:
    """``--task-option KEY=VALUE`` pairs (values parsed as in ``--set``), e.g. ``max_operand=19`` for arithmetic."""
    return dict(parse_override(pair, "--task-option") for pair in pairs)


def register(subparsers) -> None:
    """Add ``eval`` and ``compare`` to a ``catpot`` argparse subparsers object."""
    p = subparsers.add_parser("eval", help="scaling curves (pass@k, maj@k, best-of-k) of a model on a task")
    p.add_argument("--model", required=True, help="embedded name, Hub id or local path")
    p.add_argument("--adapter", default=None, help="a peft adapter directory to load on top of --model")
    p.add_argument("--task", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first M problems (with --subset random: a "
                   "random M, seeded by --task-seed)")
    p.add_argument("--subset", default="first", help="first|random: which --limit problems of a dataset task")
    p.add_argument("--task-option", action="append", metavar="KEY=VALUE",
                   help="a task option, e.g. max_operand=19 or test_one_in=2 for arithmetic (repeatable)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--prompt-template", default=None, help="the problem's prompt, with {problem} (datasets) or "
                   "{expression} (arithmetic) where the problem goes")
    p.add_argument("--system-prompt", default=None, help="a system prompt (a chat turn, or the first paragraph of a "
                   "plain-text prompt)")
    p.add_argument("--no-chat-template", dest="chat_template", action="store_false",
                   help="a plain-text prompt instead of the tokenizer's chat template (base models)")
    p.add_argument("--fewshot", type=int, default=0, help="worked examples from the train split before each problem")
    p.add_argument("--fewshot-format", default=None, help="turns (chat turns; the default with a chat template) | "
                   "text (plain text in the prompt)")
    p.add_argument("--out", required=True)
    p.add_argument("--task-seed", type=int, default=0, help="which problems (kept apart from --seed, so that "
                   "evaluations with different sampling seeds compare on the same problems)")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--wandb-group", default=None, help="W&B group of the run (project: $WANDB_PROJECT or catpot)")
    add_flags(p, EvalConfig)
    p.set_defaults(func=run_eval)
    c = subparsers.add_parser("compare", help="paired bootstrap between two evaluation directories")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=run_compare)


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(prog="catpot")
    register(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    main()
