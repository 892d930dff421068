"""What a lesson's checks module declares: its exercises, each with its checks, and the helpers checks share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from rlhf_course.core import registry


class Fail(Exception):
    """A check failed; the message says what was wrong and the likely mistake."""


@dataclass
class Check:
    name: str
    run: Callable[[Callable], None]  # raises Fail (or anything else) when the learner's function is wrong


@dataclass
class Exercise:
    """One replaceable piece of the package (``registry``) that a learner writes. Declared in the checks module
    of its lesson, ``checks/<file>.py``; the lesson and the learner's file come from that module's name."""

    id: str
    difficulty: str
    summary: str
    # validate(output, *inputs) raises registry.ExerciseOutputError unless the learner's output has the
    # shape, dtype and device the training loop needs: run on every call once the function is plugged in
    validate: Callable
    checks: list[Check]
    # its float outputs are in its float inputs' precision (false where it returns statistics kept in float64)
    keeps_precision: bool = True
    lesson: str = ""  # "02", from checks/lesson02_sft.py
    file: str = ""  # "lesson02_sft.py": the learner's file in exercises/, its completed version in solutions/

    @property
    def reference(self) -> Callable:
        return registry.PIECES[self.id].reference


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=tol, rtol=tol)


def largest_difference(got: torch.Tensor, want: torch.Tensor) -> str:
    """Where ``got`` differs most from ``want`` (a nan or an infinity counts as the most): "at row 1,
    position 2 (expected 0.5, got 0.7)"."""
    got, want = got.detach().double(), want.detach().double()
    if got.shape != want.shape:
        return f"in shape ({tuple(got.shape)}, expected {tuple(want.shape)})"
    gap = (got - want).abs().nan_to_num(nan=float("inf"))
    gap[got.isnan() & want.isnan()] = 0
    if not (gap > 0).any():
        return "nowhere"
    index = tuple(torch.unravel_index(gap.argmax(), gap.shape)) if gap.dim() else ()
    index = tuple(int(i) for i in index)
    where = ", ".join(f"{name} {i}" for name, i in zip(("row", "position", "entry", "index 3"), index))
    values = f"(expected {want[index].item():.6g}, got {got[index].item():.6g})"
    return f"at {where} {values}" if index else values


def diagnose(
    got: torch.Tensor, mistakes: dict[str, torch.Tensor], default: str, want: torch.Tensor | None = None
) -> str:
    """The hint of the known mistake whose output matches the learner's. When none does: where the output
    differs most from ``want`` (if given), then ``default``."""
    for hint, value in mistakes.items():
        if close(got.detach(), value):
            return hint
    if want is None:
        return default
    return f"no mistake we know of gives this output; it differs most {largest_difference(got, want)}; {default}"
