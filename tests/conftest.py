import os
import sys
from pathlib import Path

# Offline and quiet for every test; Agg only here (a global MPLBACKEND would leak into nbval kernels).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["RLHF_COURSE_PROGRESS"] = "0"
os.environ.setdefault("RLHF_COURSE_DEVICE", "cpu")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

sys.path.insert(0, str(Path(__file__).parent))

import warnings  # noqa: E402

import pytest  # noqa: E402

PACKAGE = str(Path(__file__).resolve().parent.parent / "rlhf_course")


def _top_package(filename: str) -> str:
    """The installed package a frame's file belongs to ("transformers", "peft"), or its path outside them."""
    parts = Path(filename).parts
    return parts[parts.index("site-packages") + 1] if "site-packages" in parts else filename


# a module's call and a wrapper's forward (a peft model's) only pass the caller's arguments on to the warning code
PASSING_ON = {"__call__", "_call_impl", "_wrapped_call_impl", "forward"}


def _course_call_that_is_deprecated(frame) -> str | None:
    """Where the course's own code called a deprecated library function: the frame just outside the package
    that warned, when that frame is the course's. (A library calling another's deprecated API is not ours.)"""
    warner = _top_package(frame.f_code.co_filename)
    while frame is not None and (
        _top_package(frame.f_code.co_filename) == warner or frame.f_code.co_name in PASSING_ON
    ):
        frame = frame.f_back
    if frame is not None and frame.f_code.co_filename.startswith(PACKAGE):
        return f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}"
    return None


@pytest.fixture(autouse=True)
def no_deprecated_calls_from_the_course(monkeypatch):
    """A library's FutureWarning raised by a call in the course's own code fails the test: a later release of
    the library, which a fresh install may get, removes what the course calls."""
    found, real_warn = [], warnings.warn

    def warn(message, category=None, stacklevel=1, source=None, **kwargs):
        if category is not None and issubclass(category, FutureWarning):
            where = _course_call_that_is_deprecated(sys._getframe(1))
            if where is not None:
                found.append(f"{where}: {message}")
        return real_warn(message, category, stacklevel + 1, source, **kwargs)

    monkeypatch.setattr(warnings, "warn", warn)
    yield
    assert not found, "the course calls what its libraries deprecate:\n" + "\n".join(found)
