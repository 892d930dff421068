"""Several processes, one training run: data parallelism, written out.

Start any script that calls the course's trainers (SFT, reward model, DPO, REINFORCE, GRPO, PPO) with a
launcher, and it trains on every process at once:

    accelerate launch --multi_gpu --num_processes 2 my_script.py
    torchrun --nproc_per_node 2 my_script.py

The launcher starts the processes and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; the first call here joins them into one process group (NCCL between GPUs, gloo between
CPU processes). ``--multi_gpu`` is also the flag for several CPU processes: accelerate's ``--cpu`` launcher
starts one process unless it is given an MPI host file. With one process every function here does nothing,
so the trainers have no switch.

What DDP does, in three moves. Every process holds the whole model and takes its share of each global
batch (rows ``rank, rank + world, ...``). It computes its share's part of the batch's loss: the sum of its
loss terms (tokens, pairs or responses) divided by the number of terms in the *whole* batch. Summing the
gradients over the processes then gives exactly the gradient one process would compute on the whole
batch, so every process takes the same optimizer step (``optimization.step``) and the copies of the model
never drift apart. (DDP averages gradients instead, so its users scale their losses by the number of
processes; summing says what is meant.) Rollouts are split the same way: see ``rollouts.collect``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch
import torch.distributed as dist

from rlhf_course.core import runtime


def launch(processes: int, program: list[str], env: dict | None = None, timeout: float | None = None) -> None:
    """Run ``python *program`` (``["-m", module, ...]`` or a script and its arguments) in ``processes``
    processes: plain ``python`` for one, ``accelerate launch`` on a free local port for several. If it fails,
    the error carries the end of what the processes printed."""
    command = [sys.executable]
    if processes > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        command += [
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
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
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """The process that writes files and shows progress."""
    return rank() == 0


def active() -> bool:
    """True under a launcher with more than one process; joins the process group on first use."""
    if world_size() == 1:
        return False
    if not dist.is_initialized():
        dev = runtime.device()
        if dev.type == "cuda":
            torch.cuda.set_device(dev)  # NCCL's object collectives use the current device
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return True


def shard_rows(n: int) -> range:
    """This process's rows of a global batch of ``n`` rows."""
    return range(rank(), n, world_size())


def shard(items):
    """This process's rows of a list or a tensor (a view): ``items[rank::world]``."""
    return items[rank() :: world_size()]


def check_minibatches(batch_size: int, minibatch_size: int) -> None:
    """Fail early, saying why, when some minibatch would leave a process without rows."""
    smallest = min(minibatch_size, batch_size % minibatch_size or minibatch_size)
    if smallest < world_size():
        raise ValueError(
            f"every minibatch needs a row for each of the {world_size()} processes, but a batch of "
            f"{batch_size} in minibatches of {minibatch_size} leaves one of {smallest}"
        )


def sum_(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over processes of ``tensor`` (in place)."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def max_(value: int) -> int:
    """The largest ``value`` over processes."""
    if not active():
        return value
    t = torch.tensor([value], device=runtime.device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def share_of_mean(local_mean: torch.Tensor, count: torch.Tensor | int) -> torch.Tensor:
    """This process's part of a global mean, from the mean over its own ``count`` items.

    ``local_mean * count / total count``: summed over processes it is the mean over the whole batch. With one
    process ``local_mean`` comes back untouched (not multiplied by 1), so single-process runs stay bit-identical.
    """
    if not active():
        return local_mean
    count = torch.as_tensor(count, dtype=torch.float32, device=local_mean.device)
    total = sum_(count.clone())
    return local_mean * (count / total.clamp(min=1))


def mean(local_mean: torch.Tensor, count: torch.Tensor | int) -> torch.Tensor:
    """The global mean, on every process, from each process's mean over its ``count`` items (for logging)."""
    return sum_(share_of_mean(local_mean.detach().clone(), count))


def sum_gradients(parameters) -> None:
    """Replace every gradient by its sum over processes: one all-reduce of all gradients, flattened.

    A parameter without a gradient in one process (whose share of the batch was empty) contributes zeros;
    one without a gradient in every process keeps none, so the optimizer skips it as it would in one process
    (a zero gradient would still move it, by weight decay and momentum).
    """
    params = [p for p in parameters if p.requires_grad]
    if not params or not active():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype, device=grads[0].device)
    flat = torch.cat([g.reshape(-1) for g in grads] + [has_grad])  # (total parameters + len(params),)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for p, processes_with_grad in zip(params, flat[-len(params) :].tolist()):
        # views into the summed buffer: no second copy of the gradients
        p.grad = flat[offset : offset + p.numel()].view_as(p) if processes_with_grad else None
        offset += p.numel()


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Give every process the main process's weights, as DDP does when it wraps a model."""
    if active():
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def gather_rows(tensor: torch.Tensor, n: int) -> torch.Tensor:
    """The global batch (n, ...) from every process's ``shard_rows(n)`` rows: the inverse of ``shard``.

    Shapes must agree past the first dimension (pad widths to ``max_`` first).
    """
    if not active():
        return tensor
    world = world_size()
    rows = -(-n // world)  # the largest share; smaller shares are padded with a row that is cut off below
    wire = torch.uint8 if tensor.dtype == torch.bool else tensor.dtype  # gloo sends no bools
    padded = torch.zeros((rows, *tensor.shape[1:]), dtype=wire, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    # local row j of process r is global row j * world + r
    return torch.stack(parts, dim=1).reshape(rows * world, *tensor.shape[1:])[:n].to(tensor.dtype)


def gather_objects(items: list, n: int) -> list:
    """``gather_rows`` for a list of Python objects (texts, scores)."""
    if not active():
        return items
    parts = [None] * world_size()
    dist.all_gather_object(parts, items)
    return [parts[i % world_size()][i // world_size()] for i in range(n)]


def barrier() -> None:
    """Wait until every process gets here (after the main process has written a file the others read)."""
    if active():
        dist.barrier()
