"""The exercises' checks: one module per lesson, named like its file in ``solutions/`` and ``exercises/``.

A lesson's module declares its exercises (``EXERCISES``: id, difficulty, summary, checks) next to the checks
themselves. Adding an exercise touches its solution, its lesson's module here, its module of known-wrong
implementations in ``tests/known_wrong/`` and the lesson; ``catalog()`` finds it.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

from rlhf_course.checks.base import Exercise


def catalog() -> dict[str, Exercise]:
    """Every exercise by id, in lesson order, with its lesson and file filled in from its module's name."""
    found = {}
    for module in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.startswith("lesson")):
        for exercise in importlib.import_module(f"{__name__}.{module}").EXERCISES:
            if exercise.id in found:
                raise ValueError(
                    f"exercise {exercise.id!r} is declared twice (checks/{found[exercise.id].file} "
                    f"and checks/{module}.py)"
                )
            found[exercise.id] = dataclasses.replace(exercise, lesson=module[len("lesson") :][:2], file=f"{module}.py")
    return found
