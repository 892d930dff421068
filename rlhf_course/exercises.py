"""Exercises: loading a learner's code, checking it, plugging it in, and writing the exercise files.

Each exercise is one replaceable piece of the package (see ``registry``), declared with its checks in its
lesson's module of ``checks/``. A learner writes it in ``exercises/<file>.py``; ``check(id)`` runs that
function on seeded inputs in a child process and, when it fails, says which plausible mistake the output
looks like (wrong mask, off-by-one, missing shift, wrong normalisation...). ``plug_in_passing()`` puts every
passing function into the real training loop. ``exercises/`` is generated from ``solutions/`` by replacing
the regions between ``### BEGIN SOLUTION`` and ``### END SOLUTION`` with a stub (the nbgrader convention).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import inspect
import io
import multiprocessing
import re
import shutil
import signal
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from rlhf_course import checks
from rlhf_course.checks.base import Fail
from rlhf_course.core import registry

REPO = Path(__file__).resolve().parent.parent
EXERCISES_DIR = REPO / "exercises"
SOLUTIONS_DIR = REPO / "solutions"

CATALOG = checks.catalog()  # every exercise by id, declared in its lesson's module of checks/


# --- loading a learner's code --------------------------------------------------------------------
def load_function(exercise_id: str, impl: str | Path | None = None) -> Callable:
    """The learner's function for ``exercise_id`` from a directory, a .py file or a module name.

    Files are re-read on every call, so edits in the editor count without restarting the kernel.
    """
    exercise = CATALOG[exercise_id]
    impl = EXERCISES_DIR if impl is None else impl
    path = Path(impl)
    if path.is_dir():
        path = path / exercise.file
    if path.suffix == ".py":
        if not path.is_file():
            raise FileNotFoundError(
                f"No exercise file at {path} (expected {exercise.file} with a function "
                f"{exercise.id}); `rlhf-course make-exercises` writes the missing stubs (and keeps your files)"
            )
        name = f"_learner_{path.stem}_{abs(hash(path.resolve()))}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.reload(importlib.import_module(str(impl)))
    fn = getattr(module, exercise.id, None)
    if fn is None:
        raise AttributeError(f"{module.__name__} has no function {exercise.id!r}")
    return fn


def defined_in(path: str | Path) -> list[str]:
    """The exercises a .py file defines a function for, in catalog order (read, not run)."""
    tree = ast.parse(Path(path).read_text(), filename=str(path))
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    return [i for i in CATALOG if i in defined]


@dataclass
class CheckResult:
    exercise: str
    lines: list[tuple[str, bool, str]]  # (check name, passed, message)

    @property
    def passed(self) -> bool:
        return all(ok for _, ok, _ in self.lines)

    def __str__(self) -> str:
        rows = [
            f"{'PASS' if ok else 'FAIL'}  {self.exercise}: {name}" + ("" if ok else f"\n      -> {msg}")
            for name, ok, msg in self.lines
        ]
        verdict = "all checks passed" if self.passed else "some checks failed"
        return "\n".join(rows + [f"{self.exercise}: {verdict}"])


CHECK_SECONDS = 30  # far more than any check needs with a correct function: past it, the learner's code is stuck
CHILD_START_SECONDS = 60  # on top of the checks' limits: the child's start and the loading of the learner's file


class CheckTimedOut(BaseException):
    """Raised in the learner's code when a check runs too long. A BaseException, so that a learner's own
    ``except Exception`` cannot swallow it."""


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Interrupt the code inside after ``seconds`` (with SIGALRM: in the main thread of a Unix process, which is
    where the CLI and a Jupyter kernel run cells; elsewhere no limit is set)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise CheckTimedOut()

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _snapshot(value):
    """A copy of every tensor in ``value`` (a tensor, or a list, tuple or dict of them), to compare after a call."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (list, tuple)):
        return type(value)(_snapshot(v) for v in value) if not hasattr(value, "_fields") else value
    if isinstance(value, dict):
        return {k: _snapshot(v) for k, v in value.items()}
    return value


