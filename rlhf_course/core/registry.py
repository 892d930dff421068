"""The registry of replaceable pieces: how a learner's function runs inside the real training loop.

Each piece a learner writes is marked ``@replaceable`` where its reference is written. Training code
calls the decorated name as usual; the call goes to the learner's function when one is plugged in with
``plug_in`` and to the reference otherwise. ``reset()`` swaps every piece back to the reference.

A plugged-in function's output is validated on every call by the validator its exercise declares
(``rlhf_course/checks/``: shape, dtype, device) and for NaN, so a learner's mistake stops with a message
naming the exercise and what was expected, instead of surfacing as a strange error deep inside the
training loop.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable


class ExerciseOutputError(ValueError):
    """A learner's function returned something of the wrong shape, dtype or device."""


@dataclass
class Piece:
    name: str
    reference: Callable
    learner: Callable | None = None
    validate: Callable | None = None  # validate(output, *args, **kwargs) -> None or raises ExerciseOutputError


PIECES: dict[str, Piece] = {}


def replaceable(name: str):
    """Register ``fn`` as the reference implementation of exercise piece ``name``."""

    def decorate(fn):
        PIECES[name] = Piece(name, fn)

        @functools.wraps(fn)
        def dispatch(*args, **kwargs):
            piece = PIECES[name]
            if piece.learner is None:
                return piece.reference(*args, **kwargs)
            out = piece.learner(*args, **kwargs)
            try:
                if piece.validate is not None:
                    piece.validate(out, *args, **kwargs)
                _expect_finite(out, args, kwargs)
            except ExerciseOutputError as err:
                raise ExerciseOutputError(f"Exercise '{name}' (your {piece.learner.__name__}): {err}") from None
            return out

        dispatch.reference = fn
        dispatch.piece_name = name
        return dispatch

    return decorate


def tensors_in(value) -> list:
    """Every tensor in ``value`` (a tensor, or a tuple, list or dict of them, nested)."""
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in tensors_in(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in tensors_in(item)]
    return []


def _expect_finite(out, args, kwargs) -> None:
    """NaN in what the learner's function returned (from inputs without NaN), or an infinite scalar (a loss),
    stops training here: passing the checks does not cover every input a training run gives it."""
    floats = [t for t in tensors_in(out) if t.is_floating_point()]
    if not floats or any(t.is_floating_point() and t.isnan().any() for t in tensors_in((args, kwargs))):
        return
    for t in floats:
        if t.isnan().any():
            raise ExerciseOutputError(
                f"it returned NaN in {int(t.isnan().sum())} of {t.numel()} values, from "
                "inputs without any; look for a division by zero or the log of 0 or less"
            )
        if t.dim() == 0 and t.isinf():
            raise ExerciseOutputError(f"it returned {t.item()} (a loss must be finite); look for the log of 0")


def plug_in(name: str, fn: Callable, validate: Callable | None = None) -> None:
    """Run ``fn`` in place of piece ``name``'s reference, checking each output with ``validate``
    (``exercises.plug_in`` passes the one the exercise declares)."""
    if name not in PIECES:
        raise KeyError(f"No replaceable piece named {name!r}; known: {', '.join(sorted(PIECES))}")
    PIECES[name].learner, PIECES[name].validate = fn, validate


def reset(name: str | None = None) -> None:
    """Swap back to the reference: one piece, or all of them."""
    for piece in PIECES.values() if name is None else [PIECES[name]]:
        piece.learner, piece.validate = None, None


def active() -> dict[str, str]:
    """Which implementation each piece runs now: 'reference' or the learner function's module."""
    return {
        n: "reference" if p.learner is None else f"{p.learner.__module__}.{p.learner.__name__}"
        for n, p in sorted(PIECES.items())
    }


def expect_tensor(out, *, shape, dtype=None, device=None, what="the result") -> None:
    """Raise ExerciseOutputError unless ``out`` is a tensor of this shape/dtype/device."""
    import torch

    if not isinstance(out, torch.Tensor):
        raise ExerciseOutputError(f"{what} should be a torch.Tensor of shape {tuple(shape)}, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape):
        raise ExerciseOutputError(f"{what} should have shape {tuple(shape)}, got {tuple(out.shape)}")
    if dtype is not None and out.dtype != dtype:
        raise ExerciseOutputError(f"{what} should have dtype {dtype}, got {out.dtype}")
    if device is not None and out.device != device:
        raise ExerciseOutputError(f"{what} should be on device {device}, got {out.device}")
