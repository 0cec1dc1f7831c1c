"""Prompt control reaches training: TRL tokenizes the plain-text prompt and trains on exactly the target."""

from recipes.config import recipe_from_dict
from core.models import load_pretrained
from recipes.train import build_trainer, check_recipe


def test_sft_without_chat_template_trains_on_the_target_after_the_plain_prompt(tmp_path):
    recipe = recipe_from_dict({
        "model": {"name": "tiny-llama", "dtype": "float32", "lora_r": 2, "lora_alpha": 4,
                  "lora_target_modules": ["q_proj"]},
        "task": {"name": "arithmetic", "size": 3, "chat_template": False, "fewshot": 2, "system_prompt": "Add.",
                 "prompt_template": "Q: {expression}\nA:"},
        "train": {"algorithm": "sft", "trl": {"max_steps": 1, "per_device_train_batch_size": 1, "max_length": 256,
                                              "gradient_checkpointing": False}},
        "logging": {"mode": "disabled"}, "output_dir": str(tmp_path / "run")})
    prepared = check_recipe(recipe)
    model, tok = load_pretrained("tiny-llama")
    trainer = build_trainer(recipe, model, tok, prepared)
    problem = prepared.task.problems[0]
    row = trainer.train_dataset[0]
    prompt = prepared.task.render(problem, tok)
    assert prompt.startswith("Add.\n\nQ: ") and prompt.count("\nA:") == 3 and prompt.endswith("\nA:")
    trained = [t for t, label in zip(row["input_ids"], row["labels"]) if label != -100]
    assert tok.decode(row["input_ids"]) == prompt + " " + problem.answer + tok.eos_token
    assert tok.decode(trained) == " " + problem.answer + tok.eos_token