def _unchanged(before, after) -> bool:
    if isinstance(before, torch.Tensor):
        return (
            isinstance(after, torch.Tensor)
            and before.shape == after.shape
            and bool(
                torch.equal(before, after.detach())
                or torch.equal(before.isnan(), after.detach().isnan())
                and torch.equal(before.nan_to_num(), after.detach().nan_to_num())
            )
        )
    if isinstance(before, (list, tuple)) and not hasattr(before, "_fields"):
        return len(before) == len(after) and all(_unchanged(b, a) for b, a in zip(before, after))
    if isinstance(before, dict):
        return all(_unchanged(before[k], after[k]) for k in before)
    return True


class Guarded:
    """``fn`` as every check calls it. A call that changes an input in place fails at once (the check's own
    expected values may be computed from that input). An output the training loop could not use (the
    exercise's validator: shape, dtype, device, finite values) is noted in ``unusable``: the check still
    compares values first, so that a hint naming the likely mistake comes before the bare shape."""

    def __init__(self, exercise, fn: Callable):
        self.exercise, self.fn = exercise, fn
        self.names = list(inspect.signature(exercise.reference).parameters)
        self.unusable: list[str] = []

    def __call__(self, *args, **kwargs):
        bound = dict(zip(self.names, args), **kwargs)
        before = {name: _snapshot(value) for name, value in bound.items()}
        out = self.fn(*args, **kwargs)
        changed = [name for name, value in bound.items() if not _unchanged(before[name], value)]
        if changed:
            raise Fail(
                f"your function changed its input {', '.join(changed)} in place; the caller still needs it: "
                "compute a new tensor (x = x * mask, x.masked_fill(...), x.clone()) instead of writing into it "
                "(x *= mask, x[...] = ..., x.masked_fill_(...))"
            )
        try:
            self.exercise.validate(out, *args, **kwargs)
        except registry.ExerciseOutputError as err:
            self.unusable.append(f"the training loop could not use your output: {err}")
        given = {t.dtype for t in registry.tensors_in(list(bound.values())) if t.is_floating_point()}
        made = {t.dtype for t in registry.tensors_in(out) if t.is_floating_point()} - given
        if self.exercise.keeps_precision and len(given) == 1 and made:  # the loop expects the inputs' precision back
            self.unusable.append(
                f"your output is {', '.join(sorted(map(str, made)))}, but the inputs are {given.pop()}: the training "
                "loop works in the inputs' precision (leave out .double(), and give new tensors dtype=x.dtype)"
            )
        return out


def _learner_frames(fn: Callable, err: BaseException) -> list:
    """The frames of ``err``'s traceback in the learner's file: none when a check, not the learner's code, raised."""
    try:
        source = Path(inspect.getsourcefile(fn)).resolve()
    except TypeError:  # no source file (a builtin, a lambda typed in a shell): count every frame as the learner's
        return traceback.extract_tb(err.__traceback__)
    return [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename).resolve() == source]


