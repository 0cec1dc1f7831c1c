"""The vLLM backend: per-prompt seeded requests, stop strings and a LoRA adapter, and no vllm import elsewhere.

vLLM cannot run here (it needs a GPU and is not installed), so these tests put a minimal stand-in ``vllm`` module
into ``sys.modules``: it records what catpot asks of ``vllm.LLM``, ``vllm.SamplingParams`` and
``vllm.lora.request.LoRARequest`` and answers with outputs shaped like vLLM's. This is the one place catpot's tests
use a stand-in: everything that can run here runs for real.
"""

import argparse
import ast
import builtins
import importlib.util
import json
import random
import sys
import types

import pytest

import core.models  # noqa: F401  (imports TRL, which probes for vllm once: before any stand-in exists)
from conftest import REPO_ROOT
from evaluation.config import SamplingConfig
from evaluation.records import read_records
from evaluation.sampling import VLLMModel, _sample_vllm, prompt_seed
from recipes.eval_command import register


class SamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class LoRARequest:
    def __init__(self, lora_name, lora_int_id, lora_path):
        self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path


class LLM:
    """Answers every request with ``n`` completions drawn from the request's own seed, as vLLM's seeded sampling
    does: the same (prompt, seed) gives the same completions whatever else is in the call."""

    instances: list["LLM"] = []

    def __init__(self, **kwargs):
        self.kwargs, self.calls = kwargs, []
        LLM.instances.append(self)

    def generate(self, prompts, sampling_params, lora_request=None):
        self.calls.append((prompts, sampling_params, lora_request))
        outputs = []
        for params in sampling_params:
            rng = random.Random(params.seed)
            completions = []
            for _ in range(params.n):
                answer = rng.randrange(20)
                stopped = params.stop and rng.random() < 0.5
                completions.append(types.SimpleNamespace(
                    text=f"It is {answer}", token_ids=[5, 6, 7], finish_reason="stop" if stopped else "length",
                    stop_reason=params.stop[0] if stopped else None,
                    logprobs=[{5: types.SimpleNamespace(logprob=-0.25)}, {6: types.SimpleNamespace(logprob=-0.5)},
                              {7: types.SimpleNamespace(logprob=-1.0)}]))
            outputs.append(types.SimpleNamespace(outputs=completions))
        return outputs


@pytest.fixture
def vllm_stand_in(monkeypatch):
    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = LLM, SamplingParams
    lora, request = types.ModuleType("vllm.lora"), types.ModuleType("vllm.lora.request")
    request.LoRARequest = LoRARequest
    vllm.lora, lora.request = lora, request
    for name, module in (("vllm", vllm), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, module)
    LLM.instances.clear()
    return vllm


def test_each_prompt_gets_its_own_seeded_request_with_the_adapter(vllm_stand_in):
    prompts = ["What is 1 + 2?", "What is 3 + 4?", "What is 1 + 2? "]
    cfg = SamplingConfig(n=4, max_new_tokens=32, temperature=0.7, top_p=0.9, seed=11, backend="vllm",
                         stop=("\n\nQuestion:",))
    llm, lora = LLM(), LoRARequest("adapter", 1, "/adapters/a")
    pools = _sample_vllm(VLLMModel(llm, lora), prompts, cfg)
    (sent, params, lora_sent), = llm.calls
    assert sent == prompts and lora_sent is lora and len(params) == len(prompts)
    assert [p.seed for p in params] == [prompt_seed(11, p) for p in prompts]
    assert len({p.seed for p in params}) == 3  # sample i of two problems no longer shares a seed
    for p in params:
        assert (p.n, p.temperature, p.top_p, p.max_tokens, p.logprobs, p.stop) == (4, 0.7, 0.9, 32, 0,
                                                                                  ["\n\nQuestion:"])
    alone = _sample_vllm(LLM(), prompts[1:2], cfg)  # a prompt's samples do not depend on the others
    assert [s.text for s in alone[0]] == [s.text for s in pools[1]]
    for pool in pools:
        assert len(pool) == 4
        for s in pool:
            assert s.logprob_sum == pytest.approx(-1.75) and s.logprob_mean == pytest.approx(-1.75 / 3)
            assert s.finished == (s.stop == "\n\nQuestion:")
    assert {s.finished for pool in pools for s in pool} == {True, False}
    plain = _sample_vllm(LLM(), prompts, SamplingConfig(n=2, backend="vllm"))  # a bare vllm.LLM: no adapter
    assert plain and LLM.instances[-1].calls[0][2] is None and LLM.instances[-1].calls[0][1][0].stop is None


def catpot(argv):
    parser = argparse.ArgumentParser(prog="catpot")
    register(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_catpot_eval_on_vllm_serves_the_adapter_as_a_lora_request(vllm_stand_in, tiny, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    lora = LoraConfig(r=12, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(tmp_path / "adapter")
    out = tmp_path / "eval"
    results = catpot(["eval", "--model", str(tmp_path / "model"), "--adapter", str(tmp_path / "adapter"),
                      "--backend", "vllm", "--task", "arithmetic", "--limit", "3", "--n", "4", "--ks", "1,4",
                      "--strategies", "pass,maj", "--stop", "\n\n", "--out", str(out)])
    (llm,) = LLM.instances
    assert llm.kwargs["enable_lora"] is True and llm.kwargs["max_lora_rank"] == 16  # the smallest vLLM rank >= 12
    assert llm.kwargs["model"] == str(tmp_path / "model")
    prompts, params, request = llm.calls[0]
    assert request.lora_path == str((tmp_path / "adapter").resolve()) and params[0].stop == ["\n\n"]
    _, records = read_records(out / "records.jsonl")
    assert [r["prompt"] for r in records] == [p for prompts_, _, _ in llm.calls for p in prompts_]
    texts = [s["text"] for r in records for s in r["samples"]]
    assert all(t.startswith("It is ") for t in texts)
    assert [s["stop"] for r in records for s in r["samples"]] == [
        "\n\n" if s["finished"] else None for r in records for s in r["samples"]]
    assert results["provenance"]["source"]["adapter"] is not None
    assert results["curves"]["pass"][0]["value"] == pytest.approx(
        sum(s["correct"] for r in records for s in r["samples"]) / 12)


def test_an_adapter_rank_vllm_cannot_serve_is_refused(vllm_stand_in, tiny, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj"])).save_pretrained(tmp_path / "adapter")
    config = tmp_path / "adapter" / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "rank_pattern": {"q_proj": 600}}))
    with pytest.raises(ValueError, match="has LoRA rank 600; vLLM serves ranks up to 512"):
        catpot(["eval", "--model", str(tmp_path / "model"), "--adapter", str(tmp_path / "adapter"),
                "--backend", "vllm", "--task", "arithmetic", "--limit", "1", "--n", "1", "--ks", "1",
                "--out", str(tmp_path / "eval")])


CATPOT_PACKAGES = ("cat", "core", "pot", "recipes", "trainers")


def test_no_module_imports_vllm_at_import_time():
    """Every ``import vllm`` in catpot sits inside a function that only the vLLM backend calls."""
    for package in CATPOT_PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            inside_functions = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef,
                                ast.AsyncFunctionDef)) for node in ast.walk(fn)}
            for node in ast.walk(tree):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if any(n == "vllm" or n.startswith("vllm.") for n in names):
                    assert id(node) in inside_functions, f"{path}:{node.lineno} imports vllm at module level"


def test_an_hf_evaluation_never_asks_for_vllm(tmp_path, monkeypatch):
    """Every import statement that catpot's code runs during an hf evaluation is recorded with its module."""
    importers = []
    real_import = builtins.__import__

    def recording_import(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "vllm" or name.startswith("vllm."):
            importers.append((globals or {}).get("__name__", "?"))
        return real_import(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", recording_import)
    catpot(["eval", "--model", "tiny-llama", "--task", "arithmetic", "--limit", "2", "--n", "2", "--ks", "1,2",
            "--max-new-tokens", "4", "--dtype", "float32", "--out", str(tmp_path / "hf")])
    assert not [m for m in importers if m.split(".")[0] in CATPOT_PACKAGES]
    if importlib.util.find_spec("vllm") is None:  # the recorder sees the backend's import once it is chosen
        with pytest.raises(ValueError, match="--backend vllm needs the vllm package"):
            catpot(["eval", "--model", "tiny-llama", "--task", "arithmetic", "--limit", "2", "--n", "2", "--ks", "1",
                    "--backend", "vllm", "--out", str(tmp_path / "v")])
        assert "recipes.eval_command" in importers
