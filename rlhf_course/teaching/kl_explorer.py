"""Runs side by side, picked with a slider: how the KL coefficient trades reward for distance."""

from __future__ import annotations

import html
import io

import matplotlib.pyplot as plt

from rlhf_course.teaching import plots
from rlhf_course.teaching.style import BIG


class RunComparison:
    """Several training runs (a sweep of the KL coefficient, say), any subset of them shown side by side."""

    def __init__(self, runs: dict, keys=("score", "gold", "kl"), last: int = 5):
        if not runs:
            raise ValueError("need at least one run to compare")
        self.runs, self.keys, self.last = runs, tuple(keys), last
        self.shown = list(runs)
        self.colors = {label: f"C{i}" for i, label in enumerate(runs)}  # a run keeps its colour when others hide

    def table(self) -> list[dict]:
        """Per shown run: each metric's mean over its last ``last`` updates."""
        tails = {label: self.runs[label][-self.last :] for label in self.shown}
        return [
            {"run": label, **{k: sum(r[k] for r in tail) / len(tail) for k in self.keys}}
            for label, tail in tails.items()
        ]

    def figure(self):
        return plots.compare_runs({label: self.runs[label] for label in self.shown}, self.keys, colors=self.colors)


def kl_explorer(comparison: RunComparison, label: str = "KL coefficient"):
    """A check box per run, its curves side by side and a table of where each run ended."""
    import ipywidgets as w

    boxes = {
        run: w.Checkbox(value=run in comparison.shown, description=f"{label} {run}", indent=False)
        for run in comparison.runs
    }
    image, table = w.Image(format="png"), w.HTML()

    def refresh(_=None):
        comparison.shown = [run for run, box in boxes.items() if box.value]
        fig = comparison.figure()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90)
        plt.close(fig)
        image.value = buffer.getvalue()
        head = "".join(f"<th>{html.escape(plots.CURVE_LABELS.get(k, k))}</th>" for k in comparison.keys)
        rows = "".join(
            f"<tr><td>{html.escape(label)} {html.escape(str(r['run']))}</td>"
            + "".join(f"<td>{r[k]:.3f}</td>" for k in comparison.keys)
            + "</tr>"
            for r in comparison.table()
        )
        table.value = f"<table style='{BIG}'><tr><th>last {comparison.last} updates</th>{head}</tr>{rows}</table>"

    for box in boxes.values():
        box.observe(refresh, names="value")
    refresh()
    return w.VBox([w.HBox(list(boxes.values())), image, table])