def run_checks(exercise_id: str, fn: Callable, seconds: float = CHECK_SECONDS) -> CheckResult:
    """Run every check of ``exercise_id`` on ``fn`` (``Guarded``); the verdict comes from the checks alone. A
    function that runs past ``seconds`` in one check, or ends the program (``sys.exit``), fails that check."""
    exercise = CATALOG[exercise_id]
    lines = []
    for check in exercise.checks:
        checked = Guarded(exercise, fn)
        try:
            with _time_limit(seconds):
                check.run(checked)
            if checked.unusable:  # right values, but a shape, dtype or device the loop cannot take
                raise Fail(checked.unusable[0])
            lines.append((check.name, True, ""))
        except CheckTimedOut:
            lines.append(
                (
                    check.name,
                    False,
                    f"your function did not finish within {seconds:g} s (the check stopped "
                    "it): look for a loop that never ends",
                )
            )
        except SystemExit as stop:
            lines.append((check.name, False, f"your function called sys.exit({stop.code!r}); return a value instead"))
        except Fail as fail:
            lines.append((check.name, False, str(fail)))
        except NotImplementedError as err:
            frames = _learner_frames(fn, err)
            missing = frames[-1].name if frames and frames[-1].name != exercise.id else None
            lines.append(
                (
                    check.name,
                    False,
                    f"not implemented yet: write {exercise.id} in exercises/{exercise.file}"
                    if missing is None
                    else f"not implemented yet: {exercise.id} calls your {missing}, which is not written yet "
                    f"(exercises/{exercise.file}; write it first)",
                )
            )
        except Exception as err:
            frames = _learner_frames(fn, err)
            if frames:  # the learner's code crashed: show where
                where = frames[-1]
                message = (
                    f"your function raised {type(err).__name__}: {err} (at {Path(where.filename).name}:{where.lineno})"
                )
            elif checked.unusable:  # the check tripped over an output of the wrong shape or type: say which
                message = checked.unusable[0]
            else:  # the check could not work with what the function returned
                message = (
                    f"the check could not use what your function returned ({type(err).__name__}: {err}); "
                    f"return what the stub of {exercise.id} says (its type, shape and order)"
                )
            lines.append((check.name, False, message))
    return CheckResult(exercise_id, lines)


def _load_and_run(exercise_id: str, impl: str | Path | None) -> CheckResult:
    try:
        return run_checks(exercise_id, load_function(exercise_id, impl))
    except (FileNotFoundError, AttributeError, SyntaxError, ImportError) as err:
        return CheckResult(exercise_id, [("loads", False, f"{type(err).__name__}: {err}")])


def _check_in_child(exercise_id: str, impl: str | Path | None, connection) -> None:
    """The child's side of ``check``: load and check the learner's code, send back the results and its prints."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        result = _load_and_run(exercise_id, impl)
    connection.send((result.lines, printed.getvalue()))
    connection.close()


def _checking_context():
    """Children forked from a server that imported the package but never computed: quick to start, and safe
    with torch's thread pools (which a fork of a process that has used them can deadlock on)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["rlhf_course.exercises"])
    return context


