"""The catpot command: every shipped recipe dry-runs, bad input exits 2 with one line, --help everywhere."""

import pytest

from core.models import resolve_model_name
from recipes.cli import main
from recipes.config import shipped_recipes

DATA_TASKS = {"gsm8k", "math", "math500"}


@pytest.mark.parametrize("path", shipped_recipes(), ids=lambda p: p.stem)
def test_every_shipped_recipe_dry_runs(path, shared_data_dir, capsys):
    text = path.read_text()
    overrides = [f"task.data_dir={shared_data_dir}"] if any(f"name: {t}\n" in text for t in DATA_TASKS) else []
    assert main(["train", str(path), "--dry-run", *[a for o in overrides for a in ("--set", o)]]) == 0
    out = capsys.readouterr().out
    problems = int(out.split("problems=")[1].split()[0])
    assert problems > 0 and "model=" in out


def test_recipes_lists_every_shipped_recipe(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(shipped_recipes())
    assert any(line.startswith("demo ") for line in lines)
    assert any(line.startswith("paper/sft_passn64 ") for line in lines)


@pytest.mark.parametrize(
    ("yaml_text", "overrides", "needle"),
    [
        ("model: [oops\n", [], "malformed YAML"),
        ("trian: {}\n", [], "did you mean 'train'"),
        ("train:\n  cat_n: 0\n", [], "train.cat_n"),
        ("train:\n  cat_n: 4\n  cat_k: 9\n", [], "train.cat_k"),
        ("model:\n  lora_r: x\n", [], "model.lora_r"),
        ("task:\n  name: chess\n", [], "chess"),
        ("model:\n  name: not a model\n", [], "model.name"),
        ("{}\n", ["task.name=gsm8k", "task.data_dir=/nonexistent/dir"], "/nonexistent/dir"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, yaml_text, overrides, needle):
    path = tmp_path / "r.yaml"
    path.write_text(yaml_text)
    code = main(["train", str(path), "--dry-run", *[a for o in overrides for a in ("--set", o)]])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("catpot: error: ") and needle in err and err.count("\n") == 1


def test_missing_recipe_file(capsys):
    assert main(["train", "/nonexistent/recipe.yaml", "--dry-run"]) == 2
    assert "/nonexistent/recipe.yaml" in capsys.readouterr().err


def test_debug_shows_traceback(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("trian: {}\n")
    with pytest.raises(KeyError):
        main(["--debug", "train", str(path), "--dry-run"])


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["recipes", "--help"], ["plot", "--help"],
                                  ["weights", "--help"]])
def test_help_everywhere(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0 and "usage: catpot" in capsys.readouterr().out


def test_model_resolution_without_download(tmp_path):
    assert resolve_model_name("tiny-llama").startswith("embedded:")
    assert resolve_model_name("mistralai/Mistral-7B-Instruct-v0.2") == "hub:mistralai/Mistral-7B-Instruct-v0.2"
    assert resolve_model_name(str(tmp_path)) == f"local:{tmp_path}"
    with pytest.raises(ValueError, match="'a/b/c'"):
        resolve_model_name("a/b/c")


def test_eval_and_compare_exit_zero(tmp_path):
    common = ["--model", "tiny-llama", "--task", "arithmetic", "--limit", "2", "--n", "2", "--ks", "1,2",
              "--strategies", "pass,maj", "--max-new-tokens", "3"]
    for name, seed in (("a", "0"), ("b", "1")):
        assert main(["eval", *common, "--seed", seed, "--out", str(tmp_path / name)]) == 0
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
