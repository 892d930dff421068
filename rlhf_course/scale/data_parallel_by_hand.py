"""Data parallelism written out: what DDP does under the course's trainers, by hand (lesson 08's exhibit).

The trainers never call this module: they scale out through accelerate (``core/distributed``). This is the
same step spelled out with ``torch.distributed``, next to the accelerate version, on a model small enough
to read every number. Run it as a script, in one process or under ``accelerate launch``:

    python -m rlhf_course.scale.data_parallel_by_hand OUT_DIR
    accelerate launch --multi_gpu --num_processes 2 -m rlhf_course.scale.data_parallel_by_hand OUT_DIR

Both versions train the same linear model on the same batches; the main process writes both sets of
final weights to ``OUT_DIR/summary.json``, and they agree with each other and with one process's to
float rounding.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from rlhf_course.core import distributed

STEPS, ROWS, FEATURES = 5, 7, 3  # 7 rows: the processes' shares are unequal


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of a step, the same in every process: (ROWS, FEATURES) inputs and (ROWS,) targets."""
    g = torch.Generator().manual_seed(step)
    x = torch.randn(ROWS, FEATURES, generator=g)
    return x, x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(ROWS, generator=g)


def fresh_model() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(FEATURES, 1)


def by_hand(rank: int, world: int) -> list[list[float]]:
    """Each process: its rows, its share of the batch's mean loss, backward, then one all-reduce that sums
    every gradient, so every process applies the gradient of the whole batch's mean."""
    model = fresh_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    for step in range(STEPS):
        x, y = batch(step)
        mine = slice(rank, ROWS, world)  # rows rank, rank + world, ...
        loss = (model(x[mine]).squeeze(-1) - y[mine]).pow(2).sum() / ROWS  # this process's share of the mean
        optimizer.zero_grad()
        loss.backward()
        if world > 1:
            for p in model.parameters():
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return [p.detach().flatten().tolist() for p in model.parameters()]


def with_accelerate() -> list[list[float]]:
    """The same training as the course's trainers write it: DDP averages the gradients during backward, and
    ``share_weight`` turns each process's mean into its part of the whole batch's mean."""
    accelerator = distributed.accelerator()
    model = fresh_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    ddp_model, optimizer = accelerator.prepare(model, optimizer)
    for step in range(STEPS):
        x, y = batch(step)
        rows, counted = distributed.my_rows(accelerator, list(range(ROWS)))
        loss = (ddp_model(x[rows]).squeeze(-1) - y[rows]).pow(2).mean()  # the mean over this process's rows
        optimizer.zero_grad()
        accelerator.backward(loss * distributed.share_weight(accelerator, len(rows) if counted else 0))
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return [p.detach().flatten().tolist() for p in model.parameters()]


def main(out: str) -> None:
    """Train both ways; the main process writes ``out/summary.json``."""
    accelerated = with_accelerate()  # joins the processes into one group (gloo on CPUs, NCCL on GPUs)
    processes = distributed.processes()
    written_out = by_hand(processes.process_index, processes.num_processes)
    if processes.is_main_process:
        result = {"processes": processes.num_processes, "by_hand": written_out, "accelerate": accelerated}
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "summary.json").write_text(json.dumps(result))
    processes.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
