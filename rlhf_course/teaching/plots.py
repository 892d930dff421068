"""Plots shared by the lessons and the pipeline report. Each function returns a matplotlib Figure."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np


def save(fig, path) -> None:
    """Write a figure and close it, so a notebook that runs a pipeline stage does not show it twice."""
    fig.savefig(path, dpi=100)
    plt.close(fig)


def smooth(values, window: int = 20) -> np.ndarray:
    """Trailing moving average (the first points average what exists so far)."""
    values = np.asarray(values, dtype=float)
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (cumsum[1:] - cumsum[np.maximum(0, np.arange(1, len(values) + 1) - window)]) / counts


def loss_curve(losses, title: str = "training loss", window: int = 20):
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(losses, color="0.8", lw=0.8, label="per step")
    ax.plot(smooth(losses, window), color="C0", lw=1.8, label=f"moving average ({window})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title)
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def accuracy_by_family(before: dict[str, float], after: dict[str, float], labels=("base model", "after SFT")):
    families = list(after)
    x = np.arange(len(families))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(x - 0.2, [before.get(f, 0.0) for f in families], 0.4, label=labels[0], color="0.6")
    ax.bar(x + 0.2, [after[f] for f in families], 0.4, label=labels[1], color="C0")
    ax.set_xticks(x, families, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("exact match (held-out)")
    ax.legend(frameon=False, loc="upper left", ncol=2)
    fig.tight_layout()
    return fig


def validation_curve(points: list[tuple[int, float]], ceiling: float | None = None):
    """Held-out comparison accuracy during reward-model training, with the labels' noise ceiling."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot([s for s, _ in points], [a for _, a in points], "o-", color="C0", label="held-out accuracy")
    if ceiling is not None:
        ax.axhline(ceiling, color="C3", ls="--", label=f"noise ceiling {ceiling:.2f}")
    ax.axhline(0.5, color="0.6", ls=":", label="chance")
    ax.set_xlabel("step")
    ax.set_ylabel("pairwise accuracy")
    ax.set_ylim(0.4, 1.0)
    ax.legend(frameon=False, loc="lower right")
    fig.tight_layout()
    return fig


def calibration(bins: list[tuple[float, float, int]]):
    """Predicted P(a preferred) against how often labelers preferred a; the diagonal is perfect."""
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], color="0.6", ls=":", label="perfectly calibrated")
    ax.scatter(
        [p for p, _, _ in bins],
        [o for _, o, _ in bins],
        s=[10 + n / 4 for _, _, n in bins],
        color="C0",
        label="held-out pairs (size = count)",
    )
    ax.set_xlabel("predicted P(a preferred)")
    ax.set_ylabel("observed share preferring a")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(frameon=False, loc="upper left")
    fig.tight_layout()
    return fig


CURVE_LABELS = {
    "score": "training reward",
    "gold": "gold score (hidden)",
    "kl": "KL to reference (nats)",
    "loss": "loss",
    "reward_accuracy": "implicit-reward accuracy",
    "reward_margin": "implicit-reward margin",
    "val_accuracy": "held-out pairwise accuracy",
    "kl_coef": "KL coefficient (adaptive)",
}


def training_curves(history: list[dict], title: str = "RL", keys: tuple[str, ...] | None = None, window: int = 5):
    """Raw and smoothed curves of a training history: reward, gold and KL for RL, loss and implicit
    rewards for DPO (whichever the history has), or the ``keys`` asked for. A metric that only some rows
    have (a validation accuracy measured now and then) is drawn as points."""
    if keys is None:
        keys = ("score", "gold", "kl") if "score" in history[0] else ("loss", "reward_accuracy", "reward_margin")
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        steps = [i for i, row in enumerate(history) if key in row]
        values = [history[i][key] for i in steps]
        if len(steps) < len(history):
            ax.plot(steps, values, "o-", color="C0", lw=1.8)
        else:
            ax.plot(values, color="0.8", lw=0.8)
            ax.plot(smooth(values, window), color="C0", lw=1.8)
        ax.set_title(CURVE_LABELS.get(key, key), fontsize=10)
        ax.set_xlabel("step" if "step" in history[0] else "update")
        ax.set_ylabel(CURVE_LABELS.get(key, key), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def frontier(metrics: dict):
    """Gold score against KL to the SFT model on the held-out prompts: one point per trained method (bars:
    one standard error over prompts), the best-of-n curve at its estimated KL with the upper bound on that
    KL beside it, and the SFT model at KL 0 (the shape of the DPO paper's reward-KL figure)."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    bon = metrics.get("best_of_n")
    if bon:
        gold = [r["gold"] for r in bon["curve"]]
        ax.plot([r["kl"] for r in bon["curve"]], gold, "o-", color="0.4", label="best-of-n (n = 1, 2, 4, ...)")
        ax.plot(
            [r["kl_bound"] for r in bon["curve"]],
            gold,
            "o--",
            color="0.75",
            mfc="none",
            label="best-of-n at its KL upper bound",
        )
    sft_gold = next((metrics[m]["gold_before"] for m in ("ppo", "dpo", "grpo", "pg") if m in metrics), None)
    if sft_gold is not None:
        ax.scatter([0], [sft_gold], color="k", marker="s", zorder=3, label="SFT")
    for i, (name, label) in enumerate((("pg", "REINFORCE"), ("ppo", "PPO"), ("dpo", "DPO"), ("grpo", "GRPO"))):
        if name in metrics:
            m = metrics[name]
            ax.errorbar(
                [m["kl"]],
                [m["gold_after"]],
                xerr=[m.get("kl_se", 0)],
                yerr=[m.get("gold_se_after", 0)],
                fmt="o",
                ms=7,
                color=f"C{i}",
                zorder=3,
                label=label,
            )
    ax.set_xlabel("KL to the SFT model (nats per reply)")
    ax.set_ylabel("mean gold score (held-out, sampled)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def compare_runs(
    runs: dict, keys: tuple[str, ...] = ("score", "gold", "kl"), window: int = 5, colors: dict | None = None
):
    """Smoothed curves of several training histories side by side, one panel per metric, one colour per run.

    ``runs`` maps a label (a KL coefficient, say) to a history; ``colors`` maps labels to colours, so that a
    run keeps its colour when others are hidden (by default the colour follows the order of ``runs``).
    """
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for i, (label, history) in enumerate(runs.items()):
            color = (colors or {}).get(label, f"C{i}")
            ax.plot(smooth([row[key] for row in history], window), color=color, lw=1.8, label=str(label))
        ax.set_title(CURVE_LABELS.get(key, key), fontsize=10)
        ax.set_xlabel("update")
        ax.set_ylabel(CURVE_LABELS.get(key, key), fontsize=8)
    if runs:
        axes[0][0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig
