"""Model loading: the embedded SmolLM2 conversion (exact, cached, atomic), 4-bit on CPU, the tiny model."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from core import models


def test_tiny_llama_by_name():
    model, tok = models.load_pretrained("tiny-llama", device="cpu")
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    assert tok.padding_side == "left" and tok.pad_token_id is not None


def test_bad_model_inputs():
    with pytest.raises(ValueError, match=r"model.dtype must be .* got 'float8'"):
        models.load_pretrained("tiny-llama", dtype="float8")
    with pytest.raises(ValueError, match=r"model.load_in_4bit must be .* got 'yes'"):
        models.resolve_load_in_4bit("yes", "cpu")
    with pytest.raises(ValueError, match=r"unknown embedded model 'gpt5'"):
        models.embedded_checkpoint("gpt5")
    with pytest.raises(ValueError, match=r"model.name 'no-such-model' is neither"):
        models.load_pretrained("no-such-model", device="cpu")


def test_missing_gguf_file_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("CATPOT_SMOLLM2_GGUF", str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError, match="CATPOT_SMOLLM2_GGUF points to .*missing.gguf"):
        models.embedded_gguf()


def test_a_model_section_resolves_per_device_without_loading():
    assert models.resolve_model("tiny-llama", "auto", "auto", "cpu") == ("embedded:tiny-llama", torch.float32, False)
    assert models.resolve_model("org/name", "bf16", "auto", "cuda") == ("hub:org/name", torch.bfloat16, True)
    assert models.resolve_model("org/name", torch.float16, False, "cuda").dtype == torch.float16
    for kwargs, field in ((dict(name="a/b/c"), "model.name"), (dict(dtype="half"), "model.dtype"),
                          (dict(load_in_4bit="no"), "model.load_in_4bit")):
        with pytest.raises(ValueError, match=rf"^{field}[: ]") as err:
            models.resolve_model(**{"name": "tiny-llama", **kwargs})
        assert "\n" not in str(err.value)


def test_load_in_4bit_auto_is_off_on_cpu():
    assert models.resolve_load_in_4bit("auto", "cpu") is False
    assert models.resolve_load_in_4bit("auto", "cuda") is True


@pytest.mark.slow
def test_embedded_model_is_plain_trainable_and_matches_the_gguf(smollm2):
    from transformers import AutoModelForCausalLM

    model, tok = smollm2
    assert not hasattr(model.config, "quantization_config") and not getattr(model, "is_quantized", False)
    gguf = models.embedded_gguf()
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    ids = tok("What is 2 + 2?", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)  # the cached copy is the dequantised GGUF, exactly
    assert (models.embedded_checkpoint() / models.COMPLETE_MARKER).is_file()


@pytest.mark.slow
def test_embedded_model_in_4bit_on_cpu(smollm2):
    import bitsandbytes as bnb

    model, tok = models.load_pretrained("smollm2-135m-instruct", load_in_4bit=True, device="cpu")
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    with torch.no_grad():
        logits = model(tok("1 + 1 =", return_tensors="pt").input_ids).logits
    assert torch.isfinite(logits).all()


@pytest.mark.slow
def test_killed_conversion_leaves_nothing_that_loads(tmp_path):
    """SIGKILL mid-conversion: the cache holds no completed model, so the next load converts again."""
    code = "from core.models import embedded_checkpoint; import sys; embedded_checkpoint(cache_dir=sys.argv[1])"
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.startswith(".smollm2") for p in tmp_path.iterdir()):
        time.sleep(0.2)
    time.sleep(2.0)  # inside the conversion, before the rename
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    target = tmp_path / "smollm2-135m-instruct"
    assert not (target / models.COMPLETE_MARKER).exists()
    assert not target.exists()
