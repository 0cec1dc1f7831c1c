"""4-bit NF4 loading settings, and the two model checks every CAT trainer runs (GGUF refusal, CPU 4-bit repack)."""

from __future__ import annotations

import torch
from transformers import BitsAndBytesConfig


def nf4_config(compute_dtype: torch.dtype = torch.bfloat16) -> BitsAndBytesConfig:
    """QLoRA settings: NF4 with double quantisation; bf16 compute because bnb's default float32 compute is slow."""
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def refuse_gguf_quantized(model) -> None:
    """Refuse a model that transformers loaded from GGUF: it stays flagged as quantized even though dequantised.

    Such a model cannot be trained or saved: transformers' ``Trainer`` refuses a quantized model without adapters,
    and ``save_pretrained`` keeps the GGUF flag. Rebuild it as a plain model first (``recipes.models`` does).
    """
    config = getattr(model, "config", None)
    quantization = getattr(config, "quantization_config", None)
    method = quantization.get("quant_method") if isinstance(quantization, dict) else getattr(quantization, "quant_method", None)
    if str(getattr(method, "value", method)).lower() == "gguf":
        raise ValueError(
            "model is flagged as GGUF-quantized (config.quantization_config.quant_method='gguf') and cannot be trained;"
            " rebuild it as a plain model with recipes.models.load_pretrained"
        )


def disable_cpu_4bit_repack(model: torch.nn.Module) -> int:
    """Stop bnb from repacking 4-bit weights on an eval-mode CPU forward; returns the number of layers changed.

    On AVX512-BF16 CPUs an eval-mode ``Linear4bit`` forward repacks its weight for the fused ``gemv_4bit`` op, which
    has no autograd kernel: later training silently loses gradients (bitsandbytes 0.50 ``Linear4bit.forward``, the
    ``support_avx512bf16_for_cpu`` branch). Call before any eval.
    """
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)