@contextlib.contextmanager
def _main_script_hidden():
    """Start a child without it re-running the caller's script: multiprocessing imports the ``__main__`` of a
    script into its children, which re-runs a script without an ``if __name__ == "__main__"`` guard (a
    learner's ``check.py``, say). The checking child needs nothing from it."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None or getattr(main, "__spec__", None) is not None:  # a module run with -m, a kernel, a shell
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def check(exercise_id: str, impl: str | Path | None = None, verbose: bool = True) -> CheckResult:
    """Run one exercise's checks against the learner's code (``exercises/`` by default).

    The learner's code runs in a child process: a function that hangs is stopped (each check has
    ``CHECK_SECONDS``; the child as a whole is killed past the sum), one that ends the process (``sys.exit``,
    ``os._exit``, a crash) fails instead of taking the caller with it, and the verdict comes only from the
    results the child sends back, never from how it exits. What the learner's code prints is shown here.
    """
    if exercise_id not in CATALOG:
        raise KeyError(f"No exercise {exercise_id!r}; known: {', '.join(CATALOG)}")
    if "forkserver" not in multiprocessing.get_all_start_methods():  # not on this platform: check in-process
        result = _load_and_run(exercise_id, impl)
    else:
        limit = CHECK_SECONDS * len(CATALOG[exercise_id].checks) + CHILD_START_SECONDS
        receiving, sending = multiprocessing.Pipe(duplex=False)
        child = _checking_context().Process(target=_check_in_child, args=(exercise_id, impl, sending), daemon=True)
        lines, printed, timed_out = None, "", False
        try:
            with _main_script_hidden():
                child.start()
            sending.close()
            if receiving.poll(limit):
                try:
                    lines, printed = receiving.recv()
                except EOFError:  # the child ended without a word: the learner's code stopped the process
                    pass
            else:
                timed_out = True
        finally:  # a hung child, a learner's thread that outlives the checks, or a Ctrl-C here: no child is kept
            receiving.close()
            child.join(timeout=0 if timed_out else 5)
            if child.is_alive():
                child.kill()
                child.join()
        if printed:
            print(printed, end="" if printed.endswith("\n") else "\n")
        if lines is None:
            why = (
                f"did not finish within {limit:g} s"
                if timed_out
                else f"ended the checking process (exit status {child.exitcode}: sys.exit or os._exit outside a "
                "function, a crash, or a kill)"
            )
            lines = [
                (
                    "runs",
                    False,
                    f"your code {why} before the checks could report; look for a call that exits or never returns",
                )
            ]
        result = CheckResult(exercise_id, lines)
    if verbose:
        print(result)
    return result


def plug_in(exercise_id: str, fn: Callable) -> None:
    """Run ``fn`` in the training loop in place of the exercise's reference, each output checked by the
    validator the exercise declares (``registry.reset`` swaps the reference back)."""
    registry.plug_in(exercise_id, fn, CATALOG[exercise_id].validate)


def plug_in_passing(lesson: str | None = None, impl: str | Path | None = None, verbose: bool = True) -> dict[str, bool]:
    """Put each passing learner function into the training loop; keep the reference for the others."""
    used = {}
    for exercise in CATALOG.values():
        if lesson is not None and exercise.lesson != lesson:
            continue
        result = check(exercise.id, impl, verbose=False)
        registry.reset(exercise.id)
        if result.passed:
            plug_in(exercise.id, load_function(exercise.id, impl))
        used[exercise.id] = result.passed
        if verbose:
            width = max(len(i) for i in CATALOG)
            print(
                f"{exercise.id:<{width}}  {'your code' if result.passed else 'reference (your version does not pass yet)'}"
            )
    return used


# --- generating exercises/ from solutions/ -------------------------------------------------------
SOLUTION_REGION = re.compile(r"^([ \t]*)### BEGIN SOLUTION\n.*?^[ \t]*### END SOLUTION\n", re.M | re.S)


def strip_solutions(source: str) -> str:
    """Replace every marked solution region by a stub, keeping its indentation."""

    def stub(match):
        indent = match.group(1)
        return f"{indent}# YOUR CODE HERE\n{indent}raise NotImplementedError()\n"

    stripped, count = SOLUTION_REGION.subn(stub, source)
    if count == 0:
        raise ValueError("no '### BEGIN SOLUTION' ... '### END SOLUTION' region found")
    return stripped


def make_exercises(
    solutions: Path = SOLUTIONS_DIR, exercises: Path = EXERCISES_DIR, replace: bool = False
) -> list[tuple[Path, str]]:
    """Write the stubs of ``exercises/`` from ``solutions/``, never losing what a learner wrote.

    A missing file is written; one equal to its stub is left alone. One that differs (a learner's work, or a
    stub from before the solutions changed) is kept, and the fresh stub goes beside it as ``NAME.py.new``;
    with ``replace`` (for instructors regenerating the committed stubs) the old file is first copied to
    ``NAME.py.bak``. Returns ``(path, what was done)`` for every file.
    """
    done = []
    exercises.mkdir(parents=True, exist_ok=True)
    for source in sorted(solutions.glob("*.py")):
        target, stub = exercises / source.name, strip_solutions(source.read_text())
        if not target.exists():
            target.write_text(stub)
            done.append((target, "written"))
        elif target.read_text() == stub:
            done.append((target, "unchanged"))
        elif replace:
            backup = target.with_name(target.name + ".bak")
            shutil.copy2(target, backup)
            target.write_text(stub)
            done.append((target, f"replaced; the old file is kept as {backup.name}"))
        else:
            fresh = target.with_name(target.name + ".new")
            fresh.write_text(stub)
            done.append((target, f"kept (it differs from the stub); the fresh stub is {fresh.name}"))
    return done
