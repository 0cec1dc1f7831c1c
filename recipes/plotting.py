"""Figures: accuracy vs N and vs compute from ``results.json`` files (one line per strategy and checkpoint, 95% CI
bands), each experiment arm's paired difference from its baseline, the training curves of a run, and a replicated
experiment over its seeds (``recipes.seed_analysis``: curves at the last step, metrics and differences against the
training step, with the across-seed interval as a band)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_results(paths: list[str | Path], out_png: str | Path, x: str = "k", strategies: list[str] | None = None) -> Path:
    """``x="k"``: samples per problem; ``x="compute"``: estimated FLOPs (generated tokens when P is unknown).

    ``strategies`` keeps only those curves (all by default), e.g. one figure for pass@k and one for maj@k.
    """
    if x not in ("k", "compute"):
        raise ValueError(f"x must be 'k' or 'compute', got {x!r}")
    if not paths:
        raise ValueError("plot_results needs at least one results.json path, got none")
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.set_prop_cycle(color=plt.cm.tab20.colors)  # more runs x strategies than tab10 has colours
    for path in paths:
        results = json.loads(Path(path).read_text())
        for strategy, points in results["curves"].items():
            if strategies is not None and strategy not in strategies:
                continue
            if x == "k":
                xs = [p["k"] for p in points]
            else:
                key = "flops" if all(p["flops"] > 0 for p in points) else "generated_tokens"
                xs = [p[key] for p in points]
            label, values = f"{results['model']} {strategy}", [p["value"] for p in points]
            if len(points) == 1:  # a band needs two x values: draw the interval as an error bar
                ax.errorbar(xs, values, yerr=[[values[0] - points[0]["ci_low"]], [points[0]["ci_high"] - values[0]]],
                            fmt="s", capsize=4, label=label)
                continue
            line, = ax.plot(xs, values, marker="o", label=label)
            ax.fill_between(xs, [p["ci_low"] for p in points], [p["ci_high"] for p in points],
                            color=line.get_color(), alpha=0.15)
    ax.set_xscale("log", base=2 if x == "k" else 10)
    ax.set_xlabel("samples per problem (k)" if x == "k" else "compute (estimated FLOPs)")
    ax.set_ylabel("accuracy" if strategies is None else " / ".join(f"{s}@k" for s in strategies))
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return Path(out_png)


def plot_differences(replicas: dict[str, list[dict]], out_png: str | Path, strategies: tuple[str, ...] = ("pass", "maj"),
                     skip_arms: tuple[str, ...] = ("base",)) -> Path:
    """Arm − baseline against k with the paired-bootstrap 95% band, one panel per strategy, one colour per arm.

    ``replicas`` maps a label (e.g. a seed's results directory) to its ``comparisons.json`` rows; each replica gets
    its own line style, so replications of one experiment can be read off one figure.
    """
    if not replicas:
        raise ValueError("plot_differences needs at least one set of comparisons, got none")
    arms = sorted({r["arm"] for rows in replicas.values() for r in rows} - set(skip_arms))
    colours = {arm: f"C{i}" for i, arm in enumerate(arms)}
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, len(strategies), figsize=(5.5 * len(strategies), 4), squeeze=False)
    for ax, strategy in zip(axes[0], strategies):
        ax.axhline(0.0, color="black", linewidth=0.8)
        for index, (label, rows) in enumerate(replicas.items()):
            for arm in arms:
                points = sorted((r for r in rows if r["arm"] == arm and r["strategy"] == strategy), key=lambda r: r["k"])
                if not points:
                    continue
                ks = [p["k"] for p in points]
                ax.plot(ks, [p["difference"] for p in points], marker="o", markersize=3, color=colours[arm],
                        linestyle=styles[index % len(styles)], label=f"{arm} {label}".strip())
                ax.fill_between(ks, [p["ci_low"] for p in points], [p["ci_high"] for p in points],
                                color=colours[arm], alpha=0.08)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("samples per problem (k)")
        ax.set_ylabel(f"{strategy}@k: arm − baseline")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return Path(out_png)


def plot_training(log_history: list[dict], path: Path, label: str) -> Path:
    """Reward, loss and CAT weight statistics against the optimizer step (whatever of them was logged)."""
    keys = [k for k in ("reward", "loss", "cat/weight_mean", "cat/p_hat_mean") if any(k in e for e in log_history)]
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(3.2 * max(len(keys), 1), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(e["step"], e[key]) for e in log_history if key in e]
        ax.plot(*zip(*points), marker=".")
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.suptitle(label)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _arm_colours(rows: list[dict]) -> dict[str, str]:
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    return {arm: f"C{i}" for i, arm in enumerate(arms)}


def _band(ax, xs, rows, colour) -> None:
    """The across-seed interval of ``rows`` (None with one seed: no band)."""
    if all(r["ci_low"] is not None for r in rows):
        ax.fill_between(xs, [r["ci_low"] for r in rows], [r["ci_high"] for r in rows], color=colour, alpha=0.12)


def _seed_panels(rows: list[dict], panels: list[tuple[str, Callable[[dict], bool]]], x: str, draw_seeds=None,
                 zero_line: bool = False):
    """One panel per ``(ylabel, keep(row) -> bool)``: each arm's mean over seeds against ``x`` with the across-seed
    band; ``draw_seeds(ax, points, colour, arm_index, arms)`` adds each seed's values. Returns (figure, axes)."""
    colours = _arm_colours(rows)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (_, keep) in zip(axes[0], panels):
        if zero_line:
            ax.axhline(0.0, color="black", linewidth=0.8)
        for index, (arm, colour) in enumerate(colours.items()):
            points = sorted((r for r in rows if r["arm"] == arm and keep(r)), key=lambda r: r[x])
            if not points:
                continue
            xs = [p[x] for p in points]
            ax.plot(xs, [p["mean"] for p in points], marker="o", color=colour, label=arm)
            _band(ax, xs, points, colour)
            if draw_seeds is not None:
                draw_seeds(ax, points, colour, index, len(colours))
    for ax, (ylabel, _) in zip(axes[0], panels):
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    return fig, axes[0]


def _save(fig, out_png: str | Path) -> Path:
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return Path(out_png)


def plot_seed_curves(rows: list[dict], out_png: str | Path, step: int, strategies: list[str]) -> Path:
    """Each arm's mean over seeds against k at ``step`` (``recipes.seed_analysis`` curve rows), the across-seed
    interval as a band and each seed as faint points; one panel per strategy."""
    def seeds(ax, points, colour, index, arms):
        for p in points:
            ax.scatter([p["k"]] * len(p["seeds"]), [s["value"] for s in p["seeds"]], color=colour, s=6, alpha=0.4)

    panels = [(f"{strategy}@k at step {step}", lambda r, s=strategy: r["step"] == step and r["strategy"] == s)
              for strategy in strategies]
    fig, axes = _seed_panels(rows, panels, "k", seeds)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("samples per problem (k)")
        ax.set_ylim(-0.02, 1.02)
    return _save(fig, out_png)


def _by_metric(metrics: list[tuple[str, int]], label) -> list[tuple[str, Callable[[dict], bool]]]:
    return [(label(strategy, k), lambda r, s=strategy, k=k: r["strategy"] == s and r["k"] == k)
            for strategy, k in metrics]


def _step_axes(axes, rows: list[dict]) -> None:
    for ax in axes:
        ax.set_xticks(sorted({r["step"] for r in rows}))
        ax.set_xlabel("training step")


def plot_seed_steps(rows: list[dict], out_png: str | Path, metrics: list[tuple[str, int]]) -> Path:
    """Each arm's mean over seeds against the training step (step 0: the base model), one panel per (strategy, k)."""
    fig, axes = _seed_panels(rows, _by_metric(metrics, lambda s, k: f"{s}@{k}"), "step")
    _step_axes(axes, rows)
    for ax in axes:
        ax.set_ylim(-0.02, 1.02)
    return _save(fig, out_png)


def plot_seed_differences(rows: list[dict], out_png: str | Path, metrics: list[tuple[str, int]],
                          baseline: str = "baseline") -> Path:
    """Arm − baseline against the training step: mean over seeds with the across-seed band, and every seed's paired
    difference with its paired-bootstrap interval as an error bar (offset sideways to stay readable)."""
    def seeds(ax, points, colour, index, arms):
        steps = [p["step"] for p in points]
        width = (max(steps) - min(steps) or 1) * 0.012
        for p in points:
            for j, s in enumerate(p["seeds"]):
                x = p["step"] + width * (index - arms / 2 + j / max(len(p["seeds"]), 1))
                ax.errorbar([x], [s["difference"]], yerr=[[s["difference"] - s["ci_low"]],
                                                          [s["ci_high"] - s["difference"]]],
                            fmt=".", color=colour, alpha=0.4, capsize=2, markersize=3)

    fig, axes = _seed_panels(rows, _by_metric(metrics, lambda s, k: f"{s}@{k}: arm − {baseline}"), "step",
                             seeds, zero_line=True)
    _step_axes(axes, rows)
    return _save(fig, out_png)
