"""Checkpoint + resume after SIGKILL: the resumed run logs the same later metrics as an uninterrupted run."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    from datasets import Dataset
    from transformers import TrainerCallback
    from core.tiny_llama import tiny_llama
    import trainers.grpo
    from trainers import CATGRPOConfig, CATGRPOTrainer

    out, kill_at, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "resume"
    loads = []
    load_cat_state = trainers.grpo.load_cat_state

    def counting_load(checkpoint, history):  # counts the restores, then restores
        loads.append(str(checkpoint))
        load_cat_state(checkpoint, history)

    trainers.grpo.load_cat_state = counting_load

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # abrupt: no clean shutdown, no final save

    model, tokenizer = tiny_llama()
    config = CATGRPOConfig(
        output_dir=out, per_device_train_batch_size=8, num_generations=4, max_completion_length=8, max_steps=4,
        save_steps=2, learning_rate=1e-3, use_cpu=True, bf16=False, gradient_checkpointing=False, report_to="none",
        dataloader_pin_memory=False, logging_steps=1, seed=0, cat_strategy="bon", cat_n=4,
        cat_weight_form="raw", cat_quantile="history", cat_history_size=64,
    )
    data = Dataset.from_dict({"prompt": ["ab", "ba", "aa", "bb", "abc", "cab", "bca", "cc"]})
    reward = lambda completions, **kw: [c.count("a") / 8 for c in completions]
    trainer = CATGRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=data,
                             processing_class=tokenizer, callbacks=[Kill()])
    trainer.train(resume_from_checkpoint=resume)
    with open(os.path.join(out, "log_history.json"), "w") as f:
        json.dump(trainer.state.log_history, f)
    with open(os.path.join(out, "cat_state_loads.json"), "w") as f:
        json.dump(loads, f)
    """
)


def _run(out: Path, kill_at: int, resume: bool) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(out), str(kill_at), "resume" if resume else "fresh"],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300,
    )


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    straight = _run(tmp_path / "straight", kill_at=-1, resume=False)
    assert straight.returncode == 0, straight.stderr[-2000:]
    killed = _run(tmp_path / "killed", kill_at=3, resume=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (tmp_path / "killed" / "checkpoint-2" / "cat_state.json").is_file()
    assert not (tmp_path / "killed" / "checkpoint-4").exists()
    resumed = _run(tmp_path / "killed", kill_at=-1, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # restored exactly once, from the checkpoint resumed from
    loads = json.loads((tmp_path / "killed" / "cat_state_loads.json").read_text())
    assert [Path(p).name for p in loads] == ["checkpoint-2"]

    def steps(path):
        logs = json.loads((path / "log_history.json").read_text())
        return {e["step"]: e for e in logs if "loss" in e}

    expected, got = steps(tmp_path / "straight"), steps(tmp_path / "killed")
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4]  # steps 1-2 come back from checkpoint-2's trainer state
    for step in (3, 4):
        for key in ("loss", "reward", "cat/weight_max", "cat/effective_sample_size", "grad_norm"):
            assert got[step][key] == expected[step][key], (step, key)
    def history(path):
        return json.loads((path / "checkpoint-4" / "cat_state.json").read_text())["reward_history"]

    # 4 steps × 8 rewards, the 2 before the kill restored from checkpoint-2, equal to the uninterrupted run's
    assert len(history(tmp_path / "killed")["values"]) == 32
    assert history(tmp_path / "killed") == history(tmp_path / "straight")


def test_cat_state_is_restored_by_the_hook_every_backend_runs(tmp_path):
    """Trainer restores optimizer and scheduler through _load_optimizer_and_scheduler on every resume, DeepSpeed
    included (which never calls _load_from_checkpoint); the CAT state must come back there."""
    from datasets import Dataset

    from cat.estimators import RewardHistory
    from core.tiny_llama import tiny_llama
    from trainers import CATGRPOConfig, CATGRPOTrainer
    from trainers.checkpointing import save_cat_state

    saved = RewardHistory(16)
    saved.append([0.25, 0.5, 1.0])
    save_cat_state(tmp_path, saved)
    model, tokenizer = tiny_llama()
    config = CATGRPOConfig(output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, num_generations=4,
                           use_cpu=True, report_to="none", cat_strategy="bon", cat_n=4, cat_weight_form="raw",
                           cat_quantile="history", cat_history_size=16)
    trainer = CATGRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=config,
                             train_dataset=Dataset.from_dict({"prompt": ["ab", "ba"]}), processing_class=tokenizer)
    trainer._load_optimizer_and_scheduler(str(tmp_path))  # no optimizer files there: only the CAT state loads
    assert trainer.cat_history.state_dict() == saved.state_dict()
