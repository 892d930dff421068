"""Plots shared by the lessons and the pipeline report. Each function returns a matplotlib Figure."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np


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
