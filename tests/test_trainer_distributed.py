"""Two real CPU processes (torch.distributed.run, gloo) against one: the CAT quantities are computed on the whole
batch and sliced back, a GRPO group that straddles the processes included; CAT-SFT normalises over every process.

``accelerate launch --cpu --num_processes 2`` starts a single process, so the launcher here is torch.distributed.run.
Greedy decoding makes the completions independent of the per-process sampling RNG, so both runs see the same data.
"""

import json
import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

import trainers.grpo

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from core.tiny_llama import tiny_llama
    import trainers.grpo
    from trainers import CATGRPOConfig, CATGRPOTrainer, CATSFTConfig, CATSFTTrainer

    out, world = sys.argv[1], int(sys.argv[2])
    rank = int(os.environ.get("RANK", "0"))
    saves = []
    save_cat_state = trainers.grpo.save_cat_state

    def recording_save(path, history):  # records which process writes cat_state.json, then writes it
        saves.append(str(path))
        save_cat_state(path, history)

    trainers.grpo.save_cat_state = recording_save
    # 3 groups of 4 by global rollout position; with 2 processes of 6 rows the middle group straddles them
    REWARDS = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]

    def reward(completions, **kwargs):
        start = rank * len(completions)
        return REWARDS[start : start + len(completions)]

    class Recording(CATGRPOTrainer):
        scored = None

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            self.scored = self.scored or output
            return output

    common = dict(use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none", seed=0, max_steps=1,
                  dataloader_pin_memory=False, logging_steps=1)
    model, tokenizer = tiny_llama()
    config = CATGRPOConfig(
        output_dir=os.path.join(out, "grpo"), per_device_train_batch_size=12 // world, num_generations=4,
        max_completion_length=4, learning_rate=0.0, save_strategy="steps", save_steps=1, save_only_model=True,
        generation_kwargs={"do_sample": False}, cat_strategy="maj", cat_n=4, cat_k="dynamic",
        cat_weight_form="raw", cat_all_wrong_penalty=0.5, **common,
    )
    trainer = Recording(
        model=model, reward_funcs=reward, args=config, processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"prompt": ["ab", "ba", "aa", "bb", "abc", "cab"]}),
        answer_keys_fn=lambda cs: [f"{i % 2}{c[:1]}" for i, c in enumerate(cs)],
    )
    trainer.train()
    result = {
        "advantages": trainer.scored["advantages"].tolist(),
        "completion_ids": trainer.scored["completion_ids"].tolist(),
        "k_mean": trainer.state.log_history[0]["cat/k_mean"],
        "saves": saves,
    }

    class Grads(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
            torch.save(grads, os.path.join(out, f"sft_grads_{rank}.pt"))

    data = Dataset.from_dict({"prompt": ["1+1=", "2+2=", "10+1=", "2+3="], "completion": ["2", "4", "11 ok", "5"]})
    # token_mean: the processes hold different numbers of target tokens ("11 ok" is longer than the others)
    model, tokenizer = tiny_llama(dtype=torch.float64)
    sft = CATSFTConfig(output_dir=os.path.join(out, "sft"), per_device_train_batch_size=4 // world,
                       learning_rate=0.0, save_strategy="no", max_length=32, cat_strategy="pass", cat_n=4,
                       cat_reduction="token_mean", **common)
    CATSFTTrainer(model=model, args=sft, train_dataset=data, processing_class=tokenizer, callbacks=[Grads()]).train()
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    """
)


def _two_processes(out: Path) -> None:
    script = out / "run.py"
    script.write_text(SCRIPT)
    repo = Path(__file__).resolve().parents[1]
    path = os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run([sys.executable, *launcher, str(script), str(out), "2"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _one_process(out: Path, monkeypatch) -> None:
    """The same script in this process (its imports are already paid for); its patch of save_cat_state is undone."""
    monkeypatch.setattr(trainers.grpo, "save_cat_state", trainers.grpo.save_cat_state)
    monkeypatch.setattr(sys, "argv", ["run.py", str(out), "1"])
    monkeypatch.delenv("RANK", raising=False)
    script = out / "run.py"
    script.write_text(SCRIPT)
    runpy.run_path(str(script), run_name="__main__")


def test_two_processes_match_one(tmp_path, monkeypatch):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    _two_processes(two)
    _one_process(one, monkeypatch)
    single = json.loads((one / "rank0.json").read_text())
    ranks = [json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1)]
    # same completions (greedy), then the same advantages bit for bit, process 0 holding the first 6 rollouts
    assert ranks[0]["completion_ids"] + ranks[1]["completion_ids"] == single["completion_ids"]
    assert ranks[0]["advantages"] + ranks[1]["advantages"] == single["advantages"]
    assert len(set(single["advantages"])) > 3  # the groups' weights and the penalty differ
    assert ranks[0]["k_mean"] == ranks[1]["k_mean"] == single["k_mean"]
    # cat_state.json: written once, by the process that saves (save_only_model leaves the others no directory)
    assert ranks[1]["saves"] == [] and len(ranks[0]["saves"]) == 1
    assert (two / "grpo" / "checkpoint-1" / "cat_state.json").is_file()
    # CAT-SFT token_mean: the all-reduced gradient of 2 × 2 examples is the gradient of the 4 in one process
    expected = torch.load(one / "sft_grads_0.pt")
    for rank in (0, 1):
        got = torch.load(two / f"sft_grads_{rank}.pt")
        assert got.keys() == expected.keys()
        for name, grad in expected.items():  # to the float32 rounding of TRL's fused LM head (CPU-dependent)
            scale = grad.abs().max().item()
            torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-5 * scale, msg=name)
