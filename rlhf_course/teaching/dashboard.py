"""A training dashboard that redraws its curves while a trainer runs (pass it as ``on_step``); outside a
notebook it prints a line every few steps instead."""

from __future__ import annotations

import sys
import time

import matplotlib.pyplot as plt

from rlhf_course.teaching import plots


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where figures can be redrawn in place)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class TrainingDashboard:
    """Curves of a run that grow while it trains: pass the dashboard as a trainer's (or ``pipeline.run``'s)
    ``on_step`` and use it in a ``with`` block.

    In a notebook the figure is redrawn in place, at most every ``redraw_seconds`` and once more at the end,
    so the saved notebook shows the whole run. Elsewhere it prints a line every ``print_every`` steps and a
    summary at the end. Metrics a row lacks (a validation accuracy measured now and then) are drawn as points.
    """

    def __init__(
        self,
        keys=("loss",),
        title: str = "",
        live: bool | None = None,
        redraw_seconds: float = 2.0,
        print_every: int = 50,
        window: int = 20,
        stream=None,
    ):
        self.keys, self.title, self.window = tuple(keys), title, window
        self.live = in_notebook() if live is None else live
        self.redraw_seconds, self.print_every = redraw_seconds, print_every
        self.stream = stream or sys.stdout
        self.rows: list[dict] = []
        self._handle, self._last_draw = None, float("-inf")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __call__(self, row: dict) -> None:
        self.rows.append(row)
        if self.live:
            if time.monotonic() - self._last_draw >= self.redraw_seconds:
                self.draw()
        elif len(self.rows) % self.print_every == 0:
            print(self.line(), file=self.stream, flush=True)

    def recent(self, key: str) -> float | None:
        """Mean of ``key`` over the last ``window`` rows that have it."""
        values = [row[key] for row in self.rows if key in row][-self.window :]
        return sum(values) / len(values) if values else None

    def line(self) -> str:
        step = len(self.rows) - 1
        parts = [f"{k} {v:.3f}" for k in self.keys if (v := self.recent(k)) is not None]
        return f"{self.title + ' ' if self.title else ''}step {step}: " + ", ".join(parts)

    def figure(self):
        return plots.training_curves(self.rows, title=self.title, keys=self.keys, window=self.window)

    def draw(self) -> None:
        from IPython.display import display

        if not self.rows:
            return
        fig = self.figure()
        if self._handle is None:
            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)
        plt.close(fig)  # shown through the handle only, not again when the cell ends
        self._last_draw = time.monotonic()

    def close(self) -> None:
        if self.live:
            self.draw()
        elif self.rows:
            print(
                self.line() + f" (mean of the last {self.window} steps; {len(self.rows)} in all)",
                file=self.stream,
                flush=True,
            )
