"""Print the CAT weight tables and save a figure of the weight curves (``catpot weights``).

The tables are the ones of the CAT paper's Table 1 evaluated on a grid of p (Ousherovitch & Tewari 2026,
arXiv:2604.24957): pass@N SFT weight N·p(1−p)^{N−1}/(1−(1−p)^N), pass@N RL weight N(1−p)^{N−1}, and the
majority-vote weights for the paper's SFT thresholds (N, k) = (8, 3), (16, 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from cat.objectives import majority_rl_weight, majority_sft_weight, passn_rl_weight, passn_sft_weight

TABLE_PS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9)
MAJORITY_SETTINGS = ((8, 3), (16, 4))


def _table(title: str, columns: Sequence[str], rows: dict[float, Sequence[float]]) -> Table:
    table = Table(title=title)
    table.add_column("p", justify="right")
    for name in columns:
        table.add_column(name, justify="right")
    for p, values in rows.items():
        table.add_row(f"{p:g}", *(f"{v:.4g}" for v in values))
    return table


def weight_tables(ns: Sequence[int] = (1, 4, 16, 64)) -> list[Table]:
    """The pass@N SFT/RL and majority SFT/RL weights on ``TABLE_PS``, one rich table each."""
    p = torch.tensor(TABLE_PS, dtype=torch.float64)
    passn_sft = [passn_sft_weight(p, n) for n in ns]
    passn_rl = [passn_rl_weight(p, n) for n in ns]
    maj_sft = [majority_sft_weight(p, n, k) for n, k in MAJORITY_SETTINGS]
    maj_rl = [majority_rl_weight(p, n, k) for n, k in MAJORITY_SETTINGS]

    def rows(columns: list[torch.Tensor]) -> dict[float, list[float]]:
        return {pi: [float(c[i]) for c in columns] for i, pi in enumerate(TABLE_PS)}

    maj_names = [f"N={n}, k={k}" for n, k in MAJORITY_SETTINGS]
    return [
        _table("pass@N SFT weight  N·p(1−p)^(N−1) / (1−(1−p)^N)", [f"N={n}" for n in ns], rows(passn_sft)),
        _table("pass@N RL weight  N(1−p)^(N−1)", [f"N={n}" for n in ns], rows(passn_rl)),
        _table("majority SFT weight  k·C(N,k)p^k(1−p)^(N−k) / P[Bin(N,p)≥k]", maj_names, rows(maj_sft)),
        _table("majority RL weight  N·C(N−1,k−1)p^(k−1)(1−p)^(N−k)", maj_names, rows(maj_rl)),
    ]


def plot_weight_curves(out_png: str | Path, ns: Sequence[int] = (1, 4, 16, 64)) -> Path:
    """Save the SFT and RL weight curves over p ∈ (0, 1) for pass@N and majority vote."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = torch.linspace(1e-4, 1 - 1e-4, 999, dtype=torch.float64)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for n in ns:
        axes[0].plot(p, passn_sft_weight(p, n), label=f"N={n}")
        axes[1].plot(p, passn_rl_weight(p, n), label=f"N={n}")
    for n, k in MAJORITY_SETTINGS:
        axes[2].plot(p, majority_sft_weight(p, n, k), label=f"SFT N={n}, k={k}")
        axes[2].plot(p, majority_rl_weight(p, n, k), "--", label=f"RL N={n}, k={k}")
    axes[1].set_yscale("log")
    axes[1].set_ylim(1e-3, max(ns) * 1.2)
    titles = ("pass@N SFT weight", "pass@N RL weight (log scale)", "majority-vote weights")
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("single-sample success probability p")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(out_png: str | Path = "outputs/cat_weights.png", ns: Sequence[int] = (1, 4, 16, 64)) -> Path:
    """Print the weight tables and write the figure; returns the figure's path."""
    console = Console()
    for table in weight_tables(ns):
        console.print(table)
    out = plot_weight_curves(out_png, ns)
    console.print(f"weight curves written to {out}")
    return out
