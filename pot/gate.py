"""`DifficultyGate`: decide per prompt whether PoT is worth running, from a linear probe on early hidden states.

benefit(prompt) ≈ w·h(prompt) + c, with h the mean hidden state of the prompt tokens after layer ``layer`` of the
base model, fitted by ridge regression (closed form) on evaluation records where
benefit = accuracy with PoT − accuracy without. Requests whose predicted benefit is ≤ ``threshold`` run plain
generation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GateRecord:
    prompt: str
    accuracy_with_pot: float
    accuracy_without_pot: float

    @property
    def benefit(self) -> float:
        return self.accuracy_with_pot - self.accuracy_without_pot


class DifficultyGate:
    def __init__(self, layer: int = 1, threshold: float = 0.0, ridge: float = 1e-3) -> None:
        if layer < 0:
            raise ValueError(f"layer must be >= 0, got {layer!r}")
        if ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {ridge!r}")
        self.layer, self.threshold, self.ridge = layer, threshold, ridge
        self.weight: torch.Tensor | None = None
        self.bias = 0.0

    @torch.no_grad()
    def features(self, model, tokenizer, prompts: list[str]) -> torch.Tensor:
        rows = []
        for prompt in prompts:
            ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]], device=model.device)
            hidden = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
            if self.layer >= len(hidden):
                raise ValueError(f"layer {self.layer} out of range: the model has {len(hidden) - 1} layers")
            rows.append(hidden[self.layer][0].float().mean(0).cpu())
        return torch.stack(rows)

    def fit(self, model, tokenizer, records: list[GateRecord]) -> DifficultyGate:
        if len(records) < 2:
            raise ValueError(f"records must hold at least 2 evaluations, got {len(records)}")
        x = self.features(model, tokenizer, [r.prompt for r in records]).double()
        y = torch.tensor([r.benefit for r in records], dtype=torch.float64)
        x_mean, y_mean = x.mean(0), y.mean()
        xc = x - x_mean
        gram = xc.T @ xc + self.ridge * torch.eye(x.shape[1], dtype=torch.float64)
        self.weight = torch.linalg.solve(gram, xc.T @ (y - y_mean))
        self.bias = float(y_mean - x_mean @ self.weight)
        return self

    def predict(self, model, tokenizer, prompts: list[str]) -> torch.Tensor:
        if self.weight is None:
            raise ValueError("DifficultyGate.predict called before fit()")
        return self.features(model, tokenizer, prompts).double() @ self.weight + self.bias

    def decide(self, model, tokenizer, prompts: list[str]) -> list[bool]:
        return (self.predict(model, tokenizer, prompts) > self.threshold).tolist()
