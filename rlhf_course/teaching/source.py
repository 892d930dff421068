"""Show the code a lesson teaches, read from the package when the cell runs, so it cannot go stale."""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

from IPython.display import Markdown, display

REPOSITORY = Path(__file__).resolve().parent.parent.parent


def excerpt(obj, start: str | None = None, stop: str | None = None) -> tuple[str, str]:
    """``(where, code)``: the source of ``obj`` (a function, class or module), from its first line that contains
    ``start`` up to the line before the next one that contains ``stop``, dedented; ``where`` is its file and
    line numbers. A marker that is not there is an error that names it."""
    lines, first = inspect.getsourcelines(obj)
    first = max(first, 1)  # a module's lines start at 0

    def find(marker, after):
        for i in range(after, len(lines)):
            if marker in lines[i]:
                return i
        raise ValueError(f"{marker!r} is not in the source of {getattr(obj, '__qualname__', obj)} after line {after}")

    a = find(start, 0) if start else 0
    b = find(stop, a + 1) if stop else len(lines)
    code = textwrap.dedent("".join(lines[a:b])).rstrip()
    path = Path(inspect.getsourcefile(obj)).resolve()
    shown = path.relative_to(REPOSITORY) if path.is_relative_to(REPOSITORY) else path
    return f"`{shown}`, lines {first + a}-{first + b - 1}", code


def show(obj, start: str | None = None, stop: str | None = None) -> None:
    """Display ``excerpt(obj, start, stop)`` in the notebook, under its file and line numbers."""
    where, code = excerpt(obj, start, stop)
    display(Markdown(f"{where}:\n\n```python\n{code}\n```"))
