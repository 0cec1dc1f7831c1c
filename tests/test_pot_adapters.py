"""Slot adapter bank and per-slot Adam against independent references (peft LoRA, torch.optim.Adam)."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from pot.adapters import SlotAdapterBank, find_attention_projections
from pot.optim import SlotAdam


def _ids(tokenizer, texts):
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return batch["input_ids"], batch["attention_mask"]


def _randomise(bank, seed=1, scale=0.3):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in bank.parameters_list():
            p.copy_(torch.randn(p.shape, generator=gen) * scale)


def test_gqa_shapes_and_stride(tiny):
    model, _ = tiny
    bank = SlotAdapterBank(model, 3, rank=4, layer_stride=2, targets="qv")
    names = [t.name for t in bank.adapted]
    assert names == ["model.layers.0.self_attn.q", "model.layers.0.self_attn.v",
                     "model.layers.2.self_attn.q", "model.layers.2.self_attn.v"]
    cfg = model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    assert bank.adapted[1].B.shape == (3, 4, cfg.num_key_value_heads * head_dim) == (3, 4, 32)
    assert bank.adapted[0].B.shape == (3, 4, cfg.hidden_size)
    assert all(t.B.abs().sum() == 0 and t.A.abs().sum() > 0 for t in bank.adapted)


def test_noop_at_init_and_base_untouched(tiny):
    model, tok = tiny
    ids, mask = _ids(tok, ["hello there", "x"])
    base = model(input_ids=ids, attention_mask=mask).logits
    state = {k: v.clone() for k, v in model.state_dict().items()}
    bank = SlotAdapterBank(model, 2, rank=4, layer_stride=1)
    with bank.use(torch.tensor([0, 1])):
        adapted = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(adapted, base)
    _randomise(bank)
    with bank.use(torch.tensor([0, 1])):
        changed = model(input_ids=ids, attention_mask=mask).logits
    assert not torch.allclose(changed, base)
    bank.remove()
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, base)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("targets", ["q", "qv"])
def test_matches_peft_lora_outputs_and_gradients(tiny, targets):
    model, tok = tiny
    reference = copy.deepcopy(model)
    bank = SlotAdapterBank(model, 3, rank=4, alpha=8.0, layer_stride=2, targets=targets)
    _randomise(bank)
    slot = 2
    modules = ["q_proj", "v_proj"][: len(targets)]
    peft_model = get_peft_model(reference, LoraConfig(r=4, lora_alpha=8.0, target_modules=modules,
                                                      layers_to_transform=[0, 2], lora_dropout=0.0))
    lora_layers = {n: m for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    for t in bank.adapted:
        layer = t.name.split(".")[2]
        proj = "q_proj" if t.name.endswith(".q") else "v_proj"
        (lora,) = [m for n, m in lora_layers.items() if f"layers.{layer}." in n and n.endswith(proj)]
        with torch.no_grad():
            lora.lora_A["default"].weight.copy_(t.A[slot].T)
            lora.lora_B["default"].weight.copy_(t.B[slot].T)
    ids, mask = _ids(tok, ["abc def", "1+1=2"])
    with bank.use(torch.tensor([slot, slot])):
        ours = model(input_ids=ids, attention_mask=mask).logits
    theirs = peft_model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    ours.square().mean().backward()
    theirs.square().mean().backward()
    for t in bank.adapted:
        layer = t.name.split(".")[2]
        proj = "q_proj" if t.name.endswith(".q") else "v_proj"
        (lora,) = [m for n, m in lora_layers.items() if f"layers.{layer}." in n and n.endswith(proj)]
        torch.testing.assert_close(t.A.grad[slot], lora.lora_A["default"].weight.grad.T, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(t.B.grad[slot], lora.lora_B["default"].weight.grad.T, rtol=1e-4, atol=1e-7)
        others = [s for s in range(3) if s != slot]
        assert t.A.grad[others].abs().sum() == 0 and t.B.grad[others].abs().sum() == 0


def test_rows_use_their_own_slot(tiny):
    model, tok = tiny
    bank = SlotAdapterBank(model, 2, rank=4, layer_stride=1)
    _randomise(bank)
    ids, mask = _ids(tok, ["same text", "same text"])
    with bank.use(torch.tensor([0, 1])):
        mixed = model(input_ids=ids, attention_mask=mask).logits
    with bank.use(torch.tensor([1, 1])):
        only_one = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(mixed[1], only_one[1])
    assert not torch.allclose(mixed[0], mixed[1])


def test_adapter_norm_matches_dense_product(tiny):
    model, _ = tiny
    bank = SlotAdapterBank(model, 2, rank=4, alpha=8.0, layer_stride=2)
    _randomise(bank)
    slots = torch.tensor([0, 1])
    with torch.no_grad():
        dense = torch.stack([
            sum(((bank.scaling * t.A[s] @ t.B[s]).double() ** 2).sum() for t in bank.adapted).sqrt() for s in range(2)
        ])
    torch.testing.assert_close(bank.adapter_norm(slots).double(), dense, rtol=1e-5, atol=0)


def test_relative_cap_is_per_projection_and_exact(tiny):
    """||ΔW_ts||_F ≤ rho·||W_t||_F for every projection t and slot s, ΔW rescaled (not reshaped) where it binds."""
    model, _ = tiny
    bank = SlotAdapterBank(model, 3, rank=4, alpha=8.0, layer_stride=2)
    _randomise(bank, scale=0.05)
    with torch.no_grad():
        for s, scale in enumerate([1.0, 0.01, 3.0]):  # slot 1 small: nothing binds there
            for t in bank.adapted:
                t.B[s] *= scale
        before = [[(bank.scaling * t.A[s] @ t.B[s]).double() for s in range(3)] for t in bank.adapted]
    weight = [float(t.module.weight.double().norm()) for t in bank.adapted]
    assert bank.adapted[0].weight_norm == pytest.approx(weight[0], rel=1e-12)
    ratios = torch.tensor([[float(d.norm()) / w for d in ds] for ds, w in zip(before, weight)])
    rho = float(ratios[:, 0].median())  # slot 0: some projections above, some below
    assert (ratios[:, 0] > rho).any() and (ratios[:, 0] < rho).any() and (ratios[:, 1] < rho).all()
    norms, clipped = bank.cap_relative_norm(torch.tensor([0, 1, 2]), rho)
    expected_total = torch.zeros(3, dtype=torch.float64)
    for t, ds, w, r in zip(bank.adapted, before, weight, ratios):
        for s in range(3):
            after = (bank.scaling * t.A[s] @ t.B[s]).detach().double()
            target = ds[s] * min(1.0, rho / float(r[s]))
            torch.testing.assert_close(after, target, rtol=1e-5, atol=1e-6 * float(target.abs().max()))
            expected_total[s] += float(target.square().sum())
    assert clipped.tolist() == (ratios > rho).sum(0).tolist()
    torch.testing.assert_close(norms.double(), expected_total.sqrt(), rtol=1e-5, atol=0)


def test_projection_norm_of_wrapped_and_quantised_projections(tiny, tmp_path):
    """The cap's ||W||_F is the weight the projection computes with: merged peft LoRA, dequantised 4-bit."""
    import bitsandbytes.functional as bnbf
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from core.models import disable_cpu_4bit_repack
    from pot.adapters import projection_norm

    model, _ = tiny
    wrapped = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj"],
                                                              init_lora_weights=False)).eval()
    q = wrapped.base_model.model.model.layers[1].self_attn.q_proj
    merged = copy.deepcopy(wrapped).merge_and_unload().model.layers[1].self_attn.q_proj.weight
    assert float(merged.norm()) != pytest.approx(float(model.model.layers[1].self_attn.q_proj.weight.norm()))
    assert projection_norm(q) == pytest.approx(float(merged.double().norm()), rel=1e-5)
    model.save_pretrained(tmp_path)
    quantized = AutoModelForCausalLM.from_pretrained(
        tmp_path, quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32))
    disable_cpu_4bit_repack(quantized)  # as SlotAdapterBank does: on AVX512-BF16 CPUs bnb would compute in bf16
    v = quantized.model.layers[0].self_attn.v_proj
    dense = bnbf.dequantize_4bit(v.weight.data, v.weight.quant_state).double()
    assert projection_norm(v, chunk=24) == pytest.approx(float(dense.norm()), rel=1e-5)


