"""resume: a checkpoint is complete whenever a save is interrupted, and belongs to one run."""

import dataclasses
import random
from pathlib import Path

import pytest
import torch

from rlhf_course.core import resume


@dataclasses.dataclass
class Settings:
    seed: int = 0
    lr: float = 1e-3
    checkpoint_every: int = 2


def run_state(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3), random.Random(seed)


def test_a_checkpoint_of_another_run_is_refused_and_left_alone(tmp_path):
    model, optimizer, rng = run_state()
    identity = resume.run_identity(model, Settings())
    resume.save(tmp_path / "ckpt", {"model": model}, optimizer, rng, state={"step": 4}, identity=identity)
    saved = (tmp_path / "ckpt" / "model.safetensors").read_bytes()

    other_model, other_optimizer, other_rng = run_state(seed=1)  # another base model
    with pytest.raises(ValueError, match=r"belongs to another run \(its weights differ"):
        resume.load(
            tmp_path / "ckpt",
            {"model": other_model},
            other_optimizer,
            other_rng,
            identity=resume.run_identity(other_model, Settings()),
        )
    with pytest.raises(ValueError, match=r"its config differ"):  # another seed
        resume.load(
            tmp_path / "ckpt", {"model": model}, optimizer, rng, identity=resume.run_identity(model, Settings(seed=3))
        )
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == saved
    # the same run resumes, whatever its checkpoint interval
    same = resume.run_identity(run_state()[0], Settings(checkpoint_every=5))
    assert resume.load(tmp_path / "ckpt", {"model": model}, optimizer, rng, identity=same) == {"step": 4}


def test_a_save_killed_between_its_renames_leaves_a_checkpoint_to_resume(tmp_path, monkeypatch):
    model, optimizer, rng = run_state()
    resume.save(tmp_path / "ckpt", {"model": model}, optimizer, rng, state={"step": 2})
    real_rename = Path.rename

    def killed(self, target):
        if self.name.endswith(".tmp"):  # the new checkpoint never reaches its place
            raise KeyboardInterrupt
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        resume.save(tmp_path / "ckpt", {"model": model}, optimizer, rng, state={"step": 4})
    monkeypatch.setattr(Path, "rename", real_rename)
    assert not (tmp_path / "ckpt").exists()
    assert resume.load(tmp_path / "ckpt", {"model": model}, optimizer, rng) == {"step": 2}  # the previous one
    resume.save(tmp_path / "ckpt", {"model": model}, optimizer, rng, state={"step": 6})  # and saving goes on
    assert resume.load(tmp_path / "ckpt", {"model": model}, optimizer, rng) == {"step": 6}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
