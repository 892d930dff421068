"""Several processes, one training run: the trainers scale out through accelerate.

Every trainer (SFT, reward model, DPO, REINFORCE, GRPO, PPO) makes an ``Accelerator`` (``accelerator()``),
lets it ``prepare`` the model and the optimizer, and steps with ``accelerator.backward`` and
``accelerator.clip_grad_norm_``. In one process that is plain PyTorch. Start a script that calls the
trainers with a launcher and each process holds the model wrapped by the engine the launcher asks for:

    accelerate launch --multi_gpu --num_processes 2 my_script.py                         # DDP
    accelerate launch --config_file configs/accelerate/fsdp.yaml my_script.py            # FSDP (GPUs)
    accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml my_script.py  # ZeRO-2 (GPUs)

``--multi_gpu`` also starts several CPU processes (they talk over gloo); configs/accelerate/README.md says
which trainer runs under which config.

Each process takes every ``num_processes``-th row of a global batch (``my_rows``) and DDP averages the
gradients over the processes during backward. Two details make that average the gradient of the mean over
the whole batch, so that any number of processes takes the step one process takes:

- a process's mean loss is weighted by its share of the batch's loss terms (``share_weight``): the shares
  of tokens, pairs or responses differ between processes;
- a process left without rows (a batch smaller than the number of processes) still runs forward and
  backward, on one row with weight 0, because DDP needs every process in every backward.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState

from rlhf_course.core import runtime


def accelerator() -> Accelerator:
    """accelerate's ``Accelerator`` on ``runtime.device()``. Precision stays the course's own
    (``runtime.autocast``), and the trainers place their models themselves."""
    # accelerate keeps one state per process: a TRL trainer that ran before (bf16 by default) would leave the
    # next prepared model's forward in bf16 autocast. Start afresh, as transformers' Trainer does; the process
    # group (PartialState) stays.
    AcceleratorState._reset_state()
    return Accelerator(cpu=runtime.device().type == "cpu", device_placement=False, mixed_precision="no")


def processes() -> PartialState:
    """Which process this is and how many there are (``process_index``, ``num_processes``,
    ``is_main_process``, ``wait_for_everyone()``), without an ``Accelerator``."""
    return PartialState(cpu=runtime.device().type == "cpu")


class Call(torch.nn.Module):
    """``fn(model, *args)`` as a module, for ``accelerator.prepare``.

    DDP averages the gradients of what runs through the forward of the module it wraps. Where a trainer's
    forward pass is the course's own function rather than the model's ``forward`` (the reward model's
    last-token reward, the policy's log-probabilities of a response), it wraps that function with the model.
    In one process ``prepare`` hands the module back as it is, and calling it is calling ``fn(model, ...)``.
    """

    def __init__(self, fn, model: torch.nn.Module):
        super().__init__()
        self.fn, self.model = fn, model

    def forward(self, *args, **kwargs):
        return self.fn(self.model, *args, **kwargs)


def my_rows(accelerator: Accelerator, rows):
    """``(this process's rows of a global batch, whether they count)``: rows ``index, index + P, ...``.

    A process left without rows gets the batch's first row, which does not count (its loss gets weight 0).
    In one process: ``(rows, True)``.
    """
    mine = rows[accelerator.process_index :: accelerator.num_processes]
    return (mine, True) if len(mine) else (rows[:1], False)


def share_weight(accelerator: Accelerator, count) -> torch.Tensor:
    """The weight of this process's mean loss over its ``count`` loss terms: ``count * P / total count``.

    DDP averages the processes' gradients, so the weighted means average to the mean over the whole batch,
    as do the logged losses (``accelerator.reduce(weight * loss, "mean")``). In one process it is exactly 1.
    """
    count = torch.as_tensor(count, dtype=torch.float32, device=accelerator.device)
    return count * accelerator.num_processes / accelerator.reduce(count, "sum").clamp(min=1e-12)


def launch(
    processes: int,
    program: list[str],
    env: dict | None = None,
    timeout: float | None = None,
    config_file: str | None = None,
) -> None:
    """Run ``python *program`` (``["-m", module, ...]`` or a script and its arguments) in ``processes``
    processes: plain ``python`` for one, ``accelerate launch`` on a free local port for several (DDP, or the
    engine of ``config_file``, one of ``configs/accelerate/``). If it fails, the error carries the end of
    what the processes printed."""
    command = [sys.executable]
    if processes > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        command += ["-m", "accelerate.commands.launch"]
        command += ["--config_file", str(config_file)] if config_file else ["--multi_gpu"]
        command += [
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--main_process_port",
            str(port),
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
        ]  # precision is the course's own (runtime.autocast)
    done = subprocess.run(command + program, env=env, timeout=timeout, capture_output=True, text=True)
    if done.returncode:
        printed = (done.stdout + done.stderr)[-4000:]
        raise RuntimeError(
            f"{' '.join(program)} failed in {processes} process(es) "
            f"(exit status {done.returncode}); the end of its output:\n{printed}"
        )


def world_size() -> int:
    """How many processes the launcher started (read from its WORLD_SIZE, joining no process group)."""
    return int(os.environ.get("WORLD_SIZE", "1"))