def test_bf16_adapted_projection_is_the_rounded_fp32_sum():
    """A bf16 model's adapted projection is round_bf16(W x + ΔW x) of the exact sum (within bf16's half ulp of the
    sum), so a delta far below half an ulp of W x still changes every output whose rounding it changes; adding it to
    the already rounded bf16 W x would leave those unchanged."""
    from core.tiny_llama import tiny_llama

    model, _ = tiny_llama(dtype=torch.bfloat16)
    bank = SlotAdapterBank(model, 2, rank=4, alpha=8.0, layer_stride=4, targets="q")
    gen = torch.Generator().manual_seed(0)
    (target,) = bank.adapted
    with torch.no_grad():
        target.B.copy_(torch.randn(target.B.shape, generator=gen) * 5e-5)
    x = torch.randn(2, 256, model.config.hidden_size, generator=gen).to(torch.bfloat16)
    base = target.module(x)
    with bank.use(torch.tensor([0, 1])):
        ours = target.module(x)
    A, B, W = (t.detach().double() for t in (target.A, target.B, target.module.weight))
    plain = x.double() @ W.T
    exact = plain + torch.stack([x[s].double() @ A[s] @ B[s] for s in (0, 1)]) * bank.scaling
    relative = float((exact - plain).norm() / plain.norm())
    assert relative < 2e-4  # an early-update-sized delta: ~1/10 of bf16's half ulp (2^-9 relative)
    half_ulp = torch.ldexp(torch.ones_like(exact), torch.frexp(exact)[1] - 9)
    error = (ours.double() - exact).abs()
    assert (error <= half_ulp).double().mean() > 0.999 and (error <= 2 * half_ulp).all()  # ties: float32 sums
    should_change = exact.to(torch.bfloat16) != plain.to(torch.bfloat16)
    assert should_change.sum() > 200
    assert (ours != base)[should_change].double().mean() > 0.99


