"""Resuming long runs: save a training run's whole state every few steps and pick it up after an interruption.

A run's state is more than its weights: the optimizer's moments, the learning-rate schedule, the random
number generators (which prompts come next, how minibatches are shuffled) and whatever the trainer adapts
as it goes (PPO's KL coefficient). With all of it restored, a resumed run takes exactly the steps the
uninterrupted run would have taken. Weights are written with safetensors and the optimizer and scheduler
with ``torch.save``, read back with ``weights_only=True``. A checkpoint is written to a temporary directory and
renamed into place, the previous one moved aside first and deleted last, so an interruption at any point of a
save leaves a complete checkpoint to resume from. Each checkpoint records its run's identity (``run_identity``:
the starting weights and the settings), and resuming another run's checkpoint is an error, not a silent mix.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from rlhf_course.core import distributed

STATE_FILE = "state.json"


@contextmanager
def stage_checkpoint(out: str | Path, stage: str, every: int):
    """The directory where a pipeline stage's run keeps its checkpoint, or None when ``every`` is 0.

    It is deleted when the block completes, so the next run of the stage starts afresh; after an error or
    an interruption it stays, and the next run resumes from it.
    """
    path = Path(out) / f"{stage}_checkpoint"
    yield path if every else None
    shutil.rmtree(path, ignore_errors=True)


def run_identity(module: torch.nn.Module, config, ignore: tuple[str, ...] = ("checkpoint_every",), **more) -> dict:
    """What makes a run this run: a fingerprint of ``module``'s starting weights (a digest of their bytes), its
    settings (``config``, a dataclass, less the fields in ``ignore``) and anything else given (``more``)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in ignore}
    return json.loads(json.dumps({"weights": digest.hexdigest()[:16], "config": settings, **more}, default=repr))


def _previous(path: Path) -> Path:
    return path.with_name(path.name + ".old")


def save(
    path: str | Path,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    rng: random.Random,
    scheduler=None,
    state: dict | None = None,
    identity: dict | None = None,
) -> Path:
    """Write the run's state to ``path``: each module's weights, the optimizer (and scheduler), the run's
    ``rng`` and torch's generator, and ``state``, a JSON-serialisable dict of the trainer's own progress.

    Under several processes (whose states are identical) the main process writes and the others wait for it.
    ``identity`` (``run_identity``) is stored, and ``load`` refuses a checkpoint whose identity differs.
    """
    path = Path(path)
    processes = distributed.processes()
    if processes.is_main_process:
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, module in modules.items():
            save_model(module, str(tmp / f"{name}.safetensors"))  # handles tied weights (GPT-2's embeddings)
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler else None,
                "torch_rng": torch.get_rng_state(),
            },
            tmp / "optimizer.pt",
        )
        # the state file is written last: a directory that has it is a complete checkpoint
        (tmp / STATE_FILE).write_text(
            json.dumps({"state": state or {}, "python_rng": rng.getstate(), "identity": identity})
        )
        old = _previous(path)
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)  # killed after this: load finds the previous checkpoint under its .old name
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    processes.wait_for_everyone()
    return path


def load(
    path: str | Path,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    rng: random.Random,
    scheduler=None,
    identity: dict | None = None,
) -> dict | None:
    """Restore what ``save`` wrote into the given objects and return its ``state``; None if ``path`` holds no
    checkpoint (a fresh run). A checkpoint saved with another ``identity`` is refused with an error."""
    path = Path(path)
    if not (path / STATE_FILE).is_file() and (_previous(path) / STATE_FILE).is_file():
        path = _previous(path)  # a save was interrupted between its two renames
    if not (path / STATE_FILE).is_file():
        return None
    saved = json.loads((path / STATE_FILE).read_text())
    if identity is not None and saved.get("identity") != identity:
        theirs = saved.get("identity") or {}
        differ = sorted(k for k in set(theirs) | set(identity) if theirs.get(k) != identity.get(k))
        raise ValueError(
            f"checkpoint {path} belongs to another run (its {', '.join(differ)} differ from this "
            "run's): delete that directory, or write this run somewhere else, to start afresh"
        )
    missing = [f"{name}.safetensors" for name in modules if not (path / f"{name}.safetensors").is_file()]
    missing += [] if (path / "optimizer.pt").is_file() else ["optimizer.pt"]
    if missing:
        raise FileNotFoundError(
            f"checkpoint {path} is incomplete: {missing} missing; delete the directory to start the run afresh"
        )
    for name, module in modules.items():
        load_model(module, str(path / f"{name}.safetensors"), device=str(next(module.parameters()).device))
    trainer = torch.load(path / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(trainer["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(trainer["scheduler"])
    torch.set_rng_state(trainer["torch_rng"])
    version, internal, gauss = saved["python_rng"]
    rng.setstate((version, tuple(internal), gauss))
    return saved["state"]