def test_no_attention_projections_rejected():
    with pytest.raises(ValueError, match="Sequential"):
        find_attention_projections(torch.nn.Sequential(torch.nn.Linear(3, 3)))


def test_slot_adam_matches_torch_adam_per_slot():
    """Slot 1 joins two steps late and is clipped; each slot must equal its own torch Adam + clip_grad_norm_."""
    gen = torch.Generator().manual_seed(0)
    A = torch.nn.Parameter(torch.randn(2, 5, 3, generator=gen))
    B = torch.nn.Parameter(torch.randn(2, 3, 4, generator=gen))
    refs = [[torch.nn.Parameter(A[s].detach().clone()), torch.nn.Parameter(B[s].detach().clone())] for s in range(2)]
    ref_opts = [torch.optim.Adam(r, lr=0.01, betas=(0.9, 0.95), eps=1e-8) for r in refs]
    ours = SlotAdam([A, B], 2, lr=0.01, betas=(0.9, 0.95), max_grad_norm=1.0)
    for step in range(5):
        slots = [0] if step < 2 else [0, 1]
        grads = [torch.randn(2, 5, 3, generator=gen) * 3, torch.randn(2, 3, 4, generator=gen) * 3]
        A.grad, B.grad = grads[0].clone(), grads[1].clone()
        norms = ours.step(torch.tensor(slots))
        for j, s in enumerate(slots):
            refs[s][0].grad, refs[s][1].grad = grads[0][s].clone(), grads[1][s].clone()
            ref_norm = torch.nn.utils.clip_grad_norm_(refs[s], 1.0)
            torch.testing.assert_close(norms[j], ref_norm, rtol=1e-5, atol=1e-6)
            ref_opts[s].step()
    for s in range(2):
        torch.testing.assert_close(A.detach()[s], refs[s][0].detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(B.detach()[s], refs[s][1].detach(), rtol=1e-5, atol=1e-6)
    assert ours.steps.tolist() == [5, 3]


def test_slot_adam_skips_non_finite_slot():
    A = torch.nn.Parameter(torch.ones(2, 2, 2))
    A.grad = torch.ones(2, 2, 2)
    A.grad[0, 0, 0] = float("nan")
    norms = SlotAdam([A], 2).step(torch.tensor([0, 1]))
    assert torch.isnan(norms[0]) and torch.isfinite(norms[1])
    assert torch.equal(A.detach()[0], torch.ones(2, 2)) and not torch.equal(A.detach()[1], torch.ones(2, 2))
